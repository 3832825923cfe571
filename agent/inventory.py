"""What the agent has applied for each app, kept in the cluster itself.

One ConfigMap per app (`fleetops-inventory-<app>` in the agent's namespace) lists the objects
the agent applied, so a new agent pod, or one whose local disk is gone, still knows what it
owns. Prune deletes only objects listed here. The inventory holds identities (group, kind,
namespace, name, version), never object content, so no Secret data is ever copied into it.
Sync hooks are listed apart (`hooks`): prune never looks at them (only their delete policies
remove them), and the next sync finds them there to delete before creating them again.
Only the agent writes inventories: an app's bundle may not touch the agent's namespace nor
anything marked `fleetops.io/inventory` (`agent.guard`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from typing import Any

from fleetops.agent import errors, guard, ids, kube, manifests

DATA_KEY = "inventory.json"
PSA_ENFORCE = "pod-security.kubernetes.io/enforce"
_CONFIGMAP = kube.ResourceType(
    group="", version="v1", kind="ConfigMap", plural="configmaps", namespaced=True
)
_NAMESPACE = kube.ResourceType(
    group="", version="v1", kind="Namespace", plural="namespaces", namespaced=False
)


@dataclasses.dataclass(frozen=True)
class Entry:
    key: manifests.Key
    version: str


@dataclasses.dataclass(frozen=True)
class Inventory:
    app: ids.AppName
    revision: ids.Revision
    bundle_digest: ids.Digest
    entries: tuple[Entry, ...]
    hooks: tuple[Entry, ...] = ()  # sync hooks: never pruned, see agent.hookrun

    def keys(self) -> set[manifests.Key]:
        return {e.key for e in self.entries}


def configmap_name(app: ids.AppName) -> str:
    return f"fleetops-inventory-{app}"


class Store:
    """Inventories of every app in one namespace of one cluster."""

    def __init__(self, client: kube.Kube, namespace: str) -> None:
        self._client = client
        self.namespace = namespace
        self._namespace_exists = False

    async def load(self, app: ids.AppName) -> Inventory | None:
        cm = await self._client.get(_CONFIGMAP, namespace=self.namespace, name=configmap_name(app))
        if cm is None:
            return None
        try:
            doc = json.loads((cm.get("data") or {}).get(DATA_KEY, "{}"))
            entries = _entries(doc.get("resources", []))
            hooks = _entries(doc.get("hooks", []))
        except (ValueError, KeyError, TypeError) as e:
            raise errors.StateError(
                f"inventory ConfigMap {self.namespace}/{configmap_name(app)} is corrupt ({e}); "
                "delete it and sync again (prune will skip objects it no longer knows)"
            ) from None
        return Inventory(
            app=app,
            revision=ids.Revision(str(doc.get("revision", ""))),
            bundle_digest=ids.Digest(str(doc.get("bundleDigest", ""))),
            entries=entries,
            hooks=hooks,
        )

    async def owners(self, *, besides: str) -> dict[manifests.Key, str]:
        """Which app's inventory lists each object, for every app but `besides`: an app
        never takes over (and later prunes) what another app applied. A corrupt inventory
        is skipped here (its own app reports it)."""
        out: dict[manifests.Key, str] = {}
        for cm in await self._client.list(
            _CONFIGMAP, self.namespace, label_selector=f"{guard.INVENTORY_MARK}=true"
        ):
            meta = cm.get("metadata") or {}
            app = str((meta.get("annotations") or {}).get("fleetops.io/app", ""))
            if not app or app == besides:
                continue
            try:
                doc = json.loads((cm.get("data") or {}).get(DATA_KEY, "{}"))
                for e in [*doc.get("resources", []), *doc.get("hooks", [])]:
                    key = manifests.Key(
                        group=e["group"], kind=e["kind"], namespace=e["namespace"], name=e["name"]
                    )
                    out.setdefault(key, app)
            except (ValueError, KeyError, TypeError, AttributeError):
                continue
        return out

    async def save(
        self,
        *,
        app: ids.AppName,
        revision: ids.Revision,
        bundle_digest: ids.Digest,
        entries: Iterable[Entry],
        hooks: Iterable[Entry] = (),
    ) -> None:
        await self._ensure_namespace()
        doc: dict[str, Any] = {
            "app": app,
            "revision": revision,
            "bundleDigest": bundle_digest,
            "resources": _listing(entries),
        }
        hook_list = _listing(hooks)
        if hook_list:  # absent when empty, so inventories without hooks read as before
            doc["hooks"] = hook_list
        body = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": configmap_name(app),
                "namespace": self.namespace,
                "labels": {
                    "app.kubernetes.io/managed-by": "fleetops",
                    guard.INVENTORY_MARK: "true",
                },
                "annotations": {"fleetops.io/app": app},
            },
            "data": {DATA_KEY: json.dumps(doc, indent=1, sort_keys=True)},
        }
        await self._client.apply(_CONFIGMAP, body, force=True)

    async def _ensure_namespace(self) -> None:
        if self._namespace_exists:
            return
        if await self._client.get(_NAMESPACE, namespace="", name=self.namespace) is None:
            # as the install makes it: nothing but the agent runs here, so Pods must be restricted
            meta = {"name": self.namespace, "labels": {PSA_ENFORCE: "restricted"}}
            body = {"apiVersion": "v1", "kind": "Namespace", "metadata": meta}
            await self._client.apply(_NAMESPACE, body, force=True)
        self._namespace_exists = True


def _entries(listed: list[dict[str, str]]) -> tuple[Entry, ...]:
    return tuple(
        Entry(
            manifests.Key(
                group=e["group"], kind=e["kind"], namespace=e["namespace"], name=e["name"]
            ),
            e["version"],
        )
        for e in listed
    )


def _listing(entries: Iterable[Entry]) -> list[dict[str, str]]:
    ordered = sorted(
        set(entries), key=lambda e: (e.key.group, e.key.kind, e.key.namespace, e.key.name)
    )
    return [
        {
            "group": e.key.group,
            "version": e.version,
            "kind": e.key.kind,
            "namespace": e.key.namespace,
            "name": e.key.name,
        }
        for e in ordered
    ]
