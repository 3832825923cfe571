"""Git tracking: a bare cache per repo, fetched with pygit2; the only module importing pygit2.

`RepoCache.fetch` brings the branch up to date and returns its head commit; a failed fetch
raises RepoError and leaves the cache (and the last good revision) as it was. `checkout`
writes one commit's tree to a directory for the renderers. Credentials come from environment
variables named in hub.yaml and never appear in errors.

A checkout is what a repository committer controls; hub.checkout writes it, bounded and
with no symlink leading out of it, reading the commit's objects through `_GitObjects` here.
Only the bare Git cache stays under the data directory; checkouts go to a private
per-process directory.

A Git server that accepts the connection and never answers must not freeze the hub. So:
- Every fetch has deadlines (`Timeouts`): libgit2 gives up connecting after `connect` seconds
  and gives up on any one read or write after `io` seconds, for every transport (http, https,
  ssh, git); the whole fetch gets `total` seconds, checked on every progress callback and, in
  `afetch`, by the caller, which stops waiting and leaves the thread to end on its own (a
  server trickling a byte at a time gets no callback to check). libgit2 keeps the first two
  per process, so they are one setting for the process (`set_timeouts`), not per repo.
- A fetch never holds the lock reads need: it goes through a Repository object of its own
  on the same bare directory and writes only new packs and refs, so `resolve`, `commit`,
  `read`, `tree_key` and `checkout` keep answering from what was fetched before. Fetches of
  one bare directory run one at a time (a lock only fetches take).
- A fetch that fails, however, changes nothing the reads see; a ref lock left by a fetch that
  died with its process (kill -9, or a hub that exited with a fetch still running) is removed
  once it is older than any fetch can take, so it never blocks fetching for good.
The parts of these rules that need no Git library (deadlines, messages, known_hosts, stale
locks) are hub.gitfetch.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import pathlib
import shutil
import threading
import time
from collections.abc import Iterator

import pygit2

from fleetops.hub import checkout as checkouts
from fleetops.hub import config, errors, gitfetch

# what callers of the Git side use, named here so that they import one module
from fleetops.hub.checkout import Checkout, process_work_dir
from fleetops.hub.gitfetch import Timeouts, redact, set_timeouts

__all__ = [
    "MAX_READ",
    "Checkout",
    "Commit",
    "RepoCache",
    "Timeouts",
    "process_work_dir",
    "redact",
    "set_timeouts",
]


class DeadlinePassed(Exception):
    """Raised from a progress callback once the fetch has used up its `total` seconds."""


@dataclasses.dataclass(frozen=True)
class Commit:
    """A commit in Git's own words: its subject (first line), author, committer time."""

    sha: str
    message: str
    author: str
    time: int
    author_email: str = ""


MAX_COMMIT_TEXT = 200  # characters of a commit's subject, author name or email the hub keeps


def _capped(text: str) -> str:
    """A committer's text kept bounded: one line, at most MAX_COMMIT_TEXT characters."""
    text = " ".join(text.split())
    return text if len(text) <= MAX_COMMIT_TEXT else text[: MAX_COMMIT_TEXT - 1] + "…"


_fetch_locks_lock = threading.Lock()
# One lock per bare directory that only fetches take: two caches of one repo (a hub
# reloading its config, or two hubs in one process) must not fetch into it at once.
_fetch_locks: dict[str, threading.Lock] = {}


def _fetch_lock(path: pathlib.Path) -> threading.Lock:
    with _fetch_locks_lock:
        return _fetch_locks.setdefault(str(path), threading.Lock())


class Callbacks(pygit2.RemoteCallbacks):
    def __init__(self, repo: config.Repo, *, deadline: float) -> None:
        super().__init__()
        self._repo = repo
        self._deadline = deadline

    def _check_deadline(self) -> None:
        if time.monotonic() > self._deadline:
            raise DeadlinePassed

    def transfer_progress(self, stats: pygit2.remotes.TransferProgress) -> None:
        self._check_deadline()

    def sideband_progress(self, string: str) -> None:
        self._check_deadline()

    def credentials(
        self, url: str, username_from_url: str | None, allowed_types: int
    ) -> pygit2.UserPass | pygit2.Keypair:
        if self._repo.token_env:
            token = os.environ.get(self._repo.token_env, "")
            if not token:
                raise errors.RepoError(
                    f"repo {self._repo.name}: env var {self._repo.token_env} (tokenEnv) is empty"
                )
            return pygit2.UserPass("x-access-token", token)
        if self._repo.ssh_key_file:
            key = self._repo.ssh_key_file
            return pygit2.Keypair(username_from_url or "git", f"{key}.pub", key, "")
        raise errors.RepoError(
            f"repo {self._repo.name}: the server asks for credentials; set tokenEnv or sshKeyFile"
        )

    def certificate_check(self, certificate: object, valid: bool, host: bytes | str) -> bool:
        if valid:
            return True
        if self._repo.known_hosts_file:
            return gitfetch.known_host(self._repo.known_hosts_file, host, certificate)
        raise errors.RepoError(
            f"repo {self._repo.name}: cannot verify host {host!r}; for ssh set knownHostsFile"
        )


