"""A local stand-in for the Gemini API: the upstream of the proxy's tests, demo and benchmarks.

The emulator (behind ``gemini-meter emulate`` and ``demo``) answers the
endpoints the proxy meters with the wire format the google-genai SDK parses,
and with usage figures that are a pure function of the request, so a test can
assert exact token counts and a benchmark measures the proxy, not a model.
Ids and timestamps differ between calls; numbers and text do not.

Endpoints take any version prefix (``v1``, ``v1beta``, ``v1alpha``, ...).
Every request needs a non-empty key (``x-goog-api-key`` or ``?key=``), else
401 UNAUTHENTICATED; every error is Gemini's ``{"error": {code, message,
status}}``; every response carries ``x-gemini-service-tier``, the effective
tier (the requested one, ``standard`` by default).

Modules, by concern:

- ``app``: the application factory, the middleware, ``run_emulator``;
- ``state``: ``EmulatorConfig`` and ``EmulatorState`` (what tests read);
- ``triggers``: request headers that make it delay, fail or misreport;
- ``interactions``: the Interactions API and its event streams;
- ``generate``: generateContent, its streams, countTokens;
- ``batches``: the Batch API and its responses files;
- ``files``: uploads (plain and resumable), get, list, delete, download;
- ``caches``: explicit context caching (``cachedContents``);
- ``files``: uploads, plain and resumable;
- ``media``: Imagen ``predict``, Veo ``predictLongRunning``, its operations and videos;
- ``usage``: deterministic token accounting and its wire shapes;
- ``replies``: what the emulated model says (code, primes, thinking);
- ``wire``: errors, JSON, headers shared by every endpoint.
"""

from .app import create_emulator_app, run_emulator
from .batches import EmulatedBatch, ServedResult
from .caches import EmulatedCache
from .files import EmulatedFile
from .interactions import EmulatedInteraction
from .replies import THOUGHT_TOKENS
from .state import (
    MAX_SEEN_REQUESTS,
    MAX_STORED_INTERACTIONS,
    EmulatorConfig,
    EmulatorState,
    ImagesServed,
    MediaLedger,
    SeenRequest,
    VideoOperation,
    emulator_state_key,
)
from .usage import AUDIO_TOKENS, DOCUMENT_TOKENS, IMAGE_TOKENS, VIDEO_TOKENS

__all__ = [
    "AUDIO_TOKENS",
    "DOCUMENT_TOKENS",
    "IMAGE_TOKENS",
    "MAX_SEEN_REQUESTS",
    "MAX_STORED_INTERACTIONS",
    "THOUGHT_TOKENS",
    "VIDEO_TOKENS",
    "EmulatedBatch",
    "EmulatedCache",
    "EmulatedFile",
    "EmulatedInteraction",
    "EmulatorConfig",
    "EmulatorState",
    "ImagesServed",
    "MediaLedger",
    "SeenRequest",
    "ServedResult",
    "VideoOperation",
    "create_emulator_app",
    "emulator_state_key",
    "run_emulator",
]
