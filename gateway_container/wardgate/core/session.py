"""The decision core: identity → policy → record, the same for every protocol.

A protocol adapter opens a :class:`Session` per client connection and calls it with protocol-neutral
values; it never decides anything itself.
"""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_left
from collections import defaultdict
from typing import Any, Protocol

import orjson

from wardgate.core.approval import (APPROVAL_CONTROLS, DECISION_CONTROLS, POLL_SECONDS, ApprovalBroker, Held,
                                    approver_names, command_hash)
from wardgate.core.audit import AuditUnavailable, Recorder, SessionLog, new_session_id
from wardgate.core.identity import AuthenticationError, TokenVerifier
from wardgate.core.model import Command, Decision, Principal, Verdict, duration_text
from wardgate.core.policy import Policy
from wardgate.core.masking import MaskStrategy, mask_findings, scan
from wardgate.core.sqlclass import Classification, StatementClass, SqlParseError, classify, warn_if_not_compiled


class Observer(Protocol):
    """Receives counts and timings (Prometheus in the gateway); the core keeps no metrics itself."""

    def session_opened(self, protocol: str, resource: str) -> None: ...
    def session_closed(self, protocol: str, resource: str) -> None: ...
    def authenticated(self, protocol: str, ok: bool, reason: str) -> None: ...
    # Per-statement figures are kept in structures the observer hands out once per session and reads
    # when asked (a call per statement would cost more than the counting):
    # a counter per verdict for ``protocol`` (a ``defaultdict(int)``), incremented at every decision;
    def decision_counts(self, protocol: str) -> defaultdict: ...
    # and the latency histogram of ``protocol``: (upper bounds in seconds, ascending; a list of one
    # count per bound, one for above the last, then the sum of all latencies). The core adds a
    # finished command at ``bisect_left(bounds, seconds)`` and its seconds to the last item.
    def latency_histogram(self, protocol: str) -> tuple[tuple[float, ...], list]: ...


class NullObserver:
    def session_opened(self, protocol: str, resource: str) -> None: pass
    def session_closed(self, protocol: str, resource: str) -> None: pass
    def authenticated(self, protocol: str, ok: bool, reason: str) -> None: pass
    def decision_counts(self, protocol: str) -> defaultdict: return defaultdict(int)
    def latency_histogram(self, protocol: str) -> tuple[tuple[float, ...], list]: return (), [0, 0.0]


_UNPARSEABLE_CONTROLS = ("AC-3", "SI-10")
_AUDIT_DOWN_CONTROLS = ("AU-5", "AC-3")
# The approval store cannot be written or read (approval.failed, approval.store_unavailable): the held
# command waits or is refused, never run without a recorded outcome.
_STORE_DOWN_CONTROLS = ("AC-3", "AU-5")
_ALLOW = Verdict.ALLOW
_REVIEW = Verdict.REVIEW
# Secrets and PII inside a held statement are redacted in the approval request (the approver sees
# the statement's shape; the hash binds the exact text).
_REQUEST_REDACTION = MaskStrategy.redact()


def _redacted(text: str) -> str:
    findings = scan(text)
    return mask_findings(text, findings, _REQUEST_REDACTION) if findings else text


class DecisionCore:
    def __init__(self, *, verifier: TokenVerifier, policy: Policy, recorder: Recorder,
                 gateway_id: str, observer: Observer | None = None,
                 approvals: ApprovalBroker | None = None, approve_hint: str = "",
                 grant_refresh: float = 5.0):
        self.verifier = verifier
        self.policy = policy
        self.recorder = recorder
        self.gateway_id = gateway_id
        self.observer = observer or NullObserver()
        # Without an approval service, ``review`` decisions are refused with the approvers' names.
        self.approvals = approvals
        self.approve_hint = approve_hint
        # Set by the assembly while something the record depends on is down (the audit archive):
        # every command is refused with this message until it is cleared.
        self.refusing: str | None = None
        self.grant_refresh = grant_refresh
        warn_if_not_compiled()
        # Facts about the gateway itself (policy loads…) form their own chain.
        self.system_log = SessionLog(recorder, f"gateway-{gateway_id}", {"gateway": gateway_id})

    def note(self, event_type: str, **fields: Any) -> None:
        """Record a gateway-level fact and write it out (raises AuditUnavailable)."""
        self.system_log.emit(event_type, fields)
        self.recorder.commit()

    def set_policy(self, policy: Policy, *, source: str) -> None:
        """Swap the policy; sessions pick it up at their next statement."""
        self.policy = policy
        self.system_log.emit("policy.loaded", {"policy": policy.bundle_hash, "source": source,
                                               "controls": ["CM-2", "CM-3", "CM-6"]})
        try:
            self.recorder.commit()
        except AuditUnavailable:
            pass  # queued; refused statements will say the sink is down

    def open_session(self, *, protocol: str, resource: str, peer: str, tls: bool,
                     client: dict[str, Any]) -> "Session":
        return Session(self, protocol=protocol, resource=resource, peer=peer, tls=tls, client=client)


