"""The end-to-end approval and audit flow, the same on every cloud (a uniquely named helper module).

Each cloud's test supplies a :class:`CloudSide` (how its platform feeds the function entry points
and where its stores are); :func:`run_flow` drives a real gateway, a real PostgreSQL and an agent's
real psycopg session through it and checks every hand-off.
"""

from __future__ import annotations

import re
import secrets
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import psycopg
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
for path in (REPO_ROOT, REPO_ROOT / "tests" / "functions"):  # `functions`, and the event builders
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from wardgate import adapters  # noqa: E402
from wardgate.cli import main as wardgate_main  # noqa: E402
from wardgate.core.archive import download_trail  # noqa: E402
from wardgate.devtools.harness import GatewayThread, default_test_config, wait_for  # noqa: E402
from wardgate.evidence import verify_manifest  # noqa: E402

PROD = "orders-prod"
HELD = re.compile(r"held for approval \(request (\S+), rule ([^)]+)\)")
BUNDLE = REPO_ROOT / "policies" / "ai-agent-default" / "policy.yaml"


def policy_file() -> Path:
    """The shipped agent bundle: agents' writes on production are held for a dba."""
    directory = Path(tempfile.mkdtemp(prefix="wardgate-e2e-policy-"))
    path = directory / "policy.yaml"
    path.write_text(yaml.safe_dump(yaml.safe_load(BUNDLE.read_text()), sort_keys=False))
    return path


def start_gateway(postgres, urls: dict[str, str], *, queue: str | None = None, archive: str | None = None,
                  **approvals: Any) -> GatewayThread:
    """A gateway configured with the cloud's URLs, its notifier left to the cloud function."""
    directory = Path(tempfile.mkdtemp(prefix="wardgate-e2e-"))
    config = default_test_config(
        postgres, directory, policy={"file": str(policy_file()), "watch": False},
        approvals={"store": urls["decision_store"], "queue": queue or urls["queue"], "run_notifier": False,
                   **approvals},
        audit={"sink": f"file://{directory / 'audit'}", "archive": archive or urls["audit_bucket"],
               "signer": urls["signer"], "seal_interval": "1s", "archive_interval": 0.5})
    return GatewayThread(config, directory).start()


def make_table(postgres) -> str:
    name = f"e2e_{secrets.token_hex(4)}"
    postgres.run_sql(f"CREATE TABLE {name} (id int PRIMARY KEY); ALTER TABLE {name} OWNER TO wardgate_svc;",
                     dbname="orders")
    return name


class HeldClient:
    """An agent's statement in a thread (it blocks while held); collects the notices it gets."""

    def __init__(self, gw: GatewayThread, sql: str):
        self.notices: list[str] = []
        self.error: Exception | None = None
        self.done = threading.Event()
        self.conn = psycopg.connect(gw.dsn(gw.token("agent-7", groups=("ai-agents",)), PROD), autocommit=True)
        self.conn.add_notice_handler(lambda d: self.notices.append(f"{d.message_primary} | {d.message_hint}"))
        threading.Thread(target=self._run, args=(sql,), daemon=True).start()

    def _run(self, sql: str) -> None:
        try:
            self.conn.execute(sql)
        except Exception as exc:  # the assertion is on what the client got
            self.error = exc
        self.done.set()

    def request_id(self, timeout: float = 20.0) -> str:
        wait_for(lambda: any(HELD.search(n) for n in self.notices), "the held-for-approval notice", timeout=timeout)
        return next(HELD.search(n).group(1) for n in self.notices if HELD.search(n))

    def result(self, timeout: float = 30.0) -> Exception | None:
        assert self.done.wait(timeout), "the held statement never finished"
        self.conn.close()
        return self.error


@dataclass
class CloudSide:
    """What differs per cloud: the URLs, and the platform's way of calling each entry point."""

    urls: dict[str, str]
    evidence_url: str
    notify: Callable[[], Any]                    # queue message → notifier entry point; returns its answer
    decide: Callable[[GatewayThread, str], Any]  # approver → webhook entry point; returns its answer
    export: Callable[[str], Any]                 # the day → evidence-export entry point
    on_gateway: Callable[[GatewayThread], None] = lambda gw: None  # e.g. trust its dev issuer


def trail_events(store_url: str) -> list[dict[str, Any]]:
    import orjson

    with tempfile.TemporaryDirectory() as directory:
        download_trail(adapters.open_object_store(store_url), Path(directory))
        return [orjson.loads(line) for path in sorted(Path(directory).glob("*.jsonl"))
                for line in path.read_bytes().splitlines() if line.strip()]


def run_flow(postgres, receiver, side: CloudSide, capsys) -> dict[str, Any]:
    gw = start_gateway(postgres, side.urls)
    try:
        side.on_gateway(gw)
        table = make_table(postgres)
        held = HeldClient(gw, f"INSERT INTO {table} VALUES (1)")
        request = held.request_id()

        side.notify()  # the notifier entry point, given the real queue message
        [posted] = [r for r in receiver.received if request in r.body.decode()]
        answer = side.decide(gw, request)  # the webhook entry point records the decision
        assert held.result() is None, held.error
        assert postgres.run_sql(f"SELECT count(*) FROM {table}", dbname="orders").strip() == "1"

        # The audit events reach the WORM bucket while the gateway runs (sealed every second).
        wait_for(lambda: any(e["type"] == "approval.decided" and e.get("request") == request
                             for e in trail_events(side.urls["audit_bucket"])),
                 "the approval in the archive", timeout=30, interval=0.5)
    finally:
        gw.stop()
    assert gw.gateway.archive.last_error is None

    day = time.strftime("%Y-%m-%d", time.gmtime())
    exported = side.export(day)
    with tempfile.TemporaryDirectory() as directory:
        trail, package = Path(directory) / "trail", Path(directory) / "package"
        download_trail(adapters.open_object_store(side.urls["audit_bucket"]), trail)
        evidence = adapters.open_object_store(side.evidence_url)
        for key in evidence.list(f"{day}/"):
            (package / key).parent.mkdir(parents=True, exist_ok=True)
            (package / key).write_bytes(evidence.get(key))
        assert verify_manifest(package / day, trail=trail) == []  # signed by the cloud KMS key

    capsys.readouterr()
    assert wardgate_main(["audit", "verify", side.urls["audit_bucket"]]) == 0, capsys.readouterr()
    events = trail_events(side.urls["audit_bucket"])
    types = [e["type"] for e in events if e.get("request") == request]
    assert types.index("approval.requested") < types.index("approval.decided")
    return {"request": request, "posted": posted, "answer": answer, "exported": exported, "events": events}
