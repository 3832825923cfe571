"""A bundle carries a YAML alias bomb to the agent: that file is one per-resource error naming
it, the rest of the bundle still parses, and the agent process stays up.

Parsed with the agent's own reader (what the reconciler runs on every bundle) and through the
real `fleetops-agent` command. A bomb that got through would hang or exhaust memory: every
parse runs under a guard (a thread deadline, or the subprocess timeout).
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

from fleetops.agent import manifests
from fleetops.proto.v1 import types_pb2
from tests.support import hostile

AGENT = str(pathlib.Path(sys.executable).parent / "fleetops-agent")
GOOD = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: good}\ndata: {k: v}\n"


def bundle(**files: str) -> types_pb2.Bundle:
    out = types_pb2.Bundle(app="shop", revision="r1", namespace="shop")
    for source, text in files.items():
        out.manifests.add(source=source.replace("_", "."), yaml=text)
    return out


def test_a_bomb_is_a_problem_of_its_file_naming_file_and_line() -> None:
    parsed = hostile.within(
        30, "parsing the bundle", lambda: manifests.parse_bundle(bundle(bomb_yaml=hostile.bomb()))
    )
    assert len(parsed.problems) == 1
    problem = str(parsed.problems[0])
    assert problem.startswith(f"bomb.yaml:{parsed.problems[0].line}: invalid YAML: ")
    assert "aliases are expanded" in problem


def test_the_rest_of_the_bundle_still_parses_next_to_a_bomb() -> None:
    parsed = hostile.within(
        30,
        "parsing the bundle",
        lambda: manifests.parse_bundle(bundle(bomb_yaml=hostile.bomb(), good_yaml=GOOD)),
    )
    assert [r.name for r in parsed.resources] == ["good"]


def test_a_bomb_after_good_documents_keeps_them(tmp_path: pathlib.Path) -> None:
    parsed = manifests.parse(source="mixed.yaml", text=GOOD + "---\n" + hostile.bomb())
    assert [r.name for r in parsed.resources] == ["good"]
    assert [p.source for p in parsed.problems] == ["mixed.yaml"]


def test_the_agent_command_reports_the_bomb_and_the_good_file(tmp_path: pathlib.Path) -> None:
    (tmp_path / "bomb.yaml").write_text(hostile.bomb())
    (tmp_path / "good.yaml").write_text(GOOD)
    res = subprocess.run(
        [
            AGENT,
            "health",
            str(tmp_path / "bomb.yaml"),
            str(tmp_path / "good.yaml"),
            "--output",
            "json",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    out = json.loads(res.stdout)
    assert [o["name"] for o in out["objects"]] == ["good"]
    assert len(out["errors"]) == 1 and out["errors"][0].startswith(f"{tmp_path}/bomb.yaml:")
