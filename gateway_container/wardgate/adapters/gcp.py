"""Google Cloud backends for the core's ports (see wardgate.adapters).

URL forms (every one takes ``?timeout=SECONDS``, default 10: the budget for one operation including
the SDK's retries, so a dead endpoint fails within it instead of hanging):

- ``pubsub://PROJECT/TOPIC?subscription=SUB[&dead_letter_subscription=DLSUB][&visibility=SECONDS]``
  publishes to TOPIC and pulls from SUB. The subscription's ack deadline is the visibility timeout
  (``visibility`` overrides it per received message). SUB must have a dead-letter policy: its
  ``max_delivery_attempts`` is ``max_receives``; ``receive_count`` is Pub/Sub's ``delivery_attempt``.
  ``dead_letters()`` peeks DLSUB, by default the subscription on the dead-letter topic.
- ``firestore://PROJECT/COLLECTION[?database=(default)]``: one document per key; ``create`` is
  Firestore's ``create()`` (a precondition that the document does not exist).
- ``gs://BUCKET[/PREFIX][?worm=off]``: objects created with ``if_generation_match=0``; the bucket
  must have a retention policy unless ``worm=off`` (for an emulator that lacks them).
- ``gcpkms://projects/P/locations/L/keyRings/R/cryptoKeys/K/cryptoKeyVersions/V``: an
  ``EC_SIGN_P256_SHA256`` (or ``EC_SIGN_ED25519``) key version.
- ``gcp-sm://projects/P/secrets/S[/versions/V]`` (default ``latest``): a Secret Manager secret.
- ``cloudsql-iam://PROJECT:REGION:INSTANCE``: Cloud SQL IAM database authentication.

Identity is always the ambient one (``google.auth.default()``: workload identity, the metadata
server, ``GOOGLE_APPLICATION_CREDENTIALS``), never a key in a URL. Emulators are reached through the
SDKs' own variables ``PUBSUB_EMULATOR_HOST``, ``FIRESTORE_EMULATOR_HOST``, ``STORAGE_EMULATOR_HOST``;
Cloud KMS and Secret Manager have no emulator and no such convention, so wardgate reads
``WARDGATE_KMS_EMULATOR_HOST`` and ``WARDGATE_SECRETMANAGER_EMULATOR_HOST`` (host:port of a plaintext
gRPC endpoint, e.g. ``wardgate.devtools.localcloud.gcp_fakes``).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import threading
import time
import uuid
from typing import Any, Callable, Mapping, TypeVar
from urllib.parse import ParseResult, parse_qs, unquote, urlparse

import google.auth
import google.auth.transport.requests
import google_crc32c
import grpc
from google.api_core import exceptions as api_exceptions
from google.api_core.retry import Retry
from google.auth import exceptions as auth_exceptions
from google.auth.credentials import AnonymousCredentials
from google.auth.credentials import Credentials as GoogleCredentials

from wardgate.core.credentials import Credential, CredentialError, credential_from_secret_text
from wardgate.core.integrity import ALGORITHM_ECDSA_P256, ALGORITHM_ED25519, load_public_key, public_key_id
from wardgate.core.ports import ObjectExists, QueueMessage, StoreUnavailable

KMS_EMULATOR_ENV = "WARDGATE_KMS_EMULATOR_HOST"
SECRETMANAGER_EMULATOR_ENV = "WARDGATE_SECRETMANAGER_EMULATOR_HOST"
CLOUDSQL_LOGIN_SCOPE = "https://www.googleapis.com/auth/sqlservice.login"
DEFAULT_TIMEOUT = 10.0

# Network and service failures: everything that is "could not do it", as opposed to a logical answer.
_UNAVAILABLE = (api_exceptions.GoogleAPIError, auth_exceptions.GoogleAuthError, OSError)
_T = TypeVar("_T")


def _query(url: str) -> dict[str, str]:
    return {key: values[-1] for key, values in parse_qs(urlparse(url).query, keep_blank_values=True).items()}


def _parse(url: str, scheme: str) -> tuple[ParseResult, dict[str, str]]:
    """``url`` split, and its query (last value of each key); a URL of another scheme is refused."""
    parsed = urlparse(url)
    if parsed.scheme != scheme:
        raise ValueError(f"{url!r}: not a {scheme}:// URL")
    return parsed, _query(url)


def _timeout(url: str, query: Mapping[str, str]) -> float:
    raw = query.get("timeout", str(DEFAULT_TIMEOUT))
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{url!r}: timeout {raw!r} is not a number of seconds") from None
    if not 0 < value <= 600:
        raise ValueError(f"{url!r}: timeout {raw!r} must be between 0 and 600 seconds")
    return value


def _retry(budget: float) -> Retry:
    # Transient errors (UNAVAILABLE, 429, 5xx) are retried with backoff, but never past the budget.
    return Retry(initial=0.1, maximum=1.0, multiplier=2.0, timeout=budget)


def _crc32c(data: bytes) -> int:
    return google_crc32c.value(data)


def _grpc_emulator_transport(transport_class: type, variable: str) -> Any | None:
    """A plaintext transport to the endpoint named by ``variable``, or None for the real service."""
    host = os.environ.get(variable)
    return transport_class(channel=grpc.insecure_channel(host)) if host else None


def _resource_name(url: str, scheme: str, labels: tuple[str, ...], optional_tail: int = 0) -> list[str]:
    """Split ``scheme://label1/v1/label2/v2…`` into its values, naming the first wrong part.

    The last ``optional_tail`` label/value pairs may be absent (None is returned in their place)."""
    if not url.startswith(f"{scheme}://"):
        raise ValueError(f"{url!r}: not a {scheme}:// URL")
    parts = url[len(scheme) + 3:].split("?")[0].split("/")
    values: list[str] = []
    for index, label in enumerate(labels):
        position = 2 * index
        if position >= len(parts) and index >= len(labels) - optional_tail:
            values.append(None)  # type: ignore[arg-type]
            continue
        if position >= len(parts) or parts[position] != label:
            raise ValueError(f"{url!r}: expected {label}/… at part {position + 1} "
                             f"({scheme}://{'/'.join(f'{l}/…' for l in labels)})")
        if position + 1 >= len(parts) or not parts[position + 1]:
            raise ValueError(f"{url!r}: missing {label} name")
        values.append(parts[position + 1])
    if len(parts) > 2 * len(labels):
        raise ValueError(f"{url!r}: unexpected trailing part {'/'.join(parts[2 * len(labels):])!r}")
    return values


class _Lazy:
    """Build an SDK client on first use, once, under a lock (adapters are shared between threads)."""

    def __init__(self, factory: Callable[[], _T]):
        self._factory = factory
        self._value: Any = None
        self._lock = threading.Lock()

    def get(self) -> Any:
        if self._value is None:
            with self._lock:
                if self._value is None:
                    self._value = self._factory()
        return self._value


# --------------------------------------------------------------------------------------------- Pub/Sub

_PUBSUB_NAME = re.compile(r"[A-Za-z][A-Za-z0-9\-_.~+%]{2,254}")
DEAD_LETTER_COUNT_ATTRIBUTE = "CloudPubSubDeadLetterSourceDeliveryCount"


class PubSubQueue:
    """A Pub/Sub topic and pull subscription as an at-least-once queue with a dead-letter topic."""

    def __init__(self, url: str):
        parsed, query = _parse(url, "pubsub")
        self.url = url
        project, topic = parsed.netloc, parsed.path.strip("/")
        if not project:
            raise ValueError(f"{url!r}: missing project (pubsub://PROJECT/TOPIC?subscription=SUB)")
        if not topic:
            raise ValueError(f"{url!r}: missing topic (pubsub://PROJECT/TOPIC?subscription=SUB)")
        subscription = query.get("subscription", "")
        if not subscription:
            raise ValueError(f"{url!r}: missing ?subscription=SUB")
        dead_subscription = query.get("dead_letter_subscription")
        for what, name in (("topic", topic), ("subscription", subscription),
                           ("dead_letter_subscription", dead_subscription)):
            if name is not None and not _PUBSUB_NAME.fullmatch(name):
                raise ValueError(f"{url!r}: invalid {what} name {name!r} (3-255 characters, starting with a letter)")
        self.visibility: int | None = None
        if "visibility" in query:
            try:
                self.visibility = int(query["visibility"])
            except ValueError:
                raise ValueError(f"{url!r}: visibility {query['visibility']!r} is not whole seconds") from None
            if not 0 <= self.visibility <= 600:
                raise ValueError(f"{url!r}: visibility must be 0..600 seconds (Pub/Sub's ack deadline range)")
        self.timeout = _timeout(url, query)
        self.topic_path = f"projects/{project}/topics/{topic}"
        self.subscription_path = f"projects/{project}/subscriptions/{subscription}"
        self._dead_subscription_path = (f"projects/{project}/subscriptions/{dead_subscription}"
                                        if dead_subscription else None)
        self._retry = _retry(self.timeout)
        self._publisher = _Lazy(self._make_publisher)
        self._subscriber = _Lazy(self._make_subscriber)
        self._dead_letter_topic: str | None = None

    @staticmethod
    def _credentials() -> dict[str, Any]:
        # The GAPIC clients open a plaintext channel to PUBSUB_EMULATOR_HOST themselves; they only need
        # to be kept from looking for ambient credentials the emulator does not want.
        return {"credentials": AnonymousCredentials()} if os.environ.get("PUBSUB_EMULATOR_HOST") else {}

    def _make_publisher(self) -> Any:
        from google import pubsub_v1

        return pubsub_v1.PublisherClient(**self._credentials())

    def _make_subscriber(self) -> Any:
        from google import pubsub_v1

        return pubsub_v1.SubscriberClient(**self._credentials())

    def _call(self, what: str, action: Callable[[], _T]) -> _T:
        try:
            return action()
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"queue {self.url}: {what} failed: {exc}") from exc

    def _require_dead_letter_topic(self) -> str:
        """The subscription's dead-letter topic; a queue without one is refused (poison would loop)."""
        if self._dead_letter_topic is None:
            subscription = self._call("reading the subscription", lambda: self._subscriber.get().get_subscription(
                subscription=self.subscription_path, timeout=self.timeout, retry=self._retry))
            topic = subscription.dead_letter_policy.dead_letter_topic
            if not topic:
                raise StoreUnavailable(f"queue {self.url}: subscription {self.subscription_path} has no dead-letter "
                                       "policy, so a poison message would be redelivered forever; configure one")
            self._dead_letter_topic = topic
        return self._dead_letter_topic

    def send(self, body: bytes, attributes: Mapping[str, str] | None = None) -> str:
        from google.pubsub_v1 import PubsubMessage

        message = PubsubMessage(data=bytes(body), attributes=dict(attributes or {}))
        response = self._call("publish", lambda: self._publisher.get().publish(
            topic=self.topic_path, messages=[message], timeout=self.timeout, retry=self._retry))
        return response.message_ids[0]

    def _pull(self, subscription: str, max_messages: int, wait: float) -> list[Any]:
        """One synchronous pull; an empty answer (or the server's deadline) is no messages."""
        def pull() -> list[Any]:
            try:
                response = self._subscriber.get().pull(
                    subscription=subscription, max_messages=max_messages,
                    # return_immediately is discouraged for consumers that wait, but it is the only way
                    # to honour wait_seconds=0 (the service would otherwise hold the call open).
                    return_immediately=wait <= 0, timeout=max(wait, 1.0) if wait > 0 else self.timeout,
                    retry=self._retry)
            except api_exceptions.DeadlineExceeded:
                return []
            return list(response.received_messages)

        return self._call("pull", pull)

    def receive(self, max_messages: int = 10, wait_seconds: float = 0.0) -> list[QueueMessage]:
        self._require_dead_letter_topic()
        deadline = time.monotonic() + wait_seconds
        while True:
            received = self._pull(self.subscription_path, max_messages, deadline - time.monotonic())
            if received or time.monotonic() >= deadline:
                break
        if received and self.visibility is not None:
            self._call("setting the visibility timeout", lambda: self._subscriber.get().modify_ack_deadline(
                subscription=self.subscription_path, ack_ids=[m.ack_id for m in received],
                ack_deadline_seconds=self.visibility, timeout=self.timeout, retry=self._retry))
        # delivery_attempt is filled in because the subscription has a dead-letter policy (checked above).
        return [QueueMessage(m.message.message_id, bytes(m.message.data), m.ack_id, max(m.delivery_attempt, 1),
                             dict(m.message.attributes)) for m in received]

    def ack(self, message: QueueMessage) -> None:
        self._call("acknowledge", lambda: self._subscriber.get().acknowledge(
            subscription=self.subscription_path, ack_ids=[message.receipt], timeout=self.timeout, retry=self._retry))

    def _dead_letter_subscription(self) -> str:
        if self._dead_subscription_path is None:
            topic = self._require_dead_letter_topic()
            names = self._call("listing dead-letter subscriptions", lambda: list(
                self._publisher.get().list_topic_subscriptions(topic=topic, timeout=self.timeout,
                                                               retry=self._retry)))
            if not names:
                raise StoreUnavailable(f"queue {self.url}: dead-letter topic {topic} has no subscription, so dead "
                                       "letters are dropped; create one (or name it with ?dead_letter_subscription=)")
            self._dead_subscription_path = sorted(names)[0]
        return self._dead_subscription_path

    def dead_letters(self, max_messages: int = 10) -> list[QueueMessage]:
        """Peek: pull from the dead-letter subscription, then release the lease at once."""
        subscription = self._dead_letter_subscription()
        received = self._pull(subscription, max_messages, 1.0)
        if received:
            self._call("releasing dead letters", lambda: self._subscriber.get().modify_ack_deadline(
                subscription=subscription, ack_ids=[m.ack_id for m in received], ack_deadline_seconds=0,
                timeout=self.timeout, retry=self._retry))
        return [QueueMessage(m.message.message_id, bytes(m.message.data), "",
                             int(m.message.attributes.get(DEAD_LETTER_COUNT_ATTRIBUTE, "0")),
                             dict(m.message.attributes)) for m in received]


