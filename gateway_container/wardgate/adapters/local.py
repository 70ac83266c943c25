"""The embedded default backends: no cloud, no daemon.

- ``memory://NAME``: an in-process queue (one per name per process) with visibility timeout,
  redelivery and a dead-letter list after ``max_receives`` deliveries (``memory://approvals?max_receives=5
  &visibility=30``). Messages do not survive the process: the approval request they announce does
  (it is in the decision store first), and a restarted gateway re-announces pending requests.
- ``sqlite:///PATH``: the decision store, a SQLite file (WAL) shared by the gateway and the CLI;
  create-once is the primary key.
- ``file://DIR``: the object store, read-only files written atomically.
- ``file://KEY.pem``: a local Ed25519 signing key (created if missing).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import uuid
from collections import deque
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import parse_qs, unquote, urlparse

from wardgate.core.files import create_file_atomically, file_url_path
from wardgate.core.integrity import LocalEd25519Signer
from wardgate.core.ports import ObjectExists, QueueMessage, StoreUnavailable


def local_path(url: str) -> Path:
    """The file or directory a ``sqlite://`` or ``file://`` URL names (absolute)."""
    raw = unquote(file_url_path(url))
    if not raw:
        raise ValueError(f"{url!r}: no path")
    return Path(raw).expanduser().absolute()


class _Entry:
    __slots__ = ("id", "body", "attributes", "receive_count", "visible_at", "receipt")

    def __init__(self, body: bytes, attributes: Mapping[str, str]):
        self.id = uuid.uuid4().hex
        self.body = body
        self.attributes = dict(attributes)
        self.receive_count = 0
        self.visible_at = 0.0
        self.receipt = ""


class MemoryQueue:
    """In-process at-least-once queue; the same name in one process is the same queue."""

    _registry: dict[str, "MemoryQueue"] = {}
    _registry_lock = threading.Lock()

    def __new__(cls, url: str):
        parsed = urlparse(url)
        name = parsed.netloc + parsed.path
        with cls._registry_lock:
            existing = cls._registry.get(name)
            if existing is None:
                existing = super().__new__(cls)
                existing._init(url)
                cls._registry[name] = existing
            return existing

    def _init(self, url: str) -> None:
        query = {k: v[-1] for k, v in parse_qs(urlparse(url).query).items()}
        self.url = url
        self.max_receives = int(query.get("max_receives", "5"))
        self.visibility = float(query.get("visibility", "30"))
        self._ready: deque[_Entry] = deque()
        self._inflight: dict[str, _Entry] = {}
        self._dead: list[_Entry] = []
        self._cond = threading.Condition()

    def send(self, body: bytes, attributes: Mapping[str, str] | None = None) -> str:
        entry = _Entry(bytes(body), attributes or {})
        with self._cond:
            self._ready.append(entry)
            self._cond.notify_all()
        return entry.id

    def _requeue_expired(self, now: float) -> None:
        for receipt, entry in list(self._inflight.items()):
            if entry.visible_at <= now:
                del self._inflight[receipt]
                if entry.receive_count >= self.max_receives:
                    self._dead.append(entry)  # poison: visible in dead_letters(), never dropped
                else:
                    self._ready.append(entry)

    def receive(self, max_messages: int = 10, wait_seconds: float = 0.0) -> list[QueueMessage]:
        deadline = time.monotonic() + wait_seconds
        with self._cond:
            while True:
                now = time.monotonic()
                self._requeue_expired(now)
                if self._ready or now >= deadline:
                    break
                wake = min([deadline] + [e.visible_at for e in self._inflight.values()])
                self._cond.wait(timeout=max(0.0, wake - now))
            out = []
            while self._ready and len(out) < max_messages:
                entry = self._ready.popleft()
                entry.receive_count += 1
                entry.visible_at = now + self.visibility
                entry.receipt = uuid.uuid4().hex
                self._inflight[entry.receipt] = entry
                out.append(QueueMessage(entry.id, entry.body, entry.receipt, entry.receive_count,
                                        dict(entry.attributes)))
            return out

    def ack(self, message: QueueMessage) -> None:
        with self._cond:
            self._inflight.pop(message.receipt, None)

    def dead_letters(self, max_messages: int = 10) -> list[QueueMessage]:
        with self._cond:
            self._requeue_expired(time.monotonic())
            return [QueueMessage(e.id, e.body, "", e.receive_count, dict(e.attributes))
                    for e in self._dead[:max_messages]]


class SqliteDecisionStore:
    """Create-once records in one SQLite table; safe across processes (WAL, busy timeout)."""

    def __init__(self, url: str):
        self.url = url
        self.path = local_path(url)
        self._local = threading.local()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._connection() as db:
                db.execute("CREATE TABLE IF NOT EXISTS records (key TEXT PRIMARY KEY, record TEXT NOT NULL,"
                           " created REAL NOT NULL)")
        except (OSError, sqlite3.Error) as exc:
            raise StoreUnavailable(f"decision store {url}: {exc}") from exc

    def _connection(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")  # a decision, once acknowledged, survives power loss
            self._local.db = db
        return db

    def create(self, key: str, record: Mapping[str, Any]) -> bool:
        text = json.dumps(dict(record), sort_keys=True)
        try:
            cursor = self._connection().execute(
                "INSERT OR IGNORE INTO records (key, record, created) VALUES (?, ?, ?)", (key, text, time.time()))
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"decision store {self.url}: {exc}") from exc
        return cursor.rowcount == 1

    def get(self, key: str) -> dict[str, Any] | None:
        try:
            row = self._connection().execute("SELECT record FROM records WHERE key = ?", (key,)).fetchone()
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"decision store {self.url}: {exc}") from exc
        return None if row is None else json.loads(row[0])

    def list(self, prefix: str) -> list[tuple[str, dict[str, Any]]]:
        # Range scan on the primary key: prefix <= key < prefix + U+10FFFF.
        try:
            rows = self._connection().execute(
                "SELECT key, record FROM records WHERE key >= ? AND key < ? ORDER BY key",
                (prefix, prefix + "\U0010ffff")).fetchall()
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"decision store {self.url}: {exc}") from exc
        return [(key, json.loads(text)) for key, text in rows]


class DirectoryObjectStore:
    """Write-once files under a directory; keys are relative paths."""

    def __init__(self, url: str):
        self.url = url
        self.root = local_path(url)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if key.startswith("/") or ".." in Path(key).parts or not str(path).startswith(str(self.root.resolve())):
            raise ValueError(f"object key {key!r} leaves the store")
        return path

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        path = self._path(key)
        try:
            if path.exists():
                if path.read_bytes() == data:
                    return
                raise ObjectExists(f"{self.url}/{key} exists with different content")
            path.parent.mkdir(parents=True, exist_ok=True)
            create_file_atomically(path, data, 0o444)
        except FileExistsError:
            if path.read_bytes() != data:
                raise ObjectExists(f"{self.url}/{key} exists with different content") from None
        except OSError as exc:
            raise StoreUnavailable(f"object store {self.url}: {exc}") from exc

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise KeyError(key) from None
        except OSError as exc:
            raise StoreUnavailable(f"object store {self.url}: {exc}") from exc

    def list(self, prefix: str = "") -> list[str]:
        if not self.root.exists():
            return []
        keys = []
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                key = os.path.relpath(os.path.join(dirpath, name), self.root).replace(os.sep, "/")
                if key.startswith(prefix) and not name.startswith("."):
                    keys.append(key)
        return sorted(keys)


def open_local_signer(url: str) -> LocalEd25519Signer:
    return LocalEd25519Signer(local_path(url))
