"""What the mutating webhook adds to a pod: one read-only volume per checked grant.

Each grant becomes a projected volume (its delivery Secret's keys, and a
ServiceAccount token for the grant's audience when it asks for one) mounted
under ``/var/run/secretgrants/<grant>/`` into the grant's
``delivery.containers`` (every container when it names none), and the
reservation ids of the uses counted go into the pod's
``secretgrants.io/reservations`` annotation, all as one JSON Patch. Kept apart
from the checks in ``admission`` and ``secret_use``: this is the only code
that shapes a pod, and it is pure (the grant comes checked, the patch goes back
to the webhook).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from secretgrants.admission import ANNOTATION_RESERVATIONS, AdmissionDenied
from secretgrants.api.grant import SecretGrantRequestSpec

__all__ = ["MOUNT_ROOT", "GrantMount", "grant_mount", "injection_patch"]

MOUNT_ROOT = "/var/run/secretgrants"
TOKEN_EXPIRATION_SECONDS = 600


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

    ops += _reservations_ops(pod, reservations)
    return ops


def _reservations_ops(
    pod: Mapping[str, Any], reservations: Mapping[str, str]
) -> list[dict[str, Any]]:
    """The webhook owns the reservations annotation of every pod it sees: it writes its
    own over the author's (``add`` replaces a member), or, reserving nothing, removes
    the author's. The validating webhook trusts the annotation as the mutating webhook
    left it, so an id the author copied from another pod must never get through."""
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    path = f"/metadata/annotations/{_escape(ANNOTATION_RESERVATIONS)}"
    if not reservations:
        return [{"op": "remove", "path": path}] if ANNOTATION_RESERVATIONS in annotations else []
    value = ",".join(f"{g}={r}" for g, r in sorted(reservations.items()))
    ops: list[dict[str, Any]] = []
    if not annotations:
        ops.append({"op": "add", "path": "/metadata/annotations", "value": {}})
    ops.append({"op": "add", "path": path, "value": value})
    return ops
