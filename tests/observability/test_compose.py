"""docker-compose.yml, checked structurally (Docker does not run here): the services the
README promises, files it mounts that exist in the repository, and a Prometheus config that
scrapes the proxy's service on its port and loads the rules."""

from __future__ import annotations

from typing import Any

from tests.observability.helpers import COMPOSE, ROOT, load_yaml


def _compose() -> dict[str, Any]:
    compose = load_yaml(COMPOSE)
    assert isinstance(compose, dict)
    return compose


def test_the_stack_has_the_proxy_its_database_prometheus_grafana_and_the_offline_emulator():
    services = _compose()["services"]
    assert {"proxy", "postgres", "prometheus", "grafana", "emulator"} <= set(services)
    assert services["proxy"]["build"] == "."
    assert (ROOT / "Dockerfile").is_file()
    # the emulator only with --profile offline, on the proxy's loopback (a plain-http
    # upstream must be a loopback address)
    assert services["emulator"]["profiles"] == ["offline"]
    assert services["emulator"]["network_mode"] == "service:proxy"
    assert "emulate" in services["emulator"]["command"]
    assert "--host" in services["emulator"]["command"]
    host = services["emulator"]["command"][services["emulator"]["command"].index("--host") + 1]
    assert host == "127.0.0.1"
    for name in ("postgres", "prometheus", "grafana"):
        assert "profiles" not in services[name], name
    env = services["proxy"]["environment"]
    assert env["GEMINI_METER_DATABASE_URL"].startswith("postgresql+asyncpg://")
    assert "@postgres:5432/" in env["GEMINI_METER_DATABASE_URL"]


def test_every_mounted_file_exists_in_the_repository():
    mounted = 0
    for name, service in _compose()["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name}: {source}"
                mounted += 1
    assert mounted >= 5


def test_prometheus_scrapes_the_proxy_service_and_loads_the_rules():
    compose = _compose()
    prometheus = compose["services"]["prometheus"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in prometheus["volumes"]}
    config_path = next(
        a.split("=", 1)[1] for a in prometheus["command"] if a.startswith("--config.file=")
    )
    config = load_yaml(ROOT / mounts[config_path])
    [job] = config["scrape_configs"]
    [static] = job["static_configs"]
    [target] = static["targets"]
    host, port = target.split(":")
    assert host == "proxy"
    assert job.get("metrics_path", "/metrics") == "/metrics"
    proxy = compose["services"]["proxy"]
    assert str(proxy["environment"]["GEMINI_METER_PORT"]) == port
    assert any(p.endswith(f":{port}") for p in proxy["ports"])
    [rule_file] = config["rule_files"]
    assert mounts[rule_file] == "./dashboards/prometheus/rules.yml"
