"""The GCP local cloud: Google's emulators plus wardgate's fakes, on free loopback ports, no Docker.

| service        | what runs                                          | client variable                          |
|----------------|----------------------------------------------------|------------------------------------------|
| Cloud Storage  | ``gcp-storage-emulator start --in-memory``         | ``STORAGE_EMULATOR_HOST`` (http://…)     |
| Pub/Sub        | ``gcloud beta emulators pubsub start`` (Java)      | ``PUBSUB_EMULATOR_HOST``                 |
| Firestore      | ``gcloud emulators firestore start`` (Java)        | ``FIRESTORE_EMULATOR_HOST``              |
| Cloud KMS      | ``FakeCloudKms`` (``gcp_fakes``, gRPC)             | ``WARDGATE_KMS_EMULATOR_HOST``           |
| Secret Manager | ``FakeSecretManager`` (``gcp_fakes``, gRPC)        | ``WARDGATE_SECRETMANAGER_EMULATOR_HOST`` |

Each runs as a subprocess in its own process group (the gcloud wrappers start a JVM underneath), so
:meth:`GcpLocalCloud.stop` ends the whole tree. Provisioning goes through the real SDK clients,
pointed explicitly at the local endpoints (this process's environment is left alone).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

from wardgate.devtools.pgserver import free_port

DEFAULT_PROJECT = "wardgate-local"
START_TIMEOUT = 120.0  # the JVM emulators take 5-30 s on a busy machine


class LocalCloudError(RuntimeError):
    """An emulator did not start, or provisioning failed."""


class GcpLocalCloud:
    """Start, provision and stop the GCP emulators and fakes under ``workdir``."""

    def __init__(self, workdir: Path | str, project: str = DEFAULT_PROJECT):
        self.workdir = Path(workdir)
        self.state_dir = self.workdir / "gcp-localcloud"
        self.project = project
        self.env: dict[str, str] = {}
        self._processes: dict[str, subprocess.Popen[bytes]] = {}

    # ------------------------------------------------------------------------------------- lifecycle

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.state_dir / f"{name}.log", "wb")
        env = dict(os.environ, CLOUDSDK_CORE_DISABLE_PROMPTS="1")
        try:
            self._processes[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                                     stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            log.close()

    def _log_tail(self, name: str) -> str:
        try:
            return (self.state_dir / f"{name}.log").read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def _wait(self, name: str, ready: Callable[[], bool]) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        process = self._processes[name]
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise LocalCloudError(f"{name} exited with {process.returncode}:\n{self._log_tail(name)}")
            try:
                if ready():
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise LocalCloudError(f"{name} did not answer within {START_TIMEOUT:.0f}s:\n{self._log_tail(name)}")

    @staticmethod
    def _http_ok(url: str) -> bool:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200

    @staticmethod
    def _grpc_ready(host: str) -> bool:
        import grpc

        with grpc.insecure_channel(host) as channel:
            try:
                grpc.channel_ready_future(channel).result(timeout=1)
                return True
            except grpc.FutureTimeoutError:
                return False

    def start(self) -> dict[str, str]:
        """Start everything; returns the environment a client needs (also kept in ``self.env``)."""
        gcloud = shutil.which("gcloud")
        if gcloud is None:
            raise LocalCloudError("gcloud is not on PATH: the Pub/Sub and Firestore emulators come with it")
        storage_emulator = Path(sys.executable).with_name("gcp-storage-emulator")
        if not storage_emulator.exists():
            raise LocalCloudError(f"{storage_emulator} is missing: pip install gcp-storage-emulator")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "pubsub").mkdir(exist_ok=True)
        ports = {name: free_port() for name in ("storage", "pubsub", "firestore", "kms", "secretmanager")}
        try:
            self._spawn("storage", [str(storage_emulator), "start", "--host", "127.0.0.1",
                                    "--port", str(ports["storage"]), "--in-memory"])
            self._spawn("pubsub", [gcloud, "beta", "emulators", "pubsub", "start",
                                   f"--host-port=127.0.0.1:{ports['pubsub']}",
                                   f"--data-dir={self.state_dir / 'pubsub'}"])
            self._spawn("firestore", [gcloud, "emulators", "firestore", "start",
                                      f"--host-port=127.0.0.1:{ports['firestore']}"])
            self._spawn("fakes", [sys.executable, "-m", "wardgate.devtools.localcloud.gcp_fakes",
                                  "--kms-port", str(ports["kms"]), "--secretmanager-port", str(ports["secretmanager"])])
            self._wait("storage", lambda: self._http_ok(f"http://127.0.0.1:{ports['storage']}/storage/v1/b"))
            self._wait("fakes", lambda: self._grpc_ready(f"127.0.0.1:{ports['kms']}")
                       and self._grpc_ready(f"127.0.0.1:{ports['secretmanager']}"))
            self._wait("pubsub", lambda: self._http_ok(f"http://127.0.0.1:{ports['pubsub']}/"))
            self._wait("firestore", lambda: self._http_ok(f"http://127.0.0.1:{ports['firestore']}/"))
        except BaseException:
            self.stop()
            raise
        self.env = {
            "GOOGLE_CLOUD_PROJECT": self.project,
            "STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{ports['storage']}",
            "PUBSUB_EMULATOR_HOST": f"127.0.0.1:{ports['pubsub']}",
            "FIRESTORE_EMULATOR_HOST": f"127.0.0.1:{ports['firestore']}",
            "WARDGATE_KMS_EMULATOR_HOST": f"127.0.0.1:{ports['kms']}",
            "WARDGATE_SECRETMANAGER_EMULATOR_HOST": f"127.0.0.1:{ports['secretmanager']}",
        }
        return dict(self.env)

    def stop(self) -> None:
        """Stop every process group started here and remove the emulators' state."""
        for process in self._processes.values():
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for process in self._processes.values():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            try:  # the JVM under a gcloud wrapper may outlive the wrapper: end the group regardless
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            if process.poll() is None:
                process.wait(timeout=10)
        self._processes.clear()
        self.env = {}
        shutil.rmtree(self.state_dir, ignore_errors=True)

    def __enter__(self) -> "GcpLocalCloud":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ------------------------------------------------------------------------------------ SDK clients

    def _require_started(self) -> None:
        if not self.env:
            raise LocalCloudError("the GCP local cloud is not started")

    def _pubsub(self) -> tuple[Any, Any]:
        import grpc
        from google import pubsub_v1
        from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport
        from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

        host = self.env["PUBSUB_EMULATOR_HOST"]
        return (pubsub_v1.PublisherClient(transport=PublisherGrpcTransport(channel=grpc.insecure_channel(host))),
                pubsub_v1.SubscriberClient(transport=SubscriberGrpcTransport(channel=grpc.insecure_channel(host))))

    def storage_client(self) -> Any:
        """A google.cloud.storage client on the emulator (for tests that poke the bucket directly)."""
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        self._require_started()
        return storage.Client(project=self.project, credentials=AnonymousCredentials(),
                              client_options={"api_endpoint": self.env["STORAGE_EMULATOR_HOST"]})

    def _kms(self) -> Any:
        import grpc
        from google.cloud import kms_v1
        from google.cloud.kms_v1.services.key_management_service.transports import KeyManagementServiceGrpcTransport

        channel = grpc.insecure_channel(self.env["WARDGATE_KMS_EMULATOR_HOST"])
        return kms_v1.KeyManagementServiceClient(transport=KeyManagementServiceGrpcTransport(channel=channel))

    def secret_manager_client(self) -> Any:
        """A Secret Manager client on the fake (to add or disable versions)."""
        import grpc
        from google.cloud import secretmanager_v1
        from google.cloud.secretmanager_v1.services.secret_manager_service.transports import (
            SecretManagerServiceGrpcTransport)

        self._require_started()
        channel = grpc.insecure_channel(self.env["WARDGATE_SECRETMANAGER_EMULATOR_HOST"])
        return secretmanager_v1.SecretManagerServiceClient(transport=SecretManagerServiceGrpcTransport(channel=channel))

    # ---------------------------------------------------------------------------------- provisioning

    def create_queue(self, name: str, *, max_delivery_attempts: int = 5, ack_deadline: int = 10) -> str:
        """Topic ``name``, subscription ``name-sub`` with a dead-letter policy to topic ``name-dead``,
        whose subscription ``name-dead-sub`` keeps the dead letters. Returns the queue URL."""
        self._require_started()
        publisher, subscriber = self._pubsub()
        topic = f"projects/{self.project}/topics/{name}"
        dead_topic = f"projects/{self.project}/topics/{name}-dead"
        publisher.create_topic(name=topic)
        publisher.create_topic(name=dead_topic)
        subscriber.create_subscription(name=f"projects/{self.project}/subscriptions/{name}-dead-sub", topic=dead_topic)
        subscriber.create_subscription(request={
            "name": f"projects/{self.project}/subscriptions/{name}-sub", "topic": topic,
            "ack_deadline_seconds": ack_deadline,
            "dead_letter_policy": {"dead_letter_topic": dead_topic, "max_delivery_attempts": max_delivery_attempts},
        })
        return f"pubsub://{self.project}/{name}?subscription={name}-sub"

    def create_bucket(self, name: str, *, retention_seconds: int | None = 86400) -> str:
        """A bucket, with a retention policy unless ``retention_seconds`` is None. The emulator keeps the
        policy (so the adapter's write-once check sees it) but does not enforce it."""
        client = self.storage_client()
        bucket = client.create_bucket(name)
        if retention_seconds:
            bucket.retention_period = retention_seconds
            bucket.patch()
        return f"gs://{name}/audit"

    def create_signing_key(self, key_ring: str, key: str, algorithm: str = "EC_SIGN_P256_SHA256") -> str:
        """An asymmetric signing key (version 1) in ``global``; returns its ``gcpkms://`` URL."""
        from google.cloud import kms_v1

        self._require_started()
        client = self._kms()
        location = f"projects/{self.project}/locations/global"
        ring = client.create_key_ring(parent=location, key_ring_id=key_ring, key_ring={})
        created = client.create_crypto_key(parent=ring.name, crypto_key_id=key, crypto_key={
            "purpose": kms_v1.CryptoKey.CryptoKeyPurpose.ASYMMETRIC_SIGN,
            "version_template": {"algorithm": kms_v1.CryptoKeyVersion.CryptoKeyVersionAlgorithm[algorithm]},
        })
        return f"gcpkms://{created.name}/cryptoKeyVersions/1"

    def create_secret(self, secret_id: str, text: str) -> str:
        """A secret with one version holding ``text``; returns its ``gcp-sm://`` URL (latest version)."""
        client = self.secret_manager_client()
        secret = client.create_secret(parent=f"projects/{self.project}", secret_id=secret_id,
                                      secret={"replication": {"automatic": {}}})
        self.add_secret_version(secret_id, text)
        return f"gcp-sm://{secret.name}"

    def add_secret_version(self, secret_id: str, text: str) -> str:
        """Add a version (a rotation); returns the new version's resource name."""
        import google_crc32c

        data = text.encode()
        version = self.secret_manager_client().add_secret_version(
            parent=f"projects/{self.project}/secrets/{secret_id}",
            payload={"data": data, "data_crc32c": google_crc32c.value(data)})
        return version.name

    def provision(self, prefix: str, *, db_username: str = "wardgate_svc",
                  db_password: str | None = None) -> dict[str, str]:
        """Create the resources a gateway uses; their URLs under the keys the local clouds share."""
        try:
            urls = {
                "queue": self.create_queue(f"{prefix}-approvals"),
                "decision_store": f"firestore://{self.project}/{prefix}-decisions",  # collections are implicit
                "audit_bucket": self.create_bucket(f"{prefix}-audit"),
                "signer": self.create_signing_key(f"{prefix}-ring", "audit-signing"),
                "db_secret": self.create_secret(f"{prefix}-db", json.dumps(
                    {"username": db_username, "password": db_password or secrets.token_urlsafe(18)})),
            }
        except LocalCloudError:
            raise
        except Exception as exc:  # an SDK error while provisioning: say which cloud and why
            raise LocalCloudError(f"provisioning the GCP local cloud ({prefix!r}) failed: {exc}") from exc
        urls["queue_dead_letters"] = f"projects/{self.project}/subscriptions/{prefix}-approvals-dead-sub"
        return urls
