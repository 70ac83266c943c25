"""What the gateway costs on the PostgreSQL data path, measured against PostgreSQL itself.

What it does, in one run:

1. starts a throwaway PostgreSQL 15 (``log_statement=none``) and loads ``pgbench -i -s 10``;
2. starts ``wardgate serve`` as a separate process (its own interpreter and GIL) per audit mode
   (``--audit-modes``; default ``write``, i.e. recording on with the default fsync policy), fronting
   that server as resource ``orders-prod``, and mints a dev token for it with ``wardgate token``;
3. runs ``pgbench -S`` (select-only, 8 clients, ``--duration`` seconds) with the simple and the
   extended protocol, directly against PostgreSQL and through each gateway, interleaved so that
   every ratio compares runs taken minutes apart at most (``--repeat N`` repeats the whole round
   and reports medians);
4. opens ``--sessions`` idle authenticated connections through the headline gateway and reports
   how much its resident memory grew per session.

Reading the table:

* ``TPS`` and ``latency`` are pgbench's (``tps`` excludes connection time).
* ``ratio`` is gateway TPS ÷ direct TPS of the same protocol in the same round: the only figure
  that means anything across machines and days (absolute TPS drifts ±15 %; see
  /work/shared/performance.md). pgbench, PostgreSQL and the gateway share the machine's cores, so
  the ratio reflects the gateway's CPU cost per transaction (``gw CPU``: user+system time of the
  gateway process, all threads, ÷ transactions) more than any latency it adds.
* Targets: ratio ≥ 0.50 (simple), ≥ 0.40 (extended); memory < 64 KiB per idle session.
  PASS/FAIL is printed per line; the exit status is 0 regardless unless ``--check`` is given.

Clients use ``sslmode=disable`` on both paths by default (the listener allows a plaintext token
from loopback), so TLS does not skew the ratio. ``--tls`` makes every client use
``sslmode=verify-full``: through the gateway with its dev CA, and directly against PostgreSQL,
which is then given a certificate from a CA of its own, so both sides pay for TLS.

Run it as ``make bench`` or ``.venv/bin/python bench/pg_overhead.py --help``.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

from wardgate.devtools.pgserver import ThrowawayPostgres

RESOURCE = "orders-prod"
CLIENT_USER = "alice"
PASSWORD_ENV = "WARDGATE_BENCH_PG_PASSWORD"
TARGET_RATIO = {"simple": 0.50, "extended": 0.40}
TARGET_KIB_PER_SESSION = 64.0
AUDIT_MODES = ("off", "write", "always")
HEADLINE_MODE = "write"
GATEWAY_START_TIMEOUT = 60.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------------------- helpers
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without PG* variables (they would redirect pgbench), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(extra)
    return env


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of proc(5)


def process_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def _parent_death_signal() -> None:
    """preexec_fn: SIGTERM the child should this benchmark die without cleaning up (Linux)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


