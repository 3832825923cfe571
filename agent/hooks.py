"""Which objects of a bundle are sync hooks, in which phases they run, and how they are cleaned up.

A hook is named by Argo CD's `argocd.argoproj.io/hook` (a comma list of PreSync, Sync, PostSync,
SyncFail, Skip, PreDelete, PostDelete) or, only when that annotation is absent, by Helm's
`helm.sh/hook`, mapped as Argo CD maps it: pre-install/pre-upgrade run as PreSync,
post-install/post-upgrade as PostSync, pre-delete/post-delete become PreDelete/PostDelete,
test and rollback hooks are never applied, and crd-install is no hook at all. Delete policies
are the union of `argocd.argoproj.io/hook-delete-policy` and `helm.sh/hook-delete-policy`
(BeforeHookCreation when neither names one). A generateName hook gets a name fixed per
app, namespace and revision, so the same sync always names it the same and two apps never
share one.

The agent marks every hook it applies with `fleetops.io/hook-of: <app>` (`marked`), and a
delete policy only ever deletes a live object that carries this app's mark (`is_hook_of`): a
hook named like someone else's object must fail, never delete it.

Pure: it reads annotations and never touches the cluster. It must never classify an object it
cannot read as ordinary silently: an unknown phase or policy is an error naming the annotation.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from typing import Any

HOOK = "argocd.argoproj.io/hook"
DELETE_POLICY = "argocd.argoproj.io/hook-delete-policy"
HELM_HOOK = "helm.sh/hook"
HELM_DELETE_POLICY = "helm.sh/hook-delete-policy"
HELM_WEIGHT = "helm.sh/hook-weight"
# Set by the agent (never taken from Git) on every hook it applies: the app the hook is of.
MARK = "fleetops.io/hook-of"

PRE_SYNC = "PreSync"
SYNC = "Sync"
POST_SYNC = "PostSync"
SYNC_FAIL = "SyncFail"
SKIP = "Skip"
PRE_DELETE = "PreDelete"
POST_DELETE = "PostDelete"
RUN_PHASES = (PRE_SYNC, SYNC, POST_SYNC, SYNC_FAIL)  # in the order a sync runs them
DELETE_PHASES = (PRE_DELETE, POST_DELETE)  # run on app removal only, never on a sync
PHASES = (*RUN_PHASES, SKIP, *DELETE_PHASES)

BEFORE_HOOK_CREATION = "BeforeHookCreation"
HOOK_SUCCEEDED = "HookSucceeded"
HOOK_FAILED = "HookFailed"
POLICIES = (BEFORE_HOOK_CREATION, HOOK_SUCCEEDED, HOOK_FAILED)

_HELM_PHASES = {
    "pre-install": PRE_SYNC,
    "pre-upgrade": PRE_SYNC,
    "post-install": POST_SYNC,
    "post-upgrade": POST_SYNC,
    "pre-delete": PRE_DELETE,
    "post-delete": POST_DELETE,
}
_HELM_UNRUN = ("test", "test-success", "test-failure", "pre-rollback", "post-rollback")
_HELM_POLICIES = {
    "before-hook-creation": BEFORE_HOOK_CREATION,
    "hook-succeeded": HOOK_SUCCEEDED,
    "hook-failed": HOOK_FAILED,
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Hook:
    """How one hook object runs. `phases` are the sync phases it runs in (empty: it is never
    applied on a sync, and `why_not_run` says why); `noted` are PreDelete/PostDelete."""

    phases: frozenset[str]
    noted: frozenset[str] = frozenset()
    delete_policies: frozenset[str] = frozenset({BEFORE_HOOK_CREATION})
    why_not_run: str = ""

    @property
    def runs(self) -> bool:
        return bool(self.phases)

    @property
    def label(self) -> str:
        """The phases as a comma list in run order, e.g. "PreSync,PostSync" (the report's
        `hook` field)."""
        return ",".join(p for p in (*RUN_PHASES, *DELETE_PHASES) if p in self.phases | self.noted)

    def runs_in(self, phase: str) -> bool:
        return phase in self.phases


def _split(value: Any) -> list[str]:
    return [v.strip() for v in str(value).split(",") if v.strip()]


def classify(annotations: Mapping[str, Any]) -> Hook | None:
    """The hook an object's annotations make it, or None for an ordinary object (Skip-only
    objects are not hooks but are not applied either: see `skipped`). Raises ValueError
    naming the annotation and the allowed values when a phase or a policy is unknown."""
    argo = _split(annotations.get(HOOK, ""))
    if argo:
        unknown = [v for v in argo if v not in PHASES]
        if unknown:
            raise ValueError(
                f"annotation {HOOK}: unknown phase {', '.join(unknown)}; use a comma list of "
                f"{', '.join(PHASES)}"
            )
        wanted = set(argo) - {SKIP}
        if not wanted:
            return None
        phases = frozenset(wanted & set(RUN_PHASES))
        noted = frozenset(wanted & set(DELETE_PHASES))
        why = "" if phases else f"{'/'.join(sorted(noted))} hooks run only when the app is removed"
        return Hook(
            phases=phases, noted=noted, delete_policies=policies(annotations), why_not_run=why
        )
    helm = _split(annotations.get(HELM_HOOK, ""))
    if not helm or set(helm) == {"crd-install"}:
        return None
    mapped = {_HELM_PHASES[v] for v in helm if v in _HELM_PHASES}
    phases = frozenset(mapped & set(RUN_PHASES))
    noted = frozenset(mapped & set(DELETE_PHASES))
    why = ""
    if not phases:
        unrun = [v for v in helm if v not in _HELM_PHASES and v != "crd-install"]
        if noted:
            why = f"{'/'.join(sorted(noted))} hooks run only when the app is removed"
        elif any(v in _HELM_UNRUN for v in unrun):
            why = (
                f"{HELM_HOOK}: {', '.join(unrun)}: Helm test and rollback hooks are not run by "
                "fleetops (run `helm test` yourself)"
            )
        else:
            why = (
                f"{HELM_HOOK}: {', '.join(unrun)}: not a hook type fleetops runs; use "
                f"{', '.join(_HELM_PHASES)}"
            )
    return Hook(phases=phases, noted=noted, delete_policies=policies(annotations), why_not_run=why)


def skipped(annotations: Mapping[str, Any]) -> bool:
    """Argo CD's `hook: Skip` alone: the object is never applied (and is no hook)."""
    return set(_split(annotations.get(HOOK, ""))) == {SKIP}


