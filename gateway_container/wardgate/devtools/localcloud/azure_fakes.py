"""Fakes of Azure services that have no local emulator, speaking their real wire API.

:class:`FakeKeyVault` is a *fake* (not Microsoft's code) of the Key Vault REST API, small enough to
drive the real SDK clients (``KeyClient``, ``CryptographyClient``, ``SecretClient``) end to end:

- HTTPS on loopback with a certificate from a private dev CA (``wardgate.tlsdev``): the SDK refuses
  plain HTTP; clients pass ``connection_verify=<ca_file>``.
- The SDK's challenge flow: a request without the expected bearer token gets ``401`` with
  ``WWW-Authenticate: Bearer authorization="…/tenant", resource="https://vault.azure.net"``; the SDK
  then asks its credential for a token and retries. Only ``token`` is accepted.
- Keys: create (EC P-256 only), get (latest or a version), sign (ES256, raw r||s like Key Vault).
  Secrets: set (a new version each time), get (latest or a version). Errors use Key Vault's
  ``{"error": {"code", "message"}}`` shape and status codes.

State lives in memory (one vault per server): it is gone when the process ends. Run it standalone
with ``python -m wardgate.devtools.localcloud.azure_fakes --workdir DIR --port PORT --token TOKEN``.
"""

from __future__ import annotations

import argparse
import base64
import json
import ssl
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, decode_dss_signature

from wardgate.tlsdev import ensure_dev_certificate, server_ssl_context

CHALLENGE = 'Bearer authorization="https://login.microsoftonline.com/00000000-0000-0000-0000-000000000000", ' \
            'resource="https://vault.azure.net"'


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class _VaultError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass
class _Version:
    version: str
    created: int
    value: Any  # an EC private key, or a secret's text


