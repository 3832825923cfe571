"""Watches the objects the agent applied, and says which app's object changed.

One watch per (type, namespace) the apps' objects live in (cluster-scoped types: one per
type), narrowed to the object's name when it is the only one there; it starts from a list's
resourceVersion, resumes from the last version it saw (bookmarks keep that fresh) when the
server ends it or the connection breaks (backoff 0.5 s doubling to 8 s; a minute when it is
refused, e.g. 403), and lists again on 410 Gone. A relist reports every managed object there
as seen (the caller compares versions) and the missing ones as deleted, so nothing changed
while it was not watching goes unseen.

It keeps names and versions only, never objects: memory follows the number of managed
objects, not their size. It decides nothing: `on_change(app, key, obj)` (None when deleted)
goes to the caller, who knows what was last seen in sync.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Mapping
from typing import Any

from fleetops.agent import errors, ids, kube, manifests

log = logging.getLogger("fleetops.agent.watch")
OnChange = Callable[[ids.AppName, manifests.Key, "dict[str, Any] | None"], None]
BACKOFF = (0.5, 8.0)  # first retry, longest wait, when the connection broke
REFUSED = 60.0  # the wait after the server refused a watch (403, 404): fixing it takes a person


@dataclasses.dataclass(frozen=True)
class Scope:
    """What one watch covers: a type, and a namespace ("" for cluster-scoped types)."""

    rt: kube.ResourceType
    namespace: str


@dataclasses.dataclass
class _Stream:
    names: dict[str, set[ids.AppName]]  # managed names here -> the apps listing them
    task: asyncio.Task[None] | None = None
    selector: str = ""  # the field selector it runs with


class Watches:
    """The agent's watches, following what each app manages (`track`)."""

    def __init__(
        self, client: kube.Kube, on_change: OnChange, *, timeout_seconds: int = kube.WATCH_SECONDS
    ) -> None:
        self.kube = client
        self.on_change = on_change
        self.timeout_seconds = timeout_seconds
        self._apps: dict[ids.AppName, dict[manifests.Key, kube.ResourceType]] = {}
        self._streams: dict[Scope, _Stream] = {}
        self.relists = 0  # lists made to (re)start a watch, for tests and benchmarks
        self.resumes = 0  # watches resumed from a resourceVersion
        self._stopped = False

    def track(self, app: ids.AppName, objects: Mapping[manifests.Key, kube.ResourceType]) -> None:
        """`app` manages exactly `objects` now (empty: nothing, e.g. it was removed)."""
        if self._apps.get(app, {}) == dict(objects):
            return
        if objects:
            self._apps[app] = dict(objects)
        else:
            self._apps.pop(app, None)
        self._rebuild()

    def apps(self) -> list[ids.AppName]:
        """The apps whose objects are watched."""
        return sorted(self._apps)

    def watched(self) -> list[Scope]:
        return sorted(self._streams, key=lambda s: (s.rt.group, s.rt.kind, s.namespace))

    def _rebuild(self) -> None:
        wanted: dict[Scope, dict[str, set[ids.AppName]]] = {}
        for app, objects in self._apps.items():
            for key, rt in objects.items():
                scope = Scope(rt, key.namespace if rt.namespaced else "")
                wanted.setdefault(scope, {}).setdefault(key.name, set()).add(app)
        for scope in [s for s in self._streams if s not in wanted]:
            stream = self._streams.pop(scope)
            if stream.task is not None:
                stream.task.cancel()
        for scope, names in wanted.items():
            old = self._streams.get(scope)
            selector = _selector(names)
            if old is not None and old.selector == selector:
                old.names = names  # the running watch filters by the new names
                continue
            if old is not None and old.task is not None:
                old.task.cancel()
            stream = _Stream(names=names, selector=selector)
            self._streams[scope] = stream
            if not self._stopped:
                stream.task = asyncio.get_running_loop().create_task(
                    self._watch(scope, stream), name=f"watch {scope.rt.plural} {scope.namespace}"
                )

    async def run(self) -> None:
        """Until cancelled; cancelling it stops every watch."""
        self._stopped = False
        for scope, stream in self._streams.items():
            if stream.task is None or stream.task.done():
                stream.task = asyncio.get_running_loop().create_task(self._watch(scope, stream))
        try:
            await asyncio.Event().wait()
        finally:
            self._stopped = True
            tasks = [s.task for s in self._streams.values() if s.task is not None]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for stream in self._streams.values():
                stream.task = None

    async def _watch(self, scope: Scope, stream: _Stream) -> None:
        """One scope, for as long as it is wanted."""
        version = ""
        wait = BACKOFF[0]
        rt, ns = scope.rt, scope.namespace
        where = f"{rt.plural} in {ns}" if ns else rt.plural

        def seen(event: dict[str, Any]) -> None:
            nonlocal version
            obj = event.get("object") or {}
            meta = obj.get("metadata") or {}
            version = str(meta.get("resourceVersion") or version)
            if event.get("type") == "BOOKMARK":
                return
            name = str(meta.get("name") or "")
            obj.setdefault("apiVersion", rt.api_version)
            obj.setdefault("kind", rt.kind)
            self._report(scope, stream, name, None if event.get("type") == "DELETED" else obj)

        while True:
            try:
                if not version:
                    items, version = await self.kube.list_at(rt, ns, field_selector=stream.selector)
                    self.relists += 1
                    self._relisted(scope, stream, items)
                else:
                    self.resumes += 1
                await self.kube.watch(
                    rt,
                    ns,
                    resource_version=version,
                    on_event=seen,
                    field_selector=stream.selector,
                    timeout_seconds=self.timeout_seconds,
                )
                wait = BACKOFF[0]  # the server ended it on time: resume at once
                continue
            except errors.Unreachable as e:
                log.warning("watch of %s broke, resuming in %.1f s: %s", where, wait, e)
            except errors.KubeError as e:
                if e.status == 410:  # our version is older than the server keeps: list again
                    log.info("watch of %s expired (410 Gone): listing again", where)
                    version = ""
                    continue
                log.warning("watch of %s failed, again in %.1f s: %s", where, wait, e)
                version = ""  # e.g. 403 or 404 (a CRD went away): start over from a list
                wait = max(wait, REFUSED)  # refused, not broken: do not ask every few seconds
            await asyncio.sleep(wait)
            wait = min(wait * 2, max(BACKOFF[1], wait))

    def _relisted(self, scope: Scope, stream: _Stream, items: list[dict[str, Any]]) -> None:
        found = {str((i.get("metadata") or {}).get("name") or ""): i for i in items}
        for name in list(stream.names):
            self._report(scope, stream, name, found.get(name))

    def _report(self, scope: Scope, stream: _Stream, name: str, obj: dict[str, Any] | None) -> None:
        apps = stream.names.get(name)
        if not apps:
            return  # not ours: another object of the same kind in the namespace
        rt = scope.rt
        key = manifests.Key(group=rt.group, kind=rt.kind, namespace=scope.namespace, name=name)
        for app in sorted(apps):
            try:
                self.on_change(app, key, obj)
            except Exception:  # one caller's bug must not end the watch
                log.exception("app %s: handling a change of %s failed", app, key)


def _selector(names: Mapping[str, object]) -> str:
    """Narrow a watch to its one object's name; several names share an unfiltered watch."""
    if len(names) == 1:
        return f"metadata.name={next(iter(names))}"
    return ""
