"""The hub's memory: SQLite (WAL) through sqlite-utils; the only module importing sqlite_utils.

`Store` opens the database, runs the schema migrations it lacks (hub.migrations) and runs
every call on one dedicated thread (SQLite connections are thread-bound), so callers await
`run(...)` and never block the event loop. It implements hub.storeapi.StoreApi: the typed
queries live in hub.sqltables, which it inherits. What a method returns has been committed: a
restart loses nothing that was acknowledged. Secrets never reach this store except inside
bundles, which only agents assigned to them can download.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import functools
import json
import os
import pathlib
import sqlite3
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import sqlite_utils

from fleetops.hub import errors, migrations, records, sqltables

if TYPE_CHECKING:
    from fleetops.hub import storeapi

P = ParamSpec("P")
T = TypeVar("T")


# Kept for callers until phase 2 of issue 12 moves them to hub.records.
ApiToken = records.ApiToken
Event = records.Event


class Store(sqltables.Tables):
    """The SQLite store (hub.storeapi.StoreApi), plus the untyped row API being replaced."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="store"
        )
        self._db: sqlite_utils.Database | None = None
        self.writable = True  # the last call went through (False after a refused write)
        self.write_errors = 0
        self._pool.submit(self._open).result()

    def _open(self) -> None:
        # 0600 before SQLite opens it: its -wal and -shm files take the database's mode
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        self.path.chmod(0o600)
        conn = sqlite3.connect(str(self.path), isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        db = sqlite_utils.Database(conn)
        self._conn = conn
        db.table("migrations").create(
            {"version": int, "at": float}, pk="version", if_not_exists=True
        )
        done = {int(row[0]) for row in conn.execute("SELECT version FROM migrations")}
        for migration in migrations.MIGRATIONS:
            if migration.version not in done:
                with self._transaction():  # a crash mid-way leaves the version to run again
                    for step in migration.steps:
                        _apply(db, step)
                    conn.execute(
                        "INSERT INTO migrations (version, at) VALUES (?, ?)",
                        [migration.version, time.time()],
                    )
        self._db = db

    @property
    def db(self) -> sqlite_utils.Database:
        assert self._db is not None
        return self._db

    async def run(self, fn: Callable[P, T], /, *args: P.args, **kw: P.kwargs) -> T:
        """`fn(*args, **kw)` on the store's thread. A write the disk refuses (full, read-only,
        failing) is a StoreUnavailable naming the data directory; nothing was committed."""
        loop = asyncio.get_running_loop()
        try:
            out = await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kw))
        except (sqlite3.OperationalError, OSError) as e:
            self.write_errors += 1
            self.writable = False
            raise unavailable(self.path, e) from e
        self.writable = True
        return out

    def call(self, fn: Callable[P, T], /, *args: P.args, **kw: P.kwargs) -> T:
        """The same, from synchronous code (CLI, tests)."""
        return self._pool.submit(fn, *args, **kw).result()

    def close(self) -> None:
        def _close() -> None:
            if self._db is not None:
                self._db.conn.close()

        self._pool.submit(_close).result()
        self._pool.shutdown(wait=True)

    # ------------------------------------------------------------ untyped, being replaced
    # Issue 12 phase 1: these take and return untyped rows and stay only until their callers
    # move to the typed queries (hub.storeapi); then they go. Add no callers.

    def get(self, table: str, pk: Any) -> dict[str, Any] | None:
        try:
            return dict(self.db.table(table).get(pk))
        except sqlite_utils.db.NotFoundError:
            return None

    def rows(
        self, table: str, where: str = "", args: Iterable[Any] = (), order: str = ""
    ) -> list[dict[str, Any]]:
        return [
            dict(r)
            for r in self.db.table(table).rows_where(
                where or None, list(args), order_by=order or None
            )
        ]

    def upsert(self, table: str, row: dict[str, Any], pk: str | tuple[str, ...]) -> None:
        self.upsert_all(table, [row], pk)

    def upsert_all(self, table: str, rows: list[dict[str, Any]], pk: str | tuple[str, ...]) -> None:
        """Insert or replace many rows in one transaction (plain SQL: sqlite-utils' per-row
        introspection costs more than the write when thousands of agents report at once)."""
        if not rows:
            return
        keys = (pk,) if isinstance(pk, str) else pk
        cols = list(rows[0])
        updates = ", ".join(f"[{c}] = excluded.[{c}]" for c in cols if c not in keys)
        sql = (
            f"INSERT INTO [{table}] ({', '.join(f'[{c}]' for c in cols)}) "
            f"VALUES ({', '.join('?' for _ in cols)}) "
            f"ON CONFLICT ({', '.join(f'[{k}]' for k in keys)}) DO UPDATE SET {updates}"
        )
        with self._transaction() as conn:
            conn.executemany(sql, [[r[c] for c in cols] for r in rows])

    def delete(self, table: str, where: str, args: Iterable[Any]) -> None:
        self.db.execute(f"DELETE FROM [{table}] WHERE {where}", list(args))

    def consume_token(
        self, token_id: str, secret_hash: str, now: float
    ) -> tuple[str, dict[str, str]] | None:
        """Untyped, being replaced by use_registration_token: (cluster, labels) or None."""
        token = self.use_registration_token(token_id=token_id, secret_hash=secret_hash, now=now)
        return (token.cluster, dict(token.labels)) if token is not None else None

    def append_event(self, **fields: Any) -> records.Event:
        """Untyped, being replaced by record_event."""
        return self.append_events([fields])[0]

    def append_events(self, rows: list[dict[str, Any]]) -> list[records.Event]:
        """Untyped, being replaced by record_events: fields not given are empty (0 for
        cause, now for at)."""
        return self.record_events(
            [records.NewEvent(**{"kind": "", "message": "", **r}) for r in rows]
        )


def _apply(db: sqlite_utils.Database, step: migrations.Step) -> None:
    if isinstance(step, migrations.CreateTable):
        db.table(step.name).create(dict(step.columns), pk=step.pk)
    elif isinstance(step, migrations.CreateIndex):
        db.table(step.table).create_index(list(step.columns), unique=step.unique)
    else:
        db.execute(step.text)


def unavailable(path: pathlib.Path, e: BaseException) -> errors.StoreUnavailable:
    text = str(e)
    full = (
        "full" in text
        or "No space left" in text
        or getattr(e, "errno", None) == errno.ENOSPC
        or getattr(e, "sqlite_errorcode", None) == 13  # SQLITE_FULL
    )
    why = "its disk is full (No space left on device)" if full else text
    return errors.StoreUnavailable(
        f"the hub cannot write to its data directory {path.parent}: {why}; nothing of this "
        "was recorded: free space there (the hub retries on its own)"
    )


# Untyped, being replaced: callers encode JSON columns themselves only until they hand the
# store records (hub.records), whose mappings it encodes.
def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def loads(text: str | None) -> Any:
    return json.loads(text) if text else {}


if TYPE_CHECKING:

    def _implements(store: Store) -> storeapi.StoreApi:
        return store  # mypy checks here that Store has every typed query, as typed
