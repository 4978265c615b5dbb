# The policy of examples/policy/builtin-policy.yaml for Open Policy Agent (Rego v1).
#
# Ask it at POST /v1/data/secretgrants/authz/decision with
# {"input": <the AuthZEN request the operator sends>}
# (SECRETGRANTS_PDP=opa, SECRETGRANTS_OPA_PATH=secretgrants/authz/decision).
#
# Same semantics as the built-in engine: the first rule that matches decides,
# no match is a deny ("no rule matched"); `*` stays within a path segment,
# `**` crosses segments, `{a,b}` is either; a resource pattern without `#key`
# covers the whole secret and every key in it.
package secretgrants.authz

# The rules, in order; the same data as the YAML file.
rules := [
	{
		"name": "platform-admin-lifecycle",
		"subjects": [{"service_account": "secret-admin", "namespace": "platform", "tenant": "acme"}],
		"resources": ["vault+kv2://secret/**"],
		"purposes": ["delete", "undelete", "destroy_versions"],
		"effect": "permit",
		"obligations": {"ttl_seconds": 300, "max_uses": 1},
	},
	{
		"name": "no-destroy",
		"subjects": [{}],
		"resources": ["*://**"],
		"purposes": ["destroy_versions"],
		"effect": "deny",
	},
	{
		"name": "payments-read",
		"subjects": [{"service_account": "payments-*", "namespace": "payments", "tenant": "acme"}],
		"resources": ["vault+kv2://secret/payments/**"],
		"purposes": ["read", "read_metadata"],
		"effect": "permit",
		"obligations": {"ttl_seconds": 900, "max_uses": 20},
	},
	{
		"name": "payments-db-rotation",
		"subjects": [{"service_account": "payments-rotator", "namespace": "payments", "tenant": "acme"}],
		"resources": ["vault+kv2://secret/payments/db"],
		"purposes": ["write", "rotate"],
		"effect": "permit",
		"obligations": {"ttl_seconds": 300, "max_uses": 1},
	},
	{
		"name": "billing-shared-keys",
		"subjects": [{"namespace": "{billing,invoicing}", "tenant": "acme"}],
		"resources": ["openbao+kv2://kv/billing/shared#api_key"],
		"purposes": ["read"],
		"effect": "permit",
		"obligations": {"ttl_seconds": 600},
	},
	{
		"name": "ci-metadata",
		"subjects": [{"service_account": "ci-*"}],
		"resources": ["vault+kv2://secret/**", "openbao+kv2://kv/**"],
		"purposes": ["read_metadata"],
		"effect": "permit",
		"obligations": {"ttl_seconds": 60, "max_uses": 100},
	},
	{
		"name": "dev-sandbox",
		"subjects": [{"namespace": "dev-*"}],
		"resources": ["yaml://dev/**"],
		"purposes": ["*"],
		"effect": "permit",
		"obligations": {"ttl_seconds": 3600},
	},
]

default decision := {"allow": false, "obligations": {}, "reason": "no rule matched"}

decision := _decision_for(rules[min(matching)]) if {
	count(matching) > 0
}

# Indexes of the rules that match the input.
matching contains i if {
	some i, rule in rules
	_rule_matches(rule)
}

_delimiters := ["/", "#"]

# "system:serviceaccount:<namespace>:<name>" -> <name>
_sa_name := parts[3] if {
	parts := split(input.subject.id, ":")
	count(parts) == 4
	parts[0] == "system"
	parts[1] == "serviceaccount"
}

_base_uri := split(input.resource.id, "#")[0]

_rule_matches(rule) if {
	input.subject.type == "kubernetes_service_account"
	input.resource.type == "secret"
	_purpose_matches(rule)
	some subject in rule.subjects
	_subject_matches(subject)
	some pattern in rule.resources
	_resource_matches(pattern)
}

_purpose_matches(rule) if "*" in rule.purposes

_purpose_matches(rule) if input.action.name in rule.purposes

_subject_matches(m) if {
	glob.match(object.get(m, "service_account", "*"), _delimiters, _sa_name)
	glob.match(object.get(m, "namespace", "*"), _delimiters, input.subject.properties.namespace)
	_tenant_matches(m)
}

_tenant_matches(m) if object.get(m, "tenant", null) == null

_tenant_matches(m) if {
	is_string(input.subject.properties.tenant)
	glob.match(m.tenant, _delimiters, input.subject.properties.tenant)
}

_resource_matches(pattern) if {
	not contains(pattern, "#")
	glob.match(pattern, _delimiters, _base_uri)
}

_resource_matches(pattern) if {
	contains(pattern, "#")
	glob.match(pattern, _delimiters, input.resource.id)
}

_decision_for(rule) := d if {
	object.get(rule, "effect", "permit") == "permit"
	d := {
		"allow": true,
		"obligations": object.get(rule, "obligations", {}),
		"reason": sprintf("permitted by rule '%s'", [rule.name]),
	}
}

_decision_for(rule) := d if {
	rule.effect == "deny"
	d := {"allow": false, "obligations": {}, "reason": sprintf("denied by rule '%s'", [rule.name])}
}