class Session:
    """One client connection's passage through the core."""

    def __init__(self, core: DecisionCore, *, protocol: str, resource: str, peer: str, tls: bool,
                 client: dict[str, Any]):
        self.core = core
        self.protocol = protocol
        self.resource = resource
        self.id = new_session_id()
        self.principal: Principal | None = None
        self.started_at = time.time()
        self.commands = 0
        self.denied = 0
        self.log = SessionLog(core.recorder, self.id, {
            "gateway": core.gateway_id, "protocol": protocol, "resource": resource,
        })
        self._ended = False
        self._roles_policy: Policy | None = None
        self._roles: tuple[str, ...] = ()
        # rule name → (time.time() until which an approval with scope session/duration covers it,
        # request id)
        # (rule, command hash) → (until, request id): approvals with scope session/duration, each for
        # the exact statement and parameters it was given for (never another statement of the rule).
        self._approved: dict[tuple[str, str], tuple[float, str]] = {}
        self._grants: list[Any] = []  # approved JIT access grants (role, expires_at…) for this resource
        self._grants_due = 0.0       # time.monotonic() of the next grant refresh
        self._grants_refreshing = False
        self._withdraw: dict[str, str] = {}  # request id → why the client withdrew it
        self.held: Held | None = None
        # SQL-level prepared statements of this session: name → the PREPARE's classification
        self._sql_prepared: dict[str, StatementClass] = {}
        self._prepared_version = 0
        self._exec_cache: dict[int, tuple] = {}
        # id(classification) → (classification, policy, allow decision, its serialized members or None,
        # the roles it was made for): see _remember_allowed
        self._allowed: dict[int, tuple] = {}
        self._end_after_hold: str | None = None
        self._decisions = core.observer.decision_counts(protocol)
        self._latency_bounds, self._latency = core.observer.latency_histogram(protocol)
        self.log.emit("session.started", {"peer": peer, "tls": tls, "client": client,
                                           "controls": ["AU-2", "AU-3", "AU-12"]})
        core.observer.session_opened(protocol, resource)

    def commit(self) -> asyncio.Future | None:
        return self.core.recorder.commit()

    async def authenticate(self, token: str) -> Principal:
        """Verify the caller's token; record the outcome either way. Raises AuthenticationError."""
        try:
            principal = await asyncio.to_thread(self.core.verifier.verify, token)
        except AuthenticationError as exc:
            self.log.emit("session.authentication_failed", {"reason": exc.reason, "message": str(exc),
                                                            "controls": ["IA-2", "AC-7", "AU-2"]})
            self.core.observer.authenticated(self.protocol, False, exc.reason)
            raise
        self.principal = principal
        self.log.set_identity(principal)
        self.log.emit("session.authenticated", {"principal": principal.audit_view(),
                                                 "expires_at": principal.expires_at,
                                                 "controls": ["IA-2", "IA-5", "AC-2"]})
        self.core.observer.authenticated(self.protocol, True, "ok")
        if self.core.approvals is not None:
            await self.refresh_grants()
        return principal

    def roles(self) -> tuple[str, ...]:
        policy = self.core.policy
        if self._roles_policy is not policy:  # computed once per session and policy version
            self._roles = policy.roles_for(self.principal)
            self._roles_policy = policy
        if self.core.approvals is not None:
            if time.monotonic() >= self._grants_due and not self._grants_refreshing:
                self._grants_refreshing = True  # picked up by the next command
                asyncio.get_running_loop().create_task(self.refresh_grants())
            if self._grants:
                return self._roles_with_grants()
        return self._roles

    # --- just-in-time access grants ---------------------------------------------------------------
    async def refresh_grants(self) -> None:
        """Fetch this identity's approved grants for the resource (a store read, off the loop)."""
        try:
            grants = await asyncio.to_thread(self.core.approvals.active_grants, self.principal, self.resource)
        except Exception as exc:  # a store outage must not end the session; elevated roles lapse
            self.log.emit("access.grants_unavailable", {"error": str(exc), "controls": ["AC-2"]})
            grants = []
        finally:
            self._grants_refreshing = False
            self._grants_due = time.monotonic() + self.core.grant_refresh
        known = {g.id for g in self._grants}
        now = time.time()
        fresh = [g for g in grants if g.expires_at > now]
        for grant in fresh:
            if grant.id not in known:
                self.log.emit("access.grant_applied", {"grant": grant.id, "role": grant.role,
                                                       "expires_at": grant.expires_at,
                                                       "approved_by": list(grant.approved_by or ()),
                                                       "controls": ["AC-2", "AC-6"]})
        self._grants = fresh

    def _roles_with_grants(self) -> tuple[str, ...]:
        # Expiry is checked at every command: a grant ends mid-session at the next statement.
        now = time.time()
        live = [g for g in self._grants if g.expires_at > now]
        if len(live) != len(self._grants):
            for grant in self._grants:
                if grant.expires_at <= now:
                    self.log.emit("access.grant_expired", {"grant": grant.id, "role": grant.role,
                                                           "controls": ["AC-2"]})
            self._grants = live
        extra = tuple(sorted({g.role for g in live} - set(self._roles)))
        return self._roles + extra if extra else self._roles

    def decide(self, command: Command, parameters: tuple | None = None) -> tuple[Decision, str]:
        """Decide one command and record the decision. Returns (decision, event id); without a
        trail, an id unique within the session that names no event (``unrecorded-N``).

        ``parameters`` (hashed as :meth:`await_approval` hashes them) are given when the command runs
        with them now (a held Execute); a ``review`` decision is then covered by an earlier approval of
        exactly that statement and those parameters in this session, as a simple query (no
        parameters) is."""
        self.commands += 1
        core = self.core
        policy = core.policy
        classification = None
        decision = None
        if command.language == "sql":
            try:
                classification = classify(command.text)
            except SqlParseError as exc:
                decision = Decision(Verdict.DENY, "builtin:unparseable",
                                    f"statement refused: it cannot be parsed ({exc})", _UNPARSEABLE_CONTROLS)
            else:
                # This session allowed a statement of this shape under this policy before: the same
                # decision again (see _remember_allowed for when one is kept), unless the trail or
                # the archive went down since.
                memo = self._allowed.get(id(classification))
                if (memo is not None and memo[0] is classification and memo[1] is policy
                        and core.recorder.last_error is None and core.refusing is None
                        # the session's roles now (roles(), inlined for its common case) are those
                        # it was made for: a just-in-time grant can add one, its expiry take it away
                        and ((roles := self._roles if policy is self._roles_policy and core.approvals is None
                              else self.roles()) is memo[4] or roles == memo[4])):
                    log = self.log
                    if log.recorder.spool is None:
                        self._decisions[_ALLOW] += 1
                        return memo[2], "unrecorded-%d" % self.commands
                    if memo[3] is not None:
                        event_id = log.decided(command.kind, command.text, command.statement_name,
                                               classification.fingerprint, memo[3])
                        self._decisions[_ALLOW] += 1
                        return memo[2], event_id
        if classification is not None and classification.touches_prepared and self._sql_prepared:
            classification = self._with_prepared(classification)
        remember = False  # an allow decision to keep for this statement shape (_remember_allowed)
        if decision is not None:
            pass
        elif classification is not None and classification.encoding_change:
            decision = Decision(Verdict.DENY, "builtin:client-encoding",
                                "statement refused: changing client_encoding is not supported through wardgate "
                                "(statements are decided on their UTF-8 text)", ("AC-3", "SI-10"),
                                tuple(sorted(classification.classes)), tuple(sorted(classification.tables)))
        elif core.recorder.last_error is not None:
            decision = Decision(Verdict.DENY, "builtin:audit-unavailable",
                                f"statement refused: {core.recorder.last_error}; "
                                "nothing runs unrecorded", _AUDIT_DOWN_CONTROLS)
        elif core.refusing is not None:
            decision = Decision(Verdict.DENY, "builtin:audit-unavailable",
                                f"statement refused: {core.refusing}", _AUDIT_DOWN_CONTROLS)
        else:
            # roles(), inlined for its common case: no approval service (no grants), roles known
            roles = self._roles if policy is self._roles_policy and core.approvals is None else self.roles()
            decision = policy.decide(self.principal, self.resource, command, classification,
                                     session_started=self.started_at, now=time.time(), roles=roles)
            if decision.verdict is _REVIEW and self._approved:
                decision = self._covered_by_approval(decision, command, parameters)
            else:
                remember = (decision.verdict is _ALLOW and not decision.volatile and classification is not None
                            and not classification.touches_prepared)
        verdict = decision.verdict
        if verdict is not _ALLOW:
            self.denied += 1
        elif classification is not None and classification.touches_prepared:
            self._track_prepared(classification)
        self._decisions[verdict] += 1
        log = self.log
        if log.recorder.spool is not None:
            # What the command itself says is serialized per event; what the decision says is the
            # same for every statement of its shape (the policy caches decisions) and is serialized
            # once per decision object and policy.
            entry = _DECIDED_MEMBERS.get(id(decision))
            if entry is None or entry[0] is not decision or entry[1] is not policy:
                entry = _decided_members(decision, policy)
            members = entry[2]
            event_id = log.decided(command.kind, command.text, command.statement_name,
                                   classification.fingerprint if classification is not None else None, members)
        else:
            # Nothing is recorded, but adapters key what they keep per statement (masked tables,
            # row limits) by this id: unique within the session, as an event id is.
            members = None
            event_id = "unrecorded-%d" % self.commands
        if remember:
            self._remember_allowed(classification, policy, decision, roles, members)
        return decision, event_id

    def _remember_allowed(self, classification: Classification, policy: Policy, decision: Decision,
                          roles: tuple[str, ...], members: bytes | None) -> None:
        """Keep an allow decision (and its serialized ``command.decided`` members, None when recording
        is off) for the next statement of the same shape in this session, made for these ``roles``.
        Only where the policy's answer is a function of the shape, the identity, the resource and the
        roles: not time-dependent (``volatile``), no SQL-level prepared statement involved (its
        meaning depends on what this session prepared). The caller reuses it only while the policy
        object, the roles (a grant can add one, its expiry take it away) and the audit trail's and
        archive's health are what they were."""
        if len(self._allowed) >= _ALLOWED_MEMO_SIZE:
            self._allowed.clear()
        self._allowed[id(classification)] = (classification, policy, decision, members, roles)

    # --- SQL-level PREPARE / EXECUTE ----------------------------------------------------------------
    def _track_prepared(self, classification: Classification) -> None:
        """Remember what each allowed PREPARE prepared (its inner statement's classes and tables), so
        a later EXECUTE of that name is decided as what it runs; forget on DEALLOCATE / DISCARD ALL."""
        for st in classification.statements:
            name = st.prepared_name
            if name is None or st.verb == "EXECUTE":
                continue
            if st.verb == "PREPARE":
                self._sql_prepared[name] = st
            elif name == "" or st.verb == "DEALLOCATE ALL":
                self._sql_prepared.clear()
            else:
                self._sql_prepared.pop(name, None)
            self._prepared_version += 1

    def _with_prepared(self, classification: Classification) -> Classification:
        """``classification`` with each EXECUTE of a name this session prepared replaced by what that
        PREPARE was classified as (plus whatever the EXECUTE's own arguments do). An EXECUTE of a name
        not prepared through this session stays ``unknown``."""
        cached = self._exec_cache.get(id(classification))
        if cached is not None and cached[0] is classification and cached[1] == self._prepared_version:
            return cached[2]
        statements = []
        changed = False
        for st in classification.statements:
            prepared = self._sql_prepared.get(st.prepared_name) if st.verb == "EXECUTE" else None
            if prepared is None:
                statements.append(st)
                continue
            own_reason = f"EXECUTE {st.prepared_name}:"
            reasons = tuple(r for r in st.reasons if not r.startswith(own_reason))
            classes = st.classes if reasons else st.classes - {"unknown"}  # other unknowns stay
            statements.append(StatementClass(
                "EXECUTE", classes | prepared.classes, st.tables | prepared.tables,
                st.written_tables | prepared.written_tables, st.functions | prepared.functions,
                st.unfiltered or prepared.unfiltered,
                reasons + prepared.reasons + (f"runs prepared statement {st.prepared_name}",), st.prepared_name))
            changed = True
        result = (Classification(tuple(statements), classification.normalized, classification.fingerprint)
                  if changed else classification)
        if len(self._exec_cache) > 256:
            self._exec_cache.clear()
        self._exec_cache[id(classification)] = (classification, self._prepared_version, result)
        return result

    def _covered_by_approval(self, decision: Decision, command: Command, parameters: tuple | None) -> Decision:
        """A ``review`` decision already approved in this session (scope session/duration) for this
        exact statement and parameters. A Parse or Bind, whose parameters are not known yet, is never
        covered: it is decided again at its Execute, with them."""
        if parameters is None and command.kind != "query":
            return decision
        key = (decision.rule, command_hash(command.text, parameters or ()))
        covered = self._approved.get(key)
        if covered is None:
            return decision
        until, request_id = covered
        if time.time() >= until:
            del self._approved[key]
            return decision
        return Decision(Verdict.ALLOW, decision.rule, f"covered by approval {request_id}",
                        tuple(dict.fromkeys(decision.controls + APPROVAL_CONTROLS)), decision.classes,
                        decision.tables, decision.roles)

    def has_approvals(self, rule: str) -> bool:
        """Whether an approval of this session (scope session/duration) was given under ``rule``."""
        return any(key[0] == rule for key in self._approved)

    def needs_approval(self, decision: Decision) -> bool:
        """True when the adapter should hold this command (else a review is refused outright)."""
        return decision.verdict is _REVIEW and self.core.approvals is not None and decision.approval is not None

    async def await_approval(self, decision: Decision, event: str, text: str,
                             parameters: tuple = (), *, shown_parameters: tuple | None = None,
                             on_held=None) -> Decision:
        """Hold one ``review`` command until its outcome; return the decision to carry out.

        ``on_held(held)`` is called once the request is stored and recorded (the adapter tells the
        client where to approve). Approved → an ``allow`` decision for the same rule; anything else
        → a ``deny`` decision whose message says what happened and who decided."""
        broker = self.core.approvals
        spec = decision.approval
        # ``parameters`` are hashed as given (the adapter marks their wire format); the approver sees
        # ``shown_parameters`` (readable text), with secrets redacted like the statement.
        digest = command_hash(text, parameters)
        if shown_parameters is None:
            shown_parameters = tuple(None if p is None else p if isinstance(p, str)
                                     else bytes(p).decode("utf-8", "replace") for p in parameters)
        shown_parameters = [None if p is None else _redacted(p) for p in shown_parameters]
        try:
            request = await asyncio.to_thread(
                broker.request_statement, self.principal, session_id=self.id, resource=self.resource,
                statement=_redacted(text), parameters=shown_parameters, command_hash=digest,
                rule=decision.rule, controls=list(decision.controls), approvers=list(spec.approvers),
                quorum=spec.quorum, scope=spec.scope, scope_seconds=spec.seconds, timeout_seconds=spec.timeout)
        except Exception as exc:  # the request is not stored: nobody could approve it, so refuse
            self.log.emit("approval.failed", {"command": event, "error": str(exc),
                                              "controls": list(_STORE_DOWN_CONTROLS)})
            return Decision(Verdict.DENY, decision.rule,
                            f"statement needs approval, but the approval request could not be stored ({exc})",
                            decision.controls, decision.classes, decision.tables, decision.roles)
        deadline = time.time() + spec.timeout
        hint = self.core.approve_hint.replace("{id}", request.id)
        self.log.emit("approval.requested", {
            "command": event, "request": request.id, "rule": decision.rule, "command_hash": digest,
            "approvers": list(spec.approvers), "quorum": spec.quorum, "scope": spec.scope,
            "deadline_s": spec.timeout, "controls": list(APPROVAL_CONTROLS)})
        self.held = Held(request.id, decision.rule, deadline, hint)
        try:
            if on_held is not None:
                on_held(self.held)
            outcome = await self._wait_for_outcome(request.id, deadline)
        finally:
            self.held = None
        verdict = getattr(outcome, "verdict", "expired")
        by = getattr(outcome, "by", None) or []
        reason = getattr(outcome, "reason", "") or ""
        self.log.emit("approval.decided", {
            "command": event, "request": request.id, "verdict": verdict,
            "by": [b if isinstance(b, (dict, str)) else str(b) for b in by], "reason": reason or None,
            "at": getattr(outcome, "at", None), "controls": list(DECISION_CONTROLS)})
        if self._end_after_hold is not None:
            self.end(self._end_after_hold)
        controls = tuple(dict.fromkeys(decision.controls + APPROVAL_CONTROLS))
        if verdict == "approved":
            if spec.scope == "session":
                self._approved[(decision.rule, digest)] = (float("inf"), request.id)
            elif spec.scope == "duration" and spec.seconds:
                self._approved[(decision.rule, digest)] = (time.time() + spec.seconds, request.id)
            return Decision(Verdict.ALLOW, decision.rule, f"approved by {approver_names(by)} (request {request.id})",
                            controls, decision.classes, decision.tables, decision.roles)
        if verdict == "denied":
            message = f"statement denied by {approver_names(by)} (request {request.id})"
            if reason:
                message += f": {reason}"
        elif verdict == "withdrawn":
            message = f"approval request {request.id} withdrawn: {reason or 'cancelled by the client'}"
        else:
            message = (f"no approval decision for request {request.id} within "
                       f"{duration_text(spec.timeout)}: statement refused")
        return Decision(Verdict.DENY, decision.rule, message, controls, decision.classes, decision.tables,
                        decision.roles)

    async def _wait_for_outcome(self, request_id: str, deadline: float) -> Any:
        broker = self.core.approvals
        while True:
            try:
                outcome = await asyncio.to_thread(broker.outcome, request_id)
            except Exception as exc:  # keep waiting: the deadline still bounds the hold
                self.log.emit("approval.store_unavailable", {"request": request_id, "error": str(exc),
                                                              "controls": list(_STORE_DOWN_CONTROLS)})
                outcome = None
            if outcome is not None:
                return outcome
            why = self._withdraw.pop(request_id, None)
            try:
                if why is not None:
                    return await asyncio.to_thread(broker.withdraw, request_id, why)
                if time.time() >= deadline:
                    return await asyncio.to_thread(broker.expire, request_id)
            except Exception as exc:  # cannot write the outcome: refuse locally, never run it
                self.log.emit("approval.store_unavailable", {"request": request_id, "error": str(exc),
                                                              "controls": list(_STORE_DOWN_CONTROLS)})
                return None
            await asyncio.sleep(min(POLL_SECONDS, max(0.0, deadline - time.time())))

    def withdraw(self, reason: str) -> bool:
        """The client cancelled while a command is held: withdraw its request."""
        if self.held is None:
            return False
        self._withdraw[self.held.request_id] = reason
        return True

    def result(self, command_event: str, status: str, rows: int | None = None, tag: str | None = None,
               error: dict[str, str] | None = None, seconds: float | None = None) -> None:
        """Record what a decided command did (``ok``, ``error``, ``suspended``, ``refused``)."""
        log = self.log
        if log.recorder.spool is not None:
            log.result(command_event, status, rows, tag, None if error is None else _dumps(error), seconds)
        if seconds is not None:
            latency = self._latency
            latency[bisect_left(self._latency_bounds, seconds)] += 1
            latency[-1] += seconds

    def note(self, event_type: str, **fields: Any) -> None:
        self.log.emit(event_type, fields)

    def end(self, reason: str) -> None:
        if self._ended:
            return
        if self.held is not None:
            # The hold withdraws its request, records that, then ends the session (in chain order).
            self._withdraw[self.held.request_id] = f"the client disconnected ({reason})"
            self._end_after_hold = reason
            return
        self._ended = True
        self.log.emit("session.ended", {"reason": reason, "commands": self.commands, "denied": self.denied,
                                         "duration_s": round(time.time() - self.started_at, 3),
                                         "controls": ["AU-2", "AU-12"]})
        try:
            self.commit()
        except AuditUnavailable:
            pass  # the events stay queued in the recorder and are written when the sink returns
        self.core.observer.session_closed(self.protocol, self.resource)


_dumps = orjson.dumps
_ALLOWED_MEMO_SIZE = 256  # statement shapes remembered per session (a session that sends more starts over)
# id(decision) → (decision, policy, the decision's members of a command.decided event). Decisions are
# cached by the policy, so a statement shape reuses one object; the entry holds a reference to it,
# so the id cannot be reused while it is here, and the identity checks confirm a hit.
_DECIDED_MEMBERS: dict[int, tuple] = {}


def _decided_members(decision: Decision, policy: Policy) -> tuple:
    members = _dumps({
        "classes": decision.classes, "tables": decision.tables, "roles": decision.roles,
        "decision": decision.verdict, "rule": decision.rule, "message": decision.message or None,
        "mask": decision.mask_profile, "policy": policy.bundle_hash, "controls": decision.controls,
    })[1:-1]
    entry = (decision, policy, members)
    if len(_DECIDED_MEMBERS) >= 4096:
        _DECIDED_MEMBERS.clear()
    _DECIDED_MEMBERS[id(decision)] = entry
    return entry