# ------------------------------------------------------------------------------------------- Firestore

_KEY_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-")


def firestore_document_id(key: str) -> str:
    """A reversible document id for a key: every byte outside ``[A-Za-z0-9-]`` becomes ``%XX``.

    Document ids may not contain ``/``, be ``.`` or ``..``, or look like ``__x__``; escaping ``.``
    and ``_`` as well rules all three out. ``urllib.parse.unquote`` reverses it."""
    return "".join(chr(b) if b in _KEY_SAFE else f"%{b:02X}" for b in key.encode())


class FirestoreDecisionStore:
    """Create-once records in a Firestore collection: the document's existence is the decision."""

    def __init__(self, url: str):
        parsed, query = _parse(url, "firestore")
        self.url = url
        self.project, self.collection = parsed.netloc, parsed.path.strip("/")
        if not self.project:
            raise ValueError(f"{url!r}: missing project (firestore://PROJECT/COLLECTION)")
        if not self.collection:
            raise ValueError(f"{url!r}: missing collection (firestore://PROJECT/COLLECTION)")
        if "/" in self.collection or self.collection.startswith("__"):
            raise ValueError(f"{url!r}: collection {self.collection!r} must be one top-level collection id")
        self.database = query.get("database", "(default)") or "(default)"
        self.timeout = _timeout(url, query)
        self._retry = _retry(self.timeout)
        self._client = _Lazy(self._make_client)

    def _make_client(self) -> Any:
        from google.cloud import firestore  # FIRESTORE_EMULATOR_HOST is honoured by the client itself

        return firestore.Client(project=self.project, database=self.database)

    def _document(self, key: str) -> Any:
        if not key:
            raise ValueError("decision store key is empty")
        document_id = firestore_document_id(key)
        if len(document_id.encode()) > 1500:
            raise ValueError(f"decision store key {key[:60]!r}… is too long for a Firestore document id")
        return self._client.get().collection(self.collection).document(document_id)

    def _call(self, what: str, action: Callable[[], _T]) -> _T:
        try:
            return action()
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"decision store {self.url}: {what} failed: {exc}") from exc

    def create(self, key: str, record: Mapping[str, Any]) -> bool:
        from google.cloud import firestore

        document = self._document(key)
        # A retried create whose first attempt landed meets its own document: the writer token tells
        # "I created it" from "someone else did", so a retry never turns a win into a loss.
        writer = uuid.uuid4().hex
        fields = {"key": key, "record": json.dumps(dict(record), sort_keys=True), "writer": writer,
                  "created": firestore.SERVER_TIMESTAMP}
        try:
            self._call("create", lambda: document.create(fields, retry=self._retry, timeout=self.timeout))
            return True
        except StoreUnavailable as exc:
            if not isinstance(exc.__cause__, api_exceptions.Conflict):
                raise
        existing = self._call("read after conflict", lambda: document.get(retry=self._retry, timeout=self.timeout))
        return existing.exists and existing.get("writer") == writer

    def get(self, key: str) -> dict[str, Any] | None:
        document = self._document(key)
        snapshot = self._call("get", lambda: document.get(retry=self._retry, timeout=self.timeout))
        return json.loads(snapshot.get("record")) if snapshot.exists else None

    def list(self, prefix: str) -> list[tuple[str, dict[str, Any]]]:
        from google.cloud.firestore import FieldFilter

        # Range on the stored key (Firestore orders strings by UTF-8 bytes, i.e. by code point).
        query = (self._client.get().collection(self.collection)
                 .where(filter=FieldFilter("key", ">=", prefix))
                 .where(filter=FieldFilter("key", "<", prefix + "\U0010ffff")))
        snapshots = self._call("list", lambda: list(query.stream(retry=self._retry, timeout=self.timeout)))
        return sorted(((s.get("key"), json.loads(s.get("record"))) for s in snapshots), key=lambda item: item[0])


