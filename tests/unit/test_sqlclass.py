"""SQL statement classification: corpus, evasion cases, cache soundness, parse errors."""

from __future__ import annotations

import pglast
import pytest
from pglast import ast as A
from pglast import parser as pg_parser

from wardgate.core import sqlclass
from wardgate.core.sqlclass import CLASSES, Classification, SqlParseError, StatementClass, classify


def case(sql, verbs, classes, tables=(), *, unfiltered=False, reason=None, written=None, functions=None, id=None):
    return pytest.param(sql, verbs, classes, tables, unfiltered, reason, written, functions, id=id or sql[:70])


R, W, DDL, DCL, ADM = "read", "write", "ddl", "dcl", "admin"
SES, TX, COUT, CIN, CPROG = "session", "transaction", "copy_out", "copy_in", "copy_program"
CALL, UNK = "call", "unknown"

CORPUS = [
    # ---- reads, identifiers, quoting, literals
    case("SELECT 1", "SELECT", {R}),
    case("select * from users", "SELECT", {R}, {"users"}),
    case('SELECT * FROM "Users"', "SELECT", {R}, {"Users"}),
    case("SELECT * FROM USERS", "SELECT", {R}, {"users"}),
    case(r'SELECT * FROM U&"\0075sers"', "SELECT", {R}, {"users"}, id="unicode-escape-identifier"),
    case("SELECT * FROM public.t", "SELECT", {R}, {"public.t"}),
    case('SELECT * FROM "Public"."T"', "SELECT", {R}, {"Public.T"}),
    case('SELECT * FROM "my.schema".t', "SELECT", {R}, {'"my.schema".t'}),
    case("SELECT $$DROP TABLE x$$", "SELECT", {R}),
    case("SELECT $tag$DELETE FROM t$tag$", "SELECT", {R}),
    case(r"SELECT E'\x44ROP TABLE x'", "SELECT", {R}),
    case("SELECT * FROM t WHERE x = 'a; DROP TABLE t'", "SELECT", {R}, {"t"}),
    case("select 1 -- ; drop table t", "SELECT", {R}),
    case("SELECT /* DROP TABLE t; */ 1", "SELECT", {R}),
    case("SELECT a FROM t JOIN u ON t.id = u.tid LEFT JOIN v USING (id)", "SELECT", {R}, {"t", "u", "v"}),
    case("SELECT * FROM t WHERE id IN (SELECT tid FROM u WHERE EXISTS (SELECT 1 FROM w))", "SELECT", {R},
         {"t", "u", "w"}),
    case("SELECT * FROM (SELECT * FROM (SELECT * FROM t) a) b", "SELECT", {R}, {"t"}),
    case("SELECT * FROM t AS x, LATERAL (SELECT * FROM u WHERE u.id = x.id) y", "SELECT", {R}, {"t", "u"}),
    case("SELECT * FROM t WHERE id = 1 UNION SELECT * FROM u", "SELECT", {R}, {"t", "u"}),
    case("WITH x AS (SELECT * FROM t) SELECT * FROM x", "SELECT", {R}, {"t"}),
    case("WITH t AS (SELECT * FROM t) SELECT * FROM t", "SELECT", {R}, {"t"}, id="cte-shadowing-own-name"),
    case("WITH a AS (SELECT * FROM b), b AS (SELECT 1) SELECT * FROM a, b", "SELECT", {R}, {"b"},
         id="non-recursive-cte-sees-only-earlier"),
    case("WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 10) SELECT * FROM r",
         "SELECT", {R}, set()),
    case("SELECT * FROM public.x, x", "SELECT", {R}, {"public.x", "x"}),
    case("WITH secret AS (SELECT 1) SELECT * FROM public.secret", "SELECT", {R}, {"public.secret"},
         id="schema-qualified-name-is-never-a-cte"),
    case("WITH RECURSIVE a AS (SELECT * FROM b), b AS (SELECT * FROM secret) SELECT * FROM a", "SELECT", {R},
         {"secret"}, id="recursive-cte-forward-reference"),
    case("SELECT * FROM (WITH secret AS (SELECT 1) SELECT * FROM secret) x, secret", "SELECT", {R}, {"secret"},
         id="cte-scope-ends-with-its-query"),
    case(r"""SELECT * FROM U&"d!0061ta" UESCAPE '!'""", "SELECT", {R}, {"data"}, id="uescape-identifier"),
    case("SELECT 'a'FROM t", "SELECT", {R}, {"t"}, id="constant-abutting-keyword"),
    case('SELECT * FROM "delete"', "SELECT", {R}, {"delete"}),
    case("VALUES (1), (2)", "SELECT", {R}),
    case("TABLE t", "SELECT", {R}, {"t"}),
    case("SHOW search_path", "SHOW", {R}),
    case("SELECT count(*), lower(name) FROM t", "SELECT", {R}, {"t"}, functions={"count", "lower"}),
    case("select * from t where id = any(array[1, 2])", "SELECT", {R}, {"t"}),
    case("SELECT pg_sleep(1)", "SELECT", {R}, functions={"pg_sleep"}),
    case("SELECT * FROM t FOR UPDATE", "SELECT", {R, W}, {"t"}, written={"t"}),
    case("SELECT * FROM t JOIN u ON t.id = u.id FOR SHARE OF t", "SELECT", {R, W}, {"t", "u"}),
    # ---- EXPLAIN
    case("EXPLAIN SELECT * FROM t", "EXPLAIN", {R}, {"t"}),
    case("EXPLAIN DELETE FROM t", "EXPLAIN", {R}, {"t"}, written=set()),
    case("EXPLAIN ANALYZE DELETE FROM t", "EXPLAIN", {R, W}, {"t"}, unfiltered=True, written={"t"}),
    case("EXPLAIN (ANALYZE false) DELETE FROM t", "EXPLAIN", {R}, {"t"}),
    case("EXPLAIN (ANALYZE, FORMAT JSON) UPDATE t SET a = 1 WHERE id = 2", "EXPLAIN", {R, W}, {"t"}),
    case("EXPLAIN ANALYZE CREATE TABLE x AS SELECT * FROM t", "EXPLAIN", {R, W, DDL}, {"x", "t"}),
    # ---- DELETE / UPDATE and real filters
    case("dElEtE fRoM T wHeRe Id = 1", "DELETE", {W}, {"t"}),
    case("DELETE /* x */ FROM t", "DELETE", {W}, {"t"}, unfiltered=True),
    case("DELETE FROM t WHERE 1=1", "DELETE", {W}, {"t"}, unfiltered=True),
    case("DELETE FROM t WHERE id = 5", "DELETE", {W}, {"t"}, written={"t"}),
    case("DELETE FROM t USING u WHERE t.id = u.id", "DELETE", {W, R}, {"t", "u"}, written={"t"}),
    case("DELETE FROM t WHERE CURRENT OF c", "DELETE", {W}, {"t"}),
    case("DELETE FROM t WHERE id = $1", "DELETE", {W}, {"t"}),
    case("DELETE FROM t WHERE $1 = $2", "DELETE", {W}, {"t"}, unfiltered=True),
    case("DELETE FROM t WHERE id IS NOT DISTINCT FROM id", "DELETE", {W}, {"t"}, unfiltered=True),
    case("DELETE FROM t WHERE id IN (1, id)", "DELETE", {W}, {"t"}, unfiltered=True),
    case("DELETE FROM t WHERE a + 1 = a + 2", "DELETE", {W}, {"t"}, unfiltered=True),
    case("DELETE FROM t WHERE NOT (id <> id)", "DELETE", {W}, {"t"}, unfiltered=True),
    case("DELETE FROM t WHERE id = 5 OR false", "DELETE", {W}, {"t"}, unfiltered=True),
    case("DELETE FROM public.t WHERE public.t.id = 3", "DELETE", {W}, {"public.t"}),
    case("DELETE FROM t WHERE id = 1 RETURNING *", "DELETE", {W, R}, {"t"}),
    case("DELETE FROM ONLY t WHERE (id = 1)", "DELETE", {W}, {"t"}),
    case("UPDATE t SET a=1 WHERE true", "UPDATE", {W}, {"t"}, unfiltered=True),
    case("UPDATE t SET a = 1", "UPDATE", {W}, {"t"}, unfiltered=True),
    case("UPDATE t SET a = 1 WHERE a = a", "UPDATE", {W}, {"t"}, unfiltered=True),
    case("UPDATE t SET a = 1 WHERE 'a'='a'", "UPDATE", {W}, {"t"}, unfiltered=True),
    case("UPDATE t SET a = 1 WHERE 1=1 OR false", "UPDATE", {W}, {"t"}, unfiltered=True),
    case("UPDATE t SET a = 1 WHERE id = 5 OR true", "UPDATE", {W}, {"t"}, unfiltered=True),
    case("UPDATE t SET a = 1 WHERE x IS NULL OR x IS NOT NULL", "UPDATE", {W}, {"t"}, unfiltered=True),
    case("UPDATE t SET a = 1 WHERE flag OR NOT flag", "UPDATE", {W}, {"t"}, unfiltered=True),
    case("UPDATE t SET a = 1 WHERE flag IS TRUE OR flag IS NOT TRUE", "UPDATE", {W}, {"t"}, unfiltered=True),
    case("UPDATE t SET a = 1 WHERE t.id = id", "UPDATE", {W}, {"t"}, unfiltered=True),
    case("UPDATE t SET a = 1 WHERE id = 5 AND true", "UPDATE", {W}, {"t"}),
    case("UPDATE t SET a = 1 WHERE x IS NULL", "UPDATE", {W}, {"t"}),
    case("UPDATE t AS x SET a = 1 WHERE x.id = 7", "UPDATE", {W}, {"t"}),
    case("UPDATE t SET a = u.a FROM u WHERE u.flag", "UPDATE", {W, R}, {"t", "u"}, unfiltered=True),
    case("UPDATE t SET a = 1 WHERE EXISTS (SELECT 1 FROM u)", "UPDATE", {W, R}, {"t", "u"}, unfiltered=True),
    case("UPDATE t SET a = 1 WHERE EXISTS (SELECT 1 FROM u WHERE u.tid = t.id)", "UPDATE", {W, R}, {"t", "u"}),
    case("UPDATE t SET a = 1 WHERE EXISTS (SELECT 1 FROM t WHERE t.id = t.id)", "UPDATE", {W, R}, {"t"},
         unfiltered=True, id="subquery-shadows-target-name"),
    case("UPDATE t SET a = 1 WHERE id IN (SELECT tid FROM u)", "UPDATE", {W, R}, {"t", "u"}),
    case("UPDATE t SET a = (SELECT max(b) FROM u) WHERE id = 1", "UPDATE", {W, R}, {"t", "u"}),
    # ---- INSERT, CTEs, MERGE
    case("INSERT INTO t (a) VALUES (1)", "INSERT", {W}, {"t"}, written={"t"}),
    case("INSERT INTO t SELECT * FROM u", "INSERT", {W, R}, {"t", "u"}, written={"t"}),
    case("INSERT INTO t VALUES (1) ON CONFLICT (id) DO UPDATE SET a = excluded.a", "INSERT", {W}, {"t"}),
    case("INSERT INTO t VALUES (1) RETURNING id", "INSERT", {W, R}, {"t"}),
    case("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", "SELECT", {W, R}, {"t"}, unfiltered=True,
         written={"t"}),
    case("WITH d AS (DELETE FROM t WHERE id = 1 RETURNING *) INSERT INTO archive SELECT * FROM d", "INSERT",
         {W, R}, {"t", "archive"}, written={"t", "archive"}),
    case("WITH a AS (WITH b AS (UPDATE t SET x = 1 RETURNING *) SELECT * FROM b) SELECT * FROM a", "SELECT",
         {W, R}, {"t"}, unfiltered=True, id="nested-cte-write"),
    case("WITH t AS (SELECT 1) DELETE FROM t WHERE id = 1", "DELETE", {W, R}, {"t"}, written={"t"},
         id="dml-target-is-never-a-cte"),
    case("MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN UPDATE SET a = s.a "
         "WHEN NOT MATCHED THEN INSERT VALUES (s.id, s.a)", "MERGE", {W, R}, {"t", "s"}, written={"t"}),
    case("MERGE INTO t USING s ON true WHEN MATCHED THEN DELETE", "MERGE", {W, R}, {"t", "s"}, unfiltered=True),
    case("MERGE INTO t USING s ON t.id = s.id WHEN NOT MATCHED BY SOURCE THEN DELETE", "MERGE", {W, R},
         {"t", "s"}, unfiltered=True),
    case("MERGE INTO t USING s ON t.id = s.id WHEN NOT MATCHED BY SOURCE AND t.stale THEN DELETE", "MERGE",
         {W, R}, {"t", "s"}),
    # ---- SELECT INTO / CREATE TABLE AS / TRUNCATE / LOCK / REFRESH
    case("SELECT * INTO newtable FROM t", "SELECT INTO", {R, W, DDL}, {"newtable", "t"}, written={"newtable"}),
    case("CREATE TABLE x AS SELECT * FROM t", "CREATE TABLE AS", {DDL, W, R}, {"x", "t"}, written={"x"}),
    case("CREATE TABLE x AS SELECT * FROM t WITH NO DATA", "CREATE TABLE AS", {DDL}, {"x", "t"}, written=set()),
    case("CREATE MATERIALIZED VIEW mv AS SELECT * FROM t", "CREATE MATERIALIZED VIEW", {DDL, W, R}, {"mv", "t"}),
    case("REFRESH MATERIALIZED VIEW mv", "REFRESH MATERIALIZED VIEW", {W}, {"mv"}, written={"mv"}),
    case("TRUNCATE a, b", "TRUNCATE", {W, DDL}, {"a", "b"}, unfiltered=True, written={"a", "b"}),
    case("LOCK TABLE t IN ACCESS EXCLUSIVE MODE", "LOCK TABLE", {W}, {"t"}, written={"t"}),
    case("LOCK t", "LOCK TABLE", {W}, {"t"}, written={"t"}),
    case("LOCK TABLE public.t IN ACCESS SHARE MODE", "LOCK TABLE", {R}, {"public.t"}, written=set()),
    # ---- COPY
    case("COPY t TO STDOUT", "COPY", {COUT, R}, {"t"}, written=set()),
    case("COPY t (a, b) FROM STDIN WITH (FORMAT csv)", "COPY", {CIN, W}, {"t"}, written={"t"}),
    case("COPY (SELECT * FROM t WHERE id > 3) TO STDOUT", "COPY", {COUT, R}, {"t"}),
    case("COPY t TO PROGRAM 'gzip > /tmp/x'", "COPY", {CPROG, ADM, R}, {"t"}, reason="TO PROGRAM"),
    case("copy t from program 'curl http://x'", "COPY", {CPROG, ADM, W}, {"t"}, reason="FROM PROGRAM"),
    case("COPY t TO '/tmp/t.csv'", "COPY", {ADM, R}, {"t"}, reason="server file"),
    case("COPY t FROM '/etc/passwd'", "COPY", {ADM, W}, {"t"}, reason="server file"),
    case("COPY (DELETE FROM t RETURNING *) TO STDOUT", "COPY", {COUT, W, R}, {"t"}, unfiltered=True),
    # ---- dangerous functions
    case("select pg_terminate_backend(1)", "SELECT", {R, ADM}, reason="calls pg_terminate_backend"),
    case("SELECT pg_cancel_backend(pid) FROM pg_stat_activity", "SELECT", {R, ADM}, {"pg_stat_activity"},
         reason="calls pg_cancel_backend"),
    case("select * from dblink('dbname=x', 'select 1') as t(a int)", "SELECT", {R, ADM}, reason="calls dblink"),
    case("SELECT dblink_exec('dbname=x', 'DROP TABLE t')", "SELECT", {R, ADM}, reason="calls dblink_exec"),
    case("SELECT lo_export(1234, '/tmp/x')", "SELECT", {R, ADM}, reason="calls lo_export"),
    case("SELECT lo_import('/etc/passwd')", "SELECT", {R, ADM}, reason="calls lo_import"),
    case("SELECT pg_catalog.pg_read_file('/etc/passwd')", "SELECT", {R, ADM},
         functions={"pg_catalog.pg_read_file"}, reason="calls pg_catalog.pg_read_file"),
    case("SELECT \"pg_read_file\"('/etc/passwd')", "SELECT", {R, ADM}, reason="calls pg_read_file"),
    case("SELECT PG_READ_BINARY_FILE('/etc/passwd')", "SELECT", {R, ADM}),
    case("SELECT * FROM pg_ls_dir('.')", "SELECT", {R, ADM}, reason="calls pg_ls_dir"),
    case("SELECT query_to_xml('select * from secrets', true, true, '')", "SELECT", {R, ADM},
         reason="calls query_to_xml"),
    case("SELECT table_to_xml('secrets', true, false, '')", "SELECT", {R, ADM}),
    case("select ts_stat('select v from secrets')", "SELECT", {R, ADM}),
    case("SELECT pg_reload_conf()", "SELECT", {R, ADM}),
    case("SELECT pg_create_logical_replication_slot('s', 'pgoutput')", "SELECT", {R, ADM}),
    case("SELECT * FROM t WHERE id = (SELECT pg_stat_file('x') IS NULL)::int", "SELECT", {R, ADM}, {"t"}),
    case("SELECT nextval('seq')", "SELECT", {R, W}, reason="calls nextval"),
    case("SELECT pg_notify('ch', 'x')", "SELECT", {R, SES}),
    case("select set_config('role', 'x', false)", "SELECT", {R, SES, ADM}, reason="calls set_config"),
    case("SELECT set_config('ROLE'::text, 'x', false)", "SELECT", {R, SES, ADM}, reason="calls set_config"),
    case("SELECT pg_catalog.set_config('search_path', '', false)", "SELECT", {R, SES}, id="pg_dump-set_config"),
    case("SELECT set_config('app.tenant_id', '42', true)", "SELECT", {R, SES}),
    case("SELECT set_config($1, $2, true)", "SELECT", {R, SES, ADM}, reason="not a string literal"),
    case("SELECT set_config(name, 'x', false) FROM pg_settings", "SELECT", {R, SES, ADM}, {"pg_settings"}),
    case("UPDATE t SET a = pg_read_file('/etc/passwd') WHERE id = 1", "UPDATE", {W, ADM}, {"t"}),
    # ---- admin statements
    case("DO $$ BEGIN DELETE FROM t; END $$", "DO", {ADM}, reason="DO block body is not inspected"),
    case("DO LANGUAGE plpgsql 'BEGIN END'", "DO", {ADM}, reason="DO block body is not inspected"),
    case("ALTER SYSTEM SET work_mem = '1GB'", "ALTER SYSTEM", {ADM}, reason="ALTER SYSTEM"),
    case("CREATE EXTENSION dblink", "CREATE EXTENSION", {DDL, ADM}, reason="CREATE EXTENSION"),
    case("DROP EXTENSION dblink", "DROP EXTENSION", {DDL, ADM}),
    case("LOAD 'auto_explain'", "LOAD", {ADM}, reason="LOAD"),
    case("VACUUM ANALYZE t", "VACUUM", {ADM}, {"t"}),
    case("ANALYZE t", "ANALYZE", {ADM}, {"t"}),
    case("CHECKPOINT", "CHECKPOINT", {ADM}),
    case("REINDEX TABLE t", "REINDEX", {ADM}, {"t"}),
    case("CLUSTER t USING t_pkey", "CLUSTER", {ADM}, {"t"}),
    case("DROP DATABASE prod", "DROP DATABASE", {DDL, ADM}),
    case("CREATE TABLESPACE ts LOCATION '/data'", "CREATE TABLESPACE", {DDL, ADM}),
    case("CREATE SERVER s FOREIGN DATA WRAPPER postgres_fdw", "CREATE SERVER", {DDL, ADM}),
    # ---- session / transaction
    case("SET ROLE admin", "SET", {SES, ADM}, reason="role"),
    case("SET SESSION AUTHORIZATION x", "SET", {SES, ADM}, reason="session_authorization"),
    case("RESET ROLE", "RESET", {SES, ADM}),
    case("SET search_path = public", "SET", {SES}),
    case("SET LOCAL statement_timeout = '5s'", "SET", {SES}),
    case("RESET ALL", "RESET", {SES}),
    case("DISCARD ALL", "DISCARD ALL", {SES}),
    case("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", "SET", {TX}),
    case("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", "SET", {SES}),
    case("BEGIN", "BEGIN", {TX}),
    case("START TRANSACTION READ ONLY", "START TRANSACTION", {TX}),
    case("COMMIT", "COMMIT", {TX}),
    case("ROLLBACK", "ROLLBACK", {TX}),
    case("SAVEPOINT s", "SAVEPOINT", {TX}),
    case("RELEASE SAVEPOINT s", "RELEASE", {TX}),
    case("ROLLBACK TO SAVEPOINT s", "ROLLBACK", {TX}),
    case("PREPARE TRANSACTION 'x'", "PREPARE TRANSACTION", {TX, ADM}, reason="two-phase"),
    case("COMMIT PREPARED 'x'", "COMMIT PREPARED", {TX, ADM}),
    case("LISTEN ch", "LISTEN", {SES}),
    case("NOTIFY ch, 'x'", "NOTIFY", {SES}),
    case("UNLISTEN *", "UNLISTEN", {SES}),
    # ---- PREPARE / EXECUTE / cursors / CALL
    case("PREPARE p AS DELETE FROM t WHERE id = $1", "PREPARE", {W}, {"t"}),
    case("PREPARE q AS DELETE FROM t", "PREPARE", {W}, {"t"}, unfiltered=True),
    case("PREPARE r (int) AS SELECT * FROM t WHERE id = $1", "PREPARE", {R}, {"t"}),
    case("EXECUTE p(1)", "EXECUTE", {UNK}, reason="EXECUTE p"),
    case("EXECUTE p(pg_read_file('/x'))", "EXECUTE", {UNK, ADM}),
    case("DEALLOCATE p", "DEALLOCATE", {SES}),
    case("DEALLOCATE ALL", "DEALLOCATE ALL", {SES}),
    case("DECLARE c CURSOR FOR SELECT * FROM t", "DECLARE CURSOR", {R}, {"t"}),
    case("FETCH 10 FROM c", "FETCH", {R}),
    case("MOVE 10 IN c", "MOVE", {R}),
    case("CLOSE c", "CLOSE CURSOR", {SES}),
    case("CALL do_things(1)", "CALL", {CALL}, functions={"do_things"}),
    case("CALL app.refresh((SELECT max(id) FROM t))", "CALL", {CALL, R}, {"t"}, functions={"app.refresh", "max"}),
    # ---- DDL
    case("CREATE TABLE t (id int PRIMARY KEY, u_id int REFERENCES u (id))", "CREATE TABLE", {DDL}, {"t", "u"}),
    case("CREATE TABLE t (a int DEFAULT nextval('s'))", "CREATE TABLE", {DDL}, {"t"}, functions={"nextval"}),
    case("CREATE TABLE x (LIKE t)", "CREATE TABLE", {DDL}, {"x", "t"}),
    case("ALTER TABLE t ADD COLUMN b int", "ALTER TABLE", {DDL}, {"t"}),
    case("ALTER TABLE t OWNER TO bob", "ALTER TABLE", {DDL, DCL}, {"t"}),
    case("ALTER TABLE t ENABLE ROW LEVEL SECURITY", "ALTER TABLE", {DDL, DCL}, {"t"}),
    case("ALTER TABLE t RENAME TO u", "ALTER TABLE", {DDL}, {"t"}),
    case("ALTER TABLE t SET SCHEMA s", "ALTER TABLE", {DDL}, {"t"}),
    case("DROP TABLE a.b, c", "DROP TABLE", {DDL}, {"a.b", "c"}),
    case("DROP VIEW IF EXISTS v", "DROP VIEW", {DDL}, {"v"}),
    case("DROP SCHEMA s CASCADE", "DROP SCHEMA", {DDL}),
    case("CREATE INDEX i ON t (a)", "CREATE INDEX", {DDL}, {"t"}),
    case("CREATE VIEW v AS SELECT * FROM t", "CREATE VIEW", {DDL}, {"v", "t"}),
    case("CREATE VIEW v AS SELECT pg_read_file('/etc/passwd')", "CREATE VIEW", {DDL, ADM}, {"v"},
         reason="calls pg_read_file"),
    case("COMMENT ON TABLE t IS 'x'", "COMMENT", {DDL}, {"t"}),
    case("COMMENT ON COLUMN s.t.c IS 'x'", "COMMENT", {DDL}, {"s.t"}),
    case("SECURITY LABEL ON TABLE t IS 'x'", "SECURITY LABEL", {DDL}, {"t"}),
    case("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'", "CREATE FUNCTION", {DDL}),
    case("CREATE FUNCTION f() RETURNS int LANGUAGE plpython3u AS 'return 1'", "CREATE FUNCTION", {DDL, ADM},
         reason="untrusted language"),
    case("CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC DELETE FROM t; SELECT 1; END",
         "CREATE FUNCTION", {DDL}, {"t"}, written=set()),
    case("CREATE PROCEDURE p() LANGUAGE sql AS $$ DELETE FROM t $$", "CREATE PROCEDURE", {DDL}),
    case("CREATE RULE r AS ON INSERT TO t DO ALSO DELETE FROM u", "CREATE RULE", {DDL}, {"t", "u"}),
    case("CREATE TRIGGER trg BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION f()", "CREATE TRIGGER", {DDL},
         {"t"}),
    case("CREATE TYPE pair AS (a int, b int)", "CREATE TYPE", {DDL}),
    case("CREATE FOREIGN TABLE ft (a int DEFAULT pg_read_file('/x')) SERVER s", "CREATE FOREIGN TABLE",
         {DDL, ADM}, {"ft"}, reason="calls pg_read_file", id="embedded-struct-is-walked"),
    case("CREATE SEQUENCE s", "CREATE SEQUENCE", {DDL}, {"s"}),
    case("CREATE SCHEMA s CREATE TABLE x (a int) GRANT SELECT ON x TO bob", "CREATE SCHEMA", {DDL, DCL}, {"x"}),
    # ---- DCL
    case("GRANT SELECT ON t TO bob", "GRANT", {DCL}, {"t"}),
    case("REVOKE ALL ON t, u FROM bob", "REVOKE", {DCL}, {"t", "u"}),
    case("GRANT admin TO bob", "GRANT ROLE", {DCL}),
    case("CREATE ROLE bob LOGIN PASSWORD 'secret'", "CREATE ROLE", {DCL}),
    case("CREATE USER bob", "CREATE ROLE", {DCL}),
    case("ALTER ROLE bob SUPERUSER", "ALTER ROLE", {DCL}),
    case("ALTER USER bob SET search_path = x", "ALTER ROLE", {DCL}),
    case("DROP USER bob", "DROP ROLE", {DCL}),
    case("DROP GROUP g", "DROP ROLE", {DCL}),
    case("ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO bob", "ALTER DEFAULT PRIVILEGES", {DCL}),
    case("REASSIGN OWNED BY bob TO alice", "REASSIGN OWNED", {DCL}),
    case("DROP OWNED BY bob", "DROP OWNED", {DCL, DDL}),
    case("CREATE POLICY p ON t USING (owner = current_user)", "CREATE POLICY", {DDL, DCL}, {"t"}),
    # ---- multi-statement strings
    case("BEGIN; DELETE FROM t; COMMIT", ("BEGIN", "DELETE", "COMMIT"), {TX, W}, {"t"}, unfiltered=True),
    case("SELECT * FROM t WHERE id = 1; DROP TABLE t", ("SELECT", "DROP TABLE"), {R, DDL}, {"t"}),
    case("SELECT 1; SELECT 2;", ("SELECT", "SELECT"), {R}),
    case("CREATE TABLE t2 (a int); INSERT INTO t2 VALUES (1)", ("CREATE TABLE", "INSERT"), {DDL, W}, {"t2"}),
]


