"""Why an app could not be reconciled, said so that the person reading the hub can act on it.

The API server refusing the agent (RBAC, HTTP 403) or not answering at all are not faults of
any one object in the bundle: they block the whole app until someone grants a namespace or the
server comes back. This module turns those errors into the app's reason (with what to run) and
into a failed result the runner reports like any other, so the hub never waits for a report
that will not come. Pure: it never calls the cluster, and never puts object content in a reason.
"""

from __future__ import annotations

from fleetops.agent import errors, ids
from fleetops.agent import status as st

APPLY_ROLE = "fleetops-agent-apply"  # the ClusterRole a least-privilege install binds per namespace


def first_line(text: str) -> str:
    """The first line of an error's text (API server messages can run to many lines)."""
    return text.strip().splitlines()[0] if text.strip() else "no message"


def _cluster(cluster: str) -> str:
    return cluster or "CLUSTER"


def advice(e: errors.Forbidden, *, app_namespace: str, agent_namespace: str, cluster: str) -> str:
    """What to do about a 403, from where the request went."""
    name = _cluster(cluster)
    if e.namespace and e.namespace == agent_namespace:
        return (
            f"the agent may not {e.verb} {e.resource} in its own namespace {agent_namespace}, "
            "where it keeps its inventories: apply its install again (`fleetops-hub cluster "
            f"add {name} ...` prints it; its Role there grants the ConfigMaps)"
        )
    if e.namespace:
        return (
            f"grant the agent namespace {e.namespace}: run `fleetops-hub cluster add {name} "
            f"--namespaces {e.namespace},...` (every namespace it manages) and apply what it "
            f"prints, or bind the ClusterRole {APPLY_ROLE} to the agent's ServiceAccount in "
            f"{e.namespace}"
        )
    if e.resource == "namespaces" and app_namespace:
        return (
            f"create namespace {app_namespace} and grant it to the agent: `fleetops-hub cluster "
            f"add {name} --namespaces {app_namespace},...` does both (apply what it prints), or "
            "install the agent with --cluster-admin to let it create namespaces"
        )
    return (
        f"{e.resource or 'cluster-scoped objects'} are cluster-scoped: a least-privilege agent "
        f"may not write them; install it with `fleetops-hub cluster add {name} --cluster-admin`, "
        "or apply them by hand and leave them out of Git"
    )


def forbidden(
    e: errors.Forbidden, *, app_namespace: str, agent_namespace: str, cluster: str
) -> str:
    """The API server's message (first line) and what to do."""
    said = str(e).strip().splitlines()[0] if str(e).strip() else "forbidden"
    how = advice(e, app_namespace=app_namespace, agent_namespace=agent_namespace, cluster=cluster)
    return f"{said}; {how}"


def app_failure(
    e: errors.AgentError,
    *,
    app: ids.AppName,
    revision: ids.Revision,
    bundle_digest: ids.Digest,
    app_namespace: str,
    agent_namespace: str,
    cluster: ids.ClusterName,
) -> st.AppResult:
    """The result of an app the agent could not reconcile at all: ApplyFailed, health
    Unknown (nothing could be looked at), and the reason. An API server that did not answer
    (or failed on its side) is worth another try soon; a refusal needs a person."""
    if isinstance(e, errors.Forbidden):
        reason = forbidden(
            e, app_namespace=app_namespace, agent_namespace=agent_namespace, cluster=cluster
        )
        soon = False
    elif isinstance(e, errors.Unreachable):
        reason, soon = str(e), True
    elif isinstance(e, errors.KubeError):
        reason = f"the Kubernetes API server failed a request (HTTP {e.status}): {e}"
        soon = e.status == 429 or e.status >= 500
    else:
        reason, soon = str(e), False
    return st.AppResult.unreconciled(
        app=app, revision=revision, bundle_digest=bundle_digest, reason=reason, retry_soon=soon
    )
