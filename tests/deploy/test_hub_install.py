"""The hub's install (deploy/hub) and the image definition: the manifests pass a server-side
dry-run, the shipped hub.yaml and arguments are ones the hub accepts, and the image gets the
same helm and kustomize the tests use (the wheel it installs: tests/deploy/test_wheel.py)."""

from __future__ import annotations

import pathlib
import re
import subprocess

import pytest
import yaml

from fleetops.hub import cli, config
from tests import localkube
from tests.deploy import tools

HUB = tools.ROOT / "deploy" / "hub"


def _objects() -> list[dict[str, object]]:
    out = subprocess.run(
        [localkube.binary("kustomize"), "build", str(HUB)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


@pytest.mark.cluster
def test_hub_manifests_dry_run(local_clusters: list[localkube.LocalCluster]) -> None:
    admin = local_clusters[0].kubeconfig
    objs = _objects()
    kinds = {(o["kind"]) for o in objs}
    assert {"Namespace", "ConfigMap", "Service", "StatefulSet", "ServiceAccount"} <= kinds
    ns = yaml.safe_dump_all([o for o in objs if o["kind"] == "Namespace"])
    assert tools.kubectl(admin, "apply", "--server-side", "-f", "-", stdin=ns).returncode == 0
    try:
        done = tools.kubectl(
            admin,
            "apply",
            "--server-side",
            "--dry-run=server",
            "-f",
            "-",
            stdin=yaml.safe_dump_all(objs),
        )
        assert done.returncode == 0, done.stderr
        assert "statefulset.apps/fleetops-hub serverside-applied (server dry run)" in done.stdout
    finally:
        tools.kubectl(admin, "delete", "namespace", "fleetops", "--wait=false")


def test_shipped_config_and_arguments_are_accepted(tmp_path: pathlib.Path) -> None:
    objs = _objects()
    cm = next(o for o in objs if o["kind"] == "ConfigMap")
    path = tmp_path / "hub.yaml"
    path.write_text(cm["data"]["hub.yaml"])  # type: ignore[index]
    cfg = config.load(path)
    assert [a.name for a in cfg.apps] == ["guestbook"]
    sts = next(o for o in objs if o["kind"] == "StatefulSet")
    (c,) = sts["spec"]["template"]["spec"]["containers"]  # type: ignore[index]
    ns = cli.build_parser().parse_args(c["args"])
    assert ns.command == "serve" and str(ns.data) == "/var/lib/fleetops"
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert {"/var/lib/fleetops", "/tmp", "/etc/fleetops/config", "/etc/fleetops/ca"} <= mounts


def test_image_pins_the_tested_tools() -> None:
    containerfile = (tools.ROOT / "deploy" / "Containerfile").read_text()
    pins = (tools.ROOT / "deploy" / "local" / "build-binaries.sh").read_text()
    for tool, var in (
        ("helm.sh/helm/v3/cmd/helm", "HELM_VERSION"),
        ("kustomize/kustomize/v5", "KUSTOMIZE_VERSION"),
    ):
        want = re.search(rf"{var}=\$\{{{var}:-(v[0-9.]+)\}}", pins)
        assert want, var
        assert f"{tool}@{want.group(1)}" in containerfile, (
            f"Containerfile's {tool} is not {want.group(1)}"
        )
