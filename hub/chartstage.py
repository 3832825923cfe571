"""The fetch stage of one app's render: what it needs from outside Git, fetched before
`helm template` runs offline. A chart from a repository (with the dependencies its archive
lacks) is fetched before the render cache key is made, since its resolved version and digest
are part of that key; the dependencies an in-repo chart lacks are fetched from the checkout
just before its render.

Blocking (call it in a thread); a failure is a FetchError, that app's error.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Sequence

import yaml

from fleetops.hub import chartarchive, charts, config
from fleetops.hub.charts import FetchError
from fleetops.proto import yamlsafe


@dataclasses.dataclass(frozen=True)
class Fetched:
    """The archives a render uses: the app's chart (first, when it comes from a repository)
    and the dependencies fetched for it."""

    chart: charts.Pulled | None = None
    dependencies: tuple[charts.Pulled, ...] = ()

    @property
    def key(self) -> str:
        """What decides the render besides Git and hub.yaml: repository, chart, version and
        digest of every archive."""
        every = ([self.chart] if self.chart else []) + list(self.dependencies)
        return ";".join(f"{p.repo}/{p.chart}@{p.version}#{p.digest}" for p in every)

    def describe(self) -> str:
        """`chart podinfo 6.1.0 (sha256:…)`, for history; "" with no chart from a repository."""
        return f"chart {self.chart.describe()}" if self.chart else ""


def remote(
    app: config.App, *, store: charts.Charts, repos: Sequence[config.HelmRepository], revision: str
) -> Fetched:
    """The app's chart from its repository at the version its range picks now, and the
    dependencies the archive lacks."""
    pulled = store.resolve(app.helm, repos=repos, revision=revision)
    return Fetched(pulled, store.dependencies_of_archive(pulled, repos=repos))


def local_dependencies(
    app: config.App,
    *,
    checkout: pathlib.Path,
    store: charts.Charts,
    repos: Sequence[config.HelmRepository],
) -> tuple[pathlib.Path, ...]:
    """The archives of the dependencies the app's in-repo chart declares but does not carry
    in charts/ (none for a chart that vendors them, or for an app that is not a chart)."""
    root = os.path.realpath(checkout)
    chart_dir = pathlib.Path(os.path.realpath(checkout / app.path / app.helm.chart))
    chart_yaml = chart_dir / "Chart.yaml"
    if os.path.commonpath([root, chart_dir]) != root or not chart_yaml.is_file():
        return ()  # not a chart, or not one render may read: the render says so
    if os.path.commonpath([root, os.path.realpath(chart_yaml)]) != root:
        return ()
    if os.path.getsize(chart_yaml) > 1024 * 1024:
        return ()  # the render refuses it, naming the file
    where = f"{app.path}/Chart.yaml"
    try:
        doc = yamlsafe.load(chart_yaml.read_text(errors="replace"), source=where)
    except yaml.YAMLError:
        return ()  # helm template reports it with its line
    if not isinstance(doc, dict) or not doc.get("dependencies"):
        return ()
    name = str(doc.get("name") or app.name)
    try:
        pulled = store.dependencies(
            doc, present=chartarchive.vendored_in(chart_dir), repos=repos, chart_name=name
        )
    except FetchError as e:
        raise FetchError(f"{where}: {e}") from None
    return tuple(p.archive for p in pulled)
