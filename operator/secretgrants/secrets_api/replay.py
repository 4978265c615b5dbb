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

The memory is shared by every caller, so no caller may fill it: each
namespace has a quota of identifiers remembered at once (429
``TooManyOneTimeTokens`` past it), and a call that changes a secret takes only
tokens that live at most an hour by default (401 ``TokenLifetimeTooLong``),
which bounds how long each identifier is kept.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Iterable
from typing import Final

from secretgrants.dpop import PROOF_MAX_AGE_SECONDS, DPoPProof
from secretgrants.secrets_api.authentication import Caller, unauthenticated
from secretgrants.secrets_api.operations import OPERATIONS, Operation
from secretgrants.secrets_api.problems import Problem

__all__ = [
    "DEFAULT_MAX_TOKEN_LIFETIME_SECONDS",
    "DEFAULT_PER_OWNER",
    "ReplayCache",
    "issued_at",
    "owner_of",
    "proof_until",
    "replayed",
    "token_jti",
    "token_until",
    "use_once",
]

AFTER_EXPIRY_SECONDS: Final = 120
"""How long past its ``exp`` a token is remembered: more than any verifier's clock leeway."""
WITHOUT_EXPIRY_SECONDS: Final = 24 * 3600
"""How long a token with a ``jti`` and no ``exp`` is remembered (the cache cannot keep it forever)."""
DEFAULT_PER_OWNER: Final = 10_000
"""How many identifiers one owner (a namespace) may have remembered at once, per memory."""
DEFAULT_MAX_TOKEN_LIFETIME_SECONDS: Final = 3600
"""The longest token lifetime (``exp - iat``) a call that changes a secret accepts."""


class _Owned:
    """One owner's remembered identifiers: how many, and when each may be forgotten."""

    __slots__ = ("count", "expiry")

    def __init__(self) -> None:
        self.count = 0
        self.expiry: list[tuple[float, str]] = []  # a heap of (until, key), stale ones included


class ReplayCache:
    """Identifiers used once, remembered until they could no longer be presented.

    Each identifier has an *owner*, the namespace of the caller who used it (the
    tenant boundary: :func:`owner_of`). One owner may have at most ``per_owner``
    identifiers remembered at once; past that its calls are a 429
    ``TooManyOneTimeTokens`` (``Retry-After``: when its first one is forgotten) and
    other owners are unaffected. ``max_entries`` bounds them all (503
    ``ReplayCacheFull``). Identifiers are forgotten in the order they expire, from a
    heap: a call forgets the ones that expired since the last call, never scans all.

    The memory is the process's: what was used before it started is not in it. So an
    identifier whose token or proof was issued before then is refused as a possible
    replay: a client presents a fresh token or proof, which it does per request anyway.
    ``iat`` counts whole seconds, so the line is drawn at the first whole second after
    the start (``not_before``): an ``iat`` of the second the process started in could
    be from just before it, and is refused too. The server starts listening only at
    ``not_before`` (``SecretsApiServer.app``'s startup), so no client can have sent such an
    identifier to this process before it is refused.
    """

    def __init__(
        self,
        max_entries: int = 200_000,
        *,
        per_owner: int = DEFAULT_PER_OWNER,
        started: float | None = None,
    ) -> None:
        self._seen: dict[str, tuple[float, str]] = {}  # key -> (until, owner)
        self._expiry: list[tuple[float, str]] = []  # a heap of (until, key), stale ones included
        self._owners: dict[str, _Owned] = {}
        self.max_entries = max_entries
        self.per_owner = per_owner
        self.not_before = float(math.floor(time.time() if started is None else started) + 1)

    def __len__(self) -> int:
        return len(self._seen)

    def held_by(self, owner: str) -> int:
        """How many identifiers ``owner`` has remembered now."""
        owned = self._owners.get(owner)
        return owned.count if owned is not None else 0

    def first_use(
        self,
        key: str,
        until: float,
        now_: float | None = None,
        *,
        owner: str,
        issued_at: float | None = None,
    ) -> bool:
        """Remember ``key`` until ``until`` for ``owner``; False when it is remembered already."""
        if issued_at is not None and issued_at < self.not_before:
            raise Problem(
                403,
                "Replay",
                "this token or proof was issued before the operator started, so whether it "
                "was used cannot be told; use a fresh one",
            )
        current = time.time() if now_ is None else now_
        self._prune(current)
        if key in self._seen:  # what is left after pruning is still live
            return False
        owned = self._owners.get(owner)
        if owned is not None and owned.count >= self.per_owner:
            raise self._over_quota(owned, current)
        if len(self._seen) >= self.max_entries:
            raise Problem(503, "ReplayCacheFull", "too many one-time tokens in flight; retry later")
        if owned is None:
            owned = self._owners[owner] = _Owned()
        self._seen[key] = (until, owner)
        owned.count += 1
        heapq.heappush(self._expiry, (until, key))
        heapq.heappush(owned.expiry, (until, key))
        self._drop_stale(owned, current)
        return True

    def forget(self, key: str) -> None:
        """Let an identifier be used again (its use was not counted)."""
        held = self._seen.pop(key, None)
        if held is not None:
            self._release(held[1])

    def _release(self, owner: str) -> None:
        owned = self._owners[owner]
        owned.count -= 1
        if owned.count == 0:
            del self._owners[owner]  # with its heap, stale entries and all

    def _prune(self, current: float) -> None:
        """Forget what expired by ``current``: only those, in the order they expire."""
        expiry, seen = self._expiry, self._seen
        while expiry and expiry[0][0] <= current:
            _, key = heapq.heappop(expiry)
            held = seen.get(key)
            if held is not None and held[0] <= current:  # not forgotten and used again since
                del seen[key]
                self._release(held[1])

    def _drop_stale(self, owned: _Owned, current: float) -> None:
        """Drop the owner's heap entries that name no live identifier from its top."""
        expiry, seen = owned.expiry, self._seen
        while expiry:
            until, key = expiry[0]
            held = seen.get(key)
            if until > current and held is not None and held[0] == until:
                return
            heapq.heappop(expiry)

    def _over_quota(self, owned: _Owned, current: float) -> Problem:
        self._drop_stale(owned, current)
        wait = max(1, math.ceil(owned.expiry[0][0] - current)) if owned.expiry else 1
        return Problem(
            429,
            "TooManyOneTimeTokens",
            f"this namespace has {owned.count} one-time tokens or proofs remembered, the "
            f"most it may have; they are forgotten as they expire (retry in {wait} s), "
            "so use shorter-lived tokens, or DPoP proofs (remembered for minutes)",
            headers={"Retry-After": str(wait)},
        )


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


