"""What an agent reports, made safe to keep and show: the agent is not trusted.

Pure. An agent's report passes through `sanitize` before the hub stores or shows it: enum
values the hub does not know become Unspecified/Unknown (a newer or lying agent never crashes
`/metrics`, `status` or the TUI), text is cut to a bounded length with control characters
replaced (no terminal escapes, no line injection into logs or `/metrics`), lists are capped,
and ids that are not what they claim (revision, digest) are dropped. Whether the agent may
report the app at all is the caller's check (only assigned apps).
"""

from __future__ import annotations

import re
import unicodedata

from fleetops.hub import config
from fleetops.proto.v1 import types_pb2

MAX_REASON = 1000
MAX_MESSAGE = 500
MAX_FIELD = 300
MAX_RESOURCES = 5000
MAX_DRIFT_PER_RESOURCE = 50
MAX_FACTS = 32
_HEX = re.compile(r"^[0-9a-f]{1,64}$")
# control, format (zero-width, bidi, BOM, tags), line/paragraph separators and surrogates
_HIDDEN = ("Cc", "Cf", "Zl", "Zp", "Cs")

_SYNC = set(types_pb2.SyncStatus.values())
_HEALTH = set(types_pb2.HealthStatus.values())


def text(value: str, limit: int) -> str:
    """One line of at most `limit` characters, control characters shown as U+FFFD."""
    clean = (
        value  # the common case, checked in C: nothing hidden in it
        if value.isprintable()
        else "".join("\ufffd" if unicodedata.category(c) in _HIDDEN else c for c in value)
    )
    return clean if len(clean) <= limit else clean[: limit - 1] + "…"


def _sync(value: int) -> types_pb2.SyncStatus.ValueType:
    return value if value in _SYNC else types_pb2.SYNC_STATUS_UNSPECIFIED  # type: ignore[return-value]


def _health(value: int) -> types_pb2.HealthStatus.ValueType:
    return value if value in _HEALTH else types_pb2.HEALTH_STATUS_UNKNOWN  # type: ignore[return-value]


def _id(value: str) -> str:
    return value if _HEX.match(value) else ""


def sanitize(report: types_pb2.AppReport) -> types_pb2.AppReport:
    """A copy of `report` that is safe to store, count and show."""
    out = types_pb2.AppReport(
        app=report.app,
        revision=_id(report.revision),
        bundle_digest=_id(report.bundle_digest),
        generation=max(0, report.generation),
        sync=_sync(report.sync),
        health=_health(report.health),
        reason=text(report.reason, MAX_REASON),
        drifted_resources=max(0, report.drifted_resources),
        healed_resources=max(0, report.healed_resources),
        prune_held=report.prune_held,
    )
    if report.HasField("observed_at"):
        out.observed_at.CopyFrom(report.observed_at)
    if report.HasField("applied_at"):
        out.applied_at.CopyFrom(report.applied_at)
    for r in report.resources[:MAX_RESOURCES]:
        res = out.resources.add(
            sync=_sync(r.sync),
            health=_health(r.health),
            message=text(r.message, MAX_MESSAGE),
            conflict_manager=text(r.conflict_manager, MAX_FIELD),
            hook=text(r.hook, MAX_FIELD),
        )
        res.ref.CopyFrom(
            types_pb2.ResourceRef(
                group=text(r.ref.group, MAX_FIELD),
                version=text(r.ref.version, MAX_FIELD),
                kind=text(r.ref.kind, MAX_FIELD),
                namespace=text(r.ref.namespace, MAX_FIELD),
                name=text(r.ref.name, MAX_FIELD),
            )
        )
        for d in r.drift[:MAX_DRIFT_PER_RESOURCE]:
            res.drift.add(
                path=text(d.path, MAX_FIELD),
                desired=text(d.desired, MAX_FIELD),
                live=text(d.live, MAX_FIELD),
            )
    if len(report.resources) > MAX_RESOURCES:
        out.reason = text(
            f"{out.reason} (first {MAX_RESOURCES} of {len(report.resources)} resources shown)",
            MAX_REASON,
        )
    return out


def clean_facts(facts: dict[str, str]) -> dict[str, str]:
    """What an agent says about itself, kept only when it is a valid Kubernetes label (so it
    cannot carry markup or control characters) and at most MAX_FACTS of them."""
    out: dict[str, str] = {}
    for key, value in sorted(facts.items()):
        if len(out) >= MAX_FACTS or len(key) > 317 or config.label_problem(key, value):
            continue
        out[key] = value
    return out
