"""Rate-limited rollout restarts (secretgrants.restarts)."""

from __future__ import annotations

import datetime as dt

from secretgrants.restarts import ANNOTATION_RESTARTED_AT, RestartLimiter, restart_patch


def test_restart_patch_stamps_the_pod_template() -> None:
    at = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.UTC)
    patch = restart_patch(at)
    assert patch["spec"]["template"]["metadata"]["annotations"] == {
        ANNOTATION_RESTARTED_AT: "2026-11-22T12:00:00Z"
    }


def test_limiter_allows_one_restart_per_workload_per_interval() -> None:
    clock = [100.0]
    limiter = RestartLimiter(60, clock=lambda: clock[0])
    assert limiter.allow("ns", "Deployment", "web")
    assert not limiter.allow("ns", "Deployment", "web")
    assert limiter.allow("ns", "StatefulSet", "web")  # another workload
    assert limiter.allow("other", "Deployment", "web")
    clock[0] += 59.9
    assert not limiter.allow("ns", "Deployment", "web")
    clock[0] += 0.2
    assert limiter.allow("ns", "Deployment", "web")
