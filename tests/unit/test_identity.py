"""TokenVerifier against a real issuer: discovery document and JWKS served over HTTP on loopback."""

from __future__ import annotations

import base64
import collections
import hashlib
import hmac
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from wardgate.config import IssuerConfig
from wardgate.core.identity import AuthenticationError, TokenVerifier
from wardgate_testkit import LoopbackJson

NOW = 1_800_000_000.0  # the verifier's clock in these tests: 2027-01-15T08:00:00Z


class JsonServer:
    """Serves JSON documents by path on 127.0.0.1 and counts the requests for each path."""

    def __init__(self) -> None:
        self.documents: dict[str, Any] = {}
        self.failing: set[str] = set()
        self.hits: collections.Counter[str] = collections.Counter()
        self._http = LoopbackJson(self._respond)

    def _respond(self, method: str, path: str, body: bytes) -> tuple[int, Any]:
        self.hits[path] += 1
        if path in self.failing:
            return 500, None
        if path not in self.documents:
            return 404, None
        return 200, self.documents[path]

    def url(self, path: str) -> str:
        return self._http.url + path

    def close(self) -> None:
        self._http.close()


@pytest.fixture
def server():
    instance = JsonServer()
    yield instance
    instance.close()


@pytest.fixture(scope="module")
def rsa_keys() -> dict[str, rsa.RSAPrivateKey]:
    return {kid: rsa.generate_private_key(public_exponent=65537, key_size=2048) for kid in ("key-1", "key-2", "rogue")}


DISCOVERY_PATH = "/issuer/.well-known/openid-configuration"
JWKS_PATH = "/issuer/jwks"


@dataclass
class Issuer:
    server: JsonServer
    keys: dict[str, rsa.RSAPrivateKey]
    url: str = field(init=False)

    def __post_init__(self) -> None:
        self.url = self.server.url("/issuer")
        self.server.documents[DISCOVERY_PATH] = {"issuer": self.url, "jwks_uri": self.server.url(JWKS_PATH)}
        self.publish("key-1")

    def publish(self, *kids: str) -> None:
        self.server.documents[JWKS_PATH] = {
            "keys": [
                {**jwt.algorithms.RSAAlgorithm.to_jwk(self.keys[kid].public_key(), as_dict=True), "kid": kid, "use": "sig"}
                for kid in kids
            ]
        }

    def claims(self, **overrides: Any) -> dict[str, Any]:
        claims = {
            "iss": self.url,
            "sub": "repo:acme/api:environment:production",
            "aud": "wardgate",
            "iat": NOW - 10,
            "exp": NOW + 300,
            "jti": "token-123",
            "groups": ["developers", "oncall"],
            "repository": "acme/api",
            "ref": "refs/heads/main",
            "environment": "production",
            "not_copied": "secret",
        }
        claims.update(overrides)
        return {name: value for name, value in claims.items() if value is not None}

    def token(self, *, kid: str = "key-1", signing_kid: str | None = None, alg: str = "RS256", **overrides: Any) -> str:
        """A token signed with key ``signing_kid`` (default: ``kid``); a claim set to None is left out."""
        return jwt.encode(self.claims(**overrides), self.keys[signing_kid or kid], algorithm=alg, headers={"kid": kid})

    def public_pem(self, kid: str = "key-1") -> bytes:
        return self.keys[kid].public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


@pytest.fixture
def issuer(server: JsonServer, rsa_keys) -> Issuer:
    return Issuer(server, rsa_keys)


def make_verifier(issuer: Issuer, **config: Any) -> TokenVerifier:
    config = {"audience": "wardgate", **config}
    # A live loopback server: a generous timeout, so a loaded CI machine does not read as "unavailable".
    return TokenVerifier([IssuerConfig(issuer=issuer.url, **config)], http_timeout=10, now=lambda: NOW)


def refusal(verifier: TokenVerifier, token: str) -> AuthenticationError:
    with pytest.raises(AuthenticationError) as caught:
        verifier.verify(token)
    # The message reaches the client and the logs: never the bearer credential itself.
    signature = token.rsplit(".", 1)[-1]
    assert token not in str(caught.value)
    assert not signature or signature not in str(caught.value)
    return caught.value


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_made_token(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    return f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}.{b64url(signature)}"


