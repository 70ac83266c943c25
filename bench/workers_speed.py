"""Worker processes benchmark: does ``workers: N`` add throughput, on which workload?

Two workloads through ``wardgate serve`` (recording ``write``) in one process and with ``--workers``
worker processes, next to a direct connection in the same rounds (order alternated per round):

1. **pgbench select-only** (allow-all policy): the gateway's work per transaction is small; pgbench and
   PostgreSQL need the CPUs as much as the gateway does.
2. **Masked reads** (the shipped ``ai-agent-default`` policy, an agent's token): each transaction reads
   20 rows of e-mail addresses and free-text notes, which the masking profile's column rules and
   detectors scan; the gateway's work dominates.

Printed per workload and path: median TPS, ratio to direct, gateway CPU per transaction (summed over
the supervisor and its workers) and the machine's idle share during the runs.

Usage: ``python bench/workers_speed.py [--rounds 5] [--seconds 10] [--workers 2]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from pg_overhead import (CLIENT_USER, DEFAULT_POLICY, POLICY_GROUPS, RESOURCE, Endpoint, GatewayProcess,
                         run_pgbench, start_postgres)
from wardgate.devtools.pgserver import free_port

ROWS = 10_000
READ_SCRIPT = "\\set a random(1, {last})\nSELECT id, email, note FROM people WHERE id BETWEEN :a AND :a + 19;\n"


def machine_idle() -> tuple[int, int]:
    """(idle + iowait, total) jiffies from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return values[3] + values[4], sum(values)


def run(pgbench: Path, endpoint: Endpoint, script: Path | None, seconds: int) -> tuple[float, float | None, float]:
    """(TPS, gateway CPU µs per transaction or None for direct, idle share) of one pgbench run."""
    idle_before = machine_idle()
    result = run_pgbench(pgbench, endpoint, "simple", seconds, 8, 1, script=script)
    idle_after = machine_idle()
    if result.tps is None:
        raise RuntimeError(f"pgbench through {endpoint.path} failed: {result.error}")
    idle = (idle_after[0] - idle_before[0]) / max(1, idle_after[1] - idle_before[1])
    return result.tps, result.gateway_cpu_us_per_txn, idle


def measure(title: str, pgbench: Path, endpoints: dict[str, Endpoint], script: Path | None, args) -> None:
    for endpoint in endpoints.values():  # warm-up: connections, caches
        run(pgbench, endpoint, script, 2)
    results: dict[str, list[tuple[float, float | None, float]]] = {name: [] for name in endpoints}
    for round_number in range(args.rounds):
        order = list(endpoints) if round_number % 2 == 0 else list(reversed(endpoints))
        for name in order:
            results[name].append(run(pgbench, endpoints[name], script, args.seconds))
        print(f"  round {round_number + 1}/{args.rounds}: " + ", ".join(
            f"{name} {results[name][-1][0]:.0f} TPS" for name in endpoints), flush=True)
    direct = statistics.median(tps for tps, _, _ in results["direct"])
    print(f"\n{title}\n{'path':<22}{'TPS':>9}{'ratio':>9}{'gw CPU/txn':>13}{'idle':>7}")
    for name, runs in results.items():
        tps = statistics.median(r[0] for r in runs)
        cpus = [r[1] for r in runs if r[1] is not None]
        cpu = f"{statistics.median(cpus):.1f} µs" if cpus else "–"
        idle = statistics.median(r[2] for r in runs)
        print(f"{name:<22}{tps:>9.0f}{tps / direct:>8.3f}×{cpu:>13}{idle:>7.0%}")
    print(flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2, help="worker processes of the second gateway")
    args = parser.parse_args(argv)
    if args.workers < 2 or args.rounds < 1 or args.seconds < 1:
        parser.error("--workers at least 2, --rounds and --seconds at least 1")
    workdir = Path(tempfile.mkdtemp(prefix="wardgate-workers-bench-"))
    pg = start_postgres(10, None)
    gateways: list[GatewayProcess] = []
    try:
        pg.run_sql(f"""CREATE TABLE people (id int PRIMARY KEY, email text, note text);
INSERT INTO people SELECT i, 'person' || i || '@example.com',
  'Customer ' || i || ' prefers deliveries before noon; call 415-555-' || lpad((i % 10000)::text, 4, '0')
FROM generate_series(1, {ROWS}) i;
ALTER TABLE people OWNER TO {pg.service_user};""", dbname=pg.dbname)
        script = workdir / "masked-read.sql"
        script.write_text(READ_SCRIPT.format(last=ROWS - 20))
        pgbench = pg.binary("pgbench")
        direct = Endpoint("direct", "-", pg.host, pg.port, pg.service_user, pg.dbname, pg.service_password,
                          "disable", None)

        def gateways_for(policy: str | None, groups: str) -> dict[str, Endpoint]:
            endpoints = {"direct": direct}
            for name, workers in (("gateway, 1 process", 1), (f"gateway, {args.workers} workers", args.workers)):
                gateway = GatewayProcess("write", workdir / f"gw-{len(gateways)}", free_port(), free_port(),
                                         name=name, policy_text=policy, groups=groups, workers=workers)
                gateways.append(gateway)
                gateway.start(pg)
                endpoints[name] = Endpoint("gateway", "write", "127.0.0.1", gateway.port, CLIENT_USER, RESOURCE,
                                           gateway.token, "disable", None, gateway)
            return endpoints

        print("1. pgbench select-only, allow-all, recording write, 8 clients", flush=True)
        measure("pgbench select-only (allow-all)", pgbench, gateways_for(None, "dev"), None, args)
        for gateway in gateways:
            gateway.stop()
        print("2. masked reads: 20 rows of e-mail and notes per transaction, ai-agent-default policy, 8 clients",
              flush=True)
        measure("masked reads (ai-agent-default, agent token)", pgbench,
                gateways_for(DEFAULT_POLICY.read_text(), POLICY_GROUPS), script, args)
    finally:
        for gateway in gateways:
            gateway.stop()
        pg.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
