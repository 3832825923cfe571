"""hub.yaml: repos, clusters, cluster groups and apps, validated on load.

Every error names the file, the field path (`apps[0].targets[1].clusterGroup`) and what is
allowed, and nothing is half-loaded: `load` returns a whole `Config` or raises. Pure apart
from reading the one file (and the Lua files its healthChecks name); never touches Git or the
store. This module holds the config's
value types and how a document becomes one; checking each field is hub.configfields'.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Mapping
from typing import Any

import yaml

from fleetops.hub import (
    chartspec,
    configfields,
    errors,
    ignorerules,
    imagespec,
    rolloutspec,
    selectors,
)
from fleetops.hub.chartspec import Chart as Chart
from fleetops.hub.chartspec import HelmRepository as HelmRepository

# re-exported: the hub's API checks names and labels by the same rules
from fleetops.hub.configfields import DNS_LABEL as DNS_LABEL
from fleetops.hub.configfields import label_problem as label_problem
from fleetops.proto import yamlsafe


@dataclasses.dataclass(frozen=True)
class Repo:
    name: str
    url: str
    branch: str = "main"
    poll_interval: float = 15.0
    token_env: str = ""  # https: the env var holding a token (never the token itself)
    ssh_key_file: str = ""
    known_hosts_file: str = ""
    webhook_secret_env: str = ""  # the env var holding the webhook secret


@dataclasses.dataclass(frozen=True)
class ClusterDef:
    name: str
    labels: Mapping[str, str]


@dataclasses.dataclass(frozen=True)
class ClusterGroup:
    name: str
    selector: selectors.Selector


@dataclasses.dataclass(frozen=True)
class Helm:
    values: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    values_files: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Target:
    name: str
    cluster_name: str = ""
    cluster_group: str = ""
    cluster_selector: selectors.Selector | None = None
    helm: Helm = dataclasses.field(default_factory=Helm)
    kustomize_dir: str = ""
    yaml_overlays: tuple[str, ...] = ()
    # fleet.yaml diff.comparePatches (top level and this customization), for this target
    ignore_differences: tuple[ignorerules.IgnoreRule, ...] = ()


@dataclasses.dataclass(frozen=True)
class Sync:
    auto: bool = True
    prune: bool = False
    self_heal: bool = False
    force_conflicts: bool = True
    allow_empty: bool = False
    max_prune_percent: int = 50  # a sync pruning more of the app's objects is held; 100: off


@dataclasses.dataclass(frozen=True)
class HealthCheck:
    """A custom health check in Argo CD's Lua format, for objects of group/kind."""

    group: str  # "" for the core group
    kind: str
    lua: str


@dataclasses.dataclass(frozen=True)
class App:
    name: str
    repo: str
    path: str
    namespace: str = ""
    sync: Sync = dataclasses.field(default_factory=Sync)
    targets: tuple[Target, ...] | None = None  # None: not given (fleet.yaml or every cluster)
    depends_on: tuple[str, ...] = ()
    # fields that are neither drift nor healed, on every target (hub.yaml ignoreDifferences)
    ignore_differences: tuple[ignorerules.IgnoreRule, ...] = ()
    # hub.yaml's top-level healthChecks: the hub puts them into every bundle of every app
    health_checks: tuple[HealthCheck, ...] = ()
    helm: Chart = dataclasses.field(default_factory=Chart)
    rollout: rolloutspec.Rollout | None = None  # None: every cluster moves at once


@dataclasses.dataclass(frozen=True)
class Retention:
    """How much history the hub keeps: events older than `events` seconds go, and so do
    the oldest beyond `events_per_app` for any app; renders and bundles nothing refers to any
    more go, except those of the newest `revisions` revisions of each repo (quick rollback)."""

    events: float = 90 * 86400.0
    events_per_app: int = 10_000
    revisions: int = 20