@pytest.mark.parametrize("sql,verbs,classes,tables,unfiltered,reason,written,functions", CORPUS)
def test_corpus(sql, verbs, classes, tables, unfiltered, reason, written, functions):
    result = classify(sql)
    expected_verbs = (verbs,) if isinstance(verbs, str) else tuple(verbs)
    assert tuple(s.verb for s in result.statements) == expected_verbs
    assert result.classes == frozenset(classes)
    assert result.classes <= set(CLASSES)
    assert result.tables == frozenset(tables)
    assert result.unfiltered is unfiltered
    assert result.multi_statement is (len(expected_verbs) > 1)
    assert result.written_tables <= result.tables
    if written is not None:
        assert result.written_tables == frozenset(written)
    if functions is not None:
        assert result.functions == frozenset(functions)
    if reason is not None:
        assert any(reason in r for s in result.statements for r in s.reasons), result.statements
    if "admin" in result.classes or "unknown" in result.classes:
        assert any(s.reasons for s in result.statements), "admin/unknown must say why"


def test_corpus_is_large_enough():
    assert len(CORPUS) >= 80


@pytest.mark.parametrize("sql", ["", "   ", "\n\t", ";", ";;", "-- hi", "/* only a comment */", "-- a\n;\n"])
def test_empty_text_has_no_statements(sql):
    result = classify(sql)
    assert result.statements == ()
    assert result.classes == frozenset()
    assert not result.multi_statement and not result.unfiltered


