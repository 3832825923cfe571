"""hub.yaml: repos, clusters, cluster groups and apps, validated on load.

Every error names the file, the field path (`apps[0].targets[1].clusterGroup`) and what is
allowed, and nothing is half-loaded: `load` returns a whole `Config` or raises. Pure apart
from reading the one file; never touches Git or the store.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
from collections.abc import Mapping
from typing import Any

import yaml

from fleetops.hub import errors, selectors
from fleetops.proto import yamlsafe

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_LABEL_PREFIX = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


def label_problem(key: str, value: str) -> str:
    """What is wrong with a label (Kubernetes' rules), or '' when it is fine."""
    prefix, _, name = key.rpartition("/")
    if (prefix and not _LABEL_PREFIX.match(prefix)) or not _LABEL_NAME.match(name):
        return (
            "the key must be an optional DNS prefix and '/', then at most 63 letters, "
            "digits, '-', '_' or '.', starting and ending with a letter or digit "
            "(e.g. env, example.com/tier)"
        )
    if value and not _LABEL_NAME.match(value):
        return (
            "the value must be empty or at most 63 letters, digits, '-', '_' or '.', starting "
            "and ending with a letter or digit"
        )
    return ""


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)?$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


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


@dataclasses.dataclass(frozen=True)
class Sync:
    auto: bool = True
    prune: bool = False
    self_heal: bool = False
    force_conflicts: bool = True
    allow_empty: bool = False
    max_prune_percent: int = 50  # a sync pruning more of the app's objects is held; 100: off


@dataclasses.dataclass(frozen=True)
class App:
    name: str
    repo: str
    path: str
    namespace: str = ""
    sync: Sync = dataclasses.field(default_factory=Sync)
    targets: tuple[Target, ...] | None = None  # None: not given (fleet.yaml or every cluster)
    depends_on: tuple[str, ...] = ()


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

    def repo(self, name: str) -> Repo:
        return next(r for r in self.repos if r.name == name)

    def app(self, name: str) -> App | None:
        return next((a for a in self.apps if a.name == name), None)

    def group(self, name: str) -> ClusterGroup | None:
        return next((g for g in self.cluster_groups if g.name == name), None)

    def cluster_labels(self, name: str) -> Mapping[str, str]:
        found = next((c for c in self.clusters if c.name == name), None)
        return found.labels if found else {}


class _Reader:
    """Walks the YAML document, keeping the field path for error messages."""

    def __init__(self, file: str) -> None:
        self.file = file

    def fail(self, path: str, message: str) -> errors.ConfigError:
        return errors.ConfigError(self.file, path, message)

    def mapping(self, value: Any, path: str, allowed: tuple[str, ...]) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(path, f"expected a mapping with keys {', '.join(allowed)}")
        for key in value:
            if key not in allowed:
                raise self.fail(
                    f"{path}.{key}" if path else str(key),
                    f"unknown field; allowed here: {', '.join(allowed)}",
                )
        return value

    def items(self, value: Any, path: str) -> list[Any]:
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.fail(path, "expected a list")
        return value

    def string(
        self,
        m: Mapping[str, Any],
        key: str,
        path: str,
        *,
        required: bool = False,
        default: str = "",
    ) -> str:
        value = m.get(key)
        if value is None:
            if required:
                raise self.fail(f"{path}.{key}", "is required")
            return default
        if not isinstance(value, str) or (required and not value):
            raise self.fail(f"{path}.{key}", "expected a non-empty string")
        return value

    def name(self, m: Mapping[str, Any], key: str, path: str) -> str:
        value = self.string(m, key, path, required=True)
        if len(value) > 63 or not DNS_LABEL.match(value):
            raise self.fail(
                f"{path}.{key}",
                f"{value!r} is not a valid name: use at most 63 lowercase letters, digits and '-', "
                "starting and ending with a letter or digit",
            )
        return value

    def boolean(self, m: Mapping[str, Any], key: str, path: str, default: bool) -> bool:
        value = m.get(key, default)
        if not isinstance(value, bool):
            raise self.fail(f"{path}.{key}", "expected true or false")
        return value

    def count(self, m: Mapping[str, Any], key: str, path: str, default: int) -> int:
        value = m.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise self.fail(f"{path}.{key}", f"{value!r}: expected a whole number, at least 1")
        return value

    def duration(self, m: Mapping[str, Any], key: str, path: str, default: float) -> float:
        value = m.get(key)
        if value is None:
            return default
        match = _DURATION.match(str(value).strip())
        if not match:
            raise self.fail(
                f"{path}.{key}", f"{value!r} is not a duration; use e.g. 15s, 2m, 1h or 30d"
            )
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
        if seconds < 1:
            raise self.fail(f"{path}.{key}", "must be at least 1s")
        return seconds

    def labels(self, value: Any, path: str) -> dict[str, str]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(path, "expected a mapping of label names to values")
        out = {}
        for k, v in value.items():
            if not isinstance(k, str) or not isinstance(v, (str, int, float, bool)):
                raise self.fail(f"{path}.{k}", "label values must be strings")
            out[k] = str(v).lower() if isinstance(v, bool) else str(v)
            problem = label_problem(k, out[k])
            if problem:
                raise self.fail(f"{path}.{k}", problem)
        return out

    def selector(self, value: Any, path: str) -> selectors.Selector:
        m = self.mapping(value, path, ("matchLabels", "matchExpressions"))
        exprs = []
        for i, e in enumerate(self.items(m.get("matchExpressions"), f"{path}.matchExpressions")):
            epath = f"{path}.matchExpressions[{i}]"
            em = self.mapping(e, epath, ("key", "operator", "values"))
            op = self.string(em, "operator", epath, required=True)
            if op not in selectors.OPERATORS:
                raise self.fail(
                    f"{epath}.operator",
                    f"{op!r} is not allowed; use one of {', '.join(selectors.OPERATORS)}",
                )
            values = [str(v) for v in self.items(em.get("values"), f"{epath}.values")]
            if op in ("In", "NotIn") and not values:
                raise self.fail(f"{epath}.values", f"operator {op} needs at least one value")
            if op in ("Exists", "DoesNotExist") and values:
                raise self.fail(f"{epath}.values", f"operator {op} takes no values")
            exprs.append(
                selectors.Expression(
                    self.string(em, "key", epath, required=True), op, tuple(values)
                )
            )
        return selectors.Selector(
            tuple(sorted(self.labels(m.get("matchLabels"), f"{path}.matchLabels").items())),
            tuple(exprs),
        )

    def relpath(self, m: Mapping[str, Any], key: str, path: str, *, required: bool = False) -> str:
        value = self.string(m, key, path, required=required)
        if value and (value.startswith("/") or ".." in pathlib.PurePosixPath(value).parts):
            raise self.fail(
                f"{path}.{key}", f"{value!r} must be a relative path inside the repository"
            )
        return value.strip("/")


