"""Image updates written back to Git: one commit per run, pushed as a fast-forward only.

`update` fetches a repo's branch into a bare cache of its own, rewrites the setter markers
(hub.imagemarkers) in the `.yaml`/`.yml` files under the configured paths, builds ONE commit on
the fetched head that replaces only the changed blobs, and pushes it. It must never:
- force a push (every push refspec is `src:dst`, never `+src:dst`): when the remote moved
  between our fetch and our push (someone else committed), it fetches again and rebuilds the
  commit on the new head, so their commit is kept, up to `attempts` times;
- make an empty commit (nothing changed: no commit, no push);
- follow a symlink, read a submodule, or read more than MAX_FILES files / MAX_FILE_BYTES per
  file / MAX_TOTAL_BYTES in all;
- put credentials in a message (URLs are redacted; tokens and keys come from hub.repo's
  credential callbacks, the same tokenEnv / sshKeyFile / knownHostsFile rules as fetches).

A review branch (`push_branch` other than `branch`) is created from the fetched `branch` head,
or fast-forwarded to a commit on it when the review branch is behind (an ancestor of) it. Flux
instead resets an existing push branch onto the checkout branch and force-pushes; we never
force, so when the review branch holds commits of its own (an earlier, unmerged update, or a
reviewer's fixup) the update is built on the review branch's head, as Flux does with its
GitForcePushBranch feature gate off: nothing there is lost, and an update already on it makes
no new commit. Merging or deleting the review branch lets the next run start from `branch`.

Problems in the files (a marker that cannot be rewritten, a file over a cap) are returned in
`Outcome.problems`, never raised; everything that stops the run is a `CommitError` naming the
repo, the branch and what to do. Blocking (pygit2): the hub calls it in a thread.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence

import pygit2

from fleetops.hub import config, errors, gitfetch, imagemarkers, repo

__all__ = [
    "DEFAULT_MESSAGE",
    "MAX_FILES",
    "Change",
    "CommitError",
    "Outcome",
    "Signature",
    "update",
]

MAX_FILES = 5000  # .yaml/.yml files looked at under `paths` in one run
MAX_FILE_BYTES = 8 * 1024 * 1024  # one file; a bigger one is skipped and reported
MAX_TOTAL_BYTES = 64 * 1024 * 1024  # all files read in one run
MAX_MESSAGE_CHANGES = 200  # `file: old -> new` lines in a commit message; the rest are counted
DEFAULT_MESSAGE = "Update container images\n\n{changes}"
MARKER = imagemarkers.KEY.encode()


class CommitError(errors.RepoError):
    """The image update was not committed or not pushed; the message names the repo, the
    branch and what to do. Nothing was force-pushed and the remote is as it was (or holds
    only commits other people pushed)."""


@dataclasses.dataclass(frozen=True)
class Signature:
    """Who the commit is by (author and committer)."""

    name: str
    email: str


@dataclasses.dataclass(frozen=True)
class Change:
    """One marked value rewritten: in `file` (repo path) at `line` (1-based)."""

    file: str
    line: int
    policy: str
    old: str
    new: str


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What a run did. `commit` is '' when nothing changed (then nothing was pushed and
    `pushed_to` is ''); `base` is the commit the update was built on (or looked at);
    `attempts` counts fetches (1 unless the remote moved under us)."""

    commit: str
    pushed_to: str
    changes: list[Change]
    problems: list[str]
    attempts: int
    base: str = ""


RaceHook = Callable[[int], None]

_locks_lock = threading.Lock()
_locks: dict[str, threading.Lock] = {}  # one run at a time per cache directory


def _lock(cache: pathlib.Path) -> threading.Lock:
    with _locks_lock:
        return _locks.setdefault(str(cache), threading.Lock())


class _Callbacks(repo.Callbacks):
    """hub.repo's credentials, host-key check and deadline, plus what a push reports."""

    def __init__(self, spec: config.Repo, *, deadline: float) -> None:
        super().__init__(spec, deadline=deadline)
        self.refused: dict[str, str] = {}

    def push_update_reference(self, refname: str, message: str) -> None:
        if message:
            self.refused[refname] = message

    def push_transfer_progress(
        self, objects_pushed: int, total_objects: int, bytes_pushed: int
    ) -> None:
        self._check_deadline()


@dataclasses.dataclass
class _Edit:
    files: dict[str, bytes]  # repo path -> new content
    changes: list[Change]
    problems: list[str]


