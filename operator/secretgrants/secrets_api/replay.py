"""One-time identifiers (JTI anti-replay) of grant reads and management calls that change secrets.

The seed: when a token carries a ``jti``, the PEP tracks its use, and a
replay with the same ``jti`` is denied. Which identifier counts is the same
everywhere: the DPoP proof's ``jti`` when a proof is sent (the token may
then be sent again with fresh proofs), otherwise the token's. A
:class:`ReplayCache` remembers an identifier until it could no longer be
presented; a second use before then is a 403 ``Replay``.

Grant reads (:mod:`.reads`) key identifiers by grant and need one.
Management calls that change secrets (:func:`use_once`) key them by the
caller (token) or the proof key; a token without ``jti`` and without DPoP
is accepted there, as the seed says "when present". Calls that only read
metadata are not checked.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from typing import Final

from secretgrants.dpop import PROOF_MAX_AGE_SECONDS, DPoPProof
from secretgrants.secrets_api.authentication import Caller
from secretgrants.secrets_api.operations import OPERATIONS, Operation
from secretgrants.secrets_api.problems import Problem

__all__ = ["ReplayCache", "issued_at", "replayed", "token_jti", "use_once"]

AFTER_EXPIRY_SECONDS: Final = 120
"""How long past its ``exp`` a token is remembered: more than any verifier's clock leeway."""
WITHOUT_EXPIRY_SECONDS: Final = 24 * 3600
"""How long a token with a ``jti`` and no ``exp`` is remembered (the cache cannot keep it forever)."""


class ReplayCache:
    """Identifiers used once, remembered until they could no longer be presented.

    The memory is the process's: what was used before it started is not in it. So an
    identifier whose token or proof was issued before then is refused as a possible
    replay: a client presents a fresh token or proof, which it does per request anyway.
    ``iat`` counts whole seconds, so the line is drawn at the first whole second after
    the start (``not_before``): an ``iat`` of the second the process started in could
    be from just before it, and is refused too. The server starts listening only at
    ``not_before`` (``SecretsApiServer.app``'s startup), so no client can have sent such an
    identifier to this process before it is refused.
    """

    def __init__(self, max_entries: int = 200_000, *, started: float | None = None) -> None:
        self._seen: dict[str, float] = {}
        self.max_entries = max_entries
        self.not_before = float(math.floor(time.time() if started is None else started) + 1)

    def first_use(
        self,
        key: str,
        until: float,
        now_: float | None = None,
        *,
        issued_at: float | None = None,
    ) -> bool:
        if issued_at is not None and issued_at < self.not_before:
            raise Problem(
                403,
                "Replay",
                "this token or proof was issued before the operator started, so whether it "
                "was used cannot be told; use a fresh one",
            )
        current = time.time() if now_ is None else now_
        if len(self._seen) >= self.max_entries:
            self._seen = {k: v for k, v in self._seen.items() if v > current}
            if len(self._seen) >= self.max_entries:
                raise Problem(
                    503, "ReplayCacheFull", "too many one-time tokens in flight; retry later"
                )
        expiry = self._seen.get(key)
        if expiry is not None and expiry > current:
            return False
        self._seen[key] = until
        return True

    def forget(self, key: str) -> None:
        """Let an identifier be used again (its use was not counted)."""
        self._seen.pop(key, None)


def replayed() -> Problem:
    return Problem(403, "Replay", "this token or proof was already used")


def token_jti(caller: Caller) -> str | None:
    jti = caller.claims.get("jti")
    return jti if isinstance(jti, str) and jti else None


def issued_at(caller: Caller, proof: DPoPProof | None) -> float | None:
    """When the one-time identifier was issued: the proof's ``iat``, else the token's."""
    if proof is not None:
        return float(proof.iat)
    iat = caller.claims.get("iat")
    if isinstance(iat, int | float) and not isinstance(iat, bool):
        return float(iat)
    return None


def _token_until(caller: Caller, current: float) -> float:
    exp = caller.claims.get("exp")
    if isinstance(exp, int | float) and not isinstance(exp, bool):
        return float(exp) + AFTER_EXPIRY_SECONDS
    return current + WITHOUT_EXPIRY_SECONDS


def use_once(
    replays: ReplayCache,
    caller: Caller,
    proof: DPoPProof | None,
    operations: Iterable[Operation],
    *,
    now: float | None = None,
) -> None:
    """Use up the identifier of a management call that changes a secret; 403 ``Replay`` if used.

    The proof's ``jti`` is remembered for the proof's freshness window (per
    proof key), the token's until its ``exp`` (per caller). Read-only calls
    and tokens without ``jti`` sent without DPoP pass unchecked.
    """
    if not any(OPERATIONS[op].changes for op in operations):
        return
    current = time.time() if now is None else now
    if proof is not None:
        key = f"dpop/{proof.jkt}/{proof.jti}"
        until = float(proof.iat + PROOF_MAX_AGE_SECONDS + 1)
    else:
        jti = token_jti(caller)
        if jti is None:
            return
        key, until = f"token/{caller.username}/{jti}", _token_until(caller, current)
    if not replays.first_use(key, until, current, issued_at=issued_at(caller, proof)):
        raise replayed()
