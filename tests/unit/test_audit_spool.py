"""The embedded sink's segment files: events copied into a preallocated shared mapping are in the
file at once (what a reader or a restarted gateway sees), a sealed segment is exactly the bytes
written, a full disk is a clean error with no torn line, and a file system that cannot map the
file still gets every event (pwrite)."""

from __future__ import annotations

import errno
import hashlib
import mmap
import os
from pathlib import Path

import orjson
import pytest

from wardgate.core import audit
from wardgate.core.audit import FileSpool, read_segment, read_segment_bytes
from wardgate.core.integrity import LocalEd25519Signer, digest_path_for


def _line(n: int, size: int = 100) -> bytes:
    return orjson.dumps({"n": n, "pad": "x" * size}) + b"\n"


def _sealed_as_written(path: Path) -> bool:
    """The segment is read-only and its signed digest names the SHA-256 of its bytes."""
    digest = orjson.loads(digest_path_for(path).read_bytes())
    return path.stat().st_mode & 0o222 == 0 and digest["segment_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def _spool(directory: Path, tmp_path: Path, **kwargs) -> FileSpool:
    return FileSpool(directory, "gw0001", signer=LocalEd25519Signer(tmp_path / "state" / "key.pem"), **kwargs)


def test_events_are_in_the_live_file_at_once_and_the_seal_keeps_exactly_them(tmp_path: Path) -> None:
    spool = _spool(tmp_path / "audit", tmp_path, segment_bytes=64 << 20)
    lines = [_line(n) for n in range(50)]
    for line in lines:
        spool.write(line)
    live = spool.current_path
    # Another process (verify, replay, a restarted gateway) reads the events now, without a seal;
    # the preallocated rest of the live file is NUL bytes, which readers stop at.
    assert read_segment(live) == lines
    assert live.stat().st_size > sum(map(len, lines)) and live.read_bytes().endswith(b"\0")
    spool.close()
    assert live.read_bytes() == b"".join(lines) and _sealed_as_written(live)


def test_batches_larger_than_the_reservation_step_and_rotation(tmp_path: Path) -> None:
    spool = _spool(tmp_path / "audit", tmp_path, segment_bytes=12 << 20)
    big = _line(0, size=9 << 20)  # past the first mapped, preallocated step in one write
    small = [_line(n) for n in range(1, 2000)]
    spool.write(small[0])
    spool.write(big)
    for line in small[1:1000]:
        spool.write(line)
    spool.write(_line(-1, size=4 << 20))  # crosses segment_bytes: this segment is sealed
    for line in small[1000:]:
        spool.write(line)
    second = spool.current_path
    spool.close()
    segments = sorted((tmp_path / "audit").glob("*.jsonl"))
    assert len(segments) == 2 and segments[1] == second
    assert segments[0].read_bytes() == small[0] + big + b"".join(small[1:1000]) + _line(-1, size=4 << 20)
    assert segments[1].read_bytes() == b"".join(small[1000:])
    assert all(_sealed_as_written(path) for path in segments)


def test_zeros_written_ahead_never_cover_events(tmp_path: Path, monkeypatch) -> None:
    """The zeros written ahead of the copies (so their pages are in the page cache) land only past the
    last event: with lines of every size crossing many fill steps, the live file is always exactly
    the events and then NULs, and so is it where writing the zeros fails (the copies fault in)."""
    monkeypatch.setattr(audit, "_FILL_AHEAD", 8192)
    spool = _spool(tmp_path / "audit", tmp_path, segment_bytes=64 << 20)
    written = []
    real_pwrite = os.pwrite
    for n in range(600):
        if n == 300:  # from here on, writing zeros fails
            monkeypatch.setattr(audit.os, "pwrite", lambda *args: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error")))
        line = _line(n, size=(n * 37) % 9000)
        spool.write(line)
        written.append(line)
        if n % 50 == 0 or n == 599:
            content = spool.current_path.read_bytes()
            size = sum(map(len, written))
            assert content[:size] == b"".join(written) and content[size:].strip(b"\0") == b""
    monkeypatch.setattr(audit.os, "pwrite", real_pwrite)
    live = spool.current_path
    spool.close()
    assert live.read_bytes() == b"".join(written) and _sealed_as_written(live)


def test_without_shared_mappings_events_are_written_with_pwrite(tmp_path: Path, monkeypatch, caplog) -> None:
    def refuse(*args, **kwargs):
        raise OSError(errno.ENODEV, "No such device")

    monkeypatch.setattr(audit.mmap, "mmap", refuse)  # a file system without writable shared mappings
    spool = _spool(tmp_path / "audit", tmp_path, segment_bytes=64 << 20)
    lines = [_line(n, size=n * 300) for n in range(200)]
    for line in lines:
        spool.write(line)
    assert read_segment(spool.current_path) == lines
    live = spool.current_path
    spool.close()
    assert live.read_bytes() == b"".join(lines) and _sealed_as_written(live)
    assert "cannot be mapped" in caplog.text and "pwrite" in caplog.text


def test_recovery_cuts_the_preallocated_tail_but_not_a_hole(tmp_path: Path) -> None:
    spool = _spool(tmp_path / "audit", tmp_path, segment_bytes=64 << 20)
    lines = [_line(n) for n in range(20)]
    for line in lines:
        spool.write(line)
    live = spool.current_path
    spool._map.close()  # the gateway died: no seal; its mapping and descriptor (the lock) are gone
    os.close(spool._fd)
    with open(live, "r+b") as f:  # a machine crash: a block written back after one that was not
        f.seek(len(b"".join(lines)) + 5000)
        f.write(_line(99))
    assert _spool(tmp_path / "audit", tmp_path).recover() == [live]
    data = live.read_bytes()
    assert data == b"".join(lines) + b"\0" * 5000 + _line(99)  # only the NUL tail went
    assert read_segment(live) == lines


def test_full_disk_is_a_clean_error_and_writing_resumes_when_space_returns(small_disk: Path, tmp_path: Path) -> None:
    spool = _spool(small_disk / "audit", tmp_path, segment_bytes=64 << 20)
    spool.write(_line(0))  # the 4 MiB step does not fit: only what the write needs is reserved
    filler = small_disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)  # take every byte that is left
    try:
        while os.write(fd, b"\0" * mmap.PAGESIZE):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    written = [_line(0)]
    with pytest.raises(OSError) as refused:
        for n in range(1, 100_000):
            line = _line(n, size=1000)
            spool.write(line)
            written.append(line)
    assert refused.value.errno == errno.ENOSPC
    assert read_segment_bytes(spool.current_path) == b"".join(written)  # whole lines only
    filler.unlink()
    spool.write(_line(-1))
    written.append(_line(-1))
    live = spool.current_path
    spool.close()
    assert live.read_bytes() == b"".join(written) and _sealed_as_written(live)


def test_the_gateway_does_not_keep_the_written_segment_mapped(tmp_path: Path) -> None:
    """The events copied in stay in the page cache (and the file), not in the gateway's resident
    memory: what is written is unmapped once per preallocation step."""
    def mapped_kib(path: Path) -> int:
        smaps = Path(f"/proc/{os.getpid()}/smaps").read_text().split("\n")
        for i, line in enumerate(smaps):
            if line.endswith(str(path)):
                return int(next(s for s in smaps[i + 1:] if s.startswith("Rss:")).split()[1])
        raise AssertionError(f"{path} is not mapped")

    spool = _spool(tmp_path / "audit", tmp_path, segment_bytes=64 << 20)
    lines = [_line(n, size=1000) for n in range(20_000)]  # ~20 MB: several steps
    for line in lines:
        spool.write(line)
    assert mapped_kib(spool.current_path) <= (audit._RESERVE_STEP >> 10) + 8
    assert read_segment(spool.current_path) == lines
    live = spool.current_path
    spool.close()
    assert live.read_bytes() == b"".join(lines) and _sealed_as_written(live)


def test_fsync_always_writes_with_pwrite_not_the_mapping(tmp_path: Path) -> None:
    """With ``fsync: always`` each batch is fsynced before it is released, so the next copy would
    fault on a page under writeback and wait: the recorder has the spool use pwrite(2) instead."""
    spool = _spool(tmp_path / "audit", tmp_path, segment_bytes=64 << 20)
    recorder = audit.Recorder(spool, fsync="always")
    assert spool.mapped is False and audit.Recorder(_spool(tmp_path / "other", tmp_path)).spool.mapped is True
    lines = [_line(n) for n in range(100)]
    for line in lines:
        spool.write(line)
    live = spool.current_path
    assert str(live) not in Path(f"/proc/{os.getpid()}/maps").read_text()
    assert read_segment(live) == lines
    recorder.close()
    assert live.read_bytes() == b"".join(lines) and _sealed_as_written(live)


def test_without_preallocation_events_are_written_with_pwrite(tmp_path: Path, monkeypatch) -> None:
    """Where the platform has no posix_fallocate (macOS), nothing is mapped (a mapped page the file
    system cannot back would be SIGBUS): pwrite(2) extends the file."""
    monkeypatch.setattr(audit, "_CAN_PREALLOCATE", False)
    spool = _spool(tmp_path / "audit", tmp_path, segment_bytes=64 << 20)
    lines = [_line(n, size=n * 50) for n in range(300)]
    for line in lines:
        spool.write(line)
    live = spool.current_path
    assert spool.mapped is False and live.read_bytes() == b"".join(lines)  # no preallocated tail
    spool.close()
    assert live.read_bytes() == b"".join(lines) and _sealed_as_written(live)


def test_a_segment_larger_than_the_mapping_window_is_mapped_in_windows(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(audit, "_MAP_MAX", 1 << 20)
    spool = _spool(tmp_path / "audit", tmp_path, segment_bytes=8 << 20)
    lines = [_line(n, size=n % 3000) for n in range(6000)]
    windows = set()
    for line in lines:
        spool.write(line)
        windows.add(spool._map_start)
    spool.close()
    segments = sorted((tmp_path / "audit").glob("*.jsonl"))
    assert len(windows) > 5 and len(segments) == 2
    assert b"".join(path.read_bytes() for path in segments) == b"".join(lines)
    assert all(_sealed_as_written(path) for path in segments)
