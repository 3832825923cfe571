"""Reading the fields of a hub.yaml or fleet.yaml document: types, names, labels, durations.

`Reader` walks an untrusted YAML document keeping the field path, so every error names the
file, the field path (`apps[0].targets[1].clusterGroup`) and what is allowed. It validates
one field at a time and builds no config object (hub.config does); the label and name rules
here are Kubernetes' and shared with the hub's API (`label_problem`, `DNS_LABEL`).
"""

from __future__ import annotations

import pathlib
import re
from collections.abc import Mapping
from typing import Any

from lupa import lua54

from fleetops.hub import errors, selectors

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


def lua_problem(source: str) -> str:
    """Why a health check's Lua does not compile (compiled only, never run), or ''."""
    runtime = lua54.LuaRuntime(register_eval=False, register_builtins=False, max_memory=16 << 20)
    try:
        check = runtime.eval("function(s) local f, err = load(s, '=lua', 't') return err end")
        problem = check(source)
    except lua54.LuaError as e:
        return str(e)
    return str(problem) if problem else ""


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)?$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


class Reader:
    """Walks the YAML document, keeping the field path for error messages."""

    def __init__(self, file: str) -> None:
        self.file = file

    def fail(self, path: str, *, message: str) -> errors.ConfigError:
        return errors.ConfigError(self.file, path, message)

    def mapping(self, value: Any, path: str, allowed: tuple[str, ...]) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(path, message=f"expected a mapping with keys {', '.join(allowed)}")
        for key in value:
            if key not in allowed:
                raise self.fail(
                    f"{path}.{key}" if path else str(key),
                    message=f"unknown field; allowed here: {', '.join(allowed)}",
                )
        return value

    def items(self, value: Any, path: str) -> list[Any]:
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.fail(path, message="expected a list")
        return value

    def string(
        self,
        m: Mapping[str, Any],
        key: str,
        *,
        path: str,
        required: bool = False,
        default: str = "",
    ) -> str:
        value = m.get(key)
        if value is None:
            if required:
                raise self.fail(f"{path}.{key}", message="is required")
            return default
        if not isinstance(value, str) or (required and not value):
            raise self.fail(f"{path}.{key}", message="expected a non-empty string")
        return value

    def name(self, m: Mapping[str, Any], key: str, *, path: str) -> str:
        value = self.string(m, key, path=path, required=True)
        if len(value) > 63 or not DNS_LABEL.match(value):
            raise self.fail(
                f"{path}.{key}",
                message=f"{value!r} is not a valid name: use at most 63 lowercase letters, "
                "digits and '-', starting and ending with a letter or digit",
            )
        return value

    def boolean(self, m: Mapping[str, Any], key: str, *, path: str, default: bool) -> bool:
        value = m.get(key, default)
        if not isinstance(value, bool):
            raise self.fail(f"{path}.{key}", message="expected true or false")
        return value

    def count(self, m: Mapping[str, Any], key: str, *, path: str, default: int) -> int:
        value = m.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise self.fail(
                f"{path}.{key}", message=f"{value!r}: expected a whole number, at least 1"
            )
        return value

    def duration(self, m: Mapping[str, Any], key: str, *, path: str, default: float) -> float:
        value = m.get(key)
        if value is None:
            return default
        match = _DURATION.match(str(value).strip())
        if not match:
            raise self.fail(
                f"{path}.{key}", message=f"{value!r} is not a duration; use e.g. 15s, 2m, 1h or 30d"
            )
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
        if seconds < 1:
            raise self.fail(f"{path}.{key}", message="must be at least 1s")
        return seconds

    def labels(self, value: Any, path: str) -> dict[str, str]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(path, message="expected a mapping of label names to values")
        out = {}
        for k, v in value.items():
            if not isinstance(k, str) or not isinstance(v, (str, int, float, bool)):
                raise self.fail(f"{path}.{k}", message="label values must be strings")
            out[k] = str(v).lower() if isinstance(v, bool) else str(v)
            problem = label_problem(k, out[k])
            if problem:
                raise self.fail(f"{path}.{k}", message=problem)
        return out

    def selector(self, value: Any, path: str) -> selectors.Selector:
        m = self.mapping(value, path, ("matchLabels", "matchExpressions"))
        exprs = []
        for i, e in enumerate(self.items(m.get("matchExpressions"), f"{path}.matchExpressions")):
            epath = f"{path}.matchExpressions[{i}]"
            em = self.mapping(e, epath, ("key", "operator", "values"))
            op = self.string(em, "operator", path=epath, required=True)
            if op not in selectors.OPERATORS:
                raise self.fail(
                    f"{epath}.operator",
                    message=f"{op!r} is not allowed; use one of {', '.join(selectors.OPERATORS)}",
                )
            values = [str(v) for v in self.items(em.get("values"), f"{epath}.values")]
            if op in ("In", "NotIn") and not values:
                raise self.fail(
                    f"{epath}.values", message=f"operator {op} needs at least one value"
                )
            if op in ("Exists", "DoesNotExist") and values:
                raise self.fail(f"{epath}.values", message=f"operator {op} takes no values")
            exprs.append(
                selectors.Expression(
                    self.string(em, "key", path=epath, required=True), op, tuple(values)
                )
            )
        return selectors.Selector(
            tuple(sorted(self.labels(m.get("matchLabels"), f"{path}.matchLabels").items())),
            tuple(exprs),
        )

    def relpath(self, m: Mapping[str, Any], key: str, *, path: str, required: bool = False) -> str:
        value = self.string(m, key, path=path, required=required)
        if value and (value.startswith("/") or ".." in pathlib.PurePosixPath(value).parts):
            raise self.fail(
                f"{path}.{key}", message=f"{value!r} must be a relative path inside the repository"
            )
        return value.strip("/")
