"""Chart archives (`.tgz` as `helm package` makes them) read without trusting them: their
Chart.yaml, the charts they carry in charts/, and unpacking one with regular files and
directories only, inside the destination, size-capped. Members are streamed, at most
MAX_MEMBERS of them and MAX_UNPACKED bytes (a small gzip can hold millions of empty files).
No network, no rendering.
"""

from __future__ import annotations

import io
import os
import pathlib
import tarfile
from collections.abc import Iterator
from typing import Any, cast

import yaml

from fleetops.hub import errors
from fleetops.proto import yamlsafe


class FetchError(errors.RenderError):
    """A chart could not be fetched or read: that app's error; its clusters keep what they
    run."""


MAX_MEMBERS = 20_000  # files and directories in one chart archive (as confined.Limits allows
# an in-repo chart; big charts hold hundreds)
MAX_UNPACKED = 256 * 1024 * 1024  # bytes, headers (512 each) included, read while scanning


def _scan(data: bytes, *, what: str) -> Iterator[tuple[tarfile.TarFile, tarfile.TarInfo]]:
    """The members of a chart archive, streamed, at most MAX_MEMBERS and MAX_UNPACKED bytes
    (a tiny gzip can hold millions of empty members); FetchError naming `what` past either."""
    count = total = 0
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            for m in tar:
                count += 1
                total += 512 + max(m.size, 0)
                if count > MAX_MEMBERS:
                    raise FetchError(
                        f"{what}: the archive holds over {MAX_MEMBERS} files; refused (a chart "
                        "holds hundreds at most)"
                    )
                if total > MAX_UNPACKED:
                    raise FetchError(f"{what}: the archive is over {MAX_UNPACKED} bytes unpacked")
                yield tar, m
                cast(Any, tar).members.clear()  # tarfile keeps each member read: keep none
    except (tarfile.TarError, OSError, EOFError) as e:
        raise FetchError(f"{what}: the archive does not read: {e}") from None


def members(data: bytes, *, what: str = "a chart archive") -> list[tarfile.TarInfo]:
    return [m for _, m in _scan(data, what=what)]


def chart_yaml(data: bytes, *, what: str = "a chart archive") -> dict[str, Any]:
    """Chart.yaml of a packaged chart (at <chart>/Chart.yaml)."""
    try:
        for tar, m in _scan(data, what=what):
            parts = m.name.split("/")
            if len(parts) == 2 and parts[1] == "Chart.yaml" and m.isfile():
                f = tar.extractfile(m)
                text = f.read(1024 * 1024).decode(errors="replace") if f else ""
                doc = yamlsafe.load(text, source="Chart.yaml")
                return doc if isinstance(doc, dict) else {}
    except (tarfile.TarError, OSError, EOFError, yaml.YAMLError) as e:
        raise FetchError(f"{what}: its Chart.yaml does not read: {e}") from None
    raise FetchError(f"{what}: the archive holds no <chart>/Chart.yaml; is it a Helm chart?")


def vendored(data: bytes, *, what: str = "a chart archive") -> set[str]:
    """Names of the charts a packaged chart carries in its charts/."""
    out = set()
    for _, m in _scan(data, what=what):
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
    what = f"chart archive {archive.name}"
    for _ in _scan(data, what=what):
        pass  # a refused archive leaves nothing on disk
    try:
        for tar, m in _scan(data, what=what):
            if not (m.isfile() or m.isdir()):
                continue  # links and devices: a chart needs none
            total += m.size
            if total > max_bytes:
                raise FetchError(f"{what}: over {max_bytes} bytes unpacked")
            tar.extract(m, dest, filter="data")
    except (tarfile.TarError, OSError) as e:
        raise FetchError(f"{what}: does not unpack: {e}") from None
    tops = [p for p in dest.iterdir() if p.is_dir()]
    if len(tops) != 1 or not (tops[0] / "Chart.yaml").is_file():
        raise FetchError(f"chart archive {archive.name} holds no single chart directory")
    os.chmod(tops[0], 0o700)
    return tops[0]
