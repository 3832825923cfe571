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
import os
import pathlib
import sqlite3
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, ParamSpec, TypeVar

import sqlite_utils

from fleetops.hub import errors, migrations, sqltables

if TYPE_CHECKING:
    from fleetops.hub import storeapi

P = ParamSpec("P")
T = TypeVar("T")


class Store(sqltables.Tables):
    """The SQLite store (hub.storeapi.StoreApi)."""

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


if TYPE_CHECKING:

    def _implements(store: Store) -> storeapi.StoreApi:
        return store  # mypy checks here that Store has every typed query, as typed
