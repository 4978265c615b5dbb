"""Grant and admission figures on the local control plane (a benchmark, not a test).

Starts etcd + kube-apiserver + kube-controller-manager, a Vault dev server
with one secret, and the operator (``secretgrants run -n bench``, built-in
PDP), then prints:

* create -> Granted latency p50/p99 for batches of grants applied at once
  (client clock: just before the create call -> the watch event showing
  phase Granted), and grants per second for each batch;
* pod admission latency p50/p99 (client-side create round trip over plain
  HTTP, which includes the mutating and validating webhook calls), for pods
  created one by one and 20 at a time; one by one, interleaved with as many
  pods that call no webhook (the apiserver's own floor at that moment); the
  apiserver's timing of each webhook call (its histogram: mean, share within
  5 and 25 ms) and the webhook's own mean from the operator's metrics;
* operator RSS (VmRSS) with N live grants: the highest seen while they were being
  created, and the settled figure a minute later (after the operator's heap trims);
* with ``--expire N``: N more grants with a short TTL, applied at once while the
  others live; how late each is seen Expired after its expiresAt (p50/p99), and
  that every one of their delivery Secrets was emptied.

    .venv/bin/python bench/grants.py [--sizes 1,100,1000] [--rss 1000,5000] [--pods 200]
                                     [--expire 0] [--hold 0] [--audit-sinks stdout,events]

Targets (issue 6): p50 <= 50 ms and p99 <= 250 ms at 100 concurrent; >= 50
grants/s; admission p99 <= 20 ms; RSS <= 150 MB at 5,000 grants.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "operator"))

import hvac  # noqa: E402
import kubernetes  # noqa: E402
import yaml  # noqa: E402

from secretgrants.devenv import LocalControlPlane, VaultDevServer  # noqa: E402
from secretgrants.devenv.processes import free_port, wait_until  # noqa: E402

NS = "bench"
SETTLE_SECONDS = 60  # after a burst, before "settled" RSS (the operator trims every 10 s)
GROUP, VERSION, PLURAL = "secretgrants.io", "v1alpha1", "secretgrantrequests"
URI = "vault+kv2://secret/bench/db#password"
POLICY = {
    "version": 1,
    "rules": [
        {
            "name": "bench",
            "subjects": [{"service_account": "app"}],
            "resources": ["vault+kv2://secret/bench/**"],
            "purposes": ["read"],
            "obligations": {"ttl_seconds": 3600},
        }
    ],
}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:7.1f} ms"


class GrantedWatch:
    """One watch on the namespace: when each grant was first seen Granted."""

    def __init__(self, api: Any) -> None:
        self.custom = kubernetes.client.CustomObjectsApi(api)
        self.granted: dict[str, float] = {}
        self.expired: dict[str, float] = {}  # wall clock, against the grant's expiresAt
        self.expires_at: dict[str, str] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            watch = kubernetes.watch.Watch()
            try:
                for event in watch.stream(
                    self.custom.list_namespaced_custom_object,
                    GROUP,
                    VERSION,
                    NS,
                    PLURAL,
                    timeout_seconds=30,
                ):
                    obj = event["object"]
                    status, name = obj.get("status") or {}, obj["metadata"]["name"]
                    if status.get("phase") == "Granted":
                        with self.lock:
                            self.granted.setdefault(name, time.monotonic())
                            self.expires_at[name] = status.get("expiresAt") or ""
                    elif status.get("phase") == "Expired":
                        with self.lock:
                            self.expired.setdefault(name, time.time())
                    if self.stop.is_set():
                        break
            except Exception:  # noqa: S112  (a watch hiccup: start again)
                continue

    def wait(self, names: list[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if all(n in self.granted for n in names):
                    return
            time.sleep(0.05)
        missing = [n for n in names if n not in self.granted]
        raise TimeoutError(f"{len(missing)} grants not Granted in {timeout}s (e.g. {missing[:3]})")


def grant_body(name: str, ttl: int | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"secretUri": URI, "serviceAccountName": "app"}
    if ttl:
        spec["ttlSeconds"] = ttl
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "SecretGrantRequest",
        "metadata": {"name": name},
        "spec": spec,
    }


def create_batch(
    custom: Any, watch: GrantedWatch, size: int, prefix: str, ttl: int | None = None
) -> dict[str, float]:
    names = [f"{prefix}-{i}" for i in range(size)]
    started: dict[str, float] = {}

    def create(name: str) -> None:
        for attempt in range(10):
            started[name] = time.monotonic()
            try:
                custom.create_namespaced_custom_object(
                    GROUP, VERSION, NS, PLURAL, grant_body(name, ttl)
                )
                return
            except kubernetes.client.ApiException as err:  # 503 while a new CRD settles in
                if err.status != 503 or attempt == 9:
                    raise
                time.sleep(0.5)

    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=32) as pool:
        list(pool.map(create, names))
    watch.wait(names, timeout=max(60.0, size * 0.5))
    latencies = [watch.granted[n] - started[n] for n in names]
    elapsed = max(watch.granted[n] for n in names) - t0
    return {
        "p50": pct(latencies, 0.5),
        "p99": pct(latencies, 0.99),
        "rate": size / elapsed if elapsed > 0 else float("inf"),
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used (less sensitive to a busy machine than latency)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds used by each named process between ``start`` and ``per``."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.before: dict[str, float] = {}

    def start(self) -> None:
        self.before = {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def per(self, count: int) -> str:
        used = {n: cpu_seconds(p) - self.before[n] for n, p in self.pids.items()}
        return ", ".join(f"{n} {used[n] * 1000 / max(count, 1):.1f}" for n in self.pids)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class PeakRss:
    """The highest RSS of ``pid`` seen while the block runs (sampled every 50 ms)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0.0
        self._stop = threading.Event()

    def __enter__(self) -> PeakRss:
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, rss_mb(self.pid))

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def pod_body(name: str, *, grants: bool = True) -> dict[str, Any]:
    """A pod that asks for grant ``adm`` (both webhooks called), or one that calls none."""
    metadata: dict[str, Any] = {"name": name}
    if grants:
        metadata["labels"] = {"secretgrants.io/inject": "true"}
        metadata["annotations"] = {"secretgrants.io/grants": "adm"}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {
            "serviceAccountName": "app",
            "containers": [{"name": "app", "image": "registry.invalid/app:1"}],
        },
    }


