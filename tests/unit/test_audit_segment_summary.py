"""The digest summary the writer keeps as it writes (``SegmentSummary``) says exactly what
``summarize_segment`` finds by parsing the sealed segment: any difference would make verification
report tampering that did not happen, or miss some that did."""

from __future__ import annotations

import random
from pathlib import Path

import orjson
import pytest

from wardgate.audittool import verify_trail
from wardgate.core import audit
from wardgate.core.audit import FileSpool, Recorder, SessionLog
from wardgate.core.integrity import DIGEST_SUFFIX, LocalEd25519Signer, summarize_segment


def _digests_against_bytes(directory: Path) -> int:
    checked = 0
    for digest_path in sorted(directory.glob("*" + DIGEST_SUFFIX)):
        record = orjson.loads(digest_path.read_bytes())
        segment = digest_path.with_name(record["segment"])
        expected = summarize_segment(segment.read_bytes())
        kept = {key: record[key] for key in ("events", "first_time", "last_time", "sessions")}
        assert kept == expected, f"digest summary of {segment.name} differs from its bytes"
        checked += 1
    return checked


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_summary_kept_while_writing_equals_the_parsed_segment(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    directory = tmp_path / "audit"
    spool = FileSpool(directory, "gwsum1", segment_bytes=rng.choice([900, 3000, 12000]),
                      signer=LocalEd25519Signer(tmp_path / "key.pem"))
    recorder = Recorder(spool)
    live: list[SessionLog] = []
    started = ended = 0
    for _ in range(1500):
        if not live or (rng.random() < 0.05 and len(live) < 12):
            log = SessionLog(recorder, f"s{seed}x{started:04d}", {"gateway": "gwsum1", "protocol": "postgres"})
            log.emit("session.started", {"peer": "127.0.0.1"})
            live.append(log)
            started += 1
        log = rng.choice(live)
        if rng.random() < 0.04:
            log.emit("session.ended", {"reason": "client closed"})
            live.remove(log)
            ended += 1
        else:
            log.emit("command.decided", {"statement": "select " + "x" * rng.randrange(0, 300)})
        if rng.random() < 0.3:  # batches of several events, of several sessions, as the event loop writes
            recorder.commit()
    for log in live:
        log.emit("session.ended", {"reason": "gateway stopping"})
    recorder.commit()
    spool.close()
    assert ended > 5 and started > 10
    assert _digests_against_bytes(directory) >= 5
    report = verify_trail(directory)
    assert report.ok and report.findings == [] and report.sessions == started


def _one_session(tmp_path: Path, gateway: str, session: str, **spool_options) -> tuple[Path, FileSpool, Recorder, SessionLog]:
    directory = tmp_path / "audit"
    spool = FileSpool(directory, gateway, signer=LocalEd25519Signer(tmp_path / "key.pem"), **spool_options)
    recorder = Recorder(spool)
    return directory, spool, recorder, SessionLog(recorder, session, {"gateway": gateway, "protocol": "postgres"})


def _emit_at(log: SessionLog, times: list[float]) -> None:
    """One event per time, the clock reading exactly those times."""
    try:
        for t in times:
            audit.set_test_clock(t)
            log.emit("command.decided", {"t": t})
    finally:
        audit.set_test_clock(None)


def _only_digest(directory: Path) -> dict:
    (digest,) = directory.glob("*" + DIGEST_SUFFIX)
    return orjson.loads(digest.read_bytes())


def test_clock_stepped_back_inside_a_batch_still_gives_the_true_time_range(tmp_path: Path) -> None:
    directory, spool, recorder, log = _one_session(tmp_path, "gwsum2", "sclock", segment_bytes=1 << 20)
    # the earliest and the latest events are neither first nor last in the batch
    _emit_at(log, [1_800_000_100.0, 1_800_000_050.0, 1_800_000_200.0, 1_800_000_020.0, 1_800_000_150.0])
    recorder.commit()
    spool.close()
    assert _digests_against_bytes(directory) == 1
    record = _only_digest(directory)
    assert record["first_time"].startswith("2027-01-15T08:00:20") and record["last_time"].startswith("2027-01-15T08:03:20")


def test_bytes_written_without_their_sessions_are_summarized_from_the_segment(tmp_path: Path) -> None:
    directory, spool, recorder, log = _one_session(tmp_path, "gwsum3", "sraw")
    log.emit("session.started", {})
    recorder.commit()
    log.emit("command.decided", {"statement": "select 1"})
    spool.write(recorder._pending.data())  # a writer that does not say whose events these are
    spool.close()
    record = _only_digest(directory)
    assert record["events"] == 2 and record["sessions"]["sraw"]["last_seq"] == 2
    assert _digests_against_bytes(directory) == 1


def test_latest_time_written_before_the_clock_stepped_back_is_kept(tmp_path: Path) -> None:
    """Writes: 100..110, then (clock stepped back) 50..60, then 61..70: the segment spans 50..110,
    although its first line says 100 and its last line 70."""
    directory, spool, recorder, log = _one_session(tmp_path, "gwsum4", "sruns", segment_bytes=1 << 20)
    base = 1_800_000_000.0
    for batch in ([100, 105, 110], [50, 55, 60], [61, 65, 70]):
        _emit_at(log, [base + t for t in batch])
        recorder.commit()
    spool.close()
    assert _digests_against_bytes(directory) == 1
    record = _only_digest(directory)
    assert record["first_time"].endswith(":50.000000Z") and record["last_time"].endswith(":01:50.000000Z")
