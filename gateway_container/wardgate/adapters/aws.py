"""AWS backends for the core's ports (see ``wardgate.adapters``).

URL forms (``region`` is optional everywhere: without it boto3's default region applies,
``AWS_REGION`` / ``AWS_DEFAULT_REGION`` / the profile's):

- ``sqs://QUEUE_NAME?region=R&visibility=30&wait=20``: the queue must have a RedrivePolicy; its
  target is the dead-letter queue :meth:`SqsQueue.dead_letters` reads. ``visibility`` is the
  visibility timeout of received messages (s), ``wait`` caps one long poll (1–20 s).
- ``dynamodb://TABLE?region=R``: decision records, table keyed as :data:`DECISION_TABLE_KEY_SCHEMA`.
- ``s3://BUCKET/PREFIX?region=R[&worm=off]``: write-once objects; the bucket must have Object Lock
  with a default retention (``worm=off`` skips that check, for an S3 emulator without Object Lock).
- ``awskms://KEY_ID_OR_ALIAS_OR_ARN?region=R``: an ``ECC_NIST_P256`` ``SIGN_VERIFY`` KMS key.
- ``aws-sm://SECRET_ID?region=R&stage=AWSCURRENT``: a Secrets Manager secret (JSON
  ``{"username", "password"}`` or a bare password).
- ``rds-iam://HOST:PORT?region=R``: an RDS IAM authentication token for the configured user.

Identity is boto3's default credential chain (IRSA / ECS task role / instance profile / environment),
never a key in a URL. Emulators are reached through botocore's own endpoint variables:
``AWS_ENDPOINT_URL`` (every service) or ``AWS_ENDPOINT_URL_<SERVICE>`` (``AWS_ENDPOINT_URL_SQS`` …);
dummy credentials for an emulator belong in its environment, never here.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Mapping
from urllib.parse import parse_qsl, unquote, urlsplit

import boto3
import botocore.session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoRegionError
from botocore.loaders import Loader
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from wardgate.core.credentials import Credential, CredentialError, credential_from_secret_text
from wardgate.core.integrity import ALGORITHM_ECDSA_P256, public_key_id
from wardgate.core.ports import ObjectExists, QueueMessage, StoreUnavailable

# A dead or black-holed endpoint must fail in seconds (the caller fails closed), not after
# botocore's default 60 s timeouts times 5 attempts.
CONNECT_TIMEOUT = 3.0
READ_TIMEOUT = 10.0
MAX_ATTEMPTS = 2

_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d+$")
_RECORD_KEY = re.compile(r"^[A-Za-z0-9._:@-]+(/[A-Za-z0-9._:@-]+)*$")


class SecretUnavailable(CredentialError, StoreUnavailable):
    """A secret source cannot reach its backend: a ``CredentialError`` for the credential broker's
    callers and a ``StoreUnavailable`` like every other port failure. Never carries the secret."""


# --- shared plumbing -------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Url:
    url: str
    netloc: str
    path: str
    params: Mapping[str, str]

    @property
    def name(self) -> str:
        """Everything between ``scheme://`` and ``?``: names may contain ``/`` and ``:``."""
        return unquote(self.netloc + self.path)


def _parse_url(url: str, scheme: str, allowed: set[str]) -> _Url:
    parts = urlsplit(url)
    if parts.scheme != scheme:
        raise ValueError(f"{url}: expected a {scheme}:// URL")
    if parts.fragment:
        raise ValueError(f"{url}: unexpected fragment #{parts.fragment}")
    params: dict[str, str] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name not in allowed:
            raise ValueError(f"{url}: unknown parameter {name!r} (known: {', '.join(sorted(allowed))})")
        if name in params:
            raise ValueError(f"{url}: parameter {name!r} given twice")
        params[name] = value
    region = params.get("region")
    if region is not None and not _REGION.match(region):
        raise ValueError(f"{url}: region {region!r} is not an AWS region name")
    return _Url(url, parts.netloc, parts.path, params)


