"""The compiled audit event line formatter (``_eventline_fast``) returns exactly what the Python
reference (``audit._event_line_python``) returns: a different byte would break every hash chain
the verifier recomputes. Also: a stale or missing build is not used."""

from __future__ import annotations

import hashlib
import random
import sys
import types
from pathlib import Path

import orjson
import pytest

from wardgate.core import audit
from wardgate.core.compiled import load_compiled

needs_compiled = pytest.mark.skipif(audit._EVENTLINE_FAST is None,
                                    reason="compiled event line formatter not in use (not built, stale, or "
                                           "WARDGATE_AUDIT_PYTHON)")


@needs_compiled
def test_compiled_and_python_lines_are_identical_on_random_events() -> None:
    fast = audit._EVENTLINE_FAST.event_line
    rng = random.Random(7)
    prev = audit.GENESIS_HASH.encode()
    for n in range(20000):
        sid = (f"{rng.getrandbits(52):013x}{rng.getrandbits(48):012x}" if n % 7 else "gateway-1787945890be").encode()
        seq = rng.choice([1, 9, 999_999, 1_000_000, 123_456_789_012, rng.randrange(1, 1 << 40)])
        # times across years, exact seconds, just below the next second, and the same second repeated
        now = rng.choice([1_700_000_000.0, 1_799_999_999.999999, 4_102_444_800.5, 1.25e9 + rng.random(),
                          float(rng.randrange(1, 4_000_000_000)) + rng.random()])
        event_type = rng.choice([b"command.decided", b"command.result", b"session.ended", b"x"])
        members = rng.choice([b"", orjson.dumps({"statement": "SELECT 'é', \x00" * rng.randrange(0, 40),
                                                 "rows": rng.randrange(-5, 10**12)})[1:-1]])
        fixed = rng.choice([b"", b',"v":1,"session":"s","identity":null',
                            b"," + orjson.dumps({"gateway": "g" * rng.randrange(0, 300)})[1:-1]])
        expected = audit._event_line_python(sid, seq, now, event_type, members, fixed, prev)
        got = fast(sid, seq, now, event_type, members, fixed, prev)
        assert got == expected, (sid, seq, now, event_type, members, fixed)
        assert got[1] == hashlib.sha256(got[0]).hexdigest().encode()
        prev = got[1]
    assert orjson.loads(got[0])["seq"] == seq


@needs_compiled
def test_compiled_module_matches_its_source() -> None:
    source = Path(audit.__file__).with_name("_eventline_fast.pyx")
    assert audit._EVENTLINE_FAST.SOURCE_SHA256 == hashlib.sha256(source.read_bytes()).hexdigest()


def test_stale_or_missing_compiled_formatter_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    name = "wardgate.core._eventline_fast"
    source = Path(audit.__file__).with_name("_eventline_fast.pyx")
    monkeypatch.delenv("WARDGATE_AUDIT_PYTHON", raising=False)

    def load():
        return load_compiled(name, source, what="audit event line formatter", disable_env="WARDGATE_AUDIT_PYTHON")

    stale = types.ModuleType(name)
    stale.SOURCE_SHA256 = "0" * 64
    stale.__file__ = "/nowhere/_eventline_fast.so"
    monkeypatch.setitem(sys.modules, name, stale)
    module, problem = load()
    assert module is None and "stale" in problem
    monkeypatch.setitem(sys.modules, name, None)
    module, problem = load()
    assert module is None and "not built" in problem
    monkeypatch.setenv("WARDGATE_AUDIT_PYTHON", "1")
    assert load() == (None, None)


def test_compiled_accelerators_are_in_use_where_required() -> None:
    """CI sets WARDGATE_REQUIRE_COMPILED: there, a missing compiler or header must fail the run
    instead of silently testing (and benchmarking) only the Python fallbacks."""
    import os

    from wardgate.protocols.postgres import rowmask

    if os.environ.get("WARDGATE_REQUIRE_COMPILED", "") in ("", "0"):
        pytest.skip("WARDGATE_REQUIRE_COMPILED is not set")
    assert audit._EVENTLINE_FAST is not None, audit._EVENTLINE_PROBLEM
    assert rowmask.fast_available(), rowmask._FAST_PROBLEM
