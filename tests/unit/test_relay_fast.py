"""The compiled head of the backend relay loop (``_relay_fast.scan_backend``) does exactly what the
Python loop of ``ClientConnection._from_backend`` does with the messages it takes, and leaves every
other message to it: the client receives the same bytes, the session the same results, and the
connection ends in the same state, with the accelerator and without it."""

from __future__ import annotations

import asyncio
import random
from collections import deque

import pytest

from wardgate.core.audit import Recorder
from wardgate.core.model import Principal
from wardgate.core.policy import parse_policy
from wardgate.devtools.harness import CollectingTransport, relay_without_sockets
from wardgate.protocols.postgres import engine, wire
from wardgate_testkit import default_policy_text

fast = engine._RELAY_FAST
needs_fast = pytest.mark.skipif(fast is None, reason=f"compiled relay loop not in use: {engine._RELAY_PROBLEM}")

Q, P, B, D, E, S = b"QPBDES"


def _python_tag_rows(tag: str):
    rows = tag.rpartition(" ")[2]  # what the Python loop does with a CommandComplete tag
    return int(rows) if rows.isdigit() else None


def _msg(kind: bytes, payload: bytes = b"") -> bytes:
    return wire.message(kind, payload)


def _complete(tag: bytes) -> bytes:
    return _msg(b"C", tag + b"\x00")


ROW_DESCRIPTION = _msg(b"T", b"\x00\x01abalance\x00" + bytes(18))


def _row(value: bytes) -> bytes:
    return _msg(b"D", b"\x00\x01" + len(value).to_bytes(4, "big") + value)


class _Calls:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def __call__(self, event, status, rows=None, tag=None, error=None, seconds=None):
        assert seconds is None or seconds >= 0
        self.calls.append((event, status, rows, tag, error))


# --- scan_backend on its own ------------------------------------------------------------------
@needs_fast
@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_a_pgbench_answer_is_handled_whole(protocol: str) -> None:
    answer = ROW_DESCRIPTION + _row(b"1234") + _complete(b"SELECT 1") + wire.ready_for_query(b"I")
    if protocol == "simple":
        pending = deque([(Q, "ev-1", 0.0, None, None, None)])
    else:
        answer = _msg(b"1") + _msg(b"2") + answer
        pending = deque([(P, "ev-p", 0.0, None, None, None), (B, None, 0.0, None, None, None),
                         (D, None, 0.0, None, None, ("P", "")), (E, "ev-1", 0.0, None, None, ""),
                         (S, None, 0.0, None, None, None)])
    result = _Calls()
    assert fast.scan_backend(answer, 0, pending, result, 0) == (len(answer), 0)
    assert result.calls == [("ev-1", "ok", 1, "SELECT 1", None)]
    assert not pending


@needs_fast
def test_rows_are_counted_until_their_command_completes() -> None:
    rows = ROW_DESCRIPTION + _row(b"a") + _row(b"b") + _row(b"c")
    pending = deque([(Q, "ev-1", 0.0, None, None, None)])
    result = _Calls()
    assert fast.scan_backend(rows, 0, pending, result, 5) == (len(rows), 8)
    assert result.calls == [] and len(pending) == 1


