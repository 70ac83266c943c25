"""Fixtures for tests through a running gateway."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from served_gateway import ServedGateway
from wardgate.devtools.harness import GatewayThread, default_test_config


@pytest.fixture
def make_gateway(postgres) -> Iterator[Callable[..., GatewayThread]]:
    """Start gateways fronting the session's PostgreSQL as resource ``orders-prod``; keyword
    arguments override top-level config keys. Stopped at the end of the test."""
    started: list[GatewayThread] = []
    # Not pytest's tmp_path: the state dir must be readable by whoever runs the clients.
    tmp = Path(tempfile.mkdtemp(prefix="wardgate-test-"))

    def make(**overrides) -> GatewayThread:
        directory = tmp / f"gw{len(started)}"
        directory.mkdir()
        gateway = GatewayThread(default_test_config(postgres, directory, **overrides), directory).start()
        started.append(gateway)
        return gateway

    yield make
    for gateway in started:
        gateway.stop()
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def gateway(make_gateway) -> GatewayThread:
    return make_gateway()


@pytest.fixture
def serve(postgres) -> Iterator[Callable[..., ServedGateway]]:
    """Start ``wardgate serve`` subprocesses fronting the session's PostgreSQL (keyword arguments
    override config keys); each is stopped, if still running, and its directory removed at the end."""
    started: list[ServedGateway] = []

    def make(**overrides) -> ServedGateway:
        # Not pytest's tmp_path: clients read the CA in the state dir, and with workers the run
        # directory's Unix sockets need a short path.
        gateway = ServedGateway(postgres, Path(tempfile.mkdtemp(prefix="wardgate-serve-")), **overrides)
        started.append(gateway)
        return gateway.start()

    yield make
    for gateway in started:
        if gateway.process is not None and gateway.process.poll() is None:
            gateway.stop()
        shutil.rmtree(gateway.directory, ignore_errors=True)
