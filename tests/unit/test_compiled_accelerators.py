"""Every compiled accelerator (``setup.py``) is used only when it was built from the ``.pyx`` next
to it: a stale, hand-compiled or missing module falls back to the Python implementation, an
environment variable turns it off, and CI (``WARDGATE_REQUIRE_COMPILED``) fails when one is not in
use instead of silently testing only the fallbacks. What each one computes is tested against its
Python reference in ``test_rowmask_fast.py``, ``test_eventchain_fast.py``, ``test_sqltemplate_fast.py``,
``test_relay_fast.py`` and ``test_detect_fast.py``."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from wardgate import cli
from wardgate.core import audit, compiled, masking, sqlclass
from wardgate.protocols.postgres import engine, rowmask

# (module, its .pyx, the env var forcing Python, the loader its user calls, the module in use or None)
ACCELERATORS = {
    "DataRow masker": ("wardgate.protocols.postgres._rowmask_fast", Path(rowmask.__file__).with_name("_rowmask_fast.pyx"),
                   "WARDGATE_MASKING_PYTHON", rowmask._load_fast, lambda: rowmask._FAST, lambda: rowmask._FAST_PROBLEM),
    "audit event chain": ("wardgate.core._eventchain_fast", Path(audit.__file__).with_name("_eventchain_fast.pyx"),
                          "WARDGATE_AUDIT_PYTHON", audit._load_fast, lambda: audit._EVENTCHAIN_FAST,
                          lambda: audit._EVENTCHAIN_PROBLEM),
    "SQL template splitter": ("wardgate.core._sqltemplate_fast", Path(sqlclass.__file__).with_name("_sqltemplate_fast.pyx"),
                              "WARDGATE_SQLCLASS_PYTHON", sqlclass._load_fast, lambda: sqlclass._TEMPLATE_FAST,
                              lambda: sqlclass._TEMPLATE_PROBLEM),
    "backend relay loop": ("wardgate.protocols.postgres._relay_fast", Path(engine.__file__).with_name("_relay_fast.pyx"),
                           "WARDGATE_RELAY_PYTHON", engine._load_fast, lambda: engine._RELAY_FAST,
                           lambda: engine._RELAY_PROBLEM),
    "detector prefilter": ("wardgate.core._detect_fast", Path(masking.__file__).with_name("_detect_fast.pyx"),
                           "WARDGATE_DETECT_PYTHON", masking._load_fast, lambda: masking._DETECT_FAST,
                           lambda: masking._DETECT_PROBLEM),
}


@pytest.mark.parametrize("name", ACCELERATORS)
def test_module_in_use_matches_its_source(name: str) -> None:
    module_name, source, _, _, in_use, _ = ACCELERATORS[name]
    if in_use() is None:
        pytest.skip(f"compiled {name} not in use (not built, stale, or disabled)")
    assert sys.modules[module_name].SOURCE_SHA256 == hashlib.sha256(source.read_bytes()).hexdigest()


@pytest.mark.parametrize("name", ACCELERATORS)
def test_stale_hand_compiled_or_missing_module_is_not_used(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    module_name, _, disable_env, load, _, _ = ACCELERATORS[name]
    monkeypatch.delenv(disable_env, raising=False)
    monkeypatch.setattr(compiled, "_status", dict(compiled._status))  # these loads must not stick
    stale = types.ModuleType(module_name)
    stale.SOURCE_SHA256 = "0" * 64  # built from another version of the .pyx
    stale.__file__ = "/nowhere/stale.so"
    monkeypatch.setitem(sys.modules, module_name, stale)
    module, problem = load()
    assert module is None and problem is not None and "stale" in problem
    unbuilt = types.ModuleType(module_name)
    unbuilt.__file__ = "/nowhere/unbuilt.so"  # compiled by hand, without setup.py: no hash
    monkeypatch.setitem(sys.modules, module_name, unbuilt)
    assert load()[0] is None
    monkeypatch.setitem(sys.modules, module_name, None)  # import fails
    module, problem = load()
    assert module is None and "not built" in problem
    monkeypatch.setenv(disable_env, "1")
    assert load() == (None, None)


@pytest.mark.parametrize("name", ACCELERATORS)
def test_in_use_where_required(name: str) -> None:
    if os.environ.get("WARDGATE_REQUIRE_COMPILED", "") in ("", "0"):
        pytest.skip("WARDGATE_REQUIRE_COMPILED is not set")
    _, _, _, _, in_use, problem = ACCELERATORS[name]
    assert in_use() is not None, problem()


def test_the_accelerators_command_names_each_one_and_fails_on_a_fallback(capsys, monkeypatch) -> None:
    """``wardgate accelerators`` (run by the image build) lists every accelerator as the gateway loaded
    it, and exits 1 when one fell back to Python, naming why."""
    code = cli.main(["accelerators"])
    lines = capsys.readouterr().out.splitlines()
    for name, (_, _, disable_env, _, in_use, problem) in ACCELERATORS.items():
        [line] = [line for line in lines if line.startswith(name + " ")]
        if in_use() is not None:
            assert " in use " in line, line
        elif problem() is None:
            assert " off " in line and disable_env in line, line
        else:
            assert " fallback " in line and problem() in line, line
    assert len(lines) == len(ACCELERATORS)
    assert code == (1 if any(spec[5]() for spec in ACCELERATORS.values()) else 0)

    monkeypatch.setitem(compiled._status, "DataRow masker", ("fallback", "the compiled row masker is not built (test)"))
    assert cli.main(["accelerators"]) == 1
    assert "fallback  the compiled row masker is not built (test)" in capsys.readouterr().out


def test_an_accelerator_turned_off_on_purpose_is_reported_off_and_does_not_fail_the_command() -> None:
    env = {**os.environ, "WARDGATE_DETECT_PYTHON": "1"}
    result = subprocess.run([sys.executable, "-m", "wardgate.cli", "accelerators"], env=env,
                            capture_output=True, text=True, timeout=60)
    [line] = [line for line in result.stdout.splitlines() if line.startswith("detector prefilter ")]
    assert " off " in line and "WARDGATE_DETECT_PYTHON is set" in line, result.stdout
    assert result.returncode == (1 if " fallback " in result.stdout else 0), result.stdout