# ------------------------------------------------------------------------------------------------- GCS

_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]")


class GcsObjectStore:
    """Write-once objects in a GCS bucket that has a retention policy (checked before the first put)."""

    def __init__(self, url: str):
        parsed, query = _parse(url, "gs")
        self.url = url
        self.bucket_name = parsed.netloc
        if not self.bucket_name:
            raise ValueError(f"{url!r}: missing bucket (gs://BUCKET/PREFIX)")
        if not _BUCKET_NAME.fullmatch(self.bucket_name):
            raise ValueError(f"{url!r}: invalid bucket name {self.bucket_name!r}")
        prefix = unquote(parsed.path).strip("/")
        self.prefix = f"{prefix}/" if prefix else ""
        worm = query.get("worm", "on")
        if worm not in ("on", "off"):
            raise ValueError(f"{url!r}: worm must be 'on' or 'off', not {worm!r}")
        self.require_retention = worm == "on"
        self.timeout = _timeout(url, query)
        self._client = _Lazy(self._make_client)
        self._write_once_checked = False

    def _make_client(self) -> Any:
        from google.cloud import storage  # STORAGE_EMULATOR_HOST is honoured by the client itself

        return storage.Client()

    @property
    def _retry(self) -> Any:
        from google.cloud.storage.retry import DEFAULT_RETRY

        # The storage predicate also covers connection errors; the budget bounds it.
        return DEFAULT_RETRY.with_timeout(self.timeout)

    def _call(self, what: str, action: Callable[[], _T]) -> _T:
        try:
            return action()
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"object store {self.url}: {what} failed: {exc}") from exc

    def _blob(self, key: str) -> Any:
        if not key or key.startswith("/"):
            raise ValueError(f"object key {key!r} must be a non-empty relative name")
        return self._client.get().bucket(self.bucket_name).blob(self.prefix + key)

    def _require_write_once(self) -> None:
        if self._write_once_checked or not self.require_retention:
            return
        try:
            bucket = self._call("reading the bucket", lambda: self._client.get().get_bucket(
                self.bucket_name, timeout=self.timeout, retry=self._retry))
        except StoreUnavailable as exc:
            if isinstance(exc.__cause__, api_exceptions.NotFound):
                raise StoreUnavailable(f"object store {self.url}: bucket {self.bucket_name} does not exist") from None
            raise
        if not bucket.retention_period:
            raise StoreUnavailable(
                f"object store {self.url}: bucket {self.bucket_name} has no retention policy, so its objects could "
                "be deleted or replaced; set one (and lock it), or add ?worm=off for an emulator that lacks them")
        self._write_once_checked = True

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        self._require_write_once()
        blob = self._blob(key)
        # Shipping is retried after crashes: look first, so a segment already there is not sent again.
        existing = self._existing(blob)
        if existing is None:
            try:
                # if_generation_match=0 is GCS's create-only precondition: the service refuses (412) when
                # any live generation exists, so two writers cannot both succeed.
                self._call("upload", lambda: blob.upload_from_string(
                    bytes(data), content_type=content_type, if_generation_match=0,
                    timeout=self.timeout, retry=self._retry))
                return
            except StoreUnavailable as exc:
                if not isinstance(exc.__cause__, api_exceptions.PreconditionFailed):
                    raise
            existing = self._existing(blob)
        if existing != bytes(data):
            raise ObjectExists(f"{self.url}/{key} exists with different content")

    def _existing(self, blob: Any) -> bytes | None:
        try:
            return self._call("download", lambda: blob.download_as_bytes(timeout=self.timeout, retry=self._retry))
        except StoreUnavailable as exc:
            if isinstance(exc.__cause__, api_exceptions.NotFound):
                return None
            raise

    def get(self, key: str) -> bytes:
        data = self._existing(self._blob(key))
        if data is None:
            raise KeyError(key)
        return data

    def list(self, prefix: str = "") -> list[str]:
        client = self._client.get()
        names = self._call("list", lambda: [blob.name for blob in client.list_blobs(
            self.bucket_name, prefix=self.prefix + prefix, timeout=self.timeout, retry=self._retry)])
        return sorted(name[len(self.prefix):] for name in names)


