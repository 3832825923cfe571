"""Git tracking: a bare cache per repo, fetched with pygit2; the only module importing pygit2.

`RepoCache.fetch` brings the branch up to date and returns its head commit; a failed fetch
raises RepoError and leaves the cache (and the last good revision) as it was. `checkout`
writes one commit's tree to a directory for the renderers. Credentials come from environment
variables named in hub.yaml and never appear in errors.

A checkout is what a repository committer controls, so it must never lead a renderer to the
hub's own files. Two rules hold that:
- Checkouts live outside the hub's data directory (which holds the CA key, tokens and the
  store): in a private per-process directory (tempfile.mkdtemp, mode 0700) unless the caller
  names another `work` directory. Only the bare Git cache stays under the data directory.
- No symlink in a checkout leads out of it. Links are refused lexically while exporting, and
  after the export every remaining link is resolved physically (realpath, the way the kernel
  will follow it, through other links) and removed when it lands outside the checkout; that
  repeats until nothing changes, since removing one link changes where others lead. A chain
  such as `d/l -> ..` with `d/leak.yaml -> l/../../ca.key` is lexically inside and physically
  outside: it is removed. Every removed link is recorded in `Checkout.refused_links`, so
  rendering an app that holds one fails with the link's repo path.

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
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import dataclasses
import os
import pathlib
import re
import shutil
import tempfile
import threading
import time

import pygit2

from fleetops.hub import config, errors

_CHECKOUTS_KEPT = 6


@dataclasses.dataclass(frozen=True)
class Timeouts:
    """Seconds a fetch may take: to connect, per read or write, and in all."""

    connect: float = 10.0
    io: float = 30.0
    total: float = 300.0


DEFAULT_TIMEOUTS = Timeouts()
_timeouts = DEFAULT_TIMEOUTS


def set_timeouts(timeouts: Timeouts) -> Timeouts:
    """Use `timeouts` for every fetch of this process from now on; returns the previous ones."""
    global _timeouts
    if min(timeouts.connect, timeouts.io, timeouts.total) <= 0:
        raise ValueError(f"fetch timeouts must be positive: {timeouts}")
    previous, _timeouts = _timeouts, timeouts
    return previous


def _seconds(value: float) -> str:
    return f"{value:g} s"


class _DeadlinePassed(Exception):
    """Raised from a progress callback once the fetch has used up its `total` seconds."""


@dataclasses.dataclass(frozen=True)
class Commit:
    sha: str
    message: str
    author: str
    time: int


@dataclasses.dataclass(frozen=True)
class Checkout:
    root: pathlib.Path
    # repo paths of symlinks (and unsafe tree entries) that would lead outside the checkout;
    # they are not in `root`
    refused_links: tuple[str, ...]


_work_lock = threading.Lock()
_work: tuple[int, pathlib.Path] | None = None  # (pid, directory) of this process's checkouts
# One lock per checkout directory: two caches of one repo (a hub reloading its config, or
# two hubs in one process) must not build the same checkout at once.
_checkout_locks: dict[str, threading.Lock] = {}
# One lock per bare directory that only fetches take, for the same reason.
_fetch_locks: dict[str, threading.Lock] = {}


def _checkout_lock(path: pathlib.Path) -> threading.Lock:
    with _work_lock:
        return _checkout_locks.setdefault(str(path), threading.Lock())


def _fetch_lock(path: pathlib.Path) -> threading.Lock:
    with _work_lock:
        return _fetch_locks.setdefault(str(path), threading.Lock())


def process_work_dir() -> pathlib.Path:
    """This process's private directory for checkouts (mode 0700, removed at exit)."""
    global _work
    with _work_lock:
        if _work is None or _work[0] != os.getpid():
            path = pathlib.Path(tempfile.mkdtemp(prefix="fleetops-hub-work-"))
            atexit.register(shutil.rmtree, path, ignore_errors=True)
            _work = (os.getpid(), path)
        return _work[1]


def redact(url: str) -> str:
    """A URL fit for logs and the TUI: no user info."""
    return re.sub(r"^(\w+://)[^@/]+@", r"\1", url)