def _int_param(parsed: _Url, name: str, default: int, low: int, high: int) -> int:
    raw = parsed.params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{parsed.url}: {name}={raw!r} is not a whole number of seconds") from None
    if not low <= value <= high:
        raise ValueError(f"{parsed.url}: {name}={value} is outside {low}..{high}")
    return value


def _region_of_arn(parsed: _Url, arn: str) -> str | None:
    """An ARN names its region; a ``?region=`` that contradicts it is a configuration mistake."""
    fields = arn.split(":")
    if len(fields) < 6 or not fields[3]:
        raise ValueError(f"{parsed.url}: malformed ARN {arn!r}")
    given = parsed.params.get("region")
    if given is not None and given != fields[3]:
        raise ValueError(f"{parsed.url}: region={given} contradicts the ARN's region {fields[3]}")
    return fields[3]


_loader_lock = threading.Lock()
_loader: Loader | None = None


def _shared_loader() -> Loader:
    global _loader
    with _loader_lock:
        if _loader is None:
            _loader = botocore.session.get_session().get_component("data_loader")
        return _loader


def _client(service: str, region: str | None, url: str, *, read_timeout: float = READ_TIMEOUT) -> Any:
    config = Config(connect_timeout=CONNECT_TIMEOUT, read_timeout=read_timeout,
                    retries={"max_attempts": MAX_ATTEMPTS, "mode": "standard"})
    # One session per adapter (boto3's default session is not safe to share across threads), but one
    # loader of the service models for all: parsing them is most of a client's creation time.
    botocore_session = botocore.session.Session()
    botocore_session.register_component("data_loader", _shared_loader())
    try:
        return boto3.session.Session(botocore_session=botocore_session).client(
            service, region_name=region, config=config)
    except NoRegionError:
        raise ValueError(f"{url}: no region: add ?region=… or set AWS_REGION") from None


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _describe(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return f"{error.get('Code', 'error')}: {error.get('Message', '')}".rstrip(": ")
    return str(exc) or type(exc).__name__


@contextmanager
def _sdk_errors(port: str, url: str) -> Iterator[None]:
    """Map whatever the SDK raises (network, throttling, access denied) to StoreUnavailable."""
    try:
        yield
    except (ClientError, BotoCoreError) as exc:
        raise StoreUnavailable(f"{port} {url}: {_describe(exc)}") from exc


# --- SQS -------------------------------------------------------------------------------------------

# SQS accepts only these characters in a body; anything else (or bytes that are not UTF-8) travels
# base64-encoded, marked by an attribute so the receiver decodes it.
_SQS_UNSAFE = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
# Bodies that are not valid SQS text are sent base64-encoded and marked with this message attribute;
# consumers of Lambda SQS events decode them the same way (functions/approval/aws.py).
BODY_ENCODING_ATTRIBUTE = "wardgate-body-encoding"
_BODY_ENCODING = BODY_ENCODING_ATTRIBUTE
_ATTRIBUTE_NAME = re.compile(r"^(?!(?:aws|amazon)\.)[A-Za-z0-9_-][A-Za-z0-9_.-]{0,255}$", re.IGNORECASE)
_QUEUE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,80}(\.fifo)?$")


