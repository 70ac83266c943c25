"""Recording: one JSON event per fact, chained per session, written before the client sees a result.

Durability contract (``audit.fsync``):
- ``write`` (default): every event is handed to the operating system (copied into the segment's
  shared file mapping, i.e. the page cache — see :class:`FileSpool`) before the
  statement it describes reaches the backend and before the client sees any result of it; a crash or
  ``kill -9`` of the gateway loses nothing the client saw. Files are fsynced every ``fsync_interval``
  seconds, so a crash of the whole machine may lose up to that interval.
- ``always``: every event is on stable storage (fsync, group commit: one fsync covers every event
  queued meanwhile, from all sessions) before the statement reaches the backend and before the client
  sees a result.

If the sink cannot be written, :class:`AuditUnavailable` is raised to the caller, which refuses the
command: nothing runs unrecorded. The next commit tries again, so service resumes when the sink does.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
import fcntl
import errno
import hashlib
import logging
import mmap
import os
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import orjson

from wardgate.core import eventchain
from wardgate.core.compiled import load_compiled, warn_fallback
from wardgate.core.files import create_file_atomically, file_url_path
from wardgate.core.integrity import (build_digest, digest_path_for, encode_digest,
                                     export_public_key, gateway_of_segment, newest_digest, segment_number)
from wardgate.core.model import Principal

EVENT_FORMAT_VERSION = 1


class AuditUnavailable(Exception):
    """The audit sink cannot be written: callers must refuse the command (fail closed)."""


def utc_now_iso() -> str:
    """RFC 3339 UTC time with microseconds, as event lines write it."""
    now = time.time()
    second = int(now)
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(second))}.{int((now - second) * 1_000_000):06d}Z"


class SegmentSummary:
    """What a segment's digest says it holds (events, time range, per session: first and last
    ``seq``, hash of the last line, whether it ended — the fields of
    :func:`wardgate.core.integrity.summarize_segment`), kept by the writer as it writes, so that
    sealing a segment does not parse it again (that cost ~5 µs per event in the sealing thread,
    competing with the event loop for the GIL).

    Time range without reading every line: while event times do not decrease, the first line holds
    the earliest time and the last line the latest. Where they decrease (the clock stepped back; the
    recorder flags the write that holds such an event), that write is scanned line by line and the
    line before it (the end of an increasing run) counts too."""

    __slots__ = ("events", "first_time", "last_time", "sessions", "exact", "_last_data")

    def __init__(self) -> None:
        self.events = 0
        self.first_time: str | None = None
        self.last_time: str | None = None
        self.sessions: dict[str, list] = {}  # session → [first_seq, last_seq, last_hash, ended]
        self.exact = True  # False once bytes were written without their sessions: parse at the seal
        self._last_data: bytes | None = None  # the latest write: its last line is the latest time so far

    def add(self, pending: PendingEvents, data: bytes) -> None:
        """Account for ``data`` just written: exactly the lines of ``pending`` (whose ``unordered``
        says that some event in it is earlier than the event appended before it)."""
        events = pending.count
        if not events:
            return
        self.events += events
        if pending.unordered:
            if self._last_data is not None:
                self._fold(_last_line_time(self._last_data))
            for line in data.splitlines():
                self._fold(_line_time(line, 0))
        elif self.first_time is None:
            self.first_time = _line_time(data, 0)
        self._last_data = data
        pending.account(self.sessions)

    def _fold(self, time: str) -> None:
        if self.first_time is None or time < self.first_time:
            self.first_time = time
        if self.last_time is None or time > self.last_time:
            self.last_time = time

    def as_dict(self) -> dict[str, Any]:
        if self._last_data is not None:
            self._fold(_last_line_time(self._last_data))
        return {"events": self.events, "first_time": self.first_time, "last_time": self.last_time,
                "sessions": {session: {"first_seq": first, "last_seq": last, "last_hash": last_hash.decode(),
                                       "ended": ended}
                             for session, (first, last, last_hash, ended) in self.sessions.items()}}


def _last_line_time(data: bytes) -> str:
    return _line_time(data, data.rfind(b"\n", 0, len(data) - 1) + 1)


def _line_time(data: bytes, start: int) -> str:
    """The ``time`` of the event line at ``start`` (lines are written by an EventChain)."""
    begin = data.index(b'"time":"', start) + 8
    return data[begin:data.index(b'"', begin)].decode()


# A live segment is preallocated up to this far ahead of its last byte, so copying events into it
# never needs a block from the file system: with a mapping, a block the file system cannot give is
# SIGBUS, not an error. Near a full disk, only what the next write needs is reserved. The mapping
# itself covers the whole segment (segment_bytes and this slack for the batch that crosses it) from
# the start: remapping every step measured ~1 µs per transaction more.
_RESERVE_STEP = 4 << 20
_MAP_SLACK = 1 << 20
_MAP_MAX = 256 << 20  # a larger segment is mapped in windows of this size (address space)
_CAN_PREALLOCATE = hasattr(os, "posix_fallocate")
# Zeros are written with pwrite(2) this far ahead of the mapped copies, so the pages the copies land
# on are already in the page cache: a first write to a page of a preallocated (unwritten) extent
# faults into the file system, which reads the page in as zeros and marks it written (measured here:
# ~5 µs per page, ~1 µs per 900-byte copy; ~0.3 µs with the zeros written ahead, their pwrite included).
_FILL_AHEAD = 256 << 10
_ZEROS = bytes(_FILL_AHEAD)


class FileSpool:
    """Append-only JSON-lines segments in a local directory (the embedded sink, ``file://DIR``).

    Events are copied into a shared memory mapping of the segment (``MAP_SHARED``: the operating
    system's page cache, exactly where ``write(2)`` would put them), so they survive a crash or
    ``kill -9`` of the gateway as soon as the copy is done, and ``fsync`` makes them durable as it
    would written ones. The segment is preallocated ahead of the data (``posix_fallocate``), so a full
    disk is an ``OSError`` at reservation, before anything is copied, never a fault inside the copy.
    A live segment therefore ends in NUL bytes (readers stop at the first one, as they do after a
    machine crash); sealing truncates it to the bytes written. Measured here (session 5): ~4 µs less
    gateway CPU per pgbench transaction than a ``write(2)`` per event-loop iteration, +5 % TPS. (An
    earlier mapping of a sparse file measured slower: the file system allocated blocks in page faults.)
    Zeros are written (``pwrite(2)``) a step ahead of the copies, so these land on pages already in the
    page cache (see ``_FILL_AHEAD``).
    Where a file cannot be mapped, and with ``fsync: always`` (see ``mapped``), ``pwrite(2)`` into the
    preallocated file is used instead.

    A segment is sealed — fsynced, made read-only — when it reaches ``segment_bytes`` and on close;
    segments a dead gateway left unsealed are sealed by :meth:`recover` at the next start.
    """

    def __init__(self, directory: Path, gateway_id: str, segment_bytes: int = 64 << 20, *,
                 signer: Any = None):
        self.directory = directory
        self.gateway_id = gateway_id
        self.segment_bytes = segment_bytes
        # With a signer (core.integrity.Signer), every sealed segment gets a signed digest that
        # chains to the previous one; None writes no digests.
        self.signer = signer
        self._last_digest: tuple[str, str] | None = None  # (name, sha256) the next digest chains to
        self._chain_loaded = False
        self._fd: int | None = None
        self._path: Path | None = None
        self._size = 0
        self._allocated = 0  # bytes of the live segment preallocated (its file length until sealed)
        self._map: mmap.mmap | None = None
        self._map_start = 0  # file offsets the mapping covers: [_map_start, _map_end)
        self._map_end = 0
        self._copy_end = 0  # events ending here or before are copied straight in (mapped, allocated, filled)
        self._filled = 0  # bytes of the live segment in the page cache (written: events, then zeros)
        self._released = 0
        # False: pwrite(2) into the preallocated file instead of the mapping. The Recorder sets it for
        # ``fsync: always``: there every write lands on a page that the previous batch's fsync is
        # writing back, and the write fault waits for it (measured: 1.6–3.7k TPS mapped against
        # 4.7–5.2k with pwrite, 4.5k with the earlier write(2)).
        self.mapped = True
        self._segment_number = 0
        self._sealer: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()  # guards fd swaps against the fsync thread
        self.recovered: list[Path] = []
        self._summary = SegmentSummary()
        # SHA-256 of the bytes written to the current segment, so its digest signs what this gateway
        # wrote: no reading the segment back at the seal, and an edit of the live file before the
        # seal shows at verification like one after it.
        self._hasher = hashlib.sha256()

    @property
    def current_path(self) -> Path | None:
        return self._path

    def recover(self) -> list[Path]:
        """Seal segments left unsealed by a gateway that died (and no longer holds their lock).

        With a signer, each gets a digest (marked ``recovered``) unless it already has one (the
        writer died between writing the digest and making the file read-only). A segment that is
        already read-only is never signed here: signing whatever a sealed segment holds now would
        launder a modification."""
        if not self.directory.exists():
            return []
        self._load_chain()
        for part in self.directory.glob("*" + _PART_SUFFIX):
            _remove_abandoned_part(part)
        sealed = []
        for path in sorted(self.directory.glob("*.jsonl"), key=_segment_order):
            if not os.stat(path).st_mode & 0o200:
                continue
            try:
                fd = os.open(path, os.O_RDWR)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue  # a live gateway is writing it
            if not os.fstat(fd).st_mode & 0o200:  # its writer sealed it since the stat above
                os.close(fd)
                continue
            try:
                _truncate_preallocated_tail(fd)
                os.fsync(fd)
                if self.signer is not None and not digest_path_for(path).exists():
                    self._write_digest(path, recovered=True)
                os.chmod(path, 0o440)
                sealed.append(path)
            finally:
                os.close(fd)
        self.recovered = sealed
        return sealed

    def _open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        while True:  # never append to a segment someone else wrote: a new name each time
            self._segment_number += 1
            stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
            path = self.directory / f"{stamp}-{self.gateway_id}-{self._segment_number:06d}.jsonl"
            fd = _create_locked(path)
            if fd is not None:
                break
        self._fd, self._path, self._size = fd, path, 0
        self._allocated = self._map_start = self._map_end = self._copy_end = self._filled = 0
        self._map = None
        self._summary = SegmentSummary()
        self._hasher = hashlib.sha256()
        self._opened_at = time.monotonic()

    def rotate_if_older(self, seconds: float) -> bool:
        """Seal the current segment if it holds events and is older than ``seconds``, so a bucket
        archive receives events within that time. Call from the thread that writes."""
        if self._fd is not None and self._size and time.monotonic() - self._opened_at >= seconds:
            self._rotate()
            return True
        return False

    def write(self, data: bytes, pending: PendingEvents | None = None) -> None:
        """Append ``data``: whole event lines, exactly those of ``pending``. The segment's digest
        summary is kept from ``pending`` as it is written, so sealing does not parse the segment
        again. Without ``pending`` (tests, tools), the summary is taken from the bytes at the seal."""
        if self._fd is None:
            self._open()
        start = self._size
        end = start + len(data)
        if end <= self._copy_end:  # the common case: one copy into the mapped, preallocated segment
            self._map[start - self._map_start:end - self._map_start] = data
        else:
            # Raises OSError with nothing of ``data`` in the segment (no torn line): the events stay
            # queued and are written whole when space returns.
            self._write_beyond_mapping(data, start, end)
        self._size = end
        self._hasher.update(data)
        if pending is not None:
            self._summary.add(pending, data)
        else:
            self._summary.exact = False
        if self._size >= self.segment_bytes:
            self._rotate()

    def _write_beyond_mapping(self, data: bytes, start: int, end: int) -> None:
        self._reserve(end)
        if self.mapped and end > self._map_end:
            if self._map is not None:
                self._map.close()
                self._map = None
            # The file is extended (sparse) to what is mapped; copies stay below the preallocated
            # size (_copy_end), so no page is ever touched that the file system would still have
            # to find a block for.
            base = start - start % mmap.ALLOCATIONGRANULARITY
            length = max(min(self.segment_bytes + _MAP_SLACK, base + _MAP_MAX), end) - base
            length += -length % mmap.PAGESIZE
            try:
                if os.fstat(self._fd).st_size < base + length:
                    os.ftruncate(self._fd, base + length)
                self._map = mmap.mmap(self._fd, length, offset=base)
            except OSError as exc:  # a file system without shared writable mappings
                self.mapped = False
                self._map_end = self._copy_end = 0
                logging.getLogger(__name__).warning(
                    "audit segments in %s cannot be mapped (%s): writing them with pwrite(2)",
                    self.directory, exc.strerror or exc)
            else:
                self._map_start, self._map_end = base, base + length
                self._released = 0  # offset in the mapping below which pages were given back
        if self.mapped:
            self._fill_ahead(end)
            self._copy_end = min(self._map_end, self._allocated, self._filled)
            self._map[start - self._map_start:end - self._map_start] = data
            # Unmap what is written (the page cache keeps it, dirty until written back), so the
            # gateway's resident memory does not grow with the segment: once per reservation step.
            done = (start - self._map_start) // mmap.PAGESIZE * mmap.PAGESIZE
            if done > self._released:
                self._map.madvise(mmap.MADV_DONTNEED, self._released, done - self._released)
                self._released = done
            return
        view = memoryview(data)
        at = start
        try:
            while view:
                written = os.pwrite(self._fd, view, at)
                view, at = view[written:], at + written
        except OSError:
            if at > start:  # no torn line: zeros read as "no more events"; the space is preallocated
                try:
                    if _CAN_PREALLOCATE:
                        os.pwrite(self._fd, bytes(at - start), start)
                    else:
                        os.ftruncate(self._fd, start)
                except OSError:
                    pass
            raise

    def _fill_ahead(self, end: int) -> None:
        """Write zeros after ``end`` (the end of the events being written; nothing is written there
        yet) up to ``_FILL_AHEAD`` further, within the preallocated space. Reading the segment is
        unchanged: a live segment ends in NUL bytes either way."""
        start = max(self._filled, end)
        stop = min(self._allocated, end + _FILL_AHEAD)
        try:
            while start < stop:
                start += os.pwrite(self._fd, memoryview(_ZEROS)[:stop - start], start)
        except OSError:
            # Not needed for correctness (the space is preallocated): the copies fault pages in.
            self._filled = self._allocated
            return
        self._filled = max(self._filled, stop)

    def _reserve(self, end: int) -> None:
        """Preallocate the live segment to at least ``end`` bytes: a step ahead when the disk has
        room, else just ``end`` (rounded to a page), else OSError (ENOSPC, EDQUOT, EIO)."""
        if end <= self._allocated:
            return
        if not _CAN_PREALLOCATE:  # (macOS) nothing to map safely: pwrite extends the file as it goes
            self.mapped = False
            self._allocated = end
            return
        wanted = end + _RESERVE_STEP - end % _RESERVE_STEP
        try:
            os.posix_fallocate(self._fd, self._allocated, wanted - self._allocated)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            wanted = -(-end // mmap.PAGESIZE) * mmap.PAGESIZE
            os.posix_fallocate(self._fd, self._allocated, wanted - self._allocated)
        self._allocated = wanted

    def _detach(self) -> tuple[int, Path, int, mmap.mmap | None]:
        """Take the live segment away from the writer (under the lock the fsync thread takes)."""
        with self._lock:
            detached = self._fd, self._path, self._size, self._map
            self._fd, self._map, self._map_end, self._copy_end = None, None, 0, 0
        return detached

    def sync(self) -> None:
        with self._lock:
            fd = os.dup(self._fd) if self._fd is not None else None
        if fd is not None:
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def _rotate(self) -> None:
        """Seal the full segment in the background (fsync, digest: reading and hashing a whole
        segment must not stall the event loop); the next write opens a new one. Seals run one at a
        time, in order, so the digest chain follows the segments."""
        if self._fd is None:
            return
        summary, hasher = self._summary, self._hasher
        fd, path, size, mapping = self._detach()
        if self._sealer is None:
            self._sealer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wardgate-audit-seal")
        self._sealer.submit(self._seal, fd, path, size, mapping, summary, hasher)

    def wait_for_seals(self) -> None:
        """Block until the segments rotated so far are sealed (tests, shutdown)."""
        if self._sealer is not None:
            self._sealer.submit(lambda: None).result()

    def _seal_current(self) -> None:
        if self._sealer is not None:
            self._sealer.shutdown(wait=True)  # earlier segments first: the digest chain is ordered
            self._sealer = None
        if self._fd is None:
            return
        summary, hasher = self._summary, self._hasher
        self._seal(*self._detach(), summary, hasher)

    def _seal(self, fd: int, path: Path, size: int, mapping: mmap.mmap | None, summary: SegmentSummary,
              hasher: Any) -> None:
        try:
            if mapping is not None:
                mapping.close()
            os.ftruncate(fd, size)  # the preallocated tail goes: the segment is what was written
            os.fsync(fd)
            if self.signer is not None:
                # Digest first, then read-only: a crash in between leaves a writable segment that has
                # a digest, which recover() only makes read-only.
                self._write_digest(path, summary=summary, segment_sha256=hasher.hexdigest())
            os.chmod(path, 0o440)
        finally:
            # Unlocked only once read-only: recover() of another gateway seals writable, unlocked segments.
            os.close(fd)

    def _load_chain(self) -> None:
        if self.signer is not None and not self._chain_loaded and self.directory.exists():
            self._last_digest = newest_digest(self.directory)
            self._chain_loaded = True

    def _write_digest(self, path: Path, *, recovered: bool = False, summary: SegmentSummary | None = None,
                      segment_sha256: str | None = None) -> None:
        """Without ``segment_sha256`` and an exact ``summary`` (a segment recovered from a dead
        gateway, or written without its pending events) the segment is read back."""
        self._load_chain()
        export_public_key(self.directory, self.signer)
        previous = self._last_digest
        exact = summary is not None and summary.exact
        data = None if exact and segment_sha256 is not None else path.read_bytes()
        record = build_digest(path, data, gateway=gateway_of_segment(path.name) or self.gateway_id,
                              signer=self.signer, previous_name=previous[0] if previous else None,
                              previous_sha256=previous[1] if previous else None, signed_at=utc_now_iso(),
                              recovered=recovered, sealed_by=self.gateway_id,
                              summary=summary.as_dict() if exact else None, segment_sha256=segment_sha256)
        data = encode_digest(record)
        digest_path = digest_path_for(path)
        create_file_atomically(digest_path, data, 0o440)
        self._last_digest = (digest_path.name, hashlib.sha256(data).hexdigest())

    def reset_after_error(self) -> None:
        """Drop a segment whose write failed, so the next write opens a fresh one (the next start's
        :meth:`recover` seals this one)."""
        if self._fd is None:
            return
        fd, _, size, mapping = self._detach()
        try:
            if mapping is not None:
                mapping.close()
            os.ftruncate(fd, size)
        except OSError:
            pass
        try:
            os.close(fd)
        except OSError:
            pass

    def close(self) -> None:
        self._seal_current()


# A segment is created under this suffix and takes its name only once locked: recover() in another
# process (it seals every writable *.jsonl whose lock it can take) must never see it unlocked.
_PART_SUFFIX = ".part"


def _create_locked(path: Path) -> int | None:
    """A new, empty segment at ``path``, locked (``flock``: tells recover() of other gateways that it
    is alive), as an fd opened for reading and writing (reading: to map it); None if ``path`` exists
    or the part lost a race with recover() (the caller takes a new name)."""
    part = path.with_name(path.name + _PART_SUFFIX)
    try:
        fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o640)
    except FileExistsError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # recover() may have removed the part before the lock (it does so holding the lock): only
        # once the locked file is still the one named ``part`` is that name ours until renamed.
        opened, named = os.fstat(fd), os.stat(part)
        if (opened.st_dev, opened.st_ino) != (named.st_dev, named.st_ino):
            raise FileNotFoundError(part)
        # Every writer creates a segment through its part (O_EXCL), so while we hold ``part`` nobody
        # can create ``path``: checked here, it cannot appear before the rename (which would replace
        # it). Rename rather than link, so /proc and lsof show the segment's name, not a deleted one.
        if os.path.lexists(path):
            part.unlink()
            raise FileExistsError(path)
        os.rename(part, path)  # the lock is the inode's: locked from the moment the name exists
    except (BlockingIOError, FileNotFoundError, FileExistsError):
        os.close(fd)  # a part left here is empty and unlocked: recover() removes it
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _remove_abandoned_part(part: Path) -> None:
    """Remove the part of a segment whose creator died before naming it (empty, unlocked: nothing is
    written to a part). A locked one is being created; one holding data is not ours to judge."""
    try:
        fd = os.open(part, os.O_RDONLY)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.fstat(fd).st_size == 0:
            part.unlink(missing_ok=True)
    except OSError:
        pass  # locked: a live gateway is creating it
    finally:
        os.close(fd)


def _truncate_preallocated_tail(fd: int, chunk: int = 1 << 20) -> None:
    """Cut the NUL bytes a live segment ends in (its preallocation) off a segment whose writer died.
    NULs before the last event stay: they are a hole a machine crash left, which readers report."""
    end = os.fstat(fd).st_size
    size = end
    while end > 0:
        block = os.pread(fd, min(chunk, end), end - min(chunk, end))
        kept = len(block.rstrip(b"\0"))
        end -= len(block) - kept
        if kept:
            break
    if end < size:
        os.ftruncate(fd, end)


def _segment_order(path: Path) -> tuple[str, int, str]:
    """Segments of one gateway in the order it wrote them (its segment number)."""
    return gateway_of_segment(path.name), segment_number(path.name), path.name


def read_segment_bytes(path: Path) -> bytes:
    """A segment's events (anything after a NUL — a torn write of a crashed machine — is not one)."""
    data = Path(path).read_bytes()
    end = data.find(b"\x00")
    return data if end < 0 else data[:end]


def read_segment(path: Path) -> list[bytes]:
    """A segment's event lines (each with its newline, as hashed in the chain). A last line without
    its newline was torn by a crash of the machine mid-write: it is not an event."""
    lines = read_segment_bytes(path).splitlines(keepends=True)
    if lines and not lines[-1].endswith(b"\n"):
        lines.pop()
    return lines


def open_sink(url: str, base_dir: Path, gateway_id: str, *, signer: Any = None) -> FileSpool:
    parsed = urlparse(url)
    if parsed.scheme == "file":
        path = Path(file_url_path(url))
        if not path.is_absolute():
            path = (base_dir / path).resolve()
        spool = FileSpool(path, gateway_id, signer=signer)
        spool.recover()
        return spool
    raise ValueError(f"audit sink {url!r}: unsupported scheme {parsed.scheme!r} (supported: file://)")


class Recorder:
    """Collects events from all sessions of a gateway and commits them to the sink.

    Sessions append events to their :class:`SessionLog` (in the event loop; the lines collect in one
    :class:`PendingEvents`), then hand the bytes that depend on those events to :meth:`forward`.
    Forwarded bytes wait for the end of the event-loop iteration, when one ``write(2)`` (and, in
    ``always`` mode, one fsync in the writer thread) covers the events of every session that produced
    some in that iteration; then the bytes are released in order. Bytes that depend on no unwritten
    event go straight through. (Measured here: one write per event instead of
    one per iteration costs about a third more gateway CPU per transaction under 8 clients.)
    """

    def __init__(self, spool: FileSpool | None, *, fsync: str = "write", fsync_interval: float = 1.0):
        self.spool = spool
        self.fsync_mode = fsync
        if spool is not None and fsync == "always":
            spool.mapped = False
        self.fsync_interval = fsync_interval
        # Event lines not yet written, and the sessions they belong to (see SegmentSummary.add).
        self._pending = PendingEvents()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sync_requests: list[asyncio.Future] = []
        self._sync_cond = threading.Condition()
        self._stopping = False
        self._dirty = False
        self._thread: threading.Thread | None = None
        self.events_written = 0
        self.last_error: str | None = None
        self._queued: list[tuple[Any, bytes, Any]] = []
        self._flush_scheduled = False
        self._fsync_in_flight = False

    @property
    def enabled(self) -> bool:
        return self.spool is not None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        if self.spool is not None:
            warn_fallback(_EVENTCHAIN_PROBLEM, "recording uses the slower Python event chain", logging.getLogger(__name__))
            self._thread = threading.Thread(target=self._sync_worker, name="wardgate-audit-fsync", daemon=True)
            self._thread.start()

    def commit(self) -> asyncio.Future | None:
        """Write pending events; raise :class:`AuditUnavailable` if the sink refuses them."""
        if not self._pending:
            return None
        self._write_pending()
        self.last_error = None
        if self.fsync_mode != "always":
            self._dirty = True
            return None
        future = self._loop.create_future()
        with self._sync_cond:
            self._sync_requests.append(future)
            self._sync_cond.notify()
        return future

    def _write_pending(self) -> None:
        pending = self._pending
        try:
            self.spool.write(pending.data(), pending)
        except OSError as exc:
            # The events stay pending, and are written whole when the sink returns.
            self.last_error = f"{exc.strerror or exc}"
            raise AuditUnavailable(f"audit sink cannot be written: {self.last_error}") from None
        self.events_written += pending.count
        pending.clear()

    def forward(self, destination: Any, data: bytes, owner: Any) -> None:
        """Write ``data`` to ``destination`` (a transport) once every event appended so far is as
        durable as the fsync policy requires. ``owner`` is told ``audit_failed(message)`` instead if
        the sink refuses the events, and ``audit_hold()`` / ``audit_release()`` around an fsync wait
        so it stops reading meanwhile."""
        if not self._pending and not self._queued:
            destination.write(data)
            return
        self._queued.append((destination, data, owner))
        if self._fsync_in_flight:
            owner.audit_hold()
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def forwarding_for(self, owner: Any) -> bool:
        """Whether data of ``owner`` still waits for its events to be written (see :meth:`forward`)."""
        return any(queued[2] is owner for queued in self._queued)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._fsync_in_flight or not self._queued:
            return  # the fsync in flight calls us again when it completes
        queued, self._queued = self._queued, []
        if self.fsync_mode != "always" and self._pending:
            # commit() for `write`, inlined: this runs once per event-loop iteration with traffic.
            try:
                self._write_pending()
            except AuditUnavailable as exc:
                _fail_owners(queued, str(exc))
                return
            self.last_error = None
            self._dirty = True
            for destination, data, _ in queued:  # _release(queued), inlined
                if not destination.is_closing():
                    destination.write(data)
            return
        try:
            future = self.commit()
        except AuditUnavailable as exc:
            _fail_owners(queued, str(exc))
            return
        if future is None:
            _release(queued)
            return
        self._fsync_in_flight = True
        owners = {id(owner): owner for _, _, owner in queued}
        for owner in owners.values():
            owner.audit_hold()
        future.add_done_callback(lambda f: self._after_fsync(f, queued, owners))

    def _after_fsync(self, future: asyncio.Future, queued: list, owners: dict) -> None:
        self._fsync_in_flight = False
        error = future.exception()
        if error is not None:
            _fail_owners(queued, str(error))
        else:
            _release(queued)
        for owner in owners.values():
            owner.audit_release()
        if self._queued:
            self._flush()

    def _sync_worker(self) -> None:
        # Group commit: one fsync answers every request queued while the previous one ran.
        while True:
            with self._sync_cond:
                if not self._sync_requests and not self._stopping:
                    self._sync_cond.wait(timeout=self.fsync_interval)
                requests, self._sync_requests = self._sync_requests, []
                stopping = self._stopping
            if requests or self._dirty:
                self._dirty = False
                error: str | None = None
                try:
                    self.spool.sync()
                except OSError as exc:
                    error = f"audit sink cannot be synced: {exc.strerror or exc}"
                if requests:
                    self._loop.call_soon_threadsafe(_resolve_all, requests, error)
            if stopping:
                return

    def close(self) -> None:
        if self.spool is None:
            return
        try:
            self.commit()
        except AuditUnavailable:
            pass
        with self._sync_cond:
            self._stopping = True
            self._sync_cond.notify()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.spool.close()


def _release(queued: list[tuple[Any, bytes, Any]]) -> None:
    for destination, data, _ in queued:
        if not destination.is_closing():
            destination.write(data)


def _fail_owners(queued: list[tuple[Any, bytes, Any]], message: str) -> None:
    told: set[int] = set()
    for _, _, owner in queued:
        if id(owner) not in told:
            told.add(id(owner))
            owner.audit_failed(message)


def _resolve_all(futures: list[asyncio.Future], error: str | None) -> None:
    for future in futures:
        if not future.done():
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(AuditUnavailable(error))


def _load_fast():
    """(the compiled event chain module, None) or (None, why it is not used)."""
    return load_compiled("wardgate.core._eventchain_fast", Path(__file__).with_name("_eventchain_fast.pyx"),
                         what="audit event chain", disable_env="WARDGATE_AUDIT_PYTHON")


_EVENTCHAIN_FAST, _EVENTCHAIN_PROBLEM = _load_fast()
_chain = _EVENTCHAIN_FAST if _EVENTCHAIN_FAST is not None else eventchain
PendingEvents = _chain.PendingEvents
set_test_clock = _chain.set_test_clock  # tests: every event reads this time


class SessionLog(_chain.EventChain):
    """The events of one session: a SHA-256 hash chain (``prev_hash`` of each event is the hash of
    the previous event's line, newline included), so a removed, altered or reordered event breaks
    the chain. The first event's ``prev_hash`` is 64 zeros.

    Appending (``append_event``, and ``decided`` / ``result`` for the two events of every statement) is
    :class:`wardgate.core.eventchain.EventChain`'s, compiled when built; callers check
    ``recorder.spool`` first (recording off: nothing is appended)."""

    __slots__ = ("recorder", "_common", "identity")

    def __init__(self, recorder: Recorder, session_id: str, common: dict[str, Any]):
        super().__init__(recorder._pending, session_id)
        self.recorder = recorder
        self._common = {"v": EVENT_FORMAT_VERSION, "session": session_id, **common}
        self.identity: dict[str, Any] | None = None
        self.fixed = self._serialize_fixed()

    def _serialize_fixed(self) -> bytes:
        # The fields every event of the session repeats are serialized once; each event only
        # serializes what is its own (this is on the per-statement path).
        return b"," + orjson.dumps({**self._common, "identity": self.identity})[1:-1]

    def set_identity(self, principal: Principal) -> None:
        self.identity = {"issuer": principal.issuer, "subject": principal.subject}
        self.fixed = self._serialize_fixed()

    def emit(self, event_type: str, fields: dict[str, Any]) -> str:
        """Append one event; return its id ("" when recording is off)."""
        if self.recorder.spool is None:
            return ""
        return self.append_event(event_type, orjson.dumps(fields)[1:-1])


def end_crashed_sessions(recorder: Recorder, recovered: list[Path], gateway_id: str) -> list[str]:
    """Record the end of every session a dead gateway left open, continuing each session's chain.

    ``recovered`` are the segments :meth:`FileSpool.recover` sealed for gateways that died. Every
    segment of those gateways is read (a session idle across a rotation may have its last events in an
    older one); a session whose last event is not ``session.ended`` gets one, saying so. Returns the
    session ids ended this way."""
    from wardgate.core.integrity import gateway_of_segment

    dead = {gateway_of_segment(path.name) for path in recovered}
    if not dead:
        return []
    directory = recovered[0].parent
    last: dict[str, tuple[dict[str, Any], bytes]] = {}
    for path in sorted(directory.glob("*.jsonl")):
        if gateway_of_segment(path.name) not in dead:
            continue
        for line in read_segment(path):
            event = orjson.loads(line)
            session = event.get("session", "")
            if not session.startswith("gateway-"):
                last[session] = (event, line)
    ended = []
    for session, (event, line) in last.items():
        if event.get("type") == "session.ended":
            continue
        log = SessionLog(recorder, session, {key: event[key] for key in ("gateway", "protocol", "resource")
                                             if key in event})
        log.seq = event["seq"]
        log.prev_hash = hashlib.sha256(line).hexdigest().encode()
        log.identity = event.get("identity")
        log.fixed = log._serialize_fixed()
        log.emit("session.ended", {
            "reason": f"the gateway stopped without ending this session (it crashed or was killed); "
                      f"recorded when gateway {gateway_id} recovered its trail",
            "recovered": True, "last_event": event.get("id"), "controls": ["AU-5", "IR-4"]})
        ended.append(session)
    return ended


def new_session_id() -> str:
    # Time-ordered prefix so listings sort by start time; random suffix for uniqueness.
    return f"{int(time.time() * 1000):013x}{uuid.uuid4().hex[:12]}"
