"""Test-side Kubernetes helpers: a dynamic client per local cluster and server-side apply.

Tests may use the kubernetes client directly; the import-linter contract keeps it out of
hub, tui and every agent module but agent.kube.
"""

from __future__ import annotations

import pathlib
import tempfile
from typing import Any

from kubernetes import config, dynamic  # type: ignore[import-untyped]
from kubernetes.client import api_client  # type: ignore[import-untyped]


def client(kubeconfig: pathlib.Path) -> Any:
    """A DynamicClient with its own discovery cache file, so a restarted cluster never
    reads another one's stale discovery."""
    api = config.new_client_from_config(config_file=str(kubeconfig))
    assert isinstance(api, api_client.ApiClient)
    cache = pathlib.Path(tempfile.mkdtemp(prefix="fleetops-discovery-")) / "cache.json"
    return dynamic.DynamicClient(api, cache_file=str(cache))


def apply(dyn: Any, manifest: dict[str, Any]) -> Any:
    """Server-side apply one object as field manager `fleetops-tests`."""
    resource = dyn.resources.get(api_version=manifest["apiVersion"], kind=manifest["kind"])
    meta = manifest["metadata"]
    return resource.server_side_apply(
        body=manifest,
        name=meta["name"],
        namespace=meta.get("namespace"),
        field_manager="fleetops-tests",
        force_conflicts=True,
    )
