#!/usr/bin/env python3
"""`make demo`: a whole fleet on this machine, the way a real install runs it.

Three clusters labelled dev, staging and prod (local control planes from deploy/local, or
kubeconfig contexts you already have), a Git repository with three apps (plain YAML, Kustomize
overlays, Helm with per-environment values; repo.git is what the hub reads, repo/ your clone of
it), a hub process, and one agent process per cluster registered with its own one-time token.
Every app rolls out dev -> staging -> prod: a revision reaches staging only after dev ran it
Healthy for the bake time (20 s), and prod only after staging did. It waits until every app runs
on every cluster, shows how to make a commit and watch it move step by step, and opens the TUI.
Ctrl-C tears everything down.

On its own local clusters the demo also runs an image registry (Debian's docker-registry on
loopback) holding demo/podinfo:6.7.1, which podinfo runs; publishing a newer 6.x tag (the
command the instructions give, or --push) makes the hub commit the new tag to the repo as
fleetops-bot, and that commit rolls out dev -> staging -> prod like any other.

    make demo                                   # local clusters, then the TUI
    make demo ARGS=--commit                     # ... and the demo commits a change for you
    make demo ARGS=--push                       # ... or publishes demo/podinfo:6.8.0
    make demo ARGS=--no-tui                     # the same headless; exits 0 once converged
    make demo ARGS="--no-tui --commit"          # headless, following the commit step by step
    make demo ARGS="--no-tui --push"            # headless, following the image commit
    make demo ARGS="--contexts kind-a,kind-b,kind-c"   # your clusters instead of local ones

Nothing of a demo may outlive it:
- SIGINT (Ctrl-C), SIGTERM and SIGHUP (the terminal closed: a window, an ssh or tmux session)
  all tear down the agents, the hub, the registry and the local clusters, in that order; a
  signal during the teardown does not cut it short, and a terminal that is gone does not stop
  it (what it would have printed goes to logs/demo.log).
- Children run in sessions of their own (a closed terminal signals the demo, which stops them
  in order) and through die_with_parent.py, so even a demo killed with SIGKILL, which runs no
  cleanup, takes its hub, agents, registry and `localkube up` with it (localkube's own --owner-pid
  watcher stops the clusters).
- One demo per directory: `demo.pid` in it is locked (flock) for the demo's whole life, so a
  second `make demo` says which one runs instead of starting beside it; processes an earlier
  demo left there (found by their --data/--state flags and the registry's config path) are
  stopped before anything starts.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

import grpc
import yaml

from fleetops.proto.v1 import fleet_pb2, fleet_pb2_grpc, types_pb2

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import demoimages  # noqa: E402  (deploy/demo/, beside this script)
import demoprocs  # noqa: E402
import demowords  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
HERE = pathlib.Path(__file__).resolve().parent
BIN = pathlib.Path(sys.executable).parent
ENVS = ("dev", "staging", "prod")
APPS = ("guestbook", "podinfo", "redis")
BAKE = 20.0  # seconds each of dev and staging runs a revision Healthy before the next step
# the change the demo (or you, following its instructions) commits: every environment sees it
SAMPLE_FILE = "apps/guestbook/configmap.yaml"
SAMPLE_EDIT = ("Hello from fleetops", "Hello again from fleetops")
SAMPLE_SUBJECT = "guestbook: a new greeting"
STOP_SIGNALS = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)
_transcript: pathlib.Path | None = None  # logs/demo.log once the directory exists


class DemoError(Exception):
    """Something the user can fix; the message says what."""


class Stopped(KeyboardInterrupt):
    """SIGINT, SIGTERM or SIGHUP arrived: tear down. A KeyboardInterrupt, so a foreground
    child that `subprocess.run` waits for (the TUI) is stopped the same way Ctrl-C stops it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def cache_bin() -> pathlib.Path:
    cache = os.environ.get("FLEETOPS_CACHE") or str(pathlib.Path.home() / ".cache" / "fleetops")
    return pathlib.Path(cache) / "bin"


def _terminal_gone() -> None:
    """After SIGHUP writes to the terminal fail (EIO): send them to /dev/null from now on,
    so neither the teardown nor the interpreter's last flush fails on them."""
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.dup2(null, 2)
    os.close(null)


def _emit(text: str, stream: IO[str]) -> None:
    if _transcript is not None:
        try:
            with open(_transcript, "a") as log:
                log.write(text + "\n")
        except OSError:
            pass
    try:
        print(text, file=stream, flush=True)
    except OSError:
        _terminal_gone()


