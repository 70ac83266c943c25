"""Azure backends for the core's ports (see ``wardgate.adapters``).

URL forms:

- ``azqueue://ACCOUNT/QUEUE?visibility=30&max_receives=5``: a Storage Queue. Messages are base64
  text (what the Azure Functions queue trigger decodes). A message delivered more than
  ``max_receives`` times is moved to ``QUEUE-poison`` (the Functions runtime's convention) by the next
  :meth:`StorageQueue.receive`; :meth:`StorageQueue.dead_letters` peeks that queue.
- ``aztable://ACCOUNT/TABLE``: the decision store, one entity per key. PartitionKey is the key's first
  segment, RowKey the whole key, both encoded by :func:`encode_table_key`.
- ``azblob://ACCOUNT/CONTAINER[/PREFIX][?worm=off]``: the write-once archive. The container must have
  an immutability policy or version-level immutability (WORM) unless ``worm=off`` (emulators only:
  Azurite implements neither).
- ``azurekv-key://VAULT/KEY[/VERSION]``: an EC P-256 Key Vault key signing with ES256.
- ``azure-kv://VAULT/SECRET``: a Key Vault secret holding a password or ``{"username","password"}``.
- ``azure-ad://?scope=https://ossrdbms-aad.database.windows.net/.default``: an Entra access token
  for Azure Database for PostgreSQL, used as the password.

Authentication is ``DefaultAzureCredential`` (workload / managed identity), never a key in a URL.
Endpoints are ``https://ACCOUNT.{queue,table,blob}.core.windows.net`` and
``https://VAULT.vault.azure.net``. For emulators (SDK convention and local cloud only):

- ``AZURE_STORAGE_CONNECTION_STRING``: when set, the storage clients use it (Azurite's well-known
  ``devstoreaccount1`` key with explicit ``BlobEndpoint=…;QueueEndpoint=…;TableEndpoint=…``); its
  ``AccountName`` must be the URL's account.
- ``WARDGATE_AZURE_KEYVAULT_URL_TEMPLATE`` (``https://127.0.0.1:PORT``, ``{vault}`` allowed in the
  host), ``WARDGATE_AZURE_KEYVAULT_CA_FILE`` (the emulator's CA) and ``WARDGATE_AZURE_KEYVAULT_TOKEN``
  (a static bearer token the emulator accepts, like Azurite's well-known key).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import logging
import os
import re
import time
from typing import Any, Mapping
from urllib.parse import parse_qs, urlparse

from azure.core.credentials import AccessToken, TokenCredential
from azure.core.exceptions import AzureError, ResourceExistsError, ResourceNotFoundError
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from wardgate.core.credentials import Credential, CredentialError, credential_from_secret_text
from wardgate.core.integrity import ALGORITHM_ECDSA_P256, public_key_id
from wardgate.core.ports import ObjectExists, QueueMessage, StoreUnavailable

log = logging.getLogger(__name__)

CONNECTION_STRING_ENV = "AZURE_STORAGE_CONNECTION_STRING"
KEYVAULT_URL_TEMPLATE_ENV = "WARDGATE_AZURE_KEYVAULT_URL_TEMPLATE"
KEYVAULT_CA_FILE_ENV = "WARDGATE_AZURE_KEYVAULT_CA_FILE"
KEYVAULT_TOKEN_ENV = "WARDGATE_AZURE_KEYVAULT_TOKEN"
POSTGRES_SCOPE = "https://ossrdbms-aad.database.windows.net/.default"
POISON_SUFFIX = "-poison"

# A dead endpoint must fail within seconds, not after the SDKs' default minutes of backoff.
_CONNECT_TIMEOUT = 5
_READ_TIMEOUT = 30
_RETRIES = 2

_ACCOUNT = re.compile(r"^[a-z0-9]{3,24}$")
_QUEUE = re.compile(r"^(?=.{3,56}$)[a-z0-9]+(-[a-z0-9]+)*$")  # 56: room for "-poison"
_TABLE = re.compile(r"^[A-Za-z][A-Za-z0-9]{2,62}$")
_CONTAINER = re.compile(r"^(?=.{3,63}$)[a-z0-9]+(-[a-z0-9]+)*$")
_VAULT = re.compile(r"^[A-Za-z][A-Za-z0-9-]{1,22}[A-Za-z0-9]$")
_VAULT_OBJECT = re.compile(r"^[A-Za-z0-9-]{1,127}$")
_VERSION = re.compile(r"^[A-Za-z0-9]{1,64}$")


# ---------------------------------------------------------------------------------------------
# URL parsing and client construction


def _split(url: str, scheme: str, allowed_query: set[str]) -> tuple[str, list[str], dict[str, str]]:
    """(host, path segments, query) of ``scheme://HOST/a/b?k=v``; unknown parameters are errors."""
    parsed = urlparse(url)
    if parsed.scheme != scheme:
        raise ValueError(f"{url!r}: expected a {scheme}:// URL")
    query = {k: v[-1] for k, v in parse_qs(parsed.query, keep_blank_values=True).items()}
    unknown = sorted(set(query) - allowed_query)
    if unknown:
        raise ValueError(f"{scheme}://: unknown parameter(s) {', '.join(unknown)} in {url!r}")
    return parsed.netloc, [part for part in parsed.path.split("/") if part], query


