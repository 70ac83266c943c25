"""wardgate in two minutes: ``python -m wardgate.devtools.demo`` (or ``make demo``).

What it does, printing every step:

1. starts a throwaway PostgreSQL (removed again at the end);
2. writes a demo configuration into ``./.wardgate-demo/`` (``config.yaml``, ``state/`` for the dev
   CA and the dev issuer's key, ``audit/`` for the recording);
3. starts ``wardgate serve --config .wardgate-demo/config.yaml`` (its output prefixed ``gateway |``);
4. mints a dev token for ``alice`` in group ``dev`` with ``wardgate token``;
5. runs ``psql`` through the gateway with ``sslmode=verify-full`` and the dev CA: creates a table,
   inserts rows, selects them, and sends one statement that does not parse, which the gateway
   refuses before it reaches PostgreSQL;
6. shows where the session was recorded and what the recording says;
7. stops everything (``--keep-running`` keeps the gateway and PostgreSQL up until Ctrl-C, so the
   printed commands can be tried by hand).

Exit status 0 when all of that worked; 1 if PostgreSQL is not installed or a step failed.
"""

from __future__ import annotations

import argparse
import hashlib
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path

import orjson

from wardgate.core.audit import read_segment

from wardgate.devtools.pgserver import ThrowawayPostgres, env_without_libpq as clean_env, free_port

RESOURCE = "orders-dev"  # a development resource in the default policy: agents may write there
PROD_RESOURCE = "orders-prod"  # production: the default policy holds agents' changes for a DBA
APPROVER, APPROVER_GROUP = "dana", "dba"
HELD_STATEMENT = "ALTER TABLE demo_customers ADD COLUMN loyalty_tier text"
SUBJECT = "agent-7"
GROUP = "ai-agents"      # the default policy's `agent` role
GATEWAY_START_TIMEOUT = 60.0
EMAIL = "jane.doe@example.com"
# The bundle the demo runs with: the safe default for AI coding agents.
POLICY_BUNDLE = Path(__file__).resolve().parents[3] / "policies" / "ai-agent-default" / "policy.yaml"

STATEMENTS = [
    "CREATE TABLE demo_customers (id serial PRIMARY KEY, name text NOT NULL, email text, orders int)",
    f"INSERT INTO demo_customers (name, email, orders) VALUES ('Jane', '{EMAIL}', 3), ('Omar', 'omar@example.org', 1)",
    "SELECT id, name, email, orders FROM demo_customers ORDER BY id",  # emails are masked
    "DELETE FROM demo_customers WHERE 1 = 1",  # a tautology is no filter: refused
    "DROP TABLE demo_customers",                # destructive: refused
    "SELEC name FROM demo_customers",           # does not parse: refused
    "SELECT count(*) AS customers, sum(orders) AS orders FROM demo_customers",
]
# What must never reach PostgreSQL, and what must never reach the client.
REFUSED_MARKERS = ("DELETE FROM demo_customers", "DROP TABLE demo_customers", "SELEC name")
REFUSED_COUNT = 3


class DemoError(Exception):
    """A step failed; the message says which and why."""


# ------------------------------------------------------------------------------------ printing
def step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def shell_quote(arg: str) -> str:
    """Quote for a POSIX shell, preferring double quotes around SQL that holds single quotes."""
    if "'" in arg and not any(c in arg for c in '"$`\\!'):
        return f'"{arg}"'
    return shlex.quote(arg)


def show_command(argv: list[str], env_prefix: str = "", *, one_per_line: str | None = None) -> None:
    """Print a command line; with ``one_per_line`` (an option such as ``-c``), each of its
    occurrences starts a continuation line."""
    words = [shell_quote(a) for a in argv]
    if one_per_line is None:
        print(f"  $ {env_prefix}{' '.join(words)}", flush=True)
        return
    text, i = f"  $ {env_prefix}", 0
    while i < len(words):
        if argv[i] == one_per_line and i + 1 < len(words):
            text += f" \\\n      {words[i]} {words[i + 1]}"
            i += 2
        else:
            text += ("" if text.endswith(" ") else " ") + words[i]
            i += 1
    print(text, flush=True)


def indent(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line for line in text.rstrip("\n").splitlines())


