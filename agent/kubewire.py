"""What the API server sends, read: a Status object as `errors.KubeError` of the right kind
(NotFound, Conflict with its managers, Invalid, Forbidden naming the verb and resource), a
transport failure as the few words a person can act on, and a watch's stream as its events
(an ERROR event, such as 410 Gone, raised as the error it carries). Pure: no client.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

from urllib3 import exceptions as transport

from fleetops.agent import errors


class Timeouts(Protocol):
    @property
    def connect(self) -> float: ...
    @property
    def read(self) -> float: ...


def events(chunks: Iterable[bytes], *, path: str) -> Iterator[dict[str, Any]]:
    """A watch's events from the chunks of its response (one JSON object a line)."""
    pending = b""
    for chunk in chunks:
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            if not line.strip():
                continue
            event: dict[str, Any] = json.loads(line)
            if event.get("type") == "ERROR":  # a Status: 410 Gone when the version is too old
                status = event.get("object") or {}
                raise error(
                    int(status.get("code") or 500),
                    body=json.dumps(status),
                    http_reason=status.get("reason"),
                    method="WATCH",
                    path=path,
                )
            yield event


_VERBS = {"GET": "get", "POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
_CONFLICT_MANAGER = re.compile(r'conflicts? with "([^"]+)"')


def error(
    status: int | None, *, body: Any, http_reason: Any, method: str, path: str
) -> errors.KubeError:
    """The Status object the API server sent, as one of our errors."""
    message = ""
    reason = ""
    try:
        doc = json.loads(body or "{}")
        message = str(doc.get("message") or "")
        reason = str(doc.get("reason") or "")
    except (ValueError, TypeError, AttributeError):
        message = str(http_reason or "")
    code = int(status or 0)
    message = message or f"{method} {path}: HTTP {code}"
    if code == 404:
        return errors.NotFound(message, status=404, reason=reason)
    if code == 409 and reason == "Conflict" and "conflict" in message.lower():
        managers = sorted(set(_CONFLICT_MANAGER.findall(message)))
        return errors.Conflict(message, managers=managers)
    if code in (400, 422):
        return errors.Invalid(message, status=code, reason=reason)
    if code == 403:
        namespace, resource = _scope(path)
        verb = _VERBS.get(method, method.lower())
        return errors.Forbidden(message, namespace=namespace, resource=resource, verb=verb)
    return errors.KubeError(message, status=code, reason=reason)


def _scope(path: str) -> tuple[str, str]:
    """(namespace, resource) of a request path; the namespace is "" for cluster scope."""
    parts = [p for p in path.split("/") if p]
    rest = parts[2:] if parts[:1] == ["api"] else parts[3:]  # /api/v1/... or /apis/g/v/...
    if len(rest) >= 3 and rest[0] == "namespaces":
        return rest[1], rest[2]
    return "", rest[0] if rest else ""


def transport_cause(e: BaseException, timeouts: Timeouts) -> str:
    """Why a request got no answer, in a few words a person can act on."""
    while isinstance(e, transport.MaxRetryError) and e.reason is not None:
        e = e.reason
    if isinstance(e, transport.NewConnectionError):  # before ConnectTimeoutError: a subclass
        inner = e.__context__ or e.__cause__
        if isinstance(inner, OSError) and inner.strerror:
            return inner.strerror.lower()
        return str(e).rpartition(": ")[2] or "connection failed"
    if isinstance(e, transport.ConnectTimeoutError):
        return f"no connection within {timeouts.connect:g} s (connect timeout)"
    if isinstance(e, transport.ReadTimeoutError):
        return (
            f"it accepted the connection but sent no answer in time (timeouts: connect "
            f"{timeouts.connect:g} s, read {timeouts.read:g} s)"
        )
    if isinstance(e, transport.ProtocolError):
        inner = e.args[1] if len(e.args) > 1 else None
        what = inner.strerror if isinstance(inner, OSError) and inner.strerror else inner
        return f"the connection broke ({what or e})".lower()
    if isinstance(e, OSError) and e.strerror:
        return e.strerror.lower()
    return f"{type(e).__name__}: {e}"
