"""The one interface every PDP client has, and the fail-closed rule they share.

A PDP that cannot be asked (down, slow, answering garbage or an HTTP error)
never lets a grant through and never raises into the caller: the caller gets
a deny :class:`~secretgrants.policy.model.Decision` with reason
``PDPUnavailable`` and ``retryable=True``, and retries with backoff. That is
the seeds' fail-closed 403.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from secretgrants.errors import PDPUnavailable
from secretgrants.policy.model import AccessRequest, Decision, Effect
from secretgrants.reasons import Reason

__all__ = [
    "FailClosedPDP",
    "PolicyDecisionPoint",
    "new_decision_id",
    "unavailable",
]

log = logging.getLogger("secretgrants.policy")


@runtime_checkable
class PolicyDecisionPoint(Protocol):
    """Anything the operator can ask for a decision. Never raises for a PDP failure."""

    @property
    def kind(self) -> str:
        """``builtin``, ``authzen`` or ``opa``: recorded on every decision."""
        ...

    async def evaluate(self, request: AccessRequest) -> Decision:
        """Decide one request."""
        ...

    async def evaluate_many(self, requests: Sequence[AccessRequest]) -> list[Decision]:
        """Decide several requests; the answers are in the order of ``requests``."""
        ...

    async def close(self) -> None:
        """Release connections. The PDP is not used afterwards."""
        ...


def new_decision_id() -> str:
    """A decision id made by the PEP, for PDPs that send none."""
    return str(uuid.uuid4())


def unavailable(kind: str, detail: str, decision_id: str | None = None) -> Decision:
    """The fail-closed answer: deny, ``PDPUnavailable``, retryable."""
    return Decision(
        decision_id=decision_id or new_decision_id(),
        effect=Effect.DENY,
        reason=Reason.PDP_UNAVAILABLE.value,
        pdp_kind=kind,
        retryable=True,
        detail=detail,
    )


class FailClosedPDP(ABC):
    """Base of the PDP clients: subclasses implement ``_evaluate``; errors become denies.

    ``_evaluate`` (and ``_evaluate_many`` where a PDP has a batch call) raise
    :class:`~secretgrants.errors.PDPUnavailable` with a message naming what
    failed; any other exception is a bug, and is logged and denied all the
    same. Cancellation is not caught.
    """

    kind: str = "unknown"

    @abstractmethod
    async def _evaluate(self, request: AccessRequest) -> Decision: ...

    async def _evaluate_many(self, requests: Sequence[AccessRequest]) -> list[Decision]:
        return list(await asyncio.gather(*(self.evaluate(r) for r in requests)))

    async def evaluate(self, request: AccessRequest) -> Decision:
        try:
            return await self._evaluate(request)
        except Exception as exc:
            return self._fail(exc, [request])[0]

    async def evaluate_many(self, requests: Sequence[AccessRequest]) -> list[Decision]:
        if not requests:
            return []
        try:
            decisions = await self._evaluate_many(requests)
        except Exception as exc:
            return self._fail(exc, requests)
        if len(decisions) != len(requests):  # pragma: no cover - a bug in a subclass
            return self._fail(
                PDPUnavailable(f"{len(decisions)} answers for {len(requests)} requests"), requests
            )
        return decisions

    async def close(self) -> None:  # noqa: B027 - nothing to release by default
        """Release connections (nothing by default)."""

    def _fail(self, exc: Exception, requests: Sequence[AccessRequest]) -> list[Decision]:
        if isinstance(exc, PDPUnavailable):
            detail = exc.message
            log.warning(
                "PDP %s unavailable, denying %d request(s) (correlation %s): %s",
                self.kind,
                len(requests),
                requests[0].context.correlation_id if requests else None,
                detail,
            )
        else:
            detail = f"internal error in the {self.kind} PDP client ({type(exc).__name__})"
            log.exception("PDP %s client failed; denying %d request(s)", self.kind, len(requests))
        return [unavailable(self.kind, detail) for _ in requests]