@dataclasses.dataclass(frozen=True)
class _Job:
    """One run's settings, checked."""

    spec: config.Repo
    where: str  # "repo X, branch Y" for messages
    branch: str
    push_branch: str
    roots: tuple[str, ...]
    latest: Mapping[str, str]
    author: Signature
    message: str
    deadline: float


def update(
    spec: config.Repo,
    *,
    cache: pathlib.Path,
    branch: str,
    push_branch: str = "",
    paths: Sequence[str],
    latest: Mapping[str, str],
    author: Signature,
    message: str = "",
    deadline: float,
    attempts: int = 5,
    race_for_tests: RaceHook | None = None,
) -> Outcome:
    """Rewrite the markers under `paths` (files or folders; none = the whole repo) of
    `branch` with `latest` (policy -> `name:tag`), commit once and push to `push_branch`
    ('' = `branch`) as a fast-forward, by `deadline` (a `time.monotonic()` instant).
    `message` may hold `{changes}`. `race_for_tests` is called with the attempt number after
    the commit is built and before it is pushed; only tests pass it (to push a concurrent
    commit right then)."""
    push_branch = push_branch or branch
    where = f"repo {spec.name}, branch {branch}"
    if push_branch != branch:
        where += f" (pushing to {push_branch})"
    _check(where=where, branch=branch, push_branch=push_branch, author=author)
    roots = tuple(_root(p, where=where) for p in (paths or [""]))
    job = _Job(spec, where, branch, push_branch, roots, latest, author, message, deadline)
    lock = _lock(cache)
    if not lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
        raise CommitError(f"{where}: an earlier image update of this repo is still running")
    try:
        git = _open(cache)
        try:
            return _run(git, job, attempts=max(1, attempts), race=race_for_tests)
        finally:
            git.free()
    finally:
        lock.release()


def _run(git: pygit2.Repository, job: _Job, *, attempts: int, race: RaceHook | None) -> Outcome:
    seen: str | None = None  # the push branch's remote head when our last push was refused
    refusal = ""
    for attempt in range(1, attempts + 1):
        if time.monotonic() > job.deadline:
            raise CommitError(
                f"{job.where}: the deadline passed before attempt {attempt} could start; "
                "the next run tries again"
            )
        heads = _fetch(git, job)
        if job.branch not in heads:
            raise CommitError(
                f"{job.where}: no branch {job.branch!r} at {gitfetch.redact(job.spec.url)}; "
                "set the image update's branch to one that exists"
            )
        if seen is not None and heads.get(job.push_branch, "") == seen:
            raise CommitError(
                f"{job.where}: the server refused the push ({refusal}) and the branch has not "
                "moved; check that these credentials may push to it (branch protection, "
                "hooks), or push to a review branch"
            )
        base = _base(git, heads, branch=job.branch, push_branch=job.push_branch)
        edit = _edit(git, base, job)
        if not edit.changes:
            return Outcome("", "", [], edit.problems, attempt, base)
        sha = _commit(git, base, edit=edit, job=job)
        if race is not None:
            race(attempt)
        refused = _push(git, job, sha=sha)
        if not refused:
            return Outcome(sha, job.push_branch, edit.changes, edit.problems, attempt, base)
        seen, refusal = heads.get(job.push_branch, ""), refused
    raise CommitError(
        f"{job.where}: the push was refused on each of {attempts} attempts (last: {refusal}): "
        "others keep pushing, or the server refuses ours; nothing was forced, the next run "
        "tries again"
    )


_REF_NAME = re.compile(r"^[A-Za-z0-9._/-]{1,200}$")
_NAME_BAD = re.compile(r"[<>\x00-\x1f\x7f]")


def _check(*, where: str, branch: str, push_branch: str, author: Signature) -> None:
    for field, name in (("branch", branch), ("pushBranch", push_branch)):
        full = f"refs/heads/{name}"
        if name.startswith("refs/"):
            short = name.removeprefix("refs/heads/")
            raise CommitError(
                f"{where}: {field} {name[:200]!r} is a full ref; give the branch name ({short!r})"
            )
        if not _REF_NAME.match(name) or not pygit2.reference_is_valid_name(full):
            raise CommitError(f"{where}: {field} {name!r} is not a valid branch name; fix it")
    for field, value in (("author name", author.name), ("author email", author.email)):
        if not value.strip() or _NAME_BAD.search(value) or len(value) > 200:
            raise CommitError(
                f"{where}: {field} {value[:200]!r} cannot be written in a commit; use one "
                "line of at most 200 characters without < or >"
            )


