"""The one YAML loader for untrusted text, shared by hub and agent.

Everything fleetops reads from a repository or a bundle (hub.yaml, fleet.yaml, manifests,
kustomization.yaml, Helm values, agent bundles) is written by someone the process does not
trust. PyYAML's safe loader refuses to build arbitrary objects, but it still lets a 400-byte
document stand for a billion nodes through aliases (the "billion laughs"), nest as deep as it
likes, or be as large as it likes; whatever walks the result afterwards (a merge, a JSON dump,
a diff) then stalls or runs out of memory.

This module parses with libyaml's event parser when it is there (PyYAML's pure one otherwise)
and composes the node graph itself, iteratively, counting as it goes and never expanding an
alias: an alias adds the size of the node it refers to, so a bomb is refused after a few
hundred events, in microseconds. The caps (`Limits`): input size, nesting depth (what an alias
stands for counts at its full depth), aliases per document, nodes per document (aliases
expanded in the count only) and nodes added by aliases across the file. A recursive alias (a
node that contains itself) is refused too: no Kubernetes object is cyclic. Hitting a cap raises
`YAMLLimitError`, a `yaml.YAMLError`, whose message names the file, the line and the cap, and
says what to do. Syntax errors stay PyYAML's own `MarkedYAMLError`s; `describe` turns any of
them into one line that never quotes the document (it may be a Secret).

It must never construct anything but plain data (SafeConstructor), never expand an alias to
measure it, and never recurse per level of the input.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import yaml
from yaml import constructor, events, nodes, resolver

__all__ = ["Document", "Limits", "YAMLLimitError", "describe", "documents", "load", "load_all"]


@dataclasses.dataclass(frozen=True)
class Limits:
    """Caps for one file of YAML. The defaults fit every real Kubernetes manifest: a rendered
    Helm chart (up to the hub's 32 MiB render output limit) parses, a bomb does not."""

    max_chars: int = 32 * 1024 * 1024  # input size
    max_depth: int = 100  # nesting, with aliases counted at the depth they stand for
    max_aliases: int = 100  # alias references (*name) per document
    max_nodes: int = 1_000_000  # nodes per document, each alias counted as what it stands for
    max_alias_nodes: int = 1_000_000  # nodes that aliases add, over the whole file


DEFAULT = Limits()


class YAMLLimitError(yaml.YAMLError):
    """A document went over one of the `Limits`; `limit` names which one."""

    def __init__(self, *, source: str, line: int, limit: str, detail: str) -> None:
        where = f"{source}:{line}" if line else source
        super().__init__(f"{where}: YAML refused: {detail}")
        self.source = source
        self.line = line
        self.limit = limit
        self.detail = detail


@dataclasses.dataclass(frozen=True)
class Document:
    """One document of a stream: its value, or the error that kept it from being read.
    `line` is 1-based, where the document (or the error) starts."""

    line: int
    value: Any = None
    error: yaml.YAMLError | None = None


def describe(error: yaml.YAMLError) -> str:
    """One line for a YAML error, with its line number, without quoting the document."""
    if isinstance(error, YAMLLimitError):
        return f"line {error.line}: {error.detail}" if error.line else error.detail
    if isinstance(error, yaml.MarkedYAMLError):
        mark = error.problem_mark or error.context_mark
        what = error.problem or error.context or type(error).__name__
        return f"line {mark.line + 1}: {what}" if mark else str(what)
    return type(error).__name__


def load(text: str, *, source: str, limits: Limits = DEFAULT) -> Any:
    """The single document in `text` (None when there is none), like `yaml.safe_load`."""
    values: list[Any] = []
    for doc in documents(text, source=source, limits=limits):
        if doc.error is not None:
            raise doc.error
        if values:
            raise yaml.composer.ComposerError(
                None, None, "expected a single document in the stream", _mark(source, doc.line)
            )
        values.append(doc.value)
    return values[0] if values else None


def load_all(text: str, *, source: str, limits: Limits = DEFAULT) -> list[Any]:
    """Every document in `text`, like `list(yaml.safe_load_all(text))`; the first error raises."""
    out = []
    for doc in documents(text, source=source, limits=limits):
        if doc.error is not None:
            raise doc.error
        out.append(doc.value)
    return out


def documents(text: str, *, source: str, limits: Limits = DEFAULT) -> Iterator[Document]:
    """Each document with its line. A document that does not construct (a bad tag, an
    unhashable key) is an error entry and the next one is still read; a syntax error or a
    cap ends the stream after its error entry, since the parser cannot resynchronise."""
    if len(text) > limits.max_chars:
        yield Document(
            1,
            error=YAMLLimitError(
                source=source,
                line=0,
                limit="max_chars",
                detail=f"{len(text)} characters, over the {limits.max_chars} limit; "
                "split it into smaller files",
            ),
        )
        return
    parser = _parser(text)
    budget = _Budget(source, limits)
    try:
        while True:
            line = 1
            try:
                if parser.check_event(events.StreamStartEvent):
                    parser.get_event()
                if parser.check_event(events.StreamEndEvent):
                    return
                line = _line(parser.peek_event())
                node = _compose(parser, budget)
            except yaml.YAMLError as e:
                yield Document(_error_line(e, line), error=e)
                return
            line = node.start_mark.line + 1
            try:
                value = _Constructor().construct_document(node)
            except yaml.YAMLError as e:
                yield Document(_error_line(e, line), error=e)
                continue
            except (ValueError, TypeError, OverflowError, RecursionError) as e:
                # e.g. an integer of more digits than Python converts: a bad document,
                # not a crash
                problem = f"cannot read a value: {e}"
                err = constructor.ConstructorError(None, None, problem, node.start_mark)
                yield Document(line, error=err)
                continue
            yield Document(line, value=value)
    finally:
        parser.dispose()


class _Constructor(constructor.SafeConstructor):
    """Plain data only, as JSON can hold it (what Kubernetes makes of YAML): a timestamp
    stays the string it was written as, and `!!binary` and `!!set` are refused with a
    message, never turned into bytes or a set that the agent could not send. One per
    document, so a failed document leaves no state behind."""

    def construct_yaml_timestamp(self, node: nodes.ScalarNode) -> Any:
        return self.construct_scalar(node)

    def _unsupported(self, node: nodes.Node) -> Any:
        raise constructor.ConstructorError(
            None,
            None,
            f"{node.tag.rsplit(':', 1)[-1]} values are not supported in manifests (Kubernetes "
            "reads YAML as JSON): write a string, e.g. base64 under a Secret's data",
            node.start_mark,
        )


_Constructor.yaml_constructors = {
    **constructor.SafeConstructor.yaml_constructors,
    "tag:yaml.org,2002:timestamp": _Constructor.construct_yaml_timestamp,
    "tag:yaml.org,2002:binary": _Constructor._unsupported,
    "tag:yaml.org,2002:set": _Constructor._unsupported,
}


class _PyParser(yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser):
    """PyYAML's pure-Python event parser, for when libyaml is not installed."""

    def __init__(self, text: str) -> None:
        yaml.reader.Reader.__init__(self, text)
        yaml.scanner.Scanner.__init__(self)
        yaml.parser.Parser.__init__(self)


def _parser(text: str) -> Any:
    cparser = getattr(getattr(yaml, "cyaml", None), "CParser", None)
    return cparser(text) if cparser is not None else _PyParser(text)


def _mark(source: str, line: int) -> yaml.Mark:
    return yaml.Mark(source, 0, max(line - 1, 0), 0, None, 0)  # no buffer: no snippet


def _line(event: events.Event) -> int:
    mark = event.start_mark
    return mark.line + 1 if mark is not None else 1


def _error_line(error: yaml.YAMLError, default: int) -> int:
    if isinstance(error, YAMLLimitError):
        return error.line or default
    if isinstance(error, yaml.MarkedYAMLError):
        mark = error.problem_mark or error.context_mark
        if mark is not None:
            return int(mark.line) + 1
    return default


@dataclasses.dataclass
class _Budget:
    """What the file has spent so far, and the caps it is spent against."""

    source: str
    limits: Limits
    alias_nodes: int = 0

    def fail(self, event: events.Event, limit: str, detail: str) -> YAMLLimitError:
        return YAMLLimitError(source=self.source, line=_line(event), limit=limit, detail=detail)


@dataclasses.dataclass
class _Anchor:
    node: nodes.Node
    size: int = 1  # nodes it stands for, aliases inside it expanded in the count
    height: int = 1  # levels it spans, itself included
    closed: bool = False


@dataclasses.dataclass
class _Open:
    """A sequence or mapping whose end event has not come yet."""

    node: nodes.CollectionNode
    anchor: _Anchor
    size: int = 1
    height: int = 1
    key: nodes.Node | None = None  # a mapping's key waiting for its value


_resolver = resolver.Resolver()


def _resolve(kind: type[nodes.Node], value: str | None, implicit: Any) -> str:
    """The tag of an untagged node, by PyYAML's YAML 1.1 rules (as safe_load does)."""
    return str(_resolver.resolve(kind, value, implicit))  # type: ignore[no-untyped-call]


def _compose(parser: Any, budget: _Budget) -> nodes.Node:
    """One document's node graph, built from events with a stack instead of recursion.

    Counts as it goes: `count` is the document's size with every alias standing for the
    whole node it refers to, which is what any consumer of the result will walk."""
    limits = budget.limits
    parser.get_event()  # DocumentStartEvent
    anchors: dict[str, _Anchor] = {}
    stack: list[_Open] = []
    count = 0
    aliases = 0
    while True:
        event = parser.get_event()
        kind = type(event)
        start: Any = event.start_mark  # libyaml's Mark or PyYAML's: the same fields
        node: nodes.Node
        if kind is events.ScalarEvent:
            tag = event.tag
            if tag is None or tag == "!":
                tag = _resolve(nodes.ScalarNode, event.value, event.implicit)
            end: Any = event.end_mark
            node = nodes.ScalarNode(tag, event.value, start, end, style=event.style)
            size = height = 1
            count += 1
            if event.anchor is not None:
                _define(anchors, event, _Anchor(node, closed=True))
        elif kind is events.AliasEvent:
            anchor = anchors.get(event.anchor)
            if anchor is None:
                raise yaml.composer.ComposerError(
                    None, None, f"found undefined alias {event.anchor!r}", start
                )
            if not anchor.closed:
                raise budget.fail(
                    event,
                    "recursion",
                    f"alias *{event.anchor} refers to a node that contains it; recursive "
                    "documents are not allowed (no Kubernetes object is cyclic)",
                )
            aliases += 1
            if aliases > limits.max_aliases:
                raise budget.fail(
                    event,
                    "max_aliases",
                    f"more than {limits.max_aliases} aliases (*name) in one document; write "
                    "the values out instead of referring to anchors",
                )
            node, size, height = anchor.node, anchor.size, anchor.height
            count += size
            budget.alias_nodes += size
        elif kind is events.SequenceStartEvent or kind is events.MappingStartEvent:
            if len(stack) >= limits.max_depth:
                raise budget.fail(
                    event,
                    "max_depth",
                    f"nested deeper than {limits.max_depth} levels; flatten the document",
                )
            tag = event.tag
            collection: nodes.CollectionNode
            if kind is events.SequenceStartEvent:
                if tag is None or tag == "!":
                    tag = _resolve(nodes.SequenceNode, None, event.implicit)
                collection = nodes.SequenceNode(tag, [], start, None, flow_style=event.flow_style)
            else:
                if tag is None or tag == "!":
                    tag = _resolve(nodes.MappingNode, None, event.implicit)
                collection = nodes.MappingNode(tag, [], start, None, flow_style=event.flow_style)
            count += 1
            opened = _Open(collection, _Anchor(collection))
            if event.anchor is not None:
                _define(anchors, event, opened.anchor)
            stack.append(opened)
            continue
        elif kind is events.SequenceEndEvent or kind is events.MappingEndEvent:
            done = stack.pop()
            done.node.end_mark = event.end_mark
            done.anchor.size, done.anchor.height = done.size, done.height
            done.anchor.closed = True
            node, size, height = done.node, done.size, done.height
        else:  # pragma: no cover - the parser yields nothing else inside a document
            raise yaml.composer.ComposerError(None, None, f"unexpected {kind.__name__}", start)
        if count > limits.max_nodes:
            raise budget.fail(
                event,
                "max_nodes",
                f"the document stands for more than {limits.max_nodes} nodes once its "
                "aliases are expanded (an alias bomb?); write the values out or split it",
            )
        if budget.alias_nodes > limits.max_alias_nodes:
            raise budget.fail(
                event,
                "max_alias_nodes",
                f"aliases in this file stand for more than {limits.max_alias_nodes} nodes "
                "in total; write the values out instead of referring to anchors",
            )
        if not stack:
            break
        parent = stack[-1]
        if len(stack) + height > limits.max_depth:
            raise budget.fail(
                event,
                "max_depth",
                f"nested deeper than {limits.max_depth} levels once aliases are expanded; "
                "flatten the document",
            )
        parent.size += size
        if height >= parent.height:
            parent.height = height + 1
        if isinstance(parent.node, nodes.MappingNode):
            if parent.key is None:
                parent.key = node
            else:
                parent.node.value.append((parent.key, node))
                parent.key = None
        else:
            parent.node.value.append(node)
    parser.get_event()  # DocumentEndEvent
    return node


def _define(anchors: dict[str, _Anchor], event: events.NodeEvent, anchor: _Anchor) -> None:
    """Register the event's anchor (&name); a name may be defined once per document."""
    name = str(event.anchor)
    first = anchors.get(name)
    if first is not None:
        line = first.node.start_mark.line + 1
        mark: Any = event.start_mark
        raise yaml.composer.ComposerError(
            None, None, f"found duplicate anchor &{name} (first defined on line {line})", mark
        )
    anchors[name] = anchor
