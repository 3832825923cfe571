"""Running a renderer program (helm, kustomize) confined: the only place the hub starts one.

The program runs in a scratch directory (its cwd and HOME) with a scrubbed environment, no
network (every proxy points at a closed local port), a time limit, a memory limit (set from
outside on the running process) and an output size limit; it runs in a process group of its
own, killed as a whole when anything goes wrong. What it prints is shown with repo-relative
paths only: never the checkout's, the scratch directory's or any other path on the hub's disk.
This module never reads the repository itself: that is hub.confined.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import re
import resource
import selectors
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping

from fleetops.hub import errors, programs
from fleetops.hub.confined import Limits


@dataclasses.dataclass(frozen=True)
class Tools:
    """The renderer programs: names looked up on PATH, or paths."""

    helm: str = "helm"
    kustomize: str = "kustomize"


def scrubber(shown: Mapping[pathlib.Path, str], scratch: pathlib.Path) -> Callable[[str], str]:
    """A function that rewrites a renderer's message so that it names no path of the hub:
    known paths become what the user knows them as, anything else under the hub's temporary,
    working or home directories becomes `<hub>`."""
    pairs: list[tuple[str, str]] = []
    for path, name in [*shown.items(), (scratch, "<scratch>")]:
        for form in {str(path), os.path.realpath(path)}:
            pairs += [(form + "/", "" if name == "." else name + "/"), (form, name)]
    pairs.sort(key=lambda p: -len(p[0]))
    hub_dirs = {tempfile.gettempdir(), os.getcwd(), os.path.expanduser("~")}
    hub_dirs |= {os.path.realpath(d) for d in hub_dirs}
    others = sorted((d for d in hub_dirs if len(d) > 1), key=len, reverse=True)
    tail = r"(?=[/\s:'\"]|$)(?:/[^\s:'\"]*)?"  # the directory and anything under it
    pattern = re.compile("|".join(re.escape(d) + tail for d in others) or "$^")

    def scrub(message: str) -> str:
        for path, name in pairs:
            message = message.replace(path, name)
        return pattern.sub("<hub>", message)

    return scrub


def run(
    args: list[str],
    *,
    what: str,
    limits: Limits,
    scratch: pathlib.Path,
    shown: Mapping[pathlib.Path, str],
) -> str:
    """Run a renderer in `scratch` (its cwd and HOME) with a scrubbed environment, no network,
    the time and output limits; its stdout, or a RenderError with its scrubbed stderr.
    `shown` maps paths on the hub's disk to how the user knows them."""
    return run_both(args, what=what, limits=limits, scratch=scratch, shown=shown)[0]


def run_both(
    args: list[str],
    *,
    what: str,
    limits: Limits,
    scratch: pathlib.Path,
    shown: Mapping[pathlib.Path, str],
    network: bool = False,
) -> tuple[str, str]:
    """Run a renderer in `scratch` (its cwd and HOME) with a scrubbed environment, no network,
    the time and output limits; (stdout, stderr scrubbed), or a RenderError with its
    scrubbed stderr. `network`: only for
    the chart fetch stage (hub.charts), which talks to allowlisted registries; never for
    rendering."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(scratch),
        "HELM_CACHE_HOME": str(scratch / "cache"),
        "HELM_CONFIG_HOME": str(scratch / "config"),
        "HELM_DATA_HOME": str(scratch / "data"),
        # no network: any attempt goes to a closed local port
        "HTTP_PROXY": "http://127.0.0.1:9",
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "NO_PROXY": "",
        "GIT_ALLOW_PROTOCOL": "file",
        "GOMEMLIMIT": str(limits.max_memory * 4 // 5),  # Go collects harder before the cap
    }
    if network:
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"):
            env.pop(name)
    scrub = scrubber(shown, scratch)
    try:
        proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=scratch,
            start_new_session=True,  # its own process group, stopped as a whole
        )
    except OSError:
        name = os.path.basename(args[0])
        raise errors.RenderError(
            f"{what}: {name} is not installed on the hub (looked on PATH and in "
            f"{programs.cache_bin()}): install it, run `make setup`, or start the hub with "
            f"--{name} PATH"
        ) from None
    with proc:  # closes the pipes and reaps it
        try:
            # The memory cap is set from outside once it runs: preexec_fn is not safe in a
            # threaded process. A YAML bomb in a file only the renderer reads dies in here.
            cap = (limits.max_memory, limits.max_memory)
            with contextlib.suppress(ProcessLookupError):
                resource.prlimit(proc.pid, resource.RLIMIT_DATA, cap)
            out, err = _collect(proc, what=what, limits=limits)
        finally:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
    if proc.returncode != 0:
        message = scrub(err.decode(errors="replace").strip())
        first = message.split("\n", 1)[0]
        if proc.returncode < 0 or (first.startswith("fatal error:") and "memory" in first):
            how = (
                f"was killed by {signal.Signals(-proc.returncode).name}, likely at"
                if proc.returncode < 0
                else "ran out of"
            )
            raise errors.RenderError(
                f"{what} {how} its {limits.max_memory}-byte memory limit; stopped (a YAML "
                "alias bomb or an oversized input in a file it reads?)"
            )
        raise errors.RenderError(f"{what} failed: {message[-2000:]}")
    return out.decode(errors="replace"), scrub(err.decode(errors="replace"))


def _collect(proc: subprocess.Popen[bytes], *, what: str, limits: Limits) -> tuple[bytes, bytes]:
    """stdout (at most the output limit) and the tail of stderr, within the time limit."""
    assert proc.stdout is not None and proc.stderr is not None
    deadline = time.monotonic() + limits.timeout
    out, err = bytearray(), bytearray()
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ, out)
        sel.register(proc.stderr, selectors.EVENT_READ, err)
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                raise errors.RenderError(f"{what} took longer than {limits.timeout:.0f} s; stopped")
            for key, _ in sel.select(left):
                chunk = os.read(key.fd, 1 << 16)
                if not chunk:
                    sel.unregister(key.fileobj)
                    continue
                buf: bytearray = key.data
                buf += chunk
                if buf is err and len(err) > 1 << 16:
                    del err[: -(1 << 15)]  # only the tail is ever shown
                if len(out) > limits.max_output:
                    raise errors.RenderError(
                        f"{what} output is over the {limits.max_output}-byte limit; stopped"
                    )
    try:
        proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
    except subprocess.TimeoutExpired:
        raise errors.RenderError(
            f"{what} took longer than {limits.timeout:.0f} s; stopped"
        ) from None
    return bytes(out), bytes(err)