# -------------------------------------------------------------------------------------- postgres
def start_postgres(scale: int, tls_dir: Path | None) -> ThrowawayPostgres:
    print(f"starting a throwaway PostgreSQL and loading pgbench scale {scale} …", flush=True)
    pg = ThrowawayPostgres(log_statement="none").start()
    try:
        if tls_dir is not None:
            enable_postgres_tls(pg, tls_dir)
        env = clean_env(PGPASSWORD=pg.service_password, PGSSLMODE="disable")
        started = time.monotonic()
        proc = subprocess.run(
            [str(pg.binary("pgbench")), "-i", "-q", "-s", str(scale), "-h", pg.host, "-p", str(pg.port),
             "-U", pg.service_user, pg.dbname],
            env=env, capture_output=True, text=True, timeout=900,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"pgbench -i failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
        print(f"  PostgreSQL on {pg.host}:{pg.port}, loaded in {time.monotonic() - started:.1f}s", flush=True)
    except BaseException:
        pg.stop()
        raise
    return pg


def enable_postgres_tls(pg: ThrowawayPostgres, tls_dir: Path) -> Path:
    """Give the throwaway server a certificate for 127.0.0.1 from a dev CA; return the CA file."""
    from wardgate.tlsdev import ensure_dev_certificate

    dev = ensure_dev_certificate(tls_dir)
    cert, key = pg.data_dir / "bench-server.pem", pg.data_dir / "bench-server-key.pem"
    shutil.copyfile(dev.cert_file, cert)
    shutil.copyfile(dev.key_file, key)
    key.chmod(0o600)
    if os.geteuid() == 0:  # the server runs as the postgres user, which must own its key
        import pwd

        entry = pwd.getpwnam("postgres")
        for path in (cert, key):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    pg.run_sql(f"ALTER SYSTEM SET ssl_cert_file = '{cert}';\n"
               f"ALTER SYSTEM SET ssl_key_file = '{key}';\n"
               "ALTER SYSTEM SET ssl = on;\n", dbname="postgres")
    pg.reload()
    if pg.run_sql("SHOW ssl;", dbname="postgres").strip() != "on":
        raise RuntimeError("could not enable TLS on the throwaway PostgreSQL")
    return dev.ca_file


# --------------------------------------------------------------------------------------- gateway
@dataclass
class GatewayProcess:
    mode: str
    directory: Path
    port: int
    control_port: int
    proc: subprocess.Popen | None = None
    token: str = ""
    ca_file: Path | None = None
    output: deque = field(default_factory=lambda: deque(maxlen=200))

    @property
    def config_path(self) -> Path:
        return self.directory / "config.yaml"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def write_config(self, pg: ThrowawayPostgres) -> None:
        if self.mode == "off":
            audit = "audit: {enabled: false}"
        else:
            audit = f"audit:\n  sink: file://{self.directory / 'audit'}\n  fsync: {self.mode}"
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(f"""\
# written by bench/pg_overhead.py (audit mode: {self.mode})
listeners:
  - protocol: postgres
    address: 127.0.0.1:{self.port}
    allow_plaintext_token_on_loopback: true
control:
  address: 127.0.0.1:{self.control_port}
state_dir: {self.directory / 'state'}
dev_issuer: {{enabled: true}}
resources:
  {RESOURCE}:
    protocol: postgres
    host: {pg.host}
    port: {pg.port}
    database: {pg.dbname}
    username: {pg.service_user}
    password: env://{PASSWORD_ENV}
{audit}
""")

    def start(self, pg: ThrowawayPostgres) -> None:
        self.write_config(pg)
        env = clean_env(**{PASSWORD_ENV: pg.service_password})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "wardgate.cli", "serve", "--config", str(self.config_path)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env=env, cwd=self.directory, preexec_fn=_parent_death_signal,
        )
        ready = threading.Event()

        def pump() -> None:
            for line in self.proc.stdout:
                self.output.append(line.rstrip("\n"))
                if line.startswith("wardgate: control port on"):
                    ready.set()

        threading.Thread(target=pump, name=f"gateway-{self.mode}-output", daemon=True).start()
        deadline = time.monotonic() + GATEWAY_START_TIMEOUT
        while not ready.wait(0.1):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the gateway ({self.mode}) did not start:\n" + "\n".join(self.output))
        self.ca_file = self.directory / "state" / "dev-ca.pem"
        self.token = subprocess.run(
            [sys.executable, "-m", "wardgate.cli", "token", "--config", str(self.config_path),
             "--sub", CLIENT_USER, "--groups", "dev", "--ttl", "1h"],
            check=True, capture_output=True, text=True, env=env,
        ).stdout.strip()
        print(f"  gateway [{self.mode}] pid {self.pid} on 127.0.0.1:{self.port}", flush=True)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


# ------------------------------------------------------------------------------------- endpoints
@dataclass
class Endpoint:
    """Where pgbench connects: PostgreSQL itself or a gateway."""

    path: str  # "direct" or "gateway"
    mode: str  # audit mode of the gateway; "-" for direct
    host: str
    port: int
    user: str
    dbname: str
    password: str
    sslmode: str
    sslrootcert: Path | None
    gateway: GatewayProcess | None = None

    def env(self) -> dict[str, str]:
        env = clean_env(PGPASSWORD=self.password, PGSSLMODE=self.sslmode, PGGSSENCMODE="disable",
                        PGCONNECT_TIMEOUT="10")
        if self.sslrootcert is not None:
            env["PGSSLROOTCERT"] = str(self.sslrootcert)
        return env

    def libpq_kwargs(self) -> dict[str, str]:
        kwargs = {"host": self.host, "port": str(self.port), "user": self.user, "dbname": self.dbname,
                  "password": self.password, "sslmode": self.sslmode, "gssencmode": "disable",
                  "connect_timeout": "10"}
        if self.sslrootcert is not None:
            kwargs["sslrootcert"] = str(self.sslrootcert)
        return kwargs


