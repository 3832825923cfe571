"""The rules for one (app, cluster): which labels it has, which target matches it, which
revision it should run. `planner.decide` applies them to the whole fleet.

Pure: config, cluster labels and the current state in, decisions out.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from fleetops.hub import config

DEFAULT_TARGET = config.Target(name="default")


def cluster_labels(
    cfg: config.Config, name: str, registered: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The labels selectors match: those the cluster's registration token carried, overridden
    by hub.yaml (the operator has the last word). Targeting is the hub's decision: what an
    agent says about itself is a fact to show, never a label to match."""
    return {**(registered or {}), **cfg.cluster_labels(name), "fleetops.io/cluster": name}


def target_for(
    cfg: config.Config, app: config.App, cluster: str, labels: Mapping[str, str]
) -> config.Target | None:
    """The first target that matches the cluster, like Fleet's targetCustomizations; an app
    without targets goes to every cluster; None when no target matches."""
    if app.targets is None:
        return DEFAULT_TARGET
    for t in app.targets:
        if t.cluster_name and t.cluster_name != cluster:
            continue
        if t.cluster_group:
            group = cfg.group(t.cluster_group)
            if group is None or not group.selector.matches(labels):
                continue
        if t.cluster_selector is not None and not t.cluster_selector.matches(labels):
            continue
        return t
    return None


@dataclasses.dataclass(frozen=True)
class Wanted:
    revision: str
    why: str  # auto, pin, sync, hold


def desired_revision(
    *,
    head: str,
    auto: bool,
    current: str,
    pin_app: str,
    pin_cluster: str,
    sync_requested: bool,
) -> Wanted | None:
    """Which revision (cluster, app) should run. A pin always wins over auto-sync, so a
    rollback never fights it; without auto-sync a cluster moves only when asked."""
    if pin_cluster:
        return Wanted(pin_cluster, "pin")
    if pin_app:
        return Wanted(pin_app, "pin")
    if not head:
        return Wanted(current, "hold") if current else None
    if auto:
        return Wanted(head, "auto")
    if sync_requested:
        return Wanted(head, "sync")
    return Wanted(current, "hold") if current else None