@pytest.mark.parametrize("sql", ["DEL/**/ETE FROM t", "SELECT FROM WHERE", "SELECT 'unterminated",
                                 "SELECT 1; BOGUS", "DELETE FROM", "U&\"\\zzzz\""])
def test_unparseable_raises_with_pglast_message(sql):
    with pytest.raises(pg_parser.ParseError) as pg_error:
        pglast.parse_sql(sql)
    with pytest.raises(SqlParseError) as error:
        classify(sql)
    assert str(error.value) == str(pg_error.value)
    with pytest.raises(SqlParseError):             # cached failures raise again
        classify(sql)


def test_unknown_statement_node_fails_closed():
    statement = sqlclass._classify_statement(A.PLAssignStmt(name="x"))
    assert statement.classes == {"unknown"}
    assert statement.verb == "PLAssignStmt"
    assert any("PLAssignStmt" in r for r in statement.reasons)


def test_every_parser_statement_type_is_handled():
    import inspect
    statement_types = {name for name, cls in vars(A).items()
                       if inspect.isclass(cls) and issubclass(cls, A.Node) and name.endswith("Stmt")}
    handled = {cls.__name__ for cls in sqlclass._STATEMENT_HANDLERS} | set(sqlclass._SIMPLE)
    # Never a top-level statement of parse_sql: wrappers, PL/pgSQL, post-analysis nodes, sub-parts.
    not_top_level = {"RawStmt", "SetOperationStmt", "PLAssignStmt", "ReturnStmt", "ReplicaIdentityStmt"}
    assert statement_types - handled - not_top_level == set()


