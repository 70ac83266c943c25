"""What the gateway costs on the PostgreSQL data path, measured against PostgreSQL itself.

What it does, in one run:

1. starts a throwaway PostgreSQL 15 (``log_statement=none``) and loads ``pgbench -i -s 10``;
2. starts ``wardgate serve`` as a separate process (its own interpreter and GIL) per audit mode
   (``--audit-modes``; default ``write``, i.e. recording on with the default fsync policy), fronting
   that server as resource ``orders-prod``, and mints a dev token for it with ``wardgate token``;
3. runs ``pgbench -S`` (select-only, 8 clients, ``--duration`` seconds) with the simple and the
   extended protocol, directly against PostgreSQL, through a bare uvloop pass-through proxy
   (``bench/passthrough_proxy.py``; ``--no-passthrough`` leaves it out) and through each gateway,
   interleaved so that every ratio compares runs taken minutes apart at most (``--repeat N``
   repeats the whole round and reports medians). The pass-through line has no target: it is the
   floor a Python relay reaches on this machine, which issue 2 quotes as ~0.54× and which moves
   with the host;
4. opens ``--sessions`` idle authenticated connections through the headline gateway and reports
   how much its resident memory grew per session;
5. ``--policy-compare`` (default on): starts one more gateway (same audit mode as the headline one)
   enforcing ``policies/ai-agent-default/policy.yaml`` and runs the same pgbench rounds through it
   with an ``ai-agents`` token (role ``agent``, rule ``agents-read``, masking profile
   ``pii-and-secrets``), next to the allow-all gateway (no policy configured);
6. ``--masking`` (default on): loads ``bench_people`` (200,000 rows × 10 columns) and times
   ``psql -At -c 'SELECT * FROM bench_people' > /dev/null`` directly, through a gateway whose
   policy allows it unmasked, with 2 masked columns (``email`` partial, ``note`` redact, no
   detectors) and, for information, with the same 2 columns plus the ``email`` and ``credit_card``
   detectors; median of ``--masking-repeat`` runs (default 3), interleaved.

``make bench`` runs ``--audit-modes off,write,always --repeat 3`` and so also prints the
**recording cost**: 1 − TPS with recording ÷ TPS with recording off, per round, median (target for
the default ``write``: ≤ 15 %).

Reading the table:

* ``TPS`` and ``latency`` are pgbench's (``tps`` excludes connection time).
* ``ratio`` is gateway TPS ÷ direct TPS of the same protocol in the same round: the only figure
  that means anything across machines and days (absolute TPS drifts ±15 %; see
  /work/shared/performance.md). pgbench, PostgreSQL and the gateway share the machine's cores, so
  the ratio reflects the gateway's CPU cost per transaction (``gw CPU``: user+system time of the
  gateway process, all threads, ÷ transactions) more than any latency it adds.
* Targets: ratio ≥ 0.50 (simple), ≥ 0.40 (extended); memory < 64 KiB per idle session.
  PASS/FAIL is printed per line; the exit status is 0 regardless unless ``--check`` is given.
* Policy section: ``ratio`` is policy-gateway TPS ÷ allow-all-gateway TPS of the same protocol in the
  same round (median over rounds); target ≥ 0.90 (the policy costs at most 10 %).
* Masking section: seconds of wall-clock time for psql to fetch and print every row (median);
  ``ratio`` is each gateway path ÷ the unmasked gateway path; target: 2 masked columns cost at
  most 2× the unmasked gateway time (ratio ≤ 2.00). The detector variant has no target.

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
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

from wardgate.devtools.pgserver import ThrowawayPostgres, env_without_libpq as clean_env, free_port

RESOURCE = "orders-prod"
CLIENT_USER = "alice"
PASSWORD_ENV = "WARDGATE_BENCH_PG_PASSWORD"
TARGET_RATIO = {"simple": 0.50, "extended": 0.40}
TARGET_KIB_PER_SESSION = 64.0
AUDIT_MODES = ("off", "write", "always")
HEADLINE_MODE = "write"
GATEWAY_START_TIMEOUT = 60.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_POLICY = REPO_ROOT / "policies" / "ai-agent-default" / "policy.yaml"
POLICY_GROUPS = "ai-agents"  # role ``agent`` in the default bundle
TARGET_POLICY_RATIO = 0.90
# Issue 4: recording with the default fsync policy costs at most 15 % of the TPS without recording.
TARGET_RECORDING_COST = 0.15
MASKING_TABLE = "bench_people"
MASKING_ROWS = 200_000
TARGET_MASKING_RATIO = 2.0
MASKING_POLICY = """\
# written by bench/pg_overhead.py: one role per masking variant, chosen by the token's group
version: 1
name: bench-masking
roles:
  plain: {match: [{groups: [bench-plain]}]}
  masked: {match: [{groups: [bench-masked]}]}
  detect: {match: [{groups: [bench-detect]}]}
rules:
  - name: read-unmasked
    effect: allow
    roles: [plain]
    when: {classes: [read, transaction, session]}
  - name: read-2-masked-columns
    effect: allow
    roles: [masked]
    when: {classes: [read, transaction, session]}
    mask: two-columns
  - name: read-2-masked-columns-detectors
    effect: allow
    roles: [detect]
    when: {classes: [read, transaction, session]}
    mask: two-columns-detectors
masking:
  two-columns:
    columns:
      - {match: "*.bench_people.email", strategy: partial}
      - {match: "*.bench_people.note", strategy: redact}
  two-columns-detectors:
    columns:
      - {match: "*.bench_people.email", strategy: partial}
      - {match: "*.bench_people.note", strategy: redact}
    detectors: [email, credit_card]