class _Callbacks(pygit2.RemoteCallbacks):
    def __init__(self, repo: config.Repo, *, deadline: float) -> None:
        super().__init__()
        self._repo = repo
        self._deadline = deadline

    def _check_deadline(self) -> None:
        if time.monotonic() > self._deadline:
            raise _DeadlinePassed

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
            return _known_host(self._repo.known_hosts_file, host, certificate)
        raise errors.RepoError(
            f"repo {self._repo.name}: cannot verify host {host!r}; for ssh set knownHostsFile"
        )


def _known_host(path: str, host: bytes | str, certificate: object) -> bool:
    """Accept an ssh host key only when known_hosts lists it for this host."""
    name = host.decode() if isinstance(host, bytes) else host
    raw = getattr(certificate, "raw", None) or getattr(certificate, "hostkey", None)
    try:
        lines = pathlib.Path(path).read_text().splitlines()
    except OSError:
        return False
    for line in lines:
        parts = line.split()
        if len(parts) >= 3 and name in parts[0].split(","):
            try:
                if raw is not None and base64.b64decode(parts[2]) == raw:
                    return True
            except ValueError:
                continue
    return False


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
        return (self._work_base or process_work_dir()) / self.spec.name

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
        timeouts = _timeouts
        deadline = time.monotonic() + timeouts.total
        url = self.spec.url
        with self._lock:
            self._open()  # creates the bare directory on first use
        lock = _fetch_lock(self.bare)
        if not lock.acquire(timeout=timeouts.total):
            raise errors.RepoError(
                f"repo {self.spec.name}: an earlier fetch from {redact(url)} is still running "
                f"after {_seconds(timeouts.total)}; the last fetched revision stays"
            )
        try:
            pygit2.settings.server_connect_timeout = int(timeouts.connect * 1000)
            pygit2.settings.server_timeout = int(timeouts.io * 1000)
            _drop_stale_locks(self.bare, older_than=2 * timeouts.total)
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
                callbacks=_Callbacks(self.spec, deadline=deadline),
                prune=pygit2.enums.FetchPrune.PRUNE,
            )
        except _DeadlinePassed:
            raise errors.RepoError(self._too_slow(timeouts)) from None
        except (pygit2.GitError, KeyError, OSError) as e:
            message = str(e).replace(url, redact(url))
            raise errors.RepoError(self._fetch_failed(message, timeouts)) from None
        for ref in (f"refs/remotes/origin/{self.spec.branch}", f"refs/tags/{self.spec.branch}"):
            found = git.references.get(ref)
            if found is not None:
                return str(found.peel(pygit2.Commit).id)
        raise errors.RepoError(
            f"repo {self.spec.name}: no branch or tag {self.spec.branch!r} at {redact(url)}"
        )

    def _fetch_failed(self, message: str, timeouts: Timeouts) -> str:
        """What a failed fetch says: a timeout names the limit it ran into."""
        url = redact(self.spec.url)
        lowered = message.lower()
        # libgit2 says "timed out" (sockets, ssh) or, through OpenSSL on a socket whose
        # read timed out, "resource temporarily unavailable" (EAGAIN)
        if "timed out" in lowered or "temporarily unavailable" in lowered:
            if lowered.startswith("failed to connect"):
                return (
                    f"repo {self.spec.name}: could not connect to {url} within "
                    f"{_seconds(timeouts.connect)}; the last fetched revision stays ({message})"
                )
            return (
                f"repo {self.spec.name}: no answer from {url} within {_seconds(timeouts.io)}; "
                f"the last fetched revision stays ({message})"
            )
        return f"repo {self.spec.name}: fetch from {url} failed: {message}"

    def _too_slow(self, timeouts: Timeouts) -> str:
        return (
            f"repo {self.spec.name}: fetch from {redact(self.spec.url)} did not finish within "
            f"{_seconds(timeouts.total)}; the last fetched revision stays"
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
                c.message.strip().splitlines()[0] if c.message.strip() else "",
                c.author.name,
                c.commit_time,
            )

    def read(self, sha: str, path: str) -> str | None:
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
        that leads outside it."""
        with self._lock, _checkout_lock(self.work):
            git = self._open()
            base = self.work
            if self._work_base is not None:
                self._work_base.mkdir(mode=0o700, parents=True, exist_ok=True)
            base.mkdir(mode=0o700, exist_ok=True)
            dest = base / sha
            marker = base / f"{sha}.links"
            if dest.is_dir() and marker.exists():
                known = tuple(x for x in marker.read_text().splitlines() if x)
                return Checkout(dest, known)
            tmp = base / f".{sha}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(mode=0o700)
            refused: list[str] = []
            _export(git, git[sha].peel(pygit2.Commit).tree, tmp, "", refused)
            refused += drop_escaping_links(tmp)
            refused = sorted(set(refused))
            shutil.rmtree(dest, ignore_errors=True)
            tmp.rename(dest)
            marker.write_text("\n".join(refused) + "\n")
            self._prune_checkouts(keep=sha)
            return Checkout(dest, tuple(refused))

    def _prune_checkouts(self, keep: str) -> None:
        base = self.work
        dirs = sorted(
            (d for d in base.iterdir() if d.is_dir() and not d.name.startswith(".")),
            key=lambda d: d.stat().st_mtime,
        )
        for d in dirs[:-_CHECKOUTS_KEPT]:
            if d.name != keep:
                shutil.rmtree(d, ignore_errors=True)
                (base / f"{d.name}.links").unlink(missing_ok=True)

    async def afetch(self) -> str:
        """`fetch` in a thread of its own that this coroutine stops waiting for after the
        `total` deadline (or when cancelled, as on SIGTERM): the thread then ends by itself
        within libgit2's timeouts, and nobody waits for it, not even the interpreter's exit."""
        timeouts = _timeouts
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
            raise errors.RepoError(self._too_slow(timeouts)) from None

    async def acheckout(self, sha: str) -> Checkout:
        return await asyncio.to_thread(self.checkout, sha)

    async def atree_key(self, sha: str, paths: list[str]) -> str:
        return await asyncio.to_thread(self.tree_key, sha, paths)


def _drop_stale_locks(bare: pathlib.Path, *, older_than: float) -> None:
    """Remove ref and config locks older than any fetch can take: their fetch died with its
    process, and libgit2 would refuse every later fetch ("failed to lock file")."""
    now = time.time()
    candidates = [bare / "packed-refs.lock", bare / "config.lock", bare / "FETCH_HEAD.lock"]
    candidates += (bare / "refs").rglob("*.lock") if (bare / "refs").is_dir() else []
    for path in candidates:
        try:
            if now - path.lstat().st_mtime > older_than:
                path.unlink()
        except FileNotFoundError:
            continue


def _inside(real: str, root: str) -> bool:
    return real == root or real.startswith(root.rstrip(os.sep) + os.sep)


def drop_escaping_links(root: pathlib.Path) -> list[str]:
    """Remove every symlink under `root` that resolves (physically, through other links)
    outside it, until none is left; return their paths relative to `root`.

    realpath follows links the way the kernel will, so what stays resolves inside `root`
    or nowhere at all (a dangling link stays dangling: nothing is ever added to a checkout)."""
    real_root = os.path.realpath(root)
    dropped: list[str] = []
    changed = True
    while changed:
        changed = False
        for dirpath, dirnames, filenames in os.walk(root):  # links are listed, not followed
            for name in dirnames + filenames:
                path = os.path.join(dirpath, name)
                if os.path.islink(path) and not _inside(os.path.realpath(path), real_root):
                    os.unlink(path)
                    dropped.append(os.path.relpath(path, root).replace(os.sep, "/"))
                    changed = True
    return dropped


MAX_READ = 1024 * 1024  # a single file read from Git directly (fleet.yaml)
MAX_EXPORT_ENTRIES = 100_000  # files, directories and links in one checkout
MAX_EXPORT_BYTES = 512 * 1024 * 1024  # all files of one checkout together
MAX_EXPORT_BLOB = 64 * 1024 * 1024  # one file
MAX_EXPORT_DEPTH = 64


@dataclasses.dataclass
class _Plan:
    """What a commit's tree will become on disk, checked before anything is written."""

    dirs: list[str] = dataclasses.field(default_factory=list)
    files: list[tuple[str, pygit2.Oid, bool]] = dataclasses.field(default_factory=list)
    links: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    bytes: int = 0