def test_valid_token_becomes_a_principal_with_groups_and_ci_claims(issuer: Issuer) -> None:
    principal = make_verifier(issuer).verify(issuer.token())

    assert principal.issuer == issuer.url
    assert principal.subject == "repo:acme/api:environment:production"
    assert principal.groups == ("developers", "oncall")
    assert principal.claims == {"repository": "acme/api", "ref": "refs/heads/main", "environment": "production"}
    assert principal.token_id == "token-123"
    assert principal.expires_at == NOW + 300


def test_groups_come_from_the_configured_claim_and_may_be_a_single_string(issuer: Issuer) -> None:
    verifier = make_verifier(issuer, groups_claim="roles")

    principal = verifier.verify(issuer.token(groups=None, roles="db-admins"))

    assert principal.groups == ("db-admins",)


def test_groups_claim_of_the_wrong_shape_is_refused_not_ignored(issuer: Issuer) -> None:
    error = refusal(make_verifier(issuer), issuer.token(groups=["developers", 7]))

    assert error.reason == "malformed"
    assert "'groups'" in str(error)


def test_expired_token_is_refused_with_the_expiry_time(issuer: Issuer) -> None:
    error = refusal(make_verifier(issuer), issuer.token(iat=NOW - 600, exp=NOW - 60))

    assert error.reason == "expired"
    assert str(error) == "token expired at 2027-01-15T07:59:00Z"


def test_token_not_yet_valid_is_refused(issuer: Issuer) -> None:
    error = refusal(make_verifier(issuer), issuer.token(nbf=NOW + 120))

    assert error.reason == "not_yet_valid"
    assert "2027-01-15T08:02:00Z" in str(error)


def test_token_issued_in_the_future_is_refused(issuer: Issuer) -> None:
    error = refusal(make_verifier(issuer), issuer.token(iat=NOW + 120, exp=NOW + 600))

    assert error.reason == "not_yet_valid"


def test_clock_skew_within_the_configured_tolerance_is_accepted(issuer: Issuer) -> None:
    just_expired = issuer.token(iat=NOW - 300, exp=NOW - 10)
    almost_valid = issuer.token(nbf=NOW + 10, iat=NOW + 10)

    tolerant = make_verifier(issuer, clock_skew=30)
    assert tolerant.verify(just_expired).subject
    assert tolerant.verify(almost_valid).subject

    strict = make_verifier(issuer, clock_skew=0)
    assert refusal(strict, just_expired).reason == "expired"
    assert refusal(strict, almost_valid).reason == "not_yet_valid"


def test_wrong_audience_is_refused_naming_both_audiences(issuer: Issuer) -> None:
    error = refusal(make_verifier(issuer), issuer.token(aud=["other-service"]))

    assert error.reason == "wrong_audience"
    assert str(error) == "token audience ['other-service'] does not include 'wardgate'"


def test_any_of_several_configured_audiences_is_accepted(issuer: Issuer) -> None:
    verifier = make_verifier(issuer, audience=["https://github.com/acme", "wardgate"])

    assert verifier.verify(issuer.token(aud="https://github.com/acme")).subject


def test_unknown_issuer_is_refused_without_contacting_anyone(issuer: Issuer, server: JsonServer) -> None:
    error = refusal(make_verifier(issuer), issuer.token(iss="https://evil.example"))

    assert error.reason == "unknown_issuer"
    assert str(error) == "token issuer 'https://evil.example' is not trusted"
    assert sum(server.hits.values()) == 0


def test_alg_none_is_refused(issuer: Issuer, server: JsonServer) -> None:
    token = hand_made_token({"alg": "none", "typ": "JWT", "kid": "key-1"}, issuer.claims())

    error = refusal(make_verifier(issuer), token)

    assert error.reason == "algorithm_not_allowed"
    assert "'none'" in str(error)
    assert sum(server.hits.values()) == 0


