"""The AWS local cloud: one ``moto_server`` on a free loopback port, and the resources wardgate uses.

The emulator's clients are configured only through the environment :meth:`AwsLocalCloud.start`
returns (``AWS_ENDPOINT_URL`` plus moto's dummy credentials): the adapters run unchanged.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import boto3

from wardgate.adapters.aws import DECISION_TABLE_KEY_SCHEMA
from wardgate.core.credentials import Credential
from wardgate.devtools.pgserver import free_port

REGION = "us-east-1"
DLQ_MAX_RECEIVES = 3
AUDIT_RETENTION_DAYS = 1
DEFAULT_DB_USERNAME = "wardgate_svc"
_PREFIX = re.compile(r"^[a-z0-9][a-z0-9-]{1,30}$")  # fits every service's naming rules once suffixed


def _moto_server() -> str:
    """The moto_server next to this interpreter (the venv's), else the one on PATH."""
    beside = Path(sys.executable).parent / "moto_server"
    found = str(beside) if beside.exists() else shutil.which("moto_server")
    if not found:
        raise RuntimeError("moto_server is not installed: pip install 'moto[server]'")
    return found


class AwsLocalCloud:
    """moto_server as a subprocess (own process group), provisioned like a wardgate AWS account."""

    def __init__(self, workdir: Path | str | None = None):
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="wardgate-aws-"))
        self.port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._state_dir: Path | None = None
        self._clients: dict[tuple[str, str], Any] = {}

    @property
    def endpoint(self) -> str:
        if self.port is None:
            raise RuntimeError("the AWS local cloud is not started")
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """What a client needs: the endpoint, a region and moto's dummy credentials."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_REGION": REGION, "AWS_DEFAULT_REGION": REGION,
                "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}

    def start(self, timeout: float = 30.0) -> dict[str, str]:
        if self._process is not None:
            return self.env()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._state_dir = Path(tempfile.mkdtemp(prefix="aws-", dir=self.workdir))
        self.port = free_port()
        log = open(self._state_dir / "moto_server.log", "wb")
        try:
            self._process = subprocess.Popen(
                [_moto_server(), "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, cwd=self._state_dir)
        finally:
            log.close()
        try:
            self._wait_until_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self.env()

    def _wait_until_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self._process is not None
            if self._process.poll() is not None:
                raise RuntimeError(f"moto_server exited with {self._process.returncode}: {self._log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=1.0):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not answer on {self.endpoint} within {timeout}s") from None
                time.sleep(0.1)

    def _log_tail(self) -> str:
        try:
            return (self._state_dir / "moto_server.log").read_text(errors="replace")[-2000:]  # type: ignore[operator]
        except OSError:
            return "(no log)"

    def client(self, service: str) -> Any:
        """A boto3 client for the emulator, configured explicitly (not from os.environ)."""
        key = (service, self.endpoint)
        if key not in self._clients:
            self._clients[key] = boto3.session.Session().client(
                service, endpoint_url=self.endpoint, region_name=REGION,
                aws_access_key_id="test", aws_secret_access_key="test")
        return self._clients[key]

    def provision(self, prefix: str, db_credential: Credential | str | None = None) -> dict[str, str]:
        """Create every resource under names starting with ``prefix``; returns their wardgate URLs.

        ``db_credential`` is what the database secret holds: a :class:`Credential`, a password for
        ``wardgate_svc``, or None for ``wardgate_svc`` with a random password.
        """
        if not _PREFIX.match(prefix):
            raise ValueError(f"prefix {prefix!r}: 2-31 of a-z 0-9 -, starting with a letter or digit")
        if isinstance(db_credential, Credential):
            username, password = db_credential.username, db_credential.password or ""
        else:
            username, password = DEFAULT_DB_USERNAME, db_credential or secrets.token_urlsafe(24)

        sqs = self.client("sqs")
        dlq_url = sqs.create_queue(QueueName=f"{prefix}-approvals-dlq")["QueueUrl"]
        dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        sqs.create_queue(QueueName=f"{prefix}-approvals", Attributes={
            "VisibilityTimeout": "30",
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(DLQ_MAX_RECEIVES)})})

        s3 = self.client("s3")
        bucket = f"{prefix}-audit"
        s3.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
        s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
        s3.put_object_lock_configuration(Bucket=bucket, ObjectLockConfiguration={
            "ObjectLockEnabled": "Enabled",
            "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": AUDIT_RETENTION_DAYS}}})

        table = f"{prefix}-decisions"
        self.client("dynamodb").create_table(TableName=table, BillingMode="PAY_PER_REQUEST",
                                             **DECISION_TABLE_KEY_SCHEMA)

        kms = self.client("kms")
        key_id = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY",
                                Description=f"{prefix} audit digest signing")["KeyMetadata"]["KeyId"]
        alias = f"alias/{prefix}-audit-signing"
        kms.create_alias(AliasName=alias, TargetKeyId=key_id)

        secret = f"{prefix}/db"
        self.client("secretsmanager").create_secret(
            Name=secret, SecretString=json.dumps({"username": username, "password": password}))

        query = f"region={REGION}"
        return {
            "queue": f"sqs://{prefix}-approvals?{query}",
            "dead_letter_queue": f"sqs://{prefix}-approvals-dlq?{query}",
            "decision_store": f"dynamodb://{table}?{query}",
            "audit_bucket": f"s3://{bucket}/audit?{query}",
            "signer": f"awskms://{alias}?{query}",
            "db_secret": f"aws-sm://{secret}?{query}",
        }

    def stop(self) -> None:
        """Kill moto_server's process group and remove the state this instance created."""
        process, self._process = self._process, None
        if process is not None:
            try:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=5.0)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                pass
            try:  # whatever is left in the group, the leader included if SIGTERM did not end it
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait(timeout=5.0)
        if self._state_dir is not None:
            shutil.rmtree(self._state_dir, ignore_errors=True)
            self._state_dir = None
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        self.port = None
        self._clients.clear()

    def __enter__(self) -> "AwsLocalCloud":
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
