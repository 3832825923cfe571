"""The hub's event bus and its audit log: every change is published to subscribers (the
fleet API's Watch streams now; rollouts and notifications later), and every history entry is
appended to the store before it is published.

`Bus` never blocks a publisher: a subscriber that stops reading is dropped, not waited for.
`Recorder` is the one way anything enters the audit log. An entry naming a revision the hub
saw at a repo's head is recorded in Git's own words: the commit's author, email, subject and
committer time go with it, and an assignment names the author next to the mechanism
(`auto-sync of a commit by alice`). Commit text is a committer's: capped here, shown plain.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterable

from google.protobuf import timestamp_pb2

from fleetops.hub import records, storeapi
from fleetops.proto.v1 import fleet_pb2, types_pb2

MAX_QUEUED = 10_000  # changes a subscriber may leave unread before it is dropped
MAX_COMMIT_TEXT = 200  # characters of a commit's author, email or subject an event keeps

# how an assignment came about, by its cause, in the words history uses
_MECHANISM: dict[int, str] = {
    types_pb2.CAUSE_AUTO: "auto-sync",
    types_pb2.CAUSE_USER: "sync",
    types_pb2.CAUSE_ROLLBACK: "rollback",
}


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

    def record(self, commit: records.Revision | None = None) -> records.NewEvent:
        """The store's record of it, in Git's words when `commit` is the revision it names."""
        new = records.NewEvent(**dataclasses.asdict(self))
        if commit is None:
            return new
        author = _capped(commit.author)
        message = self.message
        mechanism = _MECHANISM.get(self.cause)
        if self.kind == "assigned" and mechanism and author:
            # the same commit again: its render moved (a chart version, or hub.yaml's values)
            again = self.previous_revision == self.revision
            what = "a new render of a commit" if again else "a commit"
            message = f"{message} ({mechanism} of {what} by {author})"
        return dataclasses.replace(
            new,
            message=message,
            author=author,
            author_email=_capped(commit.author_email),
            subject=_capped(commit.message),
            committed_at=commit.time,
        )


def _capped(text: str) -> str:
    text = " ".join(text.split())  # one line: no newlines or tabs from a commit
    return text if len(text) <= MAX_COMMIT_TEXT else text[: MAX_COMMIT_TEXT - 1] + "…"


class Recorder:
    """Appends entries to the store's event log, then publishes them."""

    def __init__(self, *, db: storeapi.StoreApi, bus: Bus) -> None:
        self._db = db
        self._bus = bus

    async def record(self, entry: Entry) -> records.Event:
        (ev,) = await self.record_all([entry])
        return ev

    async def record_all(self, entries: Iterable[Entry]) -> list[records.Event]:
        """Many entries in one transaction (all or none), each in its commit's words, then
        published."""
        todo = list(entries)
        shas = [e.revision for e in todo if e.revision]
        commits = await self._db.run(self._db.commits, shas) if shas else {}
        recorded = await self._db.run(
            self._db.record_events, [e.record(commits.get(e.revision)) for e in todo]
        )
        self.published(recorded)
        return recorded

    def published(self, recorded: Iterable[records.Event]) -> None:
        for ev in recorded:
            self._bus.publish(fleet_pb2.FleetChange(event=event_pb(ev)))


def timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    """A wall-clock time (seconds) as a protobuf Timestamp."""
    out = timestamp_pb2.Timestamp()
    out.FromNanoseconds(int(seconds * 1e9))
    return out


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
        author=e.author,
        author_email=e.author_email,
        subject=e.subject,
    )
    out.at.FromNanoseconds(int(e.at * 1e9))
    if e.committed_at:
        out.committed_at.FromSeconds(e.committed_at)
    return out
