"""``spec.delivery.containers`` as a boundary inside a pod, at creation and for ephemeral containers.

What goes in: grant ``db`` delivered only to container ``app``, and pods whose
other containers (``sidecar``, init and ephemeral containers) mount a volume
carrying its delivery Secret, under any volume name, or read it through
``env`` / ``envFrom``. What is asserted: the pure decision
(``secret_use.check_delivery_containers``), and that the validating webhook
(``PodAdmission.validate`` and ``validate_ephemeral``) refuses such pods with
``ContainerNotAllowed`` and audits refusals and allowed ephemeral uses.
"""

from __future__ import annotations

from typing import Any

import pytest

from secretgrants.admission import (
    ANNOTATION_GRANTS,
    ANNOTATION_RESERVATIONS,
    LABEL_INJECT,
    AdmissionDenied,
)
from secretgrants.audit import Auditor, MemorySink
from secretgrants.delivery import delivery_secret_name
from secretgrants.injection import grant_mount, injection_patch
from secretgrants.secret_use import (
    check_delivery_containers,
    delivery_containers,
    mounted_secrets,
    secret_users,
)
from secretgrants.webhook import PodAdmission
from tests.unit.test_admission_reads import NS, CountingStore, a_grant

SECRET = delivery_secret_name("db")
MOUNT = {"volumeMounts": [{"name": "sg-db", "mountPath": "/m"}]}
BY_ENV = {"env": [{"name": "P", "valueFrom": {"secretKeyRef": {"name": SECRET, "key": "k"}}}]}
BY_ENV_FROM = {"envFrom": [{"secretRef": {"name": SECRET}}]}


def restricted(*containers: str) -> dict[str, Any]:
    grant = a_grant()
    grant["spec"]["delivery"] = {"containers": list(containers)}
    return grant


def injected_pod(grant: dict[str, Any], sidecar: dict[str, Any] | None = None) -> dict[str, Any]:
    """A pod with containers ``app`` and ``sidecar`` as the mutating webhook leaves it
    (``db`` has no use limit: nothing was reserved)."""
    pod: dict[str, Any] = {
        "metadata": {
            "name": "p",
            "labels": {LABEL_INJECT: "true"},
            "annotations": {ANNOTATION_GRANTS: "db", ANNOTATION_RESERVATIONS: "db=abc"},
        },
        "spec": {
            "serviceAccountName": "app",
            "containers": [{"name": "app"}, {"name": "sidecar", **(sidecar or {})}],
        },
    }
    ops = injection_patch(pod, [grant_mount("db", grant, audience=None)], {})
    pod["spec"]["volumes"] = [op["value"] for op in ops if op["path"] == "/spec/volumes/-"]
    for op in ops:
        if op["path"].endswith("/volumeMounts/-"):
            index = int(op["path"].split("/")[3])
            pod["spec"]["containers"][index].setdefault("volumeMounts", []).append(op["value"])
    return pod


def refusal(grant: dict[str, Any], pod: dict[str, Any], **kw: Any) -> AdmissionDenied:
    with pytest.raises(AdmissionDenied) as err:
        check_delivery_containers("db", grant, SECRET, pod, **kw)
    assert err.value.reason == "ContainerNotAllowed" and err.value.grant == "db"
    assert err.value.code == 403
    return err.value


def test_the_mutating_webhook_mounts_only_the_listed_containers() -> None:
    pod = injected_pod(restricted("app"))
    app, sidecar = pod["spec"]["containers"]
    assert [m["name"] for m in app["volumeMounts"]] == ["sg-db"]
    assert "volumeMounts" not in sidecar
    check_delivery_containers("db", restricted("app"), SECRET, pod)  # as injected: allowed


def test_a_sidecar_mounting_the_injected_volume_is_refused_with_a_readable_message() -> None:
    denied = refusal(restricted("app"), injected_pod(restricted("app"), MOUNT))
    assert denied.message == (
        "container 'sidecar' may not mount volume 'sg-db': it carries the delivery Secret "
        "of SecretGrantRequest 'db', whose spec.delivery.containers allows only container 'app'"
    )


@pytest.mark.parametrize(
    "volume",
    [
        {"name": "mine", "secret": {"secretName": SECRET}},
        {
            "name": "mine",
            "projected": {"sources": [{"configMap": {"name": "c"}}, {"secret": {"name": SECRET}}]},
        },
    ],
    ids=["secret", "projected"],
)
def test_volumes_are_found_by_what_they_carry_not_by_name(volume: dict[str, Any]) -> None:
    grant = restricted("app")
    pod = injected_pod(grant, {"volumeMounts": [{"name": "mine", "mountPath": "/m"}]})
    pod["spec"]["volumes"].append(volume)
    assert "may not mount volume 'mine'" in refusal(grant, pod).message
    assert mounted_secrets(pod, [pod["spec"]["containers"][1]]) == {SECRET}
    assert secret_users(pod, pod["spec"]["containers"], SECRET) == ["app", "sidecar"]


@pytest.mark.parametrize("reads", [BY_ENV, BY_ENV_FROM], ids=["env", "envFrom"])
def test_a_sidecar_reading_the_delivery_secret_by_env_is_refused(reads: dict[str, Any]) -> None:
    denied = refusal(restricted("app", "web"), injected_pod(restricted("app"), reads))
    assert denied.message.startswith(
        f"container 'sidecar' may not read Secret {SECRET!r} through env or envFrom"
    )
    assert "allows only containers 'app', 'web'" in denied.message