def raw_client(kubeconfig: Path) -> Any:
    """An HTTP client with the kubeconfig's client certificate, for creating pods.

    Pods are created through plain HTTP and JSON, not the ``kubernetes`` package, whose
    model (de)serialization of a Pod costs the bench's own CPU several milliseconds per
    call: the figure is then the apiserver's and the webhooks', as kubectl or a
    controller would see it, not the Python client's.
    """
    import ssl

    import httpx

    config = yaml.safe_load(kubeconfig.read_text())
    cluster, user = config["clusters"][0]["cluster"], config["users"][0]["user"]
    context = ssl.create_default_context(cafile=cluster["certificate-authority"])
    context.load_cert_chain(user["client-certificate"], user["client-key"])
    return httpx.Client(
        base_url=cluster["server"],
        verify=context,
        timeout=30,
        limits=httpx.Limits(max_connections=32, max_keepalive_connections=32),
    )


def admission(http: Any, pods: int, concurrency: int) -> tuple[list[float], list[float]]:
    """Round trips of pod creates: ``pods`` that ask for a grant and, when one at a time,
    as many interleaved that call no webhook (the same apiserver's floor at that moment)."""
    with_webhooks: list[float] = []
    without: list[float] = []
    lock = threading.Lock()

    def create(i: int) -> None:
        for grants, into in ((True, with_webhooks), (False, without)):
            if not grants and concurrency > 1:
                continue
            body = pod_body(
                f"pod-{concurrency}-{i}-{int(grants)}-{uuid.uuid4().hex[:4]}", grants=grants
            )
            t = time.monotonic()
            http.post(f"/api/v1/namespaces/{NS}/pods", json=body).raise_for_status()
            with lock:
                into.append(time.monotonic() - t)

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(create, range(pods)))
    return with_webhooks, without


WEBHOOK_METRIC = "apiserver_admission_webhook_admission_duration_seconds"


def webhook_histogram(http: Any) -> dict[tuple[str, str], float]:
    """The apiserver's own timing of each webhook call: (webhook, le|sum|count) -> value."""
    found: dict[tuple[str, str], float] = {}
    for line in http.get("/metrics").text.splitlines():
        if not line.startswith(WEBHOOK_METRIC) or 'operation="CREATE"' not in line:
            continue
        labels, value = line.rsplit(" ", 1)
        name = labels.split('name="', 1)[1].split('"', 1)[0]
        if "_bucket{" in labels:
            key = labels.split('le="', 1)[1].split('"', 1)[0]
        else:
            key = "sum" if "_sum{" in labels else "count"
        found[(name, key)] = found.get((name, key), 0.0) + float(value)
    return found


