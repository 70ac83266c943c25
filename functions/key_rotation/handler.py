"""Credential rotation for the gateway's PostgreSQL backends: alternating users, zero failed connections.

**Why two roles.** PostgreSQL keeps one password per role, so changing the password of the role the
gateway uses opens a window in which the secret and the database disagree. Instead each resource has
two login roles, ``<username>`` and ``<username>_alt``. A rotation sets a fresh password on the role
the secret does *not* name, logs in with it, and only then makes it the secret's current value. The
gateway keeps using the old credential (still valid) until its broker refreshes, or at once when a login
is refused (``engine._connect_backend`` re-fetches once); live sessions keep their backend connection.
After a grace period the previous role's password is removed (``PASSWORD NULL``), so the old
credential stops working.

**One-time setup, by a database administrator** (:func:`setup_sql`, run in the resource's database as
a role that may alter both roles — the RDS master user, a superuser):

* ``<username>_alt`` is created ``LOGIN PASSWORD NULL IN ROLE <username>`` (it inherits every privilege)
  with ``ALTER ROLE … SET role = <username>``, so what it creates belongs to ``<username>`` and stays
  usable after the next switch;
* ``wardgate_rotation.set_password(role, verifier)``, ``SECURITY DEFINER``: the only privilege the two
  roles get. It changes the password of the caller's own pair only, takes a SCRAM-SHA-256 *verifier*
  (computed here with libpq, so no plaintext password reaches the server or its statement log) or NULL,
  and refuses superusers. No ``CREATEROLE`` for the gateway's role: on PostgreSQL ≤ 15 that would let it
  alter any role, and from 16 on the two roles could not administer each other (circular membership).

So the function logs in **as the secret's current user**: no admin secret is needed at rotation time,
which is what the infra programs grant (read/write the rotated secret, nothing else).

The steps below work on a :class:`SecretStore` (current value, an optional pending one, versions by id)
that each cloud's entry point implements: AWS stages (``AWSPENDING``/``AWSCURRENT``), GCP and Azure
secret versions (the pending value then lives only in memory: it is published after it works).
Every step is idempotent, as Secrets Manager's rotation protocol requires.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator, Literal, Mapping, Protocol

import psycopg
from psycopg import errors as pg_errors
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from wardgate.core.credentials import Credential, CredentialError, credential_from_secret_text

ROTATION_RESOURCES_ENV = "WARDGATE_ROTATION_RESOURCES"
ALTERNATE_SUFFIX = "_alt"
SETUP_SCHEMA = "wardgate_rotation"
METADATA_KEY = "wardgate_rotation"  # inside the secret's JSON: when and from which version it was rotated
DEFAULT_GRACE_SECONDS = 3600
PASSWORD_BYTES = 32

log = logging.getLogger("wardgate.key_rotation")


class RotationError(Exception):
    """A rotation step cannot proceed; the message names the secret, resource or role (never a password)."""


class RotationTarget(BaseModel):
    """One entry of ``WARDGATE_ROTATION_RESOURCES``: where the rotated credential is used."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    resource: str = Field(min_length=1)
    host: str = Field(min_length=1)
    port: int = Field(5432, ge=1, le=65535)
    database: str = Field(min_length=1)
    username: str = Field(min_length=1, max_length=63 - len(ALTERNATE_SUFFIX))
    # TLS to the database: required unless the deployment says otherwise (local tests disable it).
    sslmode: Literal["disable", "require", "verify-ca", "verify-full"] = "require"
    # How long the previous credential keeps working after a rotation (must outlast the gateway's
    # credential_refresh, or gateways still holding it pay one re-fetch per connection).
    grace_seconds: int = Field(DEFAULT_GRACE_SECONDS, ge=0)
    # Scheduled clouds (Azure timer) rotate when the current value is this old.
    rotate_days: int = Field(30, ge=1, le=365)
    connect_timeout: int = Field(10, ge=1, le=120)

    @property
    def alternate(self) -> str:
        return self.username + ALTERNATE_SUFFIX

    def other_role(self, role: str) -> str:
        """The role a rotation moves to from ``role``; refuses a role outside the pair (fail closed)."""
        if role == self.username:
            return self.alternate
        if role == self.alternate:
            return self.username
        raise RotationError(f"resource {self.resource!r}: the secret names role {role!r}, which is neither "
                            f"{self.username!r} nor {self.alternate!r}; refusing to rotate it")


