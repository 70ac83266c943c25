"""One-time signed approve/deny links (for Teams cards, generic webhooks and e-mail).

A link names the request, the verdict, the approver identity it was minted for (a key of the
webhook's ``identities`` map, e.g. ``teams:<object id>``), an expiry and a random nonce, signed with
HMAC-SHA256. Redeeming it records the nonce create-once in the decision store, so a link acts once
even when several gateway replicas or function instances see it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from typing import Callable

from wardgate.core.ports import DecisionStore

from wardgate.approvals.records import VERDICTS, ApprovalRefused, check_id, link_key, rfc3339

LINK_PATH = "/approvals/link/"
_MAX_TOKEN = 2048


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class LinkClaim:
    """What a verified link says."""

    request_id: str
    verdict: str
    approver: str
    expires_at: float
    nonce: str

    def __iter__(self):
        # ``request_id, verdict, approver = signer.redeem(token)``
        return iter((self.request_id, self.verdict, self.approver))


class LinkSigner:
    """Mints and redeems one-time links under ``base_url`` + ``/approvals/link/<token>``."""

    def __init__(self, key: bytes, store: DecisionStore, *, base_url: str,
                 clock: Callable[[], float] = time.time) -> None:
        if len(key) < 32:
            raise ValueError("the link signing key must be at least 32 bytes (256 bits)")
        self._key = bytes(key)
        self.store = store
        self.base_url = base_url.rstrip("/")
        self._clock = clock

    def _mac(self, payload: str) -> bytes:
        return hmac.new(self._key, b"wardgate-link-v1." + payload.encode(), hashlib.sha256).digest()

    def token(self, request_id: str, verdict: str, approver: str, ttl_seconds: float) -> str:
        if verdict not in VERDICTS:
            raise ValueError(f"verdict must be approve or deny, not {verdict!r}")
        if not approver:
            raise ValueError("a link is minted for one approver identity")
        claims = {"r": check_id(request_id), "v": verdict, "a": approver,
                  "e": int(self._clock() + ttl_seconds), "n": secrets.token_hex(16)}
        payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
        return f"{payload}.{_b64(self._mac(payload))}"

    def mint(self, request_id: str, verdict: str, approver: str, ttl_seconds: float) -> str:
        """The full URL of a one-time link."""
        return self.base_url + LINK_PATH + self.token(request_id, verdict, approver, ttl_seconds)

    def verify(self, token: str) -> LinkClaim:
        """Check signature and expiry without using the link (the GET confirmation page)."""
        if not isinstance(token, str) or len(token) > _MAX_TOKEN or token.count(".") != 1:
            raise ApprovalRefused("forged", "this approval link is malformed")
        payload, signature = token.split(".")
        try:
            given = _unb64(signature)
        except (binascii.Error, ValueError):
            raise ApprovalRefused("forged", "this approval link is malformed") from None
        if not hmac.compare_digest(given, self._mac(payload)):
            raise ApprovalRefused("forged", "this approval link's signature does not verify (forged or altered)")
        claims = json.loads(_unb64(payload))
        claim = LinkClaim(claims["r"], claims["v"], claims["a"], float(claims["e"]), claims["n"])
        if self._clock() >= claim.expires_at:
            raise ApprovalRefused("link_expired", f"this approval link expired at {rfc3339(claim.expires_at)}")
        if self.store.get(link_key(claim.nonce)) is not None:
            raise ApprovalRefused("replayed", "this approval link was already used (links work once)")
        return claim

    def redeem(self, token: str) -> LinkClaim:
        """Verify and use up a link; a second redemption, from anywhere, is refused."""
        claim = self.verify(token)
        used = {"request_id": claim.request_id, "verdict": claim.verdict, "approver": claim.approver,
                "at": rfc3339(self._clock())}
        if not self.store.create(link_key(claim.nonce), used):
            raise ApprovalRefused("replayed", "this approval link was already used (links work once)")
        return claim
