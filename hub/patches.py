"""The three patch kinds Fleet's YAML overlays use, as pure functions on parsed JSON values.

- `json_patch`: RFC 6902 (add, remove, replace, move, copy, test), for a patch that is a list.
- `merge_patch`: RFC 7386 JSON merge patch (maps merge, null deletes, anything else replaces),
  for a base without apiVersion/kind, a custom resource or a CustomResourceDefinition.
- `strategic_merge`: Kubernetes' strategic merge patch for built-in kinds, from a small table of
  the lists Kubernetes merges by key (its `patchMergeKey` tags): containers, initContainers,
  ephemeralContainers, volumes, imagePullSecrets, hostAliases, topologySpreadConstraints,
  schedulingGates and resourceClaims of a pod spec; ports, env, volumeMounts and volumeDevices
  of a container; a Service's ports; ownerReferences and finalizers of metadata; webhooks of
  the webhook configurations. Every other list is replaced, as Kubernetes does for lists
  without a patch strategy. `$patch: delete` and `$patch: replace` work in maps and in keyed
  lists; `$retainKeys`, `$setElementOrder/...` and `$deleteFromPrimitiveList/...` are refused
  with a PatchError. Versions are not looked at: a built-in group and kind is enough.

`patch_style` picks one of them as Fleet does. Nothing here reads files or knows about overlays
(hub.plain does); inputs are never modified. Errors are PatchError (a ValueError) with a message
that names the JSON path; hub.plain turns it into a RenderError naming the files, and it never
leaves the hub.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import json
from collections.abc import Mapping
from typing import Any

JSON = Any  # a value as YAML or JSON parses it: dict, list, str, int, float, bool or None


class PatchError(ValueError):
    """The patch cannot apply to this base; the message names the JSON path and why."""


class Style(enum.Enum):
    JSON_PATCH = "JSON patch (RFC 6902)"
    MERGE = "JSON merge patch (RFC 7386)"
    STRATEGIC = "strategic merge patch"


# Kinds in client-go's scheme, by API group (versions are not checked).
BUILTIN: dict[str, frozenset[str]] = {
    group: frozenset(kinds.split())
    for group, kinds in {
        "": "Pod Service ConfigMap Secret Namespace ServiceAccount PersistentVolume "
        "PersistentVolumeClaim ReplicationController PodTemplate Endpoints LimitRange "
        "ResourceQuota Node Event Binding ComponentStatus",
        "apps": "Deployment StatefulSet DaemonSet ReplicaSet ControllerRevision",
        "batch": "Job CronJob",
        "autoscaling": "HorizontalPodAutoscaler",
        "networking.k8s.io": "Ingress IngressClass NetworkPolicy IPAddress ServiceCIDR",
        "policy": "PodDisruptionBudget Eviction",
        "rbac.authorization.k8s.io": "Role ClusterRole RoleBinding ClusterRoleBinding",
        "storage.k8s.io": "StorageClass VolumeAttachment CSIDriver CSINode CSIStorageCapacity "
        "VolumeAttributesClass",
        "scheduling.k8s.io": "PriorityClass",
        "coordination.k8s.io": "Lease",
        "node.k8s.io": "RuntimeClass",
        "discovery.k8s.io": "EndpointSlice",
        "admissionregistration.k8s.io": "MutatingWebhookConfiguration "
        "ValidatingWebhookConfiguration ValidatingAdmissionPolicy "
        "ValidatingAdmissionPolicyBinding MutatingAdmissionPolicy MutatingAdmissionPolicyBinding",
        "certificates.k8s.io": "CertificateSigningRequest ClusterTrustBundle",
        "events.k8s.io": "Event",
        "flowcontrol.apiserver.k8s.io": "FlowSchema PriorityLevelConfiguration",
        "resource.k8s.io": "ResourceClaim ResourceClaimTemplate DeviceClass ResourceSlice",
    }.items()
}


def patch_style(base: JSON, patch: JSON) -> Style:
    """Fleet's choice: a list is a JSON patch; a base without apiVersion/kind, a custom
    resource or a CustomResourceDefinition gets a JSON merge patch; a built-in kind a
    strategic merge patch."""
    if isinstance(patch, list):
        return Style.JSON_PATCH
    if not isinstance(base, Mapping) or not base.get("apiVersion") or not base.get("kind"):
        return Style.MERGE
    return Style.STRATEGIC if _builtin(base) else Style.MERGE


def apply(base: JSON, patch: JSON, *, max_copied: int) -> JSON:
    """`patch` applied to `base` in the style `patch_style` picks (`max_copied`: see
    `json_patch`)."""
    style = patch_style(base, patch)
    if style is Style.JSON_PATCH:
        return json_patch(base, patch, max_copied=max_copied)
    if style is Style.STRATEGIC:
        return strategic_merge(base, patch)
    return merge_patch(base, patch)


def _builtin(obj: Mapping[str, Any]) -> bool:
    api = str(obj.get("apiVersion"))
    group = api.rsplit("/", 1)[0] if "/" in api else ""
    return str(obj.get("kind")) in BUILTIN.get(group, frozenset())


# ---------------------------------------------------------------- RFC 7386


def merge_patch(base: JSON, patch: JSON) -> JSON:
    """JSON merge patch (RFC 7386): maps merge, null deletes, anything else replaces."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    out = dict(base) if isinstance(base, Mapping) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


