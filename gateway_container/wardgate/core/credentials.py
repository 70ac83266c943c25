"""The credential broker: where the gateway's own backend credentials come from.

Clients never see these. A source is named by URL; each scheme is one small class. Cloud schemes
(``aws-sm://``, ``gcp-sm://``, ``azure-kv://``, IAM database auth) register themselves from
``wardgate.adapters`` so the core imports no cloud SDK.

Credentials may expire (IAM auth tokens live ~15 minutes, rotated secrets change): the broker caches a
credential until shortly before ``expires_at`` (or ``refresh_after``) and fetches a new one for the next
connection. Live sessions keep the backend connection they authenticated with, so a refresh never drops
them.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol
from urllib.parse import unquote, urlparse


class CredentialError(Exception):
    """A backend credential cannot be obtained; the message names the source (never the secret)."""


@dataclass(frozen=True, slots=True)
class Credential:
    username: str
    password: str | None
    # Absolute time after which the password no longer works (IAM tokens); None = until rotated.
    expires_at: float | None = None

    def __repr__(self) -> str:  # never print a secret by accident
        return f"Credential(username={self.username!r}, password=***, expires_at={self.expires_at!r})"


class CredentialSource(Protocol):
    def fetch(self) -> Credential:
        """Blocking fetch (called in a worker thread)."""


class EnvSource:
    """``env://VAR``: the password is the value of an environment variable."""

    def __init__(self, url: str, username: str):
        self.variable = urlparse(url).netloc or urlparse(url).path.lstrip("/")
        self.username = username

    def fetch(self) -> Credential:
        value = os.environ.get(self.variable)
        if value is None:
            raise CredentialError(f"environment variable {self.variable} is not set")
        return Credential(self.username, value)


class FileSource:
    """``file:///path``: the file holds the password, or JSON ``{"username": …, "password": …}``
    (the shape cloud secret managers use). Re-read on every refresh, so a rotated file is picked up."""

    def __init__(self, url: str, username: str):
        parsed = urlparse(url)
        self.path = Path(unquote(parsed.netloc + parsed.path))
        self.username = username

    def fetch(self) -> Credential:
        try:
            text = self.path.read_text()
        except OSError as exc:
            raise CredentialError(f"cannot read credential file {self.path}: {exc.strerror}") from None
        return credential_from_secret_text(text, self.username, source=str(self.path))


def credential_from_secret_text(text: str, default_username: str, *, source: str) -> Credential:
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            data = json.loads(stripped)
        except json.JSONDecodeError:
            raise CredentialError(f"credential {source} looks like JSON but does not parse") from None
        if not isinstance(data, dict) or "password" not in data:
            raise CredentialError(f"credential {source}: JSON secret needs a 'password' field")
        return Credential(str(data.get("username", default_username)), str(data["password"]))
    return Credential(default_username, stripped)


_SCHEMES: dict[str, Callable[[str, str], CredentialSource]] = {"env": EnvSource, "file": FileSource}


def register_scheme(scheme: str, factory: Callable[[str, str], CredentialSource]) -> None:
    _SCHEMES[scheme] = factory


def open_source(url: str, username: str) -> CredentialSource:
    scheme = urlparse(url).scheme
    factory = _SCHEMES.get(scheme)
    if factory is None:
        raise CredentialError(
            f"credential URL {url.split('://')[0]}://…: unsupported scheme {scheme!r} "
            f"(available: {', '.join(sorted(s + '://' for s in _SCHEMES))})"
        )
    return factory(url, username)


class CredentialBroker:
    """Caches one resource's credential; refreshes it before expiry, outside the event loop."""

    def __init__(self, source: CredentialSource | None, username: str, *, refresh_after: float = 300.0,
                 expiry_margin: float = 60.0, clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time):
        self._source = source
        self._username = username
        self._refresh_after = refresh_after
        self._expiry_margin = expiry_margin
        self._clock = clock
        self._wall_clock = wall_clock
        self._cached: Credential | None = None
        self._fetched_at = 0.0
        self._lock = asyncio.Lock()

    def _fresh(self) -> bool:
        if self._cached is None:
            return False
        if self._clock() - self._fetched_at > self._refresh_after:
            return False
        expires = self._cached.expires_at
        return expires is None or self._wall_clock() < expires - self._expiry_margin

    def invalidate(self) -> None:
        """Forget the cached credential (e.g. the backend refused it: it was probably rotated)."""
        self._cached = None

    async def get(self) -> Credential:
        if self._source is None:
            return Credential(self._username, None)
        if self._fresh():
            return self._cached
        async with self._lock:
            if not self._fresh():
                self._cached = await asyncio.to_thread(self._source.fetch)
                self._fetched_at = self._clock()
            return self._cached
