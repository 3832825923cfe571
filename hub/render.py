"""Rendering an app for one target, like Argo CD's repo-server: plain YAML, Kustomize, Helm.

The source kind is detected from the app's directory: `kustomization.yaml` means Kustomize,
`Chart.yaml` means Helm, anything else is plain YAML (a directory, recursive). Per-target
overrides: Helm values and values files, a Kustomize overlay dir, Fleet-style YAML overlays.

Rendering is confined to the checkout, because a repository committer writes everything in
it and must never read the hub's files:
- Every file this module reads goes through `read_bytes`: its real path (symlinks resolved)
  must be inside the checkout, it must be a regular file and under a size cap; otherwise a
  RenderError names the repo-relative path. Links the checkout refused (repo.py) and links
  that resolve outside are render errors of the apps that hold them.
- Helm renders a copy of the chart that holds only regular files (links inside the repo
  dereferenced, any other refused), so `.Files.Get` and `.Files.Glob` cannot follow a link
  out; values files are copied in the same way.
- Kustomize runs with the root-only load restrictor, every local reference checked to stay
  in the repository, remote references refused.
- YAML is read with the bounded loader (proto.yamlsafe): an alias bomb is a RenderError.
- helm and kustomize run in a scratch directory with a scrubbed environment, no network, a
  time limit, a memory limit and an output size limit, and what they print is shown with
  repo-relative paths only: never the checkout's, the scratch directory's or any other path
  on the hub's disk.
A render error affects only that app and target.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import json
import os
import pathlib
import re
import resource
import selectors
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from typing import Any

import yaml

from fleetops.hub import config, errors, repo
from fleetops.proto import yamlsafe

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
NOT_MANIFESTS = {"fleet.yaml", "Chart.yaml", "Chart.lock", *KUSTOMIZATION_FILES}
MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
PATCH_SUFFIXES = tuple(f"_patch{s}" for s in MANIFEST_SUFFIXES)


@dataclasses.dataclass(frozen=True)
class Limits:
    timeout: float = 60.0
    max_output: int = 32 * 1024 * 1024
    max_file: int = 16 * 1024 * 1024  # any one file read from the repository
    max_chart: int = 64 * 1024 * 1024  # all the files of one Helm chart copy
    max_chart_entries: int = 20_000  # files and directories of one Helm chart copy
    max_memory: int = 2 * 1024 * 1024 * 1024  # data segment of a helm or kustomize process


@dataclasses.dataclass(frozen=True)
class Tools:
    helm: str = "helm"
    kustomize: str = "kustomize"


@dataclasses.dataclass(frozen=True)
class Rendered:
    manifests: tuple[tuple[str, str], ...]  # (source, yaml)


def _rel(root: pathlib.Path, path: pathlib.Path | str) -> str:
    """A path as the user knows it: relative to the repository (lexically, links unresolved)."""
    rel = os.path.relpath(path, root)
    return "." if rel == "." else rel.replace(os.sep, "/")


def _is_inside(root: pathlib.Path, real: str) -> bool:
    return real == str(root) or real.startswith(str(root).rstrip("/") + "/")


def checked(root: pathlib.Path, path: pathlib.Path, what: str = "") -> pathlib.Path:
    """The real location of `path` (a path under the resolved checkout `root`), or a
    RenderError naming its repo path when it resolves outside the repository."""
    real = os.path.realpath(path)
    if not _is_inside(root, real):
        raise errors.RenderError(
            f"{what + ' ' if what else ''}{_rel(root, path)!r} resolves outside the repository; "
            "refused (replace the symlink with the file itself)"
        )
    return pathlib.Path(real)


def inside(root: pathlib.Path, rel: str, what: str) -> pathlib.Path:
    """`root/rel`, resolved, or a RenderError when it leaves root."""
    real = os.path.realpath(root / rel)
    if not _is_inside(root, real):
        raise errors.RenderError(f"{what} {rel!r} resolves outside the repository; refused")
    return pathlib.Path(real)


def read_bytes(root: pathlib.Path, path: pathlib.Path, limits: Limits) -> bytes:
    """The one way this module reads a repository file: checked inside `root`, a regular
    file, at most `limits.max_file` bytes."""
    real = checked(root, path)
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as e:
        raise errors.RenderError(f"{_rel(root, path)}: cannot read: {e.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise errors.RenderError(f"{_rel(root, path)}: not a regular file; refused")
        data = f.read(limits.max_file + 1)
    if len(data) > limits.max_file:
        raise errors.RenderError(
            f"{_rel(root, path)}: over the {limits.max_file}-byte limit for one file; split it"
        )
    return data


def read_text(root: pathlib.Path, path: pathlib.Path, limits: Limits) -> str:
    try:
        return read_bytes(root, path, limits).decode()
    except UnicodeDecodeError:
        raise errors.RenderError(f"{_rel(root, path)}: not UTF-8 text") from None


def load_yaml(root: pathlib.Path, path: pathlib.Path, text: str) -> list[Any]:
    """Every document of a repository file, through the bounded loader; a syntax error
    raises yaml.YAMLError, an alias bomb or the like a RenderError naming the file."""
    try:
        return yamlsafe.load_all(text, source=_rel(root, path))
    except yamlsafe.YAMLLimitError as e:
        raise errors.RenderError(str(e)) from None


def refuse_escaping_links(root: pathlib.Path, top: pathlib.Path) -> None:
    """A RenderError for the first symlink under `top` that resolves outside the repository
    (repo.py already removed such links from checkouts; this holds for any directory) or
    that loops. A dangling link is left alone: it stands for nothing."""
    for dirpath, dirnames, filenames in os.walk(top):
        for name in sorted(dirnames + filenames):
            path = pathlib.Path(dirpath, name)
            if path.is_symlink():
                checked(root, path, "symlink")
                try:
                    path.stat()
                except OSError as e:
                    if e.errno == errno.ELOOP:
                        raise errors.RenderError(
                            f"symlink {_rel(root, path)!r} is a loop (or a chain of links too "
                            "long to follow); refused"
                        ) from None


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
    root = pathlib.Path(os.path.realpath(checkout))
    app_dir = inside(root, app.path, "app path")
    if not app_dir.is_dir():
        raise errors.RenderError(f"path {app.path!r} does not exist at this revision")
    bad_links = _refused_links_under(refused_links, app.path)
    if bad_links:
        raise errors.RenderError(
            f"{bad_links[0]!r} was refused at checkout: a symlink that points outside the "
            f"repository (replace it with the file itself) or a file over "
            f"{repo.MAX_EXPORT_BLOB // 2**20} MiB"
        )
    refuse_escaping_links(root, app_dir)
    kind = detect(app_dir)
    if kind == "kustomize" or (target and target.kustomize_dir):
        build_dir = app_dir
        if target and target.kustomize_dir:
            build_dir = inside(root, os.path.join(app.path, target.kustomize_dir), "kustomize.dir")
            if not build_dir.is_dir():
                raise errors.RenderError(f"kustomize.dir {target.kustomize_dir!r} does not exist")
        for d in check_kustomize_refs(root, build_dir, refused_links, limits=limits):
            refuse_escaping_links(root, d)
        restrictor = ["--load-restrictor", "LoadRestrictionsRootOnly"]
        args = [tools.kustomize, "build", *restrictor, str(build_dir)]
        with tempfile.TemporaryDirectory(prefix="fleetops-render-") as scratch:
            out = _run(args, "kustomize build", limits, pathlib.Path(scratch), {root: "."})
        return Rendered((("kustomize", out),))
    if kind == "helm":
        return Rendered((("helm", _helm(root, app_dir, app, target, tools, limits)),))
    return Rendered(tuple(_plain(root, app_dir, target, limits)))


def _helm(
    root: pathlib.Path,
    chart: pathlib.Path,
    app: config.App,
    target: config.Target | None,
    tools: Tools,
    limits: Limits,
) -> str:
    with tempfile.TemporaryDirectory(prefix="fleetops-helm-") as tmp:
        scratch = pathlib.Path(tmp)
        copy = scratch / "chart"
        shown = {copy: _rel(root, chart)}
        copy_chart(root, chart, copy, limits)
        for name in ("Chart.yaml", "values.yaml"):
            if (copy / name).is_file():
                _bounded(root, chart / name, (copy / name).read_text(errors="replace"))
        args = [tools.helm, "template", app.name, str(copy), "--include-crds"]
        if app.namespace:
            args += ["--namespace", app.namespace]
        for i, f in enumerate(target.helm.values_files if target else ()):
            path = inside(root, os.path.join(app.path, f), "helm.valuesFiles entry")
            if not path.is_file():
                raise errors.RenderError(f"helm.valuesFiles entry {f!r} does not exist")
            text = read_text(root, path, limits)
            _bounded(root, path, text)
            values = scratch / f"values-{i}.yaml"
            values.write_text(text)
            shown[values] = _rel(root, path)
            args += ["--values", str(values)]
        if target and target.helm.values:
            inline = scratch / "values.json"
            inline.write_text(json.dumps(target.helm.values))
            shown[inline] = f"(helm.values of target {target.name})"
            args += ["--values", str(inline)]
        return _run(args, "helm template", limits, scratch, shown)


def _bounded(root: pathlib.Path, path: pathlib.Path, text: str) -> None:
    """Refuse an alias bomb in a file another program parses; its syntax is that program's."""
    try:
        load_yaml(root, path, text)
    except yaml.YAMLError:
        pass


