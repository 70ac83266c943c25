"""Fixtures for the approval flow: real embedded backends and a real token issuer on loopback (the HTTP
receiver for notifications, ``receiver``, comes from ``cloud_fixtures``)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from approvals_helpers import Clock, roles_of
from wardgate.adapters.local import MemoryQueue, SqliteDecisionStore
from wardgate.approvals.service import ApprovalService
from wardgate.core.devissuer import DevIssuer
from wardgate.core.identity import TokenVerifier
from wardgate_testkit import LoopbackJson


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


@pytest.fixture(scope="session")
def dev_issuer(tmp_path_factory) -> Iterator[DevIssuer]:
    """The dev issuer, its discovery document and JWKS served over HTTP on a free loopback port."""
    documents = {}
    server = LoopbackJson(lambda method, path, body: (200, documents[path]()) if path in documents else (404, None))
    issuer = DevIssuer(tmp_path_factory.mktemp("issuer"), f"{server.url}/dev-issuer")
    documents.update({"/dev-issuer/.well-known/openid-configuration": issuer.discovery, "/dev-issuer/jwks": issuer.jwks})
    try:
        yield issuer
    finally:
        server.close()


@pytest.fixture(scope="session")
def verifier(dev_issuer) -> TokenVerifier:
    return TokenVerifier([dev_issuer.issuer_config()])
