"""The compiled DataRow masker (``_rowmask_fast``) against the Python walker (``rowmask``).

GIVEN the same plan and the same DataRow payloads,
WHEN the compiled and the Python walker mask them,
THEN the output is byte-identical (and the very same object when nothing changed), the counts in the
report are the same, malformed rows are refused by both, and a compiled module that was not built
from the current ``.pyx`` is never used (it falls back, with one warning).
"""

from __future__ import annotations

import logging
import random
import sys

import pytest

from wardgate.core import compiled
from wardgate.core.masking import MaskReport, MaskStrategy
from wardgate.protocols.postgres import rowmask
from wardgate.protocols.postgres.rowmask import ResultMasker

KEY = b"k" * 32
IMPLEMENTATIONS = ["python", pytest.param("compiled", marks=pytest.mark.skipif(
    not rowmask.fast_available(), reason="compiled DataRow masker not in use (not built, stale, or WARDGATE_MASKING_PYTHON)"))]
needs_compiled = pytest.mark.skipif(not rowmask.fast_available(), reason="compiled DataRow masker not in use (not built, stale, or WARDGATE_MASKING_PYTHON)")


def datarow(values: list[bytes | None]) -> bytes:
    out = [len(values).to_bytes(2, "big")]
    for value in values:
        if value is None:
            out.append(b"\xff\xff\xff\xff")
        else:
            out.append(len(value).to_bytes(4, "big") + value)
    return b"".join(out)


def column(index: int, strategy: MaskStrategy, textual: bool = True) -> tuple:
    return (index, "column", strategy, f"public.t.c{index}", None, textual)


def detect(index: int, strategy: MaskStrategy, detectors: tuple = ("email", "credit_card", "us_ssn")) -> tuple:
    return (index, "detect", strategy, f"public.t.c{index}", detectors, True)


def both(plan: tuple, rows: list[bytes]) -> None:
    """Mask ``rows`` with both walkers; assert identical bytes, identity and report."""
    python = ResultMasker(plan, KEY, MaskReport(), fast=False)
    compiled = ResultMasker(plan, KEY, MaskReport(), fast=True)
    for row in rows:
        expected = python.mask_row(row)
        got = compiled.mask_row(row)
        assert got == expected, (row, expected, got)
        assert (got is row) == (expected is row)
    python.finish()
    compiled.finish()
    assert compiled.report.entries() == python.report.entries()


def masked_values(masker: ResultMasker, values: list[bytes | None]) -> list[bytes | None]:
    payload = masker.mask_row(datarow(values))
    count = int.from_bytes(payload[:2], "big")
    out, offset = [], 2
    for _ in range(count):
        length = int.from_bytes(payload[offset:offset + 4], "big", signed=True)
        offset += 4
        if length < 0:
            out.append(None)
        else:
            out.append(payload[offset:offset + length])
            offset += length
    assert offset == len(payload)
    return out


# ------------------------------------------------------------------------------------- behaviour


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_masks_the_planned_columns_only(implementation: str) -> None:
    plan = (column(1, MaskStrategy.partial(4)), column(3, MaskStrategy.redact()), column(4, MaskStrategy.null()))
    masker = ResultMasker(plan, KEY, MaskReport(), fast=implementation == "compiled")
    values = [b"1", b"jane.doe@example.com", b"keep me", b"secret", b"gone", b"after"]
    assert masked_values(masker, values) == [
        b"1", b"****.**********e.com", b"keep me", b"[REDACTED]", None, b"after"]
    untouched = datarow([b"1", None, b"x", None, None, b"y"])  # NULLs stay NULL: the same object back
    assert masker.mask_row(untouched) is untouched
    masker.finish()
    assert masker.report.entries() == [
        {"column": "public.t.c1", "detector": "column", "count": 1},
        {"column": "public.t.c3", "detector": "column", "count": 1},
        {"column": "public.t.c4", "detector": "column", "count": 1},
    ]


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_short_rows_and_binary_columns(implementation: str) -> None:
    plan = (column(0, MaskStrategy.partial(2)), column(2, MaskStrategy.hash(), textual=False),
            column(5, MaskStrategy.redact()))
    masker = ResultMasker(plan, KEY, MaskReport(), fast=implementation == "compiled")
    # A row with fewer columns than the plan reaches: the columns it has are masked.
    assert masked_values(masker, [b"abcdef", b"x"]) == [b"****ef", b"x"]
    # A non-text value in binary format cannot be shown masked: NULL.
    assert masked_values(masker, [b"", b"x", b"\x00\x01", b"y"]) == [b"", b"x", None, b"y"]


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("payload", [
    b"",
    b"\x00",
    b"\x00\x02\x00\x00\x00\x05abc",              # first value runs past the end
    b"\x00\x02\x00\x00\x00\x01a\x00\x00",          # second length cut off
    b"\x00\x03\x00\x00\x00\x01a\x00\x00\x00\x09b",  # the masked column runs past the end
])
def test_malformed_rows_are_refused(implementation: str, payload: bytes) -> None:
    plan = (column(1, MaskStrategy.partial(4)),)
    masker = ResultMasker(plan, KEY, MaskReport(), fast=implementation == "compiled")
    with pytest.raises(Exception):
        masker.mask_row(payload)