def _root(path: str, *, where: str) -> str:
    """A repo path as a tree path ('' is the top); '..' would leave nothing sensible."""
    parts = [p for p in path.replace("\\", "/").split("/") if p not in ("", ".")]
    if ".." in parts:
        raise CommitError(f"{where}: path {path!r} has '..'; give a path inside the repo")
    return "/".join(parts)


def _open(cache: pathlib.Path) -> pygit2.Repository:
    if (cache / "HEAD").exists():
        return pygit2.Repository(str(cache))
    cache.mkdir(mode=0o700, parents=True, exist_ok=True)
    return pygit2.init_repository(str(cache), bare=True)


def _tracking(name: str) -> str:
    return f"refs/remotes/origin/{name}"


def _fetch(git: pygit2.Repository, job: _Job) -> dict[str, str]:
    """The remote heads of the branch and the push branch that exist (name -> SHA)."""
    spec, where = job.spec, job.where
    timeouts = gitfetch.current()
    pygit2.settings.server_connect_timeout = int(timeouts.connect * 1000)
    pygit2.settings.server_timeout = int(timeouts.io * 1000)
    gitfetch.drop_stale_locks(pathlib.Path(git.path), older_than=2 * timeouts.total)
    if "origin" in [r.name for r in git.remotes]:
        if git.remotes["origin"].url != spec.url:
            git.remotes.set_url("origin", spec.url)
    else:
        git.remotes.create("origin", spec.url)
    names = sorted({job.branch, job.push_branch})
    for name in names:  # a branch deleted on the remote must not live on here
        found = git.references.get(_tracking(name))
        if found is not None:
            found.delete()
    try:
        git.remotes["origin"].fetch(
            [f"+refs/heads/{n}:{_tracking(n)}" for n in names],
            callbacks=_Callbacks(spec, deadline=job.deadline),
        )
    except repo.DeadlinePassed:
        raise CommitError(f"{where}: the fetch did not finish by the deadline") from None
    except (pygit2.GitError, errors.RepoError, KeyError, OSError) as e:
        raise CommitError(
            f"{where}: fetch from {gitfetch.redact(spec.url)} failed: {_clean(e, spec)}; "
            "check the URL and the credentials (tokenEnv, sshKeyFile, knownHostsFile)"
        ) from None
    heads = {}
    for name in names:
        found = git.references.get(_tracking(name))
        if found is not None:
            heads[name] = str(found.peel(pygit2.Commit).id)
    return heads


def _clean(error: BaseException | str, spec: config.Repo) -> str:
    """An error's (or a server's) text on one bounded line, with the URL redacted."""
    text = _plain(" ".join(str(error).split())).replace(spec.url, gitfetch.redact(spec.url))
    return text if len(text) <= 300 else text[:299] + "…"


def _base(git: pygit2.Repository, heads: dict[str, str], *, branch: str, push_branch: str) -> str:
    """The commit to build on: the branch head, or a review branch's own head when that
    branch holds commits the branch does not (never reset: see the module docstring)."""
    head = heads[branch]
    review = heads.get(push_branch)
    if push_branch == branch or review is None or review == head:
        return head
    if git.descendant_of(head, review):
        return head  # the review branch is behind: fast-forward it onto the branch
    return review


def _edit(git: pygit2.Repository, base: str, job: _Job) -> _Edit:
    tree = git[base].peel(pygit2.Commit).tree
    edit = _Edit({}, [], [])
    files = _yaml_files(git, tree, roots=job.roots, problems=edit.problems)
    total = 0
    for path, oid in files:
        _, size = git.odb.read_header(oid)
        if size > MAX_FILE_BYTES:
            edit.problems.append(
                f"{_plain(path)}: {size} bytes, over the limit of {MAX_FILE_BYTES} bytes; "
                "not read (split it)"
            )
            continue
        total += size
        if total > MAX_TOTAL_BYTES:
            edit.problems.append(
                f"{_plain(path)} and later files not read: over {MAX_TOTAL_BYTES} bytes in all; "
                "narrow the paths"
            )
            break
        data = git[oid].read_raw()
        if MARKER not in data:
            continue
        text = data.decode("utf-8", errors="surrogateescape")
        result = imagemarkers.rewrite(text, job.latest)
        for m in result.problems:
            policy = f" (policy {m.policy})" if m.policy else ""
            edit.problems.append(f"{_plain(path)}:{m.line}{policy}: {m.problem}")
        if result.changes:
            edit.files[path] = result.text.encode("utf-8", errors="surrogateescape")
            edit.changes += [Change(path, c.line, c.policy, c.old, c.new) for c in result.changes]
    return edit


