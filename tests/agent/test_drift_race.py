"""A write by someone else between the agent's read of an object and its dry-run is their
change, not drift: the agent compares the dry-run with the same version of the object
(real cluster; the interleaving is forced by making the other write just before the dry-run)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from fleetops.agent import kube, reconcile
from fleetops.agent import status as st
from tests import localkube
from tests.agent.conftest import BundleFactory
from tests.agent.objects import configmap, namespace, policy
from tests.support.kubectl_run import kubectl


async def test_a_write_between_the_read_and_the_dry_run_is_not_drift(
    local_clusters: list[localkube.LocalCluster],
    cluster: kube.Kube,
    reconciler: reconcile.Reconciler,
    make_bundle: BundleFactory,
    unique_name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ns = unique_name
    bundle = make_bundle(namespace(ns), configmap("settings", ns, color="blue"))
    await reconciler.sync(bundle, policy(self_heal=True))
    # someone annotates it: its version moves, so the next check dry-runs it again
    annotate = ("-n", ns, "annotate", "--overwrite", "configmap/settings")
    await kubectl(local_clusters[0], *annotate, "example.com/seen=first")

    apply = cluster.apply
    others = []

    async def others_write_first(
        rt: kube.ResourceType, obj: Mapping[str, Any], *, force: bool, dry_run: bool = False
    ) -> dict[str, Any]:
        """A controller's write landing after the agent read the object, before its dry-run."""
        if dry_run and obj["kind"] == "ConfigMap" and not others:
            others.append(await kubectl(local_clusters[0], *annotate, "example.com/seen=second"))
        return await apply(rt, obj, force=force, dry_run=dry_run)

    monkeypatch.setattr(cluster, "apply", others_write_first)
    checked = await reconciler.check(bundle, policy(self_heal=True))
    assert others, "the check did not dry-run the ConfigMap: the test no longer tests the race"
    assert checked.sync == st.SYNCED, checked.reason

    # and real drift made the same way is still found
    others.clear()
    await kubectl(local_clusters[0], "-n", ns, "patch", "configmap/settings", "-p",
                  '{"data":{"color":"red"}}')  # fmt: skip
    drifted = await reconciler.check(bundle, policy(self_heal=True))
    [cm] = [r for r in drifted.resources if r.key.name == "settings"]
    assert [f.path for f in cm.drift] == ["data.color"], cm.drift
