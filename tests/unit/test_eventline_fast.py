"""The compiled audit event line formatter (``_eventline_fast``) returns exactly what the Python
reference (``audit._event_line_python``) returns: a different byte would break every hash chain
the verifier recomputes. (Build freshness: tests/unit/test_compiled_accelerators.py.)"""

from __future__ import annotations

import hashlib
import random

import orjson
import pytest

from wardgate.core import audit

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
