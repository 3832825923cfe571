"""The hub's small HTTP side: Git webhooks, Prometheus /metrics and /healthz.

Webhooks (GitHub, Gitea: HMAC-SHA256 of the body; GitLab: secret token header) are verified
before anything else is read, and refused cheaply: unknown repo, no secret configured, a body
over 1 MiB or a bad signature all answer at once without touching Git. A valid push only
wakes the repo's poller, which fetches at once. Written on asyncio streams so the hub needs
no web framework; it never logs request bodies or secrets.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
from collections import Counter
from typing import Any

from fleetops.hub import core, imagestatus
from fleetops.proto.v1 import types_pb2

log = logging.getLogger("fleetops.hub")
MAX_BODY = 1024 * 1024
_REASONS = {
    200: "OK",
    202: "Accepted",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Payload Too Large",
    503: "Service Unavailable",
}


def verify(headers: dict[str, str], body: bytes, secret: str) -> bool:
    """Whether the push is signed with `secret`. Compared as bytes, in constant time: a header
    with characters outside ASCII is just a wrong signature."""
    if not secret:
        return False
    key = secret.encode()
    digest = hmac.new(key, body, hashlib.sha256).hexdigest().encode()

    def given(name: str) -> bytes:
        return headers.get(name, "").encode("latin-1", errors="replace")

    github = given("x-hub-signature-256")
    if github:
        return hmac.compare_digest(github, b"sha256=" + digest)
    gitea = given("x-gitea-signature") or given("x-gogs-signature")
    if gitea:
        return hmac.compare_digest(gitea, digest)
    gitlab = given("x-gitlab-token")
    if gitlab:
        return hmac.compare_digest(gitlab, key)
    return False


def label(value: str) -> str:
    """A Prometheus label value, escaped as the text format wants (backslash, quote, newline):
    whatever a name holds, it cannot end the label or start a line."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _enum_name(enum: Any, value: int) -> str:
    try:
        return str(enum.Name(value))
    except ValueError:
        return "UNKNOWN"


def metrics(hub: core.Hub) -> str:
    lines = [
        "# HELP fleetops_clusters Registered clusters by connectivity.",
        "# TYPE fleetops_clusters gauge",
    ]
    conn = Counter("connected" if c in hub.streams else "disconnected" for c in hub.clusters)
    for state in ("connected", "disconnected"):
        lines.append(f'fleetops_clusters{{connectivity="{state}"}} {conn.get(state, 0)}')
    lines += [
        "# HELP fleetops_reports_dropped_total Agent reports for apps their cluster was not "
        "assigned.",
        "# TYPE fleetops_reports_dropped_total counter",
        f"fleetops_reports_dropped_total {hub.dropped_reports}",
    ]
    sync: Counter[tuple[str, str]] = Counter()
    health: Counter[tuple[str, str]] = Counter()
    for (_cluster, app), report in hub.reports.items():
        sync[(app, _enum_name(types_pb2.SyncStatus, report.sync))] += 1
        health[(app, _enum_name(types_pb2.HealthStatus, report.health))] += 1
    lines += [
        "# HELP fleetops_app_sync Clusters per app and sync status.",
        "# TYPE fleetops_app_sync gauge",
    ]
    lines += [
        f'fleetops_app_sync{{app="{label(a)}",sync="{s}"}} {n}'
        for (a, s), n in sorted(sync.items())
    ]
    lines += [
        "# HELP fleetops_app_health Clusters per app and health.",
        "# TYPE fleetops_app_health gauge",
    ]
    lines += [
        f'fleetops_app_health{{app="{label(a)}",health="{h}"}} {n}'
        for (a, h), n in sorted(health.items())
    ]
    lines += [
        "# HELP fleetops_repo_fetch_ok 1 when the repo's last fetch worked.",
        "# TYPE fleetops_repo_fetch_ok gauge",
    ]
    for name, st in sorted(hub.repo_status.items()):
        lines.append(f'fleetops_repo_fetch_ok{{repo="{label(name)}"}} {0 if st.error else 1}')
    states = sorted(hub.supervisor.states.items()) if hub.supervisor else []
    lines += [
        "# HELP fleetops_task_restarts_total Restarts of the hub's supervised loops after errors.",
        "# TYPE fleetops_task_restarts_total counter",
    ]
    lines += [f'fleetops_task_restarts_total{{task="{label(n)}"}} {t.restarts}' for n, t in states]
    lines += [
        "# HELP fleetops_task_running 1 while the supervised loop runs (0: waiting to restart).",
        "# TYPE fleetops_task_running gauge",
    ]
    lines += [f'fleetops_task_running{{task="{label(n)}"}} {int(t.running)}' for n, t in states]
    lines += [
        "# HELP fleetops_store_writable 0 while the store cannot write (e.g. its disk is full).",
        "# TYPE fleetops_store_writable gauge",
        f"fleetops_store_writable {int(hub.db.writable)}",
        "# HELP fleetops_store_write_errors_total Store calls refused by the disk.",
        "# TYPE fleetops_store_write_errors_total counter",
        f"fleetops_store_write_errors_total {hub.db.write_errors}",
    ]
    lines += [
        "# HELP fleetops_config_ok 1 when the last hub.yaml load worked.",
        "# TYPE fleetops_config_ok gauge",
        f"fleetops_config_ok {0 if hub.config_error else 1}",
    ]
    lines += image_metrics(hub.image_status())
    return "\n".join(lines) + "\n"


