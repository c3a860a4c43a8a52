"""``gemini-meter demo``: the seed's examples through the proxy, as two users.

Starts the emulator and the proxy in this process on loopback ports, on a
fresh embedded SQLite database, issues a key for each of two users, runs the
code-execution guide's examples with the real google-genai SDK (the sum of the
first 50 primes, image input, a multi-turn exchange through
``previous_interaction_id``, a streamed interaction, and generateContent),
then prints the usage table the way ``gemini-meter usage`` does.
"""

from __future__ import annotations

import asyncio
import base64
import sys
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from ..emulator import EmulatorConfig, create_emulator_app
from ..server.app import create_app
from ..server.typedefs import sessionmaker_key, writer_key
from ..settings import Secret, Settings
from ..storage import accounts, reports
from .format import render

PRIMES_PROMPT = (
    "What is the sum of the first 50 prime numbers? "
    "Generate and run code for the calculation, and make sure you get all 50."
)
CODE_EXECUTION = [{"type": "code_execution"}]
MODEL = "gemini-3.5-flash"


def tiny_png() -> bytes:
    """A valid 2x2 PNG made here, so the demo needs no network and no image file."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return len(data).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")

    header = (2).to_bytes(4, "big") * 2 + bytes([8, 2, 0, 0, 0])
    pixels = b"".join(b"\x00" + b"\xff\x00\x00" * 2 for _ in range(2))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(pixels))
        + chunk(b"IEND", b"")
    )


def _alice(client: Any) -> list[str]:
    """Alice (team research): code execution, image input, then a follow-up turn."""
    lines = []
    first = client.interactions.create(model=MODEL, input=PRIMES_PROMPT, tools=CODE_EXECUTION)
    for step in first.steps or []:
        if step.type == "code_execution_result":
            lines.append(f"alice: code execution printed {step.result.strip()!r}")
    image = base64.b64encode(tiny_png()).decode()
    client.interactions.create(
        model=MODEL,
        input=[
            {"type": "image", "data": image, "mime_type": "image/png"},
            {"type": "text", "text": "Zoom into the image and tell me what colour it is."},
        ],
        tools=CODE_EXECUTION,
    )
    lines.append("alice: image input sent")
    turn1 = client.interactions.create(
        model=MODEL, input="I have a math question for you.", tools=CODE_EXECUTION
    )
    client.interactions.create(
        model=MODEL,
        previous_interaction_id=turn1.id,
        input=PRIMES_PROMPT,
        tools=CODE_EXECUTION,
    )
    lines.append(f"alice: follow-up turn on {turn1.id}")
    return lines


def _bob(client: Any) -> list[str]:
    """Bob (team support): a streamed interaction and a generateContent call."""
    events = 0
    for _ in client.interactions.create(
        model=MODEL, input=PRIMES_PROMPT, tools=CODE_EXECUTION, stream=True
    ):
        events += 1
    response = client.models.generate_content(
        model="gemini-2.5-flash", contents="Explain code execution in one sentence."
    )
    return [
        f"bob: streamed interaction, {events} events",
        f"bob: generateContent, {response.usage_metadata.total_token_count} tokens",
    ]


async def _start(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


async def run_demo(directory: Path | None = None) -> int:
    from google import genai
    from google.genai import types

    workdir = directory or Path(tempfile.mkdtemp(prefix="gemini-meter-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    emulator, upstream = await _start(create_emulator_app(EmulatorConfig()))
    settings = Settings(
        upstream=upstream,
        upstream_api_key=Secret("demo-upstream-key"),
        database_url=f"sqlite+aiosqlite:///{workdir / 'gemini-meter.db'}",
        key_secret_file=workdir / "gemini-meter.secret",
        price_catalog=None,
    )
    app = create_app(settings)
    proxy, base_url = await _start(app)
    try:
        secret = settings.secret_bytes()
        async with app[sessionmaker_key]() as session:
            _, alice_key = await accounts.create_key(session, secret, "alice", "research")
            _, bob_key = await accounts.create_key(session, secret, "bob", "support")
            await session.commit()
        print(f"proxy {base_url} -> emulator {upstream}; database {workdir}", file=sys.stderr)

        def run(key: str, script: Callable[[Any], list[str]]) -> list[str]:
            client = genai.Client(api_key=key, http_options=types.HttpOptions(base_url=base_url))
            return script(client)

        for lines in await asyncio.gather(
            asyncio.to_thread(run, alice_key, _alice), asyncio.to_thread(run, bob_key, _bob)
        ):
            for line in lines:
                print(line)
        await app[writer_key].flush()
        async with app[sessionmaker_key]() as session:
            by_user = await reports.usage_report(session, group_by=("user", "team"))
            by_model = await reports.usage_report(session, group_by=("user", "model"))
    finally:
        await proxy.cleanup()
        await emulator.cleanup()
    columns = ["requests", *reports.TOKEN_COLUMNS, "cost_usd"]
    print("\nUsage by user")
    print(render(by_user, ["user", "team", *columns], "table"))
    print("\nUsage by user and model")
    print(render(by_model, ["user", "model", *columns], "table"))
    print(
        f"\nRecords are in {workdir / 'gemini-meter.db'}; report them again with\n"
        f"  gemini-meter usage --database sqlite+aiosqlite:///{workdir / 'gemini-meter.db'}"
        " --group-by user model"
    )
    return 0
