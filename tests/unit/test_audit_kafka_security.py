"""TLS and SASL of the Kafka audit sink: the settings' checks and the producer's arguments.

What goes in: environment variables (``Settings``) and the security arguments of
``aiokafka_producer``, with a CA and certificates made here; no broker. What is
asserted: each protocol accepts exactly the settings it uses and a half-set one
fails at start naming the variables, never printing the password; the producer
gets aiokafka's ``security_protocol``, an ``ssl_context`` that verifies the broker
with the CA (and holds the client certificate for mTLS), and the SASL login.
The real SASL_SSL broker is in tests/e2e/test_audit_kafka_tls.py.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from secretgrants.audit_kafka import aiokafka_producer, security_kwargs
from secretgrants.pki import new_ca, write_pair
from secretgrants.settings import KafkaSaslMechanism, KafkaSecurityProtocol, Settings

PASSWORD = "kafka-pw-7c1e9f0b"  # a test value, looked for in error messages


@pytest.fixture
def kafka_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.setenv("SECRETGRANTS_AUDIT_SINKS", "stdout,kafka")
    monkeypatch.setenv("SECRETGRANTS_KAFKA_BOOTSTRAP", "127.0.0.1:9093")
    return monkeypatch


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    """A CA file, and a client certificate and key it signed (and a key of another pair)."""
    ca = new_ca("kafka test CA")
    ca_file, _ = write_pair(ca, tmp_path, "ca")
    cert_file, key_file = write_pair(ca.issue("audit", client=True), tmp_path, "client")
    _, other_key = write_pair(ca.issue("other", client=True), tmp_path, "other")
    return {"ca": ca_file, "cert": cert_file, "key": key_file, "other_key": other_key}


def settings_error(**env: str) -> str:
    mp = pytest.MonkeyPatch()
    try:
        for name, value in env.items():
            mp.setenv(f"SECRETGRANTS_KAFKA_{name}", value)
        with pytest.raises(ValidationError) as err:
            Settings()
    finally:
        mp.undo()
    message = str(err.value)
    assert PASSWORD not in message and PASSWORD not in repr(err.value)
    return message


def test_plaintext_is_the_default_and_needs_nothing(kafka_env: pytest.MonkeyPatch) -> None:
    cfg = Settings()
    assert cfg.kafka_security_protocol is KafkaSecurityProtocol.PLAINTEXT
    assert cfg.kafka_sasl_password is None and cfg.kafka_ca_file is None


def test_sasl_needs_mechanism_username_and_password(kafka_env: pytest.MonkeyPatch) -> None:
    message = settings_error(SECURITY_PROTOCOL="SASL_SSL", SASL_PASSWORD=PASSWORD)
    assert "SECURITY_PROTOCOL=SASL_SSL needs" in message
    assert "SECRETGRANTS_KAFKA_SASL_MECHANISM" in message
    assert "SECRETGRANTS_KAFKA_SASL_USERNAME" in message
    assert "SECRETGRANTS_KAFKA_SASL_PASSWORD" not in message  # that one is set
    message = settings_error(
        SECURITY_PROTOCOL="SASL_PLAINTEXT", SASL_MECHANISM="PLAIN", SASL_USERNAME="audit"
    )
    assert message.count("SECRETGRANTS_KAFKA_SASL_") == 1 and "SASL_PASSWORD" in message
    assert "SASL_MECHANISM" in settings_error(
        SECURITY_PROTOCOL="SASL_SSL", SASL_MECHANISM="GSSAPI", SASL_USERNAME="a"
    )


def test_sasl_settings_without_a_sasl_protocol_fail(kafka_env: pytest.MonkeyPatch) -> None:
    for protocol in ("PLAINTEXT", "SSL"):
        message = settings_error(
            SECURITY_PROTOCOL=protocol, SASL_USERNAME="audit", SASL_PASSWORD=PASSWORD
        )
        assert "SASL_USERNAME, SECRETGRANTS_KAFKA_SASL_PASSWORD set" in message
        assert "uses no SASL" in message


def test_tls_files_need_a_tls_protocol(kafka_env: pytest.MonkeyPatch, pki: dict[str, Path]) -> None:
    login = {"SASL_MECHANISM": "PLAIN", "SASL_USERNAME": "audit", "SASL_PASSWORD": PASSWORD}
    for protocol, more in (("PLAINTEXT", {}), ("SASL_PLAINTEXT", login)):
        message = settings_error(SECURITY_PROTOCOL=protocol, CA_FILE=str(pki["ca"]), **more)
        assert "SECRETGRANTS_KAFKA_CA_FILE set" in message and "uses no TLS" in message


def test_certificate_and_key_go_together_and_must_exist(
    kafka_env: pytest.MonkeyPatch, pki: dict[str, Path], tmp_path: Path
) -> None:
    message = settings_error(SECURITY_PROTOCOL="SSL", CERT_FILE=str(pki["cert"]))
    assert "CERT_FILE and SECRETGRANTS_KAFKA_KEY_FILE go together" in message
    missing = tmp_path / "nope.crt"
    message = settings_error(SECURITY_PROTOCOL="SSL", CA_FILE=str(missing))
    assert f"SECRETGRANTS_KAFKA_CA_FILE: no such file {missing}" in message


def test_a_whole_sasl_ssl_setup_loads_and_never_shows_the_password(
    kafka_env: pytest.MonkeyPatch, pki: dict[str, Path]
) -> None:
    for name, value in {
        "SECURITY_PROTOCOL": "SASL_SSL",
        "CA_FILE": str(pki["ca"]),
        "CERT_FILE": str(pki["cert"]),
        "KEY_FILE": str(pki["key"]),
        "SASL_MECHANISM": "SCRAM-SHA-512",
        "SASL_USERNAME": "audit",
        "SASL_PASSWORD": PASSWORD,
    }.items():
        kafka_env.setenv(f"SECRETGRANTS_KAFKA_{name}", value)
    cfg = Settings()
    assert cfg.kafka_security_protocol is KafkaSecurityProtocol.SASL_SSL
    assert cfg.kafka_sasl_mechanism is KafkaSaslMechanism.SCRAM_SHA_512
    assert cfg.kafka_sasl_password is not None
    assert cfg.kafka_sasl_password.get_secret_value() == PASSWORD
    assert PASSWORD not in repr(cfg) and PASSWORD not in str(cfg)


def test_an_unrelated_error_does_not_print_the_environment(
    kafka_env: pytest.MonkeyPatch,
) -> None:
    kafka_env.setenv("SECRETGRANTS_KAFKA_SASL_PASSWORD", PASSWORD)
    kafka_env.setenv("VAULT_TOKEN", PASSWORD)
    kafka_env.delenv("SECRETGRANTS_KAFKA_BOOTSTRAP")
    with pytest.raises(ValidationError) as err:
        Settings()
    assert "SECRETGRANTS_KAFKA_BOOTSTRAP" in str(err.value)
    assert PASSWORD not in str(err.value)


def test_plaintext_producer_gets_no_tls_and_no_login() -> None:
    assert security_kwargs() == {"security_protocol": "PLAINTEXT"}


def test_ssl_verifies_the_broker_with_the_ca_file(pki: dict[str, Path]) -> None:
    kwargs = security_kwargs("SSL", ca_file=pki["ca"])
    assert set(kwargs) == {"security_protocol", "ssl_context"}
    context = kwargs["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode is ssl.CERT_REQUIRED and context.check_hostname
    subjects = [dict(x[0] for x in ca["subject"]) for ca in context.get_ca_certs()]
    assert subjects == [{"commonName": "kafka test CA"}]


def test_mtls_loads_the_client_certificate_and_refuses_a_foreign_key(
    pki: dict[str, Path],
) -> None:
    kwargs = security_kwargs("SSL", ca_file=pki["ca"], cert_file=pki["cert"], key_file=pki["key"])
    assert isinstance(kwargs["ssl_context"], ssl.SSLContext)
    with pytest.raises(ssl.SSLError):
        security_kwargs("SSL", cert_file=pki["cert"], key_file=pki["other_key"])


def test_sasl_ssl_passes_the_login_and_sasl_plaintext_no_tls(pki: dict[str, Path]) -> None:
    kwargs = security_kwargs(
        "SASL_SSL",
        ca_file=pki["ca"],
        sasl_mechanism="SCRAM-SHA-256",
        sasl_username="audit",
        sasl_password=SecretStr(PASSWORD),
    )
    assert isinstance(kwargs.pop("ssl_context"), ssl.SSLContext)
    assert kwargs == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-256",
        "sasl_plain_username": "audit",
        "sasl_plain_password": PASSWORD,
    }
    plain = security_kwargs(
        "SASL_PLAINTEXT",
        sasl_mechanism="PLAIN",
        sasl_username="audit",
        sasl_password=SecretStr(PASSWORD),
    )
    assert "ssl_context" not in plain and plain["sasl_mechanism"] == "PLAIN"
    with pytest.raises(ValueError, match="SASL_SSL needs") as err:
        security_kwargs("SASL_SSL", sasl_mechanism="PLAIN", sasl_password=SecretStr(PASSWORD))
    assert PASSWORD not in str(err.value)


def test_a_bad_ca_file_fails_when_the_factory_is_made(tmp_path: Path) -> None:
    bad = tmp_path / "ca.crt"
    bad.write_text("not a certificate\n")
    with pytest.raises(ssl.SSLError):
        aiokafka_producer("127.0.0.1:9093", security_protocol="SSL", ca_file=bad)


async def test_the_factory_hands_the_security_to_aiokafka(pki: dict[str, Path]) -> None:
    make = aiokafka_producer(
        "127.0.0.1:9093",
        security_protocol="SASL_SSL",
        ca_file=pki["ca"],
        sasl_mechanism=KafkaSaslMechanism.SCRAM_SHA_256,
        sasl_username="audit",
        sasl_password=SecretStr(PASSWORD),
    )
    producer = make()  # not started: no broker is asked
    client = producer.client  # type: ignore[attr-defined]
    assert client._security_protocol == "SASL_SSL"
    assert isinstance(client._ssl_context, ssl.SSLContext)
    assert client._sasl_mechanism == "SCRAM-SHA-256"
    assert client._sasl_plain_username == "audit"
    assert client._sasl_plain_password == PASSWORD