@dataclasses.dataclass(frozen=True)
class Config:
    file: str
    repos: tuple[Repo, ...] = ()
    clusters: tuple[ClusterDef, ...] = ()
    cluster_groups: tuple[ClusterGroup, ...] = ()
    apps: tuple[App, ...] = ()
    retention: Retention = dataclasses.field(default_factory=Retention)
    health_checks: tuple[HealthCheck, ...] = ()
    helm_repositories: tuple[HelmRepository, ...] = ()
    gates: tuple[rolloutspec.Gate, ...] = ()
    images: imagespec.Images = dataclasses.field(default_factory=imagespec.Images)

    def gate(self, name: str) -> rolloutspec.Gate | None:
        return next((g for g in self.gates if g.name == name), None)

    def repo(self, name: str) -> Repo:
        return next(r for r in self.repos if r.name == name)

    def app(self, name: str) -> App | None:
        return next((a for a in self.apps if a.name == name), None)

    def group(self, name: str) -> ClusterGroup | None:
        return next((g for g in self.cluster_groups if g.name == name), None)

    def cluster_labels(self, name: str) -> Mapping[str, str]:
        found = next((c for c in self.clusters if c.name == name), None)
        return found.labels if found else {}


def parse(text: str, *, file: str) -> Config:
    r = configfields.Reader(file)
    try:
        doc = yamlsafe.load(text, source=file)
    except yamlsafe.YAMLLimitError as e:  # an alias bomb or the like: line and cap named
        raise r.fail("", message=yamlsafe.describe(e)) from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        where = f"line {mark.line + 1}" if mark else "?"
        raise r.fail("", message=f"invalid YAML at {where}: {e.problem}") from None
    root = r.mapping(
        doc,
        "",
        (
            "repos",
            "clusters",
            "clusterGroups",
            "apps",
            "retention",
            "healthChecks",
            "helmRepositories",
            "gates",
            "imageRepositories",
            "imagePolicies",
            "imageUpdates",
        ),
    )
    gates = rolloutspec.gates(r, root.get("gates"))
    health_checks = _health_checks(r, root.get("healthChecks"), base=pathlib.Path(file).parent)
    rm = r.mapping(root.get("retention"), "retention", ("events", "eventsPerApp", "revisions"))
    retention = Retention(
        events=r.duration(rm, "events", path="retention", default=Retention.events),
        events_per_app=r.count(
            rm, "eventsPerApp", path="retention", default=Retention.events_per_app
        ),
        revisions=r.count(rm, "revisions", path="retention", default=Retention.revisions),
    )

    repos: list[Repo] = []
    for i, item in enumerate(r.items(root.get("repos"), "repos")):
        p = f"repos[{i}]"
        m = r.mapping(
            item,
            p,
            (
                "name",
                "url",
                "branch",
                "pollInterval",
                "tokenEnv",
                "sshKeyFile",
                "knownHostsFile",
                "webhookSecretEnv",
            ),
        )
        url = r.string(m, "url", path=p, required=True)
        if "@" in url.split("://", 1)[-1].split("/", 1)[0] and url.startswith(
            ("http://", "https://")
        ):
            raise r.fail(
                f"{p}.url",
                message="must not contain credentials; put the token in an env var and name it "
                "in tokenEnv",
            )
        repos.append(
            Repo(
                name=r.name(m, "name", path=p),
                url=url,
                branch=r.string(m, "branch", path=p, default="main"),
                poll_interval=r.duration(m, "pollInterval", path=p, default=15.0),
                token_env=r.string(m, "tokenEnv", path=p),
                ssh_key_file=r.string(m, "sshKeyFile", path=p),
                known_hosts_file=r.string(m, "knownHostsFile", path=p),
                webhook_secret_env=r.string(m, "webhookSecretEnv", path=p),
            )
        )
    _unique(r, path="repos", names=[x.name for x in repos])
    images = imagespec.parse(
        r,
        repositories=root.get("imageRepositories"),
        policies=root.get("imagePolicies"),
        updates=root.get("imageUpdates"),
        repos=[x.name for x in repos],
    )

    clusters = []
    for i, item in enumerate(r.items(root.get("clusters"), "clusters")):
        p = f"clusters[{i}]"
        m = r.mapping(item, p, ("name", "labels"))
        labels = r.labels(m.get("labels"), f"{p}.labels")
        clusters.append(ClusterDef(r.name(m, "name", path=p), labels))
    _unique(r, path="clusters", names=[x.name for x in clusters])

    groups = []
    for i, item in enumerate(r.items(root.get("clusterGroups"), "clusterGroups")):
        p = f"clusterGroups[{i}]"
        m = r.mapping(item, p, ("name", "selector"))
        if "selector" not in m:
            raise r.fail(
                f"{p}.selector", message="is required (a label selector; {} selects every cluster)"
            )
        groups.append(
            ClusterGroup(r.name(m, "name", path=p), r.selector(m.get("selector"), f"{p}.selector"))
        )
    _unique(r, path="clusterGroups", names=[x.name for x in groups])

    helm_repos = tuple(
        chartspec.repository(r, item, path=f"helmRepositories[{i}]")
        for i, item in enumerate(r.items(root.get("helmRepositories"), "helmRepositories"))
    )
    _unique(r, path="helmRepositories", names=[x.name for x in helm_repos])
    repo_names = [x.name for x in repos]
    group_names = [x.name for x in groups]
    apps = []
    for i, item in enumerate(r.items(root.get("apps"), "apps")):
        p = f"apps[{i}]"
        m = r.mapping(
            item,
            p,
            (
                "name",
                "repo",
                "path",
                "namespace",
                "sync",
                "targets",
                "dependsOn",
                "ignoreDifferences",
                "helm",
                "rollout",
            ),
        )
        repo = r.string(m, "repo", path=p, required=True)
        if repo not in repo_names:
            raise r.fail(
                f"{p}.repo",
                message=f"unknown repo {repo!r}; repos: {', '.join(repo_names) or '(none)'}",
            )
        sm = r.mapping(
            m.get("sync"),
            f"{p}.sync",
            ("auto", "prune", "selfHeal", "forceConflicts", "allowEmpty", "maxPrunePercent"),
        )
        max_prune = sm.get("maxPrunePercent", 50)
        if (
            isinstance(max_prune, bool)
            or not isinstance(max_prune, int)
            or not 1 <= max_prune <= 100
        ):
            raise r.fail(
                f"{p}.sync.maxPrunePercent",
                message=f"{max_prune!r}: expected a whole number from 1 to 100 (100 turns the "
                "guard off)",
            )
        sync = Sync(
            auto=r.boolean(sm, "auto", path=f"{p}.sync", default=True),
            prune=r.boolean(sm, "prune", path=f"{p}.sync", default=False),
            self_heal=r.boolean(sm, "selfHeal", path=f"{p}.sync", default=False),
            force_conflicts=r.boolean(sm, "forceConflicts", path=f"{p}.sync", default=True),
            allow_empty=r.boolean(sm, "allowEmpty", path=f"{p}.sync", default=False),
            max_prune_percent=max_prune,
        )
        namespace = r.string(m, "namespace", path=p)
        if namespace and not DNS_LABEL.match(namespace):
            raise r.fail(f"{p}.namespace", message=f"{namespace!r} is not a valid namespace name")
        targets = None
        if "targets" in m:
            targets = tuple(
                parse_target(r, t, path=f"{p}.targets[{j}]", groups=group_names)
                for j, t in enumerate(r.items(m.get("targets"), f"{p}.targets"))
            )
            _unique(r, path=f"{p}.targets", names=[t.name for t in targets])
        depends = [str(d) for d in r.items(m.get("dependsOn"), f"{p}.dependsOn")]
        name = r.name(m, "name", path=p)
        apps.append(
            App(
                name=name,
                repo=repo,
                path=r.relpath(m, "path", path=p),
                namespace=namespace,
                sync=sync,
                targets=targets,
                depends_on=tuple(depends),
                ignore_differences=ignorerules.parse_app(
                    r, m.get("ignoreDifferences"), path=f"{p}.ignoreDifferences", app=name
                ),
                health_checks=health_checks,
                helm=chartspec.chart(r, m.get("helm"), path=f"{p}.helm", repos=helm_repos),
                rollout=rolloutspec.rollout(
                    r,
                    m.get("rollout"),
                    path=f"{p}.rollout",
                    groups=group_names,
                    gate_names=[g.name for g in gates],
                ),
            )
        )
    _unique(r, path="apps", names=[x.name for x in apps])
    app_names = {a.name for a in apps}
    for i, a in enumerate(apps):
        for d in a.depends_on:
            if d not in app_names:
                raise r.fail(f"apps[{i}].dependsOn", message=f"unknown app {d!r}")
    return Config(
        file,
        tuple(repos),
        tuple(clusters),
        tuple(groups),
        tuple(apps),
        retention,
        health_checks=health_checks,
        helm_repositories=helm_repos,
        gates=gates,
        images=images,
    )


