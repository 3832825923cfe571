"""The demo's image automation, outside the hub: a local registry (Debian's docker-registry on a
free loopback port, a child of the demo like its hub and agents) holding the image podinfo runs,
the command that publishes a newer tag of it, the image commit the hub then makes (found in the
demo's Git repository), and which image each cluster's Deployment runs.

What the hub does with a new tag (scan, choose, commit, roll out) is configured in hub.yaml and
done by the hub alone; this module only sets the stage and reads what happened.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable

import yaml

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import demoprocs  # noqa: E402  (deploy/demo/, beside this module)
import demopush  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
APP = "podinfo"  # the app whose Deployment carries the image marker (apps/podinfo/base)
REPOSITORY = "demo/podinfo"  # in the demo's registry
FIRST_TAG = "6.7.1"  # pushed when the demo starts: what every cluster runs at first
NEXT_TAG = "6.8.0"  # the tag the instructions (and --push) publish
# hub.yaml's imageUpdates author: every image commit is theirs
BOT_NAME, BOT_EMAIL = "fleetops-bot", "bot@fleetops.demo"
START_WITHIN = 20.0  # seconds for the registry to listen


class Error(Exception):
    """Something about the registry or an image commit the user can act on; says what."""


@dataclasses.dataclass(frozen=True)
class ImageCommit:
    sha: str
    author: str  # `name <email>`
    subject: str
    changes: tuple[str, ...]  # the message's `file: old -> new` lines


def binary() -> str:
    """Debian's docker-registry, or '' when it is not installed."""
    return shutil.which("docker-registry") or ""


def start_registry(work: pathlib.Path, *, port: int) -> demoprocs.Child:
    """docker-registry on 127.0.0.1:`port`, storing under `work`/registry, logging to
    `work`/logs/registry.log; returns once it accepts connections."""
    root = work / "registry"
    root.mkdir(parents=True, exist_ok=True)
    config = root / "config.yml"  # its command line names it: demoprocs.leftovers finds it
    config.write_text(
        yaml.safe_dump(
            {
                "version": 0.1,
                "storage": {"filesystem": {"rootdirectory": str(root / "data")}},
                "http": {"addr": f"127.0.0.1:{port}"},
                "log": {"level": "warn"},
            }
        )
    )
    exe = binary()
    if not exe:
        raise Error("docker-registry is not installed: apt-get install docker-registry")
    child = demoprocs.spawn("registry", [exe, "serve", str(config)], work / "logs" / "registry.log")
    deadline = time.monotonic() + START_WITHIN
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return child
        except OSError:
            pass
        if child.proc.poll() is not None or time.monotonic() > deadline:
            child.stop()
            raise Error(
                f"docker-registry did not listen on 127.0.0.1:{port} within "
                f"{START_WITHIN:.0f} s; its log ({child.log}):\n{child.tail()}"
            )
        time.sleep(0.1)


def push_first(registry: str) -> str:
    """Publish FIRST_TAG; its digest."""
    try:
        return demopush.push(registry, REPOSITORY, FIRST_TAG)
    except demopush.PushError as e:
        raise Error(f"publishing {REPOSITORY}:{FIRST_TAG} failed: {e}") from None


def push_command(registry: str, tag: str = NEXT_TAG) -> list[str]:
    """The command the instructions give (and --push runs), relative to the current
    directory when it is inside it."""
    return [
        _shown(pathlib.Path(sys.executable)),
        _shown(HERE / "demopush.py"),
        "--registry",
        registry,
        REPOSITORY,
        tag,
    ]


def _shown(path: pathlib.Path) -> str:
    rel = os.path.relpath(path, os.getcwd())
    return path.as_posix() if rel.startswith("..") else rel


def shell(cmd: list[str]) -> str:
    return shlex.join(cmd)


def run_push(cmd: list[str]) -> str:
    """Run the push command as the user would; what it printed."""
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise Error(f"`{shell(cmd)}` failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout.strip()


def head(repo: pathlib.Path, branch: str = "main") -> str:
    return _git(repo, "rev-parse", branch).strip()


def image_commits(repo: pathlib.Path, *, after: str, branch: str = "main") -> list[ImageCommit]:
    """The bot's commits on `branch` since `after`, oldest first."""
    out = _git(
        repo, "log", "--reverse", f"--author={BOT_EMAIL}", "--format=%H%x1f%an <%ae>%x1f%B%x1e",
        f"{after}..{branch}",
    )  # fmt: skip
    found = []
    for record in out.split("\x1e"):
        if not record.strip():
            continue
        sha, author, message = record.strip("\n").split("\x1f", 2)
        lines = message.strip().splitlines()
        changes = tuple(x for x in lines[1:] if " -> " in x)
        found.append(ImageCommit(sha, author, lines[0] if lines else "", changes))
    return found


def wait_for_commit(
    repo: pathlib.Path,
    *,
    after: str,
    timeout: float,
    check: Callable[[], None],
) -> tuple[ImageCommit, float]:
    """The first image commit after `after`, and the seconds it took to appear; `check` is
    called on every poll (it raises when a demo process died)."""
    start = time.monotonic()
    while True:
        check()
        got = image_commits(repo, after=after)
        if got:
            return got[0], time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise Error(
                f"no image commit by {BOT_NAME} within {timeout:.0f} s of the push; the hub's "
                "log (logs/hub.log) says why"
            )
        time.sleep(0.5)


def deployment_image(kubectl: pathlib.Path, kubeconfig: pathlib.Path, context: str = "") -> str:
    """The image podinfo's Deployment runs in one cluster ('' when it has none yet)."""
    cmd = [
        str(kubectl),
        f"--kubeconfig={kubeconfig}",
        *([f"--context={context}"] if context else []),
        "-n", APP, "get", "deployment", APP,
        "-o", "jsonpath={.spec.template.spec.containers[0].image}",
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    return done.stdout.strip() if done.returncode == 0 else ""


def _git(repo: pathlib.Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=60, check=False
    )
    if done.returncode != 0:
        raise Error(f"git {args[0]} in {repo} failed: {done.stderr.strip()}")
    return done.stdout
