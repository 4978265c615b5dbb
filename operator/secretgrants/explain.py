"""``secretgrants explain``: why a grant is in its phase, in plain words. Pure rendering.

Reads only the grant object (never the delivery Secret, never a value): guard,
decision, obligations, uses, expiry, binding, and what to do next.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

__all__ = ["explain"]

_NEXT: Mapping[str, str] = {
    "MountNotAllowed": "ask the platform team to add the mount to your SecretTenant, or use an allowed mount",
    "TenantNotFound": "no SecretTenant claims this namespace: ask the platform team to add it",
    "TenantConflict": "two SecretTenants claim this namespace: the platform team must fix the overlap",
    "InvalidSecretURI": "fix spec.secretUri (provider[+engine]://<mount>/<path>#<key>)",
    "UnsupportedOperation": "change spec.purpose or spec.delivery.mode (see the message)",
    "Denied": "the policy said no: check the rule for your ServiceAccount, purpose and secret",
    "PDPUnavailable": "the policy engine could not be asked; the operator retries (fail closed)",
    "UnknownObligation": "the policy returned an obligation the operator does not enforce",
    "ServiceAccountNotFound": "create the ServiceAccount named in spec.serviceAccountName",
    "ProviderUnavailable": "the secret store is unreachable or sealed; the operator retries",
    "ProviderDenied": "the operator's own credentials may not read this secret in the store",
    "SecretNotFound": "the secret does not exist in the store",
    "KeyNotFound": "the secret has no such key (the #fragment or delivery.items)",
    "Expired": "the TTL ran out: enable spec.renewal or re-apply the grant",
    "Exhausted": "every use is consumed: enable spec.renewal or re-apply the grant",
    "Revoked": "the ServiceAccount changed or the tenant no longer allows the mount",
}


def _ago(raw: str | None, now: dt.datetime) -> str:
    if not raw:
        return "-"
    at = dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))
    seconds = int((at - now).total_seconds())
    return f"{raw} (in {seconds}s)" if seconds >= 0 else f"{raw} ({-seconds}s ago)"


def explain(grant: Mapping[str, Any], now: dt.datetime | None = None) -> str:
    now = now or dt.datetime.now(dt.UTC)
    meta = grant.get("metadata") or {}
    spec = grant.get("spec") or {}
    status = grant.get("status") or {}
    phase = status.get("phase") or "Pending (not handled yet)"
    lines = [f"SecretGrantRequest {meta.get('namespace')}/{meta.get('name')}: {phase}"]
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    ready = conditions.get("Ready") or {}
    if ready:
        lines.append(f"  why:        {ready.get('reason')}: {ready.get('message')}")
    if status.get("observedGeneration") not in (None, meta.get("generation")):
        lines.append("  note:       the operator has not handled the latest spec yet")
    lines.append(
        f"  asks:       {spec.get('purpose', 'read')} for ServiceAccount "
        f"{spec.get('serviceAccountName')}, delivery {(spec.get('delivery') or {}).get('mode', 'Volume')}"
    )
    guard = conditions.get("TenantGuardPassed")
    if status.get("tenant") or guard:
        # Without the condition, a recorded tenant means the guard passed: the operator
        # records the tenant only past the guard, and writes the condition on failures.
        passed = guard.get("status") == "True" if guard else bool(status.get("tenant"))
        verdict = "passed" if passed else "failed"
        lines.append(f"  tenant:     {status.get('tenant') or '-'} (guard {verdict})")
    decision = status.get("decision") or {}
    if decision:
        lines.append(
            f"  decision:   {decision.get('effect')} by {decision.get('pdp')} "
            f"({decision.get('reason')}), id {decision.get('id')}"
        )
    obligations = status.get("obligations") or {}
    if obligations:
        lines.append(
            f"  obligations: ttl {obligations.get('ttlSeconds')}s, max uses "
            f"{obligations.get('maxUses') or 'unlimited'}"
        )
    if status.get("usesConsumed") is not None:
        remaining = status.get("usesRemaining")
        left = "unlimited" if remaining is None else remaining
        pending = len(status.get("reservations") or [])
        lines.append(
            f"  uses:       {status.get('usesConsumed')} consumed, {left} left, {pending} pending"
        )
    if status.get("expiresAt"):
        lines.append(f"  expires:    {_ago(status.get('expiresAt'), now)}")
    binding = status.get("binding") or {}
    if binding:
        sender = f", DPoP key {binding['jkt']}" if binding.get("jkt") else ""
        lines.append(
            f"  bound to:   ServiceAccount {binding.get('serviceAccountName')} "
            f"(uid {binding.get('serviceAccountUID')}){sender}"
        )
    delivery = status.get("delivery") or {}
    if delivery:
        where = delivery.get("secretName") or "the Secrets API"
        keys = ", ".join(delivery.get("keys") or []) or "-"
        lines.append(f"  delivered:  keys {keys} (version {delivery.get('version')}) via {where}")
    hint = _NEXT.get(str(ready.get("reason")))
    if hint and phase != "Granted":
        lines.append(f"  next:       {hint}")
    return "\n".join(lines)
