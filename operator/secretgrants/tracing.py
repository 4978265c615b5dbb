"""OpenTelemetry spans PEP -> PDP -> provider -> delivery, or nothing at all.

Tracing is optional twice over: the ``tracing`` extra may not be installed,
and it is off unless ``SECRETGRANTS_TRACING`` says ``otlp`` or ``console``.
The rest of the package imports only this module, never ``opentelemetry``:
:func:`span` gives a real span when tracing is on and a no-op otherwise, so
handlers trace unconditionally and cost nothing when it is off.

What a span may carry is fixed here (:data:`ATTRIBUTES`): grant names,
purpose, tenant, PDP kind, effect, reason codes, ``resource_ref`` (the HMAC).
There is no attribute for a URI, path, key name or value, a string that
looks like a URI is masked, so are registered secret values in a reason, and an
exception is recorded by its type and reason code only (its message may
name a path).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator, Mapping
from enum import StrEnum
from typing import Any, Final, Protocol

from secretgrants.errors import SecretGrantsError
from secretgrants.redaction import MASK, redact

__all__ = [
    "ATTRIBUTES",
    "SERVICE_NAME",
    "SPAN_ADMISSION",
    "SPAN_DELIVERY",
    "SPAN_GRANT",
    "SPAN_GUARD",
    "SPAN_PDP",
    "SPAN_PROVIDER",
    "SPAN_SECRETS_API",
    "Mode",
    "Span",
    "annotate",
    "configure",
    "current_ids",
    "enabled",
    "shutdown",
    "span",
    "traceparent",
]

log = logging.getLogger("secretgrants.tracing")

SERVICE_NAME: Final = "secretgrants"
SPAN_GRANT: Final = "secretgrants.grant"
SPAN_GUARD: Final = "secretgrants.guard"
SPAN_PDP: Final = "secretgrants.pdp"
SPAN_PROVIDER: Final = "secretgrants.provider"
SPAN_DELIVERY: Final = "secretgrants.delivery"
SPAN_ADMISSION: Final = "secretgrants.admission"
SPAN_SECRETS_API: Final = "secretgrants.secrets_api"

ATTRIBUTES: Final[dict[str, str]] = {
    "grant_namespace": "secretgrants.grant.namespace",
    "grant_name": "secretgrants.grant.name",
    "trigger": "secretgrants.grant.trigger",
    "phase": "secretgrants.grant.phase",
    "tenant": "secretgrants.tenant",
    "purpose": "secretgrants.purpose",
    "resource_ref": "secretgrants.resource_ref",
    "pdp_kind": "secretgrants.pdp.kind",
    "decision_id": "secretgrants.decision.id",
    "effect": "secretgrants.decision.effect",
    "reason": "secretgrants.reason",
    "provider": "secretgrants.provider.scheme",
    "operation": "secretgrants.operation",
    "delivery_mode": "secretgrants.delivery.mode",
    "key_count": "secretgrants.delivery.key_count",
    "allowed": "secretgrants.allowed",
    "error_type": "error.type",
}
"""Keyword -> span attribute name: the only attributes a span can get."""

_TRACER_NAME: Final = "secretgrants"


class Mode(StrEnum):
    OFF = "off"
    OTLP = "otlp"
    CONSOLE = "console"


class Span(Protocol):
    """What handlers do with a span: add allowed attributes, mark a failure."""

    def set(self, **attributes: str | int | bool | None) -> None: ...

    def fail(self, reason: str) -> None: ...


class _NoopSpan:
    def set(self, **attributes: str | int | bool | None) -> None:
        _known(attributes)  # a wrong keyword fails whether tracing is on or not

    def fail(self, reason: str) -> None:
        pass


class _OTelSpan:
    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def set(self, **attributes: str | int | bool | None) -> None:
        self.inner.set_attributes(_checked(attributes))

    def fail(self, reason: str) -> None:
        from opentelemetry.trace import Status, StatusCode

        checked = _checked({"reason": reason})
        self.inner.set_attributes(checked)
        self.inner.set_status(Status(StatusCode.ERROR, str(checked.get(ATTRIBUTES["reason"], ""))))


_NOOP: Final = _NoopSpan()
_provider: Any = None
_tracer: Any = None


def _known(attributes: Mapping[str, object]) -> None:
    for key in attributes:
        if key not in ATTRIBUTES:
            raise TypeError(f"{key!r} is not a span attribute (see tracing.ATTRIBUTES)")


def _checked(attributes: dict[str, str | int | bool | None]) -> dict[str, str | int | bool]:
    """Attribute names for the keywords; unknown keywords are refused, URI-looking text masked."""
    out: dict[str, str | int | bool] = {}
    for key, value in attributes.items():
        name = ATTRIBUTES.get(key)
        if name is None:
            raise TypeError(f"{key!r} is not a span attribute (see tracing.ATTRIBUTES)")
        if value is None:
            continue
        if isinstance(value, str):
            if "://" in value:  # a secret URI never goes into a trace, whoever passed it
                value = MASK
            elif key == "reason":  # the one attribute that is text rather than a name or code
                value = redact(value)
            value = value[:256]
        out[name] = value
    return out


def enabled() -> bool:
    return _tracer is not None


def configure(
    mode: Mode | str,
    *,
    service_name: str = SERVICE_NAME,
    exporter: Any = None,
) -> bool:
    """Start tracing in ``mode``; True when spans are recorded from now on.

    ``otlp`` sends batches over OTLP/HTTP to ``OTEL_EXPORTER_OTLP_ENDPOINT``
    (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``; the exporter reads them);
    ``console`` prints each span as one JSON line on stdout. ``exporter``
    (tests: the SDK's ``InMemorySpanExporter``) replaces the mode's exporter.
    Without the ``tracing`` extra, a mode other than ``off`` logs a warning
    and tracing stays off.
    """
    shutdown()
    mode = Mode(mode)
    if mode is Mode.OFF and exporter is None:
        return False
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            ConsoleSpanExporter,
            SimpleSpanProcessor,
        )

        processor: Any
        if exporter is not None:
            processor = SimpleSpanProcessor(exporter)
        elif mode is Mode.CONSOLE:
            processor = SimpleSpanProcessor(
                ConsoleSpanExporter(
                    out=sys.stdout, formatter=lambda s: s.to_json(indent=None) + os.linesep
                )
            )
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            processor = BatchSpanProcessor(OTLPSpanExporter())
    except ImportError as err:
        log.warning(
            "SECRETGRANTS_TRACING=%s but OpenTelemetry is not installed (%s); "
            "install secretgrants[tracing]. Tracing is off.",
            mode.value,
            err.name,
        )
        return False
    global _provider, _tracer
    _provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    _provider.add_span_processor(processor)
    _tracer = _provider.get_tracer(_TRACER_NAME)
    log.info("tracing on (%s), service name %r", "custom" if exporter else mode.value, service_name)
    return True


def shutdown() -> None:
    """Flush and stop (at operator shutdown); spans are no-ops afterwards."""
    global _provider, _tracer
    provider, _provider, _tracer = _provider, None, None
    if provider is not None:
        provider.force_flush()
        provider.shutdown()


@contextlib.contextmanager
def span(name: str, **attributes: str | int | bool | None) -> Iterator[Span]:
    """A child of the current span (or a root), current inside the ``with`` block.

    An exception leaving the block marks the span as failed with the
    exception's type and, for :class:`~secretgrants.errors.SecretGrantsError`,
    its reason code; never its message.
    """
    tracer = _tracer
    if tracer is None:
        _known(attributes)
        yield _NOOP
        return
    with tracer.start_as_current_span(
        name, attributes=_checked(attributes), record_exception=False, set_status_on_exception=False
    ) as inner:
        wrapped = _OTelSpan(inner)
        try:
            yield wrapped
        except BaseException as exc:
            wrapped.set(error_type=type(exc).__name__)
            wrapped.fail(
                exc.reason.value if isinstance(exc, SecretGrantsError) else type(exc).__name__
            )
            raise


def annotate(**attributes: str | int | bool | None) -> None:
    """Add allowed attributes to the current span (nothing when not tracing)."""
    if _tracer is None:
        _known(attributes)
        return
    from opentelemetry import trace

    trace.get_current_span().set_attributes(_checked(attributes))


def current_ids() -> tuple[str | None, str | None]:
    """(trace id, span id) of the current span in hex, or (None, None) when not tracing."""
    context = _current_context()
    if context is None:
        return None, None
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


def traceparent() -> str | None:
    """The W3C ``traceparent`` header value of the current span, or None when not tracing."""
    context = _current_context()
    if context is None:
        return None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def _current_context() -> Any:
    if _tracer is None:
        return None
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    return context if context.is_valid else None
