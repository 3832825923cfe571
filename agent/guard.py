"""What an app's bundle may not touch, and when a prune must hold back: the agent's blast-radius
rules, as pure functions the reconciler consults before any API call.

Four rules, each a trust boundary of the design ("an app's bundle on a cluster"):

- **Confinement**: an app never writes to, or prunes from, the agent's own namespace (its
  inventories and identity Secret live there), nor the Namespace object itself, nor any object
  labelled or annotated as a fleetops inventory.
- **Namespace prune**: a Namespace is deleted only when everything in it is this app's (listed in
  its inventory, or made by something that is), unless the Namespace carries
  `fleetops.io/prune-namespace: force`.
- **Hooks**: a sync hook's delete policies delete it, so no kind whose deletion reaches past the
  object itself (a Namespace, a CustomResourceDefinition, cluster-wide RBAC) may be a hook.
- **Mass prune**: a sync that would prune more than the app's `maxPrunePercent` of its inventory
  applies but does not prune, until an operator allows it once.

It must never do I/O and never read object content beyond metadata: the namespace check sees
Secrets, and their data must not reach a message.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

from fleetops.agent import ids, manifests

INVENTORY_MARK = "fleetops.io/inventory"  # label (or annotation) on every inventory ConfigMap
PRUNE_NAMESPACE_ANNOTATION = "fleetops.io/prune-namespace"
PRUNE_NAMESPACE_FORCE = "force"
DEFAULT_MAX_PRUNE_PERCENT = 50

# Made by Kubernetes in every namespace; never a sign that someone else uses it.
_AUTOMATIC = {
    manifests.Key(group="", kind="ConfigMap", namespace="", name="kube-root-ca.crt"),
    manifests.Key(group="", kind="ServiceAccount", namespace="", name="default"),
}


# ---------------------------------------------------------------- confinement


@dataclasses.dataclass(frozen=True)
class Refusal:
    """Why an app may not touch an object (`why`), and what its author can do instead (`fix`)."""

    why: str
    fix: str

    def on_apply(self) -> str:
        return f"refused: {self.why}; an app may not write there: {self.fix}"

    def on_hook(self) -> str:
        return f"refused: {self.why}; {self.fix}"

    def on_prune(self) -> str:
        return f"not pruned, and no longer tracked by this app: {self.why}; an app never deletes it"


def refusal(
    key: manifests.Key, obj: Mapping[str, Any] | None, *, agent_namespace: str
) -> Refusal | None:
    """Why an app may not write or delete this object, or None when it may. `obj` is the object
    as the bundle has it (or as it lives, for prune); only its metadata is read."""
    if not key.group and key.kind == "Namespace" and key.name == agent_namespace:
        return Refusal(
            f"{key} is the fleetops agent's own namespace (app inventories and the agent's "
            "identity live there)",
            "drop it from the app's manifests",
        )
    if key.namespace == agent_namespace:
        return Refusal(
            f"{key} is in {agent_namespace}, the fleetops agent's own namespace (app "
            "inventories and the agent's identity live there)",
            "deploy it to another namespace",
        )
    meta = (obj or {}).get("metadata") or {}
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    if INVENTORY_MARK in labels or INVENTORY_MARK in annotations:
        return Refusal(
            f"{key} is marked as a fleetops inventory ({INVENTORY_MARK}), and only the agent "
            "writes inventories",
            f"remove the {INVENTORY_MARK} label and annotation, or drop the object",
        )
    return None


# ---------------------------------------------------------------- hooks

# Kinds a hook may not be: deleting one (BeforeHookCreation, the default, deletes it before
# every run) deletes far more than the hook, or the access of whatever is bound by it.
_NO_HOOK = {
    ("", "Namespace"): "deleting a Namespace deletes everything in it",
    ("apiextensions.k8s.io", "CustomResourceDefinition"): (
        "deleting a CustomResourceDefinition deletes every resource of its kind, cluster-wide"
    ),
    ("rbac.authorization.k8s.io", "ClusterRole"): (
        "deleting a ClusterRole takes access away from everything bound to it, cluster-wide"
    ),
    ("rbac.authorization.k8s.io", "ClusterRoleBinding"): (
        "deleting a ClusterRoleBinding takes cluster-wide access away (the agent's own among them)"
    ),
}


def hook_refusal(key: manifests.Key) -> Refusal | None:
    """Why this object may not be a sync hook (its delete policies would delete it), or None."""
    what = _NO_HOOK.get((key.group, key.kind))
    if what is None:
        return None
    return Refusal(
        f"{key} may not be a sync hook: a hook's delete policies delete it, and {what}",
        "remove its hook annotations (argocd.argoproj.io/hook, helm.sh/hook) to apply it as an "
        "ordinary object, which prune protects",
    )


# ---------------------------------------------------------------- mass prune


def max_prune_percent(configured: int) -> int:
    """The policy's value as a limit: 0 (unset) means the default; 100 or more turns it off."""
    return DEFAULT_MAX_PRUNE_PERCENT if configured <= 0 else min(configured, 100)


