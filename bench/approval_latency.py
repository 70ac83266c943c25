"""Approval benchmark (issue 5): how long after an approver decides does the held statement's result
reach the client, and do held statements slow other sessions?

One ``wardgate serve`` with the shipped ``ai-agent-default`` policy in front of a throwaway
PostgreSQL, embedded approval backends (SQLite store, in-process queue, the control port's REST API):

1. **Decision → first result.** ``--rounds`` times: an agent's ``INSERT`` on the production resource is
   held; as soon as its NOTICE arrives, a DBA approves through ``POST /approvals/<id>/approve`` (what
   ``wardgate approvals approve`` calls); we time from the approval call's return (the decision is
   stored) to the client's result. Target: under 500 ms.
2. **Other sessions.** pgbench select-only (``--clients``) through the same gateway, with and without
   ``--held`` sessions each holding a statement for the whole run, alternated ``--pairs`` times in one
   run. Target: TPS with held statements within 5 % of TPS without.

Usage: ``python bench/approval_latency.py [--rounds 20] [--seconds 8] [--pairs 2]``
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import psycopg

from pg_overhead import (CLIENT_USER, RESOURCE, Endpoint, GatewayProcess, run_pgbench, start_postgres)
from wardgate.devtools.pgserver import free_port

REPO = Path(__file__).resolve().parents[1]
POLICY = REPO / "policies" / "ai-agent-default" / "policy.yaml"
HELD = re.compile(r"held for approval \(request (\S+),")


def mint(gateway: GatewayProcess, subject: str, groups: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "wardgate.cli", "token", "--config", str(gateway.config_path), "--sub", subject,
         "--groups", groups, "--ttl", "1h"], check=True, capture_output=True, text=True, env=gateway.env,
    ).stdout.strip()


def approve(control: str, token: str, request_id: str) -> None:
    call = urllib.request.Request(f"{control}/approvals/{request_id}/approve", method="POST",
                                  data=json.dumps({"reason": "bench"}).encode(),
                                  headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(call, timeout=10) as response:
        if response.status != 200:
            raise RuntimeError(f"approve answered {response.status}")


class Held:
    """One client whose statement waits for approval; ``request_id`` once the NOTICE arrived."""

    def __init__(self, dsn: str, sql: str):
        self.conn = psycopg.connect(dsn, autocommit=True)
        self.request_id: str | None = None
        self.noticed = threading.Event()
        self.done = threading.Event()
        self.finished = 0.0
        self.error: Exception | None = None
        self.conn.add_notice_handler(self._notice)
        threading.Thread(target=self._run, args=(sql,), daemon=True).start()

    def _notice(self, diag) -> None:
        match = HELD.search(diag.message_primary or "")
        if match:
            self.request_id = match.group(1)
            self.noticed.set()

    def _run(self, sql: str) -> None:
        try:
            self.conn.execute(sql)
        except Exception as exc:  # reported by the caller
            self.error = exc
        self.finished = time.perf_counter()
        self.done.set()

    def close(self) -> None:
        try:
            self.conn.close()
        except Exception:
            pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--held", type=int, default=4)
    args = parser.parse_args(argv)

    pg = start_postgres(scale=1, tls_dir=None)
    workdir = Path(tempfile.mkdtemp(prefix="wardgate-bench-approvals-"))
    gateway = GatewayProcess(mode="write", directory=workdir, port=free_port(), control_port=free_port(),
                             name="approvals", policy_text=POLICY.read_text(), groups="ai-agents")
    held_sessions: list[Held] = []
    try:
        pg.run_sql("CREATE TABLE bench_held (id serial PRIMARY KEY, v int); "
                   f"ALTER TABLE bench_held OWNER TO {pg.service_user};")
        gateway.start(pg)
        control = f"http://127.0.0.1:{gateway.control_port}"
        dba = mint(gateway, "dana", "dba")
        endpoint = Endpoint("policy", "write", "127.0.0.1", gateway.port, CLIENT_USER, RESOURCE, gateway.token,
                            "disable", None, gateway)
        dsn = " ".join(f"{k}={v}" for k, v in endpoint.libpq_kwargs().items())

        print(f"\n1. approval decision → first result ({args.rounds} rounds)", flush=True)
        latencies, totals = [], []
        for n in range(args.rounds):
            held = Held(dsn, f"INSERT INTO bench_held (v) VALUES ({n})")
            if not held.noticed.wait(15):
                raise RuntimeError(f"no held notice (error: {held.error})")
            started = time.perf_counter()
            approve(control, dba, held.request_id)
            decided = time.perf_counter()
            if not held.done.wait(15) or held.error is not None:
                raise RuntimeError(f"the approved statement did not run: {held.error}")
            latencies.append((held.finished - decided) * 1000)
            totals.append((held.finished - started) * 1000)
            held.close()
        p95 = sorted(latencies)[max(0, int(len(latencies) * 0.95) - 1)]
        print(f"   decision stored → result: median {statistics.median(latencies):.0f} ms, p95 {p95:.0f} ms, "
              f"max {max(latencies):.0f} ms")
        print(f"   approve call started → result: median {statistics.median(totals):.0f} ms")
        print(f"   target < 500 ms: {'PASS' if max(latencies) < 500 else 'FAIL'} (max)")

        print(f"\n2. pgbench -S, {args.clients} clients, {args.seconds}s, with/without {args.held} held "
              f"statements ({args.pairs} pairs, alternated)", flush=True)
        pgbench = pg.binary("pgbench")
        without, with_held = [], []
        for pair in range(args.pairs):
            for holding in (False, True):
                if holding:
                    held_sessions = [Held(dsn, f"INSERT INTO bench_held (v) VALUES (-{i})") for i in range(args.held)]
                    for h in held_sessions:
                        if not h.noticed.wait(15):
                            raise RuntimeError("a held session got no notice")
                run = run_pgbench(pgbench, endpoint, "simple", args.seconds, args.clients, args.clients, pair)
                if run.error:
                    raise RuntimeError(run.error)
                (with_held if holding else without).append(run.tps)
                print(f"   pair {pair + 1}: {'held   ' if holding else 'no held'} {run.tps:8.0f} TPS", flush=True)
                for h in held_sessions:
                    h.close()
                held_sessions = []
        ratio = statistics.median(with_held) / statistics.median(without)
        print(f"   median TPS with held / without: {ratio:.3f}  "
              f"target ≥ 0.95: {'PASS' if ratio >= 0.95 else 'FAIL'}")
        return 0
    finally:
        for h in held_sessions:
            h.close()
        gateway.stop()
        pg.stop()


if __name__ == "__main__":
    sys.exit(main())
