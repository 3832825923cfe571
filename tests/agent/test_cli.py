"""`fleetops-agent apply`, `status` and `reconcile` as a user runs them, on a real cluster."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import yaml

from tests import localkube
from tests.agent.objects import configmap, deployment, namespace

AGENT = str(pathlib.Path(sys.executable).parent / "fleetops-agent")


def agent(*args: str, state: pathlib.Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [AGENT, *args, "--state", str(state), "--inventory-namespace", "fleetops-test"],
        capture_output=True,
        text=True,
        check=False,
        timeout=180,
    )


def kubectl(cluster: localkube.LocalCluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [localkube.binary("kubectl"), f"--kubeconfig={cluster.kubeconfig}", *args],
        capture_output=True,
        text=True,
        check=False,
    )


def write_bundle(root: pathlib.Path, ns: str) -> None:
    (root / "web").mkdir(parents=True)
    (root / "namespace.yaml").write_text(yaml.safe_dump(namespace(ns)))
    (root / "web" / "all.yaml").write_text(
        yaml.safe_dump_all([deployment("web", replicas=2), configmap("web-settings", level="info")])
    )
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "web-token"},
        "stringData": {"token": "s3cr3t-token-value"},
    }
    (root / "web" / "secret.yml").write_text(yaml.safe_dump(secret))
    (root / "README.md").write_text("not a manifest\n")


def test_apply_then_status_then_drift(
    local_clusters: list[localkube.LocalCluster], tmp_path: pathlib.Path, unique_name: str
) -> None:
    c1 = local_clusters[0]
    bundle = tmp_path / "bundle"
    write_bundle(bundle, unique_name)
    state = tmp_path / "state"
    res = agent(
        "apply",
        "--kubeconfig",
        str(c1.kubeconfig),
        "--app",
        unique_name,
        "--namespace",
        unique_name,
        "--bundle",
        str(bundle),
        "--prune",
        "--wait",
        "60",
        state=state,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"Deployment.apps {unique_name}/web" in res.stdout
    assert "sync Synced  health Healthy" in res.stdout, res.stdout
    assert "s3cr3t" not in res.stdout + res.stderr

    kubectl(
        c1,
        "-n",
        unique_name,
        "patch",
        "configmap",
        "web-settings",
        "-p",
        '{"data":{"level":"debug"}}',
    )
    res = agent(
        "status",
        "--kubeconfig",
        str(c1.kubeconfig),
        "--app",
        unique_name,
        "--output",
        "json",
        state=state,
    )
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["sync"] == "OutOfSync"
    settings = next(r for r in report["resources"] if r["name"] == "web-settings")
    assert settings["drift"] == [{"path": "data.level", "desired": '"info"', "live": '"debug"'}]
    assert "s3cr3t" not in res.stdout


def test_apply_reports_bad_manifest_by_file_and_line(
    local_clusters: list[localkube.LocalCluster], tmp_path: pathlib.Path, unique_name: str
) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "ns.yaml").write_text(yaml.safe_dump(namespace(unique_name)))
    (bundle / "broken.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n data: {}\n"
    )
    (bundle / "good.yaml").write_text(yaml.safe_dump(configmap("good", k="v")))
    res = agent(
        "apply",
        "--kubeconfig",
        str(local_clusters[0].kubeconfig),
        "--app",
        unique_name,
        "--namespace",
        unique_name,
        "--bundle",
        str(bundle),
        state=tmp_path / "state",
    )
    assert res.returncode == 1
    assert "broken.yaml:" in res.stdout and "invalid YAML" in res.stdout, res.stdout
    assert "sync ApplyFailed" in res.stdout
    assert kubectl(local_clusters[0], "-n", unique_name, "get", "configmap", "good").returncode == 0


def test_reconcile_from_local_state_heals_without_a_hub(
    local_clusters: list[localkube.LocalCluster], tmp_path: pathlib.Path, unique_name: str
) -> None:
    c1 = local_clusters[0]
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "all.yaml").write_text(
        yaml.safe_dump_all([namespace(unique_name), configmap("settings", level="info")])
    )
    state = tmp_path / "state"
    res = agent(
        "apply",
        "--kubeconfig",
        str(c1.kubeconfig),
        "--app",
        unique_name,
        "--namespace",
        unique_name,
        "--bundle",
        str(bundle),
        "--self-heal",
        state=state,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert kubectl(c1, "-n", unique_name, "delete", "configmap", "settings").returncode == 0
    res = agent("reconcile", "--kubeconfig", str(c1.kubeconfig), "--once", state=state)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"app {unique_name}" in res.stdout and "healed 1" in res.stdout, res.stdout
    got = kubectl(
        c1, "-n", unique_name, "get", "configmap", "settings", "-o", "jsonpath={.data.level}"
    )
    assert got.stdout == "info"


def test_status_without_local_copy_reads_the_inventory(
    local_clusters: list[localkube.LocalCluster], tmp_path: pathlib.Path, unique_name: str
) -> None:
    c1 = local_clusters[0]
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "all.yaml").write_text(
        yaml.safe_dump_all([namespace(unique_name), configmap("a"), configmap("b")])
    )
    res = agent(
        "apply",
        "--kubeconfig",
        str(c1.kubeconfig),
        "--app",
        unique_name,
        "--namespace",
        unique_name,
        "--bundle",
        str(bundle),
        state=tmp_path / "state-here",
    )
    assert res.returncode == 0, res.stdout + res.stderr
    kubectl(c1, "-n", unique_name, "delete", "configmap", "b")
    # another machine, another state dir: only the cluster remembers what was applied
    res = agent(
        "status",
        "--kubeconfig",
        str(c1.kubeconfig),
        "--app",
        unique_name,
        "--output",
        "json",
        state=tmp_path / "state-elsewhere",
    )
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["sync"] == "Unknown" and "drift not checked" in report["reason"]
    healths = {r["name"]: r["health"] for r in report["resources"]}
    assert healths == {unique_name: "Healthy", "a": "Healthy", "b": "Missing"}

    res = agent(
        "status",
        "--kubeconfig",
        str(c1.kubeconfig),
        "--app",
        "never-applied",
        state=tmp_path / "state-elsewhere",
    )
    assert res.returncode == 1 and "never applied to this cluster" in res.stderr
