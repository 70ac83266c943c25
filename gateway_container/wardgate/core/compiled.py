"""Optional compiled accelerators (Cython modules built by ``setup.py``), used only when current.

Each accelerator has a Python reference implementation that stays the fallback. A compiled module
carries the SHA-256 of the ``.pyx`` it was built from (``SOURCE_SHA256``); it is used only if that
matches the ``.pyx`` installed next to it, so an extension left over from an older source is never
used. An environment variable can turn an accelerator off (differential tests, debugging).
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
from pathlib import Path
from types import ModuleType


# what → (state, detail) of every accelerator loaded in this process: ("in use", the module's file),
# ("off", the variable that turned it off) or ("fallback", why not). `wardgate accelerators` prints it.
_status: dict[str, tuple[str, str]] = {}


def accelerator_status() -> dict[str, tuple[str, str]]:
    """What became of each accelerator this process loaded, by name (see ``_status``)."""
    return dict(_status)


def load_compiled(module: str, source: Path, *, what: str, disable_env: str) -> tuple[ModuleType | None, str | None]:
    """``(module, None)`` when the compiled ``module`` is built from ``source`` as it is now;
    ``(None, why not)`` otherwise; ``(None, None)`` when ``disable_env`` is set (asked for, no
    warning needed)."""
    compiled, problem = _load(module, source, what, disable_env)
    if compiled is not None:
        _status[what] = ("in use", str(compiled.__file__))
    elif problem is None:
        _status[what] = ("off", f"{disable_env} is set")
    else:
        _status[what] = ("fallback", problem)
    return compiled, problem


def _load(module: str, source: Path, what: str, disable_env: str) -> tuple[ModuleType | None, str | None]:
    if os.environ.get(disable_env, "") not in ("", "0"):
        return None, None
    try:
        compiled = importlib.import_module(module)
    except ImportError as exc:
        return None, f"the compiled {what} is not built ({exc})"
    try:
        digest = hashlib.sha256(Path(source).read_bytes()).hexdigest()
    except OSError as exc:
        return None, f"cannot check the compiled {what} against its source ({exc})"
    if getattr(compiled, "SOURCE_SHA256", "") != digest:
        return None, (f"the compiled {what} {Path(compiled.__file__).name} was built from another version "
                      f"of {Path(source).name} (stale build; reinstall with `pip install -e .`)")
    return compiled, None


_warned: set[str] = set()  # problems already logged in this process


def warn_fallback(problem: str | None, consequence: str, logger: logging.Logger) -> None:
    """Log once per process that a compiled accelerator is not in use: ``problem`` (as
    :func:`load_compiled` returned it; None: in use, or turned off on purpose) and ``consequence``
    (what runs instead)."""
    if problem is not None and problem not in _warned:
        _warned.add(problem)
        logger.warning("%s; %s", problem, consequence)
