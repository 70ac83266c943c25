"""The supervisor's ``/readyz`` (``workers:`` above 1): ready while at least one worker is.

GIVEN each worker's readiness, THEN the replica is ready (200) when at least one worker is ready and the
supervisor accepts connections, the body counting the ready workers and naming the others' problems
(one worker being restarted must not take the replica out of its load balancer); not ready (503) when
no worker is, or while the supervisor stops. A worker whose own ``/readyz`` answers 503 (its audit sink
is down) or that does not answer counts as not ready.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

import pytest

from wardgate.config import GatewayConfig
from wardgate.supervisor import Supervisor, aggregate_readiness


def test_every_worker_ready() -> None:
    assert aggregate_readiness([None, None]) == (True, "ready: 2 of 2 workers\n")


def test_one_worker_down_leaves_the_replica_ready_and_names_it() -> None:
    assert aggregate_readiness(["worker 1: not running", None]) == \
        (True, "ready: 1 of 2 workers; worker 1: not running\n")


def test_no_worker_ready_is_not_ready_and_names_each_problem() -> None:
    ready, body = aggregate_readiness(["worker 1: not running", "worker 2: audit sink unavailable: disk full"])
    assert not ready
    assert body == "not ready: 0 of 2 workers; worker 1: not running; worker 2: audit sink unavailable: disk full\n"


def test_not_ready_while_the_supervisor_stops() -> None:
    ready, body = aggregate_readiness([None, None], accepting=False)
    assert not ready and body == "not ready: 2 of 2 workers; stopping: not accepting connections\n"


def test_no_workers_is_not_ready() -> None:
    assert aggregate_readiness([]) == (False, "not ready: 0 of 0 workers\n")


def test_the_body_stays_one_line() -> None:
    ready, body = aggregate_readiness([None, "worker 2: audit sink unavailable: first\nsecond\n"])
    assert ready and body == "ready: 1 of 2 workers; worker 2: audit sink unavailable: first second\n"


# --- the supervisor's checks of its workers and the control port's answer -----------------------------

def supervisor_of(workers: int, answers: dict[int, tuple[int, bytes] | Exception]) -> Supervisor:
    """A supervisor of ``workers`` workers, none started: ``answers`` is each ready worker's own
    ``/readyz`` (slot → status and body, or the error asking it raises); a slot absent is not running."""
    config = GatewayConfig.model_validate({"listeners": [{"protocol": "postgres", "address": "127.0.0.1:0"}],
                                           "dev_issuer": {"enabled": True}, "resources": {}, "workers": workers})
    supervisor = Supervisor(config, Path("/nonexistent/wardgate.yaml"), workers)
    for worker in supervisor.workers:
        worker.ready = worker.slot in answers

    async def ask(worker, path: str) -> tuple[int, bytes]:
        assert path == "/readyz"
        answer = answers[worker.slot]
        if isinstance(answer, Exception):
            raise answer
        return answer

    supervisor._ask = ask
    return supervisor


def readyz(supervisor: Supervisor) -> tuple[int, str]:
    """The control port's ``/readyz`` handler, as the supervisor's control gateway serves it."""
    control = supervisor.control
    control._ready = True
    control.recorder = SimpleNamespace(last_error=None)  # the supervisor records nothing itself

    async def call():
        return await control._readyz(None)

    response = asyncio.run(call())
    return response.status, response.text


READY = (200, b"ready\n")


def test_a_worker_being_restarted_leaves_the_replica_ready() -> None:
    supervisor = supervisor_of(2, {2: READY})
    assert readyz(supervisor) == (200, "ready: 1 of 2 workers; worker 1: not running\n")


def test_every_worker_ready_at_the_control_port() -> None:
    assert readyz(supervisor_of(3, {1: READY, 2: READY, 3: READY})) == (200, "ready: 3 of 3 workers\n")


def test_a_worker_whose_audit_sink_is_down_is_not_ready() -> None:
    supervisor = supervisor_of(2, {1: (503, b"audit sink unavailable: disk full\n"), 2: READY})
    assert readyz(supervisor) == (200, "ready: 1 of 2 workers; worker 1: audit sink unavailable: disk full\n")


def test_no_worker_ready_at_the_control_port_is_503() -> None:
    supervisor = supervisor_of(2, {1: (503, b"audit sink unavailable: disk full\n"),
                                   2: ConnectionRefusedError("connection refused")})
    status, body = readyz(supervisor)
    assert status == 503
    assert body == ("not ready: 0 of 2 workers; worker 1: audit sink unavailable: disk full; "
                    "worker 2: not answering (connection refused)\n")


def test_every_worker_down_at_the_control_port_is_503() -> None:
    assert readyz(supervisor_of(2, {})) == (503, "not ready: 0 of 2 workers; worker 1: not running; "
                                                 "worker 2: not running\n")


def test_a_stopping_supervisor_is_not_ready() -> None:
    supervisor = supervisor_of(2, {1: READY, 2: READY})
    supervisor._stopping = True
    status, body = readyz(supervisor)
    assert status == 503 and "stopping" in body


@pytest.mark.parametrize("error", [None, "disk full"])
def test_the_control_gateway_checks_still_apply(error) -> None:
    supervisor = supervisor_of(2, {1: READY, 2: READY})
    control = supervisor.control
    control._ready = True
    control.recorder = SimpleNamespace(last_error=error)
    response = asyncio.run(control._readyz(None))
    assert response.status == (200 if error is None else 503)