# ------------------------------------------------------------------------------------------- Cloud KMS

_KMS_LABELS = ("projects", "locations", "keyRings", "cryptoKeys", "cryptoKeyVersions")


class CloudKmsSigner:
    """Signs audit digests with a Cloud KMS asymmetric key version; the private key never leaves KMS.

    The public key is fetched once at construction (so a wrong or unreachable key fails at start-up),
    and every signature is checked against it before it is returned."""

    def __init__(self, url: str, *, client: Any | None = None):
        _resource_name(url, "gcpkms", _KMS_LABELS)
        self.url = url
        self.name = url.split("?")[0][len("gcpkms://"):]
        self.timeout = _timeout(url, _query(url))
        self._retry = _retry(self.timeout)
        self._client = client or self._make_client()
        self._public_key_pem, self.algorithm = self._fetch_public_key()
        self._public_key = load_public_key(self._public_key_pem)
        self.key_id = public_key_id(self._public_key)

    @staticmethod
    def _make_client() -> Any:
        from google.cloud import kms_v1
        from google.cloud.kms_v1.services.key_management_service.transports import KeyManagementServiceGrpcTransport

        transport = _grpc_emulator_transport(KeyManagementServiceGrpcTransport, KMS_EMULATOR_ENV)
        return kms_v1.KeyManagementServiceClient(transport=transport) if transport else \
            kms_v1.KeyManagementServiceClient()

    def _call(self, what: str, action: Callable[[], _T]) -> _T:
        try:
            return action()
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"signer {self.url}: {what} failed: {exc}") from exc

    def _fetch_public_key(self) -> tuple[bytes, str]:
        from google.cloud.kms_v1 import CryptoKeyVersion

        response = self._call("GetPublicKey", lambda: self._client.get_public_key(
            name=self.name, timeout=self.timeout, retry=self._retry))
        pem = response.pem.encode()
        if response.pem_crc32c is not None and response.pem_crc32c != _crc32c(pem):
            raise StoreUnavailable(f"signer {self.url}: public key corrupted in transit (CRC32C mismatch)")
        algorithms = CryptoKeyVersion.CryptoKeyVersionAlgorithm
        if response.algorithm == algorithms.EC_SIGN_P256_SHA256:
            return pem, ALGORITHM_ECDSA_P256
        if response.algorithm == algorithms.EC_SIGN_ED25519:
            return pem, ALGORITHM_ED25519
        raise ValueError(f"signer {self.url}: key algorithm {response.algorithm.name} is not supported "
                         "(use EC_SIGN_P256_SHA256 or EC_SIGN_ED25519)")

    def sign(self, data: bytes) -> bytes:
        if self.algorithm == ALGORITHM_ECDSA_P256:
            digest = hashlib.sha256(data).digest()
            request = {"name": self.name, "digest": {"sha256": digest}, "digest_crc32c": _crc32c(digest)}
            verified_field = "verified_digest_crc32c"
        else:  # Ed25519 signs the message itself
            request = {"name": self.name, "data": bytes(data), "data_crc32c": _crc32c(data)}
            verified_field = "verified_data_crc32c"
        response = self._call("AsymmetricSign", lambda: self._client.asymmetric_sign(
            request=request, timeout=self.timeout, retry=self._retry))
        # Cloud KMS' documented end-to-end integrity checks: it saw our bytes, we got its signature.
        if not getattr(response, verified_field) or response.name != self.name:
            raise StoreUnavailable(f"signer {self.url}: KMS did not confirm the request it signed")
        if response.signature_crc32c != _crc32c(response.signature):
            raise StoreUnavailable(f"signer {self.url}: signature corrupted in transit (CRC32C mismatch)")
        self._verify_own_signature(data, bytes(response.signature))
        return bytes(response.signature)

    def _verify_own_signature(self, data: bytes, signature: bytes) -> None:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec

        try:
            if self.algorithm == ALGORITHM_ECDSA_P256:
                self._public_key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
            else:
                self._public_key.verify(signature, data)
        except InvalidSignature:
            raise StoreUnavailable(f"signer {self.url}: KMS returned a signature its public key does not verify") \
                from None

    def public_key_pem(self) -> bytes:
        return self._public_key_pem


