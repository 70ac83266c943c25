"""DevIssuer: tokens it mints verify through TokenVerifier with its keys served over real HTTP."""

from __future__ import annotations

import base64
import hashlib
import stat
import threading
from pathlib import Path
from typing import Any, Callable

import jwt
import pytest

from wardgate.config import IssuerConfig
from wardgate.core.devissuer import DevIssuer, dev_issuer_url
from wardgate.core.identity import AuthenticationError, TokenVerifier
from wardgate_testkit import LoopbackJson


class ControlPort:
    """Stands in for the gateway's control port: serves whatever ``documents`` returns for a path."""

    def __init__(self) -> None:
        self.documents: dict[str, Callable[[], Any]] = {}
        self._http = LoopbackJson(self._respond)
        self.address = f"127.0.0.1:{self._http.port}"

    def _respond(self, method: str, path: str, body: bytes) -> tuple[int, Any]:
        document = self.documents.get(path)
        return (404, None) if document is None else (200, document())

    def serve(self, issuer: DevIssuer) -> None:
        """Publish ``issuer`` the way the gateway does, under its issuer URL's path."""
        path = "/" + issuer.issuer_url.split("/", 3)[3]
        self.documents[f"{path}/.well-known/openid-configuration"] = issuer.discovery
        self.documents[f"{path}/jwks"] = issuer.jwks

    def close(self) -> None:
        self._http.close()


@pytest.fixture
def control_port():
    port = ControlPort()
    yield port
    port.close()


@pytest.fixture
def dev_issuer(tmp_path: Path, control_port: ControlPort) -> DevIssuer:
    issuer = DevIssuer(tmp_path / "state", dev_issuer_url(control_port.address))
    control_port.serve(issuer)
    return issuer


def verifier_for(issuer: DevIssuer) -> TokenVerifier:
    return TokenVerifier([IssuerConfig(issuer=issuer.issuer_url, audience="wardgate", algorithms=["ES256"])])


def test_minted_token_is_verified_over_http(dev_issuer: DevIssuer) -> None:
    token = dev_issuer.mint("alice@example.com", groups=["developers"], extra_claims={"repository": "acme/api"})

    principal = verifier_for(dev_issuer).verify(token)

    assert principal.issuer == dev_issuer.issuer_url
    assert principal.subject == "alice@example.com"
    assert principal.groups == ("developers",)
    assert principal.claims == {"repository": "acme/api"}
    assert principal.token_id


def test_issuer_config_trusts_the_dev_issuer_with_its_lifetime_limit(dev_issuer: DevIssuer) -> None:
    config = dev_issuer.issuer_config()

    assert config.algorithms == ["ES256"]
    assert config.max_token_lifetime == 3600
    assert TokenVerifier([config]).verify(dev_issuer.mint("alice")).subject == "alice"


def test_each_token_has_its_own_id_and_the_requested_lifetime(dev_issuer: DevIssuer) -> None:
    first = jwt.decode(dev_issuer.mint("alice", ttl=120), options={"verify_signature": False})
    second = jwt.decode(dev_issuer.mint("alice", ttl=120), options={"verify_signature": False})

    assert first["jti"] != second["jti"]
    assert first["exp"] - first["iat"] == 120
    assert first["nbf"] == first["iat"]
    assert first["aud"] == "wardgate"


def test_lifetime_over_the_maximum_is_refused(tmp_path: Path) -> None:
    issuer = DevIssuer(tmp_path, "http://127.0.0.1:9480/dev-issuer", max_lifetime=600)

    with pytest.raises(ValueError, match="exceeds"):
        issuer.mint("alice", ttl=601)
    assert issuer.mint("alice", ttl=600)


@pytest.mark.parametrize("claim", ["iss", "exp", "aud", "sub"])
def test_extra_claims_cannot_override_the_issuers_own(tmp_path: Path, claim: str) -> None:
    issuer = DevIssuer(tmp_path, "http://127.0.0.1:9480/dev-issuer")

    with pytest.raises(ValueError, match=claim):
        issuer.mint("alice", extra_claims={claim: "x"})


def test_key_persists_across_instances(tmp_path: Path, control_port: ControlPort) -> None:
    url = dev_issuer_url(control_port.address)
    first = DevIssuer(tmp_path, url)
    token = first.mint("alice")

    restarted = DevIssuer(tmp_path, url)
    control_port.serve(restarted)

    assert restarted.kid == first.kid
    assert verifier_for(restarted).verify(token).subject == "alice"


def test_token_from_another_dev_issuer_key_is_refused(tmp_path: Path, dev_issuer: DevIssuer) -> None:
    stranger = DevIssuer(tmp_path / "elsewhere", dev_issuer.issuer_url)

    with pytest.raises(AuthenticationError) as caught:
        verifier_for(dev_issuer).verify(stranger.mint("mallory"))
    assert caught.value.reason == "unknown_key"


def test_private_key_file_is_readable_only_by_its_owner(dev_issuer: DevIssuer) -> None:
    assert stat.S_IMODE(dev_issuer.key_file.stat().st_mode) == 0o600
    assert dev_issuer.key_file.name == "dev-issuer-key.pem"


def test_concurrent_first_starts_agree_on_one_key(tmp_path: Path) -> None:
    barrier = threading.Barrier(8)
    kids: list[str] = []

    def start() -> None:
        barrier.wait()
        kids.append(DevIssuer(tmp_path, "http://127.0.0.1:9480/dev-issuer").kid)

    threads = [threading.Thread(target=start) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(kids) == 8 and len(set(kids)) == 1
    assert [path.name for path in tmp_path.iterdir()] == ["dev-issuer-key.pem"]


def test_jwks_publishes_only_the_public_key(dev_issuer: DevIssuer) -> None:
    (key,) = dev_issuer.jwks()["keys"]

    assert key["kid"] == dev_issuer.kid
    assert key["alg"] == "ES256" and key["use"] == "sig" and key["crv"] == "P-256"
    assert "d" not in key


def test_kid_is_the_rfc7638_thumbprint(dev_issuer: DevIssuer) -> None:
    (key,) = dev_issuer.jwks()["keys"]
    # RFC 7638 §3.2: the required members in lexicographic order, no whitespace.
    canonical = f'{{"crv":"{key["crv"]}","kty":"EC","x":"{key["x"]}","y":"{key["y"]}"}}'
    expected = base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()

    assert dev_issuer.kid == expected


def test_discovery_points_at_the_jwks_under_the_issuer(dev_issuer: DevIssuer) -> None:
    document = dev_issuer.discovery()

    assert document["issuer"] == dev_issuer.issuer_url
    assert document["jwks_uri"] == dev_issuer.issuer_url + "/jwks"
    assert document["id_token_signing_alg_values_supported"] == ["ES256"]


@pytest.mark.parametrize(
    ("control_address", "issuer_url"),
    [
        ("127.0.0.1:9480", "http://127.0.0.1:9480/dev-issuer"),
        ("localhost:9480", "http://localhost:9480/dev-issuer"),
        ("[::1]:9480", "http://[::1]:9480/dev-issuer"),
        ("0.0.0.0:9480", "http://127.0.0.1:9480/dev-issuer"),
        ("[::]:9480", "http://[::1]:9480/dev-issuer"),
    ],
)
def test_dev_issuer_url(control_address: str, issuer_url: str) -> None:
    assert dev_issuer_url(control_address) == issuer_url