def _check(pattern: re.Pattern[str], value: str, scheme: str, what: str, rule: str) -> str:
    if not value:
        raise ValueError(f"{scheme}://: missing {what}")
    if not pattern.match(value):
        raise ValueError(f"{scheme}://: invalid {what} {value!r} ({rule})")
    return value


def _positive_int(query: dict[str, str], name: str, default: int, scheme: str, maximum: int) -> int:
    raw = query.get(name, str(default))
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{scheme}://: {name}={raw!r} is not an integer") from None
    if not 1 <= value <= maximum:
        raise ValueError(f"{scheme}://: {name}={value} must be between 1 and {maximum}")
    return value


def _connection_string(account: str, scheme: str) -> str | None:
    """The emulator connection string, if the environment names one for this account."""
    text = os.environ.get(CONNECTION_STRING_ENV)
    if not text:
        return None
    fields = dict(part.split("=", 1) for part in text.split(";") if "=" in part)
    named = fields.get("AccountName")
    if named != account:
        # Writing to another account than the URL names would put records where nobody looks.
        raise ValueError(f"{scheme}://{account}: {CONNECTION_STRING_ENV} is for account {named!r}")
    return text


@functools.lru_cache(maxsize=1)
def _default_credential() -> TokenCredential:
    """One DefaultAzureCredential per process, so every client shares its token cache."""
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential()


def _storage_client(client_class: Any, account: str, service: str, scheme: str,
                    credential: TokenCredential | None, **names: Any) -> Any:
    """A storage SDK client from the emulator connection string or ``https://ACCOUNT.SERVICE…``."""
    options: dict[str, Any] = {"connection_timeout": _CONNECT_TIMEOUT, "read_timeout": _READ_TIMEOUT,
                               "retry_total": _RETRIES}
    if service == "queue":
        from azure.storage.queue import LinearRetry

        options["retry_policy"] = LinearRetry(backoff=0.5, random_jitter_range=0.25, retry_total=_RETRIES)
    elif service == "blob":
        from azure.storage.blob import LinearRetry as BlobLinearRetry

        options["retry_policy"] = BlobLinearRetry(backoff=0.5, random_jitter_range=0.25, retry_total=_RETRIES)
    else:
        options["retry_backoff_factor"] = 0.2
    connection_string = _connection_string(account, scheme)
    if connection_string is not None:
        return client_class.from_connection_string(connection_string, **names, **options)
    endpoint = f"https://{account}.{service}.core.windows.net"
    return client_class(endpoint, credential=credential or _default_credential(), **names, **options)


# ---------------------------------------------------------------------------------------------
# Storage Queue


_ENVELOPE_MARK = "wardgate.envelope"


def _wrap(body: bytes, attributes: Mapping[str, str]) -> bytes:
    """Storage Queue messages carry no attributes: when there are some (or the body could be
    mistaken for an envelope), body and attributes travel in a JSON envelope; otherwise the body
    travels alone, so a Functions trigger sees exactly what was sent."""
    if not attributes and not body.lstrip().startswith(b'{"' + _ENVELOPE_MARK.encode()):
        return body
    envelope = {_ENVELOPE_MARK: 1, "body": base64.b64encode(body).decode(), "attributes": dict(attributes)}
    return json.dumps(envelope, separators=(",", ":")).encode()