@needs_compiled
def test_every_strategy_is_byte_identical() -> None:
    strategies = [
        MaskStrategy.redact(), MaskStrategy.redact("***"), MaskStrategy.redact("é-marker"), MaskStrategy.null(),
        MaskStrategy.partial(4), MaskStrategy.partial(0), MaskStrategy.partial(2, mask_char="x"),
        MaskStrategy.partial(4, separators=""), MaskStrategy.partial(4, mask_char="•"),
        MaskStrategy.partial(3, separators="é "), MaskStrategy.partial(10**12),
        MaskStrategy.hash(), MaskStrategy.hash(prefix="h:", length=20, encoding="base32"),
    ]
    values = [b"", b"a", b"ab", b"1234", b"4111 1111 1111 1111", b"+1 (415) 555-2671", b"jane.doe@example.com",
              "josé@exämple.de".encode(), "Zoë 0123".encode(), b"\xff\xfe broken utf-8", b"-- .. //", b"a\x00b",
              b"mail jane@example.com, card 4111 1111 1111 1111, ssn 123-45-6789", None]
    rows = [datarow([b"id", value, b"tail"]) for value in values]
    for strategy in strategies:
        both((column(1, strategy),), rows)
        both((column(1, strategy, textual=False),), rows)
        both((detect(1, strategy),), rows)


# ------------------------------------------------------------------------------- differential


def _random_value(rng: random.Random) -> bytes | None:
    roll = rng.random()
    if roll < 0.1:
        return None
    if roll < 0.15:
        return b""
    if roll < 0.55:
        alphabet = "abcXYZ0123456789 -.()+/@_"
        return "".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 40))).encode()
    if roll < 0.7:
        alphabet = "aé€ 1-💳ß"
        return "".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 20))).encode()
    if roll < 0.8:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 30)))
    return rng.choice([b"jane.doe@example.com", b"4111 1111 1111 1111", b"123-45-6789", b"call 415-555-2671",
                       b"to bob@example.org and 5500 0000 0000 0004"])


def _random_strategy(rng: random.Random) -> MaskStrategy:
    kind = rng.choice(["redact", "partial", "partial", "partial", "hash", "null"])
    if kind == "redact":
        return MaskStrategy.redact(rng.choice([None, "#", "[gone]", "ø"]))
    if kind == "partial":
        return MaskStrategy.partial(rng.randrange(0, 8), mask_char=rng.choice("*x•#"),
                                    separators=rng.choice([" -.()+/", "", "-", " @.", "é-"]))
    if kind == "hash":
        return MaskStrategy.hash(length=rng.randrange(8, 40), encoding=rng.choice(["hex", "base32"]))
    return MaskStrategy.null()


@needs_compiled
def test_random_plans_and_rows_are_byte_identical() -> None:
    rng = random.Random(20240601)
    for _ in range(150):
        width = rng.randrange(1, 12)
        indexes = sorted(rng.sample(range(width), rng.randrange(1, width + 1)))
        plan = []
        for index in indexes:
            if rng.random() < 0.2:
                plan.append(detect(index, _random_strategy(rng)))
            else:
                plan.append(column(index, _random_strategy(rng), textual=rng.random() < 0.9))
        rows = []
        for _ in range(60):
            n = width if rng.random() < 0.85 else rng.randrange(0, width + 3)
            rows.append(datarow([_random_value(rng) for _ in range(n)]))
        both(tuple(plan), rows)


# ---------------------------------------------------------------------------- fallback
# (build freshness of every compiled accelerator: tests/unit/test_compiled_accelerators.py)


def test_fallback_warns_once_and_masks_the_same(monkeypatch: pytest.MonkeyPatch,
                                                caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(rowmask, "_FAST", None)
    monkeypatch.setattr(rowmask, "_FAST_PROBLEM", "the compiled DataRow masker is not built (test)")
    monkeypatch.setattr(compiled, "_warned", set())
    plan = (column(0, MaskStrategy.partial(4)),)
    with caplog.at_level(logging.WARNING, logger="wardgate.masking"):
        first = ResultMasker(plan, KEY, MaskReport())
        second = ResultMasker(plan, KEY, MaskReport())
    assert [r.getMessage() for r in caplog.records].count(
        "the compiled DataRow masker is not built (test); masking rows with the Python implementation "
        "(slower, same output)") == 1
    assert isinstance(first.walker, rowmask._PythonRowWalker)
    assert masked_values(second, [b"4111111111111111"]) == [b"************1111"]
    with pytest.raises(RuntimeError):
        ResultMasker(plan, KEY, MaskReport(), fast=True)


@needs_compiled
def test_a_failing_callback_leaves_the_walker_usable() -> None:
    fast = sys.modules["wardgate.protocols.postgres._rowmask_fast"]

    def call(raw: bytes) -> bytes | None:
        if raw == b"boom":
            raise RuntimeError("boom")
        return None if raw == b"same" else b"\x00\x00\x00\x01!"

    def wrong(raw: bytes):
        return "not bytes"

    walker = fast.RowWalker(((0, 0, fast.CALL, call), (1, 1, fast.PARTIAL, (4, "*", " ", call)),
                             (2, 2, fast.CALL, call)), 2)
    with pytest.raises(RuntimeError):
        walker.mask_row(datarow([b"x", "é".encode(), b"boom"]))
    assert walker.mask_row(datarow([b"same", b"abcdefgh", b"same"])) == datarow([b"same", b"****efgh", b"same"])
    assert walker.mask_row(datarow([b"same", "é".encode(), b"y"])) == datarow([b"same", b"!", b"!"])
    assert walker.take_counts() == [(0, 1), (1, 3), (2, 1)]
    assert walker.take_counts() == []
    with pytest.raises(TypeError):
        fast.RowWalker(((0, 0, fast.CALL, wrong),), 0).mask_row(datarow([b"x"]))
    with pytest.raises(ValueError):
        fast.RowWalker(((1, 0, fast.CONSTANT, b"x"), (0, 1, fast.CONSTANT, b"y")), 1)  # not ascending
