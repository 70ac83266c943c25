"""Real PostgreSQL clients through the gateway: psql, psycopg 3, asyncpg, pgbench.

Every test connects to the in-process gateway (``gateway`` fixture) as resource ``orders-prod`` with a
dev-issuer token as the password, and checks what a user of that client would notice: results, errors,
transaction state (verified directly on the backend), COPY, notifications, notices, cancellation,
TLS requirements, and the audit trail the gateway writes for the session.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import secrets
import select
import signal
import ssl
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import psycopg
import pytest
from psycopg import errors as pgerrors

from wardgate.core.audit import read_segment

from wardgate.devtools.harness import GatewayThread, wait_for

RESOURCE = "orders-prod"
SERVICE_ROLE = "wardgate_svc"
PSQL = "/usr/bin/psql"
PGBENCH = "/usr/bin/pgbench"

pytestmark = pytest.mark.timeout(90)


# --- helpers -------------------------------------------------------------------------------------

def _unique(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(4)}"


def _connect(gateway: GatewayThread, token: str | None = None, **kwargs: Any) -> psycopg.Connection:
    """A psycopg connection through the gateway (verify-full against the dev CA)."""
    sslmode = kwargs.pop("sslmode", "verify-full")
    user = kwargs.pop("user", "agent")
    dsn = gateway.dsn(token or gateway.token(), RESOURCE, sslmode=sslmode, user=user)
    return psycopg.connect(dsn, **kwargs)


def _direct(postgres, **kwargs: Any) -> psycopg.Connection:
    """A direct superuser connection to the backend database (bypasses the gateway)."""
    return psycopg.connect(postgres.dsn(), connect_timeout=10, **kwargs)


def _direct_rows(postgres, sql: str, params: tuple = ()) -> list[tuple]:
    with _direct(postgres, autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()


def _psql(gateway: GatewayThread, token: str, *args: str, sslmode: str = "verify-full",
          timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **gateway.libpq_env(token, RESOURCE, sslmode=sslmode), "LC_ALL": "C"}
    return subprocess.run([PSQL, "-X", "-v", "ON_ERROR_STOP=1", "-A", "-t", *args], env=env,
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def _session_events(gateway: GatewayThread, subject: str, *, ended: bool = True,
                    timeout: float = 10.0) -> list[dict[str, Any]]:
    """The audit events of the (single) session authenticated as ``subject``; waits for its end."""

    def find() -> list[dict[str, Any]] | None:
        events = gateway.audit_events()
        sessions = {e["session"] for e in events
                    if e["type"] == "session.authenticated" and (e.get("identity") or {}).get("subject") == subject}
        if len(sessions) != 1:
            return None
        (session,) = sessions
        mine = [e for e in events if e["session"] == session]
        if ended and not any(e["type"] == "session.ended" for e in mine):
            return None
        return mine

    return wait_for(find, timeout=timeout)


def _decided(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == "command.decided"]


def _results_for(events: list[dict[str, Any]], decided_id: str) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == "command.result" and e["command"] == decided_id]


def _vm_rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


# --- psql ----------------------------------------------------------------------------------------

def test_psql_commands_through_gateway(gateway: GatewayThread) -> None:
    table = _unique("psql_t")
    result = _psql(
        gateway, gateway.token(),
        "-c", f"create table {table} (id int primary key, note text)",
        "-c", f"insert into {table} values (1, 'one'), (2, 'two'), (3, 'it''s')",
        "-c", f"select id, note from {table} order by id",
        "-c", f"update {table} set note = upper(note) where id < 3",
        "-c", f"select string_agg(note, ',' order by id), current_database() from {table}",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "CREATE TABLE",
        "INSERT 0 3",
        "1|one", "2|two", "3|it's",
        "UPDATE 2",
        "ONE,TWO,it's|orders",
    ]


def test_psql_error_is_reported_and_exit_status_set(gateway: GatewayThread) -> None:
    result = _psql(gateway, gateway.token(), "-c", "select 1/0")
    assert result.returncode != 0
    assert "division by zero" in result.stderr


def test_psql_copy_both_ways(gateway: GatewayThread, postgres, tmp_path: Path) -> None:
    source, target = _unique("psql_copy_src"), _unique("psql_copy_dst")
    token = gateway.token()
    rows = 50_000
    setup = _psql(
        gateway, token,
        "-c", f"create table {source} (id int primary key, note text)",
        "-c", f"create table {target} (id int primary key, note text)",
        "-c", f"insert into {source} select g, 'note ' || g from generate_series(1, {rows}) g",
    )
    assert setup.returncode == 0, setup.stderr
    exported = tmp_path / "out.csv"
    out = _psql(gateway, token, "-c", f"\\copy {source} to '{exported}' with (format csv)")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"COPY {rows}"
    lines = exported.read_text().splitlines()
    assert len(lines) == rows
    assert sorted(lines, key=lambda l: int(l.split(",")[0]))[:2] == ["1,note 1", "2,note 2"]

    back = _psql(gateway, token, "-c", f"\\copy {target} from '{exported}' with (format csv)")
    assert back.returncode == 0, back.stderr
    assert back.stdout.strip() == f"COPY {rows}"
    assert _direct_rows(postgres, f"select count(*), sum(id), max(note) from {target}") == [
        (rows, rows * (rows + 1) // 2, "note 9999")]

    # Bad input: the COPY fails with the backend's error and nothing is loaded.
    bad = tmp_path / "bad.csv"
    bad.write_text("1000001,fine\nnot-a-number,oops\n")
    failed = _psql(gateway, token, "-c", f"\\copy {target} from '{bad}' with (format csv)")
    assert failed.returncode != 0
    assert "invalid input syntax for type integer" in failed.stderr
    assert _direct_rows(postgres, f"select count(*) from {target} where id = 1000001") == [(0,)]


def test_psql_cancel_with_sigint(gateway: GatewayThread, postgres) -> None:
    tag = _unique("psql_cancel")
    env = {**os.environ, **gateway.libpq_env(gateway.token(), RESOURCE), "LC_ALL": "C"}
    proc = subprocess.Popen([PSQL, "-X", "-c", f"select pg_sleep(30) /* {tag} */"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: _direct_rows(
            postgres, "select count(*) from pg_stat_activity where query like %s and state = 'active'",
            (f"%{tag}%",))[0][0] == 1)
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=10)
        assert time.monotonic() - started < 5
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    assert proc.returncode != 0
    assert "canceling statement due to user request" in stderr


# --- psycopg 3 -----------------------------------------------------------------------------------

def test_psycopg_simple_protocol(gateway: GatewayThread) -> None:
    table = _unique("simple_t")
    subject = _unique("simple")
    with _connect(gateway, gateway.token(subject), autocommit=True, cursor_factory=psycopg.ClientCursor) as conn:
        cur = conn.cursor()
        cur.execute(f"create table {table} (id int, note text)")
        # Client-side binding: the values travel as literals in a simple Query message.
        cur.execute(f"insert into {table} values (%s, %s), (%s, %s)", (1, "it's", 2, None))
        assert cur.rowcount == 2
        # Several statements in one Query message: one result set each.
        cur.execute(f"select id, note from {table} order by id; select count(*) from {table}")
        assert cur.fetchall() == [(1, "it's"), (2, None)]
        assert cur.nextset()
        assert cur.fetchall() == [(2,)]
        assert not cur.nextset()
        with pytest.raises(pgerrors.UndefinedTable):
            cur.execute("select * from wardgate_no_such_table")
        cur.execute("select 'after error'")
        assert cur.fetchone() == ("after error",)
    events = _session_events(gateway, subject)
    kinds = {e["kind"] for e in _decided(events)}
    assert kinds == {"query"}, "a ClientCursor must use the simple query protocol"
    multi = [e for e in _decided(events) if "select count(*)" in e["statement"]]
    assert len(multi) == 1
    assert [r["rows"] for r in _results_for(events, multi[0]["id"])] == [2, 1]


def test_psycopg_extended_protocol_with_parameters(gateway: GatewayThread) -> None:
    table = _unique("ext_t")
    subject = _unique("extended")
    with _connect(gateway, gateway.token(subject), autocommit=True) as conn:
        conn.execute(f"create table {table} (id int primary key, note text, data bytea, at timestamptz)",
                     prepare=False)
        with conn.cursor() as cur:
            cur.executemany(f"insert into {table} values (%s, %s, %s, now())",
                            [(i, f"row {i}" if i % 2 else None, bytes([i, 0, 255])) for i in range(10)])
        assert conn.execute("select %s::int + %s::int, %s::text", (40, 2, "x"), prepare=False).fetchone() == (42, "x")
        rows = conn.execute(f"select id, note, data from {table} where id = any(%s) order by id",
                            ([1, 2, 9],), prepare=False).fetchall()
        assert rows == [(1, "row 1", b"\x01\x00\xff"), (2, None, b"\x02\x00\xff"), (9, "row 9", b"\x09\x00\xff")]
        with conn.cursor(binary=True) as cur:
            cur.execute(f"select count(*), sum(id) from {table} where data = %s", (b"\x03\x00\xff",))
            assert cur.fetchone() == (1, 3)
    events = _session_events(gateway, subject)
    with_parameters = [e for e in _decided(events) if "$1" in e["statement"]]
    assert len(with_parameters) == 4
    assert {e["kind"] for e in with_parameters} == {"parse"}, "parameters travel in the extended protocol"
    inserts = [e for e in with_parameters if e["statement"].startswith("insert")]
    assert [r["rows"] for r in _results_for(events, inserts[0]["id"])] == [1] * 10


def test_psycopg_server_side_prepared_statements(gateway: GatewayThread) -> None:
    table = _unique("prep_t")
    subject = _unique("prepared")
    executions = 50
    insert = f"insert into {table} (id, note) values (%s, %s)"
    with _connect(gateway, gateway.token(subject), autocommit=True) as conn:
        conn.execute(f"create table {table} (id int primary key, note text)")
        for i in range(executions):
            cur = conn.execute(insert, (i, f"n{i}"), prepare=True)
            assert cur.rowcount == 1
        prepared = conn.execute("select name, statement from pg_prepared_statements").fetchall()
        assert any(table in statement for _, statement in prepared), prepared
        assert conn.execute(f"select count(*), sum(id) from {table}").fetchone() == (executions, sum(range(executions)))
        # A prepared statement that fails on one execution still works for the next ones.
        with pytest.raises(pgerrors.UniqueViolation):
            conn.execute(insert, (0, "dup"), prepare=True)
        conn.execute(insert, (executions, "last"), prepare=True)
        assert conn.execute(f"select count(*) from {table}").fetchone() == (executions + 1,)
    events = _session_events(gateway, subject)
    parses = [e for e in _decided(events) if e["statement"].startswith(f"insert into {table}")]
    assert len(parses) == 1, "the statement is parsed (and decided) once, then executed by name"
    assert parses[0]["statement_name"], "a server-side prepared statement has a name"
    results = _results_for(events, parses[0]["id"])
    assert [r["status"] for r in results] == ["ok"] * executions + ["error", "ok"]
    assert all(r["rows"] == 1 for r in results if r["status"] == "ok")
    assert results[executions]["error"]["code"] == "23505"


def test_psycopg_pipeline_mode(gateway: GatewayThread, postgres) -> None:
    table = _unique("pipe_t")
    with _connect(gateway, autocommit=True) as conn:
        conn.execute(f"create table {table} (id int primary key, note text)")
        with conn.pipeline():
            cursors = [conn.execute(f"insert into {table} values (%s, %s) returning id * 10", (i, f"p{i}"))
                       for i in range(20)]
            total = conn.execute(f"select count(*) from {table}")
        assert [c.fetchone()[0] for c in cursors] == [i * 10 for i in range(20)]
        assert total.fetchone() == (20,)

        # An error in a pipeline: what follows it up to the next Sync is skipped; the connection
        # stays usable. The outcome must match what the same pipeline does directly on PostgreSQL.
        def failing_pipeline(connection: psycopg.Connection, name: str) -> None:
            with pytest.raises(pgerrors.UniqueViolation):
                with connection.pipeline():
                    connection.execute(f"insert into {name} values (100, 'a')")
                    connection.execute(f"insert into {name} values (1, 'duplicate')")
                    connection.execute(f"insert into {name} values (101, 'b')")

        failing_pipeline(conn, table)
        through_gateway = conn.execute(f"select id from {table} where id >= 100 order by id").fetchall()
        assert conn.execute("select 'usable'").fetchone() == ("usable",)

    reference = _unique("pipe_ref")
    with psycopg.connect(postgres.dsn(user=SERVICE_ROLE), autocommit=True, connect_timeout=10) as direct:
        direct.execute(f"create table {reference} (id int primary key, note text)")
        direct.execute(f"insert into {reference} select g, 'p' || g from generate_series(0, 19) g")
        failing_pipeline(direct, reference)
        expected = direct.execute(f"select id from {reference} where id >= 100 order by id").fetchall()
    assert through_gateway == expected


def test_psycopg_transactions_commit_and_rollback(gateway: GatewayThread, postgres) -> None:
    table = _unique("tx_t")
    with _connect(gateway, autocommit=True) as setup:
        setup.execute(f"create table {table} (id int primary key)")
    with _connect(gateway) as conn:
        conn.execute(f"insert into {table} values (1)")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        # Not yet committed: invisible to others.
        assert _direct_rows(postgres, f"select id from {table}") == []
        conn.commit()
        assert _direct_rows(postgres, f"select id from {table}") == [(1,)]

        conn.execute(f"insert into {table} values (2)")
        conn.rollback()
        assert _direct_rows(postgres, f"select id from {table} order by id") == [(1,)]

        with conn.transaction():
            conn.execute(f"insert into {table} values (3)")
            with pytest.raises(RuntimeError):
                with conn.transaction():  # savepoint
                    conn.execute(f"insert into {table} values (4)")
                    raise RuntimeError("roll back to the savepoint")
            conn.execute(f"insert into {table} values (5)")
        assert _direct_rows(postgres, f"select id from {table} order by id") == [(1,), (3,), (5,)]


def test_psycopg_error_aborts_transaction(gateway: GatewayThread, postgres) -> None:
    table = _unique("txerr_t")
    with _connect(gateway, autocommit=True) as setup:
        setup.execute(f"create table {table} (id int primary key)")
    with _connect(gateway) as conn:
        conn.execute(f"insert into {table} values (1)")
        with pytest.raises(pgerrors.DivisionByZero):
            conn.execute("select 1/0")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        with pytest.raises(pgerrors.InFailedSqlTransaction):
            conn.execute("select 1")
        conn.rollback()
        assert conn.execute("select 2").fetchone() == (2,)
        conn.commit()
    assert _direct_rows(postgres, f"select count(*) from {table}") == [(0,)]


def test_psycopg_copy_from_and_to(gateway: GatewayThread, postgres) -> None:
    table = _unique("copy_t")
    rows = 200_000  # several MB: CopyData messages are split across reads
    with _connect(gateway, autocommit=True) as conn:
        conn.execute(f"create table {table} (id int primary key, note text)")
        with conn.cursor() as cur:
            with cur.copy(f"copy {table} (id, note) from stdin") as copy:
                for i in range(rows):
                    copy.write_row((i, f"note {i}\twith tab"))
            assert cur.rowcount == rows
        assert _direct_rows(postgres, f"select count(*), sum(id) from {table}") == [(rows, rows * (rows - 1) // 2)]

        seen = 0
        checksum = 0
        with conn.cursor() as cur:
            with cur.copy(f"copy (select id, note from {table} order by id) to stdout") as copy:
                copy.set_types(["int4", "text"])
                for ident, note in copy.rows():
                    assert note == f"note {ident}\twith tab"
                    seen += 1
                    checksum += ident
        assert (seen, checksum) == (rows, rows * (rows - 1) // 2)

        # Binary COPY out.
        with conn.cursor() as cur:
            with cur.copy(f"copy (select id from {table} where id < 5 order by id) to stdout (format binary)") as copy:
                copy.set_types(["int4"])
                assert [r[0] for r in copy.rows()] == [0, 1, 2, 3, 4]

        # The client aborts a COPY (CopyFail): nothing is loaded, the connection stays usable.
        with pytest.raises(ZeroDivisionError):
            with conn.cursor() as cur:
                with cur.copy(f"copy {table} (id, note) from stdin") as copy:
                    copy.write_row((rows + 1, "aborted"))
                    1 / 0
        # Bad data: the backend's error reaches the client.
        with pytest.raises(pgerrors.InvalidTextRepresentation):
            with conn.cursor() as cur:
                with cur.copy(f"copy {table} (id, note) from stdin") as copy:
                    copy.write(b"not-a-number\tx\n")
        assert conn.execute(f"select count(*) from {table}").fetchone() == (rows,)


def test_psycopg_listen_notify(gateway: GatewayThread, postgres) -> None:
    channel = _unique("chan")
    with _connect(gateway, autocommit=True) as conn:
        conn.execute(f"listen {channel}")
        with _direct(postgres, autocommit=True) as direct:
            direct.execute("select pg_notify(%s, %s)", (channel, "hello"))
            direct.execute("select pg_notify(%s, %s)", (channel, "world"))
        received = list(conn.notifies(timeout=5, stop_after=2))
        assert [(n.channel, n.payload) for n in received] == [(channel, "hello"), (channel, "world")]
        # Notifications do not disturb the statements that follow.
        assert conn.execute("select 'still fine'").fetchone() == ("still fine",)
        # A notification from a gateway session reaches another gateway session.
        with _connect(gateway, autocommit=True) as other:
            other.execute("select pg_notify(%s, %s)", (channel, "via gateway"))
        received = list(conn.notifies(timeout=5, stop_after=1))
        assert [n.payload for n in received] == ["via gateway"]


def test_psycopg_notice_received(gateway: GatewayThread) -> None:
    notices: list[tuple[str, str]] = []
    with _connect(gateway, autocommit=True) as conn:
        conn.add_notice_handler(lambda d: notices.append((d.severity_nonlocalized, d.message_primary)))
        conn.execute("DO $$ BEGIN RAISE NOTICE 'hi'; END $$")
        conn.execute("DO $$ BEGIN RAISE WARNING 'careful %', 42; END $$")
        assert conn.execute("select 1").fetchone() == (1,)
    assert notices == [("NOTICE", "hi"), ("WARNING", "careful 42")]


def test_psycopg_large_values_both_ways(gateway: GatewayThread) -> None:
    # A 16 MiB parameter arrives in one Bind message, split over many reads; a 16 MiB value comes back
    # in one DataRow.
    blob = secrets.token_bytes(1024) * (16 * 1024)
    with _connect(gateway, autocommit=True) as conn:
        assert conn.execute("select length(b), md5(b) from (select %s::bytea) v(b)", (blob,),
                            binary=True).fetchone() == (len(blob), hashlib.md5(blob).hexdigest())
        value = conn.execute("select repeat('é', %s)", (8 << 20,)).fetchone()[0]
        assert value == "é" * (8 << 20)
        assert conn.execute("select 'still in sync'").fetchone() == ("still in sync",)


def test_psycopg_large_result_streams_with_bounded_memory(gateway: GatewayThread) -> None:
    total_rows = 1_000_000
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, _vm_rss_bytes())
            time.sleep(0.01)

    with _connect(gateway, autocommit=True) as conn:
        conn.execute("select 1")  # warm up the connection before measuring
        before = _vm_rss_bytes()
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        count = 0
        payload_bytes = 0
        try:
            with conn.cursor() as cur:
                for ident, text in cur.stream("select g, repeat('x', 20) from generate_series(1, %s) g",
                                              (total_rows,)):
                    count += 1
                    payload_bytes += len(text)
        finally:
            stop.set()
            sampler.join(5)
        after = _vm_rss_bytes()
        assert conn.execute("select 'after stream'").fetchone() == ("after stream",)
    assert count == total_rows
    assert payload_bytes == 20 * total_rows
    growth = max(peak, after) - before
    # The result is ~35 MB on the wire and the client reads it slower than the backend sends it: a
    # relay without backpressure buffers most of it (measured: ~40 MiB growth); with backpressure
    # the growth is a few MiB.
    assert growth < 20 * 2**20, f"memory grew by {growth / 2**20:.1f} MiB while streaming ~35 MB of rows"


def test_psycopg_cursor_reports_rows_on_big_fetch_through_server_side_cursor(gateway: GatewayThread) -> None:
    with _connect(gateway) as conn:
        with conn.cursor(name=_unique("ssc")) as cur:
            cur.itersize = 5000
            cur.execute("select g from generate_series(1, 100000) g")
            assert sum(row[0] for row in cur) == 100000 * 100001 // 2
        conn.rollback()


# --- asyncpg -------------------------------------------------------------------------------------

def test_asyncpg_through_gateway(gateway: GatewayThread, postgres) -> None:
    table = _unique("apg_t")
    token = gateway.token()
    context = ssl.create_default_context(cafile=str(gateway.ca_file))

    async def scenario() -> None:
        conn = await asyncpg.connect(host=gateway.host, port=gateway.port, user="agent", password=token,
                                     database=RESOURCE, ssl=context, timeout=10)
        try:
            assert await conn.fetchval("select $1::int * 2", 21) == 42
            row = await conn.fetchrow("select $1::text as a, $2::int[] as b, $3::bytea as c", "x", [1, 2], b"\x00\x01")
            assert (row["a"], row["b"], row["c"]) == ("x", [1, 2], b"\x00\x01")

            statement = await conn.prepare("select $1::int + 1000")
            for i in range(25):
                assert await statement.fetchval(i) == i + 1000

            await conn.execute(f"create table {table} (id int primary key, note text)")
            status = await conn.copy_records_to_table(table, records=[(i, f"rec {i}") for i in range(5000)],
                                                      columns=["id", "note"])
            assert status == "COPY 5000"
            await conn.executemany(f"insert into {table} values ($1, $2)", [(i, "many") for i in range(5000, 5100)])

            async with conn.transaction():
                await conn.execute(f"insert into {table} values (9001, 'committed')")
            with pytest.raises(ZeroDivisionError):
                async with conn.transaction():
                    await conn.execute(f"insert into {table} values (9002, 'rolled back')")
                    1 / 0
            with pytest.raises(asyncpg.UniqueViolationError):
                await conn.execute(f"insert into {table} values (1, 'dup')")

            # A cursor fetches in batches (Execute with a row limit: PortalSuspended in between).
            async with conn.transaction():
                total = 0
                async for record in conn.cursor(f"select id from {table} order by id", prefetch=333):
                    total += 1
            assert total == 5101
            assert await conn.fetchval(f"select count(*) from {table} where id >= 9000") == 1
        finally:
            await asyncio.wait_for(conn.close(), 10)

    asyncio.run(asyncio.wait_for(scenario(), 60))
    assert _direct_rows(postgres, f"select count(*), sum(id) filter (where id >= 9000) from {table}") == [(5101, 9001)]


# --- cancellation --------------------------------------------------------------------------------

def test_psycopg_cancel(gateway: GatewayThread, postgres) -> None:
    # cancel_safe(): libpq >= 17 sends the CancelRequest over TLS (SSLRequest first). The blocking
    # Connection.cancel() cannot be used here: psycopg's C implementation holds the GIL inside
    # PQcancel() while it waits for the server to close the socket, and this server (the in-process
    # gateway) needs the GIL to do so. The plaintext CancelRequest is covered by psql's SIGINT test.
    tag = _unique("cancel")
    with _connect(gateway, autocommit=True) as victim, _connect(gateway, autocommit=True) as bystander:
        bystander_result: list[Any] = []
        cancel_error: list[BaseException] = []

        def run_bystander() -> None:
            try:
                bystander_result.append(bystander.execute("select pg_sleep(1.5), 'bystander done'").fetchone()[1])
            except Exception as exc:  # noqa: BLE001 - recorded for the assertion
                bystander_result.append(exc)

        def cancel_when_running() -> None:
            try:
                wait_for(lambda: _direct_rows(
                    postgres, "select count(*) from pg_stat_activity where query like %s and state = 'active'",
                    (f"%{tag}%",))[0][0] == 1)
                victim.cancel_safe(timeout=5)
            except BaseException as exc:  # noqa: BLE001 - recorded for the assertion
                cancel_error.append(exc)

        other = threading.Thread(target=run_bystander, daemon=True)
        other.start()
        canceller = threading.Thread(target=cancel_when_running, daemon=True)
        canceller.start()
        started = time.monotonic()
        with pytest.raises(pgerrors.QueryCanceled):
            victim.execute(f"select pg_sleep(30) /* {tag} */")
        assert time.monotonic() - started < 5
        canceller.join(10)
        assert cancel_error == []
        assert victim.execute("select 'usable'").fetchone() == ("usable",)
        other.join(10)
        # The cancel key of one session cancels that session only.
        assert bystander_result == ["bystander done"]


def test_asyncpg_cancel_on_timeout(gateway: GatewayThread) -> None:
    token = gateway.token()
    context = ssl.create_default_context(cafile=str(gateway.ca_file))

    async def scenario() -> float:
        conn = await asyncpg.connect(host=gateway.host, port=gateway.port, user="agent", password=token,
                                     database=RESOURCE, ssl=context, timeout=10)
        try:
            started = time.monotonic()
            # asyncpg sends a CancelRequest when the timeout expires and waits for the query to end.
            with pytest.raises(asyncio.TimeoutError):
                await conn.fetchval("select pg_sleep(30)", timeout=0.5)
            elapsed = time.monotonic() - started
            assert await conn.fetchval("select 'usable'") == "usable"
            return elapsed
        finally:
            await asyncio.wait_for(conn.close(), 10)

    registry = gateway.gateway.metrics.registry
    cancelled = registry.get_sample_value("wardgate_cancel_requests_total", {"outcome": "backend"}) or 0
    elapsed = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert elapsed < 5
    assert registry.get_sample_value("wardgate_cancel_requests_total", {"outcome": "backend"}) == cancelled + 1


# --- pgbench -------------------------------------------------------------------------------------

def _pgbench(gateway: GatewayThread, token: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **gateway.libpq_env(token, RESOURCE), "LC_ALL": "C"}
    return subprocess.run([PGBENCH, *args], env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def test_pgbench_through_gateway(gateway: GatewayThread, postgres) -> None:
    token = gateway.token(ttl=600)
    init = _pgbench(gateway, token, "-i", "-s", "1", "-q")
    assert init.returncode == 0, init.stderr
    assert _direct_rows(postgres, "select count(*) from pgbench_accounts") == [(100000,)]
    for mode in ("simple", "extended", "prepared"):
        run = _pgbench(gateway, token, "-S", "-c", "4", "-j", "2", "-T", "2", "-M", mode)
        assert run.returncode == 0, f"{mode}: {run.stderr}"
        out = run.stdout
        assert f"query mode: {mode}" in out
        assert re.search(r"number of failed transactions: 0 \(", out), out
        processed = int(re.search(r"number of transactions actually processed: (\d+)", out).group(1))
        assert processed > 0
        assert re.search(r"^tps = \d+(\.\d+)? ", out, re.M), out
    # Read-write TPC-B-like transactions (BEGIN … END) with prepared statements: all of them land.
    history_before = _direct_rows(postgres, "select count(*) from pgbench_history")[0][0]
    run = _pgbench(gateway, token, "-c", "2", "-t", "25", "-M", "prepared")
    assert run.returncode == 0, run.stderr
    assert re.search(r"number of failed transactions: 0 \(", run.stdout), run.stdout
    assert _direct_rows(postgres, "select count(*) from pgbench_history")[0][0] == history_before + 50


# --- TLS -----------------------------------------------------------------------------------------

def test_tls_verify_full_with_dev_ca(gateway: GatewayThread) -> None:
    assert gateway.ca_file is not None and gateway.host == "127.0.0.1"
    with _connect(gateway, sslmode="verify-full") as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("select 1").fetchone() == (1,)
    result = _psql(gateway, gateway.token(), "-c", "select 'psql over tls'", "-c", "\\conninfo")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "psql over tls"
    assert re.search(r'database "orders-prod" as user "agent" on host "127\.0\.0\.1"', lines[1]), lines
    assert re.search(r"SSL connection \(protocol: TLSv1\.[23]", result.stdout), result.stdout


def test_tls_verify_full_rejects_other_ca(gateway: GatewayThread) -> None:
    other_ca = Path("/etc/ssl/certs/ca-certificates.crt")
    if not other_ca.exists():
        pytest.skip("no system CA bundle to verify against")
    dsn = gateway.dsn(gateway.token(), RESOURCE).replace(f"'{gateway.ca_file}'", f"'{other_ca}'")
    assert str(other_ca) in dsn
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        psycopg.connect(dsn)


def test_plaintext_client_is_refused(gateway: GatewayThread, postgres) -> None:
    offset = postgres.log_size()
    subject = _unique("plain")
    with pytest.raises(psycopg.OperationalError) as caught:
        _connect(gateway, gateway.token(subject), sslmode="disable")
    assert "TLS is required" in str(caught.value)
    result = _psql(gateway, gateway.token(), "-c", "select 1", sslmode="disable")
    assert result.returncode != 0
    assert "TLS" in result.stderr
    # Refused before any backend connection was made.
    assert "connection received" not in postgres.log_text(since=offset)
    refused = wait_for(lambda: [e for e in gateway.audit_events()
                                 if e["type"] == "session.refused" and e.get("reason") == "tls_required"])
    assert len(refused) >= 2


def test_plaintext_on_loopback_when_allowed(make_gateway, postgres) -> None:
    gw = make_gateway(listeners=[{"protocol": "postgres", "address": "127.0.0.1:0",
                                  "allow_plaintext_token_on_loopback": True}])
    with _connect(gw, sslmode="disable", autocommit=True) as conn:
        assert not conn.pgconn.ssl_in_use
        assert conn.execute("select current_user").fetchone() == (SERVICE_ROLE,)
    result = _psql(gw, gw.token(), "-c", "select 'plain psql'", sslmode="disable")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "plain psql"


# --- audit ---------------------------------------------------------------------------------------

def test_audit_trail_of_a_psycopg_session(gateway: GatewayThread) -> None:
    subject = _unique("auditor")
    table = _unique("audit_t")
    statements = [
        f"create table {table} (id int)",
        f"insert into {table} select generate_series(1, 3)",
        "select * from generate_series(1,5)",
    ]
    with _connect(gateway, gateway.token(subject), autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)
    events = _session_events(gateway, subject)
    types = [e["type"] for e in events]
    assert types[0] == "session.started"
    assert types[1] == "session.authenticated"
    assert types[-1] == "session.ended"
    assert events[1]["identity"]["subject"] == subject
    assert events[1]["principal"]["subject"] == subject
    assert all(e["resource"] == RESOURCE for e in events)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))

    decided = _decided(events)
    assert [e["statement"] for e in decided] == statements
    assert all(e["decision"] == "allow" for e in decided)
    expected = [("CREATE TABLE", None), ("INSERT 0 3", 3), ("SELECT 5", 5)]
    for event, (tag, rows) in zip(decided, expected):
        results = _results_for(events, event["id"])
        assert len(results) == 1, results
        assert results[0]["status"] == "ok"
        assert results[0]["tag"] == tag
        if rows is not None:
            assert results[0]["rows"] == rows
        assert events.index(results[0]) > events.index(event)
    ended = events[-1]
    assert ended["commands"] == 3 and ended["denied"] == 0

    # Hash chain over the exact bytes written.
    session = events[0]["session"]
    spool = gateway.gateway.recorder.spool
    lines = [line for path in sorted(spool.directory.glob("*.jsonl")) for line in read_segment(path)]
    chain = [(line, orjson.loads(line)) for line in lines if orjson.loads(line)["session"] == session]
    assert [e for _, e in chain] == events
    previous = "0" * 64
    for line, event in chain:
        assert event["prev_hash"] == previous
        previous = hashlib.sha256(line).hexdigest()


def _libpq_result(pgconn: psycopg.pq.abc.PGconn, timeout: float = 10.0) -> psycopg.pq.abc.PGresult | None:
    """The next result of a non-blocking libpq connection, never blocking while holding the GIL
    (the gateway serving it runs in this process)."""
    deadline = time.monotonic() + timeout
    while True:
        pgconn.consume_input()
        if not pgconn.is_busy():
            return pgconn.get_result()
        if time.monotonic() > deadline:
            raise AssertionError("no result from the gateway in time")
        select.select([pgconn.socket], [], [], 0.05)


def _libpq_flush(pgconn: psycopg.pq.abc.PGconn, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while pgconn.flush() != 0:
        if time.monotonic() > deadline:
            raise AssertionError("could not send to the gateway in time")
        select.select([], [pgconn.socket], [], 0.05)


def test_audit_records_a_result_for_skipped_and_empty_statements(gateway: GatewayThread, postgres) -> None:
    """Every decided statement gets a command.result: also one the backend skipped because an earlier
    statement of the same pipeline failed, and an empty query."""
    subject = _unique("skipper")
    table = _unique("skip_t")
    skipped_statement = f"insert into {table} values (2)"
    with _connect(gateway, gateway.token(subject), autocommit=True) as conn:
        conn.execute(f"create table {table} (id int primary key)")
        conn.execute(f"insert into {table} values (1)")
        # libpq pipeline mode: a failing statement, a flush request, read its error; only then send
        # the next statement (which the backend skips up to the Sync).
        pgconn = conn.pgconn
        pgconn.nonblocking = 1
        pgconn.enter_pipeline_mode()
        pgconn.send_query_params(f"insert into {table} values (1)".encode(), None)
        pgconn.send_flush_request()
        _libpq_flush(pgconn)
        failed = _libpq_result(pgconn)
        assert failed.status == psycopg.pq.ExecStatus.FATAL_ERROR
        assert failed.error_field(psycopg.pq.DiagnosticField.SQLSTATE) == b"23505"
        assert _libpq_result(pgconn) is None
        pgconn.send_query_params(skipped_statement.encode(), None)
        pgconn.pipeline_sync()
        _libpq_flush(pgconn)
        assert _libpq_result(pgconn).status == psycopg.pq.ExecStatus.PIPELINE_ABORTED
        assert _libpq_result(pgconn) is None
        assert _libpq_result(pgconn).status == psycopg.pq.ExecStatus.PIPELINE_SYNC
        pgconn.exit_pipeline_mode()
        pgconn.nonblocking = 0
        assert conn.execute(f"select array_agg(id) from {table}").fetchone() == ([1],)
        # An empty query in the simple protocol.
        with psycopg.ClientCursor(conn) as cur:
            cur.execute("")
    events = _session_events(gateway, subject)
    (skipped,) = [e for e in _decided(events) if e["statement"] == skipped_statement]
    assert [r["status"] for r in _results_for(events, skipped["id"])] == ["skipped"]
    (empty,) = [e for e in _decided(events) if e["statement"] == ""]
    assert [r["status"] for r in _results_for(events, empty["id"])] == ["empty"]
    for event in _decided(events):
        assert len(_results_for(events, event["id"])) >= 1, f"no command.result for {event['statement']!r}"


def test_audit_row_count_of_a_portal_fetched_in_batches(gateway: GatewayThread) -> None:
    """asyncpg's cursor executes one portal several times with a row limit (PortalSuspended in between):
    the rows recorded for the statement must add up to the rows the client received."""
    subject = _unique("batcher")
    token = gateway.token(subject)
    context = ssl.create_default_context(cafile=str(gateway.ca_file))
    statement = "select g from generate_series(1, 1000) g"

    async def scenario() -> int:
        conn = await asyncpg.connect(host=gateway.host, port=gateway.port, user="agent", password=token,
                                     database=RESOURCE, ssl=context, timeout=10)
        try:
            received = 0
            async with conn.transaction():
                async for _ in conn.cursor(statement, prefetch=300):
                    received += 1
            return received
        finally:
            await asyncio.wait_for(conn.close(), 10)

    assert asyncio.run(asyncio.wait_for(scenario(), 30)) == 1000
    events = _session_events(gateway, subject)
    (decided,) = [e for e in _decided(events) if e["statement"] == statement]
    results = _results_for(events, decided["id"])
    assert [r["status"] for r in results] == ["suspended", "suspended", "suspended", "ok"]
    assert sum(r["rows"] or 0 for r in results) == 1000, [(r["status"], r["rows"], r["tag"]) for r in results]


def test_backend_terminated_by_administrator(gateway: GatewayThread, postgres) -> None:
    subject = _unique("terminated")
    with _connect(gateway, gateway.token(subject), autocommit=True) as conn:
        backend_pid = conn.execute("select pg_backend_pid()").fetchone()[0]
        assert conn.info.backend_pid != backend_pid, "the client sees the gateway's key, not the backend's"
        assert _direct_rows(postgres, "select pg_terminate_backend(%s)", (backend_pid,)) == [(True,)]
        wait_for(lambda: _direct_rows(postgres, "select count(*) from pg_stat_activity where pid = %s",
                                       (backend_pid,)) == [(0,)])
        with pytest.raises(psycopg.OperationalError, match="terminating connection due to administrator command"):
            conn.execute("select 1")
        assert conn.closed or conn.broken
    events = _session_events(gateway, subject)
    assert events[-1]["type"] == "session.ended"


# --- credentials isolation -----------------------------------------------------------------------

def test_client_runs_as_service_role_not_claimed_user(gateway: GatewayThread, postgres) -> None:
    with _connect(gateway, autocommit=True, user="agent") as conn:
        assert conn.info.user == "agent"
        assert conn.execute("select current_user, session_user, current_database()").fetchone() == (
            SERVICE_ROLE, SERVICE_ROLE, "orders")
    # Claiming the superuser's name changes nothing: the backend session is the service role's.
    with _connect(gateway, autocommit=True, user=postgres.superuser) as conn:
        assert conn.execute("select current_user, (select rolsuper from pg_roles where rolname = current_user)"
                            ).fetchone() == (SERVICE_ROLE, False)
    # The service password never reaches the client: the client only ever sent its token.
    result = _psql(gateway, gateway.token(), "-c", "select current_user")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == SERVICE_ROLE
    assert postgres.service_password not in result.stdout + result.stderr
