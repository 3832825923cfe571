"""What `fleetops-hub status` and `history` print from hostile text: shown literally, one line
each, no terminal escapes, and values the CLI does not know shown as Unknown."""

from __future__ import annotations

import json

import pytest

from fleetops.hub import cli_output
from fleetops.proto.v1 import fleet_pb2, types_pb2

EVIL = "\x1b[31mred\x1b[0m [/]x[bold] line\nfake-row"


def test_status_prints_hostile_reasons_literally_without_escapes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    snap = fleet_pb2.Snapshot()
    snap.clusters.add(name="c1", agent_version=EVIL)
    snap.statuses.add(cluster="c1", app="web", reason=EVIL, sync=99, health=42)  # type: ignore[arg-type]
    snap.repos.add(name="platform", error=EVIL)
    assert cli_output.print_status(snap, output="text") == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out
    assert "[/]x[bold] line" in out
    assert "Unknown  Unknown" in out
    assert len(out.splitlines()) == 3  # header, the row, the repo error: no injected line


def test_history_prints_hostile_messages_literally(capsys: pytest.CaptureFixture[str]) -> None:
    events = [types_pb2.Event(kind="applied", actor=EVIL, message=EVIL, cause=13)]  # type: ignore[arg-type]
    assert cli_output.print_history(events, output="text") == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "[/]x[bold]" in out and len(out.splitlines()) == 1


def test_invisible_and_bidi_characters_are_shown_not_hidden(
    capsys: pytest.CaptureFixture[str],
) -> None:
    sneaky = "prod\u200b-eu\u202e1\ufeff\u2028x\U000e0041"
    events = [types_pb2.Event(kind="applied", message=sneaky)]
    assert cli_output.print_history(events, output="text") == 0
    out = capsys.readouterr().out
    assert "prod\ufffd-eu\ufffd1\ufffd\ufffdx\ufffd" in out


def test_history_names_the_chart_an_assignment_runs(capsys: pytest.CaptureFixture[str]) -> None:
    digest = "sha256:" + "ab" * 32
    message = f"1a2b3c4d (default) assigned to c1, chart demo 1.3.0 ({digest})"
    events = [types_pb2.Event(kind="assigned", app="shop", cluster="c1", message=message)]
    assert cli_output.print_history(events, output="text") == 0
    assert f"chart demo 1.3.0 ({digest})" in capsys.readouterr().out
    assert cli_output.print_history(events, output="json") == 0
    [row] = json.loads(capsys.readouterr().out)
    assert row["chart"] == {"name": "demo", "version": "1.3.0", "digest": digest}
