"""Group commit of PDP decisions (``policy.coalesce``) against the project's AuthZEN server.

What goes in: the real AuthZEN client and the built-in rules served over HTTP on
127.0.0.1 (in process). What is asserted: how many HTTP requests the server saw
and on which endpoint, that every caller gets its own answer in order, that a
lone decision is sent at once through the single endpoint, and that a caller who
gives up does not disturb the others.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from secretgrants.policy import (
    AccessRequest,
    AuthZENClient,
    AuthZENServer,
    BuiltinPolicy,
    CoalescingPDP,
    RequestContext,
    Resource,
    Subject,
    build_pdp,
)
from secretgrants.settings import PDPKind, Settings

POLICY = BuiltinPolicy.model_validate(
    {
        "version": 1,
        "rules": [
            {
                "name": "app-reads",
                "subjects": [{"service_account": "app"}],
                "resources": ["yaml://dev/app/**"],
                "purposes": ["read"],
            }
        ],
    }
)


def request(i: int, sa: str = "app") -> AccessRequest:
    return AccessRequest(
        subject=Subject(namespace="ns", service_account=sa),
        resource=Resource.from_uri(f"yaml://dev/app/s{i}"),
        purpose="read",  # type: ignore[arg-type]
        context=RequestContext(correlation_id=f"c-{i}"),
    )


@pytest.fixture
def server() -> Iterator[AuthZENServer]:
    with AuthZENServer(POLICY) as srv:
        yield srv


def endpoints(server: AuthZENServer) -> list[str]:
    return [r.path for r in server.requests if r.path.startswith("/access/")]


async def test_a_burst_goes_out_in_few_batch_calls_each_caller_with_its_answer(
    server: AuthZENServer,
) -> None:
    pdp = CoalescingPDP(AuthZENClient(server.base_url), max_batch=50)
    try:
        # 120 callers: odd ones are another ServiceAccount, so the answers differ.
        requests = [request(i, "app" if i % 2 == 0 else "other") for i in range(120)]
        decisions = await asyncio.gather(*(pdp.evaluate(r) for r in requests))
    finally:
        await pdp.close()
    assert [d.permitted for d in decisions] == [i % 2 == 0 for i in range(120)]
    # All 120 asked before the sender first ran (one event-loop tick): batches of 50, 50, 20.
    assert endpoints(server) == ["/access/v1/evaluations"] * 3 and pdp.calls == 3
    assert len({d.decision_id for d in decisions}) == 120


async def test_decisions_asked_while_a_call_is_in_flight_wait_and_go_together(
    server: AuthZENServer,
) -> None:
    pdp = CoalescingPDP(AuthZENClient(server.base_url), max_batch=50)
    try:
        tasks = [asyncio.create_task(pdp.evaluate(request(0)))]
        for i in range(1, 31):  # one caller per turn of the loop, while call 1 is on the wire
            await asyncio.sleep(0)
            tasks.append(asyncio.create_task(pdp.evaluate(request(i))))
        decisions = await asyncio.gather(*tasks)
    finally:
        await pdp.close()
    assert all(d.permitted for d in decisions)
    # Sent one by one, 31 callers would be 31 calls; they waited and shared a few.
    paths = endpoints(server)
    assert paths[0] == "/access/v1/evaluation" and len(paths) <= 3, paths


async def test_a_lone_decision_is_sent_at_once_through_the_single_endpoint(
    server: AuthZENServer,
) -> None:
    pdp = CoalescingPDP(AuthZENClient(server.base_url))
    try:
        first = await pdp.evaluate(request(1))
        second = await pdp.evaluate(request(2, "other"))
    finally:
        await pdp.close()
    assert first.permitted and not second.permitted
    assert endpoints(server) == ["/access/v1/evaluation"] * 2
    # the correlation id of each request travels as its X-Request-ID
    assert [r.request_id for r in server.requests if r.path.startswith("/access/")] == [
        "c-1",
        "c-2",
    ]


async def test_a_caller_that_gives_up_does_not_disturb_the_others(server: AuthZENServer) -> None:
    pdp = CoalescingPDP(AuthZENClient(server.base_url))
    try:
        tasks = [asyncio.create_task(pdp.evaluate(request(i))) for i in range(10)]
        await asyncio.sleep(0)
        tasks[3].cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await pdp.close()
    assert isinstance(results[3], asyncio.CancelledError)
    assert all(r.permitted for i, r in enumerate(results) if i != 3)  # type: ignore[union-attr]


async def test_a_pdp_that_is_down_still_denies_every_caller_fail_closed() -> None:
    from secretgrants.devenv import free_port

    pdp = CoalescingPDP(AuthZENClient(f"http://127.0.0.1:{free_port()}"))
    try:
        decisions = await asyncio.gather(*(pdp.evaluate(request(i)) for i in range(5)))
    finally:
        await pdp.close()
    assert all(not d.permitted and d.retryable for d in decisions)
    assert {d.reason for d in decisions} == {"PDPUnavailable"}


def test_build_pdp_coalesces_authzen_unless_turned_off() -> None:
    on = build_pdp(Settings(pdp_kind=PDPKind.AUTHZEN, pdp_url="http://pdp:8181"))
    assert isinstance(on, CoalescingPDP) and on.max_batch == 100 and on.kind == "authzen"
    off = build_pdp(Settings(pdp_kind=PDPKind.AUTHZEN, pdp_url="http://pdp:8181", pdp_max_batch=1))
    assert isinstance(off, AuthZENClient)
