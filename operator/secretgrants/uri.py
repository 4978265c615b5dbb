"""Canonical secret URIs: the one parser, normaliser and formatter.

A grant names its secret as ``provider[+engine]://<mount>/<path>[#<key>]``,
for example ``vault+kv2://secret/payments/db#password``. That string crosses
the tenant guard (which allows or refuses the *mount*), the policy engine
(which sees the whole URI as the resource) and a provider client (which turns
mount and path into an API call). If any two of them read the same string
differently, a grant approved for one secret could fetch another one: an
encoded ``%2F``, a ``..`` segment, a stray backslash or an invisible Unicode
space are the classic ways in. So every component goes through this module,
and this module is deliberately strict: it accepts a small, documented
grammar and refuses everything else with :class:`~secretgrants.errors.InvalidSecretURI`.

Grammar
-------

``scheme``
    ``provider`` or ``provider+engine``, matched case-insensitively and
    written lower-case. Known providers and their engines are in
    :data:`PROVIDERS`: ``vault`` and ``openbao`` take ``kv2`` (the default
    when the engine is left out, so ``vault://secret/a`` is
    ``vault+kv2://secret/a``); ``yaml`` takes no engine.
``mount``
    One segment of ``A-Z a-z 0-9 . _ -`` (no ``@``, so no userinfo; no
    ``:``, so no port).
``path``
    One to :data:`MAX_PATH_SEGMENTS` segments joined by ``/``, each of
    ``A-Z a-z 0-9 . _ - @ = + ,``.
``fragment``
    Optional; after ``#``, one key inside the secret, same charset as a path
    segment. Only the ``read`` and ``write`` purposes may name a key
    (:meth:`SecretURI.check_purpose`).

Every segment (mount, path segments and fragment) is non-empty, at most
:data:`MAX_SEGMENT_LENGTH` characters and never ``.`` or ``..``; so no empty
segment, leading, trailing or doubled ``/``. The whole URI, in input and in
normal form, is at most :data:`MAX_URI_LENGTH` characters. Anything outside
printable ASCII is refused, as are ``%`` (no percent-encoding at all, so an
encoded separator or dot cannot sneak in), ``\\``, ``?`` (no query strings)
and whitespace of any kind. Case is kept in mount, path and fragment (the
providers are case-sensitive).

Error messages name the problem and the part; they quote at most the
offending part, truncated, and only once it is known to be printable ASCII
(characters outside it are named by code point).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from pydantic import BaseModel, ConfigDict, model_validator

from secretgrants.errors import InvalidSecretURI
from secretgrants.reasons import Purpose

__all__ = [
    "FRAGMENT_PURPOSES",
    "MAX_FRAGMENT_LENGTH",
    "MAX_PATH_SEGMENTS",
    "MAX_SEGMENT_LENGTH",
    "MAX_URI_LENGTH",
    "PROVIDERS",
    "SecretURI",
    "parse_mount_ref",
    "parse_secret_uri",
]

PROVIDERS: Final[Mapping[str, frozenset[str]]] = MappingProxyType(
    {
        "openbao": frozenset({"kv2"}),
        "vault": frozenset({"kv2"}),
        "yaml": frozenset(),
    }
)
"""Known providers and the engines each accepts (empty: the provider takes none)."""

_DEFAULT_ENGINE: Final[Mapping[str, str]] = MappingProxyType({"openbao": "kv2", "vault": "kv2"})

MAX_URI_LENGTH: Final = 1024
MAX_SEGMENT_LENGTH: Final = 255
MAX_PATH_SEGMENTS: Final = 32
MAX_FRAGMENT_LENGTH: Final = 255

FRAGMENT_PURPOSES: Final[frozenset[str]] = frozenset({Purpose.READ.value, Purpose.WRITE.value})
"""Purposes that may select a single key with ``#fragment``."""