# ---------------------------------------------------------------- RFC 6902


def json_patch(doc: JSON, ops: JSON, *, max_copied: int) -> JSON:
    """JSON patch (RFC 6902): the operations in order on a copy of `doc`; any failing
    operation fails the whole patch. `copy` is the one operation that can grow a document
    faster than the patch file (each copy can double it), so the values copied may total at
    most `max_copied` characters of JSON."""
    if not isinstance(ops, list):
        raise PatchError("a JSON patch must be a list of operations")
    out = copy.deepcopy(doc)
    copied = 0
    for i, op in enumerate(ops):
        where = f"operation {i}"
        if not isinstance(op, Mapping) or not isinstance(op.get("op"), str):
            raise PatchError(f"{where}: expected a mapping with an 'op' (add, remove, ...)")
        name = op["op"]
        where = f"operation {i} ({name} {op.get('path')})"
        try:
            if name == "copy":
                copied += len(json.dumps(_get(out, _pointer(op, "from")), default=str))
                if copied > max_copied:
                    raise PatchError(f"the values copied exceed {max_copied} characters; copy less")
            out = _operation(out, op, name)
        except PatchError as e:
            raise PatchError(f"{where}: {e}") from None
    return out


def _operation(doc: JSON, op: Mapping[str, Any], name: str) -> JSON:
    path = _pointer(op, "path")
    if name in ("add", "replace", "test") and "value" not in op:
        raise PatchError("needs a 'value'")
    if name == "add":
        return _add(doc, path, copy.deepcopy(op["value"]))
    if name == "remove":
        return _remove(doc, path)[0]
    if name == "replace":
        _get(doc, path)  # it must exist
        if not path:
            return copy.deepcopy(op["value"])
        parent = _get(doc, path[:-1])
        at = _index(parent, path[-1], adding=False) if isinstance(parent, list) else path[-1]
        parent[at] = copy.deepcopy(op["value"])
        return doc
    if name == "test":
        if _get(doc, path) != op["value"]:
            raise PatchError("the value differs; the patch does not apply to this base")
        return doc
    if name in ("move", "copy"):
        source = _pointer(op, "from")
        if name == "move" and path[: len(source)] == source and len(path) > len(source):
            raise PatchError("cannot move a value into itself")
        value = _get(doc, source)
        if name == "copy":
            value = copy.deepcopy(value)
        else:
            doc = _remove(doc, source)[0]
        return _add(doc, path, value)
    raise PatchError(f"unknown op {name!r}; use add, remove, replace, move, copy or test")


def _pointer(op: Mapping[str, Any], key: str) -> list[str]:
    text = op.get(key)
    if not isinstance(text, str) or (text and not text.startswith("/")):
        raise PatchError(f"'{key}' must be a JSON pointer such as /spec/replicas")
    return [t.replace("~1", "/").replace("~0", "~") for t in text.split("/")[1:]]


