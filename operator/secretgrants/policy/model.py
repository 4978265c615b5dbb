"""What the PEP asks a PDP and what it gets back.

The operator is the policy enforcement point (PEP). For every grant it asks a
policy decision point (PDP) one question: may ServiceAccount *S* in namespace
*N* (tenant *T*) use secret *U* for purpose *P*? :class:`AccessRequest` is that
question and :meth:`AccessRequest.to_authzen` its one wire form, an AuthZEN
1.0 access evaluation request; the OPA client sends the very same document as
``input``. :class:`Decision` is the answer, whichever PDP gave it.

An access request never carries a secret value: there is no field for one and
unknown fields are refused (``extra="forbid"``). The resource is named by its
canonical URI and described by provider metadata only (owner, creator,
creation time, version).

Obligations are what a permit comes with and the PEP must enforce:
``ttl_seconds`` and ``max_uses``. :func:`apply_obligations` is the one place
that turns a decision and the grant's own request into effective limits: the
smaller of asked and obliged wins (a PDP can shorten a grant, never lengthen
it), and a permit carrying an obligation the PEP does not understand becomes
a deny (``UnknownObligation``): enforcing half of a decision would be
enforcing a different one.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Collection, Mapping
from enum import StrEnum
from typing import Any, Final

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from secretgrants.errors import SecretGrantsError
from secretgrants.reasons import Purpose, Reason
from secretgrants.uri import SecretURI, parse_secret_uri

__all__ = [
    "AUTHZEN_RESOURCE_TYPE",
    "AUTHZEN_SUBJECT_TYPE",
    "KNOWN_OBLIGATIONS",
    "AccessRequest",
    "Decision",
    "Effect",
    "Enforcement",
    "Obligations",
    "RequestContext",
    "Resource",
    "Subject",
    "answered_decision",
    "apply_obligations",
    "parse_obligations",
    "rfc3339",
    "utcnow",
]

AUTHZEN_SUBJECT_TYPE: Final = "kubernetes_service_account"
AUTHZEN_RESOURCE_TYPE: Final = "secret"
_SA_PREFIX: Final = "system:serviceaccount:"

KNOWN_OBLIGATIONS: Final[frozenset[str]] = frozenset({"ttl_seconds", "max_uses"})
"""Obligations the PEP enforces by default; anything else on a permit turns it into a deny."""

# Kubernetes names: a namespace is a DNS-1123 label, a ServiceAccount a DNS-1123
# subdomain. Neither may contain ':', so the AuthZEN subject id is unambiguous.
_DNS1123_LABEL: Final = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_DNS1123_SUBDOMAIN: Final = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
# Header-safe tokens: printable ASCII without spaces (correlation ids travel as X-Request-ID).
_TOKEN: Final = r"^[\x21-\x7e]+$"  # noqa: S105 - a regex, not a password
_TRACEPARENT_RE: Final = re.compile(
    r"^(?P<version>[0-9a-f]{2})-(?P<trace_id>[0-9a-f]{32})-(?P<span_id>[0-9a-f]{16})"
    r"-(?P<flags>[0-9a-f]{2})(-.*)?$"
)


def utcnow() -> dt.datetime:
    """Now, timezone-aware in UTC."""
    return dt.datetime.now(dt.UTC)


def rfc3339(value: dt.datetime) -> str:
    """An aware datetime as RFC 3339 in UTC with a ``Z`` (naive ones are taken as UTC)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    text = value.astimezone(dt.UTC).isoformat()
    return text.removesuffix("+00:00") + "Z"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Subject(_Frozen):
    """Who asks: a ServiceAccount, by namespace and name, and the tenant it belongs to."""

    namespace: str = Field(max_length=63, pattern=_DNS1123_LABEL)
    service_account: str = Field(max_length=253, pattern=_DNS1123_SUBDOMAIN)
    uid: str | None = Field(default=None, max_length=128, pattern=_TOKEN)
    tenant: str | None = Field(default=None, min_length=1, max_length=253)

    @property
    def authzen_id(self) -> str:
        """``system:serviceaccount:<namespace>:<name>``, the Kubernetes username of the account."""
        return f"{_SA_PREFIX}{self.namespace}:{self.service_account}"


