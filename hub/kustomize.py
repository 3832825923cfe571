"""Rendering a Kustomize tree from the repository with `kustomize build`, confined.

Before kustomize runs, every local reference of the kustomization tree is walked and checked
to stay in the repository; remote references (URLs, git, helmCharts) are refused, since
rendering has no network; referenced YAML files go through the bounded loader. Kustomize then
runs with the root-only load restrictor through hub.sandbox. The directories walked are
recorded as inputs of the render, so the hub's render cache never walks them again.
`post_render` is Fleet's Helm post-render: a chart's output put through the kustomization of
the target's kustomize.dir.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import tempfile
from typing import Any

import yaml

from fleetops.hub import errors, sandbox
from fleetops.hub.confined import Source
from fleetops.proto import yamlsafe

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")

_PATH_LISTS = (
    "resources",
    "bases",
    "components",
    "patchesStrategicMerge",
    "crds",
    "generators",
    "transformers",
    "validators",
    "configurations",
)


def is_kustomization(directory: pathlib.Path) -> bool:
    return any((directory / k).is_file() for k in KUSTOMIZATION_FILES)


def build(src: Source, *, build_dir: pathlib.Path, tools: sandbox.Tools) -> str:
    """`kustomize build` of `build_dir` (resolved, inside the repository) once its
    references are checked; the manifests as one YAML stream."""
    for d in referenced_dirs(src, start=build_dir):
        src.refuse_escaping_links(d)
    restrictor = ["--load-restrictor", "LoadRestrictionsRootOnly"]
    args = [tools.kustomize, "build", *restrictor, str(build_dir)]
    with tempfile.TemporaryDirectory(prefix="fleetops-render-") as scratch:
        return sandbox.run(
            args,
            what="kustomize build",
            limits=src.limits,
            scratch=pathlib.Path(scratch),
            shown={src.root: "."},
        )


FLEET_MANIFESTS = "fleet-manifests.yaml"  # what Fleet names the Helm output it post-renders


def post_render(
    src: Source, *, build_dir: pathlib.Path, rendered: str, tools: sandbox.Tools
) -> str:
    """Fleet's Helm post-render: the chart's output, as `fleet-manifests.yaml` first in the
    `resources` of the kustomization at `build_dir`, built by kustomize (a chart with a
    `kustomize.dir`). The repository is never written: the kustomization tree is copied to a
    scratch directory first. A directory without a kustomization leaves the output as it is,
    as in Fleet."""
    if not is_kustomization(build_dir):
        return rendered
    dirs = referenced_dirs(src, start=build_dir)
    for d in dirs:
        src.refuse_escaping_links(d)
    with tempfile.TemporaryDirectory(prefix="fleetops-render-") as scratch:
        tree = pathlib.Path(scratch) / "repo"
        _copy_tree(src, dirs=dirs, into=tree)
        top = tree / os.path.relpath(build_dir, src.root)
        kfile = next(top / k for k in KUSTOMIZATION_FILES if (top / k).is_file())
        doc = src.load_yaml(kfile, kfile.read_text(encoding="utf-8"))
        kustomization = doc[0] if len(doc) == 1 and isinstance(doc[0], dict) else {}
        resources = _list(kustomization.get("resources"))
        if FLEET_MANIFESTS not in resources:
            kustomization["resources"] = [FLEET_MANIFESTS, *resources]
        (top / FLEET_MANIFESTS).write_text(rendered, encoding="utf-8")
        kfile.write_text(yaml.safe_dump(kustomization, sort_keys=False), encoding="utf-8")
        restrictor = ["--load-restrictor", "LoadRestrictionsRootOnly"]
        return sandbox.run(
            [tools.kustomize, "build", *restrictor, str(top)],
            what="kustomize build (after helm)",
            limits=src.limits,
            scratch=pathlib.Path(scratch),
            shown={tree: ".", src.root: "."},
        )


def _copy_tree(src: Source, *, dirs: list[pathlib.Path], into: pathlib.Path) -> None:
    """The files under `dirs` (resolved, in the repository) copied to `into` at their repo
    paths. Directory links are not followed (two links to `.` would copy the tree without
    end); a file link is copied as the file it names when that is in the repository. The
    copy is bounded like a chart copy: Limits.max_chart bytes, max_chart_entries files."""
    size = count = 0
    for d in dirs:
        for top, subdirs, files in os.walk(d, followlinks=False):
            subdirs[:] = [s for s in subdirs if not os.path.islink(os.path.join(top, s))]
            for name in files:
                path = pathlib.Path(top, name)
                real = pathlib.Path(os.path.realpath(path))
                if not real.is_file() or not str(real).startswith(str(src.root).rstrip("/") + "/"):
                    continue  # a link out of the repository was refused already; skip it
                count += 1
                size += real.stat().st_size
                if count > src.limits.max_chart_entries or size > src.limits.max_chart:
                    raise errors.RenderError(
                        f"kustomize.dir {src.rel(dirs[0])}: the kustomization tree holds more "
                        f"than {src.limits.max_chart_entries} files or "
                        f"{src.limits.max_chart >> 20} MiB; make it smaller"
                    )
                dest = into / os.path.relpath(path, src.root)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(real, dest)


def referenced_dirs(src: Source, *, start: pathlib.Path) -> list[pathlib.Path]:
    """Every local directory the kustomization tree at `start` refers to (itself first),
    resolved and checked to stay in the repository, each recorded as an input of the
    render. Remote references (URLs, git) are refused: vendor them into the repo.
    Referenced YAML files are read through the bounded loader, so an alias bomb is refused
    here, by name."""
    root = src.root
    seen: set[pathlib.Path] = set()
    out: list[pathlib.Path] = []
    todo = [start]
    while todo:
        d = todo.pop()
        if d in seen:
            continue
        seen.add(d)
        out.append(d)
        src.depends_on(d)
        kfile = next((d / k for k in KUSTOMIZATION_FILES if (d / k).is_file()), None)
        if kfile is None:
            continue
        where = src.rel(kfile)
        try:
            docs = src.load_yaml(kfile, src.read_text(kfile))
        except yaml.YAMLError as e:
            raise errors.RenderError(f"{where}: invalid YAML: {yamlsafe.describe(e)}") from None
        doc = docs[0] if len(docs) == 1 and isinstance(docs[0], dict) else {}
        if doc.get("helmCharts") or doc.get("helmChartInflationGenerator"):
            raise errors.RenderError(f"{where}: helmCharts needs network; use a Helm app instead")
        for ref in _references(doc):
            if "://" in ref or ref.startswith(("git@", "github.com/", "gitlab.com/")):
                raise errors.RenderError(
                    f"{where}: remote reference {ref!r} is not allowed (no network while "
                    "rendering); vendor it into the repository"
                )
            rel = os.path.relpath((d / ref), root)
            target = src.inside(rel, what=f"{where} reference")
            link = src.refused_under(rel)
            if link or rel in src.refused_links:
                raise errors.RenderError(
                    f"{(link or [rel])[0]!r} was refused at checkout: a symlink that points "
                    "outside the repository, or a file too large"
                )
            if target.is_dir():
                todo.append(target)
            elif target.is_file() and target.suffix in MANIFEST_SUFFIXES:
                src.bounded(d / ref, src.read_text(d / ref))
    return out


def _references(doc: dict[Any, Any]) -> list[str]:
    """The local paths one kustomization file names."""
    refs: list[str] = []
    for key in _PATH_LISTS:
        refs += [r for r in _list(doc.get(key)) if isinstance(r, str)]
    for key in ("patches", "patchesJson6902", "replacements"):
        refs += [p["path"] for p in _list(doc.get(key)) if isinstance(p, dict)
                 and isinstance(p.get("path"), str)]  # fmt: skip
    for gen in _list(doc.get("configMapGenerator")) + _list(doc.get("secretGenerator")):
        if not isinstance(gen, dict):
            continue
        for f in _list(gen.get("files")) + _list(gen.get("envs")) + [gen.get("env") or ""]:
            if f:
                refs.append(str(f).split("=", 1)[-1])
    return refs


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []
