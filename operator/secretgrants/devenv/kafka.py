"""An Apache Kafka broker in KRaft mode (broker and controller in one JVM) on 127.0.0.1.

``hack/tools.sh`` puts Kafka's jars in ``<tools>/../kafka/libs``; this runs their
main classes directly (``kafka.tools.StorageTool format``, then ``kafka.Kafka``)
with a small heap, as the distribution's shell scripts would. A stopped server
can be started again on the same ports with its data (a broker coming back).

Given ``scram_users``, the broker also listens SASL_SSL on a second port: TLS
with a certificate for 127.0.0.1/localhost from a CA of its own (``ca_file``),
in a PEM keystore (an unencrypted PKCS#8 key and the chain, one file), and
SCRAM-SHA-256 for those users, created when the storage is formatted.
"""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from secretgrants.devenv.processes import ManagedProcess, ServerStartError, free_port, tools_bin
from secretgrants.pki import new_ca

__all__ = ["KafkaServer", "java", "kafka_libs"]

_JVM_FLAGS = (
    "-Xms64m",
    "-Xmx384m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",  # starts faster; a test broker needs no peak throughput
    "-Djava.awt.headless=true",
    "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn",
)


def kafka_libs() -> Path:
    """The folder of Kafka's jars, beside the tools folder (``.cache/kafka/libs``)."""
    libs = tools_bin().parent / "kafka" / "libs"
    if not any(libs.glob("kafka_2.13-*.jar")):
        raise ServerStartError(f"Kafka's jars not found in {libs}: run `hack/tools.sh` first")
    return libs


def java() -> Path:
    home = os.environ.get("JAVA_HOME")
    found = Path(home) / "bin" / "java" if home else None
    if found is None or not found.exists():
        which = shutil.which("java")
        found = Path(which) if which else None
    if found is None:
        raise ServerStartError("java not found (Java 17+ runs the Kafka broker of the tests)")
    return found


class KafkaServer:
    """One KRaft node (``process.roles=broker,controller``) with a single-replica setup."""

    SCRAM_MECHANISM = "SCRAM-SHA-256"

    def __init__(
        self, workdir: Path | None = None, *, scram_users: Mapping[str, str] | None = None
    ) -> None:
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="sg-kafka-"))
        self.port = free_port()
        self.controller_port = free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        self.scram_users = dict(scram_users or {})
        self.sasl_ssl_port: int | None = free_port() if self.scram_users else None
        self._proc: ManagedProcess | None = None

    @property
    def sasl_ssl_bootstrap(self) -> str:
        """``127.0.0.1:<port>`` of the SASL_SSL listener (only with ``scram_users``)."""
        if self.sasl_ssl_port is None:
            raise RuntimeError("this broker has no SASL_SSL listener (no scram_users)")
        return f"127.0.0.1:{self.sasl_ssl_port}"

    @property
    def ca_file(self) -> Path:
        """The CA bundle that verifies the SASL_SSL listener's certificate."""
        return self.workdir / "tls" / "ca.crt"

    @property
    def _keystore(self) -> Path:
        return self.workdir / "tls" / "server.pem"

    def _write_tls(self) -> None:
        """A CA and a server certificate for 127.0.0.1/localhost, once per workdir."""
        if self._keystore.exists():
            return
        self._keystore.parent.mkdir(parents=True, exist_ok=True)
        ca = new_ca("secretgrants test kafka CA")
        server = ca.issue("127.0.0.1", dns_names=("localhost",), ips=("127.0.0.1",), server=True)
        self.ca_file.write_bytes(ca.cert_pem)
        self._keystore.write_bytes(server.key_pem + server.cert_pem + ca.cert_pem)
        self._keystore.chmod(0o600)

    @property
    def config_path(self) -> Path:
        return self.workdir / "server.properties"

    def _write_config(self) -> None:
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{self.bootstrap}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(data),
            "num.partitions": "1",
            "auto.create.topics.enable": "true",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "num.network.threads": "2",
            "num.io.threads": "2",
        }
        if self.sasl_ssl_port is not None:
            self._write_tls()
            props["listeners"] += f",SASL_SSL://{self.sasl_ssl_bootstrap}"
            props["advertised.listeners"] += f",SASL_SSL://{self.sasl_ssl_bootstrap}"
            props["listener.security.protocol.map"] += ",SASL_SSL:SASL_SSL"
            props |= {
                "sasl.enabled.mechanisms": self.SCRAM_MECHANISM,
                "listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config": (
                    "org.apache.kafka.common.security.scram.ScramLoginModule required;"
                ),
                "ssl.keystore.type": "PEM",
                "ssl.keystore.location": str(self._keystore),
                "ssl.client.auth": "none",
            }
        self.config_path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))

    def _classpath(self) -> str:
        return str(kafka_libs() / "*")

    def _format(self, timeout: float) -> None:
        """``kafka-storage.sh format``: once per data directory."""
        if (self.workdir / "data" / "meta.properties").exists():
            return
        log_path = self.workdir / "format.log"
        with log_path.open("ab") as out:
            proc = subprocess.run(
                [
                    str(java()),
                    *_JVM_FLAGS,
                    "-cp",
                    self._classpath(),
                    "kafka.tools.StorageTool",
                    "format",
                    # "=": a base64url id may start with "-", which argparse reads as a flag
                    f"--cluster-id={self.cluster_id}",
                    "--config",
                    str(self.config_path),
                    *self._scram_args(),
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                check=False,
            )
        if proc.returncode != 0:
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])
            for password in self.scram_users.values():  # the tool may echo its arguments
                tail = tail.replace(password, "***")
            raise ServerStartError(f"kafka storage format failed ({proc.returncode}):\n{tail}")

    def _scram_args(self) -> list[str]:
        args: list[str] = []
        for name, password in self.scram_users.items():
            args += ["--add-scram", f"{self.SCRAM_MECHANISM}=[name={name},password={password}]"]
        return args

    def start(self, timeout: float = 90.0) -> KafkaServer:
        self._write_config()
        self._format(timeout)
        self._proc = ManagedProcess(
            "kafka",
            [
                str(java()),
                *_JVM_FLAGS,
                f"-Dkafka.logs.dir={self.workdir / 'logs'}",
                "-cp",
                self._classpath(),
                "kafka.Kafka",
                str(self.config_path),
            ],
            log_path=self.workdir / "kafka.log",
            cwd=self.workdir,
        )
        self._proc.start()
        self._proc.wait_healthy(self._healthy, timeout=timeout)
        return self

    def _healthy(self) -> bool:
        """The listener accepts, and the broker answers metadata naming itself."""
        for port in (self.port, self.sasl_ssl_port):
            if port is not None:
                with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                    pass
        with ThreadPoolExecutor(max_workers=1) as pool:  # its own loop, whoever calls
            return pool.submit(asyncio.run, self._describe()).result(timeout=10.0)

    async def _describe(self) -> bool:
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=3000)
        await admin.start()
        try:
            cluster = await admin.describe_cluster()
            return any(b.get("port") == self.port for b in cluster.get("brokers", []))
        finally:
            await admin.close()

    def alive(self) -> bool:
        return self._proc is not None and self._proc.alive()

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.stop(timeout=20.0)
            self._proc = None

    def __enter__(self) -> KafkaServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