def copy_chart(root: pathlib.Path, src: pathlib.Path, dest: pathlib.Path, limits: Limits) -> None:
    """Copy a chart holding regular files only: a symlink is replaced by what it points to
    when that is inside the repository, refused otherwise; a link back into its own
    directories is a loop and refused; size and entry count are capped."""
    spent = [0, 0]  # bytes, entries

    def walk(lexical: pathlib.Path, out: pathlib.Path, parents: frozenset[str]) -> None:
        out.mkdir(mode=0o700)
        for name in sorted(os.listdir(lexical)):
            path = lexical / name
            real = checked(root, path, "symlink" if path.is_symlink() else "")
            spent[1] += 1
            if spent[1] > limits.max_chart_entries:
                raise errors.RenderError(
                    f"{_rel(root, src)}: the chart has over {limits.max_chart_entries} files "
                    "and directories (counting what its symlinks stand for); refused"
                )
            if real.is_dir():
                if str(real) in parents:
                    raise errors.RenderError(
                        f"symlink {_rel(root, path)!r} leads back into a directory that holds "
                        "it (a loop); refused"
                    )
                walk(path, out / name, parents | {str(real)})
            elif real.is_file():
                data = read_bytes(root, path, limits)
                spent[0] += len(data)
                if spent[0] > limits.max_chart:
                    raise errors.RenderError(
                        f"{_rel(root, src)}: the chart's files are over {limits.max_chart} "
                        "bytes (counting what its symlinks stand for); refused"
                    )
                (out / name).write_bytes(data)
            # a dangling link stands for nothing: helm would not find it either

    walk(src, dest, frozenset({str(src)}))


