"""Token failures through the real gateway, and a token from an external (GitHub-style) issuer.

Each refused token must be refused with SQLSTATE 28000 and a message naming the reason, the token
itself must never be echoed, and the audit log must hold a ``session.authentication_failed`` event
with the matching ``reason``. psycopg (libpq) shows what a user sees; a raw TLS client reads the
SQLSTATE, which libpq does not expose for start-up failures.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import socket
import ssl
import struct
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import jwt
import psycopg
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import RSAAlgorithm

from wardgate.core.devissuer import DevIssuer
from wardgate.devtools.harness import GatewayThread
from wardgate.protocols.postgres import wire
from wardgate_testkit import LoopbackJson

RESOURCE = "orders-prod"
IO_TIMEOUT = 10.0

pytestmark = pytest.mark.timeout(60)


# --- helpers -----------------------------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_json(value: Any) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def dev_claims(gateway: GatewayThread, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {"iss": gateway.gateway.dev_issuer.issuer_url, "sub": "mallory", "aud": "wardgate",
              "iat": now, "nbf": now, "exp": now + 300, "groups": ["dev"]}
    claims.update(overrides)
    return claims


def dev_private_key(gateway: GatewayThread) -> ec.EllipticCurvePrivateKey:
    return serialization.load_pem_private_key(gateway.gateway.dev_issuer.key_file.read_bytes(), password=None)


def dev_issuer_at(gateway: GatewayThread, *, offset: float = 0.0, issuer_url: str | None = None,
                  audience: str = "wardgate") -> DevIssuer:
    """The gateway's dev issuer key, with another clock, issuer URL or audience."""
    dev = gateway.gateway.dev_issuer
    return DevIssuer(gateway.config.state_dir, issuer_url or dev.issuer_url, audience, 3600,
                     now=lambda: time.time() + offset)


def http_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=IO_TIMEOUT) as response:
        assert response.status == 200
        return json.loads(response.read())


def raw_tls_login(gateway: GatewayThread, password: bytes) -> list[tuple[bytes, bytes]]:
    """SSLRequest, verified TLS, StartupMessage, the password; every message until the gateway closes
    (or until ReadyForQuery, when the login succeeded)."""
    sock = socket.create_connection((gateway.host, gateway.port), timeout=IO_TIMEOUT)
    try:
        sock.sendall(wire.ssl_request())
        assert sock.recv(1) == b"S"
        context = ssl.create_default_context(cafile=str(gateway.ca_file))
        tls = context.wrap_socket(sock, server_hostname=gateway.host)
        tls.settimeout(IO_TIMEOUT)
        tls.sendall(wire.startup_message({"user": "agent", "database": RESOURCE}))
        first = tls.recv(9)
        assert first[:1] == b"R" and struct.unpack("!i", first[5:9])[0] == wire.AUTH_CLEARTEXT, first
        tls.sendall(wire.password_message(password + b"\x00"))
        data = b""
        while True:
            try:
                chunk = tls.recv(65536)
            except socket.timeout:
                pytest.fail(f"the gateway neither answered nor closed within {IO_TIMEOUT}s (got {data!r})")
            except (ConnectionResetError, ssl.SSLEOFError, ssl.SSLZeroReturnError):
                chunk = b""
            if not chunk:
                break
            data += chunk
            if data.endswith(wire.ready_for_query(b"I")):
                tls.sendall(wire.TERMINATE)
                break
    finally:
        sock.close()
    messages, pos = [], 0
    while pos < len(data):
        (length,) = struct.unpack("!I", data[pos + 1:pos + 5])
        messages.append((data[pos:pos + 1], data[pos + 5:pos + 1 + length]))
        pos += 1 + length
    return messages


