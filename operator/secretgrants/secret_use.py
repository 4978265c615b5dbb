"""What the validating webhook judges: which Secrets a pod's containers use, and whether they may.

A delivery Secret is an ordinary Secret in the pod's namespace, so nothing but
this check stops a pod from mounting or reading it directly. A pod uses a
Secret through a ``secret`` or ``projected`` volume (found by what it carries,
never by its name), ``envFrom`` or ``env.valueFrom.secretKeyRef``; for each
delivery Secret it uses, the pod must have been given the grant by the mutating
webhook in the same request (a use reserved, or a live grant without a use
limit), an ephemeral container added later may read only the grants its pod was
created with, and no container outside a grant's ``delivery.containers`` may
reach the Secret at all. Pure, like ``admission``: the webhook finds the grants
and calls these.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from secretgrants.admission import (
    ANNOTATION_RESERVATIONS,
    DRY_RUN_RESERVATION,
    LABEL_INJECT,
    AdmissionDenied,
    check_grant_for_pod,
    metered,
    pod_reservations,
    pod_service_account,
    requested_grants,
    service_account_replaced,
    service_account_replaced_denial,
)
from secretgrants.grants import LIVE_PHASES, expires_at
from secretgrants.reasons import Phase

__all__ = [
    "added_ephemeral_containers",
    "check_delivery_containers",
    "check_delivery_use",
    "check_ephemeral_use",
    "container_secret_refs",
    "delivery_containers",
    "direct_secret_mounts",
    "mounted_secrets",
    "secret_users",
]


def _pending(grant: Mapping[str, Any], rid: str) -> bool:
    reservations = (grant.get("status") or {}).get("reservations") or []
    return bool(rid) and any(r.get("id") == rid for r in reservations)


def _requested(pod: Mapping[str, Any]) -> list[str]:
    """The grants the pod asks the mutating webhook for; none when it could not ask."""
    try:
        return requested_grants(pod)
    except AdmissionDenied:
        return []


def check_delivery_use(
    name: str,
    grant: Mapping[str, Any],
    secret_name: str,
    pod: Mapping[str, Any],
    at: dt.datetime,
    *,
    dry_run: bool = False,
    service_account_uid: str | None = None,
) -> None:
    """Raise AdmissionDenied unless a pod being created may use ``grant``'s delivery Secret.

    The validating webhook sees the pod after the mutating webhook, in the same
    request. The pod must run as the bound ServiceAccount (name, and UID when known),
    carry the inject label (so the mutating webhook saw it), name the grant in its
    grants annotation (so the mutating webhook checked the grant, and wrote its
    reservations annotation over any the author wrote, or removed it) and the
    reservations annotation must name the grant.
    For a grant with a use limit,
    the reservation id must be one the grant's status holds as pending: the mutating
    webhook reserved it moments ago (a made-up id, or the id of a pod whose use was
    confirmed already, is not). A dry run reserves nothing and writes
    ``DRY_RUN_RESERVATION``, accepted on a dry run only, for a live grant. A grant
    without a use limit reserves nothing either: it must be live (Granted, unexpired).
    So an ended grant's Secret (it may hold data until it is blanked) is never used
    through an annotation the pod's author wrote.
    """
    service_account = pod_service_account(pod)
    bound = ((grant.get("status") or {}).get("binding") or {}).get("serviceAccountName")
    if bound != service_account:
        raise AdmissionDenied(
            "ServiceAccountMismatch",
            f"Secret {secret_name!r} delivers SecretGrantRequest {name!r}, which is "
            f"bound to another ServiceAccount; the pod runs as {service_account!r}",
            grant=name,
        )
    if service_account_replaced(grant, service_account_uid):
        raise service_account_replaced_denial(name, service_account, f"Secret {secret_name!r}: ")
    reservations = pod_reservations(pod)
    labels = (pod.get("metadata") or {}).get("labels") or {}
    if (
        name not in reservations
        or labels.get(LABEL_INJECT) != "true"
        or name not in _requested(pod)
    ):
        raise AdmissionDenied(
            "DirectMountNotAllowed",
            f"Secret {secret_name!r} delivers SecretGrantRequest {name!r}: request it "
            "with the secretgrants.io/grants annotation and the secretgrants.io/inject "
            "label so the use is checked and counted, instead of mounting it directly",
            grant=name,
        )
    rid = reservations[name]
    if metered(grant) and not (dry_run and rid == DRY_RUN_RESERVATION):
        if not _pending(grant, rid):
            raise AdmissionDenied(
                "DirectMountNotAllowed",
                f"Secret {secret_name!r} delivers SecretGrantRequest {name!r}, and no use "
                f"of it was reserved for this pod by the admission ({ANNOTATION_RESERVATIONS} "
                f"names {rid[:32]!r}, which the grant does not hold as pending): request it "
                "with the secretgrants.io/grants annotation and the secretgrants.io/inject "
                "label so the use is checked and counted",
                grant=name,
            )
        return  # the use this request reserved: whatever the grant's phase became with it
    try:
        check_grant_for_pod(name, grant, service_account, at)
    except AdmissionDenied as denied:
        denied.grant = name
        raise


def container_secret_refs(containers: Iterable[Mapping[str, Any]]) -> set[str]:
    """The Secrets that containers read through ``envFrom`` and ``env.valueFrom.secretKeyRef``."""
    names: set[str] = set()
    for container in containers:
        for source in container.get("envFrom") or []:
            ref = source.get("secretRef")
            if ref and ref.get("name"):
                names.add(str(ref["name"]))
        for env in container.get("env") or []:
            ref = (env.get("valueFrom") or {}).get("secretKeyRef")
            if ref and ref.get("name"):
                names.add(str(ref["name"]))
    return names


def direct_secret_mounts(pod: Mapping[str, Any]) -> set[str]:
    """Every Secret the pod uses: secret and projected volumes, envFrom and env secretKeyRefs."""
    spec = pod.get("spec") or {}
    names = container_secret_refs(
        container
        for kind in ("initContainers", "containers", "ephemeralContainers")
        for container in spec.get(kind) or []
    )
    for volume in spec.get("volumes") or []:
        names |= _carried(volume)
    return names


def _carried(volume: Mapping[str, Any]) -> set[str]:
    """The Secrets a volume carries: a ``secret`` volume's, a ``projected`` one's sources."""
    names: set[str] = set()
    secret = volume.get("secret")
    if secret and secret.get("secretName"):
        names.add(str(secret["secretName"]))
    for source in (volume.get("projected") or {}).get("sources") or []:
        ref = source.get("secret")
        if ref and ref.get("name"):
            names.add(str(ref["name"]))
    return names


def _carriers(pod: Mapping[str, Any]) -> dict[str, set[str]]:
    """The pod's volumes by name, each with the Secrets it carries."""
    volumes = (pod.get("spec") or {}).get("volumes") or []
    return {str(v.get("name")): _carried(v) for v in volumes}