@dataclass
class Run:
    path: str
    mode: str
    protocol: str
    round: int
    tps: float | None = None
    latency_ms: float | None = None
    transactions: int | None = None
    gateway_cpu_us_per_txn: float | None = None
    error: str | None = None


_TPS = re.compile(r"^tps = ([\d.]+)", re.M)
_LATENCY = re.compile(r"^latency average = ([\d.]+) ms", re.M)
_PROCESSED = re.compile(r"^number of transactions actually processed: (\d+)", re.M)


def run_pgbench(pgbench: Path, endpoint: Endpoint, protocol: str, seconds: int, clients: int, jobs: int,
                round_number: int = 0) -> Run:
    run = Run(endpoint.path, endpoint.mode, protocol, round_number)
    pid = endpoint.gateway.pid if endpoint.gateway is not None else None
    cpu_before = process_cpu_seconds(pid) if pid else 0.0
    proc = subprocess.run(
        [str(pgbench), "-n", "-S", "-M", protocol, "-c", str(clients), "-j", str(jobs), "-T", str(seconds),
         "-h", endpoint.host, "-p", str(endpoint.port), "-U", endpoint.user, endpoint.dbname],
        env=endpoint.env(), capture_output=True, text=True, timeout=seconds + 120,
    )
    cpu_after = process_cpu_seconds(pid) if pid else 0.0
    tps, latency, processed = _TPS.search(proc.stdout), _LATENCY.search(proc.stdout), _PROCESSED.search(proc.stdout)
    if proc.returncode != 0 or not (tps and processed):
        run.error = f"pgbench exit {proc.returncode}: {(proc.stderr or proc.stdout).strip()[-400:]}"
        return run
    run.tps = float(tps.group(1))
    run.latency_ms = float(latency.group(1)) if latency else None
    run.transactions = int(processed.group(1))
    if pid and run.transactions:
        run.gateway_cpu_us_per_txn = (cpu_after - cpu_before) / run.transactions * 1e6
    return run


# ---------------------------------------------------------------------------------------- memory
def measure_idle_sessions(endpoint: Endpoint, sessions: int) -> dict:
    """Open ``sessions`` authenticated connections through the gateway, leave them idle, and
    report how much the gateway's resident memory grew per session."""
    import psycopg

    pid = endpoint.gateway.pid
    kwargs = endpoint.libpq_kwargs()
    # Warm up: the first session loads lazily imported code and fetches the dev issuer's JWKS.
    with psycopg.connect(**kwargs, autocommit=True) as conn:
        conn.execute("SELECT 1")
    time.sleep(0.5)
    before = process_rss_kib(pid)
    connections = []
    try:
        for _ in range(sessions):
            conn = psycopg.connect(**kwargs, autocommit=True)
            conn.execute("SELECT 1")  # authenticated and relaying, then idle
            connections.append(conn)
        time.sleep(1.0)
        after = process_rss_kib(pid)
    finally:
        for conn in connections:
            conn.close()
    per_session = (after - before) / sessions
    return {"mode": endpoint.mode, "sessions": sessions, "rss_before_kib": before, "rss_after_kib": after,
            "kib_per_session": round(per_session, 1), "target_kib": TARGET_KIB_PER_SESSION,
            "pass": per_session < TARGET_KIB_PER_SESSION}


# --------------------------------------------------------------------------------------- summary
def summarize(runs: list[Run]) -> list[dict]:
    """One line per (path, mode, protocol): medians over rounds; ratio = median of per-round ratios."""
    direct = {(r.protocol, r.round): r for r in runs if r.path == "direct" and r.tps}
    keys: list[tuple[str, str, str]] = []
    for r in runs:
        key = (r.path, r.mode, r.protocol)
        if key not in keys:
            keys.append(key)

    def median(values):
        values = [v for v in values if v is not None]
        return statistics.median(values) if values else None

    lines = []
    for path, mode, protocol in sorted(keys, key=lambda k: (k[2] != "simple", k[0] != "direct", _mode_order(k[1]))):
        group = [r for r in runs if (r.path, r.mode, r.protocol) == (path, mode, protocol)]
        ratios = [r.tps / direct[(protocol, r.round)].tps for r in group
                  if r.tps and (protocol, r.round) in direct]
        line = {
            "path": path, "audit": mode, "protocol": protocol, "rounds": len(group),
            "tps": median(r.tps for r in group),
            "ratio": median(ratios) if path == "gateway" else (1.0 if any(r.tps for r in group) else None),
            "latency_ms": median(r.latency_ms for r in group),
            "gateway_cpu_us_per_txn": median(r.gateway_cpu_us_per_txn for r in group),
            "errors": [r.error for r in group if r.error],
        }
        if path == "gateway":
            line["target"] = TARGET_RATIO[protocol]
            line["pass"] = line["ratio"] is not None and line["ratio"] >= TARGET_RATIO[protocol]
        lines.append(line)
    return lines