def _too_big(what: str) -> errors.RenderError:
    return errors.RenderError(
        f"the commit's tree {what}; refused (keep large or generated files out of the repo "
        "fleetops renders from)"
    )


def _plan(
    git: pygit2.Repository, tree: pygit2.Tree, prefix: str, refused: list[str], plan: _Plan
) -> None:
    """Walk `tree` into `plan`: bounded in entries, depth and bytes (sizes come from object
    headers, so a huge blob is refused unread), and refusing names that are not one plain
    file name, or that stand twice in one tree (a hand-made tree could otherwise write
    through a link it created itself)."""
    if prefix.count("/") > MAX_EXPORT_DEPTH:
        raise _too_big(f"is nested deeper than {MAX_EXPORT_DEPTH} levels at {prefix!r}")
    seen: set[str] = set()
    for entry in tree:
        name = str(entry.name)
        rel = f"{prefix}{name}"
        if name in ("", ".", "..", ".git") or "/" in name or "\0" in name:
            refused.append(rel)  # a hand-made tree entry naming no file inside the checkout
            continue
        if name in seen:
            raise errors.RenderError(
                f"the commit's tree lists {rel!r} twice (a hand-made tree); refused"
            )
        seen.add(name)
        if len(plan.dirs) + len(plan.files) + len(plan.links) >= MAX_EXPORT_ENTRIES:
            raise _too_big(f"has more than {MAX_EXPORT_ENTRIES} entries")
        mode = entry.filemode
        if mode == pygit2.enums.FileMode.TREE:
            sub = git[entry.id]
            assert isinstance(sub, pygit2.Tree)
            plan.dirs.append(rel)
            _plan(git, sub, f"{rel}/", refused, plan)
        elif mode == pygit2.enums.FileMode.LINK:
            _, size = git.odb.read_header(entry.id)
            if size > 4096:
                refused.append(rel)
                continue
            blob = git[entry.id]
            assert isinstance(blob, pygit2.Blob)
            target = blob.data.decode(errors="replace")
            resolved = os.path.normpath(os.path.join(os.path.dirname(rel), target))
            if os.path.isabs(target) or resolved == ".." or resolved.startswith("../"):
                refused.append(rel)
                continue
            plan.links.append((rel, target))
        elif mode in (pygit2.enums.FileMode.BLOB, pygit2.enums.FileMode.BLOB_EXECUTABLE):
            _, size = git.odb.read_header(entry.id)
            if size > MAX_EXPORT_BLOB:
                refused.append(rel)  # too large to render; an app that uses it is told
                continue
            plan.bytes += size
            if plan.bytes > MAX_EXPORT_BYTES:
                raise _too_big(f"holds more than {MAX_EXPORT_BYTES // 2**20} MiB of files")
            plan.files.append((rel, entry.id, mode == pygit2.enums.FileMode.BLOB_EXECUTABLE))
        # submodules (FileMode.COMMIT) are not followed


def _export(
    git: pygit2.Repository, tree: pygit2.Tree, dest: pathlib.Path, prefix: str, refused: list[str]
) -> None:
    """Write the commit's tree under `dest`: directories, then files (created anew, never
    through a link), then links last, so nothing is ever written through a link."""
    plan = _Plan()
    _plan(git, tree, prefix, refused, plan)
    for rel in plan.dirs:
        os.mkdir(dest / rel, 0o755)
    for rel, oid, executable in plan.files:
        blob = git[oid]
        assert isinstance(blob, pygit2.Blob)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        fd = os.open(dest / rel, flags, 0o755 if executable else 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(blob.data)
    for rel, target in plan.links:
        os.symlink(target, dest / rel)
