"""Several gateway processes sharing one spool directory: a worker's recover() never seals a segment
another worker is opening or sealing (a segment has its name only once it is locked, and stays locked
until it is read-only), leftovers of a creation that died are cleaned without touching one in
progress, and the archives of all workers put every object in the bucket once between them."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import orjson

from wardgate.adapters import open_object_store
from wardgate.audittool import verify_trail
from wardgate.core.archive import AuditArchive
from wardgate.core.audit import FileSpool, Recorder, SessionLog, read_segment
from wardgate.core.integrity import LocalEd25519Signer, digest_path_for


def _line(n: int) -> bytes:
    return orjson.dumps({"n": n, "time": f"2025-01-01T00:00:{n % 60:02d}.000000Z", "pad": "x" * 100}) + b"\n"


def _spool(directory: Path, tmp_path: Path, gateway_id: str, **kwargs) -> FileSpool:
    return FileSpool(directory, gateway_id, signer=LocalEd25519Signer(tmp_path / "state" / "key.pem"), **kwargs)


def _events(directory: Path, gateway_id: str) -> list[bytes]:
    return [line for path in sorted(directory.glob(f"*-{gateway_id}-*.jsonl")) for line in read_segment(path)]


# --- a live segment is never sealed by another worker ------------------------------------------------

_FILE_OPERATIONS = ((os, "open"), (os, "close"), (os, "stat"), (os, "fstat"), (os, "rename"), (os, "unlink"),
                    (os, "chmod"), (os, "ftruncate"), (os, "fsync"), (fcntl, "flock"))


class Interleave:
    """Runs ``action`` once, right after the ``at``-th file operation made inside the methods given
    to :meth:`watch` (``at`` past the last one: never); with ``on``, only operations on that path
    count."""

    def __init__(self, monkeypatch, at: int, action, *, on: Path | None = None) -> None:
        self.at, self.action, self.on, self.steps, self._inside = at, action, on, 0, False
        for module, name in _FILE_OPERATIONS:
            monkeypatch.setattr(module, name, self._spy(getattr(module, name)))
        self._monkeypatch = monkeypatch

    def _spy(self, real):
        def call(*args, **kwargs):
            result = real(*args, **kwargs)
            if self._inside and (self.on is None or (args and args[0] == self.on)):
                self.steps += 1
                if self.steps == self.at:
                    self._inside = False  # the action opens, locks and closes files too
                    self.action()
                    self._inside = True
            return result
        return call

    def watch(self, owner, method: str) -> None:
        real = getattr(owner, method)

        def call(*args, **kwargs):
            self._inside = True
            try:
                return real(*args, **kwargs)
            finally:
                self._inside = False
        self._monkeypatch.setattr(owner, method, call)


def _record(recorder: Recorder, log: SessionLog, commands: range) -> None:
    for n in commands:
        log.emit("command.decided", {"statement": f"select {n}", "decision": "allow"})
        recorder.commit()


def test_recover_of_another_worker_never_seals_a_live_segment(tmp_path: Path, monkeypatch) -> None:
    """Another worker's recover() runs right after each file operation (one per run) of a worker
    opening a segment and sealing it: every interleaving of the two."""
    at = 0
    while True:
        at += 1
        directory = tmp_path / f"audit{at}"
        live, other = _spool(directory, tmp_path, "gw-a"), _spool(directory, tmp_path, "gw-b")
        live.recover()
        swept: list[list[Path]] = []
        interleave = Interleave(monkeypatch, at, lambda: swept.append(other.recover()))
        interleave.watch(live, "_open")
        interleave.watch(live, "_seal")
        recorder = Recorder(live)
        log = SessionLog(recorder, "s1", {"gateway": "gw-a", "protocol": "postgres"})
        log.emit("session.started", {"peer": "127.0.0.1"})
        recorder.commit()
        _record(recorder, log, range(5))
        segment = live.current_path
        _record(recorder, log, range(5, 10))
        log.emit("session.ended", {"reason": "done"})
        recorder.commit()
        live.close()
        monkeypatch.undo()
        assert swept in ([], [[]])  # it sealed nothing
        assert [orjson.loads(line)["seq"] for line in read_segment(segment)] == list(range(1, 13))
        digest = orjson.loads(digest_path_for(segment).read_bytes())
        assert "recovered" not in digest  # sealed by its writer, not by recover()
        report = verify_trail(directory)
        assert report.ok, report.errors
        assert list(directory.glob("*.part")) == []
        if at > interleave.steps:
            break
    assert at > 10, at


def test_recover_skips_a_segment_its_writer_sealed_after_the_look(tmp_path: Path, monkeypatch) -> None:
    """recover() of another worker saw the segment writable, then its writer sealed it and let go of
    the lock: the segment is not one a dead gateway left (which would end its sessions as crashed)."""
    directory = tmp_path / "audit"
    live, other = _spool(directory, tmp_path, "gw-a"), _spool(directory, tmp_path, "gw-b")
    live.write(_line(1))
    segment = live.current_path
    interleave = Interleave(monkeypatch, 1, live.close, on=segment)  # right after recover() opened it
    interleave.watch(other, "recover")
    assert other.recover() == []
    monkeypatch.undo()
    assert "recovered" not in orjson.loads(digest_path_for(segment).read_bytes())


def test_a_part_removed_and_created_again_before_the_lock_is_not_taken_for_the_new_segment(
        tmp_path: Path, monkeypatch) -> None:
    """recover() removed the part before its creator locked it, and a file of that name appeared
    again (another writer with this gateway id): the creator does not give that file its segment's
    name while writing into the removed one."""
    directory = tmp_path / "audit"
    live, other = _spool(directory, tmp_path, "gw-a"), _spool(directory, tmp_path, "gw-b")
    live.recover()
    replacements: list[Path] = []

    def remove_and_create_again() -> None:
        [part] = directory.glob("*.part")
        assert other.recover() == [] and not part.exists()
        part.touch()
        replacements.append(part)
    interleave = Interleave(monkeypatch, 1, remove_and_create_again)  # right after the part is created
    interleave.watch(live, "_open")
    live.write(_line(1))
    segment = live.current_path
    live.close()
    monkeypatch.undo()
    assert replacements and segment.name != replacements[0].name.removesuffix(".part")
    assert read_segment(segment) == [_line(1)]


def test_recover_removes_what_a_dead_creation_left_but_not_a_creation_in_progress(tmp_path: Path) -> None:
    directory = tmp_path / "audit"
    directory.mkdir()
    abandoned = directory / "20250101T000000Z-gw-a-000001.jsonl.part"  # died between create and name
    abandoned.touch()
    in_progress = directory / "20250101T000000Z-gw-b-000001.jsonl.part"
    fd = os.open(in_progress, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o640)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    foreign = directory / "20250101T000000Z-gw-c-000001.jsonl.part"  # nothing writes to a part
    foreign.write_bytes(_line(1))
    try:
        assert _spool(directory, tmp_path, "gw-e").recover() == []
        assert not abandoned.exists()
        assert in_progress.exists() and foreign.read_bytes() == _line(1)
    finally:
        os.close(fd)


def test_workers_opening_segments_while_another_recovers_in_a_loop(tmp_path: Path) -> None:
    """Two writers (threads here, each with its own files and locks, as in two processes) rotate
    segments as fast as they can while another process recovers the directory over and over: no live
    segment is ever sealed under its writer. (A race is not certain to show here in one run; the
    interleaving test above is the exact one.)"""
    directory = tmp_path / "audit"
    directory.mkdir()
    stop = tmp_path / "stop"
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from wardgate.core.audit import FileSpool\n"
        "directory, stop = Path(sys.argv[1]), Path(sys.argv[2])\n"
        "spool = FileSpool(directory, 'gw-r')\n"
        "while not stop.exists():\n"
        "    assert spool.recover() == [], 'sealed a live segment'\n"
    )
    recoverer = subprocess.Popen([sys.executable, "-c", script, str(directory), str(stop)])
    try:
        written: dict[str, list[bytes]] = {}

        def work(gateway_id: str) -> None:
            spool = FileSpool(directory, gateway_id, segment_bytes=1)  # every write seals its segment
            lines = written.setdefault(gateway_id, [])
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                lines.append(_line(len(lines)))
                spool.write(lines[-1])
            spool.close()

        workers = [threading.Thread(target=work, args=(f"gw-{n}",)) for n in range(2)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    finally:
        stop.touch()
        assert recoverer.wait(timeout=30) == 0
    for gateway_id, lines in written.items():
        assert len(lines) > 50 and _events(directory, gateway_id) == lines
    assert list(directory.glob("*.part")) == []


# --- the archives of all workers put every object once ---------------------------------------------

class CountingStore:
    def __init__(self, store) -> None:
        self.store = store
        self.url = store.url
        self.puts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        with self._lock:
            self.puts[key] += 1
        self.store.put(key, data, content_type)

    def get(self, key: str) -> bytes:
        return self.store.get(key)

    def list(self, prefix: str = "") -> list[str]:
        return self.store.list(prefix)


def _seal_segments(spool: FileSpool, count: int, start: int = 0) -> None:
    for n in range(start, start + count):
        spool.write(_line(n))
        assert spool.rotate_if_older(0.0)
    spool.wait_for_seals()


def _trail(directory: Path) -> list[str]:
    """Everything an archive must hold: key files, sealed segments, their digests."""
    names = [f"keys/{p.name}" for p in (directory / "keys").glob("*.pem")]
    for path in directory.glob("*.jsonl"):
        names += [path.name, digest_path_for(path).name]
    return sorted(names)


def test_two_archives_over_one_directory_put_each_object_once(tmp_path: Path) -> None:
    spool = _spool(tmp_path / "audit", tmp_path, "gw-a")
    spool.recover()
    store = CountingStore(open_object_store(f"file://{tmp_path / 'bucket'}"))
    first, second = AuditArchive(spool.directory, store), AuditArchive(spool.directory, store)
    for round_ in range(4):
        _seal_segments(spool, 3, start=3 * round_)
        for archive in (first, second) if round_ % 2 == 0 else (second, first):
            assert archive.ship_once().error is None
    spool.close()
    # both at once (threads: one flock each, as in two processes)
    _seal_segments(spool, 5, start=100)
    spool.close()
    reports = []
    shippers = [threading.Thread(target=lambda a=a: reports.append(a.ship_once())) for a in (first, second)]
    for shipper in shippers:
        shipper.start()
    for shipper in shippers:
        shipper.join()
    assert all(report.error is None for report in reports)
    assert sorted(store.puts) == _trail(spool.directory) == store.list()
    assert set(store.puts.values()) == {1}
    assert first.objects_shipped + second.objects_shipped == len(store.puts)


_SHIPPER = """
import os, sys, time
from pathlib import Path
from wardgate.adapters import open_object_store
from wardgate.core.archive import AuditArchive