def _index(seq: list[Any], token: str, *, adding: bool) -> int:
    if adding and token == "-":
        return len(seq)
    if not token.isdigit() or (token != "0" and token.startswith("0")):
        raise PatchError(f"{token!r} is not an array index")
    i = int(token)
    if i > len(seq) or (i == len(seq) and not adding):
        raise PatchError(f"index {i} is out of range (the array has {len(seq)} items)")
    return i


def _get(doc: JSON, path: list[str]) -> JSON:
    for n, token in enumerate(path):
        if isinstance(doc, dict) and token in doc:
            doc = doc[token]
        elif isinstance(doc, list):
            doc = doc[_index(doc, token, adding=False)]
        else:
            raise PatchError(f"/{'/'.join(path[: n + 1])} does not exist")
    return doc


def _add(doc: JSON, path: list[str], value: JSON) -> JSON:
    if not path:
        return value
    parent = _get(doc, path[:-1])
    if isinstance(parent, dict):
        parent[path[-1]] = value
    elif isinstance(parent, list):
        parent.insert(_index(parent, path[-1], adding=True), value)
    else:
        raise PatchError(f"/{'/'.join(path[:-1])} is not an object or array")
    return doc


def _remove(doc: JSON, path: list[str]) -> tuple[JSON, JSON]:
    if not path:
        return None, doc
    parent = _get(doc, path[:-1])
    if isinstance(parent, dict) and path[-1] in parent:
        return doc, parent.pop(path[-1])
    if isinstance(parent, list):
        return doc, parent.pop(_index(parent, path[-1], adding=False))
    raise PatchError(f"/{'/'.join(path)} does not exist")


# ---------------------------------------------------------------- strategic merge


@dataclasses.dataclass(frozen=True)
class _Field:
    schema: str = ""  # the table entry for the value (for a list: for each element)
    key: str = ""  # a list merged by this key (Kubernetes' patchMergeKey)
    union: bool = False  # a list of scalars merged as a set (metadata.finalizers)


_META = {"metadata": _Field("ObjectMeta")}
_WORKLOAD = {**_META, "spec": _Field("WorkloadSpec")}
_SCHEMA: dict[str, dict[str, _Field]] = {
    "ObjectMeta": {"ownerReferences": _Field(key="uid"), "finalizers": _Field(union=True)},
    "PodTemplateSpec": {**_META, "spec": _Field("PodSpec")},
    "WorkloadSpec": {"template": _Field("PodTemplateSpec")},
    "CronJobSpec": {"jobTemplate": _Field("JobTemplateSpec")},
    "JobTemplateSpec": {**_META, "spec": _Field("WorkloadSpec")},
    "PodSpec": {
        **{
            f: _Field("Container", key="name")
            for f in ("containers", "initContainers", "ephemeralContainers")
        },
        **{
            f: _Field(key="name")
            for f in ("volumes", "imagePullSecrets", "schedulingGates", "resourceClaims")
        },
        "hostAliases": _Field(key="ip"),
        "topologySpreadConstraints": _Field(key="topologyKey"),
    },  # fmt: skip
    "Container": {
        "ports": _Field(key="containerPort"),
        "env": _Field(key="name"),
        "volumeMounts": _Field(key="mountPath"),
        "volumeDevices": _Field(key="devicePath"),
    },
    "ServiceSpec": {"ports": _Field(key="port")},
    "Object": _META,
    "Workload": _WORKLOAD,
    "CronJob": {**_META, "spec": _Field("CronJobSpec")},
    "Pod": {**_META, "spec": _Field("PodSpec")},
    "PodTemplate": {**_META, "template": _Field("PodTemplateSpec")},
    "Service": {**_META, "spec": _Field("ServiceSpec")},
    "Webhooks": {**_META, "webhooks": _Field(key="name")},
}
_KIND_SCHEMA = {
    **dict.fromkeys(
        ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "ReplicationController", "Job"),
        "Workload",
    ),
    "CronJob": "CronJob",
    "Pod": "Pod",
    "PodTemplate": "PodTemplate",
    "Service": "Service",
    "MutatingWebhookConfiguration": "Webhooks",
    "ValidatingWebhookConfiguration": "Webhooks",
}
_DIRECTIVE = "$patch"
_UNSUPPORTED = ("$retainKeys", "$setElementOrder/", "$deleteFromPrimitiveList/")
_DELETE = object()  # what a `$patch: delete` map merges to: the field goes away