def image_metrics(st: imagestatus.Status) -> list[str]:
    """Image automation: per repository, policy and update (hub.imagestatus)."""

    def family(name: str, kind: str, what: str, samples: list[str]) -> list[str]:
        return [f"# HELP {name} {what}", f"# TYPE {name} {kind}", *samples]

    repos = [(f'{{repository="{label(r.name)}"}}', r) for r in st.repositories]
    updates = [(f'{{update="{label(u.name)}"}}', u) for u in st.updates]
    return [
        *family(
            "fleetops_image_repository_tags",
            "gauge",
            "Tags the newest good scan of the image repository read (after exclude).",
            [f"fleetops_image_repository_tags{k} {r.tags}" for k, r in repos],
        ),
        *family(
            "fleetops_image_repository_last_scan_timestamp_seconds",
            "gauge",
            "When the image repository was last scanned, worked or not (0: never).",
            [
                f"fleetops_image_repository_last_scan_timestamp_seconds{k} {r.last_scan:.3f}"
                for k, r in repos
            ],
        ),
        *family(
            "fleetops_image_repository_scan_ok",
            "gauge",
            "1 when the image repository's newest scan worked (0 before the first).",
            [
                f"fleetops_image_repository_scan_ok{k} {int(bool(r.last_scan) and not r.error)}"
                for k, r in repos
            ],
        ),
        *family(
            "fleetops_image_policy_info",
            "gauge",
            "The tag each image policy picks now (tag empty: none fits).",
            [
                f'fleetops_image_policy_info{{policy="{label(p.name)}",'
                f'repository="{label(p.repository)}",tag="{label(p.latest)}"}} 1'
                for p in st.policies
            ],
        ),
        *family(
            "fleetops_image_update_commits_total",
            "counter",
            "Commits the image update pushed since the hub started.",
            [f"fleetops_image_update_commits_total{k} {u.commits}" for k, u in updates],
        ),
        *family(
            "fleetops_image_update_ok",
            "gauge",
            "1 unless the image update's last run failed.",
            [f"fleetops_image_update_ok{k} {0 if u.error else 1}" for k, u in updates],
        ),
    ]


MAX_CONNECTIONS = 64  # at once; more are answered 503 without reading a byte of them
MAX_PER_PEER = 16  # at once from one address, so one client cannot take all of them
HEADER_DEADLINE = 5.0  # seconds for the request line and headers (slow clients are cut)


