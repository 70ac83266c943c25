"""Verification of OIDC / workload-identity tokens (GitHub Actions, GitLab CI, cloud IdPs, the dev issuer).

A token is trusted only when its issuer is configured, its algorithm is one that issuer may use, its
signature verifies with a key from that issuer's JWKS, and its audience, times and lifetime are
acceptable. Every refusal is an :class:`AuthenticationError` whose message is safe to show the client.
"""

from __future__ import annotations

import http.client
import json
import math
import threading
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone
from typing import Any, Callable, Mapping, Sequence
from urllib.parse import urlparse

import jwt

from wardgate.config import IssuerConfig
from wardgate.core.model import Principal

# Larger than any real token (Entra ID tokens with many groups run to a few KiB), small enough that
# parsing an attacker's input costs nothing.
MAX_TOKEN_LENGTH = 64 * 1024
# Discovery documents are a few KiB; refuse to buffer an arbitrarily large response.
_MAX_DISCOVERY_BYTES = 1024 * 1024
_USER_AGENT = "wardgate"
_REQUIRED_CLAIMS = ["exp", "iat", "iss", "sub", "aud"]


class AuthenticationError(Exception):
    """A token was refused. ``reason`` is a stable code for metrics and audit; ``str(exc)`` is a
    message for the human at the client. Neither ever contains the token."""

    REASONS = frozenset(
        {
            "malformed", "unknown_issuer", "algorithm_not_allowed", "unknown_key", "bad_signature",
            "expired", "not_yet_valid", "wrong_audience", "lifetime_too_long", "missing_claim",
            "jwks_unavailable",
        }
    )

    def __init__(self, reason: str, message: str) -> None:
        if reason not in self.REASONS:
            raise ValueError(f"unknown authentication failure reason {reason!r}")
        super().__init__(message)
        self.reason = reason


