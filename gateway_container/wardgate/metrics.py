"""Prometheus metrics. They wrap the core from outside (as its Observer): no engine counts itself.

Per-statement observations land in plain Python counters and are turned into Prometheus samples only
when ``/metrics`` is scraped: the client library's locked ``inc``/``observe`` would cost more than
the rest of the bookkeeping on the statement path.
"""

from __future__ import annotations

from collections import defaultdict

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

# Statement latency through the gateway, request received → response complete.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class _StatementCollector:
    """Exposes the hot-path counters kept by :class:`GatewayMetrics`."""

    def __init__(self, metrics: "GatewayMetrics"):
        self.metrics = metrics

    def collect(self):
        decisions = CounterMetricFamily("wardgate_decisions", "Command decisions by verdict",
                                        labels=["protocol", "verdict"])
        for protocol, counts in list(self.metrics.decisions.items()):
            for verdict, value in list(counts.items()):
                decisions.add_metric([protocol, getattr(verdict, "value", verdict)], value)
        yield decisions
        latency = HistogramMetricFamily("wardgate_command_seconds", "Command latency through the gateway",
                                        labels=["protocol"])
        for protocol, data in list(self.metrics.latencies.items()):
            cumulative, buckets = 0, []
            for bound, count in zip((*LATENCY_BUCKETS, float("inf")), data[:-1]):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), cumulative))
            latency.add_metric([protocol], buckets, data[-1])
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
        self.decisions: dict[str, defaultdict] = {}  # protocol → verdict → count (the core counts)
        # protocol → one count per bucket of LATENCY_BUCKETS and one above, then the sum (the core counts)
        self.latencies: dict[str, list] = {}
        self.registry.register(_StatementCollector(self))

    # Observer interface
    def session_opened(self, protocol: str, resource: str) -> None:
        self.sessions_open.labels(protocol, resource).inc()
        self.sessions_total.labels(protocol, resource).inc()

    def session_closed(self, protocol: str, resource: str) -> None:
        self.sessions_open.labels(protocol, resource).dec()

    def authenticated(self, protocol: str, ok: bool, reason: str) -> None:
        self.authentications.labels(protocol, "ok" if ok else "refused", reason).inc()

    def decision_counts(self, protocol: str) -> defaultdict:
        counts = self.decisions.get(protocol)
        if counts is None:
            counts = self.decisions[protocol] = defaultdict(int)
        return counts

    def latency_histogram(self, protocol: str) -> tuple[tuple[float, ...], list]:
        data = self.latencies.get(protocol)
        if data is None:
            data = self.latencies[protocol] = [0] * (len(LATENCY_BUCKETS) + 1) + [0.0]
        return LATENCY_BUCKETS, data

    def render(self) -> bytes:
        return generate_latest(self.registry)
