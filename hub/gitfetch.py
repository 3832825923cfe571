"""The rules of a Git fetch that need no Git library: deadlines, messages, host keys, locks.

`Timeouts` are the process's fetch deadlines (hub.repo hands the first two to libgit2, which
keeps them per process); `fetch_failed` and `too_slow` say what went wrong in words that name
the limit and never the URL's credentials (`redact`); `known_host` checks an ssh host key
against a known_hosts file; `drop_stale_locks` removes ref locks a dead fetch left. Never
imports pygit2 (hub.repo is the only module that does) and never touches the network.
"""

from __future__ import annotations

import base64
import dataclasses
import pathlib
import re
import time

from fleetops.hub import config


@dataclasses.dataclass(frozen=True)
class Timeouts:
    """Seconds a fetch may take: to connect, per read or write, and in all."""

    connect: float = 10.0
    io: float = 30.0
    total: float = 300.0


DEFAULT_TIMEOUTS = Timeouts()
_timeouts = DEFAULT_TIMEOUTS


def current() -> Timeouts:
    """The timeouts fetches of this process use now."""
    return _timeouts


def set_timeouts(timeouts: Timeouts) -> Timeouts:
    """Use `timeouts` for every fetch of this process from now on; returns the previous ones."""
    global _timeouts
    if min(timeouts.connect, timeouts.io, timeouts.total) <= 0:
        raise ValueError(f"fetch timeouts must be positive: {timeouts}")
    previous, _timeouts = _timeouts, timeouts
    return previous


def seconds(value: float) -> str:
    return f"{value:g} s"


def redact(url: str) -> str:
    """A URL fit for logs and the TUI: no user info."""
    return re.sub(r"^(\w+://)[^@/]+@", r"\1", url)


def known_host(path: str, host: bytes | str, certificate: object) -> bool:
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


def drop_stale_locks(bare: pathlib.Path, *, older_than: float) -> None:
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


def fetch_failed(spec: config.Repo, *, message: str, timeouts: Timeouts) -> str:
    """What a failed fetch says: a timeout names the limit it ran into."""
    url = redact(spec.url)
    lowered = message.lower()
    # libgit2 says "timed out" (sockets, ssh) or, through OpenSSL on a socket whose
    # read timed out, "resource temporarily unavailable" (EAGAIN)
    if "timed out" in lowered or "temporarily unavailable" in lowered:
        if lowered.startswith("failed to connect"):
            return (
                f"repo {spec.name}: could not connect to {url} within "
                f"{seconds(timeouts.connect)}; the last fetched revision stays ({message})"
            )
        return (
            f"repo {spec.name}: no answer from {url} within {seconds(timeouts.io)}; "
            f"the last fetched revision stays ({message})"
        )
    return f"repo {spec.name}: fetch from {url} failed: {message}"


def too_slow(spec: config.Repo, *, timeouts: Timeouts) -> str:
    return (
        f"repo {spec.name}: fetch from {redact(spec.url)} did not finish within "
        f"{seconds(timeouts.total)}; the last fetched revision stays"
    )
