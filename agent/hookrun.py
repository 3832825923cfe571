"""Runs an app's sync hooks (`agent.hooks`) against the cluster: one phase, wave by wave.

Running a hook is: delete the object an earlier sync left when its policy has
BeforeHookCreation (and wait until it is gone, so an immutable Job is created afresh), apply
it with server-side apply, wait until it finishes, then delete it when its policy says so for
how it ended. "Finished" is the object's health (`agent.health.assess`): Healthy succeeded,
Degraded (or unreadable, or gone) failed, anything else is still running, up to the wave
timeout. A kind without its own health check is Healthy once it exists, so it is done as soon
as it is created.

It never touches an object that is not one of the app's hooks: a live object of the hook's
name that lacks the app's mark (`hooks.MARK`, put on every hook it applies) is neither
deleted nor applied over, and the hook fails saying so. It never reports object content: a
hook's result carries its key, phases, health and a one-line reason only.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from fleetops.agent import errors, explain, health, hooks, manifests
from fleetops.agent import status as st
from fleetops.agent.context import Context
from fleetops.agent.prepare import HookPrepared, Prepared

DONE = (health.HEALTHY,)
FAILED = (health.DEGRADED, health.UNKNOWN, health.MISSING)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Outcome:
    """What running hooks did: a result per hook, why the phase stopped ("" when every hook
    succeeded), and the hooks deleted afterwards by their policy (no longer to remember)."""

    results: list[st.ResourceResult]
    failed: str = ""
    gone: frozenset[manifests.Key] = frozenset()

    def __add__(self, other: Outcome) -> Outcome:
        return Outcome(
            results=[*self.results, *other.results],
            failed=self.failed or other.failed,
            gone=self.gone | other.gone,
        )

    def last_per_key(self) -> list[st.ResourceResult]:
        """One result per hook: a hook of several phases reports how its last run went (a
        phase it did not get to never hides one it ran in)."""
        last: dict[manifests.Key, st.ResourceResult] = {}
        for r in self.results:
            if r.key not in last or r.action != "skipped":
                last[r.key] = r
        return list(last.values())


Started = tuple[HookPrepared, st.ResourceResult, dict[str, Any] | None]
# How an object is applied (`agent.apply.apply_one` with the app's force setting): its result,
# and the live object when it was accepted.
Apply = Callable[[Prepared], Awaitable[tuple[st.ResourceResult, dict[str, Any] | None]]]


async def run_phase(
    ctx: Context, hooks_: Sequence[HookPrepared], *, phase: str, apply: Apply
) -> Outcome:
    """Run the hooks of `phase` wave by wave (ascending); the first wave with a failed hook
    stops the phase, and the hooks of later waves are reported as not run."""
    waves: dict[int, list[HookPrepared]] = {}
    for h in hooks_:
        waves.setdefault(h.wave, []).append(h)
    total = Outcome(results=[])
    for wave in sorted(waves):
        if total.failed:
            total += not_run(waves[wave], why=f"not run: {total.failed}")
            continue
        started = list(await asyncio.gather(*(start(ctx, h, apply=apply) for h in waves[wave])))
        total += await finish(ctx, started, phase=phase)
    return total


async def sync_fail(
    ctx: Context, hooks_: Sequence[HookPrepared], *, failed: bool, ran: Outcome, apply: Apply
) -> Outcome:
    """SyncFail hooks: run when the sync `failed` (a failing SyncFail hook fails nothing more:
    the sync has failed already), else noted as not run (in sync: nothing to do for them)."""
    if failed:
        outcome = await run_phase(ctx, hooks_, phase=hooks.SYNC_FAIL, apply=apply)
        return dataclasses.replace(outcome, failed="")
    ran_keys = {r.key for r in ran.results}
    return Outcome(
        results=[
            st.ResourceResult.not_run(
                key=h.key,
                version=h.prepared.rt.version,
                reason="not run: SyncFail hooks run only when a sync fails",
                hook=h.hook.label,
                source=h.prepared.resource.where,
            )
            for h in hooks_
            if h.key not in ran_keys
        ]
    )


def not_run(hooks_: Sequence[HookPrepared], *, why: str) -> Outcome:
    """Hooks a sync did not get to (the reason says why)."""
    return Outcome(
        results=[
            dataclasses.replace(
                st.ResourceResult.skipped(key=h.key, version=h.prepared.rt.version, reason=why),
                hook=h.hook.label,
                source=h.prepared.resource.where,
            )
            for h in hooks_
        ]
    )


async def start(ctx: Context, h: HookPrepared, *, apply: Apply) -> Started:
    """Refuse the hook when a live object of its name is not one of the app's hooks; else
    delete the hook's earlier object when BeforeHookCreation says so, then apply it."""
    p = h.prepared
    problem, refused = await _clear(ctx, h)
    if problem:
        make = st.ResourceResult.refused if refused else st.ResourceResult.apply_failed
        failed = make(key=p.key, version=p.rt.version, reason=problem, source=p.resource.where)
        return h, dataclasses.replace(failed, hook=h.hook.label), None
    result, obj = await apply(p)
    return h, dataclasses.replace(result, hook=h.hook.label), obj


