"""The built-in PDP: ordered rules from a YAML document; first match wins; default deny.

::

    version: 1                      # optional
    rules:
      - name: payments-read         # letters, digits, '.', '_', '-'; unique
        description: ...            # optional
        subjects:                   # any one of these (at least one)
          - service_account: "payments-*"   # glob; default "*"
            namespace: payments             # glob; default "*"
            tenant: acme                    # glob; default: any tenant, or none
        resources:                  # canonical URI globs (at least one)
          - "vault+kv2://secret/payments/*"
        purposes: [read, read_metadata]     # or ["*"]
        effect: permit              # or deny; default permit
        obligations:                # permit rules only
          ttl_seconds: 300
          max_uses: 10
          extra: {}                 # other obligations, passed on as they are

Globs: ``*`` matches within one path segment (never ``/`` or ``#``), ``**``
across segments, ``?`` one character, ``{a,b}`` either alternative; anything
else is literal. A resource pattern's scheme is normalised like a URI's
(``vault://`` is ``vault+kv2://``). A pattern without ``#`` matches the whole
secret and any key in it (``.../db`` matches ``.../db#password``); a pattern
with ``#`` matches selected keys only. These are the semantics of OPA's
``glob.match(pattern, ["/", "#"], uri)``, so a Rego policy can mirror a rule
file exactly (``examples/policy/secretgrants.rego``).

A request no rule matches is denied with reason ``no rule matched``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    ValidationError,
    model_validator,
)

from secretgrants.errors import SecretGrantsError
from secretgrants.policy.base import FailClosedPDP, new_decision_id
from secretgrants.policy.model import AccessRequest, Decision, Effect, Obligations
from secretgrants.reasons import Purpose
from secretgrants.uri import SecretURI, parse_mount_ref

__all__ = [
    "NO_RULE_MATCHED",
    "BuiltinPDP",
    "BuiltinPolicy",
    "PolicyFileError",
    "Rule",
    "RuleObligations",
    "SubjectMatcher",
    "compile_glob",
    "match_resource",
]

NO_RULE_MATCHED: Final = "no rule matched"
_ANY_PURPOSE: Final = "*"
_GLOB_SPECIALS: Final = frozenset("*?{},")
_FORBIDDEN: Final = frozenset("[]\\%")


class PolicyFileError(ValueError):
    """A policy document that cannot be used; the message names the rule and the field."""


@lru_cache(maxsize=4096)
def compile_glob(pattern: str) -> re.Pattern[str]:
    """Compile a glob (``*``, ``**``, ``?``, ``{a,b}``) to a regex for ``fullmatch``."""
    out: list[str] = []
    in_alternatives = False
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "*":
            if pattern.startswith("**", i):
                out.append("[^#]*")
                i += 2
                continue
            out.append("[^/#]*")
        elif ch == "?":
            out.append("[^/#]")
        elif ch == "{":
            if in_alternatives:
                raise ValueError(f"glob {pattern!r}: '{{' inside '{{...}}' is not supported")
            in_alternatives = True
            out.append("(?:")
        elif ch == "}":
            if not in_alternatives:
                raise ValueError(f"glob {pattern!r}: '}}' without '{{'")
            in_alternatives = False
            out.append(")")
        elif ch == "," and in_alternatives:
            out.append("|")
        elif ch in _FORBIDDEN or not ch.isascii() or not ch.isprintable() or ch.isspace():
            raise ValueError(f"glob {pattern!r}: character {ch!r} is not allowed")
        else:
            out.append(re.escape(ch))
        i += 1
    if in_alternatives:
        raise ValueError(f"glob {pattern!r}: '{{' is never closed")
    return re.compile("".join(out))


def _name_glob(pattern: str) -> str:
    if not pattern:
        raise ValueError("must not be empty")
    compile_glob(pattern)
    return pattern


def _resource_pattern(pattern: str) -> str:
    scheme, sep, rest = pattern.partition("://")
    if not sep:
        raise ValueError(
            f"resource pattern {pattern!r} has no '://' "
            "(expected provider[+engine]://mount/path, e.g. vault+kv2://secret/payments/*)"
        )
    if not rest:
        raise ValueError(f"resource pattern {pattern!r} has nothing after '://'")
    if rest.count("#") > 1:
        raise ValueError(f"resource pattern {pattern!r} has more than one '#'")
    if _GLOB_SPECIALS & set(scheme):
        scheme = scheme.lower()
    else:
        try:
            normal, _ = parse_mount_ref(f"{scheme}://x")
        except SecretGrantsError as exc:
            raise ValueError(f"resource pattern {pattern!r}: {exc.message}") from None
        assert normal is not None
        scheme = normal
    normalised = f"{scheme}://{rest}"
    compile_glob(normalised)
    return normalised


def _purpose(value: str) -> str:
    known = [p.value for p in Purpose]
    if value != _ANY_PURPOSE and value not in known:
        raise ValueError(f"unknown purpose {value!r}; known purposes: {', '.join(known)} or '*'")
    return value


NameGlob = Annotated[str, AfterValidator(_name_glob)]
ResourcePattern = Annotated[str, AfterValidator(_resource_pattern)]
PurposeName = Annotated[str, AfterValidator(_purpose)]


def match_resource(pattern: str, uri: SecretURI) -> bool:
    """Does a (normalised) resource pattern match ``uri``? See the module docstring."""
    target = uri.format() if "#" in pattern else uri.without_fragment().format()
    return compile_glob(pattern).fullmatch(target) is not None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SubjectMatcher(_Strict):
    """Which ServiceAccounts a rule is for; every field given must match."""

    service_account: NameGlob = "*"
    namespace: NameGlob = "*"
    tenant: NameGlob | None = None

    def matches(self, request: AccessRequest) -> bool:
        subject = request.subject
        if compile_glob(self.service_account).fullmatch(subject.service_account) is None:
            return False
        if compile_glob(self.namespace).fullmatch(subject.namespace) is None:
            return False
        if self.tenant is None:
            return True
        return subject.tenant is not None and (
            compile_glob(self.tenant).fullmatch(subject.tenant) is not None
        )


class RuleObligations(_Strict):
    ttl_seconds: PositiveInt | None = None
    max_uses: PositiveInt | None = None
    extra: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _no_shadowing(self) -> RuleObligations:
        shadowed = sorted({"ttl_seconds", "max_uses"} & set(self.extra))
        if shadowed:
            raise ValueError(f"extra obligations may not redefine {', '.join(shadowed)}")
        return self


class Rule(_Strict):
    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    description: str | None = None
    subjects: list[SubjectMatcher] = Field(min_length=1)
    resources: list[ResourcePattern] = Field(min_length=1)
    purposes: list[PurposeName] = Field(min_length=1)
    effect: Effect = Effect.PERMIT
    obligations: RuleObligations = Field(default_factory=RuleObligations)

    @model_validator(mode="after")
    def _deny_has_no_obligations(self) -> Rule:
        if self.effect is Effect.DENY and self.obligations != RuleObligations():
            raise ValueError("a deny rule takes no obligations")
        return self

    def matches(self, request: AccessRequest) -> bool:
        if _ANY_PURPOSE not in self.purposes and request.purpose.value not in self.purposes:
            return False
        if not any(m.matches(request) for m in self.subjects):
            return False
        uri = request.resource.uri
        return any(match_resource(p, uri) for p in self.resources)


class BuiltinPolicy(_Strict):
    """A validated rule document. Build with :meth:`from_yaml` or :meth:`from_file`."""

    version: Literal[1] = 1
    rules: list[Rule] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_names(self) -> BuiltinPolicy:
        seen: set[str] = set()
        for rule in self.rules:
            if rule.name in seen:
                raise ValueError(f"two rules are named {rule.name!r}; rule names must be unique")
            seen.add(rule.name)
        return self

    @classmethod
    def from_yaml(cls, text: str, *, source: str = "<policy>") -> BuiltinPolicy:
        """Parse and validate a policy document; raise :class:`PolicyFileError`."""
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise PolicyFileError(f"{source}: not valid YAML: {exc}") from None
        if data is None:
            raise PolicyFileError(f"{source}: the policy is empty (expected a 'rules:' list)")
        if not isinstance(data, Mapping):
            raise PolicyFileError(f"{source}: the policy must be a mapping with a 'rules:' list")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise PolicyFileError(_describe(exc, data, source)) from None

    @classmethod
    def from_file(cls, path: str | Path) -> BuiltinPolicy:
        file = Path(path)
        try:
            text = file.read_text(encoding="utf-8")
        except OSError as exc:
            raise PolicyFileError(f"{file}: cannot read the policy file: {exc.strerror}") from None
        return cls.from_yaml(text, source=str(file))

    def rule_for(self, request: AccessRequest) -> Rule | None:
        """The first rule that matches, if any."""
        for rule in self.rules:
            if rule.matches(request):
                return rule
        return None

    def decide(self, request: AccessRequest, *, kind: str = "builtin") -> Decision:
        rule = self.rule_for(request)
        if rule is None:
            return Decision(
                decision_id=new_decision_id(),
                effect=Effect.DENY,
                reason=NO_RULE_MATCHED,
                pdp_kind=kind,
            )
        if rule.effect is Effect.DENY:
            return Decision(
                decision_id=new_decision_id(),
                effect=Effect.DENY,
                reason=f"denied by rule {rule.name!r}",
                pdp_kind=kind,
            )
        return Decision(
            decision_id=new_decision_id(),
            effect=Effect.PERMIT,
            reason=f"permitted by rule {rule.name!r}",
            pdp_kind=kind,
            obligations=Obligations(
                ttl_seconds=rule.obligations.ttl_seconds,
                max_uses=rule.obligations.max_uses,
                extra=dict(rule.obligations.extra),
            ),
        )


def _describe(exc: ValidationError, data: Mapping[str, Any], source: str) -> str:
    """Validation errors as lines naming the rule (by name and index) and the field."""
    rules = data.get("rules")
    lines: list[str] = []
    for err in exc.errors(include_url=False, include_input=False):
        loc: Sequence[int | str] = err["loc"]
        msg = str(err["msg"]).removeprefix("Value error, ")
        where = ""
        if len(loc) >= 2 and loc[0] == "rules" and isinstance(loc[1], int):
            index = loc[1]
            name = None
            if isinstance(rules, list) and index < len(rules) and isinstance(rules[index], Mapping):
                raw_name = rules[index].get("name")
                name = raw_name if isinstance(raw_name, str) else None
            where = f"rule {name!r} (rules[{index}])" if name else f"rules[{index}]"
            rest = _path(loc[2:])
            if rest:
                where = f"{where} {rest}"
        else:
            where = _path(loc) or "policy"
        lines.append(f"{where}: {msg}")
    count = len(lines)
    head = f"{source}: invalid policy ({count} problem{'s' if count != 1 else ''})"
    return "\n  ".join([head, *lines])


def _path(loc: Sequence[int | str]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


class BuiltinPDP(FailClosedPDP):
    """The built-in rules as a :class:`~secretgrants.policy.base.PolicyDecisionPoint`."""

    kind = "builtin"

    def __init__(self, policy: BuiltinPolicy, *, path: Path | None = None) -> None:
        self.policy = policy
        self.path = path

    @classmethod
    def from_file(cls, path: str | Path) -> BuiltinPDP:
        return cls(BuiltinPolicy.from_file(path), path=Path(path))

    @classmethod
    def from_yaml(cls, text: str) -> BuiltinPDP:
        return cls(BuiltinPolicy.from_yaml(text))

    def reload(self) -> None:
        """Read the policy file again; on error keep the rules in force and raise."""
        if self.path is None:
            raise ValueError("this built-in PDP was not loaded from a file")
        self.policy = BuiltinPolicy.from_file(self.path)

    async def _evaluate(self, request: AccessRequest) -> Decision:
        return self.policy.decide(request, kind=self.kind)
