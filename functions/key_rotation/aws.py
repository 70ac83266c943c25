"""AWS Lambda entry point: the Secrets Manager rotation protocol over :mod:`handler`'s steps.

Secrets Manager invokes ``handler`` with ``{"SecretId", "ClientRequestToken", "Step"}`` four times per
rotation: ``createSecret`` (a new value for the other role, staged ``AWSPENDING``), ``setSecret`` (that
password set in PostgreSQL, logged in as the ``AWSCURRENT`` user), ``testSecret`` (log in with it) and
``finishSecret`` (``AWSCURRENT`` moves to it; the old value becomes ``AWSPREVIOUS``). Each step is
idempotent: a retried invocation finds its work done and returns.

Retiring the previous role after the grace period (``grace_seconds`` of the resource) happens

* at the start of every ``createSecret`` (so at the latest when the next rotation begins), and
* on ``{"SecretId": …, "Step": "retirePrevious"}`` — wardgate's own step, meant for an EventBridge
  Scheduler schedule a little after each rotation (e.g. hourly): removes the ``AWSPREVIOUS`` role's
  password once the grace is over, and does nothing otherwise.

The ``AWSPREVIOUS`` value stays in Secrets Manager (AWS's convention, for the record); it no longer
logs in.
"""

from __future__ import annotations

from typing import Any

import boto3
from aws_lambda_powertools import Logger
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from functions.key_rotation.handler import (Database, Rotation, RotationError, StoredSecret, load_targets,
                                            target_for)

ROTATION_STEPS = ("createSecret", "setSecret", "testSecret", "finishSecret")
RETIRE_STEP = "retirePrevious"
_CLIENT_CONFIG = Config(connect_timeout=3, read_timeout=10, retries={"max_attempts": 3, "mode": "standard"})

logger = Logger(service="wardgate-key-rotation")
copy_config_to_registered_loggers(source_logger=logger, include={"wardgate.key_rotation"})


