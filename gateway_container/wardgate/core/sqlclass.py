"""SQL statement classification with PostgreSQL's own parser (pglast).

``classify(text)`` answers, per statement of a simple-query string, *what kind of statement this is*
(``verb``), *which effects it has* (``classes``), *what it touches* (``tables``, ``written_tables``,
``functions``) and whether it is an UPDATE/DELETE *without a real filter* (``unfiltered``). The policy
engine decides on these; anything this module cannot see through is ``"unknown"`` (fail closed).

Hot path
--------
Building pglast's Python AST costs 100-300 µs, too much per statement in a proxy, so ``classify``:

1. looks the exact text up in a bounded dict (65 536 entries, oldest evicted first; texts longer than
   ``EXACT_CACHE_MAX_CHARS`` skip it so the cache's memory stays bounded, and so do texts answered by
   step 2, which would only churn it);
2. else, for plain texts (ASCII, no quotes, ``$``, backslash or comments), splits the text around its
   unsigned integer literals of at most 9 digits (standalone tokens: no letter, digit, ``_`` or ``.``
   next to them) and looks the tuple of the other pieces up (the *template* cache). An entry is stored
   only when ``normalize`` replaced exactly those literals, in order, and nothing else; every text with
   the same pieces differs from it only in int4 literals that PostgreSQL's lexer reads as the same kind
   of token, so it has the same normalized text and the same classification (step 3). pgbench-style
   statements that differ only in a key thus skip ``normalize`` (~4-8 µs);
3. else runs ``pglast.parser.normalize`` (C, a few µs; it raises on bad SQL, which is how parse errors
   surface) and looks the **normalized text itself** up in a bounded dict — a full-fidelity key, never a
   hash, so a crafted statement cannot borrow another's classification;
4. only on a miss walks the AST (iteratively — an explicit stack, so ``a || b || … || z`` with
   thousands of terms classifies; a pathologically deep AND/OR nesting in a filter that still exhausts
   the recursion limit makes the statement ``unknown``).

A text containing a NUL character is refused (``SqlParseError``): the C parser would stop there.

Step 3 is sound only if a classification never depends on a constant's value, because ``normalize``
replaces constants by ``$n``. It is sound by construction: on a miss the walk classifies the
**normalized text** (``SELECT $1``, ``SET ROLE $1``, ``DELETE FROM t WHERE $1 = $2``…), so what is
stored under a normalized key is a function of that key alone. Where a value would matter, a ``$n``
is read the fail-closed way (an EXPLAIN option that is not literally false counts as on; a function
language that is not a plain name is untrusted; ``WHERE $1 = $2`` is no filter). Where the normalized
text does not parse (``DO $1``, ``CREATE FUNCTION … AS $1``, ``LANGUAGE $1``, ``NOTIFY c, $1``) the
original text is classified and cached **by exact text only**: ``LANGUAGE 'sql'`` and
``LANGUAGE 'plpython3u'`` normalize alike but are not alike. The same happens when the normalized walk
met a ``$n`` whose value would make the result less strict — today only ``set_config($n, …)``:
``set_config('search_path', …)`` is ``session``, ``set_config('role', …)`` also ``admin``. Otherwise the
walk treats ``A_Const`` and ``ParamRef`` as opaque, so a text and its normalized form classify
identically (tested on the corpus).

``Classification.fingerprint`` is pglast's fingerprint of the normalized text (of the original text
when the normalized one does not parse), so it is identical for all texts sharing a normalized key —
and a password in ``CREATE ROLE … PASSWORD '…'`` does not influence it.

Classes (``CLASSES``) — the decisions taken
-------------------------------------------
A statement gets every class that describes one of its effects; a policy allowing a set of classes
must allow all of them.

* ``read``: SELECT / VALUES / TABLE / SHOW / FETCH / MOVE / DECLARE CURSOR, EXPLAIN (plain: ``read``
  only, inner tables still reported), any executed sub-SELECT, any relation read in an executed
  context (INSERT … SELECT, UPDATE … FROM, DELETE … USING, MERGE … USING, subqueries), and RETURNING.
  ``INSERT … VALUES`` without subqueries is ``write`` only; a WHERE on the target's own columns does
  not count as a read.
* ``write``: INSERT, UPDATE, DELETE, MERGE (also inside data-modifying CTEs, anywhere),
  SELECT … INTO (+ ``ddl`` + ``read``), CREATE TABLE AS / CREATE MATERIALIZED VIEW AS (``ddl`` +
  ``write`` + ``read``; ``ddl`` only WITH NO DATA), TRUNCATE (``write`` + ``ddl``, and ``unfiltered``:
  it empties the table), REFRESH MATERIALIZED VIEW, LOCK TABLE in any mode stronger than ACCESS SHARE
  (the targets are ``written_tables``; LOCK … IN ACCESS SHARE MODE, which pg_dump issues and which
  conflicts only with what a SELECT conflicts with, is ``read``), SELECT … FOR UPDATE / NO KEY UPDATE
  / SHARE / KEY SHARE (PostgreSQL requires UPDATE privilege and refuses it in read-only transactions;
  the FROM tables of that SELECT are ``written_tables``; the verb stays "SELECT"), COPY … FROM, and
  calls of ``WRITE_FUNCTIONS`` (``nextval``, ``setval``, large-object writers: PostgreSQL refuses them
  in read-only transactions).
* ``ddl``: CREATE/ALTER/DROP of any object, COMMENT, SECURITY LABEL, CREATE RULE/TRIGGER/INDEX/VIEW.
  Cluster-level or server-touching DDL is ``ddl`` + ``admin``: databases, tablespaces, extensions,
  languages, foreign-data wrappers, servers, user mappings, publications, subscriptions, event
  triggers, access methods, and CREATE FUNCTION/PROCEDURE in an untrusted language (``c``,
  ``internal``, or a name ending in ``u`` such as ``plpython3u``).
* ``dcl``: GRANT/REVOKE (object and role), CREATE/ALTER/DROP ROLE/USER/GROUP (verb "CREATE ROLE"
  etc., as PostgreSQL tags them), ALTER DEFAULT PRIVILEGES, REASSIGN OWNED, DROP OWNED (+ ``ddl``),
  row-level-security policies and ownership changes (``ddl`` + ``dcl``: ALTER … OWNER TO, ALTER TABLE
  … ENABLE/DISABLE/FORCE ROW LEVEL SECURITY, CREATE/ALTER/DROP POLICY).
* ``session``: SET / RESET (of anything but the transaction), SET SESSION CHARACTERISTICS, DISCARD,
  DEALLOCATE, CLOSE, LISTEN / UNLISTEN / NOTIFY (PostgreSQL allows them in read-only transactions), and
  calls of ``SESSION_FUNCTIONS`` (``set_config``, ``pg_notify``). SET/RESET of ``ADMIN_SETTINGS``
  (``role``, ``session_authorization``, ``session_replication_role``) is ``session`` + ``admin``: the
  gateway's own backend role may be a member of more powerful roles. ``set_config(name, …)`` is
  ``session``, + ``admin`` when ``name`` is in ``ADMIN_SETTINGS`` or is not a string literal (a
  parameter, a column, an expression) — this reads a constant, so such statements skip the normalized
  cache (see "Hot path").
  DISCARD ALL is ``session`` only (it reverts to the login role, which is the gateway's own).
* ``transaction``: BEGIN / START TRANSACTION / COMMIT / ROLLBACK / SAVEPOINT / RELEASE / ROLLBACK TO,
  SET TRANSACTION, SET CONSTRAINTS. Two-phase commit (PREPARE TRANSACTION, COMMIT/ROLLBACK PREPARED)
  is ``transaction`` + ``admin``: it outlives the session and can finish other sessions' work.
* ``copy_out`` / ``copy_in``: COPY … TO STDOUT (+ ``read``) / COPY … FROM STDIN (+ ``write``).
  ``copy_program``: COPY … TO/FROM PROGRAM (+ ``admin``, + ``read``/``write``). COPY to/from a server
  file is ``admin`` (+ ``read``/``write``) without a copy class. ``COPY (query) TO …`` adds the
  query's classes (``COPY (DELETE … RETURNING *) TO STDOUT`` is a write).
* ``call``: CALL only. Ordinary function calls are recorded in ``functions`` and do not add ``call``.
* ``admin``: ALTER SYSTEM, LOAD, DO (its body is not inspected), CHECKPOINT, VACUUM, ANALYZE, CLUSTER,
  REINDEX (maintenance is ``admin``: it takes heavy locks or needs maintenance privileges), the admin
  DDL above, and any call — in any statement, even in a definition (CREATE VIEW, DEFAULT, rule, plain
  EXPLAIN) — of a function in ``ADMIN_FUNCTIONS`` or starting with one of ``ADMIN_FUNCTION_PREFIXES``
  (matched on the unqualified name, case-insensitively, so ``pg_catalog.pg_read_file`` and
  ``"pg_read_file"`` both count). ``pg_sleep`` is not admin.
* ``unknown``: EXECUTE of an SQL-level prepared statement (the text does not say which statement it
  runs; PREPARE itself gets the classes of its inner statement, and the session substitutes that for
  an EXECUTE of a name it prepared — ``Session._with_prepared``), any statement node type
  this module does not know (the reason names the node type), and a statement nested too deeply to
  walk.

What no classifier of SQL text can see: the bodies of user-defined functions, procedures, triggers,
rules and views. ``SELECT f()`` is ``read`` even if ``f`` deletes rows or is a SECURITY DEFINER
wrapper around ``pg_read_file``; ``functions`` lists ``f`` so a policy can allow-list functions.

EXPLAIN ANALYZE executes its statement, so it gets the inner statement's classes plus ``read``; an
``ANALYZE`` option counts unless its value is literally false/off/0. In definitions that do not run
now (CREATE VIEW/RULE/FUNCTION bodies, defaults, plain EXPLAIN) the inner statements only contribute
``tables``, ``functions`` and admin-function hits.

Tables and functions
--------------------
``tables`` holds every relation named (FROM, JOIN, subqueries, CTE bodies, DML targets, DDL targets
including indexes and sequences, SELECT INTO / CREATE TABLE AS targets, COPY, TRUNCATE, LOCK, GRANT
… ON TABLE, COMMENT ON TABLE/COLUMN). Names are as PostgreSQL resolves identifiers: lower-cased
unless quoted, unicode escapes decoded (``U&"\\0075sers"`` is ``users``), ``schema.name`` when
qualified (``catalog.schema.name`` likewise). A component containing ``.`` or ``"`` is rendered
double-quoted so ``"a.b"`` cannot pass for ``a.b``. References to a CTE are not tables (scoping as
PostgreSQL: a non-recursive CTE sees only earlier CTEs, so ``WITH t AS (SELECT * FROM t)`` reads the
table ``t``); DML targets are always tables. ``written_tables`` is the subset whose rows change:
INSERT/UPDATE/DELETE/MERGE targets, SELECT INTO / CREATE TABLE AS targets, COPY FROM targets,
TRUNCATE, LOCK (but ACCESS SHARE), REFRESH MATERIALIZED VIEW, SELECT … FOR UPDATE tables — only when
executed (plain EXPLAIN writes nothing). Relations named inside string constants (``'t'::regclass``,
``table_to_xml('t', …)``) are invisible, which is one reason those functions are admin.
``functions`` holds every function called, as written (``pg_catalog.pg_read_file``), including the
``pg_catalog.*`` functions PostgreSQL's grammar calls for SQL syntax (``EXTRACT``, ``SUBSTRING … FROM``,
``AT TIME ZONE``).

Real filters (``unfiltered``)
-----------------------------
``unfiltered`` is true when an executed UPDATE or DELETE (top level or in a CTE) has no *real*
filter, for TRUNCATE, and for MERGE when an UPDATE/DELETE action's rows are not restricted: a
``WHEN MATCHED`` action whose ON condition and action condition are both not real, or any
``WHEN NOT MATCHED BY SOURCE`` UPDATE/DELETE whose action condition is not real (with an empty source
it hits every row). ``WHERE CURRENT OF`` is real. A WHERE is real when:

* it references a column of the target: an unqualified column (even when USING/FROM adds tables — we
  cannot know which table owns it), or one qualified by the target's name or alias; inside a
  subquery only qualified (correlated) references count, and not when the subquery's own FROM reuses
  the name;
* ``AND`` is real if any operand is; ``OR`` only if every operand is and it is not ``e OR NOT e``,
  ``e IS NULL OR e IS NOT NULL`` or ``e IS TRUE OR e IS NOT TRUE`` (and the FALSE/UNKNOWN
  forms); ``NOT e`` if ``e`` is;
* a comparison (any operator, IS [NOT] DISTINCT FROM, LIKE…) whose two sides are the same expression
  once constants are disregarded is not real (``id = id``, ``t.id = id``, ``a + 1 = a + 2``,
  ``id <> id``); nor ``x IN (…, x, …)``.

Hence constant-only conditions (``WHERE 1=1``, ``WHERE true``, ``WHERE 'a'='a'``, ``WHERE 1=1 OR
false``, ``WHERE id = 5 OR false`` — the constant could be true) are never real. The check is
syntactic: it stops accidents and trivially disguised mass changes, not a determined writer
(``WHERE id > 0`` is real). The write permission is the boundary; ``unfiltered`` is a guard rail.

Verbs are PostgreSQL command tags where one exists ("SELECT", "DELETE", "CREATE TABLE", "DROP ROLE"
for DROP USER, "GRANT ROLE"), except "TRUNCATE" (not "TRUNCATE TABLE"), "SELECT" for VALUES/TABLE and
for SELECT … FOR UPDATE, and "SELECT INTO".
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pglast
from pglast import ast as A
from pglast import parser as _parser
from pglast.enums.parsenodes import (
    A_Expr_Kind,
    AlterTableType,
    ObjectType,
    TransactionStmtKind,
    VariableSetKind,
)
from pglast.enums.lockdefs import AccessShareLock
from pglast.enums.primnodes import BoolExprType, BoolTestType, NullTestType

from wardgate.core.compiled import load_compiled, warn_fallback

__all__ = [
    "ADMIN_FUNCTIONS", "ADMIN_FUNCTION_PREFIXES", "ADMIN_SETTINGS", "CLASSES", "Classification", "ENCODING_CHANGE",
    "SESSION_FUNCTIONS", "SqlParseError", "StatementClass", "WRITE_FUNCTIONS", "classify",
    "clear_caches",
]

CLASSES = ("read", "write", "ddl", "dcl", "admin", "session", "transaction", "copy_out", "copy_in",
           "copy_program", "call", "unknown")

# Functions whose call makes any statement "admin": server files, other backends, server state,
# replication, other databases, and functions that run SQL given as a string (which hides its tables).
ADMIN_FUNCTIONS = frozenset({
    # other sessions
    "pg_terminate_backend", "pg_cancel_backend", "pg_signal_backend",
    # server file system
    "pg_read_file", "pg_read_binary_file", "pg_ls_dir", "pg_stat_file", "lo_import", "lo_export",
    "pg_logdir_ls",
    # server state
    "pg_reload_conf", "pg_rotate_logfile", "pg_rotate_logfile_old", "pg_promote", "pg_switch_wal",
    "pg_switch_xlog", "pg_create_restore_point", "pg_backup_start", "pg_backup_stop", "pg_start_backup",
    "pg_stop_backup", "pg_log_backend_memory_contexts", "pg_log_standby_snapshot",
    "pg_import_system_collations", "pg_logical_emit_message", "pg_sync_replication_slots",
    "pg_stat_statements_reset",
    # run SQL given as a string
    "ts_stat", "ts_rewrite",
})
ADMIN_FUNCTION_PREFIXES = (
    "dblink",                       # dblink, dblink_exec, dblink_connect(_u), dblink_send_query, …
    "pg_ls_",                       # pg_ls_logdir, pg_ls_waldir, pg_ls_tmpdir, pg_ls_archive_statusdir…
    "pg_read_",                     # pg_read_file, pg_read_binary_file
    "pg_file_",                     # adminpack: pg_file_write, pg_file_rename, pg_file_unlink, …
    "pg_stat_reset",                # pg_stat_reset, pg_stat_reset_shared, …
    "pg_wal_replay_", "pg_xlog_replay_",
    "pg_create_physical_replication_slot", "pg_create_logical_replication_slot",
    "pg_drop_replication_slot", "pg_copy_physical_replication_slot", "pg_copy_logical_replication_slot",
    "pg_replication_slot_", "pg_logical_slot_", "pg_replication_origin_",
    "query_to_xml", "table_to_xml", "cursor_to_xml", "schema_to_xml", "database_to_xml",
    "binary_upgrade_", "postgres_fdw_",
)
# Functions that change data outside any table's rows (PostgreSQL refuses them in read-only transactions).
WRITE_FUNCTIONS = frozenset({
    "nextval", "setval", "lo_create", "lo_creat", "lo_unlink", "lo_put", "lo_from_bytea", "lowrite",
    "lo_truncate", "lo_truncate64",
})
# Functions with a session effect. ``set_config`` is also "admin" unless its first argument is a string
# literal naming a setting outside ADMIN_SETTINGS (see the module docstring).
SESSION_FUNCTIONS = frozenset({"set_config", "pg_notify"})
# Settings whose SET/RESET is also "admin" (lower-case; PostgreSQL compares GUC names case-insensitively).
ADMIN_SETTINGS = frozenset({"role", "session_authorization", "session_replication_role"})
# The gateway reads statements as UTF-8: a session that changed its client encoding could make the
# backend read different text from what the policy decided. The core refuses statements with this
# reason whatever the policy says.
ENCODING_CHANGE = "changes client_encoding: the gateway reads statements as UTF-8"

# Texts longer than this skip the exact-text cache; normalized texts longer than NORMALIZED_CACHE_MAX_CHARS
# skip the normalized cache. Worst-case key memory: 65536 × 4 KiB + 8192 × 16 KiB.
EXACT_CACHE_SIZE = 65536
EXACT_CACHE_MAX_CHARS = 4096
NORMALIZED_CACHE_SIZE = 8192
NORMALIZED_CACHE_MAX_CHARS = 16384


class SqlParseError(Exception):
    """The text is not valid PostgreSQL SQL; the message is pglast's (PostgreSQL's) error text."""


@dataclass(frozen=True, slots=True)
class StatementClass:
    verb: str
    classes: frozenset[str]
    tables: frozenset[str] = frozenset()
    written_tables: frozenset[str] = frozenset()
    functions: frozenset[str] = frozenset()
    unfiltered: bool = False
    reasons: tuple[str, ...] = ()
    # The SQL-level prepared statement a PREPARE creates, an EXECUTE runs or a DEALLOCATE drops
    # (None: not one of those, or DEALLOCATE ALL); the session tracks them (core/session.py).
    prepared_name: str | None = None


@dataclass(frozen=True, slots=True)
class Classification:
    statements: tuple[StatementClass, ...]
    normalized: str
    fingerprint: str
    _classes: frozenset[str] = field(init=False, repr=False, compare=False)
    _tables: frozenset[str] = field(init=False, repr=False, compare=False)
    _written: frozenset[str] = field(init=False, repr=False, compare=False)
    _functions: frozenset[str] = field(init=False, repr=False, compare=False)
    # Some statement changes client_encoding (the core refuses it); computed once, read per statement.
    encoding_change: bool = field(init=False, repr=False, compare=False)
    # Some statement prepares, executes or drops an SQL-level prepared statement (or DISCARD ALL).
    touches_prepared: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        sts = self.statements
        if len(sts) == 1:
            s = sts[0]
            unions = (s.classes, s.tables, s.written_tables, s.functions)
        else:
            unions = (frozenset().union(*(s.classes for s in sts)), frozenset().union(*(s.tables for s in sts)),
                      frozenset().union(*(s.written_tables for s in sts)),
                      frozenset().union(*(s.functions for s in sts)))
        for name, value in zip(("_classes", "_tables", "_written", "_functions"), unions):
            object.__setattr__(self, name, value)
        object.__setattr__(self, "encoding_change", any(ENCODING_CHANGE in s.reasons for s in sts))
        object.__setattr__(self, "touches_prepared", any(s.prepared_name is not None for s in sts))

    @property
    def classes(self) -> frozenset[str]:
        return self._classes

    @property
    def tables(self) -> frozenset[str]:
        return self._tables

    @property
    def written_tables(self) -> frozenset[str]:
        return self._written

    @property
    def functions(self) -> frozenset[str]:
        return self._functions

    @property
    def multi_statement(self) -> bool:
        return len(self.statements) > 1

    @property
    def unfiltered(self) -> bool:
        return any(s.unfiltered for s in self.statements)


# --------------------------------------------------------------------------------------------------
# Caches and entry point


class _Failure:
    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message


# Exact-text cache (step 1): text → classification or failure, oldest entry evicted first.
_exact_cache: dict[str, "Classification | _Failure"] = {}
_norm_cache: dict[str, Classification] = {}
_norm_lock = threading.Lock()
# Template cache (step 2): the pieces of a plain text around its int4 literals → classification.
_template_cache: dict[tuple[str, ...], Classification] = {}
_TEMPLATE_MAX_CHARS = 2048
# Characters a template text may hold: no quote of any kind, no $ (parameters, dollar quoting), no
# backslash, nothing outside ASCII; comments are refused separately.
_TEMPLATE_TEXT = re.compile(r"[A-Za-z0-9_ \t\r\n(),;=<>+*/.%!|&~^@#\[\]{}?:-]*")
# An unsigned integer of 1-9 digits standing alone: always an int4 constant token for the lexer.
_INT4_LITERAL = re.compile(r"(?<![A-Za-z0-9_.])[0-9]{1,9}(?![A-Za-z0-9_.])")


def _template_pieces_python(sql: str) -> tuple[str, ...] | None:
    """The text around its int4 literals, or None when the text is not plain enough to say. (The
    reference of, and fallback for, the compiled ``_sqltemplate_fast.template_pieces``.)"""
    if (len(sql) > _TEMPLATE_MAX_CHARS or "--" in sql or "/*" in sql
            or _TEMPLATE_TEXT.fullmatch(sql) is None):
        return None
    pieces = tuple(_INT4_LITERAL.split(sql))
    return pieces if len(pieces) > 1 else None


def _load_fast():
    """(the compiled template splitter, None) or (None, why it is not used)."""
    return load_compiled("wardgate.core._sqltemplate_fast", Path(__file__).with_name("_sqltemplate_fast.pyx"),
                         what="SQL template splitter", disable_env="WARDGATE_SQLCLASS_PYTHON")


_TEMPLATE_FAST, _TEMPLATE_PROBLEM = _load_fast()
_template_pieces = _TEMPLATE_FAST.template_pieces if _TEMPLATE_FAST is not None else _template_pieces_python


def warn_if_not_compiled() -> None:
    """Log once that the compiled template splitter is not in use (and why), if it is not."""
    warn_fallback(_TEMPLATE_PROBLEM, "classifying with the Python implementation (slower, same result)",
                  logging.getLogger(__name__))


def _remember_template(pieces: tuple[str, ...], normalized: str, result: Classification) -> None:
    """Store ``result`` under ``pieces`` only if normalize replaced exactly those literals."""
    expected = pieces[0] + "".join(f"${number}{piece}" for number, piece in enumerate(pieces[1:], 1))
    if expected != normalized:
        return  # normalize saw the constants differently (a sign folded in, a literal it keeps…)
    with _norm_lock:
        if len(_template_cache) >= NORMALIZED_CACHE_SIZE:
            try:
                del _template_cache[next(iter(_template_cache))]   # oldest first
            except (StopIteration, KeyError):  # pragma: no cover
                pass
        _template_cache[pieces] = result


def classify(sql: str) -> Classification:
    """Classify every statement of ``sql``; raise ``SqlParseError`` if it does not parse."""
    result = _exact_cache.get(sql)
    if result is None:
        pieces = _template_pieces(sql)
        if pieces is not None:
            result = _template_cache.get(pieces)
            if result is not None:
                # Not stored by exact text: texts that differ only in a key (pgbench's million
                # aids) would each fill and evict the exact cache for nothing (~1 µs a statement).
                return result
        result = _classify_text(sql, pieces)
        if len(sql) <= EXACT_CACHE_MAX_CHARS:
            if len(_exact_cache) >= EXACT_CACHE_SIZE:
                try:
                    del _exact_cache[next(iter(_exact_cache))]   # oldest first
                except (StopIteration, KeyError, RuntimeError):  # pragma: no cover - another thread
                    pass
            _exact_cache[sql] = result
    if type(result) is _Failure:
        raise SqlParseError(result.message)
    return result  # type: ignore[return-value]


def _classify_text(sql: str, pieces: tuple[str, ...] | None) -> Classification | _Failure:
    """Steps 3 and 4 (and step 2's store) for ``sql``, whose template ``pieces`` missed."""
    if "\x00" in sql:
        # PostgreSQL's parser (and pglast's) stops at a NUL: the rest would go unseen. Fail closed.
        return _Failure("statement text contains a NUL character")
    try:
        normalized = _parser.normalize(sql)
    except _parser.ParseError as exc:
        return _Failure(str(exc))
    cached = _norm_cache.get(normalized)
    if cached is not None:
        if pieces is not None:
            _remember_template(pieces, normalized, cached)
        return cached
    try:
        statements, needs_values = _classify_all(pglast.parse_sql(normalized))
    except _parser.ParseError:
        needs_values = True
    if needs_values:
        # ``DO $1``, ``LANGUAGE $1``, ``NOTIFY c, $1`` do not parse, and ``set_config($1, …)`` is admin
        # only because the name is hidden: classify the text itself. Its result may depend on a constant
        # (``LANGUAGE 'plpython3u'``, ``set_config('role', …)``), so it is cached by exact text only.
        try:
            statements, _ = _classify_all(pglast.parse_sql(sql))
        except _parser.ParseError as exc:  # pragma: no cover - normalize parsed it
            return _Failure(str(exc))
        return Classification(statements, normalized, _fingerprint(sql))
    # Derived from the normalized text alone, so valid for every text that normalizes to it.
    result = Classification(statements, normalized, _fingerprint(normalized))
    if len(normalized) <= NORMALIZED_CACHE_MAX_CHARS:
        with _norm_lock:
            if len(_norm_cache) >= NORMALIZED_CACHE_SIZE:
                try:
                    del _norm_cache[next(iter(_norm_cache))]   # oldest first
                except (StopIteration, KeyError):  # pragma: no cover
                    pass
            _norm_cache[normalized] = result
        if pieces is not None:
            _remember_template(pieces, normalized, result)
    return result


def _fingerprint(text: str) -> str:
    try:
        return _parser.fingerprint(text)
    except _parser.ParseError:  # pragma: no cover - only texts that parsed get here
        return ""


def clear_caches() -> None:
    """Empty both caches (tests, benchmarks)."""
    _exact_cache.clear()
    with _norm_lock:
        _norm_cache.clear()
        _template_cache.clear()


def _classify_uncached(sql: str) -> tuple[StatementClass, ...]:
    """The AST walk of exactly this text, no normalization, no cache (tests compare it to the cached path)."""
    try:
        stmts = pglast.parse_sql(sql)
    except _parser.ParseError as exc:
        raise SqlParseError(str(exc)) from None
    return _classify_all(stmts)[0]


# --------------------------------------------------------------------------------------------------
# The walk


class _Collector:
    __slots__ = ("classes", "tables", "written", "functions", "unfiltered", "reasons", "stack", "needs_values",
                 "prepared_name")

    def __init__(self) -> None:
        self.classes: set[str] = set()
        self.tables: set[str] = set()
        self.written: set[str] = set()
        self.functions: set[str] = set()
        self.unfiltered = False
        self.reasons: list[str] = []
        self.stack: list[tuple[object, bool, frozenset[str]]] = []
        # Set when a parameter stood where a constant's value would have made the result less strict.
        self.needs_values = False
        self.prepared_name: str | None = None

    def add(self, cls: str, reason: str | None = None) -> None:
        self.classes.add(cls)
        if reason is not None and reason not in self.reasons:
            self.reasons.append(reason)


def _classify_statement(node: A.Node) -> StatementClass:
    return _classify_node(node)[0]


def _classify_all(stmts) -> tuple[tuple[StatementClass, ...], bool]:
    results = [_classify_node(raw.stmt) for raw in stmts]
    return tuple(r[0] for r in results), any(r[1] for r in results)


def _classify_node(node: A.Node) -> tuple[StatementClass, bool]:
    c = _Collector()
    try:
        verb = _visit_statement(node, c, True, frozenset())
        _drain(c)
    except RecursionError:           # pathological nesting of AND/OR in a filter: fail closed
        return StatementClass(type(node).__name__, frozenset({"unknown"}),
                              reasons=("statement is nested too deeply to classify",)), False
    if isinstance(node, A.SelectStmt):
        c.add("read")                             # VALUES at top level is a query too
    if not c.classes:
        c.add("unknown", f"{verb} has no recognised effect")
    return StatementClass(verb, frozenset(c.classes), frozenset(c.tables), frozenset(c.written),
                          frozenset(c.functions), c.unfiltered, tuple(c.reasons), c.prepared_name), c.needs_values


_CHILD_ATTRS: dict[type, tuple[str, ...]] = {}
_CANON_ATTRS: dict[type, tuple[str, ...]] = {}
_SCALAR_CTYPES = {"char*", "ParseLoc"}


def _child_attrs(cls: type) -> tuple[str, ...]:
    """Attributes that may hold nodes: pointers and lists, and embedded structs (CreateForeignTableStmt.base).
    A constant's value (``A_Const.val``) is never visited."""
    attrs = _CHILD_ATTRS.get(cls)
    if attrs is None:
        attrs = tuple(name for name, info in cls.__slots__.items()
                      if (info.c_type.endswith("*") and info.c_type not in _SCALAR_CTYPES)
                      or (info.c_type != "ValUnion" and isinstance(getattr(A, info.c_type, None), type)))
        _CHILD_ATTRS[cls] = attrs
    return attrs


def _walk(value, c: _Collector, ex: bool, ctes: frozenset[str]) -> None:
    """Schedule ``value`` for a visit. The walk is iterative (an explicit stack): deep expressions such as
    ``a || b || … || z`` would otherwise exhaust Python's recursion limit."""
    if value is not None:
        c.stack.append((value, ex, ctes))


def _walk_children(node: A.Node, c: _Collector, ex: bool, ctes: frozenset[str], skip: tuple[str, ...] = ()) -> None:
    push = c.stack.append
    for attr in _child_attrs(type(node)):
        if attr in skip:
            continue
        value = getattr(node, attr)
        if value is not None:
            push((value, ex, ctes))


def _drain(c: _Collector) -> None:
    stack = c.stack
    while stack:
        value, ex, ctes = stack.pop()
        if isinstance(value, tuple):
            stack.extend((item, ex, ctes) for item in reversed(value) if item is not None)
            continue
        if not isinstance(value, A.Node):
            continue
        handler = _NODE_HANDLERS.get(type(value))
        if handler is not None:
            handler(value, c, ex, ctes)
        elif type(value) in _STATEMENT_HANDLERS or type(value).__name__.endswith("Stmt"):
            _visit_statement(value, c, ex, ctes)
        else:
            _walk_children(value, c, ex, ctes)


def _visit_statement(node: A.Node, c: _Collector, ex: bool, ctes: frozenset[str]) -> str:
    handler = _STATEMENT_HANDLERS.get(type(node))
    if handler is not None:
        return handler(node, c, ex, ctes)
    simple = _SIMPLE.get(type(node).__name__)
    if simple is not None:
        verb, classes, reason = simple
        if ex:
            for cls in classes:
                c.add(cls, reason if cls == "admin" else None)
        _walk_children(node, c, False, ctes)
        return verb
    name = type(node).__name__
    if name == "ReturnStmt":        # RETURN expr inside a BEGIN ATOMIC body
        _walk_children(node, c, ex, ctes)
        return "RETURN"
    if ex:
        c.add("unknown", f"statement type {name} is not classified")
    _walk_children(node, c, False, ctes)
    return name


# ---- names


def _ident(part: str) -> str:
    if "." in part or '"' in part:
        return '"' + part.replace('"', '""') + '"'
    return part


def _rel_name(rv: A.RangeVar) -> str:
    parts = [p for p in (rv.catalogname, rv.schemaname, rv.relname) if p]
    return ".".join(_ident(p) for p in parts)


def _names(items) -> str:
    return ".".join(_ident(s.sval) for s in items if isinstance(s, A.String))


def _add_target(rv: A.RangeVar | None, c: _Collector, ex: bool) -> None:
    """A relation whose rows this statement changes (when executed)."""
    if rv is None:
        return
    name = _rel_name(rv)
    c.tables.add(name)
    if ex:
        c.written.add(name)


# ---- expression-level handlers


def _h_rangevar(rv: A.RangeVar, c: _Collector, ex: bool, ctes: frozenset[str]) -> None:
    if rv.schemaname is None and rv.catalogname is None and rv.relname in ctes:
        return                                    # a CTE reference, not a table
    c.tables.add(_rel_name(rv))
    if ex:
        c.add("read")


def _h_funccall(fc: A.FuncCall, c: _Collector, ex: bool, ctes: frozenset[str]) -> None:
    name = _names(fc.funcname)
    c.functions.add(name)
    last = fc.funcname[-1].sval.lower() if fc.funcname and isinstance(fc.funcname[-1], A.String) else ""
    if last in ADMIN_FUNCTIONS or last.startswith(ADMIN_FUNCTION_PREFIXES):
        c.add("admin", f"calls {name}")
    if last == "set_config":
        _set_config(fc, name, c)
    if ex:
        if last in SESSION_FUNCTIONS:
            c.add("session")
        if last in WRITE_FUNCTIONS:
            c.add("write", f"calls {name}, which changes data outside table rows")
    _walk_children(fc, c, ex, ctes, ("funcname",))


def _set_config(fc: A.FuncCall, name: str, c: _Collector) -> None:
    """``set_config(name, value, is_local)`` is admin unless ``name`` is a literal outside ADMIN_SETTINGS."""
    arg = fc.args[0] if fc.args else None
    while isinstance(arg, A.TypeCast):
        arg = arg.arg
    if isinstance(arg, A.A_Const) and isinstance(arg.val, A.String):
        setting = arg.val.sval.lower()
        if setting in ADMIN_SETTINGS:
            c.add("admin", f"calls {name}('{setting}', …), which changes the session's identity or privileges")
        elif setting == "client_encoding":
            value = fc.args[1] if len(fc.args) > 1 else None
            if isinstance(value, A.ParamRef):
                c.needs_values = True  # normalized away: decide on the exact text's literal
            if not _is_utf8_literal(value):
                c.add("admin", ENCODING_CHANGE)
        return
    if isinstance(arg, A.ParamRef):
        c.needs_values = True
    c.add("admin", f"calls {name} with a setting name that is not a string literal")


def _h_lockingclause(node, c: _Collector, ex: bool, ctes: frozenset[str]) -> None:
    return                                        # lockedRels are names/aliases already in FROM


def _h_composite(node: A.CompositeTypeStmt, c: _Collector, ex: bool, ctes: frozenset[str]) -> str:
    if ex:
        c.add("ddl")
    _walk_children(node, c, False, ctes, ("typevar",))
    return "CREATE TYPE"


def _h_into(node: A.IntoClause, c: _Collector, ex: bool, ctes: frozenset[str]) -> None:
    _add_target(node.rel, c, ex)
    _walk_children(node, c, False, ctes, ("rel",))


_NODE_HANDLERS = {
    A.RangeVar: _h_rangevar,
    A.FuncCall: _h_funccall,
    A.LockingClause: _h_lockingclause,
    A.IntoClause: _h_into,
}


# ---- WITH scoping


def _enter_with(w: A.WithClause | None, c: _Collector, ex: bool, ctes: frozenset[str]) -> frozenset[str]:
    if w is None or not w.ctes:
        return ctes
    names = [cte.ctename for cte in w.ctes]
    if w.recursive:
        visible = ctes | frozenset(names)
        for cte in w.ctes:
            _walk(cte.ctequery, c, ex, visible)
    else:
        visible = ctes
        for cte in w.ctes:
            _walk(cte.ctequery, c, ex, visible)
            visible = visible | {cte.ctename}
    return ctes | frozenset(names)


# ---- statements


def _s_select(n: A.SelectStmt, c: _Collector, ex: bool, ctes: frozenset[str]) -> str:
    ctes = _enter_with(n.withClause, c, ex, ctes)
    if ex and n.valuesLists is None and n.targetList is not None:
        c.add("read")                             # a nested VALUES list alone reads nothing
    verb = "SELECT"
    if n.intoClause is not None:
        verb = "SELECT INTO"
        if ex:
            c.add("ddl")
            c.add("write")
            c.add("read")
        _h_into(n.intoClause, c, ex, ctes)
    if n.lockingClause and ex:
        c.add("write")
        for rv in _from_relations(n.fromClause, ctes):
            name = _rel_name(rv)
            c.tables.add(name)
            c.written.add(name)
    _walk_children(n, c, ex, ctes, ("withClause", "intoClause", "lockingClause"))
    return verb


def _from_relations(items, ctes: frozenset[str]):
    """RangeVars directly in a FROM list (through joins, not subqueries), CTE references excluded."""
    out = []
    stack = list(items or ())
    while stack:
        item = stack.pop()
        if isinstance(item, A.RangeVar):
            if not (item.schemaname is None and item.catalogname is None and item.relname in ctes):
                out.append(item)
        elif isinstance(item, A.JoinExpr):
            stack.extend((item.larg, item.rarg))
    return out


def _returning(n, c: _Collector, ex: bool, ctes: frozenset[str]) -> None:
    rc = n.returningClause
    if rc is not None:
        if ex:
            c.add("read")
        _walk(rc, c, ex, ctes)


def _s_insert(n: A.InsertStmt, c: _Collector, ex: bool, ctes: frozenset[str]) -> str:
    ctes = _enter_with(n.withClause, c, ex, ctes)
    if ex:
        c.add("write")
    _add_target(n.relation, c, ex)
    _walk(n.selectStmt, c, ex, ctes)
    _walk(n.onConflictClause, c, ex, ctes)
    _returning(n, c, ex, ctes)
    return "INSERT"


def _s_update(n: A.UpdateStmt, c: _Collector, ex: bool, ctes: frozenset[str]) -> str:
    ctes = _enter_with(n.withClause, c, ex, ctes)
    if ex:
        c.add("write")
    _add_target(n.relation, c, ex)
    _walk(n.targetList, c, ex, ctes)
    _walk(n.fromClause, c, ex, ctes)
    _walk(n.whereClause, c, ex, ctes)
    _returning(n, c, ex, ctes)
    if ex and not _is_real_filter(n.whereClause, _Target(n.relation)):
        c.unfiltered = True
    return "UPDATE"


def _s_delete(n: A.DeleteStmt, c: _Collector, ex: bool, ctes: frozenset[str]) -> str:
    ctes = _enter_with(n.withClause, c, ex, ctes)
    if ex:
        c.add("write")
    _add_target(n.relation, c, ex)
    _walk(n.usingClause, c, ex, ctes)
    _walk(n.whereClause, c, ex, ctes)
    _returning(n, c, ex, ctes)
    if ex and not _is_real_filter(n.whereClause, _Target(n.relation)):
        c.unfiltered = True
    return "DELETE"


def _s_merge(n: A.MergeStmt, c: _Collector, ex: bool, ctes: frozenset[str]) -> str:
    ctes = _enter_with(n.withClause, c, ex, ctes)
    if ex:
        c.add("write")
    _add_target(n.relation, c, ex)
    _walk(n.sourceRelation, c, ex, ctes)
    _walk(n.joinCondition, c, ex, ctes)
    _walk(n.mergeWhenClauses, c, ex, ctes)
    _returning(n, c, ex, ctes)
    if ex:
        target = _Target(n.relation)
        on_real = None
        for when in n.mergeWhenClauses or ():
            if when.commandType is None or when.commandType.name not in ("CMD_UPDATE", "CMD_DELETE"):
                continue
            kind = when.matchKind.name
            if kind == "MERGE_WHEN_MATCHED":
                if on_real is None:
                    on_real = _is_real_filter(n.joinCondition, target)
                if not on_real and not _is_real_filter(when.condition, target):
                    c.unfiltered = True
            elif kind == "MERGE_WHEN_NOT_MATCHED_BY_SOURCE":
                if not _is_real_filter(when.condition, target):
                    c.unfiltered = True
    return "MERGE"


_FALSE_WORDS = {"false", "off", "0", "no"}


def _option_enabled(opt: A.DefElem) -> bool:
    arg = opt.arg
    if arg is None:
        return True
    if isinstance(arg, A.String):
        return arg.sval.lower() not in _FALSE_WORDS
    if isinstance(arg, A.Integer):
        return arg.ival != 0
    if isinstance(arg, A.Boolean):
        return bool(arg.boolval)
    return True                                   # anything else: assume it runs (fail closed)


def _s_explain(n: A.ExplainStmt, c: _Collector, ex: bool, ctes: frozenset[str]) -> str:
    analyze = any(isinstance(o, A.DefElem) and o.defname == "analyze" and _option_enabled(o)
                  for o in n.options or ())
    if ex:
        c.add("read")
    _walk(n.query, c, ex and analyze, ctes)
    return "EXPLAIN"


def _s_prepare(n: A.PrepareStmt, c: _Collector, ex: bool, ctes: frozenset[str]) -> str:
    if ex:
        c.prepared_name = n.name
    _walk(n.query, c, ex, ctes)
    return "PREPARE"


def _s_execute(n: A.ExecuteStmt, c: _Collector, ex: bool, ctes: frozenset[str]) -> str:
    if ex:
        # Unknown here; the session substitutes what its own PREPARE of that name was classified as.
        c.prepared_name = n.name
        c.add("unknown", f"EXECUTE {n.name}: the prepared statement it runs is not visible here")
    _walk(n.params, c, ex, ctes)
    return "EXECUTE"


def _s_declare(n: A.DeclareCursorStmt, c: _Collector, ex: bool, ctes: frozenset[str]) -> str:
    if ex:
        c.add("read")
    _walk(n.query, c, ex, ctes)
    return "DECLARE CURSOR"


def _s_copy(n: A.CopyStmt, c: _Collector, ex: bool, ctes: frozenset[str]) -> str:
    direction = "FROM" if n.is_from else "TO"
    if n.relation is not None:
        if n.is_from:
            _add_target(n.relation, c, ex)
        else:
            c.tables.add(_rel_name(n.relation))
    if ex:
        c.add("write" if n.is_from else "read")
        if n.is_program:
            c.add("copy_program")
            c.add("admin", f"COPY … {direction} PROGRAM runs a shell command on the database server")
        elif n.filename is None:
            c.add("copy_in" if n.is_from else "copy_out")
        else:
            c.add("admin", f"COPY … {direction} a server file uses the database server's file system")
    if n.query is not None:
        _walk(n.query, c, ex, ctes)
    _walk(n.whereClause, c, ex, ctes)
    return "COPY"


def _s_call(n: A.CallStmt, c: _Collector, ex: bool, ctes: frozenset[str]) -> str:
    if ex:
        c.add("call")
    _walk(n.funccall, c, ex, ctes)
    return "CALL"


def _s_ctas(n: A.CreateTableAsStmt, c: _Collector, ex: bool, ctes: frozenset[str]) -> str:
    objtype = n.objtype.name if n.objtype is not None else "OBJECT_TABLE"
    verb = "CREATE MATERIALIZED VIEW" if objtype == "OBJECT_MATVIEW" else "CREATE TABLE AS"
    if n.is_select_into:
        verb = "SELECT INTO"
    runs = not (n.into is not None and n.into.skipData)
    if ex:
        c.add("ddl")
        if runs:
            c.add("write")
            c.add("read")
    if n.into is not None:
        _add_target(n.into.rel, c, ex and runs)
        _walk_children(n.into, c, False, ctes, ("rel",))
    _walk(n.query, c, ex and runs, ctes)
    return verb


def _s_refresh(n: A.RefreshMatViewStmt, c: _Collector, ex: bool, ctes: frozenset[str]) -> str:
    if ex:
        c.add("write")
    _add_target(n.relation, c, ex)
    return "REFRESH MATERIALIZED VIEW"


def _s_truncate(n: A.TruncateStmt, c: _Collector, ex: bool, ctes: frozenset[str]) -> str:
    if ex:
        c.add("write")
        c.add("ddl")
        c.unfiltered = True
    for rv in n.relations or ():
        _add_target(rv, c, ex)
    return "TRUNCATE"


def _s_lock(n: A.LockStmt, c: _Collector, ex: bool, ctes: frozenset[str]) -> str:
    if n.mode == AccessShareLock:                 # conflicts only with ACCESS EXCLUSIVE, as a SELECT does
        if ex:
            c.add("read")
        for rv in n.relations or ():
            c.tables.add(_rel_name(rv))
        return "LOCK TABLE"
    if ex:
        c.add("write")
    for rv in n.relations or ():
        _add_target(rv, c, ex)
    return "LOCK TABLE"


_SESSION_MULTI = {"SESSION CHARACTERISTICS"}


def _s_set(n: A.VariableSetStmt, c: _Collector, ex: bool, ctes: frozenset[str]) -> str:
    kind = n.kind
    verb = "RESET" if kind in (VariableSetKind.VAR_RESET, VariableSetKind.VAR_RESET_ALL) else "SET"
    name = (n.name or "").lower()
    if ex:
        if kind == VariableSetKind.VAR_SET_MULTI and name.startswith("transaction"):
            c.add("transaction")
        else:
            c.add("session")
            if name in ADMIN_SETTINGS:
                c.add("admin", f"{verb} {name} changes the session's identity or privileges")
            elif name == "client_encoding" and verb == "SET":
                if any(isinstance(a, A.ParamRef) for a in n.args or ()):
                    c.needs_values = True  # normalized away: decide on the exact text's literal
                if not _keeps_utf8(n):
                    c.add("admin", ENCODING_CHANGE)
    _walk(n.args, c, False, ctes)
    return verb


def _is_utf8_literal(node) -> bool:
    """A string literal naming UTF-8 as PostgreSQL spells it (UTF8, utf-8, Unicode…)."""
    while isinstance(node, A.TypeCast):
        node = node.arg
    if not (isinstance(node, A.A_Const) and isinstance(node.val, A.String)):
        return False
    return "".join(ch for ch in node.val.sval.lower() if ch.isalnum()) in ("utf8", "unicode")


def _keeps_utf8(n: A.VariableSetStmt) -> bool:
    """``SET client_encoding`` (or ``SET NAMES``) to UTF-8 or to its default — the session's start-up
    value, which the gateway only accepts as UTF-8 — changes nothing the gateway relies on."""
    if n.kind == VariableSetKind.VAR_SET_DEFAULT:
        return True
    return n.kind == VariableSetKind.VAR_SET_VALUE and len(n.args or ()) == 1 and _is_utf8_literal(n.args[0])


def _s_discard(n: A.DiscardStmt, c: _Collector, ex: bool, ctes: frozenset[str]) -> str:
    if ex:
        c.add("session")
    target = n.target.name.removeprefix("DISCARD_") if n.target is not None else "ALL"
    if ex and target == "ALL":
        c.prepared_name = ""  # DISCARD ALL deallocates every prepared statement too
    return f"DISCARD {target}"


_TRANSACTION_VERBS = {
    TransactionStmtKind.TRANS_STMT_BEGIN: "BEGIN",
    TransactionStmtKind.TRANS_STMT_START: "START TRANSACTION",
    TransactionStmtKind.TRANS_STMT_COMMIT: "COMMIT",
    TransactionStmtKind.TRANS_STMT_ROLLBACK: "ROLLBACK",
    TransactionStmtKind.TRANS_STMT_SAVEPOINT: "SAVEPOINT",
    TransactionStmtKind.TRANS_STMT_RELEASE: "RELEASE",
    TransactionStmtKind.TRANS_STMT_ROLLBACK_TO: "ROLLBACK",
    TransactionStmtKind.TRANS_STMT_PREPARE: "PREPARE TRANSACTION",
    TransactionStmtKind.TRANS_STMT_COMMIT_PREPARED: "COMMIT PREPARED",
    TransactionStmtKind.TRANS_STMT_ROLLBACK_PREPARED: "ROLLBACK PREPARED",
}
_TWO_PHASE = {TransactionStmtKind.TRANS_STMT_PREPARE, TransactionStmtKind.TRANS_STMT_COMMIT_PREPARED,
              TransactionStmtKind.TRANS_STMT_ROLLBACK_PREPARED}


def _s_transaction(n: A.TransactionStmt, c: _Collector, ex: bool, ctes: frozenset[str]) -> str:
    verb = _TRANSACTION_VERBS.get(n.kind, "TRANSACTION")
    if ex:
        c.add("transaction")
        if n.kind in _TWO_PHASE:
            c.add("admin", f"{verb}: two-phase commit outlives the session")
    return verb


# Object types whose CREATE/ALTER/DROP/rename/owner change is also "admin".
_ADMIN_OBJECTS = {
    ObjectType.OBJECT_DATABASE, ObjectType.OBJECT_TABLESPACE, ObjectType.OBJECT_EXTENSION,
    ObjectType.OBJECT_LANGUAGE, ObjectType.OBJECT_FDW, ObjectType.OBJECT_FOREIGN_SERVER,
    ObjectType.OBJECT_USER_MAPPING, ObjectType.OBJECT_PUBLICATION, ObjectType.OBJECT_SUBSCRIPTION,
    ObjectType.OBJECT_EVENT_TRIGGER, ObjectType.OBJECT_ACCESS_METHOD,
}
_RELATION_OBJECTS = {
    ObjectType.OBJECT_TABLE, ObjectType.OBJECT_VIEW, ObjectType.OBJECT_MATVIEW, ObjectType.OBJECT_FOREIGN_TABLE,
    ObjectType.OBJECT_SEQUENCE, ObjectType.OBJECT_INDEX,
}
_OBJECT_WORDS = {
    "ACCESS_METHOD": "ACCESS METHOD", "AMOP": "OPERATOR FAMILY", "AMPROC": "OPERATOR FAMILY",
    "ATTRIBUTE": "TYPE", "COLUMN": "TABLE", "DEFACL": "DEFAULT PRIVILEGES", "DOMCONSTRAINT": "DOMAIN",
    "EVENT_TRIGGER": "EVENT TRIGGER", "FDW": "FOREIGN DATA WRAPPER", "FOREIGN_SERVER": "SERVER",
    "FOREIGN_TABLE": "FOREIGN TABLE", "LARGEOBJECT": "LARGE OBJECT", "MATVIEW": "MATERIALIZED VIEW",
    "OPCLASS": "OPERATOR CLASS", "OPFAMILY": "OPERATOR FAMILY", "PARAMETER_ACL": "PARAMETER",
    "PUBLICATION_NAMESPACE": "PUBLICATION", "PUBLICATION_REL": "PUBLICATION", "STATISTIC_EXT": "STATISTICS",
    "TABCONSTRAINT": "TABLE", "TSCONFIGURATION": "TEXT SEARCH CONFIGURATION",
    "TSDICTIONARY": "TEXT SEARCH DICTIONARY", "TSPARSER": "TEXT SEARCH PARSER",
    "TSTEMPLATE": "TEXT SEARCH TEMPLATE", "USER_MAPPING": "USER MAPPING",
}


def _object_word(objtype) -> str:
    if objtype is None:
        return "OBJECT"
    name = objtype.name.removeprefix("OBJECT_")
    return _OBJECT_WORDS.get(name, name.replace("_", " "))


def _object_classes(objtype, c: _Collector, verb: str, base: str = "ddl") -> None:
    if objtype == ObjectType.OBJECT_ROLE:
        c.add("dcl")
        return
    c.add(base)
    if objtype == ObjectType.OBJECT_POLICY:
        c.add("dcl")
    if objtype in _ADMIN_OBJECTS:
        c.add("admin", f"{verb} is a cluster-level administrative change")


def _object_tables(objtype, obj, c: _Collector) -> None:
    """Relation names from an object name list (DROP, COMMENT, SECURITY LABEL)."""
    if isinstance(obj, A.Node) and not isinstance(obj, A.String):
        return
    parts = obj if isinstance(obj, tuple) else (obj,)
    if objtype == ObjectType.OBJECT_COLUMN:
        parts = parts[:-1]
    elif objtype not in _RELATION_OBJECTS:
        return
    name = _names(parts)
    if name:
        c.tables.add(name)


def _s_drop(n: A.DropStmt, c: _Collector, ex: bool, ctes: frozenset[str]) -> str:
    verb = f"DROP {_object_word(n.removeType)}"
    if ex:
        _object_classes(n.removeType, c, verb)
    for obj in n.objects or ():
        _object_tables(n.removeType, obj, c)
    _walk_children(n, c, False, ctes, ("objects",))
    return verb


def _s_comment(n, c: _Collector, ex: bool, ctes: frozenset[str]) -> str:
    verb = "COMMENT" if isinstance(n, A.CommentStmt) else "SECURITY LABEL"
    if ex:
        c.add("ddl")
    _object_tables(n.objtype, n.object, c)
    return verb


def _s_rename(n: A.RenameStmt, c: _Collector, ex: bool, ctes: frozenset[str]) -> str:
    objtype = n.renameType
    if objtype in (ObjectType.OBJECT_COLUMN, ObjectType.OBJECT_TABCONSTRAINT, ObjectType.OBJECT_ATTRIBUTE):
        objtype_for_verb = n.relationType
    else:
        objtype_for_verb = objtype
    verb = f"ALTER {_object_word(objtype_for_verb)}"
    if ex:
        _object_classes(objtype, c, verb)
    if n.relation is None and n.object is not None:
        _object_tables(objtype, n.object, c)
    _walk_children(n, c, False, ctes, ("object",))
    return verb


def _s_alter_owner(n: A.AlterOwnerStmt, c: _Collector, ex: bool, ctes: frozenset[str]) -> str:
    verb = f"ALTER {_object_word(n.objectType)}"
    if ex:
        _object_classes(n.objectType, c, verb)
        c.add("dcl")
    _walk_children(n, c, False, ctes, ("object",))
    return verb


def _s_alter_schema(n: A.AlterObjectSchemaStmt, c: _Collector, ex: bool, ctes: frozenset[str]) -> str:
    verb = f"ALTER {_object_word(n.objectType)}"
    if ex:
        _object_classes(n.objectType, c, verb)
    _walk_children(n, c, False, ctes, ("object",))
    return verb


def _s_alter_depends(n, c: _Collector, ex: bool, ctes: frozenset[str]) -> str:
    verb = f"ALTER {_object_word(n.objectType)}"
    if ex:
        _object_classes(n.objectType, c, verb)
    _walk_children(n, c, False, ctes, ("object",))
    return verb


_DCL_TABLE_CMDS = {AlterTableType.AT_ChangeOwner, AlterTableType.AT_EnableRowSecurity,
                   AlterTableType.AT_DisableRowSecurity, AlterTableType.AT_ForceRowSecurity,
                   AlterTableType.AT_NoForceRowSecurity}


def _s_alter_table(n: A.AlterTableStmt, c: _Collector, ex: bool, ctes: frozenset[str]) -> str:
    verb = f"ALTER {_object_word(n.objtype)}"
    if ex:
        c.add("ddl")
        if any(isinstance(cmd, A.AlterTableCmd) and cmd.subtype in _DCL_TABLE_CMDS for cmd in n.cmds or ()):
            c.add("dcl")
    _walk_children(n, c, False, ctes)
    return verb


def _s_alter_function(n: A.AlterFunctionStmt, c: _Collector, ex: bool, ctes: frozenset[str]) -> str:
    if ex:
        c.add("ddl")
    _walk_children(n, c, False, ctes)
    return f"ALTER {_object_word(n.objtype)}"


def _s_define(n: A.DefineStmt, c: _Collector, ex: bool, ctes: frozenset[str]) -> str:
    if ex:
        c.add("ddl")
    _walk_children(n, c, False, ctes)
    return f"CREATE {_object_word(n.kind)}"


_TRUSTED_LANGUAGES = {"sql", "plpgsql", "plperl", "pltcl", "plv8", "pljava", "plr"}


def _s_create_function(n: A.CreateFunctionStmt, c: _Collector, ex: bool, ctes: frozenset[str]) -> str:
    verb = "CREATE PROCEDURE" if n.is_procedure else "CREATE FUNCTION"
    if ex:
        c.add("ddl")
        for opt in n.options or ():
            if isinstance(opt, A.DefElem) and opt.defname == "language":
                if not isinstance(opt.arg, A.String):
                    c.add("admin", f"{verb}: its language is not a plain name")
                    continue
                lang = opt.arg.sval.lower()
                if lang in ("c", "internal") or (lang.endswith("u") and lang not in _TRUSTED_LANGUAGES):
                    c.add("admin", f"{verb} in untrusted language {opt.arg.sval}")
    _walk_children(n, c, False, ctes)
    return verb


def _s_create_schema(n: A.CreateSchemaStmt, c: _Collector, ex: bool, ctes: frozenset[str]) -> str:
    if ex:
        c.add("ddl")
    for elt in n.schemaElts or ():
        _walk(elt, c, ex, ctes)                   # its elements run as statements of their own
    return "CREATE SCHEMA"


def _s_grant(n: A.GrantStmt, c: _Collector, ex: bool, ctes: frozenset[str]) -> str:
    if ex:
        c.add("dcl")
    _walk_children(n, c, False, ctes)
    return "GRANT" if n.is_grant else "REVOKE"


def _s_grant_role(n: A.GrantRoleStmt, c: _Collector, ex: bool, ctes: frozenset[str]) -> str:
    if ex:
        c.add("dcl")
    return "GRANT ROLE" if n.is_grant else "REVOKE ROLE"


def _s_fetch(n: A.FetchStmt, c: _Collector, ex: bool, ctes: frozenset[str]) -> str:
    if ex:
        c.add("read")
    return "MOVE" if n.ismove else "FETCH"


def _s_vacuum(n: A.VacuumStmt, c: _Collector, ex: bool, ctes: frozenset[str]) -> str:
    verb = "VACUUM" if n.is_vacuumcmd else "ANALYZE"
    if ex:
        c.add("admin", f"{verb} is database maintenance")
    _walk_children(n, c, False, ctes)
    return verb


def _s_close(n: A.ClosePortalStmt, c: _Collector, ex: bool, ctes: frozenset[str]) -> str:
    if ex:
        c.add("session")
    return "CLOSE CURSOR ALL" if n.portalname is None else "CLOSE CURSOR"


def _s_deallocate(n: A.DeallocateStmt, c: _Collector, ex: bool, ctes: frozenset[str]) -> str:
    if ex:
        c.add("session")
        c.prepared_name = None if n.isall else n.name
    return "DEALLOCATE ALL" if n.isall or n.name is None else "DEALLOCATE"


def _s_alter_table_move_all(n, c: _Collector, ex: bool, ctes: frozenset[str]) -> str:
    verb = f"ALTER {_object_word(n.objtype)}"
    if ex:
        c.add("ddl")
        c.add("admin", f"{verb} … ALL IN TABLESPACE moves every relation of a tablespace")
    return verb


_STATEMENT_HANDLERS = {
    A.SelectStmt: _s_select,
    A.InsertStmt: _s_insert,
    A.UpdateStmt: _s_update,
    A.DeleteStmt: _s_delete,
    A.MergeStmt: _s_merge,
    A.ExplainStmt: _s_explain,
    A.PrepareStmt: _s_prepare,
    A.ExecuteStmt: _s_execute,
    A.DeclareCursorStmt: _s_declare,
    A.CopyStmt: _s_copy,
    A.CallStmt: _s_call,
    A.CreateTableAsStmt: _s_ctas,
    A.RefreshMatViewStmt: _s_refresh,
    A.TruncateStmt: _s_truncate,
    A.LockStmt: _s_lock,
    A.VariableSetStmt: _s_set,
    A.DiscardStmt: _s_discard,
    A.TransactionStmt: _s_transaction,
    A.DropStmt: _s_drop,
    A.CommentStmt: _s_comment,
    A.SecLabelStmt: _s_comment,
    A.RenameStmt: _s_rename,
    A.AlterOwnerStmt: _s_alter_owner,
    A.AlterObjectSchemaStmt: _s_alter_schema,
    A.AlterObjectDependsStmt: _s_alter_depends,
    A.AlterTableStmt: _s_alter_table,
    A.AlterFunctionStmt: _s_alter_function,
    A.DefineStmt: _s_define,
    A.CreateFunctionStmt: _s_create_function,
    A.CreateSchemaStmt: _s_create_schema,
    A.GrantStmt: _s_grant,
    A.GrantRoleStmt: _s_grant_role,
    A.FetchStmt: _s_fetch,
    A.VacuumStmt: _s_vacuum,
    A.ClosePortalStmt: _s_close,
    A.DeallocateStmt: _s_deallocate,
    A.CompositeTypeStmt: _h_composite,
    A.AlterTableMoveAllStmt: _s_alter_table_move_all,
}

_DDL = ("ddl",)
_DDL_ADMIN = ("ddl", "admin")
_DDL_DCL = ("ddl", "dcl")
_ADMIN_DDL_REASON = "is a cluster-level administrative change"

# Statement node types whose classes do not depend on their contents: (verb, classes, admin reason).
_SIMPLE: dict[str, tuple[str, tuple[str, ...], str | None]] = {
    "AlterCollationStmt": ("ALTER COLLATION", _DDL, None),
    "AlterDatabaseRefreshCollStmt": ("ALTER DATABASE", _DDL_ADMIN, "ALTER DATABASE " + _ADMIN_DDL_REASON),
    "AlterDatabaseSetStmt": ("ALTER DATABASE", _DDL_ADMIN, "ALTER DATABASE " + _ADMIN_DDL_REASON),
    "AlterDatabaseStmt": ("ALTER DATABASE", _DDL_ADMIN, "ALTER DATABASE " + _ADMIN_DDL_REASON),
    "AlterDefaultPrivilegesStmt": ("ALTER DEFAULT PRIVILEGES", ("dcl",), None),
    "AlterDomainStmt": ("ALTER DOMAIN", _DDL, None),
    "AlterEnumStmt": ("ALTER TYPE", _DDL, None),
    "AlterEventTrigStmt": ("ALTER EVENT TRIGGER", _DDL_ADMIN, "ALTER EVENT TRIGGER " + _ADMIN_DDL_REASON),
    "AlterExtensionContentsStmt": ("ALTER EXTENSION", _DDL_ADMIN, "ALTER EXTENSION " + _ADMIN_DDL_REASON),
    "AlterExtensionStmt": ("ALTER EXTENSION", _DDL_ADMIN, "ALTER EXTENSION runs an extension's update script"),
    "AlterFdwStmt": ("ALTER FOREIGN DATA WRAPPER", _DDL_ADMIN,
                     "ALTER FOREIGN DATA WRAPPER " + _ADMIN_DDL_REASON),
    "AlterForeignServerStmt": ("ALTER SERVER", _DDL_ADMIN, "ALTER SERVER " + _ADMIN_DDL_REASON),
    "AlterOpFamilyStmt": ("ALTER OPERATOR FAMILY", _DDL, None),
    "AlterOperatorStmt": ("ALTER OPERATOR", _DDL, None),
    "AlterPolicyStmt": ("ALTER POLICY", _DDL_DCL, None),
    "AlterPublicationStmt": ("ALTER PUBLICATION", _DDL_ADMIN, "ALTER PUBLICATION " + _ADMIN_DDL_REASON),
    "AlterRoleSetStmt": ("ALTER ROLE", ("dcl",), None),
    "AlterRoleStmt": ("ALTER ROLE", ("dcl",), None),
    "AlterSeqStmt": ("ALTER SEQUENCE", _DDL, None),
    "AlterStatsStmt": ("ALTER STATISTICS", _DDL, None),
    "AlterSubscriptionStmt": ("ALTER SUBSCRIPTION", _DDL_ADMIN, "ALTER SUBSCRIPTION " + _ADMIN_DDL_REASON),
    "AlterSystemStmt": ("ALTER SYSTEM", ("admin",), "ALTER SYSTEM changes the server configuration"),
    "AlterTSConfigurationStmt": ("ALTER TEXT SEARCH CONFIGURATION", _DDL, None),
    "AlterTSDictionaryStmt": ("ALTER TEXT SEARCH DICTIONARY", _DDL, None),
    "AlterTableSpaceOptionsStmt": ("ALTER TABLESPACE", _DDL_ADMIN, "ALTER TABLESPACE " + _ADMIN_DDL_REASON),
    "AlterTypeStmt": ("ALTER TYPE", _DDL, None),
    "AlterUserMappingStmt": ("ALTER USER MAPPING", _DDL_ADMIN, "ALTER USER MAPPING " + _ADMIN_DDL_REASON),
    "CheckPointStmt": ("CHECKPOINT", ("admin",), "CHECKPOINT is server maintenance"),
    "ClusterStmt": ("CLUSTER", ("admin",), "CLUSTER is database maintenance"),
    "ConstraintsSetStmt": ("SET CONSTRAINTS", ("transaction",), None),
    "CreateAmStmt": ("CREATE ACCESS METHOD", _DDL_ADMIN, "CREATE ACCESS METHOD " + _ADMIN_DDL_REASON),
    "CreateCastStmt": ("CREATE CAST", _DDL, None),
    "CreateConversionStmt": ("CREATE CONVERSION", _DDL, None),
    "CreateDomainStmt": ("CREATE DOMAIN", _DDL, None),
    "CreateEnumStmt": ("CREATE TYPE", _DDL, None),
    "CreateEventTrigStmt": ("CREATE EVENT TRIGGER", _DDL_ADMIN, "CREATE EVENT TRIGGER " + _ADMIN_DDL_REASON),
    "CreateExtensionStmt": ("CREATE EXTENSION", _DDL_ADMIN, "CREATE EXTENSION runs an extension's install script"),
    "CreateFdwStmt": ("CREATE FOREIGN DATA WRAPPER", _DDL_ADMIN,
                      "CREATE FOREIGN DATA WRAPPER " + _ADMIN_DDL_REASON),
    "CreateForeignServerStmt": ("CREATE SERVER", _DDL_ADMIN, "CREATE SERVER " + _ADMIN_DDL_REASON),
    "CreateForeignTableStmt": ("CREATE FOREIGN TABLE", _DDL, None),
    "CreateOpClassStmt": ("CREATE OPERATOR CLASS", _DDL, None),
    "CreateOpFamilyStmt": ("CREATE OPERATOR FAMILY", _DDL, None),
    "CreatePLangStmt": ("CREATE LANGUAGE", _DDL_ADMIN, "CREATE LANGUAGE " + _ADMIN_DDL_REASON),
    "CreatePolicyStmt": ("CREATE POLICY", _DDL_DCL, None),
    "CreatePublicationStmt": ("CREATE PUBLICATION", _DDL_ADMIN, "CREATE PUBLICATION " + _ADMIN_DDL_REASON),
    "CreateRangeStmt": ("CREATE TYPE", _DDL, None),
    "CreateRoleStmt": ("CREATE ROLE", ("dcl",), None),
    "CreateSeqStmt": ("CREATE SEQUENCE", _DDL, None),
    "CreateStatsStmt": ("CREATE STATISTICS", _DDL, None),
    "CreateStmt": ("CREATE TABLE", _DDL, None),
    "CreateSubscriptionStmt": ("CREATE SUBSCRIPTION", _DDL_ADMIN, "CREATE SUBSCRIPTION " + _ADMIN_DDL_REASON),
    "CreateTableSpaceStmt": ("CREATE TABLESPACE", _DDL_ADMIN, "CREATE TABLESPACE " + _ADMIN_DDL_REASON),
    "CreateTransformStmt": ("CREATE TRANSFORM", _DDL, None),
    "CreateTrigStmt": ("CREATE TRIGGER", _DDL, None),
    "CreateUserMappingStmt": ("CREATE USER MAPPING", _DDL_ADMIN, "CREATE USER MAPPING " + _ADMIN_DDL_REASON),
    "CreatedbStmt": ("CREATE DATABASE", _DDL_ADMIN, "CREATE DATABASE " + _ADMIN_DDL_REASON),
    "DoStmt": ("DO", ("admin",), "DO block body is not inspected"),
    "DropOwnedStmt": ("DROP OWNED", ("dcl", "ddl"), None),
    "DropRoleStmt": ("DROP ROLE", ("dcl",), None),
    "DropSubscriptionStmt": ("DROP SUBSCRIPTION", _DDL_ADMIN, "DROP SUBSCRIPTION " + _ADMIN_DDL_REASON),
    "DropTableSpaceStmt": ("DROP TABLESPACE", _DDL_ADMIN, "DROP TABLESPACE " + _ADMIN_DDL_REASON),
    "DropUserMappingStmt": ("DROP USER MAPPING", _DDL_ADMIN, "DROP USER MAPPING " + _ADMIN_DDL_REASON),
    "DropdbStmt": ("DROP DATABASE", _DDL_ADMIN, "DROP DATABASE " + _ADMIN_DDL_REASON),
    "ImportForeignSchemaStmt": ("IMPORT FOREIGN SCHEMA", _DDL, None),
    "IndexStmt": ("CREATE INDEX", _DDL, None),
    "ListenStmt": ("LISTEN", ("session",), None),
    "LoadStmt": ("LOAD", ("admin",), "LOAD loads a shared library into the server"),
    "NotifyStmt": ("NOTIFY", ("session",), None),
    "ReassignOwnedStmt": ("REASSIGN OWNED", ("dcl",), None),
    "ReindexStmt": ("REINDEX", ("admin",), "REINDEX is database maintenance"),
    "RuleStmt": ("CREATE RULE", _DDL, None),
    "UnlistenStmt": ("UNLISTEN", ("session",), None),
    "VariableShowStmt": ("SHOW", ("read",), None),
    "ViewStmt": ("CREATE VIEW", _DDL, None),
}


# ---- real filters


class _Target:
    """The relation an UPDATE/DELETE/MERGE changes, for recognising references to its columns."""

    __slots__ = ("schema", "relname", "quals")

    def __init__(self, rv: A.RangeVar, quals: frozenset[str] | None = None) -> None:
        self.schema = rv.schemaname
        self.relname = rv.relname
        if quals is None:
            quals = frozenset({rv.relname} | ({rv.alias.aliasname} if rv.alias is not None else set()))
        self.quals = quals

    def without(self, names: set[str]) -> _Target | None:
        quals = self.quals - names
        if not quals:
            return None
        t = _Target.__new__(_Target)
        t.schema, t.relname, t.quals = self.schema, self.relname, quals
        return t


def _colref_is_target(cr: A.ColumnRef, t: _Target, outer: bool) -> bool:
    fields = cr.fields or ()
    strs = [f.sval if isinstance(f, A.String) else None for f in fields]
    n = len(strs)
    if n <= 1:
        return outer
    if strs[0] in t.quals:
        return True                                   # t.col, t.col.field, t.*
    if n >= 3 and strs[1] == t.relname and (t.schema is None or strs[0] == t.schema) and t.relname in t.quals:
        return True                                   # schema.t.col
    if n >= 4 and strs[2] == t.relname and (t.schema is None or strs[1] == t.schema) and t.relname in t.quals:
        return True                                   # catalog.schema.t.col
    return False


def _introduced_names(from_clause) -> set[str]:
    names: set[str] = set()
    stack = list(from_clause or ())
    while stack:
        item = stack.pop()
        alias = getattr(item, "alias", None)
        if alias is not None:
            names.add(alias.aliasname)
        if isinstance(item, A.RangeVar) and alias is None:
            names.add(item.relname)
        elif isinstance(item, A.JoinExpr):
            stack.extend((item.larg, item.rarg))
    return names


def _refs_target(node, t: _Target, outer: bool) -> bool:
    """Whether ``node`` mentions a column of the target (iteratively; see ``_colref_is_target``)."""
    stack = [(node, t, outer)]
    pop, push = stack.pop, stack.append
    while stack:
        value, t, outer = pop()
        if isinstance(value, tuple):
            stack.extend((item, t, outer) for item in value if item is not None)
            continue
        if not isinstance(value, A.Node):
            continue
        if isinstance(value, A.ColumnRef):
            if _colref_is_target(value, t, outer):
                return True
            continue
        if isinstance(value, A.CurrentOfExpr):
            return True
        if isinstance(value, A.SelectStmt):
            inner = t.without(_introduced_names(value.fromClause))
            if inner is None:
                continue
            t, outer = inner, False
        for attr in _child_attrs(type(value)):
            child = getattr(value, attr)
            if child is not None:
                push((child, t, outer))
    return False


def _canon_attrs(cls: type) -> tuple[str, ...]:
    attrs = _CANON_ATTRS.get(cls)
    if attrs is None:
        attrs = tuple(name for name, info in cls.__slots__.items()
                      if info.c_type != "ParseLoc" and name not in ("location", "stmt_location", "stmt_len"))
        _CANON_ATTRS[cls] = attrs
    return attrs


def _canon(node, t: _Target) -> tuple:
    """A structural key of an expression in which every constant is the same and target columns are named
    alike: the pre-order token sequence (node types have a fixed attribute list, tuples carry their length)."""
    out: list = []
    stack = [node]
    while stack:
        value = stack.pop()
        if isinstance(value, tuple):
            out.append(("$list", len(value)))
            stack.extend(reversed(value))
        elif not isinstance(value, A.Node):
            out.append(value)
        elif isinstance(value, (A.A_Const, A.ParamRef)):
            out.append("$const")
        elif isinstance(value, A.ColumnRef) and _colref_is_target(value, t, True):
            last = value.fields[-1]
            out.append(("$target", last.sval if isinstance(last, A.String) else "*"))
        else:
            cls = type(value)
            out.append(cls.__name__)
            stack.extend(getattr(value, a) for a in reversed(_canon_attrs(cls)))
    return tuple(out)


_NOT_TESTS = {
    BoolTestType.IS_TRUE: ("true", True), BoolTestType.IS_NOT_TRUE: ("true", False),
    BoolTestType.IS_FALSE: ("false", True), BoolTestType.IS_NOT_FALSE: ("false", False),
    BoolTestType.IS_UNKNOWN: ("unknown", True), BoolTestType.IS_NOT_UNKNOWN: ("unknown", False),
}


def _literal(node, t: _Target):
    """(base, polarity) of a disjunct, for spotting ``e OR NOT e`` style tautologies."""
    negate = False
    while isinstance(node, A.BoolExpr) and node.boolop == BoolExprType.NOT_EXPR and node.args:
        node, negate = node.args[0], not negate
    if isinstance(node, A.NullTest):
        base, polarity = ("$isnull", _canon(node.arg, t)), node.nulltesttype == NullTestType.IS_NULL
    elif isinstance(node, A.BooleanTest):
        what, polarity = _NOT_TESTS[node.booltesttype]
        base = ("$is" + what, _canon(node.arg, t))
    else:
        base, polarity = _canon(node, t), True
    return base, polarity != negate


def _flatten(node: A.BoolExpr, op) -> list:
    out = []
    stack = list(reversed(node.args or ()))
    while stack:
        arg = stack.pop()
        if isinstance(arg, A.BoolExpr) and arg.boolop == op:
            stack.extend(reversed(arg.args or ()))
        else:
            out.append(arg)
    return out


_SAME_SIDE_KINDS = {A_Expr_Kind.AEXPR_OP, A_Expr_Kind.AEXPR_OP_ANY, A_Expr_Kind.AEXPR_OP_ALL,
                    A_Expr_Kind.AEXPR_DISTINCT, A_Expr_Kind.AEXPR_NOT_DISTINCT, A_Expr_Kind.AEXPR_NULLIF,
                    A_Expr_Kind.AEXPR_LIKE, A_Expr_Kind.AEXPR_ILIKE, A_Expr_Kind.AEXPR_SIMILAR}


def _is_real_filter(node, t: _Target) -> bool:
    """True if ``node`` (a WHERE/ON/condition) restricts the target's rows — see the module docstring."""
    while isinstance(node, A.BoolExpr) and node.boolop == BoolExprType.NOT_EXPR:
        node = node.args[0] if node.args else None           # NOT e is real iff e is
    if node is None:
        return False
    if isinstance(node, A.BoolExpr):
        if node.boolop == BoolExprType.AND_EXPR:
            return any(_is_real_filter(arg, t) for arg in _flatten(node, BoolExprType.AND_EXPR))
        if node.boolop == BoolExprType.OR_EXPR:
            args = _flatten(node, BoolExprType.OR_EXPR)
            if not all(_is_real_filter(arg, t) for arg in args):
                return False
            seen: dict = {}
            for arg in args:
                base, polarity = _literal(arg, t)
                if seen.get(base, polarity) != polarity:
                    return False                  # e OR NOT e
                seen[base] = polarity
            return True
    if isinstance(node, A.A_Expr):
        if not _refs_target(node, t, True):
            return False
        left, right = node.lexpr, node.rexpr
        if left is not None and right is not None:
            key = _canon(left, t)
            if node.kind == A_Expr_Kind.AEXPR_IN and isinstance(right, tuple):
                if any(_canon(item, t) == key for item in right):
                    return False
            elif node.kind in _SAME_SIDE_KINDS and _canon(right, t) == key:
                return False
        return True
    if isinstance(node, (A.NullTest, A.BooleanTest)):
        return _refs_target(node.arg, t, True)
    return _refs_target(node, t, True)
