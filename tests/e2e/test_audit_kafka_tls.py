"""The Kafka audit sink over SASL_SSL (TLS + SCRAM-SHA-256) against a real broker.

What goes in: a KRaft broker with a second listener, SASL_SSL on its own port
(a certificate for 127.0.0.1 from a CA of the test, SCRAM users made at format
time); an operator whose only bootstrap is that listener, with the CA file and
the SCRAM login, and another with a wrong password. What is asserted: with the
right login the audit events of a grant reach the topic (read back over the
PLAINTEXT listener of the same broker) and are the very events of the stdout
sink; with a wrong one nothing is delivered, the sink says its sends fail, the
grant still reaches Granted in time, and no password is in the operator's log.
"""

from __future__ import annotations

import re
import secrets
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from secretgrants.devenv import KafkaServer
from tests.conftest import SECRET_VALUE, Cluster, OperatorProcess
from tests.e2e.kube import apply, eventually, grant
from tests.e2e.test_audit_kafka import (
    URI,
    Message,
    dropped,
    events_of,
    kafka_env,
    read_topic,
    wait_phase,
)

USER = "audit"
PASSWORD = secrets.token_hex(12)  # fresh per run: found in a log only if it leaked


@pytest.fixture(scope="module")
def tls_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaServer]:
    server = KafkaServer(tmp_path_factory.mktemp("kafka-tls"), scram_users={USER: PASSWORD})
    server.start()
    try:
        yield server
    finally:
        server.stop()


def sasl_ssl_env(broker: KafkaServer, topic: str, password: str) -> dict[str, str]:
    return kafka_env(
        broker.sasl_ssl_bootstrap,
        topic,
        SECRETGRANTS_KAFKA_SECURITY_PROTOCOL="SASL_SSL",
        SECRETGRANTS_KAFKA_CA_FILE=str(broker.ca_file),
        SECRETGRANTS_KAFKA_SASL_MECHANISM="SCRAM-SHA-256",
        SECRETGRANTS_KAFKA_SASL_USERNAME=USER,
        SECRETGRANTS_KAFKA_SASL_PASSWORD=password,
    )


def test_events_reach_the_topic_over_sasl_ssl(
    cluster: Cluster,
    ready_namespace: str,
    tls_kafka: KafkaServer,
    start_operator_for: Callable[..., OperatorProcess],
) -> None:
    ns = ready_namespace
    topic = f"sg-audit-tls-{uuid.uuid4().hex[:8]}"
    assert tls_kafka.sasl_ssl_bootstrap != tls_kafka.bootstrap
    op = start_operator_for(**sasl_ssl_env(tls_kafka, topic, PASSWORD))
    apply(cluster, grant("db", ns, URI))
    wait_phase(cluster, "db", ns, "Granted")

    def complete(messages: list[Message]) -> bool:
        return {"decision", "delivery_written"} <= set(events_of(messages, "db"))

    messages = read_topic(tls_kafka.bootstrap, topic, complete)
    assert complete(messages), [m["event"] for m in messages]
    db = events_of(messages, "db")
    assert db["decision"]["key"] == f"{ns}/db"
    assert db["decision"]["event"]["effect"] == "permit"
    stdout = {e["event_id"]: e for e in op.audit_events() if e.get("grant_name") == "db"}
    assert {m["event"]["event_id"]: m["event"] for m in messages} == stdout
    assert dropped(op) == 0
    log = op.log()
    assert f"audit sink kafka connected (topic {topic})" in log
    assert PASSWORD not in log and SECRET_VALUE not in log


def test_a_wrong_password_delivers_nothing_and_holds_up_no_grant(
    cluster: Cluster,
    ready_namespace: str,
    tls_kafka: KafkaServer,
    start_operator_for: Callable[..., OperatorProcess],
) -> None:
    ns = ready_namespace
    topic = f"sg-audit-tls-{uuid.uuid4().hex[:8]}"
    wrong = secrets.token_hex(12)
    op = start_operator_for(**sasl_ssl_env(tls_kafka, topic, wrong))
    created = time.monotonic()
    apply(cluster, grant("db", ns, URI))
    wait_phase(cluster, "db", ns, "Granted")
    assert time.monotonic() - created < 30  # grant handling did not wait for Kafka
    assert {"decision", "delivery_written"} <= {
        e["type"] for e in op.audit_events() if e.get("grant_name") == "db"
    }  # the events were made (stdout), and the sink has them to send

    def sends_fail() -> None:
        assert re.search(r"audit sink kafka: sending \d+ event\(s\) failed \(\w+\)", op.log())

    eventually(sends_fail, timeout=30)
    messages = read_topic(tls_kafka.bootstrap, topic, lambda ms: False, timeout=5)
    assert events_of(messages, "db") == {}
    log = op.log()
    assert "audit sink kafka connected" not in log
    assert wrong not in log and PASSWORD not in log and SECRET_VALUE not in log
