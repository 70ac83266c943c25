"""The classifier's template cache: texts that differ only in int4 literals skip normalize, soundly."""

from __future__ import annotations

import re

import pytest
from pglast import parser as pg_parser

from wardgate.core import sqlclass
from wardgate.core.sqlclass import classify

from test_sqlclass import CORPUS


@pytest.fixture(autouse=True)
def _fresh_caches():
    sqlclass.clear_caches()
    yield
    sqlclass.clear_caches()


def _forbid_normalize(monkeypatch):
    def refuse(text):
        raise AssertionError(f"normalize called for {text!r}")
    monkeypatch.setattr(sqlclass._parser, "normalize", refuse)


def test_pgbench_statement_skips_normalize_after_the_first(monkeypatch):
    first = classify("SELECT abalance FROM pgbench_accounts WHERE aid = 1;")
    _forbid_normalize(monkeypatch)
    second = classify("SELECT abalance FROM pgbench_accounts WHERE aid = 987654;")
    assert second is first
    assert second.tables == {"pgbench_accounts"}


@pytest.mark.parametrize("sql", [
    "SELECT * FROM t WHERE x = 'a' AND id = 1",         # quotes
    "SELECT * FROM t WHERE id = $1 AND x = 2",           # parameters
    "SELECT 1 -- 2",                                     # comments
    "SELECT /* 2 */ 1",
    "SELECT * FROM t WHERE id = 1234567890",             # 10 digits: may not be an int4 token
    "SELECT * FROM t WHERE x = -5",                      # normalize folds the sign into the constant
    "SELECT * FROM t LIMIT 5 OFFSET 2",                  # normalize numbers these out of order
    "SELECT x::varchar(10) FROM t",                      # normalize keeps this literal
    "SELECT * FROM t ORDER BY 1",
    "EXPLAIN (ANALYZE 1) DELETE FROM t",                 # a value that matters: kept by normalize
    "SELECT 1.5, 2",
    "SELECT * FROM tëst WHERE id = 1",                   # not ASCII
    "SELECT 1e5",
])
def test_texts_that_are_not_templates(sql):
    try:
        classify(sql)
    except sqlclass.SqlParseError:
        pass
    assert not sqlclass._template_cache


def test_template_requires_normalize_to_agree():
    classify("SELECT a[1] FROM t WHERE id = 7")
    assert list(sqlclass._template_cache) == [("SELECT a[", "] FROM t WHERE id = ", "")]


def _variants(sql: str) -> list[str]:
    """The text with its standalone int4 literals changed (as the template cache would see them)."""
    return [sqlclass._INT4_LITERAL.sub(lambda m, v=value: str(v), sql) for value in (0, 7, 123456789)]


@pytest.mark.parametrize("sql", [pytest.param(p.values[0], id=p.id) for p in CORPUS])
def test_template_hits_classify_like_the_uncached_walk(sql):
    """Every corpus text and its int4 variants: a template hit gives what a full walk of that text
    gives."""
    try:
        classify(sql)
    except sqlclass.SqlParseError:
        return
    for variant in _variants(sql):
        if variant == sql:
            continue
        sqlclass._exact_cache.clear()  # force the template (or normalize) path
        result = classify(variant)
        assert result.statements == sqlclass._classify_uncached(variant), variant


def test_template_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(sqlclass, "NORMALIZED_CACHE_SIZE", 3)
    for i in range(10):
        classify(f"SELECT c{i} FROM t WHERE id = {i}")
    assert len(sqlclass._template_cache) <= 3


def test_statement_that_does_not_parse_is_never_a_template():
    with pytest.raises(sqlclass.SqlParseError):
        classify("SELEC 1 FROM t WHERE id = 2")
    assert not sqlclass._template_cache
    assert re.fullmatch(sqlclass._TEMPLATE_TEXT, "SELEC 1 FROM t WHERE id = 2")
    assert pg_parser  # normalize stays the arbiter of what parses
