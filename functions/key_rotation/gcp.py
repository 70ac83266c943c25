"""Cloud Functions (2nd gen) entry point: rotation on Secret Manager's ``SECRET_ROTATE`` notification.

Secret Manager publishes every event of a secret with a rotation topic (``SECRET_ROTATE`` when its
rotation period is up, but also ``SECRET_VERSION_ADD``, ``…_DISABLE`` and the like) to that topic; a
push subscription delivers each as a CloudEvent. Here:

* every event first retires what is due (the previous role's password removed and its version
  disabled once ``grace_seconds`` have passed since the last rotation);
* ``SECRET_ROTATE`` then rotates: a new password on the other role, a login with it, and only then a
  new secret version (so ``latest`` never names a password the database does not know yet). A
  redelivered notification older than the last rotation does nothing.

Retirement therefore runs at the next event after the grace; a Cloud Scheduler job publishing a
message with ``eventType=WARDGATE_RETIRE`` and ``secretId`` to the rotation topic makes it prompt.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

import functions_framework
import google_crc32c
from google.api_core import exceptions as api_exceptions

from functions.key_rotation.handler import (Database, PendingInMemory, Rotation, RotationError, StoredSecret,
                                            load_targets, now_utc, target_for)
from wardgate.adapters.gcp import SECRETMANAGER_EMULATOR_ENV

ROTATE_EVENT = "SECRET_ROTATE"
TIMEOUT = 10.0

log = logging.getLogger("wardgate.key_rotation")


def secret_manager_client() -> Any:
    """The SDK client; a plaintext channel to the local fake when ``WARDGATE_SECRETMANAGER_EMULATOR_HOST``
    is set (as the gateway's adapter does), else the real service with the ambient service account."""
    import os

    import grpc
    from google.cloud import secretmanager_v1
    from google.cloud.secretmanager_v1.services.secret_manager_service.transports import (
        SecretManagerServiceGrpcTransport)

    host = os.environ.get(SECRETMANAGER_EMULATOR_ENV)
    if host:
        transport = SecretManagerServiceGrpcTransport(channel=grpc.insecure_channel(host))
        return secretmanager_v1.SecretManagerServiceClient(transport=transport)
    return secretmanager_v1.SecretManagerServiceClient()


class SecretManagerStore(PendingInMemory):
    """:class:`handler.SecretStore` on one Secret Manager secret: ``current`` is ``latest``; the pending
    value stays in memory until :meth:`promote` adds it as a new version."""

    def __init__(self, client: Any, secret: str):
        self._client = client
        self.name = secret  # projects/P/secrets/S

    def _access(self, version: str) -> StoredSecret | None:
        try:
            response = self._client.access_secret_version(name=version, timeout=TIMEOUT)
        except (api_exceptions.NotFound, api_exceptions.FailedPrecondition):
            return None  # gone, or disabled
        except api_exceptions.GoogleAPIError as exc:
            raise RotationError(f"secret {self.name}: cannot read {version}: {exc.message}") from None
        data = bytes(response.payload.data)
        if response.payload.data_crc32c and response.payload.data_crc32c != google_crc32c.value(data):
            raise RotationError(f"secret {self.name}: {version} arrived corrupted (CRC32C mismatch)")
        return StoredSecret(response.name, data.decode("utf-8"))

    def current(self) -> StoredSecret:
        stored = self._access(f"{self.name}/versions/latest")
        if stored is None:
            raise RotationError(f"secret {self.name} has no readable latest version: put the first credential "
                                "before rotating")
        return stored

    def version(self, version_id: str) -> StoredSecret | None:
        return self._access(version_id)

    def promote(self, token: str) -> None:
        pending = self.pending(token)
        if pending is None:
            raise RotationError(f"secret {self.name}: nothing pending under {token}")
        data = pending.text.encode()
        try:
            self._client.add_secret_version(parent=self.name, payload={"data": data,
                                                                       "data_crc32c": google_crc32c.value(data)},
                                            timeout=TIMEOUT)
        except api_exceptions.GoogleAPIError as exc:
            raise RotationError(f"secret {self.name}: cannot add the new version: {exc.message}") from None
        self._pending = None

    def disable(self, version_id: str) -> None:
        try:
            self._client.disable_secret_version(name=version_id, timeout=TIMEOUT)
        except api_exceptions.NotFound:
            pass
        except api_exceptions.GoogleAPIError as exc:
            raise RotationError(f"secret {self.name}: cannot disable {version_id}: {exc.message}") from None


def _secret_of(url: str) -> str | None:
    if not url.startswith("gcp-sm://"):
        return None
    parts = url[len("gcp-sm://"):].split("?", 1)[0].split("/")
    return "/".join(parts[:4]) if len(parts) >= 4 else None


def _matcher(secret_id: str):
    # Notifications may name the project by number where the settings name it by id: fall back to
    # the secret's own name when the full name matches nothing.
    def exact(url: str) -> bool:
        return _secret_of(url) == secret_id

    def by_name(url: str) -> bool:
        secret = _secret_of(url)
        return secret is not None and secret.split("/")[-1] == secret_id.split("/")[-1]

    return exact, by_name


def handle_notification(data: dict[str, Any], *, client: Any | None = None, now: datetime | None = None) -> str:
    """Act on one Pub/Sub-delivered Secret Manager notification; returns what was done."""
    message = data.get("message") if isinstance(data, dict) else None
    attributes = message.get("attributes") if isinstance(message, dict) else None
    if not isinstance(attributes, dict) or not attributes.get("secretId") or not attributes.get("eventType"):
        raise RotationError("not a Secret Manager notification: message.attributes needs eventType and secretId")
    secret_id, event_type = attributes["secretId"], attributes["eventType"]
    targets = load_targets()
    exact, by_name = _matcher(secret_id)
    try:
        url, target = target_for(targets, exact)
    except RotationError:
        url, target = target_for(targets, by_name)
    store = SecretManagerStore(client or secret_manager_client(), _secret_of(url))
    rotation = Rotation(store, target, Database(target))
    now = now or now_utc()
    retired = rotation.retire_due(now)
    if event_type != ROTATE_EVENT:
        return f"retired {retired}" if retired else "nothing due"
    published = message.get("publishTime")
    last = rotation.last_rotated()
    if published and last is not None and last >= datetime.fromisoformat(published.replace("Z", "+00:00")):
        return "already rotated after this notification"
    return f"rotated to {rotation.rotate(now)}"


@functions_framework.cloud_event
def rotate(cloud_event: Any) -> None:
    """The entry point (``key_rotation.gcp.rotate``). Raising makes Pub/Sub redeliver (then dead-letter)."""
    outcome = handle_notification(cloud_event.data)
    log.info("key rotation (%s): %s", cloud_event["id"], outcome)
