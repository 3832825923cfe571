"""Small builders for the objects and policies reconciler tests use."""

from __future__ import annotations

from typing import Any

from fleetops.proto.v1 import types_pb2


def policy(**kw: bool | int) -> types_pb2.SyncPolicy:
    base: dict[str, bool | int] = {
        "auto": True,
        "prune": True,
        "self_heal": False,
        "force_conflicts": True,
    }
    base.update(kw)
    return types_pb2.SyncPolicy(**base)


def namespace(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


def configmap(name: str, ns: str = "", **data: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if ns:
        meta["namespace"] = ns
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": dict(data)}


def deployment(name: str, replicas: int = 1, **extra_spec: Any) -> dict[str, Any]:
    labels = {"app": name}
    pod_spec: dict[str, Any] = {"containers": [{"name": "app", "image": "registry.local/app:1"}]}
    pod_spec.update(extra_spec.pop("pod", {}))
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
            **extra_spec,
        },
    }