def decode_queue_payload(payload: bytes) -> tuple[bytes, dict[str, str]]:
    """(body, attributes) of a message's decoded bytes; for Azure Functions entry points too."""
    if payload.lstrip().startswith(b'{"' + _ENVELOPE_MARK.encode()):
        try:
            envelope = json.loads(payload)
            return base64.b64decode(envelope["body"], validate=True), dict(envelope["attributes"])
        except (ValueError, KeyError, TypeError):
            pass  # not an envelope after all: deliver the bytes as they are
    return payload, {}


class StorageQueue:
    """An Azure Storage Queue with a ``-poison`` queue for messages delivered too often."""

    def __init__(self, url: str, *, credential: TokenCredential | None = None):
        account, path, query = _split(url, "azqueue", {"visibility", "max_receives"})
        self.url = url
        self.account = _check(_ACCOUNT, account, "azqueue", "storage account", "3-24 lowercase letters/digits")
        if len(path) != 1:
            raise ValueError(f"azqueue://: missing queue name in {url!r}" if not path
                             else f"azqueue://: expected azqueue://ACCOUNT/QUEUE, got {url!r}")
        self.name = _check(_QUEUE, path[0], "azqueue", "queue name",
                           "3-56 lowercase letters, digits and single hyphens")
        self.visibility = _positive_int(query, "visibility", 30, "azqueue", 7 * 24 * 3600)
        self.max_receives = _positive_int(query, "max_receives", 5, "azqueue", 1000)
        from azure.storage.queue import QueueClient

        self._queue = _storage_client(QueueClient, self.account, "queue", "azqueue", credential,
                                      queue_name=self.name)
        self._poison = _storage_client(QueueClient, self.account, "queue", "azqueue", credential,
                                       queue_name=self.name + POISON_SUFFIX)

    def _unavailable(self, exc: Exception, what: str) -> StoreUnavailable:
        return StoreUnavailable(f"queue {self.url}: {what}: {_reason(exc)}")

    def send(self, body: bytes, attributes: Mapping[str, str] | None = None) -> str:
        text = base64.b64encode(_wrap(bytes(body), attributes or {})).decode()
        if len(text) > 64 * 1024:
            raise ValueError(f"queue {self.url}: message of {len(body)} bytes exceeds Storage Queue's 64 KiB")
        try:
            return self._queue.send_message(text).id
        except AzureError as exc:
            raise self._unavailable(exc, "send failed") from exc

    def receive(self, max_messages: int = 10, wait_seconds: float = 0.0) -> list[QueueMessage]:
        # Storage Queue has no long polling: poll until something arrives or the wait is over.
        deadline = time.monotonic() + wait_seconds
        while True:
            messages = self._receive_once(max(1, min(max_messages, 32)))
            remaining = deadline - time.monotonic()
            if messages or remaining <= 0:
                return messages
            time.sleep(min(1.0, remaining))

    def _receive_once(self, count: int) -> list[QueueMessage]:
        out = []
        try:
            for message in self._queue.receive_messages(max_messages=count, messages_per_page=count,
                                                        visibility_timeout=self.visibility):
                payload = _b64decode_or_none(message.content)
                if message.dequeue_count > self.max_receives or payload is None:
                    self._move_to_poison(message)  # undecodable content is poison on sight
                    continue
                body, attributes = decode_queue_payload(payload)
                out.append(QueueMessage(message.id, body, message.pop_receipt, message.dequeue_count, attributes))
        except AzureError as exc:
            raise self._unavailable(exc, "receive failed") from exc
        return out

    def _move_to_poison(self, message: Any) -> None:
        # Copy first, then delete: a crash in between duplicates the message, never loses it.
        self._poison.send_message(message.content)
        self._queue.delete_message(message.id, message.pop_receipt)
        log.warning("queue %s: message %s moved to %s after %d deliveries", self.url, message.id,
                    self.name + POISON_SUFFIX, message.dequeue_count)

    def ack(self, message: QueueMessage) -> None:
        try:
            self._queue.delete_message(message.id, message.receipt)
        except ResourceNotFoundError as exc:
            # The visibility timeout passed and the message was delivered again (new pop receipt),
            # or it is already deleted: at-least-once delivery, the next holder acknowledges it.
            log.warning("queue %s: ack of message %s came too late: %s", self.url, message.id, _reason(exc))
        except AzureError as exc:
            if getattr(exc, "error_code", None) == "PopReceiptMismatch":
                log.warning("queue %s: ack of message %s came too late (redelivered)", self.url, message.id)
                return
            raise self._unavailable(exc, "ack failed") from exc

    def dead_letters(self, max_messages: int = 10) -> list[QueueMessage]:
        """Peeked from ``QUEUE-poison``; ``receive_count`` is that queue's own dequeue count."""
        try:
            peeked = self._poison.peek_messages(max_messages=max(1, min(max_messages, 32)))
        except AzureError as exc:
            raise self._unavailable(exc, "peek of the poison queue failed") from exc
        out = []
        for message in peeked:
            payload = _b64decode_or_none(message.content)
            body, attributes = decode_queue_payload(payload) if payload is not None else (
                str(message.content).encode(), {})
            out.append(QueueMessage(message.id, body, "", message.dequeue_count or 0, attributes))
        return out


