"""The demo's own processes and nothing else's: children started in sessions of their own and
tied to the demo (die_with_parent.py), stopped group by group; one demo per directory (its
`demo.pid`, flock'ed for the demo's whole life); and the hubs, agents and registries an earlier
demo in the same directory left running, found by the arguments that name that directory and
stopped.

It never signals a process it did not start or find by those flags.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time
from typing import IO

HERE = pathlib.Path(__file__).resolve().parent
LOCK = "demo.pid"  # in the demo's directory: the running demo's pid, flock'ed while it runs
_held_lock: IO[str] | None = None  # the open, locked demo.pid


class Busy(Exception):
    """Another live demo holds the directory's lock; `pid` is the one it wrote."""

    def __init__(self, pid: str) -> None:
        super().__init__(pid)
        self.pid = pid


@dataclasses.dataclass
class Child:
    name: str
    proc: subprocess.Popen[str]
    log: pathlib.Path

    def stop(self) -> None:
        stop_all([self.proc])

    def tail(self, lines: int = 15) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def stop_all(procs: list[subprocess.Popen[str]], grace: float = 10.0) -> None:
    """SIGTERM each process's group (its own session: the process and whatever it started),
    wait up to `grace` seconds for all of them, then SIGKILL the groups still there."""
    running = [p for p in procs if p.poll() is None]
    for p in running:
        _signal_group(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in running:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_group(p.pid, signal.SIGKILL)
            p.wait()


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def tied(cmd: list[str]) -> list[str]:
    """`cmd` run so that it gets SIGTERM when this process dies, even by SIGKILL."""
    return [sys.executable, str(HERE / "die_with_parent.py"), str(os.getpid()), "--", *cmd]


def spawn(name: str, cmd: list[str], log: pathlib.Path, env: dict[str, str] | None = None) -> Child:
    log.parent.mkdir(parents=True, exist_ok=True)
    out: IO[str]
    with open(log, "a") as out:
        # A session of its own: a closed terminal or Ctrl-C reaches the demo, which stops
        # children in order; tied to the demo, so they die with it if it gets no chance to.
        proc = subprocess.Popen(
            tied(cmd),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
    return Child(name, proc, log)


def hold_lock(work: pathlib.Path) -> None:
    """Lock `work/demo.pid` for this process's whole life (the kernel drops the lock when it
    ends, however it ends) and write our pid in it; another live demo there is Busy."""
    global _held_lock
    work.mkdir(parents=True, exist_ok=True)
    f = open(work / LOCK, "a+")  # open until this process ends: that is the lock
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        pid = f.read().strip() or "unknown"
        f.close()
        raise Busy(pid) from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    _held_lock = f


def wipe(work: pathlib.Path) -> None:
    """Empty `work`, all but the lock file (removing it would let a second demo lock a new
    file of the same name beside ours)."""
    for entry in work.iterdir():
        if entry.name == LOCK:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def leftovers(work: pathlib.Path) -> list[int]:
    """Pids of hubs, agents and registries an earlier demo in `work` left running (their
    --data and --state flags name it, or the registry's config file). Only this user's
    processes; none where /proc does not exist."""
    marks = (f"--data={work}/hub", f"--state={work}/agents/", f"{work}/registry/config.yml")
    found = []
    proc = pathlib.Path("/proc")
    for entry in proc.iterdir() if proc.is_dir() else []:
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if entry.stat().st_uid != os.getuid():
                continue
            args = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if any(a in (marks[0], marks[2]) or a.startswith(marks[1]) for a in args):
            found.append(int(entry.name))
    return sorted(found)


def stop_leftovers(work: pathlib.Path, pids: list[int]) -> None:
    """SIGTERM the `pids` (leftovers in `work`), wait up to 15 s, SIGKILL what is left."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 15
    while leftovers(work) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in leftovers(work):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