class SqsQueue:
    """An SQS queue whose RedrivePolicy names its dead-letter queue.

    ``receive_count`` is SQS's ``ApproximateReceiveCount``; SQS itself moves a message to the
    dead-letter queue after the policy's ``maxReceiveCount`` deliveries. A queue without a
    RedrivePolicy is refused: SQS would keep redelivering a poison message and drop it silently at
    the end of its retention period.
    """

    def __init__(self, url: str):
        parsed = _parse_url(url, "sqs", {"region", "visibility", "wait"})
        self.url = url
        self.name = parsed.name
        if not self.name:
            raise ValueError(f"{url}: missing queue name")
        if not _QUEUE_NAME.match(self.name):
            raise ValueError(f"{url}: {self.name!r} is not an SQS queue name (1-80 of A-Z a-z 0-9 _ -)")
        self.visibility = _int_param(parsed, "visibility", 30, 0, 43200)
        self.long_poll = _int_param(parsed, "wait", 20, 1, 20)
        # A long poll holds the response for up to `wait` seconds: the read timeout must outlast it.
        self._sqs = _client("sqs", parsed.params.get("region"), url, read_timeout=self.long_poll + READ_TIMEOUT)
        self._url: str | None = None
        self._dead_letter_arn: list[str] = []
        self._dlq_url: str | None = None
        self._lock = threading.Lock()

    def _queue_url(self) -> str:
        """The queue's URL, looked up once, after checking that it has a dead-letter queue."""
        with self._lock:
            if self._url is None:
                with _sdk_errors("queue", self.url):
                    queue_url = self._sqs.get_queue_url(QueueName=self.name)["QueueUrl"]
                    attributes = self._sqs.get_queue_attributes(
                        QueueUrl=queue_url, AttributeNames=["RedrivePolicy"]).get("Attributes", {})
                try:
                    target = json.loads(attributes.get("RedrivePolicy") or "{}").get("deadLetterTargetArn", "")
                except ValueError:
                    target = ""
                arn = target.split(":")  # arn:aws:sqs:REGION:ACCOUNT:NAME
                if len(arn) != 6:
                    raise StoreUnavailable(
                        f"queue {self.url}: the queue has no dead-letter queue (RedrivePolicy); poison "
                        f"messages would be lost, so wardgate refuses it")
                self._url, self._dead_letter_arn = queue_url, arn
            return self._url

    def _dead_letter_url(self) -> str:
        """Looked up only when asked for (senders need no permission on the dead-letter queue)."""
        self._queue_url()
        with self._lock:
            if self._dlq_url is None:
                _, _, _, _, account, name = self._dead_letter_arn
                with _sdk_errors("queue", self.url):
                    self._dlq_url = self._sqs.get_queue_url(
                        QueueName=name, QueueOwnerAWSAccountId=account)["QueueUrl"]
            return self._dlq_url

    def send(self, body: bytes, attributes: Mapping[str, str] | None = None) -> str:
        if not body:
            raise ValueError(f"queue {self.url}: SQS cannot carry an empty message body")
        message_attributes = {}
        for name, value in (attributes or {}).items():
            if not _ATTRIBUTE_NAME.match(name) or name == _BODY_ENCODING:
                raise ValueError(f"queue {self.url}: attribute name {name!r} is not allowed")
            if not isinstance(value, str) or not value:
                raise ValueError(f"queue {self.url}: attribute {name!r} needs a non-empty string value")
            message_attributes[name] = {"DataType": "String", "StringValue": value}
        try:
            text = bytes(body).decode("utf-8")
            if _SQS_UNSAFE.search(text):
                raise UnicodeError
        except UnicodeError:
            text = base64.b64encode(bytes(body)).decode("ascii")
            message_attributes[_BODY_ENCODING] = {"DataType": "String", "StringValue": "base64"}
        if len(message_attributes) > 10:  # SQS's limit, counted with our own marker
            raise ValueError(f"queue {self.url}: at most 10 message attributes (got {len(message_attributes)})")
        queue_url = self._queue_url()
        with _sdk_errors("queue", self.url):
            kwargs: dict[str, Any] = {"QueueUrl": queue_url, "MessageBody": text}
            if message_attributes:
                kwargs["MessageAttributes"] = message_attributes
            return self._sqs.send_message(**kwargs)["MessageId"]

    def _receive_from(self, queue_url: str, max_messages: int, wait_seconds: float,
                      visibility: int) -> list[QueueMessage]:
        if not 1 <= max_messages <= 10:
            raise ValueError(f"queue {self.url}: max_messages must be 1..10 (SQS's limit), not {max_messages}")
        deadline = time.monotonic() + max(0.0, wait_seconds)
        while True:
            # SQS long polls in whole seconds, at most 20 per request: split longer waits.
            remaining = deadline - time.monotonic()
            poll = min(self.long_poll, max(0, math.ceil(remaining)))
            with _sdk_errors("queue", self.url):
                response = self._sqs.receive_message(
                    QueueUrl=queue_url, MaxNumberOfMessages=max_messages, WaitTimeSeconds=poll,
                    VisibilityTimeout=visibility, MessageSystemAttributeNames=["ApproximateReceiveCount"],
                    MessageAttributeNames=["All"])
            messages = response.get("Messages", [])
            if messages or time.monotonic() >= deadline:
                return [self._decode(m) for m in messages]

    def _decode(self, message: Mapping[str, Any]) -> QueueMessage:
        attributes = {name: value.get("StringValue", "")
                      for name, value in message.get("MessageAttributes", {}).items()}
        encoding = attributes.pop(_BODY_ENCODING, None)
        body = message["Body"].encode("utf-8")
        if encoding == "base64":
            body = base64.b64decode(body)
        count = int(message.get("Attributes", {}).get("ApproximateReceiveCount", "1"))
        return QueueMessage(message["MessageId"], body, message["ReceiptHandle"], count, attributes)

    def receive(self, max_messages: int = 10, wait_seconds: float = 0.0) -> list[QueueMessage]:
        return self._receive_from(self._queue_url(), max_messages, wait_seconds, self.visibility)

    def ack(self, message: QueueMessage) -> None:
        with _sdk_errors("queue", self.url):
            self._sqs.delete_message(QueueUrl=self._queue_url(), ReceiptHandle=message.receipt)

    def dead_letters(self, max_messages: int = 10) -> list[QueueMessage]:
        """Receives from the dead-letter queue with visibility 0: shown, left there for the operator."""
        return self._receive_from(self._dead_letter_url(), max_messages, 0.0, 0)


