"""An AuthZEN 1.0 PDP client (the OpenID Authorization API).

* ``POST <access_evaluation_endpoint>`` (default ``/access/v1/evaluation``)
  with the body of :meth:`AccessRequest.to_authzen`; the answer is
  ``{"decision": bool, "context": {...}}``.
* ``POST <access_evaluations_endpoint>`` (default ``/access/v1/evaluations``)
  for a batch: members shared by every request (``subject``, ``action``,
  ``resource``, ``context``) are sent once at the top level as defaults, the
  rest per item in ``evaluations``; ``options.evaluations_semantic`` is
  ``execute_all``. The answer's ``evaluations`` are in request order.
* With only a base URL configured, the endpoints come from the PDP metadata
  at ``/.well-known/authzen-configuration`` (fetched once, on first use).
  A PDP without metadata (404) is asked at the default paths under the base;
  one that answers a batch with 404, 405 or 501 is asked one by one from then on.

The answer's boolean ``decision`` is authoritative. Its ``context`` may carry a
decision id (``decision_id`` or ``id``), a reason (``reason``, else
``reason_admin``/``reason_user``, plain or per-language) and obligations:
``ttl_seconds`` and ``max_uses``, and any other member (flat, or inside an
``obligations`` object), which are kept in ``Decision.obligations.extra`` so
that :func:`~secretgrants.policy.model.apply_obligations` can refuse a permit
it cannot fully enforce.

Every request carries ``X-Request-ID`` (the correlation id, or a fresh one)
and, when the request has one, ``traceparent``.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import httpx

from secretgrants.errors import PDPUnavailable
from secretgrants.policy._http import HTTPOptions, JSONClient, parse_json
from secretgrants.policy.base import FailClosedPDP, new_decision_id, unavailable
from secretgrants.policy.model import AccessRequest, Decision, answered_decision

__all__ = [
    "EVALUATIONS_PATH",
    "EVALUATION_PATH",
    "WELL_KNOWN_PATH",
    "AuthZENClient",
    "AuthZENEndpoints",
    "batch_body",
    "decision_from_authzen",
    "well_known_urls",
]

EVALUATION_PATH: Final = "/access/v1/evaluation"
EVALUATIONS_PATH: Final = "/access/v1/evaluations"
WELL_KNOWN_PATH: Final = "/.well-known/authzen-configuration"
_SHARED: Final = ("subject", "action", "resource", "context")
# Members of an answer's context that describe the decision rather than oblige anything.
_INFORMATIONAL: Final = frozenset({"id", "decision_id", "reason", "reason_admin", "reason_user"})
# Answers to a batch that mean "no batch endpoint here" (then single evaluations are used).
_NO_BATCH: Final = frozenset({404, 405, 501})

log = logging.getLogger("secretgrants.policy")


@dataclass(frozen=True)
class AuthZENEndpoints:
    evaluation: str
    evaluations: str | None


def _text(value: object) -> str | None:
    """A reason as text: a string, or the ``en`` (else first) entry of a per-language object."""
    if isinstance(value, str) and value:
        return value
    if isinstance(value, Mapping):
        preferred = value.get("en")
        if isinstance(preferred, str) and preferred:
            return preferred
        for item in value.values():
            if isinstance(item, str) and item:
                return item
    return None


def decision_from_authzen(answer: object, *, kind: str = "authzen") -> Decision:
    """One AuthZEN evaluation answer as a :class:`Decision`; ``PDPUnavailable`` if malformed."""
    if not isinstance(answer, Mapping):
        raise PDPUnavailable("AuthZEN answer is not a JSON object")
    verdict = answer.get("decision")
    if not isinstance(verdict, bool):
        raise PDPUnavailable("AuthZEN answer has no boolean 'decision'")
    context = answer.get("context")
    if context is None:
        context = {}
    if not isinstance(context, Mapping):
        raise PDPUnavailable("AuthZEN answer 'context' is not a JSON object")

    raw_id = context.get("decision_id", context.get("id"))
    decision_id = (
        str(raw_id)
        if isinstance(raw_id, str | int) and not isinstance(raw_id, bool) and str(raw_id)
        else new_decision_id()
    )[:256]
    reason = (
        _text(context.get("reason"))
        or _text(context.get("reason_admin"))
        or _text(context.get("reason_user"))
        or ("permitted by the PDP" if verdict else "denied by the PDP")
    )

    raw: dict[str, Any] = {}
    nested = context.get("obligations")
    if isinstance(nested, Mapping):
        raw.update(nested)
    for name, value in context.items():
        if name not in _INFORMATIONAL and not (
            name == "obligations" and isinstance(nested, Mapping)
        ):
            raw[name] = value
    return answered_decision(
        decision_id=decision_id,
        allowed=verdict,
        reason=reason,
        pdp_kind=kind,
        raw_obligations=raw,
        who="the PDP",
    )


def batch_body(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """An AuthZEN evaluations body: members equal in every item are sent once as defaults.

    Per AuthZEN 1.0, an item's ``subject``/``action``/``resource``/``context``
    replaces the top-level one as a whole; so a member is hoisted only when it
    is identical in every item.
    """
    body: dict[str, Any] = {}
    evaluations = [dict(item) for item in items]
    for key in _SHARED:
        values = [item.get(key) for item in items]
        if values and values[0] is not None and all(v == values[0] for v in values[1:]):
            body[key] = values[0]
            for item in evaluations:
                item.pop(key, None)
    body["evaluations"] = evaluations
    body["options"] = {"evaluations_semantic": "execute_all"}
    return body


def well_known_urls(base_url: str) -> list[str]:
    """Where the metadata of the PDP at ``base_url`` may be.

    AuthZEN inserts ``/.well-known/authzen-configuration`` between host and
    path (as RFC 8414 does), so ``https://pdp/tenant1`` has its metadata at
    ``https://pdp/.well-known/authzen-configuration/tenant1``; some PDPs serve
    it under their path instead, which is tried second.
    """
    parts = urlsplit(base_url)
    path = parts.path.rstrip("/")
    first = urlunsplit((parts.scheme, parts.netloc, WELL_KNOWN_PATH + path, "", ""))
    second = urlunsplit((parts.scheme, parts.netloc, path + WELL_KNOWN_PATH, "", ""))
    return [first] if first == second else [first, second]


def _http_url(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise PDPUnavailable(f"AuthZEN metadata has no {what}")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise PDPUnavailable(f"AuthZEN metadata {what} is not an absolute http(s) URL")
    return value


class AuthZENClient(FailClosedPDP):
    """Ask an AuthZEN 1.0 PDP. Reuse one instance: it pools connections.

    Give ``base_url`` (endpoints discovered, or the default paths), or the
    endpoints themselves. A ``base_url`` that already ends in
    ``/access/v1/evaluation`` is taken as the evaluation endpoint.
    """

    kind = "authzen"

    def __init__(
        self,
        base_url: str | None = None,
        *,
        evaluation_endpoint: str | None = None,
        evaluations_endpoint: str | None = None,
        discover: bool = True,
        use_batch: bool = True,
        max_batch_size: int = 100,
        http: HTTPOptions | None = None,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        if base_url is None and evaluation_endpoint is None:
            raise ValueError("an AuthZEN PDP needs a base URL or an evaluation endpoint")
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        self.base_url = None if base_url is None else base_url.rstrip("/")
        if self.base_url is not None and self.base_url.endswith(EVALUATION_PATH):
            evaluation_endpoint = evaluation_endpoint or self.base_url
            self.base_url = self.base_url.removesuffix(EVALUATION_PATH)
            discover = False
        self._endpoints: AuthZENEndpoints | None = None
        if evaluation_endpoint is not None:
            self._endpoints = AuthZENEndpoints(evaluation_endpoint, evaluations_endpoint)
        elif not discover:
            self._endpoints = self._defaults()
        self.use_batch = use_batch
        self.max_batch_size = max_batch_size
        self.http = JSONClient(http or HTTPOptions(), client)
        self._discovery_lock = asyncio.Lock()

    def _defaults(self) -> AuthZENEndpoints:
        assert self.base_url is not None
        return AuthZENEndpoints(self.base_url + EVALUATION_PATH, self.base_url + EVALUATIONS_PATH)

    async def endpoints(self) -> AuthZENEndpoints:
        """The endpoints in use, discovering them first if needed (raises ``PDPUnavailable``)."""
        if self._endpoints is not None:
            return self._endpoints
        async with self._discovery_lock:
            if self._endpoints is None:
                self._endpoints = await self._discover()
        return self._endpoints

    async def _discover(self) -> AuthZENEndpoints:
        assert self.base_url is not None
        for url in well_known_urls(self.base_url):
            response = await self.http.request("GET", url, what="AuthZEN metadata")
            if response.status_code == 404:
                continue
            meta = parse_json(response, "AuthZEN metadata")
            if not isinstance(meta, Mapping):
                raise PDPUnavailable("AuthZEN metadata is not a JSON object")
            pdp = meta.get("policy_decision_point")
            if pdp is not None and (not isinstance(pdp, str) or pdp.rstrip("/") != self.base_url):
                raise PDPUnavailable("AuthZEN metadata names another policy_decision_point")
            evaluations = meta.get("access_evaluations_endpoint")
            return AuthZENEndpoints(
                _http_url(meta.get("access_evaluation_endpoint"), "access_evaluation_endpoint"),
                None
                if evaluations is None
                else _http_url(evaluations, "access_evaluations_endpoint"),
            )
        return self._defaults()

    @staticmethod
    def _headers(requests: Sequence[AccessRequest]) -> dict[str, str]:
        ids = {r.context.correlation_id for r in requests}
        correlation = ids.pop() if len(ids) == 1 else None
        headers = {"X-Request-ID": correlation or str(uuid.uuid4())}
        parents = {r.context.traceparent for r in requests}
        if len(parents) == 1 and (traceparent := parents.pop()) is not None:
            headers["traceparent"] = traceparent
        return headers

    async def _evaluate(self, request: AccessRequest) -> Decision:
        endpoints = await self.endpoints()
        answer = await self.http.json(
            "POST",
            endpoints.evaluation,
            what="AuthZEN evaluation",
            body=request.to_authzen(),
            headers=self._headers([request]),
        )
        return decision_from_authzen(answer, kind=self.kind)

    async def _evaluate_many(self, requests: Sequence[AccessRequest]) -> list[Decision]:
        endpoints = await self.endpoints()
        if len(requests) == 1 or not self.use_batch or endpoints.evaluations is None:
            return await super()._evaluate_many(requests)
        url = endpoints.evaluations
        chunks = [
            requests[i : i + self.max_batch_size]
            for i in range(0, len(requests), self.max_batch_size)
        ]
        answers = await asyncio.gather(*(self._batch(url, chunk) for chunk in chunks))
        return [decision for answer in answers for decision in answer]

    async def _batch(self, url: str, requests: Sequence[AccessRequest]) -> list[Decision]:
        try:
            response = await self.http.request(
                "POST",
                url,
                what="AuthZEN evaluations",
                body=batch_body([r.to_authzen() for r in requests]),
                headers=self._headers(requests),
            )
            if response.status_code in _NO_BATCH and self.use_batch:
                # The PDP has no batch endpoint after all: ask one by one from now on.
                self.use_batch = False
                log.info("AuthZEN PDP answered HTTP %d to a batch", response.status_code)
                return await super()._evaluate_many(requests)
            answer = parse_json(response, "AuthZEN evaluations")
            if not isinstance(answer, Mapping) or not isinstance(
                items := answer.get("evaluations"), list
            ):
                raise PDPUnavailable("AuthZEN evaluations answer has no 'evaluations' list")
            if len(items) != len(requests):
                raise PDPUnavailable(
                    f"AuthZEN evaluations answered {len(items)} of {len(requests)} evaluations"
                )
        except PDPUnavailable as exc:
            return self._fail(exc, requests)
        decisions: list[Decision] = []
        for index, item in enumerate(items):
            try:
                decisions.append(decision_from_authzen(item, kind=self.kind))
            except PDPUnavailable as exc:
                decisions.append(unavailable(self.kind, f"evaluations[{index}]: {exc.message}"))
        return decisions

    async def close(self) -> None:
        await self.http.close()
