"""The order in which a bundle's resources are applied.

Namespaces and CRDs go first (the rest may live in them or be instances of them), then the
sync waves in ascending order (`fleetops.io/sync-wave`, Argo CD's `argocd.argoproj.io/sync-wave`
honoured too, default 0; a Helm hook's `helm.sh/hook-weight` when neither is set). Inside a
wave, resources are applied in tiers by kind (what others refer to first), each tier
concurrently. Sync hooks (`agent.hooks`) take part in their wave like any object; the other
phases are ordered by `hook_waves`. Pure: it only sorts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from fleetops.agent import hooks, manifests

WAVE_ANNOTATIONS = ("fleetops.io/sync-wave", "argocd.argoproj.io/sync-wave")

# Kinds that others refer to come first in each wave; everything unlisted is in the last tier.
_TIERS: tuple[frozenset[str], ...] = (
    frozenset(
        {
            "PriorityClass",
            "StorageClass",
            "PodSecurityPolicy",
            "ServiceAccount",
            "Secret",
            "ConfigMap",
            "LimitRange",
            "ResourceQuota",
            "PersistentVolume",
            "PersistentVolumeClaim",
            "NetworkPolicy",
            "ClusterRole",
            "Role",
            "IngressClass",
        }
    ),
    frozenset({"ClusterRoleBinding", "RoleBinding", "Service", "Endpoints", "EndpointSlice"}),
)
FIRST_KINDS = (("", "Namespace"), ("apiextensions.k8s.io", "CustomResourceDefinition"))


@dataclasses.dataclass(frozen=True)
class Step:
    """Resources applied together; a step ends by waiting for health when `gate` is set."""

    label: str
    wave: int
    tiers: list[list[manifests.Resource]]
    gate: bool = False

    @property
    def resources(self) -> list[manifests.Resource]:
        return [r for tier in self.tiers for r in tier]


def wave_of(resource: manifests.Resource) -> int:
    """The resource's sync wave; raises ValueError naming the annotation when it is no integer."""
    weight = hooks.weight_annotation(resource.annotations)
    for key in (*WAVE_ANNOTATIONS, *([weight] if weight else [])):
        value = resource.annotations.get(key)
        if value is not None:
            try:
                return int(str(value).strip())
            except ValueError:
                raise ValueError(
                    f'annotation {key}: {value!r} is not an integer; use e.g. "-1", "0" or "5"'
                ) from None
    return 0


def _tier(kind: str) -> int:
    for i, kinds in enumerate(_TIERS):
        if kind in kinds:
            return i
    return len(_TIERS)


def plan(resources: Sequence[manifests.Resource]) -> list[Step]:
    """Steps in apply order. Resources whose wave annotation is invalid must be filtered out
    by the caller first (`wave_of` raises for them)."""
    first = [r for r in resources if (r.group, r.kind) in FIRST_KINDS]
    rest = [r for r in resources if (r.group, r.kind) not in FIRST_KINDS]
    steps: list[Step] = []
    if first:
        namespaces = [r for r in first if r.kind == "Namespace"]
        crds = [r for r in first if r.kind != "Namespace"]
        steps.append(
            Step("namespaces and CRDs", wave=-(2**31), tiers=[t for t in (namespaces, crds) if t])
        )
    waves: dict[int, list[manifests.Resource]] = {}
    for r in rest:
        waves.setdefault(wave_of(r), []).append(r)
    ordered = sorted(waves)
    for i, wave in enumerate(ordered):
        by_tier: dict[int, list[manifests.Resource]] = {}
        for r in waves[wave]:
            by_tier.setdefault(_tier(r.kind), []).append(r)
        tiers = [by_tier[t] for t in sorted(by_tier)]
        # wait for health only when a later wave depends on this one
        steps.append(Step(f"wave {wave}", wave=wave, tiers=tiers, gate=i < len(ordered) - 1))
    return steps


def prune_order(keys: Sequence[manifests.Key]) -> list[manifests.Key]:
    """Delete in reverse: workloads first, then what they referred to, namespaces and CRDs last."""

    def rank(k: manifests.Key) -> tuple[int, str]:
        if (k.group, k.kind) in FIRST_KINDS:
            return (0, str(k))
        return (1 + _tier(k.kind), str(k))  # workloads (the last tier) rank highest

    return sorted(keys, key=rank, reverse=True)
