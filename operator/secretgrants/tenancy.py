"""Which tenant a namespace belongs to, and whether that tenant may use a mount.

The tenant guard runs before any PDP or provider call: a grant for a mount
its tenant is not allowed ends there (the seed's 400). Tenants come from
``SecretTenant`` objects; when there are none at all, from the operator's
environment (TENANT_ID / TENANT_ALLOWED_MOUNTS / TENANT_SALT), as one tenant
for every namespace. A namespace that two tenants claim is an error reported
on the grant, never resolved by guessing. Pure logic: callers pass in what
they read from the API.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from secretgrants.api.tenant import LabelSelector, SaltSecretRef, SecretTenantSpec, SelectorOperator
from secretgrants.errors import MountNotAllowed, TenantConflict, TenantNotFound
from secretgrants.uri import SecretURI, parse_mount_ref

__all__ = ["ENV_SOURCE", "Tenant", "TenantSource", "guard", "resolve_tenant", "selector_matches"]

ENV_SOURCE = "environment"


@dataclass(frozen=True)
class Tenant:
    """A resolved tenant: its id, mounts as (scheme or None, mount), and where it came from."""

    tenant_id: str
    allowed_mounts: tuple[tuple[str | None, str], ...]
    source: str
    salt_ref: SaltSecretRef | None = None

    def allows(self, uri: SecretURI) -> bool:
        return any(
            mount == uri.mount and (scheme is None or scheme == uri.scheme)
            for scheme, mount in self.allowed_mounts
        )


@dataclass(frozen=True)
class TenantSource:
    """One SecretTenant object as the guard needs it."""

    name: str
    spec: SecretTenantSpec
    mounts: tuple[tuple[str | None, str], ...] = field(default=())

    @classmethod
    def from_object(cls, name: str, spec: Mapping[str, object]) -> TenantSource:
        parsed = SecretTenantSpec.model_validate(spec)
        mounts = tuple(parse_mount_ref(m) for m in parsed.allowed_mounts)
        return cls(name=name, spec=parsed, mounts=mounts)

    def claims(self, namespace: str, labels: Mapping[str, str]) -> bool:
        if self.spec.namespaces and namespace in self.spec.namespaces:
            return True
        sel = self.spec.namespace_selector
        return sel is not None and selector_matches(sel, labels)

    def tenant(self) -> Tenant:
        return Tenant(
            tenant_id=self.spec.tenant_id,
            allowed_mounts=self.mounts,
            source=f"SecretTenant/{self.name}",
            salt_ref=self.spec.salt_secret_ref,
        )


def selector_matches(selector: LabelSelector, labels: Mapping[str, str]) -> bool:
    """metav1.LabelSelector semantics; an empty selector matches everything."""
    for key, value in (selector.match_labels or {}).items():
        if labels.get(key) != value:
            return False
    for req in selector.match_expressions or []:
        present = req.key in labels
        values = set(req.values or [])
        if req.operator is SelectorOperator.IN and not (present and labels[req.key] in values):
            return False
        if req.operator is SelectorOperator.NOT_IN and present and labels[req.key] in values:
            return False
        if req.operator is SelectorOperator.EXISTS and not present:
            return False
        if req.operator is SelectorOperator.DOES_NOT_EXIST and present:
            return False
    return True


def env_tenant(tenant_id: str | None, allowed_mounts: Iterable[str]) -> Tenant | None:
    """The tenant defined by TENANT_ID / TENANT_ALLOWED_MOUNTS, if any mounts are set."""
    mounts = tuple(parse_mount_ref(m) for m in allowed_mounts)
    if not mounts:
        return None
    return Tenant(tenant_id=tenant_id or "default", allowed_mounts=mounts, source=ENV_SOURCE)


def resolve_tenant(
    namespace: str,
    labels: Mapping[str, str],
    sources: Iterable[TenantSource],
    fallback: Tenant | None,
) -> Tenant:
    """The one tenant of ``namespace``; raises TenantConflict or TenantNotFound."""
    sources = list(sources)
    if not sources:
        if fallback is None:
            raise TenantNotFound(
                "no tenant is configured: create a SecretTenant for this namespace "
                "(or set TENANT_ALLOWED_MOUNTS on the operator)"
            )
        return fallback
    claiming = sorted((s for s in sources if s.claims(namespace, labels)), key=lambda s: s.name)
    if not claiming:
        raise TenantNotFound(f"no SecretTenant claims namespace {namespace!r}")
    if len(claiming) > 1:
        names = ", ".join(s.name for s in claiming)
        raise TenantConflict(
            f"namespace {namespace!r} is claimed by more than one SecretTenant ({names}); "
            "fix the tenants so that exactly one claims it"
        )
    return claiming[0].tenant()


def guard(uri: SecretURI, tenant: Tenant) -> None:
    """Raise MountNotAllowed unless ``tenant`` may use the URI's mount."""
    if not tenant.allows(uri):
        raise MountNotAllowed(
            f"mount {uri.mount_ref!r} is not allowed for tenant {tenant.tenant_id!r} "
            f"(allowed: {', '.join(_fmt(m) for m in tenant.allowed_mounts) or 'none'})"
        )


def _fmt(mount: tuple[str | None, str]) -> str:
    scheme, name = mount
    return f"{scheme}://{name}" if scheme else name