@dataclasses.dataclass(frozen=True)
class MassPrune:
    """A prune of `would_delete` of the `total` objects an app's inventory lists."""

    would_delete: int
    total: int
    limit: int  # percent, already through `max_prune_percent`

    @property
    def held(self) -> bool:
        """Strictly more than the limit; 100 never holds."""
        return self.limit < 100 and self.would_delete * 100 > self.limit * self.total

    def share(self) -> str:
        percent = 100.0 * self.would_delete / self.total if self.total else 100.0
        shown = f"{percent:.0f}"
        if shown == str(self.limit):  # 50.2% must not read "50% > 50%"
            shown = f"{percent:.1f}"
        return (
            f"would delete {self.would_delete} of {self.total} objects ({shown}% > {self.limit}%)"
        )

    def reason(self, *, app: ids.AppName, cluster: ids.ClusterName) -> str:
        if cluster:
            how = f"`fleetops-hub sync {app} --cluster {cluster} --allow-mass-prune`"
        else:  # run without a hub (`fleetops-agent apply`)
            how = "`fleetops-agent apply ... --allow-mass-prune` (or a higher --max-prune-percent)"
        return f"prune held: {self.share()}; allow with {how}"


# ---------------------------------------------------------------- namespace prune


@dataclasses.dataclass(frozen=True)
class Blockers:
    """What stops a Namespace from being pruned: objects fleetops did not apply for this app,
    and objects of the app that must stay (still in Git, or left in place on purpose)."""

    foreign: tuple[manifests.Key, ...]
    staying: tuple[manifests.Key, ...]

    def __bool__(self) -> bool:
        return bool(self.foreign or self.staying)

    def reason(self, namespace: str) -> str:
        parts = []
        if self.foreign:
            parts.append(f"objects fleetops did not apply for this app: {_few(self.foreign)}")
        if self.staying:
            parts.append(f"objects of this app that stay: {_few(self.staying)}")
        return (
            f"left in place: Namespace {namespace} still holds {'; and '.join(parts)}. Deleting "
            "it would delete them too: move or delete them, or run `kubectl annotate namespace "
            f"{namespace} {PRUNE_NAMESPACE_ANNOTATION}={PRUNE_NAMESPACE_FORCE}` to prune it with "
            "everything inside"
        )


def _few(keys: Sequence[manifests.Key], shown: int = 3) -> str:
    names = ", ".join(str(k) for k in keys[:shown])
    return names + (f" (and {len(keys) - shown} more)" if len(keys) > shown else "")


def forced(namespace_obj: Mapping[str, Any]) -> bool:
    annotations = (namespace_obj.get("metadata") or {}).get("annotations") or {}
    return annotations.get(PRUNE_NAMESPACE_ANNOTATION) == PRUNE_NAMESPACE_FORCE


def is_crd(key: manifests.Key) -> bool:
    return key.group == "apiextensions.k8s.io" and key.kind == "CustomResourceDefinition"


