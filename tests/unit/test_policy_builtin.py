"""Tests of the built-in rule engine: matching, first match wins, default deny, rule file errors."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from secretgrants.policy import BuiltinPDP, BuiltinPolicy, PolicyFileError, build_pdp
from secretgrants.policy.builtin import compile_glob, match_resource
from secretgrants.policy.model import AccessRequest, Effect, Obligations, Resource, Subject
from secretgrants.policy.opa import OPAClient
from secretgrants.reasons import Purpose
from secretgrants.settings import PDPKind, Settings
from secretgrants.uri import parse_secret_uri

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "policy" / "builtin-policy.yaml"


def ask(
    uri: str,
    purpose: str = "read",
    *,
    namespace: str = "payments",
    sa: str = "payments-api",
    tenant: str | None = "acme",
) -> AccessRequest:
    return AccessRequest(
        subject=Subject(namespace=namespace, service_account=sa, tenant=tenant),
        resource=Resource.from_uri(uri),
        purpose=Purpose(purpose),
    )


POLICY = """
rules:
  - name: deny-legacy
    effect: deny
    subjects: [{}]
    resources: ["vault://secret/payments/legacy/**"]
    purposes: ["*"]
  - name: payments-read
    subjects:
      - service_account: "payments-*"
        namespace: payments
        tenant: acme
    resources: ["vault://secret/payments/**"]
    purposes: [read, read_metadata]
    obligations: {ttl_seconds: 300, max_uses: 5}
  - name: everything-read-metadata
    subjects: [{namespace: "*"}]
    resources: ["*://**"]
    purposes: [read_metadata]
    obligations: {ttl_seconds: 30, extra: {audit: full}}
