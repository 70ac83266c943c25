"""An approval with scope ``session`` or ``duration`` binds to the exact statement and parameters it
was given for: the core lets that command run again without a new request, and holds any other
command of the same rule (docs/approvals.md, "Binding")."""

from __future__ import annotations

import asyncio
import types

from wardgate.core.audit import Recorder
from wardgate.core.model import Approval, Command, Decision, Principal, Verdict
from wardgate.core import session as session_module
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
    """Stores each request and decides it at once (another identity's vote, elsewhere): ``verdict``."""

    def __init__(self, verdict: str = "approved") -> None:
        self.requests: list[dict] = []
        self.verdict = verdict

    def request_statement(self, requester, **fields):
        self.requests.append(fields)
        return types.SimpleNamespace(id=f"apr-{len(self.requests):020d}")

    def outcome(self, request_id):
        return types.SimpleNamespace(verdict=self.verdict, by=[{"subject": "dana"}], reason="", at=None)

    def expire(self, request_id): ...
    def withdraw(self, request_id, reason): ...

    def active_grants(self, principal, resource):
        return ()


def _session(store, review: Decision = REVIEW):
    policy = _ReviewEverything()
    policy.decide = lambda *args, **kwargs: review
    core = DecisionCore(verifier=None, policy=policy, recorder=Recorder(None), gateway_id="g",
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


def _approved_once(store, review: Decision, text: str):
    session = _session(store, review)
    decision, event = session.decide(Command("postgres", "query", text))
    return session, asyncio.run(session.await_approval(decision, event, text))


def test_a_statement_scope_approval_runs_the_statement_once() -> None:
    review = Decision(Verdict.REVIEW, "review-prod-changes", "writes need approval",
                      approval=Approval(("dba",), scope="statement", timeout=5))
    text = "DELETE FROM orders WHERE id = 1"
    session, final = _approved_once(_ApprovingStore(), review, text)
    assert final.verdict is Verdict.ALLOW
    assert session.decide(Command("postgres", "query", text))[0].verdict is Verdict.REVIEW  # asked again


def test_a_duration_scope_approval_lapses_after_its_seconds(monkeypatch) -> None:
    review = Decision(Verdict.REVIEW, "review-prod-changes", "writes need approval",
                      approval=Approval(("dba",), scope="duration", seconds=300, timeout=5))
    text = "DELETE FROM orders WHERE id = 1"
    now = [1_000_000.0]
    monkeypatch.setattr(session_module.time, "time", lambda: now[0])
    session, final = _approved_once(_ApprovingStore(), review, text)
    assert final.verdict is Verdict.ALLOW
    now[0] += 299
    assert session.decide(Command("postgres", "query", text))[0].verdict is Verdict.ALLOW
    now[0] += 2
    assert session.decide(Command("postgres", "query", text))[0].verdict is Verdict.REVIEW


def test_a_denied_request_covers_nothing() -> None:
    text = "DELETE FROM orders WHERE id = 1"
    session, final = _approved_once(_ApprovingStore("denied"), REVIEW, text)
    assert final.verdict is Verdict.DENY and "denied by dana" in final.message
    assert session.decide(Command("postgres", "query", text))[0].verdict is Verdict.REVIEW
