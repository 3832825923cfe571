"""Makes one cluster match one app's bundle: apply in order, prune, detect drift, self-heal.

`Reconciler.sync` applies a bundle (server-side apply, field manager `fleetops`), in the order
of `agent.order`, waiting for each wave to be healthy before the next, then prunes what left
the bundle, and only what the in-cluster inventory says the agent applied. `check` is
read-only: it compares the cluster with the bundle through server-side dry-run and reports
health and drifted fields. `heal` is `check` plus re-applying what drifted when self-heal is on.

It must never prune after a partial apply, never delete an object it did not apply, and never
send a write when nothing drifted. An app it cannot reconcile at all (the API server refuses the
agent or does not answer) still gets a result, ApplyFailed with the reason (`agent.explain`):
the public methods never raise the agent's own errors, so every app is always reported.

The rules of `agent.guard` bound what an app may touch: its bundle never writes into the
agent's own namespace nor an inventory (refused per resource before any API call), a Namespace
holding objects that are not the app's is not pruned, and a prune of more than the app's
maxPrunePercent waits for an operator's allowance.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from fleetops.agent import (
    drift,
    errors,
    explain,
    guard,
    health,
    inventory,
    kube,
    manifests,
    order,
    prune,
)
from fleetops.agent import status as st
from fleetops.proto import bundles
from fleetops.proto.v1 import types_pb2

PRUNE_ANNOTATION = prune.PRUNE_ANNOTATION
_PASSING = (health.HEALTHY, health.SUSPENDED)


@dataclasses.dataclass(frozen=True)
class Options:
    inventory_namespace: str = "fleetops-system"
    wave_timeout: float = 300.0  # how long a wave may take to become healthy
    crd_timeout: float = 60.0  # how long a CRD may take to become Established
    poll_interval: float = 1.0
    full_check_every: int = (
        10  # every Nth check dry-runs even objects whose resourceVersion is known
    )
    # The cluster's name in the fleet, for messages that tell an operator what to run on the
    # hub (e.g. to allow a held prune); empty when the agent runs without a hub.
    cluster: str = ""


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A resource ready to send: its type is known and its namespace is set."""

    resource: manifests.Resource
    rt: kube.ResourceType

    @property
    def key(self) -> manifests.Key:
        return self.resource.key

    @property
    def obj(self) -> Mapping[str, Any]:
        return self.resource.obj


@dataclasses.dataclass(frozen=True)
class _Plan:
    prepared: list[Prepared]
    failures: list[st.ResourceResult]


