"""Measuring one rollout gate for one cluster: a Prometheus query against its threshold, or a
call to a signed webhook. One `Measurement` (pass, fail, nodata or error, with a line a person
can act on); never a decision: the `noData` policy, failure limits, bake times and manual
gates are the state machine's (hub.rollout). Never raises for network, HTTP or parse trouble
(that is an "error" measurement), and never puts a bearer token or webhook key in a message.

Prometheus: `{{cluster}}`, `{{app}}`, `{{revision}}` and `{{step}}` in the query are filled with
the subject's values escaped for a PromQL double-quoted string, and the query is POSTed to
`{url}/api/v1/query` (instant query; `Authorization: Bearer <bearerTokenFile>`, read each time).
No series or NaN is "nodata"; several series must all pass and the worst is reported.

Webhook: a POST of compact JSON with sorted keys,
`{"app":...,"cluster":...,"gate":...,"revision":...,"step":...,"timestamp":<unix seconds>}`,
`Content-Type: application/json`, `User-Agent: fleetops-hub`. Any 2xx passes; any other
status fails; a redirect is never followed (an "error": point the url at the real endpoint).
The reply's `{"message": "..."}` (or its first line) is shown, as plain text, 200 characters at
most.

Signature (when the gate has a secretFile): the header
`X-Fleetops-Signature: sha256=<hex>`, where hex is HMAC-SHA256 over the exact request body
bytes, keyed with the file's content minus its trailing newline(s). A receiver must compute the
HMAC over the raw body it received (before parsing the JSON), compare it in constant time
(`verify_signature` does both), and should refuse a timestamp far from its own clock so an old
call cannot be replayed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import math
import pathlib
import re
import time
import unicodedata
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Any

from fleetops.hub import gatehttp, rolloutspec

VERDICTS = ("pass", "fail", "nodata", "error")
MESSAGE_CAP = 200  # characters of a remote message shown
SIGNATURE_HEADER = "X-Fleetops-Signature"
_HOLE = re.compile(r"\{\{\s*(cluster|app|revision|step)\s*\}\}")


@dataclasses.dataclass(frozen=True)
class Subject:
    """What is being measured: one cluster taking one app's revision in one step."""

    app: str
    revision: str  # full commit SHA
    cluster: str
    step: str


@dataclasses.dataclass(frozen=True)
class Measurement:
    gate: str
    cluster: str
    verdict: str  # "pass" | "fail" | "nodata" | "error"
    value: float | None  # the number measured (None for webhooks, no data, errors)
    message: str  # one plain line a person can act on
    at: float  # when it was measured (the injected clock)


async def measure(
    gate: rolloutspec.Gate, subject: Subject, *, now: Callable[[], float] = time.time
) -> Measurement:
    """One measurement of `gate` for `subject`. ValueError for a manual gate (it is approved,
    never measured)."""
    at = now()
    if gate.prometheus is None and gate.webhook is None:
        raise ValueError(f"gate {gate.name} is manual: it passes on promote, never measured")
    try:
        if gate.prometheus is not None:
            verdict, value, message, secrets = await _prometheus(
                gate.name, gate.prometheus, subject
            )
        else:
            verdict, value, message, secrets = await _webhook(gate, subject, at=at)
    except Exception as e:  # an answer nobody planned for (nesting, huge numbers): an error
        verdict, value, secrets = "error", None, []
        message = f"{gate.name}: the answer could not be read ({type(e).__name__})"
    return Measurement(gate.name, subject.cluster, verdict, value, _redact(message, secrets), at)


def fill(query: str, subject: Subject) -> str:
    """The query with its placeholders replaced by the subject's values, each escaped for a
    PromQL double-quoted string (so a value cannot end the string it is put in)."""
    values = dataclasses.asdict(subject)
    return _HOLE.sub(lambda m: _promql_escape(str(values[m.group(1)])), query)


def _promql_escape(value: str) -> str:
    out = value.replace("\\", "\\\\").replace('"', '\\"')
    return out.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")


def sign(body: bytes, key: bytes) -> str:
    """The X-Fleetops-Signature value for `body` under `key`."""
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def verify_signature(body: bytes, header: str, key: bytes) -> bool:
    """Whether `header` (an X-Fleetops-Signature value) signs `body` with `key`; the
    comparison takes the same time wherever the first wrong character is."""
    given = header.strip().encode("utf-8", "replace")
    return hmac.compare_digest(sign(body, key).encode(), given)


