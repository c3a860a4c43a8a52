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
