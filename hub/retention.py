"""History and its retention: reading the audit log (with what agents just said flushed into
it first), and forgetting, on hub.yaml's retention settings, old events and the renders and
bundles nothing needs any more (store.prune), in the store and in memory.

Never forgets what a cluster runs, what a pin names, or the newest revisions of each repo.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from fleetops.hub import errors, fleetstate, records, rendercache, storeapi
from fleetops.proto.v1 import types_pb2

log = logging.getLogger("fleetops.hub")


class Retention:
    def __init__(
        self,
        *,
        settings: fleetstate.Settings,
        db: storeapi.StoreApi,
        renders: rendercache.RenderCache,
        flush: Callable[[], Awaitable[None]],
    ) -> None:
        self._settings = settings
        self._db = db
        self._renders = renders
        self._flush = flush  # writes what agents reported and is not stored yet

    async def retain(self, stop: asyncio.Event, *, every: float = 3600.0) -> None:
        """Apply hub.yaml's retention now and then every `every` seconds until `stop`."""
        while not stop.is_set():
            await self.prune_history()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=every)

    async def prune_history(self) -> dict[str, int]:
        """Forget old events and what no cluster, pin or recent revision needs (store.prune),
        and the in-memory render results that pointed at it."""
        keep = self._settings.cfg.retention
        await self._flush()
        gone = await self._db.run(
            self._db.prune,
            before=time.time() - keep.events,
            per_app=keep.events_per_app,
            keep_revisions=keep.revisions,
            capped_causes=(types_pb2.CAUSE_AUTO, types_pb2.CAUSE_AGENT),
        )

        def remaining() -> tuple[set[tuple[str, str, str]], set[str]]:
            renders = {(r.app, r.target, r.revision) for r in self._db.renders()}
            return renders, self._db.bundle_digests()

        renders, digests = await self._db.run(remaining)
        self._renders.forget(renders=renders, digests=digests)
        if any(gone.values()):
            log.info("retention: forgot %s", ", ".join(f"{n} {t}" for t, n in gone.items() if n))
        return gone

    async def history(self, *, app: str, cluster: str, limit: int) -> list[records.Event]:
        with contextlib.suppress(errors.StoreUnavailable):  # the history on disk still reads
            await self._flush()  # what agents just said belongs in the answer
        return await self._db.run(self._db.events, app=app, cluster=cluster, limit=limit or 200)