"""


@pytest.fixture
def policy() -> BuiltinPolicy:
    return BuiltinPolicy.from_yaml(POLICY)


# ------------------------------------------------------------ decisions


def test_permit_names_the_rule_and_carries_obligations(policy: BuiltinPolicy) -> None:
    d = policy.decide(ask("vault://secret/payments/db#password"))
    assert d.effect is Effect.PERMIT
    assert d.reason == "permitted by rule 'payments-read'"
    assert d.obligations == Obligations(ttl_seconds=300, max_uses=5)
    assert d.pdp_kind == "builtin"
    uuid.UUID(d.decision_id)


def test_first_match_wins(policy: BuiltinPolicy) -> None:
    # payments-read would permit it, but deny-legacy comes first
    d = policy.decide(ask("vault://secret/payments/legacy/db"))
    assert d.effect is Effect.DENY and d.reason == "denied by rule 'deny-legacy'"
    assert d.obligations == Obligations()
    # read_metadata by payments-api: payments-read comes before everything-read-metadata
    d = policy.decide(ask("vault://secret/payments/db", "read_metadata"))
    assert d.reason == "permitted by rule 'payments-read'"
    # another namespace falls through to the last rule
    d = policy.decide(ask("vault://secret/payments/db", "read_metadata", namespace="other"))
    assert d.reason == "permitted by rule 'everything-read-metadata'"
    assert d.obligations == Obligations(ttl_seconds=30, extra={"audit": "full"})


@pytest.mark.parametrize(
    "request_",
    [
        ask("vault://secret/payments/db", "write"),  # purpose not listed
        ask("vault://secret/billing/db"),  # resource
        ask("openbao://secret/payments/db"),  # provider
        ask("vault://secret/payments/db", sa="billing-api"),  # service account
        ask("vault://secret/payments/db", namespace="billing"),  # namespace
        ask("vault://secret/payments/db", tenant="globex"),  # tenant
        ask("vault://secret/payments/db", tenant=None),  # no tenant where one is required
    ],
    ids=["purpose", "resource", "provider", "sa", "namespace", "tenant", "no-tenant"],
)
def test_default_deny(policy: BuiltinPolicy, request_: AccessRequest) -> None:
    d = policy.decide(request_)
    assert d.effect is Effect.DENY
    assert d.reason == "no rule matched"
    assert not d.retryable


def test_empty_policy_denies_everything() -> None:
    d = BuiltinPolicy().decide(ask("vault://secret/a"))
    assert d.effect is Effect.DENY and d.reason == "no rule matched"
    assert BuiltinPolicy.from_yaml("rules: []").rules == []


def test_decision_ids_are_fresh(policy: BuiltinPolicy) -> None:
    ids = {policy.decide(ask("vault://secret/payments/db")).decision_id for _ in range(20)}
    assert len(ids) == 20


# ------------------------------------------------------------ globs


@pytest.mark.parametrize(
    ("pattern", "uri", "matches"),
    [
        ("vault+kv2://secret/payments/*", "vault://secret/payments/db", True),
        ("vault+kv2://secret/payments/*", "vault://secret/payments/db#password", True),
        ("vault+kv2://secret/payments/*", "vault://secret/payments/a/b", False),
        ("vault+kv2://secret/payments/**", "vault://secret/payments/a/b", True),
        ("vault+kv2://secret/payments/**", "vault://secret/payments", False),
        ("vault+kv2://secret/payments/db", "vault://secret/payments/db#password", True),
        ("vault+kv2://secret/payments/db#password", "vault://secret/payments/db#password", True),
        ("vault+kv2://secret/payments/db#password", "vault://secret/payments/db#user", False),
        ("vault+kv2://secret/payments/db#password", "vault://secret/payments/db", False),
        ("vault+kv2://secret/payments/db#*", "vault://secret/payments/db#user", True),
        ("vault+kv2://secret/payments/db#*", "vault://secret/payments/db", False),
        ("vault+kv2://secret/p?y/x", "vault://secret/pay/x", True),
        ("vault+kv2://secret/p?y/x", "vault://secret/p/y/x", False),
        ("vault+kv2://secret/{a,b}/x", "vault://secret/b/x", True),
        ("vault+kv2://secret/{a,b}/x", "vault://secret/c/x", False),
        ("vault+kv2://secret/a,b/x", "vault://secret/a,b/x", True),
        ("*://secret/x", "openbao://secret/x", True),
        ("*://secret/x", "yaml://secret/x", True),
        ("vault+kv2://secret/x", "openbao://secret/x", False),
        ("vault+kv2://Secret/x", "vault://secret/x", False),  # case-sensitive mount
        ("vault+kv2://secret/a.b", "vault://secret/aXb", False),  # '.' is literal
    ],
)
def test_resource_globs(pattern: str, uri: str, matches: bool) -> None:
    rule = BuiltinPolicy.model_validate(
        {"rules": [{"name": "r", "subjects": [{}], "resources": [pattern], "purposes": ["*"]}]}
    ).rules[0]
    assert match_resource(rule.resources[0], parse_secret_uri(uri)) is matches


def test_resource_scheme_is_normalised() -> None:
    policy = BuiltinPolicy.from_yaml(
        "rules: [{name: r, subjects: [{}], resources: ['VAULT://secret/a'], purposes: [read]}]"
    )
    assert policy.rules[0].resources == ["vault+kv2://secret/a"]
    assert policy.decide(ask("vault+kv2://secret/a")).effect is Effect.PERMIT


@pytest.mark.parametrize(
    ("matcher", "namespace", "sa", "tenant", "matches"),
    [
        ({}, "any", "any", None, True),
        ({"service_account": "api-*"}, "ns", "api-1", None, True),
        ({"service_account": "api-*"}, "ns", "web-1", None, False),
        ({"namespace": "team-?"}, "team-a", "sa", None, True),
        ({"namespace": "{a,b}"}, "b", "sa", None, True),
        ({"tenant": "acme"}, "ns", "sa", "acme", True),
        ({"tenant": "acme"}, "ns", "sa", "globex", False),
        ({"tenant": "*"}, "ns", "sa", None, False),
        ({"tenant": "ac*"}, "ns", "sa", "acme", True),
    ],
)
def test_subject_matchers(
    matcher: dict[str, str], namespace: str, sa: str, tenant: str | None, matches: bool
) -> None:
    policy = BuiltinPolicy.model_validate(
        {
            "rules": [
                {"name": "r", "subjects": [matcher], "resources": ["*://**"], "purposes": ["*"]}
            ]
        }
    )
    d = policy.decide(ask("vault://secret/a", namespace=namespace, sa=sa, tenant=tenant))
    assert d.permitted is matches


def test_glob_compiler() -> None:
    assert compile_glob("a*b").fullmatch("axxb")
    assert not compile_glob("a*b").fullmatch("a/b")
    assert compile_glob("a**b").fullmatch("a/x/b")
    for bad in ("a[b]", "a\\b", "{a,{b}}", "a}", "{a", "a b", "a%2Fb", "é"):
        with pytest.raises(ValueError, match="glob"):
            compile_glob(bad)


# ------------------------------------------------------------ bad rule files


@pytest.mark.parametrize(
    ("text", "messages"),
    [
        (
            "rules: [{name: r1, resources: ['vault://s/a'], purposes: [read]}]",
            ["rule 'r1' (rules[0]) subjects: Field required"],
        ),
        (
            "rules: [{name: r1, subjects: [], resources: ['vault://s/a'], purposes: [read]}]",
            ["rule 'r1' (rules[0]) subjects: List should have at least 1 item"],
        ),
        (
            "rules: [{name: r1, subjects: [{}], resources: ['vault://s/a'], purposes: [peek]}]",
            ["rule 'r1' (rules[0]) purposes[0]: unknown purpose 'peek'", "read_metadata"],
        ),
        (
            "rules: [{name: ok, subjects: [{}], resources: ['*://**'], purposes: [read]},"
            " {name: r2, subjects: [{}], resources: ['secret/a'], purposes: [read]}]",
            ["rule 'r2' (rules[1]) resources[0]: resource pattern 'secret/a' has no '://'"],
        ),
        (
            "rules: [{name: r1, subjects: [{}], resources: ['mongo://s/a'], purposes: [read]}]",
            ["resources[0]", "unknown provider 'mongo'"],
        ),
        (
            "rules: [{name: r1, subjects: [{}], resources: ['vault://s/[ab]'], purposes: [read]}]",
            ["resources[0]", "'[' is not allowed"],
        ),
        (
            "rules: [{name: r1, subjects: [{serviceAccount: x}], resources: ['*://**'],"
            " purposes: [read]}]",
            ["rule 'r1' (rules[0]) subjects[0].serviceAccount: Extra inputs are not permitted"],
        ),
        (
            "rules: [{name: r1, subjects: [{}], resources: ['*://**'], purposes: [read],"
            " obligations: {ttl_second: 5}}]",
            ["obligations.ttl_second: Extra inputs are not permitted"],
        ),
        (
            "rules: [{name: r1, subjects: [{}], resources: ['*://**'], purposes: [read],"
            " obligations: {ttl_seconds: 0}}]",
            ["obligations.ttl_seconds: Input should be greater than 0"],
        ),
        (
            "rules: [{name: r1, effect: deny, subjects: [{}], resources: ['*://**'],"
            " purposes: [read], obligations: {ttl_seconds: 5}}]",
            ["rule 'r1' (rules[0]): a deny rule takes no obligations"],
        ),
        (
            "rules: [{name: r1, effect: maybe, subjects: [{}], resources: ['*://**'],"
            " purposes: [read]}]",
            ["rule 'r1' (rules[0]) effect: Input should be 'permit' or 'deny'"],
        ),
        (
            "rules: [{name: r1, subjects: [{}], resources: ['*://**'], purposes: [read]},"
            " {name: r1, subjects: [{}], resources: ['*://**'], purposes: [read]}]",
            ["two rules are named 'r1'"],
        ),
        (
            "rules: [{name: 'has space', subjects: [{}], resources: ['*://**'], purposes: [read]}]",
            ["rule 'has space' (rules[0]) name: String should match pattern"],
        ),
        ("rules: [{subjects: [{}]}]", ["rules[0] name: Field required"]),
        ("version: 2\nrules: []", ["version: Input should be 1"]),
        ("rule: []", ["rule: Extra inputs are not permitted"]),
        ("", ["the policy is empty"]),
        ("- a\n- b", ["must be a mapping"]),
        ("rules: [unclosed", ["not valid YAML", "line"]),
        ("rules: {a: 1}", ["rules: Input should be a valid list"]),
    ],
)
def test_bad_rule_files_give_clear_errors(text: str, messages: list[str]) -> None:
    with pytest.raises(PolicyFileError) as info:
        BuiltinPolicy.from_yaml(text, source="policy.yaml")
    message = str(info.value)
    assert message.startswith("policy.yaml: ")
    for expected in messages:
        assert expected in message, message


def test_every_problem_is_listed() -> None:
    text = (
        "rules: [{name: a, subjects: [], resources: ['x'], purposes: [peek]},"
        " {name: b, subjects: [{}], resources: ['*://**'], purposes: []}]"
    )
    with pytest.raises(PolicyFileError) as info:
        BuiltinPolicy.from_yaml(text)
    message = str(info.value)
    assert "(4 problems)" in message
    for part in ("rule 'a' (rules[0]) subjects", "resources[0]", "purposes[0]", "rule 'b'"):
        assert part in message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyFileError, match="cannot read the policy file"):
        BuiltinPolicy.from_file(tmp_path / "absent.yaml")


# ------------------------------------------------------------ the PDP, the example, build_pdp


def test_example_policy_loads_and_decides() -> None:
    policy = BuiltinPolicy.from_file(EXAMPLE)
    assert [r.name for r in policy.rules][:2] == ["platform-admin-lifecycle", "no-destroy"]
    admin = dict(namespace="platform", sa="secret-admin")
    assert policy.decide(ask("vault://secret/x", "destroy_versions", **admin)).permitted
    d = policy.decide(ask("vault://secret/payments/db", "destroy_versions"))
    assert d.reason == "denied by rule 'no-destroy'"
    d = policy.decide(ask("vault://secret/payments/db#password"))
    assert d.reason == "permitted by rule 'payments-read'"
    d = policy.decide(ask("openbao://kv/billing/shared#api_key", namespace="invoicing", sa="x"))
    assert d.reason == "permitted by rule 'billing-shared-keys'"
    d = policy.decide(ask("openbao://kv/billing/shared", namespace="invoicing", sa="x"))
    assert d.reason == "no rule matched"


async def test_builtin_pdp(tmp_path: Path) -> None:
    file = tmp_path / "policy.yaml"
    file.write_text(POLICY)
    pdp = BuiltinPDP.from_file(file)
    assert pdp.kind == "builtin"
    d = await pdp.evaluate(ask("vault://secret/payments/db"))
    assert d.permitted
    many = await pdp.evaluate_many([ask("vault://secret/payments/db"), ask("vault://x/y")])
    assert [m.permitted for m in many] == [True, False]
    file.write_text("rules: []")
    pdp.reload()
    assert not (await pdp.evaluate(ask("vault://secret/payments/db"))).permitted
    file.write_text("rules: [oops")
    with pytest.raises(PolicyFileError):
        pdp.reload()
    assert pdp.policy.rules == []  # the rules in force stay
    await pdp.close()


def test_build_pdp(tmp_path: Path) -> None:
    builtin = build_pdp(Settings(pdp_kind=PDPKind.BUILTIN, policy_file=EXAMPLE))
    assert isinstance(builtin, BuiltinPDP) and builtin.kind == "builtin"
    assert build_pdp(Settings(pdp_kind=PDPKind.BUILTIN)).kind == "builtin"
    authzen = build_pdp(Settings(pdp_kind=PDPKind.AUTHZEN, pdp_url="http://pdp:8181"))
    assert authzen.kind == "authzen"
    opa = build_pdp(
        Settings(pdp_kind=PDPKind.OPA, pdp_url="http://opa:8181", pdp_timeout_seconds=1)
    )
    assert isinstance(opa, OPAClient)
    assert opa.endpoint == "http://opa:8181/v1/data/secretgrants/authz"
    assert opa.http.options.timeout == 1
    with pytest.raises(ValueError, match="SECRETGRANTS_PDP_URL"):
        build_pdp(Settings(pdp_kind=PDPKind.OPA))
    with pytest.raises(PolicyFileError):
        build_pdp(Settings(pdp_kind=PDPKind.BUILTIN, policy_file=tmp_path / "absent.yaml"))
