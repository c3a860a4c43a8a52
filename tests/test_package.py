"""The package's shape: the curated public names, and imports that stay lazy.

Start-up time of a quick CLI command and of ``import proxy`` depends on what is
*not* imported; each check runs in a fresh interpreter, since this test process has
imported everything already.
"""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from importlib import import_module

import pytest

import proxy

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


def modules_after(statement: str) -> set[str]:
    """The modules a fresh interpreter has loaded after running ``statement``."""
    code = f"import json, sys\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    return set(json.loads(done.stdout))


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
