"""``gemini-meter emulate`` and ``demo``: the local Gemini stand-in, alone or with the proxy.

Both import what they run (the emulator, the demo and with it the server) only when they
run.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from .common import Subparsers, command


def register(subparsers: Subparsers) -> None:
    p = command(
        subparsers,
        "emulate",
        cmd_emulate,
        help="run the local Gemini API emulator (no Google key needed)",
        description="Run a local stand-in for the Gemini API: generateContent, streams, "
        "interactions, code execution and embeddings, with usage like Gemini's. Point "
        "`gemini-meter serve --upstream http://127.0.0.1:PORT` at it to try the proxy offline.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8090, help="port to listen on")
    p.add_argument("--latency-ms", type=float, default=0.0, help="delay before each response")
    p.add_argument("--chunk-delay-ms", type=float, default=0.0, help="pause between chunks")
    p.add_argument(
        "--background-seconds",
        type=float,
        default=0.2,
        help="how long a background interaction runs before it completes",
    )

    p = command(
        subparsers,
        "demo",
        cmd_demo,
        help="run the seed's examples through the proxy as two users",
        description="Start the emulator and the proxy on a fresh SQLite file, issue keys for "
        "two users, run the examples through the google-genai SDK and print the usage.",
    )
    p.add_argument("--dir", help="where to keep the demo database (default: a new temp dir)")


def cmd_emulate(args: argparse.Namespace) -> int:
    from ..emulator import EmulatorConfig, run_emulator

    config = EmulatorConfig(
        latency_seconds=args.latency_ms / 1000,
        chunk_delay_seconds=args.chunk_delay_ms / 1000,
        background_seconds=args.background_seconds,
    )
    print(f"Gemini emulator on http://{args.host}:{args.port}", file=sys.stderr)
    try:
        asyncio.run(run_emulator(args.host, args.port, config))
    except KeyboardInterrupt:
        pass
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    if args.log_level is None:
        # The demo's output is its report; library chatter would bury it.
        logging.getLogger().setLevel(logging.WARNING)

    return asyncio.run(run_demo(Path(args.dir) if args.dir else None))
