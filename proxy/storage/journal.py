"""The durable journal: a finished record is on disk before the batching writer takes it.

``storage.writer`` appends every row it is handed (usage records and interaction
owners) here first and queues it for the database only once the journal has
fsync'd it; so a crash, a SIGKILL or a database outage loses nothing that was
recorded. The request path never waits for the disk:

- **group commit**: ``append`` only adds the row to an in-memory batch. One
  flusher task encodes the batch's rows, writes them and fsyncs in a worker
  thread (the event loop does no per-row JSON work); rows appended
  while a fsync runs make the next batch, so one fsync covers every record that
  arrived in the same loop tick (or during the previous fsync). A row's
  ``on_durable`` callback runs after its fsync, with its *ticket* (the number of
  the segment that holds it).
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
  discarded with a warning.
- **bound**: ``held_bytes`` counts the segments on disk plus the batch not yet
  written (its rows at the size of the last ones written until the thread has
  encoded them; the ``drop`` policy encodes each row at once, as it refuses rows
  by their exact size). Past ``max_bytes`` the ``drop`` policy refuses the row (``append``
  returns False, ``dropped_total`` counts it) while the ``refuse`` policy keeps
  accepting rows of calls already admitted and reports ``refusing`` so that the
  handler answers new billable calls 503 before forwarding them.
- **one process per journal**: a journal lives in a *slot*, a subdirectory
  ``<n>`` of the configured directory, held with an exclusive ``flock`` for the
  life of the process. A process takes the first free slot, so several workers
  sharing one directory never share a journal, and a restarted process (the
  kernel frees the lock of a killed one) replays what its predecessor left.

Rows are JSON objects of column values: money as exact decimal strings,
timestamps in ISO 8601; ``decode`` turns them back by the column types of
``storage.schema``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import struct
import zlib
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import Table

from ..settings import JournalFullPolicy
from .schema import Interaction, Money, UsageRow, UTCDateTime

__all__ = ["Entry", "Journal", "JournalBusy", "decode_frames", "encode_frame"]

log = logging.getLogger(__name__)

USAGE = "usage"
OWNER = "owner"
_HEADER = struct.Struct("<II")  # payload length, crc32 of the payload
_MAX_FRAME = 64 * 1024 * 1024
_MAX_SLOTS = 256
# What an unencoded row counts for in ``held_bytes`` until the first group commit
# measures real ones (a usage row's frame is about this size).
_FIRST_ESTIMATE = 1024
_SUFFIX = ".seg"


class JournalBusy(Exception):
    """Every slot of the journal directory is held by another process."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One row read back from the journal: its kind, its column values, its ticket."""

    kind: str
    values: dict[str, Any]
    ticket: int


# ------------------------------------------------------------------ pure encoding


def _json_default(value: object) -> object:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"cannot journal a {type(value).__name__}")


# Made once: ``json.dumps`` with any option builds a new encoder on every call, which
# was half the cost of journaling a row (on the event loop, in ``append``).
_ENCODER = json.JSONEncoder(default=_json_default, separators=(",", ":"))


def encode_frame(kind: str, values: dict[str, Any]) -> bytes:
    """One framed row: header, then ``{"k": kind, "v": values}`` as compact JSON."""
    payload = _ENCODER.encode({"k": kind, "v": values}).encode()
    return _HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def _decoders(table: Table) -> dict[str, Callable[[Any], Any]]:
    out: dict[str, Callable[[Any], Any]] = {}
    for column in table.columns:
        if isinstance(column.type, Money):
            out[column.name] = Decimal
        elif isinstance(column.type, UTCDateTime):
            out[column.name] = datetime.fromisoformat
    return out


_DECODERS = {
    USAGE: _decoders(UsageRow.__table__),  # type: ignore[arg-type]
    OWNER: _decoders(Interaction.__table__),  # type: ignore[arg-type]
}


def _decode(payload: bytes) -> tuple[str, dict[str, Any]]:
    obj = json.loads(payload)
    kind, values = obj["k"], obj["v"]
    decoders = _DECODERS[kind]
    for name, decode in decoders.items():
        if values.get(name) is not None:
            values[name] = decode(values[name])
    return kind, values


