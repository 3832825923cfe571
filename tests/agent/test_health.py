"""Health per kind on object shapes as the API server returns them, through the same
`fleetops-agent health` command a user runs on saved YAML."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

FIXTURES = pathlib.Path(__file__).resolve().parent.parent / "fixtures" / "health"
AGENT = str(pathlib.Path(sys.executable).parent / "fleetops-agent")


def health_of(*files: pathlib.Path) -> dict[str, tuple[str, str]]:
    res = subprocess.run(
        [AGENT, "health", *map(str, files), "--output", "json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    objs = json.loads(res.stdout)["objects"]
    return {f"{o['kind']}/{o['name']}": (o["health"], o["reason"]) for o in objs}


EXPECTED = {
    "Deployment/web-available": ("Healthy", "2 of 2 replicas available"),
    "Deployment/web-rolling": ("Progressing", "1 of 3 replicas updated"),
    "Deployment/web-stuck": ("Degraded", "rollout stuck"),
    "Deployment/web-paused": ("Suspended", "paused"),
    "Deployment/web-unobserved": ("Progressing", "generation 7"),
    "StatefulSet/db": ("Progressing", "1 of 3 replicas ready"),
    "StatefulSet/db-ready": ("Healthy", "3 of 3 replicas ready"),
    "DaemonSet/agent": ("Healthy", "4 of 4 nodes available"),
    "DaemonSet/agent-rolling": ("Progressing", "2 of 4 nodes updated"),
    "ReplicaSet/web-7d4b9c": ("Degraded", "exceeded quota"),
    "Pod/web-ready": ("Healthy", "running and ready"),
    "Pod/web-crashing": ("Degraded", "CrashLoopBackOff"),
    "Pod/web-unschedulable": ("Progressing", "Insufficient cpu"),
    "Pod/migrate": ("Degraded", "exited with code 2"),
    "Job/migrate-done": ("Healthy", "completed"),
    "Job/migrate-failed": ("Degraded", "backoff limit"),
    "Job/migrate-running": ("Progressing", "1 active"),
    "Job/migrate-suspended": ("Suspended", "suspend"),
    "CronJob/nightly": ("Suspended", "suspend"),
    "PersistentVolumeClaim/data": ("Healthy", "bound"),
    "PersistentVolumeClaim/data-pending": ("Progressing", "waiting for a volume"),
    "Service/web": ("Healthy", "exists"),
    "Service/web-public": ("Progressing", "load balancer"),
    "Ingress/web": ("Healthy", "load-balancer address"),
    "CustomResourceDefinition/widgets.example.com": ("Healthy", "established"),
    # Argo CD: an unavailable APIService is Progressing (its backend may still be starting)
    "APIService/v1beta1.metrics.k8s.io": ("Progressing", "no addresses"),
    "Certificate/shop-tls": ("Progressing", "Secret does not exist"),
    "Kustomization/infra": ("Healthy", "Applied revision"),
    "ConfigMap/settings": ("Healthy", "exists"),
    "Secret/db-password": ("Healthy", "exists"),
    # ecosystem.yaml: Argo CD's HPA, Pod and APIService rules, kstatus' for custom resources
    "HorizontalPodAutoscaler/web-scaling": ("Healthy", "recommended size"),
    "HorizontalPodAutoscaler/web-no-metrics": ("Degraded", "unable to get metrics"),
    "HorizontalPodAutoscaler/web-new": ("Progressing", "waiting to autoscale"),
    "HorizontalPodAutoscaler/web-at-max": ("Healthy", "more than the maximum"),
    "HorizontalPodAutoscaler/web-v1-no-scale": ("Degraded", "FailedGetScale"),
    "Pod/hook-running": ("Progressing", "restartPolicy Never"),
    "Pod/hook-pulling": ("Progressing", "Pending"),
    "Pod/hook-done": ("Healthy", "completed"),
    "Pod/batch-oom": ("Degraded", "OOMKilled"),
    "Pod/batch-exit": ("Degraded", "container m exited with code 3"),
    "Pod/web-config-error": ("Degraded", 'CreateContainerConfigError: secret "db" not found'),
    "Pod/web-restarted": ("Degraded", "panic: cannot connect to db"),
    "Pod/web-starting": ("Progressing", "not ready yet"),
    "APIService/v1.custom.metrics.k8s.io": ("Progressing", "waiting to be processed"),
    "APIService/v1.apps": ("Healthy", "available"),
    "Database/orders-reconciling": ("Progressing", "growing the volume"),
    "Database/orders-stalled": ("Degraded", "past the quota"),
    "Database/orders-old-generation": ("Progressing", "generation 4"),
    "Database/orders-ready": ("Healthy", "database is up"),
    "Database/orders-not-ready": ("Progressing", "waiting for the primary"),
}


@pytest.fixture(scope="module")
def assessed() -> dict[str, tuple[str, str]]:
    return health_of(*sorted(FIXTURES.glob("*.yaml")))


@pytest.mark.parametrize("obj", sorted(EXPECTED))
def test_health_per_kind(assessed: dict[str, tuple[str, str]], obj: str) -> None:
    want_health, reason_part = EXPECTED[obj]
    got_health, reason = assessed[obj]
    assert got_health == want_health, f"{obj}: {got_health} ({reason})"
    assert reason_part in reason, f"{obj}: reason {reason!r} does not say {reason_part!r}"


def test_every_fixture_object_has_an_expectation(assessed: dict[str, tuple[str, str]]) -> None:
    assert set(assessed) == set(EXPECTED)


def test_health_never_prints_secret_data() -> None:
    res = subprocess.run(
        [AGENT, "health", str(FIXTURES / "others.yaml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert "Secret shop/db-password" in res.stdout
    assert "c3VwZXItc2VjcmV0LXZhbHVl" not in res.stdout + res.stderr
    assert "super-secret-value" not in res.stdout + res.stderr


def test_invalid_yaml_names_file_and_line(tmp_path: pathlib.Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ndata:\n  password: a: b\n")
    res = subprocess.run([AGENT, "health", str(bad)], capture_output=True, text=True, check=False)
    assert res.returncode == 1
    assert f"{bad}:5: invalid YAML" in res.stderr, res.stderr
    assert "password" not in res.stderr
