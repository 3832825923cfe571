"""Chart archives (`.tgz` as `helm package` makes them) read without trusting them: their
Chart.yaml, the charts they carry in charts/, and unpacking one with regular files and
directories only, inside the destination, size-capped. No network, no rendering.
"""

from __future__ import annotations

import io
import os
import pathlib
import tarfile
from typing import Any

import yaml

from fleetops.hub import errors
from fleetops.proto import yamlsafe


class FetchError(errors.RenderError):
    """A chart could not be fetched or read: that app's error; its clusters keep what they
    run."""


def members(data: bytes) -> list[tarfile.TarInfo]:
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            return tar.getmembers()
    except (tarfile.TarError, OSError, EOFError) as e:
        raise FetchError(f"a chart archive does not read: {e}") from None


def chart_yaml(data: bytes) -> dict[str, Any]:
    """Chart.yaml of a packaged chart (at <chart>/Chart.yaml)."""
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            for m in tar:
                parts = m.name.split("/")
                if len(parts) == 2 and parts[1] == "Chart.yaml" and m.isfile():
                    f = tar.extractfile(m)
                    text = f.read(1024 * 1024).decode(errors="replace") if f else ""
                    doc = yamlsafe.load(text, source="Chart.yaml")
                    return doc if isinstance(doc, dict) else {}
    except (tarfile.TarError, OSError, EOFError, yaml.YAMLError) as e:
        raise FetchError(f"a chart archive's Chart.yaml does not read: {e}") from None
    raise FetchError("a chart archive holds no <chart>/Chart.yaml; is it a Helm chart?")


def vendored(data: bytes) -> set[str]:
    """Names of the charts a packaged chart carries in its charts/."""
    out = set()
    for m in members(data):
        parts = m.name.split("/")
        if len(parts) >= 3 and parts[1] == "charts":
            out.add(chart_name(parts[2]) if len(parts) == 3 else parts[2])
    return out


def chart_name(file: str) -> str:
    """`common-1.2.3.tgz` -> `common` (the name ends before the version's first digit)."""
    stem = file.removesuffix(".tgz")
    head, sep, tail = stem.rpartition("-")
    while sep and not tail[:1].isdigit():
        head, sep, tail = head.rpartition("-")
    return head if sep else stem


def vendored_in(chart_dir: pathlib.Path) -> set[str]:
    """Names of the charts a chart directory carries in its charts/."""
    charts = chart_dir / "charts"
    if not charts.is_dir():
        return set()
    return {chart_name(p.name) if p.name.endswith(".tgz") else p.name for p in charts.iterdir()}


def extract(archive: pathlib.Path, *, dest: pathlib.Path, max_bytes: int) -> pathlib.Path:
    """Unpack a chart archive into `dest` (regular files and directories only, nothing
    outside `dest`, at most `max_bytes`); the chart's directory."""
    data = archive.read_bytes()
    total = 0
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        members = []
        for m in tar.getmembers():
            if not (m.isfile() or m.isdir()):
                continue  # links and devices: a chart needs none
            total += m.size
            if total > max_bytes:
                raise FetchError(f"chart archive {archive.name}: over {max_bytes} bytes unpacked")
            members.append(m)
        tar.extractall(dest, members=members, filter="data")
    tops = [p for p in dest.iterdir() if p.is_dir()]
    if len(tops) != 1 or not (tops[0] / "Chart.yaml").is_file():
        raise FetchError(f"chart archive {archive.name} holds no single chart directory")
    os.chmod(tops[0], 0o700)
    return tops[0]