def say(text: str = "") -> None:
    _emit(text, sys.stdout)


def complain(text: str) -> None:
    _emit(text, sys.stderr)


def step(n: int, text: str) -> None:
    say(f"[{n}/5] {text}")


def run(cmd: list[str], what: str, **kw: object) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, **kw)  # type: ignore[call-overload]
    if done.returncode != 0:
        raise DemoError(f"{what} failed ({done.returncode}):\n{done.stderr.strip()}")
    return str(done.stdout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def check_prerequisites(contexts: list[str]) -> None:
    missing = []
    if shutil.which("git") is None:
        missing.append("git: apt-get install git (the sample repo is a Git repository)")
    if not contexts and not demoimages.binary():
        missing.append("docker-registry: apt-get install docker-registry (the demo's registry)")
    tools = ["helm", "kustomize"] + (
        [] if contexts else ["kube-apiserver", "kube-controller-manager", "etcd", "kwok", "kubectl"]
    )
    for tool in tools:
        if not os.access(cache_bin() / tool, os.X_OK):
            missing.append(f"{tool}: run `make setup` (builds it into {cache_bin()})")
    if missing:
        raise DemoError("missing prerequisites:\n  " + "\n  ".join(missing))


@dataclasses.dataclass
class Cluster:
    name: str
    env: str
    kubeconfig: pathlib.Path
    context: str = ""


def local_clusters(work: pathlib.Path) -> list[Cluster]:
    cmd = [
        sys.executable,
        str(ROOT / "deploy" / "local" / "localkube"),
        "up",
        "--names",
        ",".join(ENVS),
        "--state",
        str(work / "clusters"),
        "--owner-pid",
        str(os.getpid()),
    ]
    # Its own session, so a closed terminal does not kill it halfway (the demo stops it, and
    # SIGTERM makes `up` stop what it started); tied to the demo, for a demo killed outright.
    proc = subprocess.Popen(
        demoprocs.tied(cmd),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=600)
    except BaseException:
        demoprocs.stop_all([proc], grace=60)
        raise
    if proc.returncode != 0:
        raise DemoError(
            "starting the local clusters (deploy/local/localkube up) failed "
            f"({proc.returncode}):\n{err.strip()}"
        )
    paths = [pathlib.Path(p) for p in out.split()]
    if len(paths) != len(ENVS):
        raise DemoError(f"localkube printed {paths}; expected {len(ENVS)} kubeconfigs")
    return [Cluster(env, env, p) for env, p in zip(ENVS, paths, strict=True)]


def localkube_down(work: pathlib.Path) -> None:
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "deploy/local/localkube"),
            "down",
            "--state",
            str(work / "clusters"),
        ],
        capture_output=True,
        timeout=120,
        check=False,
    )


def context_clusters(contexts: list[str], kubeconfig: str) -> list[Cluster]:
    if len(contexts) != len(ENVS):
        raise DemoError(
            f"--contexts: give exactly {len(ENVS)} contexts (for {', '.join(ENVS)}), "
            f"got {len(contexts)}"
        )
    path = pathlib.Path(
        kubeconfig or os.environ.get("KUBECONFIG", "") or pathlib.Path.home() / ".kube" / "config"
    )
    if not path.is_file():
        raise DemoError(f"--contexts: no kubeconfig at {path}; pass --kubeconfig FILE")
    known = {c.get("name") for c in (yaml.safe_load(path.read_text()) or {}).get("contexts") or []}
    unknown = [c for c in contexts if c not in known]
    if unknown:
        raise DemoError(
            f"--contexts: {', '.join(unknown)} not in {path}; it has {', '.join(sorted(known))}"
        )
    return [Cluster(env, env, path, ctx) for env, ctx in zip(ENVS, contexts, strict=True)]