async def finish(ctx: Context, started: Sequence[Started], *, phase: str) -> Outcome:
    """Wait for every started hook to succeed or fail (or the wave timeout), then apply the
    delete policies. The Outcome fails naming the first hook that failed and why."""
    deadline = time.monotonic() + ctx.options.wave_timeout
    results: dict[manifests.Key, st.ResourceResult] = {}
    ended: dict[manifests.Key, bool] = {}  # key -> succeeded
    waiting: dict[manifests.Key, tuple[HookPrepared, dict[str, Any]]] = {}
    last: dict[manifests.Key, dict[str, Any]] = {}  # how each hook was last seen
    for h, result, obj in started:
        results[h.key] = result
        if obj is None:
            ended[h.key] = False  # it was never created: its result says why
        else:
            waiting[h.key] = (h, obj)
    while waiting:
        for key, (_, obj) in list(waiting.items()):
            last[key] = obj
            vanished = health.missing(f"{key} (deleted while running)")
            found = health.assess(obj) if obj else vanished
            if found.status in DONE or found.status in FAILED:
                del waiting[key]
                ended[key] = found.status in DONE
                results[key] = _ended(results[key], phase=phase, found=found)
            elif time.monotonic() >= deadline:
                del waiting[key]
                ended[key] = False
                timeout = health.Health(
                    found.status,
                    f"did not finish within {ctx.options.wave_timeout:.0f} s: {found.reason}",
                )
                results[key] = _ended(results[key], phase=phase, found=timeout)
        if not waiting:
            break
        await asyncio.sleep(ctx.options.poll_interval)
        fresh = await asyncio.gather(
            *(_get(ctx, h.prepared) for h, _ in waiting.values()), return_exceptions=True
        )
        for key, got in zip(list(waiting), fresh, strict=True):
            if isinstance(got, BaseException):
                continue  # look again next round; the deadline still holds
            waiting[key] = (waiting[key][0], got or {})
    gone: set[manifests.Key] = set()
    by_key = {h.key: h for h, _, _ in started}
    for key, succeeded in ended.items():
        h = by_key[key]
        policy = hooks.HOOK_SUCCEEDED if succeeded else hooks.HOOK_FAILED
        if policy not in h.hook.delete_policies or results[key].action in ("failed", "refused"):
            continue
        if not hooks.is_hook_of(last.get(key) or {}, app=h.app):
            note = f"; not deleted ({policy}): it no longer carries {hooks.MARK}: {h.app}"
            results[key] = dataclasses.replace(results[key], message=results[key].message + note)
            continue
        try:
            await ctx.kube.delete(h.prepared.rt, namespace=key.namespace, name=key.name)
        except errors.KubeError as e:
            note = f"; could not delete it ({policy}): {explain.first_line(str(e))}"
        else:
            gone.add(key)
            note = f"; deleted ({policy})"
        results[key] = dataclasses.replace(results[key], message=results[key].message + note)
    failed = [results[h.key] for h, _, _ in started if not ended[h.key]]
    reason = ""
    if failed:
        first = failed[0]
        more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        reason = f"{phase} hook {first.key} failed: {first.message}{more}"
    return Outcome(
        results=[results[h.key] for h, _, _ in started], failed=reason, gone=frozenset(gone)
    )


def _ended(result: st.ResourceResult, *, phase: str, found: health.Health) -> st.ResourceResult:
    if found.status in DONE:
        return dataclasses.replace(
            result, health=found, message=f"{phase} hook succeeded: {found.reason}"
        )
    return dataclasses.replace(
        result,
        sync=st.APPLY_FAILED,
        health=found,
        action="hook failed",
        message=found.reason,
    )


async def _get(ctx: Context, p: Prepared) -> dict[str, Any] | None:
    return await ctx.kube.get(p.rt, namespace=p.key.namespace, name=p.key.name)


async def _clear(ctx: Context, h: HookPrepared) -> tuple[str, bool]:
    """Make way for the hook: "" when it may be applied, else why not and whether it was
    refused (a live object of its name that is not one of the app's hooks: never deleted nor
    applied over). With BeforeHookCreation, the app's earlier hook is deleted, and waited for
    until it is gone (so an immutable Job is created afresh)."""
    p = h.prepared
    try:
        live = await _get(ctx, p)
        if live is None:
            return "", False
        if not hooks.is_hook_of(live, app=h.app):
            return hooks.not_ours(p.key, app=h.app), True
        if hooks.BEFORE_HOOK_CREATION not in h.hook.delete_policies:
            return "", False
        await ctx.kube.delete(p.rt, namespace=p.key.namespace, name=p.key.name)
        deadline = time.monotonic() + ctx.options.wave_timeout
        while await _get(ctx, p) is not None:
            if time.monotonic() >= deadline:
                return (
                    f"the earlier {p.key} was still being deleted after "
                    f"{ctx.options.wave_timeout:.0f} s ({hooks.BEFORE_HOOK_CREATION}): look at "
                    "its finalizers"
                ), False
            await asyncio.sleep(ctx.options.poll_interval)
    except errors.Forbidden as e:
        return ctx.denied(e), False
    except errors.KubeError as e:
        return f"could not delete the earlier object: {explain.first_line(str(e))}", False
    return "", False


async def observed(ctx: Context, hooks_: Sequence[HookPrepared]) -> list[st.ResourceResult]:
    """How the hooks of an applied bundle look now, for a check (which never runs them): their
    health when they exist, else that their delete policy removed them. Never a drift, and
    never counted in the app's health (`agent.status.rollup_health`)."""

    async def one(h: HookPrepared) -> st.ResourceResult:
        p = h.prepared
        try:
            obj = await _get(ctx, p)
        except errors.Forbidden as e:
            found, note = None, ctx.denied(e)
        except errors.KubeError as e:
            found, note = None, f"cannot read: {explain.first_line(str(e))}"
        else:
            found = health.assess(obj) if obj is not None else None
            note = "" if obj is not None else "not in the cluster: deleted by its delete policy"
        result = st.ResourceResult.in_sync(
            key=p.key, version=p.rt.version, health=found, source=p.resource.where
        )
        return dataclasses.replace(result, hook=h.hook.label, message=note)

    return list(await asyncio.gather(*(one(h) for h in hooks_)))
