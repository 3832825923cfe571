"""Deletes what left an app's bundle, and only what the app may delete.

`held_back` says whether a prune is too big to run without an operator's allowance (the
app's maxPrunePercent, `agent.guard.MassPrune`). The reconciler calls `prune` with the
inventory entries that are no longer in Git, after a complete apply. Each one is looked up
first: an object already gone is forgotten, one marked `fleetops.io/prune: disabled` or taken
over by another field manager stays, one the app may not touch (`agent.guard.refusal`: the
agent's own namespace, an inventory) is never deleted and no longer tracked, and a Namespace
goes only when nothing in it is someone else's (or it carries
`fleetops.io/prune-namespace: force`). Order is `agent.order.prune_order`: workloads first,
Namespaces last, so the Namespace check sees what the app's own deletions left.

It must never delete an object the checks above did not clear, and never put Secret content
anywhere: the Namespace check lists Secrets for their names only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import Any

from fleetops.agent import errors, explain, guard, health, inventory, kube, manifests, order
from fleetops.agent import status as st
from fleetops.proto.v1 import types_pb2

PRUNE_ANNOTATION = "fleetops.io/prune"


def _rt(*, group: str, version: str, kind: str, plural: str) -> kube.ResourceType:
    return kube.ResourceType(
        group=group, version=version, kind=kind, plural=plural, namespaced=True
    )


# What a Namespace about to be pruned is searched for: objects fleetops did not apply.
NAMESPACE_CONTENTS = (
    _rt(group="", version="v1", kind="ConfigMap", plural="configmaps"),
    _rt(group="", version="v1", kind="Secret", plural="secrets"),
    _rt(group="", version="v1", kind="Pod", plural="pods"),
    _rt(group="", version="v1", kind="Service", plural="services"),
    _rt(group="", version="v1", kind="ServiceAccount", plural="serviceaccounts"),
    _rt(group="", version="v1", kind="PersistentVolumeClaim", plural="persistentvolumeclaims"),
    _rt(group="apps", version="v1", kind="Deployment", plural="deployments"),
    _rt(group="apps", version="v1", kind="StatefulSet", plural="statefulsets"),
    _rt(group="apps", version="v1", kind="DaemonSet", plural="daemonsets"),
    _rt(group="apps", version="v1", kind="ReplicaSet", plural="replicasets"),
    _rt(group="batch", version="v1", kind="Job", plural="jobs"),
    _rt(group="batch", version="v1", kind="CronJob", plural="cronjobs"),
    _rt(group="rbac.authorization.k8s.io", version="v1", kind="Role", plural="roles"),
    _rt(group="rbac.authorization.k8s.io", version="v1", kind="RoleBinding", plural="rolebindings"),
    _rt(group="networking.k8s.io", version="v1", kind="Ingress", plural="ingresses"),
    _rt(
        group="autoscaling",
        version="v2",
        kind="HorizontalPodAutoscaler",
        plural="horizontalpodautoscalers",
    ),
    _rt(group="policy", version="v1", kind="PodDisruptionBudget", plural="poddisruptionbudgets"),
)


def held_back(
    previous: inventory.Inventory | None,
    *,
    leftovers: Sequence[inventory.Entry],
    policy: types_pb2.SyncPolicy,
    allowed: bool,
) -> guard.MassPrune | None:
    """The mass prune a sync must hold back, or None when it may prune. `allowed`: an
    operator let this bundle prune past the policy's maxPrunePercent."""
    if previous is None or not leftovers or allowed:
        return None
    hold = guard.MassPrune(
        would_delete=len(leftovers),
        total=len(previous.entries),
        limit=guard.max_prune_percent(policy.max_prune_percent),
    )
    return hold if hold.held else None


def _force_hint(namespace: str) -> str:
    return (
        f"`kubectl annotate namespace {namespace} "
        f"{guard.PRUNE_NAMESPACE_ANNOTATION}={guard.PRUNE_NAMESPACE_FORCE}`"
    )