def _plain(
    root: pathlib.Path, app_dir: pathlib.Path, target: config.Target | None, limits: Limits
) -> list[tuple[str, str]]:
    files: dict[str, str] = {}
    origin: dict[str, pathlib.Path] = {}  # where each file's text came from
    for path in sorted(app_dir.rglob("*")):  # rglob lists links to directories, never enters
        rel = path.relative_to(app_dir).as_posix()
        if rel.split("/")[0] == "overlays" or any(p.startswith(".") for p in rel.split("/")):
            continue
        if path.is_file() and path.suffix in MANIFEST_SUFFIXES and path.name not in NOT_MANIFESTS:
            files[rel], origin[rel] = read_text(root, path, limits), path
    patches: list[tuple[str, str]] = []
    app_rel = _rel(root, app_dir)
    for overlay in target.yaml_overlays if target else ():
        odir = inside(root, os.path.join(app_rel, "overlays", overlay), "yaml.overlays entry")
        if not odir.is_dir():
            raise errors.RenderError(f"yaml overlay {overlay!r}: overlays/{overlay} does not exist")
        refuse_escaping_links(root, odir)
        for path in sorted(odir.rglob("*")):
            if not path.is_file() or path.suffix not in MANIFEST_SUFFIXES:
                continue
            rel = path.relative_to(odir).as_posix()
            text = read_text(root, path, limits)
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
            parsed[rel] = load_yaml(root, origin[rel], text)
        except yaml.YAMLError:
            continue  # files that do not parse pass through, so the agent reports them
        # Helm values and other config files are not applied: a file qualifies when any of
        # its documents has a kind.
        if not any(isinstance(d, dict) and "kind" in d for d in parsed[rel]):
            del files[rel]
    if patches:
        files = _apply_patches(root, app_dir, {rel: origin[rel] for rel in files}, parsed, patches)
    return sorted(files.items())


