"""The pinned helm and kustomize binaries render the fixtures the hub's tests build on."""

from __future__ import annotations

import pathlib
import subprocess
from typing import Any

import yaml

from tests import localkube

FIXTURES = pathlib.Path(__file__).resolve().parent.parent / "fixtures"


def objects(text: str) -> dict[tuple[str, str], dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(text) if d]
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def test_helm_template_renders_the_chart_with_overridden_values() -> None:
    out = subprocess.run(
        [localkube.binary("helm"), "template", "shop", str(FIXTURES / "charts/web"),
         "--namespace", "shop", "--set", "replicas=3"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    rendered = objects(out)
    assert set(rendered) == {("Deployment", "shop"), ("Service", "shop")}
    deploy = rendered[("Deployment", "shop")]
    assert deploy["spec"]["replicas"] == 3
    assert deploy["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.local/web:1.0"


def test_kustomize_build_applies_the_overlay_with_root_only_loading() -> None:
    out = subprocess.run(
        [localkube.binary("kustomize"), "build", "--load-restrictor", "LoadRestrictionsRootOnly",
         str(FIXTURES / "kustomize/overlays/prod")],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    rendered = objects(out)
    assert set(rendered) == {("Deployment", "prod-api"), ("ConfigMap", "prod-api-settings")}
    assert rendered[("Deployment", "prod-api")]["spec"]["replicas"] == 3
