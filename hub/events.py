"""The hub's event bus and its audit log: every change is published to subscribers (the
fleet API's Watch streams now; rollouts and notifications later), and every history entry is
appended to the store before it is published.

`Bus` never blocks a publisher: a subscriber that stops reading is dropped, not waited for.
`Recorder` is the one way anything enters the audit log.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterable

from fleetops.hub import records, storeapi
from fleetops.proto.v1 import fleet_pb2, types_pb2

MAX_QUEUED = 10_000  # changes a subscriber may leave unread before it is dropped


class Subscription:
    """One subscriber's queue of changes. `dropped` once the bus gave up on it."""

    def __init__(self, bus: Bus) -> None:
        self.queue: asyncio.Queue[fleet_pb2.FleetChange] = asyncio.Queue()
        self._bus = bus

    @property
    def dropped(self) -> bool:
        return self not in self._bus.subscribers

    @property
    def version(self) -> int:
        """The bus's version now (what a heartbeat carries)."""
        return self._bus.version

    @property
    def pending(self) -> int:
        return self.queue.qsize()

    async def next(self) -> fleet_pb2.FleetChange:
        return await self.queue.get()

    def close(self) -> None:
        self._bus.subscribers.discard(self)


class Bus:
    """Fan-out of fleet changes, numbered by a version that only grows."""

    def __init__(self) -> None:
        self.version = 0
        self.subscribers: set[Subscription] = set()

    def subscribe(self) -> Subscription:
        sub = Subscription(self)
        self.subscribers.add(sub)
        return sub

    def publish(self, change: fleet_pb2.FleetChange) -> None:
        self.version += 1
        change.version = self.version
        for sub in list(self.subscribers):
            if sub.queue.qsize() > MAX_QUEUED:  # stopped reading: dropped, not waited for
                self.subscribers.discard(sub)
                continue
            sub.queue.put_nowait(change)


@dataclasses.dataclass(frozen=True)
class Entry:
    """A history entry to append (the store gives it an id and a time)."""

    kind: str
    message: str
    actor: str
    cause: int
    app: str = ""
    cluster: str = ""
    revision: str = ""
    previous_revision: str = ""

    def record(self) -> records.NewEvent:
        """The store's record of it."""
        return records.NewEvent(**dataclasses.asdict(self))


class Recorder:
    """Appends entries to the store's event log, then publishes them."""

    def __init__(self, *, db: storeapi.StoreApi, bus: Bus) -> None:
        self._db = db
        self._bus = bus

    async def record(self, entry: Entry) -> records.Event:
        ev = await self._db.run(self._db.record_event, entry.record())
        self._bus.publish(fleet_pb2.FleetChange(event=event_pb(ev)))
        return ev

    async def record_all(self, entries: Iterable[Entry]) -> list[records.Event]:
        """Many entries in one transaction (all or none), then published."""
        recorded = await self._db.run(self._db.record_events, [e.record() for e in entries])
        self.published(recorded)
        return recorded

    def published(self, recorded: Iterable[records.Event]) -> None:
        for ev in recorded:
            self._bus.publish(fleet_pb2.FleetChange(event=event_pb(ev)))


def event_pb(e: records.Event) -> types_pb2.Event:
    out = types_pb2.Event(
        id=e.id,
        app=e.app,
        cluster=e.cluster,
        revision=e.revision,
        previous_revision=e.previous_revision,
        cause=e.cause,  # type: ignore[arg-type]
        actor=e.actor,
        kind=e.kind,
        message=e.message,
    )
    out.at.FromNanoseconds(int(e.at * 1e9))
    return out
