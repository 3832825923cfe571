"""How the agent's command line prints results: a table for people, JSON for scripts.

Plain text only, and never object content, so a Secret's data cannot be printed.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from fleetops.agent import health
from fleetops.agent import status as st


def result_json(result: st.AppResult) -> dict[str, Any]:
    return {
        "app": result.app,
        "revision": result.revision,
        "bundleDigest": result.bundle_digest,
        "sync": st.sync_name(result.sync),
        "health": health.name(result.health),
        "reason": result.reason,
        "healed": result.healed,
        "pruneHeld": result.prune_held,
        "resources": [
            {
                "group": r.key.group,
                "version": r.version,
                "kind": r.key.kind,
                "namespace": r.key.namespace,
                "name": r.key.name,
                "sync": st.sync_name(r.sync),
                "health": r.health.name if r.health else "",
                "healthReason": r.health.reason if r.health else "",
                "action": r.action,
                "message": r.message,
                "conflictManager": r.conflict_manager,
                "drift": [{"path": f.path, "desired": f.desired, "live": f.live} for f in r.drift],
            }
            for r in result.resources
        ],
    }


def show(result: st.AppResult, output: str, *, brief: bool = False) -> None:
    if output == "json":
        print(json.dumps(result_json(result), indent=None if brief else 2), flush=True)
        return
    rev = result.revision[:12] or "-"
    head = (
        f"app {result.app}  revision {rev}  sync {st.sync_name(result.sync)}  "
        f"health {health.name(result.health)}"
    )
    if brief:
        extra = f"  healed {result.healed}" if result.healed else ""
        print(f"{head}{extra}  {result.reason}", flush=True)
        return
    print(head)
    idents = [str(r.key) for r in result.resources]
    width = max((len(i) for i in idents), default=0)
    for ident, r in zip(idents, result.resources, strict=True):
        h = r.health.name if r.health else "-"
        note = r.message or (r.health.reason if r.health else "")
        print(f"  {ident:<{width}}  {r.action or '-':<8} {st.sync_name(r.sync):<11} {h:<11} {note}")
        for f in r.drift:
            print(f"  {'':<{width}}    {f.path}: Git {f.desired}, live {f.live}")
    print(f"reason: {result.reason}", flush=True)


def show_health(rows: list[dict[str, str]], problems: list[str], *, output: str) -> None:
    """`fleetops-agent health`: one row per object (kind, name, health, reason), then errors."""
    if output == "json":
        print(json.dumps({"objects": rows, "errors": problems}, indent=2))
        return
    width = max((len(_ident(row)) for row in rows), default=0)
    for row in rows:
        print(f"{_ident(row):<{width}}  {row['health']:<11}  {row['reason']}")
    for p in problems:
        print(f"error: {p}", file=sys.stderr)


def _ident(row: dict[str, str]) -> str:
    where = f"{row['namespace']}/{row['name']}" if row["namespace"] else row["name"]
    return f"{row['kind']} {where}"
