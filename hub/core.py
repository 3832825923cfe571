"""The hub's heart: from Git heads to per-cluster assignments, and from agent reports to
fleet status, with every change recorded as an event.

`Hub` keeps the working set in memory (assignments, latest reports, cluster connectivity,
render results) and writes every change through the store before it is announced, so a
restart loses nothing that was acknowledged. gRPC servicers are thin wrappers around it.
A bad render, a failed fetch or an unknown app affects only that app, target or repo.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import hmac
import json
import logging
import pathlib
import time
from collections.abc import Iterable
from typing import Any

from fleetops.hub import config, errors, fleetyaml, plan, render, repo, reports, status, store
from fleetops.proto import bundles, supervise
from fleetops.proto.v1 import agent_pb2, fleet_pb2, types_pb2

log = logging.getLogger("fleetops.hub")
CHUNK = 1024 * 1024
AGENT_SILENCE = 25.0  # seconds without a message (agents send one every 10 s): Disconnected
STORE_RETRY = 5.0  # seconds between tries when the store cannot write
MAX_PENDING_EVENTS = 50_000  # agent history entries kept in memory while the store cannot write
RENDER_SLOTS = 2  # concurrent helm/kustomize processes (each may use a core)
PRERENDER_WAIT = 2.0  # seconds planning waits for renders before going on without the slow ones
INLINE_LIMIT = 256 * 1024  # a bundle this small may travel inside an assignment
INLINE_BUDGET = 1024 * 1024  # all inline bundles of one Assignments message together
MAX_MESSAGE = 16 * 1024 * 1024  # gRPC message limit, set explicitly on hub and agent channels


@dataclasses.dataclass
class Stream:
    """One connected agent: what to send it, when it was last heard, why it ended."""

    cluster: str
    outbox: asyncio.Queue[agent_pb2.HubMessage]
    heard: float = dataclasses.field(default_factory=time.monotonic)
    ended: str = ""  # why the hub ended it ("" until it does)

    def end(self, reason: str) -> None:
        if not self.ended:
            self.ended = reason
            self.outbox.put_nowait(agent_pb2.HubMessage())  # the servicer's signal to stop


@dataclasses.dataclass(frozen=True)
class RenderResult:
    digest: str
    error: str


def _policy(app: config.App) -> types_pb2.SyncPolicy:
    return types_pb2.SyncPolicy(**dataclasses.asdict(app.sync))


def _overrides_hash(app: config.App, target: config.Target) -> str:
    doc = {
        "ns": app.namespace,
        "path": app.path,
        "values": target.helm.values,
        "valuesFiles": list(target.helm.values_files),
        "kustomize": target.kustomize_dir,
        "overlays": list(target.yaml_overlays),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Hub:
    def __init__(
        self, *, cfg: config.Config, db: store.Store, data: pathlib.Path, tools: render.Tools
    ) -> None:
        self.cfg = cfg
        self.db = db
        self.data = data
        self.tools = tools
        self.repos: dict[str, repo.RepoCache] = {}
        self.streams: dict[str, Stream] = {}
        self.watchers: set[asyncio.Queue[fleet_pb2.FleetChange]] = set()
        self.version = 0
        self.config_error = ""
        self._plan_lock = asyncio.Lock()
        # renders run outside the planning lock, at most RENDER_SLOTS at once, each key once
        self._render_slots = asyncio.Semaphore(RENDER_SLOTS)
        self._rendering: dict[tuple[str, str, str, str], asyncio.Future[RenderResult]] = {}
        self._fleet_lock = asyncio.Lock()
        self._late_replan: asyncio.Future[None] | None = None
        self._fetch_now: dict[str, asyncio.Event] = {}
        self._sync_requests: set[tuple[str, str]] = set()
        # working set, loaded from the store at start
        self.clusters: dict[str, dict[str, Any]] = {}
        self.assignments: dict[tuple[str, str], dict[str, Any]] = {}
        self._by_cluster: dict[str, dict[str, dict[str, Any]]] = {}  # cluster -> app -> row
        self._bundle_cache: dict[str, bytes] = {}
        self._inline: dict[str, types_pb2.Bundle] = {}
        self._pending_reports: dict[tuple[str, str], dict[str, Any]] = {}
        self._pending_events: list[dict[str, Any]] = []
        self._flush_task: asyncio.Future[None] | None = None
        self.reports: dict[tuple[str, str], types_pb2.AppReport] = {}
        self.heads: dict[str, str] = {}
        self.repo_status: dict[str, fleet_pb2.RepoStatus] = {}
        self.pins: dict[tuple[str, str], str] = {}
        self.paused: dict[str, str] = {}
        # (app, target, revision, overrides hash) -> result: a hub.yaml edit re-renders
        self.renders: dict[tuple[str, str, str, str], RenderResult] = {}
        self._content: dict[tuple[str, str, str], str] = {}  # (app, target, tree key) -> digest
        self._extra_paths: dict[tuple[str, str], list[str]] = {}
        # apps without targets in hub.yaml, as their fleet.yaml at the head revision describes them
        self._effective: dict[str, tuple[str, config.App, config.App]] = {}
        self.fleet_errors: dict[str, str] = {}
        self.dropped_reports = 0  # reports for apps the cluster was not assigned
        self._agent_seen: dict[tuple[str, str], _AgentSeen] = {}  # what reports already said
        self.plan_errors: dict[tuple[str, str], str] = {}  # (app, cluster) -> why planning failed
        self.supervisor: supervise.Supervisor | None = None  # set by the server that runs it

    # ------------------------------------------------------------ start-up

    async def load(self) -> None:
        def read() -> dict[str, list[dict[str, Any]]]:
            return {
                t: self.db.rows(t)
                for t in (
                    "clusters",
                    "assignments",
                    "reports",
                    "repos",
                    "pins",
                    "app_state",
                    "renders",
                )
            }

        rows = await self.db.run(read)
        for r in rows["clusters"]:
            r["connected"] = 0  # nobody is connected to a process that just started
            self.clusters[r["name"]] = r
        for r in rows["assignments"]:
            self._set_assignment(r)
        for r in rows["reports"]:
            self.reports[(r["cluster"], r["app"])] = types_pb2.AppReport.FromString(r["data"])
        for r in rows["repos"]:
            if r["revision"]:
                self.heads[r["name"]] = r["revision"]
            self.repo_status[r["name"]] = fleet_pb2.RepoStatus(
                name=r["name"],
                url=repo.redact(r["url"]),
                branch=r["branch"],
                revision=r["revision"],
                error=r["error"] or "",
            )
        for r in rows["pins"]:
            self.pins[(r["app"], r["cluster"])] = r["revision"]
        for r in rows["app_state"]:
            if r["paused"]:
                self.paused[r["app"]] = r["reason"] or ""
        for r in rows["renders"]:
            self.renders[(r["app"], r["target"], r["revision"], r["key"] or "")] = RenderResult(
                r["digest"] or "", r["error"] or ""
            )
        self._sync_repos()

    def _sync_repos(self) -> None:
        for spec in self.cfg.repos:
            cache = self.repos.get(spec.name)
            if cache is None or cache.spec != spec:
                self.repos[spec.name] = repo.RepoCache(self.data / "repos" / spec.name, spec)
            self._fetch_now.setdefault(spec.name, asyncio.Event())
            self.repo_status.setdefault(
                spec.name,
                fleet_pb2.RepoStatus(name=spec.name, url=repo.redact(spec.url), branch=spec.branch),
            )

    async def apply_config(self, cfg: config.Config) -> None:
        """A new, valid hub.yaml: new repos fetch at once, and everything is re-planned."""
        self.cfg = cfg
        self.config_error = ""
        self._sync_repos()
        for spec in cfg.repos:
            self._fetch_now[spec.name].set()
        await self.replan()

    # ------------------------------------------------------------ Git

    def trigger_fetch(self, repo_name: str) -> bool:
        ev = self._fetch_now.get(repo_name)
        if ev is None:
            return False
        ev.set()
        return True

    async def poll(self, repo_name: str, stop: asyncio.Event) -> None:
        """Fetch on the repo's interval, or at once when a webhook says so."""
        ev = self._fetch_now[repo_name]
        while not stop.is_set():
            spec = next((r for r in self.cfg.repos if r.name == repo_name), None)
            if spec is None:
                return  # the repo left hub.yaml
            ev.clear()
            await self.refresh(repo_name)
            waits = [asyncio.ensure_future(ev.wait()), asyncio.ensure_future(stop.wait())]
            await asyncio.wait(
                waits, timeout=spec.poll_interval, return_when=asyncio.FIRST_COMPLETED
            )
            for w in waits:
                w.cancel()

    async def refresh(self, repo_name: str) -> None:
        """Fetch a repo and plan what changed. A store that cannot write (a full data
        directory) is the repo's error, named; the same commit is tried again shortly."""
        before = self.heads.get(repo_name)
        try:
            await self._refresh(repo_name)
        except errors.StoreUnavailable as e:
            if before is None:
                self.heads.pop(repo_name, None)
            else:
                self.heads[repo_name] = before  # so the next pass plans this commit again
            st = self.repo_status[repo_name]
            st.revision = before or ""
            st.error = str(e)
            st.fetched_at.GetCurrentTime()
            log.error("repo %s: %s", repo_name, e)
            self._announce(fleet_pb2.FleetChange(repo=st))
            ev = self._fetch_now.get(repo_name)
            if ev is not None:
                asyncio.get_running_loop().call_later(STORE_RETRY, ev.set)

    async def _refresh(self, repo_name: str) -> None:
        cache = self.repos[repo_name]
        st = self.repo_status[repo_name]
        try:
            sha = await cache.afetch()
        except errors.RepoError as e:
            st.error = str(e)
            st.fetched_at.GetCurrentTime()
            await self._save_repo(repo_name)
            log.warning("%s", e)
            self._announce(fleet_pb2.FleetChange(repo=st))
            return
        st.error = ""
        st.fetched_at.GetCurrentTime()
        if sha == self.heads.get(repo_name):
            await self._save_repo(repo_name)
            return
        commit = await asyncio.to_thread(cache.commit, sha)
        await self.db.run(
            self.db.upsert,
            "revisions",
            {
                "repo": repo_name,
                "sha": sha,
                "message": commit.message,
                "author": commit.author,
                "time": commit.time,
                "seen_at": time.time(),
            },
            ("repo", "sha"),
        )
        self.heads[repo_name] = sha
        st.revision = sha
        await self._save_repo(repo_name)
        log.info("repo %s: new revision %s (%s)", repo_name, sha[:8], commit.message)
        self._announce(fleet_pb2.FleetChange(repo=st))
        await self.replan()

    async def _save_repo(self, name: str) -> None:
        st = self.repo_status[name]
        spec = self.cfg.repo(name) if any(r.name == name for r in self.cfg.repos) else None
        await self.db.run(
            self.db.upsert,
            "repos",
            {
                "name": name,
                "url": spec.url if spec else st.url,
                "branch": st.branch,
                "revision": self.heads.get(name, ""),
                "fetched_at": time.time(),
                "error": st.error,
            },
            "name",
        )

    # ------------------------------------------------------------ rendering

    async def bundle_for(
        self, app: config.App, target: config.Target, revision: str
    ) -> RenderResult:
        """The bundle digest for (app, target, revision), rendering it at most once."""
        rkey = (app.name, target.name, revision, _overrides_hash(app, target))
        known = self.renders.get(rkey)
        if known is not None:
            return known
        running = self._rendering.get(rkey)
        if running is not None:  # someone is rendering it: share the result
            return await asyncio.shield(running)
        future: asyncio.Future[RenderResult] = asyncio.get_running_loop().create_future()
        self._rendering[rkey] = future
        try:
            async with self._render_slots:
                result = await self._render(app, target, revision)
            self.renders[rkey] = result
            future.set_result(result)
            await self.db.run(
                self.db.upsert,
                "renders",
                {
                    "app": app.name,
                    "target": target.name,
                    "revision": revision,
                    "digest": result.digest,
                    "error": result.error,
                    "key": rkey[3],
                    "rendered_at": time.time(),
                },
                ("app", "target", "revision"),
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

    async def _prerender(self, heads: dict[str, str], scope: list[str]) -> None:
        """Render every (app, target) the clusters in `scope` use at their repo's head,
        concurrently and outside the planning lock: a slow helm template then delays only
        the apps that need it, never an agent's connect or an operator's action."""
        wanted: dict[tuple[str, str], tuple[config.App, config.Target, str]] = {}
        for configured in self.cfg.apps:
            app = self.effective(configured)
            head = heads.get(app.repo, "")
            if not head or app.name in self.paused or app.name in self.fleet_errors:
                continue
            for cluster in scope:
                target = self.target_of(app, cluster)
                if target is not None:
                    wanted.setdefault((app.name, target.name), (app, target, head))
        if not wanted:
            return
        renders = [
            asyncio.ensure_future(self.bundle_for(a, t, rev)) for a, t, rev in wanted.values()
        ]
        _, late = await asyncio.wait(renders, timeout=PRERENDER_WAIT)
        for task in late:  # planned without them; a pass follows when they are done
            task.add_done_callback(self._render_landed)
        for task in renders:
            task.add_done_callback(_consume)

    def _render_landed(self, task: asyncio.Future[RenderResult]) -> None:
        if task.cancelled() or self._late_replan is not None:
            return

        async def again() -> None:
            try:
                await self.replan()
            except Exception:
                log.exception("planning after a late render failed")
            finally:
                self._late_replan = None

        self._late_replan = asyncio.ensure_future(again())

    async def _render(self, app: config.App, target: config.Target, revision: str) -> RenderResult:
        cache = self.repos.get(app.repo)
        if cache is None:
            return RenderResult("", f"repo {app.repo!r} is not configured")
        paths = [app.path, *[f"{app.path}/{f}" for f in target.helm.values_files]]
        paths += self._extra_paths.get((app.name, target.name), [])
        try:
            key = _overrides_hash(app, target) + ":" + await cache.atree_key(revision, paths)
        except (KeyError, ValueError) as e:
            return RenderResult("", f"revision {revision[:12]} is not in the repo cache: {e}")
        digest = self._content.get((app.name, target.name, key))
        if digest:
            return RenderResult(digest, "")
        try:
            checkout = await cache.acheckout(revision)
            rendered = await render.arender(
                checkout=checkout.root,
                refused_links=checkout.refused_links,
                app=app,
                target=target,
                tools=self.tools,
            )
            if render.detect(checkout.root / app.path) == "kustomize" or target.kustomize_dir:
                build = checkout.root / app.path / target.kustomize_dir
                refs = await asyncio.to_thread(
                    render.check_kustomize_refs,
                    checkout.root.resolve(),
                    build.resolve(),
                    checkout.refused_links,
                )
                root = checkout.root.resolve()
                self._extra_paths[(app.name, target.name)] = sorted(
                    {str(p.relative_to(root)) for p in refs} - {app.path}
                )
        except errors.RenderError as e:
            log.warning("app %s target %s at %s: %s", app.name, target.name, revision[:8], e)
            return RenderResult("", str(e))
        except Exception as e:  # one app's broken input is that app's error, never the fleet's
            log.exception(
                "app %s target %s at %s: render crashed", app.name, target.name, revision[:8]
            )
            return RenderResult("", unexpected("render", e))
        try:
            bundle = types_pb2.Bundle(app=app.name, namespace=app.namespace)
            for source, text in rendered.manifests:
                bundle.manifests.add(source=source, yaml=text)
            digest = bundles.digest(bundle)
            data = bundle.SerializeToString(deterministic=True)
        except Exception as e:  # e.g. a bundle protobuf cannot hold
            log.exception("app %s target %s: bundle failed", app.name, target.name)
            return RenderResult("", unexpected("bundle", e))
        await self.db.run(
            self.db.upsert,
            "bundles",
            {
                "digest": digest,
                "app": app.name,
                "size": len(data),
                "data": data,
                "created_at": time.time(),
            },
            "digest",
        )
        self._content[(app.name, target.name, key)] = digest
        return RenderResult(digest, "")

    async def bundle_bytes(self, digest: str) -> bytes:
        """A bundle's bytes; the recent ones are kept in memory, since a new revision has
        every agent of a target ask for the same bundle at once."""
        data = self._bundle_cache.get(digest)
        if data is None:
            row = await self.db.run(self.db.get, "bundles", digest)
            if row is None:
                raise errors.NotFound(f"no bundle {digest[:12]}")
            data = bytes(row["data"])
            if len(self._bundle_cache) >= 64:
                self._bundle_cache.pop(next(iter(self._bundle_cache)))
            self._bundle_cache[digest] = data
        return data

    # ------------------------------------------------------------ planning

    def labels_of(self, cluster: str) -> dict[str, str]:
        row = self.clusters.get(cluster) or {}
        return plan.cluster_labels(self.cfg, cluster, store.loads(row.get("labels")))

    def effective(self, app: config.App) -> config.App:
        """The app with fleet.yaml applied (when hub.yaml gives it no targets)."""
        if app.targets is not None:
            return app
        got = self._effective.get(app.name)
        return got[2] if got is not None and got[1] == app else app

    async def _read_fleet_yamls(self, heads: dict[str, str]) -> None:
        for app in self.cfg.apps:
            head = heads.get(app.repo, "")
            cache = self.repos.get(app.repo)
            if app.targets is not None or not head or cache is None:
                continue
            got = self._effective.get(app.name)
            if got is not None and got[0] == head and got[1] == app:
                continue
            try:
                text = await asyncio.to_thread(cache.read, head, f"{app.path}/fleet.yaml")
                if text is None:
                    self._effective[app.name] = (head, app, app)
                    self.fleet_errors.pop(app.name, None)
                    continue
                effective = await asyncio.to_thread(fleetyaml.apply, app, text)
                self._effective[app.name] = (head, app, effective)
                self.fleet_errors.pop(app.name, None)
            except Exception as e:  # RenderError, or anything a hostile fleet.yaml provokes
                # keep what was deployed: the last good reading, or nothing at all
                message = (
                    str(e) if isinstance(e, errors.RenderError) else unexpected("fleet.yaml", e)
                )
                self.fleet_errors[app.name] = message
                if got is None:
                    self._effective[app.name] = (head, app, dataclasses.replace(app, targets=()))
                log.warning("app %s: %s", app.name, e)

    def target_of(self, app: config.App, cluster: str) -> config.Target | None:
        return plan.target_for(self.cfg, self.effective(app), cluster, self.labels_of(cluster))

    async def replan(
        self,
        *,
        cause: int = types_pb2.CAUSE_AUTO,
        actor: str = "auto",
        clusters: Iterable[str] | None = None,
    ) -> set[str]:
        """Recompute assignments (for every cluster, or just `clusters`), write the changed
        ones in one transaction, record events, and push each changed cluster its set.
        Returns the clusters that were pushed."""
        started = time.perf_counter()
        # one consistent view of Git for the whole pass: a fetch landing meanwhile triggers
        # its own pass
        heads = dict(self.heads)
        async with self._fleet_lock:
            await self._read_fleet_yamls(heads)
        if clusters is None:
            scope = sorted(self.clusters)
        else:  # one connecting agent must not cost a pass over the whole fleet
            scope = sorted(c for c in set(clusters) if c in self.clusters)
        await self._prerender(heads, scope)
        async with self._plan_lock:
            scope = [c for c in scope if c in self.clusters]  # removed meanwhile
            changed: set[str] = set()
            rows: list[dict[str, Any]] = []
            events: list[dict[str, Any]] = []
            for configured in self.cfg.apps:
                app = self.effective(configured)
                for cluster in scope:
                    try:
                        planned = await self._plan_one(
                            app, cluster, cause, actor, heads.get(app.repo, "")
                        )
                    except Exception as e:  # that (app, cluster) keeps what it has
                        log.exception("app %s cluster %s: planning failed", app.name, cluster)
                        self.plan_errors[(app.name, cluster)] = unexpected("planning", e)
                        continue
                    self.plan_errors.pop((app.name, cluster), None)
                    if planned is None:
                        continue
                    row, ev = planned
                    changed.add(cluster)
                    if row is not None:
                        rows.append(row)
                    if ev is not None:
                        events.append(ev)
            gone = [
                (c, a)
                for c in scope
                for a in list(self._by_cluster.get(c, {}))
                if self.cfg.app(a) is None
            ]
            for c, a in gone:
                await self._drop(c, a)
                changed.add(c)
                events.append(
                    {
                        "app": a,
                        "cluster": c,
                        "kind": "unassigned",
                        "cause": cause,
                        "actor": actor,
                        "message": f"app {a} left hub.yaml; the agent stops managing it",
                    }
                )
            await self.db.run(self.db.upsert_all, "assignments", rows, ("cluster", "app"))
            for row in rows:
                self._set_assignment(row)
            if clusters is None:
                self._sync_requests.clear()
            for recorded in await self.db.run(self.db.append_events, events):
                self._announce(fleet_pb2.FleetChange(event=event_pb(recorded)))
            await self._load_inline(
                row["digest"] for c in changed for row in self._by_cluster.get(c, {}).values()
            )
            for cluster in changed:
                self.push_assignments(cluster)
                for app_cfg in self.cfg.apps:
                    self._announce_status(cluster, app_cfg.name)
            if clusters is None and changed:
                log.info(
                    "planned: %d clusters got new assignments in %.2f s",
                    len(changed),
                    time.perf_counter() - started,
                )
            return changed

    def _set_assignment(self, row: dict[str, Any]) -> None:
        self.assignments[(row["cluster"], row["app"])] = row
        self._by_cluster.setdefault(row["cluster"], {})[row["app"]] = row

    async def _plan_one(
        self, app: config.App, cluster: str, cause: int, actor: str, head: str
    ) -> tuple[dict[str, Any] | None, dict[str, Any] | None] | None:
        """(the new assignment row to write, the event to record), or None: nothing changes."""
        key = (cluster, app.name)
        cur = self.assignments.get(key)
        target = self.target_of(app, cluster)
        if target is None:
            if cur is None:
                return None
            await self._drop(cluster, app.name)
            return None, {
                "app": app.name,
                "cluster": cluster,
                "kind": "unassigned",
                "cause": cause,
                "actor": actor,
                "previous_revision": cur["revision"],
                "message": f"no target of app {app.name} matches cluster {cluster} any more",
            }
        if app.name in self.fleet_errors:
            head = cur["revision"] if cur else ""  # hold until fleet.yaml reads again
        paused = app.name in self.paused
        wanted = plan.desired_revision(
            head=head,
            auto=app.sync.auto and not paused,
            current=cur["revision"] if cur else "",
            pin_app=self.pins.get((app.name, ""), ""),
            pin_cluster=self.pins.get((app.name, cluster), ""),
            sync_requested=not paused
            and (
                (app.name, cluster) in self._sync_requests or (app.name, "") in self._sync_requests
            ),
        )
        if wanted is None:
            return None
        if paused and cur is not None:
            wanted = plan.Wanted(cur["revision"], "hold")
        rkey = (app.name, target.name, wanted.revision, _overrides_hash(app, target))
        if rkey not in self.renders and rkey in self._rendering:
            return None  # still rendering: keep what runs, the render's end plans again
        result = await self.bundle_for(app, target, wanted.revision)
        if result.error:
            return None  # the cluster keeps what it has; the error shows on the target
        policy = store.dumps(dataclasses.asdict(app.sync))  # SyncPolicy's field names
        row = {
            "cluster": cluster,
            "app": app.name,
            "target": target.name,
            "revision": wanted.revision,
            "digest": result.digest,
            "namespace": app.namespace,
            "policy": policy,
            "paused": int(paused),
            "reason": wanted.why,
        }
        if cur is not None and cur.get("digest") == result.digest:
            row["allow_mass_prune"] = cur.get("allow_mass_prune") or ""
        else:
            row["allow_mass_prune"] = ""
        if cur is not None and all(cur.get(k) == v for k, v in row.items() if k != "reason"):
            return None
        row["generation"] = (cur["generation"] if cur else 0) + 1
        row["updated_at"] = time.time()
        if (
            cur is not None
            and cur["revision"] == row["revision"]
            and cur["digest"] == row["digest"]
        ):
            return row, None  # only the policy or pause flag changed: no history entry
        why = {"pin": types_pb2.CAUSE_ROLLBACK, "sync": types_pb2.CAUSE_USER}.get(wanted.why, cause)
        return row, {
            "app": app.name,
            "cluster": cluster,
            "kind": "assigned",
            "cause": why,
            "actor": actor if wanted.why != "auto" else "auto",
            "revision": wanted.revision,
            "previous_revision": cur["revision"] if cur else "",
            "message": f"{status.short(wanted.revision)} ({target.name}) assigned to {cluster}"
            + (" (pinned)" if wanted.why == "pin" else ""),
        }

    async def _drop(self, cluster: str, app: str) -> None:
        await self.db.run(self.db.delete, "assignments", "cluster = ? AND app = ?", [cluster, app])
        self.assignments.pop((cluster, app), None)
        self._by_cluster.get(cluster, {}).pop(app, None)

    # ------------------------------------------------------------ agents

    def assignments_for(self, cluster: str) -> agent_pb2.Assignments:
        msg = agent_pb2.Assignments()
        budget = INLINE_BUDGET
        for _app, row in sorted(self._by_cluster.get(cluster, {}).items()):
            app = self.cfg.app(row["app"])
            a = msg.assignments.add(
                app=row["app"],
                revision=row["revision"],
                bundle_digest=row["digest"],
                namespace=row["namespace"],
                policy=types_pb2.SyncPolicy(**store.loads(row["policy"])),
                generation=row["generation"],
                paused=bool(row["paused"]),
                depends_on=list(app.depends_on) if app else [],
                allow_mass_prune=bool(row.get("allow_mass_prune"))
                and row.get("allow_mass_prune") == row["digest"],
            )
            inline = self._inline.get(row["digest"])
            if inline is not None:
                a.bundle_size = inline.ByteSize()
                # the whole message stays well under gRPC's limits: what does not fit inline
                # is fetched by digest (GetBundle, in chunks)
                if budget >= a.bundle_size:
                    a.bundle.CopyFrom(inline)
                    budget -= a.bundle_size
        return msg

    async def _load_inline(self, digests: Iterable[str]) -> None:
        """Keep small bundles parsed in memory, to send them inside assignments."""
        for digest in set(digests) - set(self._inline):
            try:
                data = await self.bundle_bytes(digest)
            except errors.NotFound:
                continue
            if len(data) <= INLINE_LIMIT:
                if len(self._inline) >= 256:
                    self._inline.pop(next(iter(self._inline)))
                self._inline[digest] = types_pb2.Bundle.FromString(data)

    def push_assignments(self, cluster: str) -> None:
        stream = self.streams.get(cluster)
        if stream is not None:
            stream.outbox.put_nowait(
                agent_pb2.HubMessage(assignments=self.assignments_for(cluster))
            )

    def may_read_bundle(self, cluster: str, digest: str) -> bool:
        return any(row["digest"] == digest for row in self._by_cluster.get(cluster, {}).values())

    async def register_cluster(
        self,
        cluster: str,
        *,
        facts: dict[str, str],
        hub_labels: dict[str, str],
        cert_fingerprint: str,
        cert_expires: float,
    ) -> None:
        """A cluster registered: `facts` are what the agent says of itself (shown, never
        matched), `hub_labels` came with its token (`fleetops-hub cluster add --labels`); a
        re-registration keeps the earlier hub labels unless its token carries new ones. Only
        the new certificate is accepted from now on: the old one is revoked."""
        row = self.clusters.get(cluster) or {
            "name": cluster,
            "labels": "{}",
            "agent_labels": "{}",
            "agent_version": "",
            "kubernetes_version": "",
            "registered_at": time.time(),
            "last_seen": 0.0,
            "connected": 0,
            "reason": "",
        }
        row["agent_labels"] = store.dumps(clean_facts(facts))
        if hub_labels:
            row["labels"] = store.dumps(hub_labels)
        row["cert_fingerprint"] = cert_fingerprint
        row["cert_expires"] = cert_expires
        await self.db.run(self.db.upsert, "clusters", row, "name")
        self.clusters[cluster] = row
        e = await self.db.run(
            self.db.append_event,
            cluster=cluster,
            kind="registered",
            cause=types_pb2.CAUSE_AGENT,
            actor=f"agent:{cluster}",
            message=f"cluster {cluster} registered",
        )
        self._announce(fleet_pb2.FleetChange(event=event_pb(e)))
        self._announce(fleet_pb2.FleetChange(cluster=self.cluster_pb(cluster)))
        old = self.streams.get(cluster)
        if old is not None:
            old.end("the cluster registered again; a stream on the old certificate ends")

    def certificate_ok(self, cluster: str, fingerprint: str) -> bool:
        """Whether `fingerprint` is the cluster's current certificate: a removed cluster's, or
        one replaced by re-registration or renewal, is refused."""
        row = self.clusters.get(cluster)
        if row is None:
            return False
        known = str(row.get("cert_fingerprint") or "")
        # clusters registered before fingerprints were kept: trust until the first renewal
        return not known or hmac.compare_digest(known, fingerprint)

    async def certificate_renewed(self, cluster: str, fingerprint: str, expires: float) -> None:
        row = self.clusters.get(cluster)
        if row is None:
            raise errors.PermissionDenied(f"cluster {cluster} is not registered (was it removed?)")
        new = {**row, "cert_fingerprint": fingerprint, "cert_expires": expires}
        await self.db.run(self.db.upsert, "clusters", new, "name")  # stored, then believed
        row.update(new)
        await self.record(
            cluster=cluster,
            kind="certificate-renewed",
            cause=types_pb2.CAUSE_AGENT,
            actor=f"agent:{cluster}",
            message=f"cluster {cluster} renewed its certificate (valid until "
            f"{status.since(expires)})",
        )
        self._announce(fleet_pb2.FleetChange(cluster=self.cluster_pb(cluster)))

    async def remove_cluster(self, cluster: str, actor: str) -> store.Event:
        """Forget a cluster: its certificate stops working at once, its stream ends, its
        assignments go (the agent keeps what runs) and history says who removed it."""
        self._cluster(cluster)
        await self.db.run(self.db.remove_cluster, cluster)
        self.clusters.pop(cluster, None)
        for app in list(self._by_cluster.pop(cluster, {})):
            self.assignments.pop((cluster, app), None)
        for key in [k for k in self.reports if k[0] == cluster]:
            self.reports.pop(key, None)
            self._pending_reports.pop(key, None)
        for key in [k for k in self.pins if k[1] == cluster]:
            self.pins.pop(key, None)
        for key in [k for k in self._agent_seen if k[0] == cluster]:
            del self._agent_seen[key]
        stream = self.streams.pop(cluster, None)
        if stream is not None:
            stream.end(f"cluster {cluster} was removed")
        ev = await self.record(
            cluster=cluster,
            kind="cluster-removed",
            cause=types_pb2.CAUSE_USER,
            actor=actor,
            message=f"cluster {cluster} removed by {actor}; its certificate is revoked and its "
            "agent keeps what runs (delete it from the cluster too)",
        )
        self._announce(fleet_pb2.FleetChange(snapshot=self.snapshot()))
        return ev

    async def connect(self, cluster: str, hello: agent_pb2.Hello) -> Stream:
        row = self.clusters.get(cluster)
        if row is None:
            raise errors.PermissionDenied(f"cluster {cluster} is not registered (was it removed?)")
        old = self.streams.get(cluster)
        if old is not None:
            old.end("replaced by a newer connection")
        stream = Stream(cluster, asyncio.Queue())
        self.streams[cluster] = stream
        try:
            await self._connected(cluster, row, hello)
        except BaseException:  # never leave a stream entry that shows the cluster connected
            if self.streams.get(cluster) is stream:
                del self.streams[cluster]
            raise
        return stream

    async def _connected(self, cluster: str, row: dict[str, Any], hello: agent_pb2.Hello) -> None:
        row.update(
            agent_version=reports.text(hello.agent_version, 100),
            kubernetes_version=reports.text(hello.kubernetes_version, 100),
            agent_labels=store.dumps(clean_facts(dict(hello.labels))),
            connected=1,
            last_seen=time.time(),
            reason="",
        )
        await self._save_connectivity(row)
        for report in hello.reports:
            await self.report(cluster, report, announce=False)
        self._announce(fleet_pb2.FleetChange(cluster=self.cluster_pb(cluster)))
        pushed = await self.replan(clusters=[cluster])
        if cluster not in pushed:  # unchanged: it still gets its full set on every connect
            await self._load_inline(a["digest"] for a in self._by_cluster.get(cluster, {}).values())
            self.push_assignments(cluster)

    async def _save_connectivity(self, row: dict[str, Any]) -> None:
        """Connectivity is news, not an acknowledgement: a store that cannot write it does
        not keep an agent out (memory has it; the next write stores it)."""
        try:
            await self.db.run(self.db.upsert, "clusters", dict(row), "name")
        except errors.StoreUnavailable as e:
            log.error("cluster %s: connectivity not saved: %s", row.get("name"), e)

    async def disconnect(self, stream: Stream, reason: str) -> None:
        if self.streams.get(stream.cluster) is not stream:
            return
        del self.streams[stream.cluster]
        row = self.clusters.get(stream.cluster)
        if row is None:  # removed while it was connected
            return
        row.update(connected=0, last_seen=time.time(), reason=reason)
        await self._save_connectivity(row)
        self._announce(fleet_pb2.FleetChange(cluster=self.cluster_pb(stream.cluster)))
        for app in self.cfg.apps:
            self._announce_status(stream.cluster, app.name)

    async def seen(self, cluster: str) -> None:
        row = self.clusters.get(cluster)
        if row is not None:
            row["last_seen"] = time.time()
        stream = self.streams.get(cluster)
        if stream is not None:
            stream.heard = time.monotonic()

    async def watch_streams(self, stop: asyncio.Event, *, every: float = 5.0) -> None:
        """End the streams of agents not heard from for AGENT_SILENCE seconds (agents send a
        heartbeat every 10 s), so a partitioned cluster shows Disconnected within two
        heartbeats and a half, whatever the network does with the connection."""
        while not stop.is_set():
            now = time.monotonic()
            for stream in list(self.streams.values()):
                if now - stream.heard > AGENT_SILENCE:
                    stream.end(f"no word from the agent for {AGENT_SILENCE:.0f} s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=every)

    async def report(
        self, cluster: str, report: types_pb2.AppReport, *, announce: bool = True
    ) -> None:
        """Take an agent's report: memory at once, the store in batches (`flush_reports`).
        Reports are never acknowledged to agents, who resend their full state on every
        reconnect, so batching loses nothing a restart would need. An agent reports only
        apps assigned to its cluster; anything else is dropped, and what it says is bounded
        and cleaned first (hub.reports)."""
        if (cluster, report.app) not in self.assignments:
            self.dropped_reports += 1
            log.debug("cluster %s: report for unassigned app dropped", cluster)
            return
        report = reports.sanitize(report)
        key = (cluster, report.app)
        before = self.reports.get(key)
        self.reports[key] = report
        self._pending_reports[key] = {
            "cluster": cluster,
            "app": report.app,
            "revision": report.revision,
            "digest": report.bundle_digest,
            "generation": report.generation,
            "sync": report.sync,
            "health": report.health,
            "reason": report.reason,
            "data": report.SerializeToString(deterministic=True),
            "updated_at": time.time(),
        }
        common = {
            "app": report.app,
            "cluster": cluster,
            "revision": report.revision,
            "previous_revision": before.revision if before else "",
            "cause": types_pb2.CAUSE_AGENT,
            "actor": f"agent:{cluster}",
        }
        for kind, message in self._agent_events(cluster, report, before):
            self._pending_events.append({**common, "kind": kind, "message": message})
        if self._flush_task is None or self._flush_task.done():
            self._flush_task = asyncio.ensure_future(self._flush_soon())
        if announce:
            self._announce_status(cluster, report.app)

    def _agent_events(
        self, cluster: str, report: types_pb2.AppReport, before: types_pb2.AppReport | None
    ) -> list[tuple[str, str]]:
        """The history entries a report makes: state transitions only, so an agent cannot
        flood the audit log. `applied` once per bundle the hub assigned and the agent then
        runs; `apply-failed` on a new failure, at most every AGENT_EVENT_GAP seconds; `healed`
        summed over AGENT_EVENT_GAP seconds."""
        key = (cluster, report.app)
        now = time.monotonic()
        seen = self._agent_seen.setdefault(key, _AgentSeen())
        out: list[tuple[str, str]] = []
        assigned = self.assignments.get(key) or {}
        failed = report.sync == types_pb2.SYNC_STATUS_APPLY_FAILED
        moved = before is None or (before.bundle_digest, before.revision) != (
            report.bundle_digest,
            report.revision,
        )
        if failed:
            fresh = moved or before is None or before.sync != report.sync
            if fresh and now - seen.failed_at >= AGENT_EVENT_GAP:
                seen.failed_at = now
                out.append(("apply-failed", report.reason))
        elif (
            moved
            and report.bundle_digest == assigned.get("digest")
            and seen.applied != (report.bundle_digest, report.revision)
        ):
            seen.applied = (report.bundle_digest, report.revision)
            out.append(("applied", f"{status.short(report.revision)} applied on {cluster}"))
        total, last = report.healed_resources, before.healed_resources if before else 0
        seen.healed += total - last if total >= last else total  # smaller: the agent restarted
        if seen.healed and now - seen.healed_at >= AGENT_EVENT_GAP:
            out.append(("healed", f"self-healed {seen.healed} drifted resources"))
            seen.healed, seen.healed_at = 0, now
        elif seen.healed and seen.timer is None:  # told in one entry when the gap is over
            seen.timer = asyncio.get_running_loop().call_later(
                AGENT_EVENT_GAP - (now - seen.healed_at), self._heals_due, cluster, report.app
            )
        return out

    def _heals_due(self, cluster: str, app: str) -> None:
        seen = self._agent_seen.get((cluster, app))
        if seen is None:
            return
        seen.timer = None
        if not seen.healed or self.assignments.get((cluster, app)) is None:
            return
        report = self.reports.get((cluster, app))
        self._pending_events.append(
            {
                "app": app,
                "cluster": cluster,
                "revision": report.revision if report else "",
                "cause": types_pb2.CAUSE_AGENT,
                "actor": f"agent:{cluster}",
                "kind": "healed",
                "message": f"self-healed {seen.healed} drifted resources",
            }
        )
        seen.healed, seen.healed_at = 0, time.monotonic()
        if self._flush_task is None or self._flush_task.done():
            self._flush_task = asyncio.ensure_future(self._flush_soon())

    async def _flush_soon(self, delay: float = 0.2) -> None:
        await asyncio.sleep(delay)  # gather what arrives together (a fan-out) into one write
        with contextlib.suppress(errors.StoreUnavailable):  # kept, and tried again
            await self.flush_reports()

    async def flush_reports(self) -> None:
        """Write what agents reported. When the store cannot write, nothing is lost: it is
        kept (newer reports win) and written on a later try, every STORE_RETRY seconds."""
        rows, self._pending_reports = list(self._pending_reports.values()), {}
        events, self._pending_events = self._pending_events, []
        try:
            if rows:
                await self.db.run(self.db.upsert_all, "reports", rows, ("cluster", "app"))
            recorded = await self.db.run(self.db.append_events, events)
        except errors.StoreUnavailable as e:
            self._pending_reports = {**{(r["cluster"], r["app"]): r for r in rows},
                                     **self._pending_reports}  # fmt: skip
            self._pending_events = (events + self._pending_events)[-MAX_PENDING_EVENTS:]
            log.error("agent reports are kept in memory until they can be saved: %s", e)
            if self._flush_task is None or self._flush_task.done():
                self._flush_task = asyncio.ensure_future(self._flush_soon(STORE_RETRY))
            raise
        for ev in recorded:
            self._announce(fleet_pb2.FleetChange(event=event_pb(ev)))

    # ------------------------------------------------------------ operator actions

    async def sync(
        self, app_name: str, cluster: str, actor: str, *, allow_mass_prune: bool = False
    ) -> store.Event:
        app = self._app(app_name)
        if cluster:
            self._cluster(cluster)
        if app.name in self.paused:
            raise errors.InvalidArgument(
                f"app {app.name} is paused ({self.paused[app.name]}); resume it first"
            )
        self._sync_requests.add((app.name, cluster))
        self.trigger_fetch(app.repo)
        ev = await self.record(
            app=app.name,
            cluster=cluster,
            kind="sync-requested",
            cause=types_pb2.CAUSE_USER,
            actor=actor,
            revision=self.heads.get(app.repo, ""),
            message=f"sync of {app.name} requested by {actor}",
        )
        await self.replan(cause=types_pb2.CAUSE_USER, actor=actor)
        if allow_mass_prune:
            await self._allow_mass_prune(app.name, cluster, actor)
        for (c, a), _row in list(self.assignments.items()):
            if a == app.name and (not cluster or c == cluster) and c in self.streams:
                self.streams[c].outbox.put_nowait(
                    agent_pb2.HubMessage(sync_now=agent_pb2.SyncNow(app=a))
                )
        return ev

    async def _allow_mass_prune(self, app: str, cluster: str, actor: str) -> None:
        """Let the bundle each cluster of `app` has now prune past its max_prune_percent, once:
        the allowance names the bundle, so the next commit is guarded again."""
        rows = [
            {
                **row,
                "allow_mass_prune": row["digest"],
                "generation": row["generation"] + 1,
                "updated_at": time.time(),
            }
            for (c, a), row in sorted(self.assignments.items())
            if a == app and (not cluster or c == cluster)
        ]
        if not rows:
            raise errors.InvalidArgument(
                f"app {app} is not assigned to {f'cluster {cluster}' if cluster else 'any cluster'}"
            )
        await self.db.run(self.db.upsert_all, "assignments", rows, ("cluster", "app"))
        for row in rows:
            self._set_assignment(row)
            self.push_assignments(row["cluster"])
        where = f"cluster {cluster}" if cluster else f"{len(rows)} clusters"
        await self.record(
            app=app,
            cluster=cluster,
            kind="mass-prune-allowed",
            cause=types_pb2.CAUSE_USER,
            actor=actor,
            message=f"{actor} allowed {app}'s current bundle to prune past its limit on {where}",
        )

    async def rollback(self, app_name: str, revision: str, cluster: str, actor: str) -> store.Event:
        app = self.effective(self._app(app_name))
        if cluster:
            self._cluster(cluster)
        cache = self.repos[app.repo]
        full = await asyncio.to_thread(cache.resolve, revision)
        targets = {t.name: t for t in (app.targets or (plan.DEFAULT_TARGET,))}
        for c in [cluster] if cluster else list(self.clusters):
            t = self.target_of(app, c)
            if t is not None:
                targets[t.name] = t
        for t in targets.values():
            result = await self.bundle_for(app, t, full)
            if result.error:
                raise errors.InvalidArgument(
                    f"app {app.name} does not render at {full[:12]} for target {t.name}: "
                    f"{result.error}"
                )
        previous = self.pins.get((app.name, cluster), "")
        await self.db.run(
            self.db.upsert,
            "pins",
            {
                "app": app.name,
                "cluster": cluster,
                "revision": full,
                "actor": actor,
                "at": time.time(),
            },
            ("app", "cluster"),
        )
        self.pins[(app.name, cluster)] = full
        where = f"cluster {cluster}" if cluster else "every cluster"
        ev = await self.record(
            app=app.name,
            cluster=cluster,
            kind="pinned",
            cause=types_pb2.CAUSE_ROLLBACK,
            actor=actor,
            revision=full,
            previous_revision=previous,
            message=f"{app.name} pinned to {full[:8]} on {where} by {actor}; "
            "auto-sync holds until unpinned",
        )
        await self.replan(cause=types_pb2.CAUSE_ROLLBACK, actor=actor)
        self.announce_app(app.name)
        return ev

    async def unpin(self, app_name: str, cluster: str, actor: str) -> store.Event:
        app = self._app(app_name)
        previous = self.pins.pop((app.name, cluster), None)
        if previous is None:
            where = f" on cluster {cluster}" if cluster else ""
            raise errors.InvalidArgument(f"app {app.name} is not pinned{where}")
        await self.db.run(self.db.delete, "pins", "app = ? AND cluster = ?", [app.name, cluster])
        ev = await self.record(
            app=app.name,
            cluster=cluster,
            kind="unpinned",
            cause=types_pb2.CAUSE_USER,
            actor=actor,
            previous_revision=previous,
            message=f"{app.name} unpinned by {actor}; auto-sync resumes",
        )
        await self.replan(cause=types_pb2.CAUSE_USER, actor=actor)
        self.announce_app(app.name)
        return ev

    async def pause(self, app_name: str, reason: str, actor: str, *, paused: bool) -> store.Event:
        app = self._app(app_name)
        if paused:
            self.paused[app.name] = reason or f"paused by {actor}"
        else:
            self.paused.pop(app.name, None)
        await self.db.run(
            self.db.upsert,
            "app_state",
            {"app": app.name, "paused": int(paused), "reason": reason},
            "app",
        )
        ev = await self.record(
            app=app.name,
            kind="paused" if paused else "resumed",
            cause=types_pb2.CAUSE_USER,
            actor=actor,
            message=f"{app.name} {'paused' if paused else 'resumed'} by {actor}"
            + (f": {reason}" if reason else ""),
        )
        await self.replan(cause=types_pb2.CAUSE_USER, actor=actor)
        self.announce_app(app.name)
        return ev

    def announce_app(self, name: str) -> None:
        """An operator pinned or paused an app: its header and every cell read differently."""
        app = self.cfg.app(name)
        if app is None or not self.watchers:
            return
        self._announce(fleet_pb2.FleetChange(app=self.app_pb(app)))
        for cluster in self.clusters:
            self._announce_status(cluster, name)

    async def record(self, **fields: Any) -> store.Event:
        ev = await self.db.run(self.db.append_event, **fields)
        self._announce(fleet_pb2.FleetChange(event=event_pb(ev)))
        return ev

    def _app(self, name: str) -> config.App:
        app = self.cfg.app(name)
        if app is None:
            names = ", ".join(a.name for a in self.cfg.apps) or "(none)"
            raise errors.NotFound(f"no app {name!r} in {self.cfg.file}; apps: {names}")
        return app

    def _cluster(self, name: str) -> None:
        if name not in self.clusters:
            raise errors.NotFound(f"no cluster {name!r} is registered")

    # ------------------------------------------------------------ fleet view

    def cluster_pb(self, name: str) -> types_pb2.Cluster:
        row = self.clusters[name]
        labels = self.labels_of(name)
        c = types_pb2.Cluster(
            name=name,
            labels=labels,
            agent_facts=store.loads(row.get("agent_labels")),
            agent_version=row.get("agent_version") or "",
            kubernetes_version=row.get("kubernetes_version") or "",
            groups=[g.name for g in self.cfg.cluster_groups if g.selector.matches(labels)],
        )
        if row.get("last_seen"):
            c.last_seen.FromNanoseconds(int(row["last_seen"] * 1e9))
        if row.get("cert_expires"):
            c.certificate_expires.FromNanoseconds(int(row["cert_expires"] * 1e9))
        if name in self.streams:
            c.connectivity = types_pb2.CONNECTIVITY_CONNECTED
        elif row.get("last_seen"):
            c.connectivity = types_pb2.CONNECTIVITY_DISCONNECTED
            c.reason = f"disconnected since {status.since(row['last_seen'])}" + (
                f": {row['reason']}" if row.get("reason") else ""
            )
        else:
            c.connectivity = types_pb2.CONNECTIVITY_NEVER_SEEN
            c.reason = "registered, the agent never connected"
        return c

    def app_pb(self, configured: config.App) -> fleet_pb2.App:
        app = self.effective(configured)
        out = fleet_pb2.App(
            name=app.name,
            repo=app.repo,
            path=app.path,
            namespace=app.namespace,
            policy=_policy(app),
            head_revision=self.heads.get(app.repo, ""),
            pinned_revision=self.pins.get((app.name, ""), ""),
            paused=app.name in self.paused,
        )
        head = self.heads.get(app.repo, "")
        for t in app.targets if app.targets is not None else (plan.DEFAULT_TARGET,):
            r = self.renders.get((app.name, t.name, head, _overrides_hash(app, t)))
            out.targets.add(
                name=t.name,
                revision=head if r else "",
                bundle_digest=r.digest if r else "",
                render_error=r.error if r else "",
            )
        if app.name in self.fleet_errors:
            out.targets.add(name="fleet.yaml", render_error=self.fleet_errors[app.name])
        return out

    def cell(self, cluster: str, app: config.App) -> fleet_pb2.ClusterAppStatus | None:
        target = self.target_of(app, cluster)
        if target is None:
            return None
        row = self.clusters.get(cluster) or {}
        head = self.heads.get(app.repo, "")
        eff = self.effective(app)
        render_result = self.renders.get(
            (app.name, target.name, head, _overrides_hash(eff, target))
        )
        render_error = (
            self.fleet_errors.get(app.name)
            or self.plan_errors.get((app.name, cluster))
            or (render_result.error if render_result else "")
        )
        out = status.cell(
            cluster=cluster,
            app=app.name,
            target=target.name,
            assignment=self.assignments.get((cluster, app.name)),
            report=self.reports.get((cluster, app.name)),
            connected=cluster in self.streams,
            last_seen=row.get("last_seen") or 0.0,
            render_error=render_error,
            wanted_revision=head,
            auto_sync=eff.sync.auto,
        )
        out.pinned_revision = self.pins.get((app.name, cluster), "") or self.pins.get(
            (app.name, ""), ""
        )
        return out

    def snapshot(self) -> fleet_pb2.Snapshot:
        snap = fleet_pb2.Snapshot(version=self.version)
        snap.clusters.extend(self.cluster_pb(c) for c in sorted(self.clusters))
        snap.apps.extend(self.app_pb(a) for a in self.cfg.apps)
        for c in sorted(self.clusters):
            for a in self.cfg.apps:
                cell = self.cell(c, a)
                if cell is not None:
                    snap.statuses.append(cell)
        snap.repos.extend(
            self.repo_status[r.name] for r in self.cfg.repos if r.name in self.repo_status
        )
        for t in sorted(self.supervisor.states.values() if self.supervisor else [], key=_name):
            task = snap.tasks.add(
                name=t.name, running=t.running, restarts=t.restarts, last_error=t.last_error
            )
            if t.last_error_at:
                task.last_error_at.FromNanoseconds(int(t.last_error_at * 1e9))
        return snap

    def _announce_status(self, cluster: str, app_name: str) -> None:
        app = self.cfg.app(app_name)
        if app is None or not self.watchers:
            return
        cell = self.cell(cluster, app)
        if cell is not None:
            self._announce(fleet_pb2.FleetChange(status=cell))

    def _announce(self, change: fleet_pb2.FleetChange) -> None:
        self.version += 1
        change.version = self.version
        for q in list(self.watchers):
            if q.qsize() > 10000:  # a watcher that stopped reading is dropped, not waited for
                self.watchers.discard(q)
                continue
            q.put_nowait(change)

    async def retain(self, stop: asyncio.Event, *, every: float = 3600.0) -> None:
        """Apply hub.yaml's retention now and then every `every` seconds until `stop`."""
        while not stop.is_set():
            await self.prune_history()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=every)

    async def prune_history(self) -> dict[str, int]:
        """Forget old events and what no cluster, pin or recent revision needs (store.prune),
        and the in-memory render results that pointed at it."""
        keep = self.cfg.retention
        await self.flush_reports()
        gone = await self.db.run(
            self.db.prune,
            before=time.time() - keep.events,
            per_app=keep.events_per_app,
            keep_revisions=keep.revisions,
            capped_causes=(types_pb2.CAUSE_AUTO, types_pb2.CAUSE_AGENT),
        )

        def remaining() -> tuple[set[tuple[str, str, str]], set[str]]:
            renders = {(r["app"], r["target"], r["revision"]) for r in self.db.rows("renders")}
            digests = self.db.bundle_digests()
            return renders, digests

        renders, digests = await self.db.run(remaining)
        self.renders = {k: v for k, v in self.renders.items() if k[:3] in renders}
        self._content = {k: d for k, d in self._content.items() if d in digests}
        if any(gone.values()):
            log.info("retention: forgot %s", ", ".join(f"{n} {t}" for t, n in gone.items() if n))
        return gone

    async def history(self, *, app: str, cluster: str, limit: int) -> list[store.Event]:
        with contextlib.suppress(errors.StoreUnavailable):  # the history on disk still reads
            await self.flush_reports()  # what agents just said belongs in the answer
        return await self.db.run(self.db.events, app=app, cluster=cluster, limit=limit or 200)


AGENT_EVENT_GAP = 10.0  # seconds between a cluster's failure or heal entries for one app


@dataclasses.dataclass
class _AgentSeen:
    """What a cluster's reports for one app have put into history already."""

    applied: tuple[str, str] = ("", "")  # (digest, revision) of the last `applied` entry
    failed_at: float = -AGENT_EVENT_GAP  # monotonic time of the last `apply-failed` entry
    healed: int = 0  # heals reported since the last `healed` entry
    healed_at: float = -AGENT_EVENT_GAP
    timer: asyncio.TimerHandle | None = None  # tells heals held back by the gap


MAX_FACTS = 32


def _consume(task: asyncio.Future[RenderResult]) -> None:
    """Errors of a background render are recorded as its result; never 'never retrieved'."""
    if not task.cancelled():
        task.exception()


def _name(t: supervise.TaskState) -> str:
    return t.name


def unexpected(stage: str, e: BaseException) -> str:
    """A readable reason for an error nobody planned for (the log has the traceback)."""
    detail = str(e).splitlines()[0][:300] if str(e) else ""
    return (
        f"{stage} failed: {type(e).__name__}"
        + (f": {detail}" if detail else "")
        + ("; the other apps are unaffected, fix this input and commit again")
    )


def clean_facts(facts: dict[str, str]) -> dict[str, str]:
    """What an agent says about itself, kept only when it is a valid Kubernetes label (so it
    cannot carry markup or control characters) and at most MAX_FACTS of them."""
    out: dict[str, str] = {}
    for key, value in sorted(facts.items()):
        if len(out) >= MAX_FACTS or len(key) > 317 or config.label_problem(key, value):
            continue
        out[key] = value
    return out


def event_pb(e: store.Event) -> types_pb2.Event:
    out = types_pb2.Event(
        id=e.id,
        app=e.app,
        cluster=e.cluster,
        revision=e.revision,
        previous_revision=e.previous_revision,
        cause=e.cause,  # type: ignore[arg-type]
        actor=e.actor,
        kind=e.kind,
        message=e.message,
    )
    out.at.FromNanoseconds(int(e.at * 1e9))
    return out


def chunks(data: bytes, digest: str) -> Iterable[agent_pb2.BundleChunk]:
    for offset in range(0, max(len(data), 1), CHUNK):
        yield agent_pb2.BundleChunk(
            digest=digest, offset=offset, total_size=len(data), data=data[offset : offset + CHUNK]
        )