def test_hs256_signed_with_the_issuers_public_key_is_refused(issuer: Issuer) -> None:
    # The classic confusion attack: the public key is public, so an HMAC keyed with it is forgeable.
    header = {"alg": "HS256", "typ": "JWT", "kid": "key-1"}
    unsigned = hand_made_token(header, issuer.claims()).rsplit(".", 1)[0]
    signature = hmac.new(issuer.public_pem(), unsigned.encode(), hashlib.sha256).digest()

    error = refusal(make_verifier(issuer), f"{unsigned}.{b64url(signature)}")

    assert error.reason == "algorithm_not_allowed"
    assert "'HS256'" in str(error)


def test_algorithm_outside_the_issuers_list_is_refused(issuer: Issuer) -> None:
    token = issuer.token(alg="PS256")

    assert refusal(make_verifier(issuer), token).reason == "algorithm_not_allowed"
    assert make_verifier(issuer, algorithms=["RS256", "PS256"]).verify(token).subject


def test_unknown_key_id_is_refused(issuer: Issuer) -> None:
    error = refusal(make_verifier(issuer), issuer.token(kid="rogue"))

    assert error.reason == "unknown_key"
    assert "'rogue'" in str(error)


def test_rotated_key_is_picked_up_and_random_key_ids_do_not_hammer_the_issuer(issuer: Issuer, server: JsonServer) -> None:
    verifier = make_verifier(issuer)
    assert verifier.verify(issuer.token(kid="key-1")).subject
    assert server.hits[JWKS_PATH] == 1

    issuer.publish("key-1", "key-2")
    assert verifier.verify(issuer.token(kid="key-2")).subject
    assert server.hits[JWKS_PATH] == 2

    for attempt in range(20):
        assert refusal(verifier, issuer.token(kid=f"random-{attempt}", signing_kid="rogue")).reason == "unknown_key"
    assert server.hits[JWKS_PATH] == 2


def test_unknown_key_id_refreshes_again_once_the_interval_has_passed(issuer: Issuer, server: JsonServer) -> None:
    verifier = TokenVerifier(
        [IssuerConfig(issuer=issuer.url, audience="wardgate")], now=lambda: NOW, jwks_refresh_interval=0.2
    )
    assert refusal(verifier, issuer.token(kid="key-2")).reason == "unknown_key"
    fetches = server.hits[JWKS_PATH]

    issuer.publish("key-1", "key-2")
    time.sleep(0.3)

    assert verifier.verify(issuer.token(kid="key-2")).subject
    assert server.hits[JWKS_PATH] == fetches + 1


def test_tampered_payload_is_refused(issuer: Issuer) -> None:
    header, _, signature = issuer.token().split(".")
    forged_claims = b64url(json.dumps(issuer.claims(sub="repo:acme/api:environment:admin")).encode())

    error = refusal(make_verifier(issuer), f"{header}.{forged_claims}.{signature}")

    assert error.reason == "bad_signature"
    assert str(error) == "token signature does not verify"


def test_token_signed_by_another_key_under_a_known_key_id_is_refused(issuer: Issuer) -> None:
    error = refusal(make_verifier(issuer), issuer.token(kid="key-1", signing_kid="rogue"))

    assert error.reason == "bad_signature"


def test_token_whose_algorithm_does_not_fit_the_key_type_is_refused(issuer: Issuer, server: JsonServer) -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    server.documents[JWKS_PATH]["keys"].append(
        {**jwt.algorithms.ECAlgorithm.to_jwk(ec_key.public_key(), as_dict=True), "kid": "ec-1", "use": "sig"}
    )
    verifier = make_verifier(issuer, algorithms=["RS256", "ES256"])

    error = refusal(verifier, issuer.token(kid="ec-1", signing_kid="key-1"))

    assert error.reason == "bad_signature"
    assert "'ec-1'" in str(error)


def test_lifetime_over_the_issuers_maximum_is_refused(issuer: Issuer) -> None:
    token = issuer.token(iat=NOW - 10, exp=NOW + 7200)

    error = refusal(make_verifier(issuer, max_token_lifetime="1h"), token)

    assert error.reason == "lifetime_too_long"
    assert "7210s" in str(error) and "3600s" in str(error)
    assert make_verifier(issuer, max_token_lifetime="3h").verify(token).subject


