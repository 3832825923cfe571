"""The planner's decision, pure: from config, pins, pauses, repo heads and cluster facts to the
assignments the fleet should have (app, cluster, target, revision, why).

No I/O, no awaits, no clock: the same facts always give the same decision, so it is tested
without a server. The shell around it (hub.planning) renders bundles, writes the store and
pushes to agents. An app with a rollout moves to its head only where the rollout admitted it
(hub.rollouts decides, `Gatekeeping` is its word here): pins beat rollouts, rollouts beat
auto-sync, and a rejected revision is never taken by auto-sync.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Collection, Mapping, Sequence

from fleetops.hub import config, plan, status

log = logging.getLogger("fleetops.hub")


@dataclasses.dataclass(frozen=True)
class Desired:
    """(app, cluster) should run `revision` rendered for `target`; `why` is one of auto
    (the head, auto-sync), pin (an operator's rollback), sync (an operator asked), hold (keep
    what it has: paused, auto-sync off, or the app's fleet.yaml does not read)."""

    app: str
    cluster: str
    target: config.Target
    revision: str
    why: str
    paused: bool = False


@dataclasses.dataclass(frozen=True)
class Gatekeeping:
    """What an app's rollout allows: `revision` (being rolled out) only on `admitted`
    clusters; `reverts` send clusters back to their last good revision; `rejected`
    revisions are never taken by auto-sync; `stable` is what a cluster with nothing yet
    gets while it waits for its step ('' when no revision passed every step yet)."""

    revision: str = ""
    admitted: frozenset[str] = frozenset()
    reverts: Mapping[str, str] = dataclasses.field(default_factory=dict)
    rejected: frozenset[str] = frozenset()
    stable: str = ""


@dataclasses.dataclass(frozen=True)
class Decision:
    assignments: Mapping[tuple[str, str], Desired]  # (app, cluster) -> what it should run
    failed: Mapping[tuple[str, str], str]  # (app, cluster) -> why deciding failed: keep as is

    def get(self, app: str, cluster: str) -> Desired | None:
        return self.assignments.get((app, cluster))


def decide(
    *,
    cfg: config.Config,
    apps: Sequence[config.App],
    clusters: Mapping[str, Mapping[str, str]],
    heads: Mapping[str, str],
    pins: Mapping[tuple[str, str], str],
    paused: Collection[str],
    current: Mapping[tuple[str, str], str],
    sync_requests: Collection[tuple[str, str]] = (),
    held: Collection[str] = (),
    rollouts: Mapping[str, Gatekeeping] | None = None,
) -> Decision:
    """What each (app, cluster) should run.

    `apps` as deployed (fleet.yaml applied); `clusters` the registered clusters to decide for,
    each with the labels its registration token carried (hub.yaml's are added here);
    `heads` repo -> head revision; `pins` (app, cluster or '') -> revision; `paused` app
    names; `current` (cluster, app) -> the revision assigned now; `sync_requests` (app,
    cluster or '') an operator asked to sync; `held` apps whose fleet.yaml does not read;
    `rollouts` app -> what its rollout allows (apps with a rollout policy only).

    A pair missing from the decision is not targeted (a cluster that has it loses it), or
    has nothing to run yet (its repo has no head). A pair whose decision fails is in `failed`
    and keeps what it has.
    """
    out: dict[tuple[str, str], Desired] = {}
    failed: dict[tuple[str, str], str] = {}
    for app in apps:
        for cluster in sorted(clusters):
            try:
                got = _one(
                    cfg=cfg,
                    app=app,
                    cluster=cluster,
                    labels=plan.cluster_labels(cfg, cluster, clusters[cluster]),
                    head=heads.get(app.repo, ""),
                    pins=pins,
                    paused=app.name in paused,
                    current=current.get((cluster, app.name), ""),
                    sync_requested=(app.name, cluster) in sync_requests
                    or (app.name, "") in sync_requests,
                    held=app.name in held,
                    gate=(rollouts or {}).get(app.name),
                )
            except Exception as e:  # that (app, cluster) keeps what it has
                log.exception("app %s cluster %s: planning failed", app.name, cluster)
                failed[(app.name, cluster)] = status.unexpected("planning", e)
                continue
            if got is not None:
                out[(app.name, cluster)] = got
    return Decision(assignments=out, failed=failed)


def _one(
    *,
    cfg: config.Config,
    app: config.App,
    cluster: str,
    labels: Mapping[str, str],
    head: str,
    pins: Mapping[tuple[str, str], str],
    paused: bool,
    current: str,
    sync_requested: bool,
    held: bool,
    gate: Gatekeeping | None = None,
) -> Desired | None:
    target = plan.target_for(cfg, app, cluster, labels)
    if target is None:
        return None
    if held:
        head = current  # hold until fleet.yaml reads again
    wanted = plan.desired_revision(
        head=head,
        auto=app.sync.auto and not paused,
        current=current,
        pin_app=pins.get((app.name, ""), ""),
        pin_cluster=pins.get((app.name, cluster), ""),
        sync_requested=not paused and sync_requested,
    )
    if wanted is not None and gate is not None and wanted.why == "auto":
        wanted = _gated(gate, cluster=cluster, head=head, current=current)
    if wanted is None:
        return None
    if paused and current:
        wanted = plan.Wanted(current, "hold")
    return Desired(
        app=app.name,
        cluster=cluster,
        target=target,
        revision=wanted.revision,
        why=wanted.why,
        paused=paused,
    )


def _gated(gate: Gatekeeping, *, cluster: str, head: str, current: str) -> plan.Wanted | None:
    """Auto-sync under a rollout: the head only where the rollout admitted it."""
    if head == gate.revision and cluster in gate.admitted and head not in gate.rejected:
        return plan.Wanted(head, "auto")
    back = gate.reverts.get(cluster)
    if back:
        return plan.Wanted(back, "revert")
    if current:
        return plan.Wanted(current, "rollout")
    if gate.stable and gate.stable not in gate.rejected:
        return plan.Wanted(gate.stable, "rollout")
    return None


def renders_wanted(
    *,
    cfg: config.Config,
    apps: Sequence[config.App],
    clusters: Mapping[str, Mapping[str, str]],
    heads: Mapping[str, str],
    paused: Collection[str],
    held: Collection[str] = (),
) -> list[tuple[config.App, config.Target, str]]:
    """(app, target, head) for every target these clusters use at their repo's head: what to
    render before deciding, so a slow render delays only its own app."""
    wanted: dict[tuple[str, str], tuple[config.App, config.Target, str]] = {}
    for app in apps:
        head = heads.get(app.repo, "")
        if not head or app.name in paused or app.name in held:
            continue
        for cluster in sorted(clusters):
            labels = plan.cluster_labels(cfg, cluster, clusters[cluster])
            target = plan.target_for(cfg, app, cluster, labels)
            if target is not None:
                wanted.setdefault((app.name, target.name), (app, target, head))
    return list(wanted.values())