@needs_fast
def test_it_stops_where_the_python_loop_has_work() -> None:
    masked_head = (Q, "ev-m", 0.0, None, object(), "SELECT secret")
    before = ROW_DESCRIPTION
    # a DataRow of a masked result: the masker's, not counted here
    data = _row(b"x") + wire.ready_for_query(b"I")
    assert fast.scan_backend(data, 0, deque([masked_head]), _Calls(), 3) == (0, 3)
    # RowDescription of a masked result, answering the Describe of a masked statement, nothing pending
    for head in (masked_head, (D, "ev-d", 0.0, None, object(), ("S", ""))):
        assert fast.scan_backend(before, 0, deque([head]), _Calls(), 0) == (0, 0)
    assert fast.scan_backend(before, 0, deque(), _Calls(), 0) == (0, 0)
    unmasked = (Q, "ev-1", 0.0, None, None, None)
    for other in (_msg(b"E", b"SERROR\x00\x00"), _msg(b"N", b"SNOTICE\x00\x00"), _msg(b"I"),
                  _msg(b"A", bytes(4) + b"ch\x00x\x00"), _msg(b"S", b"a\x00b\x00"), _msg(b"s"),
                  _msg(b"G", bytes(3)), _msg(b"H", bytes(3)), _msg(b"W", bytes(3)), _msg(b"d", b"x"),
                  _msg(b"n"), _msg(b"t", b"\x00\x00")):
        data = ROW_DESCRIPTION + other + wire.ready_for_query(b"I")
        pending = deque([unmasked])
        assert fast.scan_backend(data, 0, pending, _Calls(), 0) == (len(ROW_DESCRIPTION), 0), other
        assert list(pending) == [unmasked]
    # incomplete message, a length under 4
    answer = ROW_DESCRIPTION + _row(b"1234")
    assert fast.scan_backend(answer[:-1], 0, deque([unmasked]), _Calls(), 0) == (len(ROW_DESCRIPTION), 0)
    assert fast.scan_backend(b"D\x00\x00\x00\x02xx", 0, deque([unmasked]), _Calls(), 0) == (0, 0)
    # ReadyForQuery before an Execute's result; CommandComplete of a masked Execute
    pending = deque([(E, "ev-e", 0.0, None, None, "")])
    assert fast.scan_backend(wire.ready_for_query(b"I"), 0, pending, _Calls(), 0) == (0, 0) and len(pending) == 1
    pending = deque([(E, "ev-e", 0.0, None, object(), "")])
    assert fast.scan_backend(_complete(b"SELECT 1"), 0, pending, _Calls(), 0) == (0, 0) and len(pending) == 1
    # the answer to the gateway's own Describe (of a masked portal) is the Python loop's
    for message in (ROW_DESCRIPTION, _msg(b"n")):
        pending = deque([(engine._INJECTED_DESCRIBE, None, 0.0, None, object(), "")])
        assert fast.scan_backend(message, 0, pending, _Calls(), 0) == (0, 0) and len(pending) == 1
    # not bytes: left to Python whole
    assert fast.scan_backend(bytearray(wire.ready_for_query(b"I")), 0, deque([unmasked]), _Calls(), 0) == (0, 0)


@needs_fast
def test_an_execute_never_reports_fewer_rows_than_were_sent() -> None:
    for tag, counted, reported in ((b"SELECT 1", 3, 3), (b"BEGIN", 2, 2), (b"SELECT 5", 3, 5), (b"UPDATE 0", 0, 0)):
        result = _Calls()
        fast.scan_backend(_complete(tag), 0, deque([(E, "ev", 0.0, None, None, "")]), result, counted)
        assert result.calls == [("ev", "ok", reported, tag.decode(), None)]
    result = _Calls()  # a simple query reports its tag as it is
    fast.scan_backend(_complete(b"SELECT 1"), 0, deque([(Q, "ev", 0.0, None, None, None)]), result, 3)
    assert result.calls == [("ev", "ok", 1, "SELECT 1", None)]


@needs_fast
def test_nodata_and_close_complete_pop_their_entries() -> None:
    data = _msg(b"t", b"\x00\x00") + _msg(b"n")
    pending = deque([(D, None, 0.0, None, None, ("S", "s1")), (S, None, 0.0, None, None, None)])
    assert fast.scan_backend(data, 0, pending, _Calls(), 0) == (0, 0)  # ParameterDescription: Python's
    assert fast.scan_backend(data, len(data) - 5, pending, _Calls(), 0) == (len(data), 0)
    assert [entry[0] for entry in pending] == [S]
    pending = deque([(b"C"[0], None, 0.0, None, None, None), (S, None, 0.0, None, None, None)])
    data = _msg(b"3") + wire.ready_for_query(b"I")
    assert fast.scan_backend(data, 0, pending, _Calls(), 0) == (len(data), 0) and not pending