directory, bucket, log, stop = map(Path, sys.argv[1:5])
store = open_object_store(f"file://{bucket}")

class LoggingStore:
    url = store.url

    def put(self, key, data, content_type="application/octet-stream"):
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            os.write(fd, (key + "\\n").encode())
        finally:
            os.close(fd)
        store.put(key, data, content_type)

archive = AuditArchive(directory, LoggingStore())
while not stop.exists():
    assert archive.ship_once().error is None
    time.sleep(0.001)
assert archive.ship_once().error is None
"""


def test_archives_of_worker_processes_put_each_object_once(tmp_path: Path) -> None:
    spool = _spool(tmp_path / "audit", tmp_path, "gw-a")
    spool.recover()
    bucket, log, stop = tmp_path / "bucket", tmp_path / "puts.log", tmp_path / "stop"
    shippers = [subprocess.Popen([sys.executable, "-c", _SHIPPER, str(spool.directory), str(bucket), str(log),
                                  str(stop)]) for _ in range(3)]
    try:
        for n in range(40):
            _seal_segments(spool, 1, start=n)
            time.sleep(0.01)
        spool.close()
    finally:
        stop.touch()
        assert [shipper.wait(timeout=60) for shipper in shippers] == [0, 0, 0]
    puts = Counter(log.read_text().split())
    assert sorted(puts) == _trail(spool.directory) == open_object_store(f"file://{bucket}").list()
    assert [key for key, count in puts.items() if count > 1] == []
