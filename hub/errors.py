"""The hub's exceptions. Every message says what happened, to which object, and what to do.

HubError
├── ConfigError        hub.yaml is invalid: names the file, the field path, what is allowed
├── RepoError          a Git fetch or lookup failed (the last good revision stays)
├── RenderError        an app/target did not render (only that app/target is affected)
├── NotFound           an app, cluster, revision or bundle the caller named does not exist
├── PermissionDenied   the caller may not do or see this
├── Unauthenticated    no or bad credentials (token, certificate)
├── InvalidArgument    a request is malformed
├── FailedPrecondition the request is fine but the state does not allow it now (e.g. promote
│                      with no rollout running)
└── StoreUnavailable   the store cannot write (the data directory is full, or its disk fails):
                       nothing is acknowledged; the hub keeps running and retries
"""

from __future__ import annotations


class HubError(Exception):
    """Base of every error the hub raises on purpose."""


class ConfigError(HubError):
    def __init__(self, file: str, path: str, message: str) -> None:
        super().__init__(f"{file}: {path}: {message}" if path else f"{file}: {message}")
        self.file = file
        self.path = path


class RepoError(HubError):
    pass


class RenderError(HubError):
    pass


class NotFound(HubError):
    pass


class PermissionDenied(HubError):
    pass


class Unauthenticated(HubError):
    pass


class InvalidArgument(HubError):
    pass


class FailedPrecondition(HubError):
    pass


class StoreUnavailable(HubError):
    pass