def display_path(path: Path) -> str:
    """``path`` relative to the working directory when it is below it (shorter to read and type)."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def wardgate_command() -> str:
    """How the user invokes wardgate in their shell."""
    beside = Path(sys.executable).parent / "wardgate"
    on_path = shutil.which("wardgate")
    if on_path and beside.exists() and Path(on_path).resolve() == beside.resolve():
        return "wardgate"
    if beside.exists():
        return display_path(beside)
    return f"{shlex.quote(sys.executable)} -m wardgate.cli"


# ------------------------------------------------------------------------------------- set-up
def write_config(demo_dir: Path, pg: ThrowawayPostgres, port: int, control_port: int) -> Path:
    demo_dir.mkdir(parents=True, exist_ok=True)
    # The gateway's own backend password, in a file only we can read (a credential URL, file://).
    secret = demo_dir / "backend-password"
    secret.write_text(pg.service_password + "\n")
    secret.chmod(0o600)
    config = demo_dir / "config.yaml"
    config.write_text(f"""\
# wardgate demo configuration, written by `python -m wardgate.devtools.demo`.
# Relative paths are relative to this file. The resource below is a throwaway PostgreSQL that
# exists only while the demo runs: point it at your own server to keep using this file.
listeners:
  - protocol: postgres
    address: 127.0.0.1:{port}
    # No `tls:` block: a dev CA and server certificate are generated in state_dir
    # (clients verify them with sslmode=verify-full sslrootcert=state/dev-ca.pem).
control:
  address: 127.0.0.1:{control_port}
state_dir: ./state
dev_issuer:
  enabled: true          # `wardgate token` mints tokens this gateway trusts (development only)
resources:
  {RESOURCE}:            # clients name this as the database
    protocol: postgres
    host: {pg.host}
    port: {pg.port}
    database: {pg.dbname}
    username: {pg.service_user}
    password: file://{secret.resolve()}
  {PROD_RESOURCE}:           # the same database, seen as production by the policy
    protocol: postgres
    host: {pg.host}
    port: {pg.port}
    database: {pg.dbname}
    username: {pg.service_user}
    password: file://{secret.resolve()}
audit:
  sink: file://./audit   # JSON lines, one event per fact, hash-chained per session
policy:
  file: ./policy.yaml    # a copy of policies/ai-agent-default: edit it, the gateway reloads it
