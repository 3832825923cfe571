"""`make demo` leaves nothing running, however it ends: a closed terminal (SIGHUP to its process
group), SIGTERM, or SIGKILL, which gives it no chance to clean up; and a second demo in the same
directory never starts beside a running one.

Real processes throughout: deploy/demo/demo.py headless, its hub and agent processes, and (in
the terminal test) its local clusters. A process belongs to a demo when its command line names
the demo's directory, a fresh temp path: that is how the tests find what is left. The cheap
tests point the agents at API servers that refuse connections (agents then wait and retry, as
they would for a cluster that is down), so only the hub and agents run.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import pathlib
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest
import yaml

from tests import localkube
from tests.support import wait

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEMO = ROOT / "deploy" / "demo" / "demo.py"
BIN = pathlib.Path(sys.executable).parent


def processes_of(work: pathlib.Path) -> dict[int, str]:
    """pid -> command line of every live process whose command line names `work`."""
    found = {}
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(work) in cmdline:
            found[int(entry.name)] = cmdline
    return found


def named(procs: dict[int, str], what: str) -> list[int]:
    return [pid for pid, cmd in procs.items() if what in cmd]


@dataclasses.dataclass
class Demo:
    proc: subprocess.Popen[bytes]
    work: pathlib.Path
    out: pathlib.Path

    def output(self) -> str:
        return self.out.read_text(errors="replace")

    def gone(self) -> bool:
        return self.proc.poll() is not None and not processes_of(self.work)

    def what_is_left(self) -> str:
        left = processes_of(self.work)
        return "\n".join(f"{pid}: {cmd[:200]}" for pid, cmd in left.items()) + self.output()[-3000:]

    def kill_everything(self) -> None:
        """The test's own cleanup, by pid, whatever happened."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for pid in processes_of(self.work):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if (self.work / "clusters").exists():
            localkube.down(self.work / "clusters")


@pytest.fixture
def demos() -> Iterator[list[Demo]]:
    started: list[Demo] = []
    yield started
    for d in started:
        d.kill_everything()


def start_demo(demos: list[Demo], work: pathlib.Path, *args: str) -> Demo:
    """demo.py --no-tui in a session of its own, as a terminal's foreground job would be."""
    out = work.parent / f"{work.name}.out"
    with open(out, "ab") as f:
        proc = subprocess.Popen(
            [sys.executable, str(DEMO), "--no-tui", "--dir", str(work), *args],
            stdout=f,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
            start_new_session=True,
        )
    demo = Demo(proc, work, out)
    demos.append(demo)
    return demo


@pytest.fixture
def dead_contexts(tmp_path: pathlib.Path) -> Iterator[list[str]]:
    """--contexts and --kubeconfig for three clusters whose API server refuses connections."""
    refused = socket.socket()
    refused.bind(("127.0.0.1", 0))  # bound and never listening: every connect is refused
    server = f"https://127.0.0.1:{refused.getsockname()[1]}"
    names = ["down-a", "down-b", "down-c"]
    path = tmp_path / "kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {"name": n, "cluster": {"server": server, "insecure-skip-tls-verify": True}}
                    for n in names
                ],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": n, "context": {"cluster": n, "user": "u"}} for n in names],
                "current-context": names[0],
            }
        )
    )
    try:
        yield ["--contexts", ",".join(names), "--kubeconfig", str(path)]
    finally:
        refused.close()


async def running(demo: Demo, *, within: float) -> dict[int, str]:
    """Wait until the demo waits for convergence with its hub and three agents up."""

    def up() -> dict[int, str] | None:
        assert demo.proc.poll() is None, f"the demo exited early:\n{demo.output()}"
        procs = processes_of(demo.work)
        agents = named(procs, "fleetops-agent run")
        if "[5/5]" in demo.output() and named(procs, "fleetops-hub serve") and len(agents) == 3:
            return procs
        return None

    return await wait.until("the demo running its hub and 3 agents", up, within=within)


async def test_a_demo_killed_outright_takes_its_hub_and_agents_with_it(
    demos: list[Demo], dead_contexts: list[str], tmp_path: pathlib.Path
) -> None:
    demo = start_demo(demos, tmp_path / "demo", *dead_contexts)
    await running(demo, within=120)

    demo.proc.kill()  # SIGKILL: no handler, no finally, no teardown of its own
    await wait.until("nothing of the killed demo left", demo.gone, within=30)


