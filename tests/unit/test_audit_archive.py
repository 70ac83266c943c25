"""Shipping the sealed trail to a write-once archive: what reaches the archive verifies offline, the
order keeps every digest behind its segment, a restart resumes without re-sending, and an archive
that cannot be written is reported — then, past the grace, refused — and recovers by itself."""

from __future__ import annotations

from pathlib import Path

import pytest

from wardgate.adapters.local import DirectoryObjectStore
from wardgate.audittool import verify_trail
from wardgate.cli import main
from wardgate.core.archive import SHIPPED_FILE, AuditArchive, download_trail
from wardgate.core.audit import FileSpool, Recorder, SessionLog
from wardgate.core.integrity import LocalEd25519Signer


def _record(spool: FileSpool, sessions: int = 3, commands: int = 5) -> None:
    recorder = Recorder(spool)
    for s in range(sessions):
        log = SessionLog(recorder, f"s{s}", {"gateway": "gw1", "protocol": "postgres"})
        log.emit("session.started", {"peer": "127.0.0.1"})
        recorder.commit()
        for n in range(commands):
            log.emit("command.decided", {"statement": f"select {n}", "decision": "allow"})
            recorder.commit()
        log.emit("session.ended", {"reason": "done"})
        recorder.commit()


@pytest.fixture
def spool(tmp_path: Path) -> FileSpool:
    spool = FileSpool(tmp_path / "spool", "gw1", segment_bytes=1500,
                      signer=LocalEd25519Signer(tmp_path / "key.pem"))
    spool.recover()
    return spool


def test_shipped_archive_verifies_offline(spool: FileSpool, tmp_path: Path, capsys) -> None:
    _record(spool)
    spool.close()
    store = DirectoryObjectStore(f"file://{tmp_path / 'bucket'}")
    report = AuditArchive(spool.directory, store).ship_once()
    assert report.error is None
    segments = [k for k in store.list() if k.endswith(".jsonl")]
    assert len(segments) >= 3
    assert all(f"{s}.digest.json" in store.list() for s in segments)
    assert any(k.startswith("keys/") for k in store.list())
    # keys first, and no digest before its segment
    order = report.shipped
    assert order[0].startswith("keys/")
    for index, name in enumerate(order):
        if name.endswith(".digest.json"):
            assert order.index(name.removesuffix(".digest.json")) < index

    copy = tmp_path / "copy"
    assert download_trail(store, copy) == len(store.list())
    assert verify_trail(copy).ok
    assert main(["audit", "verify", str(copy)]) == 0


def test_only_sealed_segments_are_shipped_and_a_restart_does_not_resend(spool: FileSpool, tmp_path: Path) -> None:
    _record(spool, sessions=1, commands=2)  # too small to rotate: nothing sealed yet
    store = DirectoryObjectStore(f"file://{tmp_path / 'bucket'}")
    archive = AuditArchive(spool.directory, store)
    report = archive.ship_once()
    assert [n for n in report.shipped if n.endswith(".jsonl")] == []
    assert spool.rotate_if_older(0.0)
    spool.wait_for_seals()
    report = archive.ship_once()
    shipped_segments = [n for n in report.shipped if n.endswith(".jsonl")]
    assert len(shipped_segments) == 1
    # A new archive object (a restarted gateway) reads .shipped and sends nothing again.
    again = AuditArchive(spool.directory, store).ship_once()
    assert again.shipped == [] and again.error is None
    assert shipped_segments[0] in (spool.directory / SHIPPED_FILE).read_text().split()


def test_unwritable_archive_is_reported_then_refused_after_the_grace_and_recovers(spool: FileSpool,
                                                                                 tmp_path: Path) -> None:
    _record(spool)
    spool.close()
    blocker = tmp_path / "bucket"
    blocker.write_text("a file where the bucket directory should be")  # every put fails (ENOTDIR)
    now = [1000.0]
    archive = AuditArchive(spool.directory, DirectoryObjectStore(f"file://{blocker}"), grace=30.0,
                           clock=lambda: now[0])
    first = archive.ship_once()
    assert first.error is not None and "bucket" in first.error and first.pending
    assert archive.error is None          # within the grace: reported, not yet refusing
    assert archive.last_error == first.error
    now[0] += 31
    archive.ship_once()
    assert archive.error is not None and "cannot ship" in archive.error  # past the grace: refuse
    blocker.unlink()                      # the bucket is back
    recovered = archive.ship_once()
    assert recovered.error is None and archive.error is None
    assert set(recovered.shipped) == set(first.pending)


def test_audit_verify_reads_a_bucket_url(spool: FileSpool, tmp_path: Path, capsys) -> None:
    _record(spool)
    spool.close()
    bucket = tmp_path / "bucket"
    AuditArchive(spool.directory, DirectoryObjectStore(f"file://{bucket}")).ship_once()
    # A tampered archive object is caught when verifying from the archive.
    victim = sorted(bucket.glob("*.jsonl"))[0]
    victim.chmod(0o640)
    victim.write_bytes(victim.read_bytes().replace(b"select 0", b"select 9", 1))
    assert main(["audit", "verify", f"file://{bucket}"]) == 1
    assert "modified" in capsys.readouterr().out.lower()