# --- DynamoDB --------------------------------------------------------------------------------------

DECISION_PARTITION_ATTRIBUTE = "collection"
DECISION_SORT_ATTRIBUTE = "record_key"
DECISION_PARTITION_VALUE = "records"
# The table wardgate expects (for infrastructure code and the local cloud). Every record sits in one
# partition, sorted by its key, so list(prefix) is one sorted Query; approval traffic is far below a
# partition's ~1000 writes/s.
DECISION_TABLE_KEY_SCHEMA = {
    "AttributeDefinitions": [{"AttributeName": DECISION_PARTITION_ATTRIBUTE, "AttributeType": "S"},
                             {"AttributeName": DECISION_SORT_ATTRIBUTE, "AttributeType": "S"}],
    "KeySchema": [{"AttributeName": DECISION_PARTITION_ATTRIBUTE, "KeyType": "HASH"},
                  {"AttributeName": DECISION_SORT_ATTRIBUTE, "KeyType": "RANGE"}],
}
_TABLE_NAME = re.compile(r"^[A-Za-z0-9_.-]{3,255}$")


class DynamoDecisionStore:
    """Create-once records in a DynamoDB table (schema :data:`DECISION_TABLE_KEY_SCHEMA`).

    ``create`` is a conditional ``PutItem`` (``attribute_not_exists``): DynamoDB lets exactly one
    writer win. Keys are stored verbatim (DynamoDB strings take ``/``); records as JSON text, so
    what is read back is exactly what was written (no Decimal conversion). Reads are strongly
    consistent.
    """

    def __init__(self, url: str):
        parsed = _parse_url(url, "dynamodb", {"region"})
        self.url = url
        self.table = parsed.name
        if not self.table:
            raise ValueError(f"{url}: missing table name")
        if not _TABLE_NAME.match(self.table):
            raise ValueError(f"{url}: {self.table!r} is not a DynamoDB table name")
        self._dynamodb = _client("dynamodb", parsed.params.get("region"), url)

    def _failure(self, exc: ClientError | BotoCoreError) -> StoreUnavailable:
        hint = ""
        if isinstance(exc, ClientError) and _error_code(exc) == "ValidationException":
            # Most likely a table keyed otherwise (checked here rather than with DescribeTable, so
            # the gateway needs no permission beyond GetItem, PutItem and Query).
            keys = " + ".join(k["AttributeName"] for k in DECISION_TABLE_KEY_SCHEMA["KeySchema"])
            hint = f" (is the table keyed {keys}, both strings?)"
        return StoreUnavailable(f"decision store {self.url}: {_describe(exc)}{hint}")

    def _key_of(self, key: str) -> dict[str, dict[str, str]]:
        if not _RECORD_KEY.match(key):
            raise ValueError(f"decision store {self.url}: key {key!r} is not /-separated [A-Za-z0-9._:@-] parts")
        return {DECISION_PARTITION_ATTRIBUTE: {"S": DECISION_PARTITION_VALUE}, DECISION_SORT_ATTRIBUTE: {"S": key}}

    def create(self, key: str, record: Mapping[str, Any]) -> bool:
        item = self._key_of(key) | {"record": {"S": json.dumps(dict(record), sort_keys=True)},
                                    "created": {"N": repr(time.time())}}
        try:
            self._dynamodb.put_item(TableName=self.table, Item=item,
                                    ConditionExpression="attribute_not_exists(#k)",
                                    ExpressionAttributeNames={"#k": DECISION_SORT_ATTRIBUTE})
        except ClientError as exc:
            if _error_code(exc) == "ConditionalCheckFailedException":
                return False
            raise self._failure(exc) from exc
        except BotoCoreError as exc:
            raise self._failure(exc) from exc
        return True

    def get(self, key: str) -> dict[str, Any] | None:
        item_key = self._key_of(key)
        try:
            item = self._dynamodb.get_item(TableName=self.table, Key=item_key, ConsistentRead=True).get("Item")
        except (ClientError, BotoCoreError) as exc:
            raise self._failure(exc) from exc
        return None if item is None else json.loads(item["record"]["S"])

    def list(self, prefix: str) -> list[tuple[str, dict[str, Any]]]:
        condition = "#p = :p"
        values = {":p": {"S": DECISION_PARTITION_VALUE}}
        if prefix:
            condition += " AND begins_with(#k, :prefix)"
            values[":prefix"] = {"S": prefix}
        out: list[tuple[str, dict[str, Any]]] = []
        try:
            pages = self._dynamodb.get_paginator("query").paginate(
                TableName=self.table, KeyConditionExpression=condition, ExpressionAttributeValues=values,
                ExpressionAttributeNames={"#p": DECISION_PARTITION_ATTRIBUTE,
                                          **({"#k": DECISION_SORT_ATTRIBUTE} if prefix else {})},
                ConsistentRead=True)
            for page in pages:
                for item in page.get("Items", []):
                    out.append((item[DECISION_SORT_ATTRIBUTE]["S"], json.loads(item["record"]["S"])))
        except (ClientError, BotoCoreError) as exc:
            raise self._failure(exc) from exc
        return out  # in sort-key order: keys are ASCII, so byte order is string order


