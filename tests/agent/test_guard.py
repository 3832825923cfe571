"""The pure rules behind the prune guards and the prune order: what counts as a mass prune, how
its share reads, whose objects a Namespace holds, and what is deleted first."""

from __future__ import annotations

from typing import Any

from fleetops.agent import guard, manifests, order

Key = manifests.Key


def test_max_prune_percent_zero_means_fifty_and_a_hundred_turns_the_hold_off() -> None:
    assert guard.max_prune_percent(0) == 50
    assert guard.MassPrune(would_delete=6, total=10, limit=guard.max_prune_percent(0)).held
    assert not guard.MassPrune(would_delete=5, total=10, limit=50).held  # strictly more
    assert not guard.MassPrune(would_delete=10, total=10, limit=guard.max_prune_percent(100)).held


def test_the_share_never_reads_as_equal_to_the_limit() -> None:
    assert guard.MassPrune(6, 10, 50).share() == "would delete 6 of 10 objects (60% > 50%)"
    assert guard.MassPrune(501, 1000, 50).share() == (
        "would delete 501 of 1000 objects (50.1% > 50%)"
    )


def test_the_reason_says_what_to_run() -> None:
    hub = guard.MassPrune(6, 10, 50).reason(app="web", cluster="prod-1")
    assert hub.endswith("allow with `fleetops-hub sync web --cluster prod-1 --allow-mass-prune`")
    local = guard.MassPrune(6, 10, 50).reason(app="web", cluster="")
    assert "`fleetops-agent apply ... --allow-mass-prune`" in local


def _obj(kind: str, name: str, uid: str, *, owner: str = "", api: str = "v1") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "ns", "uid": uid}
    if owner:
        meta["ownerReferences"] = [{"uid": owner, "kind": "X", "name": "x", "apiVersion": "v1"}]
    return {"apiVersion": api, "kind": kind, "metadata": meta}


def test_what_the_apps_objects_made_is_the_apps_and_an_unknown_owner_is_not() -> None:
    live = [
        _obj("Deployment", "web", "d1", api="apps/v1"),
        _obj("ReplicaSet", "web-1", "r1", owner="d1", api="apps/v1"),
        _obj("Pod", "web-1-a", "p1", owner="r1"),
        _obj("Pod", "from-an-operator", "p2", owner="someone-elses-uid"),
        _obj("ConfigMap", "kube-root-ca.crt", "c1"),
        _obj("ServiceAccount", "default", "s1"),
    ]
    blockers = guard.namespace_blockers(
        live,
        owned={Key(group="apps", kind="Deployment", namespace="ns", name="web")},
        pruned=[],
        vanished=set(),
        staying=set(),
    )
    assert blockers.foreign == (Key(group="", kind="Pod", namespace="ns", name="from-an-operator"),)


def test_dependents_of_an_object_just_pruned_or_of_a_vanished_owner_are_the_apps() -> None:
    live = [
        _obj("ReplicaSet", "web-1", "r1", owner="d1", api="apps/v1"),
        _obj("Pod", "web-2-a", "p1", owner="r2-collected-already"),
    ]
    pruned = [_obj("Deployment", "web", "d1", api="apps/v1")]
    blockers = guard.namespace_blockers(
        live, owned=set(), pruned=pruned, vanished={"r2-collected-already"}, staying=set()
    )
    assert not blockers


def test_claims_of_a_pruned_statefulset_are_the_apps_and_other_claims_are_not() -> None:
    sts = _obj("StatefulSet", "db", "s1", api="apps/v1")
    sts["spec"] = {"volumeClaimTemplates": [{"metadata": {"name": "data"}}]}
    live = [
        _obj("PersistentVolumeClaim", "data-db-0", "c1"),
        _obj("PersistentVolumeClaim", "data-db-x", "c2"),
    ]
    blockers = guard.namespace_blockers(
        live, owned=set(), pruned=[sts], vanished=set(), staying=set()
    )
    assert blockers.foreign == (
        Key(group="", kind="PersistentVolumeClaim", namespace="ns", name="data-db-x"),
    )


def test_prune_deletes_workloads_before_what_they_use_and_namespaces_last() -> None:
    keys = [
        Key(group="", kind="ConfigMap", namespace="a", name="settings"),
        Key(group="", kind="Namespace", namespace="", name="a"),
        Key(group="apps", kind="Deployment", namespace="a", name="web"),
        Key(group="", kind="Service", namespace="a", name="web"),
    ]
    assert [k.kind for k in order.prune_order(keys)] == [
        "Deployment",
        "Service",
        "ConfigMap",
        "Namespace",
    ]
