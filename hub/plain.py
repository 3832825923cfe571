"""Rendering a directory of plain YAML, in-process, with Fleet's YAML overlays.

Every manifest file under the app's directory (recursive; hidden paths and `overlays/` left
out) is a manifest of the bundle when one of its documents has a `kind`. A target's YAML
overlays (`overlays/<name>/`, in the target's list order) act on files by their path, as in
Fleet: `overlays/<name>/<rel>` replaces or adds the file `<rel>` (an empty file removes its
objects); a file whose name holds `_patch.` patches the file of the same name without `_patch`
in the same folder (`sub/web_patch.yaml` -> `sub/web.yaml`), with the patch kind hub.patches
picks from the content. Within one overlay, replacements and additions come first, then
patches, each in path order (Fleet leaves this order undefined). A patch of a file with several
documents patches the one document its kind and metadata.name select, never dropping the
others. Files are read through hub.confined only; no program runs here.
"""

from __future__ import annotations

import os
import pathlib
import posixpath
from typing import Any

import yaml

from fleetops.hub import config, errors, patches
from fleetops.hub.confined import Source
from fleetops.hub.kustomize import KUSTOMIZATION_FILES, MANIFEST_SUFFIXES
from fleetops.proto import yamlsafe

NOT_MANIFESTS = {"fleet.yaml", "Chart.yaml", "Chart.lock", *KUSTOMIZATION_FILES}
PATCH_MARK = "_patch."  # in a file name: a patch of the file named without it
ALIAS_GROWTH = 4  # how many times its YAML a patched file may take once aliases are written out
# hub.render re-exports these two names; kept so that module stays as it is.
PATCH_SUFFIXES = tuple(f"_patch{s}" for s in MANIFEST_SUFFIXES)
merge = patches.merge_patch


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
    app_rel = src.rel(app_dir)
    for overlay in target.yaml_overlays if target else ():
        odir = src.inside(os.path.join(app_rel, "overlays", overlay), what="yaml.overlays entry")
        if not odir.is_dir():
            raise errors.RenderError(f"yaml overlay {overlay!r}: overlays/{overlay} does not exist")
        src.refuse_escaping_links(odir)
        src.depends_on(odir)
        replacements: list[tuple[str, pathlib.Path]] = []
        patch_files: list[tuple[str, pathlib.Path]] = []
        for path in sorted(odir.rglob("*")):
            if path.is_file() and path.suffix in MANIFEST_SUFFIXES:
                rel = path.relative_to(odir).as_posix()
                (patch_files if PATCH_MARK in path.name else replacements).append((rel, path))
        for rel, path in replacements:  # an empty file leaves no objects: the base is removed
            files[rel], origin[rel] = src.read_text(path), path
        for rel, path in patch_files:
            base = posixpath.join(posixpath.dirname(rel), path.name.replace(PATCH_MARK, ".", 1))
            if base not in files:
                raise errors.RenderError(
                    f"{src.rel(path)}: patches {src.rel(app_dir / base)}, which does not exist; "
                    f"a patch applies to the file of the same name without {PATCH_MARK[:-1]!r}, "
                    "in the same folder of the app (or added by an earlier overlay): add that "
                    "file or rename the patch"
                )
            name = src.rel(app_dir / base)
            if origin[base] != app_dir / base:  # an earlier overlay wrote it
                name += f" (from {src.rel(origin[base])})"
            files[base] = _patch_file(
                src, base=origin[base], name=name, text=files[base], patch=path,
                limit=limits.max_output,
            )  # fmt: skip
            _check_size(files, limit=limits.max_output)  # patches can grow files (copy)
    _check_size(files, limit=limits.max_output)
    for rel, text in list(files.items()):
        try:
            docs = src.load_yaml(origin[rel], text)
        except yaml.YAMLError:
            continue  # files that do not parse pass through, so the agent reports them
        # Helm values and other config files are not applied: a file qualifies when any of
        # its documents has a kind.
        if not any(isinstance(d, dict) and "kind" in d for d in docs):
            del files[rel]
    return sorted(files.items())


def _check_size(files: dict[str, str], *, limit: int) -> None:
    total = sum(len(text) for text in files.values())
    if total > limit:
        raise errors.RenderError(
            f"the app's YAML files hold {total} bytes, over the {limit} byte limit "
            "for one bundle; split the app"
        )


