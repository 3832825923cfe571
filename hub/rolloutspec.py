"""hub.yaml's progressive delivery: an app's `rollout` (ordered steps over the fleet) and the
top-level `gates` its steps name (Prometheus queries, signed webhooks, manual approval).

Pure: a validated value or a ConfigError naming the file, the field path and what is allowed.
It never evaluates a gate or reads a secret (hub.gates does, when a step bakes); a webhook's
key is named by its file, never written here.
"""

from __future__ import annotations

import dataclasses
import math
import re
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any

from fleetops.hub import configfields, selectors

ON_FAILURE = ("revert", "halt")
UNMATCHED = ("lastStep", "exclude")
NO_DATA = ("wait", "fail", "pass")
_PASS = re.compile(r"^\s*(<=|>=|==|!=|<|>)\s*(-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)\s*$")
_PERCENT = re.compile(r"^(\d{1,3})%$")
PLACEHOLDERS = ("{{cluster}}", "{{app}}", "{{revision}}", "{{step}}")


@dataclasses.dataclass(frozen=True)
class Step:
    """Which clusters (first matching step wins), how many move at once, how long they bake
    healthy, and which gates must pass before the next step starts."""

    name: str
    cluster_group: str = ""
    cluster_selector: selectors.Selector | None = None
    cluster_names: tuple[str, ...] = ()
    max_parallel: int = 0  # clusters in flight at once; 0: see max_parallel_percent
    max_parallel_percent: int = 100  # of the step's clusters, rounded up, at least one
    bake: float = 0.0  # seconds healthy on the revision before a cluster passes
    gates: tuple[str, ...] = ()

    def matches(self, cluster: str, labels: Mapping[str, str], group: Any) -> bool:
        """Whether the cluster belongs here; `group` is the step's ClusterGroup (or None)."""
        if self.cluster_names and cluster not in self.cluster_names:
            return False
        if self.cluster_group and (group is None or not group.selector.matches(labels)):
            return False
        return self.cluster_selector is None or self.cluster_selector.matches(labels)

    def parallel(self, size: int) -> int:
        """How many of a step of `size` clusters may be in flight at once."""
        if self.max_parallel:
            return self.max_parallel
        return max(1, math.ceil(size * self.max_parallel_percent / 100))


@dataclasses.dataclass(frozen=True)
class Rollout:
    steps: tuple[Step, ...]
    progress_deadline: float = 600.0  # from assignment to applied == R and Healthy
    max_failures: int = 0  # failed clusters a step tolerates
    on_failure: str = "revert"  # revert | halt
    unmatched: str = "lastStep"  # lastStep | exclude

    def step_of(self, cluster: str, labels: Mapping[str, str], groups: Mapping[str, Any]) -> int:
        """The index of the first step the cluster matches; the last step (unmatched:
        lastStep) or -1 (exclude: the rollout never moves it) when none does."""
        for i, step in enumerate(self.steps):
            if step.matches(cluster, labels, groups.get(step.cluster_group)):
                return i
        return len(self.steps) - 1 if self.unmatched == "lastStep" else -1


@dataclasses.dataclass(frozen=True)
class Threshold:
    """`pass: "< 0.01"`: a measured value passes when `value <op> limit`."""

    op: str
    limit: float

    def passes(self, value: float) -> bool:
        if math.isnan(value):
            return False
        return {
            "<": value < self.limit,
            "<=": value <= self.limit,
            ">": value > self.limit,
            ">=": value >= self.limit,
            "==": value == self.limit,
            "!=": value != self.limit,
        }[self.op]

    def __str__(self) -> str:
        return f"{self.op} {self.limit:g}"


@dataclasses.dataclass(frozen=True)
class Prometheus:
    url: str  # the server's base URL (http://prometheus.monitoring:9090)
    query: str  # PromQL; {{cluster}}, {{app}}, {{revision}}, {{step}} are filled in
    threshold: Threshold
    interval: float = 30.0  # seconds between measurements while a cluster bakes
    failure_limit: int = 1  # failing measurements (in a row) that fail the cluster
    no_data: str = "wait"  # an empty result: wait | fail | pass
    timeout: float = 10.0
    bearer_token_file: str = ""  # sent as Authorization: Bearer (read when measuring)


@dataclasses.dataclass(frozen=True)
class Webhook:
    url: str
    timeout: float = 15.0
    secret_file: str = ""  # the HMAC-SHA256 key; the body is signed in X-Fleetops-Signature
    failure_limit: int = 1  # non-2xx answers in a row that fail the cluster (a call that gets
    # no answer at all, a timeout or a refused connection, counts towards rollout.ERROR_LIMIT)
    interval: float = 30.0  # between calls after one that did not answer