# -- Prometheus


async def _prometheus(
    name: str, spec: rolloutspec.Prometheus, subject: Subject
) -> tuple[str, float | None, str, list[str]]:
    url = f"{spec.url}/api/v1/query"
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "User-Agent": "fleetops-hub",
        "Accept": "application/json",
    }
    secrets: list[str] = []
    if spec.bearer_token_file:
        token = _read_secret(spec.bearer_token_file, what="bearerTokenFile", gate=name)
        if isinstance(token, _Refusal):
            return "error", None, token.message, []
        text = token.decode("utf-8", "replace")
        secrets.append(text)
        if not text or any(ord(c) < 0x21 or ord(c) > 0x7E for c in text):
            return (
                "error",
                None,
                f"{name}: bearerTokenFile {spec.bearer_token_file} is empty or holds characters "
                "an HTTP header cannot carry; put the token alone in it",
                secrets,
            )
        headers["Authorization"] = f"Bearer {text}"
    form = {"query": fill(spec.query, subject), "timeout": f"{spec.timeout:g}"}
    body = urllib.parse.urlencode(form).encode()
    reply = await gatehttp.post(url, body=body, headers=headers, seconds=spec.timeout)
    if isinstance(reply, gatehttp.Trouble):
        return "error", None, f"{name}: {reply.reason}", secrets
    verdict, value, message = _judge(name, spec, url=reply.shown_url, reply=reply)
    return verdict, value, message, secrets


def _judge(
    name: str, spec: rolloutspec.Prometheus, *, url: str, reply: gatehttp.Reply
) -> tuple[str, float | None, str]:
    """The verdict from Prometheus' answer to an instant query."""
    if 300 <= reply.status < 400:
        return "error", None, f"{name}: {gatehttp.redirect_reason(reply)}"
    try:
        doc = json.loads(reply.body)
    except (ValueError, RecursionError):  # not JSON, or nested past the parser
        doc = None
    if not isinstance(doc, dict) or doc.get("status") not in ("success", "error"):
        return (
            "error",
            None,
            f"{name}: {url} answered HTTP {reply.status} but not a Prometheus API answer: "
            f"{_first_line(reply.body) or '(empty)'}; check the gate's url",
        )
    if doc["status"] == "error":
        error_type = _plain(str(doc.get("errorType", "error")))
        said = _plain(str(doc.get("error", "")))
        return "error", None, f"{name}: Prometheus answered {error_type}: {said}"
    data = doc.get("data")
    kind = data.get("resultType") if isinstance(data, dict) else None
    result = data.get("result") if isinstance(data, dict) else None
    try:
        if kind == "scalar" and isinstance(result, list):
            values = [float(result[1])]
        elif kind == "vector" and isinstance(result, list):
            values = [float(series["value"][1]) for series in result]
        else:
            return (
                "error",
                None,
                f"{name}: the query returned a {_plain(str(kind))}, not a number; write an "
                "instant query that gives one number (a scalar or a vector), e.g. sum(...)",
            )
    except (TypeError, ValueError, KeyError, IndexError):
        return "error", None, f"{name}: {url} answered a malformed {kind} result"
    return _threshold(name, spec, values)


def _threshold(
    name: str, spec: rolloutspec.Prometheus, values: Sequence[float]
) -> tuple[str, float | None, str]:
    policy = f"(noData: {spec.no_data})"
    if not values:
        return "nodata", None, f"{name}: the query returned no series {policy}"
    numbers = [v for v in values if not math.isnan(v)]
    if not numbers:
        what = "NaN" if len(values) == 1 else f"NaN in all {len(values)} series"
        return (
            "nodata",
            None,
            f"{name}: the query returned {what} (nothing to measure yet, e.g. no traffic: "
            f"0/0) {policy}",
        )
    rule = spec.threshold
    worst = max(numbers, key=lambda v: _badness(rule, v))
    ok = all(rule.passes(v) for v in numbers)
    verdict = "pass" if ok else "fail"
    shown = f"{name} = {worst:g}"
    if len(values) > 1:
        shown += f", the worst of {len(numbers)} series"
        if len(numbers) < len(values):
            shown += f" ({len(values) - len(numbers)} more returned NaN, not counted)"
        return verdict, worst, f"{shown} (each passes when {rule})"
    return verdict, worst, f"{shown} (passes when {rule})"