def make_repo(work: pathlib.Path, *, registry: str) -> tuple[pathlib.Path, pathlib.Path]:
    """The sample repo as the hub reads it (`repo.git`, bare, as on a Git server: the hub's
    image commits are pushed there) and the user's clone of it (`repo`, with a commit
    identity of its own); `{registry}` in its files is the demo's registry, or podinfo's own
    image when there is none (--contexts)."""
    repo, bare = work / "repo", work / "repo.git"
    shutil.copytree(HERE / "sample-repo", repo)
    for path in repo.rglob("*"):
        if path.is_file() and "{registry}" in (text := path.read_text()):
            if registry:
                path.write_text(text.replace("{registry}", registry))
            else:
                path.write_text(text.replace("{registry}/demo/", "ghcr.io/stefanprodan/"))
    git = ["git", "-C", str(repo)]
    run(["git", "init", "-q", "-b", "main", str(repo)], "git init")
    run([*git, "config", "user.name", "fleetops demo"], "git config")
    run([*git, "config", "user.email", "demo@fleetops"], "git config")
    run([*git, "config", "pull.rebase", "true"], "git config")  # on top of the hub's commits
    run([*git, "add", "-A"], "git add")
    run([*git, "commit", "-q", "-m", "Three apps for dev, staging and prod"], "git commit")
    run(["git", "clone", "-q", "--bare", str(repo), str(bare)], "git clone --bare")
    run([*git, "remote", "add", "origin", str(bare)], "git remote add")
    run([*git, "fetch", "-q", "origin"], "git fetch")
    run([*git, "branch", "-q", "--set-upstream-to=origin/main"], "git branch")
    return bare, repo


def commit_sample(repo: pathlib.Path) -> str:
    """Commit the change the instructions describe (a new greeting for guestbook in every
    environment) and push it, as a user would; the new revision."""
    run(["git", "-C", str(repo), "pull", "-q", "--ff-only"], "git pull")
    path = repo / SAMPLE_FILE
    old, new = SAMPLE_EDIT
    path.write_text(path.read_text().replace(old, new))
    run(["git", "-C", str(repo), "commit", "-qam", SAMPLE_SUBJECT], "git commit")
    run(["git", "-C", str(repo), "push", "-q"], "git push")
    return run(["git", "-C", str(repo), "rev-parse", "HEAD"], "git rev-parse").strip()


