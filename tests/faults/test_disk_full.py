"""Fault: the hub's data directory runs out of space. `--data` is a 16 MiB tmpfs (or, where
tmpfs cannot be mounted, a size-limited loop device) that the test fills up while the hub
runs and an agent reports. The hub keeps running, keeps answering the fleet API, and says
why it cannot go on (the repo's error, the operator's error, /metrics); when the space comes
back (the filler is deleted) it picks up the commit made meanwhile without a restart, the
agent converges, nothing it acknowledged before is gone, and hub.db passes integrity_check."""

from __future__ import annotations

import errno
import os
import pathlib
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator

import grpc
import pytest

from tests import localkube
from tests.faults import harness
from tests.support import fleet, wait

pytestmark = pytest.mark.cluster
CLUSTER = "c2"
FULL = ("No space left on device", "disk is full", "ENOSPC", "disk full")


def files(repo: fleet.Repo, n: int) -> None:
    repo.write("apps/web/configmap.yaml", harness.configmap("web-config", n=str(n)))


def mount_small(mountpoint: pathlib.Path, scratch: pathlib.Path) -> str:
    """A 16 MiB filesystem at `mountpoint`: tmpfs, else an ext4 loop device. Which one."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    tmpfs = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs", str(mountpoint)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if tmpfs.returncode == 0:
        return "tmpfs"
    image = scratch / "data.img"
    subprocess.run(["truncate", "-s", "16M", str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, capture_output=True)
    loop = subprocess.run(
        ["mount", "-o", "loop", str(image), str(mountpoint)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if loop.returncode != 0:
        pytest.fail(f"cannot mount a small filesystem: tmpfs: {tmpfs.stderr}; loop: {loop.stderr}")
    return f"loop device (tmpfs refused: {tmpfs.stderr.strip()})"


def unmount(mountpoint: pathlib.Path) -> None:
    if os.path.ismount(mountpoint):
        subprocess.run(["umount", str(mountpoint)], check=True, capture_output=True)


def fill(path: pathlib.Path) -> int:
    """Write zeros to `path` until the filesystem is full; the bytes written."""
    written = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (1 << 20, 4096, 1):
            block = b"\0" * size
            while True:
                try:
                    written += os.write(fd, block)
                except OSError as e:
                    if e.errno != errno.ENOSPC:
                        raise
                    break
        os.fsync(fd)
    finally:
        os.close(fd)
    return written


def metrics(hub: fleet.Hub) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{hub.http_port}/metrics", timeout=10) as r:
        return str(r.read().decode())


def cut(text: str, keep: int = 140) -> str:
    return text if len(text) <= keep else text[: keep - 3] + "..."


def store_metrics(hub: fleet.Hub) -> list[str]:
    """The /metrics samples about the hub's own storage (store, disk, data directory)."""
    words = ("store", "disk", "data_dir", "space")
    return [
        line
        for line in metrics(hub).splitlines()
        if line.startswith("fleetops_") and any(w in line.split("{")[0].split()[0] for w in words)
    ]


def says_full(text: str) -> bool:
    return any(word in text for word in FULL)


def first_line(log: pathlib.Path, offset: int, match: Callable[[str], bool]) -> str:
    """The first line of `log` after `offset` that `match`es, or "(no log line)"."""
    with open(log, errors="replace") as f:
        f.seek(offset)
        return next((line.strip() for line in f if match(line)), "(no log line)")


def heal_reported(w: harness.World, app: str) -> bool:
    """The hub holds the agent's report of a self-heal (in memory: writing it down is what
    the full disk breaks)."""
    cell = w.cells().get((CLUSTER, app))
    return cell is not None and any("self-healed" in r.message for r in cell.resources)


def json_n(w: harness.World, ns: str) -> str:
    res = w.kubectl(CLUSTER, "-n", ns, "get", "configmap", "web-config", "-o", "jsonpath={.data.n}")
    return res.stdout


@pytest.fixture
def small_data(tmp_path: pathlib.Path) -> Iterator[tuple[pathlib.Path, str]]:
    mountpoint = tmp_path / "hub-data"
    kind = mount_small(mountpoint, tmp_path)
    try:
        yield mountpoint, kind
    finally:
        unmount(mountpoint)