class Server:
    def __init__(self, hub: core.Hub) -> None:
        self.hub = hub
        self._server: asyncio.Server | None = None
        self._active = 0
        self._per_peer: Counter[str] = Counter()

    async def start(self, host: str, port: int) -> int:
        self._server = await asyncio.start_server(self._handle, host, port)
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = str((writer.get_extra_info("peername") or ("?",))[0])
        self._active += 1
        self._per_peer[peer] += 1
        try:
            if self._active > MAX_CONNECTIONS or self._per_peer[peer] > MAX_PER_PEER:
                code, body, ctype = 503, b"busy, retry later\n", "text/plain"
                # take in what was sent (bounded), so closing does not reset the connection
                # before the client has read the answer
                with contextlib.suppress(TimeoutError, ConnectionError):
                    await asyncio.wait_for(reader.read(16384), timeout=0.2)
            else:
                code, body, ctype = await asyncio.wait_for(self._respond(reader), timeout=10)
        except (TimeoutError, asyncio.IncompleteReadError, ValueError, ConnectionError):
            code, body, ctype = 400, b"bad request\n", "text/plain"
        except Exception as e:  # whatever a client sends, it gets a 4xx, never a traceback
            log.warning("http: request refused: %s", type(e).__name__)
            code, body, ctype = 400, b"bad request\n", "text/plain"
        finally:
            self._active -= 1
            self._per_peer[peer] -= 1
            if self._per_peer[peer] <= 0:
                del self._per_peer[peer]
        try:
            writer.write(
                f"HTTP/1.1 {code} {_REASONS.get(code, 'Error')}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def _respond(self, reader: asyncio.StreamReader) -> tuple[int, bytes, str]:
        return await self._route(*await asyncio.wait_for(self._head(reader), HEADER_DEADLINE))

    async def _head(
        self, reader: asyncio.StreamReader
    ) -> tuple[asyncio.StreamReader, list[str], dict[str, str]]:
        """The request line and headers, read under HEADER_DEADLINE."""
        request = (await reader.readline()).decode("latin-1").split()
        headers: dict[str, str] = {}
        while len(request) == 3:
            line = (await reader.readline()).decode("latin-1")
            if line in ("\r\n", "\n", ""):
                break
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
            if len(headers) > 100:
                raise ValueError("too many headers")
        return reader, request, headers

    async def _route(
        self, reader: asyncio.StreamReader, request: list[str], headers: dict[str, str]
    ) -> tuple[int, bytes, str]:
        if len(request) != 3:
            return 400, b"bad request line\n", "text/plain"
        method, path, _ = request
        if method == "GET" and path == "/healthz":
            return 200, b"ok\n", "text/plain"
        if method == "GET" and path == "/metrics":
            return 200, metrics(self.hub).encode(), "text/plain; version=0.0.4"
        if path.startswith("/webhook/"):
            if method != "POST":
                return 405, b"use POST\n", "text/plain"
            return await self._webhook(path.removeprefix("/webhook/").strip("/"), headers, reader)
        return 404, b"not found\n", "text/plain"

    async def _webhook(
        self, repo_name: str, headers: dict[str, str], reader: asyncio.StreamReader
    ) -> tuple[int, bytes, str]:
        spec = next((r for r in self.hub.cfg.repos if r.name == repo_name), None)
        if spec is None:
            return 404, b"unknown repo\n", "text/plain"
        secret = os.environ.get(spec.webhook_secret_env, "") if spec.webhook_secret_env else ""
        if not secret:
            return (
                403,
                b"webhooks are not enabled for this repo (set webhookSecretEnv)\n",
                "text/plain",
            )
        try:
            length = int(headers.get("content-length", "-1"))
        except ValueError:
            return 400, b"bad content-length\n", "text/plain"
        if length < 0 or length > MAX_BODY:
            return 413, b"body too large or without content-length\n", "text/plain"
        body = await reader.readexactly(length)
        if not verify(headers, body, secret):
            log.warning("webhook for repo %s refused: bad or missing signature", repo_name)
            return 401, b"bad signature\n", "text/plain"
        self.hub.trigger_fetch(repo_name)
        return 202, b"fetching\n", "text/plain"