def parse(text: str, *, file: str) -> Config:
    r = _Reader(file)
    try:
        doc = yamlsafe.load(text, source=file)
    except yamlsafe.YAMLLimitError as e:  # an alias bomb or the like: line and cap named
        raise r.fail("", yamlsafe.describe(e)) from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        where = f"line {mark.line + 1}" if mark else "?"
        raise r.fail("", f"invalid YAML at {where}: {e.problem}") from None
    root = r.mapping(doc, "", ("repos", "clusters", "clusterGroups", "apps", "retention"))
    rm = r.mapping(root.get("retention"), "retention", ("events", "eventsPerApp", "revisions"))
    retention = Retention(
        events=r.duration(rm, "events", "retention", Retention.events),
        events_per_app=r.count(rm, "eventsPerApp", "retention", Retention.events_per_app),
        revisions=r.count(rm, "revisions", "retention", Retention.revisions),
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
        url = r.string(m, "url", p, required=True)
        if "@" in url.split("://", 1)[-1].split("/", 1)[0] and url.startswith(
            ("http://", "https://")
        ):
            raise r.fail(
                f"{p}.url",
                "must not contain credentials; put the token in an env var and name it in tokenEnv",
            )
        repos.append(
            Repo(
                name=r.name(m, "name", p),
                url=url,
                branch=r.string(m, "branch", p, default="main"),
                poll_interval=r.duration(m, "pollInterval", p, 15.0),
                token_env=r.string(m, "tokenEnv", p),
                ssh_key_file=r.string(m, "sshKeyFile", p),
                known_hosts_file=r.string(m, "knownHostsFile", p),
                webhook_secret_env=r.string(m, "webhookSecretEnv", p),
            )
        )
    _unique(r, "repos", [x.name for x in repos])

    clusters = []
    for i, item in enumerate(r.items(root.get("clusters"), "clusters")):
        p = f"clusters[{i}]"
        m = r.mapping(item, p, ("name", "labels"))
        clusters.append(ClusterDef(r.name(m, "name", p), r.labels(m.get("labels"), f"{p}.labels")))
    _unique(r, "clusters", [x.name for x in clusters])

    groups = []
    for i, item in enumerate(r.items(root.get("clusterGroups"), "clusterGroups")):
        p = f"clusterGroups[{i}]"
        m = r.mapping(item, p, ("name", "selector"))
        if "selector" not in m:
            raise r.fail(
                f"{p}.selector", "is required (a label selector; {} selects every cluster)"
            )
        groups.append(
            ClusterGroup(r.name(m, "name", p), r.selector(m.get("selector"), f"{p}.selector"))
        )
    _unique(r, "clusterGroups", [x.name for x in groups])

    repo_names = [x.name for x in repos]
    group_names = [x.name for x in groups]
    apps = []
    for i, item in enumerate(r.items(root.get("apps"), "apps")):
        p = f"apps[{i}]"
        m = r.mapping(
            item, p, ("name", "repo", "path", "namespace", "sync", "targets", "dependsOn")
        )
        repo = r.string(m, "repo", p, required=True)
        if repo not in repo_names:
            raise r.fail(
                f"{p}.repo", f"unknown repo {repo!r}; repos: {', '.join(repo_names) or '(none)'}"
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
                f"{max_prune!r}: expected a whole number from 1 to 100 (100 turns the guard off)",
            )
        sync = Sync(
            auto=r.boolean(sm, "auto", f"{p}.sync", True),
            prune=r.boolean(sm, "prune", f"{p}.sync", False),
            self_heal=r.boolean(sm, "selfHeal", f"{p}.sync", False),
            force_conflicts=r.boolean(sm, "forceConflicts", f"{p}.sync", True),
            allow_empty=r.boolean(sm, "allowEmpty", f"{p}.sync", False),
            max_prune_percent=max_prune,
        )
        namespace = r.string(m, "namespace", p)
        if namespace and not DNS_LABEL.match(namespace):
            raise r.fail(f"{p}.namespace", f"{namespace!r} is not a valid namespace name")
        targets = None
        if "targets" in m:
            targets = tuple(
                _target(r, t, f"{p}.targets[{j}]", group_names)
                for j, t in enumerate(r.items(m.get("targets"), f"{p}.targets"))
            )
            _unique(r, f"{p}.targets", [t.name for t in targets])
        depends = [str(d) for d in r.items(m.get("dependsOn"), f"{p}.dependsOn")]
        apps.append(
            App(
                name=r.name(m, "name", p),
                repo=repo,
                path=r.relpath(m, "path", p),
                namespace=namespace,
                sync=sync,
                targets=targets,
                depends_on=tuple(depends),
            )
        )
    _unique(r, "apps", [x.name for x in apps])
    app_names = {a.name for a in apps}
    for i, a in enumerate(apps):
        for d in a.depends_on:
            if d not in app_names:
                raise r.fail(f"apps[{i}].dependsOn", f"unknown app {d!r}")
    return Config(file, tuple(repos), tuple(clusters), tuple(groups), tuple(apps), retention)


def _target(r: _Reader, item: Any, p: str, groups: list[str]) -> Target:
    m = r.mapping(
        item,
        p,
        ("name", "clusterName", "clusterGroup", "clusterSelector", "helm", "kustomize", "yaml"),
    )
    group = r.string(m, "clusterGroup", p)
    if group and group not in groups:
        raise r.fail(
            f"{p}.clusterGroup",
            f"unknown cluster group {group!r}; groups: {', '.join(groups) or '(none)'}",
        )
    hm = r.mapping(m.get("helm"), f"{p}.helm", ("values", "valuesFiles"))
    values = hm.get("values") or {}
    if not isinstance(values, dict):
        raise r.fail(f"{p}.helm.values", "expected a mapping of Helm values")
    values_files = []
    for j, f in enumerate(r.items(hm.get("valuesFiles"), f"{p}.helm.valuesFiles")):
        values_files.append(r.relpath({"f": f}, "f", f"{p}.helm.valuesFiles[{j}]"))
    km = r.mapping(m.get("kustomize"), f"{p}.kustomize", ("dir",))
    ym = r.mapping(m.get("yaml"), f"{p}.yaml", ("overlays",))
    overlays = [str(o) for o in r.items(ym.get("overlays"), f"{p}.yaml.overlays")]
    for j, o in enumerate(overlays):
        r.relpath({"o": o}, "o", f"{p}.yaml.overlays[{j}]")
    selector = None
    if "clusterSelector" in m:
        selector = r.selector(m["clusterSelector"], f"{p}.clusterSelector")
    return Target(
        name=r.name(m, "name", p),
        cluster_name=r.string(m, "clusterName", p),
        cluster_group=group,
        cluster_selector=selector,
        helm=Helm(values, tuple(values_files)),
        kustomize_dir=r.relpath(km, "dir", f"{p}.kustomize"),
        yaml_overlays=tuple(overlays),
    )


def _unique(r: _Reader, path: str, names: list[str]) -> None:
    seen: set[str] = set()
    for i, n in enumerate(names):
        if n in seen:
            raise r.fail(f"{path}[{i}].name", f"duplicate name {n!r}; names must be unique")
        seen.add(n)


def load(path: pathlib.Path) -> Config:
    try:
        text = path.read_text()
    except OSError as e:
        raise errors.ConfigError(str(path), "", f"cannot read: {e.strerror}") from None
    return parse(text, file=str(path))
