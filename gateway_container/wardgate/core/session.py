"""The decision core: identity → policy → record, the same for every protocol.

A protocol adapter opens a :class:`Session` per client connection and calls it with protocol-neutral
values; it never decides anything itself.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Protocol

from wardgate.core.audit import AuditUnavailable, Recorder, SessionLog, new_session_id
from wardgate.core.identity import AuthenticationError, TokenVerifier
from wardgate.core.model import Command, Decision, Principal, Verdict
from wardgate.core.policy import Policy
from wardgate.core.sqlclass import ENCODING_CHANGE, SqlParseError, classify


class Observer(Protocol):
    """Receives counts and timings (Prometheus in the gateway); the core keeps no metrics itself."""

    def session_opened(self, protocol: str, resource: str) -> None: ...
    def session_closed(self, protocol: str, resource: str) -> None: ...
    def authenticated(self, protocol: str, ok: bool, reason: str) -> None: ...
    def decided(self, protocol: str, verdict: str) -> None: ...
    def command_finished(self, protocol: str, seconds: float) -> None: ...


class NullObserver:
    def session_opened(self, protocol: str, resource: str) -> None: pass
    def session_closed(self, protocol: str, resource: str) -> None: pass
    def authenticated(self, protocol: str, ok: bool, reason: str) -> None: pass
    def decided(self, protocol: str, verdict: str) -> None: pass
    def command_finished(self, protocol: str, seconds: float) -> None: pass


_UNPARSEABLE_CONTROLS = ("AC-3", "SI-10")
_AUDIT_DOWN_CONTROLS = ("AU-5", "AC-3")
_RESULT_CONTROLS = ("AU-3", "AU-12")
_ALLOW = Verdict.ALLOW


class DecisionCore:
    def __init__(self, *, verifier: TokenVerifier, policy: Policy, recorder: Recorder,
                 gateway_id: str, observer: Observer | None = None):
        self.verifier = verifier
        self.policy = policy
        self.recorder = recorder
        self.gateway_id = gateway_id
        self.observer = observer or NullObserver()
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
        return principal

    def roles(self) -> tuple[str, ...]:
        policy = self.core.policy
        if self._roles_policy is not policy:  # computed once per session and policy version
            self._roles = policy.roles_for(self.principal)
            self._roles_policy = policy
        return self._roles

    def decide(self, command: Command) -> tuple[Decision, str]:
        """Decide one command and record the decision. Returns (decision, event id)."""
        self.commands += 1
        policy = self.core.policy
        classification = None
        decision = None
        if command.language == "sql":
            try:
                classification = classify(command.text)
            except SqlParseError as exc:
                decision = Decision(Verdict.DENY, "builtin:unparseable",
                                    f"statement refused: it cannot be parsed ({exc})", _UNPARSEABLE_CONTROLS)
        if decision is not None:
            pass
        elif classification is not None and any(ENCODING_CHANGE in st.reasons for st in classification.statements):
            decision = Decision(Verdict.DENY, "builtin:client-encoding",
                                "statement refused: changing client_encoding is not supported through wardgate "
                                "(statements are decided on their UTF-8 text)", ("AC-3", "SI-10"),
                                tuple(sorted(classification.classes)), tuple(sorted(classification.tables)))
        elif self.core.recorder.last_error is not None:
            decision = Decision(Verdict.DENY, "builtin:audit-unavailable",
                                f"statement refused: {self.core.recorder.last_error}; "
                                "nothing runs unrecorded", _AUDIT_DOWN_CONTROLS)
        else:
            decision = policy.decide(self.principal, self.resource, command, classification,
                                     session_started=self.started_at, now=time.time(), roles=self.roles())
        if decision.verdict is not _ALLOW:
            self.denied += 1
        event_id = self.log.emit("command.decided", {
            "kind": command.kind, "statement": command.text, "statement_name": command.statement_name,
            "fingerprint": classification.fingerprint if classification is not None else None,
            "classes": decision.classes, "tables": decision.tables, "roles": decision.roles,
            "decision": decision.verdict, "rule": decision.rule, "message": decision.message or None,
            "mask": decision.mask_profile, "policy": policy.bundle_hash, "controls": decision.controls,
        })
        self.core.observer.decided(self.protocol, decision.verdict)
        return decision, event_id

    def result(self, command_event: str, status: str, rows: int | None = None, tag: str | None = None,
               error: dict[str, str] | None = None, seconds: float | None = None) -> None:
        """Record what a decided command did (``ok``, ``error``, ``suspended``, ``refused``)."""
        self.log.emit("command.result", {
            "command": command_event, "status": status, "rows": rows, "tag": tag, "error": error,
            "duration_us": int(seconds * 1_000_000) if seconds is not None else None,
            "controls": _RESULT_CONTROLS})
        if seconds is not None:
            self.core.observer.command_finished(self.protocol, seconds)

    def note(self, event_type: str, **fields: Any) -> None:
        self.log.emit(event_type, fields)

    def end(self, reason: str) -> None:
        if self._ended:
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
