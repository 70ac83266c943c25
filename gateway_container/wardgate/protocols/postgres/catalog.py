"""Resolving result columns to ``schema.table.column`` for masking.

A RowDescription names each result column's source by table OID and attribute number (a column renamed
with ``AS`` keeps them). The gateway looks those OIDs up in the backend's catalog over a connection of
its own (the gateway's credentials, never the client's session), and caches what it learned for a while:
OIDs of a live table are stable; names can change with ALTER … RENAME, hence the time limit.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Iterable

from wardgate.protocols.postgres import wire
from wardgate.protocols.postgres.backend import BackendLink, connect_backend

CACHE_SECONDS = 60.0


class CatalogError(Exception):
    pass


class CatalogResolver:
    def __init__(self, resource) -> None:
        self.resource = resource
        self._columns: dict[int, tuple[float, str, dict[int, str]]] = {}  # oid → (loaded, "schema.table", attnum → name)
        self._link: BackendLink | None = None
        self._lock = asyncio.Lock()
        self._relations: dict[str, tuple[float, int | None]] = {}  # name as written → (loaded, oid)
        self.generation = 0  # bumped at every load: plans built from older names are not reused

    def oid_of(self, relation: str) -> int | None:
        """The OID of a relation named as in a statement, if looked up recently (else None)."""
        entry = self._relations.get(relation)
        if entry is None or time.monotonic() - entry[0] > CACHE_SECONDS or entry[1] is None:
            return None
        return entry[1] if entry[1] in self._columns else None

    def attribute_names(self, oid: int) -> dict[int, str]:
        entry = self._columns.get(oid)
        return dict(entry[2]) if entry is not None else {}

    async def load_relation(self, relation: str) -> None:
        """Resolve a relation name (as written, resolved on the gateway's own search_path) and load its
        columns. A name that does not resolve raises CatalogError: masking cannot go on blind."""
        literal = "'" + relation.replace("'", "''") + "'"
        rows = await self._locked_query(f"SELECT to_regclass({literal})::oid")
        oid = int(rows[0][0]) if rows and rows[0][0] is not None else None
        if oid is None:
            raise CatalogError(f"relation {relation!r} not found")
        self._relations[relation] = (time.monotonic(), oid)
        self._columns.pop(oid, None)
        await self.load({oid})

    async def _locked_query(self, sql: str) -> list[list[str]]:
        async with self._lock:
            return await self._query(sql)

    def table(self, oid: int) -> str | None:
        entry = self._columns.get(oid)
        return entry[1] if entry is not None else None

    def column(self, oid: int, attnum: int) -> str | None:
        entry = self._columns.get(oid)
        if entry is None:
            return None
        name = entry[2].get(attnum)
        return f"{entry[1]}.{name}" if name is not None else None

    def missing(self, oids: Iterable[int]) -> set[int]:
        now = time.monotonic()
        return {oid for oid in oids if oid and (oid not in self._columns or now - self._columns[oid][0] > CACHE_SECONDS)}

    def fresh_until(self, oids: Iterable[int]) -> float:
        """Until when none of these OIDs' names is due for reloading (``missing`` names none of them
        before then); 0 if one is not loaded, infinity for none (columns without a table)."""
        until = math.inf
        for oid in oids:
            if oid:
                entry = self._columns.get(oid)
                if entry is None:
                    return 0.0
                until = min(until, entry[0] + CACHE_SECONDS)
        return until

    async def load(self, oids: set[int]) -> None:
        if not oids:
            return
        async with self._lock:
            oids = self.missing(oids)
            if not oids:
                return
            rows = await self._query(
                "SELECT c.oid, n.nspname, c.relname, a.attnum, a.attname FROM pg_catalog.pg_class c "
                "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
                "JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid "
                f"WHERE c.oid IN ({', '.join(str(int(o)) for o in sorted(oids))}) AND a.attnum > 0 "
                "AND NOT a.attisdropped"
            )
            now = time.monotonic()
            loaded: dict[int, tuple[float, str, dict[int, str]]] = {oid: (now, f"?{oid}", {}) for oid in oids}
            for oid, schema, table, attnum, attname in rows:
                entry = loaded[int(oid)]
                loaded[int(oid)] = (now, f"{schema}.{table}", {**entry[2], int(attnum): attname})
            self._columns.update(loaded)
            self.generation += 1

    async def _query(self, sql: str) -> list[list[str]]:
        for attempt in (1, 2):
            if self._link is None or self._link.transport is None or self._link.transport.is_closing():
                credential = await self.resource.broker.get()
                self._link, _ = await connect_backend(self.resource.target, credential.username,
                                                      credential.password, {"application_name": "wardgate-catalog"})
            try:
                return await asyncio.wait_for(self._simple_query(sql), 10)
            except (ConnectionError, TimeoutError, CatalogError):
                if self._link is not None and self._link.transport is not None:
                    self._link.transport.close()
                self._link = None
                if attempt == 2:
                    raise
        return []

    async def _simple_query(self, sql: str) -> list[list[str]]:
        link = self._link
        link.transport.write(wire.query(sql))
        rows: list[list[str]] = []
        error = None
        while True:
            try:
                kind, payload = await link.read_message()
            except Exception as exc:
                raise CatalogError(f"catalog connection failed: {exc}") from None
            if kind == b"D":
                rows.append(_text_row(payload))
            elif kind == b"E":
                error = wire.parse_error_fields(payload).get("M", "error")
            elif kind == b"Z":
                if error:
                    raise CatalogError(f"catalog lookup failed: {error}")
                return rows

    def close(self) -> None:
        if self._link is not None and self._link.transport is not None:
            self._link.transport.close()


def copy_target(text: str) -> tuple[str, list[str] | None] | None:
    """For ``COPY table [(columns)] TO …``: (table as written, column list or None). None for
    ``COPY (query) TO …`` — its columns have no table identity. Not on the hot path: COPY only."""
    from pglast import parse_sql
    from pglast.ast import CopyStmt

    try:
        statements = parse_sql(text)
    except Exception:
        return None
    for raw in statements:
        statement = raw.stmt
        if isinstance(statement, CopyStmt) and not statement.is_from and statement.relation is not None:
            relation = statement.relation
            name = ".".join(part for part in (relation.schemaname, relation.relname) if part)
            columns = [c.sval for c in statement.attlist] if statement.attlist else None
            return name, columns
    return None


def _text_row(payload: bytes) -> list[str]:
    count = int.from_bytes(payload[:2], "big")
    offset = 2
    values = []
    for _ in range(count):
        length = int.from_bytes(payload[offset:offset + 4], "big", signed=True)
        offset += 4
        if length < 0:
            values.append(None)
        else:
            values.append(payload[offset:offset + length].decode())
            offset += length
    return values
