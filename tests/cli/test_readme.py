"""The README's offline recipe, run as written: ``emulate``, ``serve``, ``curl``.

The three lines are read from the README itself, so the recipe cannot drift from what
works. Only the ports change (free ones instead of 8001 and 8080, so parallel runs do
not collide); ``gemini-meter`` is this interpreter's ``-m proxy.cli.main``, and the
``curl`` line is sent as the same request (its URL, ``-H`` headers and ``-d`` body)
with urllib, so the test needs no curl binary.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.faults.helpers import free_port

README = Path(__file__).resolve().parents[2] / "README.md"
GEMINI_METER = [sys.executable, "-m", "proxy.cli.main"]


def recipe() -> list[str]:
    """The lines of the shell block under the README's offline heading."""
    text = README.read_text()
    section = text.split("### Try it offline: three commands", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None
    return block.group(1).strip().splitlines()


def split_env(line: str) -> tuple[dict[str, str], list[str]]:
    """A shell line's leading NAME=value assignments, and its words."""
    words = shlex.split(line)
    env = {}
    while words and re.fullmatch(r"[A-Z_]+=.*", words[0]):
        name, _, value = words.pop(0).partition("=")
        env[name] = value
    return env, words


def curl_request(words: list[str]) -> urllib.request.Request:
    """The request a ``curl URL -H ... -d ...`` line sends; any other flag fails the test."""
    assert words[0] == "curl"
    url, headers, data = None, {}, None
    rest = iter(words[1:])
    for word in rest:
        if word == "-H":
            name, _, value = next(rest).partition(":")
            headers[name.strip()] = value.strip()
        elif word == "-d":
            data = next(rest).encode()
        else:
            assert not word.startswith("-"), f"the test does not know curl's {word}"
            url = word
    assert url is not None
    # curl -d means POST.
    return urllib.request.Request(url, data=data, headers=headers, method="POST")


def wait_until(check, what: str, process: subprocess.Popen[bytes], log: Path) -> None:
    """Poll ``check`` (bounded: 60 s of tries), failing early if ``process`` died."""
    deadline = time.monotonic() + 60
    while not check():
        assert process.poll() is None, f"{what}: the process exited\n{log.read_text()}"
        assert time.monotonic() < deadline, f"{what}: not ready\n{log.read_text()}"
        time.sleep(0.1)


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status < 500)
    except urllib.error.HTTPError as exc:
        return exc.code < 500
    except OSError:
        return False


def test_the_offline_recipe_in_the_readme_works(tmp_path):
    emulate_line, serve_line, curl_line = recipe()
    emulator_port, proxy_port = free_port(), free_port()

    env = {k: v for k, v in os.environ.items() if not k.startswith("GEMINI_METER_")}
    # The proxy's port: the recipe relies on the default (8080), taken here from a free one.
    env["GEMINI_METER_PORT"] = str(proxy_port)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        extra, words = split_env(emulate_line.replace("8001", str(emulator_port)))
        assert words[0] == "gemini-meter" and not extra
        emulator_log = tmp_path / "emulate.log"
        with emulator_log.open("wb") as out:
            emulator = subprocess.Popen(
                [*GEMINI_METER, *words[1:]], cwd=tmp_path, env=env, stdout=out, stderr=out
            )
        processes.append(emulator)
        wait_until(
            lambda: answers(f"http://127.0.0.1:{emulator_port}/"),
            "emulator",
            emulator,
            emulator_log,
        )

        extra, words = split_env(serve_line.replace("8001", str(emulator_port)))
        assert words[0] == "gemini-meter"
        proxy_log = tmp_path / "serve.log"
        with proxy_log.open("wb") as out:
            proxy = subprocess.Popen(
                [*GEMINI_METER, *words[1:]],
                cwd=tmp_path,
                env={**env, **extra},
                stdout=out,
                stderr=out,
            )
        processes.append(proxy)
        wait_until(
            lambda: answers(f"http://127.0.0.1:{proxy_port}/healthz"), "proxy", proxy, proxy_log
        )

        _, words = split_env(curl_line.replace("8080", str(proxy_port)))
        with urllib.request.urlopen(curl_request(words), timeout=30) as response:
            assert response.status == 200
            body = json.loads(response.read())
        assert body["candidates"][0]["content"]["parts"][0]["text"]
        served_total = body["usageMetadata"]["totalTokenCount"]

        # The record: in ./gemini-meter.db of the directory serve ran in, as `usage` reads it.
        def recorded() -> list[dict[str, Any]]:
            done = subprocess.run(
                [*GEMINI_METER, "usage", "--format", "json"],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert done.returncode == 0, done.stderr
            found: list[dict[str, Any]] = json.loads(done.stdout)
            return found

        rows: list[dict[str, Any]] = []

        def has_record() -> bool:
            rows[:] = recorded()
            return bool(rows)

        wait_until(has_record, "the record", proxy, proxy_log)
        [row] = rows
        assert row["requests"] == 1
        # The emulator's own figure for what it served.
        assert row["total_tokens"] == served_total
        assert row["user"].startswith("fp-")  # passthrough: the key's fingerprint, never the key
        assert "any-key" not in proxy_log.read_text()
    finally:
        for process in reversed(processes):
            process.send_signal(signal.SIGTERM)
        for process in reversed(processes):
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
