"""Rendering a Helm chart from the repository with `helm template`, confined.

Helm renders a copy of the chart that holds only regular files (links inside the repository
dereferenced, any other refused), so `.Files.Get` and `.Files.Glob` cannot follow a link out;
values files are copied in the same way, and inline values are written as JSON. The program
itself runs through hub.sandbox. A chart from a Helm repository or OCI registry, and the
dependencies a chart lacks, were fetched before (hub.charts): here they are only unpacked and
copied. Never reads a file outside the repository, never fetches anything (no network).
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import tempfile

from fleetops.hub import chartarchive, config, errors, sandbox
from fleetops.hub.confined import Source


def render(
    src: Source,
    *,
    chart: pathlib.Path | None,
    app: config.App,
    target: config.Target | None,
    tools: sandbox.Tools,
    archive: pathlib.Path | None = None,
    dependencies: tuple[pathlib.Path, ...] = (),
) -> str:
    """`helm template` of the chart at `chart` (resolved, inside the repository), or of the
    chart `archive` the fetch stage pulled (hub.charts), with the chart `dependencies` it
    fetched placed in its charts/, and the app's and the target's values; the manifests as
    one YAML stream."""
    with tempfile.TemporaryDirectory(prefix="fleetops-helm-") as tmp:
        scratch = pathlib.Path(tmp)
        shown: dict[pathlib.Path, str] = {}
        if archive is not None:
            unpacked = scratch / "remote"
            unpacked.mkdir(mode=0o700)
            copy = chartarchive.extract(archive, dest=unpacked, max_bytes=src.limits.max_chart)
            shown[copy] = f"(chart {app.helm.chart})"
        elif chart is not None:
            copy = scratch / "chart"
            shown[copy] = src.rel(chart)
            copy_chart(src, chart=chart, dest=copy)
            for name in ("Chart.yaml", "values.yaml"):
                if (copy / name).is_file():
                    src.bounded(chart / name, (copy / name).read_text(errors="replace"))
        else:
            raise errors.RenderError("helm: no chart to render")
        if dependencies:
            (copy / "charts").mkdir(mode=0o700, exist_ok=True)
            for dep in dependencies:
                shutil.copyfile(dep, copy / "charts" / dep.name)
        release = app.helm.release_name or app.name
        args = [tools.helm, "template", release, str(copy), "--include-crds"]
        if app.namespace:
            args += ["--namespace", app.namespace]
        files = [*app.helm.values_files, *(target.helm.values_files if target else ())]
        for i, f in enumerate(files):
            path = src.inside(os.path.join(app.path, f), what="helm.valuesFiles entry")
            if not path.is_file():
                raise errors.RenderError(f"helm.valuesFiles entry {f!r} does not exist")
            text = src.read_text(path)
            src.bounded(path, text)
            values = scratch / f"values-{i}.yaml"
            values.write_text(text)
            shown[values] = src.rel(path)
            args += ["--values", str(values)]
        inline = [("helm.values of the app", app.helm.values)]
        if target:
            inline.append((f"helm.values of target {target.name}", target.helm.values))
        for i, (what, given) in enumerate(inline):
            if given:
                path = scratch / f"inline-{i}.json"
                path.write_text(json.dumps(given))
                shown[path] = f"({what})"
                args += ["--values", str(path)]
        return sandbox.run(
            args, what="helm template", limits=src.limits, scratch=scratch, shown=shown
        )


def copy_chart(src: Source, *, chart: pathlib.Path, dest: pathlib.Path) -> None:
    """Copy a chart holding regular files only: a symlink is replaced by what it points to
    when that is inside the repository, refused otherwise; a link back into its own
    directories is a loop and refused; size and entry count are capped. Every directory
    and file copied is recorded as an input of the render."""
    limits = src.limits
    spent = [0, 0]  # bytes, entries

    def walk(lexical: pathlib.Path, *, out: pathlib.Path, parents: frozenset[str]) -> None:
        out.mkdir(mode=0o700)
        for name in sorted(os.listdir(lexical)):
            path = lexical / name
            real = src.checked(path, "symlink" if path.is_symlink() else "")
            spent[1] += 1
            if spent[1] > limits.max_chart_entries:
                raise errors.RenderError(
                    f"{src.rel(chart)}: the chart has over {limits.max_chart_entries} files "
                    "and directories (counting what its symlinks stand for); refused"
                )
            if real.is_dir():
                if str(real) in parents:
                    raise errors.RenderError(
                        f"symlink {src.rel(path)!r} leads back into a directory that holds "
                        "it (a loop); refused"
                    )
                src.depends_on(real)
                walk(path, out=out / name, parents=parents | {str(real)})
            elif real.is_file():
                data = src.read_bytes(path)
                spent[0] += len(data)
                if spent[0] > limits.max_chart:
                    raise errors.RenderError(
                        f"{src.rel(chart)}: the chart's files are over {limits.max_chart} "
                        "bytes (counting what its symlinks stand for); refused"
                    )
                (out / name).write_bytes(data)
            # a dangling link stands for nothing: helm would not find it either

    src.depends_on(chart)
    walk(chart, out=dest, parents=frozenset({str(chart)}))