class Fleet:
    def __init__(self, work: pathlib.Path, clusters: list[Cluster]) -> None:
        self.work = work
        self.clusters = clusters
        self.children: list[demoprocs.Child] = []
        self.hub: demoprocs.Child | None = None
        self.registry: demoprocs.Child | None = None
        self.registry_address = ""  # 127.0.0.1:PORT once the registry runs
        self.port = 0

    def start_registry(self) -> None:
        """The demo's image registry, holding the tag podinfo runs at first."""
        port = free_port()
        try:
            self.registry = demoimages.start_registry(self.work, port=port)
        except demoimages.Error as e:
            raise DemoError(str(e)) from None
        self.children.append(self.registry)
        self.registry_address = f"127.0.0.1:{port}"
        try:
            demoimages.push_first(self.registry_address)
        except demoimages.Error as e:
            raise DemoError(f"{e}\nits log: {self.registry.log}") from None

    def start_hub(self, repo: pathlib.Path, *, bake: float) -> None:
        config = self.work / "hub.yaml"
        text = (HERE / "hub.yaml").read_text()
        if not self.registry_address:  # no image automation: drop its part of hub.yaml
            text = text.split("\n# --- image automation")[0] + "\n"
        text = text.replace("{repo}", repo.as_uri()).replace("{bake}", f"{bake:g}s")
        text = text.replace("{registry}", self.registry_address)
        config.write_text(text)
        self.port = free_port()
        self.hub = demoprocs.spawn(
            "hub",
            [
                str(BIN / "fleetops-hub"),
                "serve",
                f"--config={config}",
                f"--data={self.work / 'hub'}",
                f"--listen=127.0.0.1:{self.port}",
                f"--agent-listen=127.0.0.1:{free_port()}",
                f"--http=127.0.0.1:{free_port()}",
                f"--helm={cache_bin() / 'helm'}",
                f"--kustomize={cache_bin() / 'kustomize'}",
            ],
            self.work / "logs" / "hub.log",
        )
        self.children.append(self.hub)
        deadline = time.monotonic() + 30
        while "gRPC on port" not in self.hub.tail(50):
            if self.hub.proc.poll() is not None or time.monotonic() > deadline:
                raise DemoError(
                    f"the hub did not start; its log ({self.hub.log}):\n{self.hub.tail()}"
                )
            time.sleep(0.1)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def admin(self, *args: str) -> str:
        return run(
            [
                str(BIN / "fleetops-hub"),
                *args,
                f"--hub={self.address}",
                f"--data={self.work / 'hub'}",
            ],
            f"fleetops-hub {args[0]}",
            timeout=60,
        )

    def start_agents(self) -> None:
        for c in self.clusters:
            token = self.admin("token", "create", f"--cluster={c.name}", f"--labels=env={c.env}")
            cmd = [
                str(BIN / "fleetops-agent"),
                "run",
                f"--hub={self.address}",
                f"--kubeconfig={c.kubeconfig}",
                f"--state={self.work / 'agents' / c.name}",
                "--resync=10",
            ]
            if c.context:
                cmd.append(f"--context={c.context}")
            agent = demoprocs.spawn(
                f"agent {c.name}",
                cmd,
                self.work / "logs" / f"agent-{c.name}.log",
                env={"FLEETOPS_TOKEN": token.strip()},
            )
            self.children.append(agent)

    @contextmanager
    def _fleet_api(self) -> Iterator[tuple[fleet_pb2_grpc.FleetServiceStub, tuple[Any, ...]]]:
        """The fleet API with the hub's read-only token: a stub and the metadata to send."""
        ca = (self.work / "hub" / "ca.crt").read_bytes()
        token = (self.work / "hub" / "tokens" / "readonly").read_text().strip()
        with grpc.secure_channel(
            self.address, grpc.ssl_channel_credentials(root_certificates=ca)
        ) as channel:
            yield fleet_pb2_grpc.FleetServiceStub(channel), (("authorization", f"Bearer {token}"),)

    def snapshot(self) -> fleet_pb2.Snapshot:
        with self._fleet_api() as (stub, meta):
            return stub.GetSnapshot(fleet_pb2.SnapshotRequest(), metadata=meta, timeout=10)

    def rollouts(self) -> list[fleet_pb2.Rollout]:
        """Every app's newest rollout."""
        with self._fleet_api() as (stub, meta):
            got = stub.RolloutStatus(fleet_pb2.RolloutStatusRequest(), metadata=meta, timeout=10)
            return list(got.rollouts)

    def history(self, app: str) -> list[types_pb2.Event]:
        with self._fleet_api() as (stub, meta):
            req = fleet_pb2.HistoryRequest(app=app, limit=500)
            return list(stub.History(req, metadata=meta, timeout=10).events)

    def check_children(self) -> None:
        for child in self.children:
            if child.proc.poll() is not None:
                raise DemoError(
                    f"the {child.name} process exited ({child.proc.returncode}); "
                    f"its log ({child.log}):\n{child.tail()}"
                )

    def wait_converged(self, timeout: float) -> float:
        """Until every app runs on every cluster and every app's rollout went through every
        step; a line each time that changes."""
        start = time.monotonic()
        last = ""
        while True:
            self.check_children()
            try:
                snap = self.snapshot()
                rollouts = self.rollouts()
            except grpc.RpcError:
                snap, rollouts = fleet_pb2.Snapshot(), []
            line, done = demowords.progress(
                snap, clusters=[c.name for c in self.clusters], apps=APPS
            )
            line = f"{line}\n              {demowords.line(rollouts)}"
            done = done and demowords.settled(rollouts)
            if line != last:
                say(f"      {time.monotonic() - start:5.1f}s  {line}")
                last = line
            if done:
                return time.monotonic() - start
            if time.monotonic() - start > timeout:
                raise DemoError(
                    f"the fleet did not converge within {timeout:.0f} s:\n"
                    + demowords.describe(snap)
                    + f"\nlogs are in {self.work / 'logs'}"
                )
            time.sleep(0.5)

    def follow(self, revision: str, timeout: float) -> float:
        """Print where the rollout of `revision` stands each time that changes, until it went
        through every step; a DemoError when it failed or took longer than `timeout`."""
        start = time.monotonic()
        last = ""
        while True:
            self.check_children()
            try:
                rollouts = self.rollouts()
            except grpc.RpcError:
                rollouts = []
            mine = [r for r in rollouts if r.revision == revision]
            line = demowords.line(mine) if mine else "the hub has not seen the commit yet"
            if line != last:
                say(f"      {time.monotonic() - start:5.1f}s  {line}")
                last = line
            why = demowords.failure(rollouts, revision)
            if why:
                raise DemoError(f"{why}\nlogs are in {self.work / 'logs'}")
            if demowords.settled(rollouts, revision):
                return time.monotonic() - start
            if time.monotonic() - start > timeout:
                raise DemoError(
                    f"the rollout of {revision[:8]} did not finish within {timeout:.0f} s: "
                    f"{line}\nlogs are in {self.work / 'logs'}"
                )
            time.sleep(0.5)

    def stop(self) -> None:
        """The agents first (together), then the hub, then the registry."""
        agents = [c.proc for c in self.children if c not in (self.hub, self.registry)]
        demoprocs.stop_all(agents)
        for last in (self.hub, self.registry):
            if last is not None:
                demoprocs.stop_all([last.proc])
        self.children.clear()


