"""Shipping the sealed audit trail to a write-once bucket, where auditors read it.

Events are first made durable in the local spool (``core/audit.py``); that contract does not wait for
the network. Sealed segments, their signed digests and the public keys are then copied here, to an
:class:`~wardgate.core.ports.ObjectStore` (S3 Object Lock, GCS retention policy, Azure immutable
blobs, or a local directory), under the same names, so a copy of the bucket is a trail that
``wardgate audit verify`` checks offline.

Order matters for a reader: keys first, then each segment, then its digest — a digest never appears in
the bucket before the segment it vouches for. What was shipped is remembered in ``.shipped`` in the
spool directory (appended, fsynced), so a restart resumes; re-shipping an object already there is a
no-op (the store accepts identical bytes). Gateway processes sharing a spool directory ship in turn
(a round holds an ``flock`` on ``.shipped.lock``) and each reads what the others added to
``.shipped`` first, so every object is put once.

Fail closed: if sealed data stays unshipped longer than ``grace`` seconds because the bucket cannot
be written, :attr:`AuditArchive.error` says so and the gateway refuses new commands until shipping
succeeds again (it recovers by itself). The grace covers a blip without refusing anyone, while the
spool holds every event durably.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from wardgate.core.integrity import KEYS_DIRECTORY, digest_path_for
from wardgate.core.ports import ObjectStore

log = logging.getLogger(__name__)

SHIPPED_FILE = ".shipped"
SHIPPED_LOCK_FILE = ".shipped.lock"


@dataclass
class ShipReport:
    shipped: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    error: str | None = None


def _sealed(path: Path) -> bool:
    """A segment is sealed once it is read-only (``FileSpool._seal`` / ``recover``)."""
    try:
        return not os.stat(path).st_mode & 0o200
    except FileNotFoundError:
        return False


class AuditArchive:
    def __init__(self, directory: Path, store: ObjectStore, *, interval: float = 5.0, grace: float = 60.0,
                 clock: Callable[[], float] = time.time):
        self.directory = Path(directory)
        self.store = store
        self.interval = interval
        self.grace = grace
        self._clock = clock
        self._shipped: set[str] = set()
        self._shipped_stamp: tuple[int, ...] | None = None  # .shipped as last read (see _load)
        self._failing_since: float | None = None
        self.last_error: str | None = None
        self.error: str | None = None  # set while the gateway must refuse commands
        self.objects_shipped = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # --- what is there to ship -------------------------------------------------------------------
    def _load(self) -> None:
        """Read ``.shipped`` again if it changed since this archive last read or wrote it: another
        process sharing the directory shipped meanwhile. Call with the round's lock held."""
        try:
            with open(self.directory / SHIPPED_FILE, "rb") as file:
                stamp = _stamp(os.fstat(file.fileno()))
                if stamp != self._shipped_stamp:
                    self._shipped = set(file.read().decode().split())
                    self._shipped_stamp = stamp
        except FileNotFoundError:
            self._shipped = set()
            self._shipped_stamp = None

    def _remember(self, names: list[str]) -> None:
        self._shipped.update(names)
        with open(self.directory / SHIPPED_FILE, "a") as file:
            file.write("".join(name + "\n" for name in names))
            file.flush()
            os.fsync(file.fileno())
            # Under the round's lock nobody else appended: the set in memory is the file.
            self._shipped_stamp = _stamp(os.fstat(file.fileno()))

    @contextmanager
    def _round_lock(self) -> Iterator[None]:
        """Exclusive across the processes shipping this directory (blocking: each round still
        ships, or fails and counts toward the grace, itself)."""
        try:
            fd = os.open(self.directory / SHIPPED_LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o640)
        except FileNotFoundError:  # no spool directory yet: nothing to ship
            yield
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _todo(self) -> list[list[str]]:
        """Groups to ship in order, each shipped whole before it is remembered: every key file; then
        per sealed segment (oldest first), the segment and its digest."""
        groups: list[list[str]] = []
        keys = self.directory / KEYS_DIRECTORY
        if keys.is_dir():
            for path in sorted(keys.glob("*.pem")):
                name = f"{KEYS_DIRECTORY}/{path.name}"
                if name not in self._shipped:
                    groups.append([name])
        segments = [p for p in self.directory.glob("*.jsonl") if _sealed(p)]
        for path in sorted(segments, key=lambda p: p.name):
            names = [path.name]
            digest = digest_path_for(path)
            if digest.exists():
                names.append(digest.name)
            names = [n for n in names if n not in self._shipped]
            if names:
                groups.append(names)
        return groups

    # --- shipping ----------------------------------------------------------------------------------
    def ship_once(self) -> ShipReport:
        report = ShipReport()
        with self._lock, self._round_lock():
            self._load()
            groups = self._todo()
            for index, group in enumerate(groups):
                try:
                    for name in group:
                        data = (self.directory / name).read_bytes()
                        content_type = "application/json" if name.endswith(".json") else (
                            "application/x-pem-file" if name.endswith(".pem") else "application/x-ndjson")
                        self.store.put(name, data, content_type)
                        self.objects_shipped += 1
                except Exception as exc:  # the bucket, not the spool: keep the rest for the next round
                    report.error = f"audit archive {self.store.url}: cannot ship {name}: {exc}"
                    report.pending = [n for g in groups[index:] for n in g]
                    break
                self._remember(group)
                report.shipped.extend(group)
            self._assess(report)
        return report

    def _assess(self, report: ShipReport) -> None:
        now = self._clock()
        if report.error is None:
            if self.error is not None:
                log.warning("audit archive %s is writable again; commands are accepted", self.store.url)
            self._failing_since = None
            self.last_error = None
            self.error = None
            return
        self.last_error = report.error
        if self._failing_since is None:
            self._failing_since = now
            log.error("%s (the local spool keeps the events; refusing commands after %.0fs)",
                      report.error, self.grace)
        if now - self._failing_since >= self.grace and self.error is None:
            self.error = f"{report.error} (for {now - self._failing_since:.0f}s)"
            log.error("refusing commands: %s", self.error)

    # --- background thread ------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="wardgate-audit-archive", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.ship_once()
            except Exception:  # never let the thread die: the next round tries again
                log.exception("audit archive round failed")
            self._stop.wait(self.interval)

    def stop(self, *, final: bool = True) -> ShipReport | None:
        """Stop the thread; with ``final``, ship what was sealed at shutdown once more."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        return self.ship_once() if final else None


def _stamp(status: os.stat_result) -> tuple[int, ...]:
    return status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns


def download_trail(store: ObjectStore, destination: Path) -> int:
    """Copy every object of an archive into ``destination`` (read-only files, as in the bucket) so
    the offline verifier, ``sessions`` and ``replay`` can read it. Returns the number of objects."""
    count = 0
    for key in store.list(""):
        if key.startswith("/") or ".." in Path(key).parts:
            raise ValueError(f"archive object {key!r} has an unsafe name")
        path = destination / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(store.get(key))
        os.chmod(path, 0o440)
        count += 1
    return count