def _health_checks(
    r: configfields.Reader, value: Any, *, base: pathlib.Path
) -> tuple[HealthCheck, ...]:
    """hub.yaml `healthChecks`: `- {group, kind, lua: |...}` or `file:` (relative to hub.yaml)."""
    checks: list[HealthCheck] = []
    seen: dict[tuple[str, str], int] = {}
    for i, item in enumerate(r.items(value, "healthChecks")):
        p = f"healthChecks[{i}]"
        m = r.mapping(item, p, ("group", "kind", "lua", "file"))
        group = r.string(m, "group", path=p)
        kind = r.string(m, "kind", path=p, required=True)
        if ("lua" in m) == ("file" in m):
            raise r.fail(p, message="give the script inline as lua: | or in a file: path, not both")
        if "lua" in m:
            lua, where = r.string(m, "lua", path=p, required=True), f"{p}.lua"
        else:
            name = r.string(m, "file", path=p, required=True)
            where = f"{p}.file"
            try:
                lua = (base / name).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as e:
                reason = getattr(e, "strerror", None) or str(e)
                raise r.fail(where, message=f"cannot read {base / name}: {reason}") from None
        problem = configfields.lua_problem(lua)
        if problem:
            raise r.fail(where, message=f"the Lua does not compile: {problem}")
        if (group, kind) in seen:
            raise r.fail(
                f"{p}.kind",
                message=f"healthChecks[{seen[group, kind]}] already checks {group or 'core'}/"
                f"{kind}; one script per kind",
            )
        seen[group, kind] = i
        checks.append(HealthCheck(group, kind, lua))
    return tuple(checks)


