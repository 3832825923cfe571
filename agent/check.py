"""Compares the cluster with an app's plan, read-only, and heals what drifted.

`check` reads every object (one list per type and namespace with many objects, else single
gets), dry-runs server-side apply against each one whose live resourceVersion it has not seen
in sync, and reports health and the drifted fields (`agent.drift`); what left Git is reported
with why it is still there. `heal` is `check` plus re-applying what drifted or went missing,
when the policy has selfHeal or the sync was asked for. `inventory_health` is what can be said
without the bundle: the health of what the in-cluster inventory lists.

Ignored fields (the bundle's ignore rules, `agent.ignore`) are never drift: they are removed
from both sides before comparing, an object ignored as a whole is always in sync, and the
dry-run and the self-heal send the live values there, so healing never resets them.

`check` never writes; `heal` never sends a write when nothing drifted.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Mapping, Sequence
from typing import Any

from fleetops.agent import (
    apply,
    drift,
    errors,
    explain,
    health,
    ids,
    ignore,
    inventory,
    kube,
    manifests,
    respect,
)
from fleetops.agent import prune as pruning
from fleetops.agent import status as st
from fleetops.agent.context import Context
from fleetops.agent.prepare import Plan, Prepared, Target
from fleetops.proto.v1 import types_pb2


async def heal(
    ctx: Context,
    bundle: types_pb2.Bundle,
    policy: types_pb2.SyncPolicy,
    *,
    plan: Plan,
    target: Target,
    force_heal: bool,
    previous: inventory.Inventory | None,
    allow_mass_prune: bool,
) -> st.AppResult:
    """`check`, then re-apply what is out of sync when selfHeal is on or `force_heal`;
    ignored fields keep their live values."""
    result, live = await _check(
        ctx,
        bundle,
        policy,
        plan=plan,
        target=target,
        previous=previous,
        allow_mass_prune=allow_mass_prune,
    )
    if not (policy.self_heal or force_heal):
        return result
    by_key = plan.by_key()
    todo = [r for r in result.resources if r.key in by_key and r.sync == st.OUT_OF_SYNC]
    if not todo:
        return result
    # Someone may have deleted the whole namespace: objects cannot come back without it.
    await apply.ensure_default_namespace(ctx, bundle, plan.prepared)
    fixed = await asyncio.gather(
        *(
            apply.apply_one(
                ctx,
                respect.one(by_key[r.key], live.get(r.key), bundle=bundle),
                force=policy.force_conflicts,
            )
            for r in todo
        )
    )
    replaced: dict[manifests.Key, st.ResourceResult] = {}
    for r, (applied, obj) in zip(todo, fixed, strict=True):
        if obj is None:
            replaced[r.key] = dataclasses.replace(applied, drift=r.drift)
            continue
        ctx.remember(target.app, key=r.key, desired=by_key[r.key].obj, live=obj)
        fields = ", ".join(f.path for f in r.drift) or "the object was missing"
        replaced[r.key] = dataclasses.replace(
            applied,
            health=health.assess(obj),
            action="healed",
            message=f"self-healed: restored {fields}",
        )
    results = [replaced.get(r.key, r) for r in result.resources]
    return st.AppResult.rolled_up(
        app=target.app,
        revision=target.revision,
        bundle_digest=target.digest,
        results=results,
        reason=result.reason if result.prune_held else "",
        healed=sum(1 for r in replaced.values() if r.action == "healed"),
        applied_at=time.time(),
        prune_held=result.prune_held,
    )


async def check(
    ctx: Context,
    bundle: types_pb2.Bundle,
    policy: types_pb2.SyncPolicy,
    *,
    plan: Plan,
    target: Target,
    previous: inventory.Inventory | None,
    allow_mass_prune: bool,
) -> st.AppResult:
    """Health and drift of every resource in `plan`, through dry-run. Never writes."""
    result, _ = await _check(
        ctx,
        bundle,
        policy,
        plan=plan,
        target=target,
        previous=previous,
        allow_mass_prune=allow_mass_prune,
    )
    return result


async def _check(
    ctx: Context,
    bundle: types_pb2.Bundle,
    policy: types_pb2.SyncPolicy,
    *,
    plan: Plan,
    target: Target,
    previous: inventory.Inventory | None,
    allow_mass_prune: bool,
) -> tuple[st.AppResult, dict[manifests.Key, dict[str, Any]]]:
    """`check`'s result, and the live objects it read."""
    live, unreadable = await _fetch_live(ctx, plan.prepared)
    full = ctx.next_check_is_full(target.app)

    async def one(p: Prepared) -> st.ResourceResult:
        return await _check_one(
            ctx,
            p,
            app=target.app,
            live=live.get(p.key),
            denied=unreadable.get(p.key),
            full=full,
            force=policy.force_conflicts,
            rules=ignore.matching(bundle.ignore_differences, p.key),
        )

    results = list(await asyncio.gather(*(one(p) for p in plan.prepared)))
    held = ""
    if previous is not None:
        wanted = plan.by_key()
        leftovers = [e for e in previous.entries if e.key not in wanted]
        hold = pruning.held_back(
            previous, leftovers=leftovers, policy=policy, allowed=allow_mass_prune
        )
        if not policy.prune:
            note = "no longer in Git; prune is off for this app"
        elif not plan.prepared and not policy.allow_empty:
            note = "no longer in Git; not pruned: the bundle is empty and allowEmpty is off"
        elif hold is not None:
            note = f"no longer in Git; not pruned: prune held, it {hold.share()}"
            held = hold.reason(app=target.app, cluster=ctx.options.cluster)
        else:
            note = "no longer in Git; the next sync prunes it"
        results += [
            st.ResourceResult.kept(key=e.key, version=e.version, reason=note) for e in leftovers
        ]
    held = "" if plan.failures or any(r.failed for r in results) else held
    return st.AppResult.rolled_up(
        app=target.app,
        revision=target.revision,
        bundle_digest=target.digest,
        results=plan.failures + results,
        reason=held,
        prune_held=bool(held),
    ), live


