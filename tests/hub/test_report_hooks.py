"""A report's hook phases reach the fleet view (issue 13), made safe like every other text an
agent sends: the agent is not trusted (hub.reports.sanitize)."""

from __future__ import annotations

from fleetops.hub import reports
from fleetops.proto.v1 import types_pb2


def _report(hook: str) -> types_pb2.AppReport:
    report = types_pb2.AppReport(app="shop")
    r = report.resources.add(hook=hook, message="PreSync hook succeeded: the job completed")
    r.ref.kind, r.ref.namespace, r.ref.name = "Job", "shop", "migrate"
    return report


def test_a_hooks_phases_are_kept() -> None:
    kept = reports.sanitize(_report("PreSync,PostSync"))
    assert kept.resources[0].hook == "PreSync,PostSync"


def test_a_hostile_hook_text_is_inert_and_bounded() -> None:
    kept = reports.sanitize(_report("PreSync\x1b[2J\n" + "x" * 1000)).resources[0].hook
    assert "\x1b" not in kept and "\n" not in kept
    assert kept.startswith("PreSync\ufffd[2J\ufffd") and len(kept) == reports.MAX_FIELD
