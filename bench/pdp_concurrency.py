"""How fast does the AuthZEN client decide 100 concurrent requests against the built-in server?

Starts the built-in PDP (``examples/policy/builtin-policy.yaml``) as an AuthZEN
server in a child process on 127.0.0.1, then, for each client setup, runs
``--rounds`` rounds of ``--concurrency`` concurrent decisions (after one
warm-up round) and prints per-decision latency p50/p99 and decisions/s.

* ``single``: one ``evaluate()`` per decision, all at once (one HTTP request each);
* ``batch/N``: one ``evaluate_many()`` over all decisions, sent as batches of N
  (``POST /access/v1/evaluations``); a decision's latency is its batch call's.

each with connection pool limits of 10 and 100.

    PYTHONPATH=operator .venv/bin/python bench/pdp_concurrency.py [--rounds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "operator"))

from secretgrants.devenv.processes import free_port, wait_until  # noqa: E402
from secretgrants.policy import (  # noqa: E402
    AccessRequest,
    AuthZENClient,
    HTTPOptions,
    RequestContext,
    Resource,
    Subject,
)
from secretgrants.reasons import Purpose  # noqa: E402

POLICY = REPO / "examples" / "policy" / "builtin-policy.yaml"


def requests(n: int) -> list[AccessRequest]:
    out = []
    for i in range(n):
        permit = i % 2 == 0
        out.append(
            AccessRequest(
                subject=Subject(
                    namespace="payments", service_account="payments-api", tenant="acme"
                ),
                resource=Resource.from_uri(
                    f"vault://secret/payments/s{i}" if permit else f"vault://secret/billing/s{i}"
                ),
                purpose=Purpose.READ,
                context=RequestContext(correlation_id=f"bench-{i}"),
            )
        )
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))
    return ordered[index]


async def run(
    base_url: str, mode: str, pool: int, batch_size: int, rounds: int, concurrency: int
) -> tuple[list[float], float, int]:
    client = AuthZENClient(
        base_url,
        max_batch_size=batch_size,
        http=HTTPOptions(timeout=10.0, max_connections=pool, max_keepalive_connections=pool),
    )
    reqs = requests(concurrency)
    latencies: list[float] = []
    denied_unavailable = 0

    async def timed_single(r: AccessRequest) -> tuple[float, str]:
        start = time.perf_counter()
        d = await client.evaluate(r)
        return time.perf_counter() - start, d.reason

    async def one_round(record: bool) -> None:
        nonlocal denied_unavailable
        if mode == "single":
            results = await asyncio.gather(*(timed_single(r) for r in reqs))
            if record:
                latencies.extend(t for t, _ in results)
                denied_unavailable += sum(reason == "PDPUnavailable" for _, reason in results)
        else:
            start = time.perf_counter()
            decisions = await client.evaluate_many(reqs)
            took = time.perf_counter() - start
            if record:
                latencies.extend([took] * len(decisions))
                denied_unavailable += sum(d.reason == "PDPUnavailable" for d in decisions)

    try:
        await one_round(record=False)  # discovery, connections
        started = time.perf_counter()
        for _ in range(rounds):
            await one_round(record=True)
        wall = time.perf_counter() - started
    finally:
        await client.close()
    return latencies, wall, denied_unavailable


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=100)
    args = parser.parse_args()

    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO / "operator")}
    code = f"from secretgrants.policy.server import serve; serve({str(POLICY)!r}, port={port})"
    server = subprocess.Popen([sys.executable, "-c", code], env=env)
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_until(
            lambda: httpx.get(base_url + "/.well-known/authzen-configuration").status_code == 200,
            timeout=20,
            what="the built-in AuthZEN server",
        )
        print(
            f"AuthZEN client vs built-in server (child process), {args.concurrency} concurrent "
            f"decisions x {args.rounds} rounds, python {sys.version.split()[0]}, "
            f"{os.cpu_count()} CPUs"
        )
        print(
            f"{'mode':<10} {'pool':>4} {'p50 ms':>8} {'p99 ms':>8} "
            f"{'decisions/s':>12} {'errors':>6}"
        )
        setups = [
            ("single", 10, 1),
            ("single", 100, 1),
            ("batch", 10, args.concurrency),
            ("batch", 100, args.concurrency),
            ("batch", 10, 10),
            ("batch", 100, 10),
        ]
        for mode, pool, batch_size in setups:
            latencies, wall, errors = asyncio.run(
                run(base_url, mode, pool, batch_size, args.rounds, args.concurrency)
            )
            label = mode if mode == "single" else f"batch/{batch_size}"
            print(
                f"{label:<10} {pool:>4} {percentile(latencies, 50) * 1000:>8.1f} "
                f"{percentile(latencies, 99) * 1000:>8.1f} {len(latencies) / wall:>12.0f} "
                f"{errors:>6}"
            )
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    main()
