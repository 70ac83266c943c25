"""How many CPUs this process may use: its affinity, bounded by its cgroup's CPU quota.

A container is usually limited by a cgroup quota (``cpus: 1.5``) while it sees every CPU of its host,
so counting CPUs alone over-counts workers (see ``workers: auto`` in docs/workers.md)."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

log = logging.getLogger("wardgate.cpus")


def _lineage(base: Path, path: str) -> list[Path]:
    """The directory of cgroup ``path`` under ``base``, then each of its parents up to ``base``."""
    parts = [part for part in path.split("/") if part and part not in (".", "..")]
    return [base.joinpath(*parts[:depth]) for depth in range(len(parts), -1, -1)]


def _cpus(quota: int, period: int) -> float:
    if quota <= 0 or period <= 0:
        raise ValueError(f"quota {quota}, period {period}")
    return quota / period


def _cgroup_v2_limit(root: Path, path: str) -> tuple[bool, float | None]:
    """(whether any ``cpu.max`` was read, the tightest quota in CPUs) of cgroup ``path`` and its parents."""
    found, tightest = False, None
    for directory in _lineage(root / "sys/fs/cgroup", path):
        file = directory / "cpu.max"
        try:
            fields = file.read_text().split()
            limit = None if fields[0] == "max" else _cpus(int(fields[0]), int(fields[1]))
        except FileNotFoundError:
            continue
        except (OSError, ValueError, IndexError, UnicodeDecodeError) as exc:
            log.debug("CPU quota: %s ignored: %s", file, exc)
            continue
        found = True
        if limit is not None and (tightest is None or limit < tightest):
            tightest = limit
    return found, tightest


def _cgroup_v1_limit(root: Path, controllers: str, path: str) -> float | None:
    """The tightest ``cpu.cfs_quota_us / cpu.cfs_period_us`` of cgroup ``path`` and its parents (v1)."""
    mount = next((directory for name in dict.fromkeys(["cpu", controllers, "cpu,cpuacct", "cpuacct,cpu"])
                  if (directory := root / "sys/fs/cgroup" / name).is_dir()), None)
    if mount is None:
        return None
    tightest = None
    for directory in _lineage(mount, path):
        try:
            quota = int((directory / "cpu.cfs_quota_us").read_text())
            if quota == -1:
                continue
            limit = _cpus(quota, int((directory / "cpu.cfs_period_us").read_text()))
        except FileNotFoundError:
            continue
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            log.debug("CPU quota: %s ignored: %s", directory, exc)
            continue
        if tightest is None or limit < tightest:
            tightest = limit
    return tightest


def cgroup_cpu_limit(root: str | Path = "/") -> float | None:
    """The CPU quota of this process's cgroup in CPUs (1.5 for ``150000 100000``), the tightest of its
    cgroup and its parents; ``None`` when there is none or none can be read. cgroup v2 (``cpu.max``),
    else v1 (``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``). ``root`` holds ``proc`` and ``sys`` (tests
    give a fake tree). Never raises: a file that cannot be read or parsed is ignored (logged at debug)."""
    root = Path(root)
    try:
        lines = (root / "proc/self/cgroup").read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        log.debug("CPU quota: %s", exc)
        return None
    v1: list[tuple[str, str]] = []
    v2_path = None
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, sep, path = rest.partition(":")
        if not sep:
            continue
        if hierarchy == "0" and controllers == "":
            v2_path = path
        elif "cpu" in controllers.split(","):
            v1.append((controllers, path))
    if v2_path is not None:
        found, limit = _cgroup_v2_limit(root, v2_path)
        if found:  # else a hybrid host: the cpu controller is on v1
            return limit
    limits = [limit for controllers, path in v1 if (limit := _cgroup_v1_limit(root, controllers, path)) is not None]
    return min(limits, default=None)


def auto_worker_count(root: str | Path = "/", affinity: int | None = None) -> int:
    """``workers: auto``: the CPUs this process may run on (``affinity``, default its own), but no more
    than its cgroup CPU quota rounded up; from 1 to 127."""
    if affinity is None:
        affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    count = affinity
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        count = min(count, math.ceil(limit))
    return max(1, min(127, count))
