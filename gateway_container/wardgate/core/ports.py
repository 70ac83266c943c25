"""The narrow interfaces between the core and the places it keeps things.

The core decides; where its records live is a deployment choice made by URL in the configuration
(``wardgate.adapters`` maps a URL scheme to one small module per backend). The embedded default
(``wardgate.adapters.local``) needs no cloud; AWS, GCP and Azure adapters implement the same
interfaces with their SDKs. The core only ever sees these protocols, never an SDK.

Every method is synchronous and may block on the network: callers in the event loop run them in a
thread (``asyncio.to_thread``). Every failure to reach the backend raises :class:`StoreUnavailable`
with a message naming the URL, so the caller can fail closed and say why.

Signers (audit digests) are :class:`wardgate.core.integrity.Signer`; secret sources are
:class:`wardgate.core.credentials.CredentialSource`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, runtime_checkable


class StoreUnavailable(Exception):
    """The backend behind a port cannot be reached or refused the call (not a logical conflict)."""


class ObjectExists(Exception):
    """A create-once write found the key already holding different content."""


@dataclass(frozen=True)
class QueueMessage:
    """One received message. ``receipt`` is what :meth:`MessageQueue.ack` needs; ``receive_count`` is
    how many times it was delivered (1 on the first delivery), which decides when it is poison."""

    id: str
    body: bytes
    receipt: str
    receive_count: int = 1
    attributes: Mapping[str, str] = field(default_factory=dict)


@runtime_checkable
class MessageQueue(Protocol):
    """At-least-once queue with a dead-letter path (approval requests, notifications).

    A received message is invisible to other consumers until its visibility timeout passes; if it is
    not acknowledged it comes back with ``receive_count`` + 1, and after ``max_receives`` deliveries
    it moves to the dead-letter queue, where :meth:`dead_letters` shows it (never silently dropped).
    """

    url: str

    def send(self, body: bytes, attributes: Mapping[str, str] | None = None) -> str:
        """Enqueue ``body``; returns the message id."""
        ...

    def receive(self, max_messages: int = 10, wait_seconds: float = 0.0) -> list[QueueMessage]:
        """Up to ``max_messages`` messages, waiting up to ``wait_seconds`` for the first."""
        ...

    def ack(self, message: QueueMessage) -> None:
        """Delete a message that was handled."""
        ...

    def dead_letters(self, max_messages: int = 10) -> list[QueueMessage]:
        """Messages moved to the dead-letter queue (peeked or received; not acknowledged)."""
        ...


@runtime_checkable
class DecisionStore(Protocol):
    """Create-once records: approval requests, approver decisions, outcomes, access grants.

    Every state change of an approval is a new record under a new key, written with
    :meth:`create`, which succeeds for exactly one writer: "first write wins" is the store's
    guarantee (DynamoDB conditional put, Firestore/GCS create-if-absent, Azure Table insert, SQLite
    primary key), not a read-then-write race in the caller. Records are never updated or deleted.

    Keys are ``/``-separated paths of ``[A-Za-z0-9._:@-]`` parts (adapters encode them as their
    backend requires); records are JSON-compatible dicts.
    """

    url: str

    def create(self, key: str, record: Mapping[str, Any]) -> bool:
        """Store ``record`` under ``key`` unless the key exists. True if this call created it."""
        ...

    def get(self, key: str) -> dict[str, Any] | None:
        ...

    def list(self, prefix: str) -> list[tuple[str, dict[str, Any]]]:
        """Every (key, record) whose key starts with ``prefix``, sorted by key."""
        ...


@runtime_checkable
class ObjectStore(Protocol):
    """A write-once bucket (the audit archive and evidence packages).

    :meth:`put` creates an object that cannot be overwritten or deleted for the store's retention
    (S3 Object Lock, GCS retention policy, Azure immutability policy; read-only files locally).
    Putting identical bytes again is a no-op (shipping is retried after crashes); putting different
    bytes under an existing key raises :class:`ObjectExists`.
    """

    url: str

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        ...

    def get(self, key: str) -> bytes:
        """The object's bytes; ``KeyError`` when there is none."""
        ...

    def list(self, prefix: str = "") -> list[str]:
        """Keys starting with ``prefix``, sorted."""
        ...
