"""The agent's exceptions. Every message says what happened, to which object, and what to do.

AgentError
├── ManifestError        a bundle file is not valid YAML or not a Kubernetes object
├── KubeError            the kube-apiserver refused or failed a request
│   ├── NotFound         the object (or its kind) does not exist
│   ├── Conflict         server-side apply conflicted with another field manager
│   └── Invalid          the server rejected the object (validation, unknown field)
├── UnknownKind          the cluster serves no such apiVersion/kind (CRD missing?)
└── StateError           the agent's local state directory is unreadable or corrupt
"""

from __future__ import annotations


class AgentError(Exception):
    """Base of every error the agent raises on purpose."""


class ManifestError(AgentError):
    """A manifest could not be read as a Kubernetes object."""

    def __init__(self, message: str, *, source: str, line: int | None = None) -> None:
        where = f"{source}:{line}" if line is not None else source
        super().__init__(f"{where}: {message}")
        self.source = source
        self.line = line


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


class UnknownKind(AgentError):
    def __init__(self, api_version: str, kind: str) -> None:
        super().__init__(
            f"the cluster serves no kind {kind} in {api_version}: install its CRD first "
            "(or put the CRD in the same bundle), or fix apiVersion/kind"
        )
        self.api_version = api_version
        self.kind = kind


class StateError(AgentError):
    pass