async def _check_one(
    ctx: Context,
    p: Prepared,
    *,
    app: ids.AppName,
    live: dict[str, Any] | None,
    denied: errors.Forbidden | None,
    full: bool,
    force: bool,
    rules: ignore.Rules,
) -> st.ResourceResult:
    """One object against Git: `full` dry-runs it even when its resourceVersion is known;
    `rules`: what of it is ignored."""
    key, version, where = p.key, p.rt.version, p.resource.where
    if denied is not None:
        reason = ctx.denied(denied, namespace=p.named_namespace)
        return st.ResourceResult.apply_failed(
            key=key, version=version, reason=reason, source=where, action=""
        )
    if live is None:
        return st.ResourceResult.out_of_sync(
            key=key,
            version=version,
            health=health.missing(str(key)),
            reason="missing from the cluster",
            source=where,
        )
    h = health.assess(live)
    if rules.whole_object or (
        not full and ctx.known_in_sync(app, key=key, desired=p.obj, live=live)
    ):
        return st.ResourceResult.in_sync(key=key, version=version, health=h, source=where)
    try:
        dry, live = await _dry_run(ctx, p, live=live, force=force, rules=rules)
    except errors.Conflict as e:
        managers = ", ".join(e.managers) or "another field manager"
        return st.ResourceResult.out_of_sync(
            key=key,
            version=version,
            health=h,
            reason=f"conflict with {managers}: {explain.first_line(str(e))}",
            conflict_manager=managers,
            source=where,
        )
    except errors.Forbidden as e:
        reason = ctx.denied(e, namespace=p.named_namespace)
        return st.ResourceResult.apply_failed(
            key=key, version=version, reason=reason, source=where, health=h, action=""
        )
    except errors.KubeError as e:
        return st.ResourceResult.apply_failed(
            key=key,
            version=version,
            reason=explain.first_line(str(e)),
            source=where,
            health=h,
            action="",
        )
    seen: dict[str, Any] = live
    if rules:
        dry, seen = ignore.strip(dry, rules, live=live), ignore.strip(live, rules, live=live)
    fields = drift.diff(desired=dry, live=seen, secret=key.kind == "Secret" and not key.group)
    if not fields:
        ctx.remember(app, key=key, desired=p.obj, live=live)
        return st.ResourceResult.in_sync(key=key, version=version, health=h, source=where)
    shown = ", ".join(f.path for f in fields[:3]) + (" ..." if len(fields) > 3 else "")
    return st.ResourceResult.out_of_sync(
        key=key,
        version=version,
        health=h,
        reason=f"drifted: {shown}",
        drift=tuple(fields),
        source=where,
    )


