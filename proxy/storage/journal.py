"""The durable journal: a finished record is on disk before the batching writer takes it.

``storage.writer`` appends every row it is handed (usage records and interaction
owners) here first and queues it for the database only once the journal has
fsync'd it; so a crash, a SIGKILL or a database outage loses nothing that was
recorded. The request path never waits for the disk:

- **write now, fsync in groups**: ``append`` encodes the row (orjson) and writes it
  to the active segment at once, on the event loop: one ``os.write`` into the
  kernel's page cache, a few microseconds. From then on the row outlives the
  process (a SIGKILL, an OOM kill, a crash), so the response it belongs to may
  go out at once. One flusher task then fsyncs in a worker thread, ``sync_interval``
  after the first row it covers (or at the next loop tick): one fsync covers every
  record written meanwhile, and rows written while it runs make the next one. A row's
  ``on_durable`` callback runs after its fsync, with the row and its *ticket* (the
  number of the segment that holds it); only then does the writer queue it for the
  database. What a machine crash (power, kernel) can lose is the rows written
  since the last fsync began: one group commit's worth, ``sync_interval`` plus
  an fsync of calls.
- **segments**: the journal is a directory of append-only files
  ``<number>.seg``. The active one is rotated past ``segment_bytes``; a segment
  is deleted once it is not active and every row in it has been ``release``d
  (committed by the writer, or refused by the database on its own merits).
- **replay**: ``open()`` reads every segment left by the previous run and
  returns its rows, in order, for the writer to queue again. The database
  writes are idempotent on ``request_id`` (and on the interaction id), so a row
  committed just before the crash, but not yet trimmed, is not doubled.
- **framing**: each row is ``<length:u32><crc32:u32><JSON>``. A torn or corrupt
  tail (a crash mid-write) ends that segment's replay; the rest of it is
  discarded with a warning. The JSON is ``[kind, layout, [values...]]``: the row's
  values in the order of a numbered column layout (``writes.USAGE_COLUMNS`` or
  ``OWNER_COLUMNS`` today, layout 1), the very tuple the writer queues. Frames of
  the first format, ``{"k": kind, "v": {column: value}}``, left on disk by an
  earlier release, are replayed too.
- **bound**: ``held_bytes`` counts the segments on disk. Past ``max_bytes`` the
  ``drop`` policy refuses the row (``append`` returns False, ``dropped_total``
  counts it) while the ``refuse`` policy keeps accepting rows of calls already
  admitted and reports ``refusing`` so that the handler answers new billable
  calls 503 before forwarding them.
- **one process per journal**: a journal lives in a *slot*, a subdirectory
  ``<n>`` of the configured directory, held with an exclusive ``flock`` for the
  life of the process. A process takes the first free slot, so several workers
  sharing one directory never share a journal, and a restarted process (the
  kernel frees the lock of a killed one) replays what its predecessor left.

Values are JSON: money as exact decimal strings, timestamps in ISO 8601;
``decode_frames`` turns them back by the column types of ``storage.schema``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import queue
import struct
import threading
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Table

from ..settings import JournalFullPolicy
from .schema import Interaction, Money, UsageRow, UTCDateTime
from .writes import OWNER_COLUMNS, USAGE_COLUMNS

__all__ = ["Entry", "Journal", "JournalBusy", "OnDurable", "decode_frames", "encode_frame"]

log = logging.getLogger(__name__)

USAGE = "usage"
OWNER = "owner"
_HEADER = struct.Struct("<II")  # payload length, crc32 of the payload
_MAX_FRAME = 64 * 1024 * 1024
_MAX_SLOTS = 256
_SUFFIX = ".seg"


class JournalBusy(Exception):
    """Every slot of the journal directory is held by another process."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One row read back from the journal: its kind, its columns and their values (a
    frame of the current layout: ``USAGE_COLUMNS`` or ``OWNER_COLUMNS`` themselves),
    its ticket."""

    kind: str
    names: tuple[str, ...]
    values: tuple[Any, ...]
    ticket: int

    def as_dict(self) -> dict[str, Any]:
        return dict(zip(self.names, self.values, strict=True))


# ------------------------------------------------------------------ pure encoding

# The column layouts of the frames' value lists, by kind and layout number. A frame
# names its layout, so that a release that changes a row's columns adds a layout and
# still replays what the previous one journaled.
_LAYOUTS: dict[tuple[str, int], tuple[str, ...]] = {
    (USAGE, 1): USAGE_COLUMNS,
    (OWNER, 1): OWNER_COLUMNS,
}
# What ``encode_frame`` writes: the layout of ``usage_row`` and ``owner_row`` tuples.
_CURRENT = {USAGE: 1, OWNER: 1}


# What orjson does not encode itself: money, as its exact decimal text. (``Decimal``'s own
# method, not a function of ours: orjson calls it for each of a row's nine amounts, and
# it refuses anything that is not a ``Decimal``, which orjson then raises. A datetime is
# orjson's own, written as ``isoformat`` writes it.)
_json_default = Decimal.__str__


def encode_frame(kind: str, values: tuple[Any, ...]) -> bytes:
    """One framed row: header, then ``[kind, layout, [values...]]`` as compact JSON
    (orjson: a couple of microseconds a row, cheap enough for the event loop).

    ``values`` is a row of the current layout (``writes.usage_row``,
    ``writes.owner_row``): no column names, which made up half of the frames of the
    first format (``{"k": kind, "v": {column: value}}``, still read by ``decode_frames``).
    """
    layout = _CURRENT[kind]
    if len(values) != len(_LAYOUTS[(kind, layout)]):
        # replayed, it would end its segment's replay as a corrupt frame would
        raise ValueError(f"a {kind} row of {len(values)} values, not layout {layout}'s")
    payload = orjson.dumps((kind, layout, values), default=_json_default)
    return _HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def _from_text(decode: Callable[[str], Any]) -> Callable[[Any], Any]:
    # Only a string was written for such a value: anything else (a float where money
    # belongs) is left for the writer's conversion to refuse, as it would have been.
    return lambda value: decode(value) if type(value) is str else value


def _decoders(table: Table) -> dict[str, Callable[[Any], Any]]:
    out: dict[str, Callable[[Any], Any]] = {}
    for column in table.columns:
        if isinstance(column.type, Money):
            out[column.name] = _from_text(Decimal)
        elif isinstance(column.type, UTCDateTime):
            out[column.name] = _from_text(datetime.fromisoformat)
    return out


_DECODERS = {
    USAGE: _decoders(UsageRow.__table__),  # type: ignore[arg-type]
    OWNER: _decoders(Interaction.__table__),  # type: ignore[arg-type]
}
# The same, by position in each layout.
_POSITIONAL = {
    key: [(names.index(name), decode) for name, decode in _DECODERS[key[0]].items()]
    for key, names in _LAYOUTS.items()
}

Decoded = tuple[str, tuple[str, ...], tuple[Any, ...]]
# Called with a row (its kind and values) and its ticket once the row is fsync'd.
OnDurable = Callable[[str, tuple[Any, ...], "int | None"], None]


def _decode(payload: bytes) -> Decoded:
    obj = orjson.loads(payload)
    if type(obj) is list:
        kind, layout, values = obj
        names = _LAYOUTS[(kind, layout)]
        if type(values) is not list or len(values) != len(names):
            raise ValueError(f"a {kind} frame of layout {layout} with {len(values)} values")
        for index, decode in _POSITIONAL[(kind, layout)]:
            if values[index] is not None:
                values[index] = decode(values[index])
        return kind, names, tuple(values)
    # The first format: {"k": kind, "v": {column: value}}, written until frames had layouts.
    kind, row = obj["k"], obj["v"]
    decoders = _DECODERS[kind]
    for name, decode in decoders.items():
        if row.get(name) is not None:
            row[name] = decode(row[name])
    columns = tuple(row)
    current = _LAYOUTS[(kind, _CURRENT[kind])]
    # The current columns are the object itself: the writer groups rows by it.
    return kind, current if columns == current else columns, tuple(row.values())


def decode_frames(data: bytes) -> tuple[list[Decoded], int]:
    """The rows framed in ``data`` (kind, column names, values) up to the first torn or
    corrupt frame, and the number of bytes that were valid (the rest is a tail to
    discard)."""
    rows: list[Decoded] = []
    pos = 0
    while pos + _HEADER.size <= len(data):
        length, crc = _HEADER.unpack_from(data, pos)
        start = pos + _HEADER.size
        end = start + length
        if length > _MAX_FRAME or end > len(data):
            break
        payload = data[start:end]
        if zlib.crc32(payload) != crc:
            break
        try:
            rows.append(_decode(payload))
        except (ValueError, KeyError, TypeError):
            break
        pos = end
    return rows, pos


# ------------------------------------------------------------------ the journal's thread

_Job = tuple[Callable[..., Any], tuple[Any, ...], "asyncio.Future[Any] | None"]


class _Worker:
    """The journal's one thread: fsyncs, closes and deletions, run in the order given.

    What ``loop.run_in_executor`` did, with less per job: a job is a function and its
    arguments on a ``SimpleQueue``, and its outcome reaches the loop's future by one
    ``call_soon_threadsafe``. The executor's own future, lock, semaphore and worker
    bookkeeping, and the second future chained onto the loop, came with every group
    commit, one every few milliseconds however light the traffic: dropping them saved
    1–5% of a call's CPU at concurrency 1 in four A/B runs of five (docs/benchmarks.md).
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._serve, name="gemini-meter-journal", daemon=True
            )
            self._thread.start()

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` in the thread, after the jobs before it; its outcome is not
        awaited (a failure is logged)."""
        self._start()
        self._jobs.put((fn, args, None))

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` in the thread, after the jobs before it: its result, or its error."""
        self._start()
        done = asyncio.get_running_loop().create_future()
        self._jobs.put((fn, args, done))
        return await done

    def shutdown(self) -> None:
        """Let the jobs given so far finish, then end the thread."""
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join()
            self._thread = None

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            fn, args, done = job
            try:
                result, error = fn(*args), None
            except BaseException as exc:  # handed on, as an executor would: never a hang
                result, error = None, exc
            if done is None:
                if error is not None:
                    log.warning("journal housekeeping failed: %s", error)
                continue
            with contextlib.suppress(RuntimeError):  # the loop closed: no one is waiting
                done.get_loop().call_soon_threadsafe(_settle, done, result, error)


def _settle(done: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if done.cancelled():
        return
    if error is not None:
        done.set_exception(error)
    else:
        done.set_result(result)


# ------------------------------------------------------------------ the journal


class Journal:
    """An append-only, group-committed, self-trimming journal of rows (see module doc).

    Counters for ``server.metrics``: ``held_bytes``, ``appended_total``,
    ``dropped_total``, ``refused_total``, ``write_errors_total``, ``commits_total``,
    ``replayed``.
    """

    def __init__(
        self,
        directory: Path,
        *,
        max_bytes: int,
        segment_bytes: int = 8 * 1024 * 1024,
        policy: JournalFullPolicy = JournalFullPolicy.REFUSE,
        sync_interval: float = 0.0,
    ) -> None:
        if max_bytes <= 0 or segment_bytes <= 0:
            raise ValueError("max_bytes and segment_bytes must be positive")
        if sync_interval < 0:
            raise ValueError("sync_interval must not be negative")
        # How long a group commit gathers rows before its fsync (0: the next loop tick).
        self.sync_interval = sync_interval
        self.directory = directory
        self.max_bytes = max_bytes
        self.policy = policy
        self._segment_bytes = segment_bytes
        self.slot: Path | None = None
        self._lock_fd: int | None = None
        self._fd: int | None = None
        self._active = 0  # number of the segment being appended to
        self._active_size = 0
        # segment number -> bytes on disk / rows not yet released; touched on the loop only
        self._sizes: dict[int, int] = {}
        self._live: dict[int, int] = {}
        self._disk_bytes = 0
        # Rows written since the last group commit began: their callbacks and tickets
        # (None: the write failed), run once the fsync covering them is done.
        self._unsynced: list[tuple[OnDurable, str, tuple[Any, ...], int | None]] = []
        # Descriptors of segments rotated away, for the next group commit to fsync and close.
        self._retired: list[int] = []
        self._new_segment = False  # a segment was created: the directory needs its fsync too
        self._fd_broken = False  # a write failed: the next row starts a fresh segment
        self._flusher: asyncio.Task[None] | None = None
        # One thread: fsyncs, closes and deletions happen in order.
        self._worker = _Worker()
        self._closed = False
        self._dropping = False

        self.appended_total = 0
        self.dropped_total = 0
        self.refused_total = 0
        self.write_errors_total = 0
        self.commits_total = 0  # group commits (one write and one fsync each)
        self.replayed = 0

    # ------------------------------------------------------------ state

    @property
    def held_bytes(self) -> int:
        """Bytes held: the segments on disk, rows not yet fsync'd included."""
        return self._disk_bytes

    @property
    def full(self) -> bool:
        return self.held_bytes >= self.max_bytes

    @property
    def refusing(self) -> bool:
        """Whether new billable calls must be refused (the ``refuse`` policy, full)."""
        return self.policy is JournalFullPolicy.REFUSE and self.full

    def admit(self) -> bool:
        """The admission check: False (and counted) when a new billable call must be refused."""
        if self.refusing:
            self.refused_total += 1
            return False
        return True

    # ------------------------------------------------------------ open / close

    def open(self) -> list[Entry]:
        """Take a slot, read what a previous run left in it, start a new segment.

        Blocking (file I/O at start-up): call it before serving, or in a thread.
        Returns the rows to hand to the writer again, oldest first.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        self._take_slot()
        assert self.slot is not None
        self._adopt_orphans()
        entries: list[Entry] = []
        numbers = sorted(int(p.stem) for p in self.slot.glob(f"*{_SUFFIX}") if p.stem.isdigit())
        for number in numbers:
            path = self._segment_path(number)
            data = path.read_bytes()
            rows, valid = decode_frames(data)
            if valid < len(data):
                log.warning(
                    "journal segment %s: discarding a torn or corrupt tail of %d bytes",
                    path.name,
                    len(data) - valid,
                )
            if not rows:
                path.unlink()
                continue
            self._sizes[number] = len(data)
            self._disk_bytes += len(data)
            self._live[number] = len(rows)
            entries.extend(Entry(kind, names, values, number) for kind, names, values in rows)
        self.replayed = len(entries)
        self._active = (numbers[-1] + 1) if numbers else 0
        self._open_segment(self._active)
        self._sizes.setdefault(self._active, 0)
        self._live.setdefault(self._active, 0)
        _fsync_dir(self.slot)
        if entries:
            log.info(
                "journal %s: %d records from the previous run are handed to the writer again",
                self.slot,
                len(entries),
            )
        return entries

    def _take_slot(self) -> None:
        for n in range(_MAX_SLOTS):
            slot = self.directory / str(n)
            slot.mkdir(exist_ok=True)
            fd = os.open(slot / "lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            self.slot, self._lock_fd = slot, fd
            return
        raise JournalBusy(f"all {_MAX_SLOTS} journal slots in {self.directory} are in use")

    def _adopt_orphans(self) -> None:
        """Move into this slot the segments of every slot no process holds.

        A restarted process takes its predecessor's slot back, but when fewer
        processes start than ran before (``workers`` lowered, a replica gone), some
        slots would never be taken again: their rows are adopted here, under the
        orphan slot's own lock, and replayed with this slot's (writes are idempotent,
        so a row replayed twice is still stored once).
        """
        assert self.slot is not None
        mine = [int(p.stem) for p in self.slot.glob(f"*{_SUFFIX}") if p.stem.isdigit()]
        following = max(mine, default=-1) + 1
        for other in sorted(self.directory.iterdir()):
            if other == self.slot or not other.name.isdigit() or not other.is_dir():
                continue
            segments = sorted(
                (int(p.stem), p) for p in other.glob(f"*{_SUFFIX}") if p.stem.isdigit()
            )
            if not segments:
                continue
            fd = os.open(other / "lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue  # a live process's journal
            try:
                for _, path in segments:
                    if path.exists():  # re-read under the lock: it may have been trimmed
                        os.rename(path, self._segment_path(following))
                        following += 1
                _fsync_dir(self.slot)
                _fsync_dir(other)
                log.info("journal %s: adopted %d segments of %s", self.slot, len(segments), other)
            finally:
                os.close(fd)  # closing the descriptor releases the lock

    def _segment_path(self, number: int) -> Path:
        assert self.slot is not None
        return self.slot / f"{number:012d}{_SUFFIX}"

    def _open_segment(self, number: int) -> None:
        self._fd = os.open(
            self._segment_path(number), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600
        )
        self._active = number
        self._active_size = 0

    async def flush(self) -> None:
        """Wait until every row appended so far is fsync'd (or failed to be)."""
        while self._flusher is not None and not self._flusher.done():
            await asyncio.shield(self._flusher)

    async def close(self) -> None:
        """Flush, then close the files and free the slot. Unreleased rows stay for the
        next start; an empty journal leaves no segment behind."""
        if self._closed:
            return
        await self.flush()
        self._closed = True
        await self._worker.run(self._close_files)
        self._worker.shutdown()

    def _close_files(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        for number, live in list(self._live.items()):
            if live == 0:
                self._delete(number)
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # frees the flock
            self._lock_fd = None

    # ------------------------------------------------------------ append / release

    def append(self, kind: str, values: tuple[Any, ...], on_durable: OnDurable) -> bool:
        """Write a row to the active segment now; never awaits, never waits for the disk.

        The row is encoded and written (``os.write``, into the kernel's page cache) before
        this returns, so it outlives the process from then on. Making it durable against
        the machine failing is the group commit's work, in the journal's thread:
        ``on_durable(kind, values, ticket)`` runs once the row is fsync'd (ticket: the
        segment holding it, to ``release`` later), or with ``None`` if it could not be
        written, so that the row still reaches the database. (The row is handed back,
        not bound into a closure per row: ``append`` runs once per billable call, and the
        closure and its cells were a fair share of what it allocated, which the garbage
        collector then keeps walking.) Returns False when the row was not accepted
        (the ``drop`` policy and a full journal, or a closed one). A row that cannot be
        encoded raises (a bug: the caller sends it on unjournaled).
        """
        frame = encode_frame(kind, values)
        size = len(frame)
        full = self.policy is JournalFullPolicy.DROP and self.held_bytes + size > self.max_bytes
        if self._closed or full:
            self.dropped_total += 1
            if not self._dropping:
                self._dropping = True
                log.error(
                    "journal full (%d of %d bytes): dropping records until it drains",
                    self.held_bytes,
                    self.max_bytes,
                )
            return False
        self.appended_total += 1
        try:
            ticket = self._write(frame)
        except OSError as exc:
            # The disk failed: the row is not journaled, but it must still reach the
            # database. The next row starts a fresh segment in case this one is torn.
            self.write_errors_total += 1
            log.error("journal write failed, a record goes on unjournaled: %s", exc)
            self._fd_broken = True
            self._unsynced.append((on_durable, kind, values, None))
        else:
            self._unsynced.append((on_durable, kind, values, ticket))
        self._start_flusher()
        return True

    def _write(self, frame: bytes) -> int:
        """Append one frame to the active segment (rotated first when full); its ticket."""
        if self._fd_broken or self._fd is None or self._active_size >= self._segment_bytes:
            self._rotate()
        assert self._fd is not None
        view = memoryview(frame)
        while view:
            view = view[os.write(self._fd, view) :]
        ticket = self._active
        self._active_size += len(frame)
        self._sizes[ticket] = self._sizes.get(ticket, 0) + len(frame)
        self._live[ticket] = self._live.get(ticket, 0) + 1
        self._disk_bytes += len(frame)
        return ticket

    def _rotate(self) -> None:
        """Start the next segment; the old one is fsync'd and closed by the next group
        commit (and deleted once every row in it is released)."""
        old, old_fd = self._active, self._fd
        self._fd = None
        if old_fd is not None:
            self._retired.append(old_fd)
        self._open_segment(old + 1)  # a failure here leaves _fd None: the next row retries
        self._fd_broken = False
        self._new_segment = True
        self._sizes.setdefault(self._active, 0)
        self._live.setdefault(self._active, 0)
        if self._live.get(old) == 0:
            self._forget(old)

    def _start_flusher(self) -> None:
        if self._flusher is None or self._flusher.done():
            # Started now, it runs at the next loop iteration: every row appended
            # in this tick joins the same fsync.
            self._flusher = asyncio.get_running_loop().create_task(
                self._flush_loop(), name="gemini-meter journal"
            )

    def release(self, tickets: Iterable[int]) -> None:
        """The rows with these tickets are committed: trim the segments they emptied."""
        for ticket in tickets:
            live = self._live.get(ticket)
            if live is None:
                continue
            self._live[ticket] = live - 1
            if live == 1:
                if ticket != self._active:
                    self._forget(ticket)
                elif not self._closed and self._active_size > 0:
                    # Everything in the active segment is committed: rotate it away, so
                    # that an idle journal holds nothing (and a full one drains).
                    with contextlib.suppress(OSError):
                        self._rotate()
                        self._start_flusher()
        if self._dropping and not self.full:
            self._dropping = False
            log.warning("journal accepting records again")

    def _forget(self, number: int) -> None:
        self._live.pop(number, None)
        self._disk_bytes -= self._sizes.pop(number, 0)
        if not self._closed:
            self._worker.submit(self._delete, number)

    def _delete(self, number: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._segment_path(number).unlink()

    # ------------------------------------------------------------ the group commit

    async def _flush_loop(self) -> None:
        while self._unsynced or self._retired or self._new_segment:
            if self.sync_interval and not self._closed:
                await asyncio.sleep(self.sync_interval)  # gather the rows of the next calls
            waiting, self._unsynced = self._unsynced, []
            retired, self._retired = self._retired, []
            new_segment, self._new_segment = self._new_segment, False
            try:
                await self._worker.run(self._sync, self._fd, retired, new_segment)
            except OSError as exc:
                # The rows are written but perhaps not durable against a machine crash;
                # they go on to the database all the same (their segment stays until then).
                self.write_errors_total += 1
                log.error("journal fsync failed for %d records: %s", len(waiting), exc)
            self.commits_total += bool(waiting)
            for callback, kind, values, ticket in waiting:
                try:
                    callback(kind, values, ticket)
                except Exception:
                    log.exception("journal callback failed")

    def _sync(self, fd: int | None, retired: list[int], new_segment: bool) -> None:
        """In the journal's thread: fsync the active segment and the ones rotated away
        (then close those), and the directory when a segment was created."""
        try:
            for old in retired:
                os.fdatasync(old)
        finally:
            for old in retired:
                os.close(old)
        if fd is not None:
            with contextlib.suppress(OSError):  # rotated and closed meanwhile: synced there
                os.fdatasync(fd)
        if new_segment:
            assert self.slot is not None
            _fsync_dir(self.slot)


def _fsync_dir(path: Path) -> None:
    """Make a file's creation durable (its directory entry)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