def _b64decode_or_none(content: Any) -> bytes | None:
    try:
        return base64.b64decode(str(content), validate=True)
    except ValueError:
        return None


# ---------------------------------------------------------------------------------------------
# Table decision store

_KEY_PLAIN = re.compile(r"[A-Za-z0-9._:@-]")
_TABLE_KEY_LIMIT = 1024  # characters per PartitionKey / RowKey


def encode_table_key(key: str) -> str:
    """Reversible, prefix-preserving encoding of a store key for PartitionKey/RowKey, which refuse
    ``/ \\ # ?`` and control characters: key characters stay readable, ``/`` becomes ``|``, every
    other character ``~`` + six hex digits. Each character maps independently and no code is a
    prefix of another, so ``encode(p)`` is a prefix of ``encode(k)`` exactly when ``p`` is a prefix
    of ``k`` (what the range query of :meth:`TableDecisionStore.list` relies on)."""
    out = []
    for char in key:
        if _KEY_PLAIN.match(char):
            out.append(char)
        elif char == "/":
            out.append("|")
        else:
            out.append(f"~{ord(char):06x}")
    return "".join(out)


def decode_table_key(encoded: str) -> str:
    out, i = [], 0
    while i < len(encoded):
        char = encoded[i]
        if char == "|":
            out.append("/")
        elif char == "~":
            out.append(chr(int(encoded[i + 1:i + 7], 16)))
            i += 6
        else:
            out.append(char)
        i += 1
    return "".join(out)


def _successor(encoded_prefix: str) -> str:
    """The smallest string greater than every string starting with ``encoded_prefix``. An encoded
    string never ends in ``~`` (escapes end in hex digits), so the successor stays printable."""
    return encoded_prefix[:-1] + chr(ord(encoded_prefix[-1]) + 1)


class TableDecisionStore:
    """Create-once records in an Azure Table. Entity insert fails with 409 when the key exists, so
    "first write wins" is the service's guarantee. PartitionKey = encoded first key segment (spreads
    approvals, keeps a request's records together); RowKey = the whole encoded key."""

    def __init__(self, url: str, *, credential: TokenCredential | None = None):
        account, path, _query = _split(url, "aztable", set())
        self.url = url
        self.account = _check(_ACCOUNT, account, "aztable", "storage account", "3-24 lowercase letters/digits")
        if len(path) != 1:
            raise ValueError(f"aztable://: missing table name in {url!r}" if not path
                             else f"aztable://: expected aztable://ACCOUNT/TABLE, got {url!r}")
        self.table = _check(_TABLE, path[0], "aztable", "table name", "3-63 letters/digits, starting with a letter")
        from azure.data.tables import TableClient

        self._client = _storage_client(TableClient, self.account, "table", "aztable", credential,
                                       table_name=self.table)

    def _keys(self, key: str) -> tuple[str, str]:
        if not key:
            raise ValueError(f"decision store {self.url}: empty key")
        row = encode_table_key(key)
        if len(row) > _TABLE_KEY_LIMIT:
            raise ValueError(f"decision store {self.url}: key {key[:64]!r}… is too long for a table key")
        return encode_table_key(key.split("/", 1)[0]), row

    def _unavailable(self, exc: Exception, what: str) -> StoreUnavailable:
        return StoreUnavailable(f"decision store {self.url}: {what}: {_reason(exc)}")

    def create(self, key: str, record: Mapping[str, Any]) -> bool:
        partition, row = self._keys(key)
        text = json.dumps(dict(record), sort_keys=True)
        if len(text) > 32 * 1024:  # a string property holds 64 KiB of UTF-16
            raise ValueError(f"decision store {self.url}: record for {key!r} exceeds 32K characters")
        try:
            self._client.create_entity({"PartitionKey": partition, "RowKey": row, "record": text})
            return True
        except ResourceExistsError:
            return False
        except AzureError as exc:
            raise self._unavailable(exc, f"create {key!r} failed") from exc

    def get(self, key: str) -> dict[str, Any] | None:
        partition, row = self._keys(key)
        try:
            entity = self._client.get_entity(partition, row)
        except ResourceNotFoundError as exc:
            if getattr(exc, "error_code", None) == "TableNotFound":
                raise self._unavailable(exc, "table not found") from exc
            return None
        except AzureError as exc:
            raise self._unavailable(exc, f"get {key!r} failed") from exc
        return json.loads(entity["record"])

    def list(self, prefix: str) -> list[tuple[str, dict[str, Any]]]:
        parameters: dict[str, Any] = {}
        clauses = []
        if prefix:
            encoded = encode_table_key(prefix)
            parameters.update(lo=encoded, hi=_successor(encoded))
            clauses.append("RowKey ge @lo and RowKey lt @hi")
            if "/" in prefix:  # the first segment is complete: one partition
                parameters["pk"] = encode_table_key(prefix.split("/", 1)[0])
                clauses.insert(0, "PartitionKey eq @pk")
            else:  # the first segment starts with the prefix: a partition range
                clauses.insert(0, "PartitionKey ge @lo and PartitionKey lt @hi")
        try:
            if clauses:
                entities = list(self._client.query_entities(" and ".join(clauses), parameters=parameters,
                                                            select=["RowKey", "record"]))
            else:
                entities = list(self._client.list_entities(select=["RowKey", "record"]))
        except AzureError as exc:
            raise self._unavailable(exc, f"list {prefix!r} failed") from exc
        # The encoding keeps prefixes, not order ("/" sorts differently): sort by the real key.
        return sorted(((decode_table_key(e["RowKey"]), json.loads(e["record"])) for e in entities),
                      key=lambda item: item[0])