def policies(annotations: Mapping[str, Any]) -> frozenset[str]:
    """The union of both delete-policy annotations; BeforeHookCreation when neither has one.
    Raises ValueError naming the annotation when a policy is unknown."""
    found: set[str] = set()
    for value in _split(annotations.get(DELETE_POLICY, "")):
        if value not in POLICIES:
            raise ValueError(
                f"annotation {DELETE_POLICY}: unknown policy {value}; use a comma list of "
                f"{', '.join(POLICIES)}"
            )
        found.add(value)
    for value in _split(annotations.get(HELM_DELETE_POLICY, "")):
        if value not in _HELM_POLICIES:
            raise ValueError(
                f"annotation {HELM_DELETE_POLICY}: unknown policy {value}; use a comma list of "
                f"{', '.join(_HELM_POLICIES)}"
            )
        found.add(_HELM_POLICIES[value])
    return frozenset(found or {BEFORE_HOOK_CREATION})


def weight_annotation(annotations: Mapping[str, Any]) -> str | None:
    """The annotation that gives a Helm hook its wave when no sync-wave is set, or None."""
    if HELM_HOOK in annotations and HOOK not in annotations and HELM_WEIGHT in annotations:
        return HELM_WEIGHT
    return None


def is_hook_doc(doc: Mapping[str, Any]) -> bool:
    """Whether a raw document carries a hook annotation (before it is validated)."""
    meta = doc.get("metadata")
    annotations = meta.get("annotations") if isinstance(meta, Mapping) else None
    if not isinstance(annotations, Mapping):
        return False
    return bool(_split(annotations.get(HOOK, "")) or _split(annotations.get(HELM_HOOK, "")))


def name_seed(*, app: str, namespace: str, revision: str) -> str:
    """What a generateName suffix is derived from: the app, its default namespace and the
    revision (two apps of one commit with the same generateName must not share a name)."""
    return "\0".join((app, namespace, revision))


def with_generated_name(doc: Mapping[str, Any], *, revision: str) -> Mapping[str, Any]:
    """A hook with `metadata.generateName` and no name gets `generateName` plus a suffix fixed
    by `revision` (a `name_seed`: app, default namespace and revision) and the namespace the
    document names, so one revision's sync always names it the same, a new revision names it
    anew, and other apps name theirs differently. Any other document comes back unchanged."""
    meta = doc.get("metadata")
    if not isinstance(meta, Mapping) or meta.get("name") or not is_hook_doc(doc):
        return doc
    prefix = meta.get("generateName")
    if not isinstance(prefix, str) or not prefix:
        return doc
    seed = "\0".join((revision, str(meta.get("namespace") or "")))
    suffix = hashlib.sha256(seed.encode()).hexdigest()[:10]
    return {**doc, "metadata": {**meta, "name": f"{prefix}{suffix}"}}


def marked(doc: Mapping[str, Any], *, app: str) -> dict[str, Any]:
    """The hook as the agent applies it: with `MARK` naming `app` (whatever Git put there)."""
    meta = dict(doc.get("metadata") or {})
    annotations = dict(meta.get("annotations") or {})
    annotations[MARK] = app
    meta["annotations"] = annotations
    return {**doc, "metadata": meta}


def has_mark(doc: Mapping[str, Any]) -> bool:
    """Whether a document from Git carries `MARK` (only the agent may set it)."""
    meta = doc.get("metadata")
    annotations = meta.get("annotations") if isinstance(meta, Mapping) else None
    return isinstance(annotations, Mapping) and MARK in annotations


def is_hook_of(live: Mapping[str, Any], *, app: str) -> bool:
    """Whether a live object is a hook the agent applied for `app` (it carries its mark): the
    only objects a hook's delete policies may delete."""
    meta = live.get("metadata")
    annotations = meta.get("annotations") if isinstance(meta, Mapping) else None
    return bool(app) and isinstance(annotations, Mapping) and annotations.get(MARK) == app


def not_ours(key: object, *, app: str) -> str:
    """Why a hook is not run when a live object of its name is not one of `app`'s hooks."""
    return (
        f"refused: {key} exists and is not a hook of app {app} (it lacks the {MARK}: {app} "
        "annotation the agent puts on the hooks it creates), and running the hook would "
        "delete or take over that object: rename the hook or delete the object"
    )
