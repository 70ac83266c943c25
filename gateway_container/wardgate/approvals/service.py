"""Approval requests and approver decisions over a create-once decision store.

The gateway calls :meth:`ApprovalService.request_statement` when policy says ``review`` and waits for
:meth:`ApprovalService.outcome`; approvers reach :meth:`ApprovalService.decide` through the CLI's REST
API, Slack/Teams/generic webhooks or one-time links (``wardgate.approvals.webhook``). The same class
runs in the gateway and in the cloud approval function: the store's first-write-wins is the only
coordination, so two processes deciding at once still produce exactly one outcome.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from wardgate.core.model import Principal
from wardgate.core.ports import DecisionStore, MessageQueue, StoreUnavailable

from wardgate.approvals.records import (
    CHANNELS, GRANT, MAX_APPROVAL_TIMEOUT, OUTCOMES, PENDING_INDEX_MARKER, REQUEST_CONTROLS, SCOPES, STATEMENT,
    VERDICTS, ApprovalRefused, ApprovalRequest, Outcome, Vote, approval_prefix, check_id, describe, grant_index_key,
    instant, new_request_id, open_index_day, open_index_key, outcome_key, principal_key, request_key, rfc3339,
    vote_key,
)

log = logging.getLogger(__name__)

DEFAULT_HINT = "wardgate approvals approve {id}"

# How far ahead pending() looks for deadlines: the longest timeout, plus an hour for other writers' clocks.
PENDING_HORIZON = MAX_APPROVAL_TIMEOUT + 3600


@dataclass(frozen=True)
class Grant:
    """An approved, unexpired JIT access grant: ``role`` on ``resource`` until ``expires_at``."""

    id: str
    role: str
    resource: str
    expires_at: float
    approved_by: tuple[str, ...]


class ApprovalService:
    """Creates approval requests, takes approver votes, and answers "is it decided?".

    ``roles_of`` returns the policy roles and groups of an identity; an approver must hold one of the
    rule's ``approvers``. Synchronous and thread-safe (the store is); event loops call it in a thread.
    """

    def __init__(self, store: DecisionStore, queue: MessageQueue | None = None, *,
                 roles_of: Callable[[Principal], Iterable[str]], clock: Callable[[], float] = time.time,
                 approve_hint: str = "") -> None:
        self.store = store
        self.queue = queue
        self._roles_of = roles_of
        self._clock = clock
        self.approve_hint = approve_hint or DEFAULT_HINT

    # -- requests --------------------------------------------------------------------------------

    def request_statement(self, requester: Principal, *, session_id: str, resource: str, statement: str,
                          parameters: Sequence[str | None], command_hash: str, rule: str,
                          controls: Sequence[str], approvers: Sequence[str], quorum: int, scope: str,
                          scope_seconds: float | None, timeout_seconds: float) -> ApprovalRequest:
        """Record a held statement and announce it. Raises :class:`StoreUnavailable` when the request
        cannot be stored: the gateway then refuses the statement (fail closed)."""
        if scope not in SCOPES:
            raise ValueError(f"approval scope {scope!r} is not one of {', '.join(SCOPES)}")
        if scope == "duration" and not (scope_seconds and scope_seconds > 0):
            raise ValueError("approval scope 'duration' needs scope_seconds > 0")
        if len(command_hash) != 64:
            raise ValueError("command_hash must be the SHA-256 hex of the statement (see records.command_hash)")
        merged_controls = tuple(dict.fromkeys([*controls, *REQUEST_CONTROLS]))
        request = self._new_request(
            requester, kind=STATEMENT, resource=resource, approvers=approvers, quorum=quorum,
            timeout_seconds=timeout_seconds, session_id=session_id, statement=statement,
            parameters=tuple(parameters), command_hash=command_hash, rule=rule, controls=merged_controls,
            scope=scope, scope_seconds=scope_seconds)
        self._store(request)
        self._announce(request)
        return request

    def request_grant(self, requester: Principal, *, resource: str, role: str, duration_seconds: float,
                      reason: str, approvers: Sequence[str], quorum: int = 1,
                      timeout_seconds: float) -> ApprovalRequest:
        """Ask for ``role`` on ``resource`` for ``duration_seconds`` (just-in-time access, AC-2)."""
        if not role:
            raise ValueError("a grant request needs a role")
        if not (duration_seconds > 0):
            raise ValueError(f"grant duration must be positive, not {duration_seconds!r}")
        if not reason.strip():
            raise ValueError("a grant request needs a reason (it is shown to approvers and audited)")
        request = self._new_request(
            requester, kind=GRANT, resource=resource, approvers=approvers, quorum=quorum,
            timeout_seconds=timeout_seconds, rule=f"access:{role}", role=role,
            duration_seconds=float(duration_seconds), reason=reason, scope="duration",
            scope_seconds=float(duration_seconds))
        self._store(request)
        # Indexed before it is announced, so an approved grant is always found by active_grants().
        self.store.create(grant_index_key(request.requester_key, request.id), {"id": request.id})
        self._announce(request)
        return request

    def _new_request(self, requester: Principal, *, approvers: Sequence[str], quorum: int,
                     timeout_seconds: float, **fields: Any) -> ApprovalRequest:
        if isinstance(approvers, str) or not approvers:
            raise ValueError("an approval request needs a list of approver roles or groups")
        if quorum < 1:
            raise ValueError(f"quorum must be at least 1, not {quorum}")
        if not (0 < timeout_seconds <= MAX_APPROVAL_TIMEOUT):
            raise ValueError(f"approval timeout must be positive and at most {MAX_APPROVAL_TIMEOUT / 3600:g}h, "
                             f"not {timeout_seconds!r}s")
        now = instant(self._clock())
        return ApprovalRequest(id=new_request_id(), requester=requester.audit_view(), approvers=tuple(approvers),
                               quorum=int(quorum), created=now, deadline=instant(now + timeout_seconds), **fields)

    def _store(self, request: ApprovalRequest) -> None:
        record = request.to_record()
        if not self.store.create(request_key(request.id), record):
            # 80 random bits collide only if something is badly wrong; never reuse someone's request.
            raise StoreUnavailable(f"decision store {self.store.url}: request id {request.id} already exists")
        # Then where pending() finds it (a copy: no read per request there). Should this fail, the
        # caller refuses the statement: the request stays unlisted and expires.
        if not self.store.create(open_index_key(request.deadline, request.id), record):
            raise StoreUnavailable(f"decision store {self.store.url}: request id {request.id} already indexed")

    def _announce(self, request: ApprovalRequest) -> bool:
        if self.queue is None:
            return False
        body = json.dumps({"type": "approval.requested", "id": request.id, "request": request.to_record()})
        try:
            self.queue.send(body.encode(), {"type": "approval.requested", "id": request.id})
            return True
        except Exception as exc:  # any queue failure: the request is safe in the store, re-announced later
            log.error("approval request %s stored but not announced on %s: %s", request.id,
                      getattr(self.queue, "url", "the queue"), exc)
            try:
                self.store.create(approval_prefix(request.id) + "announce-failed",
                                  {"request_id": request.id, "error": str(exc)[:500], "at": rfc3339(self._clock())})
            except StoreUnavailable:
                pass  # already logged; reannounce_pending() re-sends every pending request anyway
            return False

    def reannounce_pending(self) -> int:
        """Send every pending request to the queue again (after a restart or a queue outage). The
        gateway calls it once at start-up, so it first completes the pending index if this store has
        never been (:meth:`index_once`): requests stored before the index are then announced too."""
        self.index_once()
        return sum(self._announce(request) for request in self.pending())

    def where_to_approve(self, request: ApprovalRequest) -> str:
        return self.approve_hint.replace("{id}", request.id)

    def notice_text(self, request: ApprovalRequest) -> str:
        """The message a waiting client sees (PostgreSQL NoticeResponse)."""
        return (f"waiting for approval: request {request.id} (rule {request.rule}; approvers: "
                f"{', '.join(request.approvers)}; quorum {request.quorum}; deadline {rfc3339(request.deadline)}); "
                f"approve with: {self.where_to_approve(request)}")

    # -- decisions -------------------------------------------------------------------------------

    def decide(self, request_id: str, approver: Principal, verdict: str, reason: str = "",
               via: str = "cli") -> Outcome | None:
        """Record ``approver``'s vote. Returns the outcome if this vote settled the request (quorum of
        approvals reached, or any deny), else None. Raises :class:`ApprovalRefused` with the reason."""
        if verdict not in VERDICTS:
            raise ApprovalRefused("bad_input", f"verdict must be 'approve' or 'deny', not {str(verdict)[:40]!r}")
        if via not in CHANNELS:
            raise ValueError(f"via must be one of {', '.join(CHANNELS)}")
        request = self._request(request_id)
        self._refuse_if_decided(request)
        now = instant(self._clock())
        if now >= request.deadline:
            outcome = self.expire(request_id)
            if outcome.verdict != "expired":
                self._refuse_if_decided(request)
            raise ApprovalRefused("expired", f"approval request {request_id} expired at {rfc3339(request.deadline)} "
                                  "without a decision; the requester must ask again")
        if principal_key(approver) == request.requester_key:
            raise ApprovalRefused("self_approval", f"self-approval is not allowed (AC-5): {approver.subject} "
                                  f"made request {request_id}; another approver must decide")
        roles = set(self._roles_of(approver))
        if not roles.intersection(request.approvers):
            raise ApprovalRefused("not_approver", f"{approver.subject} may not decide request {request_id}: "
                                  f"approvers must hold one of {', '.join(request.approvers)} "
                                  f"(they hold {', '.join(sorted(roles)) or 'no role'})")
        vote = Vote(request_id, approver.audit_view(), verdict, now, via, reason[:1000])
        if not self.store.create(vote_key(request_id, principal_key(approver)), vote.to_record()):
            raise ApprovalRefused("already_voted", f"{approver.subject} already voted on request {request_id}; "
                                  "an approver decides once")
        if verdict == "deny":
            return self._settle(Outcome(request_id, "denied", now, (vote.approver,), vote.reason))
        approvals = [v for v in self._votes(request_id) if v.verdict == "approve"]
        if len(approvals) < request.quorum:
            return self.outcome(request_id)  # None, unless another approver's deny settled it meanwhile
        return self._settle(Outcome(request_id, "approved", now, tuple(v.approver for v in approvals), vote.reason))

    def withdraw(self, request_id: str, reason: str) -> Outcome:
        """The requester gave up (client cancel). Returns whichever outcome exists afterwards."""
        self._request(request_id)
        return self._settle(Outcome(request_id, "withdrawn", instant(self._clock()), (), reason))

    def expire(self, request_id: str) -> Outcome:
        """No decision by the deadline. Returns whichever outcome exists afterwards."""
        request = self._request(request_id)
        return self._settle(Outcome(request_id, "expired", instant(max(self._clock(), request.deadline)), (),
                                    f"no decision by {rfc3339(request.deadline)}"))

    def _settle(self, outcome: Outcome) -> Outcome:
        assert outcome.verdict in OUTCOMES
        if self.store.create(outcome_key(outcome.request_id), outcome.to_record()):
            return outcome
        winner = self.outcome(outcome.request_id)
        if winner is None:  # a store that lost the record it just refused to overwrite
            raise StoreUnavailable(f"decision store {self.store.url}: outcome of {outcome.request_id} is unreadable")
        return winner

    def _refuse_if_decided(self, request: ApprovalRequest) -> None:
        outcome = self.outcome(request.id)
        if outcome is None:
            return
        code = "expired" if outcome.verdict == "expired" else "decided"
        raise ApprovalRefused(code, f"approval request {request.id} is already {outcome.message()}")

    # -- queries ---------------------------------------------------------------------------------

    def _request(self, request_id: str) -> ApprovalRequest:
        record = self.store.get(request_key(check_id(request_id)))
        if record is None:
            raise ApprovalRefused("unknown", f"there is no approval request {request_id}")
        return ApprovalRequest.from_record(record)

    def _votes(self, request_id: str) -> list[Vote]:
        votes = [Vote.from_record(r) for _k, r in self.store.list(approval_prefix(request_id) + "vote/")]
        return sorted(votes, key=lambda v: v.at)

    def outcome(self, request_id: str) -> Outcome | None:
        record = self.store.get(outcome_key(request_id))
        return None if record is None else Outcome.from_record(record)

    def get(self, request_id: str) -> tuple[ApprovalRequest, list[Vote], Outcome | None]:
        request = self._request(request_id)
        return request, self._votes(request_id), self.outcome(request_id)

    def requests(self, state: str = "pending",
                 now: float | None = None) -> list[tuple[ApprovalRequest, Outcome | None]]:
        """Requests with their outcomes: ``pending`` (undecided, before the deadline), ``decided`` or
        ``all``. Pending ones come from the deadline index (a few buckets, whatever the history);
        ``decided`` and ``all`` read every request ever made."""
        if state not in ("pending", "decided", "all"):
            raise ValueError(f"state must be pending, decided or all, not {state!r}")
        now = self._clock() if now is None else now
        if state == "pending":
            return [(request, None) for request in self.pending(now)]
        requests: dict[str, ApprovalRequest] = {}
        outcomes: dict[str, Outcome] = {}
        for key, record in self.store.list("approval/"):
            if key.endswith("/request"):
                requests[record["id"]] = ApprovalRequest.from_record(record)
            elif key.endswith("/outcome"):
                outcomes[record["request_id"]] = Outcome.from_record(record)
        out = []
        for request in sorted(requests.values(), key=lambda r: r.created):
            outcome = outcomes.get(request.id)
            is_pending = outcome is None and now < request.deadline
            if state == "all" or (state == "pending") == is_pending:
                out.append((request, outcome))
        return out

    def pending(self, now: float | None = None) -> list[ApprovalRequest]:
        """Undecided requests before their deadline, oldest first: the ``open/`` buckets of the days a
        pending request's deadline can fall on (now up to the longest timeout, plus an hour for the
        clocks of other writers), then one outcome read per request found there. Requests stored by a
        gateway older than this index are listed once :meth:`reindex` gave them their copy."""
        now = self._clock() if now is None else now
        days = dict.fromkeys(open_index_day(now + offset) for offset in range(0, int(PENDING_HORIZON) + 1, 3600))
        found = []
        for day in days:
            for _key, record in self.store.list(f"open/{day}/"):
                request = ApprovalRequest.from_record(record)
                if now < request.deadline and self.outcome(request.id) is None:
                    found.append(request)
        return sorted(found, key=lambda r: (r.created, r.id))

    def reindex(self, now: float | None = None) -> int:
        """Give each request that is undecided and before its deadline, and has no ``open/`` copy (one
        stored by a gateway older than the pending index), the copy a new request gets: the request
        record, under the UTC day of its deadline. Returns how many copies were written.

        One read of every ``approval/`` record (what ``pending()`` did before the index), then one
        create-once write per pending request: an existing copy or any other record is never changed,
        so a second run writes nothing, and decided or expired requests get no copy. Then records
        :data:`PENDING_INDEX_MARKER` (if absent), so a starting gateway skips the scan
        (:meth:`index_once`)."""
        now = self._clock() if now is None else now
        requests: dict[str, tuple[ApprovalRequest, dict[str, Any]]] = {}
        decided: set[str] = set()
        for key, record in self.store.list("approval/"):
            if key.endswith("/request"):
                requests[record["id"]] = (ApprovalRequest.from_record(record), record)
            elif key.endswith("/outcome"):
                decided.add(record["request_id"])
        pending = sorted(((request, record) for request, record in requests.values()
                          if request.id not in decided and now < request.deadline),
                         key=lambda pair: (pair[0].created, pair[0].id))
        indexed = [request for request, record in pending
                   if self.store.create(open_index_key(request.deadline, request.id), record)]
        log.info("approvals: pending index: %d request(s) read, %d pending, %d copied into open/ (%d already "
                 "there)", len(requests), len(pending), len(indexed), len(pending) - len(indexed))
        if indexed:
            log.warning("approvals: indexed %d pending request(s) stored without an open/ copy (by a gateway "
                        "older than the pending index): %s", len(indexed), ", ".join(r.id for r in indexed))
        # An older gateway allowed timeouts over MAX_APPROVAL_TIMEOUT: pending() reaches such a
        # request's bucket only once its deadline is that close (it can still be decided by id).
        for request in indexed:
            listed_from = request.deadline - request.deadline % 86400 - PENDING_HORIZON
            if listed_from > now:
                log.warning("approvals: request %s waits until %s (a timeout over %gh, from an older gateway): "
                            "it is listed as pending from %s", request.id, rfc3339(request.deadline),
                            MAX_APPROVAL_TIMEOUT / 3600, rfc3339(listed_from))
        try:
            self.store.create(PENDING_INDEX_MARKER, {"version": 1, "at": rfc3339(now), "read": len(requests),
                                                     "indexed": len(indexed)})
        except StoreUnavailable as exc:  # the copies are written; the next start only scans again
            log.warning("approvals: pending index complete but not marked in %s: %s", self.store.url, exc)
        return len(indexed)

    def index_once(self, now: float | None = None) -> int | None:
        """:meth:`reindex`, unless :data:`PENDING_INDEX_MARKER` says a scan already ran on this store
        (one read then; returns None). For start-up: the full scan is what the index avoids."""
        if self.store.get(PENDING_INDEX_MARKER) is not None:
            return None
        return self.reindex(now)

    def may_see(self, principal: Principal, request: ApprovalRequest) -> bool:
        """Requesters see their own requests; approvers see the ones they could decide (AC-6)."""
        return (principal_key(principal) == request.requester_key
                or bool(set(self._roles_of(principal)).intersection(request.approvers)))

    def grant_requests(self, principal: Principal) -> list[tuple[ApprovalRequest, Outcome | None]]:
        out = []
        for _key, record in self.store.list(f"grant-index/{principal_key(principal)}/"):
            request, _votes, outcome = self.get(record["id"])
            out.append((request, outcome))
        return sorted(out, key=lambda pair: pair[0].created)

    def active_grants(self, principal: Principal, resource: str | None, now: float | None = None) -> list[Grant]:
        """Approved grants of this identity (for ``resource``, or any if None) that have not expired.
        A grant runs from its approval for ``duration_seconds``: the gateway drops the role at the
        first command after ``expires_at``."""
        now = self._clock() if now is None else now
        grants = []
        for request, outcome in self.grant_requests(principal):
            if outcome is None or not outcome.approved or (resource is not None and request.resource != resource):
                continue
            expires_at = outcome.at + float(request.duration_seconds or 0)
            if now < expires_at:
                grants.append(Grant(request.id, request.role or "", request.resource, expires_at,
                                    tuple(describe(b) for b in outcome.by)))
        return grants
