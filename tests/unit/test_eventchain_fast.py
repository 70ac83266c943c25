"""The compiled audit event chain (``_eventchain_fast``) writes exactly what the Python reference
(``wardgate.core.eventchain``) writes: a different byte would break every hash chain the verifier
recomputes. (Build freshness: tests/unit/test_compiled_accelerators.py.)"""

from __future__ import annotations

import hashlib
import json
import random

import orjson
import pytest

from wardgate.core import audit, eventchain

fast = audit._EVENTCHAIN_FAST
needs_compiled = pytest.mark.skipif(fast is None, reason="compiled audit event chain not in use (not built, stale, "
                                                         "or WARDGATE_AUDIT_PYTHON)")
IMPLEMENTATIONS = [pytest.param(eventchain, id="python"),
                   pytest.param(fast, id="compiled", marks=needs_compiled)]


@pytest.fixture(autouse=True)
def _system_clock_afterwards():
    yield
    eventchain.set_test_clock(None)
    if fast is not None:
        fast.set_test_clock(None)


def _random_text(rng: random.Random) -> str:
    alphabet = ["a", "Z", "0", " ", "'", '"', "\\", "/", "\x00", "\x01", "\x08", "\t", "\n", "\x0b", "\x0c", "\r",
                "\x1f", "\x7f", "é", "€", "😀", "\u2028", "SELECT ", "$1"]
    return "".join(rng.choice(alphabet) for _ in range(rng.choice([0, 1, 5, 40, 300])))


def _random_calls(rng: random.Random, sessions: int):
    """(session index, time, method, args) for a random mix of every kind of append."""
    for n in range(4000):
        now = rng.choice([1_700_000_000.0, 1_799_999_999.999999, 4_102_444_800.5, 1.25e9 + rng.random(),
                          float(rng.randrange(1, 4_000_000_000)) + rng.random()])
        which = rng.randrange(3)
        if which == 0:
            members = rng.choice([b"", orjson.dumps({"statement": _random_text(rng), "rows": rng.randrange(-5, 10**12)})[1:-1]])
            args = (rng.choice(["session.started", "session.ended", "command.masked", "x"]), members)
            yield rng.randrange(sessions), now, "append_event", args
        elif which == 1:
            args = (rng.choice(["query", "parse", "bind"]), _random_text(rng), rng.choice([None, "", "stmt_1", _random_text(rng)]),
                    rng.choice([None, "%016x" % rng.getrandbits(64)]),
                    orjson.dumps({"decision": "allow", "rule": _random_text(rng), "controls": ["AC-3"]})[1:-1])
            yield rng.randrange(sessions), now, "decided", args
        else:
            args = (rng.choice([None, f"s-{n:06d}"]), rng.choice(["ok", "error", "skipped"]),
                    rng.choice([None, 0, 1, -3, 2**63 - 1, 2**63, 2**64 - 1, 10**30]),
                    rng.choice([None, "SELECT 1", _random_text(rng)]),
                    rng.choice([None, orjson.dumps({"code": "42P01", "message": _random_text(rng)})]),
                    rng.choice([None, 0.0, 0.000001, 0.0123456789, 12.5, 3]))
            yield rng.randrange(sessions), now, "result", args


def _record(implementation, calls, session_ids):
    pending = implementation.PendingEvents()
    chains = [implementation.EventChain(pending, sid) for sid in session_ids]
    for chain in chains:
        chain.fixed = b',"v":1,"gateway":"g\xc3\xa9","identity":null'
    ids = []
    for index, now, method, args in calls:
        implementation.set_test_clock(now)
        ids.append(getattr(chains[index], method)(*args))
    return pending, chains, ids