def load_targets(environ: Mapping[str, str] | None = None) -> dict[str, RotationTarget]:
    """``{secret URL: target}`` from ``WARDGATE_ROTATION_RESOURCES``; errors name what is wrong."""
    raw = (os.environ if environ is None else environ).get(ROTATION_RESOURCES_ENV)
    if not raw:
        raise RotationError(f"{ROTATION_RESOURCES_ENV} is not set: the function does not know what to rotate")
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise RotationError(f"{ROTATION_RESOURCES_ENV} is not JSON: {exc.msg} at position {exc.pos}") from None
    if not isinstance(data, dict) or not data:
        raise RotationError(f"{ROTATION_RESOURCES_ENV} must be a non-empty JSON object {{secret URL: resource}}")
    targets = {}
    for url, spec in data.items():
        try:
            targets[url] = RotationTarget.model_validate(spec)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'entry'}: {e['msg']}" for e in exc.errors())
            raise RotationError(f"{ROTATION_RESOURCES_ENV}[{url!r}]: {problems}") from None
    return targets


# --- the secret's value ------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredSecret:
    """One version of a secret as its store returns it."""

    version: str
    text: str


@dataclass(frozen=True)
class SecretDocument:
    """A secret's value: the credential plus what the rotation recorded about it.

    JSON ``{"username", "password", …}`` (the shape the gateway reads); other keys are kept. A bare
    password (as an operator may have put it first) is the password of the target's ``username``."""

    credential: Credential
    fields: Mapping[str, Any]

    @classmethod
    def parse(cls, stored: StoredSecret, target: RotationTarget, source: str) -> "SecretDocument":
        try:
            credential = credential_from_secret_text(stored.text, target.username, source=source)
        except CredentialError as exc:
            raise RotationError(str(exc)) from None
        if not credential.password:
            raise RotationError(f"{source}: version {stored.version} holds an empty password")
        fields = json.loads(stored.text) if stored.text.strip().startswith("{") else {}
        return cls(credential, fields)

    @property
    def rotated_at(self) -> datetime | None:
        meta = self.fields.get(METADATA_KEY)
        if not isinstance(meta, dict) or not isinstance(meta.get("rotated_at"), str):
            return None
        try:
            stamp = datetime.fromisoformat(meta["rotated_at"])
        except ValueError:
            return None
        return stamp if stamp.tzinfo else stamp.replace(tzinfo=timezone.utc)

    @property
    def previous_version(self) -> str | None:
        meta = self.fields.get(METADATA_KEY)
        value = meta.get("previous_version") if isinstance(meta, dict) else None
        return value if isinstance(value, str) and value else None

    def successor(self, username: str, password: str, version: str, now: datetime) -> str:
        """The next value: same extra fields, the new credential, and where it came from."""
        fields = {k: v for k, v in self.fields.items() if k not in ("username", "password", METADATA_KEY)}
        fields.update(username=username, password=password,
                      **{METADATA_KEY: {"rotated_at": now.astimezone(timezone.utc).isoformat(),
                                        "previous_version": version}})
        return json.dumps(fields, sort_keys=True)


def new_password() -> str:
    # URL-safe: no quoting issues in connection strings, libpq service files or shells.
    return secrets.token_urlsafe(PASSWORD_BYTES)


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


# --- the database side ---------------------------------------------------------------------------------


def setup_sql(username: str) -> str:
    """The one-time SQL a database administrator runs in the resource's database (see module doc)."""
    base, alt = _ident(username), _ident(username + ALTERNATE_SUFFIX)
    return f"""
CREATE ROLE {alt} LOGIN PASSWORD NULL IN ROLE {base};
ALTER ROLE {alt} SET role = {_literal(username)};
CREATE SCHEMA IF NOT EXISTS {SETUP_SCHEMA};
REVOKE ALL ON SCHEMA {SETUP_SCHEMA} FROM PUBLIC;
CREATE OR REPLACE FUNCTION {SETUP_SCHEMA}.set_password(target name, verifier text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    pair text := regexp_replace(session_user::text, '{ALTERNATE_SUFFIX}$', '');
BEGIN
    IF target::text NOT IN (pair, pair || '{ALTERNATE_SUFFIX}') THEN
        RAISE EXCEPTION 'wardgate rotation: % may not change the password of %', session_user, target
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = target AND rolsuper) THEN
        RAISE EXCEPTION 'wardgate rotation: % is a superuser', target USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF verifier IS NOT NULL AND verifier NOT LIKE 'SCRAM-SHA-256$%' THEN
        RAISE EXCEPTION 'wardgate rotation: only SCRAM-SHA-256 verifiers are accepted'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    EXECUTE format('ALTER ROLE %I PASSWORD %L', target, verifier);
END
$fn$;
REVOKE ALL ON FUNCTION {SETUP_SCHEMA}.set_password(name, text) FROM PUBLIC;
GRANT USAGE ON SCHEMA {SETUP_SCHEMA} TO {base}, {alt};
GRANT EXECUTE ON FUNCTION {SETUP_SCHEMA}.set_password(name, text) TO {base}, {alt};
"""


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class RoleAdmin:
    """Password changes through the setup's ``set_password``, on a connection holding the pair's lock."""

    def __init__(self, connection: psycopg.Connection, target: RotationTarget):
        self._connection = connection
        self._target = target

    def set_password(self, role: str, password: str) -> None:
        # The verifier is computed client-side: the plaintext never reaches the server or its logs.
        verifier = self._connection.pgconn.encrypt_password(password.encode(), role.encode(), b"scram-sha-256")
        self._call(role, verifier.decode())

    def disable_password(self, role: str) -> None:
        self._call(role, None)

    def _call(self, role: str, verifier: str | None) -> None:
        try:
            self._connection.execute(f"SELECT {SETUP_SCHEMA}.set_password(%s, %s)", (role, verifier))
        except (pg_errors.UndefinedFunction, pg_errors.InvalidSchemaName) as exc:
            raise RotationError(f"resource {self._target.resource!r}: {SETUP_SCHEMA}.set_password is missing in "
                                f"database {self._target.database!r}: run the one-time setup "
                                f"(functions/key_rotation/handler.py setup_sql) first ({exc.sqlstate})") from None
        except psycopg.Error as exc:
            raise RotationError(f"resource {self._target.resource!r}: cannot change the password of role "
                                f"{role!r}: {exc.diag.message_primary or exc}") from None


