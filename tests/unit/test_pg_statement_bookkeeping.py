"""What the PostgreSQL relay keeps per decided statement (the tables a masked statement touches,
row limits) lives exactly as long as something can still run that statement: a prepared statement
executed long after it was parsed is still masked as its decision says, and a session running
millions of statements does not accumulate an entry per statement. Also without a trail (recording
off), where decisions have no event ids of their own."""

from __future__ import annotations

import asyncio

from wardgate.core.audit import Recorder
from wardgate.core.model import Principal
from wardgate.core.policy import parse_policy
from wardgate.devtools.harness import CollectingTransport, relay_without_sockets
from wardgate.protocols.postgres import wire
from wardgate_testkit import default_policy_text

# A column rule that names its table: a computed column of a statement that reads `customers`
# (``lower(ssn)``) is then redacted whole.
POLICY = default_policy_text(naming_table="customers")
SECRET = b"value-derived-from-ssn"


def _msg(kind: bytes, payload: bytes = b"") -> bytes:
    return wire.message(kind, payload)


def _computed_text_column(name: bytes) -> bytes:
    # one column, no source table (computed), type text, text format
    return _msg(b"T", b"\x00\x01" + name + b"\x00" + bytes(6) + b"\x00\x00\x00\x19" + b"\xff\xff" + bytes(6))


def _row(value: bytes) -> bytes:
    return _msg(b"D", b"\x00\x01" + len(value).to_bytes(4, "big") + value)


def _agent_connection():
    recorder = Recorder(None)  # recording off: decisions get no event ids of their own
    recorder.start(asyncio.get_running_loop())
    connection = relay_without_sockets(recorder, CollectingTransport(), CollectingTransport(), name="orders-dev")
    connection.frontend.core.policy = parse_policy(POLICY.encode())
    connection.frontend.resources["orders-dev"] = None  # computed columns only: nothing is looked up
    connection.session.principal = Principal("https://issuer.example", "agent", groups=("ai-agents",))
    return recorder, connection


def _parse(name: bytes, text: bytes) -> bytes:
    return _msg(b"P", name + b"\x00" + text + b"\x00\x00\x00")


def _bind_describe_execute(name: bytes, value: bytes) -> bytes:
    bind = _msg(b"B", b"\x00" + name + b"\x00\x00\x00\x00\x01" + len(value).to_bytes(4, "big") + value + b"\x00\x00")
    return bind + _msg(b"D", b"P\x00") + _msg(b"E", b"\x00" + bytes(4)) + _msg(b"S")


def test_a_statement_prepared_early_is_masked_after_thousands_of_others_and_state_stays_bounded() -> None:
    async def go():
        recorder, connection = _agent_connection()
        connection.data_received(_parse(b"s1", b"SELECT lower(ssn) FROM customers WHERE id = $1") + _msg(b"S"))
        connection._from_backend(_msg(b"1") + wire.ready_for_query(b"I"))
        sizes = []
        for i in range(3000):  # an agent's unnamed extended-protocol reads, as drivers send them
            connection.data_received(_parse(b"", b"SELECT abalance FROM pgbench_accounts WHERE aid = $1")
                                     + _bind_describe_execute(b"", b"%d" % i))
            connection._from_backend(_msg(b"1") + _msg(b"2") + _computed_text_column(b"abalance")
                                     + _row(b"%d" % i) + _msg(b"C", b"SELECT 1\x00") + wire.ready_for_query(b"I"))
            sizes.append(len(connection._tables))
        before = len(connection.transport.data)
        connection.data_received(_bind_describe_execute(b"s1", b"7"))
        connection._from_backend(_msg(b"2") + _computed_text_column(b"lower") + _row(SECRET)
                                 + _msg(b"C", b"SELECT 1\x00") + wire.ready_for_query(b"I"))
        await asyncio.sleep(0)
        recorder.close()
        return bytes(connection.transport.data[before:]), sizes

    answer, sizes = asyncio.run(go())
    assert b"SELECT 1" in answer and SECRET not in answer  # s1's decision (it reads customers) still applies
    assert max(sizes) <= 2 * 64 + 2  # not one entry per statement run


def test_pipelined_masked_queries_without_a_trail_keep_their_own_tables() -> None:
    async def go():
        recorder, connection = _agent_connection()
        # Both queries are sent before either is answered; the first reads no table.
        connection.data_received(wire.query("SELECT 1") + wire.query("SELECT lower(ssn) FROM customers"))
        connection._from_backend(_computed_text_column(b"one") + _row(b"1") + _msg(b"C", b"SELECT 1\x00")
                                 + wire.ready_for_query(b"I")
                                 + _computed_text_column(b"lower") + _row(SECRET) + _msg(b"C", b"SELECT 1\x00")
                                 + wire.ready_for_query(b"I"))
        await asyncio.sleep(0)
        recorder.close()
        return bytes(connection.transport.data), dict(connection._tables)

    client, tables = asyncio.run(go())
    assert client.count(b"SELECT 1") == 2 and SECRET not in client
    assert tables == {}