@pytest.mark.parametrize("claim", ["sub", "exp", "iat", "aud"])
def test_token_missing_a_required_claim_is_refused(issuer: Issuer, claim: str) -> None:
    error = refusal(make_verifier(issuer), issuer.token(**{claim: None}))

    assert error.reason == "missing_claim"
    assert f"'{claim}'" in str(error)


@pytest.mark.parametrize("garbage", ["", "not-a-jwt", "a.b.c", "x" * 100_000])
def test_garbage_is_refused_as_malformed(issuer: Issuer, garbage: str) -> None:
    with pytest.raises(AuthenticationError) as caught:
        make_verifier(issuer).verify(garbage)
    assert caught.value.reason == "malformed"


def test_keys_found_through_the_discovery_document(issuer: Issuer, server: JsonServer) -> None:
    verifier = make_verifier(issuer)

    assert verifier.verify(issuer.token()).subject
    assert verifier.verify(issuer.token()).subject
    # Both the discovery document and the key set are cached.
    assert server.hits[DISCOVERY_PATH] == 1
    assert server.hits[JWKS_PATH] == 1


def test_explicit_jwks_uri_is_used_without_discovery(issuer: Issuer, server: JsonServer) -> None:
    server.documents["/elsewhere/keys"] = server.documents.pop(JWKS_PATH)
    del server.documents[DISCOVERY_PATH]

    verifier = make_verifier(issuer, jwks_uri=server.url("/elsewhere/keys"))

    assert verifier.verify(issuer.token()).subject
    assert server.hits[DISCOVERY_PATH] == 0


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_jwks_server_down_fails_closed(issuer: Issuer) -> None:
    jwks_uri = f"http://127.0.0.1:{closed_port()}/jwks"

    error = refusal(make_verifier(issuer, jwks_uri=jwks_uri), issuer.token())

    assert error.reason == "jwks_unavailable"
    assert issuer.url in str(error)


def test_jwks_server_error_fails_closed(issuer: Issuer, server: JsonServer) -> None:
    server.failing.add(JWKS_PATH)

    assert refusal(make_verifier(issuer), issuer.token()).reason == "jwks_unavailable"


def test_discovery_unreachable_fails_closed_naming_the_issuer(issuer: Issuer, server: JsonServer) -> None:
    del server.documents[DISCOVERY_PATH]

    error = refusal(make_verifier(issuer), issuer.token())

    assert error.reason == "jwks_unavailable"
    assert f"issuer '{issuer.url}'" in str(error)


def test_discovery_failure_is_not_cached(issuer: Issuer, server: JsonServer) -> None:
    discovery = server.documents.pop(DISCOVERY_PATH)
    verifier = make_verifier(issuer)
    assert refusal(verifier, issuer.token()).reason == "jwks_unavailable"

    server.documents[DISCOVERY_PATH] = discovery

    assert verifier.verify(issuer.token()).subject


def test_a_hanging_issuer_times_out_instead_of_blocking(issuer: Issuer) -> None:
    with socket.socket() as silent:  # accepts connections (backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        jwks_uri = f"http://127.0.0.1:{silent.getsockname()[1]}/jwks"
        verifier = TokenVerifier(
            [IssuerConfig(issuer=issuer.url, audience="wardgate", jwks_uri=jwks_uri)], http_timeout=0.5, now=lambda: NOW
        )
        started = time.monotonic()

        assert refusal(verifier, issuer.token()).reason == "jwks_unavailable"
        assert time.monotonic() - started < 3


def test_concurrent_first_verifications_share_one_fetch(issuer: Issuer, server: JsonServer) -> None:
    verifier = make_verifier(issuer)
    token = issuer.token()
    barrier = threading.Barrier(16)
    subjects: list[str] = []

    def verify() -> None:
        barrier.wait()
        subjects.append(verifier.verify(token).subject)

    threads = [threading.Thread(target=verify) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(subjects) == 16
    assert server.hits[DISCOVERY_PATH] == 1
    assert server.hits[JWKS_PATH] == 1


def test_an_issuer_configured_twice_is_a_configuration_error(issuer: Issuer) -> None:
    config = IssuerConfig(issuer=issuer.url, audience="wardgate")

    with pytest.raises(ValueError, match="more than once"):
        TokenVerifier([config, config])