def decode_frames(data: bytes) -> tuple[list[tuple[str, dict[str, Any]]], int]:
    """The rows framed in ``data`` up to the first torn or corrupt frame, and the
    number of bytes that were valid (the rest is a tail to discard)."""
    rows: list[tuple[str, dict[str, Any]]] = []
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
    ) -> None:
        if max_bytes <= 0 or segment_bytes <= 0:
            raise ValueError("max_bytes and segment_bytes must be positive")
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
        # A frame, or (with the refuse policy) a row the journal's thread encodes.
        self._pending: list[bytes | tuple[str, dict[str, Any]]] = []
        self._callbacks: list[Callable[[int | None], None]] = []
        self._pending_sizes: list[int] = []  # exact, or estimated until encoded
        self._pending_bytes = 0
        self._frame_estimate = _FIRST_ESTIMATE
        self._flusher: asyncio.Task[None] | None = None
        # One thread: writes, fsyncs, rotations and deletions happen in order.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="gemini-meter-journal")
        self._closed = False
        self._dropping = False
        # the active segment holds only released rows: start a fresh one, so it can go
        self._rotate_requested = False

        self.appended_total = 0
        self.dropped_total = 0
        self.refused_total = 0
        self.write_errors_total = 0
        self.commits_total = 0  # group commits (one write and one fsync each)
        self.replayed = 0

    # ------------------------------------------------------------ state

    @property
    def held_bytes(self) -> int:
        """Bytes held: segments on disk plus rows waiting for their fsync."""
        return self._disk_bytes + self._pending_bytes

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
            entries.extend(Entry(kind, values, number) for kind, values in rows)
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
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._close_files)
        self._executor.shutdown(wait=True)

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

    def append(
        self, kind: str, values: dict[str, Any], on_durable: Callable[[int | None], None]
    ) -> bool:
        """Add a row to the next group commit; never awaits, never blocks on the disk.

        ``on_durable(ticket)`` runs once the row is fsync'd (ticket: the segment
        holding it, to ``release`` later), or with ``None`` if the disk failed, so
        that the row still reaches the database. Returns False when the row was
        not accepted (the ``drop`` policy and a full journal, or a closed one).
        """
        item: bytes | tuple[str, dict[str, Any]]
        if self.policy is JournalFullPolicy.DROP:
            # The bound refuses rows by their exact size: encode now.
            item = encode_frame(kind, values)
            size = len(item)
            full = self.held_bytes + size > self.max_bytes
        else:
            # Encoded in the journal's thread, off the event loop: the caller's ``values``
            # is a snapshot nobody changes. Counted at an estimate until then.
            item, size, full = (kind, values), self._frame_estimate, False
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
        self._pending.append(item)
        self._callbacks.append(on_durable)
        self._pending_sizes.append(size)
        self._pending_bytes += size
        self.appended_total += 1
        self._start_flusher()
        return True

    def _start_flusher(self) -> None:
        if self._flusher is None or self._flusher.done():
            # Started now, it runs at the next loop iteration: every row appended
            # in this tick joins the same fsync.
            self._flusher = asyncio.get_running_loop().create_task(
                self._flush_loop(), name="gemini-meter journal"
            )

    def release(self, tickets: Iterable[int]) -> None:
        """The rows with these tickets are committed: trim the segments they emptied."""
        emptied = []
        for ticket in tickets:
            live = self._live.get(ticket)
            if live is None:
                continue
            self._live[ticket] = live - 1
            if live == 1:
                if ticket != self._active:
                    emptied.append(ticket)
                elif not self._closed:
                    # Everything in the active segment is committed: rotate it away, so
                    # that an idle journal holds nothing (and a full one drains).
                    self._rotate_requested = True
                    self._start_flusher()
        for number in emptied:
            self._forget(number)
        if self._dropping and not self.full:
            self._dropping = False
            log.warning("journal accepting records again")

    def _forget(self, number: int) -> None:
        self._live.pop(number, None)
        self._disk_bytes -= self._sizes.pop(number, 0)
        if not self._closed:
            self._executor.submit(self._delete, number)

    def _delete(self, number: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._segment_path(number).unlink()

    # ------------------------------------------------------------ the flusher

    async def _flush_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending or self._rotate_requested:
            items, callbacks, sizes = self._pending, self._callbacks, self._pending_sizes
            self._pending, self._callbacks, self._pending_sizes = [], [], []
            rotate, self._rotate_requested = self._rotate_requested, False
            ticket: int | None
            unencodable: list[int] = []
            try:
                ticket, rotated, written, unencodable = await loop.run_in_executor(
                    self._executor, self._encode_and_write, items, rotate
                )
            except OSError as exc:
                # The disk failed: the rows are not durable, but they must still
                # reach the database. Start a fresh segment in case the file is torn.
                self.write_errors_total += 1
                log.error("journal write failed, %d records go on unjournaled: %s", len(items), exc)
                ticket, rotated, written = None, None, 0
                with contextlib.suppress(OSError):
                    await loop.run_in_executor(self._executor, self._rotate)
            finally:
                self._pending_bytes -= sum(sizes)
            journaled = len(items) - len(unencodable)
            if ticket is not None:
                self._sizes[ticket] = self._sizes.get(ticket, 0) + written
                self._live[ticket] = self._live.get(ticket, 0) + journaled
                self._disk_bytes += written
                self.commits_total += bool(journaled)
                if journaled:
                    self._frame_estimate = max(written // journaled, 1)
            if rotated is not None and self._live.get(rotated) == 0:
                self._forget(rotated)
            skipped = set(unencodable)
            for index, callback in enumerate(callbacks):
                try:
                    # a row that could not be encoded still goes on, unjournaled
                    callback(None if index in skipped else ticket)
                except Exception:
                    log.exception("journal callback failed")

    def _encode_and_write(
        self, items: list[bytes | tuple[str, dict[str, Any]]], rotate: bool
    ) -> tuple[int, int | None, int, list[int]]:
        """In the journal's thread: encode the rows not yet encoded, then ``_write``.
        Returns the ticket, the segment rotated away, the bytes written and the indices
        of rows that could not be encoded (a bug: logged, and written unjournaled)."""
        frames: list[bytes] = []
        unencodable: list[int] = []
        for index, item in enumerate(items):
            if isinstance(item, bytes):
                frames.append(item)
                continue
            try:
                frames.append(encode_frame(*item))
            except Exception:
                log.exception("could not journal a row; it is written unjournaled")
                unencodable.append(index)
        data = b"".join(frames)
        ticket, rotated = self._write(data, rotate)
        return ticket, rotated, len(data), unencodable

    def _write(self, data: bytes, rotate: bool) -> tuple[int, int | None]:
        """In the journal's thread: append, fsync; rotate first if the segment is full
        (or if asked to: every row in it is committed)."""
        rotated = None
        if self._active_size > 0 and (rotate or self._active_size >= self._segment_bytes):
            rotated = self._rotate()
        if not data:
            return self._active, rotated
        assert self._fd is not None
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        os.fdatasync(self._fd)
        self._active_size += len(data)
        return self._active, rotated

    def _rotate(self) -> int:
        old = self._active
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._open_segment(old + 1)
        assert self.slot is not None
        _fsync_dir(self.slot)
        return old


def _fsync_dir(path: Path) -> None:
    """Make a file's creation durable (its directory entry)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