def assert_refused(gateway: GatewayThread, token: str, *, reason: str | set[str], mentions: tuple[str, ...]) -> None:
    """Refused for psycopg and for a raw client: 28000, message naming the reason, audited."""
    before = len(failures(gateway))
    with pytest.raises(psycopg.OperationalError) as caught:
        psycopg.connect(gateway.dsn(token, RESOURCE, sslmode="verify-full"))
    text = str(caught.value)
    assert "authentication failed" in text, text
    for word in mentions:
        assert word.lower() in text.lower(), f"{word!r} not in {text!r}"
    signature = token.rpartition(".")[2]
    if len(token) > 20:
        assert token not in text and (not signature or signature not in text), "the token was echoed"

    messages = raw_tls_login(gateway, token.encode())
    kinds = [kind for kind, _ in messages]
    assert kinds == [b"E"], f"expected exactly one ErrorResponse then close, got {messages!r}"
    fields = wire.parse_error_fields(messages[0][1])
    assert fields["S"] == "FATAL" and fields["C"] == "28000", fields
    for word in mentions:
        assert word.lower() in fields["M"].lower(), fields
    for marker in ("Traceback", 'File "'):
        assert marker not in fields["M"]

    events = failures(gateway)[before:]
    reasons = {reason} if isinstance(reason, str) else reason
    assert len(events) == 2, f"expected one authentication_failed event per attempt, got {events!r}"
    for event in events:
        assert event["reason"] in reasons, event
        assert event["resource"] == RESOURCE and event["identity"] is None, event
        if len(token) > 20:
            assert token not in json.dumps(event), "the token was written to the audit log"
    assert not [e for e in gateway.audit_events() if e["type"] == "session.authenticated"]
    assert not [e for e in gateway.audit_events() if e["type"] == "session.connected"]


def failures(gateway: GatewayThread) -> list[dict[str, Any]]:
    return [e for e in gateway.audit_events() if e["type"] == "session.authentication_failed"]


# --- dev-issuer token failures -----------------------------------------------------------------------


def test_valid_token_is_accepted(gateway: GatewayThread) -> None:
    """The baseline the failures below differ from."""
    messages = raw_tls_login(gateway, gateway.token("baseline").encode())
    assert [k for k, _ in messages][0] == b"R" and messages[-1][0] == b"Z", messages
    with psycopg.connect(gateway.dsn(gateway.token("baseline"), RESOURCE)) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("wardgate_svc",)
    assert failures(gateway) == []


def test_expired_token(gateway: GatewayThread) -> None:
    token = dev_issuer_at(gateway, offset=-3600).mint("alice", ["dev"], ttl=300)
    assert_refused(gateway, token, reason="expired", mentions=("expired",))