@needs_fast
def test_parse_and_bind_complete_pop_extended_entries_only() -> None:
    data = _msg(b"1") + _msg(b"2")
    pending = deque([(P, "p", 0.0, None, None, None), (B, None, 0.0, None, None, None),
                     (E, "e", 0.0, None, None, "")])
    assert fast.scan_backend(data, 0, pending, _Calls(), 0) == (len(data), 0)
    assert [entry[0] for entry in pending] == [E]
    pending = deque([(Q, "q", 0.0, None, None, None)])
    assert fast.scan_backend(data, 0, pending, _Calls(), 0) == (0, 0) and len(pending) == 1


@needs_fast
@pytest.mark.parametrize("tag", [b"SELECT 1", b"INSERT 0 5", b"UPDATE 0", b"BEGIN", b"", b"SELECT ", b"007",
                                 b"COPY 123456789012345678", b"SELECT 1234567890123456789012345678901234567890",
                                 b"SELECT 12a", b"SELECT \xc3\xa9", b"SELECT \xff1", b"SELECT  42", b" 9"])
def test_command_tags_give_the_python_row_count(tag: bytes) -> None:
    pending = deque([(Q, "ev", 0.0, None, None, None)])
    result = _Calls()
    fast.scan_backend(_complete(tag), 0, pending, result, 7)
    text = tag.decode("ascii", "replace")
    assert result.calls == [("ev", "ok", _python_tag_rows(text), text, None)]


@needs_fast
def test_random_command_tags_match_python() -> None:
    rng = random.Random(6)
    alphabet = b"SELECT INSERT0123456789 \x80\xff"
    for _ in range(5000):
        tag = bytes(rng.choice(alphabet) for _ in range(rng.randrange(0, 30)))
        if b"\x00" in tag:
            continue
        result = _Calls()
        fast.scan_backend(_complete(tag), 0, deque([(Q, "ev", 0.0, None, None, None)]), result, 0)
        text = tag.decode("ascii", "replace")
        assert result.calls == [("ev", "ok", _python_tag_rows(text), text, None)], tag


# --- the connection with and without it ---------------------------------------------------------
def _simple_exchange(rng: random.Random, i: int) -> tuple[bytes, bytes]:
    """A simple query and a backend answer of one of the shapes PostgreSQL sends."""
    shape = rng.randrange(6)
    request = wire.query(f"SELECT abalance FROM pgbench_accounts WHERE aid = {i};")
    if shape == 0:  # rows (some large, to cross chunk boundaries), then the tag
        rows = b"".join(_row(rng.randbytes(rng.choice((0, 4, 300, 9000)))) for _ in range(rng.randrange(0, 5)))
        answer = ROW_DESCRIPTION + rows + _complete(b"SELECT %d" % rng.randrange(0, 5))
    elif shape == 1:  # an error
        answer = _msg(b"E", b"SERROR\x00C42P01\x00Mrelation does not exist\x00\x00")
    elif shape == 2:  # two statements in one query, a notice between
        answer = (_complete(b"BEGIN") + _msg(b"N", b"SNOTICE\x00C00000\x00Mhello\x00\x00")
                  + ROW_DESCRIPTION + _row(b"1") + _complete(b"SELECT 1"))
    elif shape == 3:  # empty query
        answer = _msg(b"I")
    elif shape == 4:  # a notification and a parameter status in the middle
        answer = (ROW_DESCRIPTION + _msg(b"A", bytes(4) + b"chan\x00payload\x00") + _row(b"7")
                  + _msg(b"S", b"application_name\x00x\x00") + _complete(b"SELECT 1"))
    else:  # a tag with a row count too large for 64 bits
        answer = _complete(b"INSERT 0 123456789012345678901234567890")
    return request, answer + wire.ready_for_query(rng.choice((b"I", b"T", b"E")))


