"""Prometheus metrics. They wrap the core from outside (as its Observer): no engine counts itself."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Statement latency through the gateway, request received → response complete.
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.sessions_open = Gauge("wardgate_sessions_open", "Client sessions currently open",
                                   ["protocol", "resource"], registry=self.registry)
        self.sessions_total = Counter("wardgate_sessions_total", "Client sessions opened",
                                      ["protocol", "resource"], registry=self.registry)
        self.authentications = Counter("wardgate_authentications_total", "Token verifications by outcome",
                                       ["protocol", "outcome", "reason"], registry=self.registry)
        self.decisions = Counter("wardgate_decisions_total", "Command decisions by verdict",
                                 ["protocol", "verdict"], registry=self.registry)
        self.latency = Histogram("wardgate_command_seconds", "Command latency through the gateway",
                                 ["protocol"], buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.audit_events = Gauge("wardgate_audit_events_written", "Audit events written since start",
                                  registry=self.registry)
        self.audit_up = Gauge("wardgate_audit_sink_up", "1 when the audit sink accepts writes",
                              registry=self.registry)
        self._latency_children: dict[str, object] = {}
        self._decision_children: dict[tuple[str, str], object] = {}

    # Observer interface (children cached: label lookup costs more than the increment itself).
    def session_opened(self, protocol: str, resource: str) -> None:
        self.sessions_open.labels(protocol, resource).inc()
        self.sessions_total.labels(protocol, resource).inc()

    def session_closed(self, protocol: str, resource: str) -> None:
        self.sessions_open.labels(protocol, resource).dec()

    def authenticated(self, protocol: str, ok: bool, reason: str) -> None:
        self.authentications.labels(protocol, "ok" if ok else "refused", reason).inc()

    def decided(self, protocol: str, verdict: str) -> None:
        child = self._decision_children.get((protocol, verdict))
        if child is None:
            child = self._decision_children[(protocol, verdict)] = self.decisions.labels(protocol, verdict)
        child.inc()

    def command_finished(self, protocol: str, seconds: float) -> None:
        child = self._latency_children.get(protocol)
        if child is None:
            child = self._latency_children[protocol] = self.latency.labels(protocol)
        child.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