def test_statementclass_and_classification_api():
    result = classify("SELECT * FROM a; DELETE FROM b WHERE id = 1")
    assert isinstance(result, Classification)
    assert all(isinstance(s, StatementClass) for s in result.statements)
    assert result.tables == {"a", "b"} and result.written_tables == {"b"}
    assert result.normalized == pg_parser.normalize("SELECT * FROM a; DELETE FROM b WHERE id = 1")
    assert result.fingerprint
    with pytest.raises(AttributeError):
        result.statements[0].verb = "x"          # frozen
    assert not hasattr(result.statements[0], "__dict__")   # slots


# --------------------------------------------------------------------------------------------------
# Cache soundness


SAME_SHAPE = [
    ("DELETE FROM t WHERE 1=1", "DELETE FROM t WHERE 1=2"),
    ("UPDATE t SET a = 1 WHERE 'a'='a'", "UPDATE t SET a = 2 WHERE 'a'='b'"),
    ("UPDATE t SET a = 1 WHERE id = 5 OR true", "UPDATE t SET a = 1 WHERE id = 5 OR false"),
    ("DELETE FROM t WHERE a + 1 = a + 1", "DELETE FROM t WHERE a + 1 = a + 2"),
    ("DELETE FROM t WHERE id = 1", "DELETE FROM t WHERE id = 'x'"),
    ("select set_config('role', 'admin', false)", "select set_config('role', 'x', true)"),
    ("select set_config('search_path', 'a', false)", "select set_config('search_path', 'b', true)"),
    ("SET ROLE admin", "SET ROLE nobody"),
    ("SELECT lo_export(1, '/tmp/a')", "SELECT lo_export(2, '/etc/passwd')"),
    ("SELECT * FROM t WHERE id IN (1, 2, 3) LIMIT 5", "SELECT * FROM t WHERE id IN (4, 5, 6) LIMIT 10"),
    ("DO $$ BEGIN DELETE FROM t; END $$", "DO $$ BEGIN END $$"),
    ("NOTIFY c, 'a'", "NOTIFY c, 'b'"),
    ("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'select 1'",
     "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'select pg_read_file(''/x'')'"),
    ("CREATE ROLE bob PASSWORD 'one'", "CREATE ROLE bob PASSWORD 'two'"),
    ("SELECT interval '1 day', E'\\x41', B'101', -1.5", "SELECT interval '2 days', 'b', X'ff', 7"),
    ("EXECUTE p(1)", "EXECUTE p(2)"),  # normalize leaves EXECUTE's arguments alone: same text shape anyway
]


