"""`fleetops-hub rollout status|pause|resume|promote|abort|retry`: the two rollout calls to a
running hub's FleetService, and what they print: an app's rollout (steps, clusters per step,
gate readings with their thresholds, bake time left) as text, or the hub's answer as JSON.

Everything from the hub goes through `cli_output.plain`: names, reasons, gate messages and
commit subjects can be written by agents, webhook receivers or committers. No rollout logic:
the hub decides what an action does, this only asks and shows.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from google.protobuf import json_format

from fleetops.hub import cli_admin
from fleetops.hub.cli_output import plain
from fleetops.proto import rollouttext
from fleetops.proto.v1 import fleet_pb2

ACTIONS = ("pause", "resume", "promote", "abort", "retry")
SUBJECT_MOST = 60  # characters of a commit subject the header line shows


def short(revision: str) -> str:
    return revision[:8] if revision else "-"


def header(r: fleet_pb2.Rollout) -> str:
    """`podinfo  a1b2c3d4 "subject" Running, step 2/3 prod-eu: reason`."""
    if not r.revision:
        return f"{r.app}  no rollout yet"
    subject = r.subject
    if len(subject) > SUBJECT_MOST:
        subject = subject[: SUBJECT_MOST - 1] + "…"
    words = f' "{subject}"' if subject else ""
    line = f"{r.app}  {short(r.revision)}{words} {rollouttext.where(r)}"
    return line + (f": {r.reason}" if r.reason else "")


def _table(rows: Sequence[Sequence[str]], indent: str) -> list[str]:
    """Columns padded to their widest cell; the last one is left as it is."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return [
        (
            indent
            + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False))
            + "  "
            + row[-1]
        ).rstrip()
        for row in rows
    ]


def text_lines(r: fleet_pb2.Rollout) -> list[str]:
    """One app's rollout as lines of text (not yet made plain)."""
    out = [header(r)]
    for revision, why in sorted(r.rejected.items()):
        out.append(f"  rejected {short(revision)}: {why}")
    if r.stable_revision:
        out.append(
            f"  stable {short(r.stable_revision)} (the last revision that passed every step)"
        )
    if not r.steps:
        return out
    steps = [("STEP", "PHASE", "PASSED", "FAILED", "DEFERRED", "BAKE", "GATES")]
    for s in r.steps:
        steps.append(
            (
                s.name,
                s.phase + (" (promoted)" if s.promoted else ""),
                f"{s.passed}/{s.clusters}",
                str(s.failed),
                str(s.deferred),
                rollouttext.span(s.bake_seconds) if s.bake_seconds else "-",
                ", ".join(["health", *s.gates]),
            )
        )
    out += _table(steps, "  ")
    by_step: dict[str, list[fleet_pb2.RolloutCluster]] = {}
    for c in r.clusters:
        by_step.setdefault(c.step, []).append(c)
    for name in [s.name for s in r.steps] + [
        n for n in by_step if n not in {s.name for s in r.steps}
    ]:
        members = by_step.get(name, [])
        if not members:
            continue
        out.append(f"  step {name}:" if name else "  excluded (no step matches):")
        rows = [
            (
                c.cluster,
                rollouttext.cluster_state(c),
                "; ".join(rollouttext.gate_reading(g) for g in c.gates) or "-",
                c.reason,
            )
            for c in members
        ]
        out += _table(rows, "    ")
    return out


def print_status(rollouts: Sequence[fleet_pb2.Rollout], *, output: str) -> int:
    """`rollout status [APP]`: every rollout the hub sent, in text or JSON."""
    if output == "json":
        doc = json_format.MessageToDict(
            fleet_pb2.RolloutStatusResponse(rollouts=rollouts),
            preserving_proto_field_name=True,
            always_print_fields_with_no_presence=True,
        )
        print(json.dumps(doc, indent=2))
        return 0
    if not rollouts:
        print("no app has a rollout policy (hub.yaml apps[].rollout)")
        return 0
    for i, r in enumerate(rollouts):
        if i:
            print()
        for line in text_lines(r):
            print(plain(line))
    return 0


def run(ns: argparse.Namespace) -> int:
    """Run `rollout ...` against the hub; the exit code (a refusal raises grpc.RpcError,
    which `fleetops-hub`'s main prints with the hub's message)."""
    with cli_admin.connect(ns) as (stub, meta):
        if ns.rollout_command == "status":
            got = stub.RolloutStatus(
                fleet_pb2.RolloutStatusRequest(app=ns.app), metadata=meta, timeout=30
            )
            return print_status(got.rollouts, output=ns.output)
        action = stub.RolloutAction(
            fleet_pb2.RolloutActionRequest(app=ns.app, action=ns.rollout_command),
            metadata=meta,
            timeout=60,
        )
        print(plain(action.message))
        return 0