class RepoCache:
    """One repo: the bare cache under `root/git`, and checkouts of the commits being rendered
    under `work/<repo name>/` (`work` defaults to this process's private directory, never
    the data directory `root` lives in)."""

    def __init__(
        self, root: pathlib.Path, repo: config.Repo, *, work: pathlib.Path | None = None
    ) -> None:
        if not repo.name or repo.name in (".", "..") or "/" in repo.name:
            raise ValueError(f"repo name {repo.name!r} cannot name a directory")
        self.root = root
        self.spec = repo
        self._work_base = work
        self._lock = threading.Lock()
        self._git: pygit2.Repository | None = None

    @property
    def work(self) -> pathlib.Path:
        """Where this repo's checkouts go."""
        return (self._work_base or checkouts.process_work_dir()) / self.spec.name

    @property
    def bare(self) -> pathlib.Path:
        return self.root / "git"

    def _open(self) -> pygit2.Repository:
        """The Repository object reads share (call with self._lock held)."""
        if self._git is None:
            bare = self.bare
            if (bare / "HEAD").exists():
                self._git = pygit2.Repository(str(bare))
            else:
                self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
                bare.mkdir(mode=0o700, exist_ok=True)
                self._git = pygit2.init_repository(str(bare), bare=True)
            # checkouts made by earlier versions inside the data directory
            shutil.rmtree(self.root / "checkouts", ignore_errors=True)
        return self._git

    def fetch(self) -> str:
        """Fetch and return the head commit of the configured branch (or tag), within the
        process's `Timeouts`; reads go on meanwhile from what was fetched before."""
        timeouts = gitfetch.current()
        deadline = time.monotonic() + timeouts.total
        url = self.spec.url
        with self._lock:
            self._open()  # creates the bare directory on first use
        lock = _fetch_lock(self.bare)
        if not lock.acquire(timeout=timeouts.total):
            raise errors.RepoError(
                f"repo {self.spec.name}: an earlier fetch from {redact(url)} is still running "
                f"after {gitfetch.seconds(timeouts.total)}; the last fetched revision stays"
            )
        try:
            pygit2.settings.server_connect_timeout = int(timeouts.connect * 1000)
            pygit2.settings.server_timeout = int(timeouts.io * 1000)
            gitfetch.drop_stale_locks(self.bare, older_than=2 * timeouts.total)
            git = pygit2.Repository(str(self.bare))  # not the readers' object: no lock shared
            try:
                return self._fetch(git, deadline=deadline, timeouts=timeouts)
            finally:
                git.free()
        finally:
            lock.release()

    def _fetch(self, git: pygit2.Repository, *, deadline: float, timeouts: Timeouts) -> str:
        url = self.spec.url
        if "origin" in [r.name for r in git.remotes]:
            if git.remotes["origin"].url != url:
                git.remotes.set_url("origin", url)
        else:
            git.remotes.create("origin", url)
        remote = git.remotes["origin"]
        try:
            remote.fetch(
                ["+refs/heads/*:refs/remotes/origin/*", "+refs/tags/*:refs/tags/*"],
                callbacks=Callbacks(self.spec, deadline=deadline),
                prune=pygit2.enums.FetchPrune.PRUNE,
            )
        except DeadlinePassed:
            raise errors.RepoError(gitfetch.too_slow(self.spec, timeouts=timeouts)) from None
        except (pygit2.GitError, KeyError, OSError) as e:
            message = str(e).replace(url, redact(url))
            raise errors.RepoError(
                gitfetch.fetch_failed(self.spec, message=message, timeouts=timeouts)
            ) from None
        for ref in (f"refs/remotes/origin/{self.spec.branch}", f"refs/tags/{self.spec.branch}"):
            found = git.references.get(ref)
            if found is not None:
                return str(found.peel(pygit2.Commit).id)
        raise errors.RepoError(
            f"repo {self.spec.name}: no branch or tag {self.spec.branch!r} at {redact(url)}"
        )

    def resolve(self, rev: str) -> str:
        """A full commit SHA for a SHA prefix, branch or tag that the cache has."""
        with self._lock:
            git = self._open()
            try:
                return str(git.revparse_single(rev).peel(pygit2.Commit).id)
            except (KeyError, ValueError, pygit2.GitError):
                raise errors.NotFound(
                    f"repo {self.spec.name}: no commit {rev!r} (fetched history only)"
                ) from None

    def commit(self, sha: str) -> Commit:
        with self._lock:
            c = self._open()[sha].peel(pygit2.Commit)
            return Commit(
                str(c.id),
                _capped(c.message.strip().splitlines()[0] if c.message.strip() else ""),
                _capped(c.author.name),
                c.commit_time,
                _capped(c.author.email),
            )

    def read(self, sha: str, *, path: str) -> str | None:
        """A file's text at a commit, or None when it is not there."""
        with self._lock:
            tree = self._open()[sha].peel(pygit2.Commit).tree
            try:
                obj = tree[path.strip("/")]
            except KeyError:
                return None
            _, size = self._open().odb.read_header(obj.id)
            if size > MAX_READ:
                raise errors.RenderError(
                    f"{path.strip('/')} is {size} bytes, over the {MAX_READ // 1024} KiB limit"
                )
            blob = self._open()[obj.id]
            return blob.data.decode(errors="replace") if isinstance(blob, pygit2.Blob) else None

    def tree_key(self, sha: str, paths: list[str]) -> str:
        """A key that changes exactly when something under any of `paths` changes."""
        with self._lock:
            tree = self._open()[sha].peel(pygit2.Commit).tree
            ids = []
            for p in paths:
                p = p.strip("/")
                try:
                    ids.append(f"{p}={tree[p].id}" if p else f"={tree.id}")
                except KeyError:
                    ids.append(f"{p}=absent")
            return ";".join(ids)

    def checkout(self, sha: str) -> Checkout:
        """The commit's files under work/<sha> (made once, reused), with no symlink in it
        that leads outside it (hub.checkout)."""
        with self._lock, checkouts.lock_for(self.work):
            git = self._open()
            base = self.work
            if self._work_base is not None:
                self._work_base.mkdir(mode=0o700, parents=True, exist_ok=True)
            base.mkdir(mode=0o700, exist_ok=True)
            tree = str(git[sha].peel(pygit2.Commit).tree.id)
            return checkouts.materialize(_GitObjects(git), tree=tree, base=base, name=sha)

    async def afetch(self) -> str:
        """`fetch` in a thread of its own that this coroutine stops waiting for after the
        `total` deadline (or when cancelled, as on SIGTERM): the thread then ends by itself
        within libgit2's timeouts, and nobody waits for it, not even the interpreter's exit."""
        timeouts = gitfetch.current()
        loop = asyncio.get_running_loop()
        done: asyncio.Future[str] = loop.create_future()

        def deliver(result: str | None, error: BaseException | None) -> None:
            if done.done():
                return  # the caller stopped waiting
            if error is not None:
                done.set_exception(error)
            else:
                done.set_result(result or "")

        def work() -> None:
            result, error = None, None
            try:
                result = self.fetch()
            except BaseException as e:  # handed to the awaiting coroutine
                error = e
            try:
                loop.call_soon_threadsafe(deliver, result, error)
            except RuntimeError:
                pass  # the loop is closed: nobody is waiting any more

        name = f"fetch {self.spec.name}"
        threading.Thread(target=work, name=name, daemon=True).start()
        try:
            return await asyncio.wait_for(done, timeout=timeouts.total)
        except TimeoutError:
            raise errors.RepoError(gitfetch.too_slow(self.spec, timeouts=timeouts)) from None

    async def acheckout(self, sha: str) -> Checkout:
        return await asyncio.to_thread(self.checkout, sha)

    async def atree_key(self, sha: str, paths: list[str]) -> str:
        return await asyncio.to_thread(self.tree_key, sha, paths)


MAX_READ = 1024 * 1024  # a single file read from Git directly (fleet.yaml)

_KINDS = {
    pygit2.enums.FileMode.TREE: checkouts.Kind.TREE,
    pygit2.enums.FileMode.BLOB: checkouts.Kind.FILE,
    pygit2.enums.FileMode.BLOB_EXECUTABLE: checkouts.Kind.EXECUTABLE,
    pygit2.enums.FileMode.LINK: checkouts.Kind.LINK,
}


class _GitObjects:
    """hub.checkout's view of a repository's objects (checkout.Objects)."""

    def __init__(self, git: pygit2.Repository) -> None:
        self._git = git

    def entries(self, tree: str) -> Iterator[checkouts.Entry]:
        obj = self._git[tree]
        assert isinstance(obj, pygit2.Tree)
        for entry in obj:
            kind = _KINDS.get(entry.filemode, checkouts.Kind.OTHER)
            yield checkouts.Entry(str(entry.name), kind, str(entry.id))

    def size(self, oid: str) -> int:
        _, size = self._git.odb.read_header(oid)
        return int(size)

    def data(self, oid: str) -> bytes:
        blob = self._git[oid]
        assert isinstance(blob, pygit2.Blob)
        return bytes(blob.data)
