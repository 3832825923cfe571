"""What image automation shows: per repository (last scan, tag count, error), per policy (the
tag it would set now), per update (last run, last commit, error). Plain values, read by
`fleetops-hub images status`, the ImageStatus RPC and /metrics."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class RepositoryStatus:
    name: str
    image: str  # as written in hub.yaml
    last_scan: float = 0.0  # wall clock; 0: not scanned yet
    tags: int = 0  # tags read in the newest good scan, after `exclude`
    requests: int = 0  # HTTP requests that scan made
    error: str = ""  # why the newest scan failed ('' when it did not)
    warning: str = ""  # e.g. more tags than maxTags


@dataclasses.dataclass
class PolicyStatus:
    name: str
    repository: str
    latest: str = ""  # the tag the policy picks now ('' when none)
    considered: int = 0
    skipped: int = 0
    rejected: int = 0  # tags passed over because their rollout was rejected
    rejected_tags: list[str] = dataclasses.field(default_factory=list)
    error: str = ""  # why there is no tag (no scan yet, nothing fits)


@dataclasses.dataclass
class UpdateStatus:
    name: str
    repo: str
    last_run: float = 0.0  # wall clock
    commits: int = 0  # since the hub started
    last_commit: str = ""
    last_changes: list[str] = dataclasses.field(default_factory=list)  # "file: old -> new"
    problems: list[str] = dataclasses.field(default_factory=list)  # markers not rewritten
    error: str = ""


@dataclasses.dataclass(frozen=True)
class Status:
    repositories: list[RepositoryStatus]
    policies: list[PolicyStatus]
    updates: list[UpdateStatus]