# --- S3 --------------------------------------------------------------------------------------------

_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class S3ObjectStore:
    """Write-once objects in an S3 bucket with Object Lock.

    What guarantees what:

    - ``put`` sends ``If-None-Match: *``: S3 refuses to create a key that exists (412), atomically,
      so two gateways shipping the same segment cannot overwrite each other. S3 checks only the
      current version, so ``put`` first looks for any version of the key (a delete marker on top
      must not make a written key writable again).
    - A principal that can ``PutObject`` may still write the key *without* that header; S3 then
      stores a new version (Object Lock implies versioning). Object Lock makes every version
      undeletable and unchangeable for the bucket's default retention (GOVERNANCE: except for
      principals allowed ``s3:BypassGovernanceRetention``; COMPLIANCE: no one). So ``get`` and
      the identical-content check read the **oldest** version of a key, the one wardgate wrote,
      and ``list`` shows every key that has a version (a delete marker hides nothing).
    - At the first ``put`` the bucket's Object Lock configuration is read; a bucket without Object
      Lock enabled and a default retention is refused unless the URL says ``worm=off``.
    """

    def __init__(self, url: str):
        parsed = _parse_url(url, "s3", {"region", "worm"})
        self.url = url
        self.bucket = parsed.netloc
        if not self.bucket:
            raise ValueError(f"{url}: missing bucket name")
        if not _BUCKET_NAME.match(self.bucket):
            raise ValueError(f"{url}: {self.bucket!r} is not an S3 bucket name")
        prefix = unquote(parsed.path).lstrip("/")
        self.prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"
        worm = parsed.params.get("worm", "on")
        if worm not in ("on", "off"):
            raise ValueError(f"{url}: worm={worm!r}: use on or off")
        self.require_worm = worm == "on"
        self.retention: dict[str, Any] | None = None
        self._s3 = _client("s3", parsed.params.get("region"), url)

    def _full_key(self, key: str) -> str:
        if not key or key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"object store {self.url}: key {key!r} is empty, absolute or leaves the prefix")
        return self.prefix + key

    def _ensure_write_once(self) -> None:
        if not self.require_worm or self.retention is not None:
            return
        try:
            config = self._s3.get_object_lock_configuration(Bucket=self.bucket).get("ObjectLockConfiguration", {})
        except ClientError as exc:
            if _error_code(exc) != "ObjectLockConfigurationNotFoundError":
                raise StoreUnavailable(f"object store {self.url}: {_describe(exc)}") from exc
            config = {}
        except BotoCoreError as exc:
            raise StoreUnavailable(f"object store {self.url}: {_describe(exc)}") from exc
        retention = config.get("Rule", {}).get("DefaultRetention", {})
        if config.get("ObjectLockEnabled") != "Enabled" or not retention.get("Mode") \
                or not (retention.get("Days") or retention.get("Years")):
            raise StoreUnavailable(
                f"object store {self.url}: bucket {self.bucket} is not write-once: enable S3 Object Lock with "
                f"a default retention (or add ?worm=off for an emulator without Object Lock)")
        self.retention = dict(retention)

    def _oldest_version(self, full_key: str) -> str | None:
        oldest = None
        with _sdk_errors("object store", self.url):
            for page in self._s3.get_paginator("list_object_versions").paginate(Bucket=self.bucket, Prefix=full_key):
                for version in page.get("Versions", []):
                    if version["Key"] == full_key:
                        oldest = version["VersionId"]  # S3 lists a key's versions newest first
        return oldest

    def _read_original(self, full_key: str) -> bytes | None:
        version = self._oldest_version(full_key)
        if version is None:
            return None
        try:
            return self._s3.get_object(Bucket=self.bucket, Key=full_key, VersionId=version)["Body"].read()
        except ClientError as exc:
            if _error_code(exc) in ("NoSuchKey", "NoSuchVersion"):
                return None
            raise StoreUnavailable(f"object store {self.url}: {_describe(exc)}") from exc
        except BotoCoreError as exc:
            raise StoreUnavailable(f"object store {self.url}: {_describe(exc)}") from exc

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        full_key = self._full_key(key)
        self._ensure_write_once()
        # If-None-Match only sees the current version: after a delete marker it would let a second
        # write through. So any earlier version of the key counts as the key existing.
        existing = self._read_original(full_key)
        if existing is not None:
            if existing != bytes(data):
                raise ObjectExists(f"object store {self.url}: {key} exists with different content")
            return
        try:
            # The checksum is also what S3 requires of any write into an Object Lock bucket.
            self._s3.put_object(Bucket=self.bucket, Key=full_key, Body=bytes(data), ContentType=content_type,
                                IfNoneMatch="*", ChecksumAlgorithm="SHA256")
            return
        except ClientError as exc:
            if _error_code(exc) not in ("PreconditionFailed", "ConditionalRequestConflict"):
                raise StoreUnavailable(f"object store {self.url}: {_describe(exc)}") from exc
        except BotoCoreError as exc:
            raise StoreUnavailable(f"object store {self.url}: {_describe(exc)}") from exc
        existing = self._read_original(full_key)
        if existing is None:  # a concurrent conditional write has not completed yet
            raise StoreUnavailable(f"object store {self.url}: {key} is being written concurrently; retry")
        if existing != bytes(data):
            raise ObjectExists(f"object store {self.url}: {key} exists with different content")

    def get(self, key: str) -> bytes:
        data = self._read_original(self._full_key(key))
        if data is None:
            raise KeyError(key)
        return data

    def list(self, prefix: str = "") -> list[str]:
        keys: set[str] = set()
        with _sdk_errors("object store", self.url):
            pages = self._s3.get_paginator("list_object_versions").paginate(
                Bucket=self.bucket, Prefix=self.prefix + prefix)
            for page in pages:
                keys.update(v["Key"][len(self.prefix):] for v in page.get("Versions", []))
        return sorted(keys)


