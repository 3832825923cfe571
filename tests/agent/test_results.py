"""The result values every report is built from: named constructors pair the right sync status
with each action, and ids that could be swapped cannot be passed by position."""

from __future__ import annotations

import pytest

from fleetops.agent import ids, kube, manifests
from fleetops.agent import status as st

KEY = manifests.Key(group="", kind="ConfigMap", namespace="web", name="settings")


def test_each_named_result_reports_the_status_its_action_means() -> None:
    applied = st.ResourceResult.applied(key=KEY, version="v1", source="cm.yaml:1")
    refused = st.ResourceResult.refused(key=KEY, version="v1", reason="no", source="cm.yaml:1")
    kept = st.ResourceResult.kept(key=KEY, version="v1", reason="prune is off")
    pruned = st.ResourceResult.pruned(key=KEY, version="v1", reason="pruned")
    assert (applied.sync, applied.action, applied.failed) == (st.SYNCED, "applied", False)
    assert (refused.sync, refused.action, refused.failed) == (st.APPLY_FAILED, "refused", True)
    assert (kept.sync, kept.action) == (st.OUT_OF_SYNC, "kept")
    assert (pruned.sync, pruned.action) == (st.SYNCED, "pruned")
    rolled = st.AppResult.rolled_up(
        app=ids.AppName("web"),
        revision=ids.Revision("abc"),
        bundle_digest=ids.Digest("d"),
        results=[applied, refused, kept],
    )
    assert rolled.failed
    assert rolled.reason == "ConfigMap web/settings: no"  # the failure comes first


def test_names_and_namespaces_cannot_be_passed_by_position() -> None:
    with pytest.raises(TypeError):
        manifests.Key("", "ConfigMap", "web", "settings")  # type: ignore[misc]
    with pytest.raises(TypeError):
        kube.ResourceType("", "v1", "ConfigMap", "configmaps", True)  # type: ignore[misc]
    with pytest.raises(TypeError):
        st.ResourceResult(KEY, "v1", st.SYNCED, None, "")  # type: ignore[misc]
