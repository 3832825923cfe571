"""Per-resource and per-app results of a sync or a status check, rolled up worst-wins, and
their wire form (`AppReport`). Pure. Every result carries a one-line reason; no result ever
carries object content, so a Secret's data cannot reach a report."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import TypeAlias

from google.protobuf import timestamp_pb2

from fleetops.agent import drift, health, ids, manifests
from fleetops.proto.v1 import types_pb2

Sync: TypeAlias = types_pb2.SyncStatus.ValueType
SYNCED = types_pb2.SYNC_STATUS_SYNCED
OUT_OF_SYNC = types_pb2.SYNC_STATUS_OUT_OF_SYNC
APPLYING = types_pb2.SYNC_STATUS_APPLYING
APPLY_FAILED = types_pb2.SYNC_STATUS_APPLY_FAILED
PENDING = types_pb2.SYNC_STATUS_PENDING
UNKNOWN_SYNC = types_pb2.SYNC_STATUS_UNSPECIFIED  # only when the agent cannot compare with Git

_SYNC_SEVERITY = {
    SYNCED: 0,
    UNKNOWN_SYNC: 1,
    PENDING: 1,
    APPLYING: 2,
    OUT_OF_SYNC: 3,
    APPLY_FAILED: 4,
}


Health: TypeAlias = health.Health  # the names the fields' own names hide inside the classes
Field: TypeAlias = drift.Field


def sync_name(s: Sync) -> str:
    """`SYNC_STATUS_OUT_OF_SYNC` -> `OutOfSync`."""
    if s == UNKNOWN_SYNC:
        return "Unknown"
    words = types_pb2.SyncStatus.Name(s).removeprefix("SYNC_STATUS_").split("_")
    return "".join(w.title() for w in words)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ResourceResult:
    """One resource's outcome. Build it with a named constructor (`applied`, `apply_failed`,
    `refused`, `in_sync`, `out_of_sync`, `skipped`, `kept`, `pruned`, `unread`), which say
    which sync status goes with which action."""

    key: manifests.Key
    version: str
    sync: Sync
    health: health.Health | None  # None: not looked at (e.g. it failed to apply)
    message: str
    action: str = ""  # applied, unchanged, pruned, kept, failed, refused, skipped, healed
    drift: tuple[drift.Field, ...] = ()
    conflict_manager: str = ""
    source: str = ""
    hook: str = ""  # a sync hook's phases, e.g. "PreSync" (agent.hooks); "" for other objects

    @property
    def failed(self) -> bool:
        return self.sync == APPLY_FAILED

    @classmethod
    def not_run(
        cls, *, key: manifests.Key, version: str, reason: str, hook: str, source: str
    ) -> ResourceResult:
        """A hook a sync never applies (a Helm test, PreDelete, `hook: Skip`): nothing to
        do, so it counts as in sync."""
        return cls(
            key=key,
            version=version,
            sync=SYNCED,
            health=None,
            message=reason,
            action="not applied",
            source=source,
            hook=hook,
        )

    @classmethod
    def applied(cls, *, key: manifests.Key, version: str, source: str = "") -> ResourceResult:
        """Sent with server-side apply and accepted; health is filled in later."""
        return cls(
            key=key,
            version=version,
            sync=SYNCED,
            health=None,
            message="",
            action="applied",
            source=source,
        )

    @classmethod
    def apply_failed(
        cls,
        *,
        key: manifests.Key,
        version: str,
        reason: str,
        source: str = "",
        health: Health | None = None,
        conflict_manager: str = "",
        action: str = "failed",
    ) -> ResourceResult:
        """The API server refused it, or it could not be prepared; `reason` says why.
        `action` is "" when nothing was attempted (a read-only check)."""
        return cls(
            key=key,
            version=version,
            sync=APPLY_FAILED,
            health=health,
            message=reason,
            action=action,
            conflict_manager=conflict_manager,
            source=source,
        )

    @classmethod
    def refused(
        cls, *, key: manifests.Key, version: str, reason: str, source: str
    ) -> ResourceResult:
        """The agent refused it before any API call (see `agent.guard`)."""
        return cls(
            key=key,
            version=version,
            sync=APPLY_FAILED,
            health=None,
            message=reason,
            action="refused",
            source=source,
        )

    @classmethod
    def in_sync(
        cls,
        *,
        key: manifests.Key,
        version: str,
        health: Health | None,
        source: str = "",
    ) -> ResourceResult:
        """The live object matches Git."""
        return cls(key=key, version=version, sync=SYNCED, health=health, message="", source=source)

    @classmethod
    def out_of_sync(
        cls,
        *,
        key: manifests.Key,
        version: str,
        health: Health | None,
        reason: str,
        source: str = "",
        drift: tuple[Field, ...] = (),
        conflict_manager: str = "",
    ) -> ResourceResult:
        """The live object differs from Git (drifted, missing, or held by another manager)."""
        return cls(
            key=key,
            version=version,
            sync=OUT_OF_SYNC,
            health=health,
            message=reason,
            drift=drift,
            conflict_manager=conflict_manager,
            source=source,
        )

    @classmethod
    def skipped(cls, *, key: manifests.Key, version: str, reason: str) -> ResourceResult:
        """Not applied because an earlier wave halted the sync."""
        return cls(
            key=key,
            version=version,
            sync=OUT_OF_SYNC,
            health=None,
            message=reason,
            action="skipped",
        )

    @classmethod
    def kept(
        cls,
        *,
        key: manifests.Key,
        version: str,
        reason: str,
        sync: Sync = OUT_OF_SYNC,
        health: Health | None = None,
    ) -> ResourceResult:
        """No longer in Git but left in the cluster; `reason` says why. SYNCED when keeping it
        is the app's own choice (prune disabled on it), OUT_OF_SYNC otherwise."""
        return cls(
            key=key, version=version, sync=sync, health=health, message=reason, action="kept"
        )

    @classmethod
    def pruned(cls, *, key: manifests.Key, version: str, reason: str) -> ResourceResult:
        """Deleted because it left Git."""
        return cls(
            key=key, version=version, sync=SYNCED, health=None, message=reason, action="pruned"
        )

    @classmethod
    def unread(
        cls, *, key: manifests.Key, version: str, health: Health | None, reason: str
    ) -> ResourceResult:
        """Looked at without the bundle: sync unknown, health from the live object (if any)."""
        return cls(key=key, version=version, sync=UNKNOWN_SYNC, health=health, message=reason)


