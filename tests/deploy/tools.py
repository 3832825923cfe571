"""Helpers for the install tests: render the agent's manifests three ways, run kubectl, and
make a kubeconfig that acts as the agent's ServiceAccount (a real token from the TokenRequest
API), so what the RBAC allows is checked by the real API server."""

from __future__ import annotations

import json
import pathlib
import subprocess
from typing import Any

import yaml

from tests import localkube

ROOT = pathlib.Path(__file__).resolve().parents[2]
AGENT = ROOT / "deploy" / "agent"
PLACEHOLDERS = {
    "hub_address": "hub.example.com:8443",
    "token": "REPLACE-with-a-token-from-fleetops-hub-cluster-add",
    "ca_pem": "REPLACE with the hub's ca.crt (PEM)\n",
}
Key = tuple[str, str, str, str]


def keyed(objs: list[dict[str, Any]]) -> dict[Key, dict[str, Any]]:
    out: dict[Key, dict[str, Any]] = {}
    for o in objs:
        meta = o["metadata"]
        key = (o["apiVersion"], o["kind"], meta.get("namespace", ""), meta["name"])
        assert key not in out, f"{key} rendered twice"
        out[key] = o
    return out


def kustomize(overlay: str) -> dict[Key, dict[str, Any]]:
    out = subprocess.run(
        [localkube.binary("kustomize"), "build", str(AGENT / "kustomize" / overlay)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return keyed([d for d in yaml.safe_load_all(out) if d])


def helm(values: dict[str, Any], tmp: pathlib.Path) -> subprocess.CompletedProcess[str]:
    vf = tmp / "values.json"
    vf.write_text(json.dumps(values))
    return subprocess.run(
        [
            localkube.binary("helm"),
            "template",
            "fleetops-agent",
            str(AGENT / "helm" / "fleetops-agent"),
            "--values",
            str(vf),
        ],
        capture_output=True,
        text=True,
    )


def helm_objects(values: dict[str, Any], tmp: pathlib.Path) -> dict[Key, dict[str, Any]]:
    done = helm(values, tmp)
    assert done.returncode == 0, done.stderr
    return keyed([d for d in yaml.safe_load_all(done.stdout) if d])


def kubectl(
    kubeconfig: pathlib.Path, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [localkube.binary("kubectl"), f"--kubeconfig={kubeconfig}", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def service_account_kubeconfig(
    admin: pathlib.Path, namespace: str, name: str, out: pathlib.Path
) -> pathlib.Path:
    """A kubeconfig for the same API server that authenticates as namespace/name."""
    token = kubectl(admin, "create", "token", name, "-n", namespace, "--duration=1h")
    assert token.returncode == 0, token.stderr
    cfg = yaml.safe_load(admin.read_text())
    cluster = cfg["clusters"][0]
    cfg["users"] = [{"name": "sa", "user": {"token": token.stdout.strip()}}]
    cfg["contexts"] = [{"name": "sa", "context": {"cluster": cluster["name"], "user": "sa"}}]
    cfg["current-context"] = "sa"
    out.write_text(yaml.safe_dump(cfg))
    out.chmod(0o600)
    return out
