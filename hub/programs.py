"""Finding the renderer programs (helm, kustomize) the hub runs: an explicit path when the
operator gives one, else the first on PATH, else the one `make setup` built into the cache
($FLEETOPS_CACHE/bin, by default ~/.cache/fleetops/bin). When none is there, say where it looked.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import shutil


def cache_bin() -> pathlib.Path:
    """Where `make setup` puts the pinned binaries."""
    cache = os.environ.get("FLEETOPS_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "fleetops"
    )
    return pathlib.Path(cache) / "bin"


@dataclasses.dataclass(frozen=True)
class Found:
    """A program: its path when found, else where it was looked for."""

    name: str
    path: str
    looked: tuple[str, ...] = ()

    @property
    def missing(self) -> str:
        """One line for an operator when the program was not found, else ""."""
        if self.path:
            return ""
        return (
            f"{self.name} was found neither {' nor '.join(self.looked)}: install it, run "
            f"`make setup` in a fleetops checkout, or pass --{self.name} PATH"
        )


def find(name: str, *, explicit: str = "") -> Found:
    """`explicit` (a path or a name on PATH) when given; else PATH, then the setup cache."""
    if explicit:
        path = shutil.which(explicit)
        return Found(name, path or "", looked=() if path else (f"at --{name} {explicit}",))
    on_path = shutil.which(name)
    if on_path:
        return Found(name, on_path)
    cached = cache_bin() / name
    if os.access(cached, os.X_OK) and cached.is_file():
        return Found(name, str(cached))
    return Found(name, "", looked=("on PATH", f"in {cached.parent}"))
