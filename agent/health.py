"""Health of a live Kubernetes object: custom Lua checks first, then the built-in rules.

`assess(obj)` is what every step calls (apply, check, prune, `fleetops-agent health FILE`).
Which custom checks apply is the reconcile's business, not the call site's: the reconciler
sets a `Checks` for the bundle at hand with `using` (a context variable, so tasks it starts
inherit it), in precedence order hub.yaml's checks (from the bundle) > the agent's
`--health-checks` directory > the built-ins (`agent.healthkinds`). A Lua verdict overrides a
built-in rule, as in Argo CD; a script with no verdict leaves the object to the built-ins.
It never raises for a bad object or a bad script: that is UNKNOWN with a reason.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Mapping
from typing import Any

from fleetops.agent import healthkinds, luahealth

# The vocabulary, re-exported: callers know only `agent.health`.
Status = healthkinds.Status
Health = healthkinds.Health
HEALTHY = healthkinds.HEALTHY
PROGRESSING = healthkinds.PROGRESSING
DEGRADED = healthkinds.DEGRADED
SUSPENDED = healthkinds.SUSPENDED
MISSING = healthkinds.MISSING
UNKNOWN = healthkinds.UNKNOWN
name = healthkinds.name
worst = healthkinds.worst
missing = healthkinds.missing

_BY_NAME: dict[str, Status] = {
    "Healthy": HEALTHY,
    "Progressing": PROGRESSING,
    "Degraded": DEGRADED,
    "Suspended": SUSPENDED,
    "Missing": MISSING,
    "Unknown": UNKNOWN,
}


class Checks:
    """Custom checks in precedence order (first wins), in front of the built-in rules."""

    def __init__(self, *layers: luahealth.Checks) -> None:
        self.layers = tuple(layer for layer in layers if layer.sources)

    def assess(self, obj: Mapping[str, Any]) -> Health:
        """The health of one live object, with a one-line reason."""
        if (obj.get("metadata") or {}).get("deletionTimestamp"):
            return Health(PROGRESSING, "being deleted")
        group = str(obj.get("apiVersion") or "").rpartition("/")[0]
        kind = str(obj.get("kind") or "")
        for layer in self.layers:
            if layer.script_for(group, kind) is None:
                continue
            verdict = layer.verdict(obj, group=group, kind=kind)
            if verdict is not None:
                reason = verdict.message or f"{verdict.status} (health check {verdict.origin})"
                return Health(_BY_NAME[verdict.status], reason)
            break  # the script that applies gave no verdict: the built-ins decide
        return healthkinds.builtin(obj, group=group, kind=kind)


BUILTIN = Checks()
_ACTIVE: contextvars.ContextVar[Checks] = contextvars.ContextVar("health_checks", default=BUILTIN)


@contextlib.contextmanager
def using(checks: Checks) -> Iterator[None]:
    """`assess` uses `checks` inside the block (and in tasks started inside it)."""
    token = _ACTIVE.set(checks)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def assess(obj: Mapping[str, Any]) -> Health:
    """The health of one live object by the checks in use (`using`), else the built-ins."""
    return _ACTIVE.get().assess(obj)
