"""Rendering, once: (app, target, revision) -> bundle digest, each rendered at most once and
at most RENDER_SLOTS at a time, the bundles stored by digest, and the recent or small ones
kept in memory (raw bytes for GetBundle, parsed for sending inside assignments).

A render is keyed by content, not by commit: the tree ids, at the revision, of the repo paths
the app's last render read (`Rendered.inputs`: its directory, values files, Kustomize bases,
symlink targets), so a commit elsewhere in the repo renders nothing again, and a commit to a
base outside the app's directory does.

A chart from a Helm repository or OCI registry is fetched first (hub.chartstage, the only
network step): the version its range resolves to and the archive's digest are part of the
key, so a new upstream version renders again; a fetch failure is that app's error and its
clusters keep what they run.

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
from collections.abc import Callable, Iterable, Mapping, Sequence

from fleetops.hub import charts as chartstore
from fleetops.hub import (
    chartstage,
    config,
    errors,
    ignorerules,
    records,
    render,
    repo,
    status,
    storeapi,
)
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


def overrides_hash(app: config.App, target: config.Target, fetched: str = "") -> str:
    """What besides the tree decides a render: a hub.yaml edit of these re-renders, and so
    does a new chart version or digest from a repository (`fetched`, chartstage.Fetched.key)."""
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
    if app.helm != config.Chart():  # only then: earlier renders keep their keys
        doc["helm"] = dataclasses.asdict(app.helm)
    if fetched:
        doc["fetched"] = fetched
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]


def key(app: config.App, target: config.Target, revision: str, fetched: str = "") -> Key:
    return (app.name, target.name, revision, overrides_hash(app, target, fetched))


class RenderCache:
    def __init__(
        self,
        *,
        db: storeapi.StoreApi,
        tools: render.Tools,
        repos: Mapping[str, repo.RepoCache],
        charts: chartstore.Charts | None = None,
        helm_repositories: Callable[[], Sequence[config.HelmRepository]] = tuple,
    ) -> None:
        self._db = db
        self._tools = tools
        self._repos = repos  # the tracker's caches, read only
        self.charts = charts  # the fetch stage's archives (None: no chart from a repository)
        self._helm_repositories = helm_repositories  # hub.yaml's allowlist in force
        # (app, target) -> why its chart could not be fetched, at the last try
        self.fetch_errors: dict[tuple[str, str], str] = {}
        self._slots = asyncio.Semaphore(RENDER_SLOTS)
        self._rendering: dict[Key, asyncio.Future[RenderResult]] = {}
        self.results: dict[Key, RenderResult] = {}
        self._content: dict[tuple[str, str, str], str] = {}  # (app, target, tree key) -> digest
        # (app, target) -> the repo paths its last render read (render.Rendered.inputs)
        self._inputs: dict[tuple[str, str], tuple[str, ...]] = {}
        self._bytes: dict[str, bytes] = {}
        self._fetched: dict[chartstore.Pulled, str] = {}  # an app's chart -> Fetched.key
        self._fetched_whole: dict[chartstore.Pulled, chartstage.Fetched] = {}
        self._inline: dict[str, types_pb2.Bundle] = {}

    def load(self, stored: list[records.Render]) -> None:
        """The render outcomes the store kept."""
        for r in stored:
            self.results[(r.app, r.target, r.revision, r.key)] = RenderResult(r.digest, r.error)

    def _key(self, app: config.App, target: config.Target, revision: str) -> Key:
        """The key with the chart version resolved last (no network)."""
        if not app.helm.remote or self.charts is None:
            return key(app, target, revision)
        pulled = self.charts.current(app.helm, self._helm_repositories())
        return key(app, target, revision, self._fetched.get(pulled, "") if pulled else "")

    def known(self, app: config.App, target: config.Target, revision: str) -> RenderResult | None:
        failed = self.fetch_errors.get((app.name, target.name))
        if failed:
            return RenderResult("", failed)
        return self.results.get(self._key(app, target, revision))

    def busy(self, app: config.App, target: config.Target, revision: str) -> bool:
        """Rendering now, with no earlier result."""
        k = self._key(app, target, revision)
        return k not in self.results and k in self._rendering

    def chart_of(self, app: config.App) -> str:
        """The chart from a repository `app` renders now (`chart NAME VERSION (digest)`), or
        "" when its chart is in Git."""
        if not app.helm.remote or self.charts is None:
            return ""
        pulled = self.charts.current(app.helm, self._helm_repositories())
        return f"chart {pulled.describe()}" if pulled else ""

    def charts_due(self) -> bool:
        """A chart version range is due to be resolved again (its repository's interval),
        or a chart could not be fetched last time (tried again on every Git poll, so an
        app recovers when its repository is back)."""
        if self.charts is None:
            return False
        return bool(self.fetch_errors) or self.charts.due(self._helm_repositories())

    def forget_due_charts(self) -> None:
        """Drop the chart resolutions a planning pass did not renew (no cluster uses them)."""
        if self.charts is not None:
            self.charts.forget_due(self._helm_repositories())

    async def _fetch(
        self, app: config.App, target: config.Target, revision: str
    ) -> chartstage.Fetched | RenderResult:
        """The fetch stage for a chart from a repository: the archives, or the error."""
        if self.charts is None:
            return RenderResult("", "charts from Helm repositories are not enabled on this hub")
        store = self.charts
        known = store.fresh(app.helm, repos=self._helm_repositories(), revision=revision)
        if known is not None and known in self._fetched_whole:  # every cluster of a pass
            self.fetch_errors.pop((app.name, target.name), None)
            return self._fetched_whole[known]
        try:
            fetched = await asyncio.to_thread(
                chartstage.remote,
                app,
                store=store,
                repos=self._helm_repositories(),
                revision=revision,
            )
        except errors.RenderError as e:  # FetchError, or a chart that does not read
            message = f"fetching the chart: {e}"
            log.warning("app %s target %s: %s", app.name, target.name, message)
            self.fetch_errors[(app.name, target.name)] = message
            return RenderResult("", message)
        except Exception as e:  # that app's error, never the hub's
            log.exception("app %s: fetching the chart crashed", app.name)
            message = status.unexpected("chart fetch", e)
            self.fetch_errors[(app.name, target.name)] = message
            return RenderResult("", message)
        self.fetch_errors.pop((app.name, target.name), None)
        if fetched.chart is not None:
            self._fetched[fetched.chart] = fetched.key
            if len(self._fetched_whole) >= MAX_INLINE_KEPT:
                self._fetched_whole.pop(next(iter(self._fetched_whole)))
            self._fetched_whole[fetched.chart] = fetched
        return fetched

    async def bundle_for(
        self, app: config.App, target: config.Target, revision: str
    ) -> RenderResult:
        """The bundle digest for (app, target, revision), rendering it at most once. A chart
        from a repository is fetched first (its version range resolved again when due)."""
        fetched = chartstage.Fetched()
        if app.helm.remote:
            got = await self._fetch(app, target, revision)
            if isinstance(got, RenderResult):
                return got  # not kept: the next pass tries again
            fetched = got
        rkey = key(app, target, revision, fetched.key)
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
                result = await self._render(app, target, revision, fetched)
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
                    charts=fetched.key,
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

    async def _render(
        self,
        app: config.App,
        target: config.Target,
        revision: str,
        fetched: chartstage.Fetched,
    ) -> RenderResult:
        cache = self._repos.get(app.repo)
        if cache is None:
            return RenderResult("", f"repo {app.repo!r} is not configured")
        # The paths the last render read: if none of them changed, the app's directory (and
        # so what it refers to) did not either, and the render would read the same again.
        paths = self._inputs.get((app.name, target.name)) or (app.path,)
        try:
            tree = await self._tree(
                cache, app, target, revision=revision, paths=paths, fetched=fetched.key
            )
        except (KeyError, ValueError) as e:
            return RenderResult("", f"revision {revision[:12]} is not in the repo cache: {e}")
        digest = self._content.get((app.name, target.name, tree))
        if digest:
            return RenderResult(digest, "")
        try:
            checkout = await cache.acheckout(revision)
            archives = tuple(p.archive for p in fetched.dependencies)
            if not app.helm.remote and self.charts is not None:
                archives = await asyncio.to_thread(
                    chartstage.local_dependencies,
                    app,
                    checkout=checkout.root,
                    store=self.charts,
                    repos=self._helm_repositories(),
                )
            rendered = await render.arender(
                checkout=checkout.root,
                refused_links=checkout.refused_links,
                app=app,
                target=target,
                tools=self._tools,
                archive=fetched.chart.archive if fetched.chart else None,
                dependencies=archives,
            )
            self._inputs[(app.name, target.name)] = rendered.inputs
            tree = await self._tree(
                cache,
                app,
                target,
                revision=revision,
                paths=rendered.inputs or (app.path,),
                fetched=fetched.key,
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
        fetched: str,
    ) -> str:
        """The content key of (app, target) at `revision` when it reads `paths`."""
        return (
            overrides_hash(app, target, fetched)
            + ":"
            + await cache.atree_key(revision, list(paths))
        )

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
