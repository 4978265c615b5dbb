"""RFC 9457 problem documents: every refusal of the Secrets API, with a stable code.

A :class:`Problem` is raised anywhere below the route handlers and turned
into ``application/problem+json`` at the edge. ``detail`` is a sentence for a
person; it never holds a secret value or a token. Errors of the rest of the
product (:class:`~secretgrants.errors.SecretGrantsError`) map onto problems
by their reason and status (:func:`from_error`), so a guard failure is a 400
``MountNotAllowed`` here as it is a ``Rejected`` grant there.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import web

from secretgrants.errors import SecretGrantsError

__all__ = ["PROBLEM_BASE", "PROBLEM_CONTENT_TYPE", "Problem", "from_error"]

PROBLEM_BASE: Final = "https://secretgrants.io/problems/"
PROBLEM_CONTENT_TYPE: Final = "application/problem+json"


@dataclass
class Problem(Exception):
    """An RFC 9457 problem: HTTP status, stable code, and a sentence for a person.

    ``extra`` holds extension members (``decisionId``, ``requiredScope``);
    ``headers`` extra response headers (``WWW-Authenticate``).
    """

    status: int
    code: str
    detail: str
    extra: Mapping[str, Any] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.detail}"

    def body(self) -> dict[str, Any]:
        return {
            "type": PROBLEM_BASE + self.code,
            "title": self.code,
            "status": self.status,
            "detail": self.detail,
            "code": self.code,
            **self.extra,
        }

    def response(self) -> web.Response:
        return web.json_response(
            self.body(),
            status=self.status,
            content_type=PROBLEM_CONTENT_TYPE,
            headers={"Cache-Control": "no-store", **self.headers},
        )


def from_error(err: SecretGrantsError, **extra: Any) -> Problem:
    """The problem for an error of the product: its reason is the code, its status the status."""
    return Problem(err.status or 502, err.reason.value, err.message, extra=extra)
