"""Sync hooks against a real cluster (issue 13): PreSync before the objects, PostSync after they
are healthy, Helm test hooks never applied, a failing PreSync stops the sync and runs SyncFail,
a new revision re-runs an immutable Job, hooks are never pruned nor re-run by a resync. Each
test works in its own namespace of cluster c1; Jobs complete (or miss their deadline) through
the cluster's real job controller and kwok's fake node."""

from __future__ import annotations

import datetime
from typing import Any

from fleetops.agent import kube, reconcile
from fleetops.agent import status as st
from tests.agent.conftest import BundleFactory
from tests.agent.objects import configmap, deployment, namespace, policy

CM = kube.ResourceType(
    group="", version="v1", kind="ConfigMap", plural="configmaps", namespaced=True
)
POD = kube.ResourceType(group="", version="v1", kind="Pod", plural="pods", namespaced=True)
JOB = kube.ResourceType(group="batch", version="v1", kind="Job", plural="jobs", namespaced=True)
DEPLOY = kube.ResourceType(
    group="apps", version="v1", kind="Deployment", plural="deployments", namespaced=True
)


def hooked(obj: dict[str, Any], **annotations: str) -> dict[str, Any]:
    obj["metadata"].setdefault("annotations", {}).update(annotations)
    return obj


def job(
    name: str, *, image: str = "registry.local/migrate:1", fail: bool = False
) -> dict[str, Any]:
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [{"name": "migrate", "image": image}],
    }
    spec: dict[str, Any] = {"backoffLimit": 0, "template": {"spec": pod}}
    if fail:  # its pod can never be scheduled, so the job controller fails it at the deadline
        pod["nodeSelector"] = {"fleetops.test/no-such-node": "true"}
        spec["activeDeadlineSeconds"] = 1
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name}, "spec": spec}


def presync(obj: dict[str, Any]) -> dict[str, Any]:
    return hooked(obj, **{"argocd.argoproj.io/hook": "PreSync"})


def by_name(result: st.AppResult) -> dict[str, st.ResourceResult]:
    return {r.key.name: r for r in result.resources}


def when(stamp: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(c for c in obj["status"]["conditions"] if c["type"] == kind)


async def test_presync_runs_before_the_objects_and_postsync_after_they_are_healthy(
    cluster: kube.Kube,
    reconciler: reconcile.Reconciler,
    make_bundle: BundleFactory,
    unique_name: str,
) -> None:
    ns = unique_name
    smoke = hooked(configmap("smoke"), **{"helm.sh/hook": "post-install,post-upgrade"})
    on_fail = hooked(configmap("on-fail"), **{"argocd.argoproj.io/hook": "SyncFail"})
    result = await reconciler.sync(
        make_bundle(namespace(ns), presync(job("migrate")), deployment("web"), smoke, on_fail),
        policy(),
    )
    assert result.sync == st.SYNCED, result.reason
    assert await cluster.get(CM, namespace=ns, name="on-fail") is None, "SyncFail ran on success"
    got = by_name(result)
    assert got["migrate"].hook == "PreSync" and "succeeded" in got["migrate"].message
    assert got["smoke"].hook == "PostSync"
    report = st.to_report(result)
    assert {r.ref.name: r.hook for r in report.resources} == {
        ns: "",
        "migrate": "PreSync",
        "web": "",
        "smoke": "PostSync",
        "on-fail": "SyncFail",
    }

    migrate = await cluster.get(JOB, namespace=ns, name="migrate")
    web = await cluster.get(DEPLOY, namespace=ns, name="web")
    posted = await cluster.get(CM, namespace=ns, name="smoke")
    assert migrate is not None and web is not None and posted is not None
    assert when(migrate["status"]["completionTime"]) <= when(
        web["metadata"]["creationTimestamp"]
    ), "the Deployment was created before the PreSync migration finished"
    available = condition(web, "Available")
    assert available["status"] == "True"
    assert when(available["lastTransitionTime"]) <= when(posted["metadata"]["creationTimestamp"]), (
        "the PostSync hook ran before the Deployment was healthy"
    )


async def test_a_helm_test_pod_is_never_created(
    cluster: kube.Kube,
    reconciler: reconcile.Reconciler,
    make_bundle: BundleFactory,
    unique_name: str,
) -> None:
    ns = unique_name
    test_pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web-test", "annotations": {"helm.sh/hook": "test"}},
        "spec": {"containers": [{"name": "t", "image": "registry.local/curl:1"}]},
    }
    skip = hooked(configmap("skipped"), **{"argocd.argoproj.io/hook": "Skip"})
    result = await reconciler.sync(
        make_bundle(namespace(ns), configmap("a"), test_pod, skip), policy()
    )
    assert result.sync == st.SYNCED, result.reason
    assert await cluster.get(POD, namespace=ns, name="web-test") is None
    assert await cluster.get(CM, namespace=ns, name="skipped") is None
    assert await cluster.get(CM, namespace=ns, name="a") is not None
    got = by_name(result)
    assert got["web-test"].action == "not applied" and "helm test" in got["web-test"].message
    assert got["skipped"].action == "not applied"


