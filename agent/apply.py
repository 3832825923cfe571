"""Sends a plan to the cluster with server-side apply, wave by wave, then settles the prune.

Sync hooks (`agent.hooks`, run by `agent.hookrun`) frame the waves: PreSync hooks first (each
wave of them must succeed), Sync hooks inside the waves, PostSync hooks once every object is
healthy; a failed hook halts the sync like a wave that does not become healthy, and SyncFail
hooks run whenever a sync fails. Hooks are kept apart in the inventory and never pruned.

`apply_plan` records the union of old and new objects in the inventory before the first
write (a crash mid-apply must never make the agent forget an object it applied), applies each
wave of `agent.order` (tiers in parallel), waits for CRDs to be Established and gated waves to
be healthy before the next, and halts at the first wave that does not. After a complete apply
it prunes what left the bundle (`agent.prune`) unless the policy, an empty bundle or a held
mass prune says not to, and saves the inventory of what the app now owns.

It must never prune after a partial apply, and never apply an object the plan did not clear.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import time
from collections.abc import Callable, Sequence
from typing import Any

from fleetops.agent import (
    errors,
    explain,
    health,
    hookrun,
    hooks,
    ids,
    inventory,
    kube,
    manifests,
    order,
    prune,
)
from fleetops.agent import status as st
from fleetops.agent.context import Context
from fleetops.agent.prepare import HookPrepared, Plan, Prepared, Target
from fleetops.proto.v1 import types_pb2

PASSING = (health.HEALTHY, health.SUSPENDED)

Live = dict[manifests.Key, dict[str, Any]]


async def apply_plan(
    ctx: Context,
    bundle: types_pb2.Bundle,
    policy: types_pb2.SyncPolicy,
    *,
    target: Target,
    previous: inventory.Inventory | None,
    plan: Plan,
    allow_mass_prune: bool,
) -> st.AppResult:
    """Apply `plan` (already cleared of other apps' objects), then prune when allowed."""
    by_key = plan.by_key()
    hook_keys = {h.key for h in plan.hooks}
    old_entries = set(previous.entries) if previous else set()
    old_hooks = set(previous.hooks) if previous else set()
    new_entries = {inventory.Entry(p.key, p.rt.version) for p in plan.prepared}
    new_hooks = {inventory.Entry(h.key, h.prepared.rt.version) for h in plan.hooks}
    await ensure_default_namespace(ctx, bundle, [*plan.prepared, *(h.prepared for h in plan.hooks)])
    # Record the union before touching anything: a crash mid-apply must never make the
    # agent forget an object it applied.
    await ctx.inventories.save(
        app=target.app,
        revision=target.revision,
        bundle_digest=ids.Digest(""),
        entries=old_entries | new_entries,
        hooks=old_hooks | new_hooks,
    )
    results, live, halted, ran = await _apply_phases(ctx, plan=plan, force=policy.force_conflicts)
    for key, obj in live.items():
        results[key] = dataclasses.replace(results[key], health=health.assess(obj))
        ctx.remember(target.app, key=key, desired=by_key[key].obj, live=obj)

    all_results = plan.failures + [results[p.key] for p in plan.prepared]
    complete = not halted and not any(r.failed for r in all_results + ran.results)
    ran += await hookrun.sync_fail(
        ctx,
        [h for h in plan.hooks if h.hook.runs_in(hooks.SYNC_FAIL)],
        failed=not complete,
        ran=ran,
        apply=functools.partial(apply_one, ctx, force=policy.force_conflicts),
    )
    # hooks are never pruned: an object that became a hook is no leftover either
    leftovers = [e for e in old_entries if e.key not in by_key and e.key not in hook_keys]
    kept: list[inventory.Entry] = []
    prune_results: list[st.ResourceResult] = []
    held = ""

    def keep_all(note: str) -> None:
        nonlocal kept, prune_results
        kept = leftovers
        prune_results = [
            st.ResourceResult.kept(key=e.key, version=e.version, reason=note) for e in leftovers
        ]

    if not complete:
        keep_all("not pruned: the sync did not complete, and prune never follows a partial apply")
    elif not policy.prune:
        keep_all("no longer in Git; prune is off for this app")
    elif not plan.prepared and not plan.hooks and not policy.allow_empty:
        keep_all("not pruned: the bundle is empty and allowEmpty is off")
    elif (
        hold := prune.held_back(
            previous, leftovers=leftovers, policy=policy, allowed=allow_mass_prune
        )
    ) is not None:
        keep_all(f"not pruned: prune held, it {hold.share()}")
        held = hold.reason(app=target.app, cluster=ctx.options.cluster)
    else:
        prune_results, kept = await prune.prune(
            ctx.kube,
            leftovers,
            agent_namespace=ctx.options.inventory_namespace,
            owned={e.key for e in old_entries | new_entries},
            staying=set(by_key) | hook_keys,
        )

    entries = new_entries if complete else old_entries | new_entries
    refused = {r.key for r in ran.results if r.action == "refused"}
    await ctx.inventories.save(
        app=target.app,
        revision=target.revision,
        bundle_digest=target.digest if complete else ids.Digest(""),
        entries={e for e in entries | set(kept) if e.key not in hook_keys},
        # a hook deleted by its policy, or one that is an ordinary object now, is no hook to
        # keep; nor one refused because a live object of its name is not this app's hook (it
        # must not claim that object from the app that may own it)
        hooks={
            e
            for e in old_hooks | new_hooks
            if e.key not in ran.gone and e.key not in by_key and e.key not in refused
        },
    )
    reason = ""
    if halted:
        reason = halted
    elif ran.failed and not complete:
        reason = ran.failed
    elif (
        not (plan.prepared or plan.hooks or plan.failures)
        and old_entries
        and not policy.allow_empty
    ):
        reason = "the bundle is empty; nothing was pruned because allowEmpty is off"
    elif held:
        reason = held
    return st.AppResult.rolled_up(
        app=target.app,
        revision=target.revision,
        bundle_digest=target.digest,
        results=all_results + ran.last_per_key() + plan.noted + prune_results,
        reason=reason,
        sync=st.APPLY_FAILED if halted else None,
        applied_at=time.time(),
        prune_held=bool(held),
    )


async def _apply_phases(
    ctx: Context, *, plan: Plan, force: bool
) -> tuple[dict[manifests.Key, st.ResourceResult], Live, str, hookrun.Outcome]:
    """PreSync hooks, then the waves (with Sync hooks), then, once everything is healthy,
    PostSync hooks. The ordinary objects' results, their live objects, why the sync halted
    (or ""), and what the hooks did."""
    apply = functools.partial(apply_one, ctx, force=force)
    in_phase = {
        phase: [h for h in plan.hooks if h.hook.runs_in(phase)]
        for phase in (hooks.PRE_SYNC, hooks.SYNC, hooks.POST_SYNC)
    }
    # The Namespaces PreSync hooks live in come first (Argo CD would need CreateNamespace)
    homes = {h.key.namespace for h in in_phase[hooks.PRE_SYNC]} - {""}
    await asyncio.gather(*(apply(p) for p in plan.prepared if p.named_namespace in homes))
    ran = await hookrun.run_phase(ctx, in_phase[hooks.PRE_SYNC], phase=hooks.PRE_SYNC, apply=apply)
    if ran.failed:
        results = {
            p.key: st.ResourceResult.skipped(
                key=p.key, version=p.rt.version, reason=f"not applied: {ran.failed}"
            )
            for p in plan.prepared
        }
        why = f"not run: {ran.failed}"
        ran += hookrun.not_run(in_phase[hooks.SYNC], why=why)
        ran += hookrun.not_run(in_phase[hooks.POST_SYNC], why=why)
        return results, {}, ran.failed, ran
    results, live, halted, in_waves = await _apply_waves(
        ctx, plan=plan, sync_hooks=in_phase[hooks.SYNC], apply=apply
    )
    ran += in_waves
    post = in_phase[hooks.POST_SYNC]
    if post and not halted and any(r.failed for r in results.values()):
        halted = "PostSync hooks not run: not every object applied"
    if post and not halted:
        applied = [p for p in plan.prepared if p.key in live]
        halted = await _wait_healthy(ctx, "the synced objects", applied, live)
        if halted:
            halted = f"PostSync hooks not run: {halted}"
    if halted:
        return (
            results,
            live,
            halted,
            ran + hookrun.not_run(post, why=f"not run: {halted}"),
        )
    ran += await hookrun.run_phase(ctx, post, phase=hooks.POST_SYNC, apply=apply)
    return results, live, ran.failed, ran


async def _apply_waves(
    ctx: Context, *, plan: Plan, sync_hooks: Sequence[HookPrepared], apply: hookrun.Apply
) -> tuple[dict[manifests.Key, st.ResourceResult], Live, str, hookrun.Outcome]:
    """Each wave in order, Sync hooks with the objects of their wave (a wave ends when its
    hooks finished); the results, the live objects applied, why it halted (or ""), and what
    the Sync hooks did."""
    by_key = plan.by_key()
    hook_by_key = {h.key: h for h in sync_hooks}
    versions = {p.key: p.rt.version for p in plan.prepared}
    results: dict[manifests.Key, st.ResourceResult] = {}
    live: Live = {}
    halted = ""
    ran = hookrun.Outcome(results=[])
    resources = [p.resource for p in plan.prepared] + [h.prepared.resource for h in sync_hooks]
    for step in order.plan(resources):
        if halted:
            for r in step.resources:
                if r.key in hook_by_key:
                    why = f"not run: {halted}"
                    ran += hookrun.not_run([hook_by_key[r.key]], why=why)
                    continue
                results[r.key] = st.ResourceResult.skipped(
                    key=r.key, version=versions[r.key], reason=f"not applied: {halted}"
                )
            continue
        started: list[hookrun.Started] = []
        for tier in step.tiers:
            objects = [by_key[r.key] for r in tier if r.key in by_key]
            tier_hooks = [hook_by_key[r.key] for r in tier if r.key in hook_by_key]
            outcomes, hook_starts = await asyncio.gather(
                asyncio.gather(*(apply(p) for p in objects)),
                asyncio.gather(*(hookrun.start(ctx, h, apply=apply) for h in tier_hooks)),
            )
            started += hook_starts
            for p, (result, obj) in zip(objects, outcomes, strict=True):
                results[p.key] = result
                if obj is not None:
                    live[p.key] = obj
        applied = [by_key[r.key] for r in step.resources if r.key in live]
        crds = [p for p in applied if p.rt.kind == "CustomResourceDefinition"]
        if crds:
            halted = await _wait_established(ctx, crds, live)
            ctx.kube.forget_discovery()
        if started:
            finished = await hookrun.finish(ctx, started, phase=hooks.SYNC)
            ran += finished
            halted = halted or finished.failed
        if step.gate and not halted:
            halted = await _wait_healthy(ctx, step.label, applied, live)
    return results, live, halted, ran


async def ensure_default_namespace(
    ctx: Context, bundle: types_pb2.Bundle, prepared: Sequence[Prepared]
) -> None:
    """Create the app's namespace when the bundle uses it but does not define it, as Fleet
    does. It is not put in the inventory, so prune never deletes it."""
    ns = bundle.namespace
    if not ns or any(p.key.kind == "Namespace" and p.key.name == ns for p in prepared):
        return
    if not any(p.key.namespace == ns for p in prepared):
        return
    rt = kube.ResourceType(
        group="", version="v1", kind="Namespace", plural="namespaces", namespaced=False
    )
    if await ctx.kube.get(rt, namespace="", name=ns) is None:
        body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}
        try:
            await ctx.kube.create(rt, body)
        except errors.Forbidden as e:
            raise errors.Forbidden(
                f"cannot create namespace {ns} for app {bundle.app}: {e}",
                namespace=e.namespace,
                resource=e.resource,
                verb=e.verb,
            ) from None
        except errors.KubeError as e:
            if e.status != 409:  # someone else made it meanwhile: fine
                raise


