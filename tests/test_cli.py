"""The three console scripts install and answer --help."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

BIN = pathlib.Path(sys.executable).parent


@pytest.mark.parametrize("command", ["fleetops-hub", "fleetops-agent", "fleetops-tui"])
def test_console_script_prints_help(command: str) -> None:
    res = subprocess.run(
        [str(BIN / command), "--help"], capture_output=True, text=True, check=False
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(f"usage: {command}")