def image_instructions(work: pathlib.Path, fleet: Fleet) -> str:
    """How to publish a new image, when the demo runs its registry ('' when it does not)."""
    if not fleet.registry_address:
        return ""
    rel = os.path.relpath(work, os.getcwd())
    push = demoimages.shell(demoimages.push_command(fleet.registry_address))
    first, bot = f"{demoimages.REPOSITORY}:{demoimages.FIRST_TAG}", demoimages.BOT_NAME
    return f"""
  Publish a new image and watch the hub commit it, then roll it out: podinfo runs
  {first} from the demo's registry ({fleet.registry_address}), which the hub scans
  every 5 s for the newest 6.x tag. From {os.getcwd()}:
    {push}
  The hub commits {demoimages.NEXT_TAG} to the repo as {bot} (see it: cd {rel}/repo && git pull -q
  && git log -1 -p), and that commit rolls out dev -> staging -> prod (Enter on podinfo in
  the TUI follows it).
"""


def instructions(work: pathlib.Path, fleet: Fleet, *, bake: float) -> str:
    rel = os.path.relpath(work, os.getcwd())
    exe = os.path.relpath(BIN, os.getcwd())
    hub = f"--hub {fleet.address} --data {rel}/hub"
    old, new = SAMPLE_EDIT
    return f"""
The fleet runs: 3 apps on 3 clusters, each from the same Git commit. Every app rolls out
dev -> staging -> prod: a commit reaches staging only after dev ran it Healthy for {bake:g} s,
and prod only after staging did.

  Make a change and watch it move step by step (the hub polls the repo every 2 s; {rel}/repo
  is your clone of the repo it reads, {rel}/repo.git):
    cd {rel}/repo
    git pull -q
    sed -i 's/{old}/{new}/' {SAMPLE_FILE}
    git commit -qam "{SAMPLE_SUBJECT}" && git push -q
{image_instructions(work, fleet)}
  What to look at in the TUI:
    Enter on guestbook opens the app screen; its GATE column says where each cluster stands
      in the rollout: waiting, progressing, baking, done (deferred: its agent is offline)
    o there (R on the overview) opens the rollout screen: the steps, each step's clusters
      (Baking 14s left, Passed), gate readings; g promotes a step past its bake, p pauses

  In another terminal, from {os.getcwd()}:
    {exe}/fleetops-tui {hub}
    {exe}/fleetops-hub status {hub}
    {exe}/fleetops-hub rollout status guestbook {hub}
    {exe}/fleetops-hub history guestbook {hub}
    {exe}/fleetops-hub rollback guestbook <older revision> {hub}

  Logs: {rel}/logs   Kubeconfigs: {rel}/clusters/<env>/kubeconfig (local clusters)
"""


RECEIVED: list[int] = []  # stop signals that arrived, even if their exception was swallowed


def on_stop_signal(signum: int, frame: object) -> None:
    RECEIVED.append(signum)  # a signal landing inside a __del__ loses its exception, not this
    raise Stopped(signum)


def while_tearing_down(signum: int, frame: object) -> None:
    say(f"({signal.Signals(signum).name}: still tearing down, nearly done)")


@contextmanager
def teardown_on_exit(fleet: Fleet, work: pathlib.Path, local: bool) -> Iterator[None]:
    for sig in STOP_SIGNALS:
        signal.signal(sig, on_stop_signal)
    try:
        yield
    finally:
        # nothing may cut the teardown short: a second Ctrl-C, or the SIGHUP and SIGTERM a
        # closing terminal and session send one after the other
        for sig in STOP_SIGNALS:
            signal.signal(sig, while_tearing_down)
        why = sys.exc_info()[1]
        cause = f" ({why.args[0]})" if isinstance(why, Stopped) else ""
        parts = ["agents", "hub"] + (["registry"] if fleet.registry else [])
        parts += ["local clusters"] if local else []
        say(f"Tearing down{cause}: {', '.join(parts)} ...")
        fleet.stop()
        if local:
            localkube_down(work)
        else:
            say(
                "The demo's apps stay in your clusters; remove them with "
                "`kubectl delete namespace " + " ".join(APPS) + "` in each context."
            )
        say("Done.")


