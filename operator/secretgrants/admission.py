"""The PEP at the point of use: what the pod admission webhook decides, as pure functions.

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

Everything here is pure: the webhook server reads the grants and Secrets and
calls these. Messages name grants and ServiceAccounts, never secret paths.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from secretgrants.api.common import GROUP
from secretgrants.api.grant import SecretGrantRequestSpec
from secretgrants.grants import LIVE_PHASES
from secretgrants.reasons import Phase

__all__ = [
    "ANNOTATION_GRANTS",
    "ANNOTATION_RESERVATIONS",
    "DRY_RUN_RESERVATION",
    "LABEL_INJECT",
    "MOUNT_ROOT",
    "AdmissionDenied",
    "GrantMount",
    "added_ephemeral_containers",
    "admits",
    "check_delivery_containers",
    "check_delivery_use",
    "check_ephemeral_use",
    "check_grant_for_pod",
    "check_reservations_kept",
    "container_secret_refs",
    "delivered_secret",
    "delivery_containers",
    "direct_secret_mounts",
    "grant_mount",
    "injection_patch",
    "metered",
    "mounted_secrets",
    "pod_reservations",
    "pod_service_account",
    "requested_grants",
    "reservation_ids",
    "secret_users",
    "service_account_replaced",
]

LABEL_INJECT = f"{GROUP}/inject"
ANNOTATION_GRANTS = f"{GROUP}/grants"
ANNOTATION_RESERVATIONS = f"{GROUP}/reservations"
DRY_RUN_RESERVATION = "dry-run"  # the id a dry run writes: nothing is reserved
MOUNT_ROOT = "/var/run/secretgrants"
MAX_GRANTS_PER_POD = 16
TOKEN_EXPIRATION_SECONDS = 600
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


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


@dataclass(frozen=True)
class GrantMount:
    """What the mutating webhook injects for one grant."""

    grant: str
    secret_name: str
    items: tuple[tuple[str, str, int | None], ...]  # (key, path, mode)
    default_mode: int
    containers: tuple[str, ...] | None
    audience: str | None  # project a ServiceAccount token for this audience too

    @property
    def volume_name(self) -> str:
        return f"sg-{self.grant}"[:63].rstrip("-.")

    @property
    def mount_path(self) -> str:
        return f"{MOUNT_ROOT}/{self.grant}"


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
    if len(names) > MAX_GRANTS_PER_POD:
        raise AdmissionDenied(
            "TooManyGrants",
            f"{ANNOTATION_GRANTS} names {len(names)} grants; at most {MAX_GRANTS_PER_POD} per pod",
            code=400,
        )
    return names


def _expires(status: Mapping[str, Any]) -> dt.datetime | None:
    raw = status.get("expiresAt")
    if not raw:
        return None
    return dt.datetime.fromisoformat(str(raw).replace("Z", "+00:00"))


def service_account_replaced(grant: Mapping[str, Any], service_account_uid: str | None) -> bool:
    """Whether the grant's bound ServiceAccount is known to have another UID now (it was
    deleted and re-created under its name). An unknown UID (None: the operator's index
    has not seen the ServiceAccount yet) or a binding without one is never a mismatch."""
    bound = ((grant.get("status") or {}).get("binding") or {}).get("serviceAccountUID")
    return bool(service_account_uid and bound and bound != service_account_uid)


def _replaced(name: str, service_account: str, what: str) -> AdmissionDenied:
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
        raise _replaced(name, service_account, "")
    expires = _expires(status)
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


def grant_mount(name: str, grant: Mapping[str, Any], audience: str | None) -> GrantMount:
    """The volume to inject for a checked grant."""
    spec = SecretGrantRequestSpec.model_validate(grant.get("spec") or {})
    status = grant.get("status") or {}
    delivered = (status.get("delivery") or {}).get("keys") or []
    if spec.delivery.items:
        items = tuple((i.key, i.path or i.key, i.mode) for i in spec.delivery.items)
    else:
        items = tuple((k, k, None) for k in sorted(delivered))
    return GrantMount(
        grant=name,
        secret_name=str(status["delivery"]["secretName"]),
        items=items,
        default_mode=spec.delivery.default_mode,
        containers=tuple(spec.delivery.containers) if spec.delivery.containers else None,
        audience=audience if spec.delivery.audience_token else None,
    )


def _volume(mount: GrantMount) -> dict[str, Any]:
    secret_items = []
    for key, path, mode in mount.items:
        item: dict[str, Any] = {"key": key, "path": path}
        if mode is not None:
            item["mode"] = mode
        secret_items.append(item)
    # optional: true is what takes a value away from a running pod. When the operator
    # empties the Secret (expiry, revocation, deletion), the kubelet's projected volume
    # plugin skips missing optional keys and rewrites the volume without them; with
    # optional: false it fails the update ("references non-existent secret key") and
    # the pod keeps the files it last wrote (pkg/volume/secret.MakePayload). Admission
    # only mounts Granted grants, whose Secret is written before the phase is set.
    sources: list[dict[str, Any]] = [
        {"secret": {"name": mount.secret_name, "items": secret_items, "optional": True}}
    ]
    if mount.audience:
        sources.append(
            {
                "serviceAccountToken": {
                    "audience": mount.audience,
                    "expirationSeconds": TOKEN_EXPIRATION_SECONDS,
                    "path": "token",
                }
            }
        )
    return {
        "name": mount.volume_name,
        "projected": {"sources": sources, "defaultMode": mount.default_mode},
    }


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def injection_patch(
    pod: Mapping[str, Any], mounts: Sequence[GrantMount], reservations: Mapping[str, str]
) -> list[dict[str, Any]]:
    """JSON Patch (RFC 6902) adding the volumes, the read-only mounts and the reservation ids."""
    spec = pod.get("spec") or {}
    ops: list[dict[str, Any]] = []
    existing_volumes = {v.get("name") for v in spec.get("volumes") or []}
    for mount in mounts:
        if mount.volume_name in existing_volumes:
            raise AdmissionDenied(
                "VolumeConflict",
                f"the pod already has a volume named {mount.volume_name!r}",
                code=400,
            )
    if not spec.get("volumes"):
        ops.append({"op": "add", "path": "/spec/volumes", "value": []})
    for mount in mounts:
        ops.append({"op": "add", "path": "/spec/volumes/-", "value": _volume(mount)})

    for kind in ("initContainers", "containers"):
        for index, container in enumerate(spec.get(kind) or []):
            cname = container.get("name")
            wanted = [m for m in mounts if m.containers is None or cname in m.containers]
            if not wanted:
                continue
            base = f"/spec/{kind}/{index}/volumeMounts"
            if not container.get("volumeMounts"):
                ops.append({"op": "add", "path": base, "value": []})
            for mount in wanted:
                ops.append(
                    {
                        "op": "add",
                        "path": f"{base}/-",
                        "value": {
                            "name": mount.volume_name,
                            "mountPath": mount.mount_path,
                            "readOnly": True,
                        },
                    }
                )
    for mount in mounts:
        if mount.containers:
            names = {c.get("name") for c in spec.get("containers") or []} | {
                c.get("name") for c in spec.get("initContainers") or []
            }
            missing = [c for c in mount.containers if c not in names]
            if missing:
                raise AdmissionDenied(
                    "ContainerNotFound",
                    f"SecretGrantRequest {mount.grant!r} names container {missing[0]!r}, "
                    "which the pod does not have",
                    code=400,
                )

    if reservations:
        value = ",".join(f"{g}={r}" for g, r in sorted(reservations.items()))
        if not (pod.get("metadata") or {}).get("annotations"):
            ops.append({"op": "add", "path": "/metadata/annotations", "value": {}})
        ops.append(
            {
                "op": "add",
                "path": f"/metadata/annotations/{_escape(ANNOTATION_RESERVATIONS)}",
                "value": value,
            }
        )
    return ops


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


def _pending(grant: Mapping[str, Any], rid: str) -> bool:
    reservations = (grant.get("status") or {}).get("reservations") or []
    return bool(rid) and any(r.get("id") == rid for r in reservations)


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
    carry the inject label (so the mutating webhook saw it, and wrote its reservations
    annotation over any the author wrote) and that annotation must name the grant.
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
        raise _replaced(name, service_account, f"Secret {secret_name!r}: ")
    reservations = pod_reservations(pod)
    labels = (pod.get("metadata") or {}).get("labels") or {}
    if name not in reservations or labels.get(LABEL_INJECT) != "true":
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
    expires = _expires(status)
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
        raise _replaced(
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