_SEPARATOR: Final = "://"
_ALNUM: Final = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_MOUNT_CHARS: Final = frozenset(_ALNUM + "._-")
_SEGMENT_CHARS: Final = frozenset(_ALNUM + "._-@=+,")
_MOUNT_CHARSET_DOC: Final = "letters, digits, '.', '_' and '-'"
_SEGMENT_CHARSET_DOC: Final = "letters, digits, '.', '_', '-', '@', '=', '+' and ','"
_DOT_SEGMENTS: Final = frozenset({".", ".."})
_EXCERPT: Final = 40


def _excerpt(text: str) -> str:
    """Quote ``text`` (already known to be printable ASCII), cut to a short prefix."""
    if len(text) > _EXCERPT:
        return repr(text[:_EXCERPT] + "...")
    return repr(text)


def _codepoint(ch: str) -> str:
    return f"U+{ord(ch):04X}"


def _char_problem(ch: str) -> str | None:
    """Say what ``ch`` is if it can never appear in a secret URI, or None if it may."""
    if ch == "\x00":
        return "a NUL character"
    category = unicodedata.category(ch)
    if ch.isspace() or category in ("Zs", "Zl", "Zp"):
        return f"whitespace ({_codepoint(ch)})"
    if category == "Cc":
        return f"a control character ({_codepoint(ch)})"
    if category == "Cf":
        return f"an invisible formatting character ({_codepoint(ch)})"
    if ch == "%":
        return "'%' (percent-encoding is not allowed: it could hide separators or dots)"
    if ch == "\\":
        return "a backslash"
    if ch == "?":
        return "'?' (query strings are not allowed)"
    if not ch.isascii():
        return f"a non-ASCII character ({_codepoint(ch)})"
    return None


def _scan(part: str, text: str) -> None:
    """Refuse characters that are never allowed, naming them by class and code point."""
    for index, ch in enumerate(text):
        problem = _char_problem(ch)
        if problem is not None:
            raise InvalidSecretURI(f"{part} character {index + 1} is {problem}")


def _as_text(raw: object, what: str) -> str:
    if not isinstance(raw, str):
        raise InvalidSecretURI(f"{what} must be a string, not {_excerpt(type(raw).__name__)}")
    # A plain copy, so str subclasses cannot change behaviour under our feet.
    text = str.__str__(raw)
    if not text:
        raise InvalidSecretURI(f"{what} is empty")
    if len(text) > MAX_URI_LENGTH:
        raise InvalidSecretURI(
            f"{what} is {len(text)} characters long; the limit is {MAX_URI_LENGTH}"
        )
    return text


def _format_scheme(provider: str, engine: str | None) -> str:
    return provider if engine is None else f"{provider}+{engine}"


def _resolve_scheme(scheme: str) -> tuple[str, str | None]:
    """Normalise ``provider[+engine]`` (printable ASCII) to (provider, engine)."""
    if not scheme:
        raise InvalidSecretURI("secret URI has no provider before '://'")
    name, plus, engine_name = scheme.partition("+")
    provider = name.lower()
    if provider not in PROVIDERS:
        known = ", ".join(sorted(PROVIDERS))
        raise InvalidSecretURI(f"unknown provider {_excerpt(name)}; known providers: {known}")
    engines = PROVIDERS[provider]
    if not plus:
        if not engines:
            return provider, None
        default = _DEFAULT_ENGINE.get(provider)
        if default is None:  # pragma: no cover - every engine-taking provider has a default
            raise InvalidSecretURI(f"provider {provider!r} needs an engine")
        return provider, default
    engine = engine_name.lower()
    if not engine:
        raise InvalidSecretURI(f"empty engine after '+' in scheme of provider {provider!r}")
    _check_engine(provider, engine)
    return provider, engine


def _check_engine(provider: str, engine: str) -> None:
    engines = PROVIDERS[provider]
    if not engines:
        raise InvalidSecretURI(
            f"unknown engine {_excerpt(engine)}: provider {provider!r} takes no engine"
        )
    if engine not in engines:
        known = ", ".join(sorted(engines))
        raise InvalidSecretURI(
            f"unknown engine {_excerpt(engine)} for provider {provider!r}; known engines: {known}"
        )