def mounted_secrets(pod: Mapping[str, Any], containers: Iterable[Mapping[str, Any]]) -> set[str]:
    """The Secrets that ``containers`` reach through ``volumeMounts`` of ``pod``'s volumes."""
    carriers = _carriers(pod)
    return {
        secret
        for container in containers
        for mount in container.get("volumeMounts") or []
        for secret in carriers.get(str(mount.get("name")), ())
    }


def added_ephemeral_containers(
    pod: Mapping[str, Any], old_pod: Mapping[str, Any] | None
) -> list[Mapping[str, Any]]:
    """The ephemeral containers an update of ``pods/ephemeralcontainers`` adds to ``old_pod``.

    The apiserver lets such an update only add containers, but any container that is
    not exactly one of the old pod's counts as added: the check never rests on that.
    """
    old = ((old_pod or {}).get("spec") or {}).get("ephemeralContainers") or []
    return [c for c in (pod.get("spec") or {}).get("ephemeralContainers") or [] if c not in old]


def check_ephemeral_use(
    name: str,
    grant: Mapping[str, Any],
    secret_name: str,
    pod: Mapping[str, Any],
    at: dt.datetime,
    *,
    service_account_uid: str | None = None,
) -> None:
    """Raise AdmissionDenied unless an ephemeral container may read ``grant``'s delivery Secret.

    An ephemeral container joins a pod that was admitted already: it may read, through
    ``env`` or ``envFrom``, the delivery Secret of a grant that was mounted in that pod
    at creation (same pod, same ServiceAccount, the use already counted), and only
    while the grant is live. "Mounted at creation" is read from ``spec.volumes``, which
    cannot change after creation and which the validating webhook checked then (a volume
    carrying the Secret), never from annotations, which the pod's owner may edit.
    Mounting the pod's existing volumes is not judged here (they are the pod's own,
    admitted with it), but a grant that names its ``delivery.containers`` keeps an
    ephemeral container outside that list from both mounting and reading: see
    ``check_delivery_containers``.
    """
    service_account = pod_service_account(pod)
    status = grant.get("status") or {}
    bound = (status.get("binding") or {}).get("serviceAccountName")
    if bound != service_account:
        raise AdmissionDenied(
            "ServiceAccountMismatch",
            f"an ephemeral container may not read Secret {secret_name!r}: it delivers "
            f"SecretGrantRequest {name!r}, which is bound to another ServiceAccount; "
            f"the pod runs as {service_account!r}",
            grant=name,
        )
    if not any(secret_name in carried for carried in _carriers(pod).values()):
        raise AdmissionDenied(
            "EphemeralUseNotAllowed",
            f"an ephemeral container may not read Secret {secret_name!r}: it delivers "
            f"SecretGrantRequest {name!r}, which this pod was not admitted with (none of "
            "its volumes carries that Secret); an ephemeral container may read only the "
            "grants mounted in its pod at creation",
            grant=name,
        )
    phase = status.get("phase") or Phase.PENDING.value
    expires = expires_at(status)
    if phase == Phase.EXPIRED.value or (expires is not None and expires <= at):
        raise AdmissionDenied(
            "GrantExpired",
            f"an ephemeral container may not read Secret {secret_name!r}: "
            f"SecretGrantRequest {name!r} has expired",
            grant=name,
        )
    if phase not in LIVE_PHASES:
        raise AdmissionDenied(
            "GrantNotGranted",
            f"an ephemeral container may not read Secret {secret_name!r}: "
            f"SecretGrantRequest {name!r} is {phase}, not Granted",
            grant=name,
        )
    if service_account_replaced(grant, service_account_uid):
        raise service_account_replaced_denial(
            name, service_account, f"an ephemeral container may not read Secret {secret_name!r}: "
        )