def _shown(value: object, limit: int = 120) -> str:
    """repr() of a token-supplied value, cut short: the client chose it, so it may be huge."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _timestamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _http_get_json(url: str, timeout: float) -> Any:
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT, "Accept": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        body = response.read(_MAX_DISCOVERY_BYTES + 1)
    if len(body) > _MAX_DISCOVERY_BYTES:
        raise ValueError(f"response larger than {_MAX_DISCOVERY_BYTES} bytes")
    return json.loads(body)


class _IssuerKeys:
    """The signing keys of one trusted issuer: where its JWKS is, and a cached PyJWKClient for it."""

    def __init__(self, config: IssuerConfig, http_timeout: float, refresh_interval: float) -> None:
        self.config = config
        self._http_timeout = http_timeout
        self._refresh_interval = refresh_interval
        # One lock per issuer: a slow IdP delays only its own tokens, and concurrent verifications
        # that all miss the cache cause one fetch, not one each.
        self._lock = threading.Lock()
        self._client: jwt.PyJWKClient | None = None
        self._last_forced_refresh: float | None = None

    def signing_key(self, kid: str) -> jwt.PyJWK:
        with self._lock:
            client = self._jwks_client()
            key = self._find(client, kid, refresh=False)
            if key is None and self._may_force_refresh():
                # Recorded before fetching so that a failing IdP is also protected from retries.
                self._last_forced_refresh = time.monotonic()
                key = self._find(client, kid, refresh=True)
        if key is None:
            raise AuthenticationError(
                "unknown_key", f"token key id {_shown(kid)} is not in the JWKS of issuer {self.config.issuer!r}"
            )
        return key

    def _may_force_refresh(self) -> bool:
        # An unknown kid normally means the IdP rotated keys, so we re-fetch; but anyone can send
        # random kids, and each must not cost the IdP a request.
        return (
            self._last_forced_refresh is None
            or time.monotonic() - self._last_forced_refresh >= self._refresh_interval
        )

    def _find(self, client: jwt.PyJWKClient, kid: str, *, refresh: bool) -> jwt.PyJWK | None:
        try:
            keys = client.get_signing_keys(refresh=refresh)
        except (jwt.PyJWKClientError, jwt.PyJWKSetError, ValueError) as exc:
            # PyJWKClientConnectionError (network, HTTP status), no usable keys, or a body that is
            # not JSON (json raises ValueError, which PyJWKClient lets through).
            raise AuthenticationError(
                "jwks_unavailable",
                f"cannot fetch the signing keys of issuer {self.config.issuer!r} from {client.uri}: {exc}",
            ) from None
        return next((key for key in keys if key.key_id == kid), None)

    def _jwks_client(self) -> jwt.PyJWKClient:
        if self._client is None:
            uri = self.config.jwks_uri or self._discover_jwks_uri()
            self._client = jwt.PyJWKClient(
                uri, cache_jwk_set=True, timeout=self._http_timeout, headers={"User-Agent": _USER_AGENT}
            )
        return self._client

    def _discover_jwks_uri(self) -> str:
        issuer = self.config.issuer
        url = issuer.rstrip("/") + "/.well-known/openid-configuration"
        try:
            document = _http_get_json(url, self._http_timeout)
        except (OSError, ValueError, http.client.HTTPException) as exc:
            # OSError covers URLError, HTTPError and timeouts; ValueError covers bad JSON.
            raise AuthenticationError(
                "jwks_unavailable", f"cannot fetch the discovery document of issuer {issuer!r} from {url}: {exc}"
            ) from None
        jwks_uri = document.get("jwks_uri") if isinstance(document, dict) else None
        scheme = urlparse(jwks_uri).scheme if isinstance(jwks_uri, str) else ""
        # An https issuer's keys must come over https too, or the discovery document would let a
        # network attacker substitute them.
        allowed = ("https",) if issuer.startswith("https://") else ("http", "https")
        if scheme not in allowed:
            raise AuthenticationError(
                "jwks_unavailable",
                f"the discovery document of issuer {issuer!r} at {url} has no usable jwks_uri "
                f"(got {_shown(jwks_uri)})",
            )
        return jwks_uri


class TokenVerifier:
    """Turns a bearer token into a :class:`Principal`, or refuses it. Safe to call from many threads;
    blocking (it may fetch discovery documents and JWKS over HTTP), so call it off the event loop."""

    def __init__(
        self,
        issuers: Sequence[IssuerConfig],
        *,
        http_timeout: float = 5.0,
        now: Callable[[], float] = time.time,
        jwks_refresh_interval: float = 30.0,
    ) -> None:
        self._now = now
        self._issuers: dict[str, _IssuerKeys] = {}
        for config in issuers:
            if config.issuer in self._issuers:
                raise ValueError(f"issuer {config.issuer!r} is configured more than once")
            self._issuers[config.issuer] = _IssuerKeys(config, http_timeout, jwks_refresh_interval)

    def verify(self, token: str) -> Principal:
        header, unverified = self._read_unverified(token)
        keys = self._trusted_issuer(unverified)
        config = keys.config
        alg = header.get("alg")
        # Checked before any key is fetched: "none" and HS* are never in the list (config enforces
        # asymmetric algorithms), so a forged token costs us no network round-trip.
        if alg not in config.algorithms:
            raise AuthenticationError(
                "algorithm_not_allowed",
                f"token algorithm {_shown(alg)} is not allowed for issuer {config.issuer!r} "
                f"(allowed: {', '.join(config.algorithms)})",
            )
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise AuthenticationError("unknown_key", "token has no key id ('kid' header)")
        signing_key = keys.signing_key(kid)
        payload = self._decode(token, signing_key, config)
        self._check_times(payload, config)
        return self._principal(payload, config)

    @staticmethod
    def _read_unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """Header and payload, unverified: used only to choose the issuer and algorithm."""
        if not isinstance(token, str) or not token:
            raise AuthenticationError("malformed", "no token was given")
        if len(token) > MAX_TOKEN_LENGTH:
            raise AuthenticationError("malformed", f"token is longer than {MAX_TOKEN_LENGTH} characters")
        try:
            decoded = jwt.decode_complete(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise AuthenticationError("malformed", "token is not a well-formed JWT") from None
        return decoded["header"], decoded["payload"]

    def _trusted_issuer(self, unverified: Mapping[str, Any]) -> _IssuerKeys:
        issuer = unverified.get("iss")
        if issuer is None:
            raise AuthenticationError("missing_claim", "token has no 'iss' (issuer) claim")
        keys = self._issuers.get(issuer) if isinstance(issuer, str) else None
        if keys is None:
            raise AuthenticationError("unknown_issuer", f"token issuer {_shown(issuer)} is not trusted")
        return keys

    @staticmethod
    def _decode(token: str, signing_key: jwt.PyJWK, config: IssuerConfig) -> dict[str, Any]:
        try:
            return jwt.decode(
                token,
                # The key object rather than the PyJWK: a JWK without "alg" makes PyJWK assume RS256,
                # which would refuse an issuer that signs PS256 with an RSA key. PyJWT still checks
                # that the key's type (and EC curve) fits the algorithm.
                signing_key.key,
                algorithms=config.algorithms,
                audience=config.audience,
                issuer=config.issuer,
                options={
                    "require": _REQUIRED_CLAIMS,
                    # Times are checked by _check_times against the injectable clock.
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except jwt.InvalidSignatureError:
            raise AuthenticationError("bad_signature", "token signature does not verify") from None
        except (jwt.InvalidKeyError, TypeError):
            # The key is of another type (or EC curve) than the token's algorithm: PyJWT raises
            # TypeError when, say, an EC key is offered for RS256.
            raise AuthenticationError(
                "bad_signature", f"token key id {_shown(signing_key.key_id)} cannot verify this token's algorithm"
            ) from None
        except jwt.InvalidAlgorithmError:
            raise AuthenticationError(
                "algorithm_not_allowed", f"token algorithm is not allowed for issuer {config.issuer!r}"
            ) from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthenticationError("missing_claim", f"token has no {exc.claim!r} claim") from None
        except jwt.InvalidAudienceError:
            raise AuthenticationError("wrong_audience", _audience_message(token, config)) from None
        except jwt.InvalidIssuerError:
            raise AuthenticationError("unknown_issuer", "token issuer is not trusted") from None
        except jwt.PyJWTError as exc:
            # Wrong claim types (sub or jti not a string), unsupported critical headers...
            raise AuthenticationError("malformed", f"token is malformed: {exc}") from None

    def _check_times(self, payload: Mapping[str, Any], config: IssuerConfig) -> None:
        now = self._now()
        skew = config.clock_skew
        exp = _numeric_date(payload, "exp")
        iat = _numeric_date(payload, "iat")
        nbf = _numeric_date(payload, "nbf") if "nbf" in payload else None
        if exp <= now - skew:
            raise AuthenticationError("expired", f"token expired at {_timestamp(exp)}")
        if nbf is not None and nbf > now + skew:
            raise AuthenticationError("not_yet_valid", f"token is not valid before {_timestamp(nbf)}")
        if iat > now + skew:
            raise AuthenticationError(
                "not_yet_valid", f"token was issued in the future ({_timestamp(iat)}); check the clocks"
            )
        lifetime = exp - iat
        if lifetime > config.max_token_lifetime:
            raise AuthenticationError(
                "lifetime_too_long",
                f"token lifetime {lifetime:g}s exceeds the {config.max_token_lifetime:g}s "
                f"that issuer {config.issuer!r} allows; request a shorter-lived token",
            )

    @staticmethod
    def _principal(payload: Mapping[str, Any], config: IssuerConfig) -> Principal:
        subject = payload["sub"]
        if not subject:
            raise AuthenticationError("missing_claim", "token has an empty 'sub' claim")
        token_id = payload.get("jti")
        return Principal(
            issuer=config.issuer,
            subject=subject,
            groups=_groups(payload, config.groups_claim),
            claims={name: payload[name] for name in config.claims if name in payload},
            token_id=token_id if isinstance(token_id, str) else None,
            expires_at=float(payload["exp"]),
            all_claims=dict(payload),
        )


def _numeric_date(payload: Mapping[str, Any], claim: str) -> float:
    value = payload[claim]
    # bool is an int subclass; json also parses NaN and Infinity, which would defeat comparisons.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise AuthenticationError("malformed", f"token claim {claim!r} is not a number of seconds")
    return float(value)


def _groups(payload: Mapping[str, Any], claim: str) -> tuple[str, ...]:
    value = payload.get(claim)
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    # Refused rather than filtered: silently dropping a group could bypass a policy that denies it.
    if isinstance(value, list) and all(isinstance(group, str) for group in value):
        return tuple(value)
    raise AuthenticationError("malformed", f"token claim {claim!r} must be a string or a list of strings")


def _audience_message(token: str, config: IssuerConfig) -> str:
    # Only reached after the signature verified, so reading the claim again is safe.
    aud = jwt.decode(token, options={"verify_signature": False}).get("aud")
    expected = config.audience
    if isinstance(expected, str):
        return f"token audience {_shown(aud)} does not include {expected!r}"
    return f"token audience {_shown(aud)} does not include any of {expected!r}"