@pytest.mark.parametrize("a,b", SAME_SHAPE, ids=[a[:50] for a, _ in SAME_SHAPE])
def test_normalize_equivalent_statements_classify_alike(a, b):
    if a != "EXECUTE p(1)":
        assert pg_parser.normalize(a) == pg_parser.normalize(b)
    sqlclass.clear_caches()
    cold_a = classify(a)
    warm_b = classify(b)                          # a normalize-cache hit where the key parses
    sqlclass.clear_caches()
    cold_b = classify(b)
    assert warm_b.statements == cold_a.statements == cold_b.statements
    assert warm_b.fingerprint == cold_b.fingerprint
    # the walk itself ignores constants, on the original texts too
    assert sqlclass._classify_uncached(a) == sqlclass._classify_uncached(b)


def test_normalize_cache_hit_returns_shared_result():
    sqlclass.clear_caches()
    first = classify("DELETE FROM t WHERE id = 1")
    second = classify("DELETE FROM t WHERE id = 2")
    assert second is first
    assert "DELETE FROM t WHERE id = 1" in sqlclass._exact_cache
    assert "DELETE FROM t WHERE id = 2" not in sqlclass._exact_cache  # answered by its template
    assert pg_parser.normalize("DELETE FROM t WHERE id = 1") in sqlclass._norm_cache


