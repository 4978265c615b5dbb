"""The Kubernetes Events sink without a cluster: what it posts, and that it never blocks.

What goes in: a stand-in for the operator's Kubernetes client (it records, fails or
hangs). What is asserted: the Event's object reference and words (no path, no
value), that ``emit`` returns at once even when posting hangs, and that Events it
cannot post are counted in ``secretgrants_audit_events_dropped_total``.
"""

from __future__ import annotations

import asyncio

from prometheus_client import generate_latest

from secretgrants.audit import AuditEvent, Effect, EventType
from secretgrants.audit_sinks import KubeEventSink
from secretgrants.metrics import Metrics


class Poster:
    def __init__(self, *, fail: bool = False, hang: bool = False) -> None:
        self.posted: list[tuple[dict[str, str], str, str, str]] = []
        self.fail, self.hang = fail, hang
        self.release = asyncio.Event()

    async def post_event(
        self, involved: dict[str, str], *, type_: str, reason: str, message: str
    ) -> None:
        if self.hang:
            await self.release.wait()
        if self.fail:
            raise ConnectionError("apiserver away")
        self.posted.append((involved, type_, reason, message))


def event(effect: Effect = Effect.PERMIT) -> AuditEvent:
    return AuditEvent(
        type=EventType.POD_ADMITTED,
        effect=effect,
        reason="Admitted",
        grant_namespace="ns",
        grant_name="db",
        grant_uid="u-1",
        pod="web-1",
        resource_ref="hmac-sha256:" + "0" * 64,
    )


def dropped(metrics: Metrics) -> float:
    for line in generate_latest(metrics.registry).decode().splitlines():
        if line.startswith('secretgrants_audit_events_dropped_total{sink="kubernetes-events"}'):
            return float(line.split()[-1])
    return 0.0


async def test_an_event_names_the_grant_and_says_what_happened_in_words() -> None:
    poster = Poster()
    sink = KubeEventSink(poster)
    await sink.emit(event())
    await sink.emit(event(Effect.DENY))
    await sink.flush()
    (involved, type_, reason, message), (_, denied_type, _, _) = poster.posted
    assert involved == {
        "apiVersion": "secretgrants.io/v1alpha1",
        "kind": "SecretGrantRequest",
        "name": "db",
        "namespace": "ns",
        "uid": "u-1",
    }
    assert (type_, denied_type, reason) == ("Normal", "Warning", "PodAdmitted")
    assert message == "pod admitted for pod web-1: permit (Admitted)"


async def test_emit_never_waits_and_what_cannot_be_posted_is_counted() -> None:
    metrics = Metrics()
    poster = Poster(hang=True)
    sink = KubeEventSink(poster, metrics)
    for _ in range(KubeEventSink.MAX_IN_FLIGHT + 5):
        await asyncio.wait_for(sink.emit(event()), timeout=0.1)  # posting hangs; emit does not
    assert sink.dropped == 5 and dropped(metrics) == 5
    poster.release.set()
    await sink.flush()
    assert len(poster.posted) == KubeEventSink.MAX_IN_FLIGHT


async def test_a_failed_post_is_counted_not_raised() -> None:
    metrics = Metrics()
    sink = KubeEventSink(Poster(fail=True), metrics)
    await sink.emit(event())
    await sink.flush()
    assert sink.dropped == 1 and dropped(metrics) == 1
