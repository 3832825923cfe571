"""The wheel the image installs: one top-level name, `fleetops`, holding every program and the
files they load; it installs beside PyPI's proto-plus (which owns the top-level `proto`) and
both keep working, before and after fleetops is uninstalled.

The wheel is built from a copy of the sources with the venv's setuptools, and installed with
`--no-index` into a fresh venv: proto-plus comes from the wheel `make setup` downloads into the
cache, the shared dependencies (protobuf, grpc, ...) from the dev venv, read-only."""

from __future__ import annotations

import os
import pathlib
import shutil
import site
import subprocess
import sys
import zipfile

import pytest

from tests.deploy import tools

PROTO_PLUS = "proto_plus-1.29.0-py3-none-any.whl"  # the Makefile downloads this exact file
PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(tools.ROOT / name, src / name)
    for folder in ("hub", "agent", "tui", "proto"):
        shutil.copytree(
            tools.ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__")
        )
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run(
        [*PIP, "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    (built,) = out.glob("fleetops-*.whl")
    return built


def test_the_wheel_installs_one_top_level_name(wheel: pathlib.Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"fleetops"}, f"the wheel installs top-level names {sorted(tops)}"
    assert "fleetops/__init__.py" not in names  # a namespace: nothing of its own to shadow
    for needed in (
        "fleetops/hub/cli.py",
        "fleetops/hub/install.py",
        "fleetops/agent/runner.py",
        "fleetops/tui/fleet.tcss",
        "fleetops/proto/v1/agent_pb2.py",
        "fleetops/proto/v1/agent.proto",
        "fleetops/hub/py.typed",
    ):
        assert needed in names, f"{needed} is missing from the wheel the image installs"
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    scripts = zipfile.ZipFile(wheel).read(entry).decode()
    for script in ("fleetops-hub", "fleetops-agent", "fleetops-tui"):
        assert f"{script} = fleetops." in scripts, scripts


def _python(venv: pathlib.Path, code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(venv / "bin" / "python"), "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=venv,  # not the checkout, whose folders must not be what gets imported
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )


PROTO_PLUS_WORKS = """
import proto
class Greeting(proto.Message):
    text = proto.Field(proto.STRING, number=1)
assert Greeting(text="hi").text == "hi"
print("proto-plus ok")
"""

FLEETOPS_WORKS = """
import fleetops.hub.cli, fleetops.agent.cli, fleetops.tui.cli
from fleetops.proto.v1 import fleet_pb2
assert fleetops.hub.cli.__file__.startswith(__import__("sys").prefix), fleetops.hub.cli.__file__
print("fleetops ok", fleet_pb2.Snapshot.DESCRIPTOR.full_name)
"""


def test_fleetops_installs_beside_proto_plus_and_both_work(
    wheel: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    cache = pathlib.Path(
        os.environ.get("FLEETOPS_CACHE", pathlib.Path.home() / ".cache" / "fleetops")
    )
    plus = cache / "wheels" / PROTO_PLUS
    assert plus.is_file(), f"{plus} is missing; `make setup` downloads it"
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    (mine,) = venv.glob("lib/python*/site-packages")
    # The dependencies both need, read from the dev venv as a plain path (its .pth files, and so
    # its editable fleetops, are not processed from there).
    (mine / "deps.pth").write_text(site.getsitepackages()[0] + "\n")

    def pip(*args: str) -> None:
        done = subprocess.run(
            [*PIP, "--python", str(venv / "bin" / "python"), *args],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr

    pip("install", "--no-index", "--no-deps", "-q", str(plus))
    pip("install", "--no-index", "--no-deps", "-q", str(wheel))
    for code, said in ((PROTO_PLUS_WORKS, "proto-plus ok"), (FLEETOPS_WORKS, "fleetops ok")):
        ran = _python(venv, code)
        assert ran.returncode == 0 and said in ran.stdout, ran.stderr
    version = subprocess.run(
        [str(venv / "bin" / "fleetops-hub"), "--version"], capture_output=True, text=True
    )
    assert version.returncode == 0 and "fleetops-hub" in version.stdout, version.stderr
    pip("uninstall", "-y", "-q", "fleetops")
    ran = _python(venv, PROTO_PLUS_WORKS)
    assert ran.returncode == 0 and "proto-plus ok" in ran.stdout, (
        f"uninstalling fleetops broke proto-plus: {ran.stderr}"
    )
    assert _python(venv, "import fleetops.hub").returncode != 0
