"""What both pod admission webhooks decide on, as pure functions: the PEP at the point of use.

A pod opts in with the label ``secretgrants.io/inject: "true"`` (the webhook's
objectSelector) and the annotation ``secretgrants.io/grants: db,api-key``.
For each named grant the mutating webhook checks that the grant is Granted,
unexpired, has uses left and is bound to the pod's ServiceAccount (by name,
and by UID when the operator's index knows it), then injects one read-only
projected volume per grant under ``/var/run/secretgrants/<grant>/`` (into the
grant's ``delivery.containers`` only, when it names some). The validating
webhook denies any pod that uses a delivery Secret without a use the
mutating webhook reserved for it in the same request (or, for a grant
without a use limit, while the grant is not live), any ephemeral container
that reads one the pod was not created with, any container outside a
grant's ``delivery.containers`` that mounts or reads its delivery Secret,
however the volume is named, and any later change to the pod's
``secretgrants.io/reservations`` annotation (uses are settled by it).

This module holds what both sides share: the refusal, the label and
annotations, the grants a pod requests, whether a grant admits a pod now, and
the reservations annotation (the operator's use settling reads it too). The
patch the mutating webhook returns is built in ``injection``; what a pod's
containers use, and whether they may, is judged in ``secret_use``.

Everything here is pure: the webhook server reads the grants and Secrets and
calls these. Messages name grants and ServiceAccounts, never secret paths.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from secretgrants.api.common import GROUP
from secretgrants.grants import expires_at
from secretgrants.reasons import Phase

__all__ = [
    "ANNOTATION_GRANTS",
    "ANNOTATION_RESERVATIONS",
    "DRY_RUN_RESERVATION",
    "LABEL_INJECT",
    "AdmissionDenied",
    "admits",
    "check_grant_for_pod",
    "check_reservations_kept",
    "delivered_secret",
    "metered",
    "new_reservation_id",
    "pod_reservations",
    "pod_service_account",
    "requested_grants",
    "reservation_ids",
    "reservations_claimed",
    "service_account_replaced",
    "service_account_replaced_denial",
]

LABEL_INJECT = f"{GROUP}/inject"
ANNOTATION_GRANTS = f"{GROUP}/grants"
ANNOTATION_RESERVATIONS = f"{GROUP}/reservations"
DRY_RUN_RESERVATION = "dry-run"  # the id a dry run writes: nothing is reserved
MAX_GRANTS_PER_POD = 16
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_RESERVATION_ID = re.compile(r"^[0-9a-f]{16}$")  # what ``new_reservation_id`` makes
# The longest reservations annotation the mutating webhook writes: one "grant=id" per grant.
MAX_RESERVATIONS_LENGTH = MAX_GRANTS_PER_POD * (253 + 1 + 16 + 1)


class AdmissionDenied(Exception):
    """A pod is refused; ``reason`` is a CamelCase word, ``message`` a sentence for a person."""

    def __init__(
        self, reason: str, message: str, *, code: int = 403, grant: str | None = None
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.code = code
        self.grant = grant


def pod_service_account(pod: Mapping[str, Any]) -> str:
    """The ServiceAccount a pod runs as ("default" when the spec leaves it out)."""
    spec = pod.get("spec") or {}
    return str(spec.get("serviceAccountName") or spec.get("serviceAccount") or "default")


def requested_grants(pod: Mapping[str, Any]) -> list[str]:
    """The grant names in the pod's annotation, in order, without duplicates."""
    raw = ((pod.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_GRANTS)
    if raw is None or not raw.strip():
        raise AdmissionDenied(
            "NoGrantsRequested",
            f"the pod carries the label {LABEL_INJECT} but no {ANNOTATION_GRANTS} annotation "
            "naming the SecretGrantRequests to mount (e.g. 'db-creds,api-key')",
            code=400,
        )
    names: list[str] = []
    for part in raw.split(","):
        name = part.strip()
        if not name:
            continue
        if not _NAME.match(name):
            raise AdmissionDenied(
                "InvalidGrantName",
                f"{ANNOTATION_GRANTS}: {name[:64]!r} is not a valid SecretGrantRequest name",
                code=400,
            )
        if name not in names:
            names.append(name)
    if not names:  # "," or " , ": no grant named, so nothing would be checked or counted
        raise AdmissionDenied(
            "NoGrantsRequested",
            f"the pod carries the label {LABEL_INJECT} but its {ANNOTATION_GRANTS} annotation "
            "names no SecretGrantRequest (e.g. 'db-creds,api-key')",
            code=400,
        )
    if len(names) > MAX_GRANTS_PER_POD:
        raise AdmissionDenied(
            "TooManyGrants",
            f"{ANNOTATION_GRANTS} names {len(names)} grants; at most {MAX_GRANTS_PER_POD} per pod",
            code=400,
        )
    return names


def service_account_replaced(grant: Mapping[str, Any], service_account_uid: str | None) -> bool:
    """Whether the grant's bound ServiceAccount is known to have another UID now (it was
    deleted and re-created under its name). An unknown UID (None: the operator's index
    has not seen the ServiceAccount yet) or a binding without one is never a mismatch."""
    bound = ((grant.get("status") or {}).get("binding") or {}).get("serviceAccountUID")
    return bool(service_account_uid and bound and bound != service_account_uid)


def service_account_replaced_denial(name: str, service_account: str, what: str) -> AdmissionDenied:
    """The refusal of a grant whose bound ServiceAccount was re-created since; ``what``
    begins the message."""
    return AdmissionDenied(
        "ServiceAccountMismatch",
        f"{what}SecretGrantRequest {name!r} is bound to the ServiceAccount {service_account!r} "
        "that existed when it was granted; that ServiceAccount was deleted and re-created "
        "since (its UID changed), so the grant no longer holds for it (the operator revokes "
        "it): create the grant again for the new ServiceAccount",
        grant=name,
    )


def check_grant_for_pod(
    name: str,
    grant: Mapping[str, Any] | None,
    service_account: str,
    at: dt.datetime,
    *,
    service_account_uid: str | None = None,
) -> None:
    """Raise AdmissionDenied unless ``grant`` may be used by a pod running as ``service_account``
    (whose UID is ``service_account_uid``, when the operator knows it).

    Uses are checked again (atomically) when the use is reserved; this is the
    early, readable refusal.
    """
    if grant is None:
        raise AdmissionDenied("GrantNotFound", f"SecretGrantRequest {name!r} does not exist")
    status = grant.get("status") or {}
    phase = status.get("phase") or Phase.PENDING.value
    binding = status.get("binding") or {}
    bound = binding.get("serviceAccountName")
    if phase == Phase.EXHAUSTED.value:
        raise AdmissionDenied(
            "UsesExhausted", f"SecretGrantRequest {name!r} has no uses left (maxUses reached)"
        )
    if phase == Phase.EXPIRED.value:
        raise AdmissionDenied("GrantExpired", f"SecretGrantRequest {name!r} has expired")
    if phase != Phase.GRANTED.value:
        raise AdmissionDenied(
            "GrantNotGranted",
            f"SecretGrantRequest {name!r} is {phase}, not Granted; "
            f"see `kubectl describe sgr {name}` for why",
        )
    if bound != service_account:
        raise AdmissionDenied(
            "ServiceAccountMismatch",
            f"SecretGrantRequest {name!r} is bound to ServiceAccount {bound!r}, "
            f"but the pod runs as {service_account!r}",
        )
    if service_account_replaced(grant, service_account_uid):
        raise service_account_replaced_denial(name, service_account, "")
    expires = expires_at(status)
    if expires is not None and expires <= at:
        raise AdmissionDenied("GrantExpired", f"SecretGrantRequest {name!r} has expired")
    remaining = status.get("usesRemaining")
    if remaining is not None and int(remaining) <= 0:
        raise AdmissionDenied(
            "UsesExhausted", f"SecretGrantRequest {name!r} has no uses left (maxUses reached)"
        )
    if not (status.get("delivery") or {}).get("secretName"):
        raise AdmissionDenied(
            "NotDelivered", f"SecretGrantRequest {name!r} has no delivery Secret yet"
        )


def admits(
    name: str,
    grant: Mapping[str, Any],
    service_account: str,
    at: dt.datetime,
    *,
    service_account_uid: str | None = None,
) -> bool:
    """Whether ``check_grant_for_pod`` lets the pod use the grant."""
    try:
        check_grant_for_pod(
            name, grant, service_account, at, service_account_uid=service_account_uid
        )
    except AdmissionDenied:
        return False
    return True


def metered(grant: Mapping[str, Any]) -> bool:
    """Whether the grant has a use limit (maxUses, or the PDP's max_uses): only then is
    each admitted pod counted on the grant's status."""
    return (grant.get("status") or {}).get("usesRemaining") is not None


def delivered_secret(grant: Mapping[str, Any]) -> str | None:
    """The name of the grant's delivery Secret, once it has one."""
    return ((grant.get("status") or {}).get("delivery") or {}).get("secretName")


def reservation_ids(pods: Iterable[Mapping[str, Any]], grant: str) -> set[str]:
    """The use reservations for ``grant`` that existing pods carry."""
    found: set[str] = set()
    for pod in pods:
        raw = ((pod.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_RESERVATIONS)
        for part in (raw or "").split(","):
            name, _, rid = part.partition("=")
            if name.strip() == grant and rid.strip():
                found.add(rid.strip())
    return found


def _reservations_annotation(pod: Mapping[str, Any] | None) -> str | None:
    raw = (((pod or {}).get("metadata") or {}).get("annotations") or {}).get(
        ANNOTATION_RESERVATIONS
    )
    return None if raw is None else str(raw)


def pod_reservations(pod: Mapping[str, Any]) -> dict[str, str]:
    """The reservation id per grant that ``pod`` carries (its reservations annotation).

    The annotation is evidence only together with the grant's status: the mutating
    webhook writes it, but whoever creates a pod can write it too.
    """
    found: dict[str, str] = {}
    for part in (_reservations_annotation(pod) or "").split(","):
        name, _, rid = part.partition("=")
        if name.strip():
            found.setdefault(name.strip(), rid.strip())
    return found


def new_reservation_id() -> str:
    """The id of one reserved use: 16 lowercase hex digits (64 random bits)."""
    return uuid.uuid4().hex[:16]


def reservations_claimed(metadata: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The (grant, reservation id) pairs a pod's reservations annotation claims, as the
    mutating webhook writes them: grant names that are object names, ids of the form
    ``new_reservation_id`` makes, at most ``MAX_GRANTS_PER_POD``. An annotation longer
    than the webhook ever writes claims nothing: whoever writes one, it was not the
    webhook (the pod's author, on a pod labelled after creation), and the operator never
    spends memory on it."""
    raw = _reservations_annotation({"metadata": metadata})
    if not raw or len(raw) > MAX_RESERVATIONS_LENGTH:
        return []
    found: list[tuple[str, str]] = []
    for part in raw.split(",", MAX_GRANTS_PER_POD)[:MAX_GRANTS_PER_POD]:
        name, _, rid = part.partition("=")
        name, rid = name.strip(), rid.strip()
        if _NAME.match(name) and _RESERVATION_ID.match(rid):
            found.append((name, rid))
    return found


def check_reservations_kept(pod: Mapping[str, Any], old_pod: Mapping[str, Any] | None) -> None:
    """Raise AdmissionDenied when an update of a created pod changes or removes its
    reservations annotation: the operator confirms each counted use by finding it on a
    pod, and a use no pod carries is given back."""
    before = _reservations_annotation(old_pod)
    if before is None or _reservations_annotation(pod) == before:
        return
    raise AdmissionDenied(
        "ReservationsImmutable",
        f"the annotation {ANNOTATION_RESERVATIONS} records the uses counted for this pod "
        "when it was created; it cannot be changed or removed afterwards",
    )
