"""Writing one commit's tree to disk for the renderers, bounded, with no way out of it.

A checkout is what a repository committer controls, so it must never lead a renderer to the
hub's own files, nor fill the hub's disk. This module plans the export from Git object
headers before writing anything (MAX_EXPORT_* caps entries, depth, bytes, one blob), writes
files anew (O_EXCL | O_NOFOLLOW, never through a link, links last), and then removes every
link that resolves outside the checkout, recording it in `Checkout.refused_links`:
- Checkouts live outside the hub's data directory (which holds the CA key, tokens and the
  store): in a private per-process directory (tempfile.mkdtemp, mode 0700) unless the caller
  names another `work` directory.
- No symlink in a checkout leads out of it. Links are refused lexically while exporting, and
  after the export every remaining link is resolved physically (realpath, the way the kernel
  will follow it, through other links) and removed when it lands outside the checkout; that
  repeats until nothing changes, since removing one link changes where others lead. A chain
  such as `d/l -> ..` with `d/leak.yaml -> l/../../ca.key` is lexically inside and physically
  outside: it is removed.
It reads Git only through the `Objects` protocol that hub.repo (the only module importing
pygit2) implements, and never fetches.
"""

from __future__ import annotations

import atexit
import dataclasses
import enum
import os
import pathlib
import shutil
import tempfile
import threading
from collections.abc import Iterable
from typing import Protocol

from fleetops.hub import errors

CHECKOUTS_KEPT = 6
MAX_EXPORT_ENTRIES = 100_000  # files, directories and links in one checkout
MAX_EXPORT_BYTES = 512 * 1024 * 1024  # all files of one checkout together
MAX_EXPORT_BLOB = 64 * 1024 * 1024  # one file
MAX_EXPORT_DEPTH = 64
MAX_LINK_TARGET = 4096  # bytes of one symlink's target


@dataclasses.dataclass(frozen=True)
class Checkout:
    root: pathlib.Path
    # repo paths of symlinks (and unsafe tree entries) that would lead outside the checkout;
    # they are not in `root`
    refused_links: tuple[str, ...]


class Kind(enum.Enum):
    TREE = "tree"
    FILE = "file"
    EXECUTABLE = "executable"
    LINK = "link"
    OTHER = "other"  # submodules: not followed


@dataclasses.dataclass(frozen=True)
class Entry:
    name: str
    kind: Kind
    oid: str  # hex object id


class Objects(Protocol):
    """The Git objects of one repository, as this module needs them."""

    def entries(self, tree: str) -> Iterable[Entry]:
        """The entries of the tree `tree` (hex id), in tree order."""
        ...

    def size(self, oid: str) -> int:
        """An object's size from its header, without reading it."""
        ...

    def data(self, oid: str) -> bytes:
        """A blob's bytes."""
        ...


_work_lock = threading.Lock()
_work: tuple[int, pathlib.Path] | None = None  # (pid, directory) of this process's checkouts
# One lock per checkout directory: two caches of one repo (a hub reloading its config, or
# two hubs in one process) must not build the same checkout at once.
_checkout_locks: dict[str, threading.Lock] = {}


def lock_for(base: pathlib.Path) -> threading.Lock:
    """The lock that guards building checkouts under `base`."""
    with _work_lock:
        return _checkout_locks.setdefault(str(base), threading.Lock())


def process_work_dir() -> pathlib.Path:
    """This process's private directory for checkouts (mode 0700, removed at exit)."""
    global _work
    with _work_lock:
        if _work is None or _work[0] != os.getpid():
            path = pathlib.Path(tempfile.mkdtemp(prefix="fleetops-hub-work-"))
            atexit.register(shutil.rmtree, path, ignore_errors=True)
            _work = (os.getpid(), path)
        return _work[1]


def materialize(objects: Objects, *, tree: str, base: pathlib.Path, name: str) -> Checkout:
    """The tree `tree` under base/name (made once, reused, call with `lock_for(base)` held),
    with no symlink in it that leads outside it; older checkouts beyond the last
    CHECKOUTS_KEPT are removed."""
    dest = base / name
    marker = base / f"{name}.links"
    if dest.is_dir() and marker.exists():
        known = tuple(x for x in marker.read_text().splitlines() if x)
        return Checkout(dest, known)
    tmp = base / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(mode=0o700)
    refused: list[str] = []
    export(objects, tree=tree, dest=tmp, refused=refused)
    refused += drop_escaping_links(tmp)
    refused = sorted(set(refused))
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    marker.write_text("\n".join(refused) + "\n")
    _prune(base, keep=name)
    return Checkout(dest, tuple(refused))