def _badness(rule: rolloutspec.Threshold, value: float) -> float:
    """Orders values so the one furthest from passing is the greatest."""
    if rule.op in ("<", "<="):
        return value
    if rule.op in (">", ">="):
        return -value
    distance = abs(value - rule.limit)
    return distance if rule.op == "==" else -distance


# -- Webhook


async def _webhook(
    gate: rolloutspec.Gate, subject: Subject, *, at: float
) -> tuple[str, float | None, str, list[str]]:
    spec = gate.webhook
    assert spec is not None
    body = payload(subject, gate=gate.name, at=at)
    headers = {"Content-Type": "application/json", "User-Agent": "fleetops-hub"}
    secrets: list[str] = []
    if spec.secret_file:
        key = _read_secret(spec.secret_file, what="secretFile", gate=gate.name)
        if isinstance(key, _Refusal):
            return "error", None, key.message, []
        secrets.append(key.decode("utf-8", "replace"))
        if not key:
            return (
                "error",
                None,
                f"{gate.name}: secretFile {spec.secret_file} is empty; put the webhook's key in it",
                [],
            )
        headers[SIGNATURE_HEADER] = sign(body, key)
    reply = await gatehttp.post(spec.url, body=body, headers=headers, seconds=spec.timeout)
    if isinstance(reply, gatehttp.Trouble):
        return "error", None, f"{gate.name}: {reply.reason}", secrets
    if 300 <= reply.status < 400:
        return "error", None, f"{gate.name}: {gatehttp.redirect_reason(reply)}", secrets
    said = _reply_message(reply.body)
    verdict = "pass" if 200 <= reply.status < 300 else "fail"
    message = f"{gate.name}: webhook answered {reply.status}"
    message += f": {said}" if said else " (no message)"
    return verdict, None, message, secrets


def payload(subject: Subject, *, gate: str, at: float) -> bytes:
    """The exact bytes a webhook gate POSTs (and signs)."""
    doc = {
        "app": subject.app,
        "cluster": subject.cluster,
        "gate": gate,
        "revision": subject.revision,
        "step": subject.step,
        "timestamp": round(at, 3),
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _reply_message(body: bytes) -> str:
    """A receiver's `{"message": ...}`, else the body's first line; plain text, capped."""
    try:
        doc: Any = json.loads(body)
    except (ValueError, RecursionError):  # not JSON, or nested past the parser
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("message"), str):
        return _plain(doc["message"])
    return _first_line(body)


# -- text and secrets


@dataclasses.dataclass(frozen=True)
class _Refusal:
    message: str


def _read_secret(file: str, *, what: str, gate: str) -> bytes | _Refusal:
    """A key or token file's content without its trailing newline(s); a _Refusal naming the
    file and the fix (never its content) when it cannot be read."""
    try:
        return pathlib.Path(file).read_bytes().rstrip(b"\r\n")
    except OSError as e:
        return _Refusal(
            f"{gate}: cannot read {what} {file}: {e.strerror or type(e).__name__}; create it "
            f"(readable by the hub) or fix the {what} of gate {gate} in hub.yaml"
        )


def _first_line(body: bytes) -> str:
    text = body.decode("utf-8", "replace").strip()
    return _plain(text.splitlines()[0] if text else "")


def _plain(text: str) -> str:
    """One line of plain text: control and format characters (terminal escapes, bidi
    overrides) removed, at most MESSAGE_CAP characters."""
    text = " ".join(text.split())
    text = "".join(c for c in text if unicodedata.category(c) not in ("Cc", "Cf"))
    return text if len(text) <= MESSAGE_CAP else text[: MESSAGE_CAP - 1] + "…"


def _redact(message: str, secrets: Sequence[str]) -> str:
    """The message with every secret of four characters or more replaced (a receiver or a
    proxy may echo what it was sent)."""
    for secret in secrets:
        if len(secret) >= 4:
            message = message.replace(secret, "<redacted>")
    cut = message.endswith("…")  # capped: the cut may have left the start of a secret
    body = message[:-1] if cut else message
    for secret in secrets:
        for k in range(len(secret) - 1, 3, -1):
            if body.endswith(secret[:k]):
                body = body[:-k] + "<redacted>"
                break
    return body + ("…" if cut else "")
