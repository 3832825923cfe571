"""Test helpers around deploy/local/localkube: find the binaries, start and stop clusters.

Shared by the pytest fixtures in conftest.py and the benchmarks in tests/bench/.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parent.parent
LOCALKUBE = ROOT / "deploy" / "local" / "localkube"


def cache_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("FLEETOPS_CACHE") or pathlib.Path.home() / ".cache/fleetops")


def binary(name: str) -> str:
    """Path of a pinned binary built by `make setup`; fails loudly when it is missing."""
    path = cache_dir() / "bin" / name
    if not os.access(path, os.X_OK):
        raise RuntimeError(
            f"{name} not found at {path}: run `make setup` to build the pinned binaries"
        )
    return str(path)


@dataclasses.dataclass(frozen=True)
class LocalCluster:
    name: str
    kubeconfig: pathlib.Path


def up(
    state: pathlib.Path, names: list[str], *, owner_pid: int | None = None
) -> list[LocalCluster]:
    cmd = [sys.executable, str(LOCALKUBE), "up", "--names", ",".join(names), "--state", str(state)]
    if owner_pid is not None:
        cmd += ["--owner-pid", str(owner_pid)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"localkube up failed ({res.returncode}):\n{res.stderr}")
    paths = [pathlib.Path(line) for line in res.stdout.split()]
    if len(paths) != len(names):
        raise RuntimeError(f"localkube up printed {paths}, expected {len(names)} kubeconfigs")
    return [LocalCluster(n, p) for n, p in zip(names, paths, strict=True)]


def down(state: pathlib.Path) -> None:
    subprocess.run(
        [sys.executable, str(LOCALKUBE), "down", "--state", str(state)],
        capture_output=True,
        timeout=120,
        check=False,
    )


def compact_etcd(cluster: LocalCluster) -> int:
    """Compact the shared etcd at its current revision, as kube-apiserver does every 5 minutes,
    so versions before now are gone (a watch from one is 410 Gone). Returns that revision.

    A cluster younger than the apiserver's compaction interval still keeps every version; tests
    that need an expired one call this instead of depending on the cluster's age."""
    state = json.loads((cluster.kubeconfig.parent.parent / "state.json").read_text())
    base = f"http://127.0.0.1:{int(state['etcd']['client_port'])}/v3/kv"

    def post(path: str, body: dict[str, object]) -> dict[str, object]:
        req = urllib.request.Request(
            f"{base}/{path}", data=json.dumps(body).encode(), method="POST"
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            return dict(json.loads(resp.read()))

    key = base64.b64encode(b"\0").decode()  # any key: only the header's revision is wanted
    header = post("range", {"key": key, "limit": 1})["header"]
    revision = int(header["revision"])  # type: ignore[index]
    post("compaction", {"revision": revision, "physical": True})
    return revision