@needs_compiled
def test_compiled_and_python_chains_write_identical_bytes_on_random_events() -> None:
    session_ids = ["018f2b3c4d5e6a1b2c3d4e5f6a", "gateway-1787945890be", "sé"]
    calls = list(_random_calls(random.Random(11), len(session_ids)))
    expected, expected_chains, expected_ids = _record(eventchain, calls, session_ids)
    got, got_chains, got_ids = _record(fast, calls, session_ids)
    assert got.data() == expected.data()
    assert got_ids == expected_ids
    assert len(got) == len(expected) == len(calls)
    assert [c.session_id for c in got.chains] == [c.session_id for c in expected.chains]
    assert got.unordered == expected.unordered and got.last_time == expected.last_time
    for mine, theirs in zip(got_chains, expected_chains):
        assert (mine.seq, mine.prev_hash, mine.unwritten, mine.ended_seq) == \
               (theirs.seq, theirs.prev_hash, theirs.unwritten, theirs.ended_seq)
    # what a segment's digest is told about the sessions, written in two batches
    got_sessions: dict = {}
    expected_sessions: dict = {}
    for pending, sessions in ((got, got_sessions), (expected, expected_sessions)):
        pending.account(sessions)
        pending.clear()
    for chains, implementation in ((got_chains, fast), (expected_chains, eventchain)):
        assert all(chain.unwritten == 0 for chain in chains)
        implementation.set_test_clock(1_900_000_000.0)
        chains[1].append_event("session.ended", b"")
    got.account(got_sessions)
    expected.account(expected_sessions)
    assert got_sessions == expected_sessions
    first, last, last_hash, ended = got_sessions[session_ids[1]]
    assert (first, last, last_hash, ended) == (1, got_chains[1].seq, got_chains[1].prev_hash, True)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_lines_are_json_chained_by_sha256_and_ids_name_them(implementation) -> None:
    calls = list(_random_calls(random.Random(5), 1))
    pending, (chain,), ids = _record(implementation, calls, ["s1"])
    previous = "0" * 64
    lines = pending.data().splitlines(keepends=True)
    assert len(lines) == len(calls)
    for seq, (line, event_id, (_, now, method, args)) in enumerate(zip(lines, ids, calls), start=1):
        event = json.loads(line)  # the standard parser: exact beyond 64-bit row counts
        assert event["seq"] == seq and event["prev_hash"] == previous and event["gateway"] == "gé"
        assert event["id"] == f"s1-{seq:06d}" and event_id in (event["id"], None)
        if method == "decided":
            assert event["type"] == "command.decided"
            assert (event["kind"], event["statement"], event["statement_name"], event["fingerprint"]) == args[:4]
            assert event["controls"] == ["AC-3"]
        elif method == "result":
            assert event["type"] == "command.result" and event["command"] == args[0] and event["rows"] == args[2]
            assert event["tag"] == args[3] and event["error"] == (orjson.loads(args[4]) if args[4] else None)
            assert event["duration_us"] == (None if args[5] is None else int(args[5] * 1_000_000))
        previous = hashlib.sha256(line).hexdigest()
    assert chain.prev_hash == previous.encode() and chain.seq == len(calls) == chain.unwritten
    pending.clear()
    assert len(pending) == 0 and pending.data() == b"" and pending.chains == []


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_session_end_clock_steps_and_bad_values(implementation) -> None:
    pending = implementation.PendingEvents()
    chain = implementation.EventChain(pending, "s2")
    implementation.set_test_clock(1_800_000_100.0)
    chain.append_event("session.started", b"")
    implementation.set_test_clock(1_800_000_050.0)  # the clock stepped back
    chain.append_event("session.ended", b'"reason":"client closed"')
    assert pending.unordered and chain.ended_seq == 2 and pending.last_time == 1_800_000_050.0
    with pytest.raises((TypeError, UnicodeEncodeError)):
        chain.decided("query", "SELECT '\ud800'", None, None, b'"rule":"r"')  # a lone surrogate: not UTF-8
    with pytest.raises(ValueError):
        chain.prev_hash = b"short"
    # nothing half-written: the failed append left no line behind
    assert len(pending.data().splitlines()) == len(pending) == 2
    pending.clear()
    assert not pending.unordered and pending.last_time == 1_800_000_050.0
