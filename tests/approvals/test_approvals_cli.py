"""``wardgate approvals …`` / ``wardgate access …`` as separate processes against the approvals handler
served over HTTP by aiohttp on loopback (as the control port will mount it), with dev-issuer tokens."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from approvals_helpers import hold, serve_webhook
from wardgate.approvals.webhook import ApprovalWebhook
from wardgate.devtools.pgserver import free_port


@pytest.fixture
def api(service, verifier, clock):
    hook = ApprovalWebhook(service, verifier=verifier, slack_signing_secret=None, hmac_secret=None, link_key=None,
                           identities={}, clock=clock, grant_approvers={"admin": (["dba"], 1)})
    yield from serve_webhook(hook)


def wardgate(url: str, token: str | None, *args: str, token_file: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("WARDGATE_TOKEN", "WARDGATE_URL")}
    if token is not None:
        env["WARDGATE_TOKEN"] = token
    group, command, *rest = args
    extra = ["--url", url] + (["--token-file", token_file] if token_file else [])
    return subprocess.run([sys.executable, "-m", "wardgate.approvals.cli", group, command, *extra, *rest],
                          env=env, capture_output=True, text=True, timeout=60)


def test_approver_lists_and_approves(api, service, dev_issuer, tmp_path):
    request = hold(service)
    token_file = tmp_path / "bob.jwt"
    token_file.write_text(dev_issuer.mint("bob", groups=["dba"]) + "\n")
    listed = wardgate(api, None, "approvals", "list", token_file=str(token_file))
    assert listed.returncode == 0, listed.stderr
    assert request.id in listed.stdout and "ALTER TABLE orders ADD c int" in listed.stdout
    assert "requester=alice" in listed.stdout
    approved = wardgate(api, None, "approvals", "approve", request.id, "--reason", "reviewed",
                        token_file=str(token_file))
    assert approved.returncode == 0, approved.stderr
    assert f"request {request.id} approved by bob" in approved.stdout
    assert service.outcome(request.id).approved and service.get(request.id)[1][0].reason == "reviewed"
    shown = wardgate(api, None, "approvals", "show", request.id, token_file=str(token_file))
    assert "vote approve by bob via cli" in shown.stdout
    again = wardgate(api, None, "approvals", "deny", request.id, token_file=str(token_file))
    assert again.returncode == 1 and "HTTP 409" in again.stderr and "already approved by bob" in again.stderr


def test_non_approver_and_unknown_request_fail_with_the_servers_reason(api, service, dev_issuer):
    request = hold(service)
    dave = dev_issuer.mint("dave", groups=["developers"])
    refused = wardgate(api, dave, "approvals", "approve", request.id)
    assert refused.returncode == 1 and "must hold one of dba" in refused.stderr
    unknown = wardgate(api, dave, "approvals", "show", "apr-does-not-exist")
    assert unknown.returncode == 1 and "HTTP 404" in unknown.stderr
    assert service.outcome(request.id) is None


def test_access_request_then_list(api, service, dev_issuer):
    alice = dev_issuer.mint("alice", groups=["developers"])
    asked = wardgate(api, alice, "access", "request", "--resource", "orders", "--role", "admin",
                     "--duration", "30m", "--reason", "incident 42")
    assert asked.returncode == 0, asked.stderr
    assert "waiting for approval" in asked.stdout
    [(request, _)] = service.requests("pending")
    assert (request.role, request.duration_seconds, request.reason) == ("admin", 1800.0, "incident 42")
    pending = wardgate(api, alice, "access", "list")
    assert f"{request.id}  pending  role=admin" in pending.stdout
    bob = dev_issuer.mint("bob", groups=["dba"])
    assert wardgate(api, bob, "approvals", "approve", request.id).returncode == 0
    active = wardgate(api, alice, "access", "list")
    assert f"{request.id}  ACTIVE  role=admin  resource=orders" in active.stdout and "approved by bob" in active.stdout


def test_missing_token_and_unreachable_server(api):
    no_token = wardgate(api, None, "approvals", "list")
    assert no_token.returncode == 2 and "no token" in no_token.stderr
    down = wardgate(f"http://127.0.0.1:{free_port()}", "x", "approvals", "list")
    assert down.returncode == 2 and "cannot reach" in down.stderr
    bad = wardgate(api, "not-a-token", "approvals", "list")
    assert bad.returncode == 1 and "HTTP 401" in bad.stderr
