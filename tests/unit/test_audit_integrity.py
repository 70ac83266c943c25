"""Signed segment digests and ``wardgate audit verify``: an untouched trail verifies; every kind of
tampering is named exactly, and nothing untouched is reported."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import orjson
import pytest

from wardgate.audittool import ERROR, WARNING, verify_events, verify_trail
from wardgate.cli import main
from wardgate.core.audit import FileSpool, Recorder, SessionLog, read_segment, read_segment_bytes
from wardgate.core.integrity import (DIGEST_SUFFIX, LocalEd25519Signer, canonical, digest_path_for, load_public_key,
                                     verify_signature)

GATEWAY = "gw0001"


def _signer(tmp_path: Path) -> LocalEd25519Signer:
    return LocalEd25519Signer(tmp_path / "state" / "audit-signing-key.pem")


def _record(spool: FileSpool, plan: list[tuple[str, str, dict]], gateway: str = GATEWAY) -> dict[str, SessionLog]:
    """Emit ``plan`` (session, type, fields), one write per event, so small segments rotate often."""
    recorder = Recorder(spool)
    logs: dict[str, SessionLog] = {}
    for session, event_type, fields in plan:
        if session not in logs:
            logs[session] = SessionLog(recorder, session, {"gateway": gateway, "protocol": "postgres"})
        logs[session].emit(event_type, fields)
        recorder.commit()
    return logs


def _plan(sessions=("sA", "sB", "sC"), *, commands: int = 4, end: bool = True) -> list[tuple[str, str, dict]]:
    plan = [(f"gateway-{GATEWAY}", "policy.loaded", {"policy": "0" * 64})]
    for s in sessions:
        plan.append((s, "session.started", {"peer": "127.0.0.1"}))
    for n in range(commands):
        for s in sessions:
            plan.append((s, "command.decided", {"statement": f"select {n}", "decision": "allow"}))
            plan.append((s, "command.result", {"status": "ok", "rows": n}))
    if end:
        for s in sessions:
            plan.append((s, "session.ended", {"reason": "client closed"}))
    return plan


@pytest.fixture
def trail(tmp_path: Path) -> Path:
    directory = tmp_path / "audit"
    spool = FileSpool(directory, GATEWAY, segment_bytes=2000, signer=_signer(tmp_path))
    spool.recover()
    _record(spool, _plan())
    spool.close()
    assert len(_segments(directory)) >= 3
    return directory


def _segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.jsonl"))


def _errors(directory: Path, **kwargs) -> set[str]:
    return {f.message for f in verify_trail(directory, **kwargs).findings if f.level == ERROR}


def _rewrite(path: Path, lines: list[bytes]) -> None:
    os.chmod(path, 0o640)
    path.write_bytes(b"".join(lines))
    os.chmod(path, 0o440)


def _events(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in read_segment(path)]


def _segment_with_consecutive(directory: Path, count: int = 2) -> tuple[Path, str, int]:
    """A segment with ``count`` consecutive events of one session (not its first event in the trail);
    returns (segment, session, index of the first of them)."""
    for path in _segments(directory)[1:]:
        events = _events(path)
        for i in range(len(events) - count + 1):
            group = events[i:i + count]
            if len({e["session"] for e in group}) == 1 and not group[0]["session"].startswith("gateway-"):
                return path, group[0]["session"], i
    raise AssertionError("no suitable segment")


# --- the untouched trail ---------------------------------------------------------------------------

def test_untouched_trail_verifies(trail: Path, capsys) -> None:
    assert main(["audit", "verify", str(trail)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith(f"verified {len(_segments(trail))} segments, ")
    assert out[-1].endswith("4 chains (sessions and gateway chains): OK")
    assert not [line for line in out if line.startswith(("error", "warning"))]


def test_digests_are_signed_chained_and_read_only(trail: Path, tmp_path: Path) -> None:
    signer = _signer(tmp_path)
    assert (tmp_path / "state" / "audit-signing-key.pem").stat().st_mode & 0o777 == 0o600
    key = load_public_key((trail / "keys" / f"{signer.key_id}.pem").read_bytes())
    previous = None
    for segment in _segments(trail):
        path = digest_path_for(segment)
        assert path.stat().st_mode & 0o777 == 0o440 and segment.stat().st_mode & 0o777 == 0o440
        record = json.loads(path.read_bytes())
        assert verify_signature(record, key)
        assert record["segment"] == segment.name and record["key_id"] == signer.key_id
        assert record["previous_digest"] == previous
        assert canonical(record) == json.dumps({k: v for k, v in record.items() if k != "signature"},
                                               sort_keys=True, separators=(",", ":")).encode()
        previous = path.name
    assert record["sessions"]["sA"]["ended"] is True


def test_json_output(trail: Path, capsys) -> None:
    assert main(["audit", "verify", f"file://{trail}", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True and report["findings"] == [] and report["sessions"] == 4


# --- tampering ---------------------------------------------------------------------------------------

def test_modified_event(trail: Path, capsys) -> None:
    segment, session, index = _segment_with_consecutive(trail)
    lines = read_segment(segment)
    seq = orjson.loads(lines[index])["seq"]
    event = orjson.loads(lines[index])
    event["time"] = "1999-01-01T00:00:00.000000Z"  # any change of the line
    lines[index] = orjson.dumps(event) + b"\n"
    _rewrite(segment, lines)
    assert _errors(trail) == {f"segment {segment.name} was modified after it was written",
                              f"event {session}#{seq} modified"}
    assert main(["audit", "verify", str(trail)]) == 1
    assert capsys.readouterr().out.strip().splitlines()[-1].endswith("FAILED: 2 problems")


def test_modified_last_event_of_a_session_is_caught_by_the_digest(trail: Path) -> None:
    last = _segments(trail)[-1]
    lines = read_segment(last)
    index = max(i for i, line in enumerate(lines) if orjson.loads(line)["type"] == "session.ended")
    event = orjson.loads(lines[index])
    event["reason"] = "something else"
    lines[index] = orjson.dumps(event) + b"\n"
    _rewrite(last, lines)
    assert _errors(trail) == {f"segment {last.name} was modified after it was written",
                              f"event {event['session']}#{event['seq']} modified"}


def test_deleted_event(trail: Path) -> None:
    segment, session, index = _segment_with_consecutive(trail)
    lines = read_segment(segment)
    seq = orjson.loads(lines[index])["seq"]
    del lines[index]
    _rewrite(segment, lines)
    assert _errors(trail) == {f"segment {segment.name} was modified after it was written",
                              f"deleted event(s) seq {seq}..{seq} in session {session}"}


def test_verify_events_finds_a_missing_seq_in_memory(trail: Path) -> None:
    lines = [line for path in _segments(trail) for line in read_segment(path)]
    assert verify_events(lines) == []
    sb = [i for i, line in enumerate(lines) if orjson.loads(line)["session"] == "sB"]
    del lines[sb[3]], lines[sb[4] - 1]  # seq 4 and 5 of sB
    assert [f.message for f in verify_events(lines)] == ["deleted event(s) seq 4..5 in session sB"]
    dicts = [orjson.loads(line) for line in lines]
    assert [f.message for f in verify_events(dicts)] == ["deleted event(s) seq 4..5 in session sB"]


def test_verify_events_in_memory_modified_and_reordered(trail: Path) -> None:
    lines = [line for path in _segments(trail) for line in read_segment(path)]
    sc = [i for i, line in enumerate(lines) if orjson.loads(line)["session"] == "sC"]
    swapped = list(lines)
    swapped[sc[2]], swapped[sc[3]] = swapped[sc[3]], swapped[sc[2]]
    assert [f.message for f in verify_events(swapped)] == ["events reordered in session sC"]
    altered = list(lines)
    altered[sc[1]] = altered[sc[1]].replace(b'"select', b'"SELECT')
    assert [f.message for f in verify_events(altered)] == ["event sC#2 modified"]


def test_reordered_events(trail: Path) -> None:
    segment, session, index = _segment_with_consecutive(trail)
    lines = read_segment(segment)
    lines[index], lines[index + 1] = lines[index + 1], lines[index]
    _rewrite(segment, lines)
    assert _errors(trail) == {f"segment {segment.name} was modified after it was written",
                              f"events reordered in session {session}"}


def test_deleted_segment(trail: Path) -> None:
    segment = _segments(trail)[1]
    sessions = sorted({e["session"] for e in _events(segment)})
    segment.unlink()
    errors = _errors(trail)
    assert errors == {f"segment {segment.name} deleted (its digest remains): "
                      f"events of session(s) {', '.join(sessions)} lost"}


def test_deleted_digest(trail: Path) -> None:
    segment = _segments(trail)[1]
    digest_path_for(segment).unlink()
    assert _errors(trail) == {f"digest missing for segment {segment.name}"}


def test_deleted_last_digest(trail: Path) -> None:
    segment = _segments(trail)[-1]
    digest_path_for(segment).unlink()
    assert _errors(trail) == {f"digest missing for segment {segment.name}"}


def test_deleted_segment_and_its_digest(trail: Path) -> None:
    segments = _segments(trail)
    gone, after = segments[1], segments[2]
    digest_path_for(gone).unlink()
    gone.unlink()
    errors = _errors(trail)
    assert (f"digest chain broken: {after.name}{DIGEST_SUFFIX} names previous {gone.name}{DIGEST_SUFFIX} "
            f"which is missing (segment {gone.name} and its digest deleted)") in errors
    assert all("chain broken" in e or e.startswith("deleted event(s)") for e in errors)


def test_forged_signature(trail: Path) -> None:
    path = digest_path_for(_segments(trail)[1])
    record = json.loads(path.read_bytes())
    signature = bytearray(base64.b64decode(record["signature"]))
    signature[0] ^= 1
    record["signature"] = base64.b64encode(bytes(signature)).decode()
    os.chmod(path, 0o640)
    path.write_text(json.dumps(record))
    assert _errors(trail) == {f"forged or altered digest {path.name}"}


def test_altered_digest_content(trail: Path) -> None:
    path = digest_path_for(_segments(trail)[1])
    record = json.loads(path.read_bytes())
    record["events"] += 1
    os.chmod(path, 0o640)
    path.write_text(json.dumps(record))
    assert _errors(trail) == {f"forged or altered digest {path.name}"}


def test_unknown_key(trail: Path, tmp_path: Path) -> None:
    key_id = _signer(tmp_path).key_id
    for pem in (trail / "keys").glob("*.pem"):
        pem.unlink()
    assert _errors(trail) == {f"unknown key {key_id} for digest {digest_path_for(s).name}" for s in _segments(trail)}


def test_trusted_key_pins_the_signer(trail: Path, tmp_path: Path, capsys) -> None:
    other = LocalEd25519Signer(tmp_path / "other.pem")
    (tmp_path / "other.pub").write_bytes(other.public_key_pem())
    (tmp_path / "right.pub").write_bytes(_signer(tmp_path).public_key_pem())
    assert main(["audit", "verify", str(trail), "--trusted-key", str(tmp_path / "right.pub")]) == 0
    capsys.readouterr()
    assert main(["audit", "verify", str(trail), "--trusted-key", str(tmp_path / "other.pub")]) == 1
    assert "unknown key" in capsys.readouterr().out


def test_replaced_key_file_is_refused(trail: Path, tmp_path: Path) -> None:
    pem = next((trail / "keys").glob("*.pem"))
    os.chmod(pem, 0o644)
    pem.write_bytes(LocalEd25519Signer(tmp_path / "attacker.pem").public_key_pem())
    errors = _errors(trail)
    assert f"key file keys/{pem.name} does not match its id (replaced?)" in errors
    assert all(e.startswith(("unknown key", "key file")) for e in errors)


def test_truncated_session(tmp_path: Path) -> None:
    directory = tmp_path / "audit"
    spool = FileSpool(directory, GATEWAY, segment_bytes=2000, signer=_signer(tmp_path))
    plan = _plan() + [("sD", "session.started", {"peer": "127.0.0.1"}),
                      ("sD", "command.decided", {"statement": "select 1", "decision": "allow"})]
    _record(spool, plan)
    spool.close()
    assert _errors(directory) == {"session sD truncated: no session.ended"}


def test_deleting_the_tail_of_a_session_is_truncation(trail: Path) -> None:
    last = _segments(trail)[-1]
    lines = read_segment(last)
    ended = [i for i, line in enumerate(lines) if orjson.loads(line)["type"] == "session.ended"]
    session = orjson.loads(lines[ended[-1]])["session"]
    del lines[ended[-1]]
    _rewrite(last, lines)
    errors = _errors(trail)
    assert f"session {session} truncated: no session.ended" in errors
    assert f"segment {last.name} was modified after it was written" in errors


def test_editing_a_live_segment_before_its_seal_is_caught(tmp_path: Path) -> None:
    """The digest signs the bytes the gateway wrote, not what the file holds at the seal: an event
    edited in place in the live segment is reported, though the seal came after the edit; a whole
    forged session (its own chain intact) put after the last event is not sealed into the trail."""
    directory = tmp_path / "audit"
    spool = FileSpool(directory, GATEWAY, segment_bytes=1 << 20, signer=_signer(tmp_path))
    _record(spool, _plan(("sA",)))
    live = spool.current_path
    data = read_segment_bytes(live)
    at = data.index(b"select 0")
    with open(live, "r+b") as f:  # the live file is writable by the gateway's user
        f.seek(at)
        f.write(b"select 9")
    spool.close()
    errors = _errors(directory)
    assert f"segment {live.name} was modified after it was written" in errors
    assert any(e.startswith("event sA#") and e.endswith(" modified") for e in errors)

    directory = tmp_path / "audit2"
    spool = FileSpool(directory, GATEWAY, segment_bytes=1 << 20, signer=_signer(tmp_path))
    _record(spool, _plan(("sA",)))
    forged_dir = tmp_path / "forged"
    forged = FileSpool(forged_dir, GATEWAY, segment_bytes=1 << 20)
    _record(forged, _plan(("sZ",))[1:])
    forged.close()
    live = spool.current_path
    with open(live, "r+b") as f:
        f.seek(len(read_segment_bytes(live)))
        f.write(read_segment_bytes(_segments(forged_dir)[0]))
    spool.close()
    assert _errors(directory) == set()
    assert {e["session"] for e in _events(live)} == {f"gateway-{GATEWAY}", "sA"}


# --- live gateway, crash recovery, restarts, windows ---------------------------------------------------

def test_running_gateway_segment_is_a_warning(tmp_path: Path, capsys) -> None:
    directory = tmp_path / "audit"
    spool = FileSpool(directory, GATEWAY, segment_bytes=2000, signer=_signer(tmp_path))
    _record(spool, _plan(end=False))
    spool.wait_for_seals()  # full segments are sealed in the background
    report = verify_trail(directory)
    assert report.ok
    assert [(f.level, f.message) for f in report.findings] == [
        (WARNING, f"segment {spool.current_path.name} is not sealed yet (gateway running?)")]
    assert main(["audit", "verify", str(directory)]) == 0
    spool.close()


def test_recover_seals_and_signs_a_dead_gateways_segment(tmp_path: Path) -> None:
    directory = tmp_path / "audit"
    spool = FileSpool(directory, "dead01", segment_bytes=2000, signer=_signer(tmp_path))
    _record(spool, _plan(), gateway="dead01")
    spool.wait_for_seals()  # the segments it had filled were sealed before it died
    leftover = spool.current_path
    spool._map.close()  # the process died: no seal; its mapping and descriptor (the lock) are gone
    os.close(spool._fd)
    assert verify_trail(directory).findings[0].message.startswith(f"segment {leftover.name} is not sealed")
    restarted = FileSpool(directory, "next01", segment_bytes=2000, signer=_signer(tmp_path))
    assert restarted.recover() == [leftover]
    record = json.loads(digest_path_for(leftover).read_bytes())
    assert record["recovered"] is True and record["gateway"] == "dead01" and record["previous_digest"]
    assert leftover.stat().st_mode & 0o777 == 0o440
    assert verify_trail(directory).findings == []


def test_restart_continues_the_chain(trail: Path, tmp_path: Path) -> None:
    first_run = _segments(trail)
    spool = FileSpool(trail, "gw0002", segment_bytes=2000, signer=_signer(tmp_path))
    spool.recover()
    _record(spool, [("sE", "session.started", {}), ("sE", "session.ended", {})], gateway="gw0002")
    spool.close()
    new = [s for s in _segments(trail) if s not in first_run]
    assert json.loads(digest_path_for(new[0]).read_bytes())["previous_digest"] == \
        digest_path_for(first_run[-1]).name
    assert _errors(trail) == set()
    for segment in first_run:  # deleting everything the first run wrote is detected
        digest_path_for(segment).unlink()
        segment.unlink()
    assert any(e.startswith(f"digest chain broken: {digest_path_for(new[0]).name}") for e in _errors(trail))


def test_since_until_window(trail: Path, capsys) -> None:
    segments = _segments(trail)
    digests = [json.loads(digest_path_for(s).read_bytes()) for s in segments]
    since = digests[2]["first_time"]
    report = verify_trail(trail, since=since)
    assert report.ok, report.findings
    assert report.segments < len(segments)
    assert verify_trail(trail, until=digests[0]["last_time"]).ok
    assert main(["audit", "verify", str(trail), "--since", since, "--until", "2999-01-01"]) == 0
    assert main(["audit", "verify", str(trail), "--since", "not a time"]) == 2


def test_no_signer_writes_no_digests(tmp_path: Path) -> None:
    directory = tmp_path / "audit"
    spool = FileSpool(directory, GATEWAY, segment_bytes=2000)
    _record(spool, _plan())
    spool.close()
    assert not list(directory.glob("*" + DIGEST_SUFFIX)) and not (directory / "keys").exists()
    assert {f"digest missing for segment {s.name}" for s in _segments(directory)} == _errors(directory)