"""
# (label, token group of the masking gateway; None: directly to PostgreSQL)
MASKING_PATHS = (
    ("direct", None),
    ("gateway, masking off", "bench-plain"),
    ("gateway, 2 masked columns", "bench-masked"),
    ("gateway, 2 columns + detectors", "bench-detect"),
)


# --------------------------------------------------------------------------------------- helpers
def process_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads) and of its live descendants (a gateway with
    ``workers``: the supervisor and its workers), from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    total = (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of proc(5)
    for child in _children(pid):
        try:
            total += process_cpu_seconds(child)
        except OSError:
            pass  # gone meanwhile
    return total


def reaped_cpu_seconds(pid: int) -> float:
    """utime + stime of a process and of its children it has waited for (a postmaster: every backend
    that served a connection and exited), from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return sum(int(value) for value in fields[11:15]) / CLK_TCK  # utime, stime, cutime, cstime


def machine_seconds() -> tuple[float, float]:
    """(idle, total) CPU time of the whole machine, summed over its CPUs, from /proc/stat."""
    with open("/proc/stat") as handle:
        fields = [int(value) for value in handle.readline().split()[1:9]]
    return (fields[3] + fields[4]) / CLK_TCK, sum(fields) / CLK_TCK  # idle + iowait; user … steal


class MachineMeter:
    """Where the machine's CPU time goes during one pgbench run, per transaction: pgbench itself,
    PostgreSQL (the postmaster and every backend it reaped), and the time no CPU had anything to do.
    On a host where pgbench, PostgreSQL and the gateway share the CPUs, these say what the ratio to
    direct is made of besides the gateway's own CPU time."""

    def __init__(self, postmaster_pid: int) -> None:
        """Call with no client connected: the postmaster's children now are its own processes
        (checkpointer, walwriter…), once the backends of earlier connections are gone."""
        self.postmaster_pid = postmaster_pid
        count, steady_since, deadline = len(_children(postmaster_pid)), time.monotonic(), time.monotonic() + 5.0
        while time.monotonic() - steady_since < 0.5 and time.monotonic() < deadline:
            time.sleep(0.05)
            now = len(_children(postmaster_pid))
            if now != count:
                count, steady_since = now, time.monotonic()
        self.own_processes = count

    def _backends_gone(self) -> None:
        """Wait (3 s at most) until the backends of the last run have exited and been reaped, so
        their CPU time is counted in that run and not the next: a backend exits once its client
        (pgbench, or the gateway for it) has closed."""
        deadline = time.monotonic() + 3.0
        while len(_children(self.postmaster_pid)) > self.own_processes and time.monotonic() < deadline:
            time.sleep(0.02)

    def start(self) -> tuple:
        self._backends_gone()
        return (resource.getrusage(resource.RUSAGE_CHILDREN), reaped_cpu_seconds(self.postmaster_pid),
                machine_seconds())

    def finish(self, before: tuple, run: "Run") -> None:
        usage, postgres, (idle, total) = before
        idle_after, total_after = machine_seconds()
        self._backends_gone()
        usage_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        count = run.transactions
        # Counter by counter: summing first and then subtracting can go a rounding error below zero
        # when pgbench used no CPU (CI saw -1.8e-12).
        run.pgbench_cpu_us_per_txn = (((usage_after.ru_utime - usage.ru_utime) + (usage_after.ru_stime - usage.ru_stime))
                                      / count * 1e6)
        run.postgres_cpu_us_per_txn = (reaped_cpu_seconds(self.postmaster_pid) - postgres) / count * 1e6
        run.machine_idle_us_per_txn = (idle_after - idle) / count * 1e6
        run.machine_us_per_txn = (total_after - total) / count * 1e6


def _children(pid: int) -> list[int]:
    return [int(child) for children in Path(f"/proc/{pid}/task").glob("*/children")
            for child in children.read_text().split()]