def _check_mount(mount: str) -> None:
    _scan("mount", mount)
    if not mount:
        raise InvalidSecretURI("mount is empty (expected provider://mount/path)")
    if len(mount) > MAX_SEGMENT_LENGTH:
        raise InvalidSecretURI(
            f"mount is {len(mount)} characters long; the limit is {MAX_SEGMENT_LENGTH}"
        )
    if mount in _DOT_SEGMENTS:
        raise InvalidSecretURI(f"mount is a dot segment ({mount!r})")
    if "@" in mount:
        raise InvalidSecretURI("userinfo ('@') is not allowed in the mount")
    if ":" in mount:
        raise InvalidSecretURI("a port (':') is not allowed in the mount")
    for ch in mount:
        if ch not in _MOUNT_CHARS:
            raise InvalidSecretURI(
                f"mount {_excerpt(mount)} contains {ch!r}; a mount may use {_MOUNT_CHARSET_DOC}"
            )


def _check_path(path: str) -> None:
    _scan("path", path)
    if not path:
        raise InvalidSecretURI("secret URI has no path after the mount")
    segments = path.split("/")
    if len(segments) > MAX_PATH_SEGMENTS:
        raise InvalidSecretURI(
            f"path has {len(segments)} segments; the limit is {MAX_PATH_SEGMENTS}"
        )
    for number, segment in enumerate(segments, start=1):
        if not segment:
            raise InvalidSecretURI(
                f"path segment {number} is empty (leading, trailing or doubled '/')"
            )
        if len(segment) > MAX_SEGMENT_LENGTH:
            raise InvalidSecretURI(
                f"path segment {number} is {len(segment)} characters long; "
                f"the limit is {MAX_SEGMENT_LENGTH}"
            )
        if segment in _DOT_SEGMENTS:
            raise InvalidSecretURI(f"path segment {number} is a dot segment ({segment!r})")
        for ch in segment:
            if ch not in _SEGMENT_CHARS:
                raise InvalidSecretURI(
                    f"path segment {number} {_excerpt(segment)} contains {ch!r}; "
                    f"a path segment may use {_SEGMENT_CHARSET_DOC}"
                )


def _check_fragment(fragment: str | None) -> None:
    if fragment is None:
        return
    _scan("fragment", fragment)
    if not fragment:
        raise InvalidSecretURI("fragment after '#' is empty")
    if len(fragment) > MAX_FRAGMENT_LENGTH:
        raise InvalidSecretURI(
            f"fragment is {len(fragment)} characters long; the limit is {MAX_FRAGMENT_LENGTH}"
        )
    if fragment in _DOT_SEGMENTS:
        raise InvalidSecretURI(f"fragment is a dot segment ({fragment!r})")
    for ch in fragment:
        if ch not in _SEGMENT_CHARS:
            raise InvalidSecretURI(
                f"fragment {_excerpt(fragment)} contains {ch!r}; "
                f"a fragment may use {_SEGMENT_CHARSET_DOC}"
            )