async def prune(
    client: kube.Kube,
    leftovers: Iterable[inventory.Entry],
    *,
    agent_namespace: str,
    owned: set[manifests.Key],
    staying: set[manifests.Key],
) -> tuple[list[st.ResourceResult], list[inventory.Entry]]:
    """Delete what left the bundle; return the results and the entries still owned.
    `owned`: every key the app's inventory lists; `staying`: keys still in the bundle."""
    entries = {e.key: e for e in leftovers}
    results: list[st.ResourceResult] = []
    kept: list[inventory.Entry] = []
    left = set(staying)  # the app's objects that stay, so a Namespace holding them stays
    pruned: list[dict[str, Any]] = []  # what this prune deleted, for the Namespace check

    def stays(e: inventory.Entry, obj: dict[str, Any], message: str) -> None:
        left.add(e.key)
        results.append(
            st.ResourceResult.kept(
                key=e.key,
                version=e.version,
                reason=message,
                sync=st.SYNCED,
                health=health.assess(obj),
            )
        )

    for key in order.prune_order(list(entries)):
        e = entries[key]
        refused = guard.refusal(key, None, agent_namespace=agent_namespace)
        if refused is not None:  # e.g. an inventory written before apps were confined
            results.append(
                st.ResourceResult.kept(
                    key=key, version=e.version, reason=refused.on_prune(), sync=st.SYNCED
                )
            )
            continue
        try:
            rt = await client.resource_type_for_group(group=key.group, kind=key.kind)
            obj = await client.get(rt, namespace=key.namespace, name=key.name)
            if obj is None:
                continue  # already gone: nothing to do, forget it
            refused = guard.refusal(key, obj, agent_namespace=agent_namespace)
            if refused is not None:
                results.append(
                    st.ResourceResult.kept(
                        key=key, version=e.version, reason=refused.on_prune(), sync=st.SYNCED
                    )
                )
                continue
            meta = obj.get("metadata") or {}
            if (meta.get("annotations") or {}).get(PRUNE_ANNOTATION) == "disabled":
                stays(e, obj, f"left in place: {PRUNE_ANNOTATION}: disabled")
                continue
            is_namespace = not key.group and key.kind == "Namespace"
            managers = {m.get("manager") for m in meta.get("managedFields") or []}
            # An object applied with nothing but its name (a bare Namespace) leaves fleetops no
            # managed field, and `kubectl annotate` then adds someone else's: for Namespaces the
            # check of what they hold below decides instead.
            if managers and kube.FIELD_MANAGER not in managers and not is_namespace:
                stays(
                    e,
                    obj,
                    "left in place: fleetops no longer manages any of its fields (someone else "
                    "took it over)",
                )
                continue
            message = "pruned"
            if is_namespace:
                if guard.forced(obj):
                    message = (
                        "pruned with everything inside "
                        f"({guard.PRUNE_NAMESPACE_ANNOTATION}: {guard.PRUNE_NAMESPACE_FORCE})"
                    )
                else:
                    blocked = await namespace_blocked(
                        client, key.name, owned=owned, pruned=pruned, staying=left
                    )
                    if blocked:
                        kept.append(e)
                        results.append(
                            st.ResourceResult.kept(
                                key=key,
                                version=e.version,
                                reason=blocked,
                                health=health.assess(obj),
                            )
                        )
                        continue
            if guard.is_crd(key) and not guard.forced(obj):
                blocked = await _crd_blocked(client, key, obj, owned=owned)
                if blocked:
                    kept.append(e)
                    results.append(
                        st.ResourceResult.kept(
                            key=key, version=e.version, reason=blocked, health=health.assess(obj)
                        )
                    )
                    continue
            pruned.append(obj)
            await client.delete(rt, namespace=key.namespace, name=key.name)
            results.append(st.ResourceResult.pruned(key=key, version=e.version, reason=message))
        except (errors.KubeError, errors.UnknownKind) as err:
            kept.append(e)
            left.add(key)
            results.append(
                st.ResourceResult.apply_failed(
                    key=key,
                    version=e.version,
                    reason=f"prune failed: {explain.first_line(str(err))}",
                )
            )
    return results, kept