async def test_a_failing_presync_hook_stops_the_sync_and_runs_syncfail(
    cluster: kube.Kube,
    reconciler: reconcile.Reconciler,
    make_bundle: BundleFactory,
    unique_name: str,
) -> None:
    ns = unique_name
    first = await reconciler.sync(make_bundle(namespace(ns), configmap("old")), policy())
    assert first.sync == st.SYNCED, first.reason

    on_fail = hooked(configmap("on-fail"), **{"argocd.argoproj.io/hook": "SyncFail"})
    result = await reconciler.sync(
        make_bundle(
            namespace(ns),
            presync(job("migrate", fail=True)),
            deployment("web"),
            on_fail,
            revision="r2",
        ),
        policy(max_prune_percent=100),
    )
    assert result.sync == st.APPLY_FAILED
    assert result.reason.startswith(f"PreSync hook Job.batch {ns}/migrate failed: "), result.reason
    assert "deadline" in result.reason, "the report does not say why the Job failed"
    assert await cluster.get(DEPLOY, namespace=ns, name="web") is None, (
        "the Deployment was applied after its PreSync hook failed"
    )
    assert await cluster.get(CM, namespace=ns, name="old") is not None, (
        "a failed sync pruned what left the bundle"
    )
    assert await cluster.get(CM, namespace=ns, name="on-fail") is not None, "SyncFail did not run"
    got = by_name(result)
    assert got["web"].action == "skipped" and "PreSync hook" in got["web"].message
    assert got["old"].action == "kept"
    assert got["on-fail"].hook == "SyncFail"

    # the agent's loop does not run the failed sync again for this revision (no Job re-run
    # every resync), until an operator asks for a sync
    bundle = make_bundle(
        namespace(ns), presync(job("migrate", fail=True)), deployment("web"), on_fail, revision="r2"
    )
    failed_job = await cluster.get(JOB, namespace=ns, name="migrate")
    assert failed_job is not None
    again = await reconciler.reconcile(bundle, policy(max_prune_percent=100))
    assert again.sync == st.APPLY_FAILED
    assert "not retried for this revision" in again.reason, again.reason
    assert f"fleetops-hub sync {ns}" in again.reason
    still = await cluster.get(JOB, namespace=ns, name="migrate")
    assert still is not None and still["metadata"]["uid"] == failed_job["metadata"]["uid"], (
        "a resync re-ran the failed hook"
    )
    retried = await reconciler.reconcile(bundle, policy(max_prune_percent=100), retry=True)
    assert retried.sync == st.APPLY_FAILED
    assert "not retried" not in retried.reason
    rerun = await cluster.get(JOB, namespace=ns, name="migrate")
    assert rerun is not None and rerun["metadata"]["uid"] != failed_job["metadata"]["uid"], (
        "an operator's sync did not run the hook again"
    )


async def test_a_new_revision_reruns_an_immutable_job(
    cluster: kube.Kube,
    reconciler: reconcile.Reconciler,
    make_bundle: BundleFactory,
    unique_name: str,
) -> None:
    ns = unique_name
    first = await reconciler.sync(
        make_bundle(namespace(ns), presync(job("migrate")), configmap("a")), policy()
    )
    assert first.sync == st.SYNCED, first.reason
    before = await cluster.get(JOB, namespace=ns, name="migrate")
    assert before is not None

    # a new pod template: a Job's template is immutable, so applying over it would fail
    second = await reconciler.sync(
        make_bundle(
            namespace(ns),
            presync(job("migrate", image="registry.local/migrate:2")),
            configmap("a", k="2"),
            revision="r2",
        ),
        policy(),
    )
    assert second.sync == st.SYNCED, second.reason
    after = await cluster.get(JOB, namespace=ns, name="migrate")
    assert after is not None
    assert after["metadata"]["uid"] != before["metadata"]["uid"], "the Job was not created anew"
    # the mark that lets the next revision delete it (and nothing that lacks it)
    assert before["metadata"]["annotations"]["fleetops.io/hook-of"] == ns
    assert after["metadata"]["annotations"]["fleetops.io/hook-of"] == ns
    assert after["spec"]["template"]["spec"]["containers"][0]["image"].endswith("migrate:2")
    assert "completionTime" in after["status"]


async def test_a_resync_of_an_in_sync_app_does_not_rerun_hooks(
    cluster: kube.Kube,
    reconciler: reconcile.Reconciler,
    make_bundle: BundleFactory,
    unique_name: str,
) -> None:
    ns = unique_name
    generated = presync(job("ignored"))
    del generated["metadata"]["name"]
    generated["metadata"]["generateName"] = "seed-"
    bundle = make_bundle(namespace(ns), presync(job("migrate")), generated, configmap("a"))
    first = await reconciler.sync(bundle, policy(self_heal=True))
    assert first.sync == st.SYNCED, first.reason
    seed = next(r.key.name for r in first.resources if r.key.name.startswith("seed-"))
    uids = {}
    for name in ("migrate", seed):
        obj = await cluster.get(JOB, namespace=ns, name=name)
        assert obj is not None
        uids[name] = obj["metadata"]["uid"]

    for again in (
        await reconciler.reconcile(bundle, policy(self_heal=True)),
        await reconciler.sync(bundle, policy(self_heal=True)),
        await reconciler.heal(bundle, policy(self_heal=True)),
    ):
        assert again.sync == st.SYNCED, again.reason
        assert not again.drifted and not again.healed
        # the report still shows the hooks, as they are now
        shown = {r.key.name: (r.hook, r.health.name if r.health else "") for r in again.resources}
        assert shown["migrate"] == ("PreSync", "Healthy") and shown[seed] == ("PreSync", "Healthy")
    for name, uid in uids.items():
        obj = await cluster.get(JOB, namespace=ns, name=name)
        assert obj is not None and obj["metadata"]["uid"] == uid, f"{name} ran again on a resync"
    jobs = await cluster.list(JOB, ns)
    assert sorted(j["metadata"]["name"] for j in jobs) == sorted(uids), "a second seed Job appeared"