def _patch_file(
    src: Source, *, base: pathlib.Path, name: str, text: str, patch: pathlib.Path, limit: int
) -> str:
    """The text of the file `name` (its current `text`, read from `base`) with the patch file
    `patch` applied."""
    where, target = src.rel(patch), name
    try:
        docs = [d for d in src.load_yaml(base, text) if d is not None]
    except yaml.YAMLError as e:
        raise errors.RenderError(
            f"{target}: invalid YAML: {yamlsafe.describe(e)}; {where} cannot apply to it"
        ) from None
    try:
        edits = [d for d in src.load_yaml(patch, src.read_text(patch)) if d is not None]
    except yaml.YAMLError as e:
        raise errors.RenderError(f"{where}: invalid YAML: {yamlsafe.describe(e)}") from None
    if not edits:
        raise errors.RenderError(f"{where}: holds no patch; write one or delete the file")
    if not docs:
        raise errors.RenderError(
            f"{where}: {target} holds no object to patch (it is empty, or an earlier overlay "
            "emptied it); patch a file that has one"
        )
    for edit in edits:
        i = _select(docs, edit, where=where, target=target)
        style = patches.patch_style(docs[i], edit)
        try:
            docs[i] = patches.apply(docs[i], edit, max_copied=limit)
        except (patches.PatchError, RecursionError) as e:
            raise errors.RenderError(
                f"{where}: cannot patch {target} ({_describe(docs[i])}) with a {style.value}: {e}"
            ) from None
    # Aliases are written out in full: a small file of aliases to a big value must not make
    # the hub write (slowly, in-process) many times what the repository holds.
    allowed = min(limit, ALIAS_GROWTH * (len(text) + patch.stat().st_size) + (1 << 20))
    if _written_size(docs, budget=allowed) > allowed:
        raise errors.RenderError(
            f"{where}: the patched {target} would be over {allowed} bytes once its YAML "
            f"aliases are written out (each alias becomes a full copy, and a patched file may "
            f"grow at most {ALIAS_GROWTH} times); write the values out or patch less"
        )
    try:
        return yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False)
    except RecursionError:  # operations can nest a value deeper than any file could
        raise errors.RenderError(
            f"{where}: the patched {target} is nested too deeply to write; flatten the patch"
        ) from None


def _written_size(value: Any, *, budget: int) -> int:
    """About how many bytes `value` takes written out with every alias expanded (each key and
    scalar counted at each occurrence); stops counting past `budget`, so an alias bomb costs
    no more than the budget to measure."""
    total = 0
    todo = [value]
    while todo and total <= budget:
        v = todo.pop()
        if isinstance(v, dict):
            total += 2 * len(v)
            for k, item in v.items():
                todo.append(k)
                todo.append(item)
        elif isinstance(v, list):
            total += 2 * len(v) + 2
            todo.extend(v)
        elif isinstance(v, (str, bytes)):
            total += len(v) + 1
        else:
            total += 8
    return total


class _Dumper(yaml.SafeDumper):
    """Writes a value each time it occurs: no anchors the agent would have to expand."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _select(docs: list[Any], edit: Any, *, where: str, target: str) -> int:
    """Which document of the base `edit` patches: the only one, or the one its kind and
    metadata.name select."""
    if len(docs) == 1:
        return 0
    kind, name = _kind_name(edit)
    hits = [i for i, d in enumerate(docs) if kind and name and _kind_name(d) == (kind, name)]
    if len(hits) == 1:
        return hits[0]
    if not kind or not name:
        raise errors.RenderError(
            f"{where}: {target} holds {len(docs)} documents and the patch does not say which "
            "to patch; split the file into one file per object, or give the patch the "
            "object's kind and metadata.name"
        )
    raise errors.RenderError(
        f"{where}: {target} holds {len(docs)} documents and {len(hits)} of them are "
        f"{kind} {name}; split the file into one file per object"
    )


def _kind_name(doc: Any) -> tuple[str, str]:
    if not isinstance(doc, dict):
        return "", ""
    meta = doc.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) else None
    return str(doc.get("kind") or ""), str(name or "")


def _describe(doc: Any) -> str:
    kind, name = _kind_name(doc)
    return f"{kind} {name}".strip() or "no kind"
