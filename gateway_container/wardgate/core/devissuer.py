"""A local token issuer for development.

It signs ES256 tokens with a key kept in the state directory and publishes an OIDC discovery document
and JWKS (the control port serves them), so the gateway verifies dev tokens exactly as it verifies a
real IdP's: over HTTP, through :class:`wardgate.core.identity.TokenVerifier`. Only a configuration
that enables the dev issuer trusts it.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import math
import secrets
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from wardgate.config import IssuerConfig, parse_address
from wardgate.core.files import create_file_atomically

KEY_FILE_NAME = "dev-issuer-key.pem"
ALGORITHM = "ES256"
# Set by mint() itself; letting extra_claims override them would bypass the lifetime limit or
# impersonate another issuer.
_RESERVED_CLAIMS = frozenset({"iss", "sub", "aud", "iat", "nbf", "exp", "jti", "groups"})


def dev_issuer_url(control_address: str) -> str:
    """The dev issuer's ``iss`` for a control port address: ``"127.0.0.1:9480"`` →
    ``"http://127.0.0.1:9480/dev-issuer"``, ``"[::1]:9480"`` → ``"http://[::1]:9480/dev-issuer"``."""
    host, port = parse_address(control_address)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if ip is not None and ip.is_unspecified:
        # A control port bound to every interface is still reachable on loopback, which is where
        # the gateway fetches its own JWKS from; "0.0.0.0" is not an address to connect to.
        ip = ipaddress.ip_address("::1" if ip.version == 6 else "127.0.0.1")
    if ip is not None:
        host = f"[{ip}]" if ip.version == 6 else str(ip)
    return f"http://{host}:{port}/dev-issuer"


class DevIssuer:
    def __init__(
        self,
        state_dir: Path,
        issuer_url: str,
        audience: str = "wardgate",
        max_lifetime: float = 3600,
        *,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.issuer_url = issuer_url
        self.audience = audience
        self.max_lifetime = max_lifetime
        self.key_file = Path(state_dir) / KEY_FILE_NAME
        self._now = now
        self._private_key = _load_or_create_key(self.key_file)
        self._public_jwk: dict[str, Any] = ECAlgorithm.to_jwk(self._private_key.public_key(), as_dict=True)
        self.kid = _jwk_thumbprint(self._public_jwk)

    def mint(
        self,
        subject: str,
        groups: Sequence[str] = (),
        ttl: float = 900,
        extra_claims: Mapping[str, Any] | None = None,
    ) -> str:
        if not subject:
            raise ValueError("a token needs a subject")
        if isinstance(groups, str):
            raise ValueError("groups must be a list of group names, not a single string")
        if not math.isfinite(ttl) or ttl < 1:
            raise ValueError(f"token lifetime must be at least 1 second, not {ttl}")
        if ttl > self.max_lifetime:
            raise ValueError(
                f"token lifetime {ttl:g}s exceeds the dev issuer's maximum of {self.max_lifetime:g}s"
            )
        extra = dict(extra_claims or {})
        clashing = sorted(_RESERVED_CLAIMS.intersection(extra))
        if clashing:
            raise ValueError(f"extra claims may not set {', '.join(clashing)}")
        issued_at = int(self._now())
        claims = {
            **extra,
            "iss": self.issuer_url,
            "sub": subject,
            "aud": self.audience,
            "iat": issued_at,
            "nbf": issued_at,
            # Rounded down so that exp - iat never exceeds the lifetime the verifier allows.
            "exp": issued_at + int(ttl),
            "jti": secrets.token_urlsafe(16),
            "groups": list(groups),
        }
        return jwt.encode(claims, self._private_key, algorithm=ALGORITHM, headers={"kid": self.kid})

    def jwks(self) -> dict[str, Any]:
        return {"keys": [{**self._public_jwk, "kid": self.kid, "alg": ALGORITHM, "use": "sig"}]}

    def discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer_url,
            "jwks_uri": self.issuer_url.rstrip("/") + "/jwks",
            "id_token_signing_alg_values_supported": [ALGORITHM],
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "claims_supported": sorted(_RESERVED_CLAIMS),
        }

    def issuer_config(self) -> IssuerConfig:
        """How the gateway trusts this issuer: like any other, keys found through discovery."""
        return IssuerConfig(
            issuer=self.issuer_url,
            audience=self.audience,
            algorithms=[ALGORITHM],
            max_token_lifetime=self.max_lifetime,
        )


def _jwk_thumbprint(public_jwk: Mapping[str, Any]) -> str:
    """RFC 7638: SHA-256 of the required members, sorted, without whitespace, base64url."""
    required = {name: public_jwk[name] for name in ("crv", "kty", "x", "y")}
    canonical = json.dumps(required, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b"=").decode()


def _load_or_create_key(path: Path) -> ec.EllipticCurvePrivateKey:
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        create_file_atomically(path, pem, 0o600)  # of two starting at once, the first key wins
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError(f"{path} does not hold a P-256 private key; delete it to generate a new one")
    return key


