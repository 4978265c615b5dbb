"""An Open Policy Agent client over OPA's data API.

``POST <url>/v1/data/<path>`` with ``{"input": <the AuthZEN request body>}``:
a policy sees exactly what an AuthZEN PDP sees. The document at ``<path>``
is read as::

    {"allow": bool, "obligations": {"ttl_seconds": 300, "max_uses": 5, ...}, "reason": "..."}

``<path>`` may also name the package (``secretgrants/authz``) when the
package defines that document as its rule ``decision``, or a boolean rule
(``allow`` alone, no obligations). An undefined result (no ``result`` in
OPA's answer, or no ``allow`` in it) is a deny; a result of the wrong type
is a malformed answer and a fail-closed ``PDPUnavailable`` deny. OPA's
``decision_id`` (sent when decision logging is on) becomes the decision id.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from typing import Any, Final

import httpx

from secretgrants.errors import PDPUnavailable
from secretgrants.policy._http import HTTPOptions, JSONClient
from secretgrants.policy.base import FailClosedPDP, new_decision_id
from secretgrants.policy.model import AccessRequest, Decision, Effect, answered_decision

__all__ = ["DEFAULT_DECISION_PATH", "OPAClient", "decision_from_opa", "normalise_path"]

DEFAULT_DECISION_PATH: Final = "secretgrants/authz/decision"
_SEGMENT: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


def normalise_path(path: str) -> str:
    """``a.b.c`` or ``/a/b/c/`` -> ``a/b/c``; refuse anything that is not a package or rule path."""
    text = path.strip().strip("/")
    if "/" not in text and "." in text:
        text = text.replace(".", "/")
    segments = text.split("/")
    if not text or not all(_SEGMENT.match(s) for s in segments):
        raise ValueError(f"OPA decision path {path!r} is not a package or rule path")
    return "/".join(segments)


def decision_from_opa(payload: object, *, kind: str = "opa", path: str = "") -> Decision:
    """OPA's data API answer as a :class:`Decision`; raise ``PDPUnavailable`` if malformed."""
    if not isinstance(payload, Mapping):
        raise PDPUnavailable("OPA answer is not a JSON object")
    raw_id = payload.get("decision_id")
    decision_id = raw_id if isinstance(raw_id, str) and raw_id else new_decision_id()

    def undefined(why: str) -> Decision:
        return Decision(
            decision_id=decision_id,
            effect=Effect.DENY,
            reason=f"policy decision undefined ({why})",
            pdp_kind=kind,
        )

    if "result" not in payload:
        return undefined(f"no result at {path or 'the decision path'}")
    result = payload["result"]
    if isinstance(result, bool):
        doc: Mapping[str, Any] = {"allow": result}
    elif isinstance(result, Mapping):
        if "allow" in result:
            doc = result
        elif isinstance(result.get("decision"), Mapping):
            doc = result["decision"]
            if "allow" not in doc:
                return undefined("the decision has no 'allow'")
        else:
            return undefined("the result has no 'allow'")
    else:
        raise PDPUnavailable("OPA result is neither an object nor a boolean")

    allow = doc["allow"]
    if not isinstance(allow, bool):
        raise PDPUnavailable("OPA result 'allow' is not a boolean")
    raw_obligations = doc.get("obligations") or {}
    if not isinstance(raw_obligations, Mapping):
        raise PDPUnavailable("OPA result 'obligations' is not an object")
    reason_value = doc.get("reason")
    reason = (
        reason_value
        if isinstance(reason_value, str) and reason_value
        else ("permitted by the policy" if allow else "denied by the policy")
    )
    return answered_decision(
        decision_id=decision_id,
        allowed=allow,
        reason=reason,
        pdp_kind=kind,
        raw_obligations=raw_obligations,
        who="the policy",
    )


class OPAClient(FailClosedPDP):
    """Ask OPA. Reuse one instance: it pools connections. Batches are concurrent single calls."""

    kind = "opa"

    def __init__(
        self,
        url: str,
        *,
        path: str = DEFAULT_DECISION_PATH,
        http: HTTPOptions | None = None,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.path = normalise_path(path)
        self.endpoint = f"{self.url}/v1/data/{self.path}"
        self.http = JSONClient(http or HTTPOptions(), client)

    async def _evaluate(self, request: AccessRequest) -> Decision:
        headers = {"X-Request-ID": request.context.correlation_id or str(uuid.uuid4())}
        if request.context.traceparent is not None:
            headers["traceparent"] = request.context.traceparent
        payload = await self.http.json(
            "POST",
            self.endpoint,
            what="OPA data API",
            body={"input": request.to_authzen()},
            headers=headers,
        )
        return decision_from_opa(payload, kind=self.kind, path=self.path)

    async def close(self) -> None:
        await self.http.close()
