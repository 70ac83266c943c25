"""Fixtures for the approval flow: real embedded backends and a real token issuer on loopback (the HTTP
receiver for notifications, ``receiver``, comes from ``cloud_fixtures``)."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from approvals_helpers import Clock, roles_of
from wardgate.adapters.local import MemoryQueue, SqliteDecisionStore
from wardgate.approvals.service import ApprovalService
from wardgate.core.devissuer import DevIssuer
from wardgate.core.identity import TokenVerifier


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path) -> SqliteDecisionStore:
    return SqliteDecisionStore(f"sqlite:///{tmp_path}/decisions.db")


@pytest.fixture
def queue() -> MemoryQueue:
    # A unique name: MemoryQueue instances are per name per process.
    return MemoryQueue(f"memory://approvals-{uuid.uuid4().hex}?max_receives=3&visibility=0.2")


@pytest.fixture
def service(store, queue, clock) -> ApprovalService:
    return ApprovalService(store, queue, roles_of=roles_of, clock=clock)


# -- a real OIDC issuer on loopback ------------------------------------------------------------------


class _IssuerHandler(BaseHTTPRequestHandler):
    issuer: DevIssuer

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        documents = {"/dev-issuer/.well-known/openid-configuration": self.issuer.discovery(),
                     "/dev-issuer/jwks": self.issuer.jwks()}
        document = documents.get(self.path)
        body = json.dumps(document or {"error": "not found"}).encode()
        self.send_response(200 if document else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="session")
def dev_issuer(tmp_path_factory) -> Iterator[DevIssuer]:
    """The dev issuer, its discovery document and JWKS served over HTTP on a free loopback port."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _IssuerHandler)
    issuer = DevIssuer(tmp_path_factory.mktemp("issuer"), f"http://127.0.0.1:{server.server_port}/dev-issuer")
    _IssuerHandler.issuer = issuer
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield issuer
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="session")
def verifier(dev_issuer) -> TokenVerifier:
    return TokenVerifier([dev_issuer.issuer_config()])
