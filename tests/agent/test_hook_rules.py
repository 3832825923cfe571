"""Which objects are sync hooks and how they run (agent.hooks): pure, no cluster."""

from __future__ import annotations

from typing import Any

import pytest

from fleetops.agent import hooks, manifests, order


def test_argo_phases_are_a_comma_list() -> None:
    hook = hooks.classify({hooks.HOOK: "PreSync, PostSync"})
    assert hook is not None
    assert hook.phases == {"PreSync", "PostSync"}
    assert hook.label == "PreSync,PostSync"
    assert hook.delete_policies == {"BeforeHookCreation"}, "no policy means BeforeHookCreation"


def test_an_ordinary_object_is_no_hook() -> None:
    assert hooks.classify({}) is None
    assert hooks.classify({"fleetops.io/sync-wave": "2"}) is None


@pytest.mark.parametrize(
    ("helm", "phases"),
    [
        ("pre-install", {"PreSync"}),
        ("pre-install,pre-upgrade", {"PreSync"}),
        ("post-upgrade", {"PostSync"}),
        ("pre-install,post-install", {"PreSync", "PostSync"}),
    ],
)
def test_helm_hooks_map_to_argo_phases(helm: str, phases: set[str]) -> None:
    hook = hooks.classify({hooks.HELM_HOOK: helm})
    assert hook is not None and hook.phases == phases


def test_helm_test_and_rollback_hooks_are_never_applied() -> None:
    for value in ("test", "test-success", "pre-rollback,post-rollback"):
        hook = hooks.classify({hooks.HELM_HOOK: value})
        assert hook is not None and not hook.runs, value
        assert "helm test" in hook.why_not_run


def test_helm_crd_install_is_an_ordinary_object() -> None:
    assert hooks.classify({hooks.HELM_HOOK: "crd-install"}) is None


def test_delete_hooks_are_noted_not_run() -> None:
    hook = hooks.classify({hooks.HELM_HOOK: "pre-delete"})
    assert hook is not None and not hook.runs and hook.label == "PreDelete"
    hook = hooks.classify({hooks.HOOK: "PostDelete"})
    assert hook is not None and not hook.runs and "removed" in hook.why_not_run


def test_an_argo_annotation_wins_over_helm() -> None:
    hook = hooks.classify({hooks.HOOK: "Sync", hooks.HELM_HOOK: "test"})
    assert hook is not None and hook.phases == {"Sync"}


def test_skip_alone_is_not_applied_and_no_hook() -> None:
    annotations = {hooks.HOOK: "Skip"}
    assert hooks.skipped(annotations) and hooks.classify(annotations) is None
    mixed = {hooks.HOOK: "Skip,PreSync"}
    assert not hooks.skipped(mixed)
    assert hooks.classify(mixed) == hooks.Hook(phases=frozenset({"PreSync"}))


def test_unknown_phase_names_the_annotation_and_the_choices() -> None:
    with pytest.raises(
        ValueError, match=r"argocd.argoproj.io/hook: unknown phase PreSink.*PreSync"
    ):
        hooks.classify({hooks.HOOK: "PreSink"})


def test_delete_policies_are_the_union_of_both_annotations() -> None:
    hook = hooks.classify(
        {
            hooks.HOOK: "PreSync",
            hooks.DELETE_POLICY: "HookSucceeded",
            hooks.HELM_DELETE_POLICY: "hook-failed",
        }
    )
    assert hook is not None and hook.delete_policies == {"HookSucceeded", "HookFailed"}
    with pytest.raises(ValueError, match="helm.sh/hook-delete-policy: unknown policy sometimes"):
        hooks.classify({hooks.HELM_HOOK: "pre-install", hooks.HELM_DELETE_POLICY: "sometimes"})


def _resource(annotations: dict[str, str]) -> manifests.Resource:
    obj = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "annotations": annotations}}
    return manifests.Resource(obj, "x.yaml", 1)


def test_helm_weight_is_the_wave_unless_a_sync_wave_is_set() -> None:
    assert order.wave_of(_resource({hooks.HELM_HOOK: "pre-install", hooks.HELM_WEIGHT: "-5"})) == -5
    both = {hooks.HELM_HOOK: "pre-install", hooks.HELM_WEIGHT: "-5"}
    both["argocd.argoproj.io/sync-wave"] = "3"
    assert order.wave_of(_resource(both)) == 3
    # a weight without a Helm hook is not a wave
    assert order.wave_of(_resource({hooks.HELM_WEIGHT: "7"})) == 0


def _hook_doc(**meta: Any) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"annotations": {hooks.HOOK: "PreSync"}, **meta},
    }


def test_generate_name_hooks_get_a_name_fixed_per_revision() -> None:
    doc = _hook_doc(generateName="migrate-")
    first = hooks.with_generated_name(doc, revision="abc")
    again = hooks.with_generated_name(doc, revision="abc")
    other = hooks.with_generated_name(doc, revision="def")
    name = first["metadata"]["name"]
    assert name.startswith("migrate-") and len(name) == len("migrate-") + 10
    assert again["metadata"]["name"] == name
    assert other["metadata"]["name"] != name
    # an object with a name, or no hook, is left alone (ordinary objects still need a name)
    named = _hook_doc(name="fixed", generateName="x-")
    assert hooks.with_generated_name(named, revision="abc") is named
    plain = {"apiVersion": "v1", "kind": "Pod", "metadata": {"generateName": "p-"}}
    parsed = manifests.parse(source="p.yaml", text=str(plain).replace("'", '"'))
    assert not parsed.resources and "only for sync hooks" in parsed.problems[0].message
