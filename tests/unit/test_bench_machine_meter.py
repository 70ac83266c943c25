"""`make bench` accounts the machine's CPU per transaction: PostgreSQL's share includes backends that
have exited (the postmaster reaps them), and a run is charged only with what happened during it."""

from __future__ import annotations

import os
import subprocess
import sys
import types

# A stand-in postmaster: on each input line it forks a "backend" that burns CPU for the given seconds
# and exits, reaps it, and answers.
_POSTMASTER = """
import os, sys, time
for line in sys.stdin:
    pid = os.fork()
    if pid == 0:
        start = time.process_time()
        while time.process_time() - start < float(line):
            pass
        os._exit(0)
    os.waitpid(pid, 0)
    print("reaped", flush=True)
"""


def test_backends_that_exited_during_the_run_are_charged_to_it(bench) -> None:
    postmaster = subprocess.Popen([sys.executable, "-c", _POSTMASTER], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
    try:
        meter = bench.MachineMeter(postmaster.pid)
        # Before the run: a backend whose CPU time must not count.
        postmaster.stdin.write("0.2\n")
        postmaster.stdin.flush()
        assert postmaster.stdout.readline() == "reaped\n"
        run = bench.Run("direct", "-", "simple", 0, tps=1000.0, transactions=1000)
        before = meter.start()
        postmaster.stdin.write("0.3\n")
        postmaster.stdin.flush()
        assert postmaster.stdout.readline() == "reaped\n"
        meter.finish(before, run)
    finally:
        postmaster.stdin.close()
        postmaster.wait(timeout=10)
    # 0.3 s over 1000 transactions: 300 µs each (clock ticks of 10 ms; a loaded machine adds a little)
    assert 270 <= run.postgres_cpu_us_per_txn <= 450, run
    assert run.machine_us_per_txn >= run.postgres_cpu_us_per_txn - 30
    assert 0 <= run.machine_idle_us_per_txn <= run.machine_us_per_txn
    assert run.pgbench_cpu_us_per_txn is not None and run.pgbench_cpu_us_per_txn >= 0


def test_a_pgbench_that_used_no_cpu_reads_exactly_zero(bench, monkeypatch) -> None:
    # Counters for which (u + s) - u - s is a rounding error below zero (CI once failed on -1.8e-12).
    usage = types.SimpleNamespace(ru_utime=48.691382, ru_stime=25.022558)
    monkeypatch.setattr(bench.resource, "getrusage", lambda who: usage)
    monkeypatch.setattr(bench, "reaped_cpu_seconds", lambda pid: 1.0)
    monkeypatch.setattr(bench, "machine_seconds", lambda: (2.0, 4.0))
    monkeypatch.setattr(bench, "_children", lambda pid: [])
    meter = bench.MachineMeter(os.getpid())
    run = bench.Run("direct", "-", "simple", 0, tps=1000.0, transactions=1000)
    meter.finish(meter.start(), run)
    assert run.pgbench_cpu_us_per_txn == 0.0
    assert run.postgres_cpu_us_per_txn == 0.0
