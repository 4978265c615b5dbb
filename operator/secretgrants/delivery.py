"""The delivery Secret: what a permitted grant writes for the pods of its ServiceAccount.

Pure builders. The Secret has its own type (so nothing mistakes it for an
ordinary Secret), is owned by the grant (garbage-collected with it),
labelled with the grant and the bound ServiceAccount, and annotated with its
expiry. It holds only the keys the grant delivers.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import re
from collections.abc import Iterable, Mapping
from typing import Any, Final

from secretgrants.api.common import API_VERSION, GROUP
from secretgrants.api.grant import SecretGrantRequestSpec
from secretgrants.errors import DeliveryFailed, KeyNotFound

__all__ = [
    "ANNOTATION_EXPIRES_AT",
    "DELIVERY_PREFIX",
    "LABEL_GRANT",
    "LABEL_SERVICE_ACCOUNT",
    "SECRET_TYPE",
    "check_secret_keys",
    "delivery_secret",
    "delivery_secret_name",
    "label_value",
    "select_keys",
]

SECRET_TYPE = f"{GROUP}/grant"
LABEL_GRANT = f"{GROUP}/grant"
LABEL_SERVICE_ACCOUNT = f"{GROUP}/service-account"
LABEL_MANAGED = "app.kubernetes.io/managed-by"
ANNOTATION_EXPIRES_AT = f"{GROUP}/expires-at"
ANNOTATION_STATE = f"{GROUP}/state"


DELIVERY_PREFIX: Final = "sg-"  # every delivery Secret's name starts so (webhook matchConditions)


def delivery_secret_name(grant_name: str) -> str:
    """Deterministic and collision-free: ``sg-<name>-<hash>``, at most 253 characters."""
    digest = hashlib.sha256(grant_name.encode()).hexdigest()[:8]
    return f"{DELIVERY_PREFIX}{grant_name[:230]}-{digest}"


def select_keys(
    data: Mapping[str, str], spec: SecretGrantRequestSpec, fragment: str | None
) -> dict[str, str]:
    """The keys the grant delivers: the items asked for, else the URI's key, else all."""
    if spec.delivery.items:
        wanted = [item.key for item in spec.delivery.items]
    elif fragment:
        wanted = [fragment]
    else:
        return dict(data)
    missing = [k for k in wanted if k not in data]
    if missing:
        raise KeyNotFound(f"the secret has no key {missing[0]!r}")
    return {k: data[k] for k in wanted}


_SECRET_KEY: Final = re.compile(r"[-._a-zA-Z0-9]{1,253}")  # the apiserver's rule for Secret keys


def check_secret_keys(keys: Iterable[str]) -> None:
    """Refuse keys a Kubernetes Secret cannot hold (the apiserver would answer 422)."""
    for key in keys:
        if not _SECRET_KEY.fullmatch(key) or key in {".", ".."}:
            raise DeliveryFailed(
                f"the secret's key {key!r} cannot be a key of a Kubernetes Secret (letters, "
                "digits, '-', '_' and '.', at most 253): rename it in the store, or read it "
                "with delivery.mode: Api"
            )


def label_value(value: str) -> str:
    return value if len(value) <= 63 else hashlib.sha256(value.encode()).hexdigest()[:63]


def delivery_secret(
    *,
    grant_name: str,
    grant_uid: str,
    service_account: str,
    values: Mapping[str, str],
    expires_at: dt.datetime | None,
) -> dict[str, Any]:
    """The Secret manifest (values base64-encoded, as the API stores them)."""
    annotations = {ANNOTATION_STATE: "active"}
    if expires_at is not None:
        annotations[ANNOTATION_EXPIRES_AT] = expires_at.isoformat().replace("+00:00", "Z")
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": SECRET_TYPE,
        "metadata": {
            "name": delivery_secret_name(grant_name),
            "labels": {
                LABEL_GRANT: label_value(grant_name),
                LABEL_SERVICE_ACCOUNT: label_value(service_account),
                LABEL_MANAGED: "secretgrants",
            },
            "annotations": annotations,
            "ownerReferences": [
                {
                    "apiVersion": API_VERSION,
                    "kind": "SecretGrantRequest",
                    "name": grant_name,
                    "uid": grant_uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in values.items()},
    }