@dataclasses.dataclass(frozen=True)
class Gate:
    """One named gate; exactly one of prometheus, webhook, manual."""

    name: str
    prometheus: Prometheus | None = None
    webhook: Webhook | None = None
    manual: bool = False

    @property
    def kind(self) -> str:
        if self.prometheus is not None:
            return "prometheus"
        if self.webhook is not None:
            return "webhook"
        return "manual"


def gates(r: configfields.Reader, value: Any) -> tuple[Gate, ...]:
    """hub.yaml's top-level `gates`."""
    out: list[Gate] = []
    seen: set[str] = set()
    for i, item in enumerate(r.items(value, "gates")):
        p = f"gates[{i}]"
        m = r.mapping(item, p, ("name", "prometheus", "webhook", "manual"))
        name = r.name(m, "name", path=p)
        if name in seen:
            raise r.fail(f"{p}.name", message=f"duplicate name {name!r}; names must be unique")
        seen.add(name)
        kinds = [k for k in ("prometheus", "webhook", "manual") if k in m]
        if len(kinds) != 1:
            raise r.fail(
                p,
                message="give exactly one of prometheus: {url, query, pass}, webhook: {url} or "
                "manual: {} (passes on `fleetops-hub rollout promote`)",
            )
        if kinds == ["prometheus"]:
            out.append(Gate(name, prometheus=_prometheus(r, m["prometheus"], f"{p}.prometheus")))
        elif kinds == ["webhook"]:
            out.append(Gate(name, webhook=_webhook(r, m["webhook"], f"{p}.webhook")))
        else:
            r.mapping(m["manual"], f"{p}.manual", ())
            out.append(Gate(name, manual=True))
    return tuple(out)


def _url(r: configfields.Reader, m: Mapping[str, Any], path: str) -> str:
    url = r.string(m, "url", path=path, required=True)
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise r.fail(f"{path}.url", message=f"{url!r}: expected an http:// or https:// URL")
    if parts.username or parts.password:
        raise r.fail(
            f"{path}.url",
            message="must not contain credentials; put them in a file and name it "
            "(bearerTokenFile, secretFile)",
        )
    return url.rstrip("/")


def _prometheus(r: configfields.Reader, value: Any, path: str) -> Prometheus:
    m = r.mapping(
        value,
        path,
        (
            "url",
            "query",
            "pass",
            "interval",
            "failureLimit",
            "noData",
            "timeout",
            "bearerTokenFile",
        ),
    )
    query = r.string(m, "query", path=path, required=True)
    for hole in re.findall(r"\{\{[^}]*\}\}", query):
        if hole.replace(" ", "") not in PLACEHOLDERS:
            raise r.fail(
                f"{path}.query",
                message=f"unknown placeholder {hole}; use {', '.join(PLACEHOLDERS)}",
            )
    raw = m.get("pass")
    match = _PASS.match(str(raw)) if isinstance(raw, str) else None
    if match is None:
        raise r.fail(
            f"{path}.pass",
            message=f'{raw!r}: expected a comparison with a number, quoted, e.g. "< 0.01" '
            "(operators <, <=, >, >=, ==, !=)",
        )
    no_data = r.string(m, "noData", path=path, default="wait")
    if no_data not in NO_DATA:
        raise r.fail(
            f"{path}.noData",
            message=f"{no_data!r}: expected wait (hold until the query returns data), fail or pass",
        )
    return Prometheus(
        url=_url(r, m, path),
        query=query,
        threshold=Threshold(match.group(1), float(match.group(2))),
        interval=r.duration(m, "interval", path=path, default=30.0),
        failure_limit=r.count(m, "failureLimit", path=path, default=1),
        no_data=no_data,
        timeout=r.duration(m, "timeout", path=path, default=10.0),
        bearer_token_file=r.string(m, "bearerTokenFile", path=path),
    )


def _webhook(r: configfields.Reader, value: Any, path: str) -> Webhook:
    m = r.mapping(value, path, ("url", "timeout", "secretFile", "failureLimit", "interval"))
    return Webhook(
        url=_url(r, m, path),
        timeout=r.duration(m, "timeout", path=path, default=15.0),
        secret_file=r.string(m, "secretFile", path=path),
        failure_limit=r.count(m, "failureLimit", path=path, default=1),
        interval=r.duration(m, "interval", path=path, default=30.0),
    )