def _mode_order(mode: str) -> int:
    return {"-": -1, "off": 0, "write": 1, "always": 2}.get(mode, 9)


def _fmt(value, spec: str, missing: str = "–") -> str:
    return missing if value is None else format(value, spec)


def print_table(lines: list[dict], memory: dict | None, args: argparse.Namespace) -> None:
    transport = "verify-full TLS" if args.tls else "sslmode=disable"
    rounds = f", median of {args.repeat} rounds" if args.repeat > 1 else ""
    print(f"\npgbench -S, scale {args.scale}, {args.clients} clients, {args.jobs} thread(s), "
          f"{args.duration}s per run, clients over {transport}{rounds}; {os.cpu_count()} CPUs\n")
    header = f"{'path':<8} {'audit':<7} {'protocol':<9} {'TPS':>9} {'ratio':>7} {'latency':>10} " \
             f"{'gw CPU/txn':>11}  {'target':<8} result"
    print(header)
    print("-" * len(header))
    for line in lines:
        target = f"≥ {line['target']:.2f}" if "target" in line else ""
        result = ("PASS" if line["pass"] else "FAIL") if "pass" in line else ""
        if line["errors"]:
            result = (result + " " if result else "") + f"({len(line['errors'])} failed run(s))"
        print(f"{line['path']:<8} {line['audit']:<7} {line['protocol']:<9} {_fmt(line['tps'], '9.0f'):>9} "
              f"{_fmt(line['ratio'], '6.2f') + ('×' if line['ratio'] is not None else ''):>7} "
              f"{_fmt(line['latency_ms'], '.3f') + ' ms':>10} "
              f"{_fmt(line['gateway_cpu_us_per_txn'], '.1f') + (' µs' if line['gateway_cpu_us_per_txn'] else ''):>11}  "
              f"{target:<8} {result}")
    for line in lines:
        for error in line["errors"]:
            print(f"  ! {line['path']} {line['audit']} {line['protocol']}: {error}")
    print(f"\ntargets: ratio ≥ {TARGET_RATIO['simple']:.2f}× (simple), ≥ {TARGET_RATIO['extended']:.2f}× "
          f"(extended), memory < {TARGET_KIB_PER_SESSION:.0f} KiB per idle session")
    if memory is not None:
        if "error" in memory:
            print(f"memory: FAIL ({memory['error']})")
        else:
            print(f"memory [{memory['mode']}]: {memory['sessions']} idle sessions, gateway VmRSS "
                  f"{memory['rss_before_kib']} → {memory['rss_after_kib']} KiB = "
                  f"{memory['kib_per_session']:.1f} KiB per session (target < {TARGET_KIB_PER_SESSION:.0f}): "
                  f"{'PASS' if memory['pass'] else 'FAIL'}")


