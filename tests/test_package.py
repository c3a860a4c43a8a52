"""The package's shape: the curated public names, and imports that stay lazy.

Start-up time of a quick CLI command and of ``import proxy`` depends on what is
*not* imported; each check runs in a fresh interpreter, since this test process has
imported everything already.
"""

from __future__ import annotations

import json
import os
import pkgutil
import subprocess
import sys
from importlib import import_module
from pathlib import Path
from typing import Any

import pytest

import proxy
from proxy.storage.migrate import upgrade

SUB_PACKAGES = (
    "server",
    "metering",
    "pricing",
    "storage",
    "budgets",
    "admin",
    "emulator",
    "cli",
)


def modules_after(
    statement: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> set[str]:
    """The modules a fresh interpreter has loaded after running ``statement``."""
    code = f"import json, sys\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=cwd,
        env=env,
    )
    return set(json.loads(done.stdout.splitlines()[-1]))


@pytest.mark.parametrize("name", proxy.__all__)
def test_every_public_name_is_the_object_of_its_home_module(name: str):
    home = proxy._HOMES[name]
    assert getattr(proxy, name) is getattr(import_module(home, "proxy"), name)


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no_such_name"):
        proxy.no_such_name  # noqa: B018


def test_import_proxy_pulls_in_nothing_else():
    loaded = modules_after("import proxy")
    assert {m for m in loaded if m.startswith("proxy.")} == set()
    assert not {"aiohttp", "sqlalchemy", "pydantic"} & loaded


def test_the_cli_imports_the_server_emulator_and_repricing_only_when_run():
    loaded = modules_after("import proxy.cli.main")
    deferred = {
        "proxy.server.app",
        "proxy.server.forward",
        "proxy.server.admission",
        "proxy.server.upstream",
        "proxy.server.owned",
        "proxy.metering.recorder",
        "proxy.storage.writer",
        "proxy.cli.demo",
        "proxy.pricing.reprice",
        "google.genai",
    }
    assert not deferred & loaded
    assert not {m for m in loaded if m.startswith("proxy.emulator")}
    # the command modules themselves are loaded: the parser names their functions
    assert {"proxy.cli.serve", "proxy.cli.prices", "proxy.cli.emulate"} <= loaded


def test_pricing_is_importable_without_the_database():
    loaded = modules_after("from proxy.pricing import load_catalog, price")
    assert "sqlalchemy" not in loaded and "proxy.storage" not in loaded


@pytest.mark.parametrize("name", SUB_PACKAGES)
def test_each_sub_package_opens_with_its_place_in_the_data_path(name: str):
    package = import_module(f"proxy.{name}")
    assert package.__doc__ and len(package.__doc__.split()) > 20
    for module in pkgutil.iter_modules(package.__path__):
        assert import_module(f"proxy.{name}.{module.name}").__doc__, module.name


# The emulator is not here: it is an aiohttp server through and through.
@pytest.mark.parametrize("name", ["server", "metering", "pricing", "storage", "budgets", "cli"])
def test_a_sub_package_alone_loads_no_server_or_database_library(name: str):
    loaded = modules_after(f"import proxy.{name}")
    assert not {"aiohttp", "sqlalchemy"} & loaded


# What a start on the embedded default must not load: each is needed only by a setting
# that is off by default (tracing, Redis, an admin token, PostgreSQL, several workers),
# by a migration (the database here is at head), or by another command. Start-up time
# is mostly imports, so one of these creeping back onto the path is a regression.
NOT_ON_THE_SERVE_PATH = (
    "opentelemetry",
    "redis",
    "alembic",
    "asyncpg",
    "sqlalchemy.dialects.postgresql",
    "multiprocessing",
    "proxy.admin.routes",
    "proxy.admin.models",
    "proxy.admin.openapi",
    "proxy.admin.ui",
    "proxy.budgets.model",
    "proxy.storage.reports",
    "proxy.storage.budgets",
    "proxy.pricing.reprice",
    "proxy.emulator",
    "proxy.cli.demo",
    "google.genai",
)

# `gemini-meter serve`'s imports, then the app started as it starts it and asked /readyz.
_SERVE_TO_READY = """
import asyncio
import aiohttp
from aiohttp import web
import proxy.cli.main, proxy.cli.serve, proxy.server.run
from proxy.server.app import ProxyRunner, create_app
from proxy.settings import load_settings

async def start() -> None:
    runner = ProxyRunner(create_app(load_settings(upstream_api_key="upstream-key")))
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        async with aiohttp.ClientSession() as client:
            async with client.get(f"http://{host}:{port}/readyz") as response:
                assert response.status == 200, response.status
    finally:
        await runner.cleanup()

asyncio.run(start())
"""


def test_a_start_on_the_embedded_default_loads_nothing_it_does_not_serve_with(tmp_path: Path):
    # The embedded default: SQLite file, secret and journal in the working directory.
    upgrade(f"sqlite+aiosqlite:///{tmp_path / 'gemini-meter.db'}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GEMINI_METER_")}
    loaded = modules_after(_SERVE_TO_READY, cwd=tmp_path, env=env)
    assert (tmp_path / "gemini-meter.db.journal").exists()  # it did start, journal on
    assert "proxy.storage.writer" in loaded and "aiosqlite" in loaded
    found = {
        module
        for module in loaded
        for lazy in NOT_ON_THE_SERVE_PATH
        if module == lazy or module.startswith(lazy + ".")
    }
    assert found == set()