def print_webhook_share(
    before: dict[tuple[str, str], float], after: dict[tuple[str, str], float]
) -> None:
    """Per webhook: mean, and the share of calls within 5 and 25 ms (the apiserver's buckets)."""
    delta = {k: v - before.get(k, 0.0) for k, v in after.items()}
    for name in sorted({n for n, _ in delta}):
        count = delta.get((name, "count"), 0.0)
        if not count:
            continue
        mean = delta.get((name, "sum"), 0.0) / count
        within = [
            f"{100 * delta.get((name, le), 0.0) / count:.1f} % <= {float(le) * 1000:g} ms"
            for le in ("0.005", "0.025")
        ]
        print(f"    {name}: {int(count)} calls, mean {mean * 1000:.1f} ms, {', '.join(within)}")


def expiry(core: Any, custom: Any, watch: GrantedWatch, size: int, live: int) -> None:
    """``size`` grants with a short TTL: how late each is seen Expired, and blanked."""
    ttl = max(20, size // 25)  # long enough that all are Granted before the first expires
    create_batch(custom, watch, size, "exp", ttl=ttl)
    names = [f"exp-{i}" for i in range(size)]
    with watch.lock:
        due = {
            n: dt.datetime.fromisoformat(watch.expires_at[n].replace("Z", "+00:00")) for n in names
        }
    deadline = time.monotonic() + ttl + 120
    while time.monotonic() < deadline:
        with watch.lock:
            if all(n in watch.expired for n in names):
                break
        time.sleep(0.2)
    with watch.lock:
        late = [watch.expired[n] - due[n].timestamp() for n in names if n in watch.expired]
    secrets = [
        s
        for s in core.list_namespaced_secret(NS, label_selector="secretgrants.io/grant").items
        if (s.metadata.labels or {}).get("secretgrants.io/grant", "").startswith("exp-")
    ]
    holding = [s.metadata.name for s in secrets if s.data]
    print(f"\nexpiry: {size} grants (ttlSeconds {ttl}) applied at once, {live} others live")
    print("  seen Expired after expiresAt (expiresAt is whole seconds)   p50        p99")
    if late:
        print(
            f"  {len(late):5d} of {size} expired                              {ms(pct(late, 0.5))} {ms(pct(late, 0.99))}"
        )
    print(f"  delivery Secrets of these grants: {len(secrets)}, still holding data: {len(holding)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1,100,1000")
    parser.add_argument("--rss", default="1000,5000")
    parser.add_argument("--pods", type=int, default=200)
    parser.add_argument("--expire", type=int, default=0)
    parser.add_argument(
        "--audit-sinks",
        default="",
        help="the operator's SECRETGRANTS_AUDIT_SINKS (default: none; the operator's own "
        "default is stdout,events)",
    )
    parser.add_argument(
        "--hold",
        type=float,
        default=0,
        help="seconds to keep everything running after the figures (to attach py-spy or gdb)",
    )
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    rss_points = [int(s) for s in args.rss.split(",") if s]

    work = Path(tempfile.mkdtemp(prefix="sg-bench-"))
    plane = LocalControlPlane(work / "kube").start()
    vault = VaultDevServer(work / "vault").start()
    operator: subprocess.Popen[bytes] | None = None
    log_path = work / "operator.log"
    try:
        root = hvac.Client(url=vault.addr, token=vault.root_token)
        root.secrets.kv.v2.create_or_update_secret(
            path="bench/db", secret={"password": uuid.uuid4().hex}, mount_point="secret"
        )
        plane.kubectl("apply", "--server-side", "-k", str(REPO / "crds"))
        plane.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
        plane.kubectl("create", "namespace", NS)
        plane.kubectl("create", "serviceaccount", "app", "-n", NS)
        tenant = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "SecretTenant",
            "metadata": {"name": "bench"},
            "spec": {
                "tenantId": "bench",
                "namespaces": [NS],
                "allowedMounts": ["vault+kv2://secret"],
            },
        }
        plane.kubectl("apply", "-f", "-", input=yaml.safe_dump(tenant))
        policy = work / "policy.yaml"
        policy.write_text(yaml.safe_dump(POLICY))
        health_port, webhook_port, metrics_port = free_port(), free_port(), free_port()
        env = {
            **os.environ,
            "KUBECONFIG": str(plane.kubeconfig),
            "VAULT_URL": vault.addr,
            "VAULT_TOKEN": vault.root_token,
            "SECRETGRANTS_PDP": "builtin",
            "SECRETGRANTS_POLICY_FILE": str(policy),
            "TENANT_SALT": "bench-salt",
            "SECRETGRANTS_WEBHOOK_ADDRESS": "127.0.0.1",
            "SECRETGRANTS_WEBHOOK_PORT": str(webhook_port),
            "SECRETGRANTS_WEBHOOK_URL": f"https://127.0.0.1:{webhook_port}",
            "SECRETGRANTS_WEBHOOK_CONFIG_NAME": "bench",
            "SECRETGRANTS_METRICS_ADDRESS": "127.0.0.1",
            "SECRETGRANTS_METRICS_PORT": str(metrics_port),
            "SECRETGRANTS_API_PORT": "0",
            "SECRETGRANTS_AUDIT_SINKS": args.audit_sinks,
        }
        with log_path.open("ab") as log:
            operator = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "secretgrants",
                    "run",
                    f"--namespace={NS}",
                    f"--liveness=http://127.0.0.1:{health_port}/healthz",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        import httpx

        wait_until(
            lambda: (
                httpx.get(f"http://127.0.0.1:{health_port}/healthz", timeout=1).status_code == 200
            ),
            timeout=60,
            what="the operator",
        )
        api = kubernetes.config.new_client_from_config(str(plane.kubeconfig))
        api.configuration.connection_pool_maxsize = 32
        custom = kubernetes.client.CustomObjectsApi(api)
        core = kubernetes.client.CoreV1Api(api)
        watch = GrantedWatch(api)
        print(f"operator pid {operator.pid}, log {log_path}")
        print(f"RSS at start: {rss_mb(operator.pid):.0f} MB\n")
        pids = {"operator": operator.pid, **plane.pids()}
        cpu = CpuMeter({k: v for k, v in pids.items() if k != "kube-controller-manager"})
        print("create -> Granted (client clock)      p50        p99     grants/s")
        live = 0
        cpu_lines = []
        for size in sizes:
            cpu.start()
            figures = create_batch(custom, watch, size, f"b{size}")
            cpu_lines.append(f"  {size:5d} at once: {cpu.per(size)}")
            live += size
            print(
                f"  {size:5d} applied at once      {ms(figures['p50'])} {ms(figures['p99'])}   {figures['rate']:7.1f}"
            )
        print("  targets at 100: p50 <= 50 ms, p99 <= 250 ms; >= 50 grants/s")
        print("  CPU ms per grant (process time, whatever else the machine runs):")
        print("\n".join(cpu_lines) + "\n")

        custom.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, grant_body("adm"))
        watch.wait(["adm"], timeout=30)
        live += 1
        print("pod admission (create round trip incl. both webhooks)   p50        p99")
        http = raw_client(plane.kubeconfig)
        for concurrency in (1, 20):
            cpu.start()
            before = webhook_histogram(http)
            lat, floor = admission(http, args.pods, concurrency)
            print(
                f"  {args.pods} pods, {concurrency:2d} at a time               {ms(pct(lat, 0.5))} {ms(pct(lat, 0.99))}"
            )
            if floor:
                print(
                    f"  {args.pods} pods calling no webhook, interleaved {ms(pct(floor, 0.5))} {ms(pct(floor, 0.99))}"
                )
            extra = " (and its interleaved pod)" if floor else ""
            print(f"      CPU ms per pod asking for a grant{extra}: {cpu.per(args.pods)}")
            print("      the apiserver's timing of each webhook call:")
            print_webhook_share(before, webhook_histogram(http))
        metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
        total = count = 0.0
        for line in metrics.splitlines():
            if line.startswith("secretgrants_admission_latency_seconds_sum"):
                total = float(line.split()[-1])
            elif line.startswith("secretgrants_admission_latency_seconds_count"):
                count = float(line.split()[-1])
        if count:
            print(f"  webhook server-side mean over {int(count)} reviews: {ms(total / count)}")
        print("  target: admission p99 <= 20 ms\n")

        print("operator RSS with live grants     highest while creating   a minute later")
        for point in rss_points:
            with PeakRss(operator.pid) as peak:
                while live < point:
                    chunk = min(500, point - live)
                    create_batch(custom, watch, chunk, f"r{live}")
                    live += chunk
            # Settled: the operator works through the watch events of its own writes for
            # a while after the last grant shows Granted (measured: the memory of a burst
            # was given back 16-35 s after it); a minute later it is done.
            time.sleep(SETTLE_SECONDS)
            highest = f"{peak.peak:6.0f} MB" if peak.peak else "     - MB"
            print(
                f"  {point:5d} grants:                  {highest}     {rss_mb(operator.pid):6.0f} MB"
            )
        print("  target: <= 150 MB at 5,000 grants")
        if args.expire:
            expiry(core, custom, watch, args.expire, live)
        watch.stop.set()
        if args.hold:
            print(f"holding for {args.hold:g}s (operator pid {operator.pid})", flush=True)
            time.sleep(args.hold)
        return 0
    finally:
        if operator is not None:
            operator.terminate()
            try:
                operator.wait(timeout=15)
            except subprocess.TimeoutExpired:
                operator.kill()
        vault.stop()
        plane.stop()


if __name__ == "__main__":
    sys.exit(main())