# ------------------------------------------------------------------------------------------ main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", "-T", type=int, default=10, help="seconds per pgbench run (default 10)")
    parser.add_argument("--clients", "-c", type=int, default=8, help="pgbench clients (default 8)")
    parser.add_argument("--jobs", "-j", type=int, default=1, help="pgbench threads (default 1)")
    parser.add_argument("--scale", "-s", type=int, default=10, help="pgbench scale (default 10)")
    parser.add_argument("--repeat", type=int, default=1, help="rounds; report medians (default 1)")
    parser.add_argument("--warmup", type=int, default=3, help="seconds of warm-up per endpoint (0: none)")
    parser.add_argument("--audit-modes", default=HEADLINE_MODE,
                        help="comma-separated gateway audit modes to measure, from off,write,always "
                             "(default: write, the default fsync policy)")
    parser.add_argument("--protocols", default="simple,extended", help="pgbench -M modes (default both)")
    parser.add_argument("--tls", action="store_true", help="clients use sslmode=verify-full on both paths")
    parser.add_argument("--sessions", type=int, default=150,
                        help="idle sessions for the memory measurement (0: skip; the server allows 200)")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument("--check", action="store_true", help="exit 1 if any line misses its target")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (configs, audit files)")
    args = parser.parse_args(argv)
    args.modes = [m.strip() for m in args.audit_modes.split(",") if m.strip()]
    bad = [m for m in args.modes if m not in AUDIT_MODES]
    if bad or not args.modes:
        parser.error(f"--audit-modes: unknown mode(s) {bad}; choose from {','.join(AUDIT_MODES)}")
    args.protocol_list = [p.strip() for p in args.protocols.split(",") if p.strip()]
    if any(p not in TARGET_RATIO for p in args.protocol_list):
        parser.error("--protocols: choose from simple,extended")
    if args.sessions > 190:
        parser.error("--sessions: the throwaway server allows 200 connections; use at most 190")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="wardgate-bench-"))
    pg: ThrowawayPostgres | None = None
    gateways: list[GatewayProcess] = []
    try:
        pg = start_postgres(args.scale, workdir / "pg-tls" if args.tls else None)
        pgbench = pg.binary("pgbench")
        sslmode = "verify-full" if args.tls else "disable"
        direct = Endpoint("direct", "-", pg.host, pg.port, pg.service_user, pg.dbname, pg.service_password,
                          sslmode, workdir / "pg-tls" / "dev-ca.pem" if args.tls else None)
        endpoints = [direct]
        for mode in args.modes:
            gateway = GatewayProcess(mode, workdir / f"gateway-{mode}", free_port(), free_port())
            gateways.append(gateway)
            gateway.start(pg)
            endpoints.append(Endpoint("gateway", mode, "127.0.0.1", gateway.port, CLIENT_USER, RESOURCE,
                                      gateway.token, sslmode, gateway.ca_file if args.tls else None, gateway))

        memory = None
        headline = next((e for e in endpoints if e.mode == HEADLINE_MODE), endpoints[-1])
        if args.sessions > 0:
            # First, on a fresh gateway: pgbench's sessions would leave freed memory to reuse.
            print(f"memory: {args.sessions} idle sessions through gateway [{headline.mode}] …", flush=True)
            try:
                memory = measure_idle_sessions(headline, args.sessions)
            except Exception as exc:  # report, and still run the throughput part
                memory = {"mode": headline.mode, "sessions": args.sessions, "error": repr(exc), "pass": False}

        if args.warmup > 0:
            print(f"warm-up: {args.warmup}s per endpoint …", flush=True)
            for endpoint in endpoints:
                run_pgbench(pgbench, endpoint, args.protocol_list[0], args.warmup, args.clients, args.jobs)

        runs: list[Run] = []
        for round_number in range(args.repeat):
            for protocol in args.protocol_list:
                # Interleave: direct next to each gateway, alternating the order between rounds.
                order = endpoints if round_number % 2 == 0 else list(reversed(endpoints))
                for endpoint in order:
                    if endpoint.gateway is not None and not endpoint.gateway.alive():
                        raise RuntimeError(f"the gateway ({endpoint.mode}) died:\n"
                                           + "\n".join(endpoint.gateway.output))
                    run = run_pgbench(pgbench, endpoint, protocol, args.duration, args.clients, args.jobs,
                                      round_number)
                    runs.append(run)
                    label = f"{endpoint.path}[{endpoint.mode}]" if endpoint.gateway else "direct"
                    status = f"{run.tps:.0f} TPS" if run.tps else run.error
                    print(f"  round {round_number + 1}/{args.repeat} {protocol:<8} {label:<16} {status}", flush=True)

        lines = summarize(runs)
        print_table(lines, memory, args)
        if args.json:
            results = {
                "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                            "python": platform.python_version()},
                "settings": {"duration_s": args.duration, "clients": args.clients, "jobs": args.jobs,
                             "scale": args.scale, "repeat": args.repeat, "audit_modes": args.modes,
                             "client_sslmode": sslmode, "pgbench": str(pgbench)},
                "targets": {"ratio": TARGET_RATIO, "kib_per_idle_session": TARGET_KIB_PER_SESSION},
                "summary": lines, "memory": memory, "runs": [asdict(r) for r in runs],
            }
            args.json.write_text(json.dumps(results, indent=2) + "\n")
            print(f"results written to {args.json}")
        failed = any(line.get("pass") is False for line in lines) or (memory is not None and not memory["pass"])
        return 1 if (args.check and failed) else 0
    finally:
        for gateway in gateways:
            gateway.stop()
        if pg is not None:
            pg.stop()
        if args.keep:
            print(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
