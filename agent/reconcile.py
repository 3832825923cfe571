"""Makes one cluster match one app's bundle: the facade the runner and the CLI call.

`Reconciler` composes the steps: `agent.prepare` (parse, validate, confine, resolve: the plan),
`agent.apply` (sync hooks around waves of server-side apply, field manager `fleetops`, then
`agent.prune` of what left the bundle, only what the in-cluster inventory says the agent
applied), and `agent.check` (health and drift through server-side dry-run, and self-heal).
`reconcile` syncs a bundle the cluster does not have yet and checks (and self-heals) one it
has; `sync` always syncs. Hooks run only in a sync; a check reports how they look. A sync
that a hook failed is not run again by `reconcile` for the same bundle (a failing migration
Job must not re-run every resync, as Argo CD's auto-sync does not retry a failed revision):
a new bundle, `retry=True` (the hub's `sync`) or `sync` runs it again.

An app it cannot reconcile at all (the API server refuses the agent or does not answer) still
gets a result, ApplyFailed with the reason (`agent.explain`): the public methods never raise the
agent's own errors, so every app is always reported. It decides which step runs, and nothing
else: every rule lives in the step that applies it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fleetops.agent import (
    apply,
    check,
    context,
    errors,
    explain,
    hookrun,
    ids,
    inventory,
    kube,
    manifests,
    prepare,
    prune,
    respect,
)
from fleetops.agent import status as st
from fleetops.proto.v1 import types_pb2

Options = context.Options  # the facade's options: callers build them as reconcile.Options


class Reconciler:
    def __init__(self, client: kube.Kube, options: Options | None = None) -> None:
        self.kube = client
        self.options = options or Options()
        self._ctx = context.Context(client, self.options)
        self.inventories = self._ctx.inventories
        self._planner = prepare.Planner(client, agent_namespace=self.options.inventory_namespace)
        # app -> (bundle, reason) of its last sync, which a hook failed
        self._hook_failed: dict[ids.AppName, tuple[ids.Digest, str]] = {}
        # app -> the objects its last plan manages, and their types: what the agent watches
        self._managed: dict[ids.AppName, dict[manifests.Key, kube.ResourceType]] = {}

    def managed(self, app: str) -> dict[manifests.Key, kube.ResourceType]:
        """The objects `app`'s last planned bundle applies (hooks aside), with their types."""
        return dict(self._managed.get(ids.AppName(app), {}))

    def unchanged(self, app: str, *, key: manifests.Key, live: dict[str, Any]) -> bool:
        """A watch saw `live`, the version last seen in sync: nothing to check."""
        return self._ctx.unchanged(ids.AppName(app), key=key, live=live)

    def uncounted(self, app: str) -> contextlib.AbstractContextManager[None]:
        """Reconciles of `app` meanwhile answer a watch event, not the resync timer: see
        `Context.uncounted`."""
        return self._ctx.uncounted(ids.AppName(app))

    def forget(self, app: str) -> None:
        """`app` is no longer assigned here."""
        self._managed.pop(ids.AppName(app), None)
        self._ctx.forget(ids.AppName(app))

    async def _plan(self, bundle: types_pb2.Bundle) -> prepare.Plan:
        plan = await self._planner.plan(bundle)
        self._managed[ids.AppName(bundle.app)] = {p.key: p.rt for p in plan.prepared}
        return plan

    async def reconcile(
        self,
        bundle: types_pb2.Bundle,
        policy: types_pb2.SyncPolicy,
        *,
        allow_mass_prune: bool = False,
        retry: bool = False,
    ) -> st.AppResult:
        """What the agent's loop calls: sync a bundle the cluster does not have yet, else
        check it (and self-heal when the policy says so). `allow_mass_prune`: an operator let
        this bundle prune past the policy's maxPrunePercent. `retry`: an operator asked for a
        sync, so a bundle whose sync a hook failed is synced again."""
        if retry:
            self._hook_failed.pop(ids.AppName(bundle.app), None)
        return await self._contained(
            bundle,
            lambda: self._reconcile(
                bundle, policy, explicit=False, allow_mass_prune=allow_mass_prune
            ),
        )

    async def sync(
        self,
        bundle: types_pb2.Bundle,
        policy: types_pb2.SyncPolicy,
        *,
        allow_mass_prune: bool = False,
    ) -> st.AppResult:
        """Apply the bundle; prune when the policy allows and everything applied. A bundle
        the cluster already has completely is re-applied only where it drifted."""
        return await self._contained(
            bundle,
            lambda: self._reconcile(
                bundle, policy, explicit=True, allow_mass_prune=allow_mass_prune
            ),
        )

    async def check(
        self,
        bundle: types_pb2.Bundle,
        policy: types_pb2.SyncPolicy,
        *,
        allow_mass_prune: bool = False,
    ) -> st.AppResult:
        """Health and drift of every resource, through dry-run. Never writes."""

        async def work() -> st.AppResult:
            target = prepare.Target.of(bundle)
            previous = await self.inventories.load(target.app)
            plan = await self._plan(bundle)
            result = await check.check(
                self._ctx,
                bundle,
                policy,
                plan=plan,
                target=target,
                previous=previous,
                allow_mass_prune=allow_mass_prune,
            )
            return await self._with_hooks(result, plan)

        return await self._contained(bundle, work)

    async def heal(
        self,
        bundle: types_pb2.Bundle,
        policy: types_pb2.SyncPolicy,
        *,
        allow_mass_prune: bool = False,
    ) -> st.AppResult:
        """`check`, then re-apply what drifted when the policy has selfHeal."""

        async def work() -> st.AppResult:
            target = prepare.Target.of(bundle)
            previous = await self.inventories.load(target.app)
            plan = await self._plan(bundle)
            result = await check.heal(
                self._ctx,
                bundle,
                policy,
                plan=plan,
                target=target,
                force_heal=False,
                previous=previous,
                allow_mass_prune=allow_mass_prune,
            )
            return await self._with_hooks(result, plan)

        return await self._contained(bundle, work)

    async def inventory_health(self, app: str) -> st.AppResult | None:
        """Health of what the in-cluster inventory lists, when no bundle is at hand; None when
        the cluster has no inventory for the app (see `agent.check.inventory_health`)."""
        return await self._ctx.checked(
            None, lambda: check.inventory_health(self._ctx, ids.AppName(app))
        )

    async def wait_healthy(
        self,
        bundle: types_pb2.Bundle,
        policy: types_pb2.SyncPolicy,
        within: float,
        *,
        allow_mass_prune: bool = False,
    ) -> st.AppResult:
        """Re-check until the app is healthy or `within` seconds pass; return the last result."""
        deadline = time.monotonic() + within
        while True:
            result = await self.check(bundle, policy, allow_mass_prune=allow_mass_prune)
            if result.health in apply.PASSING or result.failed or time.monotonic() >= deadline:
                return result
            await asyncio.sleep(self.options.poll_interval)

    async def _with_hooks(self, result: st.AppResult, plan: prepare.Plan) -> st.AppResult:
        """A check's result with the plan's hooks as they are now (`agent.hookrun.observed`)
        and the hooks a sync never runs: a check looks at hooks but never runs them."""
        if not plan.hooks and not plan.noted:
            return result
        extra = await hookrun.observed(self._ctx, plan.hooks)
        return dataclasses.replace(result, resources=(*result.resources, *extra, *plan.noted))

    async def _contained(
        self, bundle: types_pb2.Bundle, work: Callable[[], Awaitable[st.AppResult]]
    ) -> st.AppResult:
        """`work()`, or the app's failure when the agent could not reconcile it at all."""
        try:
            return await self._ctx.checked(bundle, work)  # custom health checks throughout
        except errors.AgentError as e:
            target = prepare.Target.of(bundle)
            return explain.app_failure(
                e,
                app=target.app,
                revision=target.revision,
                bundle_digest=target.digest,
                app_namespace=bundle.namespace,
                agent_namespace=self.options.inventory_namespace,
                cluster=self.options.cluster,
            )

    async def _reconcile(
        self,
        bundle: types_pb2.Bundle,
        policy: types_pb2.SyncPolicy,
        *,
        explicit: bool,
        allow_mass_prune: bool,
    ) -> st.AppResult:
        target = prepare.Target.of(bundle)
        previous = await self.inventories.load(target.app)
        plan = await self._plan(bundle)
        if _settled(
            previous, digest=target.digest, plan=plan, policy=policy, allowed=allow_mass_prune
        ):  # hooks ran when this bundle was synced: a check or a heal never runs them again
            result = await check.heal(
                self._ctx,
                bundle,
                policy,
                plan=plan,
                target=target,
                force_heal=explicit,
                previous=previous,
                allow_mass_prune=allow_mass_prune,
            )
            return await self._with_hooks(result, plan)
        failed = self._hook_failed.get(target.app)
        if not explicit and failed is not None and failed[0] == target.digest:
            return await self._not_retried(bundle, policy, plan=plan, target=target, why=failed[1])
        self._hook_failed.pop(target.app, None)
        result = await apply.apply_plan(
            self._ctx,
            bundle,
            policy,
            target=target,
            previous=previous,
            plan=await respect.plan(  # ignored fields keep their live values
                self._ctx,
                bundle,
                await prepare.unclaimed(self.inventories, app=target.app, plan=plan),
            ),
            allow_mass_prune=allow_mass_prune,
        )
        if result.failed and any(r.hook and r.failed for r in result.resources):
            self._hook_failed[target.app] = (target.digest, result.reason)
        return result

    async def _not_retried(
        self,
        bundle: types_pb2.Bundle,
        policy: types_pb2.SyncPolicy,
        *,
        plan: prepare.Plan,
        target: prepare.Target,
        why: str,
    ) -> st.AppResult:
        """How the app looks now, still failed: its sync stopped on a hook and is not re-run."""
        result = await check.check(
            self._ctx,
            bundle,
            policy,
            plan=plan,
            target=target,
            previous=await self.inventories.load(target.app),
            allow_mass_prune=False,
        )
        result = await self._with_hooks(result, plan)
        return dataclasses.replace(
            result,
            sync=st.APPLY_FAILED,
            reason=f"{why}; not retried for this revision: fix it in Git, or run "
            f"`fleetops-hub sync {target.app}` to run the sync again",
        )


def _settled(
    previous: inventory.Inventory | None,
    *,
    digest: ids.Digest,
    plan: prepare.Plan,
    policy: types_pb2.SyncPolicy,
    allowed: bool,
) -> bool:
    """The cluster got this exact bundle completely, and holds nothing this sync would
    prune: what is left over stays because prune is off, the bundle is empty, or the prune
    is held. Re-applying would write the same objects again and prune nothing."""
    if previous is None or previous.bundle_digest != digest or plan.failures:
        return False
    wanted = {p.key for p in plan.prepared}
    if not wanted <= previous.keys():
        return False
    leftovers = [e for e in previous.entries if e.key not in wanted]
    return (
        not leftovers
        or not policy.prune
        or (not plan.prepared and not policy.allow_empty)
        or prune.held_back(previous, leftovers=leftovers, policy=policy, allowed=allowed)
        is not None
    )