class Resource(_Frozen):
    """What is asked for: a secret by its URI parts, with version and provider metadata.

    Build one with :meth:`from_uri`. The parts are checked as a whole by
    :class:`~secretgrants.uri.SecretURI`, so a resource always names exactly
    one canonical URI (:attr:`id`).
    """

    provider: str
    engine: str | None
    mount: str
    path: str
    fragment: str | None = None
    version: int | None = Field(default=None, ge=0)
    owner: str | None = Field(default=None, max_length=512)
    created_by: str | None = Field(default=None, max_length=512)
    created_at: AwareDatetime | None = None

    @model_validator(mode="after")
    def _check_uri(self) -> Resource:
        try:
            self.uri  # noqa: B018 - validates the parts as one URI
        except SecretGrantsError as exc:
            raise ValueError(exc.message) from None
        return self

    @classmethod
    def from_uri(
        cls,
        uri: SecretURI | str,
        *,
        version: int | None = None,
        owner: str | None = None,
        created_by: str | None = None,
        created_at: dt.datetime | None = None,
    ) -> Resource:
        """A resource for ``uri`` (parsed and normalised if given as text)."""
        parsed = parse_secret_uri(uri)
        return cls(
            provider=parsed.provider,
            engine=parsed.engine,
            mount=parsed.mount,
            path=parsed.path,
            fragment=parsed.fragment,
            version=version,
            owner=owner,
            created_by=created_by,
            created_at=created_at,
        )

    @property
    def uri(self) -> SecretURI:
        return SecretURI(
            provider=self.provider,
            engine=self.engine,
            mount=self.mount,
            path=self.path,
            fragment=self.fragment,
        )

    @property
    def id(self) -> str:
        """The canonical URI: the AuthZEN resource id and what rules match on."""
        return self.uri.format()


class RequestContext(_Frozen):
    """Why and when: the grant's justification, what it asks for, and tracing ids."""

    justification: str | None = Field(default=None, max_length=4096)
    requested_ttl_seconds: int | None = Field(default=None, ge=1)
    requested_max_uses: int | None = Field(default=None, ge=1)
    correlation_id: str | None = Field(default=None, max_length=128, pattern=_TOKEN)
    trace_id: str | None = Field(default=None, pattern=r"^[0-9a-f]{32}$")
    span_id: str | None = Field(default=None, pattern=r"^[0-9a-f]{16}$")
    traceparent: str | None = Field(default=None, max_length=512)
    time: AwareDatetime = Field(default_factory=utcnow)

    @model_validator(mode="after")
    def _check_trace(self) -> RequestContext:
        if self.traceparent is None:
            return self
        match = _TRACEPARENT_RE.match(self.traceparent)
        if match is None:
            raise ValueError("traceparent is not a W3C trace context header value")
        if self.trace_id is None:
            object.__setattr__(self, "trace_id", match["trace_id"])
        if self.span_id is None:
            object.__setattr__(self, "span_id", match["span_id"])
        return self


