"""What the emulator remembers, and how it is paced: the state tests read.

Everything lives in memory on ``app[emulator_state_key]``: interactions by id
(the newest ``MAX_STORED_INTERACTIONS``), the last ``MAX_SEEN_REQUESTS``
requests as they arrived (what a test checks the proxy relayed), open
resumable uploads, the files and cached contents created, and the ledger of images and
videos served (``MediaLedger``, filled by ``media``).
"""

from __future__ import annotations

import asyncio
import secrets
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from aiohttp import web

from .wire import ApiError

if TYPE_CHECKING:
    from .batches import EmulatedBatch, ServedResult
    from .caches import EmulatedCache
    from .file_search import EmulatedStore
    from .files import EmulatedFile, UploadSession
    from .generate import GenerateHop
    from .interactions import EmulatedInteraction
    from .live import AuthGrant, LiveLedger


MAX_SEEN_REQUESTS: Final = 10_000


MAX_STORED_INTERACTIONS: Final = 10_000


# Abandoned resumable uploads are forgotten past this many open sessions.
MAX_UPLOAD_SESSIONS: Final = 1_000


# An uploaded file's bytes are kept (for a batch to read its JSONL input) up to this size,
# and only the newest MAX_KEPT_FILES files' bytes.
MAX_KEPT_FILE_BYTES: Final = 16 * 1024**2
MAX_KEPT_FILES: Final = 100


# Files and caches kept (the oldest forgotten first), so a benchmark runs in bounded memory.
MAX_STORED_RESOURCES: Final = 10_000


@dataclass(frozen=True)
class EmulatorConfig:
    """Pacing of the emulator's answers."""

    latency_seconds: float = 0.0  # delay before the response starts
    chunk_delay_seconds: float = 0.0  # pause between streamed events/chunks
    background_seconds: float = 0.2  # how long a background interaction stays in_progress
    # how long a batch takes: BATCH_STATE_PENDING for the first half, RUNNING for the rest
    batch_seconds: float = 0.2


@dataclass(frozen=True)
class SeenRequest:
    """One request as the emulator received it, before anything else happened."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    api_key: str | None  # from x-goog-api-key, else ?key=, else a bearer token


@dataclass(frozen=True)
class ImagesServed:
    """One predict call: the images returned and those filtered out (not returned)."""

    model: str
    images: int
    filtered: int


@dataclass
class VideoOperation:
    """One Veo operation, from its create to the videos it generated."""

    name: str
    model: str
    seconds: int
    requested: int
    filtered: int
    resolution: str | None
    ready_at: float
    error_status: int | None = None
    # file ids of the generated videos, once done
    files: list[str] = field(default_factory=list)
    done: bool = False

    def refresh(self, now: float) -> None:
        if self.done or now < self.ready_at:
            return
        self.done = True
        if self.error_status is None:
            self.files = [secrets.token_hex(6) for _ in range(self.requested - self.filtered)]

    @property
    def video_seconds(self) -> int:
        """Seconds of video generated: what Google bills (nothing for a failed one)."""
        return self.seconds * len(self.files) if self.done else 0


@dataclass
class MediaLedger:
    """What the emulator served: the figures a test compares the proxy's records with."""

    images: list[ImagesServed] = field(default_factory=list)
    operations: OrderedDict[str, VideoOperation] = field(default_factory=OrderedDict)

    def images_served(self, model: str | None = None) -> int:
        return sum(i.images for i in self.images if model is None or i.model == model)

    def video_seconds(self, model: str | None = None) -> int:
        return sum(
            op.video_seconds
            for op in self.operations.values()
            if model is None or op.model == model
        )

    def add_operation(self, operation: VideoOperation) -> None:
        self.operations[operation.name] = operation
        while len(self.operations) > MAX_STORED_INTERACTIONS:
            self.operations.popitem(last=False)