def _apply_patches(
    root: pathlib.Path,
    app_dir: pathlib.Path,
    files: dict[str, pathlib.Path],
    parsed: dict[str, list[Any]],
    patches: list[tuple[str, str]],
) -> dict[str, str]:
    broken = sorted(set(files) - set(parsed))
    if broken:
        raise errors.RenderError(
            f"{_rel(root, files[broken[0]])}: invalid YAML; yaml.overlays patches cannot apply"
        )
    objs = {rel: [d for d in parsed[rel] if d is not None] for rel in files}
    for source, text in patches:
        try:
            docs = [d for d in load_yaml(root, app_dir / source, text) if isinstance(d, dict)]
        except yaml.YAMLError as e:
            raise errors.RenderError(
                f"{_rel(root, app_dir / source)}: invalid YAML: {yamlsafe.describe(e)}"
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
                objs[rel][i] = merge(objs[rel][i], patch)
    return {rel: yaml.safe_dump_all(docs_of, sort_keys=False) for rel, docs_of in objs.items()}


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
    root: pathlib.Path,
    start: pathlib.Path,
    refused: tuple[str, ...],
    *,
    limits: Limits = Limits(),
) -> list[pathlib.Path]:
    """Every local path the kustomization tree refers to, checked to stay in the repository.
    Remote references (URLs, git) are refused: vendor them into the repo. Referenced YAML
    files are read through the bounded loader, so an alias bomb is refused here, by name."""
    root = pathlib.Path(os.path.realpath(root))
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
        where = _rel(root, kfile)
        try:
            docs = load_yaml(root, kfile, read_text(root, kfile, limits))
        except yaml.YAMLError as e:
            raise errors.RenderError(f"{where}: invalid YAML: {yamlsafe.describe(e)}") from None
        doc = docs[0] if len(docs) == 1 and isinstance(docs[0], dict) else {}
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
        if doc.get("helmCharts") or doc.get("helmChartInflationGenerator"):
            raise errors.RenderError(f"{where}: helmCharts needs network; use a Helm app instead")
        for ref in refs:
            if "://" in ref or ref.startswith(("git@", "github.com/", "gitlab.com/")):
                raise errors.RenderError(
                    f"{where}: remote reference {ref!r} is not allowed (no network while "
                    "rendering); vendor it into the repository"
                )
            rel = os.path.relpath((d / ref), root)
            target = inside(root, rel, f"{where} reference")
            link = _refused_links_under(refused, rel)
            if link or rel in refused:
                raise errors.RenderError(
                    f"{(link or [rel])[0]!r} was refused at checkout: a symlink that points "
                    "outside the repository, or a file too large"
                )
            if target.is_dir():
                todo.append(target)
            elif target.is_file() and target.suffix in MANIFEST_SUFFIXES:
                _bounded(root, d / ref, read_text(root, d / ref, limits))
    return out


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _scrubber(shown: Mapping[pathlib.Path, str], scratch: pathlib.Path) -> Callable[[str], str]:
    """A function that rewrites a renderer's message so that it names no path of the hub:
    known paths become what the user knows them as, anything else under the hub's temporary,
    working or home directories becomes `<hub>`."""
    pairs: list[tuple[str, str]] = []
    for path, name in [*shown.items(), (scratch, "<scratch>")]:
        for form in {str(path), os.path.realpath(path)}:
            pairs += [(form + "/", "" if name == "." else name + "/"), (form, name)]
    pairs.sort(key=lambda p: -len(p[0]))
    hub_dirs = {tempfile.gettempdir(), os.getcwd(), os.path.expanduser("~")}
    hub_dirs |= {os.path.realpath(d) for d in hub_dirs}
    others = sorted((d for d in hub_dirs if len(d) > 1), key=len, reverse=True)
    tail = r"(?=[/\s:'\"]|$)(?:/[^\s:'\"]*)?"  # the directory and anything under it
    pattern = re.compile("|".join(re.escape(d) + tail for d in others) or "$^")

    def scrub(message: str) -> str:
        for path, name in pairs:
            message = message.replace(path, name)
        return pattern.sub("<hub>", message)

    return scrub


