"""The objects that install an agent into a cluster, as `fleetops-hub cluster add` prints them.

`deploy/agent/kustomize` and `deploy/agent/helm` render the same objects; a test builds all
three and compares them, so a change here must be made there too.

Least privilege by default: the agent may read what health needs cluster-wide (never
Secrets), do anything namespaced inside the namespaces it is given (a RoleBinding to
`fleetops-agent-apply` in each), and keep its inventory and identity in its own namespace.
Cluster-scoped objects (Namespaces, CRDs, ClusterRoles) need `cluster_admin`, an explicit
opt-in that binds `cluster-admin` instead.

Every Namespace it creates carries a Pod Security level: `restricted` for the agent's own
namespace (only the agent runs there), and for the app namespaces of `namespaces` the level
`pod_security` (default `baseline`: what most off-the-shelf charts run under), with `warn` and
`audit` at `restricted` so a user sees what would have to change to tighten it.
"""

from __future__ import annotations

from typing import Any

from fleetops import hub
from fleetops.hub import config, errors

NAMESPACE = "fleetops-system"
NAME = "fleetops-agent"
BOOTSTRAP_SECRET = "fleetops-agent-bootstrap"
IDENTITY_SECRET = "fleetops-agent-identity"
APPLY_ROLE = "fleetops-agent-apply"
DEFAULT_IMAGE = f"ghcr.io/fleetops/fleetops:{hub.__version__}"
LABELS = {"app.kubernetes.io/name": NAME, "app.kubernetes.io/part-of": "fleetops"}
POD_SECURITY = "pod-security.kubernetes.io"
POD_SECURITY_LEVELS = ("privileged", "baseline", "restricted")
DEFAULT_POD_SECURITY = "baseline"  # for app namespaces; the agent's own is always restricted

_READ = ["get", "list", "watch"]
# What health, drift and ordering read: workloads and what they roll up, CRDs for the
# Established wait, Namespaces to know whether to create one. Never Secrets.
READ_RULES: list[dict[str, Any]] = [
    {
        "apiGroups": [""],
        "resources": [
            "pods",
            "services",
            "endpoints",
            "persistentvolumeclaims",
            "namespaces",
            "configmaps",
            "serviceaccounts",
            "replicationcontrollers",
            "events",
        ],
        "verbs": _READ,
    },
    {
        "apiGroups": ["apps"],
        "resources": ["deployments", "replicasets", "statefulsets", "daemonsets"],
        "verbs": _READ,
    },
    {"apiGroups": ["batch"], "resources": ["jobs", "cronjobs"], "verbs": _READ},
    {"apiGroups": ["autoscaling"], "resources": ["horizontalpodautoscalers"], "verbs": _READ},
    {"apiGroups": ["policy"], "resources": ["poddisruptionbudgets"], "verbs": _READ},
    {
        "apiGroups": ["networking.k8s.io"],
        "resources": ["ingresses", "networkpolicies"],
        "verbs": _READ,
    },
    {
        "apiGroups": ["apiextensions.k8s.io"],
        "resources": ["customresourcedefinitions"],
        "verbs": _READ,
    },
    {"apiGroups": ["apiregistration.k8s.io"], "resources": ["apiservices"], "verbs": _READ},
]


def _meta(name: str, *, namespace: str = "") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    meta["labels"] = dict(LABELS)
    return meta


def _namespace(name: str, *, enforce: str) -> dict[str, Any]:
    meta = _meta(name)
    meta["labels"][f"{POD_SECURITY}/enforce"] = enforce
    if name != NAMESPACE:  # the agent's own is restricted already: nothing more to warn about
        meta["labels"][f"{POD_SECURITY}/warn"] = "restricted"
        meta["labels"][f"{POD_SECURITY}/audit"] = "restricted"
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": meta}


def _subject() -> list[dict[str, str]]:
    return [{"kind": "ServiceAccount", "name": NAME, "namespace": NAMESPACE}]


def check_scope(
    namespaces: list[str], cluster_admin: bool, *, pod_security: str = DEFAULT_POD_SECURITY
) -> None:
    """Where the agent may deploy must be said, and said right, before a token is spent."""
    if pod_security not in POD_SECURITY_LEVELS:
        raise errors.InvalidArgument(
            f"--pod-security: {pod_security!r} is not a Pod Security level; use one of "
            f"{', '.join(POD_SECURITY_LEVELS)} (default {DEFAULT_POD_SECURITY})"
        )
    if not cluster_admin and not namespaces:
        raise errors.InvalidArgument(
            "the agent needs somewhere to deploy: pass --namespaces a,b (least privilege) or "
            "--cluster-admin (it may then create namespaces, CRDs and other cluster objects)"
        )
    for ns in namespaces:
        if not config.DNS_LABEL.match(ns) or len(ns) > 63:
            raise errors.InvalidArgument(
                f"--namespaces: {ns!r} is not a namespace name (lowercase letters, digits, '-')"
            )
        if ns == NAMESPACE:
            raise errors.InvalidArgument(
                f"--namespaces: {NAMESPACE} is the agent's own namespace; it needs no grant"
            )