async def test_the_hub_data_directory_runs_out_of_space(
    local_clusters: list[localkube.LocalCluster],
    tmp_path: pathlib.Path,
    small_data: tuple[pathlib.Path, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    data, kind = small_data
    web = f"{harness.prefix()}-web"
    kube = {c.name: c.kubeconfig for c in local_clusters}

    def apps(_url: str) -> list[dict[str, object]]:
        return [harness.app(web, "apps/web")]

    async with harness.world(tmp_path, apps=apps, clusters=[CLUSTER], files=files) as w:
        assert w.hub.data == data
        first = fleet.git(w.repo.work, "rev-parse", "HEAD")
        agent = w.add_agent(CLUSTER, kube[CLUSTER])
        await wait.until(
            "first convergence",
            lambda: harness.converged(w, {(CLUSTER, web): first}),
            within=90,
            every=harness.EVERY,
            retry_on=harness.RESTARTING,
            explain=w.describe,
        )
        acknowledged = {e.id for e in w.client().history()}
        healthy_metrics = set(store_metrics(w.hub))

        filler = data / "filler"
        filled = fill(filler)
        full_at = time.monotonic()
        log_at = w.hub.process.log.stat().st_size
        files(w.repo, 1)
        second = w.repo.commit("fault suite: a commit while the hub's disk is full")

        # what the hub says, wherever it says it
        def repo_error() -> str:
            snap = w.client().snapshot()
            return next((r.error for r in snap.repos if r.name == "platform"), "")

        def full_repo_error() -> str:
            error = repo_error()
            return error if says_full(error) else ""

        said: dict[str, str] = {}
        try:
            said["repo"] = await wait.until(
                "the repo to say why it cannot fetch",
                full_repo_error,
                within=30,
                every=harness.EVERY,
                retry_on=harness.RESTARTING,
            )
        except AssertionError as e:
            said["repo"] = f"(nothing that names the full disk: {repo_error()!r}; {e})"
        code = grpc.StatusCode.OK
        try:
            w.client().rollback(web, first)
            said["rollback"] = "(answered OK with the disk full)"
        except grpc.RpcError as e:
            code = e.code()
            said["rollback"] = f"{e.code().name}: {e.details()}"
        # the agent heals drift and reports it while the hub cannot write
        healed_before = {e.id for e in w.client().history(app=web) if e.kind == "healed"}
        patched = w.kubectl(
            CLUSTER, "-n", web, "patch", "configmap", "web-config", "-p", '{"data":{"n":"x"}}'
        )
        assert patched.returncode == 0, patched.stderr
        await wait.until(
            "the agent to heal the ConfigMap and report it to a hub with a full disk",
            lambda: json_n(w, web) == "0" and heal_reported(w, web),
            within=30,
            every=harness.EVERY,
            retry_on=harness.RESTARTING,
            explain=w.describe,
        )
        assert harness.alive(w.hub.process), f"the hub died:\n{w.hub.process.tail()}"
        assert harness.connected(w, [CLUSTER]), "the agent lost the hub while the disk was full"
        problems: list[str] = []
        try:
            readable = f"{len(w.client().history())} history entries readable meanwhile"
        except grpc.RpcError as e:
            readable = "history unreadable meanwhile"
            problems.append(
                f"history (a read) fails while the disk is full: {e.code().name}: {e.details()}"
            )
        said["metrics"] = " ".join(
            line for line in metrics(w.hub).splitlines() if line.startswith("fleetops_") and (
                "repo_fetch_ok" in line or "poller" in line or "disk" in line or "store" in line
            )
        )  # fmt: skip
        full_metrics = [m for m in store_metrics(w.hub) if m not in healthy_metrics]
        said["log"] = first_line(w.hub.process.log, log_at, says_full)

        filler.unlink()
        freed = time.monotonic()
        full_for = freed - full_at
        await wait.until(
            "the commit made while the disk was full to converge, without a restart",
            lambda: harness.converged(w, {(CLUSTER, web): second}),
            within=90,
            every=harness.EVERY,
            retry_on=harness.RESTARTING,
            explain=w.describe,
        )
        took = time.monotonic() - freed
        pid = w.hub.process.proc.pid
        w.client().rollback(web, first)  # the store takes writes again
        w.client().unpin(web)
        after = {e.id for e in w.client().history()}
        lost = [f"events {sorted(acknowledged - after)}"] if acknowledged - after else []
        heals = {e.id for e in w.client().history(app=web) if e.kind == "healed"} - healed_before
        if not heals:
            lost.append("the heal the agent reported while the disk was full (no history entry)")
        assert harness.alive(agent)
        w.stop()
        check = harness.integrity(data / "hub.db")
        if check != "ok":
            lost.append(f"hub.db integrity_check: {check}")

        if not says_full(said["repo"]):
            problems.append(f"the repo's error does not name the full disk: {said['repo']}")
        if not says_full(said["rollback"]) or code in (grpc.StatusCode.OK, grpc.StatusCode.UNKNOWN):
            problems.append(
                f"a rollback with the disk full should fail with a status code and a message "
                f"naming the full data directory; it got {said['rollback']}"
            )
        if not says_full(said["log"]):
            problems.append("no log line names the full disk")
        if not full_metrics:
            problems.append(
                "/metrics shows nothing about the store failing to write (no fleetops_ series "
                "naming the store, disk or data directory changed while the disk was full)"
            )
        harness.report(
            capsys, f"hub data dir full ({kind})", took, lost,
            f"{filled >> 20} MiB filler, full for {full_for:.1f} s, same hub pid {pid}, "
            f"{readable}; repo error: {cut(said['repo'])}; rollback: {cut(said['rollback'])}; "
            f"log: {cut(said['log'])}; /metrics: {' '.join(full_metrics) or said['metrics']}"
            + "".join(f"\n  problem: {p}" for p in problems),
        )  # fmt: skip
        assert not lost + problems, "\n".join(lost + problems)