class SecretURI(BaseModel):
    """A parsed, normalised secret URI. Build one with :meth:`parse`.

    Direct construction runs the same checks (and raises
    :class:`~secretgrants.errors.InvalidSecretURI`), but expects the normal
    form: a lower-case provider and an explicit engine.
    """

    model_config = ConfigDict(frozen=True, strict=True, extra="forbid")

    provider: str
    engine: str | None
    mount: str
    path: str
    fragment: str | None = None

    @model_validator(mode="after")
    def _validate(self) -> SecretURI:
        if self.provider not in PROVIDERS:
            known = ", ".join(sorted(PROVIDERS))
            _scan("provider", self.provider)
            raise InvalidSecretURI(
                f"unknown provider {_excerpt(self.provider)}; known providers: {known}"
            )
        if self.engine is None:
            engines = PROVIDERS[self.provider]
            if engines:
                known = ", ".join(sorted(engines))
                raise InvalidSecretURI(
                    f"provider {self.provider!r} needs an engine; known engines: {known}"
                )
        else:
            _scan("engine", self.engine)
            _check_engine(self.provider, self.engine)
        _check_mount(self.mount)
        _check_path(self.path)
        _check_fragment(self.fragment)
        length = len(self.format())
        if length > MAX_URI_LENGTH:
            raise InvalidSecretURI(
                f"secret URI is {length} characters long in normal form; "
                f"the limit is {MAX_URI_LENGTH}"
            )
        return self

    @classmethod
    def parse(cls, raw: object) -> SecretURI:
        """Parse and normalise ``raw``; raise ``InvalidSecretURI`` for anything else."""
        if isinstance(raw, SecretURI):
            return raw
        text = _as_text(raw, "secret URI")
        scheme, separator, rest = text.partition(_SEPARATOR)
        if not separator:
            _scan("secret URI", text)
            raise InvalidSecretURI(
                "secret URI has no '://' (expected provider[+engine]://mount/path[#key])"
            )
        body, hash_sign, fragment = rest.partition("#")
        mount, _, path = body.partition("/")
        _scan("scheme", scheme)
        _scan("mount", mount)
        _scan("path", path)
        _scan("fragment", fragment)
        provider, engine = _resolve_scheme(scheme)
        return cls(
            provider=provider,
            engine=engine,
            mount=mount,
            path=path,
            fragment=fragment if hash_sign else None,
        )

    @property
    def scheme(self) -> str:
        """``provider+engine``, or just ``provider`` when it takes no engine."""
        return _format_scheme(self.provider, self.engine)

    @property
    def segments(self) -> tuple[str, ...]:
        """The path segments (the mount is not one of them)."""
        return tuple(self.path.split("/"))

    @property
    def mount_ref(self) -> str:
        """``scheme://mount``: what the tenant guard matches against allowed mounts."""
        return f"{self.scheme}{_SEPARATOR}{self.mount}"

    def format(self) -> str:
        """The canonical string; ``parse(uri.format()) == uri``."""
        text = f"{self.mount_ref}/{self.path}"
        if self.fragment is not None:
            text = f"{text}#{self.fragment}"
        return text

    def __str__(self) -> str:
        return self.format()

    def without_fragment(self) -> SecretURI:
        """The same secret as a whole, without a selected key."""
        if self.fragment is None:
            return self
        return self.model_copy(update={"fragment": None})

    def check_purpose(self, purpose: str) -> None:
        """Refuse unknown purposes, and a ``#key`` for purposes other than read and write."""
        known = [p.value for p in Purpose]
        # A plain str, so a Purpose member and its value behave (and print) alike.
        value = str.__str__(purpose) if isinstance(purpose, str) else None
        if value is None or value not in known:
            shown = "(not printable text)"
            if value is not None and value.isascii() and value.isprintable():
                shown = _excerpt(value)
            raise InvalidSecretURI(f"unknown purpose {shown}; known purposes: {', '.join(known)}")
        if self.fragment is not None and value not in FRAGMENT_PURPOSES:
            raise InvalidSecretURI(
                f"a fragment ('#key') selects one key and is only allowed for purposes "
                f"{' and '.join(sorted(FRAGMENT_PURPOSES))}, not {value!r}"
            )


def parse_secret_uri(raw: object) -> SecretURI:
    """Parse and normalise a secret URI (the same as :meth:`SecretURI.parse`)."""
    return SecretURI.parse(raw)


def parse_mount_ref(raw: object) -> tuple[str | None, str]:
    """Parse an allowed-mount entry: ``"secret"`` or ``"vault+kv2://secret"``.

    Returns ``(scheme, mount)`` with the scheme in normal form (``vault://``
    becomes ``vault+kv2``), or ``(None, mount)`` for a bare mount, which
    matches that mount under any provider.
    """
    text = _as_text(raw, "mount reference")
    scheme, separator, rest = text.partition(_SEPARATOR)
    if not separator:
        _check_mount(text)
        return None, text
    _scan("scheme", scheme)
    _scan("mount", rest)
    provider, engine = _resolve_scheme(scheme)
    if "/" in rest or "#" in rest:
        raise InvalidSecretURI(
            "mount reference names only a mount; found a path or fragment after it"
        )
    _check_mount(rest)
    return _format_scheme(provider, engine), rest