@dataclasses.dataclass(frozen=True, kw_only=True)
class AppResult:
    app: ids.AppName
    revision: ids.Revision
    bundle_digest: ids.Digest
    sync: Sync
    health: health.Status
    reason: str
    resources: tuple[ResourceResult, ...]
    healed: int = 0
    applied_at: float = 0.0
    # the sync applied but held back a prune past the app's maxPrunePercent (see agent.guard)
    prune_held: bool = False
    observed_at: float = dataclasses.field(default_factory=time.time)
    # nothing could be looked at because the API server did not answer: look again soon (with
    # backoff) rather than a resync later. Not on the wire.
    retry_soon: bool = False

    @property
    def failed(self) -> bool:
        return self.sync == APPLY_FAILED

    @property
    def drifted(self) -> int:
        return sum(1 for r in self.resources if r.drift)

    @classmethod
    def rolled_up(
        cls,
        *,
        app: ids.AppName,
        revision: ids.Revision,
        bundle_digest: ids.Digest,
        results: Sequence[ResourceResult],
        reason: str = "",
        sync: Sync | None = None,
        healed: int = 0,
        applied_at: float = 0.0,
        prune_held: bool = False,
    ) -> AppResult:
        """An app's result from its resources' results, worst wins; `reason` and `sync`
        override what the rollup would say."""
        rolled_sync = rollup_sync(results) if sync is None else sync
        rolled_health = rollup_health(results)
        return cls(
            app=app,
            revision=revision,
            bundle_digest=bundle_digest,
            sync=rolled_sync,
            health=rolled_health,
            reason=reason or reason_for(results, rolled_sync, rolled_health),
            resources=tuple(results),
            healed=healed,
            applied_at=applied_at,
            prune_held=prune_held,
        )

    @classmethod
    def unreconciled(
        cls,
        *,
        app: ids.AppName,
        revision: ids.Revision,
        bundle_digest: ids.Digest,
        reason: str,
        retry_soon: bool = False,
    ) -> AppResult:
        """An app that could not be reconciled at all: ApplyFailed, health Unknown, no
        resources."""
        return cls(
            app=app,
            revision=revision,
            bundle_digest=bundle_digest,
            sync=APPLY_FAILED,
            health=health.UNKNOWN,
            reason=reason,
            resources=(),
            retry_soon=retry_soon,
        )


def rollup_sync(results: Sequence[ResourceResult]) -> Sync:
    return max((r.sync for r in results), key=lambda s: _SYNC_SEVERITY.get(s, 3), default=SYNCED)


def rollup_health(results: Sequence[ResourceResult]) -> health.Status:
    """Worst health of the app's objects; hooks are left out (a finished migration Job is
    not the app's health, and a failed one fails the sync instead)."""
    return health.worst(r.health.status for r in results if r.health is not None and not r.hook)


def reason_for(results: Sequence[ResourceResult], sync: Sync, app_health: health.Status) -> str:
    """One line: the first thing a person should look at."""
    if sync == APPLY_FAILED:
        failed = [r for r in results if r.failed]
        more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        return f"{failed[0].key}: {failed[0].message}{more}"
    if sync == OUT_OF_SYNC:
        out = [r for r in results if r.sync == OUT_OF_SYNC]
        more = f" (and {len(out) - 1} more)" if len(out) > 1 else ""
        return f"{out[0].key}: {out[0].message}{more}"
    if app_health != health.HEALTHY:
        worst = [
            r
            for r in results
            if r.health is not None and not r.hook and r.health.status == app_health
        ]
        if worst:
            more = f" (and {len(worst) - 1} more)" if len(worst) > 1 else ""
            return f"{worst[0].key}: {worst[0].health.reason}{more}"  # type: ignore[union-attr]
    return f"{len(results)} resources synced and healthy"


def _ts(t: float) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(t * 1e9))
    return ts


def to_report(result: AppResult, *, generation: int = 0) -> types_pb2.AppReport:
    report = types_pb2.AppReport(
        app=result.app,
        revision=result.revision,
        bundle_digest=result.bundle_digest,
        generation=generation,
        sync=result.sync,
        health=result.health,
        reason=result.reason,
        observed_at=_ts(result.observed_at),
        drifted_resources=result.drifted,
        healed_resources=result.healed,
        prune_held=result.prune_held,
    )
    if result.applied_at:
        report.applied_at.CopyFrom(_ts(result.applied_at))
    for r in result.resources:
        version = r.version
        report.resources.add(
            ref=types_pb2.ResourceRef(
                group=r.key.group,
                version=version,
                kind=r.key.kind,
                namespace=r.key.namespace,
                name=r.key.name,
            ),
            sync=r.sync,
            health=r.health.status if r.health else health.UNKNOWN,
            message=r.message if r.health is None else (r.message or r.health.reason),
            drift=[
                types_pb2.DriftedField(path=f.path, desired=f.desired, live=f.live) for f in r.drift
            ],
            conflict_manager=r.conflict_manager,
            hook=r.hook,
        )
    return report