class AccessRequest(_Frozen):
    """May ``subject`` use ``resource`` for ``purpose``? One question for a PDP."""

    subject: Subject
    resource: Resource
    purpose: Purpose
    context: RequestContext = Field(default_factory=RequestContext)

    @model_validator(mode="after")
    def _check_purpose(self) -> AccessRequest:
        try:
            self.resource.uri.check_purpose(self.purpose.value)
        except SecretGrantsError as exc:
            raise ValueError(exc.message) from None
        return self

    def to_authzen(self) -> dict[str, Any]:
        """The AuthZEN 1.0 access evaluation request body (also the OPA ``input``)."""
        subject, resource, context = self.subject, self.resource, self.context
        return {
            "subject": {
                "type": AUTHZEN_SUBJECT_TYPE,
                "id": subject.authzen_id,
                "properties": {
                    "namespace": subject.namespace,
                    "uid": subject.uid,
                    "tenant": subject.tenant,
                },
            },
            "resource": {
                "type": AUTHZEN_RESOURCE_TYPE,
                "id": resource.id,
                "properties": {
                    "provider": resource.provider,
                    "engine": resource.engine,
                    "mount": resource.mount,
                    "path": resource.path,
                    "fragment": resource.fragment,
                    "version": resource.version,
                    "owner": resource.owner,
                    "created_by": resource.created_by,
                    "created_at": (
                        None if resource.created_at is None else rfc3339(resource.created_at)
                    ),
                },
            },
            "action": {"name": self.purpose.value},
            "context": {
                "tenant": subject.tenant,
                "justification": context.justification,
                "requested_ttl_seconds": context.requested_ttl_seconds,
                "requested_max_uses": context.requested_max_uses,
                "correlation_id": context.correlation_id,
                "trace_id": context.trace_id,
                "span_id": context.span_id,
                "traceparent": context.traceparent,
                "time": rfc3339(context.time),
            },
        }

    @classmethod
    def from_authzen(cls, body: object) -> AccessRequest:
        """Read an AuthZEN evaluation request of the shape :meth:`to_authzen` writes.

        The subject id and the resource id are authoritative; resource
        properties that contradict the id are refused. Raises ``ValueError``
        with a message naming the offending member.
        """
        doc = _obj(body, "request")
        subject = _obj(doc.get("subject"), "subject")
        sprops = _obj(subject.get("properties", {}), "subject.properties")
        if subject.get("type") != AUTHZEN_SUBJECT_TYPE:
            raise ValueError(f"subject.type must be {AUTHZEN_SUBJECT_TYPE!r}")
        sid = subject.get("id")
        if not isinstance(sid, str) or not sid.startswith(_SA_PREFIX):
            raise ValueError(f"subject.id must be '{_SA_PREFIX}<namespace>:<name>'")
        namespace, colon, name = sid.removeprefix(_SA_PREFIX).partition(":")
        if not colon:
            raise ValueError(f"subject.id must be '{_SA_PREFIX}<namespace>:<name>'")
        if sprops.get("namespace") not in (None, namespace):
            raise ValueError("subject.properties.namespace contradicts subject.id")

        resource = _obj(doc.get("resource"), "resource")
        rprops = _obj(resource.get("properties", {}), "resource.properties")
        if resource.get("type") != AUTHZEN_RESOURCE_TYPE:
            raise ValueError(f"resource.type must be {AUTHZEN_RESOURCE_TYPE!r}")
        try:
            uri = parse_secret_uri(resource.get("id"))
        except SecretGrantsError as exc:
            raise ValueError(f"resource.id: {exc.message}") from None
        for part in ("provider", "engine", "mount", "path", "fragment"):
            if part in rprops and rprops[part] != getattr(uri, part):
                raise ValueError(f"resource.properties.{part} contradicts resource.id")

        action = _obj(doc.get("action"), "action")
        purpose = action.get("name")
        if purpose not in {p.value for p in Purpose}:
            raise ValueError(f"action.name must be one of {', '.join(p.value for p in Purpose)}")

        context = _obj(doc.get("context", {}), "context")
        tenant = sprops.get("tenant", context.get("tenant"))
        if context.get("tenant") not in (None, tenant):
            raise ValueError("context.tenant contradicts subject.properties.tenant")
        try:
            return cls(
                subject=Subject(
                    namespace=namespace,
                    service_account=name,
                    uid=sprops.get("uid"),
                    tenant=tenant,
                ),
                resource=Resource(
                    provider=uri.provider,
                    engine=uri.engine,
                    mount=uri.mount,
                    path=uri.path,
                    fragment=uri.fragment,
                    version=rprops.get("version"),
                    owner=rprops.get("owner"),
                    created_by=rprops.get("created_by"),
                    created_at=rprops.get("created_at"),
                ),
                purpose=Purpose(purpose),
                context=RequestContext(
                    justification=context.get("justification"),
                    requested_ttl_seconds=context.get("requested_ttl_seconds"),
                    requested_max_uses=context.get("requested_max_uses"),
                    correlation_id=context.get("correlation_id"),
                    trace_id=context.get("trace_id"),
                    span_id=context.get("span_id"),
                    traceparent=context.get("traceparent"),
                    **({"time": context["time"]} if context.get("time") is not None else {}),
                ),
            )
        except ValidationError as exc:
            raise ValueError(_first_error(exc)) from None


