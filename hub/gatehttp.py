"""The network edge of hub.gates: one HTTP(S) POST to a gate's Prometheus or webhook, within
one overall deadline (connect, headers and every read), never following a redirect, reading at
most MAX_BODY bytes, and answering a `Reply` (any status) or a `Trouble` saying in one line why
there is none. It never raises for network trouble, never judges an answer, and never puts a
request header (where the bearer token and signature travel) or a URL's query in a message.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import functools
import http.client
import socket
import ssl
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any

MAX_BODY = 1024 * 1024
_GRACE = 1.0  # seconds the caller waits past the deadline for a thread stuck in DNS
# gate calls have threads of their own (as many as the rollouts measure at once), so a slow
# gate never waits for a thread the renders hold, nor holds one they need
_POOL = concurrent.futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="gate")


@dataclasses.dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    location: str  # a redirect's Location ("" otherwise), shown without its query
    shown_url: str  # the URL asked, without userinfo or query


@dataclasses.dataclass(frozen=True)
class Trouble:
    reason: str  # "cannot reach http://...: connection refused"


async def post(
    url: str, *, body: bytes, headers: Mapping[str, str], seconds: float
) -> Reply | Trouble:
    """POST `body` to `url` with `headers`; `seconds` for the whole exchange."""
    try:
        return await asyncio.wait_for(
            asyncio.get_running_loop().run_in_executor(
                _POOL,
                functools.partial(_post, url, body=body, headers=dict(headers), timeout=seconds),
            ),
            seconds + _GRACE,
        )
    except TimeoutError:
        return Trouble(_late(url, seconds))


def shown(url: str) -> str:
    """A URL without userinfo, query or fragment (where tokens hide)."""
    p = urllib.parse.urlsplit(url)
    host = p.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    with contextlib.suppress(ValueError):
        if p.port:
            host += f":{p.port}"
    return urllib.parse.urlunsplit((p.scheme, host, p.path, "", ""))


def redirect_reason(reply: Reply) -> str:
    """The message for a redirect (never followed)."""
    to = f" to {reply.location}" if reply.location else ""
    return (
        f"{reply.shown_url} answered {reply.status}, a redirect{to}; redirects are not "
        "followed: set the gate's url to the address that answers"
    )


def _late(url: str, timeout: float) -> str:
    return f"{shown(url)} did not answer within {timeout:g} s (the gate's timeout)"


def _post(url: str, *, body: bytes, headers: dict[str, str], timeout: float) -> Reply | Trouble:
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        return Trouble(f"{shown(url)} is not an http(s) URL")
    deadline = _Deadline(timeout)
    try:
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}),  # never through a proxy from the environment
            EveryStatus(),
            _Http(deadline),
            _Https(deadline, context=ssl.create_default_context()),
        )
        with deadline, opener.open(request, timeout=timeout) as resp:
            data: bytes = resp.read(MAX_BODY + 1)
            status = int(resp.status)
            location = str(resp.headers.get("Location") or "")
    except Exception as e:  # anything the network or a broken server can cause
        if deadline.expired or timed_out(e):
            return Trouble(_late(url, timeout))
        return Trouble(f"cannot reach {shown(url)}: {why(e)}")
    if deadline.expired:  # the last read ended as the watchdog shut the socket
        return Trouble(_late(url, timeout))
    if len(data) > MAX_BODY:
        return Trouble(f"{shown(url)} answered more than {MAX_BODY // 1024} KiB; refused")
    return Reply(status, data, shown(location) if location else "", shown(url))


def why(e: BaseException) -> str:
    """The reason in a few words, from the exception's class and OS error text only (a
    message of http.client may quote a header, and a header may hold the token). Shared by
    every urllib client of the hub's that speaks to a server a config names (gates,
    registries)."""
    reason: Any = e.reason if isinstance(e, urllib.error.URLError) else e
    if isinstance(reason, ssl.SSLError):
        return f"TLS failed ({reason.reason or type(reason).__name__})"
    if isinstance(reason, socket.gaierror):
        return "no such host"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror[:1].lower() + reason.strerror[1:]
    if isinstance(reason, str):
        return reason[:100]
    return f"the answer is not HTTP ({type(reason).__name__})"


def timed_out(e: BaseException) -> bool:
    return isinstance(e, TimeoutError) or (
        isinstance(e, urllib.error.URLError) and isinstance(e.reason, TimeoutError)
    )


class _Deadline:
    """One request's overall deadline: a timer that shuts down the socket when it passes, so
    a server that accepts and then stalls, or drips a byte at a time, cannot hold the thread.
    (It holds the socket itself: urllib drops the connection's reference once the headers
    are in, and the response reads on through the same socket.)"""

    def __init__(self, seconds: float) -> None:
        self.expired = False
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()

    def watch(self, sock: socket.socket | None) -> None:
        with self._lock:
            if sock is not None:
                self._socks.append(sock)
            if self.expired:
                raise TimeoutError("deadline passed")

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            socks = list(self._socks)
        for sock in socks:
            # the plain socket's shutdown, under TLS too; a socket already closed has no
            # descriptor any more (EBADF), never another one's
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)


class EveryStatus(urllib.request.HTTPErrorProcessor):
    """Hands back every response as it is: no HTTPError for a 4xx/5xx (its body is the
    answer), and no redirect handler ever runs (redirects are not followed)."""

    def http_response(self, request: urllib.request.Request, response: Any) -> Any:
        return response

    https_response = http_response


class _Http(urllib.request.HTTPHandler):
    def __init__(self, deadline: _Deadline) -> None:
        super().__init__()
        self._deadline = deadline

    def http_open(self, req: urllib.request.Request) -> Any:
        deadline = self._deadline

        class Watched(http.client.HTTPConnection):
            def connect(self) -> None:
                super().connect()
                deadline.watch(self.sock)

        return self.do_open(Watched, req)


class _Https(urllib.request.HTTPSHandler):
    def __init__(self, deadline: _Deadline, *, context: ssl.SSLContext) -> None:
        super().__init__(context=context)
        self._deadline = deadline
        self._context = context

    def https_open(self, req: urllib.request.Request) -> Any:
        deadline = self._deadline

        class Watched(http.client.HTTPSConnection):
            def connect(self) -> None:
                super().connect()
                deadline.watch(self.sock)

        return self.do_open(Watched, req, context=self._context)
