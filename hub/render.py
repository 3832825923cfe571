"""Rendering an app for one target, like Argo CD's repo-server: plain YAML, Kustomize, Helm.

The source kind is detected from the app's directory: `kustomization.yaml` means Kustomize,
`Chart.yaml` means Helm, anything else is plain YAML (a directory, recursive). Per-target
overrides: Helm values and values files, a Kustomize overlay dir, Fleet-style YAML overlays.

Rendering is confined to the checkout: every path is resolved inside it, symlinks that leave
the repository were never written (repo.py) and are reported, values files and Kustomize
references outside it are refused, remote Kustomize bases are refused, helm and kustomize run
with no network, a time limit and an output size limit. A render error is a RenderError with
the renderer's message; it affects only that app and target.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import pathlib
import subprocess
import tempfile
from collections.abc import Mapping
from typing import Any

import yaml

from hub import config, errors

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
NOT_MANIFESTS = {"fleet.yaml", "Chart.yaml", "Chart.lock", *KUSTOMIZATION_FILES}
MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
PATCH_SUFFIXES = tuple(f"_patch{s}" for s in MANIFEST_SUFFIXES)


@dataclasses.dataclass(frozen=True)
class Limits:
    timeout: float = 60.0
    max_output: int = 32 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class Tools:
    helm: str = "helm"
    kustomize: str = "kustomize"


@dataclasses.dataclass(frozen=True)
class Rendered:
    manifests: tuple[tuple[str, str], ...]  # (source, yaml)


def inside(root: pathlib.Path, rel: str, what: str) -> pathlib.Path:
    """`root/rel`, resolved, or a RenderError when it leaves root."""
    path = (root / rel).resolve()
    if path != root and root not in path.parents:
        raise errors.RenderError(f"{what} {rel!r} resolves outside the repository; refused")
    return path


def detect(app_dir: pathlib.Path) -> str:
    if any((app_dir / k).is_file() for k in KUSTOMIZATION_FILES):
        return "kustomize"
    if (app_dir / "Chart.yaml").is_file():
        return "helm"
    return "yaml"


def _refused_links_under(refused: tuple[str, ...], rel: str) -> list[str]:
    prefix = f"{rel.strip('/')}/" if rel.strip("/") else ""
    return [link for link in refused if link.startswith(prefix)]


def render(
    *,
    checkout: pathlib.Path,
    refused_links: tuple[str, ...],
    app: config.App,
    target: config.Target | None,
    tools: Tools,
    limits: Limits = Limits(),
) -> Rendered:
    root = checkout.resolve()
    app_dir = inside(root, app.path, "app path")
    if not app_dir.is_dir():
        raise errors.RenderError(f"path {app.path!r} does not exist at this revision")
    bad_links = _refused_links_under(refused_links, app.path)
    if bad_links:
        raise errors.RenderError(
            f"symlink {bad_links[0]!r} points outside the repository; refused (replace it with "
            "the file itself)"
        )
    kind = detect(app_dir)
    if kind == "kustomize" or (target and target.kustomize_dir):
        build_dir = app_dir
        if target and target.kustomize_dir:
            build_dir = inside(root, os.path.join(app.path, target.kustomize_dir), "kustomize.dir")
            if not build_dir.is_dir():
                raise errors.RenderError(f"kustomize.dir {target.kustomize_dir!r} does not exist")
        check_kustomize_refs(root, build_dir, refused_links)
        restrictor = ["--load-restrictor", "LoadRestrictionsRootOnly"]
        args = [tools.kustomize, "build", *restrictor, str(build_dir)]
        out = _run(args, "kustomize build", limits, checkout=root)
        return Rendered((("kustomize", out),))
    if kind == "helm":
        return Rendered((("helm", _helm(root, app_dir, app, target, tools, limits)),))
    return Rendered(tuple(_plain(root, app_dir, target)))


def _helm(
    root: pathlib.Path,
    chart: pathlib.Path,
    app: config.App,
    target: config.Target | None,
    tools: Tools,
    limits: Limits,
) -> str:
    args = [tools.helm, "template", app.name, str(chart), "--include-crds"]
    if app.namespace:
        args += ["--namespace", app.namespace]
    with tempfile.TemporaryDirectory(prefix="fleetops-helm-") as tmp:
        if target:
            for f in target.helm.values_files:
                path = inside(root, os.path.join(app.path, f), "helm.valuesFiles entry")
                if not path.is_file():
                    raise errors.RenderError(f"helm.valuesFiles entry {f!r} does not exist")
                args += ["--values", str(path)]
            if target.helm.values:
                inline = pathlib.Path(tmp) / "values.json"
                inline.write_text(json.dumps(target.helm.values))
                args += ["--values", str(inline)]
        return _run(args, "helm template", limits, home=pathlib.Path(tmp), checkout=root)


def _plain(
    root: pathlib.Path, app_dir: pathlib.Path, target: config.Target | None
) -> list[tuple[str, str]]:
    files: dict[str, str] = {}
    for path in sorted(app_dir.rglob("*")):
        rel = path.relative_to(app_dir).as_posix()
        if rel.split("/")[0] == "overlays" or any(p.startswith(".") for p in rel.split("/")):
            continue
        if path.is_file() and path.suffix in MANIFEST_SUFFIXES and path.name not in NOT_MANIFESTS:
            files[rel] = path.read_text()
    patches: list[tuple[str, str]] = []
    for overlay in target.yaml_overlays if target else ():
        app_rel = app_dir.relative_to(root).as_posix()
        odir = inside(root, os.path.join(app_rel, "overlays", overlay), "yaml.overlays entry")
        if not odir.is_dir():
            raise errors.RenderError(f"yaml overlay {overlay!r}: overlays/{overlay} does not exist")
        for path in sorted(odir.rglob("*")):
            if not path.is_file() or path.suffix not in MANIFEST_SUFFIXES:
                continue
            rel = path.relative_to(odir).as_posix()
            if rel.endswith(PATCH_SUFFIXES):
                patches.append((f"overlays/{overlay}/{rel}", path.read_text()))
            elif path.read_text().strip():
                files[rel] = path.read_text()  # replaces the base file of the same name
            else:
                files.pop(rel, None)  # an empty overlay file removes the base file
    files = {rel: text for rel, text in files.items() if _looks_like_manifests(text)}
    if patches:
        files = _apply_patches(files, patches)
    return sorted(files.items())


def _looks_like_manifests(text: str) -> bool:
    """Helm values and other config files are not applied: a file qualifies when any of its
    documents has a kind. Files that do not parse pass through, so the agent reports them."""
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError:
        return True
    return any(isinstance(d, dict) and "kind" in d for d in docs)


def _apply_patches(files: dict[str, str], patches: list[tuple[str, str]]) -> dict[str, str]:
    parsed = {
        rel: [d for d in yaml.safe_load_all(text) if d is not None] for rel, text in files.items()
    }
    for source, text in patches:
        try:
            docs = [d for d in yaml.safe_load_all(text) if isinstance(d, dict)]
        except yaml.YAMLError as e:
            raise errors.RenderError(
                f"{source}: invalid YAML: {getattr(e, 'problem', e)}"
            ) from None
        for patch in docs:
            kind = patch.get("kind")
            name = (patch.get("metadata") or {}).get("name")
            hits = [
                (rel, i)
                for rel, objs in parsed.items()
                for i, obj in enumerate(objs)
                if isinstance(obj, dict)
                and obj.get("kind") == kind
                and (obj.get("metadata") or {}).get("name") == name
            ]
            if not hits:
                raise errors.RenderError(
                    f"{source}: patch for {kind} {name} matches no object in the base"
                )
            for rel, i in hits:
                parsed[rel][i] = merge(parsed[rel][i], patch)
    return {rel: yaml.safe_dump_all(objs, sort_keys=False) for rel, objs in parsed.items()}


def merge(base: Any, patch: Any) -> Any:
    """JSON merge patch (RFC 7386): maps merge, null deletes, anything else replaces."""
    if not isinstance(patch, Mapping):
        return patch
    out = dict(base) if isinstance(base, Mapping) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge(out.get(k), v)
    return out


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


def check_kustomize_refs(
    root: pathlib.Path, start: pathlib.Path, refused: tuple[str, ...]
) -> list[pathlib.Path]:
    """Every local path the kustomization tree refers to, checked to stay in the repository.
    Remote references (URLs, git) are refused: vendor them into the repo."""
    seen: set[pathlib.Path] = set()
    out: list[pathlib.Path] = []
    todo = [start]
    while todo:
        d = todo.pop()
        if d in seen:
            continue
        seen.add(d)
        out.append(d)
        kfile = next((d / k for k in KUSTOMIZATION_FILES if (d / k).is_file()), None)
        if kfile is None:
            continue
        try:
            doc = yaml.safe_load(kfile.read_text()) or {}
        except yaml.YAMLError as e:
            raise errors.RenderError(
                f"{kfile.relative_to(root)}: invalid YAML: {getattr(e, 'problem', e)}"
            ) from None
        refs: list[str] = []
        for key in _PATH_LISTS:
            refs += [r for r in doc.get(key) or [] if isinstance(r, str)]
        for p in doc.get("patches") or []:
            if isinstance(p, dict) and isinstance(p.get("path"), str):
                refs.append(p["path"])
        for gen in (doc.get("configMapGenerator") or []) + (doc.get("secretGenerator") or []):
            for f in (
                (gen.get("files") or [])
                + (gen.get("envs") or [])
                + ([gen["env"]] if gen.get("env") else [])
            ):
                refs.append(str(f).split("=", 1)[-1])
        if doc.get("helmCharts") or doc.get("helmChartInflationGenerator"):
            raise errors.RenderError(
                f"{kfile.relative_to(root)}: helmCharts needs network; use a Helm app instead"
            )
        for ref in refs:
            if "://" in ref or ref.startswith(("git@", "github.com/", "gitlab.com/")):
                raise errors.RenderError(
                    f"{kfile.relative_to(root)}: remote reference {ref!r} is not allowed (no "
                    "network while rendering); vendor it into the repository"
                )
            rel = os.path.relpath((d / ref), root)
            target = inside(root, rel, f"{kfile.relative_to(root)} reference")
            link = _refused_links_under(refused, rel)
            if link or rel in refused:
                raise errors.RenderError(
                    f"symlink {(link or [rel])[0]!r} points outside the repository; refused"
                )
            if target.is_dir():
                todo.append(target)
    return out


def _run(
    args: list[str],
    what: str,
    limits: Limits,
    home: pathlib.Path | None = None,
    checkout: pathlib.Path | None = None,
) -> str:
    with tempfile.TemporaryDirectory(prefix="fleetops-render-") as scratch:
        base = pathlib.Path(str(home or scratch))
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(base),
            "HELM_CACHE_HOME": str(base / "cache"),
            "HELM_CONFIG_HOME": str(base / "config"),
            "HELM_DATA_HOME": str(base / "data"),
            # no network: any attempt goes to a closed local port
            "HTTP_PROXY": "http://127.0.0.1:9",
            "HTTPS_PROXY": "http://127.0.0.1:9",
            "NO_PROXY": "",
            "GIT_ALLOW_PROTOCOL": "file",
        }
        try:
            proc = subprocess.run(
                args, capture_output=True, env=env, timeout=limits.timeout, check=False
            )
        except subprocess.TimeoutExpired:
            raise errors.RenderError(
                f"{what} took longer than {limits.timeout:.0f} s; stopped"
            ) from None
        except FileNotFoundError:
            raise errors.RenderError(f"{what}: {args[0]} is not installed on the hub") from None
    if len(proc.stdout) > limits.max_output:
        raise errors.RenderError(
            f"{what} output is {len(proc.stdout)} bytes, over the {limits.max_output} limit"
        )
    if proc.returncode != 0:
        message = proc.stderr.decode(errors="replace").strip().replace(str(base), "")
        if checkout is not None:  # paths relative to the repository, not the hub's disk
            message = message.replace(f"{checkout}/", "").replace(str(checkout), ".")
        raise errors.RenderError(f"{what} failed: {message[-2000:]}")
    return proc.stdout.decode(errors="replace")


async def arender(**kw: Any) -> Rendered:
    return await asyncio.to_thread(lambda: render(**kw))