def _fingerprint(obj: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else "no message"


def _named_namespace(key: manifests.Key) -> str:
    """The namespace a Namespace object in the bundle names, else ""."""
    return key.name if key.kind == "Namespace" and not key.group else ""


def _hold(
    previous: inventory.Inventory | None,
    leftovers: Sequence[inventory.Entry],
    policy: types_pb2.SyncPolicy,
    allowed: bool,
) -> guard.MassPrune | None:
    """The mass prune this sync must hold back, or None when it may prune."""
    if previous is None or not leftovers or allowed:
        return None
    hold = guard.MassPrune(
        would_delete=len(leftovers),
        total=len(previous.entries),
        limit=guard.max_prune_percent(policy.max_prune_percent),
    )
    return hold if hold.held else None


class Reconciler:
    def __init__(self, client: kube.Kube, options: Options | None = None) -> None:
        self.kube = client
        self.options = options or Options()
        self.inventories = inventory.Store(client, self.options.inventory_namespace)
        # app -> key -> (fingerprint of the desired object, live resourceVersion) last seen in sync
        self._in_sync: dict[str, dict[manifests.Key, tuple[str, str]]] = {}
        self._checks: dict[str, int] = {}
        self._plans: dict[str, tuple[str, _Plan]] = {}  # app -> (digest, plan without failures)

    # ------------------------------------------------------------ preparing

    async def _prepare(self, bundle: types_pb2.Bundle) -> _Plan:
        """Parse and resolve a bundle; a plan without failures is kept for the next resync."""
        digest = bundles.digest(bundle)
        cached = self._plans.get(bundle.app)
        if cached is not None and cached[0] == digest:
            return cached[1]
        plan = await self._prepare_uncached(bundle)
        if not plan.failures:
            self._plans[bundle.app] = (digest, plan)
        return plan

    async def _prepare_uncached(self, bundle: types_pb2.Bundle) -> _Plan:
        parsed = await asyncio.to_thread(manifests.parse_bundle, bundle)  # off the event loop
        failures = [
            st.ResourceResult(
                key=manifests.Key(
                    "", p.kind or "(unknown kind)", "", p.name or f"{p.source}:{p.line}"
                ),
                version="",
                sync=st.APPLY_FAILED,
                health=None,
                message=str(p),
                action="failed",
                source=f"{p.source}:{p.line}",
            )
            for p in parsed.problems
        ]
        bundle_crds = {
            (str(c.obj["spec"]["group"]), str(c.obj["spec"]["names"]["kind"])): c.obj
            for c in parsed.resources
            if c.kind == "CustomResourceDefinition" and c.group == "apiextensions.k8s.io"
            and isinstance(c.obj.get("spec"), dict) and "names" in c.obj["spec"]
        }  # fmt: skip
        prepared: list[Prepared] = []
        seen: dict[manifests.Key, manifests.Resource] = {}

        async def prepare(r: manifests.Resource) -> Prepared | st.ResourceResult:
            def fail(message: str) -> st.ResourceResult:
                return st.ResourceResult(
                    r.key, r.version, st.APPLY_FAILED, None, f"{r.where}: {message}", "failed",
                    source=r.where,
                )  # fmt: skip

            try:
                order.wave_of(r)
            except ValueError as e:
                return fail(str(e))
            try:
                rt = await self.kube.resource_type(r.api_version, r.kind)
            except errors.UnknownKind as e:
                crd = bundle_crds.get((r.group, r.kind))
                if crd is None:
                    return fail(str(e))
                rt = kube.ResourceType(
                    r.group, r.version, r.kind, str(crd["spec"]["names"]["plural"]),
                    namespaced=crd["spec"].get("scope", "Namespaced") == "Namespaced",
                )  # fmt: skip
            except errors.KubeError as e:
                return fail(f"discovery failed: {_first_line(str(e))}")
            obj = dict(r.obj)
            meta = dict(obj["metadata"])
            if rt.namespaced and not meta.get("namespace"):
                if not bundle.namespace:
                    return fail(
                        "namespaced object without metadata.namespace, and the app has no "
                        "default namespace: set one of them"
                    )
                meta["namespace"] = bundle.namespace
            elif not rt.namespaced and meta.get("namespace"):
                del meta["namespace"]  # cluster-scoped objects never get one
            obj["metadata"] = meta
            resource = manifests.Resource(obj, r.source, r.line)
            refused = guard.refusal(
                resource.key, obj, agent_namespace=self.options.inventory_namespace
            )
            if refused is not None:
                return st.ResourceResult(
                    resource.key, r.version, st.APPLY_FAILED, None,
                    f"{r.where}: {refused.on_apply()}", "refused", source=r.where,
                )  # fmt: skip
            return Prepared(resource, rt)

        outcomes = await asyncio.gather(*(prepare(r) for r in parsed.resources))
        for outcome in outcomes:
            if isinstance(outcome, st.ResourceResult):
                failures.append(outcome)
                continue
            first = seen.get(outcome.key)
            if first is not None:
                failures.append(
                    st.ResourceResult(
                        outcome.key,
                        outcome.rt.version,
                        st.APPLY_FAILED,
                        None,
                        f"{outcome.resource.where}: defined twice (also at {first.where}); "
                        "keep one",
                        "failed",
                        source=outcome.resource.where,
                    )  # fmt: skip
                )
                continue
            seen[outcome.key] = outcome.resource
            prepared.append(outcome)
        return _Plan(prepared, failures)

    # ------------------------------------------------------------ sync

    async def reconcile(
        self,
        bundle: types_pb2.Bundle,
        policy: types_pb2.SyncPolicy,
        *,
        allow_mass_prune: bool = False,
    ) -> st.AppResult:
        """What the agent's loop calls: sync a bundle the cluster does not have yet, else
        check it (and self-heal when the policy says so). `allow_mass_prune`: an operator let
        this bundle prune past the policy's maxPrunePercent."""
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

    async def _contained(
        self, bundle: types_pb2.Bundle, work: Callable[[], Awaitable[st.AppResult]]
    ) -> st.AppResult:
        """`work()`, or the app's failure when the agent could not reconcile it at all."""
        try:
            return await work()
        except errors.AgentError as e:
            return explain.app_failure(
                e,
                app=bundle.app,
                revision=bundle.revision,
                bundle_digest=bundles.digest(bundle),
                app_namespace=bundle.namespace,
                agent_namespace=self.options.inventory_namespace,
                cluster=self.options.cluster,
            )

    def _denied(self, e: errors.Forbidden, *, namespace: str = "") -> str:
        """A 403's message with what to do; `namespace`: the one a Namespace object names."""
        return explain.forbidden(
            e,
            app_namespace=namespace,
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
        digest = bundles.digest(bundle)
        previous = await self.inventories.load(bundle.app)
        plan = await self._prepare(bundle)
        if self._settled(previous, digest, plan, policy, allow_mass_prune):
            return await self._heal(
                bundle, policy, digest=digest, force_heal=explicit, previous=previous,
                allow_mass_prune=allow_mass_prune,
            )  # fmt: skip
        return await self._apply_bundle(
            bundle, policy, digest=digest, previous=previous, plan=plan,
            allow_mass_prune=allow_mass_prune,
        )  # fmt: skip

    async def _unclaimed(self, app: str, plan: _Plan) -> _Plan:
        """`plan` less the objects another app's inventory lists (Namespaces excepted: apps
        may share one, and the namespace prune guard keeps it while anything else is in it).
        Each is refused by name: taking it over would let this app change and later prune
        what the other app applied."""
        owners = await self.inventories.owners(besides=app)
        if not owners:
            return plan
        kept: list[Prepared] = []
        refused: list[st.ResourceResult] = []
        for p in plan.prepared:
            owner = owners.get(p.key)
            if owner is None or (not p.key.group and p.key.kind == "Namespace"):
                kept.append(p)
                continue
            refused.append(
                st.ResourceResult(
                    p.key,
                    p.rt.version,
                    st.APPLY_FAILED,
                    None,
                    f"{p.resource.where}: refused: {p.key} belongs to app {owner} (its "
                    "inventory lists it); an app may not take over another app's objects: "
                    f"remove it from one of the two apps",
                    "refused",
                    source=p.resource.where,
                )  # fmt: skip
            )
        return _Plan(kept, [*plan.failures, *refused]) if refused else plan

    @staticmethod
    def _settled(
        previous: inventory.Inventory | None,
        digest: str,
        plan: _Plan,
        policy: types_pb2.SyncPolicy,
        allow_mass_prune: bool,
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
            or _hold(previous, leftovers, policy, allow_mass_prune) is not None
        )

    async def _apply_bundle(
        self,
        bundle: types_pb2.Bundle,
        policy: types_pb2.SyncPolicy,
        *,
        digest: str,
        previous: inventory.Inventory | None,
        plan: _Plan,
        allow_mass_prune: bool,
    ) -> st.AppResult:
        plan = await self._unclaimed(bundle.app, plan)
        by_key = {p.key: p for p in plan.prepared}

        old_entries = set(previous.entries) if previous else set()
        new_entries = {inventory.Entry(p.key, p.rt.version) for p in plan.prepared}
        await self._ensure_default_namespace(bundle, plan.prepared)
        # Record the union before touching anything: a crash mid-apply must never make the
        # agent forget an object it applied.
        await self.inventories.save(
            app=bundle.app, revision=bundle.revision, bundle_digest="",
            entries=old_entries | new_entries,
        )  # fmt: skip

        results: dict[manifests.Key, st.ResourceResult] = {}
        live: dict[manifests.Key, dict[str, Any]] = {}
        halted = ""
        for step in order.plan([p.resource for p in plan.prepared]):
            if halted:
                for r in step.resources:
                    results[r.key] = st.ResourceResult(
                        r.key, by_key[r.key].rt.version, st.OUT_OF_SYNC, None,
                        f"not applied: {halted}", "skipped",
                    )  # fmt: skip
                continue
            for tier in step.tiers:
                outcomes = await asyncio.gather(
                    *(self._apply(by_key[r.key], policy.force_conflicts) for r in tier)
                )
                for r, (result, obj) in zip(tier, outcomes, strict=True):
                    results[r.key] = result
                    if obj is not None:
                        live[r.key] = obj
            applied = [by_key[r.key] for r in step.resources if r.key in live]
            crds = [p for p in applied if p.rt.kind == "CustomResourceDefinition"]
            if crds:
                halted = await self._wait_established(crds, live)
                self.kube.forget_discovery()
            if step.gate and not halted:
                halted = await self._wait_healthy(step.label, applied, live)

        for key, obj in live.items():
            p = by_key[key]
            h = health.assess(obj)
            results[key] = dataclasses.replace(results[key], health=h)
            self._remember(bundle.app, p, obj)

        all_results = plan.failures + [results[p.key] for p in plan.prepared]
        complete = not halted and not any(r.failed for r in all_results)
        leftovers = [e for e in old_entries if e.key not in by_key]
        kept: list[inventory.Entry] = []
        prune_results: list[st.ResourceResult] = []
        held = ""
        if not complete:
            kept = leftovers
            if leftovers:
                note = (
                    "not pruned: the sync did not complete, and prune never follows a partial apply"
                )
                prune_results = [self._leftover(e, note) for e in leftovers]
        elif not policy.prune:
            kept = leftovers
            prune_results = [
                self._leftover(e, "no longer in Git; prune is off for this app") for e in leftovers
            ]
        elif not plan.prepared and not policy.allow_empty:
            kept = leftovers
            prune_results = [
                self._leftover(e, "not pruned: the bundle is empty and allowEmpty is off")
                for e in leftovers
            ]
        elif (hold := _hold(previous, leftovers, policy, allow_mass_prune)) is not None:
            kept = leftovers
            note = f"not pruned: prune held, it {hold.share()}"
            prune_results = [self._leftover(e, note) for e in leftovers]
            held = hold.reason(app=bundle.app, cluster=self.options.cluster)
        else:
            prune_results, kept = await prune.prune(
                self.kube,
                leftovers,
                agent_namespace=self.options.inventory_namespace,
                owned={e.key for e in old_entries | new_entries},
                staying=set(by_key),
            )

        await self.inventories.save(
            app=bundle.app,
            revision=bundle.revision,
            bundle_digest=digest if complete else "",
            entries=(new_entries if complete else old_entries | new_entries) | set(kept),
        )
        reason = ""
        if halted:
            reason = halted
        elif not plan.prepared and not plan.failures and old_entries and not policy.allow_empty:
            reason = "the bundle is empty; nothing was pruned because allowEmpty is off"
        elif held:
            reason = held
        return st.finish(
            app=bundle.app,
            revision=bundle.revision,
            bundle_digest=digest,
            results=all_results + prune_results,
            reason=reason,
            sync=st.APPLY_FAILED if halted else None,
            applied_at=time.time(),
            prune_held=bool(held),
        )

    async def _ensure_default_namespace(
        self, bundle: types_pb2.Bundle, prepared: Sequence[Prepared]
    ) -> None:
        """Create the app's namespace when the bundle uses it but does not define it, as Fleet
        does. It is not put in the inventory, so prune never deletes it."""
        ns = bundle.namespace
        if not ns or any(p.key.kind == "Namespace" and p.key.name == ns for p in prepared):
            return
        if not any(p.key.namespace == ns for p in prepared):
            return
        rt = kube.ResourceType("", "v1", "Namespace", "namespaces", namespaced=False)
        if await self.kube.get(rt, "", ns) is None:
            body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}
            try:
                await self.kube.create(rt, body)
            except errors.Forbidden as e:
                raise errors.Forbidden(
                    f"cannot create namespace {ns} for app {bundle.app}: {e}",
                    namespace=e.namespace, resource=e.resource, verb=e.verb,
                ) from None  # fmt: skip
            except errors.KubeError as e:
                if e.status != 409:  # someone else made it meanwhile: fine
                    raise

    async def _apply(
        self, p: Prepared, force: bool
    ) -> tuple[st.ResourceResult, dict[str, Any] | None]:
        where = p.resource.where
        try:
            obj = await self.kube.apply(p.rt, p.obj, force=force)
        except errors.Conflict as e:
            managers = ", ".join(e.managers) or "another field manager"
            message = (
                f"conflict with {managers}: {_first_line(str(e))}; let Git win with "
                "forceConflicts, or drop the field from Git"
            )
            return (
                st.ResourceResult(p.key, p.rt.version, st.APPLY_FAILED, None, message, "failed",
                                  conflict_manager=managers, source=where),
                None,
            )  # fmt: skip
        except errors.Forbidden as e:
            return (
                st.ResourceResult(p.key, p.rt.version, st.APPLY_FAILED, None,
                                  self._denied(e, namespace=_named_namespace(p.key)), "failed",
                                  source=where),
                None,
            )  # fmt: skip
        except errors.KubeError as e:
            return (
                st.ResourceResult(p.key, p.rt.version, st.APPLY_FAILED, None,
                                  _first_line(str(e)), "failed", source=where),
                None,
            )  # fmt: skip
        return st.ResourceResult(
            p.key, p.rt.version, st.SYNCED, None, "", "applied", source=where
        ), obj

    async def _poll(
        self,
        what: str,
        targets: Sequence[Prepared],
        live: dict[manifests.Key, dict[str, Any]],
        within: float,
        passing: Callable[[Prepared, dict[str, Any]], health.Health | None],
    ) -> str:
        """Poll until every target passes; return "" or the reason it timed out."""
        deadline = time.monotonic() + within
        while True:
            waiting: list[tuple[Prepared, str]] = []
            for p in targets:
                problem = passing(p, live[p.key])
                if problem is not None:
                    waiting.append((p, problem.reason))
            if not waiting:
                return ""
            if time.monotonic() >= deadline:
                p, why = waiting[0]
                more = f" (and {len(waiting) - 1} more)" if len(waiting) > 1 else ""
                return f"{what} within {within:.0f} s: {p.key}: {why}{more}"
            await asyncio.sleep(self.options.poll_interval)
            fresh = await asyncio.gather(
                *(self.kube.get(p.rt, p.key.namespace, p.key.name) for p, _ in waiting)
            )
            for (p, _), obj in zip(waiting, fresh, strict=True):
                live[p.key] = obj if obj is not None else {}

    async def _wait_established(
        self, crds: Sequence[Prepared], live: dict[manifests.Key, dict[str, Any]]
    ) -> str:
        def established(_p: Prepared, obj: dict[str, Any]) -> health.Health | None:
            h = health.assess(obj) if obj else health.missing("the CRD")
            return None if h.status == health.HEALTHY else h

        reason = await self._poll(
            "CRDs were not established", crds, live, self.options.crd_timeout, established
        )
        return reason

    async def _wait_healthy(
        self, label: str, applied: Sequence[Prepared], live: dict[manifests.Key, dict[str, Any]]
    ) -> str:
        def healthy(_p: Prepared, obj: dict[str, Any]) -> health.Health | None:
            h = health.assess(obj) if obj else health.missing("the object")
            return None if h.status in _PASSING else h

        return await self._poll(
            f"{label} did not become healthy", applied, live, self.options.wave_timeout, healthy
        )

    def _leftover(self, e: inventory.Entry, message: str) -> st.ResourceResult:
        return st.ResourceResult(e.key, e.version, st.OUT_OF_SYNC, None, message, "kept")

    def _remember(self, app: str, p: Prepared, live: Mapping[str, Any]) -> None:
        rv = str((live.get("metadata") or {}).get("resourceVersion") or "")
        if rv:
            self._in_sync.setdefault(app, {})[p.key] = (_fingerprint(p.obj), rv)

    # ------------------------------------------------------------ check and heal

    async def check(
        self,
        bundle: types_pb2.Bundle,
        policy: types_pb2.SyncPolicy,
        *,
        allow_mass_prune: bool = False,
    ) -> st.AppResult:
        """Health and drift of every resource, through dry-run. Never writes."""

        async def work() -> st.AppResult:
            previous = await self.inventories.load(bundle.app)
            result, _ = await self._check(
                bundle, policy, digest=bundles.digest(bundle), previous=previous,
                allow_mass_prune=allow_mass_prune,
            )  # fmt: skip
            return result

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
            previous = await self.inventories.load(bundle.app)
            return await self._heal(
                bundle, policy, digest=bundles.digest(bundle), force_heal=False,
                previous=previous, allow_mass_prune=allow_mass_prune,
            )  # fmt: skip

        return await self._contained(bundle, work)

    async def _heal(
        self,
        bundle: types_pb2.Bundle,
        policy: types_pb2.SyncPolicy,
        *,
        digest: str,
        force_heal: bool,
        previous: inventory.Inventory | None,
        allow_mass_prune: bool,
    ) -> st.AppResult:
        result, by_key = await self._check(
            bundle, policy, digest=digest, previous=previous, allow_mass_prune=allow_mass_prune
        )
        if not (policy.self_heal or force_heal):
            return result
        todo = [r for r in result.resources if r.key in by_key and r.sync == st.OUT_OF_SYNC]
        if not todo:
            return result
        # Someone may have deleted the whole namespace: objects cannot come back without it.
        await self._ensure_default_namespace(bundle, list(by_key.values()))
        fixed = await asyncio.gather(
            *(self._apply(by_key[r.key], policy.force_conflicts) for r in todo)
        )
        replaced: dict[manifests.Key, st.ResourceResult] = {}
        for r, (applied, obj) in zip(todo, fixed, strict=True):
            if obj is None:
                replaced[r.key] = dataclasses.replace(applied, drift=r.drift)
                continue
            self._remember(bundle.app, by_key[r.key], obj)
            fields = ", ".join(f.path for f in r.drift) or "the object was missing"
            replaced[r.key] = dataclasses.replace(
                applied, health=health.assess(obj), action="healed",
                message=f"self-healed: restored {fields}",
            )  # fmt: skip
        results = [replaced.get(r.key, r) for r in result.resources]
        return st.finish(
            app=bundle.app,
            revision=bundle.revision,
            bundle_digest=digest,
            results=results,
            reason=result.reason if result.prune_held else "",
            healed=sum(1 for r in replaced.values() if r.action == "healed"),
            applied_at=time.time(),
            prune_held=result.prune_held,
        )

    async def _check(
        self,
        bundle: types_pb2.Bundle,
        policy: types_pb2.SyncPolicy,
        *,
        digest: str,
        previous: inventory.Inventory | None,
        allow_mass_prune: bool,
    ) -> tuple[st.AppResult, dict[manifests.Key, Prepared]]:
        plan = await self._prepare(bundle)
        by_key = {p.key: p for p in plan.prepared}
        live, unreadable = await self._fetch_live(plan.prepared)
        count = self._checks.get(bundle.app, 0) + 1
        self._checks[bundle.app] = count
        full = count % self.options.full_check_every == 0
        known = self._in_sync.get(bundle.app, {})

        async def one(p: Prepared) -> st.ResourceResult:
            obj = live.get(p.key)
            denied = unreadable.get(p.key)
            if denied is not None:
                return st.ResourceResult(
                    p.key, p.rt.version, st.APPLY_FAILED, None,
                    self._denied(denied, namespace=_named_namespace(p.key)),
                    source=p.resource.where,
                )  # fmt: skip
            if obj is None:
                return st.ResourceResult(
                    p.key, p.rt.version, st.OUT_OF_SYNC, health.missing(str(p.key)),
                    "missing from the cluster", source=p.resource.where,
                )  # fmt: skip
            h = health.assess(obj)
            rv = str(obj["metadata"].get("resourceVersion") or "")
            if not full and known.get(p.key) == (_fingerprint(p.obj), rv):
                return st.ResourceResult(
                    p.key, p.rt.version, st.SYNCED, h, "", source=p.resource.where
                )
            try:
                dry = await self.kube.apply(p.rt, p.obj, force=policy.force_conflicts, dry_run=True)
            except errors.Conflict as e:
                managers = ", ".join(e.managers) or "another field manager"
                return st.ResourceResult(
                    p.key, p.rt.version, st.OUT_OF_SYNC, h,
                    f"conflict with {managers}: {_first_line(str(e))}",
                    conflict_manager=managers, source=p.resource.where,
                )  # fmt: skip
            except errors.Forbidden as e:
                return st.ResourceResult(
                    p.key, p.rt.version, st.APPLY_FAILED, h,
                    self._denied(e, namespace=_named_namespace(p.key)), source=p.resource.where,
                )  # fmt: skip
            except errors.KubeError as e:
                return st.ResourceResult(
                    p.key, p.rt.version, st.APPLY_FAILED, h, _first_line(str(e)),
                    source=p.resource.where,
                )  # fmt: skip
            fields = drift.diff(dry, obj, secret=p.key.kind == "Secret" and not p.key.group)
            if not fields:
                self._remember(bundle.app, p, obj)
                return st.ResourceResult(
                    p.key, p.rt.version, st.SYNCED, h, "", source=p.resource.where
                )
            shown = ", ".join(f.path for f in fields[:3]) + (" ..." if len(fields) > 3 else "")
            return st.ResourceResult(
                p.key, p.rt.version, st.OUT_OF_SYNC, h, f"drifted: {shown}",
                drift=tuple(fields), source=p.resource.where,
            )  # fmt: skip

        results = list(await asyncio.gather(*(one(p) for p in plan.prepared)))
        held = ""
        if previous is not None:
            leftovers = [e for e in previous.entries if e.key not in by_key]
            hold = _hold(previous, leftovers, policy, allow_mass_prune)
            if not policy.prune:
                note = "no longer in Git; prune is off for this app"
            elif not plan.prepared and not policy.allow_empty:
                note = "no longer in Git; not pruned: the bundle is empty and allowEmpty is off"
            elif hold is not None:
                note = f"no longer in Git; not pruned: prune held, it {hold.share()}"
                held = hold.reason(app=bundle.app, cluster=self.options.cluster)
            else:
                note = "no longer in Git; the next sync prunes it"
            results += [self._leftover(e, note) for e in leftovers]
        held = "" if plan.failures or any(r.failed for r in results) else held
        return (
            st.finish(
                app=bundle.app,
                revision=bundle.revision,
                bundle_digest=digest,
                results=plan.failures + results,
                reason=held,
                prune_held=bool(held),
            ),
            by_key,
        )

    async def _fetch_live(
        self, prepared: Sequence[Prepared]
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
                    items = await self.kube.list(rt, ns)
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
                self.kube.get(rt, p.key.namespace, p.key.name) for p in members
            ]
            for p, obj in zip(
                members, await asyncio.gather(*got, return_exceptions=True), strict=True
            ):
                if isinstance(obj, dict):
                    live[p.key] = obj
                elif isinstance(obj, errors.Forbidden):
                    denied[p.key] = obj
                elif isinstance(obj, errors.Unreachable):
                    raise obj

        await asyncio.gather(*(fetch(rt, ns, m) for (rt, ns), m in groups.items()))
        return live, denied

    async def inventory_health(self, app: str) -> st.AppResult | None:
        """Health of what the in-cluster inventory lists, when no bundle is at hand (a new
        agent pod, another machine). Drift cannot be checked without the bundle, and the
        result says so. None when the cluster has no inventory for the app."""
        inv = await self.inventories.load(app)
        if inv is None:
            return None

        async def one(e: inventory.Entry) -> st.ResourceResult:
            try:
                rt = await self.kube.resource_type_for_group(e.key.group, e.key.kind)
                obj = await self.kube.get(rt, e.key.namespace, e.key.name)
            except (errors.KubeError, errors.UnknownKind) as err:
                return st.ResourceResult(e.key, e.version, st.UNKNOWN_SYNC, None,
                                         f"cannot read: {_first_line(str(err))}")  # fmt: skip
            h = health.assess(obj) if obj is not None else health.missing(str(e.key))
            return st.ResourceResult(e.key, e.version, st.UNKNOWN_SYNC, h, "")

        results = list(await asyncio.gather(*(one(e) for e in inv.entries)))
        reason = (
            "drift not checked: no local copy of the bundle here (run status where it was "
            "applied, or apply it again); health is from the live objects"
        )
        return st.finish(
            app=app,
            revision=inv.revision,
            bundle_digest=inv.bundle_digest,
            results=results,
            reason=reason if inv.bundle_digest else "the last sync did not complete; " + reason,
            sync=st.UNKNOWN_SYNC,
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
            if result.health in _PASSING or result.failed or time.monotonic() >= deadline:
                return result
            await asyncio.sleep(self.options.poll_interval)