async def _crd_blocked(
    client: kube.Kube, key: manifests.Key, crd: dict[str, Any], *, owned: set[manifests.Key]
) -> str:
    """guard.crd_blocked over the custom resources the CRD serves, in every namespace."""
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    served = [v.get("name") for v in spec.get("versions") or [] if v.get("served")]
    if not served or not names.get("plural"):
        return ""
    rt = kube.ResourceType(
        group=str(spec.get("group", "")),
        version=str(served[0]),
        kind=str(names.get("kind", "")),
        plural=str(names["plural"]),
        namespaced=spec.get("scope", "Namespaced") == "Namespaced",
    )
    try:
        items = await client.list(rt)
    except errors.KubeError as err:
        return (
            f"left in place: could not check which resources {key} still serves "
            f"({explain.first_line(str(err))})"
        )
    return guard.crd_blocked(key, (guard.key_of(i) for i in items), owned=owned)


async def namespace_blocked(
    client: kube.Kube,
    namespace: str,
    *,
    owned: set[manifests.Key],
    pruned: list[dict[str, Any]],
    staying: set[manifests.Key],
) -> str:
    """Why the Namespace must not be pruned (what else it holds), or "" when it may."""
    lists = await asyncio.gather(
        *(client.list(rt, namespace) for rt in NAMESPACE_CONTENTS), return_exceptions=True
    )
    live: list[dict[str, Any]] = []
    for rt, found in zip(NAMESPACE_CONTENTS, lists, strict=True):
        if isinstance(found, errors.NotFound):
            continue  # the cluster does not serve this kind: nothing of it to find
        if isinstance(found, BaseException):
            return (
                f"left in place: could not check what Namespace {namespace} holds (list "
                f"{rt.plural}: {explain.first_line(str(found))}), and it is pruned only when "
                "nothing in "
                f"it is someone else's: let the agent list {rt.plural} there, or run "
                f"{_force_hint(namespace)} to prune it with everything inside"
            )
        live += found
    vanished = await _vanished_owners(client, namespace, live=live, pruned=pruned)
    blockers = guard.namespace_blockers(
        live, owned=owned, pruned=pruned, vanished=vanished, staying=staying
    )
    return blockers.reason(namespace) if blockers else ""


async def _vanished_owners(
    client: kube.Kube,
    namespace: str,
    *,
    live: list[dict[str, Any]],
    pruned: list[dict[str, Any]],
) -> set[str]:
    """Owners the listed objects name that no longer exist. Right after a prune the garbage
    collector has often removed a ReplicaSet but not yet its Pods; an owner that cannot be
    looked up counts as existing, so its dependents stay someone else's."""
    known = {str(o["metadata"].get("uid") or "") for o in [*live, *pruned]}
    refs: dict[str, dict[str, Any]] = {}
    for obj in live:
        for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
            uid = str(ref.get("uid") or "")
            if uid and uid not in known:
                refs[uid] = ref

    async def gone(uid: str, ref: dict[str, Any]) -> bool:
        try:
            rt = await client.resource_type(
                api_version=str(ref["apiVersion"]), kind=str(ref["kind"])
            )
            owner = await client.get(
                rt, namespace=namespace if rt.namespaced else "", name=str(ref["name"])
            )
        except errors.UnknownKind:
            return True  # its kind is gone (CRD deleted), and so is every object of it
        except (errors.KubeError, KeyError):
            return False
        return owner is None or str(owner["metadata"].get("uid") or "") != uid

    answers = await asyncio.gather(*(gone(uid, ref) for uid, ref in refs.items()))
    return {uid for uid, vanished in zip(refs, answers, strict=True) if vanished}
