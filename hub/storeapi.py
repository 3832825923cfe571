"""The store's interface: every query the hub makes, typed, and nothing else.

`StoreApi` is what the rest of the hub may call on its store. hub.store implements it over
SQLite; a PostgreSQL store (shared by hub replicas) would implement the same methods and hand
out the same records (hub.records). So nothing here may name SQL, sqlite-utils or a table
layout, and no method may take or return an untyped row.

The query methods block. They run on the store's own worker: `await store.run(store.method,
...)` from async code, `store.call(store.method, ...)` from synchronous code (CLI, tests). What
a method returns has been committed; a write the disk refuses raises errors.StoreUnavailable
from `run` and leaves nothing half-written.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import ParamSpec, Protocol, TypeVar

from fleetops.hub import records

P = ParamSpec("P")
T = TypeVar("T")


class StoreApi(Protocol):
    # ------------------------------------------------------------ running queries

    writable: bool  # the last call went through (False after a refused write)
    write_errors: int  # calls the disk refused, since start

    async def run(self, fn: Callable[P, T], /, *args: P.args, **kw: P.kwargs) -> T:
        """`fn(*args, **kw)` on the store's worker; a refused write is StoreUnavailable."""
        ...

    def call(self, fn: Callable[P, T], /, *args: P.args, **kw: P.kwargs) -> T:
        """The same, from synchronous code."""
        ...

    def close(self) -> None: ...

    # ------------------------------------------------------------ clusters

    def clusters(self) -> list[records.Cluster]: ...

    def put_cluster(self, cluster: records.Cluster) -> None:
        """Insert or replace the cluster of that name."""
        ...

    def remove_cluster(self, name: str) -> None:
        """Forget a cluster at once: its row (so its certificate), assignments, per-cluster
        pins, reports and unused registration tokens."""
        ...

    # ------------------------------------------------------------ registration tokens

    def add_registration_token(self, token: records.RegistrationToken) -> None: ...

    def registration_tokens(self) -> list[records.RegistrationToken]: ...

    def use_registration_token(
        self, *, token_id: str, secret_hash: str, now: float
    ) -> records.RegistrationToken | None:
        """Mark the token used and return it so, or None when it is unknown, its secret is
        wrong, it expired or it was used already (one-time)."""
        ...

    # ------------------------------------------------------------ fleet API tokens

    def add_api_token(self, token: records.ApiToken) -> bool:
        """False when a token of that name exists already."""
        ...

    def api_tokens(self) -> list[records.ApiToken]: ...

    def revoke_api_token(self, name: str) -> bool:
        """False when there is no token of that name."""
        ...

    # ------------------------------------------------------------ Git

    def repos(self) -> list[records.Repo]: ...

    def put_repo(self, repo: records.Repo) -> None: ...

    def put_revision(self, revision: records.Revision) -> None: ...

    def commits(self, shas: Sequence[str]) -> dict[str, records.Revision]:
        """The revisions seen with these SHAs (of any repo), by SHA; unknown ones left out."""
        ...

    def revisions(self, repo: str) -> list[records.Revision]:
        """The revisions seen of `repo`, newest first."""
        ...

    # ------------------------------------------------------------ rendering

    def put_bundle(self, bundle: records.Bundle) -> None: ...

    def bundle(self, digest: str) -> records.Bundle | None: ...

    def bundle_digests(self) -> set[str]: ...

    def put_render(self, render: records.Render) -> None: ...

    def renders(self) -> list[records.Render]: ...

    # ------------------------------------------------------------ assignments and reports

    def assignments(self) -> list[records.Assignment]: ...

    def assignments_for_cluster(self, cluster: str) -> list[records.Assignment]: ...

    def put_assignments(self, assignments: Sequence[records.Assignment]) -> None:
        """Insert or replace each (cluster, app), all in one transaction."""
        ...

    def delete_assignment(self, *, cluster: str, app: str) -> None: ...

    def reports(self) -> list[records.Report]: ...

    def put_reports(self, reports: Sequence[records.Report]) -> None:
        """Insert or replace each (cluster, app)'s latest report, all in one transaction."""
        ...

    # ------------------------------------------------------------ operator state

    def pins(self) -> list[records.Pin]: ...

    def put_pin(self, pin: records.Pin) -> None: ...

    def delete_pin(self, *, app: str, cluster: str) -> None: ...

    def app_states(self) -> list[records.AppState]: ...

    def put_app_state(self, state: records.AppState) -> None: ...

    # ------------------------------------------------------------ rollouts

    def rollouts(self) -> list[records.Rollout]: ...

    def put_rollout(self, rollout: records.Rollout) -> None:
        """Insert or replace the app's rollout book."""
        ...

    def delete_rollout(self, app: str) -> None: ...

    # ------------------------------------------------------------ image automation

    def image_commits(self) -> list[records.ImageCommit]: ...

    def put_image_commits(self, commits: list[records.ImageCommit], *, keep: int) -> None:
        """Add an image update commit's tags; only the newest `keep` revisions of each repo
        stay."""
        ...

    # ------------------------------------------------------------ history and retention

    def record_event(self, event: records.NewEvent) -> records.Event: ...

    def record_events(self, events: Sequence[records.NewEvent]) -> list[records.Event]:
        """Append in one transaction; the events come back with their ids, in order."""
        ...

    def events(self, *, app: str = "", cluster: str = "", limit: int = 200) -> list[records.Event]:
        """Newest first; `cluster` also matches fleet-wide entries (cluster "")."""
        ...

    def prune(
        self,
        *,
        before: float,
        per_app: int,
        keep_revisions: int,
        capped_causes: Iterable[int] = (),
    ) -> dict[str, int]:
        """Forget what nothing needs any more (see hub.sqltables); rows gone per table."""
        ...