def process_rss_kib(pid: int) -> int:
    """Resident memory of ``pid`` and its descendants (a gateway with ``workers`` is a supervisor
    and its worker processes)."""
    total = 0
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                total = int(line.split()[1])
                break
        else:
            raise RuntimeError(f"no VmRSS for pid {pid}")
    for child in _children(pid):
        try:
            total += process_rss_kib(child)
        except (OSError, RuntimeError):
            pass  # gone meanwhile
    return total


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
    name: str = ""  # for messages; defaults to the audit mode
    policy_text: str | None = None  # a policy bundle to enforce; None: allow-all (no policy configured)
    groups: str = "dev"  # group(s) of the token minted at start
    env: dict = field(default_factory=dict)
    workers: int = 1  # worker processes (config ``workers``); above 1 a supervisor hands them connections

    def __post_init__(self) -> None:
        self.name = self.name or self.mode

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
        if self.policy_text is not None:
            policy_file = self.directory / "policy.yaml"
            policy_file.write_text(self.policy_text)
            audit += f"\npolicy: {{file: {json.dumps(str(policy_file))}, watch: false}}"
        # Only when set: a configuration an older gateway (an A/B against a previous commit) accepts.
        workers = f"\nworkers: {self.workers}" if self.workers != 1 else ""
        self.config_path.write_text(f"""\
# written by bench/pg_overhead.py ({self.name}; audit mode: {self.mode})
listeners:
  - protocol: postgres
    address: 127.0.0.1:{self.port}
    allow_plaintext_token_on_loopback: true
control:
  address: 127.0.0.1:{self.control_port}
state_dir: {self.directory / 'state'}{workers}
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
        env = self.env = clean_env(**{PASSWORD_ENV: pg.service_password})
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

        threading.Thread(target=pump, name=f"gateway-{self.name}-output", daemon=True).start()
        deadline = time.monotonic() + GATEWAY_START_TIMEOUT
        while not ready.wait(0.1):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the gateway ({self.name}) did not start:\n" + "\n".join(self.output))
        self.ca_file = self.directory / "state" / "dev-ca.pem"
        self.token = self.mint_token(self.groups)
        print(f"  gateway [{self.name}] pid {self.pid} on 127.0.0.1:{self.port}", flush=True)

    def mint_token(self, groups: str) -> str:
        return subprocess.run(
            [sys.executable, "-m", "wardgate.cli", "token", "--config", str(self.config_path),
             "--sub", CLIENT_USER, "--groups", groups, "--ttl", "1h"],
            check=True, capture_output=True, text=True, env=self.env,
        ).stdout.strip()

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


# ----------------------------------------------------------------------------- pass-through proxy
PASSTHROUGH_SCRIPT = Path(__file__).resolve().parent / "passthrough_proxy.py"


def start_passthrough(pg: ThrowawayPostgres) -> tuple[subprocess.Popen, int]:
    """The bare uvloop pass-through proxy in front of ``pg``: the floor a Python relay reaches here."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(PASSTHROUGH_SCRIPT), str(port), pg.host, str(pg.port)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=_parent_death_signal)
    first = proc.stdout.readline().strip()
    if first != "ready":
        proc.kill()
        raise RuntimeError(f"the pass-through proxy did not start: {first or proc.stdout.read()}")
    print(f"  pass-through proxy pid {proc.pid} on 127.0.0.1:{port}", flush=True)
    return proc, port


def stop_passthrough(proc: subprocess.Popen | None) -> None:
    if proc is not None:
        proc.kill()
        proc.wait()


# ------------------------------------------------------------------------------------- endpoints
@dataclass
class Endpoint:
    """Where pgbench connects: PostgreSQL itself or a gateway."""

    path: str  # "direct", "passthrough" (bare proxy), "gateway" (allow-all) or "policy" (default bundle)
    mode: str  # audit mode of the gateway; "-" for direct
    host: str
    port: int
    user: str
    dbname: str
    password: str
    sslmode: str
    sslrootcert: Path | None
    gateway: GatewayProcess | None = None
    proxy: subprocess.Popen | None = None  # the pass-through proxy's process, for its CPU time

    @property
    def pid(self) -> int | None:
        if self.gateway is not None:
            return self.gateway.pid
        return self.proxy.pid if self.proxy is not None else None

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
    # machine accounting (MachineMeter): pgbench, PostgreSQL, idle CPUs, all CPUs (= CPUs ÷ TPS)
    pgbench_cpu_us_per_txn: float | None = None
    postgres_cpu_us_per_txn: float | None = None
    machine_idle_us_per_txn: float | None = None
    machine_us_per_txn: float | None = None
    error: str | None = None


_TPS = re.compile(r"^tps = ([\d.]+)", re.M)
_LATENCY = re.compile(r"^latency average = ([\d.]+) ms", re.M)
_PROCESSED = re.compile(r"^number of transactions actually processed: (\d+)", re.M)


def run_pgbench(pgbench: Path, endpoint: Endpoint, protocol: str, seconds: int, clients: int, jobs: int,
                round_number: int = 0, script: Path | None = None, meter: MachineMeter | None = None) -> Run:
    """One pgbench run: select-only (``-S``), or the transaction in ``script`` (``-f``)."""
    run = Run(endpoint.path, endpoint.mode, protocol, round_number)
    pid = endpoint.pid
    machine_before = meter.start() if meter is not None else None
    cpu_before = process_cpu_seconds(pid) if pid else 0.0
    workload = ["-S"] if script is None else ["-f", str(script)]
    proc = subprocess.run(
        [str(pgbench), "-n", *workload, "-M", protocol, "-c", str(clients), "-j", str(jobs), "-T", str(seconds),
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
    if meter is not None and run.transactions:
        meter.finish(machine_before, run)
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


# --------------------------------------------------------------------------------------- masking
MASKING_COLUMNS = ("id", "name", "email", "phone", "city", "note", "amount", "created", "flag", "code")


def create_masking_table(pg: ThrowawayPostgres, rows: int) -> None:
    """``bench_people``: ``rows`` rows × 10 columns, owned by the gateway's service account."""
    pg.run_sql(f"""\
DROP TABLE IF EXISTS {MASKING_TABLE};
CREATE TABLE {MASKING_TABLE} (
    id int PRIMARY KEY, name text, email text, phone text, city text, note text,
    amount numeric(12, 2), created timestamptz, flag bool, code text);
INSERT INTO {MASKING_TABLE}
SELECT i,
       'Person ' || i,
       'person' || i || '@example.com',
       '+1-555-' || lpad((i % 10000)::text, 4, '0'),
       (ARRAY['Springfield', 'Shelbyville', 'Ogdenville', 'North Haverbrook'])[1 + i % 4],
       'Customer ' || i || ' prefers deliveries before noon; call ahead',
       round(((i * 7919) % 1000000) / 100.0, 2),
       timestamptz '2024-01-01 00:00:00+00' + i * interval '1 minute',
       i % 2 = 0,
       'C-' || to_hex((i::bigint * 2654435761) % 4294967296)
FROM generate_series(1, {rows}) AS i;
VACUUM ANALYZE {MASKING_TABLE};
""", user=pg.service_user, password=pg.service_password, dbname=pg.dbname)


def run_psql(psql: Path, endpoint: Endpoint, sql: str, capture: bool) -> tuple[float, float | None, str]:
    """Run one query with psql (simple protocol, unaligned, tuples only); return (wall seconds,
    gateway CPU seconds, stdout if ``capture``). The output of a timed run goes to /dev/null."""
    pid = endpoint.pid
    cpu_before = process_cpu_seconds(pid) if pid else 0.0
    started = time.perf_counter()
    proc = subprocess.run(
        [str(psql), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", endpoint.host,
         "-p", str(endpoint.port), "-U", endpoint.user, "-d", endpoint.dbname, "-c", sql],
        env=endpoint.env(), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE if capture else subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=600,
    )
    elapsed = time.perf_counter() - started
    cpu = process_cpu_seconds(pid) - cpu_before if pid else None
    if proc.returncode != 0:
        raise RuntimeError(f"psql exit {proc.returncode}: {proc.stderr.decode(errors='replace').strip()[-400:]}")
    return elapsed, cpu, proc.stdout.decode() if capture else ""


def verify_masking(psql: Path, endpoints: dict[str, Endpoint]) -> dict:
    """First row (by id) through every path: unmasked paths must show what PostgreSQL has; masked
    paths must change ``email`` and ``note`` and nothing else. Also warms the gateway's catalog cache."""
    sql = f"SELECT * FROM {MASKING_TABLE} ORDER BY id LIMIT 1"
    first = {label: dict(zip(MASKING_COLUMNS, run_psql(psql, ep, sql, True)[2].rstrip("\n").split("|")))
             for label, ep in endpoints.items()}
    original = first["direct"]
    problems = []
    for label, row in first.items():
        masked = label not in ("direct", "gateway, masking off")
        for column in MASKING_COLUMNS:
            changed = row.get(column) != original.get(column)
            if column in ("email", "note") and masked and not changed:
                problems.append(f"{label}: {column} not masked ({row.get(column)!r})")
            elif (column not in ("email", "note") or not masked) and changed:
                problems.append(f"{label}: {column} changed ({original.get(column)!r} → {row.get(column)!r})")
    return {"first_row": {label: {"email": row.get("email"), "note": row.get("note")} for label, row in first.items()},
            "problems": problems, "pass": not problems}


def masked_email_values(audit_dir: Path) -> int | None:
    """``email`` values the gateway reports having masked (``command.masked`` events), or None when
    it records nothing. Events are written before the client sees the result they describe."""
    if not audit_dir.is_dir():
        return None
    total = 0
    for segment in sorted(audit_dir.glob("*.jsonl")):
        with open(segment, "rb") as handle:
            for raw in handle:
                if b'"command.masked"' not in raw:
                    continue
                event = json.loads(raw)
                total += sum(m["count"] for m in event.get("maskings", ())
                             if m["column"].endswith(f".{MASKING_TABLE}.email"))
    return total


def run_masking_benchmark(pg: ThrowawayPostgres, workdir: Path, args: argparse.Namespace, audit_mode: str,
                          sslmode: str, direct: Endpoint) -> dict:
    psql = pg.binary("psql")
    print(f"masking: loading {MASKING_TABLE} ({args.masking_rows} rows × {len(MASKING_COLUMNS)} columns) …",
          flush=True)
    started = time.monotonic()
    create_masking_table(pg, args.masking_rows)
    print(f"  loaded in {time.monotonic() - started:.1f}s", flush=True)
    gateway = GatewayProcess(audit_mode, workdir / "gateway-masking", free_port(), free_port(),
                             name=f"{audit_mode}+masking-policy", policy_text=MASKING_POLICY, groups="bench-plain")
    result: dict = {"table": MASKING_TABLE, "rows": args.masking_rows, "columns": len(MASKING_COLUMNS),
                    "audit": audit_mode, "client": "psql -X -A -t -c (simple protocol, text), output to /dev/null",
                    "repeat": args.masking_repeat, "target_ratio": TARGET_MASKING_RATIO}
    try:
        gateway.start(pg)
        endpoints: dict[str, Endpoint] = {}
        for label, groups in MASKING_PATHS:
            if groups is None:
                endpoints[label] = direct
            else:
                token = gateway.token if groups == gateway.groups else gateway.mint_token(groups)
                endpoints[label] = Endpoint("gateway", audit_mode, "127.0.0.1", gateway.port, CLIENT_USER,
                                            RESOURCE, token, sslmode, gateway.ca_file if args.tls else None,
                                            gateway)
        result["verification"] = verify_masking(psql, endpoints)
        sql = f"SELECT * FROM {MASKING_TABLE}"
        samples: dict[str, list[tuple[float, float | None]]] = {label: [] for label in endpoints}
        # Did every timed masked run mask every row's email? (From the audit events; None: audit off.)
        masked_counts: dict[str, list[int]] = {label: [] for label, groups in MASKING_PATHS
                                               if groups in ("bench-masked", "bench-detect")}
        for repetition in range(args.masking_repeat):
            order = list(endpoints) if repetition % 2 == 0 else list(reversed(endpoints))
            for label in order:
                if not gateway.alive():
                    raise RuntimeError("the masking gateway died:\n" + "\n".join(gateway.output))
                before = masked_email_values(gateway.directory / "audit")
                elapsed, cpu, _ = run_psql(psql, endpoints[label], sql, False)
                after = masked_email_values(gateway.directory / "audit")
                samples[label].append((elapsed, cpu))
                if label in masked_counts and before is not None and after is not None:
                    masked_counts[label].append(after - before)
                cpu_text = f", gateway CPU {cpu:.2f}s" if cpu is not None else ""
                print(f"  {repetition + 1}/{args.masking_repeat} {label:<31} {elapsed:.2f}s{cpu_text}", flush=True)
        lines = []
        for label, groups in MASKING_PATHS:
            seconds = statistics.median(s for s, _ in samples[label])
            cpus = [c for _, c in samples[label] if c is not None]
            lines.append({"path": label, "token_groups": groups, "runs_s": [round(s, 4) for s, _ in samples[label]],
                          "seconds": seconds, "gateway_cpu_s": statistics.median(cpus) if cpus else None})
        by_label = {line["path"]: line for line in lines}
        direct_s, unmasked_s = by_label["direct"]["seconds"], by_label["gateway, masking off"]["seconds"]
        for line in lines:
            line["vs_direct"] = line["seconds"] / direct_s
            if line["path"] != "direct":
                line["ratio"] = line["seconds"] / unmasked_s  # ÷ the unmasked gateway path
            if line["path"] == "gateway, 2 masked columns":
                line["target"] = TARGET_MASKING_RATIO
                line["pass"] = line["ratio"] <= TARGET_MASKING_RATIO
        result["summary"] = lines
        verification = result["verification"]
        verification["emails_masked_per_run"] = masked_counts if any(masked_counts.values()) else None
        if verification["emails_masked_per_run"] is not None:
            short = {label: counts for label, counts in masked_counts.items()
                     if any(count != args.masking_rows for count in counts)}
            for label, counts in short.items():
                verification["problems"].append(f"{label}: emails masked per timed run {counts}, "
                                                f"expected {args.masking_rows}")
            verification["pass"] = verification["pass"] and not short
        result["pass"] = bool(by_label["gateway, 2 masked columns"]["pass"] and verification["pass"])
    except Exception as exc:  # report, and still print the rest
        result["error"] = repr(exc)
        result["pass"] = False
    finally:
        gateway.stop()
    return result


# --------------------------------------------------------------------------------------- summary
def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _round_ratios(runs, baseline: dict[int, Run]) -> list[float]:
    """TPS of each run ÷ TPS of the baseline run of the same round (rounds without one are left out)."""
    return [r.tps / baseline[r.round].tps for r in runs if r.tps and r.round in baseline]


def summarize(runs: list[Run]) -> list[dict]:
    """One line per (path, mode, protocol): medians over rounds; ratio = median of per-round ratios."""
    runs = [r for r in runs if r.path in _PATH_ORDER]
    keys: list[tuple[str, str, str]] = []
    for r in runs:
        key = (r.path, r.mode, r.protocol)
        if key not in keys:
            keys.append(key)

    lines = []
    for path, mode, protocol in sorted(keys, key=lambda k: (k[2] != "simple", _PATH_ORDER[k[0]],
                                                            _mode_order(k[1]))):
        group = [r for r in runs if (r.path, r.mode, r.protocol) == (path, mode, protocol)]
        direct = {r.round: r for r in runs if r.path == "direct" and r.protocol == protocol and r.tps}
        line = {
            "path": path, "audit": mode, "protocol": protocol, "rounds": len(group),
            "tps": _median(r.tps for r in group),
            "ratio": (_median(_round_ratios(group, direct)) if path != "direct"
                      else (1.0 if any(r.tps for r in group) else None)),
            "latency_ms": _median(r.latency_ms for r in group),
            "gateway_cpu_us_per_txn": _median(r.gateway_cpu_us_per_txn for r in group),
            "pgbench_cpu_us_per_txn": _median(r.pgbench_cpu_us_per_txn for r in group),
            "postgres_cpu_us_per_txn": _median(r.postgres_cpu_us_per_txn for r in group),
            "machine_idle_us_per_txn": _median(r.machine_idle_us_per_txn for r in group),
            "machine_us_per_txn": _median(r.machine_us_per_txn for r in group),
            "errors": [r.error for r in group if r.error],
        }
        if path == "gateway":
            line["target"] = TARGET_RATIO[protocol]
            line["pass"] = line["ratio"] is not None and line["ratio"] >= TARGET_RATIO[protocol]
        lines.append(line)
    return lines


def summarize_recording_cost(runs: list[Run], protocols: list[str]) -> list[dict]:
    """Per protocol and recording mode: 1 − (TPS with recording ÷ TPS with recording off), the median
    of per-round values (both gateways allow-all, runs of the same round). Needs ``off`` measured."""
    lines = []
    for protocol in protocols:
        off = {r.round: r for r in runs if r.path == "gateway" and r.mode == "off" and r.protocol == protocol and r.tps}
        for mode in ("write", "always"):
            costs = [1 - ratio for ratio in _round_ratios(
                [r for r in runs if r.path == "gateway" and r.mode == mode and r.protocol == protocol], off)]
            if not costs:
                continue
            line = {"audit": mode, "protocol": protocol, "cost": _median(costs), "rounds": len(costs)}
            if mode == HEADLINE_MODE:
                line["target"] = TARGET_RECORDING_COST
                line["pass"] = line["cost"] <= TARGET_RECORDING_COST
            lines.append(line)
    return lines


def print_recording_cost(lines: list[dict]) -> None:
    print("\nrecording cost: share of the recording-off TPS lost (same rounds, allow-all gateways)")
    for line in lines:
        verdict = ""
        if "target" in line:
            verdict = f"target ≤ {line['target']:.0%}: {'PASS' if line['pass'] else 'FAIL'}"
        print(f"  {line['audit']:<7} {line['protocol']:<9} {line['cost']:6.1%}  {verdict}")


# The paths of the main table, in the order it prints them (policy runs have their own table).
_PATH_ORDER = {"direct": 0, "passthrough": 1, "gateway": 2}


def _mode_order(mode: str) -> int:
    return {"-": -1, "off": 0, "write": 1, "always": 2}.get(mode, 9)


def _fmt(value, spec: str, missing: str = "–") -> str:
    return missing if value is None else format(value, spec)


def print_table(lines: list[dict], memory: dict | None, args: argparse.Namespace) -> None:
    transport = "verify-full TLS" if args.tls else "sslmode=disable"
    rounds = f", median of {args.repeat} rounds" if args.repeat > 1 else ""
    print(f"\npgbench -S, scale {args.scale}, {args.clients} clients, {args.jobs} thread(s), "
          f"{args.duration}s per run, clients over {transport}{rounds}; {os.cpu_count()} CPUs\n")
    header = f"{'path':<11} {'audit':<7} {'protocol':<9} {'TPS':>9} {'ratio':>7} {'latency':>10} " \
             f"{'gw CPU/txn':>11}  {'target':<8} result"
    print(header)
    print("-" * len(header))
    for line in lines:
        target = f"≥ {line['target']:.2f}" if "target" in line else ""
        result = ("PASS" if line["pass"] else "FAIL") if "pass" in line else ""
        if line["errors"]:
            result = (result + " " if result else "") + f"({len(line['errors'])} failed run(s))"
        print(f"{line['path']:<11} {line['audit']:<7} {line['protocol']:<9} {_fmt(line['tps'], '9.0f'):>9} "
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


def print_machine_table(lines: list[dict]) -> None:
    """Where the machine's CPU time goes per transaction: what the ratio to direct is made of."""
    if not any(line.get("machine_us_per_txn") for line in lines):
        return
    print("\nmachine time per transaction (µs, medians): pgbench, PostgreSQL (postmaster and its backends), "
          "the gateway or proxy, CPUs idle; 'all' = CPUs ÷ TPS (the rest: kernel threads, other processes)")
    header = f"{'path':<11} {'audit':<7} {'protocol':<9} {'pgbench':>8} {'postgres':>9} {'gateway':>8} {'idle':>7} {'all':>7}"
    print(header)
    print("-" * len(header))
    for line in lines:
        print(f"{line['path']:<11} {line['audit']:<7} {line['protocol']:<9} "
              f"{_fmt(line.get('pgbench_cpu_us_per_txn'), '8.1f'):>8} {_fmt(line.get('postgres_cpu_us_per_txn'), '9.1f'):>9} "
              f"{_fmt(line.get('gateway_cpu_us_per_txn'), '8.1f'):>8} {_fmt(line.get('machine_idle_us_per_txn'), '7.1f'):>7} "
              f"{_fmt(line.get('machine_us_per_txn'), '7.1f'):>7}")


def summarize_policy(runs: list[Run], baseline_mode: str, protocols: list[str]) -> list[dict]:
    """One line per protocol: the policy gateway against the allow-all gateway of the same audit mode;
    ratio = median over rounds of policy TPS ÷ allow-all TPS of the same round."""
    lines = []
    for protocol in protocols:
        allow = {r.round: r for r in runs
                 if r.path == "gateway" and r.mode == baseline_mode and r.protocol == protocol and r.tps}
        direct = {r.round: r for r in runs if r.path == "direct" and r.protocol == protocol and r.tps}
        group = [r for r in runs if r.path == "policy" and r.protocol == protocol]
        if not group:
            continue
        ratio = _median(_round_ratios(group, allow))
        lines.append({
            "audit": baseline_mode, "protocol": protocol, "rounds": len(group),
            "allow_all_tps": _median(r.tps for r in allow.values()),
            "policy_tps": _median(r.tps for r in group),
            "ratio": ratio,
            "ratio_vs_direct": _median(_round_ratios(group, direct)),
            "latency_ms": _median(r.latency_ms for r in group),
            "allow_all_cpu_us_per_txn": _median(r.gateway_cpu_us_per_txn for r in allow.values()),
            "policy_cpu_us_per_txn": _median(r.gateway_cpu_us_per_txn for r in group),
            "target": TARGET_POLICY_RATIO,
            "pass": ratio is not None and ratio >= TARGET_POLICY_RATIO,
            "errors": [r.error for r in group if r.error],
        })
    return lines


def _us(value) -> str:
    return _fmt(value, ".1f") + (" µs" if value is not None else "")


def print_policy_table(lines: list[dict], args: argparse.Namespace) -> None:
    policy = args.policy
    try:
        policy = policy.relative_to(REPO_ROOT)
    except ValueError:
        pass
    print(f"\npolicy: {policy} (token groups {args.policy_groups}) vs the allow-all gateway "
          f"(no policy), same audit mode, same rounds\n")
    header = f"{'audit':<7} {'protocol':<9} {'allow-all':>9} {'policy':>9} {'ratio':>7} {'vs direct':>9} " \
             f"{'latency':>10} {'gw CPU/txn':>11} {'allow-all':>11}  {'target':<8} result"
    print(header)
    print("-" * len(header))
    for line in lines:
        result = "PASS" if line["pass"] else "FAIL"
        if line["errors"]:
            result += f" ({len(line['errors'])} failed run(s))"
        print(f"{line['audit']:<7} {line['protocol']:<9} {_fmt(line['allow_all_tps'], '9.0f'):>9} "
              f"{_fmt(line['policy_tps'], '9.0f'):>9} "
              f"{_fmt(line['ratio'], '6.2f') + ('×' if line['ratio'] is not None else ''):>7} "
              f"{_fmt(line['ratio_vs_direct'], '6.2f') + ('×' if line['ratio_vs_direct'] is not None else ''):>9} "
              f"{_fmt(line['latency_ms'], '.3f') + ' ms':>10} {_us(line['policy_cpu_us_per_txn']):>11} "
              f"{_us(line['allow_all_cpu_us_per_txn']):>11}  {'≥ ' + format(line['target'], '.2f'):<8} {result}")
    for line in lines:
        for error in line["errors"]:
            print(f"  ! policy {line['audit']} {line['protocol']}: {error}")
    print(f"\nTPS: allow-all, policy gateway; ratio = policy ÷ allow-all (target ≥ {TARGET_POLICY_RATIO:.2f}); "
          "'vs direct', latency: policy gateway, for information;\n"
          "gw CPU/txn: policy gateway, then allow-all gateway")


def print_masking_table(result: dict) -> None:
    print(f"\nmasking: SELECT * FROM {result['table']} ({result['rows']} rows × {result['columns']} columns), "
          f"{result['client']}, audit {result['audit']}, median of {result['repeat']}\n")
    if "summary" in result:
        header = f"{'path':<31} {'seconds':>8} {'ratio':>7} {'vs direct':>9} {'gw CPU':>8}  {'target':<8} result"
        print(header)
        print("-" * len(header))
        for line in result["summary"]:
            ratio = line.get("ratio")
            target = f"≤ {line['target']:.2f}" if "target" in line else ""
            result_text = ("PASS" if line["pass"] else "FAIL") if "pass" in line else ""
            print(f"{line['path']:<31} {line['seconds']:>8.3f} "
                  f"{_fmt(ratio, '6.2f') + ('×' if ratio is not None else ''):>7} "
                  f"{_fmt(line['vs_direct'], '6.2f') + '×':>9} "
                  f"{_fmt(line['gateway_cpu_s'], '.2f') + (' s' if line['gateway_cpu_s'] is not None else ''):>8}  "
                  f"{target:<8} {result_text}")
        print(f"\ntarget: 2 masked columns ≤ {TARGET_MASKING_RATIO:.2f}× the unmasked gateway's time (ratio); "
              "the detector variant (email, credit_card) is for information")
    verification = result.get("verification")
    if verification is not None:
        print("first row (id 1), email and note:")
        for label, row in verification["first_row"].items():
            print(f"  {label:<31} {row['email']!r}, {row['note']!r}")
        counts = verification.get("emails_masked_per_run")
        if counts:
            print("emails masked per timed run (gateway's command.masked events): "
                  + "; ".join(f"{label}: {', '.join(map(str, values))}" for label, values in counts.items()))
        print("masking verified: "
              + ("PASS" if verification["pass"] else "FAIL — " + "; ".join(verification["problems"])))
    if "error" in result:
        print(f"masking: FAIL ({result['error']})")


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
    parser.add_argument("--passthrough", action=argparse.BooleanOptionalAction, default=True,
                        help="also measure a bare uvloop pass-through proxy (bench/passthrough_proxy.py) "
                             "in the same rounds: the floor a Python relay reaches here (default on)")
    parser.add_argument("--policy-compare", action=argparse.BooleanOptionalAction, default=True,
                        help="also run pgbench through a gateway enforcing --policy (default on; "
                             "--no-policy-compare skips it)")
    parser.add_argument("--policy", type=Path, default=DEFAULT_POLICY,
                        help="policy bundle for the comparison (default policies/ai-agent-default/policy.yaml)")
    parser.add_argument("--policy-groups", default=POLICY_GROUPS,
                        help=f"token group(s) for the policy gateway (default {POLICY_GROUPS})")
    parser.add_argument("--masking", action=argparse.BooleanOptionalAction, default=True,
                        help="time SELECT * of a 10-column table directly, through an unmasked and a masking "
                             "gateway (default on; --no-masking skips it)")
    parser.add_argument("--masking-rows", type=int, default=MASKING_ROWS,
                        help=f"rows of the masking table (default {MASKING_ROWS})")
    parser.add_argument("--masking-repeat", type=int, default=3, help="runs per masking path; median (default 3)")
    parser.add_argument("--workers", type=int, default=1,
                        help="gateway worker processes (config 'workers'; default 1: one process)")
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
    if args.policy_compare and not args.policy.is_file():
        parser.error(f"--policy: {args.policy} is not a file")
    if args.masking_repeat < 1 or args.masking_rows < 1:
        parser.error("--masking-repeat and --masking-rows must be at least 1")
    if not 1 <= args.workers <= 127:
        parser.error("--workers: from 1 to 127")
    if args.sessions > 190:
        parser.error("--sessions: the throwaway server allows 200 connections; use at most 190")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="wardgate-bench-"))
    pg: ThrowawayPostgres | None = None
    gateways: list[GatewayProcess] = []
    passthrough: subprocess.Popen | None = None
    try:
        pg = start_postgres(args.scale, workdir / "pg-tls" if args.tls else None)
        pgbench = pg.binary("pgbench")
        sslmode = "verify-full" if args.tls else "disable"
        direct = Endpoint("direct", "-", pg.host, pg.port, pg.service_user, pg.dbname, pg.service_password,
                          sslmode, workdir / "pg-tls" / "dev-ca.pem" if args.tls else None)
        endpoints = [direct]
        if args.passthrough:
            passthrough, port = start_passthrough(pg)
            endpoints.append(Endpoint("passthrough", "-", "127.0.0.1", port, pg.service_user, pg.dbname,
                                      pg.service_password, sslmode, direct.sslrootcert, proxy=passthrough))
        for mode in args.modes:
            gateway = GatewayProcess(mode, workdir / f"gateway-{mode}", free_port(), free_port(), workers=args.workers)
            gateways.append(gateway)
            gateway.start(pg)
            endpoints.append(Endpoint("gateway", mode, "127.0.0.1", gateway.port, CLIENT_USER, RESOURCE,
                                      gateway.token, sslmode, gateway.ca_file if args.tls else None, gateway))

        memory = None
        headline = next((e for e in endpoints if e.mode == HEADLINE_MODE), endpoints[-1])
        measured = list(endpoints)
        if args.policy_compare:
            # Same audit mode as the headline allow-all gateway, so the ratio isolates the policy.
            gateway = GatewayProcess(headline.mode, workdir / f"gateway-{headline.mode}-policy", free_port(),
                                     free_port(), name=f"{headline.mode}+policy",
                                     policy_text=args.policy.read_text(), groups=args.policy_groups,
                                     workers=args.workers)
            gateways.append(gateway)
            gateway.start(pg)
            measured.append(Endpoint("policy", headline.mode, "127.0.0.1", gateway.port, CLIENT_USER, RESOURCE,
                                     gateway.token, sslmode, gateway.ca_file if args.tls else None, gateway))
        if args.sessions > 0:
            # First, on a fresh gateway: pgbench's sessions would leave freed memory to reuse.
            print(f"memory: {args.sessions} idle sessions through gateway [{headline.mode}] …", flush=True)
            try:
                memory = measure_idle_sessions(headline, args.sessions)
            except Exception as exc:  # report, and still run the throughput part
                memory = {"mode": headline.mode, "sessions": args.sessions, "error": repr(exc), "pass": False}

        if args.warmup > 0:
            print(f"warm-up: {args.warmup}s per endpoint …", flush=True)
            for endpoint in measured:
                run_pgbench(pgbench, endpoint, args.protocol_list[0], args.warmup, args.clients, args.jobs)

        runs: list[Run] = []
        meter = MachineMeter(pg.postmaster_pid)
        for round_number in range(args.repeat):
            for protocol in args.protocol_list:
                # Interleave: direct next to each gateway, alternating the order between rounds.
                order = measured if round_number % 2 == 0 else list(reversed(measured))
                for endpoint in order:
                    if endpoint.gateway is not None and not endpoint.gateway.alive():
                        raise RuntimeError(f"the gateway ({endpoint.gateway.name}) died:\n"
                                           + "\n".join(endpoint.gateway.output))
                    run = run_pgbench(pgbench, endpoint, protocol, args.duration, args.clients, args.jobs,
                                      round_number, meter=meter)
                    runs.append(run)
                    label = f"gateway[{endpoint.gateway.name}]" if endpoint.gateway else endpoint.path
                    status = f"{run.tps:.0f} TPS" if run.tps else run.error
                    print(f"  round {round_number + 1}/{args.repeat} {protocol:<8} {label:<21} {status}", flush=True)

        masking = None
        if args.masking:
            for gateway in gateways:  # idle from now on; stop them so that only the masking gateway runs
                gateway.stop()
            stop_passthrough(passthrough)
            passthrough = None
            masking = run_masking_benchmark(pg, workdir, args, headline.mode, sslmode, direct)

        lines = summarize(runs)
        print_table(lines, memory, args)
        print_machine_table(lines)
        cost_lines = summarize_recording_cost(runs, args.protocol_list)
        if cost_lines:
            print_recording_cost(cost_lines)
        policy_lines = summarize_policy(runs, headline.mode, args.protocol_list) if args.policy_compare else None
        if policy_lines is not None:
            print_policy_table(policy_lines, args)
        if masking is not None:
            print_masking_table(masking)
        if args.json:
            results = {
                "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                            "python": platform.python_version()},
                "settings": {"duration_s": args.duration, "clients": args.clients, "jobs": args.jobs,
                             "scale": args.scale, "repeat": args.repeat, "audit_modes": args.modes,
                             "client_sslmode": sslmode, "pgbench": str(pgbench),
                             "policy_compare": args.policy_compare,
                             "policy": str(args.policy) if args.policy_compare else None,
                             "policy_groups": args.policy_groups if args.policy_compare else None,
                             "masking": args.masking, "masking_rows": args.masking_rows,
                             "masking_repeat": args.masking_repeat, "workers": args.workers},
                "targets": {"ratio": TARGET_RATIO, "kib_per_idle_session": TARGET_KIB_PER_SESSION,
                            "policy_ratio_min": TARGET_POLICY_RATIO, "masking_ratio_max": TARGET_MASKING_RATIO,
                            "recording_cost_max": TARGET_RECORDING_COST},
                "summary": lines, "memory": memory, "recording_cost": cost_lines,
                "policy_compare": policy_lines, "masking": masking,
                "runs": [asdict(r) for r in runs],
            }
            args.json.write_text(json.dumps(results, indent=2) + "\n")
            print(f"results written to {args.json}")
        failed = (any(line.get("pass") is False for line in lines + (policy_lines or []) + cost_lines)
                  or (memory is not None and not memory["pass"])
                  or (masking is not None and not masking["pass"]))
        return 1 if (args.check and failed) else 0
    finally:
        for gateway in gateways:
            gateway.stop()
        stop_passthrough(passthrough)
        if pg is not None:
            pg.stop()
        if args.keep:
            print(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
