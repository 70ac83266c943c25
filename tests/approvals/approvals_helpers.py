"""Helpers for the approval-flow tests (identities, a hand-moved clock, the handler over aiohttp)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

from aiohttp import web

from wardgate.approvals.records import ApprovalRequest, Outcome, command_hash
from wardgate.approvals.service import ApprovalService
from wardgate.approvals.webhook import ApprovalWebhook, WebhookRequest
from wardgate.core.devissuer import DevIssuer
from wardgate.core.model import Principal

ISSUER = "https://idp.example.test"


def person(subject: str, *groups: str, issuer: str = ISSUER) -> Principal:
    return Principal(issuer=issuer, subject=subject, groups=tuple(groups))


ALICE = person("alice", "developers")       # asks
BOB = person("bob", "dba")                  # approves
CAROL = person("carol", "dba", "security")  # approves
DAVE = person("dave", "developers")         # may not approve


def roles_of(principal: Principal) -> set[str]:
    return set(principal.groups)


class Clock:
    """A clock the test moves by hand (deadlines, grant expiry, timestamp windows)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def hold(service: ApprovalService, requester: Principal = ALICE, *, statement: str = "ALTER TABLE orders ADD c int",
         quorum: int = 1, timeout: float = 600, approvers=("dba",), session_id: str = "s-1"):
    return service.request_statement(
        requester, session_id=session_id, resource="orders", statement=statement, parameters=[],
        command_hash=command_hash(statement, []), rule="ddl-needs-review", controls=["AC-3", "CM-3"],
        approvers=list(approvers), quorum=quorum, scope="statement", scope_seconds=None, timeout_seconds=timeout)


def principal_of(dev_issuer: DevIssuer, subject: str, *groups: str) -> Principal:
    """The identity a dev-issuer token for ``subject`` verifies to (for identity maps)."""
    return Principal(issuer=dev_issuer.issuer_url, subject=subject, groups=tuple(groups))


# -- the approvals handler over real HTTP (what the control port will mount) -------------------------


def serve_webhook(webhook: ApprovalWebhook) -> Iterator[str]:
    """Serve ``webhook`` with aiohttp on a free loopback port in a thread; yields the base URL."""

    async def adapt(request: web.Request) -> web.Response:
        body = await request.read()
        hook_request = WebhookRequest(request.method, request.path, dict(request.headers), body, dict(request.query))
        # The handler blocks on the store and on JWKS fetches: off the event loop.
        response = await asyncio.to_thread(webhook.handle, hook_request)
        return web.Response(status=response.status, headers=response.headers, body=response.body)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", adapt)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = runner.addresses[0][1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def every_pending(store, now: float) -> list[str]:
    """The answer by brute force: every request record, minus the decided and the expired."""
    requests, decided = {}, set()
    for key, record in store.list("approval/"):
        if key.endswith("/request"):
            requests[record["id"]] = ApprovalRequest.from_record(record)
        elif key.endswith("/outcome"):
            decided.add(Outcome.from_record(record).request_id)
    pending = [r for r in requests.values() if r.id not in decided and now < r.deadline]
    return [r.id for r in sorted(pending, key=lambda r: (r.created, r.id))]