class EmulatorState:
    """Everything the emulator remembers; tests read it through ``emulator_state_key``.

    ``interactions`` keeps the newest ``MAX_STORED_INTERACTIONS`` by id and
    ``requests`` the last ``MAX_SEEN_REQUESTS`` requests, oldest first, so a
    long benchmark runs in bounded memory.
    """

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.interactions: OrderedDict[str, EmulatedInteraction] = OrderedDict()
        self.requests: deque[SeenRequest] = deque(maxlen=MAX_SEEN_REQUESTS)
        # Resumable uploads between their start and their finalize, by upload id.
        self.upload_sessions: OrderedDict[str, UploadSession] = OrderedDict()
        # Interactions that ended requires_continuation, by the token they issued
        # (also those not stored: with store=false the token stands alone).
        self.continuations: OrderedDict[str, EmulatedInteraction] = OrderedDict()
        # generateContent replies cut by the decode limit, by their token's bytes.
        self.generate_continuations: OrderedDict[bytes, GenerateHop] = OrderedDict()
        # Uploaded files' bytes by name (``files/...``), see MAX_KEPT_FILE_BYTES.
        self.file_data: OrderedDict[str, bytes] = OrderedDict()
        # Batch API jobs by name (``batches/...``), and the responses files they wrote
        # (file name -> batch name).
        self.batches: OrderedDict[str, EmulatedBatch] = OrderedDict()
        self.responses_files: dict[str, str] = {}
        # The ledger: every batch result served (inline in a get, or a line of a
        # responses file download), in order, repeats included.
        self.batch_ledger: list[ServedResult] = []
        # Images and videos served (Imagen predict, Veo operations): see ``media``.
        self.media = MediaLedger()
        # Live API sessions as served (their usage ledger), oldest first, and the
        # ephemeral tokens minted; ``live_release`` ends a ``[hold]`` in a turn.
        self.live_sessions: deque[LiveLedger] = deque(maxlen=MAX_SEEN_REQUESTS)
        self.auth_tokens: OrderedDict[str, AuthGrant] = OrderedDict()
        self.live_release = asyncio.Event()
        # Uploaded files and cached contents, by resource name ("files/...",
        # "cachedContents/..."); deleted caches stay, marked, as the tests' ledger.
        self.files: OrderedDict[str, EmulatedFile] = OrderedDict()
        self.caches: OrderedDict[str, EmulatedCache] = OrderedDict()
        # File Search stores, by name; deleted ones stay, marked.
        self.file_search_stores: OrderedDict[str, EmulatedStore] = OrderedDict()

    def store_file(self, file: EmulatedFile) -> None:
        self.files[file.name] = file
        while len(self.files) > MAX_STORED_RESOURCES:
            self.files.popitem(last=False)

    def store_cache(self, cache: EmulatedCache) -> None:
        self.caches[cache.name] = cache
        while len(self.caches) > MAX_STORED_RESOURCES:
            self.caches.popitem(last=False)

    def store_file_search_store(self, store: EmulatedStore) -> None:
        self.file_search_stores[store.name] = store
        while len(self.file_search_stores) > MAX_STORED_RESOURCES:
            self.file_search_stores.popitem(last=False)

    def store(self, interaction: EmulatedInteraction) -> None:
        self.interactions[interaction.id] = interaction
        while len(self.interactions) > MAX_STORED_INTERACTIONS:
            self.interactions.popitem(last=False)

    def keep_file(self, name: str, data: bytes) -> None:
        if len(data) <= MAX_KEPT_FILE_BYTES:
            self.file_data[name] = data
            while len(self.file_data) > MAX_KEPT_FILES:
                self.file_data.popitem(last=False)

    def remember_token(self, token: str, interaction: EmulatedInteraction) -> None:
        self.continuations[token] = interaction
        while len(self.continuations) > MAX_STORED_INTERACTIONS:
            self.continuations.popitem(last=False)

    def remember_generate_token(self, token: bytes, hop: GenerateHop) -> None:
        self.generate_continuations[token] = hop
        while len(self.generate_continuations) > MAX_STORED_INTERACTIONS:
            self.generate_continuations.popitem(last=False)

    def continued(self, token: object) -> EmulatedInteraction | None:
        """The interaction that issued a ``continuation_token``, if any did."""
        return self.continuations.get(token) if isinstance(token, str) else None

    def lookup(self, interaction_id: str) -> EmulatedInteraction:
        found = self.interactions.get(interaction_id)
        if found is None:
            raise ApiError(404, f"Interaction {interaction_id!r} was not found.")
        return found


emulator_state_key: web.AppKey[EmulatorState] = web.AppKey("emulator_state", EmulatorState)
