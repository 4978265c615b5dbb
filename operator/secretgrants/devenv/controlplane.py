"""A local Kubernetes control plane: etcd, kube-apiserver and kube-controller-manager.

This is the envtest idea with the controller manager added, so that
ownerReference garbage collection, namespace deletion and ServiceAccount
creation behave as in a real cluster. There is no kubelet and no scheduler:
pods stay Pending, which is all that admission, Secrets and status need.

RBAC is on. The tests and the operator use an admin identity (a client
certificate in ``system:masters``) written to a kubeconfig file; ServiceAccount
tokens are signed with a fresh RSA key, and the issuer is the apiserver's own
URL so that its OIDC discovery document and keys can be fetched.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import httpx
import yaml

from secretgrants.devenv.processes import ManagedProcess, binary, free_port
from secretgrants.pki import new_ca, new_rsa_key_pem, write_pair

__all__ = ["LocalControlPlane"]

_CONTROLLERS = (
    "garbage-collector-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "root-ca-certificate-publisher-controller",
    "deployment-controller",
    "replicaset-controller",
    "statefulset-controller",
    "daemonset-controller",
)


class LocalControlPlane:
    """etcd + kube-apiserver + kube-controller-manager on 127.0.0.1, in one temp folder."""

    def __init__(self, workdir: Path | None = None) -> None:
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="sg-kube-"))
        self.pki = self.workdir / "pki"
        self.etcd_port = free_port()
        self.etcd_peer_port = free_port()
        self.port = free_port()
        self.kcm_port = free_port()
        self.server = f"https://127.0.0.1:{self.port}"
        self.issuer = self.server
        self.kubeconfig = self.workdir / "kubeconfig"
        self._procs: list[ManagedProcess] = []

    # -- lifecycle ---------------------------------------------------------

    def start(self, timeout: float = 120.0) -> LocalControlPlane:
        try:
            self._write_pki()
            self._start_etcd(timeout)
            self._start_apiserver(timeout)
            self._start_controller_manager(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for proc in reversed(self._procs):
            proc.stop()
        self._procs.clear()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> LocalControlPlane:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- helpers for callers -------------------------------------------------

    @property
    def ca_file(self) -> Path:
        return self.pki / "ca.crt"

    def http(self, **kwargs: object) -> httpx.Client:
        """An httpx client authenticated as the admin."""
        return httpx.Client(
            base_url=self.server,
            verify=self.admin_ssl_context(),
            timeout=10.0,
            **kwargs,  # type: ignore[arg-type]
        )

    def admin_ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        ctx.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
        return ctx

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(binary("kubectl")), f"--kubeconfig={self.kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            check=check,
            timeout=120,
        )

    def logs(self) -> dict[str, str]:
        return {p.name: p.log_tail(50) for p in self._procs}

    # -- internals -------------------------------------------------------------

    def _write_pki(self) -> None:
        self.pki.mkdir(parents=True, exist_ok=True)
        ca = new_ca("secretgrants-local-ca")
        write_pair(ca, self.pki, "ca")
        serving = ca.issue(
            "kube-apiserver",
            dns_names=("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"),
            ips=("127.0.0.1",),
            server=True,
        )
        write_pair(serving, self.pki, "apiserver")
        admin = ca.issue("secretgrants-admin", organizations=("system:masters",), client=True)
        write_pair(admin, self.pki, "admin")
        sa_key = self.pki / "sa.key"
        sa_key.write_bytes(new_rsa_key_pem())
        sa_key.chmod(0o600)
        self.kubeconfig.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [
                        {
                            "name": "local",
                            "cluster": {
                                "server": self.server,
                                "certificate-authority": str(self.ca_file),
                            },
                        }
                    ],
                    "users": [
                        {
                            "name": "admin",
                            "user": {
                                "client-certificate": str(self.pki / "admin.crt"),
                                "client-key": str(self.pki / "admin.key"),
                            },
                        }
                    ],
                    "contexts": [
                        {"name": "local", "context": {"cluster": "local", "user": "admin"}}
                    ],
                    "current-context": "local",
                }
            )
        )

    def pids(self) -> dict[str, int]:
        """The running servers' process ids by name (etcd, kube-apiserver, ...), for benchmarks."""
        return {proc.name: pid for proc in self._procs if (pid := proc.pid) is not None}

    def _spawn(self, name: str, argv: Sequence[str]) -> ManagedProcess:
        proc = ManagedProcess(name, argv, log_path=self.workdir / f"{name}.log")
        proc.start()
        self._procs.append(proc)
        return proc

    def _start_etcd(self, timeout: float) -> None:
        client = f"http://127.0.0.1:{self.etcd_port}"
        peer = f"http://127.0.0.1:{self.etcd_peer_port}"
        proc = self._spawn(
            "etcd",
            [
                str(binary("etcd")),
                "--name=default",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=default={peer}",
                "--unsafe-no-fsync",
                "--log-level=warn",
                "--quota-backend-bytes=4294967296",
            ],
        )
        proc.wait_healthy(
            lambda: httpx.get(f"{client}/health", timeout=1.0).json().get("health") == "true",
            timeout=timeout,
        )

    def _start_apiserver(self, timeout: float) -> None:
        pki = self.pki
        proc = self._spawn(
            "kube-apiserver",
            [
                str(binary("kube-apiserver")),
                f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.port}",
                f"--cert-dir={pki}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={self.ca_file}",
                "--authorization-mode=RBAC",
                f"--service-account-issuer={self.issuer}",
                f"--service-account-key-file={pki / 'sa.key'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                "--service-cluster-ip-range=10.96.0.0/16",
                "--allow-privileged=false",
                "--profiling=false",
                "--endpoint-reconciler-type=none",
                "--watch-cache=true",
            ],
        )

        def ready() -> bool:
            with self.http() as client:
                return client.get("/readyz").status_code == 200

        proc.wait_healthy(ready, timeout=timeout)

    def _start_controller_manager(self, timeout: float) -> None:
        kubeconfig = str(self.kubeconfig)
        proc = self._spawn(
            "kube-controller-manager",
            [
                str(binary("kube-controller-manager")),
                f"--kubeconfig={kubeconfig}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={self.kcm_port}",
                f"--controllers={','.join(_CONTROLLERS)}",
                f"--service-account-private-key-file={self.pki / 'sa.key'}",
                f"--root-ca-file={self.ca_file}",
                "--use-service-account-credentials=false",
                "--concurrent-gc-syncs=5",
            ],
        )

        def default_sa() -> bool:
            with self.http() as client:
                resp = client.get("/api/v1/namespaces/default/serviceaccounts/default")
                return resp.status_code == 200

        proc.wait_healthy(default_sa, timeout=timeout)