# ---------------------------------------------------------------------------------------------
# Blob object store


class BlobObjectStore:
    """Write-once blobs: ``upload_blob(overwrite=False)`` is a conditional create (If-None-Match: *)
    in the service, and the container must be WORM (immutability policy, or version-level
    immutability), checked once at construction, so a sealed segment cannot be deleted or rewritten
    by anyone for the retention period."""

    def __init__(self, url: str, *, credential: TokenCredential | None = None):
        account, path, query = _split(url, "azblob", {"worm"})
        self.url = url
        self.account = _check(_ACCOUNT, account, "azblob", "storage account", "3-24 lowercase letters/digits")
        if not path:
            raise ValueError(f"azblob://: missing container name in {url!r}")
        self.container = _check(_CONTAINER, path[0], "azblob", "container name",
                                "3-63 lowercase letters, digits and single hyphens")
        self.prefix = "".join(part + "/" for part in path[1:])
        worm = query.get("worm", "on")
        if worm not in ("on", "off"):
            raise ValueError(f"azblob://: worm={worm!r} must be 'on' or 'off'")
        from azure.storage.blob import ContainerClient

        self._client = _storage_client(ContainerClient, self.account, "blob", "azblob", credential,
                                       container_name=self.container)
        if worm == "on":
            self._require_worm()

    def _unavailable(self, exc: Exception, what: str) -> StoreUnavailable:
        return StoreUnavailable(f"object store {self.url}: {what}: {_reason(exc)}")

    def _require_worm(self) -> None:
        try:
            properties = self._client.get_container_properties()
        except AzureError as exc:
            raise self._unavailable(exc, "cannot read the container's properties") from exc
        if not (properties.has_immutability_policy or properties.immutable_storage_with_versioning_enabled):
            # Fail closed: an audit archive that can be rewritten proves nothing.
            raise StoreUnavailable(
                f"object store {self.url}: container {self.container!r} is not write-once (no immutability "
                "policy, no version-level immutability); configure one, or add ?worm=off for an emulator")

    def _blob(self, key: str) -> str:
        if not key or key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"object key {key!r} is empty, absolute or leaves the store")
        return self.prefix + key

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        from azure.storage.blob import ContentSettings

        name = self._blob(key)
        try:
            self._client.upload_blob(name, bytes(data), overwrite=False,
                                     content_settings=ContentSettings(content_type=content_type))
            return
        except ResourceExistsError:
            pass  # a retried shipment is fine if the bytes are the same
        except AzureError as exc:
            raise self._unavailable(exc, f"put {key!r} failed") from exc
        if self.get(key) != bytes(data):
            raise ObjectExists(f"{self.url}/{key} exists with different content")

    def get(self, key: str) -> bytes:
        try:
            return self._client.download_blob(self._blob(key)).readall()
        except ResourceNotFoundError as exc:
            if getattr(exc, "error_code", None) == "ContainerNotFound":
                raise self._unavailable(exc, "container not found") from exc
            raise KeyError(key) from None
        except AzureError as exc:
            raise self._unavailable(exc, f"get {key!r} failed") from exc

    def list(self, prefix: str = "") -> list[str]:
        try:
            names = list(self._client.list_blob_names(name_starts_with=self.prefix + prefix))
        except AzureError as exc:
            raise self._unavailable(exc, f"list {prefix!r} failed") from exc
        return sorted(name[len(self.prefix):] for name in names)


