"""Rendering a directory of plain YAML, in-process, with Fleet-style YAML overlays.

Every manifest file under the app's directory (recursive; hidden paths and `overlays/` left
out) is a manifest of the bundle when one of its documents has a `kind`. A target's YAML
overlays (`overlays/<name>/`) replace base files of the same name, remove them (an empty file)
or patch objects (`*_patch.yaml`, a JSON merge patch matched by kind and name). Files are read
through hub.confined only; no program runs here.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping
from typing import Any

import yaml

from fleetops.hub import config, errors
from fleetops.hub.confined import Source
from fleetops.hub.kustomize import KUSTOMIZATION_FILES, MANIFEST_SUFFIXES
from fleetops.proto import yamlsafe

NOT_MANIFESTS = {"fleet.yaml", "Chart.yaml", "Chart.lock", *KUSTOMIZATION_FILES}
PATCH_SUFFIXES = tuple(f"_patch{s}" for s in MANIFEST_SUFFIXES)


def render(
    src: Source, *, app_dir: pathlib.Path, target: config.Target | None
) -> list[tuple[str, str]]:
    """The manifests of the plain YAML app at `app_dir` for `target`: (file, yaml) pairs
    sorted by file."""
    limits = src.limits
    src.depends_on(app_dir)
    files: dict[str, str] = {}
    origin: dict[str, pathlib.Path] = {}  # where each file's text came from
    for path in sorted(app_dir.rglob("*")):  # rglob lists links to directories, never enters
        rel = path.relative_to(app_dir).as_posix()
        if rel.split("/")[0] == "overlays" or any(p.startswith(".") for p in rel.split("/")):
            continue
        if path.is_file() and path.suffix in MANIFEST_SUFFIXES and path.name not in NOT_MANIFESTS:
            files[rel], origin[rel] = src.read_text(path), path
    patches: list[tuple[str, str]] = []
    app_rel = src.rel(app_dir)
    for overlay in target.yaml_overlays if target else ():
        odir = src.inside(os.path.join(app_rel, "overlays", overlay), what="yaml.overlays entry")
        if not odir.is_dir():
            raise errors.RenderError(f"yaml overlay {overlay!r}: overlays/{overlay} does not exist")
        src.refuse_escaping_links(odir)
        src.depends_on(odir)
        for path in sorted(odir.rglob("*")):
            if not path.is_file() or path.suffix not in MANIFEST_SUFFIXES:
                continue
            rel = path.relative_to(odir).as_posix()
            text = src.read_text(path)
            if rel.endswith(PATCH_SUFFIXES):
                patches.append((f"overlays/{overlay}/{rel}", text))
            elif text.strip():
                files[rel], origin[rel] = text, path  # replaces the base file of the same name
            else:
                files.pop(rel, None)  # an empty overlay file removes the base file
    total = sum(len(text) for text in files.values())
    if total > limits.max_output:
        raise errors.RenderError(
            f"the app's YAML files hold {total} bytes, over the {limits.max_output} byte limit "
            "for one bundle; split the app"
        )
    parsed: dict[str, list[Any]] = {}
    for rel, text in list(files.items()):
        try:
            parsed[rel] = src.load_yaml(origin[rel], text)
        except yaml.YAMLError:
            continue  # files that do not parse pass through, so the agent reports them
        # Helm values and other config files are not applied: a file qualifies when any of
        # its documents has a kind.
        if not any(isinstance(d, dict) and "kind" in d for d in parsed[rel]):
            del files[rel]
    if patches:
        files = _apply_patches(
            src,
            app_dir=app_dir,
            files={rel: origin[rel] for rel in files},
            parsed=parsed,
            patches=patches,
        )
    return sorted(files.items())


def _apply_patches(
    src: Source,
    *,
    app_dir: pathlib.Path,
    files: dict[str, pathlib.Path],
    parsed: dict[str, list[Any]],
    patches: list[tuple[str, str]],
) -> dict[str, str]:
    broken = sorted(set(files) - set(parsed))
    if broken:
        raise errors.RenderError(
            f"{src.rel(files[broken[0]])}: invalid YAML; yaml.overlays patches cannot apply"
        )
    objs = {rel: [d for d in parsed[rel] if d is not None] for rel in files}
    for source, text in patches:
        try:
            docs = [d for d in src.load_yaml(app_dir / source, text) if isinstance(d, dict)]
        except yaml.YAMLError as e:
            raise errors.RenderError(
                f"{src.rel(app_dir / source)}: invalid YAML: {yamlsafe.describe(e)}"
            ) from None
        for patch in docs:
            kind = patch.get("kind")
            name = (patch.get("metadata") or {}).get("name")
            hits = [
                (rel, i)
                for rel, docs_of in objs.items()
                for i, obj in enumerate(docs_of)
                if isinstance(obj, dict)
                and obj.get("kind") == kind
                and (obj.get("metadata") or {}).get("name") == name
            ]
            if not hits:
                raise errors.RenderError(
                    f"{source}: patch for {kind} {name} matches no object in the base"
                )
            for rel, i in hits:
                objs[rel][i] = merge(objs[rel][i], patch=patch)
    return {rel: yaml.safe_dump_all(docs_of, sort_keys=False) for rel, docs_of in objs.items()}


def merge(base: Any, *, patch: Any) -> Any:
    """JSON merge patch (RFC 7386): maps merge, null deletes, anything else replaces."""
    if not isinstance(patch, Mapping):
        return patch
    out = dict(base) if isinstance(base, Mapping) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge(out.get(k), patch=v)
    return out
