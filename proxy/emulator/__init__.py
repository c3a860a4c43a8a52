"""The local Gemini stand-in behind ``gemini-meter emulate`` and ``demo``.

It speaks the wire format of the Interactions API and generateContent as
Google's documentation transcripts and recorded responses show it, with
deterministic usage, so tests, the demo and benchmarks need no network.
"""

from .interactions import (
    AUDIO_TOKENS,
    DOCUMENT_TOKENS,
    IMAGE_TOKENS,
    MAX_SEEN_REQUESTS,
    MAX_STORED_INTERACTIONS,
    THOUGHT_TOKENS,
    VIDEO_TOKENS,
    EmulatedInteraction,
    EmulatorConfig,
    EmulatorState,
    SeenRequest,
    create_emulator_app,
    emulator_state_key,
    run_emulator,
)

__all__ = [
    "AUDIO_TOKENS",
    "DOCUMENT_TOKENS",
    "IMAGE_TOKENS",
    "MAX_SEEN_REQUESTS",
    "MAX_STORED_INTERACTIONS",
    "THOUGHT_TOKENS",
    "VIDEO_TOKENS",
    "EmulatedInteraction",
    "EmulatorConfig",
    "EmulatorState",
    "SeenRequest",
    "create_emulator_app",
    "emulator_state_key",
    "run_emulator",
]