def _prune(base: pathlib.Path, *, keep: str) -> None:
    dirs = sorted(
        (d for d in base.iterdir() if d.is_dir() and not d.name.startswith(".")),
        key=lambda d: d.stat().st_mtime,
    )
    for d in dirs[:-CHECKOUTS_KEPT]:
        if d.name != keep:
            shutil.rmtree(d, ignore_errors=True)
            (base / f"{d.name}.links").unlink(missing_ok=True)


def _inside(real: str, *, root: str) -> bool:
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
                if os.path.islink(path) and not _inside(os.path.realpath(path), root=real_root):
                    os.unlink(path)
                    dropped.append(os.path.relpath(path, root).replace(os.sep, "/"))
                    changed = True
    return dropped


@dataclasses.dataclass
class _Plan:
    """What a commit's tree will become on disk, checked before anything is written."""

    dirs: list[str] = dataclasses.field(default_factory=list)
    files: list[tuple[str, str, bool]] = dataclasses.field(default_factory=list)
    links: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    bytes: int = 0


def _too_big(what: str) -> errors.RenderError:
    return errors.RenderError(
        f"the commit's tree {what}; refused (keep large or generated files out of the repo "
        "fleetops renders from)"
    )


def _plan(objects: Objects, *, tree: str, prefix: str, refused: list[str], plan: _Plan) -> None:
    """Walk `tree` into `plan`: bounded in entries, depth and bytes (sizes come from object
    headers, so a huge blob is refused unread), and refusing names that are not one plain
    file name, or that stand twice in one tree (a hand-made tree could otherwise write
    through a link it created itself)."""
    if prefix.count("/") > MAX_EXPORT_DEPTH:
        raise _too_big(f"is nested deeper than {MAX_EXPORT_DEPTH} levels at {prefix!r}")
    seen: set[str] = set()
    for entry in objects.entries(tree):
        name = entry.name
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
        if entry.kind is Kind.TREE:
            plan.dirs.append(rel)
            _plan(objects, tree=entry.oid, prefix=f"{rel}/", refused=refused, plan=plan)
        elif entry.kind is Kind.LINK:
            if objects.size(entry.oid) > MAX_LINK_TARGET:
                refused.append(rel)
                continue
            target = objects.data(entry.oid).decode(errors="replace")
            resolved = os.path.normpath(os.path.join(os.path.dirname(rel), target))
            if os.path.isabs(target) or resolved == ".." or resolved.startswith("../"):
                refused.append(rel)
                continue
            plan.links.append((rel, target))
        elif entry.kind in (Kind.FILE, Kind.EXECUTABLE):
            size = objects.size(entry.oid)
            if size > MAX_EXPORT_BLOB:
                refused.append(rel)  # too large to render; an app that uses it is told
                continue
            plan.bytes += size
            if plan.bytes > MAX_EXPORT_BYTES:
                raise _too_big(f"holds more than {MAX_EXPORT_BYTES // 2**20} MiB of files")
            plan.files.append((rel, entry.oid, entry.kind is Kind.EXECUTABLE))
        # submodules (Kind.OTHER) are not followed


def export(objects: Objects, *, tree: str, dest: pathlib.Path, refused: list[str]) -> None:
    """Write the tree `tree` under `dest`: directories, then files (created anew, never
    through a link), then links last, so nothing is ever written through a link. Entries
    refused on the way are appended to `refused` (repo paths)."""
    plan = _Plan()
    _plan(objects, tree=tree, prefix="", refused=refused, plan=plan)
    for rel in plan.dirs:
        os.mkdir(dest / rel, 0o755)
    for rel, oid, executable in plan.files:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        fd = os.open(dest / rel, flags, 0o755 if executable else 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(objects.data(oid))
    for rel, target in plan.links:
        os.symlink(target, dest / rel)