def rollout(
    r: configfields.Reader,
    value: Any,
    *,
    path: str,
    groups: Sequence[str],
    gate_names: Sequence[str],
) -> Rollout | None:
    """An app's `rollout` block, or None when it has none (every cluster moves at once)."""
    if value is None:
        return None
    m = r.mapping(
        value, path, ("steps", "progressDeadline", "maxFailures", "onFailure", "unmatched")
    )
    steps: list[Step] = []
    for i, item in enumerate(r.items(m.get("steps"), f"{path}.steps")):
        steps.append(_step(r, item, path=f"{path}.steps[{i}]", groups=groups, gates=gate_names))
    if not steps:
        raise r.fail(
            f"{path}.steps",
            message="a rollout needs at least one step, e.g. - {name: canary, clusterGroup: "
            "canary, bake: 10m}",
        )
    seen: set[str] = set()
    for i, s in enumerate(steps):
        if s.name in seen:
            raise r.fail(
                f"{path}.steps[{i}].name", message=f"duplicate step {s.name!r}; names are unique"
            )
        seen.add(s.name)
    max_failures = m.get("maxFailures", 0)
    if isinstance(max_failures, bool) or not isinstance(max_failures, int) or max_failures < 0:
        raise r.fail(
            f"{path}.maxFailures", message=f"{max_failures!r}: expected a whole number, 0 or more"
        )
    on_failure = r.string(m, "onFailure", path=path, default="revert")
    if on_failure not in ON_FAILURE:
        raise r.fail(
            f"{path}.onFailure",
            message=f"{on_failure!r}: expected revert (clusters go back to their last good "
            "revision) or halt (every cluster stays where it is)",
        )
    unmatched = r.string(m, "unmatched", path=path, default="lastStep")
    if unmatched not in UNMATCHED:
        raise r.fail(
            f"{path}.unmatched",
            message=f"{unmatched!r}: expected lastStep (clusters no step matches go with the "
            "last step) or exclude (the rollout never moves them)",
        )
    return Rollout(
        steps=tuple(steps),
        progress_deadline=r.duration(m, "progressDeadline", path=path, default=600.0),
        max_failures=max_failures,
        on_failure=on_failure,
        unmatched=unmatched,
    )


def _step(
    r: configfields.Reader,
    value: Any,
    *,
    path: str,
    groups: Sequence[str],
    gates: Sequence[str],
) -> Step:
    m = r.mapping(
        value,
        path,
        ("name", "clusterGroup", "clusterSelector", "clusters", "maxParallel", "bake", "gates"),
    )
    group = r.string(m, "clusterGroup", path=path)
    if group and group not in groups:
        raise r.fail(
            f"{path}.clusterGroup",
            message=f"unknown cluster group {group!r}; groups: {', '.join(groups) or '(none)'}",
        )
    selector = None
    if "clusterSelector" in m:
        selector = r.selector(m["clusterSelector"], f"{path}.clusterSelector")
    names = tuple(str(n) for n in r.items(m.get("clusters"), f"{path}.clusters"))
    if not (group or selector is not None or names):
        raise r.fail(
            path,
            message="a step selects its clusters: give clusterGroup, clusterSelector or "
            "clusters (a list of names)",
        )
    parallel, percent = _parallel(r, m.get("maxParallel"), f"{path}.maxParallel")
    step_gates = tuple(str(g) for g in r.items(m.get("gates"), f"{path}.gates"))
    for j, g in enumerate(step_gates):
        if g not in gates:
            raise r.fail(
                f"{path}.gates[{j}]",
                message=f"unknown gate {g!r}; gates: {', '.join(gates) or '(none)'} (define it "
                "under the top-level gates:)",
            )
    bake = 0.0
    if m.get("bake") not in (None, 0, "0", "0s"):
        bake = r.duration(m, "bake", path=path, default=0.0)
    return Step(
        name=r.name(m, "name", path=path),
        cluster_group=group,
        cluster_selector=selector,
        cluster_names=names,
        max_parallel=parallel,
        max_parallel_percent=percent,
        bake=bake,
        gates=step_gates,
    )


def _parallel(r: configfields.Reader, value: Any, path: str) -> tuple[int, int]:
    """maxParallel: a count (at least 1) or a percentage of the step's clusters."""
    if value is None:
        return 0, 100
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value, 100
    match = _PERCENT.match(str(value)) if isinstance(value, str) else None
    if match and 1 <= int(match.group(1)) <= 100:
        return 0, int(match.group(1))
    raise r.fail(
        path, message=f"{value!r}: expected a whole number (at least 1) or a percentage, e.g. 25%"
    )