def start_stray_hub(work: pathlib.Path) -> subprocess.Popen[bytes]:
    """A hub running on in `work`, as a demo killed before this fix left it."""
    work.mkdir()
    (work / "hub.yaml").write_text("repos: []\napps: []\n")
    with open(work.parent / "stray.log", "ab") as log:
        return subprocess.Popen(
            [str(BIN / "fleetops-hub"), "serve", f"--config={work / 'hub.yaml'}",
             f"--data={work / 'hub'}", "--listen=127.0.0.1:0", "--agent-listen=127.0.0.1:0",
             "--http=127.0.0.1:0"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


def start_stray_registry(work: pathlib.Path) -> subprocess.Popen[bytes]:
    """The image registry an earlier demo in `work` left running (its config names `work`)."""
    config = work / "registry" / "config.yml"
    config.parent.mkdir(parents=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        addr = f"127.0.0.1:{s.getsockname()[1]}"
    config.write_text(
        yaml.safe_dump(
            {"version": 0.1, "http": {"addr": addr},
             "storage": {"filesystem": {"rootdirectory": str(work / "registry" / "data")}}}
        )
    )  # fmt: skip
    with open(work.parent / "stray-registry.log", "ab") as log:
        return subprocess.Popen(
            ["/usr/bin/docker-registry", "serve", str(config)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


async def test_one_demo_per_directory_and_leftovers_of_an_earlier_one_are_stopped(
    demos: list[Demo], dead_contexts: list[str], tmp_path: pathlib.Path
) -> None:
    work = tmp_path / "demo"
    stray = start_stray_hub(work)  # what a demo that died before this fix left behind
    stray_registry = start_stray_registry(work)
    try:
        await wait.until(
            "the stray hub and registry running",
            lambda: {stray.pid, stray_registry.pid} <= processes_of(work).keys(),
        )
        first = start_demo(demos, work, *dead_contexts)
        procs = await running(first, within=120)
        for left in (stray, stray_registry):
            assert left.poll() is not None and left.pid not in procs
        pids = ", ".join(map(str, sorted([stray.pid, stray_registry.pid])))
        assert f"Stopping what an earlier demo left running in {work} (pids {pids})" in (
            first.output()
        )

        second = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, str(DEMO), "--no-tui", "--dir", str(work), *dead_contexts],
            capture_output=True, text=True, timeout=120, cwd=ROOT,
        )  # fmt: skip
        assert second.returncode == 1, second.stdout + second.stderr
        assert f"make demo: another demo is running in {work} (pid {first.proc.pid})" in (
            second.stderr
        )
        # the first one is untouched: same processes, its directory not wiped
        assert processes_of(work).keys() >= procs.keys() and (work / "logs" / "hub.log").exists()

        first.proc.send_signal(signal.SIGTERM)
        await wait.until("nothing of the demo left after SIGTERM", first.gone, within=60)
        assert first.proc.returncode == 128 + signal.SIGTERM, first.output()
        assert "Tearing down (SIGTERM): agents, hub ..." in first.output()
    finally:
        for left in (stray, stray_registry):
            if left.poll() is None:
                left.kill()
            left.wait()


@pytest.mark.cluster
async def test_closing_the_terminal_tears_down_clusters_hub_and_agents(
    demos: list[Demo], tmp_path: pathlib.Path
) -> None:
    demo = start_demo(demos, tmp_path / "demo")
    procs = await running(demo, within=400)
    parts = (
        "kube-apiserver",
        "etcd",
        "fleetops-hub serve",
        "fleetops-agent run",
        "docker-registry",
    )
    for part in parts:
        assert named(procs, part), f"no {part} among the demo's processes: {procs}"

    # a closed terminal: SIGHUP to the foreground process group (the demo's)
    os.killpg(demo.proc.pid, signal.SIGHUP)
    try:
        await wait.until("nothing of the demo left after SIGHUP", demo.gone, within=120)
    except AssertionError as e:
        raise AssertionError(f"{e}\n{demo.what_is_left()}") from None
    assert demo.proc.returncode == 128 + signal.SIGHUP, demo.output()
    log = (demo.work / "logs" / "demo.log").read_text()
    assert "Tearing down (SIGHUP): agents, hub, registry, local clusters ..." in log
    assert log.rstrip().endswith("Done.")