@dataclass
class _VaultState:
    keys: dict[str, list[_Version]] = field(default_factory=dict)
    secrets: dict[str, list[_Version]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _find(store: dict[str, list[_Version]], name: str, version: str, kind: str) -> _Version:
    versions = store.get(name)
    if not versions:
        raise _VaultError(404, f"{kind}NotFound", f"A {kind.lower()} with (name/id) {name} was not found in this key vault.")
    if not version:
        return versions[-1]
    for candidate in versions:
        if candidate.version == version:
            return candidate
    raise _VaultError(404, f"{kind}NotFound", f"A {kind.lower()} with (name/id) {name}/{version} was not found in this key vault.")


class FakeKeyVault:
    """A fake Key Vault (keys + secrets REST API) on ``https://127.0.0.1:PORT``; see module doc."""

    def __init__(self, workdir: Path, token: str, port: int = 0):
        self.token = token
        tls = ensure_dev_certificate(Path(workdir) / "keyvault-tls", hostnames=("localhost",), ips=("127.0.0.1",))
        self.ca_file = tls.ca_file
        self._state = _VaultState()
        self._server = ThreadingHTTPServer(("127.0.0.1", port), self._handler_class())
        self._server.daemon_threads = True
        context: ssl.SSLContext = server_ssl_context(tls.cert_file, tls.key_file)
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.port = self._server.server_address[1]
        self.url = f"https://127.0.0.1:{self.port}"
        self._thread: threading.Thread | None = None

    def start(self) -> "FakeKeyVault":
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-keyvault", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._server.serve_forever()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- the REST operations -------------------------------------------------------------------

    def _key_bundle(self, name: str, entry: _Version) -> dict[str, Any]:
        numbers = entry.value.public_key().public_numbers()
        return {"key": {"kid": f"{self.url}/keys/{name}/{entry.version}", "kty": "EC", "crv": "P-256",
                        "key_ops": ["sign", "verify"], "x": _b64url(numbers.x.to_bytes(32, "big")),
                        "y": _b64url(numbers.y.to_bytes(32, "big"))},
                "attributes": {"enabled": True, "created": entry.created, "updated": entry.created,
                               "recoveryLevel": "Recoverable+Purgeable"}}

    def _secret_bundle(self, name: str, entry: _Version) -> dict[str, Any]:
        return {"id": f"{self.url}/secrets/{name}/{entry.version}", "value": entry.value,
                "attributes": {"enabled": True, "created": entry.created, "updated": entry.created,
                               "recoveryLevel": "Recoverable+Purgeable"}}

    def handle(self, method: str, parts: list[str], body: dict[str, Any]) -> dict[str, Any]:
        state = self._state
        with state.lock:
            if len(parts) == 3 and parts[0] == "keys" and parts[2] == "create" and method == "POST":
                if body.get("kty") not in ("EC", "EC-HSM") or body.get("crv", "P-256") != "P-256":
                    raise _VaultError(400, "BadParameter", "this fake vault creates EC P-256 keys only")
                entry = _Version(uuid.uuid4().hex, int(time.time()), ec.generate_private_key(ec.SECP256R1()))
                state.keys.setdefault(parts[1], []).append(entry)
                return self._key_bundle(parts[1], entry)
            if parts[:1] == ["keys"] and len(parts) in (2, 3) and method == "GET":
                entry = _find(state.keys, parts[1], parts[2] if len(parts) == 3 else "", "Key")
                return self._key_bundle(parts[1], entry)
            if len(parts) == 4 and parts[0] == "keys" and parts[3] == "sign" and method == "POST":
                entry = _find(state.keys, parts[1], parts[2], "Key")
                if body.get("alg") != "ES256":
                    raise _VaultError(400, "BadParameter", f"algorithm {body.get('alg')!r} does not suit a P-256 key")
                digest = _unb64url(str(body.get("value", "")))
                if len(digest) != 32:
                    raise _VaultError(400, "BadParameter", "ES256 needs a 32-byte SHA-256 digest")
                r, s = decode_dss_signature(entry.value.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256()))))
                return {"kid": f"{self.url}/keys/{parts[1]}/{entry.version}",
                        "value": _b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))}
            if parts[:1] == ["secrets"] and len(parts) == 2 and method == "PUT":
                if not isinstance(body.get("value"), str):
                    raise _VaultError(400, "BadParameter", "a secret needs a string 'value'")
                entry = _Version(uuid.uuid4().hex, int(time.time()), body["value"])
                state.secrets.setdefault(parts[1], []).append(entry)
                return self._secret_bundle(parts[1], entry)
            if parts[:1] == ["secrets"] and len(parts) in (2, 3) and method == "GET":
                entry = _find(state.secrets, parts[1], parts[2] if len(parts) == 3 else "", "Secret")
                return self._secret_bundle(parts[1], entry)
        raise _VaultError(404, "NotFound", f"{method} /{'/'.join(parts)} is not implemented by this fake")

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        vault = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read results, not logs
                pass

            def _reply(self, status: int, payload: dict[str, Any] | None, headers: dict[str, str] | None = None):
                data = json.dumps(payload).encode() if payload is not None else b""
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _serve(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                if self.headers.get("Authorization") != f"Bearer {vault.token}":
                    self._reply(401, {"error": {"code": "Unauthorized", "message": "AKV10000: Request is missing a "
                                                "Bearer or PoP token."}}, {"WWW-Authenticate": CHALLENGE})
                    return
                parsed = urlparse(self.path)
                try:
                    if "api-version" not in parse_qs(parsed.query):
                        raise _VaultError(400, "BadParameter", "The 'api-version' query parameter is missing.")
                    try:
                        body = json.loads(raw) if raw else {}
                    except json.JSONDecodeError:
                        raise _VaultError(400, "BadParameter", "The request body is not JSON.") from None
                    parts = [part for part in parsed.path.split("/") if part]
                    self._reply(200, vault.handle(method, parts, body))
                except _VaultError as exc:
                    self._reply(exc.status, {"error": {"code": exc.code, "message": exc.message}})

            def do_GET(self) -> None:
                self._serve("GET")

            def do_POST(self) -> None:
                self._serve("POST")

            def do_PUT(self) -> None:
                self._serve("PUT")

        return Handler


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A fake Azure Key Vault on https://127.0.0.1:PORT")
    parser.add_argument("--workdir", type=Path, required=True, help="where the TLS material is kept")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--token", required=True, help="the only bearer token accepted")
    args = parser.parse_args(argv)
    vault = FakeKeyVault(args.workdir, args.token, args.port)
    print(f"fake Key Vault on {vault.url}, CA {vault.ca_file}", flush=True)
    vault.serve_forever()



class FakeImmutableBlobProxy:
    """A fake of a container-level immutability policy, in front of Azurite's blob service (which
    implements none: it always reports ``x-ms-has-immutability-policy: false`` and allows deletes).

    Requests pass through unchanged (Shared Key signatures stay valid); the proxy reports the
    container as WORM (``header``: ``x-ms-has-immutability-policy`` or
    ``x-ms-immutable-storage-with-versioning-enabled``) and answers a blob ``DELETE``, or an
    unconditional ``PUT`` over a blob created through it, with Azure's ``409
    BlobImmutableDueToPolicy``. Point a connection string's ``BlobEndpoint`` at :attr:`endpoint`.
    """

    def __init__(self, upstream_port: int, account: str, header: str = "x-ms-has-immutability-policy"):
        import http.client

        self._created: set[str] = set()
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _refuse(self) -> None:
                body = (b'<?xml version="1.0" encoding="utf-8"?><Error><Code>BlobImmutableDueToPolicy</Code>'
                        b"<Message>This operation is not permitted as the blob is immutable due to a policy."
                        b"</Message></Error>")
                self.send_response(409)
                self.send_header("x-ms-error-code", "BlobImmutableDueToPolicy")
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _serve(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                parsed = urlparse(self.path)
                query = parse_qs(parsed.query)
                parts = [p for p in parsed.path.split("/") if p]
                blob = "/".join(parts[1:]) if len(parts) >= 3 and "restype" not in query else None
                if blob and self.command == "DELETE":
                    return self._refuse()
                if blob and self.command == "PUT" and self.headers.get("If-None-Match") != "*":
                    with proxy._lock:
                        if blob in proxy._created:
                            return self._refuse()
                upstream = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=30)
                upstream.request(self.command, self.path, body=raw or None, headers=dict(self.headers.items()))
                response = upstream.getresponse()
                data = response.read()
                if blob and self.command == "PUT" and response.status == 201:
                    with proxy._lock:
                        proxy._created.add(blob)
                self.send_response(response.status)
                for name, value in response.getheaders():
                    if name.lower() not in ("transfer-encoding", "connection", "content-length", header):
                        self.send_header(name, value)
                is_container = query.get("restype") == ["container"] and "comp" not in query
                if is_container and response.status == 200:
                    self.send_header(header, "true")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                upstream.close()

            do_GET = do_PUT = do_DELETE = do_HEAD = do_POST = _serve

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}/{account}"
        threading.Thread(target=self._server.serve_forever, name="fake-immutable-blob", daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


if __name__ == "__main__":
    main()
