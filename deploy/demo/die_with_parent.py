#!/usr/bin/env python3
"""Run a command that receives SIGTERM when the process that started it dies, however it dies.

    die_with_parent.py PARENT_PID -- COMMAND [ARG...]

`make demo` starts its hub, agents and `localkube up` through this, so a demo killed with
SIGKILL (which runs no cleanup at all) still takes them with it. It asks Linux for a parent
death signal (prctl PR_SET_PDEATHSIG), which survives the exec below, so the command itself
holds it; then it checks that PARENT_PID is still its parent, since a parent that died before
the prctl would never send the signal. Where there is no prctl (not Linux) it runs the command
without one: the demo's own teardown on SIGHUP, SIGTERM and SIGINT still stops it.

It must never start the command once its parent is gone. Standard library only; it stays
tiny because it runs once per child before the child's own program.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--" or not argv[0].isdigit():
        print("usage: die_with_parent.py PARENT_PID -- COMMAND [ARG...]", file=sys.stderr)
        return 2
    parent, command = int(argv[0]), argv[2:]
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
            err = ctypes.get_errno()
            print(f"die_with_parent: prctl failed: {os.strerror(err)}", file=sys.stderr)
            return 1
    if os.getppid() != parent:
        print(
            f"die_with_parent: parent {parent} is gone; not starting {command[0]}", file=sys.stderr
        )
        return 1
    try:
        os.execvp(command[0], command)
    except OSError as e:
        print(f"die_with_parent: cannot run {command[0]}: {e}", file=sys.stderr)
        return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