def test_constant_that_matters_is_never_shared_through_the_normalize_cache():
    """``LANGUAGE 'sql'`` and ``LANGUAGE 'plpython3u'`` normalize alike (``LANGUAGE $1``) but differ."""
    trusted = "CREATE FUNCTION f() RETURNS int LANGUAGE 'sql' AS 'select 1'"
    untrusted = "CREATE FUNCTION f() RETURNS int LANGUAGE 'plpython3u' AS 'return 1'"
    assert pg_parser.normalize(trusted) == pg_parser.normalize(untrusted)
    sqlclass.clear_caches()
    assert classify(trusted).classes == {"ddl"}
    assert pg_parser.normalize(trusted) not in sqlclass._norm_cache     # unparseable key: exact cache only
    result = classify(untrusted)
    assert result.classes == {"ddl", "admin"}
    assert any("plpython3u" in r for r in result.statements[0].reasons)


def test_set_config_name_is_read_but_never_through_the_normalize_cache():
    harmless = "select set_config('application_name', 'x', false)"
    escalating = "select set_config('role', 'x', false)"
    assert pg_parser.normalize(harmless) == pg_parser.normalize(escalating)
    sqlclass.clear_caches()
    assert classify(harmless).classes == {"read", "session"}
    assert pg_parser.normalize(harmless) not in sqlclass._norm_cache
    assert classify(escalating).classes == {"read", "session", "admin"}