def secret_users(
    pod: Mapping[str, Any], containers: Iterable[Mapping[str, Any]], secret_name: str
) -> list[str]:
    """The names of ``containers`` that mount (a volume of ``pod`` carrying) or read Secret
    ``secret_name``."""
    return [
        str(c.get("name"))
        for c in containers
        if secret_name in container_secret_refs([c]) | mounted_secrets(pod, [c])
    ]


_KINDS = (
    ("initContainers", "init container"),
    ("containers", "container"),
    ("ephemeralContainers", "ephemeral container"),
)


def delivery_containers(grant: Mapping[str, Any]) -> tuple[str, ...] | None:
    """The containers the grant is delivered to (``spec.delivery.containers``); None for all."""
    names = ((grant.get("spec") or {}).get("delivery") or {}).get("containers")
    return tuple(str(n) for n in names) if names else None


def _quoted(names: Sequence[str]) -> str:
    return ("container " if len(names) == 1 else "containers ") + ", ".join(map(repr, names))


def check_delivery_containers(
    name: str,
    grant: Mapping[str, Any],
    secret_name: str,
    pod: Mapping[str, Any],
    *,
    added: Sequence[Mapping[str, Any]] | None = None,
) -> None:
    """Raise AdmissionDenied when a container outside the grant's ``delivery.containers``
    mounts or reads its delivery Secret ``secret_name``.

    The mutating webhook mounts the grant only into the containers the grant names;
    this keeps the pod's other containers from reaching the same Secret by their own
    ``volumeMounts`` (of the injected ``sg-<grant>`` volume or of any ``secret`` or
    ``projected`` volume that carries it: volumes are found by what they carry, not by
    name), ``envFrom`` or ``env.valueFrom.secretKeyRef``. ``added`` are the ephemeral
    containers an update adds (only they are judged then); otherwise every container
    of ``pod`` is. A grant without ``delivery.containers`` allows every container.
    """
    allowed = delivery_containers(grant)
    if allowed is None:
        return
    if added is None:
        spec = pod.get("spec") or {}
        judged = [(word, c) for kind, word in _KINDS for c in spec.get(kind) or []]
    else:
        judged = [("ephemeral container", c) for c in added]
    carriers = sorted(v for v, secrets in _carriers(pod).items() if secret_name in secrets)
    why = (
        f"the delivery Secret of SecretGrantRequest {name!r}, whose spec.delivery.containers "
        f"allows only {_quoted(allowed)}"
    )
    for word, container in judged:
        cname = str(container.get("name"))
        if cname in allowed:
            continue
        mounts = [m.get("name") for m in container.get("volumeMounts") or []]
        volume = next((v for v in carriers if v in mounts), None)
        if volume is not None:
            raise AdmissionDenied(
                "ContainerNotAllowed",
                f"{word} {cname!r} may not mount volume {volume!r}: it carries {why}",
                grant=name,
            )
        if secret_name in container_secret_refs([container]):
            raise AdmissionDenied(
                "ContainerNotAllowed",
                f"{word} {cname!r} may not read Secret {secret_name!r} through env or "
                f"envFrom: it is {why}",
                grant=name,
            )
