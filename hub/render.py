"""Rendering an app for one target, like Argo CD's repo-server: the one entry point.

The source kind is detected from the app's directory: `kustomization.yaml` means Kustomize
(hub.kustomize), `Chart.yaml` means Helm (hub.helm), anything else is plain YAML (hub.plain,
a directory, recursive). Per-target overrides: Helm values and values files, a Kustomize
overlay dir, Fleet-style YAML overlays.

Rendering is confined to the checkout, because a repository committer writes everything in
it and must never read the hub's files: every file is read through hub.confined (resolved
inside the checkout, regular, size-capped, YAML through the bounded loader), links the
checkout refused (hub.checkout) and links that resolve outside are render errors of the apps
that hold them, and helm and kustomize run through hub.sandbox (scratch directory, scrubbed
environment, no network, time, memory and output limits, repo-relative paths in messages).
A render error affects only that app and target.

A chart from a Helm repository or OCI registry, and chart dependencies, are fetched before
(hub.charts, the only stage with network) and handed in as archives.

The result carries the repo paths the render depended on (`Rendered.inputs`), so the hub's
render cache keys on them instead of walking the checkout again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import pathlib
from typing import Any

from fleetops.hub import checkout as checkouts
from fleetops.hub import config, errors, helm, kustomize, plain
from fleetops.hub.confined import DEFAULT_LIMITS, Limits, Source
from fleetops.hub.kustomize import KUSTOMIZATION_FILES, MANIFEST_SUFFIXES
from fleetops.hub.plain import NOT_MANIFESTS, PATCH_SUFFIXES, merge
from fleetops.hub.sandbox import Tools

__all__ = [
    "KUSTOMIZATION_FILES",
    "MANIFEST_SUFFIXES",
    "NOT_MANIFESTS",
    "PATCH_SUFFIXES",
    "Limits",
    "Rendered",
    "Tools",
    "arender",
    "detect",
    "merge",
    "render",
]


@dataclasses.dataclass(frozen=True)
class Rendered:
    manifests: tuple[tuple[str, str], ...]  # (source, yaml)
    # Repo paths ("" is the whole repository; none under another) whose Git trees or blobs
    # decide `manifests`: the app's directory, values files, every directory a kustomization
    # refers to, and what the app's symlinks inside the repository stand for. A render cache
    # keyed on the tree ids of these paths (plus the target's overrides) is exact.
    inputs: tuple[str, ...] = ()


def detect(app_dir: pathlib.Path) -> str:
    """ "kustomize", "helm" or "yaml": how the directory `app_dir` renders."""
    if kustomize.is_kustomization(app_dir):
        return "kustomize"
    if (app_dir / "Chart.yaml").is_file():
        return "helm"
    return "yaml"


def render(
    *,
    checkout: pathlib.Path,
    refused_links: tuple[str, ...],
    app: config.App,
    target: config.Target | None,
    tools: Tools,
    limits: Limits = DEFAULT_LIMITS,
    archive: pathlib.Path | None = None,
    dependencies: tuple[pathlib.Path, ...] = (),
) -> Rendered:
    """The manifests of `app` for `target` from the checkout at `checkout`, and the repo
    paths they came from; a RenderError says what is wrong with the app. A chart from a
    repository comes as the `archive` the fetch stage pulled (hub.charts), and `dependencies`
    are the chart archives a chart lacks in its charts/, fetched there too."""
    src = Source.of(checkout, refused_links=refused_links, limits=limits)
    app_dir = src.inside(app.path, what="app path")
    if not app_dir.is_dir():
        raise errors.RenderError(f"path {app.path!r} does not exist at this revision")
    if app.helm.remote:
        if archive is None:
            raise errors.RenderError(f"chart {app.helm.chart!r} was not fetched")
        # the app's directory holds only values files: those it reads are its inputs
        out = helm.render(
            src,
            chart=None,
            archive=archive,
            dependencies=dependencies,
            app=app,
            target=target,
            tools=tools,
        )
        out = _post_render(src, app=app, target=target, rendered=out, tools=tools)
        return Rendered((("helm", out),), src.inputs())
    bad_links = src.refused_under(app.path)
    if bad_links:
        raise errors.RenderError(
            f"{bad_links[0]!r} was refused at checkout: a symlink that points outside the "
            f"repository (replace it with the file itself) or a file over "
            f"{checkouts.MAX_EXPORT_BLOB // 2**20} MiB"
        )
    src.refuse_escaping_links(app_dir)
    src.depends_on(app_dir)
    kind = detect(app_dir)
    chart_dir = app_dir
    if app.helm.chart:  # a chart directory named relative to the app's path (Fleet's form)
        chart_dir = src.inside(os.path.join(app.path, app.helm.chart), what="helm.chart")
        if not (chart_dir / "Chart.yaml").is_file():
            raise errors.RenderError(f"helm.chart {app.helm.chart!r} holds no Chart.yaml")
        src.depends_on(chart_dir)
        kind = "helm"
    if kind == "kustomize" or (kind != "helm" and target and target.kustomize_dir):
        build_dir = app_dir
        if target and target.kustomize_dir:
            build_dir = src.inside(
                os.path.join(app.path, target.kustomize_dir), what="kustomize.dir"
            )
            if not build_dir.is_dir():
                raise errors.RenderError(f"kustomize.dir {target.kustomize_dir!r} does not exist")
        out = kustomize.build(src, build_dir=build_dir, tools=tools)
        manifests: tuple[tuple[str, str], ...] = (("kustomize", out),)
    elif kind == "helm":
        out = helm.render(
            src,
            chart=chart_dir,
            dependencies=dependencies,
            app=app,
            target=target,
            tools=tools,
        )
        out = _post_render(src, app=app, target=target, rendered=out, tools=tools)
        manifests = (("helm", out),)
    else:
        manifests = tuple(plain.render(src, app_dir=app_dir, target=target))
    return Rendered(manifests, src.inputs())


def _post_render(
    src: Source, *, app: config.App, target: config.Target | None, rendered: str, tools: Tools
) -> str:
    """A chart's output through the target's kustomize.dir, as Fleet does (helm, then
    kustomize); the output itself when the target names no kustomize.dir."""
    if not (target and target.kustomize_dir):
        return rendered
    build_dir = src.inside(os.path.join(app.path, target.kustomize_dir), what="kustomize.dir")
    if not build_dir.is_dir():
        raise errors.RenderError(f"kustomize.dir {target.kustomize_dir!r} does not exist")
    src.depends_on(build_dir)
    return kustomize.post_render(src, build_dir=build_dir, rendered=rendered, tools=tools)


async def arender(**kw: Any) -> Rendered:
    """`render` in a worker thread (same keyword arguments)."""
    return await asyncio.to_thread(lambda: render(**kw))