def test_parameter_where_a_value_matters_fails_closed():
    # What the normalized-text walk sees when a value is a parameter: the worst case.
    statement = sqlclass._classify_uncached("DELETE FROM t WHERE $1 = $2")[0]
    assert statement.unfiltered
    node = pglast.parse_sql("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'x'")[0].stmt
    node.options = tuple(A.DefElem(defname="language", arg=A.ParamRef(number=1)) if o.defname == "language"
                         else o for o in node.options)
    assert "admin" in sqlclass._classify_statement(node).classes


def test_nul_character_is_refused():
    with pytest.raises(SqlParseError, match="NUL"):
        classify("SELECT 1\x00; DROP TABLE t")


@pytest.mark.parametrize("terms", [500, 3000])
def test_deep_expressions_classify_without_recursion_error(terms):
    result = classify("UPDATE t SET a = 1 WHERE " + " || ".join(["a"] * terms) + " = " + " || ".join(["a"] * terms))
    assert result.classes == {"write"} and result.unfiltered
    result = classify("SELECT " + " + ".join(["a"] * terms) + " FROM t")
    assert result.tables == {"t"}


def test_pathological_filter_nesting_fails_closed():
    expr = "id = 0"
    for i in range(900):
        expr = f"({expr}) {'OR' if i % 2 else 'AND'} id = {i}"
    statement = classify("DELETE FROM t WHERE " + expr).statements[0]
    assert statement.classes == {"unknown"} and statement.reasons