class Database:
    """The resource's PostgreSQL, reached with psycopg as whichever credential a step holds."""

    def __init__(self, target: RotationTarget):
        self.target = target

    def _connect(self, credential: Credential) -> psycopg.Connection:
        t = self.target
        return psycopg.connect(host=t.host, port=t.port, dbname=t.database, user=credential.username,
                               password=credential.password, sslmode=t.sslmode, connect_timeout=t.connect_timeout,
                               application_name="wardgate-key-rotation", autocommit=True)

    def can_login(self, credential: Credential) -> bool:
        """True if the credential logs in and can run a statement; any failure is False (logged)."""
        try:
            with self._connect(credential) as connection:
                connection.execute("SELECT 1").fetchone()
            return True
        except psycopg.Error as exc:
            log.info("login as %s to %s failed: %s", credential.username, self.target.resource,
                     str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            return False

    def check_login(self, credential: Credential) -> None:
        if not self.can_login(credential):
            raise RotationError(f"resource {self.target.resource!r}: role {credential.username!r} cannot log in "
                                f"to {self.target.host}:{self.target.port}/{self.target.database} with the "
                                "pending password")

    @contextmanager
    def administer(self, login: Credential) -> Iterator[RoleAdmin]:
        """A transaction as ``login`` holding the pair's advisory lock: a scheduled retirement and a
        rotation of the same pair never interleave (the retirement re-checks under the lock)."""
        try:
            connection = self._connect(login)
        except psycopg.Error as exc:
            raise RotationError(f"resource {self.target.resource!r}: cannot log in as the secret's current user "
                                f"{login.username!r}: {str(exc).splitlines()[0] if str(exc) else exc}") from None
        with connection, connection.transaction():
            connection.execute("SELECT pg_advisory_xact_lock(hashtext(%s))",
                               (f"wardgate-rotation:{self.target.username}",))
            yield RoleAdmin(connection, self.target)


# --- the store each cloud implements --------------------------------------------------------------------


class SecretStore(Protocol):
    """One rotated secret. ``pending`` exists between ``put_pending`` and ``promote``; after ``promote``
    the pending value is ``current``. ``version`` returns None for a version that is gone or disabled."""

    name: str

    def current(self) -> StoredSecret: ...

    def version(self, version_id: str) -> StoredSecret | None: ...

    def pending(self, token: str | None = None) -> StoredSecret | None: ...

    def put_pending(self, token: str, text: str) -> None: ...

    def promote(self, token: str) -> None: ...

    def disable(self, version_id: str) -> None: ...


class PendingInMemory:
    """``pending`` / ``put_pending`` for stores with no pending stage of their own (Secret Manager, Key
    Vault): the value is held here between ``put_pending`` and ``promote``, which run in one invocation."""

    _pending: StoredSecret | None = None

    def pending(self, token: str | None = None) -> StoredSecret | None:
        if self._pending is None or (token is not None and self._pending.version != token):
            return None
        return self._pending

    def put_pending(self, token: str, text: str) -> None:
        self._pending = StoredSecret(token, text)


@dataclass
class Rotation:
    """The steps for one secret and the resource it unlocks."""

    store: SecretStore
    target: RotationTarget
    database: Database

    def _document(self, stored: StoredSecret) -> SecretDocument:
        return SecretDocument.parse(stored, self.target, self.store.name)

    def _pending(self, token: str) -> SecretDocument:
        stored = self.store.pending(token)
        if stored is None:
            raise RotationError(f"{self.store.name}: no pending version {token}; run createSecret first")
        return self._document(stored)

    def create_pending(self, token: str, now: datetime | None = None) -> bool:
        """A new credential for the other role, stored as pending. False if it already exists."""
        if self.store.pending(token) is not None:
            return False
        current_stored = self.store.current()
        current = self._document(current_stored)
        role = self.target.other_role(current.credential.username)
        self.store.put_pending(token, current.successor(role, new_password(), current_stored.version, now or now_utc()))
        log.info("%s: pending version %s for role %s", self.store.name, token, role)
        return True

    def set_pending(self, token: str) -> bool:
        """Give the pending role its password, as the current user. False if it already works."""
        pending = self._pending(token).credential
        current = self._document(self.store.current()).credential
        if pending.username == current.username:
            raise RotationError(f"{self.store.name}: pending and current name the same role "
                                f"{pending.username!r}; alternating users need the other role")
        self.target.other_role(pending.username)  # refuses roles outside the pair
        if self.database.can_login(pending):
            return False
        with self.database.administer(current) as admin:
            admin.set_password(pending.username, pending.password)
        log.info("%s: password of %s set", self.store.name, pending.username)
        return True

    def test_pending(self, token: str) -> None:
        self.database.check_login(self._pending(token).credential)

    def finish(self, token: str) -> None:
        """Make the pending value current (the store moves the old current to previous)."""
        self.store.promote(token)
        log.info("%s: version %s is current", self.store.name, token)

    def retire_due(self, now: datetime | None = None) -> str | None:
        """After the grace period, remove the previous role's password and disable its version.

        Returns the role whose password was removed, or None when nothing was due."""
        current = self._document(self.store.current())
        previous_id = current.previous_version
        rotated_at = current.rotated_at
        if previous_id is None or rotated_at is None:
            return None
        if (now or now_utc()) < rotated_at + timedelta(seconds=self.target.grace_seconds):
            return None
        previous_stored = self.store.version(previous_id)
        if previous_stored is None:
            return None  # already disabled
        previous = self._document(previous_stored).credential
        role = previous.username
        if role == current.credential.username:
            self.store.disable(previous_id)  # its password was replaced by the current one already
            return None
        self.target.other_role(role)
        with self.database.administer(current.credential) as admin:
            # Under the lock: a rotation in progress may have given this role its next password
            # already; then the old one is gone and the new one must stay.
            in_progress = self.store.pending()
            if in_progress is not None:
                next_credential = self._document(in_progress).credential
                if next_credential.username == role and self.database.can_login(next_credential):
                    self.store.disable(previous_id)
                    return None
            admin.disable_password(role)
        self.store.disable(previous_id)
        log.info("%s: grace over, password of %s removed, version %s retired", self.store.name, role, previous_id)
        return role

    def rotate(self, now: datetime | None = None) -> str:
        """All steps at once (GCP, Azure): retire what is due, then a new credential on the other role,
        published only after it logs in. Returns the role now current."""
        now = now or now_utc()
        self.retire_due(now)
        token = secrets.token_hex(16)
        self.create_pending(token, now)
        self.set_pending(token)
        self.test_pending(token)
        pending = self._pending(token)
        # The version before the current one named the role that just got a new password: it no
        # longer works, so it no longer needs to be readable.
        older = self._document(self.store.current()).previous_version
        if older is not None and (older_stored := self.store.version(older)) is not None:
            if self._document(older_stored).credential.username == pending.credential.username:
                self.store.disable(older)
        self.finish(token)
        return pending.credential.username

    def rotation_due(self, now: datetime | None = None) -> bool:
        """For scheduled clouds: has the current value reached ``rotate_days``? A value never rotated by
        wardgate (no record of when) is due at once."""
        rotated_at = self._document(self.store.current()).rotated_at
        return rotated_at is None or (now or now_utc()) >= rotated_at + timedelta(days=self.target.rotate_days)

    def last_rotated(self) -> datetime | None:
        return self._document(self.store.current()).rotated_at


def target_for(targets: Mapping[str, RotationTarget], matches: Any) -> tuple[str, RotationTarget]:
    """The single configured secret URL for which ``matches(url)`` holds; fail closed otherwise."""
    found = [(url, target) for url, target in targets.items() if matches(url)]
    if len(found) != 1:
        what = "no entry" if not found else f"{len(found)} entries"
        raise RotationError(f"{ROTATION_RESOURCES_ENV} has {what} for this secret; refusing to rotate it")
    return found[0]