def push_image(fleet: Fleet, bare: pathlib.Path, *, follow: bool, timeout: float) -> str:
    """Publish the next tag with the command the instructions give; when `follow`, wait for
    the hub's image commit and follow its rollout step by step. The image commit ('' when not
    followed)."""
    cmd = demoimages.push_command(fleet.registry_address)
    before = demoimages.head(bare)
    say(f"Publishing {demoimages.REPOSITORY}:{demoimages.NEXT_TAG} to the demo's registry:")
    say(f"  $ {demoimages.shell(cmd)}")
    try:
        say(f"  {demoimages.run_push(cmd)}")
        if not follow:
            return ""
        say("Waiting for the hub to scan the registry (every 5 s) and commit the new tag ...")
        commit, took = demoimages.wait_for_commit(
            bare, after=before, timeout=60, check=fleet.check_children
        )
    except demoimages.Error as e:
        raise DemoError(f"{e}\nlogs are in {fleet.work / 'logs'}") from None
    say(
        f'The hub committed {commit.sha[:8]} "{commit.subject}" as {commit.author} '
        f"({took:.1f}s after the push):"
    )
    for change in commit.changes:
        say(f"  {change}")
    took = fleet.follow(commit.sha, timeout)
    say(f"Rolled out in {took:.1f}s: every step took {commit.sha[:8]}.")
    return commit.sha


def open_tui(fleet: Fleet, work: pathlib.Path, *, bake: float) -> None:
    cmd = [str(BIN / "fleetops-tui"), f"--hub={fleet.address}", f"--data={work / 'hub'}"]
    while True:
        subprocess.run(cmd, check=False)
        say(instructions(work, fleet, bake=bake))
        try:
            input("Enter: open the TUI again · Ctrl-C: tear everything down ")
        except EOFError:
            return


