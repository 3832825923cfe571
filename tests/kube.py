"""Test-side Kubernetes helpers: a dynamic client per local cluster, polling with a deadline.

Tests may use the kubernetes client directly; the import-linter contract keeps it out of
hub, tui and every agent module but agent.kube.
"""

from __future__ import annotations

import pathlib
import tempfile
import time
from collections.abc import Callable
from typing import Any, TypeVar

from kubernetes import config, dynamic  # type: ignore[import-untyped]
from kubernetes.client import api_client  # type: ignore[import-untyped]

T = TypeVar("T")


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


def eventually(what: str, probe: Callable[[], T | None], timeout: float = 60.0) -> T:
    """Poll `probe` until it returns something truthy; fail saying what never happened."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except Exception as e:  # a probe may race the apiserver; keep the last error
            last = e
        else:
            if last:
                return last
        time.sleep(0.2)
    raise AssertionError(f"{what} did not happen within {timeout:.0f} s (last: {last!r})")