# ---------------------------------------------------------------------------------------------
# Key Vault: signer and secret source


class _EmulatorTokenCredential:
    """A fixed bearer token for a Key Vault emulator (``WARDGATE_AZURE_KEYVAULT_TOKEN``), the
    counterpart of Azurite's well-known key. Never used against a real vault URL."""

    def __init__(self, token: str):
        self._token = token

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken(self._token, int(time.time()) + 3600)


def _vault_url(vault: str, scheme: str) -> str:
    template = os.environ.get(KEYVAULT_URL_TEMPLATE_ENV)
    if not template:
        return f"https://{vault}.vault.azure.net"
    url = template.format(vault=vault).rstrip("/")
    parsed = urlparse(url)
    # The SDK parses key ids as https://HOST/keys/NAME/VERSION: a vault URL with a path breaks it.
    if parsed.scheme != "https" or parsed.path:
        raise ValueError(f"{scheme}://: {KEYVAULT_URL_TEMPLATE_ENV}={template!r} must be https://HOST[:PORT]")
    return url


def _keyvault_options(credential: TokenCredential | None) -> dict[str, Any]:
    options: dict[str, Any] = {"connection_timeout": _CONNECT_TIMEOUT, "read_timeout": _READ_TIMEOUT,
                               "retry_total": _RETRIES, "retry_backoff_factor": 0.2}
    emulated = bool(os.environ.get(KEYVAULT_URL_TEMPLATE_ENV))
    if emulated:
        # An emulator on 127.0.0.1 cannot be a subdomain of the challenge's vault.azure.net.
        options["verify_challenge_resource"] = False
        if os.environ.get(KEYVAULT_CA_FILE_ENV):
            options["connection_verify"] = os.environ[KEYVAULT_CA_FILE_ENV]
    if credential is None:
        token = os.environ.get(KEYVAULT_TOKEN_ENV) if emulated else None
        credential = _EmulatorTokenCredential(token) if token else _default_credential()
    options["credential"] = credential
    return options


def _vault_and_names(url: str, scheme: str, what: str, max_names: int) -> tuple[str, list[str]]:
    vault, path, _query = _split(url, scheme, set())
    _check(_VAULT, vault, scheme, "vault name", "3-24 letters, digits and hyphens, starting with a letter")
    if not path:
        raise ValueError(f"{scheme}://: missing {what} name in {url!r}")
    if len(path) > max_names:
        raise ValueError(f"{scheme}://: too many path segments in {url!r}")
    _check(_VAULT_OBJECT, path[0], scheme, f"{what} name", "letters, digits and hyphens")
    if len(path) == 2:
        _check(_VERSION, path[1], scheme, f"{what} version", "letters and digits")
    return vault, path


def _public_key_from_jwk(jwk: Any, url: str) -> ec.EllipticCurvePublicKey:
    kty, crv = (str(getattr(value, "value", value) or "") for value in (jwk.kty, jwk.crv))
    if not kty.startswith("EC") or crv != "P-256":
        raise ValueError(f"signer {url}: key is {kty} {crv}; audit digests need an EC P-256 key (ES256)")
    numbers = ec.EllipticCurvePublicNumbers(int.from_bytes(jwk.x, "big"), int.from_bytes(jwk.y, "big"),
                                            ec.SECP256R1())
    return numbers.public_key()