def strategic_merge(base: JSON, patch: JSON) -> JSON:
    """Kubernetes' strategic merge patch of a built-in object (the table above says which
    lists merge by which key)."""
    kind = str(base.get("kind")) if isinstance(base, Mapping) else ""
    out = _smp_map(base, patch, _KIND_SCHEMA.get(kind, "Object"), path="")
    if out is _DELETE:
        raise PatchError("$patch: delete on the whole object; remove the file with an empty file")
    return out


def _smp_map(base: JSON, patch: JSON, schema: str, *, path: str) -> JSON:
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    for k in patch:
        if isinstance(k, str) and k.startswith(_UNSUPPORTED):
            raise PatchError(
                f"{path or '/'}: {k} is not supported by fleetops; write the whole list or "
                "use a JSON patch (a YAML list of operations)"
            )
    directive = patch.get(_DIRECTIVE)
    if directive == "delete":
        return _DELETE
    body = {k: v for k, v in patch.items() if k != _DIRECTIVE}
    if directive == "replace":
        return _strip(body)
    if directive not in (None, "merge"):
        raise PatchError(f"{path or '/'}: unknown $patch: {directive!r}; use delete or replace")
    out = dict(base) if isinstance(base, Mapping) else {}
    fields = _SCHEMA.get(schema, {})
    for k, v in body.items():
        here = f"{path}/{k}"
        field = fields.get(k, _Field())
        if v is None:
            out.pop(k, None)
            continue
        if isinstance(v, list) and (field.key or field.union):
            merged = _smp_list(out.get(k), v, field, path=here)
        elif isinstance(v, Mapping):
            merged = _smp_map(out.get(k), v, field.schema, path=here)
        else:
            merged = _strip(v)
        if merged is _DELETE:
            out.pop(k, None)
        else:
            out[k] = merged
    return out


def _smp_list(base: JSON, patch: list[Any], field: _Field, *, path: str) -> list[Any]:
    current = list(base) if isinstance(base, list) else []
    if field.union:
        seen = {_ident(v) for v in current}
        for v in patch:
            if _ident(v) not in seen:
                seen.add(_ident(v))
                current.append(copy.deepcopy(v))
        return current
    if any(isinstance(e, Mapping) and e.get(_DIRECTIVE) == "replace" for e in patch):
        return [_strip(e) for e in patch if not (isinstance(e, Mapping) and _DIRECTIVE in e)]
    out: list[Any] = current  # items are replaced, never changed: the base stays as it was
    index: dict[str, int] = {}  # merge key -> position (a file can hold thousands of items)
    for i, e in enumerate(out):
        if isinstance(e, Mapping) and field.key in e:
            index.setdefault(_ident(e[field.key]), i)
    for item in patch:
        if not isinstance(item, Mapping) or field.key not in item:
            raise PatchError(
                f"{path}: each item needs its merge key {field.key!r} (Kubernetes merges "
                "this list by it); add it, or replace the list with a JSON patch"
            )
        key = _ident(item[field.key])
        at = index.get(key)
        merged = _smp_map(out[at] if at is not None else None, item, field.schema,
                          path=f"{path}[{field.key}={item[field.key]}]")  # fmt: skip
        if merged is _DELETE:
            if at is not None:
                out[at] = _DELETE
                del index[key]
        elif at is None:
            index[key] = len(out)
            out.append(merged)
        else:
            out[at] = merged
    return [e for e in out if e is not _DELETE]


def _ident(value: JSON) -> str:
    """A merge key as a dict key (keys may be maps or lists)."""
    try:
        return json.dumps(value, sort_keys=True, default=str)
    except TypeError:  # a map with keys of mixed types cannot be sorted
        return repr(value)


def _strip(value: JSON) -> JSON:
    """A patch value with its `$patch` directives removed (what a replace writes)."""
    if isinstance(value, Mapping):
        return {k: _strip(v) for k, v in value.items() if k != _DIRECTIVE}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value
