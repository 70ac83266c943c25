"""Backends for the core's ports, chosen by URL scheme.

One small module per backend (``local``, ``aws``, ``gcp``, ``azure``); a module is imported only when
a configured URL names it, so a gateway that uses S3 never imports the Azure SDK. Adapters never
import each other, and the core never imports an adapter (import-linter contracts in pyproject).

| port                 | embedded default        | AWS                 | GCP                    | Azure                      |
|----------------------|-------------------------|---------------------|------------------------|----------------------------|
| MessageQueue         | ``memory://NAME``       | ``sqs://``          | ``pubsub://``          | ``azqueue://``             |
| DecisionStore        | ``sqlite:///PATH``      | ``dynamodb://``     | ``firestore://``       | ``aztable://``             |
| ObjectStore          | ``file://DIR``          | ``s3://``           | ``gs://``              | ``azblob://``              |
| Signer               | ``file://KEY.pem``      | ``awskms://``       | ``gcpkms://``          | ``azurekv-key://``         |
| CredentialSource     | ``env://``, ``file://`` | ``aws-sm://``, ``rds-iam://`` | ``gcp-sm://``, ``cloudsql-iam://`` | ``azure-kv://``, ``azure-ad://`` |

The exact URL forms are documented in each adapter module.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable
from urllib.parse import urlparse

from wardgate.core.credentials import CredentialSource
from wardgate.core.integrity import Signer
from wardgate.core.ports import DecisionStore, MessageQueue, ObjectStore

_QUEUES = {
    "memory": "wardgate.adapters.local:MemoryQueue",
    "sqs": "wardgate.adapters.aws:SqsQueue",
    "pubsub": "wardgate.adapters.gcp:PubSubQueue",
    "azqueue": "wardgate.adapters.azure:StorageQueue",
}
_DECISION_STORES = {
    "sqlite": "wardgate.adapters.local:SqliteDecisionStore",
    "dynamodb": "wardgate.adapters.aws:DynamoDecisionStore",
    "firestore": "wardgate.adapters.gcp:FirestoreDecisionStore",
    "aztable": "wardgate.adapters.azure:TableDecisionStore",
}
_OBJECT_STORES = {
    "file": "wardgate.adapters.local:DirectoryObjectStore",
    "s3": "wardgate.adapters.aws:S3ObjectStore",
    "gs": "wardgate.adapters.gcp:GcsObjectStore",
    "azblob": "wardgate.adapters.azure:BlobObjectStore",
}
_SIGNERS = {
    "file": "wardgate.adapters.local:open_local_signer",
    "awskms": "wardgate.adapters.aws:KmsSigner",
    "gcpkms": "wardgate.adapters.gcp:CloudKmsSigner",
    "azurekv-key": "wardgate.adapters.azure:KeyVaultSigner",
}
_SECRETS = {
    "aws-sm": "wardgate.adapters.aws:SecretsManagerSource",
    "rds-iam": "wardgate.adapters.aws:RdsIamSource",
    "gcp-sm": "wardgate.adapters.gcp:SecretManagerSource",
    "cloudsql-iam": "wardgate.adapters.gcp:CloudSqlIamSource",
    "azure-kv": "wardgate.adapters.azure:KeyVaultSecretSource",
    "azure-ad": "wardgate.adapters.azure:EntraTokenSource",
}


class AdapterError(ValueError):
    """A URL names no known backend, or its backend's SDK is not installed."""


def _factory(kind: str, table: dict[str, str], url: str) -> Callable[..., Any]:
    scheme = urlparse(url).scheme
    target = table.get(scheme)
    if target is None:
        known = ", ".join(f"{s}://" for s in sorted(table))
        raise AdapterError(f"{kind} {url!r}: unsupported scheme {scheme!r} (supported: {known})")
    module_name, attr = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:  # the cloud SDK is an optional dependency
        raise AdapterError(f"{kind} {url!r} needs {exc.name!r}: pip install 'wardgate[cloud]'") from exc
    return getattr(module, attr)


def open_queue(url: str) -> MessageQueue:
    return _factory("queue", _QUEUES, url)(url)


def open_decision_store(url: str) -> DecisionStore:
    return _factory("decision store", _DECISION_STORES, url)(url)


def open_object_store(url: str) -> ObjectStore:
    return _factory("object store", _OBJECT_STORES, url)(url)


def open_signer(url: str) -> Signer:
    return _factory("signer", _SIGNERS, url)(url)


def open_secret_source(url: str, username: str) -> CredentialSource:
    """Cloud secret sources; ``env://`` and ``file://`` are the core's own (core.credentials)."""
    return _factory("secret source", _SECRETS, url)(url, username)


def register_secret_schemes() -> None:
    """Make the cloud secret schemes resolvable through core.credentials.open_source."""
    from wardgate.core.credentials import register_scheme

    for scheme in _SECRETS:
        register_scheme(scheme, lambda url, username: open_secret_source(url, username))
