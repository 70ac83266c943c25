"""``workers: auto``: one worker per CPU the process may run on, but no more than its cgroup's CPU quota.

GIVEN a fake cgroup tree (``proc/self/cgroup`` and ``sys/fs/cgroup`` under a temporary directory),
THEN a v2 quota of 1.5 CPUs gives 2 workers, ``max`` gives the affinity, the tightest of the cgroup and
its parents wins, v1 is read when v2 is absent, and garbled or missing files are ignored rather than
failing start-up; the affinity still bounds the count when it is the smaller.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from wardgate.config import GatewayConfig
from wardgate.cpus import auto_worker_count, cgroup_cpu_limit


@pytest.fixture
def fake_cgroup_tree(tmp_path: Path):
    """A fake root directory holding ``proc/self/cgroup`` and ``sys/fs/cgroup`` files, for
    ``cgroup_cpu_limit(root)``: ``make(proc_self_cgroup, {relative path under sys/fs/cgroup: text})``."""

    def make(proc_self_cgroup: str | None, files: dict[str, str | bytes]) -> Path:
        if proc_self_cgroup is not None:
            (tmp_path / "proc/self").mkdir(parents=True)
            (tmp_path / "proc/self/cgroup").write_text(proc_self_cgroup)
        base = tmp_path / "sys/fs/cgroup"
        base.mkdir(parents=True)
        for relative, text in files.items():
            path = base / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(text, bytes):
                path.write_bytes(text)
            else:
                path.write_text(text)
        return tmp_path

    return make


V2_ONLY = "0::/kubepods/pod1/ctr\n"
V1_HYBRID = "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n1:name=systemd:/docker/abc\n0::/docker/abc\n"


def test_v2_quota_is_rounded_up(fake_cgroup_tree) -> None:
    root = fake_cgroup_tree(V2_ONLY, {"kubepods/pod1/ctr/cpu.max": "150000 100000\n"})
    assert cgroup_cpu_limit(root) == 1.5
    assert auto_worker_count(root, affinity=8) == 2


def test_v2_exact_quota(fake_cgroup_tree) -> None:
    root = fake_cgroup_tree(V2_ONLY, {"kubepods/pod1/ctr/cpu.max": "200000 100000\n"})
    assert auto_worker_count(root, affinity=8) == 2


def test_v2_max_is_unlimited(fake_cgroup_tree) -> None:
    root = fake_cgroup_tree(V2_ONLY, {"kubepods/pod1/ctr/cpu.max": "max 100000\n", "kubepods/cpu.max": "max 100000\n"})
    assert cgroup_cpu_limit(root) is None
    assert auto_worker_count(root, affinity=6) == 6


def test_v2_a_tighter_parent_wins(fake_cgroup_tree) -> None:
    root = fake_cgroup_tree(V2_ONLY, {"kubepods/pod1/ctr/cpu.max": "400000 100000\n",
                                      "kubepods/pod1/cpu.max": "50000 100000\n",
                                      "kubepods/cpu.max": "max 100000\n"})
    assert cgroup_cpu_limit(root) == 0.5
    assert auto_worker_count(root, affinity=8) == 1


def test_v2_namespace_root_is_read(fake_cgroup_tree) -> None:
    # In a container with its own cgroup namespace the process's cgroup is "/": the mount's own cpu.max.
    root = fake_cgroup_tree("0::/\n", {"cpu.max": "300000 100000\n"})
    assert auto_worker_count(root, affinity=16) == 3


def test_v1_when_v2_is_absent(fake_cgroup_tree) -> None:
    root = fake_cgroup_tree(V1_HYBRID, {"cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "250000\n",
                                        "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
                                        "unified/docker/abc/cgroup.procs": "1\n"})
    assert cgroup_cpu_limit(root) == 2.5
    assert auto_worker_count(root, affinity=8) == 3


def test_v1_unlimited_and_a_tighter_parent(fake_cgroup_tree) -> None:
    unlimited = {"cpu/docker/abc/cpu.cfs_quota_us": "-1\n", "cpu/docker/abc/cpu.cfs_period_us": "100000\n"}
    root = fake_cgroup_tree("4:cpu:/docker/abc\n", unlimited)
    assert cgroup_cpu_limit(root) is None
    assert auto_worker_count(root, affinity=4) == 4
    (root / "sys/fs/cgroup/cpu/docker/cpu.cfs_quota_us").write_text("100000\n")
    (root / "sys/fs/cgroup/cpu/docker/cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_limit(root) == 1.0
    assert auto_worker_count(root, affinity=4) == 1


@pytest.mark.parametrize("garbage", ["", "lots of cpus\n", "150000\n", "0 100000\n", "150000 0\n", "-5 100000\n",
                                     b"\xff\xfe\n"])
def test_a_garbled_file_is_ignored(fake_cgroup_tree, garbage, caplog) -> None:
    root = fake_cgroup_tree(V2_ONLY, {"kubepods/pod1/ctr/cpu.max": garbage})
    with caplog.at_level(logging.DEBUG, logger="wardgate.cpus"):
        assert cgroup_cpu_limit(root) is None
        assert auto_worker_count(root, affinity=4) == 4
    assert "cpu.max ignored" in caplog.text


def test_a_garbled_file_does_not_hide_a_readable_parent(fake_cgroup_tree) -> None:
    root = fake_cgroup_tree(V2_ONLY, {"kubepods/pod1/ctr/cpu.max": "garbage", "kubepods/cpu.max": "100000 100000"})
    assert auto_worker_count(root, affinity=4) == 1


def test_garbled_v1_files_are_ignored(fake_cgroup_tree) -> None:
    root = fake_cgroup_tree("4:cpu:/x\n", {"cpu/x/cpu.cfs_quota_us": "many\n", "cpu/x/cpu.cfs_period_us": "100000\n"})
    assert cgroup_cpu_limit(root) is None
    assert auto_worker_count(root, affinity=2) == 2


@pytest.mark.parametrize("proc_self_cgroup", [None, "", "garbage without colons\n", "0::/nowhere\n",
                                              "4:cpu:/nowhere\n"])
def test_missing_files_give_no_limit(fake_cgroup_tree, proc_self_cgroup) -> None:
    root = fake_cgroup_tree(proc_self_cgroup, {})
    assert cgroup_cpu_limit(root) is None
    assert auto_worker_count(root, affinity=3) == 3


def test_an_unreadable_root_gives_no_limit(tmp_path) -> None:
    assert cgroup_cpu_limit(tmp_path / "does-not-exist") is None


def test_the_affinity_bounds_the_count_when_it_is_smaller(fake_cgroup_tree) -> None:
    root = fake_cgroup_tree(V2_ONLY, {"kubepods/pod1/ctr/cpu.max": "800000 100000\n"})
    assert auto_worker_count(root, affinity=2) == 2


def test_the_count_stays_from_1_to_127(fake_cgroup_tree) -> None:
    root = fake_cgroup_tree(V2_ONLY, {"kubepods/pod1/ctr/cpu.max": "1000 100000\n"})  # 0.01 CPU
    assert auto_worker_count(root, affinity=8) == 1
    assert auto_worker_count(root / "nothing-here", affinity=512) == 127
    assert auto_worker_count(root / "nothing-here", affinity=0) == 1


def test_workers_auto_uses_it(monkeypatch) -> None:
    import wardgate.cpus as cpus

    monkeypatch.setattr(cpus, "cgroup_cpu_limit", lambda root="/": 1.5)
    monkeypatch.setattr(cpus.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    base = {"listeners": [{"protocol": "postgres", "address": "127.0.0.1:0"}], "dev_issuer": {"enabled": True},
            "resources": {}, "workers": "auto"}
    assert GatewayConfig.model_validate(base).worker_count() == 2
