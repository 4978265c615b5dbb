"""One settings object for the operator, read once at start from the environment.

Variable names are the seeds' own (ENABLE_AUTHORIZATION, TENANT_ID, ...);
everything else is prefixed ``SECRETGRANTS_``. ``main`` maps these onto kopf's
``OperatorSettings`` in one place (the handlers' startup hook).
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

__all__ = ["KafkaSaslMechanism", "KafkaSecurityProtocol", "PDPKind", "Settings", "VaultAuthMethod"]


class PDPKind(StrEnum):
    BUILTIN = "builtin"
    AUTHZEN = "authzen"
    OPA = "opa"


class VaultAuthMethod(StrEnum):
    TOKEN = "token"
    APPROLE = "approle"
    KUBERNETES = "kubernetes"


class KafkaSecurityProtocol(StrEnum):
    PLAINTEXT = "PLAINTEXT"
    SSL = "SSL"
    SASL_PLAINTEXT = "SASL_PLAINTEXT"
    SASL_SSL = "SASL_SSL"

    @property
    def tls(self) -> bool:
        return self in (KafkaSecurityProtocol.SSL, KafkaSecurityProtocol.SASL_SSL)

    @property
    def sasl(self) -> bool:
        return self in (KafkaSecurityProtocol.SASL_PLAINTEXT, KafkaSecurityProtocol.SASL_SSL)


class KafkaSaslMechanism(StrEnum):
    PLAIN = "PLAIN"
    SCRAM_SHA_256 = "SCRAM-SHA-256"
    SCRAM_SHA_512 = "SCRAM-SHA-512"


def _split(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """The operator's configuration. Secrets (tokens, salts) are ``SecretStr``: never printed."""

    # hide_input_in_errors: a validation error would otherwise print the environment it
    # read, tokens and passwords included.
    model_config = SettingsConfigDict(
        env_prefix="", case_sensitive=False, extra="ignore", hide_input_in_errors=True
    )

    dev_mode: bool = Field(
        default=False,
        validation_alias=AliasChoices("SECRETGRANTS_DEV_MODE", "dev_mode"),
        description="Development mode: YAML provider writes, /events and /audit diagnostics.",
    )
    # --- authorization and guards (seed names) ---
    enable_authorization: bool = Field(
        default=True,
        validation_alias=AliasChoices("ENABLE_AUTHORIZATION", "enable_authorization"),
        description="Ask the PDP for every grant. false is a development-only choice, logged loudly.",
    )
    tenant_id: str | None = Field(
        default=None, validation_alias=AliasChoices("TENANT_ID", "tenant_id")
    )
    tenant_allowed_mounts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        validation_alias=AliasChoices("TENANT_ALLOWED_MOUNTS", "tenant_allowed_mounts"),
        description="Comma-separated mounts (optionally provider-qualified) for the env tenant.",
    )
    tenant_salt: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("TENANT_SALT", "tenant_salt")
    )
    # --- API surface (seed names) ---
    secrets_audience: str = Field(
        default="crud.secrets",
        validation_alias=AliasChoices("SECRETS_AUDIENCE", "secrets_audience"),
    )
    secrets_api_require_auth: bool = Field(
        default=True,
        validation_alias=AliasChoices("SECRETS_API_REQUIRE_AUTH", "secrets_api_require_auth"),
        description="Require a token on every /api/secrets/* route (the OpenAPI document aside). "
        "false: management calls without a token are asked of the PDP as ServiceAccount "
        "system.anonymous of the operator namespace; grant reads always need a token.",
    )
    secrets_enforce_scopes: bool = Field(
        default=False,
        validation_alias=AliasChoices("SECRETS_ENFORCE_SCOPES", "secrets_enforce_scopes"),
        description="Require the OAuth scope of each endpoint (secrets.read, secrets.write, ...) "
        "in a JWT access token of SECRETS_JWT_ISSUER.",
    )
    secrets_jwt_issuer: str | None = Field(
        default=None,
        validation_alias=AliasChoices("SECRETS_JWT_ISSUER", "secrets_jwt_issuer"),
        description="Issuer (iss) of JWT access tokens the Secrets API verifies itself; "
        "other tokens go to TokenReview.",
    )
    secrets_jwks_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("SECRETS_JWKS_URL", "secrets_jwks_url"),
        description="JWK set URL of SECRETS_JWT_ISSUER (cached, refetched on an unknown kid).",
    )
    secrets_jwks_file: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("SECRETS_JWKS_FILE", "secrets_jwks_file"),
        description="JWK set file of SECRETS_JWT_ISSUER (instead of the URL).",
    )
    api_client_ca: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("SECRETGRANTS_API_CLIENT_CA", "api_client_ca"),
        description="CA bundle for optional client certificates (mTLS) on the Secrets API; "
        "a grant read with one binds the grant to it (x5t#S256).",
    )
    api_public_urls: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        validation_alias=AliasChoices("SECRETGRANTS_API_PUBLIC_URLS", "api_public_urls"),
        description="Comma-separated base URLs clients reach the Secrets API at "
        "(https://host[:port][/prefix]; no port: any); a DPoP proof's htu must name one. "
        "Unset: https and any DNS or IP name of the serving certificate, any port.",
    )
    api_one_time_quota: int = Field(
        default=10_000,
        ge=1,
        validation_alias=AliasChoices("SECRETGRANTS_API_ONE_TIME_QUOTA", "api_one_time_quota"),
        description="One-time identifiers (token or DPoP proof jti) the callers of one namespace "
        "may have remembered at once, for grant reads and for changes each; past it: 429 "
        "TooManyOneTimeTokens, other namespaces unaffected.",
    )
    api_max_token_lifetime_seconds: int = Field(
        default=3600,
        ge=60,
        validation_alias=AliasChoices(
            "SECRETGRANTS_API_MAX_TOKEN_LIFETIME_SECONDS", "api_max_token_lifetime_seconds"
        ),
        description="Longest token lifetime (exp - iat) a Secrets API call that changes a secret "
        "accepts (kubectl create token's default is 1 h); longer: 401 TokenLifetimeTooLong.",
    )
    api_port: int = Field(
        default=8443,
        ge=0,
        le=65535,
        validation_alias=AliasChoices("SECRETGRANTS_API_PORT", "api_port"),
        description="HTTPS port of the Secrets API (grants with delivery.mode Api); 0 turns it off.",
    )
    # --- providers ---
    vault_url: str | None = Field(
        default=None, validation_alias=AliasChoices("VAULT_URL", "VAULT_ADDR", "vault_url")
    )
    vault_token: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("VAULT_TOKEN", "vault_token")
    )
    vault_auth_method: VaultAuthMethod = Field(
        default=VaultAuthMethod.TOKEN,
        validation_alias=AliasChoices("VAULT_AUTH_METHOD", "vault_auth_method"),
    )
    vault_role_id: str | None = Field(
        default=None, validation_alias=AliasChoices("VAULT_ROLE_ID", "vault_role_id")
    )
    vault_secret_id: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("VAULT_SECRET_ID", "vault_secret_id")
    )
    vault_kubernetes_role: str | None = Field(
        default=None,
        validation_alias=AliasChoices("VAULT_KUBERNETES_ROLE", "vault_kubernetes_role"),
    )
    vault_kubernetes_mount: str = Field(
        default="kubernetes",
        validation_alias=AliasChoices("VAULT_KUBERNETES_MOUNT", "vault_kubernetes_mount"),
    )
    vault_namespace: str | None = Field(
        default=None, validation_alias=AliasChoices("VAULT_NAMESPACE", "vault_namespace")
    )
    vault_ca_cert: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("VAULT_CACERT", "VAULT_CAPATH", "vault_ca_cert"),
        description=(
            "PEM file (or directory of them) of the CAs that sign Vault's TLS certificate; "
            "the public CAs (certifi) when unset. There is no setting to skip verification."
        ),
    )
    openbao_url: str | None = Field(
        default=None, validation_alias=AliasChoices("OPENBAO_URL", "BAO_ADDR", "openbao_url")
    )
    openbao_token: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("OPENBAO_TOKEN", "BAO_TOKEN", "openbao_token")
    )
    openbao_ca_cert: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("OPENBAO_CACERT", "BAO_CACERT", "openbao_ca_cert"),
        description="PEM file (or directory) of the CAs that sign OpenBao's TLS certificate.",
    )
    yaml_vault_path: Path | None = Field(
        default=None, validation_alias=AliasChoices("YAML_VAULT_PATH", "yaml_vault_path")
    )
    provider_timeout_seconds: float = Field(
        default=5.0,
        validation_alias=AliasChoices("SECRETGRANTS_PROVIDER_TIMEOUT", "provider_timeout_seconds"),
    )
    # --- PDP ---
    pdp_kind: PDPKind = Field(
        default=PDPKind.BUILTIN, validation_alias=AliasChoices("SECRETGRANTS_PDP", "pdp_kind")
    )
    pdp_url: str | None = Field(
        default=None, validation_alias=AliasChoices("SECRETGRANTS_PDP_URL", "pdp_url")
    )
    pdp_timeout_seconds: float = Field(
        default=2.0,
        validation_alias=AliasChoices("SECRETGRANTS_PDP_TIMEOUT", "pdp_timeout_seconds"),
    )
    pdp_max_batch: int = Field(
        default=100,
        ge=1,
        le=1000,
        validation_alias=AliasChoices("SECRETGRANTS_PDP_MAX_BATCH", "pdp_max_batch"),
        description=(
            "AuthZEN: decisions asked while a call is in flight go out together in one "
            "batch call (POST /access/v1/evaluations), at most this many; 1 turns it off."
        ),
    )
    opa_decision_path: str = Field(
        default="secretgrants/authz",
        validation_alias=AliasChoices("SECRETGRANTS_OPA_PATH", "opa_decision_path"),
    )
    policy_file: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("SECRETGRANTS_POLICY_FILE", "policy_file"),
        description="Rules of the built-in PDP (YAML).",
    )
    default_ttl_seconds: int = Field(
        default=3600,
        ge=1,
        validation_alias=AliasChoices("SECRETGRANTS_DEFAULT_TTL", "default_ttl_seconds"),
        description="Lifetime of a grant when neither the request nor the PDP sets one.",
    )
    # --- operator ---
    namespace: str | None = Field(
        default=None,
        validation_alias=AliasChoices("SECRETGRANTS_NAMESPACE", "namespace"),
        description="Watch one namespace only; all namespaces when unset.",
    )

    operator_namespace: str = Field(
        default="secretgrants-system",
        validation_alias=AliasChoices("SECRETGRANTS_OPERATOR_NAMESPACE", "operator_namespace"),
        description="Where the operator runs; its webhooks never apply there.",
    )
    worker_limit: int | None = Field(
        default=None,
        ge=8,
        validation_alias=AliasChoices("SECRETGRANTS_WORKER_LIMIT", "worker_limit"),
        description=(
            "How many objects kopf handles at once; unlimited when unset. A limit bounds "
            "the memory of a burst, but a grant waiting out a retry delay keeps its slot: "
            "during a store outage, retrying grants can hold up deletions of others."
        ),
    )
    heap_trim_seconds: float = Field(
        default=10.0,
        ge=0,
        validation_alias=AliasChoices("SECRETGRANTS_HEAP_TRIM_SECONDS", "heap_trim_seconds"),
        description=(
            "How often the operator hands the free pages of its C heap back to the kernel "
            "(glibc malloc_trim; after a burst of grants, ~35 MB). 0 never does."
        ),
    )
    # --- pod admission webhook ---
    webhook_enabled: bool = Field(
        default=True,
        validation_alias=AliasChoices("SECRETGRANTS_WEBHOOK_ENABLED", "webhook_enabled"),
        description="Serve the pod admission webhook (the PEP at the point of use).",
    )
    webhook_address: str = Field(
        default="0.0.0.0",  # noqa: S104  (inside a pod; tests and dev bind 127.0.0.1)
        validation_alias=AliasChoices("SECRETGRANTS_WEBHOOK_ADDRESS", "webhook_address"),
    )
    webhook_port: int = Field(
        default=9443,
        ge=0,
        le=65535,
        validation_alias=AliasChoices("SECRETGRANTS_WEBHOOK_PORT", "webhook_port"),
    )
    webhook_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("SECRETGRANTS_WEBHOOK_URL", "webhook_url"),
        description="Base URL the apiserver calls (outside a cluster); else the Service below.",
    )
    webhook_service: str = Field(
        default="secretgrants-webhook",
        validation_alias=AliasChoices("SECRETGRANTS_WEBHOOK_SERVICE", "webhook_service"),
        description="Service in the operator namespace that fronts the webhook.",
    )
    webhook_cert_dir: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("SECRETGRANTS_WEBHOOK_CERT_DIR", "webhook_cert_dir"),
        description="tls.crt, tls.key and ca.crt (e.g. from cert-manager); self-signed when unset.",
    )
    cert_reload_seconds: float = Field(
        default=30.0,
        ge=0,
        validation_alias=AliasChoices("SECRETGRANTS_CERT_RELOAD_SECONDS", "cert_reload_seconds"),
        description=(
            "How often a mounted serving certificate (SECRETGRANTS_WEBHOOK_CERT_DIR) is looked "
            "at; a renewed one (cert-manager) is served without a restart. 0 never looks."
        ),
    )
    webhook_manage_config: bool = Field(
        default=True,
        validation_alias=AliasChoices("SECRETGRANTS_WEBHOOK_MANAGE", "webhook_manage_config"),
        description=(
            "Create the webhook configurations (and the finalizer MutatingAdmissionPolicy) at "
            "start and keep their caBundle current. false: the install provides them (the Helm "
            "chart's default), the operator writes none and needs no rights on "
            "admissionregistration.k8s.io; mount the certificate (SECRETGRANTS_WEBHOOK_CERT_DIR)."
        ),
    )
    webhook_config_name: str = Field(
        default="secretgrants",
        validation_alias=AliasChoices("SECRETGRANTS_WEBHOOK_CONFIG_NAME", "webhook_config_name"),
    )
    webhook_failure_policy: str = Field(
        default="Fail",
        pattern="^(Fail|Ignore)$",
        validation_alias=AliasChoices(
            "SECRETGRANTS_WEBHOOK_FAILURE_POLICY", "webhook_failure_policy"
        ),
    )
    webhook_timeout_seconds: int = Field(
        default=5,
        ge=1,
        le=30,
        validation_alias=AliasChoices("SECRETGRANTS_WEBHOOK_TIMEOUT", "webhook_timeout_seconds"),
    )
    reservation_window_seconds: int = Field(
        default=30,
        ge=1,
        validation_alias=AliasChoices(
            "SECRETGRANTS_RESERVATION_WINDOW", "reservation_window_seconds"
        ),
        description="How long a counted use waits for its pod to appear before it is released.",
    )
    admission_cache_seconds: float = Field(
        default=2.0,
        ge=0,
        le=30,
        validation_alias=AliasChoices(
            "SECRETGRANTS_ADMISSION_CACHE_SECONDS", "admission_cache_seconds"
        ),
        description=(
            "How long pod admission may use a grant it read moments ago instead of reading it "
            "again (forgotten at once when the watch shows a change; refusals and counted uses "
            "always go to the API). 0 reads every time."
        ),
    )

    # --- audit and metrics ---
    audit_sinks: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["stdout", "events"],
        validation_alias=AliasChoices("SECRETGRANTS_AUDIT_SINKS", "audit_sinks"),
        description="Comma-separated: stdout (JSON lines), events (Kubernetes Events), kafka.",
    )
    kafka_bootstrap: str | None = Field(
        default=None,
        validation_alias=AliasChoices("SECRETGRANTS_KAFKA_BOOTSTRAP", "kafka_bootstrap"),
        description="Comma-separated host:port of the Kafka brokers of the kafka audit sink.",
    )
    kafka_topic: str = Field(
        default="secretgrants.audit",
        min_length=1,
        max_length=249,
        pattern=r"^[A-Za-z0-9._-]+$",
        validation_alias=AliasChoices("SECRETGRANTS_KAFKA_TOPIC", "kafka_topic"),
        description="Topic of the kafka audit sink (messages keyed by grant namespace/name).",
    )
    kafka_buffer_size: int = Field(
        default=10000,
        ge=1,
        validation_alias=AliasChoices("SECRETGRANTS_KAFKA_BUFFER", "kafka_buffer_size"),
        description="Audit events held while Kafka is slow or away; past it new ones are dropped and counted.",
    )
    kafka_security_protocol: KafkaSecurityProtocol = Field(
        default=KafkaSecurityProtocol.PLAINTEXT,
        validation_alias=AliasChoices(
            "SECRETGRANTS_KAFKA_SECURITY_PROTOCOL", "kafka_security_protocol"
        ),
        description="PLAINTEXT, SSL (TLS), SASL_PLAINTEXT or SASL_SSL (SASL over TLS).",
    )
    kafka_ca_file: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("SECRETGRANTS_KAFKA_CA_FILE", "kafka_ca_file"),
        description="CA bundle that verifies the brokers (SSL, SASL_SSL); the system CAs when unset.",
    )
    kafka_cert_file: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("SECRETGRANTS_KAFKA_CERT_FILE", "kafka_cert_file"),
        description="Client certificate (PEM) for mTLS to the brokers (SSL, SASL_SSL); "
        "with SECRETGRANTS_KAFKA_KEY_FILE.",
    )
    kafka_key_file: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("SECRETGRANTS_KAFKA_KEY_FILE", "kafka_key_file"),
        description="Unencrypted private key (PEM) of SECRETGRANTS_KAFKA_CERT_FILE.",
    )
    kafka_sasl_mechanism: KafkaSaslMechanism | None = Field(
        default=None,
        validation_alias=AliasChoices("SECRETGRANTS_KAFKA_SASL_MECHANISM", "kafka_sasl_mechanism"),
        description="PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512; required with SASL_PLAINTEXT "
        "and SASL_SSL.",
    )
    kafka_sasl_username: str | None = Field(
        default=None,
        validation_alias=AliasChoices("SECRETGRANTS_KAFKA_SASL_USERNAME", "kafka_sasl_username"),
        description="SASL user of the kafka audit sink.",
    )
    kafka_sasl_password: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("SECRETGRANTS_KAFKA_SASL_PASSWORD", "kafka_sasl_password"),
        description="SASL password of the kafka audit sink (secret).",
    )
    metrics_port: int = Field(
        default=9090,
        ge=0,
        le=65535,
        validation_alias=AliasChoices("SECRETGRANTS_METRICS_PORT", "metrics_port"),
        description="Port of /metrics; 0 turns it off.",
    )
    metrics_address: str = Field(
        default="0.0.0.0",  # noqa: S104  (inside a pod)
        validation_alias=AliasChoices("SECRETGRANTS_METRICS_ADDRESS", "metrics_address"),
    )
    diagnostics_port: int = Field(
        default=8081,
        ge=0,
        le=65535,
        validation_alias=AliasChoices("SECRETGRANTS_DIAGNOSTICS_PORT", "diagnostics_port"),
        description="Dev mode only: /audit and /events on 127.0.0.1; 0 turns them off.",
    )
    recheck_interval_seconds: float = Field(
        default=30.0,
        gt=0,
        validation_alias=AliasChoices("SECRETGRANTS_RECHECK_INTERVAL", "recheck_interval_seconds"),
        description="How often a live grant re-runs the tenant guard (tenants may change).",
    )
    restart_min_interval_seconds: float = Field(
        default=300.0,
        ge=0,
        validation_alias=AliasChoices(
            "SECRETGRANTS_RESTART_MIN_INTERVAL", "restart_min_interval_seconds"
        ),
        description="At most one rollout restart per workload in this many seconds.",
    )
    # --- traces (the tracing extra) ---
    tracing: Literal["off", "otlp", "console"] = Field(
        default="off",
        validation_alias=AliasChoices("SECRETGRANTS_TRACING", "tracing"),
        description=(
            "OpenTelemetry spans: off, otlp (OTLP/HTTP to OTEL_EXPORTER_OTLP_ENDPOINT, "
            "default http://localhost:4318) or console (JSON lines on stdout). "
            "Needs the tracing extra."
        ),
    )
    tracing_service_name: str = Field(
        default="secretgrants",
        min_length=1,
        validation_alias=AliasChoices(
            "SECRETGRANTS_TRACING_SERVICE_NAME", "OTEL_SERVICE_NAME", "tracing_service_name"
        ),
        description="service.name of the spans.",
    )

    @field_validator("audit_sinks", mode="before")
    @classmethod
    def _split_sinks(cls, value: object) -> object:
        return _split(value)

    @field_validator("tenant_allowed_mounts", mode="before")
    @classmethod
    def _split_mounts(cls, value: object) -> object:
        return _split(value)

    @field_validator("api_public_urls", mode="before")
    @classmethod
    def _split_public_urls(cls, value: object) -> object:
        return _split(value)

    @field_validator("api_public_urls", mode="after")
    @classmethod
    def _base_urls(cls, value: list[str]) -> list[str]:
        for url in value:
            parts = urlsplit(url)
            if parts.scheme not in {"http", "https"} or not parts.hostname or parts.query:
                raise ValueError(
                    f"SECRETGRANTS_API_PUBLIC_URLS: {url!r} is not https://host[:port][/prefix]"
                )
        return value

    @model_validator(mode="after")
    def _kafka_needs_brokers(self) -> Settings:
        if "kafka" in self.audit_sinks and not self.kafka_bootstrap:
            raise ValueError("SECRETGRANTS_AUDIT_SINKS has kafka: set SECRETGRANTS_KAFKA_BOOTSTRAP")
        return self

    @model_validator(mode="after")
    def _kafka_security_is_whole(self) -> Settings:
        """Each protocol gets exactly the settings it uses: a half-set one fails at start."""
        protocol = self.kafka_security_protocol
        named = f"SECRETGRANTS_KAFKA_SECURITY_PROTOCOL={protocol.value}"
        sasl = {
            "SECRETGRANTS_KAFKA_SASL_MECHANISM": self.kafka_sasl_mechanism,
            "SECRETGRANTS_KAFKA_SASL_USERNAME": self.kafka_sasl_username,
            "SECRETGRANTS_KAFKA_SASL_PASSWORD": self.kafka_sasl_password,
        }
        tls = {
            "SECRETGRANTS_KAFKA_CA_FILE": self.kafka_ca_file,
            "SECRETGRANTS_KAFKA_CERT_FILE": self.kafka_cert_file,
            "SECRETGRANTS_KAFKA_KEY_FILE": self.kafka_key_file,
        }
        if protocol.sasl:
            missing = [env for env, value in sasl.items() if not value]
            if missing:
                raise ValueError(f"{named} needs {', '.join(missing)}")
        else:
            extra = [env for env, value in sasl.items() if value]
            if extra:
                raise ValueError(
                    f"{', '.join(extra)} set, but {named} uses no SASL "
                    "(SASL_PLAINTEXT or SASL_SSL does)"
                )
        if not protocol.tls:
            extra = [env for env, value in tls.items() if value]
            if extra:
                raise ValueError(
                    f"{', '.join(extra)} set, but {named} uses no TLS (SSL or SASL_SSL does)"
                )
        if bool(self.kafka_cert_file) != bool(self.kafka_key_file):
            raise ValueError(
                "SECRETGRANTS_KAFKA_CERT_FILE and SECRETGRANTS_KAFKA_KEY_FILE go together (mTLS)"
            )
        for env, path in tls.items():
            if path is not None and not path.is_file():
                raise ValueError(f"{env}: no such file {path}")
        return self


