"""A gateway of two worker processes (``workers: 2``), run as users run it: ``wardgate serve``.

GIVEN a supervised gateway, THEN sessions are served by both workers and ``/metrics`` sums them; a
client's cancel reaches the session whichever worker the cancel connection lands on; a statement held
in a worker is released by an approval given at the supervisor's control port; a worker killed with
SIGKILL is started again, its open session's end is recorded and its segment sealed, while the
other worker's sessions go on and ``/readyz`` stays ready, naming it; SIGTERM stops everything cleanly
and ``wardgate audit verify`` accepts the trail; the workers do not outlive a killed supervisor; a
worker that cannot start stops ``wardgate serve`` with its error; SIGHUP to the supervisor reloads the
policy in every worker.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import psycopg
import pytest
import yaml
from psycopg import errors

from served_gateway import ALL_READY, RESOURCE, ServedGateway, audit_verify, http_get, wardgate_command
from wardgate.devtools.harness import wait_for

pytestmark = pytest.mark.timeout(180)

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "policies" / "ai-agent-default" / "policy.yaml"
HELD = re.compile(r"held for approval \(request (\S+), rule ([^)]+)\)")


def SupervisedGateway(postgres, directory: Path, **overrides) -> ServedGateway:
    """``wardgate serve`` with ``workers: 2``."""
    return ServedGateway(postgres, directory, **{"workers": 2, **overrides})


@pytest.fixture
def supervised(serve):
    return lambda **overrides: serve(**{"workers": 2, **overrides})


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead too
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_sessions_are_spread_over_both_workers_and_metrics_sum_them(supervised) -> None:
    gateway = supervised()
    pids = gateway.worker_pids()
    assert sorted(pids) == [1, 2] and len(set(pids.values())) == 2, gateway.output
    token = gateway.token("agent-7", "dev")
    connections = [psycopg.connect(gateway.dsn(token), autocommit=True) for _ in range(6)]
    try:
        for number, conn in enumerate(connections):
            assert conn.execute("SELECT %s::int + 1", (number,)).fetchone() == (number + 1,)
    finally:
        for conn in connections:
            conn.close()
    samples = gateway.metrics()
    assert samples[("wardgate_sessions_total", frozenset({("protocol", "postgres"), ("resource", RESOURCE)}))] == 6
    assert samples[("wardgate_workers", frozenset())] == 2
    assert samples[("wardgate_audit_sink_up", frozenset())] == 1
    assert samples[("wardgate_decisions_total", frozenset({("protocol", "postgres"), ("verdict", "allow")}))] >= 6
    # Each worker served three of the six (round-robin) and recorded them in its own segments.
    sessions_by_gateway: dict[str, set] = {}
    for event in gateway.events():
        if event["type"] == "session.authenticated":
            sessions_by_gateway.setdefault(event["gateway"], set()).add(event["session"])
    assert sorted(len(s) for s in sessions_by_gateway.values()) == [3, 3], sessions_by_gateway
    assert gateway.stop() == 0
    result = audit_verify(gateway.directory / "audit")
    assert result.returncode == 0, result.stdout + result.stderr


def test_cancel_reaches_the_session_whichever_worker_receives_it(supervised) -> None:
    gateway = supervised()
    token = gateway.token("agent-7", "dev")
    connections = [psycopg.connect(gateway.dsn(token), autocommit=True) for _ in range(4)]
    outcomes: list[BaseException | None] = [None] * len(connections)

    def sleep(index: int) -> None:
        try:
            connections[index].execute("SELECT pg_sleep(60)")
        except BaseException as exc:  # the assertion is on what the client got
            outcomes[index] = exc

    threads = [threading.Thread(target=sleep, args=(i,), daemon=True) for i in range(len(connections))]
    try:
        for thread in threads:
            thread.start()
        time.sleep(1.0)  # every pg_sleep is running
        started = time.monotonic()
        # The supervisor hands connections out in turn: the sessions went to workers A, B, A, B, and
        # the four cancel connections go to A, B, A, B too. Cancelling in the order 1, 0, 3, 2 sends
        # every cancel to the worker that does not hold its session.
        for index in (1, 0, 3, 2):
            connections[index].cancel()
        for thread in threads:
            thread.join(20)
        assert time.monotonic() - started < 20
        assert all(isinstance(outcome, errors.QueryCanceled) for outcome in outcomes), outcomes
        for conn in connections:  # the sessions go on
            assert conn.execute("SELECT 1").fetchone() == (1,)
        # Each request counted once, by the worker that settled it, although another received it.
        cancels = {dict(labels)["outcome"]: count for (name, labels), count in gateway.metrics().items()
                   if name == "wardgate_cancel_requests_total"}
        assert cancels == {"backend": 4.0}, cancels
    finally:
        for conn in connections:
            conn.close()


def test_a_statement_held_in_a_worker_is_released_by_an_approval_at_the_supervisor(supervised, postgres) -> None:
    gateway = supervised(policy={"file": str(BUNDLE), "watch": False})
    table = f"held_{os.getpid()}_{int(time.time())}"
    postgres.run_sql(f"CREATE TABLE {table} (id int PRIMARY KEY); ALTER TABLE {table} OWNER TO wardgate_svc;",
                     dbname="orders")
    notices: list[str] = []
    outcome: dict[str, BaseException | None] = {}
    # Two sessions one after the other: the supervisor hands them to different workers, so each
    # worker holds one statement, released by an approval given at the supervisor's control port.
    for attempt in range(2):
        conn = psycopg.connect(gateway.dsn(gateway.token("agent-7", "ai-agents")), autocommit=True)
        conn.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))

        def run(conn=conn, attempt=attempt) -> None:
            try:
                conn.execute(f"INSERT INTO {table} VALUES ({attempt})")
                outcome[attempt] = None
            except BaseException as exc:
                outcome[attempt] = exc

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        wait_for(lambda: len([n for n in notices if HELD.search(n)]) > attempt, "the held notice", timeout=20)
        request = [HELD.search(n).group(1) for n in notices if HELD.search(n)][attempt]
        assert postgres.run_sql(f"SELECT count(*) FROM {table}", dbname="orders").strip() == str(attempt)
        approve = subprocess.run([*wardgate_command(), "approvals", "approve", request, "--reason", "ok",
                                  "--url", gateway.control_url], capture_output=True, text=True, timeout=30,
                                 env={**gateway.env, "WARDGATE_TOKEN": gateway.token("dana", "dba")})
        assert approve.returncode == 0, approve.stdout + approve.stderr
        thread.join(20)
        assert attempt in outcome and outcome[attempt] is None, outcome
        conn.close()
    assert postgres.run_sql(f"SELECT count(*) FROM {table}", dbname="orders").strip() == "2"
    decided = [e for e in gateway.events() if e["type"] == "approval.decided"]
    assert [e["verdict"] for e in decided] == ["approved", "approved"]
    assert len({e["gateway"] for e in decided}) == 2  # one held in each worker


def test_a_killed_worker_is_started_again_and_its_open_session_is_ended_in_the_trail(supervised) -> None:
    gateway = supervised()
    token = gateway.token("agent-7", "dev")
    first, second = (psycopg.connect(gateway.dsn(token), autocommit=True) for _ in range(2))
    pid_of = {conn: conn.execute("SELECT pg_backend_pid()").fetchone()[0] for conn in (first, second)}
    sessions = {e["gateway"]: e["session"] for e in gateway.events() if e["type"] == "session.authenticated"}
    assert len(sessions) == 2, sessions
    old = gateway.worker_pids()
    os.kill(old[1], signal.SIGKILL)
    wait_for(lambda: gateway.worker_pids().get(1, old[1]) != old[1], "worker 1 to be started again", timeout=30)
    gateway.wait_ready()
    assert alive(old[2]) and gateway.worker_pids()[2] == old[2]
    # Exactly one of the two sessions was on the killed worker: it is gone, the other goes on.
    survived = []
    for conn in (first, second):
        try:
            survived.append(conn.execute("SELECT pg_backend_pid()").fetchone()[0] == pid_of[conn])
        except psycopg.OperationalError:
            survived.append(False)
    assert sorted(survived) == [False, True], survived
    # New sessions are served (by both workers again).
    for _ in range(4):
        with psycopg.connect(gateway.dsn(token), autocommit=True) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    samples = gateway.metrics()
    assert samples[("wardgate_worker_restarts_total", frozenset())] == 1
    assert samples[("wardgate_workers", frozenset())] == 2
    # The new worker sealed the dead one's segment and recorded the end of its open session.
    recovered = [e for e in gateway.events() if e["type"] == "session.ended" and e.get("recovered")]
    assert len(recovered) == 1 and recovered[0]["session"] in sessions.values(), recovered
    assert "crashed or was killed" in recovered[0]["reason"]
    assert "Traceback" not in gateway.output, gateway.output
    for conn in (first, second):
        conn.close()
    assert gateway.stop() == 0
    result = audit_verify(gateway.directory / "audit")
    assert result.returncode == 0, result.stdout + result.stderr
    assert not any(alive(pid) for pid in gateway.worker_pids().values())


def test_readyz_stays_ready_and_names_the_worker_while_a_killed_worker_is_started_again(supervised) -> None:
    gateway = supervised()
    assert http_get(gateway.control_url + "/readyz") == (200, "ready: 2 of 2 workers\n")
    old = gateway.worker_pids()
    os.kill(old[1], signal.SIGKILL)
    # The supervisor waits a second before starting it again, and a worker takes a second to start.
    answers: list[tuple[int, str]] = []
    deadline = time.monotonic() + 30
    while not (gateway.worker_pids().get(1, old[1]) != old[1] and answers and ALL_READY.fullmatch(answers[-1][1])):
        assert time.monotonic() < deadline, (answers[-5:], gateway.output)
        answers.append(http_get(gateway.control_url + "/readyz"))
        time.sleep(0.05)
    assert all(status == 200 for status, _ in answers), [a for a in answers if a[0] != 200]
    degraded = [body for _, body in answers if not ALL_READY.fullmatch(body)]
    assert degraded, answers  # the restart was seen
    assert all(body.startswith("ready: 1 of 2 workers; worker 1: ") for body in degraded), degraded
    assert alive(old[2]) and gateway.worker_pids()[2] == old[2]
    assert "Traceback" not in gateway.output, gateway.output


def test_workers_stop_when_the_supervisor_is_killed(supervised) -> None:
    gateway = supervised()
    pids = gateway.worker_pids()
    # The supervisor's private directory of internal sockets, as it told its workers.
    arguments = Path(f"/proc/{pids[1]}/cmdline").read_text().split("\0")
    run_dir = Path(arguments[arguments.index("--worker-run-dir") + 1])
    assert run_dir.is_dir()
    gateway.process.kill()
    gateway.process.wait(10)
    wait_for(lambda: not any(alive(pid) for pid in pids.values()), "the workers to stop", timeout=30)
    assert not run_dir.exists()  # a killed supervisor cannot remove it: the last worker out does


def test_a_worker_that_cannot_start_stops_the_gateway_with_its_error(postgres) -> None:
    directory = Path(tempfile.mkdtemp(prefix="wardgate-workers-"))
    gateway = SupervisedGateway(postgres, directory, audit={"sink": f"file://{directory / 'audit'}",
                                                                 "signer": "file:///proc/wardgate-no-key-here/key.pem"})
    with open(gateway.log_path, "wb") as log:
        gateway.process = subprocess.Popen([*wardgate_command(), "serve", "--config", str(gateway.config_path)],
                                           stdout=log, stderr=subprocess.STDOUT, cwd="/", env=gateway.env)
    try:
        code = gateway.process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        gateway.process.kill()
        pytest.fail(f"wardgate serve kept running without workers: {gateway.output}")
    assert code != 0
    assert re.search(r"worker \d exited with code \d+ while starting", gateway.output), gateway.output
    assert "/proc/wardgate-no-key-here" in gateway.output, gateway.output
    assert re.search(r"wardgate: worker \d cannot start: .*/proc/wardgate-no-key-here", gateway.output), gateway.output
    assert "Traceback" not in gateway.output, gateway.output
    wait_for(lambda: not any(alive(pid) for pid in gateway.worker_pids().values()), "the workers to stop",
             timeout=30)
    shutil.rmtree(directory, ignore_errors=True)


def test_sighup_to_the_supervisor_reloads_the_policy_in_every_worker(supervised) -> None:
    policy = Path(tempfile.mkdtemp(prefix="wardgate-workers-policy-")) / "policy.yaml"
    bundle = yaml.safe_load(BUNDLE.read_text())
    policy.write_text(yaml.safe_dump(bundle, sort_keys=False))
    gateway = supervised(policy={"file": str(policy), "watch": False})
    token = gateway.token("dana", "dba")
    sessions = [psycopg.connect(gateway.dsn(token), autocommit=True) for _ in range(2)]  # one per worker
    try:
        for conn in sessions:
            assert conn.execute("SELECT 41 + 1").fetchone() == (42,)
        bundle["rules"].insert(0, {"name": "no-reads-today", "effect": "deny", "roles": ["dba"],
                                   "when": {"classes": ["read"]}, "message": "reads are paused"})
        policy.write_text(yaml.safe_dump(bundle, sort_keys=False))
        gateway.process.send_signal(signal.SIGHUP)

        def refused_everywhere() -> bool:
            for conn in sessions:
                try:
                    conn.execute("SELECT 41 + 1")
                    return False
                except errors.InsufficientPrivilege as exc:
                    assert "reads are paused" in str(exc)
            return True

        wait_for(refused_everywhere, "the new policy in both workers", timeout=20)
    finally:
        for conn in sessions:
            conn.close()
    assert gateway.process.poll() is None and "Traceback" not in gateway.output, gateway.output
    shutil.rmtree(policy.parent, ignore_errors=True)
