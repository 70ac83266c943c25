"""Helpers shared by several test directories (a uniquely named module: several directories have a
``conftest``): a JSON service on loopback, a webhook receiver, signed Slack/generic decisions, Lambda's
context object, the Functions Framework app of a GCP entry point, an agent's insert and the
``wardgate`` CLI run as a person.

Importing it puts the repository root on ``sys.path``: the serverless ``functions`` live there.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import io
import json
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from wardgate.approvals.notify import sign_body  # noqa: E402


# -- a JSON HTTP service on loopback ------------------------------------------------------------------


class LoopbackJson:
    """A threaded HTTP server on a free 127.0.0.1 port standing in for a service that answers JSON
    (an OIDC issuer, the gateway's control port, an OAuth token endpoint).

    ``respond(method, path, body)`` returns ``(status, document)``: ``document`` is sent as JSON with
    a 2xx status; any other status is sent as an error page."""

    def __init__(self, respond: Callable[[str, str, bytes], tuple[int, Any]]) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, document = respond(self.command, self.path, body)
                if not 200 <= status < 300:
                    self.send_error(status)
                    return
                data = json.dumps(document).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _answer  # noqa: N815 (http.server's naming)

            def log_message(self, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._httpd.server_port
        self.url = f"http://127.0.0.1:{self.port}"
        # A short poll interval keeps shutdown() (and so each test's teardown) quick.
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)


# -- the chat platform's side ------------------------------------------------------------------------


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """Answers each POST with the next scripted status (then 200) and keeps what it got."""

    url: str
    statuses: list[int] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)


@contextlib.contextmanager
def start_receiver() -> Iterator[Receiver]:
    """A :class:`Receiver` served on a free loopback port until the block ends."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    state = Receiver(url="")
    lock = threading.Lock()  # the server is threaded: concurrent POSTs share the script

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with lock:
                state.received.append(Received(self.path, dict(self.headers), body))
                status = state.statuses.pop(0) if state.statuses else 200
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def generic_signed(secret: bytes, payload: Mapping[str, Any], now: float | None = None) -> tuple[bytes, dict[str, str]]:
    """A generic-webhook decision as an approver's tool sends it (HMAC over "<timestamp>.<body>")."""
    body = json.dumps(payload).encode()
    timestamp = str(int(now if now is not None else time.time()))
    return body, {"Content-Type": "application/json", "X-Wardgate-Timestamp": timestamp,
                  "X-Wardgate-Signature": sign_body(secret, timestamp, body)}


def slack_signed(secret: bytes, user: str, value: str) -> tuple[bytes, dict[str, str]]:
    """A Slack block_actions interaction (form-encoded ``payload``), signed as Slack signs it."""
    payload = {"type": "block_actions", "user": {"id": user, "username": user},
               "actions": [{"action_id": "wardgate_approve", "value": value}]}
    body = urlencode({"payload": json.dumps(payload)}).encode()
    timestamp = str(int(time.time()))
    signature = "v0=" + hmac.new(secret, b"v0:" + timestamp.encode() + b":" + body, hashlib.sha256).hexdigest()
    return body, {"Content-Type": "application/x-www-form-urlencoded", "X-Slack-Request-Timestamp": timestamp,
                  "X-Slack-Signature": signature}


# -- the platforms' runtimes -------------------------------------------------------------------------


@dataclass
class LambdaContext:
    """The attributes of Lambda's context object that powertools reads."""

    function_name: str = "wardgate-test"
    memory_limit_in_mb: int = 256
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    @property
    def invoked_function_arn(self) -> str:
        return f"arn:aws:lambda:us-east-1:123456789012:function:{self.function_name}"

    def get_remaining_time_in_millis(self) -> int:
        return 60_000


def framework_client(unit: str, target: str, signature: str) -> Any:
    """A test client of functions-framework's own app for ``functions/<unit>/gcp.py``'s ``target``."""
    import functions_framework

    app = functions_framework.create_app(target=target, source=str(REPO_ROOT / "functions" / unit / "gcp.py"),
                                         signature_type=signature)
    return app.test_client()


# -- an agent's and a person's side of a gateway ---------------------------------------------------


def inserted(conn: Any, table: str, value: int) -> bool:
    """Whether the gateway let ``conn`` insert ``value`` into ``table`` (False: refused for privilege)."""
    from psycopg import errors

    try:
        conn.execute(f"INSERT INTO {table} (id) VALUES ({value})")
        return True
    except errors.InsufficientPrivilege:
        return False


# -- a person at a terminal --------------------------------------------------------------------------


def cli_as(gateway: Any, token: str, *args: str) -> tuple[int, str]:
    """``wardgate approvals|access …`` as a person runs it against ``gateway``'s control port
    (``.control_url``), the token in ``WARDGATE_TOKEN`` as the CLI documents: exit code and stdout."""
    from wardgate.cli import main as wardgate_main

    old = os.environ.get("WARDGATE_TOKEN")
    os.environ["WARDGATE_TOKEN"] = token
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            code = wardgate_main([*args, "--url", gateway.control_url])
    finally:
        if old is None:
            os.environ.pop("WARDGATE_TOKEN", None)
        else:
            os.environ["WARDGATE_TOKEN"] = old
    return code, out.getvalue()


def default_policy_text(*, naming_table: str | None = None) -> str:
    """The shipped default policy (``policies/ai-agent-default``); with ``naming_table``, its masking
    profile also has a column rule that names that table (``<table>.ssn``), so a computed column of a
    statement reading the table is redacted whole."""
    text = (REPO_ROOT / "policies/ai-agent-default/policy.yaml").read_text()
    if naming_table is None:
        return text
    rule = '      - {match: "*.*.ssn", strategy: redact}\n'
    assert rule in text
    return text.replace(rule, rule + f'      - {{match: "{naming_table}.ssn", strategy: redact}}\n')
