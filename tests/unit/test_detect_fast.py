"""The compiled detector prefilter (``_detect_fast.possible``) returns exactly what the Python reference
(``masking._possible_python``) returns, for every selection of detectors, on the differential corpus
and on random texts made of the characters and literals the prefilter looks for (at the edges of the
text, glued, cut short, non-ASCII around them). A detector wrongly dropped would leave a secret unmasked;
one wrongly kept only costs time, but the two must agree exactly all the same. Also: the build is
current, and ``WARDGATE_DETECT_PYTHON`` turns it off."""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

import pytest
from test_masking_differential import CORPUS

from wardgate.core import compiled, masking

fast = masking._DETECT_FAST
needs_fast = pytest.mark.skipif(fast is None, reason="compiled detector prefilter not in use (not built, stale, "
                                                     "or WARDGATE_DETECT_PYTHON)")
reference = masking._possible_python
EVERY = (1 << len(masking.PRIORITY)) - 1
SELECTIONS = [EVERY, masking._selection(tuple(masking.PRIORITY[:11]))[0]] + [1 << i for i in range(len(masking.PRIORITY))]

PIECES = ["A", "@", "-", "+", "e", "E", "g", "G", "eyJ", "earer", "EARER", "gh", "gl", "github_pat_", "GR1348941",
          "-----BEGIN", "-----BEGI", "GR134894", "github_pat", "ey", "eare", "0", "1", "9", "12", "123", "1234",
          "123-45-6789", "12-45-6789", "123-45-678", "GB82", "G82", "gB82", "GB8", " ", "\n", ".", "_", "/", "=",
          "é", "📧", "\ud800", "٤", "x" * 19, "x" * 20, "x" * 39, "x" * 40, "aA1+/_-", "ü", "a", "Z"]


def _random_texts(count: int) -> list[str]:
    rng = random.Random(11)
    texts = []
    for _ in range(count):
        texts.append("".join(rng.choice(PIECES) for _ in range(rng.randint(0, 14))))
    for _ in range(count // 4):  # long texts around the length gate and past 64 characters
        texts.append("".join(rng.choice(PIECES) for _ in range(rng.randint(20, 60))))
    return texts


@needs_fast
@pytest.mark.parametrize("selected", SELECTIONS, ids=lambda s: f"mask{s}")
def test_compiled_prefilter_matches_the_reference(selected: int) -> None:
    texts = CORPUS + _random_texts(6000)
    for text in texts:
        n = len(text)
        assert fast.possible(text, n, selected) == reference(text, n, selected), (text, selected)


@needs_fast
def test_compiled_prefilter_random_selections() -> None:
    rng = random.Random(5)
    for text in _random_texts(4000):
        selected = rng.randrange(1, EVERY + 1)
        n = len(text)
        assert fast.possible(text, n, selected) == reference(text, n, selected), (text, selected)


@needs_fast
def test_compiled_prefilter_checks_its_arguments() -> None:
    with pytest.raises(ValueError):
        fast.possible("abc", 4, EVERY)  # n must be the text's length
    with pytest.raises(TypeError):
        fast.possible(b"abc", 3, EVERY)
    with pytest.raises(ValueError):
        fast.set_by_length((0,) * 63)


@needs_fast
def test_compiled_prefilter_is_current() -> None:
    source = Path(masking.__file__).with_name("_detect_fast.pyx")
    assert fast.SOURCE_SHA256 == hashlib.sha256(source.read_bytes()).hexdigest()
    assert fast.PRIORITY == masking.PRIORITY
    assert masking._possible is fast.possible


def test_disabled_or_missing_prefilter_falls_back(monkeypatch) -> None:
    monkeypatch.setenv("WARDGATE_DETECT_PYTHON", "1")
    assert masking._load_fast() == (None, None)
    monkeypatch.delenv("WARDGATE_DETECT_PYTHON")
    module, problem = compiled.load_compiled("wardgate.core._detect_fast_missing", Path(masking.__file__),
                                             what="detector prefilter", disable_env="WARDGATE_DETECT_PYTHON")
    assert module is None and "not built" in problem


def test_required_in_ci() -> None:
    """As test_compiled_accelerators.py for the others: with ``WARDGATE_REQUIRE_COMPILED`` set (CI),
    the compiled prefilter must be in use, not silently replaced by the fallback."""
    if os.environ.get("WARDGATE_REQUIRE_COMPILED", "") in ("", "0"):
        pytest.skip("WARDGATE_REQUIRE_COMPILED not set")
    assert fast is not None, masking._DETECT_PROBLEM
