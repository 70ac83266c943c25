"""Run a gateway in a background thread (its own uvloop event loop): for tests and the demo.

Benchmarks run ``wardgate serve`` in its own process instead, so the gateway does not share a GIL
with the load generator.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Mapping

import orjson
import uvloop

from wardgate.config import GatewayConfig
from wardgate.core.audit import read_segment
from wardgate.core.model import Principal
from wardgate.core.policy import AllowAll
from wardgate.core.session import DecisionCore
from wardgate.metrics import GatewayMetrics
from wardgate.protocols.postgres.engine import ClientConnection, PostgresFrontend
from wardgate.server import Gateway


def wait_for(condition: Callable[[], Any], what: str = "the condition", *, timeout: float = 10.0,
             interval: float = 0.05) -> Any:
    """Poll ``condition`` until it returns something truthy (and return that); fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class GatewayThread:
    def __init__(self, config: GatewayConfig | Mapping[str, Any], config_dir: Path):
        if not isinstance(config, GatewayConfig):
            config = GatewayConfig.model_validate(config)
        if not config.state_dir.is_absolute():
            config = config.model_copy(update={"state_dir": (config_dir / config.state_dir).resolve()})
        self.config = config
        self.config_dir = config_dir
        self.gateway = Gateway(config, config_dir=config_dir)
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self, timeout: float = 30.0) -> "GatewayThread":
        self._thread = threading.Thread(target=self._run, name="wardgate-gateway", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout):
            raise RuntimeError("the gateway did not start in time")
        if self._error is not None:
            raise RuntimeError(f"the gateway failed to start: {self._error!r}") from self._error
        return self

    def _run(self) -> None:
        self.loop = uvloop.new_event_loop()
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._main())
        finally:
            self.loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        try:
            await self.gateway.start()
        except BaseException as exc:
            self._error = exc
            self._started.set()
            return
        self._started.set()
        await self._stop.wait()
        await self.gateway.stop()

    def stop(self, timeout: float = 30.0) -> None:
        if self.loop is not None and self._stop is not None and self._thread.is_alive():
            self.loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self) -> "GatewayThread":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def call(self, coroutine, timeout: float = 30.0):
        """Run a coroutine on the gateway's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    # --- what clients need -------------------------------------------------------------------
    @property
    def host(self) -> str:
        return self.gateway.listener_addresses[0][0]

    @property
    def port(self) -> int:
        return self.gateway.listener_addresses[0][1]

    @property
    def control_url(self) -> str:
        host, port = self.gateway.control_address
        return f"http://{host}:{port}"

    @property
    def ca_file(self) -> Path | None:
        return self.gateway.dev_ca_file

    def token(self, subject: str = "alice", groups: tuple[str, ...] = ("dev",), ttl: float = 300,
              **claims: Any) -> str:
        return self.gateway.dev_issuer.mint(subject, groups, ttl=ttl, extra_claims=claims or None)

    def libpq_env(self, token: str, resource: str, *, sslmode: str = "verify-full",
                  user: str = "agent") -> dict[str, str]:
        """Environment for psql/pgbench through the gateway (merge with os.environ)."""
        env = {"PGHOST": self.host, "PGPORT": str(self.port), "PGUSER": user, "PGDATABASE": resource,
               "PGPASSWORD": token, "PGSSLMODE": sslmode, "PGCONNECT_TIMEOUT": "10"}
        if self.ca_file is not None:
            env["PGSSLROOTCERT"] = str(self.ca_file)
        return env

    def dsn(self, token: str, resource: str, *, sslmode: str = "verify-full", user: str = "agent") -> str:
        parts = {"host": self.host, "port": self.port, "user": user, "dbname": resource,
                 "password": token, "sslmode": sslmode, "connect_timeout": 10}
        if self.ca_file is not None:
            parts["sslrootcert"] = self.ca_file
        return " ".join(f"{k}='{str(v)}'" for k, v in parts.items())

    def audit_events(self) -> list[dict[str, Any]]:
        """Every event written so far, in file order (flushes nothing: events are written before
        results are released, so what a client saw is already here)."""
        spool = self.gateway.recorder.spool
        if spool is None or not spool.directory.exists():
            return []
        events = []
        for path in sorted(spool.directory.glob("*.jsonl")):
            events.extend(orjson.loads(line) for line in read_segment(path) if line.strip())
        return events


def default_test_config(postgres: Any, tmp_dir: Path, **overrides: Any) -> dict[str, Any]:
    """A config fronting a ThrowawayPostgres as resource ``orders-prod`` on free ports."""
    os.environ["WARDGATE_TEST_ORDERS_PASSWORD"] = postgres.service_password
    config: dict[str, Any] = {
        "listeners": [{"protocol": "postgres", "address": "127.0.0.1:0"}],
        "control": {"address": "127.0.0.1:0"},
        "state_dir": str(tmp_dir / "state"),
        "dev_issuer": {"enabled": True},
        "resources": {
            "orders-prod": {
                "protocol": "postgres", "host": postgres.host, "port": postgres.port,
                "database": "orders", "username": "wardgate_svc",
                "password": "env://WARDGATE_TEST_ORDERS_PASSWORD",
            }
        },
        "audit": {"sink": f"file://{tmp_dir / 'audit'}"},
    }
    config.update(overrides)
    return config


class CollectingTransport:
    """A transport for :func:`relay_without_sockets` that keeps what the relay writes (``data``)."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    def is_closing(self) -> bool:
        return False

    def close(self) -> None: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...


def relay_frontend(recorder: Any, *, name: str = "bench") -> Any:
    """One gateway's PostgreSQL front end (allow-all policy, metrics) recording to ``recorder``:
    the sessions of :func:`relay_without_sockets` share it, as a server's sessions share theirs."""
    core = DecisionCore(verifier=None, policy=AllowAll(), recorder=recorder, gateway_id=name,
                        observer=GatewayMetrics())
    return PostgresFrontend(core, {}, ssl_context=None, allow_plaintext_token_on_loopback=True)


def relay_without_sockets(recorder: Any, client_transport: Any, backend_transport: Any, *,
                          name: str = "bench", frontend: Any = None) -> Any:
    """A PostgreSQL ``ClientConnection`` already relaying (authenticated as ``name``, allow-all
    policy), wired to the given fake transports instead of sockets: feed it with ``data_received``
    (client bytes) and ``_from_backend`` (backend bytes). For ``bench/pg_hotpath.py`` and the relay's
    differential tests; ``recorder`` must be started on the running loop. Without ``frontend`` (see
    :func:`relay_frontend`), the connection gets a gateway of its own."""
    if frontend is None:
        frontend = relay_frontend(recorder, name=name)
    core = frontend.core
    connection = ClientConnection(frontend)
    connection.transport = client_transport
    connection.backend = SimpleNamespace(transport=backend_transport)
    connection.session = core.open_session(protocol="postgres", resource=name, peer=name, tls=False, client={})
    connection.session.principal = Principal("https://issuer.example", name)
    connection._relaying = True
    return connection