def _extended_exchange(rng: random.Random, i: int) -> tuple[bytes, bytes]:
    """Parse/Bind/Describe/Execute(/Close)/Sync of a named or unnamed statement, and an answer of
    one of the shapes PostgreSQL sends."""
    text = b"SELECT abalance FROM pgbench_accounts WHERE aid = $1;"
    name = rng.choice((b"", b"s%d" % i))
    shape = rng.randrange(5)
    parse = _msg(b"P", name + b"\x00" + text + b"\x00\x00\x00")
    bind = _msg(b"B", b"\x00" + name + b"\x00\x00\x00\x00\x01\x00\x00\x00\x02" + b"%02d" % (i % 100) + b"\x00\x00")
    execute = _msg(b"E", b"\x00" + (b"\x00\x00\x00\x02" if shape == 3 else bytes(4)))
    if shape == 0:  # Describe of the statement: ParameterDescription and NoData / RowDescription
        request = parse + _msg(b"D", b"S" + name + b"\x00") + _msg(b"S")
        answer = _msg(b"1") + _msg(b"t", b"\x00\x01\x00\x00\x00\x17") + rng.choice((_msg(b"n"), ROW_DESCRIPTION))
    elif shape == 1:  # an error at Bind: the rest is skipped until Sync
        request = parse + bind + _msg(b"D", b"P\x00") + execute + _msg(b"S")
        answer = _msg(b"1") + _msg(b"E", b"SERROR\x00C22P02\x00Mbad input\x00\x00")
    elif shape == 2:  # with a Close of the statement
        request = parse + bind + _msg(b"D", b"P\x00") + execute + _msg(b"C", b"S" + name + b"\x00") + _msg(b"S")
        answer = (_msg(b"1") + _msg(b"2") + ROW_DESCRIPTION + _row(b"42") * rng.randrange(0, 3)
                  + _complete(b"SELECT %d" % rng.randrange(0, 3)) + _msg(b"3"))
    elif shape == 3:  # Execute with a row limit: PortalSuspended
        request = parse + bind + _msg(b"D", b"P\x00") + execute + _msg(b"S")
        answer = _msg(b"1") + _msg(b"2") + ROW_DESCRIPTION + _row(b"1") + _row(b"2") + _msg(b"s")
    else:  # pgbench's
        request = parse + bind + _msg(b"D", b"P\x00") + execute + _msg(b"S")
        answer = (_msg(b"1") + _msg(b"2") + ROW_DESCRIPTION + _row(b"42") * rng.randrange(0, 3)
                  + _complete(rng.choice((b"SELECT 1", b"SELECT 0", b"UPDATE 7"))))
    return request, answer + wire.ready_for_query(b"I")


