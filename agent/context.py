"""What every step of a reconcile shares: the API server, the options, the inventories, and
what was last seen in sync (so a check can skip the dry-run of an object nobody touched, and
a watch event can be told apart from a change: `unchanged`).

An object is known in sync while Git wants the same thing and the live object has the same
resourceVersion, or the same content apart from its status and bookkeeping (a controller
writing status changes nothing a dry-run compares). Per object it keeps two hashes and a
version, never the object.

It holds state and small helpers only; it never decides what to apply, prune or heal.
It also holds the compiled custom health checks: the agent's own (`--health-checks`) and, per
distinct set, those bundles carry (compiled once, not per object or per reconcile).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
from collections.abc import Awaitable, Callable, Iterator, Mapping
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


_BOOKKEEPING = ("resourceVersion", "managedFields", "generation")


def content(live: Mapping[str, Any]) -> str:
    """A hash of a live object without its status and bookkeeping: what a dry-run compares."""
    meta = {k: v for k, v in (live.get("metadata") or {}).items() if k not in _BOOKKEEPING}
    rest = {k: v for k, v in live.items() if k not in ("metadata", "status")}
    return hashlib.sha256(json.dumps([meta, rest], sort_keys=True).encode()).hexdigest()[:32]


@dataclasses.dataclass(frozen=True)
class _Seen:
    desired: str  # fingerprint of what Git wanted
    version: str  # the live resourceVersion
    content: str  # the live object's content hash


class Context:
    """One reconciler's client, options and memory, handed to prepare, apply and check."""

    def __init__(self, client: kube.Kube, options: Options) -> None:
        self.kube = client
        self.options = options
        self.inventories = inventory.Store(client, options.inventory_namespace)
        # app -> key -> what was last seen in sync
        self._in_sync: dict[ids.AppName, dict[manifests.Key, _Seen]] = {}
        self._checks: dict[ids.AppName, int] = {}
        self._uncounted: set[ids.AppName] = set()  # checks now are not resyncs
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
            seen = _Seen(fingerprint(desired), rv, content(live))
            self._in_sync.setdefault(app, {})[key] = seen

    def known_in_sync(
        self,
        app: ids.AppName,
        *,
        key: manifests.Key,
        desired: Mapping[str, Any],
        live: Mapping[str, Any],
    ) -> bool:
        """`live` is as it was when last seen in sync with `desired` (a new status aside)."""
        seen = self._in_sync.get(app, {}).get(key)
        if seen is None or seen.desired != fingerprint(desired):
            return False
        rv = str((live.get("metadata") or {}).get("resourceVersion") or "")
        if rv == seen.version:
            return True
        if seen.content != content(live):
            return False
        self._in_sync[app][key] = dataclasses.replace(seen, version=rv)
        return True

    def unchanged(self, app: ids.AppName, *, key: manifests.Key, live: Mapping[str, Any]) -> bool:
        """A watch saw `live`: it is the version last seen in sync (e.g. our own apply)."""
        seen = self._in_sync.get(app, {}).get(key)
        rv = str((live.get("metadata") or {}).get("resourceVersion") or "")
        return seen is not None and seen.version == rv

    def forget(self, app: ids.AppName) -> None:
        """The app is gone from this agent: drop what was remembered of it."""
        self._in_sync.pop(app, None)
        self._checks.pop(app, None)
        self._uncounted.discard(app)

    @contextlib.contextmanager
    def uncounted(self, app: ids.AppName) -> Iterator[None]:
        """Checks of `app` meanwhile are not resyncs (a watch event, a follow-up): they never
        dry-run everything and do not count towards `full_check_every`."""
        self._uncounted.add(app)
        try:
            yield
        finally:
            self._uncounted.discard(app)

    def next_check_is_full(self, app: ids.AppName) -> bool:
        """Count a check of `app`; every `full_check_every`th dry-runs every object."""
        if app in self._uncounted:
            return False
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
