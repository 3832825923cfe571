"""What every step of a reconcile shares: the API server, the options, the inventories, and
what was last seen in sync (so a check can skip the dry-run of an object nobody touched).

It holds state and small helpers only; it never decides what to apply, prune or heal.
It also holds the compiled custom health checks: the agent's own (`--health-checks`) and, per
distinct set, those bundles carry (compiled once, not per object or per reconcile).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from fleetops.agent import errors, explain, health, ids, inventory, kube, luahealth, manifests
from fleetops.proto.v1 import types_pb2

T = TypeVar("T")
_COMPILED_SETS = 16  # distinct bundle check sets kept compiled (the hub sends one to all)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Options:
    inventory_namespace: str = "fleetops-system"
    wave_timeout: float = 300.0  # how long a wave may take to become healthy
    crd_timeout: float = 60.0  # how long a CRD may take to become Established
    poll_interval: float = 1.0
    full_check_every: int = (
        10  # every Nth check dry-runs even objects whose resourceVersion is known
    )
    # The cluster's name in the fleet, for messages that tell an operator what to run on the
    # hub (e.g. to allow a held prune); empty when the agent runs without a hub.
    cluster: ids.ClusterName = ids.ClusterName("")
    # Custom health checks of this agent (`--health-checks DIR`); a bundle's own come first.
    health_checks: tuple[luahealth.Source, ...] = ()


def fingerprint(obj: Mapping[str, Any]) -> str:
    """A hash of an object as Git wants it, to tell whether the desired object changed."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


class Context:
    """One reconciler's client, options and memory, handed to prepare, apply and check."""

    def __init__(self, client: kube.Kube, options: Options) -> None:
        self.kube = client
        self.options = options
        self.inventories = inventory.Store(client, options.inventory_namespace)
        # app -> key -> (fingerprint of the desired object, live resourceVersion) last seen in sync
        self._in_sync: dict[ids.AppName, dict[manifests.Key, tuple[str, str]]] = {}
        self._checks: dict[ids.AppName, int] = {}
        self._own_health = luahealth.Checks(options.health_checks)
        self._bundle_health: dict[tuple[tuple[str, str, str], ...], luahealth.Checks] = {}

    def health_checks(self, bundle: types_pb2.Bundle | None) -> health.Checks:
        """The bundle's checks (hub.yaml), then the agent's, then the built-ins."""
        key = tuple((c.group, c.kind, c.lua) for c in bundle.health_checks) if bundle else ()
        if not key:
            return health.Checks(self._own_health)
        compiled = self._bundle_health.pop(key, None)
        if compiled is None:
            compiled = luahealth.inline(
                bundle.health_checks if bundle else (), where="healthChecks"
            )
        self._bundle_health[key] = compiled  # newest last; the oldest goes first
        while len(self._bundle_health) > _COMPILED_SETS:
            del self._bundle_health[next(iter(self._bundle_health))]
        return health.Checks(compiled, self._own_health)

    async def checked(self, bundle: types_pb2.Bundle | None, work: Callable[[], Awaitable[T]]) -> T:
        """`work()` with health assessed by `health_checks(bundle)` throughout."""
        with health.using(self.health_checks(bundle)):
            return await work()

    def remember(
        self,
        app: ids.AppName,
        *,
        key: manifests.Key,
        desired: Mapping[str, Any],
        live: Mapping[str, Any],
    ) -> None:
        """`live` matches `desired`: until its resourceVersion changes it needs no dry-run."""
        rv = str((live.get("metadata") or {}).get("resourceVersion") or "")
        if rv:
            self._in_sync.setdefault(app, {})[key] = (fingerprint(desired), rv)

    def known_in_sync(
        self,
        app: ids.AppName,
        *,
        key: manifests.Key,
        desired: Mapping[str, Any],
        live_version: str,
    ) -> bool:
        return self._in_sync.get(app, {}).get(key) == (fingerprint(desired), live_version)

    def next_check_is_full(self, app: ids.AppName) -> bool:
        """Count a check of `app`; every `full_check_every`th dry-runs every object."""
        count = self._checks.get(app, 0) + 1
        self._checks[app] = count
        return count % self.options.full_check_every == 0

    def denied(self, e: errors.Forbidden, *, namespace: str = "") -> str:
        """A 403's message with what to do; `namespace`: the one a Namespace object names."""
        return explain.forbidden(
            e,
            app_namespace=namespace,
            agent_namespace=self.options.inventory_namespace,
            cluster=self.options.cluster,
        )
