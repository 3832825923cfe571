"""Turns an app's bundle into a plan: parsed, validated, confined and resolved resources.

Each resource gets its API type (from discovery, or from a CRD in the same bundle) and its
namespace (the app's default when it has none and is namespaced); a resource that cannot be
sent gets a failed result instead, with the file and line it came from. Sync hooks
(`agent.hooks`) are set apart from the ordinary objects, and hooks a sync never runs (Helm
tests, PreDelete, `hook: Skip`) are only noted. The rules of
`agent.guard` are applied here, before any write: a bundle never writes into the agent's own
namespace nor an inventory, and never takes over an object another app's inventory lists;
hooks pass the same rules (Namespaces included), may not be of a kind whose deletion reaches
past them (`guard.hook_refusal`), and are marked as this app's (`hooks.marked`).

It only reads (discovery, inventories); it never writes to the cluster.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping
from typing import Any

from fleetops.agent import errors, explain, guard, hooks, ids, inventory, kube, manifests, order
from fleetops.agent import status as st
from fleetops.proto import bundles
from fleetops.proto.v1 import types_pb2


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

    @property
    def named_namespace(self) -> str:
        """The namespace this object names when it is a Namespace, else ""."""
        key = self.key
        return key.name if key.kind == "Namespace" and not key.group else ""


@dataclasses.dataclass(frozen=True)
class HookPrepared:
    """A sync hook ready to run: the object (marked as `app`'s hook), and its phases and
    delete policies."""

    prepared: Prepared
    hook: hooks.Hook
    app: str

    @property
    def key(self) -> manifests.Key:
        return self.prepared.key

    @property
    def wave(self) -> int:
        return order.wave_of(self.prepared.resource)  # validated when it was prepared


@dataclasses.dataclass(frozen=True, kw_only=True)
class Target:
    """Which app one reconcile works on, at which revision, with which bundle content."""

    app: ids.AppName
    revision: ids.Revision
    digest: ids.Digest

    @classmethod
    def of(cls, bundle: types_pb2.Bundle) -> Target:
        """Where these ids enter the agent: the bundle's protobuf strings."""
        return cls(
            app=ids.AppName(bundle.app),
            revision=ids.Revision(bundle.revision),
            digest=ids.Digest(bundles.digest(bundle)),
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class Plan:
    """What a sync would send (`prepared`: the ordinary objects; `hooks`: the sync hooks), what
    it cannot (`failures`), and hooks it never runs (`noted`, e.g. Helm tests)."""

    prepared: list[Prepared]
    failures: list[st.ResourceResult]
    hooks: list[HookPrepared] = dataclasses.field(default_factory=list)
    noted: list[st.ResourceResult] = dataclasses.field(default_factory=list)

    def by_key(self) -> dict[manifests.Key, Prepared]:
        return {p.key: p for p in self.prepared}


class Planner:
    """Plans bundles, keeping the last clean plan per app for the next resync of that bundle."""

    def __init__(self, client: kube.Kube, *, agent_namespace: str) -> None:
        self.kube = client
        self.agent_namespace = agent_namespace
        self._plans: dict[str, tuple[str, Plan]] = {}  # app -> (digest, plan without failures)

    async def plan(self, bundle: types_pb2.Bundle) -> Plan:
        """Parse and resolve a bundle; a plan without failures is kept for the next resync."""
        digest = bundles.digest(bundle)
        cached = self._plans.get(bundle.app)
        if cached is not None and cached[0] == digest:
            return cached[1]
        plan = await self._plan_uncached(bundle)
        if not plan.failures:
            self._plans[bundle.app] = (digest, plan)
        return plan

    async def _plan_uncached(self, bundle: types_pb2.Bundle) -> Plan:
        parsed = await asyncio.to_thread(_parse, bundle)  # off the event loop
        failures = [
            st.ResourceResult.apply_failed(
                key=manifests.Key(
                    group="",
                    kind=p.kind or "(unknown kind)",
                    namespace="",
                    name=p.name or f"{p.source}:{p.line}",
                ),
                version="",
                reason=str(p),
                source=f"{p.source}:{p.line}",
            )
            for p in parsed.problems
        ]
        bundle_crds = {
            (str(c.obj["spec"]["group"]), str(c.obj["spec"]["names"]["kind"])): c.obj
            for c in parsed.resources
            if c.kind == "CustomResourceDefinition"
            and c.group == "apiextensions.k8s.io"
            and isinstance(c.obj.get("spec"), dict)
            and "names" in c.obj["spec"]
        }
        outcomes = await asyncio.gather(
            *(
                self._prepare(r, bundle_crds=bundle_crds, default_namespace=bundle.namespace)
                for r in parsed.resources
            )
        )
        prepared: list[Prepared] = []
        seen: dict[manifests.Key, manifests.Resource] = {}
        for outcome in outcomes:
            if isinstance(outcome, st.ResourceResult):
                failures.append(outcome)
                continue
            first = seen.get(outcome.key)
            if first is not None:
                failures.append(
                    st.ResourceResult.apply_failed(
                        key=outcome.key,
                        version=outcome.rt.version,
                        reason=f"{outcome.resource.where}: defined twice (also at "
                        f"{first.where}); keep one",
                        source=outcome.resource.where,
                    )
                )
                continue
            seen[outcome.key] = outcome.resource
            prepared.append(outcome)
        return _split_hooks(prepared, failures, app=bundle.app)

    async def _prepare(
        self,
        r: manifests.Resource,
        *,
        bundle_crds: Mapping[tuple[str, str], Mapping[str, Any]],
        default_namespace: str,
    ) -> Prepared | st.ResourceResult:
        def fail(message: str) -> st.ResourceResult:
            return st.ResourceResult.apply_failed(
                key=r.key, version=r.version, reason=f"{r.where}: {message}", source=r.where
            )

        try:
            order.wave_of(r)
            hooks.classify(r.annotations)
        except ValueError as e:
            return fail(str(e))
        try:
            rt = await self.kube.resource_type(api_version=r.api_version, kind=r.kind)
        except errors.UnknownKind as e:
            crd = bundle_crds.get((r.group, r.kind))
            if crd is None:
                return fail(str(e))
            rt = kube.ResourceType(
                group=r.group,
                version=r.version,
                kind=r.kind,
                plural=str(crd["spec"]["names"]["plural"]),
                namespaced=crd["spec"].get("scope", "Namespaced") == "Namespaced",
            )
        except errors.KubeError as e:
            return fail(f"discovery failed: {explain.first_line(str(e))}")
        obj = dict(r.obj)
        meta = dict(obj["metadata"])
        if rt.namespaced and not meta.get("namespace"):
            if not default_namespace:
                return fail(
                    "namespaced object without metadata.namespace, and the app has no "
                    "default namespace: set one of them"
                )
            meta["namespace"] = default_namespace
        elif not rt.namespaced and meta.get("namespace"):
            del meta["namespace"]  # cluster-scoped objects never get one
        obj["metadata"] = meta
        resource = manifests.Resource(obj, r.source, r.line)
        refused = guard.refusal(resource.key, obj, agent_namespace=self.agent_namespace)
        if refused is not None:
            return st.ResourceResult.refused(
                key=resource.key,
                version=r.version,
                reason=f"{r.where}: {refused.on_apply()}",
                source=r.where,
            )
        return Prepared(resource, rt)


def _parse(bundle: types_pb2.Bundle) -> manifests.Parsed:
    """`manifests.parse_bundle`, with generateName hooks named per app, namespace and revision
    (`hooks.name_seed`), so two apps of one commit never name theirs the same."""
    seed = hooks.name_seed(app=bundle.app, namespace=bundle.namespace, revision=bundle.revision)
    resources: list[manifests.Resource] = []
    problems: list[manifests.Problem] = []
    for manifest in bundle.manifests:
        parsed = manifests.parse(source=manifest.source, text=manifest.yaml, revision=seed)
        resources += parsed.resources
        problems += parsed.problems
    return manifests.Parsed(resources, problems)


def _split_hooks(prepared: list[Prepared], failures: list[st.ResourceResult], *, app: str) -> Plan:
    """The plan with hooks set apart from the ordinary objects (`classify` already passed);
    hooks of a kind `guard.hook_refusal` names are refused, the others marked as `app`'s."""
    ordinary: list[Prepared] = []
    run: list[HookPrepared] = []
    noted: list[st.ResourceResult] = []
    failures = list(failures)
    for p in prepared:
        annotations = p.resource.annotations
        if hooks.skipped(annotations):
            noted.append(
                st.ResourceResult.not_run(
                    key=p.key,
                    version=p.rt.version,
                    reason=f"not applied: {hooks.HOOK}: {hooks.SKIP}",
                    hook=hooks.SKIP,
                    source=p.resource.where,
                )
            )
            continue
        hook = hooks.classify(annotations)
        if hook is None and hooks.has_mark(p.obj):
            failures.append(
                st.ResourceResult.refused(
                    key=p.key,
                    version=p.rt.version,
                    reason=f"{p.resource.where}: refused: {p.key} carries {hooks.MARK}, which "
                    "only the agent sets, on the hooks it applies: remove that annotation",
                    source=p.resource.where,
                )
            )
        elif hook is None:
            ordinary.append(p)
        elif (refused := guard.hook_refusal(p.key)) is not None:
            failures.append(
                st.ResourceResult.refused(
                    key=p.key,
                    version=p.rt.version,
                    reason=f"{p.resource.where}: {refused.on_hook()}",
                    source=p.resource.where,
                )
            )
        elif hook.runs:
            resource = manifests.Resource(
                hooks.marked(p.obj, app=app), p.resource.source, p.resource.line
            )
            run.append(HookPrepared(Prepared(resource, p.rt), hook, app))
        else:
            noted.append(
                st.ResourceResult.not_run(
                    key=p.key,
                    version=p.rt.version,
                    reason=f"hook not applied on sync: {hook.why_not_run}",
                    hook=hook.label or "(none)",
                    source=p.resource.where,
                )
            )
    return Plan(prepared=ordinary, failures=failures, hooks=run, noted=noted)


async def unclaimed(inventories: inventory.Store, *, app: ids.AppName, plan: Plan) -> Plan:
    """`plan` less the objects another app's inventory lists (ordinary Namespaces excepted:
    apps may share one, and the namespace prune guard keeps it while anything else is in it;
    a hook never, since its delete policies delete it). Each is refused by name: taking it
    over would let this app change and later prune what the other app applied."""
    owners = await inventories.owners(besides=app)
    if not owners:
        return plan
    refused: list[st.ResourceResult] = []

    def claimed(p: Prepared, *, hook: bool = False) -> bool:
        owner = owners.get(p.key)
        if owner is None or (not hook and p.named_namespace):
            return False
        refused.append(
            st.ResourceResult.refused(
                key=p.key,
                version=p.rt.version,
                reason=f"{p.resource.where}: refused: {p.key} belongs to app {owner} (its "
                "inventory lists it); an app may not take over another app's objects: "
                "remove it from one of the two apps",
                source=p.resource.where,
            )
        )
        return True

    kept = [p for p in plan.prepared if not claimed(p)]
    kept_hooks = [h for h in plan.hooks if not claimed(h.prepared, hook=True)]
    if not refused:
        return plan
    return dataclasses.replace(
        plan, prepared=kept, hooks=kept_hooks, failures=[*plan.failures, *refused]
    )