# `gemini-meter serve` run as the command runs it, to its first 200 on /readyz: the
# cyclic collector's passes from the moment the command loads the server's libraries
# (aiohttp is the first), and where the collector was turned on again among them.
_SERVE_COLLECTIONS = """
import gc, json, os, socket, sys, threading, time, urllib.request

with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
passes = []

def count(phase, info):
    if phase == "start" and "aiohttp" in sys.modules:
        passes.append(info["generation"])

def turned_on(enable=gc.enable):
    passes.append("enabled")
    enable()

gc.enable = turned_on

def watch():
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz") as response:
                if response.status == 200:
                    break
        except OSError:
            time.sleep(0.01)
    while "enabled" not in passes and time.monotonic() < deadline:
        time.sleep(0.01)
    print(json.dumps({"passes": passes[:passes.index("enabled") + 1]}), flush=True)
    os._exit(0)

threading.Thread(target=watch, daemon=True).start()
gc.callbacks.append(count)
from proxy.cli.main import main
main(["serve", f"--port={port}"])
"""


def _serve_script(tmp_path: Path, script: str, timeout: float, **env: str) -> dict[str, Any]:
    """Run ``script`` (which serves) on an embedded default at head in ``tmp_path``; what
    its last line of output says, as JSON."""
    upgrade(f"sqlite+aiosqlite:///{tmp_path / 'gemini-meter.db'}")
    environ = {k: v for k, v in os.environ.items() if not k.startswith("GEMINI_METER_")}
    environ.update(GEMINI_METER_UPSTREAM_API_KEY="upstream-key", GEMINI_METER_LOG_LEVEL="WARNING")
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
        cwd=tmp_path,
        env=environ | env,
    )
    return dict(json.loads(done.stdout.splitlines()[-1]))


def test_serve_pauses_the_cyclic_collector_until_it_listens(tmp_path: Path):
    passes = _serve_script(tmp_path, _SERVE_COLLECTIONS, 90)["passes"]
    # With the collector on, the imports and the start make some 180 passes here, one
    # of them over every object (generation 2); none once it is paused until listening.
    assert passes == ["enabled"]


# `gemini-meter serve --workers 2` until both workers answer (/readyz on the shared port,
# /metrics on each one's), then SIGTERM: whether the supervisor (this interpreter) loaded
# Alembic to check the database before its workers.
_SUPERVISOR = """
import contextlib, json, os, random, signal, socket, sys, threading, time, urllib.request

def free_ports(count):
    # Below the kernel's ephemeral range: the workers bind these a second or more later,
    # and meanwhile another test's client connections (thousands, in the benchmark's
    # smoke run) take their source ports from that range.
    with open("/proc/sys/net/ipv4/ip_local_port_range") as ports:
        ephemeral = int(ports.read().split()[0])
    while True:
        first = random.randrange(10_000, ephemeral - count)
        with contextlib.ExitStack() as held:
            try:
                for port in range(first, first + count):
                    held.enter_context(socket.socket()).bind(("127.0.0.1", port))
            except OSError:
                continue
        return first

port, metrics = free_ports(1), free_ports(2)
seen = {}

def answers(url):
    try:
        with urllib.request.urlopen(url) as response:
            return response.status == 200
    except OSError:
        return False

def watch():
    deadline = time.monotonic() + 60
    urls = [f"http://127.0.0.1:{port}/readyz"]
    urls += [f"http://127.0.0.1:{metrics + i}/metrics" for i in range(2)]
    while time.monotonic() < deadline:
        if all(answers(url) for url in urls):
            seen["ready"] = True
            break
        time.sleep(0.05)
    else:
        seen["ready"] = False
        seen["unanswered"] = [url for url in urls if not answers(url)]
    seen["alembic"] = "alembic" in sys.modules
    os.kill(os.getpid(), signal.SIGTERM)

threading.Thread(target=watch, daemon=True).start()
from proxy.cli.main import main
main(["serve", "--workers=2", f"--port={port}", f"--metrics-port={metrics}"])
print(json.dumps(seen), flush=True)
"""


def _supervise(tmp_path: Path, **env: str) -> dict[str, Any]:
    """Run ``_SUPERVISOR`` on an embedded default at head in ``tmp_path``."""
    return _serve_script(tmp_path, _SUPERVISOR, 120, **env)


def test_a_supervisor_leaves_a_database_at_head_alone_without_alembic(tmp_path: Path):
    assert _supervise(tmp_path) == {"ready": True, "alembic": False}


# Loaded by every process of the run (the supervisor and the workers it spawns): when the
# process turns the cyclic collector back on, it writes how many passes the collector made
# since aiohttp was loaded, in a file named by its pid.
_COUNT_PASSES = """
import gc, os, sys

_passes = []

def _count(phase, info):
    if phase == "start" and "aiohttp" in sys.modules:
        _passes.append(info["generation"])

def _turned_on(enable=gc.enable):
    mine = os.path.join(os.environ["PASSES_DIR"], str(os.getpid()))
    if not os.path.exists(mine):
        with open(mine, "w") as out:
            out.write(str(len(_passes)))
    enable()

gc.callbacks.append(_count)
gc.enable = _turned_on
"""


def test_each_worker_pauses_the_cyclic_collector_while_it_loads(tmp_path: Path):
    site, passes = tmp_path / "site", tmp_path / "passes"
    site.mkdir()
    passes.mkdir()
    (site / "sitecustomize.py").write_text(_COUNT_PASSES)
    outcome = _supervise(tmp_path, PYTHONPATH=str(site), PASSES_DIR=str(passes))
    assert outcome["ready"], outcome
    counts = [int(file.read_text()) for file in passes.iterdir()]
    # the supervisor and its two workers (and any worker restarted after dying)
    assert len(counts) >= 3
    # a worker loading the server with the collector on makes some 180 passes
    assert counts == [0] * len(counts)