async def apply_one(
    ctx: Context, p: Prepared, *, force: bool
) -> tuple[st.ResourceResult, dict[str, Any] | None]:
    """Server-side apply one object: its result, and the live object when it was accepted."""
    where = p.resource.where
    try:
        obj = await ctx.kube.apply(p.rt, p.obj, force=force)
    except errors.Conflict as e:
        managers = ", ".join(e.managers) or "another field manager"
        message = (
            f"conflict with {managers}: {explain.first_line(str(e))}; let Git win with "
            "forceConflicts, or drop the field from Git"
        )
        failed = st.ResourceResult.apply_failed(
            key=p.key,
            version=p.rt.version,
            reason=message,
            conflict_manager=managers,
            source=where,
        )
        return failed, None
    except errors.Forbidden as e:
        reason = ctx.denied(e, namespace=p.named_namespace)
        return st.ResourceResult.apply_failed(
            key=p.key, version=p.rt.version, reason=reason, source=where
        ), None
    except errors.KubeError as e:
        reason = explain.first_line(str(e))
        return st.ResourceResult.apply_failed(
            key=p.key, version=p.rt.version, reason=reason, source=where
        ), None
    return st.ResourceResult.applied(key=p.key, version=p.rt.version, source=where), obj


async def _poll(
    ctx: Context,
    what: str,
    *,
    targets: Sequence[Prepared],
    live: Live,
    within: float,
    passing: Callable[[dict[str, Any]], health.Health | None],
) -> str:
    """Poll until every target passes; return "" or the reason it timed out."""
    deadline = time.monotonic() + within
    while True:
        waiting: list[tuple[Prepared, str]] = []
        for p in targets:
            problem = passing(live[p.key])
            if problem is not None:
                waiting.append((p, problem.reason))
        if not waiting:
            return ""
        if time.monotonic() >= deadline:
            p, why = waiting[0]
            more = f" (and {len(waiting) - 1} more)" if len(waiting) > 1 else ""
            return f"{what} within {within:.0f} s: {p.key}: {why}{more}"
        await asyncio.sleep(ctx.options.poll_interval)
        fresh = await asyncio.gather(
            *(ctx.kube.get(p.rt, namespace=p.key.namespace, name=p.key.name) for p, _ in waiting)
        )
        for (p, _), obj in zip(waiting, fresh, strict=True):
            live[p.key] = obj if obj is not None else {}


async def _wait_established(ctx: Context, crds: Sequence[Prepared], live: Live) -> str:
    def established(obj: dict[str, Any]) -> health.Health | None:
        h = health.assess(obj) if obj else health.missing("the CRD")
        return None if h.status == health.HEALTHY else h

    return await _poll(
        ctx,
        "CRDs were not established",
        targets=crds,
        live=live,
        within=ctx.options.crd_timeout,
        passing=established,
    )


async def _wait_healthy(ctx: Context, label: str, applied: Sequence[Prepared], live: Live) -> str:
    def healthy(obj: dict[str, Any]) -> health.Health | None:
        h = health.assess(obj) if obj else health.missing("the object")
        return None if h.status in PASSING else h

    return await _poll(
        ctx,
        f"{label} did not become healthy",
        targets=applied,
        live=live,
        within=ctx.options.wave_timeout,
        passing=healthy,
    )
