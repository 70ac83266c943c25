"""Stopping the gateway (SIGTERM from ECS, Container Apps or systemd; Ctrl-C) while sessions are open.

GIVEN ``wardgate serve`` with sessions that are idle, inside a transaction, and running a statement,
WHEN it gets SIGTERM, THEN it takes no new connection and ``/readyz`` says 503, the idle session is
closed at once (FATAL 57P01), the running statement finishes and returns its rows, the transaction can
commit, and each session is closed at that point; the gateway then exits 0 and the trail verifies. A
session still in a transaction after ``shutdown_grace`` is closed (its transaction rolls back), and a
second SIGTERM stops at once. With worker processes, the supervisor's SIGTERM drains every worker.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import psycopg
import pytest

from served_gateway import ServedGateway, audit_verify, http_get

pytestmark = pytest.mark.timeout(120)


def readyz(gateway: ServedGateway) -> tuple[int, str]:
    status, body = http_get(gateway.control_url + "/readyz")
    return status, body.strip()


def audit_verifies(gateway: ServedGateway) -> None:
    verified = audit_verify(gateway.directory / "audit")
    assert verified.returncode == 0, verified.stdout + verified.stderr


@pytest.fixture
def served(serve):
    def start(**overrides) -> tuple[ServedGateway, str]:
        gateway = serve(**overrides)
        return gateway, gateway.token("agent-7", "dev")
    return start


@pytest.fixture
def table(postgres) -> str:
    name = f"shutdown_{os.getpid()}_{time.monotonic_ns()}"
    postgres.run_sql(f"CREATE TABLE {name} (id int PRIMARY KEY); ALTER TABLE {name} OWNER TO wardgate_svc;",
                     dbname="orders")
    return name


def _rows(postgres, table: str) -> str:
    return postgres.run_sql(f"SELECT coalesce(string_agg(id::text, ',' ORDER BY id), '') FROM {table}",
                            dbname="orders").strip()


def _closed_by_shutdown(conn: psycopg.Connection) -> bool:
    """The session no longer works. Whether the client shows the gateway's FATAL depends on when it
    reads: libpq, sending its next query to a socket already closed, may get a reset and report only
    "server closed the connection unexpectedly" (as with PostgreSQL's own fast shutdown). Which
    session was closed, and why, is asserted from the trail (``_aborted_by_shutdown``)."""
    try:
        conn.execute("SELECT 1")
    except psycopg.OperationalError:
        return True
    return False


def _aborted_by_shutdown(gateway: ServedGateway) -> list[str]:
    """The recorded reason of every session the gateway closed while stopping (session.aborted 57P01)."""
    return [e["message"] for e in gateway.events() if e["type"] == "session.aborted" and e.get("code") == "57P01"]


def _run_in_thread(function) -> tuple[threading.Thread, list]:
    outcome: list = []

    def run() -> None:
        try:
            outcome.append(function())
        except BaseException as exc:  # the assertion is on what the client got
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def test_sigterm_lets_statements_and_transactions_finish_and_closes_each_session_when_idle(served, postgres, table):
    gateway, token = served(shutdown_grace="20s")
    idle, in_transaction, running = (gateway.connect(token) for _ in range(3))
    try:
        idle.execute("SELECT 1")
        in_transaction.execute("BEGIN")
        in_transaction.execute(f"INSERT INTO {table} VALUES (1)")
        thread, outcome = _run_in_thread(lambda: running.execute("SELECT pg_sleep(2), 'finished'").fetchone()[1])
        time.sleep(0.5)  # the pg_sleep is running
        stopped_at = time.monotonic()
        gateway.process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        # No new sessions, and load balancers are told so; the idle session is gone.
        assert readyz(gateway) == (503, "stopping: 2 session(s) left, each closed once idle")
        with pytest.raises(psycopg.OperationalError):
            gateway.connect(token)
        assert _closed_by_shutdown(idle)
        # The running statement finishes with its rows; then its session is closed.
        thread.join(10)
        assert outcome == ["finished"], outcome
        assert _closed_by_shutdown(running)
        # The transaction goes on and commits; then its session is closed.
        in_transaction.execute(f"INSERT INTO {table} VALUES (2)")
        in_transaction.execute("COMMIT")
        assert _closed_by_shutdown(in_transaction)
        assert gateway.wait_exit(10) == 0
        assert time.monotonic() - stopped_at < 10  # it did not wait for the grace once all were closed
    finally:
        for conn in (idle, in_transaction, running):
            conn.close()
    assert _rows(postgres, table) == "1,2"
    assert "closed as each becomes idle" in gateway.output
    idle_close = ("wardgate is shutting down: connect again (no statement was running and no transaction "
                  "was open)")
    assert _aborted_by_shutdown(gateway) == [idle_close] * 3
    audit_verifies(gateway)


def test_a_transaction_still_open_after_the_grace_is_rolled_back_and_closed(served, postgres, table):
    gateway, token = served(shutdown_grace="1s")
    conn = gateway.connect(token)
    try:
        conn.execute("BEGIN")
        conn.execute(f"INSERT INTO {table} VALUES (7)")
        stopped_at = time.monotonic()
        gateway.process.send_signal(signal.SIGTERM)
        assert gateway.wait_exit(15) == 0
        assert 0.9 < time.monotonic() - stopped_at < 10
        assert _closed_by_shutdown(conn)
    finally:
        conn.close()
    assert _rows(postgres, table) == ""  # rolled back: the backend connection closed mid-transaction
    assert "still running a statement or in a transaction" in gateway.output
    assert _aborted_by_shutdown(gateway) == ["wardgate is shutting down"]
    audit_verifies(gateway)


def test_a_second_sigterm_stops_at_once(served, table):
    gateway, token = served(shutdown_grace="60s")
    conn = gateway.connect(token)
    try:
        conn.execute("BEGIN")
        conn.execute(f"INSERT INTO {table} VALUES (3)")
        gateway.process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert gateway.process.poll() is None  # draining: the transaction may still commit
        stopped_at = time.monotonic()
        gateway.process.send_signal(signal.SIGTERM)
        assert gateway.wait_exit(15) == 0
        assert time.monotonic() - stopped_at < 10
    finally:
        conn.close()
    audit_verifies(gateway)


def test_with_workers_the_supervisor_drains_every_worker(served, postgres, table):
    gateway, token = served(shutdown_grace="20s", workers=2)
    # The supervisor hands sessions to the workers in turn: one statement runs in each.
    first, second = gateway.connect(token), gateway.connect(token)
    try:
        threads = [_run_in_thread(lambda conn=conn, n=n: conn.execute(
            f"INSERT INTO {table} SELECT {n} FROM pg_sleep(1.5)").rowcount) for n, conn in ((10, first), (20, second))]
        time.sleep(0.5)
        gateway.process.send_signal(signal.SIGTERM)
        for thread, outcome in threads:
            thread.join(10)
            assert outcome == [1], outcome
        assert gateway.wait_exit(15) == 0
        assert _closed_by_shutdown(first) and _closed_by_shutdown(second)
    finally:
        first.close()
        second.close()
    assert _rows(postgres, table) == "10,20"
    audit_verifies(gateway)
