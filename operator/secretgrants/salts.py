"""Per-tenant audit salts: the Secret a SecretTenant names, else TENANT_SALT.

Salt Secrets must live in the operator's own namespace: that is the only
namespace where the operator may read Secrets (a namespaced Role), so a
tenant cannot point it at another team's Secret. Salts are cached for a few
minutes and never logged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from secretgrants.tenancy import Tenant

__all__ = ["SaltResolver"]

log = logging.getLogger("secretgrants.salts")

ReadSecretKey = Callable[[str, str, str], Awaitable[bytes | None]]


@dataclass
class SaltResolver:
    read: ReadSecretKey
    operator_namespace: str
    fallback: bytes | None
    ttl_seconds: float = 300.0
    clock: Callable[[], float] = time.monotonic
    _cache: dict[tuple[str, str, str], tuple[float, bytes | None]] = field(default_factory=dict)
    _warned: set[tuple[str, str, str]] = field(default_factory=set)

    async def salt_for(self, tenant: Tenant) -> bytes | None:
        ref = tenant.salt_ref
        if ref is None:
            return self.fallback
        key = (ref.namespace, ref.name, ref.key)
        if ref.namespace != self.operator_namespace:
            self._warn_once(
                key,
                "tenant %s: saltSecretRef must name a Secret in the operator namespace %r; "
                "using TENANT_SALT",
                tenant.tenant_id,
                self.operator_namespace,
            )
            return self.fallback
        cached = self._cache.get(key)
        now = self.clock()
        if cached is not None and now - cached[0] < self.ttl_seconds:
            return cached[1] or self.fallback
        value = await self.read(ref.namespace, ref.name, ref.key)
        if not value:
            self._warn_once(
                key,
                "tenant %s: salt Secret %s/%s has no key %r; using TENANT_SALT",
                tenant.tenant_id,
                ref.namespace,
                ref.name,
                ref.key,
            )
        self._cache[key] = (now, value)
        return value or self.fallback

    def _warn_once(self, key: tuple[str, str, str], message: str, *args: object) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message, *args)