# ------------------------------------------------------------------------------------- Secret Manager


class SecretManagerSource:
    """The backend credential from a Secret Manager secret version (JSON ``{username, password}`` or a
    bare password); read on every fetch, so a new version is picked up at the broker's next refresh."""

    def __init__(self, url: str, username: str, *, client: Any | None = None):
        project, secret, version = _resource_name(url, "gcp-sm", ("projects", "secrets", "versions"), optional_tail=1)
        self.url = url
        self.username = username
        self.name = f"projects/{project}/secrets/{secret}/versions/{version or 'latest'}"
        self.timeout = _timeout(url, _query(url))
        self._retry = _retry(self.timeout)
        self._client = _Lazy(lambda: client or self._make_client())

    @staticmethod
    def _make_client() -> Any:
        from google.cloud import secretmanager_v1
        from google.cloud.secretmanager_v1.services.secret_manager_service.transports import (
            SecretManagerServiceGrpcTransport)

        transport = _grpc_emulator_transport(SecretManagerServiceGrpcTransport, SECRETMANAGER_EMULATOR_ENV)
        return secretmanager_v1.SecretManagerServiceClient(transport=transport) if transport else \
            secretmanager_v1.SecretManagerServiceClient()

    def fetch(self) -> Credential:
        try:
            response = self._client.get().access_secret_version(name=self.name, timeout=self.timeout,
                                                                retry=self._retry)
        except api_exceptions.NotFound:
            raise CredentialError(f"secret {self.url}: no such secret or version") from None
        except api_exceptions.PermissionDenied:
            raise CredentialError(f"secret {self.url}: permission denied (the gateway's identity needs "
                                  "roles/secretmanager.secretAccessor)") from None
        except api_exceptions.FailedPrecondition as exc:
            raise CredentialError(f"secret {self.url}: version not usable ({exc.message})") from None
        except _UNAVAILABLE as exc:
            raise CredentialError(f"secret {self.url}: Secret Manager unavailable: {exc}") from None
        data = bytes(response.payload.data)
        if "data_crc32c" in response.payload and response.payload.data_crc32c != _crc32c(data):
            raise CredentialError(f"secret {self.url}: payload corrupted in transit (CRC32C mismatch)")
        try:
            text = data.decode()
        except UnicodeDecodeError:
            raise CredentialError(f"secret {self.url}: payload is not UTF-8 text") from None
        return credential_from_secret_text(text, self.username, source=self.url)


