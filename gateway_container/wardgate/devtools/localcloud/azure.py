"""The Azure local cloud: Azurite (blob, queue, table) and a fake Key Vault, on loopback.

``AzureLocalCloud(workdir)``: ``start()`` runs ``azurite`` (npm) and
``python -m wardgate.devtools.localcloud.azure_fakes`` as subprocesses, each in its own process group
on free ports of 127.0.0.1, and returns the environment a client needs:

- ``AZURE_STORAGE_CONNECTION_STRING``: Azurite's well-known ``devstoreaccount1`` key and explicit
  blob/queue/table endpoints (the storage SDKs' own convention);
- ``WARDGATE_AZURE_KEYVAULT_URL_TEMPLATE`` / ``_CA_FILE`` / ``_TOKEN``: the fake vault's URL, the CA
  of its certificate and the bearer token it accepts (see ``wardgate.adapters.azure``).

``provision(prefix)`` creates a queue and its ``-poison`` queue, a table, a container, an EC P-256 key
and a database secret, through the SDKs, and returns their URLs. Azurite implements no container
immutability, so the ``audit_bucket`` URL carries ``?worm=off``.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from wardgate.devtools.pgserver import free_port

ACCOUNT = "devstoreaccount1"
# Azurite's published development key (https://learn.microsoft.com/azure/storage/common/storage-use-azurite).
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
VAULT = "wardgate-local"


class AzureLocalCloud:
    """Azurite plus :class:`~wardgate.devtools.localcloud.azure_fakes.FakeKeyVault`; see module doc."""

    def __init__(self, workdir: Path | str | None = None):
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="wardgate-azure-")).absolute()
        self.state_dir = self.workdir / "azure-localcloud"
        self._processes: list[subprocess.Popen[bytes]] = []
        self._env: dict[str, str] = {}

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> dict[str, str]:
        if self._processes:
            return dict(self._env)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        blob, queue, table, vault = free_port(), free_port(), free_port(), free_port()
        azurite = shutil.which("azurite")
        if azurite is None:
            raise RuntimeError("azurite is not on PATH (npm install -g azurite)")
        try:
            self._spawn("azurite", [azurite, "--silent", "--location", str(self.state_dir / "azurite"),
                                    "--blobHost", "127.0.0.1", "--blobPort", str(blob),
                                    "--queueHost", "127.0.0.1", "--queuePort", str(queue),
                                    "--tableHost", "127.0.0.1", "--tablePort", str(table),
                                    "--skipApiVersionCheck", "--loose", "--disableProductStyleUrl"])
            token = secrets.token_urlsafe(24)
            self._spawn("keyvault", [sys.executable, "-m", "wardgate.devtools.localcloud.azure_fakes",
                                     "--workdir", str(self.state_dir), "--port", str(vault), f"--token={token}"])
            for port in (blob, queue, table, vault):
                self._wait_for_port(port)
        except BaseException:
            self.stop()
            raise
        endpoints = ";".join(f"{name}Endpoint=http://127.0.0.1:{port}/{ACCOUNT}"
                             for name, port in (("Blob", blob), ("Queue", queue), ("Table", table)))
        self._env = {
            "AZURE_STORAGE_CONNECTION_STRING":
                f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};{endpoints};",
            "WARDGATE_AZURE_KEYVAULT_URL_TEMPLATE": f"https://127.0.0.1:{vault}",
            "WARDGATE_AZURE_KEYVAULT_CA_FILE": str(self.state_dir / "keyvault-tls" / "dev-ca.pem"),
            "WARDGATE_AZURE_KEYVAULT_TOKEN": token,
        }
        return dict(self._env)

    def env(self) -> dict[str, str]:
        return dict(self._env)

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.state_dir / f"{name}.log", "ab")
        # Own session = own process group: stop() kills the emulator and anything it forked.
        self._processes.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                start_new_session=True))
        log.close()

    def _wait_for_port(self, port: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            for process in self._processes:
                if process.poll() is not None:
                    raise RuntimeError(f"{process.args[0]} exited with {process.returncode}; see {self.state_dir}/*.log")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"nothing answered on 127.0.0.1:{port} after {timeout}s") from None
                time.sleep(0.1)

    def stop(self) -> None:
        """Kill every process group this instance started and remove its state. Safe to repeat."""
        for process in self._processes:
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGTERM)
                    process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait(timeout=5)
                except ProcessLookupError:
                    pass
        self._processes.clear()
        shutil.rmtree(self.workdir if self._own_workdir else self.state_dir, ignore_errors=True)

    # -- SDK clients for provisioning and for tests that act as an operator ----------------------

    def _require_started(self) -> dict[str, str]:
        if not self._env:
            raise RuntimeError("AzureLocalCloud.start() first")
        return self._env

    def queue_client(self, name: str) -> Any:
        from azure.storage.queue import QueueClient

        return QueueClient.from_connection_string(self._require_started()["AZURE_STORAGE_CONNECTION_STRING"], name)

    def table_service(self) -> Any:
        from azure.data.tables import TableServiceClient

        return TableServiceClient.from_connection_string(self._require_started()["AZURE_STORAGE_CONNECTION_STRING"])

    def blob_service(self) -> Any:
        from azure.storage.blob import BlobServiceClient

        return BlobServiceClient.from_connection_string(self._require_started()["AZURE_STORAGE_CONNECTION_STRING"])

    def vault_options(self) -> dict[str, Any]:
        """Keyword arguments for ``KeyClient``/``SecretClient``/``CryptographyClient`` on the fake vault."""
        from azure.core.credentials import AccessToken

        env = self._require_started()
        token = env["WARDGATE_AZURE_KEYVAULT_TOKEN"]

        class _StaticToken:
            def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
                return AccessToken(token, int(time.time()) + 3600)

        return {"credential": _StaticToken(), "connection_verify": env["WARDGATE_AZURE_KEYVAULT_CA_FILE"],
                "verify_challenge_resource": False}

    def vault_url(self) -> str:
        return self._require_started()["WARDGATE_AZURE_KEYVAULT_URL_TEMPLATE"]

    def key_client(self) -> Any:
        from azure.keyvault.keys import KeyClient

        return KeyClient(self.vault_url(), **self.vault_options())

    def secret_client(self) -> Any:
        from azure.keyvault.secrets import SecretClient

        return SecretClient(self.vault_url(), **self.vault_options())

    # -- provisioning ----------------------------------------------------------------------------

    def provision(self, prefix: str = "wardgate") -> dict[str, str]:
        dashed = re.sub(r"[^a-z0-9]+", "-", prefix.lower()).strip("-") or "wardgate"
        compact = re.sub(r"[^A-Za-z0-9]", "", prefix) or "wardgate"
        if not compact[0].isalpha():
            compact = "t" + compact
        queue, table, container = f"{dashed}-approvals", f"{compact}decisions", f"{dashed}-audit"
        key, secret = f"{dashed}-audit-signing", f"{dashed}-db"
        for name in (queue, queue + "-poison"):
            self.queue_client(name).create_queue()
        self.table_service().create_table(table)
        self.blob_service().create_container(container)  # Azurite: no immutability policy possible
        self.key_client().create_ec_key(key, curve="P-256")
        self.secret_client().set_secret(secret, json.dumps({"username": "wardgate_svc",
                                                            "password": secrets.token_urlsafe(18)}))
        return {
            "queue": f"azqueue://{ACCOUNT}/{queue}?visibility=30&max_receives=5",
            "decision_store": f"aztable://{ACCOUNT}/{table}",
            "audit_bucket": f"azblob://{ACCOUNT}/{container}/audit?worm=off",
            "signer": f"azurekv-key://{VAULT}/{key}",
            "db_secret": f"azure-kv://{VAULT}/{secret}",
        }
