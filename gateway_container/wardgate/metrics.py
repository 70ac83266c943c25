"""Prometheus metrics. They wrap the core from outside (as its Observer): no engine counts itself.

Per-statement observations land in plain Python counters and are turned into Prometheus samples only
when ``/metrics`` is scraped: the client library's locked ``inc``/``observe`` would cost more than
the rest of the bookkeeping on the statement path.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

# Statement latency through the gateway, request received → response complete.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class _Latency:
    __slots__ = ("buckets", "total", "count")

    def __init__(self) -> None:
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.total = 0.0
        self.count = 0


class _StatementCollector:
    """Exposes the hot-path counters kept by :class:`GatewayMetrics`."""

    def __init__(self, metrics: "GatewayMetrics"):
        self.metrics = metrics

    def collect(self):
        decisions = CounterMetricFamily("wardgate_decisions", "Command decisions by verdict",
                                        labels=["protocol", "verdict"])
        for (protocol, verdict), value in list(self.metrics.decision_counts.items()):
            decisions.add_metric([protocol, getattr(verdict, "value", verdict)], value)
        yield decisions
        latency = HistogramMetricFamily("wardgate_command_seconds", "Command latency through the gateway",
                                        labels=["protocol"])
        for protocol, data in list(self.metrics.latencies.items()):
            cumulative, buckets = 0, []
            for bound, count in zip((*LATENCY_BUCKETS, float("inf")), data.buckets):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), cumulative))
            latency.add_metric([protocol], buckets, data.total)
        yield latency


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.sessions_open = Gauge("wardgate_sessions_open", "Client sessions currently open",
                                   ["protocol", "resource"], registry=self.registry)
        self.sessions_total = Counter("wardgate_sessions_total", "Client sessions opened",
                                      ["protocol", "resource"], registry=self.registry)
        self.authentications = Counter("wardgate_authentications_total", "Token verifications by outcome",
                                       ["protocol", "outcome", "reason"], registry=self.registry)
        self.audit_events = Gauge("wardgate_audit_events_written", "Audit events written since start",
                                  registry=self.registry)
        self.audit_up = Gauge("wardgate_audit_sink_up", "1 when the audit sink accepts writes",
                              registry=self.registry)
        self.decision_counts: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.latencies: defaultdict[str, _Latency] = defaultdict(_Latency)
        self.registry.register(_StatementCollector(self))

    # Observer interface
    def session_opened(self, protocol: str, resource: str) -> None:
        self.sessions_open.labels(protocol, resource).inc()
        self.sessions_total.labels(protocol, resource).inc()

    def session_closed(self, protocol: str, resource: str) -> None:
        self.sessions_open.labels(protocol, resource).dec()

    def authenticated(self, protocol: str, ok: bool, reason: str) -> None:
        self.authentications.labels(protocol, "ok" if ok else "refused", reason).inc()

    def decided(self, protocol: str, verdict: str) -> None:
        self.decision_counts[(protocol, verdict)] += 1

    def command_finished(self, protocol: str, seconds: float) -> None:
        data = self.latencies[protocol]
        data.buckets[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        data.total += seconds
        data.count += 1

    def render(self) -> bytes:
        return generate_latest(self.registry)