def crd_blocked(
    crd: manifests.Key, holds: Iterable[manifests.Key], *, owned: Collection[manifests.Key]
) -> str:
    """Why a CustomResourceDefinition must not be pruned (deleting it deletes every custom
    resource of its kind, cluster-wide), or "" when all of them are this app's."""
    foreign = sorted((k for k in holds if k not in owned), key=str)
    if not foreign:
        return ""
    shown = ", ".join(str(k) for k in foreign[:3]) + (
        f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
    )
    return (
        f"left in place: deleting {crd} would delete every resource of its kind, and "
        f"{len(foreign)} are not this app's ({shown}); remove them first, or allow it with "
        f"`kubectl annotate crd {crd.name} {PRUNE_NAMESPACE_ANNOTATION}={PRUNE_NAMESPACE_FORCE}`"
    )


def key_of(obj: Mapping[str, Any]) -> manifests.Key:
    meta = obj.get("metadata") or {}
    group = str(obj.get("apiVersion") or "").rpartition("/")[0]
    return manifests.Key(
        group=group,
        kind=str(obj.get("kind") or ""),
        namespace=str(meta.get("namespace") or ""),
        name=str(meta["name"]),
    )


def owner_uids(obj: Mapping[str, Any]) -> list[str]:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return [str(r.get("uid") or "") for r in refs if r.get("uid")]


def namespace_blockers(
    live: Iterable[Mapping[str, Any]],
    *,
    owned: Collection[manifests.Key],
    pruned: Sequence[Mapping[str, Any]],
    vanished: Collection[str],
    staying: Collection[manifests.Key],
) -> Blockers:
    """Sort the live objects of one namespace. `owned` are the app's inventory keys, `pruned`
    the objects this prune just deleted, `vanished` the uids of owners that no longer exist
    (their dependents are garbage the collector is about to remove), `staying` the app's keys
    that must survive.

    An object is the app's when it is listed in the inventory, or is owned (ownerReferences, to
    any depth) by an object of the app or by one that vanished, or is a claim a StatefulSet of
    the app made from its volumeClaimTemplates. An owner that still exists and is not the app's
    makes its dependents someone else's."""
    objs = [o for o in live if not (o.get("metadata") or {}).get("deletionTimestamp")]
    keys = [key_of(o) for o in objs]
    ours: set[str] = set(vanished) | {str(o["metadata"].get("uid") or "") for o in pruned}
    claims: list[re.Pattern[str]] = []
    for obj in pruned:
        key = key_of(obj)
        if key.kind == "StatefulSet" and key.group == "apps":
            claims += _claim_patterns(obj)
    for obj, key in zip(objs, keys, strict=True):
        if key in owned:
            ours.add(str(obj["metadata"].get("uid") or ""))
            if key.kind == "StatefulSet" and key.group == "apps":
                claims += _claim_patterns(obj)
    ours.discard("")
    changed = True
    while changed:  # dependents of dependents: Deployment -> ReplicaSet -> Pod
        changed = False
        for obj in objs:
            uid = str(obj["metadata"].get("uid") or "")
            if uid not in ours and any(u in ours for u in owner_uids(obj)):
                ours.add(uid)
                changed = True
    foreign: list[manifests.Key] = []
    stay: list[manifests.Key] = []
    for obj, key in zip(objs, keys, strict=True):
        if key in staying:
            stay.append(key)
        elif key in owned or str(obj["metadata"].get("uid") or "") in ours:
            continue
        elif dataclasses.replace(key, namespace="") in _AUTOMATIC:
            continue
        elif key.kind == "PersistentVolumeClaim" and any(p.fullmatch(key.name) for p in claims):
            continue
        else:
            foreign.append(key)
    return Blockers(tuple(sorted(foreign, key=str)), tuple(sorted(stay, key=str)))


def _claim_patterns(statefulset: Mapping[str, Any]) -> list[re.Pattern[str]]:
    """PVCs a StatefulSet creates are named <template>-<statefulset>-<ordinal> and carry no
    owner reference unless its retention policy asks for one."""
    name = str(statefulset["metadata"]["name"])
    templates = (statefulset.get("spec") or {}).get("volumeClaimTemplates") or []
    return [
        re.compile(re.escape(f"{(t.get('metadata') or {}).get('name', '')}-{name}-") + r"\d+")
        for t in templates
    ]
