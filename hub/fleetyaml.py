"""Rancher Fleet's `fleet.yaml`, read so that a Fleet repository works as it is.

An app in hub.yaml without `targets` whose directory holds a fleet.yaml takes from it the
default namespace (`defaultNamespace` or `namespace`) and one target per
`targetCustomizations` entry (clusterSelector, clusterGroup, clusterName, helm.values,
helm.valuesFiles, kustomize.dir, yaml.overlays), with the file's top-level `helm` and
`kustomize` settings as the defaults every target starts from, and a last catch-all target
so that clusters no customization matches still get the app, as in Fleet. The top-level
`yaml.overlays` come first in every target's overlays, the catch-all's included, and a
customization's own follow (Fleet appends them).

`diff.comparePatches`, of the top level and of each customization, become the ignore rules
of each target (hub.ignorerules reads them).

`helm.repo`, `helm.chart`, `helm.version` and `helm.releaseName` say where the chart comes from
(hub.chartspec; the repo URL must match a helmRepositories entry, checked when it is fetched).
Pure.

The file comes from a repository committer: it is read with the bounded loader
(proto.yamlsafe), so an alias bomb is a RenderError naming the file and line, never a stalled
hub.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import yaml

from fleetops.hub import chartspec, config, configfields, errors, ignorerules
from fleetops.proto import yamlsafe

_FILE = "fleet.yaml"
# A fleet.yaml is a page of settings; the event loop may call `apply`, so its parse is kept
# small (a megabyte of YAML parses in tens of milliseconds).
LIMITS = yamlsafe.Limits(max_chars=1024 * 1024)


def _merge(base: dict[str, Any], *, over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = (
            _merge(out[k], over=v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        )
    return out


def apply(app: config.App, text: str) -> config.App:
    """The app as fleet.yaml describes it; RenderError naming the field when it is invalid."""
    where = f"{app.path}/{_FILE}"
    try:
        doc = yamlsafe.load(text, source=where, limits=LIMITS) or {}
    except yaml.YAMLError as e:  # an alias bomb is refused here, with its line and cap
        raise errors.RenderError(f"{where}: invalid YAML: {yamlsafe.describe(e)}") from None
    if not isinstance(doc, dict):
        raise errors.RenderError(f"{where}: expected a mapping")
    # Fleet's own keys are validated through the same reader as hub.yaml.
    reader = configfields.Reader(where)
    namespace = str(doc.get("defaultNamespace") or doc.get("namespace") or app.namespace)
    top_helm = doc.get("helm") or {}
    top_kustomize = doc.get("kustomize") or {}
    if not isinstance(top_helm, dict) or not isinstance(top_kustomize, dict):
        raise errors.RenderError(f"{where}: helm and kustomize must be mappings")
    top_overlays = _top_overlays(reader, doc.get("yaml"))
    _untemplated(top_helm, where=where, path="helm")
    targets = []
    top_rules = ignorerules.parse_fleet(doc, where=where, path="")  # diff.comparePatches
    customizations = doc.get("targetCustomizations") or []
    if not isinstance(customizations, list):
        raise errors.RenderError(f"{where}: targetCustomizations must be a list")
    for i, item in enumerate(customizations):
        if not isinstance(item, dict):
            raise errors.RenderError(f"{where}: targetCustomizations[{i}] must be a mapping")
        if item.get("doNotDeploy"):
            continue
        _untemplated(
            _merge(top_helm, over=item.get("helm") or {}),
            where=where,
            path=f"targetCustomizations[{i}].helm",
        )
        spec: dict[str, Any] = {
            "name": str(item.get("name") or f"customization-{i}"),
            "helm": _merge(top_helm, over=item.get("helm") or {}),
            "kustomize": _merge(top_kustomize, over=item.get("kustomize") or {}),
        }
        for key in ("clusterSelector", "clusterGroup", "clusterName", "yaml"):
            if key in item:
                spec[key] = item[key]
        if top_overlays:
            spec["yaml"] = _with_overlays(top_overlays, item.get("yaml"))
        spec["helm"] = {k: v for k, v in spec["helm"].items() if k in ("values", "valuesFiles")}
        spec["kustomize"] = {k: v for k, v in spec["kustomize"].items() if k == "dir"}
        if "clusterGroupSelector" in item:
            raise errors.RenderError(
                f"{where}: targetCustomizations[{i}].clusterGroupSelector is not supported; "
                "use clusterSelector or a clusterGroup from hub.yaml"
            )
        try:
            rules = ignorerules.parse_fleet(
                item, where=where, path=f"targetCustomizations[{i}].", under=top_rules
            )
            targets.append(_target(reader, spec, path=f"targetCustomizations[{i}]", rules=rules))
        except errors.ConfigError as e:
            raise errors.RenderError(str(e)) from None
    default = {"name": "default", "clusterSelector": {},
               "helm": {k: v for k, v in top_helm.items() if k in ("values", "valuesFiles")},
               "kustomize": {k: v for k, v in top_kustomize.items() if k == "dir"},
               "yaml": {"overlays": top_overlays}}  # fmt: skip
    if all(t.name != "default" for t in targets):
        try:
            targets.append(_target(reader, default, path="(defaults)", rules=top_rules))
        except errors.ConfigError as e:
            raise errors.RenderError(str(e)) from None
    chart = {k: top_helm[k] for k in ("repo", "chart", "version", "releaseName") if k in top_helm}
    if chart:
        try:
            source = chartspec.chart_fields(reader, chart, path="helm")
        except errors.ConfigError as e:
            raise errors.RenderError(str(e)) from None
        helm = dataclasses.replace(
            source, values=app.helm.values, values_files=app.helm.values_files
        )
        app = dataclasses.replace(app, helm=helm)
    return dataclasses.replace(app, namespace=namespace, targets=tuple(targets))


def _untemplated(helm: Any, *, where: str, path: str) -> None:
    """Fleet evaluates `${ }` in helm.values per cluster (.ClusterName, .ClusterLabels...);
    fleetops renders once per target for all its clusters, so such a value would reach the
    cluster as literal text: a RenderError naming it, unless `disablePreProcess` says the text
    is meant as it is."""
    if not isinstance(helm, dict) or helm.get("disablePreProcess") is True:
        return

    def walk(value: Any, at: str) -> None:
        if isinstance(value, str) and "${" in value:
            raise errors.RenderError(
                f"{where}: {at}: {value[:80]!r} uses Fleet's ${{ }} values templating, which "
                "fleetops does not evaluate (a target renders once for all its clusters); give "
                "per-cluster values in targetCustomizations, or set helm.disablePreProcess: "
                "true to pass the text as it is"
            )
        if isinstance(value, dict):
            for k, v in value.items():
                walk(k, at)
                walk(v, f"{at}.{k}")
        elif isinstance(value, list):
            for j, v in enumerate(value):
                walk(v, f"{at}[{j}]")

    walk(helm.get("values"), f"{path}.values")


def _top_overlays(reader: configfields.Reader, value: Any) -> list[str]:
    """The top-level `yaml.overlays`, validated as a customization's are."""
    try:
        m = reader.mapping(value, "yaml", ("overlays",))
        overlays = [str(o) for o in reader.items(m.get("overlays"), "yaml.overlays")]
        for j, o in enumerate(overlays):
            reader.relpath({"o": o}, "o", path=f"yaml.overlays[{j}]")
    except errors.ConfigError as e:
        raise errors.RenderError(str(e)) from None
    return overlays


def _with_overlays(top: list[str], own: Any) -> Any:
    """A customization's `yaml` with the top-level overlays first; anything but a mapping
    with a list is left for config.parse_target to report."""
    if own is None:
        return {"overlays": top}
    if isinstance(own, dict) and isinstance(own.get("overlays") or [], list):
        return {**own, "overlays": [*top, *(own.get("overlays") or [])]}
    return own


def _target(
    reader: configfields.Reader,
    spec: dict[str, Any],
    *,
    path: str,
    rules: tuple[ignorerules.IgnoreRule, ...] = (),
) -> config.Target:
    names = [spec["clusterGroup"]] if spec.get("clusterGroup") else []
    spec = {**spec, "name": _dns(spec["name"])}
    target = config.parse_target(reader, spec, path=path, groups=names)
    return dataclasses.replace(target, ignore_differences=rules)


def _dns(name: str) -> str:
    out = "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")
    return out[:63] or "target"
