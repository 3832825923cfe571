"""A FAKE container registry (http.server on loopback) for what Debian's docker-registry
cannot be made to do: thousands of tags over `Link` pagination, 429 with `Retry-After`, 5xx,
a stalled answer, the Bearer token flow (its realm on this same server), and redirects to
another host. It speaks only the few distribution API paths hub.registry reads and records
every request (server-side time, path, query, headers) so tests can assert what was sent.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import http.server
import json
import threading
import time
import urllib.parse
from collections.abc import Iterator

SERVICE = "fake-registry"


@dataclasses.dataclass(frozen=True)
class Seen:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    at: float  # time.monotonic() on the server when the request arrived
    status: int


def fake_digest(repo: str, tag: str) -> str:
    return "sha256:" + hashlib.sha256(f"{repo}:{tag}".encode()).hexdigest()


class FakeRegistry:
    """Serves `tags` (repo -> tags in order). Knobs: `bearer_users` (user -> password; {} for
    a token service that wants no login; None for no auth at all), `token_field` ("token" or
    "access_token"), `expires_in`, `answers` (statuses with Retry-After values, answered to
    the first /v2/ requests in turn: e.g. [(429, "1"), (503, "")]), `redirect_to` (a base URL
    the tags and manifest paths redirect to, 307), `link_base` (absolute Link URLs on this
    base instead of relative ones), `stall` (repos whose answers hang until `release()`)."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        tags: dict[str, list[str]] | None = None,
        bearer_users: dict[str, str] | None = None,
        token_field: str = "token",
        expires_in: int = 300,
        answers: list[tuple[int, str]] | None = None,
        redirect_to: str = "",
        link_base: str = "",
        stall: tuple[str, ...] = (),
        max_page: int = 1000,
    ) -> None:
        self.tags = tags or {}
        self._index = {r: {t: i for i, t in enumerate(ts)} for r, ts in self.tags.items()}
        self.bearer_users = bearer_users
        self.token_field = token_field
        self.expires_in = expires_in
        self.answers = list(answers or [])
        self.redirect_to = redirect_to
        self.link_base = link_base
        self.stall = stall
        self.max_page = max_page
        self.seen: list[Seen] = []
        self.tokens: dict[str, str] = {}  # token -> scope
        self._lock = threading.Lock()
        self._released = threading.Event()
        self._server = http.server.ThreadingHTTPServer((host, 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.host = f"{host}:{self._server.server_address[1]}"
        self.url = f"http://{self.host}"

    def requests_to(self, part: str) -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if part in s.path]

    def release(self) -> None:
        self._released.set()

    def stop(self) -> None:
        self._released.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                fake._answer(self, head=False)

            def do_HEAD(self) -> None:
                fake._answer(self, head=True)

        return Handler

    def _send(
        self,
        h: http.server.BaseHTTPRequestHandler,
        status: int,
        *,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        head: bool = False,
        seen: Seen,
    ) -> None:
        with self._lock:
            self.seen.append(dataclasses.replace(seen, status=status))
        h.send_response(status)
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if not head:
            h.wfile.write(body)

    def _answer(self, h: http.server.BaseHTTPRequestHandler, *, head: bool) -> None:
        split = urllib.parse.urlsplit(h.path)
        query = dict(urllib.parse.parse_qsl(split.query))
        seen = Seen(h.command, split.path, query, dict(h.headers.items()), time.monotonic(), 0)
        path = split.path
        if path == "/token":
            return self._token(h, query, seen)
        if not path.startswith("/v2/"):
            return self._send(h, 404, seen=seen, head=head)
        repo, kind, rest = self._route(path)
        with self._lock:
            canned = self.answers.pop(0) if self.answers else None
        if canned is not None:
            status, retry = canned
            extra = {"Retry-After": retry} if retry else {}
            return self._send(h, status, headers=extra, head=head, seen=seen)
        if repo in self.stall:
            self._released.wait(timeout=30)
            with contextlib.suppress(OSError):  # the client gave up long ago
                self._send(h, 503, head=head, seen=seen)
            return None
        if self.bearer_users is not None:
            token = h.headers.get("Authorization", "").removeprefix("Bearer ")
            scope = f"repository:{repo}:pull"
            if self.tokens.get(token) != scope:
                challenge = f'Bearer realm="{self.url}/token",service="{SERVICE}",scope="{scope}"'
                return self._send(
                    h, 401, headers={"WWW-Authenticate": challenge}, head=head, seen=seen
                )
        if self.redirect_to:
            target = f"{self.redirect_to}{path}" + (f"?{split.query}" if split.query else "")
            return self._send(h, 307, headers={"Location": target}, head=head, seen=seen)
        if repo not in self.tags:
            body = json.dumps({"errors": [{"code": "NAME_UNKNOWN"}]}).encode()
            return self._send(h, 404, body=body, head=head, seen=seen)
        if kind == "tags":
            return self._tags_page(h, repo, query, seen, head=head)
        if kind == "manifests" and rest in self._index[repo]:
            headers = {"Docker-Content-Digest": fake_digest(repo, rest)}
            return self._send(h, 200, headers=headers, head=head, seen=seen)
        return self._send(h, 404, head=head, seen=seen)

    @staticmethod
    def _route(path: str) -> tuple[str, str, str]:
        """(repo, "tags" | "manifests", the tag) of a /v2/ path."""
        body = path[len("/v2/") :]
        if body.endswith("/tags/list"):
            return body[: -len("/tags/list")], "tags", ""
        repo, _, ref = body.rpartition("/manifests/")
        return repo, "manifests", ref

    def _tags_page(
        self,
        h: http.server.BaseHTTPRequestHandler,
        repo: str,
        query: dict[str, str],
        seen: Seen,
        *,
        head: bool,
    ) -> None:
        tags = self.tags[repo]
        n = min(int(query.get("n", "100")), self.max_page)
        start = self._index[repo][query["last"]] + 1 if "last" in query else 0
        page = tags[start : start + n]
        headers = {"Content-Type": "application/json"}
        if start + n < len(tags):
            nxt = f"/v2/{repo}/tags/list?" + urllib.parse.urlencode({"n": n, "last": page[-1]})
            headers["Link"] = f'<{self.link_base}{nxt}>; rel="next"'
        body = json.dumps({"name": repo, "tags": page}).encode()
        self._send(h, 200, body=body, headers=headers, head=head, seen=seen)

    def _token(
        self, h: http.server.BaseHTTPRequestHandler, query: dict[str, str], seen: Seen
    ) -> None:
        users = self.bearer_users or {}
        if users:
            raw = h.headers.get("Authorization", "").removeprefix("Basic ")
            try:
                user, _, password = base64.b64decode(raw).decode().partition(":")
            except ValueError:
                user, password = "", ""
            if users.get(user) != password or not user:
                return self._send(h, 401, seen=seen)
        scope = query.get("scope", "")
        if query.get("service") != SERVICE or not scope.startswith("repository:"):
            return self._send(h, 400, seen=seen)
        with self._lock:
            token = f"tok-{len(self.tokens) + 1}"
            self.tokens[token] = scope
        body = json.dumps({self.token_field: token, "expires_in": self.expires_in}).encode()
        self._send(h, 200, body=body, headers={"Content-Type": "application/json"}, seen=seen)


@contextlib.contextmanager
def fake_registry(**kw: object) -> Iterator[FakeRegistry]:
    fake = FakeRegistry(**kw)  # type: ignore[arg-type]
    try:
        yield fake
    finally:
        fake.stop()