def main(argv: list[str] | None = None) -> int:
    code = _main(argv)
    if RECEIVED and code == 0 and RECEIVED[0] != signal.SIGINT:
        return 128 + RECEIVED[0]  # stopped by a signal: say so, even if the demo had finished
    return code


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-tui", action="store_true", help="headless: exit 0 once converged")
    parser.add_argument(
        "--contexts",
        default="",
        metavar="A,B,C",
        help="use these 3 kubeconfig contexts (dev, staging, prod) instead of local clusters",
    )
    parser.add_argument("--kubeconfig", default="", help="kubeconfig for --contexts")
    parser.add_argument(
        "--dir", default=str(ROOT / ".demo"), help="working directory (default .demo; wiped first)"
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to converge")
    parser.add_argument(
        "--bake",
        type=float,
        default=BAKE,
        metavar="SECONDS",
        help=f"how long dev and staging run a revision Healthy before the next step (default "
        f"{BAKE:g})",
    )
    parser.add_argument(
        "--commit",
        action="store_true",
        help="once converged, commit a change to the sample repo and follow it step by step "
        "(headless: exit 0 once every step took it)",
    )
    parser.add_argument(
        "--push",
        action="store_true",
        help=f"once converged (and after --commit), publish {demoimages.REPOSITORY}:"
        f"{demoimages.NEXT_TAG} to the demo's registry and follow the hub's image commit step by "
        "step (headless: exit 0 once every cluster runs it); not with --contexts",
    )
    ns = parser.parse_args(argv)
    contexts = [c.strip() for c in ns.contexts.split(",") if c.strip()]
    if ns.bake < 0:
        parser.error(f"--bake: {ns.bake:g} seconds; give 0 (no bake) or more")
    if ns.push and contexts:
        parser.error(
            "--push needs the demo's own clusters: with --contexts there is no image registry "
            "(your clusters' nodes could not pull from this machine's loopback)"
        )
    work = pathlib.Path(ns.dir).resolve()
    converged = False
    global _transcript
    try:
        check_prerequisites(contexts)
        hold_lock(work)
        stop_leftovers(work)
        if (work / "clusters").exists():  # a previous demo's clusters, if any are left
            localkube_down(work)
        demoprocs.wipe(work)
        (work / "logs").mkdir()
        _transcript = work / "logs" / "demo.log"
        started = time.monotonic()
        fleet = Fleet(work, [])
        with teardown_on_exit(fleet, work, local=not contexts):
            if contexts:
                fleet.clusters = context_clusters(contexts, ns.kubeconfig)
                used = ", ".join(f"{c.env}={c.context}" for c in fleet.clusters)
                step(1, f"using your clusters: {used}")
            else:
                step(1, "starting 3 local Kubernetes clusters: dev, staging, prod ...")
                t = time.monotonic()
                fleet.clusters = local_clusters(work)
                say(f"      up in {time.monotonic() - t:.1f}s")
            step(
                2,
                "creating the sample Git repo: guestbook (YAML), podinfo (Kustomize), redis (Helm)",
            )
            if not contexts:
                fleet.start_registry()
                say(
                    f"      and an image registry on {fleet.registry_address} holding "
                    f"{demoimages.REPOSITORY}:{demoimages.FIRST_TAG}, which podinfo runs"
                )
            bare, repo = make_repo(work, registry=fleet.registry_address)
            step(
                3,
                f"starting the hub: every app rolls out dev -> staging -> prod, {ns.bake:g} s"
                " bakes",
            )
            fleet.start_hub(bare, bake=ns.bake)
            step(4, "registering 3 agents, one process per cluster, each with its own token")
            fleet.start_agents()
            step(
                5,
                "waiting for every app on every cluster to be Synced and Healthy (the first "
                "commit rolls out too: dev, then staging, then prod)",
            )
            took = fleet.wait_converged(ns.timeout)
            converged = True
            say(f"Converged in {took:.1f}s ({time.monotonic() - started:.1f}s since the start).")
            if ns.commit:
                revision = commit_sample(repo)
                say(f'Committed {revision[:8]} "{SAMPLE_SUBJECT}" ({SAMPLE_FILE}).')
            if ns.commit and ns.no_tui:
                took = fleet.follow(revision, ns.timeout)
                app = APPS[0]  # the app the sample commit changes
                order = demowords.arrivals(fleet.history(app), app=app, revision=revision)
                say(f"Rolled out in {took:.1f}s: every step took {revision[:8]}.")
                say(f"{app} {revision[:8]} was given to: {demowords.arrival_line(order)}")
            if ns.push:
                pushed = push_image(fleet, bare, follow=ns.no_tui, timeout=ns.timeout)
            if ns.push and ns.no_tui:
                app = demoimages.APP
                order = demowords.arrivals(fleet.history(app), app=app, revision=pushed)
                say(f"{app} {pushed[:8]} was given to: {demowords.arrival_line(order)}")
                say(f"{app}'s Deployment runs:")
                for c in fleet.clusters:
                    image = demoimages.deployment_image(
                        cache_bin() / "kubectl", c.kubeconfig, c.context
                    )
                    say(f"  {c.name:<8} {image or '(none)'}")
            if ns.no_tui:
                say(demowords.describe(fleet.snapshot()))
                return 0
            say(instructions(work, fleet, bake=ns.bake))
            say("Opening the TUI (q quits it) ...")
            time.sleep(2)
            open_tui(fleet, work, bake=ns.bake)
        return 0
    except DemoError as e:
        complain(f"make demo: {e}")
        return 1
    except Stopped as e:
        if converged and e.signum == signal.SIGINT:
            return 0  # Ctrl-C is how a converged demo ends
        return 128 + e.signum
    except KeyboardInterrupt:
        return 0 if converged else 130


def hold_lock(work: pathlib.Path) -> None:
    """One demo per directory: another live demo in `work` is a DemoError saying which."""
    try:
        demoprocs.hold_lock(work)
    except demoprocs.Busy as e:
        raise DemoError(
            f"another demo is running in {work} (pid {e.pid}); it owns the clusters, hub and "
            f"agents there. End it first (Ctrl-C in its terminal, or `kill {e.pid}`: it tears "
            'everything down), or run this one elsewhere with ARGS="--dir OTHER_DIR".'
        ) from None


def stop_leftovers(work: pathlib.Path) -> None:
    pids = demoprocs.leftovers(work)
    if pids:
        listed = ", ".join(map(str, pids))
        say(f"Stopping what an earlier demo left running in {work} (pids {listed}) ...")
        demoprocs.stop_leftovers(work, pids)


if __name__ == "__main__":
    sys.exit(main())
