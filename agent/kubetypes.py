"""The plain values the Kubernetes client works with: request deadlines and resource types."""

from __future__ import annotations

import dataclasses
from urllib.parse import quote

CONNECT_TIMEOUT = 5.0  # TCP connect and TLS handshake
READ_TIMEOUT = 30.0  # waiting for the answer to one request


@dataclasses.dataclass(frozen=True)
class Timeouts:
    connect: float = CONNECT_TIMEOUT
    read: float = READ_TIMEOUT


@dataclasses.dataclass(frozen=True, kw_only=True)
class ResourceType:
    group: str
    version: str
    kind: str
    plural: str
    namespaced: bool

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, *, namespace: str = "", name: str = "") -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{quote(namespace, safe='')}"
        base += f"/{self.plural}"
        if name:
            base += f"/{quote(name, safe='')}"
        return base
