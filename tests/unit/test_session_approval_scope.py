"""An approval with scope ``session`` or ``duration`` binds to the exact statement and parameters it
was given for: the core lets that command run again without a new request, and holds any other
command of the same rule (docs/approvals.md, "Binding")."""

from __future__ import annotations

import asyncio
import types

from wardgate.core.audit import Recorder
from wardgate.core.model import Approval, Command, Decision, Principal, Verdict
from wardgate.core.session import DecisionCore

REVIEW = Decision(Verdict.REVIEW, "review-prod-changes", "writes need approval",
                  approval=Approval(("dba",), scope="session", timeout=5))


class _ReviewEverything:
    source = "test"
    bundle = None

    def roles_for(self, principal):
        return ()

    def decide(self, principal, resource, command, classification, *, session_started, now, roles=None):
        return REVIEW


class _ApprovingStore:
    """Stores each request and approves it at once (another identity's vote, elsewhere)."""

    def __init__(self) -> None:
        self.requests: list[dict] = []

    def request_statement(self, requester, **fields):
        self.requests.append(fields)
        return types.SimpleNamespace(id=f"apr-{len(self.requests):020d}")

    def outcome(self, request_id):
        return types.SimpleNamespace(verdict="approved", by=[{"subject": "dana"}], reason="", at=None)

    def expire(self, request_id): ...
    def withdraw(self, request_id, reason): ...

    def active_grants(self, principal, resource):
        return ()


def _session(store):
    core = DecisionCore(verifier=None, policy=_ReviewEverything(), recorder=Recorder(None), gateway_id="g",
                        approvals=store)
    session = core.open_session(protocol="postgres", resource="orders-prod", peer="127.0.0.1:1", tls=True, client={})
    session.principal = Principal("https://issuer.example", "agent-7", ("ai-agents",), {})
    session._grants_due = float("inf")  # no JIT grants to re-read here (that needs a running loop)
    return session


def test_a_session_approval_covers_the_same_simple_query_only() -> None:
    store = _ApprovingStore()
    session = _session(store)
    text = "DELETE FROM orders WHERE id = 1"
    decision, event = session.decide(Command("postgres", "query", text))
    assert decision.verdict is Verdict.REVIEW and session.needs_approval(decision)
    final = asyncio.run(session.await_approval(decision, event, text))
    assert final.verdict is Verdict.ALLOW and len(store.requests) == 1
    again, _ = session.decide(Command("postgres", "query", text))
    assert again.verdict is Verdict.ALLOW and again.message == "covered by approval apr-00000000000000000001"
    other, _ = session.decide(Command("postgres", "query", "DELETE FROM orders WHERE id = 2"))
    assert other.verdict is Verdict.REVIEW  # same rule, other statement: asked again
    other_session = _session(store)
    assert other_session.decide(Command("postgres", "query", text))[0].verdict is Verdict.REVIEW


def test_a_prepared_statement_is_covered_at_execute_with_the_same_parameters_only() -> None:
    store = _ApprovingStore()
    session = _session(store)
    text = "DELETE FROM orders WHERE id = $1"
    decision, event = session.decide(Command("postgres", "parse", text))
    assert not session.has_approvals(decision.rule)
    one = (b"01",)  # wire-format-prefixed text value "1"
    assert asyncio.run(session.await_approval(decision, event, text, one)).verdict is Verdict.ALLOW
    assert session.has_approvals(decision.rule)
    # at Parse the parameters are unknown: never covered there
    assert session.decide(Command("postgres", "parse", text))[0].verdict is Verdict.REVIEW
    assert session.decide(Command("postgres", "execute", text), one)[0].verdict is Verdict.ALLOW
    assert session.decide(Command("postgres", "execute", text), (b"02",))[0].verdict is Verdict.REVIEW
    assert session.decide(Command("postgres", "execute", text), (b"11",))[0].verdict is Verdict.REVIEW  # binary "1"