async def test_hooks_are_never_pruned_and_policies_clean_them_up(
    cluster: kube.Kube,
    reconciler: reconcile.Reconciler,
    make_bundle: BundleFactory,
    unique_name: str,
) -> None:
    ns = unique_name
    report = hooked(configmap("report"), **{"argocd.argoproj.io/hook": "PostSync"})
    done = hooked(
        configmap("done"),
        **{"argocd.argoproj.io/hook": "PostSync", "helm.sh/hook-delete-policy": "hook-succeeded"},
    )
    first = await reconciler.sync(
        make_bundle(namespace(ns), configmap("a"), report, done), policy()
    )
    assert first.sync == st.SYNCED, first.reason
    assert "deleted (HookSucceeded)" in by_name(first)["done"].message
    assert await cluster.get(CM, namespace=ns, name="done") is None
    inv = await reconciler.inventories.load(unique_name)
    assert inv is not None and [e.key.name for e in inv.hooks] == ["report"]
    assert "report" not in {e.key.name for e in inv.entries}

    second = await reconciler.sync(
        make_bundle(namespace(ns), configmap("a"), revision="r2"), policy()
    )
    assert second.sync == st.SYNCED, second.reason
    assert "report" not in by_name(second), "a hook that left the bundle was treated as a leftover"
    assert await cluster.get(CM, namespace=ns, name="report") is not None, "a hook was pruned"


async def test_a_sync_hook_finishes_before_the_next_wave(
    cluster: kube.Kube,
    reconciler: reconcile.Reconciler,
    make_bundle: BundleFactory,
    unique_name: str,
) -> None:
    ns = unique_name
    seed = hooked(job("seed"), **{"argocd.argoproj.io/hook": "Sync"})
    web = hooked(deployment("web"), **{"argocd.argoproj.io/sync-wave": "1"})
    result = await reconciler.sync(make_bundle(namespace(ns), seed, web), policy())
    assert result.sync == st.SYNCED, result.reason
    assert by_name(result)["seed"].hook == "Sync"
    finished = await cluster.get(JOB, namespace=ns, name="seed")
    created = await cluster.get(DEPLOY, namespace=ns, name="web")
    assert finished is not None and created is not None
    assert when(finished["status"]["completionTime"]) <= when(
        created["metadata"]["creationTimestamp"]
    ), "wave 1 was applied before the Sync hook of wave 0 finished"


async def test_a_bad_hook_annotation_fails_that_object_only(
    cluster: kube.Kube,
    reconciler: reconcile.Reconciler,
    make_bundle: BundleFactory,
    unique_name: str,
) -> None:
    ns = unique_name
    typo = hooked(configmap("typo"), **{"argocd.argoproj.io/hook": "PreSynch"})
    result = await reconciler.sync(make_bundle(namespace(ns), configmap("a"), typo), policy())
    bad = by_name(result)["typo"]
    assert bad.failed
    assert "manifests.yaml:" in bad.message
    assert "argocd.argoproj.io/hook: unknown phase PreSynch; use a comma list of PreSync" in (
        bad.message
    )
    assert await cluster.get(CM, namespace=ns, name="a") is not None
    assert await cluster.get(CM, namespace=ns, name="typo") is None


async def test_hooks_run_in_an_app_that_also_has_ignore_rules(
    cluster: kube.Kube,
    reconciler: reconcile.Reconciler,
    make_bundle: BundleFactory,
    unique_name: str,
) -> None:
    """An ignore rule rewrites the plan before the sync (live values at ignored paths); the
    plan's hooks must survive that rewrite."""
    ns = unique_name
    first = make_bundle(namespace(ns), deployment("web"), revision="r1")
    assert (await reconciler.sync(first, policy())).sync == st.SYNCED
    second = make_bundle(namespace(ns), presync(job("migrate")), deployment("web"), revision="r2")
    second.ignore_differences.add(group="apps", kind="Deployment", json_pointers=["/spec/replicas"])
    result = await reconciler.sync(second, policy())
    assert result.sync == st.SYNCED, result.reason
    assert by_name(result)["migrate"].hook == "PreSync"
    migrate = await cluster.get(JOB, namespace=ns, name="migrate")
    assert migrate is not None, "the PreSync hook of an app with ignore rules never ran"
