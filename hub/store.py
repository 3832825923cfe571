"""The hub's memory: SQLite (WAL) through sqlite-utils; the only module importing sqlite_utils.

Schema changes go through numbered migrations recorded in the database. Every call runs on
one dedicated thread (SQLite connections are thread-bound), so callers await `run(...)` or
the async helpers and never block the event loop. What a method returns has been committed:
a restart loses nothing that was acknowledged. Secrets never reach this store except inside
bundles, which only agents assigned to them can download.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import errno
import functools
import json
import os
import pathlib
import sqlite3
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import sqlite_utils

from fleetops.hub import errors

T = TypeVar("T")


def _v1(db: sqlite_utils.Database) -> None:
    db.table("clusters").create(
        {
            "name": str,
            "labels": str,
            "agent_labels": str,
            "agent_version": str,
            "kubernetes_version": str,
            "registered_at": float,
            "last_seen": float,
            "connected": int,
            "reason": str,
        },
        pk="name",
    )
    db.table("tokens").create(
        {
            "id": str,
            "secret_hash": str,
            "cluster": str,
            "created_at": float,
            "expires_at": float,
            "used_at": float,
        },
        pk="id",
    )
    db.table("repos").create(
        {
            "name": str,
            "url": str,
            "branch": str,
            "revision": str,
            "fetched_at": float,
            "error": str,
        },
        pk="name",
    )
    db.table("revisions").create(
        {"repo": str, "sha": str, "message": str, "author": str, "time": int, "seen_at": float},
        pk=("repo", "sha"),
    )
    db.table("bundles").create(
        {"digest": str, "app": str, "size": int, "data": bytes, "created_at": float}, pk="digest"
    )
    db.table("renders").create(
        {
            "app": str,
            "target": str,
            "revision": str,
            "digest": str,
            "error": str,
            "key": str,
            "rendered_at": float,
        },
        pk=("app", "target", "revision"),
    )
    db.table("assignments").create(
        {
            "cluster": str,
            "app": str,
            "target": str,
            "revision": str,
            "digest": str,
            "generation": int,
            "namespace": str,
            "policy": str,
            "paused": int,
            "reason": str,
            "updated_at": float,
        },
        pk=("cluster", "app"),
    )
    db.table("pins").create(
        {"app": str, "cluster": str, "revision": str, "actor": str, "at": float},
        pk=("app", "cluster"),
    )
    db.table("app_state").create({"app": str, "paused": int, "reason": str}, pk="app")
    db.table("reports").create(
        {
            "cluster": str,
            "app": str,
            "revision": str,
            "digest": str,
            "generation": int,
            "sync": int,
            "health": int,
            "reason": str,
            "data": bytes,
            "updated_at": float,
        },
        pk=("cluster", "app"),
    )
    db.table("events").create(
        {
            "id": int,
            "at": float,
            "app": str,
            "cluster": str,
            "revision": str,
            "previous_revision": str,
            "cause": int,
            "actor": str,
            "kind": str,
            "message": str,
        },
        pk="id",
    )
    db.table("events").create_index(["app", "id"])
    db.table("events").create_index(["cluster", "id"])


def _v2(db: sqlite_utils.Database) -> None:
    """Registration tokens carry the labels their cluster starts with (`cluster add --labels`)."""
    db.execute("ALTER TABLE tokens ADD COLUMN labels TEXT NOT NULL DEFAULT '{}'")


def _v3(db: sqlite_utils.Database) -> None:
    """Certificates are tracked per cluster (only the newest fingerprint is accepted), fleet API
    tokens are named, and an operator can allow one bundle to prune past the mass-prune guard."""
    db.execute("ALTER TABLE clusters ADD COLUMN cert_fingerprint TEXT NOT NULL DEFAULT ''")
    db.execute("ALTER TABLE clusters ADD COLUMN cert_expires REAL NOT NULL DEFAULT 0")
    db.execute("ALTER TABLE assignments ADD COLUMN allow_mass_prune TEXT NOT NULL DEFAULT ''")
    db.table("api_tokens").create(
        {
            "name": str,
            "role": str,
            "secret_hash": str,
            "created_at": float,
            "expires_at": float,
            "created_by": str,
        },
        pk="name",
    )
    db.table("api_tokens").create_index(["secret_hash"], unique=True)


MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [_v1, _v2, _v3]


@dataclasses.dataclass(frozen=True)
class ApiToken:
    name: str
    role: str
    secret_hash: str
    created_at: float
    expires_at: float  # 0: no expiry
    created_by: str


@dataclasses.dataclass(frozen=True)
class Event:
    id: int
    at: float
    app: str
    cluster: str
    revision: str
    previous_revision: str
    cause: int
    actor: str
    kind: str
    message: str


class Store:
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
        db.table("migrations").create(
            {"version": int, "at": float}, pk="version", if_not_exists=True
        )
        done = {row["version"] for row in db.table("migrations").rows}
        for version, migrate in enumerate(MIGRATIONS, start=1):
            if version not in done:
                with conn:
                    migrate(db)
                    db.table("migrations").insert({"version": version, "at": time.time()})
        self._db = db

    @property
    def db(self) -> sqlite_utils.Database:
        assert self._db is not None
        return self._db

    async def run(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
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

    def call(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        """The same, from synchronous code (CLI, tests)."""
        return self._pool.submit(fn, *args, **kw).result()

    def close(self) -> None:
        def _close() -> None:
            if self._db is not None:
                self._db.conn.close()

        self._pool.submit(_close).result()
        self._pool.shutdown(wait=True)

    # ------------------------------------------------------------ generic rows

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
        conn = self.db.conn
        with conn:
            conn.executemany(sql, [[r[c] for c in cols] for r in rows])

    def delete(self, table: str, where: str, args: Iterable[Any]) -> None:
        self.db.execute(f"DELETE FROM [{table}] WHERE {where}", list(args))

    # ------------------------------------------------------------ tokens

    def consume_token(
        self, token_id: str, secret_hash: str, now: float
    ) -> tuple[str, dict[str, str]] | None:
        """Mark a registration token used; the cluster it was made for and the labels it
        starts with, or None when it is unknown, wrong, expired or used already (one-time)."""
        cur = self.db.execute(
            "UPDATE tokens SET used_at = ? WHERE id = ? AND secret_hash = ? AND used_at = 0 "
            "AND expires_at > ?",
            [now, token_id, secret_hash, now],
        )
        if cur.rowcount != 1:
            return None
        row = self.get("tokens", token_id)
        if not row:
            return None
        return str(row["cluster"]), loads(row.get("labels"))

    # ------------------------------------------------------------ fleet API tokens

    def add_api_token(self, token: ApiToken) -> bool:
        """False when a token of that name exists already."""
        try:
            self.db.table("api_tokens").insert(dataclasses.asdict(token))
        except sqlite3.IntegrityError:
            return False
        return True

    def api_tokens(self) -> list[ApiToken]:
        return [
            ApiToken(**dict(r)) for r in self.db.table("api_tokens").rows_where(order_by="name")
        ]

    def api_token_by_hash(self, secret_hash: str) -> ApiToken | None:
        rows = list(self.db.table("api_tokens").rows_where("secret_hash = ?", [secret_hash]))
        return ApiToken(**dict(rows[0])) if rows else None

    def revoke_api_token(self, name: str) -> bool:
        cur = self.db.execute("DELETE FROM api_tokens WHERE name = ?", [name])
        return cur.rowcount == 1

    # ------------------------------------------------------------ clusters

    def remove_cluster(self, name: str) -> None:
        """Forget a cluster in one transaction: its row (and so its certificate), its
        assignments, its per-cluster pins, its reports and its unused registration tokens."""
        conn = self.db.conn
        with conn:
            conn.execute("DELETE FROM clusters WHERE name = ?", [name])
            conn.execute("DELETE FROM assignments WHERE cluster = ?", [name])
            conn.execute("DELETE FROM pins WHERE cluster = ?", [name])
            conn.execute("DELETE FROM reports WHERE cluster = ?", [name])
            conn.execute("DELETE FROM tokens WHERE cluster = ? AND used_at = 0", [name])

    # ------------------------------------------------------------ retention

    def prune(
        self,
        *,
        before: float,
        per_app: int,
        keep_revisions: int,
        capped_causes: Iterable[int] = (),
    ) -> dict[str, int]:
        """Forget what nothing needs any more, in one transaction; how many rows went, per
        table. Events older than `before`, or beyond the newest `per_app` of their app among
        those with a cause in `capped_causes` (what agents and automation say: no flood of
        theirs pushes an operator's entry out before its time); renders
        of revisions that are neither assigned, pinned, reported nor among the newest
        `keep_revisions` of their repo; bundles no render, assignment or report names."""
        conn = self.db.conn
        gone: dict[str, int] = {}
        with conn:
            gone["events"] = conn.execute("DELETE FROM events WHERE at < ?", [before]).rowcount
            capped = ", ".join(str(int(c)) for c in capped_causes)
            gone["events"] += conn.execute(
                "DELETE FROM events WHERE id IN (SELECT id FROM (SELECT id, ROW_NUMBER() OVER "
                f"(PARTITION BY app ORDER BY id DESC) AS n FROM events WHERE cause IN ({capped})) "
                "WHERE n > ?)",
                [per_app],
            ).rowcount
            gone["revisions"] = conn.execute(
                "DELETE FROM revisions WHERE rowid IN (SELECT rowid FROM (SELECT rowid, "
                "ROW_NUMBER() OVER (PARTITION BY repo ORDER BY seen_at DESC) AS n "
                "FROM revisions) WHERE n > ?) AND sha NOT IN (SELECT revision FROM assignments) "
                "AND sha NOT IN (SELECT revision FROM pins) "
                "AND sha NOT IN (SELECT revision FROM reports)",
                [keep_revisions * 5],
            ).rowcount
            gone["renders"] = conn.execute(
                "DELETE FROM renders WHERE revision NOT IN (SELECT revision FROM assignments) "
                "AND revision NOT IN (SELECT revision FROM pins) "
                "AND revision NOT IN (SELECT revision FROM reports) "
                "AND revision NOT IN (SELECT sha FROM (SELECT sha, ROW_NUMBER() OVER "
                "(PARTITION BY repo ORDER BY seen_at DESC) AS n FROM revisions) WHERE n <= ?)",
                [keep_revisions],
            ).rowcount
            gone["bundles"] = conn.execute(
                "DELETE FROM bundles WHERE digest NOT IN (SELECT digest FROM renders) "
                "AND digest NOT IN (SELECT digest FROM assignments) "
                "AND digest NOT IN (SELECT digest FROM reports)"
            ).rowcount
        return gone

    def bundle_digests(self) -> set[str]:
        return {str(r["digest"]) for r in self.db.query("SELECT digest FROM bundles")}

    # ------------------------------------------------------------ events

    def append_event(self, **fields: Any) -> Event:
        return self.append_events([fields])[0]

    def append_events(self, rows: list[dict[str, Any]]) -> list[Event]:
        """Append events in one transaction; they come back with their ids."""
        out: list[Event] = []
        conn = self.db.conn
        with conn:
            for fields in rows:
                row: dict[str, Any] = {
                    "at": time.time(), "app": "", "cluster": "", "revision": "",
                    "previous_revision": "", "cause": 0, "actor": "", "kind": "", "message": "",
                }  # fmt: skip
                row.update(fields)
                cur = conn.execute(
                    "INSERT INTO events (at, app, cluster, revision, previous_revision, cause, "
                    "actor, kind, message) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [row[k] for k in ("at", "app", "cluster", "revision", "previous_revision",
                                      "cause", "actor", "kind", "message")],
                )  # fmt: skip
                out.append(Event(id=int(cur.lastrowid or 0), **row))
        return out

    def events(self, *, app: str = "", cluster: str = "", limit: int = 200) -> list[Event]:
        where: list[str] = []
        args: list[Any] = []
        if app:
            where.append("app = ?")
            args.append(app)
        if cluster:
            where.append("(cluster = ? OR cluster = '')")
            args.append(cluster)
        sql = "SELECT * FROM events"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id DESC LIMIT ?"
        args.append(limit)
        return [Event(**dict(r)) for r in self.db.query(sql, args)]


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


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def loads(text: str | None) -> Any:
    return json.loads(text) if text else {}