# --- KMS -------------------------------------------------------------------------------------------

KMS_RAW_MESSAGE_LIMIT = 4096  # bytes KMS signs as RAW; larger messages are signed as their SHA-256


class _UnverifiedSignature(StoreUnavailable):
    """KMS answered with a signature the key's public half rejects."""


class KmsSigner:
    """Signs audit digests with an AWS KMS ``ECC_NIST_P256`` key (``ECDSA_SHA_256``, DER signature).

    The key is resolved once (an alias to its key ARN) and pinned, so re-pointing the alias later
    cannot switch keys under a running trail without a restart. Every signature is verified
    locally before it is returned: one the exported public key rejects would make the trail
    unverifiable, so it fails now instead. Messages over 4096 bytes (KMS's RAW limit) are sent as
    their SHA-256 with ``MessageType=DIGEST``.
    """

    algorithm = ALGORITHM_ECDSA_P256

    def __init__(self, url: str):
        parsed = _parse_url(url, "awskms", {"region"})
        self.url = url
        key = parsed.name
        if not key:
            raise ValueError(f"{url}: missing key id, alias or ARN")
        region = _region_of_arn(parsed, key) if key.startswith("arn:") else parsed.params.get("region")
        self._kms = _client("kms", region, url)
        with _sdk_errors("signer", url):
            response = self._kms.get_public_key(KeyId=key)
        # CustomerMasterKeySpec is the deprecated name KMS still returns (and all some emulators return).
        spec = response.get("KeySpec") or response.get("CustomerMasterKeySpec")
        usage = response.get("KeyUsage")
        if spec != "ECC_NIST_P256" or usage != "SIGN_VERIFY" \
                or "ECDSA_SHA_256" not in response.get("SigningAlgorithms", []):
            raise ValueError(f"{url}: key is {spec} {usage}; wardgate needs an ECC_NIST_P256 SIGN_VERIFY key")
        public_key = serialization.load_der_public_key(response["PublicKey"])
        if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(public_key.curve, ec.SECP256R1):
            raise ValueError(f"{url}: KMS returned a public key that is not ECDSA P-256")
        self._public_key = public_key
        self._key_arn = response["KeyId"]
        self.key_id = public_key_id(public_key)

    def sign(self, data: bytes) -> bytes:
        data = bytes(data)
        if len(data) <= KMS_RAW_MESSAGE_LIMIT:
            return self._signed(data, data, "RAW")
        digest = hashlib.sha256(data).digest()
        try:
            return self._signed(data, digest, "DIGEST")
        except _UnverifiedSignature:
            # moto ignores MessageType=DIGEST and hashes the digest again. Real KMS never gets here
            # (and would refuse a RAW message over 4096 bytes); an emulator accepts it.
            return self._signed(data, data, "RAW")

    def _signed(self, data: bytes, message: bytes, message_type: str) -> bytes:
        with _sdk_errors("signer", self.url):
            signature = self._kms.sign(KeyId=self._key_arn, Message=message, MessageType=message_type,
                                       SigningAlgorithm="ECDSA_SHA_256")["Signature"]
        try:
            self._public_key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            raise _UnverifiedSignature(
                f"signer {self.url}: KMS returned a signature ({message_type}) that key {self.key_id} "
                f"does not verify") from None
        return signature

    def public_key_pem(self) -> bytes:
        return self._public_key.public_bytes(serialization.Encoding.PEM,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)


