"""Where kopf keeps its bookkeeping of a grant: in the status, and only digests of the spec.

kopf remembers the last handled state of each object (its "diff base") to tell
a change of the spec from a status write. Kept in annotations, as kopf does by
default, every decision cost two writes (the annotations, then the status) and
two watch events. Kept in ``status.kopf``, the decision is one status write.

kopf's own status storage would copy the whole spec into the status, and with it
the secret's URI, which the status never names (it carries ``resourceRef``, an
HMAC). So this storage keeps a digest of each part of the last handled state
(``spec``, ``metadata``) instead: when a part's digest still matches, kopf gets
the current part back (no change); when it does not, kopf gets a stand-in that
differs, so it sees that part changed. The handlers only ask whether the spec
changed (``on.update(field="spec")``), never for the old values.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import kopf

__all__ = ["FIELD", "SpecDigestStorage", "progress_storage"]

FIELD = "kopf"  # status.kopf.progress, status.kopf.last-handled-configuration


def digest(value: Any) -> str:
    encoded = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return "sha256:" + hashlib.sha256(encoded.encode()).hexdigest()


class SpecDigestStorage(kopf.StatusDiffBaseStorage):
    """kopf's diff base as digests in ``status.kopf.last-handled-configuration``."""

    def __init__(self) -> None:
        super().__init__(name=FIELD)

    def store(self, *, body: Any, patch: Any, essence: Any) -> None:
        digests: Any = {part: digest(value) for part, value in dict(essence).items()}
        super().store(body=body, patch=patch, essence=digests)

    def fetch(self, *, body: Any) -> Any:
        digests: Any = super().fetch(body=body)
        if digests is None:
            return None
        current: dict[str, Any] = dict(self.build(body=body))
        last: dict[str, Any] = {}
        for part in set(digests) | set(current):
            if part in current and digests.get(part) == digest(current[part]):
                last[part] = current[part]  # unchanged since it was handled
            elif part in digests:
                last[part] = {"digest": digests[part]}  # changed: a stand-in that differs
        return last


def progress_storage() -> kopf.StatusProgressStorage:
    """Handler progress (retries, delays) in ``status.kopf.progress``."""
    return kopf.StatusProgressStorage(name=FIELD)