def _run(
    args: list[str],
    what: str,
    limits: Limits,
    scratch: pathlib.Path,
    shown: Mapping[pathlib.Path, str],
) -> str:
    """Run a renderer in `scratch` (its cwd and HOME) with a scrubbed environment, no network,
    the time and output limits; its stdout, or a RenderError with its scrubbed stderr."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(scratch),
        "HELM_CACHE_HOME": str(scratch / "cache"),
        "HELM_CONFIG_HOME": str(scratch / "config"),
        "HELM_DATA_HOME": str(scratch / "data"),
        # no network: any attempt goes to a closed local port
        "HTTP_PROXY": "http://127.0.0.1:9",
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "NO_PROXY": "",
        "GIT_ALLOW_PROTOCOL": "file",
        "GOMEMLIMIT": str(limits.max_memory * 4 // 5),  # Go collects harder before the cap
    }
    scrub = _scrubber(shown, scratch)
    try:
        proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=scratch,
            start_new_session=True,  # its own process group, stopped as a whole
        )
    except OSError:
        raise errors.RenderError(
            f"{what}: {os.path.basename(args[0])} is not installed on the hub"
        ) from None
    with proc:  # closes the pipes and reaps it
        try:
            # The memory cap is set from outside once it runs: preexec_fn is not safe in a
            # threaded process. A YAML bomb in a file only the renderer reads dies in here.
            cap = (limits.max_memory, limits.max_memory)
            with contextlib.suppress(ProcessLookupError):
                resource.prlimit(proc.pid, resource.RLIMIT_DATA, cap)
            out, err = _collect(proc, what, limits)
        finally:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
    if proc.returncode != 0:
        message = scrub(err.decode(errors="replace").strip())
        first = message.split("\n", 1)[0]
        if proc.returncode < 0 or (first.startswith("fatal error:") and "memory" in first):
            how = (
                f"was killed by {signal.Signals(-proc.returncode).name}, likely at"
                if proc.returncode < 0
                else "ran out of"
            )
            raise errors.RenderError(
                f"{what} {how} its {limits.max_memory}-byte memory limit; stopped (a YAML "
                "alias bomb or an oversized input in a file it reads?)"
            )
        raise errors.RenderError(f"{what} failed: {message[-2000:]}")
    return out.decode(errors="replace")


def _collect(proc: subprocess.Popen[bytes], what: str, limits: Limits) -> tuple[bytes, bytes]:
    """stdout (at most the output limit) and the tail of stderr, within the time limit."""
    assert proc.stdout is not None and proc.stderr is not None
    deadline = time.monotonic() + limits.timeout
    out, err = bytearray(), bytearray()
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ, out)
        sel.register(proc.stderr, selectors.EVENT_READ, err)
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                raise errors.RenderError(f"{what} took longer than {limits.timeout:.0f} s; stopped")
            for key, _ in sel.select(left):
                chunk = os.read(key.fd, 1 << 16)
                if not chunk:
                    sel.unregister(key.fileobj)
                    continue
                buf: bytearray = key.data
                buf += chunk
                if buf is err and len(err) > 1 << 16:
                    del err[: -(1 << 15)]  # only the tail is ever shown
                if len(out) > limits.max_output:
                    raise errors.RenderError(
                        f"{what} output is over the {limits.max_output}-byte limit; stopped"
                    )
    try:
        proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
    except subprocess.TimeoutExpired:
        raise errors.RenderError(
            f"{what} took longer than {limits.timeout:.0f} s; stopped"
        ) from None
    return bytes(out), bytes(err)


async def arender(**kw: Any) -> Rendered:
    return await asyncio.to_thread(lambda: render(**kw))