# --- credentials -----------------------------------------------------------------------------------

class SecretsManagerSource:
    """The backend credential in a Secrets Manager secret, at a version stage (``AWSCURRENT``).

    Fetched anew on every call (the broker caches), so a rotation is seen on the next refresh.
    """

    def __init__(self, url: str, username: str):
        parsed = _parse_url(url, "aws-sm", {"region", "stage"})
        self.url = url
        self.username = username
        self.secret_id = parsed.name
        if not self.secret_id:
            raise ValueError(f"{url}: missing secret name or ARN")
        self.stage = parsed.params.get("stage", "AWSCURRENT")
        if not self.stage:
            raise ValueError(f"{url}: empty stage")
        region = _region_of_arn(parsed, self.secret_id) if self.secret_id.startswith("arn:") \
            else parsed.params.get("region")
        self._secrets = _client("secretsmanager", region, url)

    def fetch(self) -> Credential:
        try:
            response = self._secrets.get_secret_value(SecretId=self.secret_id, VersionStage=self.stage)
        except (ClientError, BotoCoreError) as exc:
            raise SecretUnavailable(f"secret source {self.url}: {_describe(exc)}") from exc
        text = response.get("SecretString")
        if text is None:
            try:
                text = bytes(response["SecretBinary"]).decode("utf-8")
            except (KeyError, UnicodeDecodeError):
                raise CredentialError(f"secret source {self.url}: the secret is neither text nor UTF-8") from None
        return credential_from_secret_text(text, self.username, source=self.url)


