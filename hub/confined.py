"""One render's view of a checkout: every repository file a renderer reads, read confined.

A repository committer writes everything in a checkout and must never lead a renderer to the
hub's own files. So every file the renderers read goes through `Source.read_bytes`: its real
path (symlinks resolved) must be inside the checkout, it must be a regular file and under a
size cap; otherwise a RenderError names the repo-relative path. YAML goes through the bounded
loader (proto.yamlsafe): an alias bomb is a RenderError.

A Source also records what the render depended on (`depends_on`, and every file it reads),
so the renderer can hand the hub's render cache the repo paths whose Git trees decide the
output, without anyone walking the checkout a second time. It never runs a program: that is
hub.sandbox.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import pathlib
import stat
from typing import Any

import yaml

from fleetops.hub import errors
from fleetops.proto import yamlsafe


@dataclasses.dataclass(frozen=True)
class Limits:
    timeout: float = 60.0
    max_output: int = 32 * 1024 * 1024
    max_file: int = 16 * 1024 * 1024  # any one file read from the repository
    max_chart: int = 64 * 1024 * 1024  # all the files of one Helm chart copy
    max_chart_entries: int = 20_000  # files and directories of one Helm chart copy
    max_memory: int = 2 * 1024 * 1024 * 1024  # data segment of a helm or kustomize process


DEFAULT_LIMITS = Limits()


def _is_inside(root: pathlib.Path, real: str) -> bool:
    return real == str(root) or real.startswith(str(root).rstrip("/") + "/")


def refused_under(refused: tuple[str, ...], rel: str) -> list[str]:
    """The refused links (repo paths) at or under the repo path `rel`."""
    prefix = f"{rel.strip('/')}/" if rel.strip("/") else ""
    return [link for link in refused if link.startswith(prefix)]


@dataclasses.dataclass
class Source:
    """A checkout as one render sees it: `root` is the resolved checkout directory,
    `refused_links` the repo paths the checkout left out (hub.checkout)."""

    root: pathlib.Path
    refused_links: tuple[str, ...] = ()
    limits: Limits = DEFAULT_LIMITS
    _inputs: set[str] = dataclasses.field(default_factory=set, init=False, repr=False)

    @classmethod
    def of(
        cls, checkout: pathlib.Path, *, refused_links: tuple[str, ...], limits: Limits
    ) -> Source:
        return cls(pathlib.Path(os.path.realpath(checkout)), refused_links, limits)

    def rel(self, path: pathlib.Path | str) -> str:
        """A path as the user knows it: relative to the repository (lexically, links
        unresolved)."""
        rel = os.path.relpath(path, self.root)
        return "." if rel == "." else rel.replace(os.sep, "/")

    # ------------------------------------------------------------ what the render read

    def depends_on(self, real: pathlib.Path) -> None:
        """Record that the output depends on `real` (a resolved path inside the checkout)
        and everything under it."""
        rel = os.path.relpath(real, self.root)
        if rel == "." or not rel.startswith(".."):
            self._inputs.add("" if rel == "." else rel.replace(os.sep, "/"))

    def inputs(self) -> tuple[str, ...]:
        """The repo paths recorded, sorted, leaving out any under another one ("" is the
        whole repository)."""
        if "" in self._inputs:
            return ("",)
        kept: list[str] = []
        for path in sorted(self._inputs):
            if not any(path.startswith(k + "/") for k in kept):
                kept.append(path)
        return tuple(kept)

    # ------------------------------------------------------------ confinement

    def checked(self, path: pathlib.Path, what: str = "") -> pathlib.Path:
        """The real location of `path` (a path under the root), or a RenderError naming
        its repo path when it resolves outside the repository."""
        real = os.path.realpath(path)
        if not _is_inside(self.root, real):
            raise errors.RenderError(
                f"{what + ' ' if what else ''}{self.rel(path)!r} resolves outside the "
                "repository; refused (replace the symlink with the file itself)"
            )
        return pathlib.Path(real)

    def inside(self, rel: str, *, what: str) -> pathlib.Path:
        """`root/rel`, resolved, or a RenderError when it leaves the root."""
        real = os.path.realpath(self.root / rel)
        if not _is_inside(self.root, real):
            raise errors.RenderError(f"{what} {rel!r} resolves outside the repository; refused")
        return pathlib.Path(real)

    def refused_under(self, rel: str) -> list[str]:
        return refused_under(self.refused_links, rel)

    def read_bytes(self, path: pathlib.Path) -> bytes:
        """The one way a renderer reads a repository file: checked inside the root, a
        regular file, at most `limits.max_file` bytes; recorded as an input."""
        real = self.checked(path)
        try:
            fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError as e:
            raise errors.RenderError(f"{self.rel(path)}: cannot read: {e.strerror}") from None
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise errors.RenderError(f"{self.rel(path)}: not a regular file; refused")
            data = f.read(self.limits.max_file + 1)
        if len(data) > self.limits.max_file:
            raise errors.RenderError(
                f"{self.rel(path)}: over the {self.limits.max_file}-byte limit for one file; "
                "split it"
            )
        self.depends_on(real)
        return data

    def read_text(self, path: pathlib.Path) -> str:
        try:
            return self.read_bytes(path).decode()
        except UnicodeDecodeError:
            raise errors.RenderError(f"{self.rel(path)}: not UTF-8 text") from None

    def load_yaml(self, path: pathlib.Path, text: str) -> list[Any]:
        """Every document of a repository file, through the bounded loader; a syntax error
        raises yaml.YAMLError, an alias bomb or the like a RenderError naming the file."""
        try:
            return yamlsafe.load_all(text, source=self.rel(path))
        except yamlsafe.YAMLLimitError as e:
            raise errors.RenderError(str(e)) from None

    def bounded(self, path: pathlib.Path, text: str) -> None:
        """Refuse an alias bomb in a file another program parses (helm, kustomize); its
        syntax is that program's to judge."""
        try:
            self.load_yaml(path, text)
        except yaml.YAMLError:
            pass

    def refuse_escaping_links(self, top: pathlib.Path) -> None:
        """A RenderError for the first symlink under `top` that resolves outside the
        repository (the checkout already removed such links; this holds for any directory)
        or that loops. A dangling link is left alone: it stands for nothing."""
        for dirpath, dirnames, filenames in os.walk(top):
            for name in sorted(dirnames + filenames):
                path = pathlib.Path(dirpath, name)
                if path.is_symlink():
                    self.checked(path, "symlink")
                    try:
                        path.stat()
                    except OSError as e:
                        if e.errno == errno.ELOOP:
                            raise errors.RenderError(
                                f"symlink {self.rel(path)!r} is a loop (or a chain of links "
                                "too long to follow); refused"
                            ) from None
