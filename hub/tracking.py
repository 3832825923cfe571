"""Git tracking: poll each configured repo on its interval (or at once when a webhook says
so), keep its head revision and fetch status, and ask for a plan when a head moves.

A failed fetch keeps the last good revision and shows the error on the repo; a store that
cannot write is the repo's error too, and the same commit is tried again shortly. Never
renders or plans by itself: a new head is handed to `on_revision`.
"""

from __future__ import annotations

import asyncio
import logging
import pathlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fleetops.hub import errors, events, fleetstate, gitfetch, records, repo, storeapi
from fleetops.proto.v1 import fleet_pb2

log = logging.getLogger("fleetops.hub")
STORE_RETRY = 5.0  # seconds between tries when the store cannot write


class Tracker:
    def __init__(
        self,
        *,
        settings: fleetstate.Settings,
        db: storeapi.StoreApi,
        bus: events.Bus,
        data: pathlib.Path,
        on_revision: Callable[[], Awaitable[Any]],
        on_unchanged: Callable[[], Awaitable[Any]] | None = None,
    ) -> None:
        self._settings = settings
        self._db = db
        self._bus = bus
        self._data = data
        self._on_revision = on_revision
        self._on_unchanged = on_unchanged  # a fetch found no new commit (chart ranges poll)
        self.repos: dict[str, repo.RepoCache] = {}
        self.heads: dict[str, str] = {}
        self.status: dict[str, fleet_pb2.RepoStatus] = {}
        self._fetch_now: dict[str, asyncio.Event] = {}

    def load(self, stored: list[records.Repo]) -> None:
        """The repos the store kept: last known heads and fetch errors."""
        for r in stored:
            if r.revision:
                self.heads[r.name] = r.revision
            self.status[r.name] = fleet_pb2.RepoStatus(
                name=r.name,
                url=gitfetch.redact(r.url),
                branch=r.branch,
                revision=r.revision,
                error=r.error,
            )
        self.sync_repos()

    def sync_repos(self) -> None:
        """A cache and a fetch trigger for every repo in the config in force."""
        for spec in self._settings.cfg.repos:
            cache = self.repos.get(spec.name)
            if cache is None or cache.spec != spec:
                self.repos[spec.name] = repo.RepoCache(self._data / "repos" / spec.name, spec)
            self._fetch_now.setdefault(spec.name, asyncio.Event())
            self.status.setdefault(
                spec.name,
                fleet_pb2.RepoStatus(
                    name=spec.name, url=gitfetch.redact(spec.url), branch=spec.branch
                ),
            )

    def fetch_all(self) -> None:
        for spec in self._settings.cfg.repos:
            self._fetch_now[spec.name].set()

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
            spec = next((r for r in self._settings.cfg.repos if r.name == repo_name), None)
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
            st = self.status[repo_name]
            st.revision = before or ""
            st.head_author = st.head_subject = ""  # read again for `before` on the next fetch
            st.error = str(e)
            st.fetched_at.GetCurrentTime()
            log.error("repo %s: %s", repo_name, e)
            self._bus.publish(fleet_pb2.FleetChange(repo=st))
            ev = self._fetch_now.get(repo_name)
            if ev is not None:
                asyncio.get_running_loop().call_later(STORE_RETRY, ev.set)

    async def _refresh(self, repo_name: str) -> None:
        cache = self.repos[repo_name]
        st = self.status[repo_name]
        try:
            sha = await cache.afetch()
        except errors.RepoError as e:
            st.error = str(e)
            st.fetched_at.GetCurrentTime()
            await self._save(repo_name)
            log.warning("%s", e)
            self._bus.publish(fleet_pb2.FleetChange(repo=st))
            return
        st.error = ""
        st.fetched_at.GetCurrentTime()
        if sha == self.heads.get(repo_name):
            if not st.head_subject and not st.head_author:  # after a restart: Git's words again
                known = await asyncio.to_thread(cache.commit, sha)
                st.head_author, st.head_subject = known.author, known.message
                self._bus.publish(fleet_pb2.FleetChange(repo=st))
            await self._save(repo_name)
            if self._on_unchanged is not None:
                await self._on_unchanged()
            return
        commit = await asyncio.to_thread(cache.commit, sha)
        await self._db.run(
            self._db.put_revision,
            records.Revision(
                repo=repo_name,
                sha=sha,
                message=commit.message,
                author=commit.author,
                author_email=commit.author_email,
                time=commit.time,
                seen_at=time.time(),
            ),
        )
        self.heads[repo_name] = sha
        st.revision = sha
        st.head_author, st.head_subject = commit.author, commit.message
        await self._save(repo_name)
        log.info("repo %s: new revision %s (%s)", repo_name, sha[:8], commit.message)
        self._bus.publish(fleet_pb2.FleetChange(repo=st))
        await self._on_revision()

    async def _save(self, name: str) -> None:
        st = self.status[name]
        cfg = self._settings.cfg
        spec = cfg.repo(name) if any(r.name == name for r in cfg.repos) else None
        await self._db.run(
            self._db.put_repo,
            records.Repo(
                name=name,
                url=spec.url if spec else st.url,
                branch=st.branch,
                revision=self.heads.get(name, ""),
                fetched_at=time.time(),
                error=st.error,
            ),
        )

    async def resolve(self, repo_name: str, revision: str) -> str:
        """The full SHA of `revision` (a prefix, a tag, a branch) in the repo's cache."""
        cache = self.repos[repo_name]
        return await asyncio.to_thread(cache.resolve, revision)
