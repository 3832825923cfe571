"""What `fleetops-hub`'s admin commands print: tables and JSON of what the hub answered.

Everything printed from the hub goes through `plain`: names, reasons and messages can be
written by agents or repository committers, so control characters and terminal escapes never
reach the operator's terminal. No gRPC calls here (hub.cli_admin makes them).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from typing import Any

from fleetops.hub import reports
from fleetops.proto.v1 import fleet_pb2, types_pb2


def plain(text: str) -> str:
    """Text from the hub (names, reasons, messages: some of it written by agents or commits)
    as one plain line: control characters and terminal escapes shown as U+FFFD."""
    return reports.text(text, 100_000)


def when(seconds: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds))


def print_api_tokens(tokens: Sequence[fleet_pb2.ApiToken], *, output: str) -> int:
    """`token list`: the named API tokens (never their secrets)."""
    rows = [
        {
            "name": t.name,
            "role": t.role,
            "created": when(t.created_at.seconds),
            "expires": when(t.expires_at.seconds) if t.HasField("expires_at") else "never",
            "created_by": t.created_by,
        }
        for t in tokens
    ]
    if output == "json":
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'NAME':<24} {'ROLE':<9} {'CREATED':<20} {'EXPIRES':<20} CREATED BY")
    for r in rows:
        print(
            plain(
                f"{r['name']:<24} {r['role']:<9} {r['created']:<20} {r['expires']:<20} "
                f"{r['created_by']}"
            )
        )
    return 0


def enum_name(enum: Any, value: int, prefix: str) -> str:
    try:
        words = enum.Name(value).removeprefix(prefix).split("_")
    except ValueError:  # a newer hub, or a value nobody should have sent
        return "Unknown"
    return "".join(w.title() for w in words)


def status_rows(snap: fleet_pb2.Snapshot) -> list[dict[str, str]]:
    """The snapshot's (cluster, app) statuses as rows of plain strings."""
    connectivity = {c.name: c for c in snap.clusters}
    rows = []
    for s in snap.statuses:
        c = connectivity.get(s.cluster)
        rows.append(
            {
                "cluster": s.cluster,
                "app": s.app,
                "target": s.target,
                "desired": s.desired_revision,
                "applied": s.applied_revision,
                "sync": enum_name(types_pb2.SyncStatus, s.sync, "SYNC_STATUS_"),
                "health": enum_name(types_pb2.HealthStatus, s.health, "HEALTH_STATUS_"),
                "connectivity": enum_name(types_pb2.Connectivity, c.connectivity, "CONNECTIVITY_")
                if c
                else "",
                "pinned": s.pinned_revision,
                "reason": s.reason,
            }
        )
    return rows


def print_status(snap: fleet_pb2.Snapshot, *, output: str) -> int:
    """`status`: one row per (cluster, app), then repo and hub task problems."""
    rows = status_rows(snap)
    if output == "json":
        repos = [{"name": r.name, "revision": r.revision, "error": r.error} for r in snap.repos]
        tasks = [
            {"name": t.name, "running": t.running, "restarts": t.restarts, "error": t.last_error}
            for t in snap.tasks
        ]
        print(json.dumps({"statuses": rows, "repos": repos, "tasks": tasks}, indent=2))
        return 0
    header = ("CLUSTER", "APP", "DESIRED", "APPLIED", "SYNC", "HEALTH", "REASON")
    table = [header] + [
        (
            r["cluster"],
            r["app"],
            r["desired"][:8] or "-",
            r["applied"][:8] or "-",
            r["sync"],
            r["health"],
            r["reason"],
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    for row in table:
        print(
            plain(
                "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False))
                + "  "
                + row[-1]
            )
        )
    for r in snap.repos:
        if r.error:
            print(plain(f"repo {r.name}: {r.error}"))
    for t in snap.tasks:
        if t.restarts or not t.running:
            state = "running" if t.running else "waiting to restart"
            print(plain(f"hub task {t.name}: {state}, {t.restarts} restarts; last: {t.last_error}"))
    return 0


# how hub.planning names the chart from a Helm repository an assignment runs
_CHART = re.compile(r", chart (\S+) (\S+) \((sha256:[0-9a-f]{64})\)")


def print_history(events: Sequence[types_pb2.Event], *, output: str) -> int:
    """`history`: the events, oldest first as the hub sent them, each with the commit it names
    in Git's words (author, email, subject, committer time; text shows author and subject); in
    JSON an assignment of a chart from a Helm repository also has `chart` (name, version,
    digest)."""
    rows: list[dict[str, object]] = [
        {
            "at": when(e.at.seconds),
            "app": e.app,
            "cluster": e.cluster,
            "kind": e.kind,
            "revision": e.revision,
            "cause": enum_name(types_pb2.Cause, e.cause, "CAUSE_"),
            "actor": e.actor,
            "message": e.message,
            "author": e.author,
            "author_email": e.author_email,
            "subject": e.subject,
            "committed_at": when(e.committed_at.seconds) if e.committed_at.seconds else "",
        }
        for e in events
    ]
    for row, e in zip(rows, events, strict=True):
        found = _CHART.search(e.message)
        if found:
            row["chart"] = dict(zip(("name", "version", "digest"), found.groups(), strict=True))
    if output == "json":
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        print(
            plain(
                f"{r['at']}  {r['kind']!s:<15} {r['app'] or '-'!s:<12} "
                f"{r['cluster'] or '*'!s:<10} {str(r['revision'])[:8] or '-':<8}  "
                f"{r['actor']!s:<14} {r['message']}"
                + (f"  [{r['author']}: {r['subject']}]" if r["author"] or r["subject"] else "")
            )
        )
    return 0