""")
    (demo_dir / "policy.yaml").write_text(POLICY_BUNDLE.read_text())
    return config


class GatewayProcess:
    """``wardgate serve`` in a child process, its output echoed with a prefix."""

    def __init__(self, config: Path):
        self.config = config
        self.proc: subprocess.Popen | None = None
        self.lines: deque[str] = deque(maxlen=100)
        self._ready = threading.Event()
        self._pump: threading.Thread | None = None

    def start(self) -> None:
        argv = [sys.executable, "-m", "wardgate.cli", "serve", "--config", str(self.config)]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, env=clean_env())
        self._pump = threading.Thread(target=self._echo, name="gateway-output", daemon=True)
        self._pump.start()
        deadline = time.monotonic() + GATEWAY_START_TIMEOUT
        while not self._ready.wait(0.1):
            if self.proc.poll() is not None:
                self._pump.join(2)
                raise DemoError(f"wardgate serve exited with status {self.proc.returncode} (its output is above)")
            if time.monotonic() > deadline:
                raise DemoError(f"wardgate serve did not start within {GATEWAY_START_TIMEOUT:.0f}s")

    def _echo(self) -> None:
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            self.lines.append(line)
            print(f"  gateway | {line}", flush=True)
            if line.startswith("wardgate: control port on"):  # printed once every listener is up
                self._ready.set()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        if self._pump is not None:
            self._pump.join(2)


def mint_token(config: Path, wardgate: str, subject: str = SUBJECT, group: str = GROUP, var: str = "TOKEN") -> str:
    argv = ["token", "--config", display_path(config), "--sub", subject, "--groups", group]
    print(f"  $ {var}=$({wardgate} {shlex.join(argv)})", flush=True)
    proc = subprocess.run([sys.executable, "-m", "wardgate.cli", *argv], capture_output=True, text=True,
                          env=clean_env())
    if proc.returncode != 0:
        raise DemoError(f"wardgate token failed (exit {proc.returncode}): {proc.stderr.strip()}")
    token = proc.stdout.strip()
    print(f"    {token[:24]}…{token[-8:]}  (a short-lived JWT signed by the dev issuer)")
    return token


# --------------------------------------------------------------------------------------- audit
def read_events(paths: list[Path]) -> list[tuple[bytes, dict]]:
    """(raw line, event) for every event in ``paths``, in file order."""
    events = []
    for path in paths:
        events.extend((line, orjson.loads(line)) for line in read_segment(path) if line.strip())
    return events


def wait_for_session_end(audit_dir: Path, known: set[Path], timeout: float = 10.0) -> list[Path]:
    """Audit files written by this run, once they hold a finished session of our subject."""
    deadline = time.monotonic() + timeout
    while True:
        files = sorted(p for p in audit_dir.glob("*.jsonl") if p not in known)
        events = [event for _, event in read_events(files)]
        ended = {e.get("session") for e in events if e.get("type") == "session.ended"}
        ours = {e.get("session") for e in events if e.get("type") == "session.authenticated"
                and (e.get("principal") or {}).get("subject") == SUBJECT}
        if ours & ended or time.monotonic() > deadline:
            return files
        time.sleep(0.1)


def chain_intact(lines: list[bytes]) -> bool:
    previous = "0" * 64
    for raw in lines:
        if orjson.loads(raw).get("prev_hash") != previous:
            return False
        previous = hashlib.sha256(raw).hexdigest()
    return True


def clip(text: str | None, width: int = 70) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= width else text[:width - 1] + "…"


def describe(event: dict) -> str:
    """One readable line (two for a refusal) about an event; unknown shapes are shown as JSON."""
    try:
        return _describe(event)
    except (KeyError, TypeError, AttributeError):
        return clip(orjson.dumps({k: v for k, v in event.items() if k not in _COMMON}).decode(), 90)


def _describe(event: dict) -> str:
    kind = event.get("type")
    if kind == "session.started":
        client = event.get("client") or {}
        return (f"from {event.get('peer')}, TLS {'on' if event.get('tls') else 'off'}, client user "
                f"{client.get('claimed_user')!r}, application {client.get('application_name')!r}")
    if kind == "session.authenticated":
        p = event["principal"]
        return f"{p['subject']} (groups: {', '.join(p.get('groups') or []) or '-'}) via {p.get('issuer')}"
    if kind == "session.authentication_failed":
        return f"{event.get('reason')}: {event.get('message')}"
    if kind == "session.connected":
        return f"backend connection made (PostgreSQL pid {event.get('backend_pid')})"
    if kind == "command.decided":
        text = f"{str(event['decision']).upper():<6} {clip(event.get('statement'), 62)}"
        if event["decision"] != "allow":
            text += f"\n{'':>35}rule {event.get('rule')}: {clip(event.get('message'), 80)}"
        return text
    if kind == "command.result":
        parts = [str(event["status"])]
        if event.get("tag"):
            parts.append(event["tag"])
        if event.get("rows") is not None:
            parts.append(f"rows={event['rows']}")
        if event.get("error"):
            parts.append(f"error {event['error'].get('code')}")
        if event.get("duration_us") is not None:
            parts.append(f"{event['duration_us'] / 1000:.3f} ms")
        return "  ".join(parts)
    if kind == "session.ended":
        return (f"{event.get('reason')}; {event.get('commands')} commands, {event.get('denied')} denied, "
                f"{event.get('duration_s')} s")
    raise KeyError(kind)


_COMMON = {"v", "id", "time", "type", "session", "seq", "gateway", "protocol", "resource", "identity",
           "prev_hash", "controls"}


def summarize_audit(files: list[Path]) -> dict:
    """Print the recorded sessions of this run; return counts for the final check."""
    events = read_events(files)
    sessions: dict[str, list[tuple[bytes, dict]]] = {}
    for raw, event in events:
        sessions.setdefault(event.get("session", "?"), []).append((raw, event))
    for path in files:
        print(f"  audit file: {path}")
    denied = allowed = 0
    for session_id, items in sessions.items():
        intact = chain_intact([raw for raw, _ in items])
        title = ("gateway events (not a client session)" if session_id.startswith("gateway-")
                 else f"session {session_id}")
        print(f"\n  {title}: {len(items)} events, hash chain {'intact' if intact else 'BROKEN'}")
        print(f"  {'seq':>4}  {'type':<26} what")
        for _, event in items:
            print(f"  {event.get('seq', '?'):>4}  {event.get('type', '?'):<26} {describe(event)}")
            if event.get("type") == "command.decided":
                if event.get("decision") == "allow":
                    allowed += 1
                else:
                    denied += 1
    return {"events": len(events), "sessions": len(sessions), "allowed": allowed, "denied": denied}


# ---------------------------------------------------------------------------------------- main
def run_demo(args: argparse.Namespace) -> int:
    demo_dir = Path(args.dir).resolve()
    wardgate = wardgate_command()

    step("Starting a throwaway PostgreSQL")
    try:
        pg = ThrowawayPostgres().start()
    except RuntimeError as exc:
        print(f"demo: cannot start PostgreSQL: {exc}", file=sys.stderr)
        return 1
    gateway: GatewayProcess | None = None
    try:
        try:
            psql = pg.binary("psql")
        except RuntimeError as exc:
            print(f"demo: {exc}", file=sys.stderr)
            return 1
        print(f"  PostgreSQL on {pg.host}:{pg.port}: database {pg.dbname!r}, role {pg.service_user!r} "
              "(the gateway's own account; clients never see its password)")

        step(f"Writing the demo configuration into {display_path(demo_dir)}/")
        port, control_port = free_port(), free_port()
        config = write_config(demo_dir, pg, port, control_port)
        audit_dir = demo_dir / "audit"
        known_audit_files = set(audit_dir.glob("*.jsonl")) if audit_dir.exists() else set()
        print(f"  config: {config}")
        print(indent(config.read_text(), "    | "))

        step("Starting the gateway")
        show_command([wardgate, "serve", "--config", display_path(config)])
        gateway = GatewayProcess(config)
        gateway.start()
        ca_file = demo_dir / "state" / "dev-ca.pem"

        step(f"Minting a dev token for {SUBJECT!r} in group {GROUP!r}")
        token = mint_token(config, wardgate)

        step("Running psql through the gateway (TLS verified against the dev CA; the token is the password)")
        conninfo = (f"host=127.0.0.1 port={port} dbname={RESOURCE} user={SUBJECT} "
                    f"sslmode=verify-full sslrootcert={display_path(ca_file)}")
        argv = [str(psql), "-X", "-e", conninfo]
        for statement in STATEMENTS:
            argv += ["-c", statement]
        shown = ["psql", "-e", conninfo] + [a for s in STATEMENTS for a in ("-c", s)]
        show_command(shown, env_prefix="PGPASSWORD=$TOKEN ", one_per_line="-c")
        proc = subprocess.run(argv, env=clean_env(PGPASSWORD=token, PGCONNECT_TIMEOUT="10"),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60)
        print(indent(proc.stdout))
        print(f"  (psql exit status {proc.returncode}. The ERRORs above are the gateway refusing, per the "
              "policy, a DELETE\n   whose WHERE filters nothing, a DROP TABLE and a statement that does not parse: "
              "none of them reached\n   PostgreSQL. The emails came back masked.)")
        if proc.returncode != 0:
            raise DemoError(f"psql failed (exit {proc.returncode})")
        result_of_select = proc.stdout.split(STATEMENTS[2], 1)[-1].split(STATEMENTS[3], 1)[0]
        if EMAIL in result_of_select:  # (psql -e echoes the INSERT that contains it; that is fine)
            raise DemoError("an email reached the client unmasked")

        step("What the gateway recorded")
        files = wait_for_session_end(audit_dir, known_audit_files)
        if not files:
            raise DemoError(f"no audit file appeared in {audit_dir}")
        counts = summarize_audit(files)
        if counts["denied"] != REFUSED_COUNT or counts["allowed"] != len(STATEMENTS) - REFUSED_COUNT:
            raise DemoError(f"unexpected recording: {counts}")
        backend_log = pg.log_text()
        reached = [marker for marker in REFUSED_MARKERS if marker in backend_log]
        if reached:
            raise DemoError(f"refused statements reached PostgreSQL: {reached}")
        print("\n  PostgreSQL's own statement log has no trace of the refused statements: the refusals "
              "happened in the gateway.")

        step(f"A change on {PROD_RESOURCE!r} is held until a DBA approves it")
        approve_held_change(wardgate, config, psql, port, ca_file, control_port, token)

        print_by_hand(wardgate, config, conninfo, args.keep_running)
        if args.keep_running:
            print("\nThe gateway and PostgreSQL keep running: press Ctrl-C to stop them.", flush=True)
            try:
                while gateway.proc.poll() is None:
                    time.sleep(0.5)
            except KeyboardInterrupt:
                print()
        step("Stopping the gateway and PostgreSQL")
        return 0
    except DemoError as exc:
        print(f"\ndemo: {exc}", file=sys.stderr)
        return 1
    finally:
        if gateway is not None:
            gateway.stop()
        pg.stop()


def approve_held_change(wardgate: str, config: Path, psql: Path, port: int, ca_file: Path, control_port: int,
                        token: str) -> None:
    """The agent's ALTER TABLE on production waits (psql shows the NOTICE); another identity in the
    approver group approves it with `wardgate approvals approve`; then exactly that statement runs."""
    import re
    import threading

    conninfo = (f"host=127.0.0.1 port={port} dbname={PROD_RESOURCE} user={SUBJECT} "
                f"sslmode=verify-full sslrootcert={display_path(ca_file)}")
    show_command(["psql", conninfo, "-c", HELD_STATEMENT], env_prefix="PGPASSWORD=$TOKEN ")
    proc = subprocess.Popen([str(psql), "-X", conninfo, "-c", HELD_STATEMENT],
                            env=clean_env(PGPASSWORD=token, PGCONNECT_TIMEOUT="10"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    held = re.compile(r"request (\S+), rule")
    deadline = time.monotonic() + 20
    while not any(held.search(line) for line in lines):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise DemoError(f"the production change was not held for approval: {''.join(lines)}")
        time.sleep(0.05)
    request = next(held.search(line).group(1) for line in lines if held.search(line))
    print(indent("".join(lines)))
    print(f"  (psql is waiting. Nothing has reached PostgreSQL yet. Now {APPROVER!r}, a DBA, approves:)")
    approver_token = mint_token(config, wardgate, APPROVER, APPROVER_GROUP, "APPROVER_TOKEN")
    argv = ["approvals", "approve", request, "--reason", "schema change reviewed", "--url",
            f"http://127.0.0.1:{control_port}"]
    print(f"  $ WARDGATE_TOKEN=$APPROVER_TOKEN {wardgate} {shlex.join(argv)}", flush=True)
    decision = subprocess.run([sys.executable, "-m", "wardgate.cli", *argv], capture_output=True, text=True,
                              env=clean_env(WARDGATE_TOKEN=approver_token))
    print(indent((decision.stdout + decision.stderr).strip()))
    if decision.returncode != 0:
        proc.kill()
        raise DemoError(f"the approval failed (exit {decision.returncode})")
    out, _ = proc.communicate(timeout=30)
    reader.join(5)
    print(indent(out.strip()))
    if proc.returncode != 0:
        raise DemoError(f"the approved statement failed: {''.join(lines)}")
    print(f"  (the held ALTER TABLE ran once approved; the request, {APPROVER!r}'s decision and the result are "
          "in the session's hash chain)")


def print_by_hand(wardgate: str, config: Path, conninfo: str, keep_running: bool) -> None:
    cfg = display_path(config)
    step("To do the same by hand")
    if not keep_running:
        print("  (the demo's PostgreSQL is gone when it ends: run it with --keep-running to keep both up,\n"
              f"   or point `resources` in {cfg} at your own server)")
        print(f"  $ {wardgate} serve --config {cfg}          # in one terminal")
    print(f"  $ export PGPASSWORD=$({wardgate} token --config {cfg} --sub {SUBJECT} --groups {GROUP})")
    print(f"  $ psql {shell_quote(conninfo)}")
    print(f"  $ tail -n 3 {display_path(config.parent / 'audit')}/*.jsonl   # the recording, one JSON event per line")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m wardgate.devtools.demo",
                                     description="Run wardgate in front of a throwaway PostgreSQL and show "
                                                 "what it records.")
    parser.add_argument("--dir", default=".wardgate-demo", help="where to write the demo configuration, "
                        "state and audit files (default ./.wardgate-demo)")
    parser.add_argument("--keep-running", action="store_true",
                        help="keep the gateway and PostgreSQL up until Ctrl-C, to try the commands by hand")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return run_demo(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
