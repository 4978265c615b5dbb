"""One logging filter that masks secret values and bearer tokens in every record.

The provider read path registers each value it hands out; the filter masks
registered values, ``Bearer`` credentials, JWT-shaped strings and Vault
tokens in messages, arguments and exception text, before any handler
formats them. Defence in depth: the code already avoids logging values.
"""

from __future__ import annotations

import collections
import logging
import re
import threading
from typing import Final

__all__ = ["MASK", "RedactionFilter", "install", "redact", "register_secret"]

MASK: Final = "[REDACTED]"
MIN_SECRET_LENGTH: Final = 4  # shorter values would mask ordinary words
_MAX_REGISTERED: Final = 10_000
_PATTERNS: Final = (
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9\-._~+/]+=*"),
    re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"),  # JWTs
    re.compile(r"\b(hvs|hvb|hvr|s|b|r)\.[A-Za-z0-9]{20,}"),  # Vault / OpenBao tokens
)

_lock = threading.Lock()
_registered: collections.OrderedDict[str, None] = collections.OrderedDict()


def register_secret(value: str) -> None:
    """Remember a value so that no log record shows it (the most recent 10,000 are kept)."""
    if len(value) < MIN_SECRET_LENGTH:
        return
    with _lock:
        _registered[value] = None
        _registered.move_to_end(value)
        while len(_registered) > _MAX_REGISTERED:
            _registered.popitem(last=False)


def redact(text: str) -> str:
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: (m.group(1) if m.re is _PATTERNS[0] else "") + MASK, text)
    with _lock:
        values = sorted(_registered, key=len, reverse=True)
    for value in values:
        if value in text:
            text = text.replace(value, MASK)
    return text


class RedactionFilter(logging.Filter):
    """Formats the record's message with its arguments, masks it, and drops the arguments."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: keep the template only
            message = str(record.msg)
        record.msg = redact(message)
        record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            formatter = logging.Formatter()
            record.exc_text = redact(formatter.formatException(record.exc_info))
            record.exc_info = None
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def install(logger: logging.Logger | None = None) -> RedactionFilter:
    """Add the filter to every handler of ``logger`` (the root logger by default)."""
    target = logger or logging.getLogger()
    flt = RedactionFilter()
    for handler in target.handlers:
        if not any(isinstance(f, RedactionFilter) for f in handler.filters):
            handler.addFilter(flt)
    return flt
