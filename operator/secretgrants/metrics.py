"""Prometheus metrics: every name and label in one place. No label carries a path, URI or value.

Label values come from small closed sets (phases, effects, PDP kinds, reason
words, provider schemes), never from user input that could name a secret.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

__all__ = ["LABELS", "Metrics", "serve"]

PREFIX: Final = "secretgrants"
# Every label any metric uses. A test checks nothing else is ever declared.
LABELS: Final = frozenset({"phase", "effect", "pdp", "reason", "provider", "operation", "sink"})

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    """The operator's metrics, in their own registry (tests make as many as they like)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.grants = Gauge(f"{PREFIX}_grants", "Grants by phase.", ["phase"], registry=r)
        self.decisions = Counter(
            f"{PREFIX}_decisions_total",
            "PDP decisions by effect and PDP.",
            ["effect", "pdp"],
            registry=r,
        )
        self.pdp_latency = Histogram(
            f"{PREFIX}_pdp_latency_seconds",
            "Time to a PDP decision.",
            ["pdp"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.provider_latency = Histogram(
            f"{PREFIX}_provider_latency_seconds",
            "Provider call latency.",
            ["provider", "operation"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.admission_latency = Histogram(
            f"{PREFIX}_admission_latency_seconds",
            "Pod admission review latency.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.admission_denials = Counter(
            f"{PREFIX}_admission_denials_total", "Pods denied, by reason.", ["reason"], registry=r
        )
        self.uses = Counter(f"{PREFIX}_uses_consumed_total", "Uses consumed.", registry=r)
        self.expirations = Counter(f"{PREFIX}_expirations_total", "Grants expired.", registry=r)
        self.renewals = Counter(f"{PREFIX}_renewals_total", "Grants renewed.", registry=r)
        self.revocations = Counter(
            f"{PREFIX}_revocations_total", "Grants revoked, by reason.", ["reason"], registry=r
        )
        self.audit_dropped = Counter(
            f"{PREFIX}_audit_events_dropped_total",
            "Audit events a sink dropped.",
            ["sink"],
            registry=r,
        )
        self.pod_watch_restarts = Counter(
            f"{PREFIX}_pod_watch_restarts_total",
            "Restarts of the pod watch that confirms uses: Gone (listed again) or Error.",
            ["reason"],
            registry=r,
        )
        self.errors = Counter(
            f"{PREFIX}_errors_total", "Provider and PDP errors, by reason.", ["reason"], registry=r
        )


def serve(metrics: Metrics, port: int, address: str = "0.0.0.0") -> None:  # noqa: S104
    """Serve ``/metrics`` on ``address:port`` (a background thread)."""
    start_http_server(port, addr=address, registry=metrics.registry)