# ---------------------------------------------------------------------------------- Cloud SQL IAM auth


class _BoundedRequest(google.auth.transport.requests.Request):
    """google-auth's HTTP transport with a ceiling on every call's timeout (its default is 120 s)."""

    def __init__(self, ceiling: float):
        super().__init__()
        self._ceiling = ceiling

    def __call__(self, url: str, method: str = "GET", body: Any = None, headers: Any = None,
                 timeout: float | None = None, **kwargs: Any) -> Any:
        timeout = self._ceiling if timeout is None else min(timeout, self._ceiling)
        return super().__call__(url, method=method, body=body, headers=headers, timeout=timeout, **kwargs)


class CloudSqlIamSource:
    """IAM database authentication for Cloud SQL: the password is the gateway identity's OAuth2 access
    token (scope ``sqlservice.login``), valid about an hour; ``expires_at`` tells the broker when to
    fetch again. The username is the IAM database user (for a service account on PostgreSQL,
    ``NAME@PROJECT.iam`` without ``.gserviceaccount.com``).

    The Cloud SQL Python Connector does the same token exchange for the drivers it wraps (pg8000,
    asyncpg…); the gateway speaks the PostgreSQL wire protocol itself, so it only needs the token, and
    reaches the instance over its private IP (or the Auth Proxy) with TLS verify-full. The instance
    name in the URL identifies the resource in messages; the token is the principal's, not the
    instance's."""

    def __init__(self, url: str, username: str, *, credentials: GoogleCredentials | None = None,
                 timeout: float = DEFAULT_TIMEOUT):
        parsed, _ = _parse(url, "cloudsql-iam")
        parts = parsed.netloc.split(":")
        if len(parts) != 3 or not all(parts):
            raise ValueError(f"{url!r}: expected cloudsql-iam://PROJECT:REGION:INSTANCE (the instance connection "
                             "name)")
        if parsed.path.strip("/"):
            raise ValueError(f"{url!r}: unexpected path {parsed.path!r} after the instance connection name")
        if not username:
            raise ValueError(f"{url!r}: the IAM database user name is required")
        if username.endswith(".gserviceaccount.com"):
            raise ValueError(f"{url!r}: Cloud SQL for PostgreSQL names service-account users without "
                             f"'.gserviceaccount.com': use {username.removesuffix('.gserviceaccount.com')!r}")
        self.url = url
        self.instance_connection_name = parsed.netloc
        self.username = username
        self.timeout = timeout
        self._credentials = credentials
        self._lock = threading.Lock()

    def _ambient_credentials(self) -> GoogleCredentials:
        if self._credentials is None:
            credentials, _project = google.auth.default(scopes=[CLOUDSQL_LOGIN_SCOPE])
            self._credentials = credentials
        return self._credentials

    def fetch(self) -> Credential:
        with self._lock:  # google.auth credentials are not safe to refresh from two threads at once
            try:
                credentials = self._ambient_credentials()
                if not credentials.valid:
                    credentials.refresh(_BoundedRequest(self.timeout))
            except (auth_exceptions.GoogleAuthError, OSError) as exc:
                raise CredentialError(f"{self.url}: cannot obtain an IAM access token: {exc}") from None
            token, expiry = credentials.token, credentials.expiry
        if not token:
            raise CredentialError(f"{self.url}: the identity produced no access token")
        # google-auth keeps expiry as naive UTC.
        expires_at = expiry.replace(tzinfo=datetime.timezone.utc).timestamp() if expiry else None
        return Credential(self.username, token, expires_at=expires_at)