def test_expired_token_with_psql(gateway: GatewayThread) -> None:
    token = dev_issuer_at(gateway, offset=-3600).mint("alice", ["dev"], ttl=300)
    env = {**os.environ, **gateway.libpq_env(token, RESOURCE)}
    result = subprocess.run(["psql", "-X", "-c", "select 1"], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2, result
    assert "FATAL" in result.stderr and "expired" in result.stderr, result.stderr
    assert token not in result.stderr
    assert [e["reason"] for e in failures(gateway)] == ["expired"]


def test_not_yet_valid_token(gateway: GatewayThread) -> None:
    token = dev_issuer_at(gateway, offset=+3600).mint("alice", ["dev"], ttl=300)
    assert_refused(gateway, token, reason="not_yet_valid", mentions=("not valid before",))


def test_issued_in_the_future(gateway: GatewayThread) -> None:
    now = int(time.time())
    token = jwt.encode(dev_claims(gateway, iat=now + 3600, nbf=now, exp=now + 3900), dev_private_key(gateway),
                       algorithm="ES256", headers={"kid": gateway.gateway.dev_issuer.kid})
    assert_refused(gateway, token, reason="not_yet_valid", mentions=("future",))


def test_wrong_audience(gateway: GatewayThread) -> None:
    token = dev_issuer_at(gateway, audience="someone-else").mint("alice", ["dev"], ttl=300)
    assert_refused(gateway, token, reason="wrong_audience", mentions=("audience", "someone-else"))


def test_unknown_issuer(gateway: GatewayThread) -> None:
    token = dev_issuer_at(gateway, issuer_url="https://evil.example/issuer").mint("alice", ["dev"], ttl=300)
    assert_refused(gateway, token, reason="unknown_issuer", mentions=("not trusted", "evil.example"))


def test_alg_none(gateway: GatewayThread) -> None:
    header = {"alg": "none", "typ": "JWT", "kid": gateway.gateway.dev_issuer.kid}
    token = f"{b64url_json(header)}.{b64url_json(dev_claims(gateway))}."
    assert_refused(gateway, token, reason="algorithm_not_allowed", mentions=("algorithm", "'none'"))


def test_hs256_signed_with_the_issuers_public_key(gateway: GatewayThread) -> None:
    """The classic key-confusion attack: the public key (from the JWKS anyone can read) as HMAC secret."""
    jwks = http_json(gateway.control_url + "/dev-issuer/jwks")
    jwk = jwks["keys"][0]
    public_key = ec.EllipticCurvePublicNumbers(
        int.from_bytes(unb64url(jwk["x"]), "big"), int.from_bytes(unb64url(jwk["y"]), "big"), ec.SECP256R1(),
    ).public_key()
    pem = public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    header = {"alg": "HS256", "typ": "JWT", "kid": jwk["kid"]}
    signing_input = f"{b64url_json(header)}.{b64url_json(dev_claims(gateway))}"
    signature = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    token = f"{signing_input}.{b64url(signature)}"
    assert_refused(gateway, token, reason="algorithm_not_allowed", mentions=("algorithm", "HS256"))


def test_unknown_kid(gateway: GatewayThread) -> None:
    token = jwt.encode(dev_claims(gateway), ec.generate_private_key(ec.SECP256R1()), algorithm="ES256",
                       headers={"kid": "made-up-kid-0042"})
    assert_refused(gateway, token, reason="unknown_key", mentions=("key id", "made-up-kid-0042"))


def test_no_kid(gateway: GatewayThread) -> None:
    token = jwt.encode(dev_claims(gateway), dev_private_key(gateway), algorithm="ES256")
    assert_refused(gateway, token, reason="unknown_key", mentions=("key id",))


def test_right_kid_wrong_key(gateway: GatewayThread) -> None:
    token = jwt.encode(dev_claims(gateway), ec.generate_private_key(ec.SECP256R1()), algorithm="ES256",
                       headers={"kid": gateway.gateway.dev_issuer.kid})
    assert_refused(gateway, token, reason="bad_signature", mentions=("signature",))


def test_tampered_payload(gateway: GatewayThread) -> None:
    header, payload, signature = gateway.token("alice", groups=("dev",)).split(".")
    claims = json.loads(unb64url(payload))
    assert claims["sub"] == "alice"
    claims["sub"] = "admin"
    claims["groups"] = ["dba"]
    token = f"{header}.{b64url_json(claims)}.{signature}"
    assert_refused(gateway, token, reason="bad_signature", mentions=("signature",))


def test_lifetime_too_long(gateway: GatewayThread) -> None:
    now = int(time.time())
    token = jwt.encode(dev_claims(gateway, exp=now + 7 * 86400), dev_private_key(gateway), algorithm="ES256",
                       headers={"kid": gateway.gateway.dev_issuer.kid})
    assert_refused(gateway, token, reason="lifetime_too_long", mentions=("lifetime",))


def test_not_a_jwt(gateway: GatewayThread) -> None:
    assert_refused(gateway, "hunter2-is-not-a-token", reason="malformed", mentions=("well-formed",))


def test_empty_password(gateway: GatewayThread) -> None:
    """An empty PasswordMessage: refused with 28000, naming the missing token, and audited as a failed
    authentication like any other bad token (AC-7 counts failed attempts)."""
    messages = raw_tls_login(gateway, b"")
    assert [k for k, _ in messages] == [b"E"], messages
    fields = wire.parse_error_fields(messages[0][1])
    assert fields["S"] == "FATAL" and fields["C"] == "28000", fields
    assert "token" in fields["M"].lower(), fields
    events = failures(gateway)
    assert len(events) == 1 and events[0]["reason"] == "malformed", (
        f"an empty token must be recorded as session.authentication_failed; audit has "
        f"{[(e['type'], e.get('reason')) for e in gateway.audit_events()]}")


def test_empty_password_with_psql(gateway: GatewayThread) -> None:
    """libpq sends no empty password: it gives up itself. No hang, a clear message."""
    env = {**os.environ, **gateway.libpq_env("", RESOURCE)}
    result = subprocess.run(["psql", "-X", "-w", "-c", "select 1"], env=env, capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 2, result
    assert "password" in result.stderr.lower(), result.stderr


# --- an external, GitHub-style issuer ----------------------------------------------------------------


class _Issuer:
    """A minimal OIDC issuer on 127.0.0.1: discovery document and JWKS for one RSA key."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = "gh-test-" + os.urandom(4).hex()
        self.requests: list[str] = []
        self._http = LoopbackJson(self._respond)
        self.url = self._http.url

    def _respond(self, method: str, path: str, body: bytes) -> tuple[int, Any]:
        self.requests.append(path)
        if method != "GET":
            return 405, None
        if path == "/.well-known/openid-configuration":
            return 200, {"issuer": self.url, "jwks_uri": self.url + "/.well-known/jwks",
                         "id_token_signing_alg_values_supported": ["RS256"],
                         "response_types_supported": ["id_token"], "subject_types_supported": ["public", "pairwise"]}
        if path == "/.well-known/jwks":
            jwk = RSAAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
            return 200, {"keys": [{**jwk, "kid": self.kid, "alg": "RS256", "use": "sig"}]}
        return 404, None

    def token(self, *, algorithm: str = "RS256", **claims: Any) -> str:
        now = int(time.time())
        payload = {"iss": self.url, "aud": "wardgate", "iat": now, "nbf": now - 5, "exp": now + 300, **claims}
        return jwt.encode(payload, self.key, algorithm=algorithm, headers={"kid": self.kid})

    def close(self) -> None:
        self._http.close()


@pytest.fixture
def external_issuer() -> Iterator[_Issuer]:
    issuer = _Issuer()
    try:
        yield issuer
    finally:
        issuer.close()


GITHUB_CLAIMS = {
    "sub": "repo:acme/orders:environment:production",
    "repository": "acme/orders",
    "repository_owner": "acme",
    "ref": "refs/heads/main",
    "ref_type": "branch",
    "environment": "production",
    "job_workflow_ref": "acme/orders/.github/workflows/migrate.yml@refs/heads/main",
    "workflow": "migrate",
    "run_id": "9876543210",
    "actor": "octocat",
    "runner_environment": "github-hosted",
    "groups": ["ci", "deployers"],
}


def test_external_issuer_github_style_token(make_gateway, external_issuer: _Issuer) -> None:
    gateway = make_gateway(issuers=[{"issuer": external_issuer.url, "audience": "wardgate",
                                     "algorithms": ["RS256"]}])
    token = external_issuer.token(**GITHUB_CLAIMS)
    with psycopg.connect(gateway.dsn(token, RESOURCE)) as conn:
        assert conn.execute("SELECT 'from ci'").fetchone() == ("from ci",)
    # a second session reuses the cached keys
    with psycopg.connect(gateway.dsn(external_issuer.token(**GITHUB_CLAIMS), RESOURCE)) as conn:
        assert conn.execute("SELECT 2").fetchone() == (2,)

    assert "/.well-known/openid-configuration" in external_issuer.requests
    assert external_issuer.requests.count("/.well-known/jwks") == 1, external_issuer.requests

    events = gateway.audit_events()
    authenticated = [e for e in events if e["type"] == "session.authenticated"]
    assert len(authenticated) == 2, events
    principal = authenticated[0]["principal"]
    assert principal["issuer"] == external_issuer.url
    assert principal["subject"] == GITHUB_CLAIMS["sub"]
    assert principal["groups"] == ["ci", "deployers"]
    for name in ("repository", "repository_owner", "ref", "ref_type", "environment", "job_workflow_ref",
                 "workflow", "run_id", "actor"):
        assert principal["claims"].get(name) == GITHUB_CLAIMS[name], (name, principal)
    assert "runner_environment" not in principal["claims"], "only the configured claims are copied"
    # later events of the session carry the identity
    session = authenticated[0]["session"]
    decided = [e for e in events if e["session"] == session and e["type"] == "command.decided"]
    assert decided and all(e["identity"] == {"issuer": external_issuer.url, "subject": GITHUB_CLAIMS["sub"]}
                           for e in decided), decided
    assert failures(gateway) == []


def test_external_issuer_refuses_other_algorithm_and_foreign_token(make_gateway, external_issuer: _Issuer) -> None:
    gateway = make_gateway(issuers=[{"issuer": external_issuer.url, "audience": "wardgate",
                                     "algorithms": ["RS256"]}])
    assert_refused(gateway, external_issuer.token(algorithm="RS384", **GITHUB_CLAIMS),
                   reason="algorithm_not_allowed", mentions=("algorithm", "RS384"))
    # the dev issuer's token claiming to come from the external issuer
    forged = jwt.encode({**dev_claims(gateway), "iss": external_issuer.url}, dev_private_key(gateway),
                        algorithm="ES256", headers={"kid": external_issuer.kid})
    assert_refused(gateway, forged, reason="algorithm_not_allowed", mentions=("algorithm",))


def test_external_issuer_keys_unreachable(make_gateway) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]
    url = f"http://127.0.0.1:{dead}"
    gateway = make_gateway(issuers=[{"issuer": url, "audience": "wardgate", "algorithms": ["RS256"]}])
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = int(time.time())
    token = jwt.encode({"iss": url, "sub": "ci", "aud": "wardgate", "iat": now, "exp": now + 300}, key,
                       algorithm="RS256", headers={"kid": "k1"})
    assert_refused(gateway, token, reason="jwks_unavailable", mentions=("cannot fetch",))