def _run(traffic: list[tuple[bytes, bytes]], cuts: list[list[int]], scanner, policy=None) -> tuple:
    """Relay ``traffic`` (backend answers cut at ``cuts``) with ``scanner`` as the compiled scan; with
    ``policy``, as an agent under it (results masked as its profiles say)."""
    async def go():
        recorder = Recorder(None)
        recorder.start(asyncio.get_running_loop())
        connection = relay_without_sockets(recorder, CollectingTransport(), CollectingTransport(), name="test")
        if policy is not None:
            connection.frontend.core.policy = policy
            connection.frontend.resources["test"] = None  # no column here has a table: nothing is looked up
            connection.session.principal = Principal("https://issuer.example", "test", groups=("ai-agents",))
        results = _Calls()
        original = connection.session.result
        original_note = connection.session.note

        def result(event, status, rows=None, tag=None, error=None, seconds=None):
            results(event, status, rows, tag, error, seconds)
            return original(event, status, rows, tag, error, seconds)

        def note(event_type, **fields):  # the command.masked reports, in order with the results
            results(fields.get("command"), event_type, fields.get("maskings"), None, None, None)
            return original_note(event_type, **fields)

        connection.session.result = result
        connection.session.note = note
        seen_pending = []
        for (request, answer), positions in zip(traffic, cuts):
            connection.data_received(request)
            start = 0
            for cut in positions + [len(answer)]:
                connection._from_backend(answer[start:cut])
                start = cut
            seen_pending.append((len(connection._pending), len(connection._tables)))
        await asyncio.sleep(0)
        recorder.close()
        # event ids are random: compare their order of appearance instead
        ids: dict = {}
        calls = [(ids.setdefault(event, len(ids)), *rest) for event, *rest in results.calls]
        calls = [call if call[1] != "command.masked" else (*call[:2], repr(call[2]), *call[3:]) for call in calls]
        return (bytes(connection.transport.data), bytes(connection.backend.transport.data), calls,
                connection._rows, seen_pending, connection._backend_skip, connection._closing_by_client,
                dict(connection._tables))

    saved = engine._scan_backend
    engine._scan_backend = scanner
    try:
        return asyncio.run(go())
    finally:
        engine._scan_backend = saved


@needs_fast
@pytest.mark.parametrize("seed", range(8))
def test_random_traffic_gives_the_same_client_bytes_results_and_state(seed: int) -> None:
    rng = random.Random(seed)
    traffic = [(_extended_exchange if rng.random() < 0.3 else _simple_exchange)(rng, i) for i in range(300)]
    cuts = [sorted(rng.sample(range(1, len(answer)), min(len(answer) - 1, rng.randrange(0, 4))))
            for _, answer in traffic]
    with_c = _run(traffic, cuts, fast.scan_backend)
    with_python = _run(traffic, cuts, None)
    assert with_c == with_python
    client_bytes, _, calls, *_ = with_c
    assert client_bytes == b"".join(answer for _, answer in traffic)  # nothing here is masked or refused
    assert len(calls) >= 300


TEXT_DESCRIPTION = _msg(b"T", b"\x00\x01note\x00" + bytes(6) + b"\x00\x00\x00\x19" + b"\xff\xff" + bytes(6))
EMAIL = b"mail alice@example.com now"
NOTICE_WITH_EMAIL = _msg(b"N", b"SNOTICE\x00C00000\x00Mhello\x00Dfrom bob@example.org\x00\x00")


def _masked_simple_exchange(rng: random.Random, i: int) -> tuple[bytes, bytes]:
    """A simple query the default policy allows an agent, with its pii-and-secrets profile: results
    with nothing to mask (an int column), with a text column the detectors scan, and both in one query."""
    plain = ROW_DESCRIPTION + b"".join(_row(b"%d" % i) for _ in range(rng.randrange(0, 4)))
    scanned = TEXT_DESCRIPTION + b"".join(_row(rng.choice((EMAIL, b"nothing here", rng.randbytes(300))))
                                          for _ in range(rng.randrange(0, 4)))
    shape = rng.randrange(5) if i >= 0 else 5
    if shape == 0:  # pgbench's: nothing to mask
        answer = plain + _complete(b"SELECT 1")
    elif shape == 1:
        answer = scanned + _complete(b"SELECT 2")
    elif shape == 2:  # nothing to mask, then something, in one query (and the other way round)
        first, second = (plain, scanned) if rng.random() < 0.5 else (scanned, plain)
        answer = first + _complete(b"SELECT 1") + second + _complete(b"SELECT 3")
    elif shape == 3:  # a notice quoting a value, in a result with nothing to mask
        answer = ROW_DESCRIPTION + NOTICE_WITH_EMAIL + _row(b"5") + _complete(b"SELECT 1")
    elif shape == 4:  # an error during the rows
        answer = plain + _msg(b"E", b"SERROR\x00C57014\x00Mcanceling statement\x00\x00")
    else:  # rows after a result ended, without a RowDescription: the session ends (fail closed), the
        # rows are not passed on
        answer = plain + _complete(b"SELECT 1") + _row(EMAIL) + _complete(b"SELECT 1")
    return wire.query(f"SELECT abalance FROM pgbench_accounts WHERE aid = {i};"), answer + wire.ready_for_query(b"I")


