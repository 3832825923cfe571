"""Reads rendered manifests (multi-document YAML, `kind: List`) into resources.

Pure: no cluster, no network. A bad document never hides the good ones: each problem comes
back as a `Problem` naming the file and line, next to every resource that did parse. Error
messages never quote document content, because a document may be a Secret.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Iterable, Mapping
from typing import Any

from fleetops.agent import hooks
from fleetops.proto import yamlsafe
from fleetops.proto.v1 import types_pb2

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Key:
    """What identifies an object in a cluster, independent of its API version."""

    group: str
    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        kind = f"{self.kind}.{self.group}" if self.group else self.kind
        return f"{kind} {self.namespace}/{self.name}" if self.namespace else f"{kind} {self.name}"


@dataclasses.dataclass(frozen=True)
class Resource:
    """One object from a bundle, as Git has it (namespace possibly still empty)."""

    obj: Mapping[str, Any]
    source: str
    line: int

    @property
    def api_version(self) -> str:
        return str(self.obj["apiVersion"])

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    @property
    def version(self) -> str:
        return self.api_version.rpartition("/")[2]

    @property
    def kind(self) -> str:
        return str(self.obj["kind"])

    @property
    def name(self) -> str:
        return str(self.obj["metadata"]["name"])

    @property
    def namespace(self) -> str:
        return str(self.obj["metadata"].get("namespace") or "")

    @property
    def key(self) -> Key:
        return Key(group=self.group, kind=self.kind, namespace=self.namespace, name=self.name)

    @property
    def annotations(self) -> Mapping[str, str]:
        return self.obj["metadata"].get("annotations") or {}

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"


@dataclasses.dataclass(frozen=True)
class Problem:
    """A document that could not become a resource, and why."""

    source: str
    line: int
    message: str
    kind: str = ""
    name: str = ""

    def __str__(self) -> str:
        what = f"{self.kind} {self.name}: " if self.kind or self.name else ""
        return f"{self.source}:{self.line}: {what}{self.message}"


@dataclasses.dataclass(frozen=True)
class Parsed:
    resources: list[Resource]
    problems: list[Problem]


def parse(*, source: str, text: str, revision: str = "") -> Parsed:
    """Parse one file of YAML documents; `List` objects are expanded into their items.

    Through the bounded loader: a document whose aliases, depth or size go over its caps (an
    alias bomb) is a problem of this file, never the agent's memory or time."""
    resources: list[Resource] = []
    problems: list[Problem] = []
    for doc in yamlsafe.documents(text, source=source):
        if doc.error is not None:
            # Only the problem, never the snippet: the document may be a Secret.
            message = yamlsafe.describe(doc.error).removeprefix(f"line {doc.line}: ")
            problems.append(Problem(source, doc.line, f"invalid YAML: {message}"))
            continue
        _collect(doc.value, source, doc.line, resources, problems, revision=revision)
    return Parsed(resources, problems)


def _collect(
    doc: Any,
    source: str,
    line: int,
    resources: list[Resource],
    problems: list[Problem],
    *,
    revision: str,
) -> None:
    if doc is None:
        return
    if not isinstance(doc, dict):
        problems.append(Problem(source, line, "not a Kubernetes object (expected a mapping)"))
        return
    kind = doc.get("kind")
    if isinstance(kind, str) and kind.endswith("List") and isinstance(doc.get("items"), list):
        for item in doc["items"]:
            _collect(item, source, line, resources, problems, revision=revision)
        return
    doc = hooks.with_generated_name(doc, revision=revision)  # a hook may use generateName
    problem = validate(doc)
    if problem:
        meta = doc["metadata"] if isinstance(doc.get("metadata"), dict) else {}
        problems.append(
            Problem(source, line, problem, kind=str(kind or ""), name=str(meta.get("name") or ""))
        )
        return
    resources.append(Resource(doc, source, line))


def validate(doc: Mapping[str, Any]) -> str:
    """What is missing for `doc` to be addressable; empty when it is."""
    missing = []
    if not isinstance(doc.get("apiVersion"), str) or not doc.get("apiVersion"):
        missing.append("apiVersion")
    if not isinstance(doc.get("kind"), str) or not doc.get("kind"):
        missing.append("kind")
    meta = doc.get("metadata")
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str) or not meta["name"]:
        if not (isinstance(meta, dict) and meta.get("generateName")):
            missing.append("metadata.name")
        else:
            return (
                "metadata.generateName is only for sync hooks: GitOps needs a fixed metadata.name"
            )
    if missing:
        return (
            f"missing {', '.join(missing)}: every object needs apiVersion, kind and metadata.name"
        )
    return ""


def parse_bundle(bundle: types_pb2.Bundle) -> Parsed:
    resources: list[Resource] = []
    problems: list[Problem] = []
    for manifest in bundle.manifests:
        parsed = parse(source=manifest.source, text=manifest.yaml, revision=bundle.revision)
        resources += parsed.resources
        problems += parsed.problems
    return Parsed(resources, problems)


def manifest_files(root: pathlib.Path) -> Iterable[pathlib.Path]:
    """Every manifest file under root, recursively, in a stable order, hidden ones skipped."""
    if root.is_file():
        yield root
        return
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if path.is_file() and path.suffix in MANIFEST_SUFFIXES:
            yield path


def bundle_from_dir(
    root: pathlib.Path, *, app: str, namespace: str, revision: str = ""
) -> types_pb2.Bundle:
    """A Bundle from a directory of rendered manifests (what `fleetops-agent apply` reads)."""
    bundle = types_pb2.Bundle(app=app, revision=revision, namespace=namespace)
    base = root if root.is_dir() else root.parent
    for path in manifest_files(root):
        bundle.manifests.add(source=str(path.relative_to(base)), yaml=path.read_text())
    return bundle