def _yaml_files(
    git: pygit2.Repository, tree: pygit2.Tree, *, roots: tuple[str, ...], problems: list[str]
) -> list[tuple[str, str]]:
    """(path, blob id) of the regular .yaml/.yml/Kustomization files under `roots`, at most
    MAX_FILES; symlinks and submodules are never followed."""
    found: dict[str, str] = {}
    for root in roots:
        if root:
            try:
                entry = tree[root]
            except KeyError:
                problems.append(f"path '{_plain(root)}' is not in the branch; fix the paths")
                continue
        else:
            entry = tree
        stack: list[tuple[str, pygit2.Object]] = [(root, entry)]
        while stack:
            path, obj = stack.pop()
            if isinstance(obj, pygit2.Tree):
                for child in obj:
                    name = f"{path}/{child.name}" if path else str(child.name)
                    stack.append((name, child))
                continue
            if obj.filemode not in (
                pygit2.enums.FileMode.BLOB,
                pygit2.enums.FileMode.BLOB_EXECUTABLE,
            ):
                continue  # a symlink or a submodule
            if not _yaml_name(path) or path in found:
                continue
            if len(found) >= MAX_FILES:
                problems.append(
                    f"more than {MAX_FILES} YAML files under the paths; the rest were not read "
                    "(narrow the paths)"
                )
                return sorted(found.items())
            found[path] = str(obj.id)
    return sorted(found.items())


def _yaml_name(path: str) -> bool:
    """A file Flux reads for markers: .yaml, .yml, or kustomize's `Kustomization`."""
    return path.endswith((".yaml", ".yml")) or path.rsplit("/", 1)[-1] == "Kustomization"


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _plain(text: str) -> str:
    """A repo path fit for one line of a message: control characters escaped."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _commit(git: pygit2.Repository, base: str, *, edit: _Edit, job: _Job) -> str:
    parent = git[base].peel(pygit2.Commit)
    index = pygit2.Index()
    index.read_tree(parent.tree)
    for path, data in edit.files.items():
        mode = index[path].mode
        index.add(pygit2.IndexEntry(path, git.create_blob(data), mode))
    tree = index.write_tree(git)
    who = pygit2.Signature(job.author.name, job.author.email)
    text = _message(job.message, edit.changes)
    return str(git.create_commit(None, who, who, text, tree, [parent.id]))


def _message(template: str, changes: list[Change]) -> str:
    lines = [f"{_plain(c.file)}: {c.old} -> {c.new}" for c in changes[:MAX_MESSAGE_CHANGES]]
    if len(changes) > MAX_MESSAGE_CHANGES:
        lines.append(f"... and {len(changes) - MAX_MESSAGE_CHANGES} more")
    text = (template if template.strip() else DEFAULT_MESSAGE).replace(
        "{changes}", "\n".join(lines)
    )
    return text if text.endswith("\n") else text + "\n"


def _push(git: pygit2.Repository, job: _Job, *, sha: str) -> str:
    """Push `sha` to the push branch without force; '' when it landed, else why it was
    refused."""
    spec, where = job.spec, job.where
    ref = f"refs/heads/{job.push_branch}"
    git.references.create(ref, sha, force=True)  # our cache's own ref; the remote's is not forced
    callbacks = _Callbacks(spec, deadline=job.deadline)
    try:
        git.remotes["origin"].push([f"{ref}:{ref}"], callbacks=callbacks)
    except repo.DeadlinePassed:
        raise CommitError(f"{where}: the push did not finish by the deadline") from None
    except pygit2.GitError as e:
        text = _clean(e, spec)
        if "fastforward" in text.replace("-", "") or "not present locally" in text:
            return text  # the remote moved since our fetch
        raise CommitError(
            f"{where}: push to {gitfetch.redact(spec.url)} failed: {text}; check that the "
            "credentials may push (a token with write access, a deploy key with write)"
        ) from None
    except (errors.RepoError, KeyError, OSError) as e:
        raise CommitError(
            f"{where}: push to {gitfetch.redact(spec.url)} failed: {_clean(e, spec)}; check "
            "the URL and the credentials (tokenEnv, sshKeyFile, knownHostsFile)"
        ) from None
    refused = callbacks.refused.get(ref, "")
    return _clean(refused, spec) if refused else ""
