"""`make demo`, headless, as the suite's last word on the whole product: local clusters (or the
contexts given), the sample repo, a hub and three agent processes, every app rolled out dev ->
staging -> prod, a commit followed step by step through the same rollout, a new image published
to the demo's registry and the hub's image commit followed the same way, and torn down.

The demo bakes each step 20 s; these tests ask for BAKE seconds, enough to see the steps apart.
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import pytest
import yaml

from tests import localkube
from tests.support import fleet

pytestmark = pytest.mark.cluster
ROOT = pathlib.Path(__file__).resolve().parents[2]
DEMO = ROOT / "deploy" / "demo" / "demo.py"
CELLS = [(c, a) for c in ("dev", "staging", "prod") for a in ("guestbook", "podinfo", "redis")]
BAKE = 3  # seconds dev and staging bake (demo.py --bake)


def _demo(*args: str, timeout: float = 400) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(DEMO), "--no-tui", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def _converged_rows(stdout: str, revision: str = "") -> set[tuple[str, str]]:
    """The (cluster, app) rows the demo printed as Synced and Healthy (on `revision`)."""
    rows = set()
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[3:5] == ["Synced", "Healthy"]:
            if not revision or parts[2] == revision[:8]:
                rows.add((parts[0], parts[1]))
    return rows


def _given_to(stdout: str, revision: str, app: str = "guestbook") -> list[tuple[str, float]]:
    """`guestbook 1a2b3c4d was given to: dev +0.0s, staging +3.2s, prod +6.3s`, from the hub's
    history: (cluster, seconds after the first) in the order the hub assigned the commit."""
    found = re.search(rf"^{app} {revision[:8]} was given to: (.*)$", stdout, re.M)
    assert found, stdout
    return [(c, float(s)) for c, s in re.findall(r"(\w+) \+([\d.]+)s", found.group(1))]


def test_headless_demo_converges_on_its_own_clusters_and_cleans_up(tmp_path: pathlib.Path) -> None:
    work = tmp_path / "demo"
    done = _demo(
        "--dir", str(work), "--timeout", "240", "--bake", str(BAKE), "--commit", "--push"
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "[1/5] starting 3 local Kubernetes clusters" in done.stdout
    assert f"every app rolls out dev -> staging -> prod, {BAKE} s bakes" in done.stdout
    assert "Converged in" in done.stdout
    assert _converged_rows(done.stdout) == set(CELLS), done.stdout

    # the demo's commit moved step by step: dev first, staging once dev baked it, prod last
    committed = re.search(
        r'^Committed ([0-9a-f]{8}) "guestbook: a new greeting"', done.stdout, re.M
    )
    assert committed, done.stdout
    rev = committed.group(1)
    order = _given_to(done.stdout, rev)
    assert [c for c, _ in order] == ["dev", "staging", "prod"], done.stdout
    (_, dev), (_, staging), (_, prod) = order
    assert staging - dev >= BAKE * 0.9 and prod - staging >= BAKE * 0.9, order
    # while dev baked it, neither staging nor prod had it; then the rollout ended Succeeded
    assert re.search(
        rf"rollout {rev} of 3 apps Running: dev Baking.* -> staging Waiting -> prod Waiting",
        done.stdout,
    ), done.stdout
    assert (
        f"rollout {rev} of 3 apps Succeeded: dev Passed -> staging Passed -> prod Passed"
        in done.stdout
    )
    _check_image_update(done.stdout, work, after=rev)
    # torn down: the clusters answer no more and no hub, agent or registry is left running
    status = subprocess.run(
        [sys.executable, str(localkube.LOCALKUBE), "status", "--state", str(work / "clusters")],
        capture_output=True,
        text=True,
    )
    assert "up" not in status.stdout.split(), status.stdout
    for mark in (f"--data={work}/hub", f"{work}/registry/config.yml"):
        leftovers = subprocess.run(["pgrep", "-f", mark], capture_output=True, text=True)
        assert leftovers.stdout.strip() == "", mark


def _check_image_update(stdout: str, work: pathlib.Path, *, after: str) -> None:
    """After the guestbook commit `after`, --push published demo/podinfo:6.8.0: the hub made
    one image commit as its bot, changing only the marked line, and that commit went to dev,
    then staging, then prod, whose Deployments all run the new tag."""
    registry = re.search(
        r"and an image registry on (127\.0\.0\.1:\d+) holding demo/podinfo:6\.7\.1", stdout
    )
    assert registry, stdout
    image = f"{registry.group(1)}/demo/podinfo"
    assert (
        f"deploy/demo/demopush.py --registry {registry.group(1)} demo/podinfo 6.8.0\n"
        f"  pushed {image}:6.8.0 (sha256:"
    ) in stdout
    # the image commit, in the repo the hub reads: the bot's, right after the demo's commit
    bare = work / "repo.git"
    log = fleet.git(bare, "log", "--format=%H %P|%an <%ae>|%s", "main").splitlines()
    sha, parent = log[0].split("|")[0].split()
    assert log[0].split("|")[1:] == ["fleetops-bot <bot@fleetops.demo>", "images: a new podinfo"]
    assert parent.startswith(after) and len(log) == 3, log
    assert f'The hub committed {sha[:8]} "images: a new podinfo" as fleetops-bot' in stdout
    diff = fleet.git(bare, "diff", "--unified=0", f"{sha}^", sha)
    changed = [x for x in diff.splitlines() if x[:1] in "+-" and x[:3] not in ("+++", "---")]
    marker = '# {"$imagepolicy": "demo:podinfo"}'
    assert changed == [
        f'-          image: "{image}:6.7.1" {marker}',
        f'+          image: "{image}:6.8.0" {marker}',
    ], diff
    # rolled out step by step: dev first, each step after the one before baked it
    order = _given_to(stdout, sha, app="podinfo")
    assert [c for c, _ in order] == ["dev", "staging", "prod"], stdout
    (_, dev), (_, staging), (_, prod) = order
    assert staging - dev >= BAKE * 0.9 and prod - staging >= BAKE * 0.9, order
    assert (
        f"rollout {sha[:8]} of 3 apps Succeeded: dev Passed -> staging Passed -> prod Passed"
        in stdout
    )
    runs = re.search(r"^podinfo's Deployment runs:\n((?:  .*\n){3})", stdout, re.M)
    assert runs, stdout
    assert runs.group(1).split() == [
        "dev", f"{image}:6.8.0", "staging", f"{image}:6.8.0", "prod", f"{image}:6.8.0"
    ]  # fmt: skip
    assert _converged_rows(stdout, sha) == set(CELLS), stdout


def test_headless_demo_on_existing_contexts(
    local_clusters: list[localkube.LocalCluster], tmp_path: pathlib.Path
) -> None:
    merged: dict[str, list[object]] = {"clusters": [], "users": [], "contexts": []}
    for c in local_clusters:
        cfg = yaml.safe_load(c.kubeconfig.read_text())
        for key in merged:
            merged[key] += cfg[key]
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump({"apiVersion": "v1", "kind": "Config", **merged, "current-context": "c1"})
    )
    names = ",".join(c.name for c in local_clusters)
    try:
        bad = _demo(
            "--contexts",
            "c1,nope,c3",
            "--kubeconfig",
            str(kubeconfig),
            "--dir",
            str(tmp_path / "bad"),
        )
        assert bad.returncode == 1
        assert "nope not in" in bad.stderr and "c1, c2, c3" in bad.stderr
        # no image registry beside your clusters: their nodes could not pull from it
        no_push = _demo("--contexts", names, "--push", "--dir", str(tmp_path / "bad"))
        assert no_push.returncode == 2
        assert "--push needs the demo's own clusters" in no_push.stderr

        done = _demo(
            "--contexts",
            names,
            "--kubeconfig",
            str(kubeconfig),
            "--dir",
            str(tmp_path / "demo"),
            "--bake",
            str(BAKE),
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "using your clusters: dev=c1, staging=c2, prod=c3" in done.stdout
        assert _converged_rows(done.stdout) == set(CELLS), done.stdout
        # converged means the first commit went through every step of every app's rollout
        assert "of 3 apps Succeeded: dev Passed -> staging Passed -> prod Passed" in done.stdout
        replicas = subprocess.run(
            [
                localkube.binary("kubectl"),
                f"--kubeconfig={local_clusters[2].kubeconfig}",
                "-n",
                "guestbook",
                "get",
                "deploy",
                "guestbook",
                "-o",
                "jsonpath={.spec.replicas}",
            ],
            capture_output=True,
            text=True,
        )
        assert replicas.stdout == "3"  # prod's overlay
        image = subprocess.run(
            [localkube.binary("kubectl"), f"--kubeconfig={local_clusters[0].kubeconfig}",
             "-n", "podinfo", "get", "deploy", "podinfo",
             "-o", "jsonpath={.spec.template.spec.containers[0].image}"],
            capture_output=True, text=True,
        )  # fmt: skip
        assert image.stdout == "ghcr.io/stefanprodan/podinfo:6.7.1"  # podinfo's own image
        assert "image registry" not in done.stdout
        assert "kubectl delete namespace guestbook podinfo redis" in done.stdout
    finally:
        for c in local_clusters:
            subprocess.run(
                [
                    localkube.binary("kubectl"),
                    f"--kubeconfig={c.kubeconfig}",
                    "delete",
                    "namespace",
                    "guestbook",
                    "podinfo",
                    "redis",
                    "--ignore-not-found",
                    "--wait=false",
                ],
                capture_output=True,
            )


def test_prerequisites_are_named_with_how_to_get_them(tmp_path: pathlib.Path) -> None:
    # Every command of this machine except git, and an empty binary cache.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for d in ("/usr/local/bin", "/usr/bin", "/bin"):
        for tool in pathlib.Path(d).iterdir() if pathlib.Path(d).is_dir() else []:
            if tool.name.startswith(("git", "docker-registry")):
                continue
            if not (bin_dir / tool.name).exists():
                os.symlink(tool, bin_dir / tool.name)
    (bin_dir / "python3").unlink(missing_ok=True)
    os.symlink(os.path.realpath(sys.executable), bin_dir / "python3")
    env = {"PATH": str(bin_dir), "HOME": str(tmp_path), "FLEETOPS_CACHE": str(tmp_path / "cache")}
    prereqs = ["bash", str(ROOT / "deploy" / "demo" / "prereqs")]
    done = subprocess.run(prereqs, capture_output=True, text=True, env=env)
    assert done.returncode == 1
    assert "make demo: missing git: apt-get install git" in done.stderr
    assert "make demo: missing docker-registry: apt-get install docker-registry" in done.stderr
    # with your clusters (make demo ARGS="--contexts ...") the demo runs no registry
    contexts = {**env, "ARGS": "--no-tui --contexts a,b,c"}
    done = subprocess.run(prereqs, capture_output=True, text=True, env=contexts)
    assert "missing git" in done.stderr and "docker-registry" not in done.stderr

    # With git, a first run says it must build the binaries, which ones, and how long it takes.
    git = subprocess.run(
        ["bash", "-c", "command -v git"], capture_output=True, text=True
    ).stdout.strip()
    os.symlink(git, bin_dir / "git")
    os.symlink("/usr/bin/docker-registry", bin_dir / "docker-registry")
    done = subprocess.run(prereqs, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert "first run: building 8 binaries" in done.stdout
    assert "  - kube-apiserver v" in done.stdout and "about 20 minutes" in done.stdout