def parse_target(r: configfields.Reader, item: Any, *, path: str, groups: list[str]) -> Target:
    """One entry of an app's `targets` (hub.yaml) or of fleet.yaml's `targetCustomizations`."""
    p = path
    m = r.mapping(
        item,
        p,
        ("name", "clusterName", "clusterGroup", "clusterSelector", "helm", "kustomize", "yaml"),
    )
    group = r.string(m, "clusterGroup", path=p)
    if group and group not in groups:
        raise r.fail(
            f"{p}.clusterGroup",
            message=f"unknown cluster group {group!r}; groups: {', '.join(groups) or '(none)'}",
        )
    hm = r.mapping(m.get("helm"), f"{p}.helm", ("values", "valuesFiles"))
    values = hm.get("values") or {}
    if not isinstance(values, dict):
        raise r.fail(f"{p}.helm.values", message="expected a mapping of Helm values")
    values_files = []
    for j, f in enumerate(r.items(hm.get("valuesFiles"), f"{p}.helm.valuesFiles")):
        values_files.append(r.relpath({"f": f}, "f", path=f"{p}.helm.valuesFiles[{j}]"))
    km = r.mapping(m.get("kustomize"), f"{p}.kustomize", ("dir",))
    ym = r.mapping(m.get("yaml"), f"{p}.yaml", ("overlays",))
    overlays = [str(o) for o in r.items(ym.get("overlays"), f"{p}.yaml.overlays")]
    for j, o in enumerate(overlays):
        r.relpath({"o": o}, "o", path=f"{p}.yaml.overlays[{j}]")
    selector = None
    if "clusterSelector" in m:
        selector = r.selector(m["clusterSelector"], f"{p}.clusterSelector")
    return Target(
        name=r.name(m, "name", path=p),
        cluster_name=r.string(m, "clusterName", path=p),
        cluster_group=group,
        cluster_selector=selector,
        helm=Helm(values, tuple(values_files)),
        kustomize_dir=r.relpath(km, "dir", path=f"{p}.kustomize"),
        yaml_overlays=tuple(overlays),
    )


def _unique(r: configfields.Reader, *, path: str, names: list[str]) -> None:
    seen: set[str] = set()
    for i, n in enumerate(names):
        if n in seen:
            raise r.fail(f"{path}[{i}].name", message=f"duplicate name {n!r}; names must be unique")
        seen.add(n)


def load(path: pathlib.Path) -> Config:
    try:
        text = path.read_text()
    except OSError as e:
        raise errors.ConfigError(str(path), "", f"cannot read: {e.strerror}") from None
    return parse(text, file=str(path))
