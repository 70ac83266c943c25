"""The compiled SQL template splitter (``_sqltemplate_fast``) returns exactly what the Python
reference (``sqlclass._template_pieces_python``) returns: a different split could file a statement
under another statement's template. (Build freshness: tests/unit/test_compiled_accelerators.py.)"""

from __future__ import annotations

import random

import pytest

from wardgate.core import sqlclass

fast = sqlclass._TEMPLATE_FAST
pytestmark = pytest.mark.skipif(fast is None, reason="compiled SQL template splitter not in use (not built, stale, "
                                                     "or WARDGATE_SQLCLASS_PYTHON)")
reference = sqlclass._template_pieces_python

EDGES = [
    "", "1", "SELECT 1", "SELECT 123456789", "SELECT 1234567890", "SELECT 12345678901234567890", "SELECT -1",
    "SELECT 1.5", "SELECT .5", "SELECT 5.", "SELECT a1", "SELECT 1a", "SELECT _1", "SELECT 1_000", "SELECT t.1",
    "SELECT 1e5", "SELECT x FROM t WHERE id = 42;", "SELECT abalance FROM pgbench_accounts WHERE aid = 93011;",
    "SELECT 1 -- c", "SELECT 1 /* c */", "SELECT 1 - -1", "SELECT 1/2", "SELECT 1/*2", "SELECT '1'", 'SELECT "1"',
    "SELECT $1", "SELECT 1 \\", "SELECT é, 1", "SELECT 1\x00", "SELECT 1 -" , "1,2,3", "(1)(2)", "x" * 2049 + " 1",
    "SELECT " + "1," * 1023 + "1", "SELECT 1" + " " * 2040, "SELECT\t1\r\n2", "SELECT 00001", "SELECT 0",
]


@pytest.mark.parametrize("text", EDGES)
def test_edge_texts_split_alike(text: str) -> None:
    assert fast.template_pieces(text) == reference(text)


def test_random_texts_split_alike() -> None:
    rng = random.Random(3)
    plain = ["SELECT ", " ", "1", "23", "456789012", "9", "a", "Z", "_", ".", "-", "/", "*", "(", ")", ",", ";", "=",
             "\t", "\n", "#", "e", "x1", "1x"]
    refused = ["'", "$", "é", "\\", "--", "/*", "\x00"]
    checked = splits = 0
    for n in range(50_000):
        alphabet = plain if n % 3 else plain + refused
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 40)))
        expected = reference(text)
        assert fast.template_pieces(text) == expected, text
        checked += 1
        splits += expected is not None
    assert splits > checked // 4  # the random texts exercise real splits, not only refusals