def _obj(value: object, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{what} must be a JSON object")
    return value


def _first_error(exc: ValidationError) -> str:
    err = exc.errors(include_url=False, include_input=False)[0]
    where = ".".join(str(p) for p in err["loc"])
    return f"{where}: {err['msg']}" if where else str(err["msg"])


class Effect(StrEnum):
    PERMIT = "permit"
    DENY = "deny"


class Obligations(_Frozen):
    """What a permit comes with. ``extra`` keeps obligations the PEP may not know, to show them."""

    ttl_seconds: int | None = Field(default=None, ge=1)
    max_uses: int | None = Field(default=None, ge=1)
    extra: dict[str, Any] = Field(default_factory=dict)

    def names(self) -> set[str]:
        """The names of the obligations present."""
        present = set(self.extra)
        if self.ttl_seconds is not None:
            present.add("ttl_seconds")
        if self.max_uses is not None:
            present.add("max_uses")
        return present

    def as_dict(self) -> dict[str, Any]:
        """The obligations as one flat mapping (how PDPs send them)."""
        out: dict[str, Any] = dict(self.extra)
        if self.ttl_seconds is not None:
            out["ttl_seconds"] = self.ttl_seconds
        if self.max_uses is not None:
            out["max_uses"] = self.max_uses
        return out


def parse_obligations(raw: Mapping[str, Any]) -> tuple[Obligations, list[str]]:
    """Read obligations from a PDP answer: known ones typed, the rest kept in ``extra``.

    Returns the obligations and a list of problems (a known obligation whose
    value is not a positive integer); a caller turns problems on a permit into
    a deny, since the PEP cannot enforce a limit it cannot read.
    """
    problems: list[str] = []
    extra: dict[str, Any] = {}
    typed: dict[str, int | None] = {"ttl_seconds": None, "max_uses": None}
    for name, value in raw.items():
        if name in typed:
            if value is None:
                continue
            number = _positive_int(value)
            if number is None:
                problems.append(f"obligation {name!r} must be a positive integer")
                continue
            typed[name] = number
        else:
            extra[str(name)] = value
    return (
        Obligations(ttl_seconds=typed["ttl_seconds"], max_uses=typed["max_uses"], extra=extra),
        problems,
    )


def _positive_int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and value >= 1:
        return value
    return None


class Decision(_Frozen):
    """A PDP's answer, whichever PDP gave it.

    ``reason`` is a short word or phrase (``PDPUnavailable``,
    ``UnknownObligation``, or the PDP's own reason, e.g. ``permitted by rule
    'payments-read'``); ``detail`` says more when the PEP made the decision
    itself. ``retryable`` is true only for fail-closed denies (the PDP could
    not be asked), which the PEP retries with backoff.
    """

    decision_id: str = Field(min_length=1, max_length=256)
    effect: Effect
    reason: str
    pdp_kind: str
    obligations: Obligations = Field(default_factory=Obligations)
    decided_at: AwareDatetime = Field(default_factory=utcnow)
    retryable: bool = False
    detail: str | None = None

    @property
    def permitted(self) -> bool:
        return self.effect is Effect.PERMIT

    @property
    def condition_reason(self) -> Reason:
        """The condition reason to write for this decision."""
        if self.reason in (Reason.PDP_UNAVAILABLE.value, Reason.UNKNOWN_OBLIGATION.value):
            return Reason(self.reason)
        return Reason.GRANTED if self.permitted else Reason.DENIED

    @property
    def message(self) -> str:
        """One line for a condition or event message."""
        return self.reason if self.detail is None else f"{self.reason}: {self.detail}"


def answered_decision(
    *,
    decision_id: str,
    allowed: bool,
    reason: str,
    pdp_kind: str,
    raw_obligations: Mapping[str, Any],
    who: str,
) -> Decision:
    """A remote PDP's verdict as a Decision: a permit whose obligations cannot be read is a
    deny (``UnknownObligation``), since the PEP cannot enforce a limit it cannot read.
    ``who`` names the answering side in that deny's detail ("the policy", "the PDP")."""
    obligations, problems = parse_obligations(raw_obligations)
    if allowed and problems:
        return Decision(
            decision_id=decision_id,
            effect=Effect.DENY,
            reason=Reason.UNKNOWN_OBLIGATION.value,
            pdp_kind=pdp_kind,
            obligations=obligations,
            detail=f"{who} permitted ({reason}) but {'; '.join(problems)}",
        )
    return Decision(
        decision_id=decision_id,
        effect=Effect.PERMIT if allowed else Effect.DENY,
        reason=reason,
        pdp_kind=pdp_kind,
        obligations=obligations,
    )


class Enforcement(_Frozen):
    """A decision as the PEP enforces it: the (possibly overruled) decision and effective limits."""

    decision: Decision
    ttl_seconds: int | None = None
    max_uses: int | None = None

    @property
    def permitted(self) -> bool:
        return self.decision.permitted


def _smaller(requested: int | None, obliged: int | None) -> int | None:
    if requested is None:
        return obliged
    if obliged is None:
        return requested
    return min(requested, obliged)


def apply_obligations(
    requested_ttl: int | None,
    requested_max_uses: int | None,
    decision: Decision,
    known: Collection[str] = KNOWN_OBLIGATIONS,
) -> Enforcement:
    """Effective limits of a grant: ``min(requested, obliged)`` for TTL and uses.

    A PDP can only shorten a grant: an obligation above the request leaves the
    request as it is. ``None`` means "no limit from this side". A permit that
    carries an obligation not in ``known`` becomes a deny with reason
    ``UnknownObligation``. A deny is returned unchanged, with no limits.
    Pure: no I/O, no clock.
    """
    for name, value in (
        ("requested_ttl", requested_ttl),
        ("requested_max_uses", requested_max_uses),
    ):
        if value is not None and (isinstance(value, bool) or value < 1):
            raise ValueError(f"{name} must be a positive integer or None")
    if not decision.permitted:
        return Enforcement(decision=decision)
    unknown = sorted(decision.obligations.names() - set(known))
    if unknown:
        overruled = decision.model_copy(
            update={
                "effect": Effect.DENY,
                "reason": Reason.UNKNOWN_OBLIGATION.value,
                "retryable": False,
                "detail": (
                    f"the PDP permitted ({decision.reason}) with obligations the operator "
                    f"does not enforce: {', '.join(unknown)}"
                ),
            }
        )
        return Enforcement(decision=overruled)
    obligations = decision.obligations
    return Enforcement(
        decision=decision,
        ttl_seconds=_smaller(requested_ttl, obligations.ttl_seconds),
        max_uses=_smaller(requested_max_uses, obligations.max_uses),
    )