def test_init_and_ephemeral_containers_of_a_new_pod_are_judged_too() -> None:
    grant = restricted("app")
    pod = injected_pod(grant)
    pod["spec"]["initContainers"] = [{"name": "setup", **MOUNT}]
    assert refusal(grant, pod).message.startswith("init container 'setup' may not mount")
    pod["spec"]["initContainers"] = []
    pod["spec"]["ephemeralContainers"] = [{"name": "dbg", **BY_ENV}]
    assert refusal(grant, pod).message.startswith("ephemeral container 'dbg' may not read")


def test_listed_containers_and_other_secrets_are_allowed() -> None:
    grant = restricted("app", "sidecar")
    check_delivery_containers("db", grant, SECRET, injected_pod(grant, {**MOUNT, **BY_ENV}))
    other = {"envFrom": [{"secretRef": {"name": "sg-other-12345678"}}], "volumeMounts": []}
    grant = restricted("app")
    check_delivery_containers("db", grant, SECRET, injected_pod(grant, other))


def test_a_grant_without_containers_allows_every_container() -> None:
    grant = a_grant()
    assert delivery_containers(grant) is None and delivery_containers(restricted("a")) == ("a",)
    check_delivery_containers("db", grant, SECRET, injected_pod(grant, {**MOUNT, **BY_ENV}))


def test_only_the_added_ephemeral_containers_are_judged_on_an_update() -> None:
    grant = restricted("app")
    pod = injected_pod(grant, MOUNT)  # the sidecar is not judged again here
    pod["spec"]["ephemeralContainers"] = [{"name": "dbg", **MOUNT}]
    check_delivery_containers("db", grant, SECRET, pod, added=[])
    added = pod["spec"]["ephemeralContainers"]
    assert refusal(grant, pod, added=added).message.startswith(
        "ephemeral container 'dbg' may not mount volume 'sg-db'"
    )
    # An ephemeral container the grant names may (names are unique within a pod).
    check_delivery_containers("db", restricted("app", "dbg"), SECRET, pod, added=added)


def audited(grant: dict[str, Any]) -> tuple[PodAdmission, MemorySink]:
    events = MemorySink()
    return PodAdmission(CountingStore(grant), audience=None, auditor=Auditor([events])), events


def records(events: MemorySink) -> list[tuple[str, str, str | None, str | None, str | None]]:
    return [(e.type, e.reason, e.grant_name, e.correlation_id, e.message) for e in events.events]


async def test_the_validating_webhook_refuses_a_pod_whose_sidecar_mounts_the_grant() -> None:
    grant = restricted("app")
    adm, events = audited(grant)
    await adm.validate(injected_pod(grant), NS, correlation_id="c0")
    with pytest.raises(AdmissionDenied) as err:
        await adm.validate(injected_pod(grant, MOUNT), NS, correlation_id="c1")
    assert err.value.reason == "ContainerNotAllowed" and "'sidecar'" in err.value.message
    with pytest.raises(AdmissionDenied):  # refused, and not audited: a dry run
        await adm.validate(injected_pod(grant, BY_ENV), NS, dry_run=True)
    assert records(events) == [("pod_denied", "ContainerNotAllowed", "db", "c1", None)]


def with_ephemeral(pod: dict[str, Any], *debug: dict[str, Any]) -> dict[str, Any]:
    new = {**pod, "spec": {**pod["spec"], "ephemeralContainers": list(debug)}}
    return new


async def test_an_ephemeral_container_outside_the_list_may_neither_mount_nor_read() -> None:
    grant = restricted("app")
    adm, events = audited(grant)
    pod = injected_pod(grant)
    for uses in (MOUNT, BY_ENV, BY_ENV_FROM):
        with pytest.raises(AdmissionDenied) as err:
            await adm.validate_ephemeral(
                with_ephemeral(pod, {"name": "dbg", **uses}), pod, NS, correlation_id="u"
            )
        assert err.value.reason == "ContainerNotAllowed"
        assert err.value.message.startswith("ephemeral container 'dbg' may not")
    await adm.validate_ephemeral(with_ephemeral(pod, {"name": "dbg"}), pod, NS)  # no use
    assert [r[:2] for r in records(events)] == [("pod_denied", "ContainerNotAllowed")] * 3


async def test_allowed_ephemeral_uses_are_audited_as_pod_admitted_except_on_dry_run() -> None:
    grant = a_grant()  # no delivery.containers: today's rules
    adm, events = audited(grant)
    pod = injected_pod(grant)
    mounts = with_ephemeral(pod, {"name": "dbg", **MOUNT}, {"name": "dbg2"})
    await adm.validate_ephemeral(mounts, pod, NS, correlation_id="u1")
    await adm.validate_ephemeral(
        with_ephemeral(pod, {"name": "dbg", **BY_ENV}), pod, NS, dry_run=True
    )
    await adm.validate_ephemeral(
        with_ephemeral(pod, {"name": "dbg", **BY_ENV}), pod, NS, correlation_id="u2"
    )
    await adm.validate_ephemeral(with_ephemeral(pod, {"name": "dbg"}), pod, NS, correlation_id="u3")
    assert records(events) == [
        (
            "pod_admitted",
            "EphemeralContainerAdmitted",
            "db",
            "u1",
            "ephemeral container 'dbg' uses its delivery Secret",
        ),
        (
            "pod_admitted",
            "EphemeralContainerAdmitted",
            "db",
            "u2",
            "ephemeral container 'dbg' uses its delivery Secret",
        ),
    ]
    assert all(
        e.pod == "p" and e.subject == f"system:serviceaccount:{NS}:app" for e in events.events
    )