_RDS_HOST_REGION = re.compile(r"\.([a-z]{2}(?:-[a-z]+)+-\d+)\.rds\.amazonaws\.com(?:\.cn)?$")


class RdsIamSource:
    """An RDS / Aurora IAM authentication token as the password of ``username``.

    The token is a SigV4-presigned ``connect`` request signed locally with the ambient identity (no
    network call); it is valid for 15 minutes, and RDS accepts it only over TLS. The region is
    ``?region=``, else the one in an ``*.rds.amazonaws.com`` host name, else boto3's default.
    """

    TOKEN_LIFETIME = 15 * 60
    EXPIRY_MARGIN = 60  # stop handing a token out a minute before RDS would refuse it

    def __init__(self, url: str, username: str):
        parsed = _parse_url(url, "rds-iam", {"region"})
        self.url = url
        parts = urlsplit(url)
        if not parts.hostname:
            raise ValueError(f"{url}: missing database host")
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"{url}: the port is not a number") from None
        if port is None:
            raise ValueError(f"{url}: missing port (rds-iam://HOST:PORT)")
        if parts.path not in ("", "/"):
            raise ValueError(f"{url}: unexpected path {parts.path!r} (the database is chosen by the client)")
        if not username:
            raise ValueError(f"{url}: a database user name is required")
        self.host, self.port, self.username = parts.hostname, port, username
        host_region = _RDS_HOST_REGION.search(self.host)
        region = parsed.params.get("region") or (host_region.group(1) if host_region else None)
        self._rds = _client("rds", region, url)
        self.region = self._rds.meta.region_name

    def fetch(self) -> Credential:
        issued_at = time.time()
        try:
            token = self._rds.generate_db_auth_token(DBHostname=self.host, Port=self.port,
                                                     DBUsername=self.username, Region=self.region)
        except BotoCoreError as exc:  # e.g. no credentials in the default chain
            raise SecretUnavailable(f"secret source {self.url}: cannot sign an IAM token: {_describe(exc)}") from exc
        return Credential(self.username, token, expires_at=issued_at + self.TOKEN_LIFETIME - self.EXPIRY_MARGIN)