async def _dry_run(
    ctx: Context, p: Prepared, *, live: dict[str, Any], force: bool, rules: ignore.Rules
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The dry-run of `p` and the live object it is to be compared with: the same version of
    it. The dry-run answers with the object as stored when it ran; when someone wrote the
    object after `live` was read (a controller bumping an annotation, an HPA scaling), the
    newer live object is read, or the comparison would call their write our drift."""
    for _attempt in range(3):
        body = ignore.respect(p.obj, live, rules) if rules else p.obj
        dry = await ctx.kube.apply(p.rt, body, force=force, dry_run=True)
        if _version(dry) == _version(live):
            break
        fresh = await ctx.kube.get(p.rt, namespace=p.key.namespace, name=p.key.name)
        if fresh is None:  # deleted meanwhile: the next pass finds it missing
            break
        live = fresh
        if not rules and _version(fresh) == _version(dry):
            break  # else the body came from the older live object: dry-run it again
    return dry, live


def _version(obj: Mapping[str, Any]) -> str:
    return str(obj.get("metadata", {}).get("resourceVersion", ""))


async def _fetch_live(
    ctx: Context, prepared: Sequence[Prepared]
) -> tuple[dict[manifests.Key, dict[str, Any]], dict[manifests.Key, errors.Forbidden]]:
    """Live objects: one list per (type, namespace) with many objects, else single gets;
    and the objects the agent may not read. An API server that does not answer raises
    (`errors.Unreachable`): nothing would read as anything but missing."""
    groups: dict[tuple[kube.ResourceType, str], list[Prepared]] = {}
    for p in prepared:
        groups.setdefault((p.rt, p.key.namespace), []).append(p)
    live: dict[manifests.Key, dict[str, Any]] = {}
    denied: dict[manifests.Key, errors.Forbidden] = {}

    async def fetch(rt: kube.ResourceType, ns: str, members: list[Prepared]) -> None:
        if len(members) >= 4:
            try:
                items = await ctx.kube.list(rt, ns)
            except errors.Forbidden as e:
                denied.update((p.key, e) for p in members)
                return
            except errors.Unreachable:
                raise
            except errors.KubeError:
                return  # e.g. the CRD is gone: every member reads as missing
            names = {p.key.name: p for p in members}
            for item in items:
                match = names.get(item["metadata"]["name"])
                if match is not None:
                    live[match.key] = item
            return
        got: list[Awaitable[dict[str, Any] | None]] = [
            ctx.kube.get(rt, namespace=p.key.namespace, name=p.key.name) for p in members
        ]
        for p, obj in zip(members, await asyncio.gather(*got, return_exceptions=True), strict=True):
            if isinstance(obj, dict):
                live[p.key] = obj
            elif isinstance(obj, errors.Forbidden):
                denied[p.key] = obj
            elif isinstance(obj, errors.Unreachable):
                raise obj

    await asyncio.gather(*(fetch(rt, ns, m) for (rt, ns), m in groups.items()))
    return live, denied


async def inventory_health(ctx: Context, app: ids.AppName) -> st.AppResult | None:
    """Health of what the in-cluster inventory lists, when no bundle is at hand (a new
    agent pod, another machine). Drift cannot be checked without the bundle, and the
    result says so. None when the cluster has no inventory for the app."""
    inv = await ctx.inventories.load(app)
    if inv is None:
        return None

    async def one(e: inventory.Entry) -> st.ResourceResult:
        try:
            rt = await ctx.kube.resource_type_for_group(group=e.key.group, kind=e.key.kind)
            obj = await ctx.kube.get(rt, namespace=e.key.namespace, name=e.key.name)
        except (errors.KubeError, errors.UnknownKind) as err:
            return st.ResourceResult.unread(
                key=e.key,
                version=e.version,
                health=None,
                reason=f"cannot read: {explain.first_line(str(err))}",
            )
        h = health.assess(obj) if obj is not None else health.missing(str(e.key))
        return st.ResourceResult.unread(key=e.key, version=e.version, health=h, reason="")

    results = list(await asyncio.gather(*(one(e) for e in inv.entries)))
    reason = (
        "drift not checked: no local copy of the bundle here (run status where it was "
        "applied, or apply it again); health is from the live objects"
    )
    return st.AppResult.rolled_up(
        app=app,
        revision=inv.revision,
        bundle_digest=inv.bundle_digest,
        results=results,
        reason=reason if inv.bundle_digest else "the last sync did not complete; " + reason,
        sync=st.UNKNOWN_SYNC,
    )
