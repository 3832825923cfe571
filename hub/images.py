"""Image automation's loop: scan every `imageRepositories` entry on its interval, pick each
policy's newest tag (hub.imagepolicy, never a rejected one), and commit what changed to Git
(hub.imagecommit), after which the new revision flows like any commit: rendered, assigned and
rolled out through the app's steps.

A tag is rejected when the image update commit that brought it was rejected by its app's
rollout (reverted): the commits this loop made are kept in the store (revision -> policy ->
tag), so across restarts, and the loop then proposes the newest tag that was not rejected,
which also puts Git back to what the clusters run. `retry` on the rollout takes the rejection
back, and with it the tag's.

One repository's failing registry, one update's refused push, or a bad file never stops the
others: each failure is that entry's status (`fleetops-hub images status`, /metrics, one event
when it starts and one when it clears), retried on its interval.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import pathlib
import re
import time
from collections.abc import Callable, Coroutine

from fleetops.hub import (
    config,
    errors,
    events,
    fleetstate,
    imageauth,
    imagechoice,
    imagecommit,
    imagespec,
    imagestatus,
    records,
    registry,
    registryspec,
    storeapi,
)
from fleetops.proto.v1 import types_pb2

log = logging.getLogger(__name__)

KEEP_COMMITS = 1000  # image update revisions remembered per repo (rejections older are moot)
UPDATE_DEADLINE = 120.0  # seconds for one image update run (fetch, commit, push, retries)
RETRY_FIRST = 15.0  # seconds before a failed update runs again, doubled up to its interval
TICK = 1.0
SCANS_AT_ONCE = 4  # registries read at the same time (each in a thread of its own)

Rejected = Callable[[str], set[str]]  # repo name -> revisions its apps' rollouts rejected


@dataclasses.dataclass
class _Scan:
    """What the newest scan of one repository found."""

    status: imagestatus.RepositoryStatus
    tags: tuple[str, ...] = ()
    due: float = 0.0  # monotonic
    login: imageauth.Login = dataclasses.field(default_factory=imageauth.Login)
    running: bool = False
    spec: imagespec.ImageRepository | None = None  # the hub.yaml entry the newest scan read


@dataclasses.dataclass
class _Update:
    status: imagestatus.UpdateStatus
    wanted: dict[str, str] = dataclasses.field(default_factory=dict)  # last run's `latest`
    head: str = ""  # the repo head the last run saw
    due: float = 0.0  # monotonic: when a failed run may go again
    retry: float = RETRY_FIRST
    running: bool = False


class Images:
    def __init__(
        self,
        *,
        settings: fleetstate.Settings,
        db: storeapi.StoreApi,
        data: pathlib.Path,
        recorder: events.Recorder,
        rejected: Rejected,
        heads: Callable[[], dict[str, str]],
        trigger_fetch: Callable[[str], bool],
        now: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._db = db
        self._cache = data / "images"
        self._recorder = recorder
        self._rejected = rejected
        self._heads = heads
        self._trigger_fetch = trigger_fetch
        self._now = now
        self._scans: dict[str, _Scan] = {}
        self._updates: dict[str, _Update] = {}
        self._chooser = imagechoice.Chooser()
        self._brought: dict[tuple[str, str], dict[str, str]] = {}  # (repo, rev) -> image -> tag
        self._wake = asyncio.Event()
        self._scanning = asyncio.Semaphore(SCANS_AT_ONCE)
        self._tasks: set[asyncio.Task[None]] = set()

    async def load(self) -> None:
        for c in await self._db.run(self._db.image_commits):
            self._brought.setdefault((c.repo, c.revision), {})[c.image] = c.tag

    def scan_now(self, name: str = "") -> list[str]:
        """Scan `name` (every repository when '') at once; the names that will be."""
        names = [r.name for r in self._settings.cfg.images.repositories]
        if name and name not in names:
            raise errors.NotFound(
                f"no image repository {_short(name)} in {self._settings.cfg.file}; "
                f"imageRepositories: {', '.join(names) or '(none)'}"
            )
        for n in [name] if name else names:
            if n in self._scans:
                self._scans[n].due = 0.0
        self._wake.set()
        return [name] if name else names

    def status(self) -> imagestatus.Status:
        """Every configured entry, scanned or not yet (then `last_scan` is 0)."""
        cfg = self._settings.cfg.images
        return imagestatus.Status(
            repositories=[dataclasses.replace(self._scan_of(r).status) for r in cfg.repositories],
            policies=[
                dataclasses.replace(
                    self._chooser.policies.get(p.name)
                    or imagestatus.PolicyStatus(
                        name=p.name, repository=p.repository, error="not chosen yet"
                    )
                )
                for p in cfg.policies
            ],
            updates=[dataclasses.replace(self._update_of(u).status) for u in cfg.updates],
        )

    async def run(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                await self.tick()
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=TICK)
                except TimeoutError:
                    pass
        finally:
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)

    async def tick(self) -> None:
        """Scan what is due, choose, and start the updates whose wanted tags changed."""
        cfg = self._settings.cfg.images
        self._forget_removed(cfg)
        clock = time.monotonic()
        for r in cfg.repositories:
            scan = self._scan_of(r)
            if scan.spec is not None and scan.spec != r:
                scan.due = 0.0  # hub.yaml changed its exclude, maxTags or auth: read it again now
            if scan.due <= clock and not scan.running:
                scan.running, scan.due, scan.spec = True, clock + r.interval, r
                self._spawn(self._scan(r, scan))
        rejected = self._rejected_tags(cfg)
        latest = await self._chooser.choose(
            cfg,
            tags={n: sc.tags for n, sc in self._scans.items()},
            scanned={n: sc.status for n, sc in self._scans.items()},
            rejected=rejected,
        )
        if any(self._scans[r.name].status.last_scan == 0.0 for r in cfg.repositories):
            return  # every repository's first scan ends first: one commit, not one per scan
        heads = self._heads()
        for u in cfg.updates:
            self._maybe_update(u, latest, heads)

    # ------------------------------------------------------------ scanning

    def _scan_of(self, spec: imagespec.ImageRepository) -> _Scan:
        scan = self._scans.get(spec.name)
        if scan is None or scan.status.image != spec.ref:
            scan = _Scan(imagestatus.RepositoryStatus(name=spec.name, image=spec.ref))
            self._scans[spec.name] = scan
        return scan

    async def _scan(self, spec: imagespec.ImageRepository, scan: _Scan) -> None:
        before = scan.status.error
        try:
            await self._scan_once(spec, scan, before=before)
        except Exception as e:  # noqa: BLE001 (a bug here must not stop other scans)
            log.exception("image repository %s: the scan failed", spec.name)
            await self._scan_failed(spec, scan.status, f"the scan failed: {e}", before=before)
        finally:
            scan.running = False

    async def _scan_failed(
        self,
        spec: imagespec.ImageRepository,
        st: imagestatus.RepositoryStatus,
        why: str,
        *,
        before: str,
    ) -> None:
        """The scan failed: said in the status (a scan, though a failed one, at this time),
        logged when the reason changed, one event when the repository starts failing. The
        reason may quote the registry: control characters are escaped."""
        st.error = _plain(f"image repository {spec.name}: {why}")
        st.last_scan = self._now()
        if st.error != before:
            log.warning("%s", st.error)
        if not before:
            await self._record("image-scan-failed", st.error)

    async def _scan_once(
        self, spec: imagespec.ImageRepository, scan: _Scan, *, before: str
    ) -> None:
        st = scan.status
        try:
            async with self._scanning:
                auth = await scan.login.auth(
                    path=spec.docker_config_file, registry=spec.image.registry
                )
                got = await registry.list_tags(spec.image, max_tags=spec.max_tags, auth=auth)
            tags = await imagechoice.without_excluded(spec, got.tags)
        except registryspec.RegistryError as e:
            await self._scan_failed(spec, st, str(e), before=before)
            return
        scan.tags = tags
        st.last_scan, st.error, st.tags, st.requests = self._now(), "", len(tags), got.requests
        warning = ""
        if got.truncated:
            warning = (
                f"the repository has more than {spec.max_tags} tags; only the first "
                f"{spec.max_tags} were read and a newer one may be missed: raise maxTags or "
                "add exclude patterns"
            )
            if warning != st.warning:
                log.warning("image repository %s: %s", spec.name, warning)
        st.warning = warning
        if before:
            await self._record("image-scan-recovered", f"image repository {spec.name}: scanned")

    # ------------------------------------------------------------ choosing

    def _rejected_tags(self, cfg: imagespec.Images) -> dict[str, set[str]]:
        """policy -> tags whose image update commit a rollout rejected. Kept per image, so a
        policy renamed (or a second policy on the same image) knows them too."""
        by_image: dict[str, set[str]] = {}
        for repo in {u.repo for u in cfg.updates}:
            for revision in self._rejected(repo):
                for image, tag in self._brought.get((repo, revision), {}).items():
                    by_image.setdefault(image, set()).add(tag)
        images = {r.name: str(r.image) for r in cfg.repositories}
        return {
            p.name: by_image[images[p.repository]]
            for p in cfg.policies
            if images.get(p.repository) in by_image
        }

    # ------------------------------------------------------------ committing

    def _maybe_update(
        self, spec: imagespec.ImageUpdate, latest: dict[str, str], heads: dict[str, str]
    ) -> None:
        state = self._update_of(spec)
        repo = next((r for r in self._settings.cfg.repos if r.name == spec.repo), None)
        if state.running or repo is None or not latest:
            return
        head = heads.get(spec.repo, "")
        changed = latest != state.wanted or head != state.head
        if not changed and not (state.status.error and time.monotonic() >= state.due):
            return
        state.running = True
        self._spawn(self._update(spec, repo, state, dict(latest), head))

    def _update_of(self, spec: imagespec.ImageUpdate) -> _Update:
        state = self._updates.get(spec.name)
        if state is None or state.status.repo != spec.repo:
            state = _Update(imagestatus.UpdateStatus(name=spec.name, repo=spec.repo))
            self._updates[spec.name] = state
        return state

    def _spawn(self, work: Coroutine[None, None, None]) -> None:
        """Run `work` beside the loop; the loop looks again as soon as it is done."""
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda _: self._wake.set())

    async def _update(
        self,
        spec: imagespec.ImageUpdate,
        repo: config.Repo,
        state: _Update,
        latest: dict[str, str],
        head: str,
    ) -> None:
        st = state.status
        before = st.error
        try:
            outcome = await asyncio.to_thread(
                imagecommit.update,
                repo,
                cache=self._cache / spec.name,
                branch=repo.branch,
                push_branch=spec.push_branch,
                paths=spec.paths,
                latest=latest,
                author=imagecommit.Signature(spec.author_name, spec.author_email),
                message=spec.message,
                deadline=time.monotonic() + UPDATE_DEADLINE,
            )
        except Exception as e:  # noqa: BLE001 (a HubError says what to do; anything else is a bug)
            if not isinstance(e, errors.HubError):
                log.exception("image update %s failed", spec.name)
            st.error, st.last_run = _plain(f"image update {spec.name}: {e}"), self._now()
            state.due = time.monotonic() + state.retry
            state.retry = min(state.retry * 2, 600.0)
            state.wanted, state.head = latest, head
            if st.error != before:
                log.warning("%s", st.error)
                await self._record("image-update-failed", st.error)
            return
        finally:
            state.running = False
        state.wanted, state.head, state.retry = latest, head, RETRY_FIRST
        st.error, st.last_run, st.problems = "", self._now(), list(outcome.problems[:50])
        for problem in outcome.problems[:5]:
            log.warning("image update %s: %s", spec.name, problem)
        if before:
            await self._record("image-update-recovered", f"image update {spec.name}: ran again")
        if not outcome.commit:
            return
        await self._committed(spec, st, outcome, latest)

    async def _committed(
        self,
        spec: imagespec.ImageUpdate,
        st: imagestatus.UpdateStatus,
        outcome: imagecommit.Outcome,
        latest: dict[str, str],
    ) -> None:
        """The commit landed: remembered (with the tags it brought), told and followed, even
        when hub.yaml lost its imageUpdates entry while it ran (its status is then unseen)."""
        st.commits += 1
        st.last_commit = outcome.commit
        st.last_changes = [_plain(f"{c.file}: {c.old} -> {c.new}") for c in outcome.changes[:50]]
        tags = {c.policy: _tag(latest[c.policy]) for c in outcome.changes if c.policy in latest}
        # a commit that only moves back from rejected tags rejects nothing when it fails: its
        # failure is someone else's change under it, and taking the older tag away as well
        # would walk Git down every tag there is
        rejected = self._rejected_tags(self._settings.cfg.images)
        going_back = {
            c.policy
            for c in outcome.changes
            if (_tag(c.old) or c.old) in rejected.get(c.policy, set())
        }
        at = self._now()
        rows = [
            records.ImageCommit(
                repo=spec.repo,
                revision=outcome.commit,
                policy=policy,
                tag=tag,
                image=_image(latest[policy]),
                image_update=spec.name,
                at=at,
            )
            for policy, tag in sorted(tags.items())
            if tag and policy not in going_back
        ]
        self._brought[(spec.repo, outcome.commit)] = {r.image: r.tag for r in rows}
        try:
            await self._db.run(self._db.put_image_commits, rows, keep=KEEP_COMMITS)
        except Exception as e:  # noqa: BLE001 (the commit landed; a later restart may forget it)
            log.error(
                "image update %s: the store did not keep commit %s: %s",
                spec.name,
                outcome.commit[:12],
                e,
            )
        where = spec.push_branch or "the repo's branch"
        what = ", ".join(f"{p} {t}" for p, t in sorted(tags.items()))
        message = (
            f"image update {spec.name} committed {outcome.commit[:12]} to {spec.repo} "
            f"({where}): {what}"
        )
        log.info("%s", message)
        await self._record(
            "image-update",
            message,
            revision=outcome.commit,
            repo=spec.repo,
            files=[c.file for c in outcome.changes],
        )
        if not spec.push_branch or spec.push_branch == self._branch(spec.repo):
            self._trigger_fetch(spec.repo)

    def _branch(self, repo: str) -> str:
        spec = next((r for r in self._settings.cfg.repos if r.name == repo), None)
        return spec.branch if spec else ""

    async def _record(
        self,
        kind: str,
        message: str,
        *,
        revision: str = "",
        repo: str = "",
        files: list[str] | None = None,
    ) -> None:
        """One event per app the change is in (its repo, a changed file under its path), or
        one fleet-wide event."""
        apps = [
            a.name
            for a in self._settings.cfg.apps
            if repo and a.repo == repo and any(_under(f, a.path) for f in files or [])
        ]
        entries = [
            events.Entry(
                kind=kind,
                message=message,
                actor="image-automation",
                cause=types_pb2.CAUSE_AUTO,
                app=app,
                revision=revision,
            )
            for app in apps or [""]
        ]
        try:
            await self._recorder.record_all(entries)
        except Exception as e:  # noqa: BLE001 (history is not worth stopping the loop for)
            log.error("image automation: an event was not recorded: %s", e)

    def _forget_removed(self, cfg: imagespec.Images) -> None:
        """Entries gone from hub.yaml are gone from the status."""
        names = {r.name for r in cfg.repositories}
        for gone in set(self._scans) - names:
            del self._scans[gone]
        names = {u.name for u in cfg.updates}
        for gone in set(self._updates) - names:
            del self._updates[gone]
        self._chooser.forget({p.name for p in cfg.policies})


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _plain(text: str) -> str:
    """One line fit for a log, an event and a terminal: control characters (a registry's
    header may carry terminal escapes) written as \\xNN."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _short(text: str) -> str:
    """An API caller's text for a message: quoted, at most 100 characters."""
    return repr(text if len(text) <= 100 else text[:100] + "…")


def _image(ref: str) -> str:
    """`name:tag` -> the image as registryspec writes it (registry/repository)."""
    name = ref.rsplit(":", 1)[0] if ":" in ref.rsplit("/", 1)[-1] else ref
    try:
        return str(registryspec.parse_image(name))
    except registryspec.RegistryError:
        return name


def _tag(image: str) -> str:
    """`name:tag` -> tag."""
    last = image.rsplit("/", 1)[-1]
    return last.rsplit(":", 1)[1] if ":" in last else ""


def _under(file: str, path: str) -> bool:
    root = path.strip("/")
    return not root or root == "." or file == root or file.startswith(root + "/")