def _masked_extended_exchange(rng: random.Random, i: int) -> tuple[bytes, bytes]:
    text = b"SELECT abalance FROM pgbench_accounts WHERE aid = $1;"
    # Without the client's Describe, the gateway asks for the layout itself (its answer is not passed on).
    describe = _msg(b"D", b"P\x00") if rng.random() < 0.7 else b""
    request = (_msg(b"P", b"\x00" + text + b"\x00\x00\x00") + _msg(b"B", b"\x00" * 8) + describe
               + _msg(b"E", b"\x00" + bytes(4)) + _msg(b"S"))
    description, value = rng.choice(((ROW_DESCRIPTION, b"42"), (TEXT_DESCRIPTION, EMAIL)))
    answer = (_msg(b"1") + _msg(b"2") + description + _row(value) * rng.randrange(0, 3)
              + _complete(b"SELECT 1") + wire.ready_for_query(b"I"))
    return request, answer


@needs_fast
@pytest.mark.parametrize("seed", range(6))
def test_random_masked_traffic_gives_the_same_client_bytes_results_and_state(seed: int) -> None:
    """Masked results too: the scan takes the rows and end of a result with nothing to mask, the
    Python loop everything the masker must see. Same client bytes (values masked), results, masking
    reports (the notice's) and state; rows that come without a RowDescription end the session."""
    policy = parse_policy(default_policy_text().encode())
    rng = random.Random(seed)
    traffic = [(_masked_extended_exchange if rng.random() < 0.3 else _masked_simple_exchange)(rng, i)
               for i in range(200)] + [_masked_simple_exchange(rng, -1)]
    cuts = [sorted(rng.sample(range(1, len(answer)), min(len(answer) - 1, rng.randrange(0, 4))))
            for _, answer in traffic]
    with_c = _run(traffic, cuts, fast.scan_backend, policy)
    with_python = _run(traffic, cuts, None, policy)
    assert with_c == with_python
    client_bytes, _, calls, *_ = with_c
    sent = b"".join(answer for _, answer in traffic)
    assert b"protocol violation" not in client_bytes[:-200] and b"without a known layout" in client_bytes[-200:]
    assert b"alice@example.com" in sent and b"alice@example.com" not in client_bytes
    assert b"bob@example.org" in sent and b"bob@example.org" not in client_bytes
    assert any(call[1] == "command.masked" for call in calls)
    assert sum(call[1] == "ok" for call in calls) >= 100


def _limited_policy():
    """The default policy, plus: an agent's reads of pgbench_accounts return at most 3 rows (unmasked)."""
    text = default_policy_text()
    rule = ("  - name: agents-read-accounts\n    effect: allow\n    roles: [agent]\n"
            "    when: {classes: [read], tables: [pgbench_accounts]}\n    max_rows: 3\n\n")
    assert "  - name: agents-read\n" in text
    return parse_policy(text.replace("  - name: agents-read\n", rule + "  - name: agents-read\n").encode())


def _limited_exchange(rng: random.Random, i: int) -> tuple[bytes, bytes]:
    """A limited read (up to the limit: 3 rows) or a masked one, simple or extended; the last one
    (``i`` < 0) goes past the limit."""
    limited = i < 0 or rng.random() < 0.5
    table = b"pgbench_accounts" if limited else b"people"
    rows = 5 if i < 0 else rng.randrange(0, 4)
    answer = (ROW_DESCRIPTION + _row(b"%d" % i) * rows + _complete(b"SELECT %d" % rows))
    if i >= 0 and rng.random() < 0.3:
        text = b"SELECT abalance FROM " + table + b" WHERE aid = $1"
        request = (_msg(b"P", b"\x00" + text + b"\x00\x00\x00") + _msg(b"B", b"\x00" * 8) + _msg(b"D", b"P\x00")
                   + _msg(b"E", b"\x00" + bytes(4)) + _msg(b"S"))
        return request, _msg(b"1") + _msg(b"2") + answer + wire.ready_for_query(b"I")
    return wire.query(f"SELECT abalance FROM {table.decode()} WHERE aid = {i}"), answer + wire.ready_for_query(b"I")


