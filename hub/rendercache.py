"""Rendering, once: (app, target, revision) -> bundle digest, each rendered at most once and
at most RENDER_SLOTS at a time, the bundles stored by digest, and the recent or small ones
kept in memory (raw bytes for GetBundle, parsed for sending inside assignments).

A render is keyed by content, not by commit: the tree ids, at the revision, of the repo paths
the app's last render read (`Rendered.inputs`: its directory, values files, Kustomize bases,
symlink targets), so a commit elsewhere in the repo renders nothing again, and a commit to a
base outside the app's directory does.

One app's broken input is that app's error (a `Rendered` with `error`), never the fleet's.
Never plans: which bundle a cluster gets is the planner's decision.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping

from fleetops.hub import config, errors, ignorerules, records, render, repo, status, storeapi
from fleetops.proto import bundles
from fleetops.proto.v1 import types_pb2

log = logging.getLogger("fleetops.hub")
RENDER_SLOTS = 2  # concurrent helm/kustomize processes (each may use a core)
PRERENDER_WAIT = 2.0  # seconds planning waits for renders before going on without the slow ones
INLINE_LIMIT = 256 * 1024  # a bundle this small may travel inside an assignment
MAX_BYTES_KEPT = 64  # bundles whose bytes stay in memory
MAX_INLINE_KEPT = 256  # small bundles kept parsed in memory

Key = tuple[str, str, str, str]  # (app, target, revision, overrides hash)


@dataclasses.dataclass(frozen=True)
class RenderResult:
    digest: str
    error: str


def overrides_hash(app: config.App, target: config.Target) -> str:
    """What besides the tree decides a render: a hub.yaml edit of these re-renders."""
    doc: dict[str, object] = {
        "ns": app.namespace,
        "path": app.path,
        "values": target.helm.values,
        "valuesFiles": list(target.helm.values_files),
        "kustomize": target.kustomize_dir,
        "overlays": list(target.yaml_overlays),
        **(
            {"health": [dataclasses.astuple(c) for c in app.health_checks]}
            if app.health_checks
            else {}
        ),
    }
    if rules := app.ignore_differences + target.ignore_differences:  # they are in the bundle
        doc["ignore"] = ignorerules.describe(rules)
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]


def key(app: config.App, target: config.Target, revision: str) -> Key:
    return (app.name, target.name, revision, overrides_hash(app, target))


class RenderCache:
    def __init__(
        self, *, db: storeapi.StoreApi, tools: render.Tools, repos: Mapping[str, repo.RepoCache]
    ) -> None:
        self._db = db
        self._tools = tools
        self._repos = repos  # the tracker's caches, read only
        self._slots = asyncio.Semaphore(RENDER_SLOTS)
        self._rendering: dict[Key, asyncio.Future[RenderResult]] = {}
        self.results: dict[Key, RenderResult] = {}
        self._content: dict[tuple[str, str, str], str] = {}  # (app, target, tree key) -> digest
        # (app, target) -> the repo paths its last render read (render.Rendered.inputs)
        self._inputs: dict[tuple[str, str], tuple[str, ...]] = {}
        self._bytes: dict[str, bytes] = {}
        self._inline: dict[str, types_pb2.Bundle] = {}

    def load(self, stored: list[records.Render]) -> None:
        """The render outcomes the store kept."""
        for r in stored:
            self.results[(r.app, r.target, r.revision, r.key)] = RenderResult(r.digest, r.error)

    def known(self, app: config.App, target: config.Target, revision: str) -> RenderResult | None:
        return self.results.get(key(app, target, revision))

    def busy(self, app: config.App, target: config.Target, revision: str) -> bool:
        """Rendering now, with no earlier result."""
        k = key(app, target, revision)
        return k not in self.results and k in self._rendering

    async def bundle_for(
        self, app: config.App, target: config.Target, revision: str
    ) -> RenderResult:
        """The bundle digest for (app, target, revision), rendering it at most once."""
        rkey = key(app, target, revision)
        known = self.results.get(rkey)
        if known is not None:
            return known
        running = self._rendering.get(rkey)
        if running is not None:  # someone is rendering it: share the result
            return await asyncio.shield(running)
        future: asyncio.Future[RenderResult] = asyncio.get_running_loop().create_future()
        self._rendering[rkey] = future
        try:
            async with self._slots:
                result = await self._render(app, target, revision)
            self.results[rkey] = result
            future.set_result(result)
            await self._db.run(
                self._db.put_render,
                records.Render(
                    app=app.name,
                    target=target.name,
                    revision=revision,
                    digest=result.digest,
                    error=result.error,
                    key=rkey[3],
                    rendered_at=time.time(),
                ),
            )
            return result
        except BaseException as e:
            if isinstance(e, asyncio.CancelledError):
                future.cancel()
            elif not future.done():
                future.set_exception(e)
                future.exception()  # retrieved: waiters see it, nobody else must
            raise
        finally:
            self._rendering.pop(rkey, None)

    async def prerender(
        self,
        wanted: Iterable[tuple[config.App, config.Target, str]],
        *,
        on_late: Callable[[], None],
    ) -> None:
        """Render these concurrently; wait PRERENDER_WAIT seconds at most, and call `on_late`
        when one of those still running is done (so a slow helm template delays only the
        apps that need it)."""
        renders = [asyncio.ensure_future(self.bundle_for(a, t, rev)) for a, t, rev in wanted]
        if not renders:
            return
        _, late = await asyncio.wait(renders, timeout=PRERENDER_WAIT)

        def landed(task: asyncio.Future[RenderResult]) -> None:
            if not task.cancelled():
                on_late()

        for task in late:  # planned without them; a pass follows when they are done
            task.add_done_callback(landed)
        for task in renders:
            task.add_done_callback(_consume)

    async def _render(self, app: config.App, target: config.Target, revision: str) -> RenderResult:
        cache = self._repos.get(app.repo)
        if cache is None:
            return RenderResult("", f"repo {app.repo!r} is not configured")
        # The paths the last render read: if none of them changed, the app's directory (and
        # so what it refers to) did not either, and the render would read the same again.
        paths = self._inputs.get((app.name, target.name)) or (app.path,)
        try:
            tree = await self._tree(cache, app, target, revision=revision, paths=paths)
        except (KeyError, ValueError) as e:
            return RenderResult("", f"revision {revision[:12]} is not in the repo cache: {e}")
        digest = self._content.get((app.name, target.name, tree))
        if digest:
            return RenderResult(digest, "")
        try:
            checkout = await cache.acheckout(revision)
            rendered = await render.arender(
                checkout=checkout.root,
                refused_links=checkout.refused_links,
                app=app,
                target=target,
                tools=self._tools,
            )
            self._inputs[(app.name, target.name)] = rendered.inputs
            tree = await self._tree(
                cache, app, target, revision=revision, paths=rendered.inputs or (app.path,)
            )
        except errors.RenderError as e:
            log.warning("app %s target %s at %s: %s", app.name, target.name, revision[:8], e)
            return RenderResult("", str(e))
        except Exception as e:  # one app's broken input is that app's error, never the fleet's
            log.exception(
                "app %s target %s at %s: render crashed", app.name, target.name, revision[:8]
            )
            return RenderResult("", status.unexpected("render", e))
        try:
            bundle = types_pb2.Bundle(app=app.name, namespace=app.namespace)
            rules = app.ignore_differences + target.ignore_differences
            bundle.ignore_differences.extend(ignorerules.to_proto(rules))
            bundle.health_checks.extend(
                types_pb2.HealthCheck(group=c.group, kind=c.kind, lua=c.lua)
                for c in app.health_checks
            )
            for source, text in rendered.manifests:
                bundle.manifests.add(source=source, yaml=text)
            digest = bundles.digest(bundle)
            data = bundle.SerializeToString(deterministic=True)
        except Exception as e:  # e.g. a bundle protobuf cannot hold
            log.exception("app %s target %s: bundle failed", app.name, target.name)
            return RenderResult("", status.unexpected("bundle", e))
        await self._db.run(
            self._db.put_bundle,
            records.Bundle(
                digest=digest, app=app.name, size=len(data), data=data, created_at=time.time()
            ),
        )
        self._content[(app.name, target.name, tree)] = digest
        return RenderResult(digest, "")

    @staticmethod
    async def _tree(
        cache: repo.RepoCache,
        app: config.App,
        target: config.Target,
        *,
        revision: str,
        paths: tuple[str, ...],
    ) -> str:
        """The content key of (app, target) at `revision` when it reads `paths`."""
        return overrides_hash(app, target) + ":" + await cache.atree_key(revision, list(paths))

    async def bundle_bytes(self, digest: str) -> bytes:
        """A bundle's bytes; the recent ones are kept in memory, since a new revision has
        every agent of a target ask for the same bundle at once."""
        data = self._bytes.get(digest)
        if data is None:
            stored = await self._db.run(self._db.bundle, digest)
            if stored is None:
                raise errors.NotFound(f"no bundle {digest[:12]}")
            data = stored.data
            if len(self._bytes) >= MAX_BYTES_KEPT:
                self._bytes.pop(next(iter(self._bytes)))
            self._bytes[digest] = data
        return data

    async def load_inline(self, digests: Iterable[str]) -> None:
        """Keep small bundles parsed in memory, to send them inside assignments."""
        for digest in set(digests) - set(self._inline):
            try:
                data = await self.bundle_bytes(digest)
            except errors.NotFound:
                continue
            if len(data) <= INLINE_LIMIT:
                if len(self._inline) >= MAX_INLINE_KEPT:
                    self._inline.pop(next(iter(self._inline)))
                self._inline[digest] = types_pb2.Bundle.FromString(data)

    def inline(self, digest: str) -> types_pb2.Bundle | None:
        return self._inline.get(digest)

    def forget(self, *, renders: set[tuple[str, str, str]], digests: set[str]) -> None:
        """Keep only the results the store still has (retention pruned the rest)."""
        self.results = {k: v for k, v in self.results.items() if k[:3] in renders}
        self._content = {k: d for k, d in self._content.items() if d in digests}


def _consume(task: asyncio.Future[RenderResult]) -> None:
    """Errors of a background render are recorded as its result; never 'never retrieved'."""
    if not task.cancelled():
        task.exception()
