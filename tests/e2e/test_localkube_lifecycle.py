"""localkube's promises about processes: `down` stops everything, a dead owner takes its
clusters with it, runs side by side do not collide, missing binaries are named."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from tests import localkube
from tests.support import kube, wait

pytestmark = pytest.mark.cluster


def processes_of(state: pathlib.Path) -> list[str]:
    """Command lines of every live process started for this state dir."""
    found = []
    for proc in pathlib.Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
            stat = (proc / "stat").read_text()
        except OSError:
            continue
        if str(state).encode() in cmdline and stat.rsplit(")", 1)[-1].split()[0] != "Z":
            found.append(cmdline.replace(b"\0", b" ").decode(errors="replace")[:120])
    return found


def test_down_and_a_dead_owner_leave_no_process_behind(
    local_clusters: list[localkube.LocalCluster], tmp_path: pathlib.Path
) -> None:
    # `down` stops everything `up` started; this runs beside the suite's clusters (no fixed ports).
    state = tmp_path / "first"
    [cluster] = localkube.up(state, ["solo"])
    running = processes_of(state)
    assert any("kube-apiserver" in p for p in running), running
    assert any("etcd" in p for p in running), running
    assert any("kwok" in p for p in running), running
    kube.client(cluster.kubeconfig).resources.get(api_version="v1", kind="Namespace").get()
    localkube.down(state)
    assert processes_of(state) == []

    # An owner that dies without calling `down` (a killed test run) takes its clusters with it.
    owner = subprocess.Popen(["sleep", "600"])  # not a wait: a process to stand in as the owner
    state = tmp_path / "owned"
    try:
        localkube.up(state, ["owned"], owner_pid=owner.pid)
        assert any("kube-apiserver" in p for p in processes_of(state))
    finally:
        owner.kill()
        owner.wait()
    wait.until_sync(
        "every process of a dead owner's clusters exits",
        lambda: not processes_of(state),
    )


def test_up_without_binaries_names_the_fix(tmp_path: pathlib.Path) -> None:
    # It refuses before starting or building anything (the deadline only keeps a hang from
    # stalling the suite: how fast it answers is not the claim).
    cache = tmp_path / "empty-cache"
    state = tmp_path / "state"
    env = {**os.environ, "FLEETOPS_CACHE": str(cache)}
    res = subprocess.run(
        [sys.executable, str(localkube.LOCALKUBE), "up", "--clusters", "1", "--state",
         str(state)],
        capture_output=True, text=True, env=env, check=False, timeout=120,
    )  # fmt: skip
    assert res.returncode == 1
    assert "kube-apiserver not found" in res.stderr or "etcd not found" in res.stderr, res.stderr
    assert "make setup" in res.stderr
    assert processes_of(state) == []
    assert not cache.exists() or not any(cache.iterdir()), "it began building binaries"