def _describe(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return f"{error.get('Code', 'error')}: {error.get('Message', '')}"
    return str(exc) or type(exc).__name__


def _not_found(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") == "ResourceNotFoundException"


class SecretsManagerStore:
    """:class:`handler.SecretStore` on one Secrets Manager secret, by version stage."""

    def __init__(self, client: Any, secret_id: str):
        self._client = client
        self.name = secret_id

    def _get(self, **selector: str) -> StoredSecret | None:
        try:
            response = self._client.get_secret_value(SecretId=self.name, **selector)
        except ClientError as exc:
            if _not_found(exc):
                return None
            raise RotationError(f"secret {self.name}: {_describe(exc)}") from None
        text = response.get("SecretString")
        if text is None:
            binary = response.get("SecretBinary")
            if binary is None:
                return None  # a version Secrets Manager registered for rotation, not yet written
            text = bytes(binary).decode("utf-8", errors="strict")
        return StoredSecret(response["VersionId"], text)

    def stages(self) -> dict[str, list[str]]:
        try:
            return self._client.describe_secret(SecretId=self.name).get("VersionIdsToStages", {})
        except ClientError as exc:
            raise RotationError(f"secret {self.name}: {_describe(exc)}") from None

    def current(self) -> StoredSecret:
        stored = self._get(VersionStage="AWSCURRENT")
        if stored is None:
            raise RotationError(f"secret {self.name} has no AWSCURRENT value: put the first credential before "
                                "rotating")
        return stored

    def version(self, version_id: str) -> StoredSecret | None:
        return self._get(VersionId=version_id)

    def pending(self, token: str | None = None) -> StoredSecret | None:
        stored = self._get(VersionStage="AWSPENDING", **({"VersionId": token} if token else {}))
        if stored is None or "AWSCURRENT" in self.stages().get(stored.version, []):
            return None  # a finished rotation's label, not work in progress
        return stored

    def put_pending(self, token: str, text: str) -> None:
        try:
            self._client.put_secret_value(SecretId=self.name, ClientRequestToken=token, SecretString=text,
                                          VersionStages=["AWSPENDING"])
        except ClientError as exc:
            raise RotationError(f"secret {self.name}: cannot store the pending value: {_describe(exc)}") from None

    def promote(self, token: str) -> None:
        stages = self.stages()
        current = next((v for v, labels in stages.items() if "AWSCURRENT" in labels), None)
        try:
            if current != token:
                self._client.update_secret_version_stage(SecretId=self.name, VersionStage="AWSCURRENT",
                                                         MoveToVersionId=token, RemoveFromVersionId=current)
            if "AWSPENDING" in stages.get(token, []):
                # Done: no pending label left, so the next rotation does not look "in progress".
                self._client.update_secret_version_stage(SecretId=self.name, VersionStage="AWSPENDING",
                                                         RemoveFromVersionId=token)
        except ClientError as exc:
            raise RotationError(f"secret {self.name}: cannot promote version {token}: {_describe(exc)}") from None

    def disable(self, version_id: str) -> None:
        """Nothing to do: ``AWSPREVIOUS`` stays for the record; its role no longer has a password."""


def _secret_url_id(url: str) -> str | None:
    if not url.startswith("aws-sm://"):
        return None
    return url[len("aws-sm://"):].split("?", 1)[0]


def rotation_for(event: dict[str, Any], client: Any | None = None) -> Rotation:
    """The rotation of the secret the event names, checked against the function's settings."""
    secret_id = event.get("SecretId")
    if not isinstance(secret_id, str) or not secret_id:
        raise RotationError("event has no SecretId")
    client = client or boto3.session.Session().client("secretsmanager", config=_CLIENT_CONFIG)
    try:
        metadata = client.describe_secret(SecretId=secret_id)
    except (ClientError, BotoCoreError) as exc:
        raise RotationError(f"secret {secret_id}: {_describe(exc)}") from None
    if not metadata.get("RotationEnabled"):
        raise RotationError(f"secret {metadata['ARN']} does not have rotation enabled; refusing to rotate it")
    names = {metadata["ARN"], metadata["Name"]}
    _url, target = target_for(load_targets(), lambda url: _secret_url_id(url) in names)
    return Rotation(SecretsManagerStore(client, metadata["ARN"]), target, Database(target))


def run_step(event: dict[str, Any], client: Any | None = None) -> None:
    """One invocation: a rotation step, or ``retirePrevious``."""
    step = event.get("Step")
    if step not in (*ROTATION_STEPS, RETIRE_STEP):
        raise RotationError(f"unknown Step {step!r} (expected one of {', '.join((*ROTATION_STEPS, RETIRE_STEP))})")
    rotation = rotation_for(event, client)
    store: SecretsManagerStore = rotation.store  # type: ignore[assignment]
    if step == RETIRE_STEP:
        retired = rotation.retire_due()
        logger.info("retirement checked", extra={"retired_role": retired})
        return
    token = event.get("ClientRequestToken")
    if not isinstance(token, str) or not token:
        raise RotationError(f"{step}: event has no ClientRequestToken")
    labels = store.stages().get(token)
    # Secrets Manager registers the token as AWSPENDING before createSecret; a caller driving the
    # steps itself may let createSecret create it.
    if labels is None and step != "createSecret":
        raise RotationError(f"secret {store.name}: version {token} is not part of a rotation")
    if labels is not None and "AWSCURRENT" in labels:
        logger.info("version already current, nothing to do", extra={"step": step})
        return
    if labels is not None and "AWSPENDING" not in labels:
        raise RotationError(f"secret {store.name}: version {token} is not staged AWSPENDING")
    if step == "createSecret":
        rotation.retire_due()
        rotation.create_pending(token)
    elif step == "setSecret":
        rotation.set_pending(token)
    elif step == "testSecret":
        rotation.test_pending(token)
    else:
        rotation.finish(token)
    logger.info("step done", extra={"step": step})


@logger.inject_lambda_context(correlation_id_path="ClientRequestToken", clear_state=True)
def handler(event: dict[str, Any], context: Any) -> None:
    """The Lambda entry point (``functions.key_rotation.aws.handler``). Raising makes Secrets Manager
    mark the rotation failed and retry; nothing is half-applied that a retry cannot finish."""
    logger.append_keys(secret_id=event.get("SecretId"), step=event.get("Step"))
    try:
        run_step(event)
    except RotationError as exc:
        logger.error("rotation step failed", extra={"reason": str(exc)})
        raise
