"""Git tracking: a bare cache per repo, fetched with pygit2; the only module importing pygit2.

`RepoCache.fetch` brings the branch up to date and returns its head commit; a failed fetch
raises RepoError and leaves the cache (and the last good revision) as it was. `export` writes
one commit's tree to a directory for the renderers, refusing symlinks that leave the
repository (they are recorded, never created), so a renderer cannot read outside it.
Credentials come from environment variables named in hub.yaml and never appear in errors.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import os
import pathlib
import re
import shutil
import threading

import pygit2

from hub import config, errors

_CHECKOUTS_KEPT = 6


@dataclasses.dataclass(frozen=True)
class Commit:
    sha: str
    message: str
    author: str
    time: int


@dataclasses.dataclass(frozen=True)
class Checkout:
    root: pathlib.Path
    refused_links: tuple[str, ...]  # repo paths of symlinks that point outside the repo


def redact(url: str) -> str:
    """A URL fit for logs and the TUI: no user info."""
    return re.sub(r"^(\w+://)[^@/]+@", r"\1", url)


class _Callbacks(pygit2.RemoteCallbacks):
    def __init__(self, repo: config.Repo) -> None:
        super().__init__()
        self._repo = repo

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
    """One repo: the bare cache under `root`, and checkouts of the commits being rendered."""

    def __init__(self, root: pathlib.Path, repo: config.Repo) -> None:
        self.root = root
        self.spec = repo
        self._lock = threading.Lock()
        self._git: pygit2.Repository | None = None

    def _open(self) -> pygit2.Repository:
        if self._git is None:
            bare = self.root / "git"
            if (bare / "HEAD").exists():
                self._git = pygit2.Repository(str(bare))
            else:
                bare.mkdir(parents=True, exist_ok=True)
                self._git = pygit2.init_repository(str(bare), bare=True)
        return self._git

    def fetch(self) -> str:
        """Fetch and return the head commit of the configured branch (or tag)."""
        with self._lock:
            git = self._open()
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
                    callbacks=_Callbacks(self.spec),
                    prune=pygit2.enums.FetchPrune.PRUNE,
                )
            except (pygit2.GitError, KeyError, OSError) as e:
                message = str(e).replace(url, redact(url))
                raise errors.RepoError(
                    f"repo {self.spec.name}: fetch from {redact(url)} failed: {message}"
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
        """The commit's files under root/checkouts/<sha> (made once, reused)."""
        with self._lock:
            dest = self.root / "checkouts" / sha
            marker = dest.parent / f"{sha}.links"
            if dest.is_dir() and marker.exists():
                known = tuple(x for x in marker.read_text().splitlines() if x)
                return Checkout(dest, known)
            tmp = dest.parent / f".{sha}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            git = self._open()
            refused: list[str] = []
            _export(git, git[sha].peel(pygit2.Commit).tree, tmp, "", refused)
            shutil.rmtree(dest, ignore_errors=True)
            tmp.rename(dest)
            marker.write_text("\n".join(refused) + "\n")
            self._prune_checkouts(keep=sha)
            return Checkout(dest, tuple(refused))

    def _prune_checkouts(self, keep: str) -> None:
        base = self.root / "checkouts"
        dirs = sorted(
            (d for d in base.iterdir() if d.is_dir() and not d.name.startswith(".")),
            key=lambda d: d.stat().st_mtime,
        )
        for d in dirs[:-_CHECKOUTS_KEPT]:
            if d.name != keep:
                shutil.rmtree(d, ignore_errors=True)
                (base / f"{d.name}.links").unlink(missing_ok=True)

    async def afetch(self) -> str:
        return await asyncio.to_thread(self.fetch)

    async def acheckout(self, sha: str) -> Checkout:
        return await asyncio.to_thread(self.checkout, sha)

    async def atree_key(self, sha: str, paths: list[str]) -> str:
        return await asyncio.to_thread(self.tree_key, sha, paths)


def _export(
    git: pygit2.Repository, tree: pygit2.Tree, dest: pathlib.Path, prefix: str, refused: list[str]
) -> None:
    for entry in tree:
        name = str(entry.name)
        path = dest / name
        rel = f"{prefix}{name}"
        mode = entry.filemode
        obj = git[entry.id]
        if mode == pygit2.enums.FileMode.TREE:
            assert isinstance(obj, pygit2.Tree)
            path.mkdir()
            _export(git, obj, path, f"{rel}/", refused)
        elif mode == pygit2.enums.FileMode.LINK:
            assert isinstance(obj, pygit2.Blob)
            target = obj.data.decode(errors="replace")
            resolved = os.path.normpath(os.path.join(os.path.dirname(rel), target))
            if os.path.isabs(target) or resolved == ".." or resolved.startswith("../"):
                refused.append(rel)
                continue
            os.symlink(target, path)
        elif mode in (pygit2.enums.FileMode.BLOB, pygit2.enums.FileMode.BLOB_EXECUTABLE):
            assert isinstance(obj, pygit2.Blob)
            path.write_bytes(obj.data)
            if mode == pygit2.enums.FileMode.BLOB_EXECUTABLE:
                path.chmod(0o755)
        # submodules (FileMode.COMMIT) are not followed