_MORE = {
    "tenant_id": "Tenant id of the env tenant, which covers every namespace while no SecretTenant exists (once one exists, namespaces it does not claim get TenantNotFound).",
    "tenant_salt": "Audit salt for resource_ref of tenants without a saltSecretRef (secret).",
    "secrets_audience": "Audience the Secrets API requires in ServiceAccount tokens.",
    "vault_url": "Vault (or OpenBao) address for vault+kv2:// URIs.",
    "vault_token": "Token for VAULT_AUTH_METHOD=token (secret).",
    "vault_auth_method": "token, approle or kubernetes.",
    "vault_role_id": "AppRole role id.",
    "vault_secret_id": "AppRole secret id (secret).",
    "vault_kubernetes_role": "Vault role for the Kubernetes auth method.",
    "vault_kubernetes_mount": "Mount of the Kubernetes auth method.",
    "vault_namespace": "Vault Enterprise / OpenBao namespace.",
    "openbao_url": "OpenBao address for openbao+kv2:// URIs.",
    "openbao_token": "Token for OpenBao (secret).",
    "yaml_vault_path": "File of the YAML dev provider (yaml:// URIs).",
    "provider_timeout_seconds": "Timeout of one provider call.",
    "pdp_kind": "builtin, authzen or opa.",
    "pdp_url": "AuthZEN base URL (discovery) or OPA URL.",
    "pdp_timeout_seconds": "Timeout of one PDP call; past it the decision is a deny (fail closed).",
    "opa_decision_path": "OPA data API path of the decision document.",
    "webhook_address": "Address the admission webhook and the Secrets API listen on.",
    "webhook_port": "Port of the admission webhook.",
    "webhook_config_name": "Name of the Mutating/ValidatingWebhookConfiguration the operator keeps.",
    "webhook_failure_policy": "Fail (default, fail closed) or Ignore.",
    "webhook_timeout_seconds": "timeoutSeconds of the webhooks.",
    "metrics_address": "Address of /metrics.",
}


def reference_markdown() -> str:
    """The configuration reference (docs/configuration.md), generated from the fields above."""
    lines = [
        "# Configuration reference",
        "",
        "Generated from `operator/secretgrants/settings.py` (a test fails when this file is stale:",
        "regenerate with `python -c 'from secretgrants.settings import reference_markdown as r; "
        'print(r(), end="")\' > docs/configuration.md`).',
        "",
        "| variable | default | what |",
        "| --- | --- | --- |",
    ]
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        choices = alias.choices if isinstance(alias, AliasChoices) else [name]
        env = str(choices[0])
        if field.default_factory is not None:
            default = repr(field.default_factory())  # type: ignore[call-arg]
        else:
            default = "unset" if field.default is None else repr(field.default)
        if isinstance(field.default, StrEnum):
            default = repr(field.default.value)
        what = (field.description or _MORE.get(name, "")).replace("|", "\\|")
        lines.append(f"| `{env}` | `{default}` | {what} |")
    return "\n".join(lines) + "\n"
