"""The agent's exceptions. Every message says what happened, to which object, and what to do.

AgentError
├── KubeError            the kube-apiserver refused or failed a request
│   ├── NotFound         the object (or its kind) does not exist
│   ├── Conflict         server-side apply conflicted with another field manager
│   ├── Invalid          the server rejected the object (validation, unknown field)
│   ├── Forbidden        RBAC denied the agent this verb on this resource (HTTP 403)
│   └── Unreachable      no answer: refused, reset, TLS failed, or no reply within the timeout
├── UnknownKind          the cluster serves no such apiVersion/kind (CRD missing?)
└── StateError           the agent's local state directory is unreadable or corrupt
"""

from __future__ import annotations


class AgentError(Exception):
    """Base of every error the agent raises on purpose."""


class KubeError(AgentError):
    """The kube-apiserver answered with an error."""

    def __init__(self, message: str, *, status: int = 0, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


class NotFound(KubeError):
    pass


class Conflict(KubeError):
    """Server-side apply found fields owned by another manager; `managers` names them."""

    def __init__(self, message: str, *, managers: list[str]) -> None:
        super().__init__(message, status=409, reason="Conflict")
        self.managers = managers


class Invalid(KubeError):
    pass


class Forbidden(KubeError):
    """The agent's credentials may not do this. `namespace` is where the request went ("" for
    cluster scope), `resource` the plural it named (e.g. `configmaps`, `namespaces`)."""

    def __init__(self, message: str, *, namespace: str, resource: str, verb: str) -> None:
        super().__init__(message, status=403, reason="Forbidden")
        self.namespace = namespace
        self.resource = resource
        self.verb = verb


class Unreachable(KubeError):
    """The request got no answer from the API server; the message names the server and why
    (e.g. "cannot reach the Kubernetes API server at https://10.0.0.1:6443: connection
    refused"). Worth retrying with backoff: nothing about the object is wrong."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status=0, reason="Unreachable")


class UnknownKind(AgentError):
    def __init__(self, *, api_version: str, kind: str) -> None:
        super().__init__(
            f"the cluster serves no kind {kind} in {api_version}: install its CRD first "
            "(or put the CRD in the same bundle), or fix apiVersion/kind"
        )
        self.api_version = api_version
        self.kind = kind


class StateError(AgentError):
    pass