def agent_objects(
    *,
    hub_address: str,
    token: str,
    ca_pem: str,
    namespaces: list[str],
    cluster_admin: bool,
    image: str = DEFAULT_IMAGE,
    pod_security: str = DEFAULT_POD_SECURITY,
) -> list[dict[str, Any]]:
    """Everything one cluster needs to run an agent, in apply order. `pod_security` is the
    Pod Security level enforced in the app namespaces it creates."""
    check_scope(namespaces, cluster_admin, pod_security=pod_security)
    objs: list[dict[str, Any]] = [
        _namespace(NAMESPACE, enforce="restricted"),
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": _meta(NAME, namespace=NAMESPACE),
        },
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": _meta(BOOTSTRAP_SECRET, namespace=NAMESPACE),
            "type": "Opaque",
            "stringData": {"hub": hub_address, "token": token, "ca.crt": ca_pem},
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": _meta(f"{NAME}-read"),
            "rules": READ_RULES,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": _meta(f"{NAME}-read"),
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": f"{NAME}-read",
            },
            "subjects": _subject(),
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": _meta(NAME, namespace=NAMESPACE),
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["configmaps"],
                    "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"],
                },
                {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
                {
                    "apiGroups": [""],
                    "resources": ["secrets"],
                    "resourceNames": [IDENTITY_SECRET],
                    "verbs": ["get", "update", "patch"],
                },
                {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": _meta(NAME, namespace=NAMESPACE),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": NAME},
            "subjects": _subject(),
        },
    ]
    if cluster_admin:
        objs.append(
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": _meta(f"{NAME}-cluster-admin"),
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": "cluster-admin",
                },
                "subjects": _subject(),
            }
        )
    else:
        objs.append(
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": _meta(APPLY_ROLE),
                # Granted only through RoleBindings, so it reaches namespaced objects of the
                # bound namespaces and nothing cluster-scoped.
                "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}],
            }
        )
        for ns in namespaces:
            objs.append(_namespace(ns, enforce=pod_security))
            objs.append(
                {
                    "apiVersion": "rbac.authorization.k8s.io/v1",
                    "kind": "RoleBinding",
                    "metadata": _meta(APPLY_ROLE, namespace=ns),
                    "roleRef": {
                        "apiGroup": "rbac.authorization.k8s.io",
                        "kind": "ClusterRole",
                        "name": APPLY_ROLE,
                    },
                    "subjects": _subject(),
                }
            )
    objs.append(_deployment(image))
    return objs


def _deployment(image: str) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(NAME, namespace=NAMESPACE),
        "spec": {
            "replicas": 1,  # one agent per cluster; Recreate so two never overlap
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": {"app.kubernetes.io/name": NAME}},
            "template": {
                "metadata": {"labels": dict(LABELS)},
                "spec": {
                    "serviceAccountName": NAME,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": 65532,
                        "runAsGroup": 65532,
                        "fsGroup": 65532,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [
                        {
                            "name": "agent",
                            "image": image,
                            "imagePullPolicy": "IfNotPresent",
                            "command": ["fleetops-agent"],
                            "args": [
                                "run",
                                "--hub=$(FLEETOPS_HUB)",
                                "--ca=/etc/fleetops/hub/ca.crt",
                                "--state=/var/lib/fleetops-agent",
                                f"--identity-secret={NAMESPACE}/{IDENTITY_SECRET}",
                                "--health-listen=0.0.0.0:8081",
                            ],
                            "env": [
                                _secret_env("FLEETOPS_HUB", key="hub"),
                                _secret_env("FLEETOPS_TOKEN", key="token"),
                            ],
                            "ports": [{"name": "health", "containerPort": 8081}],
                            "livenessProbe": {
                                "httpGet": {"path": "/healthz", "port": "health"},
                                "initialDelaySeconds": 10,
                                "periodSeconds": 20,
                            },
                            "readinessProbe": {
                                "httpGet": {"path": "/readyz", "port": "health"},
                                "periodSeconds": 10,
                            },
                            "resources": {
                                "requests": {"cpu": "50m", "memory": "96Mi"},
                                "limits": {"cpu": "1", "memory": "256Mi"},
                            },
                            "securityContext": {
                                "allowPrivilegeEscalation": False,
                                "readOnlyRootFilesystem": True,
                                "capabilities": {"drop": ["ALL"]},
                            },
                            "volumeMounts": [
                                {"name": "state", "mountPath": "/var/lib/fleetops-agent"},
                                {"name": "tmp", "mountPath": "/tmp"},
                                {
                                    "name": "hub-ca",
                                    "mountPath": "/etc/fleetops/hub",
                                    "readOnly": True,
                                },
                            ],
                        }
                    ],
                    "volumes": [
                        {"name": "state", "emptyDir": {}},
                        {"name": "tmp", "emptyDir": {}},
                        {
                            "name": "hub-ca",
                            "secret": {
                                "secretName": BOOTSTRAP_SECRET,
                                "items": [{"key": "ca.crt", "path": "ca.crt"}],
                            },
                        },
                    ],
                },
            },
        },
    }


def _secret_env(name: str, *, key: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": BOOTSTRAP_SECRET, "key": key}}}