def _number(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def owner_of(caller: Caller) -> str:
    """Whose quota an identifier counts against: the caller's namespace (its tenant).

    Every caller is a ServiceAccount (tokens of other subjects are refused), an
    issuer's access tokens included (their ``sub`` names one); the anonymous caller is
    the operator namespace's. A proof's identifier counts for the caller who sent it.
    """
    return caller.namespace


def token_until(caller: Caller, current: float) -> float:
    """Until when a token's ``jti`` may be presented: ``exp`` plus the verifiers' leeway."""
    exp = _number(caller.claims.get("exp"))
    if exp is not None:
        return exp + AFTER_EXPIRY_SECONDS
    return current + WITHOUT_EXPIRY_SECONDS


def proof_until(proof: DPoPProof) -> float:
    """Until when a proof's ``jti`` is remembered: past its freshness window, with a margin
    for the time between the proof's check and its use (a body read, a grant read)."""
    return float(proof.iat + PROOF_MAX_AGE_SECONDS + AFTER_EXPIRY_SECONDS)


def check_lifetime(caller: Caller, max_seconds: float, current: float) -> None:
    """401 ``TokenLifetimeTooLong`` when the token lives longer than ``max_seconds``.

    The lifetime is ``exp - iat`` (``exp - now`` without ``iat``). A token without
    ``exp`` is judged only when it has a ``jti`` (its use would be remembered for a
    day); one with neither (a legacy Secret-based token) is not.
    """
    if caller.token is None:
        return
    exp = _number(caller.claims.get("exp"))
    if exp is None:
        if token_jti(caller) is None:
            return
        lifetime = math.inf
    else:
        iat = _number(caller.claims.get("iat"))
        lifetime = exp - (current if iat is None else iat)
    if lifetime > max_seconds:
        raise unauthenticated(
            f"calls that change secrets take tokens that live at most {int(max_seconds)} s "
            "(exp - iat); mint a shorter-lived one (kubectl create token --duration)",
            "TokenLifetimeTooLong",
        )


def use_once(
    replays: ReplayCache,
    caller: Caller,
    proof: DPoPProof | None,
    operations: Iterable[Operation],
    *,
    max_token_lifetime: float = DEFAULT_MAX_TOKEN_LIFETIME_SECONDS,
    now: float | None = None,
) -> None:
    """Use up the identifier of a management call that changes a secret; 403 ``Replay`` if used.

    The proof's ``jti`` is remembered past the proof's freshness window (per proof
    key), the token's until its ``exp`` (per caller), each counted against the
    caller's namespace (:func:`owner_of`). A token that lives longer than
    ``max_token_lifetime`` is refused first (:func:`check_lifetime`). Read-only calls
    and tokens without ``jti`` sent without DPoP pass unchecked.
    """
    if not any(OPERATIONS[op].changes for op in operations):
        return
    current = time.time() if now is None else now
    check_lifetime(caller, max_token_lifetime, current)
    if proof is not None:
        key, until = f"dpop/{proof.jkt}/{proof.jti}", proof_until(proof)
    else:
        jti = token_jti(caller)
        if jti is None:
            return
        key, until = f"token/{caller.username}/{jti}", token_until(caller, current)
    owner = owner_of(caller)
    if not replays.first_use(key, until, current, owner=owner, issued_at=issued_at(caller, proof)):
        raise replayed()