DIFFERENT_SHAPE = [
    ("DELETE FROM t WHERE id = 1", "DELETE FROM t WHERE id = id"),
    ("DELETE FROM t WHERE id = 1", "DELETE FROM t WHERE id = 1; DROP TABLE t"),
    ("DELETE FROM t WHERE id = 1", "DELETE FROM t"),
    ("SELECT * FROM t", 'SELECT * FROM "T"'),
    ("SELECT * FROM t", "SELECT * FROM public.t"),
    ("SELECT * FROM t", "SELECT * FROM t FOR UPDATE"),
    ("SELECT lower('x')", "SELECT pg_read_file('x')"),
    ("SELECT 1", "SELECT 1 /* note */"),
    ("COPY t TO STDOUT", "COPY t TO '/tmp/x'"),
    ("COPY t TO '/tmp/x'", "COPY t TO PROGRAM '/tmp/x'"),
    ("COPY t FROM STDIN", "COPY t TO STDOUT"),
    ("EXPLAIN DELETE FROM t", "EXPLAIN ANALYZE DELETE FROM t"),
    ("EXPLAIN (ANALYZE false) DELETE FROM t", "EXPLAIN (ANALYZE true) DELETE FROM t"),
    ("SET search_path = x", "SET role = x"),
    ("DO $$ x $$", "DO LANGUAGE plpython3u $$ x $$"),
    ("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'x'", "CREATE FUNCTION f() RETURNS int LANGUAGE c AS 'x'"),
    ("UPDATE t SET a = 1 WHERE id = 5 AND 1 = 1", "UPDATE t SET a = 1 WHERE id = 5 OR 1 = 1"),
    ("WITH x AS (SELECT 1) SELECT * FROM x", "WITH y AS (SELECT 1) SELECT * FROM x"),
]


def _parses(text: str) -> bool:
    try:
        pglast.parse_sql(text)
    except pg_parser.ParseError:
        return False
    return True


@pytest.mark.parametrize("a,b", DIFFERENT_SHAPE, ids=[f"{a[:30]}|{b[:30]}" for a, b in DIFFERENT_SHAPE])
def test_normalize_cache_key_separates_statements_that_differ_in_more_than_constants(a, b):
    key_a, key_b = pg_parser.normalize(a), pg_parser.normalize(b)
    assert key_a != key_b
    sqlclass.clear_caches()
    classify(a)                                   # warm the caches with a
    assert key_b not in sqlclass._norm_cache
    if _parses(key_a):
        assert key_a in sqlclass._norm_cache
    assert classify(b).statements == sqlclass._classify_uncached(b)


@pytest.mark.parametrize("sql", [p.values[0] for p in CORPUS])
def test_walk_ignores_constants_and_cache_matches_uncached(sql):
    """Classifying the normalized text (what the cache keys on) gives what the original text gives."""
    uncached = sqlclass._classify_uncached(sql)
    assert classify(sql).statements == uncached
    normalized = pg_parser.normalize(sql)
    if not _parses(normalized):                   # DO $1 and the like: cached by exact text only
        return
    statements, needs_values = sqlclass._classify_all(pglast.parse_sql(normalized))
    if needs_values:                              # set_config($1, …): cached by exact text only
        assert classify(sql).classes <= frozenset().union(*(s.classes for s in statements))
        return
    assert statements == uncached


def test_long_texts_bypass_exact_cache_but_classify():
    sql = "SELECT " + ", ".join(f"c{i}" for i in range(2000)) + " FROM t WHERE id = 1"
    assert len(sql) > sqlclass.EXACT_CACHE_MAX_CHARS
    sqlclass.clear_caches()
    assert classify(sql).tables == {"t"}
    assert not sqlclass._exact_cache


def test_normalized_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(sqlclass, "NORMALIZED_CACHE_SIZE", 3)
    sqlclass.clear_caches()
    for i in range(10):
        classify(f"SELECT c{i} FROM t")
    assert len(sqlclass._norm_cache) <= 3
    sqlclass.clear_caches()
