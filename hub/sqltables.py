"""The typed queries of the SQLite store: records (hub.records) in, records out, plain SQL.

`Tables` holds the query half of hub.store's Store (which owns the connection, its worker
thread and the migrations, and inherits these methods): one method per query hub.storeapi
lists, each one statement or one transaction. It uses only the standard sqlite3 module on the
connection it is given, never opens one, never runs on the event loop, and never lets a
half-done write stand: a failing statement rolls its whole transaction back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sqlite3
import time
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from fleetops.hub import records

R = TypeVar("R")


class Tables:
    """The typed queries (hub.storeapi.StoreApi's), on the connection a Store opened."""

    _conn: sqlite3.Connection  # set by hub.store.Store when it opens the database

    # ------------------------------------------------------------ plumbing

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed at the end, rolled back on any error. (The
        connection is in autocommit mode, where `with conn:` alone opens no transaction.)"""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise

    def _put(self, table: str, rows: Sequence[object], pk: tuple[str, ...]) -> None:
        """Insert or replace records (all of one type) in one transaction."""
        if not rows:
            return
        cols = _columns(type(rows[0]))
        updates = ", ".join(f"[{c}] = excluded.[{c}]" for c in cols if c not in pk)
        sql = (
            f"INSERT INTO [{table}] ({', '.join(f'[{c}]' for c in cols)}) "
            f"VALUES ({', '.join('?' for _ in cols)}) "
            f"ON CONFLICT ({', '.join(f'[{k}]' for k in pk)}) DO UPDATE SET {updates}"
        )
        values = [[_to_column(getattr(r, c)) for c in cols] for r in rows]
        with self._transaction() as conn:
            conn.executemany(sql, values)

    def _select(
        self,
        kind: type[R],
        table: str,
        where: str = "",
        args: Sequence[object] = (),
        *,
        order: str,
        limit: int | None = None,
    ) -> list[R]:
        """The rows of `table` as `kind` records (NULLs read as empty values)."""
        cols = _columns(kind)
        sql = f"SELECT {', '.join(f'[{c}]' for c in cols)} FROM [{table}]"
        if where:
            sql += f" WHERE {where}"
        sql += f" ORDER BY {order}"
        params = list(args)
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        decoders = [_decoder(kind, c) for c in cols]
        make = typing.cast(Callable[..., R], kind)
        return [
            make(**{c: d(v) for c, d, v in zip(cols, decoders, row, strict=True)})
            for row in self._conn.execute(sql, params)
        ]

    # ------------------------------------------------------------ clusters

    def clusters(self) -> list[records.Cluster]:
        return self._select(records.Cluster, "clusters", order="name")

    def put_cluster(self, cluster: records.Cluster) -> None:
        self._put("clusters", [cluster], ("name",))

    def remove_cluster(self, name: str) -> None:
        """Forget a cluster in one transaction: its row (and so its certificate), its
        assignments, its per-cluster pins, its reports and its unused registration tokens."""
        with self._transaction() as conn:
            conn.execute("DELETE FROM clusters WHERE name = ?", [name])
            conn.execute("DELETE FROM assignments WHERE cluster = ?", [name])
            conn.execute("DELETE FROM pins WHERE cluster = ?", [name])
            conn.execute("DELETE FROM reports WHERE cluster = ?", [name])
            conn.execute("DELETE FROM tokens WHERE cluster = ? AND used_at = 0", [name])

    # ------------------------------------------------------------ registration tokens

    def add_registration_token(self, token: records.RegistrationToken) -> None:
        self._put("tokens", [token], ("id",))

    def registration_tokens(self) -> list[records.RegistrationToken]:
        return self._select(records.RegistrationToken, "tokens", order="created_at, id")

    def use_registration_token(
        self, *, token_id: str, secret_hash: str, now: float
    ) -> records.RegistrationToken | None:
        """Mark a registration token used and return it so, or None when it is unknown, wrong,
        expired or used already (one-time)."""
        with self._transaction() as conn:
            cur = conn.execute(
                "UPDATE tokens SET used_at = ? WHERE id = ? AND secret_hash = ? AND used_at = 0 "
                "AND expires_at > ?",
                [now, token_id, secret_hash, now],
            )
            if cur.rowcount != 1:
                return None
            found = self._select(records.RegistrationToken, "tokens", "id = ?", [token_id],
                                 order="id")  # fmt: skip
        return found[0] if found else None

    # ------------------------------------------------------------ fleet API tokens

    def add_api_token(self, token: records.ApiToken) -> bool:
        """False when a token of that name exists already."""
        try:
            self._conn.execute(
                "INSERT INTO api_tokens (name, role, secret_hash, created_at, expires_at, "
                "created_by) VALUES (?, ?, ?, ?, ?, ?)",
                [token.name, token.role, token.secret_hash, token.created_at, token.expires_at,
                 token.created_by],
            )  # fmt: skip
        except sqlite3.IntegrityError:
            return False
        return True

    def api_tokens(self) -> list[records.ApiToken]:
        return self._select(records.ApiToken, "api_tokens", order="name")

    def revoke_api_token(self, name: str) -> bool:
        cur = self._conn.execute("DELETE FROM api_tokens WHERE name = ?", [name])
        return cur.rowcount == 1

    # ------------------------------------------------------------ Git

    def repos(self) -> list[records.Repo]:
        return self._select(records.Repo, "repos", order="name")

    def put_repo(self, repo: records.Repo) -> None:
        self._put("repos", [repo], ("name",))

    def put_revision(self, revision: records.Revision) -> None:
        self._put("revisions", [revision], ("repo", "sha"))

    def commits(self, shas: Sequence[str]) -> dict[str, records.Revision]:
        """The revisions seen with these SHAs (of any repo), by SHA."""
        wanted = sorted({s for s in shas if s})[:500]
        if not wanted:
            return {}
        found = self._select(
            records.Revision, "revisions", f"sha IN ({', '.join('?' for _ in wanted)})", wanted,
            order="seen_at",
        )  # fmt: skip
        return {r.sha: r for r in found}

    def revisions(self, repo: str) -> list[records.Revision]:
        return self._select(records.Revision, "revisions", "repo = ?", [repo],
                            order="seen_at DESC, rowid DESC")  # fmt: skip

    # ------------------------------------------------------------ rendering

    def put_bundle(self, bundle: records.Bundle) -> None:
        self._put("bundles", [bundle], ("digest",))

    def bundle(self, digest: str) -> records.Bundle | None:
        found = self._select(records.Bundle, "bundles", "digest = ?", [digest], order="digest")
        return found[0] if found else None

    def bundle_digests(self) -> set[str]:
        return {str(r[0]) for r in self._conn.execute("SELECT digest FROM bundles")}

    def put_render(self, render: records.Render) -> None:
        self._put("renders", [render], ("app", "target", "revision"))

    def renders(self) -> list[records.Render]:
        return self._select(records.Render, "renders", order="app, target, revision")

    # ------------------------------------------------------------ assignments and reports

    def assignments(self) -> list[records.Assignment]:
        return self._select(records.Assignment, "assignments", order="cluster, app")

    def assignments_for_cluster(self, cluster: str) -> list[records.Assignment]:
        return self._select(
            records.Assignment, "assignments", "cluster = ?", [cluster], order="app"
        )

    def put_assignments(self, assignments: Sequence[records.Assignment]) -> None:
        self._put("assignments", assignments, ("cluster", "app"))

    def delete_assignment(self, *, cluster: str, app: str) -> None:
        self._conn.execute("DELETE FROM assignments WHERE cluster = ? AND app = ?", [cluster, app])

    def reports(self) -> list[records.Report]:
        return self._select(records.Report, "reports", order="cluster, app")

    def put_reports(self, reports: Sequence[records.Report]) -> None:
        self._put("reports", reports, ("cluster", "app"))

    # ------------------------------------------------------------ operator state

    def pins(self) -> list[records.Pin]:
        return self._select(records.Pin, "pins", order="app, cluster")

    def put_pin(self, pin: records.Pin) -> None:
        self._put("pins", [pin], ("app", "cluster"))

    def delete_pin(self, *, app: str, cluster: str) -> None:
        self._conn.execute("DELETE FROM pins WHERE app = ? AND cluster = ?", [app, cluster])

    def app_states(self) -> list[records.AppState]:
        return self._select(records.AppState, "app_state", order="app")

    def put_app_state(self, state: records.AppState) -> None:
        self._put("app_state", [state], ("app",))

    def rollouts(self) -> list[records.Rollout]:
        return self._select(records.Rollout, "rollouts", order="app")

    def put_rollout(self, rollout: records.Rollout) -> None:
        self._put("rollouts", [rollout], ("app",))

    def delete_rollout(self, app: str) -> None:
        with self._transaction() as conn:
            conn.execute("DELETE FROM rollouts WHERE app = ?", [app])

    def image_commits(self) -> list[records.ImageCommit]:
        return self._select(records.ImageCommit, "image_commits", order="at")

    def put_image_commits(self, commits: list[records.ImageCommit], *, keep: int) -> None:
        self._put("image_commits", commits, ("repo", "revision", "policy"))
        with self._transaction() as conn:
            for repo in {c.repo for c in commits}:
                conn.execute(
                    "DELETE FROM image_commits WHERE repo = ? AND revision NOT IN (SELECT "
                    "revision FROM image_commits WHERE repo = ? GROUP BY revision "
                    "ORDER BY MAX(at) DESC LIMIT ?)",
                    [repo, repo, keep],
                )

    # ------------------------------------------------------------ history

    def record_event(self, event: records.NewEvent) -> records.Event:
        return self.record_events([event])[0]

    def record_events(self, events: Sequence[records.NewEvent]) -> list[records.Event]:
        """Append events in one transaction; they come back with their ids."""
        out: list[records.Event] = []
        if not events:
            return out
        with self._transaction() as conn:
            for e in events:
                fields = dataclasses.asdict(e)
                fields["at"] = time.time() if e.at is None else e.at
                cur = conn.execute(
                    f"INSERT INTO events ({', '.join(_EVENT_COLUMNS)}) "
                    f"VALUES ({', '.join('?' for _ in _EVENT_COLUMNS)})",
                    [fields[k] for k in _EVENT_COLUMNS],
                )
                out.append(records.Event(id=int(cur.lastrowid or 0), **fields))
        return out

    def events(self, *, app: str = "", cluster: str = "", limit: int = 200) -> list[records.Event]:
        where: list[str] = []
        args: list[object] = []
        if app:
            where.append("app = ?")
            args.append(app)
        if cluster:
            where.append("(cluster = ? OR cluster = '')")
            args.append(cluster)
        found = self._select(
            records.Event, "events", " AND ".join(where), args, order="id DESC", limit=limit
        )
        # entries recorded without their commit's words (an agent's `applied`, or recorded
        # before v6) read them from the revisions the hub still keeps
        commits = self.commits([e.revision for e in found if e.revision and not e.author])
        return [_in_gits_words(e, commits.get(e.revision)) if not e.author else e for e in found]

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
        gone: dict[str, int] = {}
        with self._transaction() as conn:
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


def _in_gits_words(event: records.Event, commit: records.Revision | None) -> records.Event:
    if commit is None:
        return event
    return dataclasses.replace(
        event,
        author=commit.author,
        author_email=commit.author_email,
        subject=commit.message,
        committed_at=commit.time,
    )


_EVENT_COLUMNS = ("at", "app", "cluster", "revision", "previous_revision", "cause", "actor",
                  "kind", "message", "author", "author_email", "subject",
                  "committed_at")  # fmt: skip


def _columns(kind: type) -> tuple[str, ...]:
    """A record's fields, which are its table's column names."""
    return tuple(f.name for f in dataclasses.fields(kind))


def _to_column(value: object) -> object:
    """A record's field as SQLite stores it: flags as 0/1, mappings as sorted JSON text."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, Mapping):
        return json.dumps(dict(value), sort_keys=True)
    return value


def _text(v: object) -> str:
    return "" if v is None else str(v)


def _real(v: object) -> float:
    return float(typing.cast(float, v or 0))


def _integer(v: object) -> int:
    return int(typing.cast(int, v or 0))


def _flag(v: object) -> bool:
    return bool(v)


def _blob(v: object) -> bytes:
    return bytes(typing.cast(bytes, v or b""))


def _mapping(v: object) -> dict[str, Any]:
    return dict(json.loads(v)) if isinstance(v, str) and v else {}


_DECODERS: dict[object, Callable[[object], object]] = {
    str: _text,
    float: _real,
    int: _integer,
    bool: _flag,
    bytes: _blob,
}


_HINTS: dict[type, dict[str, Any]] = {}


def _decoder(kind: type, column: str) -> Callable[[object], object]:
    """How to read `column` into `kind`'s field of that name (rows written by older hubs may
    hold NULL where the field has a value)."""
    hints = _HINTS.get(kind)
    if hints is None:
        hints = _HINTS[kind] = typing.get_type_hints(kind)
    hint = hints[column]
    if typing.get_origin(hint) is Mapping:
        return _mapping
    return _DECODERS[hint]
