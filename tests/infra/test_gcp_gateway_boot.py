"""The GCP gateway VM's boot command: it fetches the TLS material from Secret Manager with the VM's
identity before starting the gateway, and starts nothing when it cannot.

``FakeGoogleApis`` is a fake of the two wire APIs the command calls — the metadata server's token
endpoint and Secret Manager's REST ``versions/latest:access`` — as documented by Google; the command
is the real one (``infra.common.gateway_config.boot_command``) run by ``/bin/sh``.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

from infra.common.gateway_config import boot_command
from infra.gcp.gateway import container_declaration, machine_type

TOKEN = "ya29.fake-token"
SECRETS = {"projects/acme/secrets/wardgate-dev-gateway-tls-cert": b"-----BEGIN CERTIFICATE-----\nMIIB\n",
           "projects/acme/secrets/wardgate-dev-gateway-tls-key": b"-----BEGIN PRIVATE KEY-----\nMIIE\n"}


class FakeGoogleApis(BaseHTTPRequestHandler):
    """Fake metadata server token endpoint + Secret Manager ``access`` (REST v1)."""

    def do_GET(self):  # noqa: N802 (http.server's naming)
        if self.path == "/computeMetadata/v1/instance/service-accounts/default/token":
            if self.headers.get("Metadata-Flavor") != "Google":
                return self._answer(403, {"error": "missing Metadata-Flavor header"})
            return self._answer(200, {"access_token": TOKEN, "expires_in": 3599, "token_type": "Bearer"})
        if self.path.startswith("/v1/") and self.path.endswith("/versions/latest:access"):
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                return self._answer(401, {"error": {"code": 401, "status": "UNAUTHENTICATED"}})
            name = self.path[len("/v1/"):-len("/versions/latest:access")]
            if name not in SECRETS:
                return self._answer(404, {"error": {"code": 404, "status": "NOT_FOUND"}})
            return self._answer(200, {"name": f"{name}/versions/1",
                                      "payload": {"data": base64.b64encode(SECRETS[name]).decode()}})
        self._answer(404, {})

    def _answer(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):  # keep test output quiet
        pass


@pytest.fixture(scope="module")
def google_apis():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeGoogleApis)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _run(script: str, base_url: str, root) -> subprocess.CompletedProcess:
    script = (script.replace("http://metadata.google.internal", base_url)
              .replace("https://secretmanager.googleapis.com", base_url)
              .replace("/tmp/wardgate", str(root))
              .replace("python -c", f"{sys.executable} -c")
              # Stand in for the gateway: show what it would be started with.
              .replace("exec wardgate serve --config", "exec cat"))
    return subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True, timeout=60,
                          env={"PATH": os.environ["PATH"], "WARDGATE_CONFIG_YAML": "state_dir: /var/lib/wardgate\n"})


def test_boot_fetches_tls_from_secret_manager_into_private_files_then_starts(google_apis, tmp_path):
    names = {"cert": "projects/acme/secrets/wardgate-dev-gateway-tls-cert",
             "key": "projects/acme/secrets/wardgate-dev-gateway-tls-key"}
    result = _run(boot_command(tls_from_env=False, tls_from_secret_manager=names)[2], google_apis, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "state_dir: /var/lib/wardgate\n"  # the configuration the gateway was given
    for part, filename in (("cert", "server.pem"), ("key", "server-key.pem")):
        written = tmp_path / "tls" / filename
        assert written.read_bytes() == SECRETS[names[part]]
        assert stat.S_IMODE(written.stat().st_mode) == 0o600


def test_boot_starts_no_gateway_when_a_secret_cannot_be_read(google_apis, tmp_path):
    names = {"cert": "projects/acme/secrets/wardgate-dev-gateway-tls-cert",
             "key": "projects/acme/secrets/not-created-yet"}
    result = _run(boot_command(tls_from_env=False, tls_from_secret_manager=names)[2], google_apis, tmp_path)
    assert result.returncode != 0
    assert "HTTP Error 404" in result.stderr and "state_dir" not in result.stdout


def test_container_declaration_runs_the_boot_command_with_the_configuration():
    names = {"cert": "projects/acme/secrets/c", "key": "projects/acme/secrets/k"}
    spec = yaml.safe_load(container_declaration("registry/wardgate@sha256:ab", "listeners: []\n", names))["spec"]
    [container] = spec["containers"]
    assert container["command"] == ["/bin/sh"] and container["args"][0] == "-c"
    assert container["args"][1] == boot_command(tls_from_env=False, tls_from_secret_manager=names)[2]
    assert container["env"] == [{"name": "WARDGATE_CONFIG_YAML", "value": "listeners: []\n"}]
    assert spec["restartPolicy"] == "Always"


@pytest.mark.parametrize("cpu, memory_mb, expected", [(0.5, 1024, "e2-medium"), (1, 4096, "e2-medium"),
                                                      (2, 2048, "e2-standard-2"), (1, 6144, "e2-standard-2"),
                                                      (4, 16384, "e2-standard-4")])
def test_machine_type_holds_the_requested_cpu_and_memory(cpu, memory_mb, expected):
    assert machine_type(cpu, memory_mb) == expected
