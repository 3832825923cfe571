"""Health of a live Kubernetes object, per kind, like kstatus and Argo CD's health checks.

Pure functions from an object (a dict as the API server returns it) to a `Health` with a
one-line reason a person can act on. No cluster access: `fleetops-agent health FILE` and the
reconciler call the same `assess`. Never put field values of Secrets in a reason.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeAlias

from fleetops.proto.v1 import types_pb2

Status: TypeAlias = types_pb2.HealthStatus.ValueType
HEALTHY = types_pb2.HEALTH_STATUS_HEALTHY
PROGRESSING = types_pb2.HEALTH_STATUS_PROGRESSING
DEGRADED = types_pb2.HEALTH_STATUS_DEGRADED
SUSPENDED = types_pb2.HEALTH_STATUS_SUSPENDED
MISSING = types_pb2.HEALTH_STATUS_MISSING
UNKNOWN = types_pb2.HEALTH_STATUS_UNKNOWN

# worst wins when rolling up; Degraded is the most urgent thing to look at
_SEVERITY = {HEALTHY: 0, SUSPENDED: 1, PROGRESSING: 2, UNKNOWN: 3, MISSING: 4, DEGRADED: 5}

WAITING_REASONS_DEGRADED = {
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
}


@dataclasses.dataclass(frozen=True)
class Health:
    status: Status
    reason: str

    @property
    def name(self) -> str:
        return name(self.status)


def name(status: Status) -> str:
    """`HEALTH_STATUS_PROGRESSING` -> `Progressing`."""
    return types_pb2.HealthStatus.Name(status).removeprefix("HEALTH_STATUS_").title()


def worst(statuses: Iterable[Status]) -> Status:
    return max(statuses, key=lambda s: _SEVERITY.get(s, 3), default=HEALTHY)


def missing(what: str) -> Health:
    return Health(MISSING, f"{what} does not exist in the cluster")


def _conditions(obj: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    conds = (obj.get("status") or {}).get("conditions") or []
    return {str(c.get("type")): c for c in conds if isinstance(c, dict)}


def _msg(cond: Mapping[str, Any]) -> str:
    text = str(cond.get("message") or cond.get("reason") or "").strip()
    return text.splitlines()[0] if text else ""


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def _generation_pending(obj: Mapping[str, Any]) -> Health | None:
    meta = obj.get("metadata") or {}
    status = obj.get("status") or {}
    gen = meta.get("generation")
    observed = status.get("observedGeneration")
    if gen is not None and observed is not None and _int(observed) < _int(gen):
        return Health(
            PROGRESSING,
            f"the controller has not observed generation {gen} yet (observed {observed})",
        )
    return None


def _deployment(obj: Mapping[str, Any]) -> Health:
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    if spec.get("paused"):
        return Health(SUSPENDED, "the Deployment is paused (spec.paused: true)")
    if pending := _generation_pending(obj):
        return pending
    progressing = _conditions(obj).get("Progressing")
    if progressing and progressing.get("reason") == "ProgressDeadlineExceeded":
        return Health(DEGRADED, f"rollout stuck: {_msg(progressing)}")
    want = _int(spec.get("replicas", 1))
    updated = _int(status.get("updatedReplicas"))
    total = _int(status.get("replicas"))
    available = _int(status.get("availableReplicas"))
    if updated < want:
        return Health(PROGRESSING, f"{updated} of {want} replicas updated")
    if total > updated:
        return Health(PROGRESSING, f"{total - updated} old replicas are still terminating")
    if available < want:
        return Health(PROGRESSING, f"{available} of {want} updated replicas available")
    return Health(HEALTHY, f"{available} of {want} replicas available")


def _statefulset(obj: Mapping[str, Any]) -> Health:
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    if pending := _generation_pending(obj):
        return pending
    want = _int(spec.get("replicas", 1))
    ready = _int(status.get("readyReplicas"))
    strategy = (spec.get("updateStrategy") or {}).get("type", "RollingUpdate")
    if strategy == "RollingUpdate":
        partition = _int(
            ((spec.get("updateStrategy") or {}).get("rollingUpdate") or {}).get("partition")
        )
        updated = _int(status.get("updatedReplicas"))
        if updated < want - partition:
            return Health(PROGRESSING, f"{updated} of {want - partition} replicas updated")
        if (
            partition == 0
            and status.get("updateRevision")
            and (status.get("currentRevision") != status.get("updateRevision"))
        ):
            return Health(PROGRESSING, "rolling out the new revision")
    if ready < want:
        return Health(PROGRESSING, f"{ready} of {want} replicas ready")
    return Health(HEALTHY, f"{ready} of {want} replicas ready")


def _daemonset(obj: Mapping[str, Any]) -> Health:
    status = obj.get("status") or {}
    if pending := _generation_pending(obj):
        return pending
    want = _int(status.get("desiredNumberScheduled"))
    updated = _int(status.get("updatedNumberScheduled"))
    available = _int(status.get("numberAvailable"))
    strategy = ((obj.get("spec") or {}).get("updateStrategy") or {}).get("type", "RollingUpdate")
    if strategy == "RollingUpdate" and updated < want:
        return Health(PROGRESSING, f"{updated} of {want} nodes updated")
    if available < want:
        return Health(PROGRESSING, f"{available} of {want} nodes available")
    return Health(HEALTHY, f"{available} of {want} nodes available")


def _replicaset(obj: Mapping[str, Any]) -> Health:
    if pending := _generation_pending(obj):
        return pending
    failure = _conditions(obj).get("ReplicaFailure")
    if failure and failure.get("status") == "True":
        return Health(DEGRADED, f"cannot create pods: {_msg(failure)}")
    want = _int((obj.get("spec") or {}).get("replicas", 1))
    available = _int((obj.get("status") or {}).get("availableReplicas"))
    if available < want:
        return Health(PROGRESSING, f"{available} of {want} replicas available")
    return Health(HEALTHY, f"{available} of {want} replicas available")


def _pod(obj: Mapping[str, Any]) -> Health:
    status = obj.get("status") or {}
    phase = status.get("phase", "Pending")
    if phase == "Succeeded":
        return Health(HEALTHY, "the pod completed")
    if phase == "Failed":
        return Health(
            DEGRADED,
            f"the pod failed: {status.get('message') or status.get('reason') or 'see its logs'}",
        )
    for cs in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in WAITING_REASONS_DEGRADED:
            return Health(DEGRADED, f"container {cs.get('name')}: {waiting['reason']}")
    if phase == "Running":
        ready = _conditions(obj).get("Ready")
        if ready and ready.get("status") == "True":
            return Health(HEALTHY, "running and ready")
        restart = (obj.get("spec") or {}).get("restartPolicy", "Always")
        return Health(PROGRESSING, f"running, not ready yet (restartPolicy {restart})")
    scheduled = _conditions(obj).get("PodScheduled")
    if scheduled and scheduled.get("status") == "False":
        return Health(PROGRESSING, f"not scheduled: {_msg(scheduled)}")
    return Health(PROGRESSING, f"pod is {phase}")


def _job(obj: Mapping[str, Any]) -> Health:
    conds = _conditions(obj)
    for t in ("Failed", "FailureTarget"):
        if conds.get(t, {}).get("status") == "True":
            return Health(DEGRADED, f"the job failed: {_msg(conds[t])}")
    for t in ("Complete", "SuccessCriteriaMet"):
        if conds.get(t, {}).get("status") == "True":
            return Health(HEALTHY, "the job completed")
    if (obj.get("spec") or {}).get("suspend"):
        return Health(SUSPENDED, "the job is suspended (spec.suspend: true)")
    active = _int((obj.get("status") or {}).get("active"))
    return Health(PROGRESSING, f"running ({active} active pods)")


def _cronjob(obj: Mapping[str, Any]) -> Health:
    if (obj.get("spec") or {}).get("suspend"):
        return Health(SUSPENDED, "the CronJob is suspended (spec.suspend: true)")
    return Health(HEALTHY, "scheduled")


def _pvc(obj: Mapping[str, Any]) -> Health:
    phase = (obj.get("status") or {}).get("phase", "Pending")
    if phase == "Bound":
        return Health(HEALTHY, "bound")
    if phase == "Lost":
        return Health(DEGRADED, "the claim lost its volume")
    return Health(PROGRESSING, f"claim is {phase}: waiting for a volume")


def _service(obj: Mapping[str, Any]) -> Health:
    if (obj.get("spec") or {}).get("type") == "LoadBalancer":
        if not ((obj.get("status") or {}).get("loadBalancer") or {}).get("ingress"):
            return Health(PROGRESSING, "waiting for the load balancer to get an address")
    return Health(HEALTHY, "exists")


def _ingress(obj: Mapping[str, Any]) -> Health:
    if ((obj.get("status") or {}).get("loadBalancer") or {}).get("ingress"):
        return Health(HEALTHY, "has a load-balancer address")
    return Health(PROGRESSING, "no load-balancer address yet (is an ingress controller running?)")


def _crd(obj: Mapping[str, Any]) -> Health:
    conds = _conditions(obj)
    names = conds.get("NamesAccepted")
    if names and names.get("status") == "False":
        return Health(DEGRADED, f"names not accepted: {_msg(names)}")
    est = conds.get("Established")
    if est and est.get("status") == "True":
        return Health(HEALTHY, "established")
    return Health(PROGRESSING, "waiting for the CRD to be established")


def _apiservice(obj: Mapping[str, Any]) -> Health:
    avail = _conditions(obj).get("Available")
    if avail and avail.get("status") == "True":
        return Health(HEALTHY, "available")
    if avail and avail.get("status") == "False":
        return Health(DEGRADED, f"not available: {_msg(avail)}")
    return Health(PROGRESSING, "waiting for the APIService to become available")


def _namespace(obj: Mapping[str, Any]) -> Health:
    if (obj.get("status") or {}).get("phase") == "Terminating":
        return Health(PROGRESSING, "the namespace is terminating")
    return Health(HEALTHY, "active")


def _generic(obj: Mapping[str, Any]) -> Health:
    """Objects with standard conditions (Flux, cert-manager, Crossplane, ...), like kstatus."""
    if pending := _generation_pending(obj):
        return pending
    conds = _conditions(obj)
    stalled = conds.get("Stalled")
    if stalled and stalled.get("status") == "True":
        return Health(DEGRADED, f"stalled: {_msg(stalled)}")
    ready = conds.get("Ready")
    if ready is not None:
        if ready.get("status") == "True":
            return Health(HEALTHY, _msg(ready) or "ready")
        if ready.get("status") == "False":
            return Health(PROGRESSING, f"not ready: {_msg(ready) or 'no reason given'}")
        return Health(PROGRESSING, "readiness unknown yet")
    reconciling = conds.get("Reconciling")
    if reconciling and reconciling.get("status") == "True":
        return Health(PROGRESSING, f"reconciling: {_msg(reconciling)}")
    return Health(HEALTHY, "exists")


_BY_KIND: dict[tuple[str, str], Callable[[Mapping[str, Any]], Health]] = {
    ("apps", "Deployment"): _deployment,
    ("apps", "StatefulSet"): _statefulset,
    ("apps", "DaemonSet"): _daemonset,
    ("apps", "ReplicaSet"): _replicaset,
    ("", "Pod"): _pod,
    ("batch", "Job"): _job,
    ("batch", "CronJob"): _cronjob,
    ("", "PersistentVolumeClaim"): _pvc,
    ("", "Service"): _service,
    ("networking.k8s.io", "Ingress"): _ingress,
    ("apiextensions.k8s.io", "CustomResourceDefinition"): _crd,
    ("apiregistration.k8s.io", "APIService"): _apiservice,
    ("", "Namespace"): _namespace,
}


def assess(obj: Mapping[str, Any]) -> Health:
    """The health of one live object, with a one-line reason."""
    if (obj.get("metadata") or {}).get("deletionTimestamp"):
        return Health(PROGRESSING, "being deleted")
    api_version = str(obj.get("apiVersion") or "")
    group = api_version.rpartition("/")[0]
    check = _BY_KIND.get((group, str(obj.get("kind") or "")), _generic)
    try:
        return check(obj)
    except (AttributeError, TypeError, ValueError) as e:  # a malformed status is not our crash
        return Health(UNKNOWN, f"cannot read the status: {type(e).__name__}")