@needs_fast
@pytest.mark.parametrize("seed", range(4))
def test_random_limited_traffic_gives_the_same_client_bytes_results_and_state(seed: int) -> None:
    """Results with a row limit: their rows are counted against it by the Python loop, everything else
    of the stream (and of the same session) by the scan. The same client bytes, results and state;
    the result past its limit ends the session, with its first 3 rows sent."""
    rng = random.Random(seed)
    traffic = [_limited_exchange(rng, i) for i in range(200)] + [_limited_exchange(rng, -1)]
    cuts = [sorted(rng.sample(range(1, len(answer)), min(len(answer) - 1, rng.randrange(0, 4))))
            for _, answer in traffic]
    with_c = _run(traffic, cuts, fast.scan_backend, _limited_policy())
    with_python = _run(traffic, cuts, None, _limited_policy())
    assert with_c == with_python
    client_bytes, _, calls, *_ = with_c
    assert sum(call[1] == "ok" for call in calls) >= 150
    assert ("limit_exceeded", 3) in [call[1:3] for call in calls[-3:]] and b"54000" in client_bytes[-300:]
    assert client_bytes.count(_row(b"-1")) == 3


@needs_fast
def test_a_masked_result_is_taken_only_when_its_row_description_says_nothing_is_masked() -> None:
    answer = ROW_DESCRIPTION + _row(b"1") + _complete(b"SELECT 1") + wire.ready_for_query(b"I")
    after_t = len(ROW_DESCRIPTION)
    for verdict, stop in ((None, 0), (False, after_t), (True, len(answer))):
        entry = (Q, "ev", 0.0, None, "profile", "SELECT 1")
        pending, tables, seen = deque([entry]), {"ev": ("t",)}, []
        result = _Calls()

        def start(head, data, begin, end):
            seen.append(("start", data[begin - 5:end]))
            return verdict

        def finished(event):
            seen.append(("finished", event, list(result.calls)))

        pos, rows = fast.scan_backend(answer, 0, pending, result, 0, None, tables, finished, start)
        assert pos == stop, verdict
        assert seen[0] == ("start", ROW_DESCRIPTION)
        if verdict:  # rows counted, masking finished before the result is recorded, entry and tables gone
            assert seen[1] == ("finished", "ev", []) and result.calls == [("ev", "ok", 1, "SELECT 1", None)]
            assert not pending and not tables and rows == 0
        else:
            assert len(seen) == 1 and not result.calls and list(pending) == [entry] and tables and rows == 0
    # without tables and finished, a masked entry's messages are all left to the Python loop
    assert fast.scan_backend(answer, 0, deque([entry]), _Calls(), 0, None, None, None, start) == (0, 0)


@needs_fast
def test_a_pending_entry_of_another_shape_is_refused_not_read() -> None:
    # Entries are read without bounds checks: anything but a 6-tuple must raise (the engine then
    # closes the session) instead of reading past its end.
    for entry in ((Q, "ev"), [Q, "ev", 0.0, None, None, None], "QQQQQQ"):
        with pytest.raises(TypeError, match="6-tuple"):
            fast.scan_backend(wire.ready_for_query(b"I"), 0, deque([entry]), _Calls(), 0)
    # with nothing pending, DataRows are still counted
    assert fast.scan_backend(_row(b"1"), 0, deque(), _Calls(), 0) == (len(_row(b"1")), 1)
