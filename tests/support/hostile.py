"""What a hostile repository committer can write, for the tests that play the attack.

`Repo` is a real Git repository (the git CLI, as a committer would use it) holding files and
symlinks, fetched and checked out by the hub's own `repo.RepoCache`. `chain_to` builds the
symlink chain that is lexically inside a repository and physically anywhere: a link
`hop -> <repo root>` is used again and again, each use adding path components that a
lexical normalisation cancels with `..` while the kernel climbs from the repo root.
`bomb` is the billion-laughs alias bomb; `within` guards a call that, if the defence
failed, would hang or exhaust memory instead of failing.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import threading
from collections.abc import Callable
from typing import TypeVar

from fleetops.hub import config, repo

T = TypeVar("T")

SECRET = "HUB-PRIVATE-KEY-MATERIAL-7f3a9c"  # what the hub's own files hold in these tests


def git(work: pathlib.Path, *args: str) -> str:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(work),
        "GIT_AUTHOR_NAME": "mallory",
        "GIT_AUTHOR_EMAIL": "mallory@example.invalid",
        "GIT_COMMITTER_NAME": "mallory",
        "GIT_COMMITTER_EMAIL": "mallory@example.invalid",
    }
    res = subprocess.run(
        ["git", "-C", str(work), *args], capture_output=True, text=True, env=env, check=False
    )
    assert res.returncode == 0, f"git {' '.join(args)} failed: {res.stderr}"
    return res.stdout.strip()


class Repo:
    """A committer's work tree; `commit` makes a commit the hub can fetch by file:// URL."""

    def __init__(self, path: pathlib.Path) -> None:
        self.work = path
        path.mkdir(parents=True)
        git(path, "init", "-q", "-b", "main")

    @property
    def url(self) -> str:
        return f"file://{self.work}"

    def write(self, rel: str, text: str) -> None:
        path = self.work / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    def link(self, rel: str, target: str) -> None:
        path = self.work / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, path)

    def commit(self, message: str = "hostile commit") -> str:
        git(self.work, "add", "-A")
        git(self.work, "commit", "-q", "-m", message)
        return git(self.work, "rev-parse", "HEAD")

    def checkout(
        self, data: pathlib.Path, *, name: str = "platform", work: pathlib.Path | None = None
    ) -> repo.Checkout:
        """Fetch and check out the head the way the hub does, with its data dir at `data`."""
        spec = config.Repo(name=name, url=self.url, branch="main")
        cache = repo.RepoCache(data / "repos" / name, spec, work=work)
        return cache.checkout(cache.fetch())


def commit_escaping_tree(repo: Repo, name: str, text: str, *, levels: int) -> str:
    """Commit a tree Git's own commands would never make but a hostile server can serve:
    `name` inside `levels` nested directories each called `..` (made with `git mktree`)."""
    blob = subprocess.run(
        ["git", "-C", str(repo.work), "hash-object", "-w", "--stdin"],
        input=text, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    entry = f"100644 blob {blob}\t{name}\n"
    for _ in range(levels):
        tree = subprocess.run(
            ["git", "-C", str(repo.work), "mktree"],
            input=entry, capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        entry = f"040000 tree {tree}\t..\n"
    top = subprocess.run(
        ["git", "-C", str(repo.work), "mktree"],
        input=entry + f"100644 blob {blob}\tok.yaml\n", capture_output=True, text=True,
        check=True,
    ).stdout.strip()  # fmt: skip
    commit = git(repo.work, "commit-tree", top, "-m", "hand-made tree")
    git(repo.work, "update-ref", "refs/heads/main", commit)
    return commit


def chain_to(link: str, hop: str, absolute: pathlib.Path, *, hops: int = 12) -> str:
    """A target for the symlink at repo path `link` that reaches `absolute` through the
    symlink at repo path `hop` (which points at the repository root).

    Lexically it stays inside the repository: each `hop` adds its components and the `..`
    that follow take exactly as many away. The kernel resolves every `hop` to the root, so
    the same `..` climb out of it, up to `/`, and go on to `absolute`."""
    via = os.path.relpath(hop, os.path.dirname(link) or ".")
    width = len(pathlib.PurePosixPath(hop).parts)
    target = "/".join([via, *[hop] * hops, *[".."] * (width * (hops + 1)), str(absolute)[1:]])
    lexical = os.path.normpath(os.path.join(os.path.dirname(link), target))
    assert not lexical.startswith("..") and not os.path.isabs(lexical), lexical
    return target


def root_hop(hop: str) -> str:
    """The target that makes the symlink at repo path `hop` point at the repository root."""
    return os.path.relpath(".", os.path.dirname(hop) or ".")


def hub_data(tmp: pathlib.Path) -> pathlib.Path:
    """A hub data directory holding files a committer must never read."""
    data = tmp / "data"
    data.mkdir(mode=0o700)
    (data / "ca.key").write_text(f"-----BEGIN PRIVATE KEY-----\n{SECRET}\n")
    (data / "tokens").mkdir()
    (data / "tokens" / "operator").write_text(f"{SECRET}-token\n")
    return data


def bomb(levels: int = 9) -> str:
    """The billion-laughs document: about 400 bytes standing for 10**levels strings."""
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        refs = ",".join([f"*a{i - 1}"] * 10)
        lines.append(f"a{i}: &a{i} [{refs}]")
    return "\n".join(lines) + "\n"


def within(seconds: float, what: str, call: Callable[[], T]) -> T:
    """`call()`'s result, or a test failure when it has not returned after `seconds` (the
    thread is left behind: it is what an unrefused bomb would do to the hub)."""
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["value"] = call()
        except BaseException as e:  # re-raised in the test's thread
            box["error"] = e

    thread = threading.Thread(target=run, daemon=True, name=f"guard: {what}")
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise AssertionError(f"{what} did not return within {seconds:.0f} s")
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]