class KeyVaultSigner:
    """Signs digests with an EC P-256 Key Vault key (ES256). The key version is pinned when the
    signer opens (the latest one unless the URL names it), so ``key_id`` always names the key that
    signs; a rotated key is picked up by the next signer."""

    algorithm = ALGORITHM_ECDSA_P256

    def __init__(self, url: str, *, credential: TokenCredential | None = None):
        vault, path = _vault_and_names(url, "azurekv-key", "key", 2)
        self.url = url
        from azure.keyvault.keys import KeyClient
        from azure.keyvault.keys.crypto import CryptographyClient

        options = _keyvault_options(credential)
        client = KeyClient(_vault_url(vault, "azurekv-key"), **options)
        try:
            key = client.get_key(path[0], path[1] if len(path) == 2 else None)
        except AzureError as exc:
            raise StoreUnavailable(f"signer {url}: cannot read the key: {_reason(exc)}") from exc
        self._public_key = _public_key_from_jwk(key.key, url)
        self.key_id = public_key_id(self._public_key)
        self.key_version_id = key.id
        self._crypto = CryptographyClient(key, **options)

    def sign(self, data: bytes) -> bytes:
        from azure.keyvault.keys.crypto import SignatureAlgorithm

        try:
            raw = self._crypto.sign(SignatureAlgorithm.es256, hashlib.sha256(data).digest()).signature
        except AzureError as exc:
            raise StoreUnavailable(f"signer {self.url}: sign failed: {_reason(exc)}") from exc
        if len(raw) != 64:
            raise StoreUnavailable(f"signer {self.url}: ES256 signature of {len(raw)} bytes, expected 64 (r||s)")
        # Key Vault returns JOSE r||s; digests carry DER like every other ECDSA signer.
        signature = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
        try:  # never seal a digest with a signature its own public key does not accept
            self._public_key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            raise StoreUnavailable(f"signer {self.url}: the vault's signature does not verify with "
                                   f"{self.key_version_id}") from None
        return signature

    def public_key_pem(self) -> bytes:
        return self._public_key.public_bytes(serialization.Encoding.PEM,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)


class KeyVaultSecretSource:
    """``azure-kv://VAULT/SECRET``: the secret's current version, fetched afresh every time."""

    def __init__(self, url: str, username: str, *, credential: TokenCredential | None = None):
        vault, path = _vault_and_names(url, "azure-kv", "secret", 1)
        self.url = url
        self.username = username
        self.secret = path[0]
        from azure.keyvault.secrets import SecretClient

        self._client = SecretClient(_vault_url(vault, "azure-kv"), **_keyvault_options(credential))

    def fetch(self) -> Credential:
        try:
            value = self._client.get_secret(self.secret).value
        except AzureError as exc:
            raise CredentialError(f"Key Vault secret {self.url}: {_reason(exc)}") from None
        if value is None:
            raise CredentialError(f"Key Vault secret {self.url} has no value")
        return credential_from_secret_text(value, self.username, source=self.url)


class EntraTokenSource:
    """``azure-ad://?scope=…``: the password is an Entra access token (Azure Database for
    PostgreSQL accepts it for an Entra-enabled role); ``expires_at`` lets the broker refresh it."""

    def __init__(self, url: str, username: str, *, credential: TokenCredential | None = None):
        host, path, query = _split(url, "azure-ad", {"scope"})
        if host or path:
            raise ValueError(f"azure-ad://: takes no host or path, only ?scope=, in {url!r}")
        self.url = url
        self.username = username
        self.scope = query.get("scope", POSTGRES_SCOPE)
        if not re.match(r"^https://[^/\s]+/\.default$", self.scope):
            raise ValueError(f"azure-ad://: scope {self.scope!r} must look like https://RESOURCE/.default")
        self._credential = credential

    def fetch(self) -> Credential:
        if not self.username:
            raise CredentialError(f"{self.url}: an Entra token needs the database role name as username")
        try:
            credential = self._credential or _default_credential()
            token = credential.get_token(self.scope)
        except AzureError as exc:
            raise CredentialError(f"Entra token for {self.scope}: {_reason(exc)}") from None
        return Credential(self.username, token.token, expires_at=float(token.expires_on))


def _reason(exc: Exception) -> str:
    """The first line of an SDK error (they append whole response bodies)."""
    code = getattr(exc, "error_code", None)
    code = getattr(code, "value", code)  # some SDKs use str enums, whose str() is the member name
    text = str(getattr(exc, "message", None) or exc).strip().splitlines()
    first = text[0] if text else type(exc).__name__
    return f"{code}: {first}" if code and code not in first else first
