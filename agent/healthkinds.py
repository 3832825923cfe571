"""The built-in health rules per kind, like Argo CD's health checks and kstatus.

Pure functions from an object (a dict as the API server returns it) to a `Health` with a
one-line reason a person can act on; `agent.health` puts custom Lua checks in front of them.
No cluster access. Never put field values of Secrets in a reason.
"""

from __future__ import annotations

import dataclasses
import json
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


def _waiting_error(reason: str) -> bool:
    """Argo CD's test of a waiting container that will not start by itself."""
    return reason.startswith("Err") or reason.endswith(("Error", "BackOff"))


def _terminated(cs: Mapping[str, Any], *, last: bool = False) -> str:
    """What a container's (last) termination says, e.g. `OOMKilled` or `exited with code 2`."""
    term = (cs.get("lastState" if last else "state") or {}).get("terminated") or {}
    if not term:
        return ""
    name = cs.get("name")
    if term.get("reason") == "OOMKilled":
        return f"container {name} was OOMKilled (out of memory)"
    text = str(term.get("message") or "").strip()
    code = term.get("exitCode")
    said = f"container {name} exited with code {code}" if code is not None else ""
    if text:
        return f"{said}: {text.splitlines()[0]}" if said else f"container {name}: {text}"
    return said or f"container {name} terminated ({term.get('reason') or 'no reason given'})"


def _pod(obj: Mapping[str, Any]) -> Health:
    """Argo CD's rules: restartPolicy Never/OnFailure pods (hooks, job pods) are Progressing
    until they end, even when ready; only Always pods fail early on a stuck container."""
    status = obj.get("status") or {}
    phase = status.get("phase", "Pending")
    policy = (obj.get("spec") or {}).get("restartPolicy", "Always")
    containers = (status.get("initContainerStatuses") or []) + (
        status.get("containerStatuses") or []
    )
    if phase == "Succeeded":
        return Health(HEALTHY, "the pod completed")
    if phase == "Failed":
        said = str(status.get("message") or "").strip()
        if not said:
            said = next((t for cs in containers if (t := _terminated(cs))), "")
        return Health(DEGRADED, f"the pod failed: {said or status.get('reason') or 'see its logs'}")
    if policy == "Always":
        for cs in containers:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            reason = str(waiting.get("reason") or "")
            if _waiting_error(reason):
                detail = str(waiting.get("message") or "").strip()
                detail = f": {detail.splitlines()[0]}" if detail else ""
                return Health(DEGRADED, f"container {cs.get('name')}: {reason}{detail}")
    if phase == "Running":
        if policy != "Always":
            return Health(
                PROGRESSING, f"running (restartPolicy {policy}): healthy once it completes"
            )
        ready = _conditions(obj).get("Ready")
        if ready and ready.get("status") == "True":
            return Health(HEALTHY, "running and ready")
        restarted = next((t for cs in containers if (t := _terminated(cs, last=True))), "")
        if restarted:
            return Health(DEGRADED, f"not ready after a restart: {restarted}")
        return Health(PROGRESSING, "running, not ready yet")
    scheduled = _conditions(obj).get("PodScheduled")
    if scheduled and scheduled.get("status") == "False":
        return Health(PROGRESSING, f"not scheduled: {_msg(scheduled)}")
    if phase == "Unknown":
        return Health(UNKNOWN, "the pod's node does not report it (phase Unknown)")
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
    """As Argo CD: an unavailable APIService is Progressing, not Degraded (its backend is
    often an app of the same sync, still starting)."""
    avail = _conditions(obj).get("Available")
    if avail and avail.get("status") == "True":
        return Health(HEALTHY, "available")
    if avail and avail.get("status") == "False":
        return Health(PROGRESSING, f"not available yet: {_msg(avail) or 'no reason given'}")
    return Health(PROGRESSING, "waiting to be processed (no Available condition yet)")


_HPA_DEGRADED = {
    "AbleToScale": ("FailedGetScale", "FailedUpdateScale"),
    "ScalingActive": (
        "FailedGetResourceMetric",
        "FailedGetObjectMetric",
        "FailedGetPodsMetric",
        "FailedGetExternalMetric",
        "FailedComputeMetricsReplicas",
        "InvalidSelector",
    ),
}
HPA_V1_CONDITIONS = "autoscaling.alpha.kubernetes.io/conditions"


def _hpa(obj: Mapping[str, Any]) -> Health:
    """Argo CD's reading of the conditions (autoscaling/v2, or v1's annotation), except that a
    failure anywhere in the list wins over AbleToScale=True earlier in it."""
    conds: Any = (obj.get("status") or {}).get("conditions")
    if conds is None:
        note = ((obj.get("metadata") or {}).get("annotations") or {}).get(HPA_V1_CONDITIONS)
        try:
            conds = json.loads(note) if note else []
        except ValueError:
            return Health(UNKNOWN, f"the {HPA_V1_CONDITIONS} annotation is not a JSON list")
    conds = [c for c in conds or [] if isinstance(c, dict)]
    for c in conds:
        if c.get("reason") in _HPA_DEGRADED.get(str(c.get("type")), ()):
            return Health(DEGRADED, f"{c.get('type')} {c.get('reason')}: {_msg(c)}")
    for c in conds:
        if c.get("type") in ("AbleToScale", "ScalingLimited") and c.get("status") == "True":
            return Health(HEALTHY, _msg(c) or f"{c.get('type')}")
    return Health(PROGRESSING, "waiting to autoscale")


def _namespace(obj: Mapping[str, Any]) -> Health:
    if (obj.get("status") or {}).get("phase") == "Terminating":
        return Health(PROGRESSING, "the namespace is terminating")
    return Health(HEALTHY, "active")


def _generic(obj: Mapping[str, Any]) -> Health:
    """Objects with standard conditions (Flux, cert-manager, Crossplane, ...), as kstatus
    computes them: the observedGeneration gate, then Reconciling=True (Progressing) and
    Stalled=True (Degraded) in list order, before Ready."""
    if pending := _generation_pending(obj):
        return pending
    conds = (obj.get("status") or {}).get("conditions") or []
    for cond in conds:
        if not isinstance(cond, dict) or cond.get("status") != "True":
            continue
        if cond.get("type") == "Reconciling":
            return Health(PROGRESSING, f"reconciling: {_msg(cond) or 'no reason given'}")
        if cond.get("type") == "Stalled":
            return Health(DEGRADED, f"stalled: {_msg(cond) or 'no reason given'}")
    ready = _conditions(obj).get("Ready")
    if ready is not None:
        if ready.get("status") == "True":
            return Health(HEALTHY, _msg(ready) or "ready")
        if ready.get("status") == "False":
            return Health(PROGRESSING, f"not ready: {_msg(ready) or 'no reason given'}")
        return Health(PROGRESSING, "readiness unknown yet")
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
    ("autoscaling", "HorizontalPodAutoscaler"): _hpa,
    ("", "Namespace"): _namespace,
}


def builtin(obj: Mapping[str, Any], *, group: str, kind: str) -> Health:
    """The built-in rules' health of one live object, with a one-line reason."""
    check = _BY_KIND.get((group, kind), _generic)
    try:
        return check(obj)
    except (AttributeError, TypeError, ValueError) as e:  # a malformed status is not our crash
        return Health(UNKNOWN, f"cannot read the status: {type(e).__name__}")
