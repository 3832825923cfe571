"""Reading a container registry over the OCI distribution API: a repository's tags
(`Link` pagination, capped at `max_tags`) and a tag's manifest digest (HEAD with the OCI and
Docker Accept types). Anonymous, Basic or the Bearer token flow, as the registry's
`WWW-Authenticate` asks; `Retry-After` honoured on 429/503 and 5xx retried a few times, all
within one deadline per call; every answer size-capped.

The network edge of image automation: blocking urllib in a thread. Credentials go only to the
image's registry (same scheme, host and port) and its token realm; a redirect elsewhere is
followed without them. No secret ever reaches a message or a log. It never decides which tag
wins.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import http.client
import socket
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any, TypeVar

from fleetops.hub import gatehttp, registryspec
from fleetops.hub.registryspec import Auth, Image, RegistryError

__all__ = ["Auth", "Image", "RegistryError", "TagList", "digest", "list_tags", "parse_image"]

parse_image = registryspec.parse_image

DEADLINE = 120.0  # seconds for one call: every page, token, retry and wait
TIMEOUT = 30.0  # seconds for one socket operation
PAGE = 1000  # the n= page size hint
MAX_PAGE = 8 * 1024 * 1024  # one tags page
MAX_TOKEN = 64 * 1024  # a token answer
MAX_MANIFEST = 4 * 1024 * 1024
MAX_PAGES = 10_000
MAX_REDIRECTS = 5
RETRIES = 4  # extra tries after a 429, 503 or other 5xx
MAX_WAIT = 60.0  # the longest Retry-After honoured; longer fails the call saying so
BACKOFF = 0.5  # seconds, doubled per 5xx retry without Retry-After
_GRACE = 2.0
MANIFEST_TYPES = ", ".join(
    [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)


@dataclasses.dataclass(frozen=True)
class TagList:
    tags: tuple[str, ...]
    truncated: bool  # the repository has more than max_tags; the caller warns
    requests: int  # HTTP requests made (pages, tokens, retries, redirects)


async def list_tags(
    image: Image, *, max_tags: int, auth: Auth, deadline: float = DEADLINE
) -> TagList:
    """The tags of `image`'s repository in the registry's order, at most `max_tags`."""
    if max_tags < 1:
        raise RegistryError(f"{image}: maxTags is {max_tags}; set it to 1 or more")
    call = _Call(image, auth=auth, deadline=deadline)
    return await _run(call, lambda: _list_tags(call, max_tags=max_tags))


async def digest(image: Image, tag: str, *, auth: Auth, deadline: float = DEADLINE) -> str:
    """The manifest digest (sha256:...) of `image`:`tag`."""
    if not registryspec.TAG.match(tag):
        raise RegistryError(f"{image}: {tag[:130]!r} is not a valid tag")
    call = _Call(image, auth=auth, deadline=deadline)
    return await _run(call, lambda: _digest(call, tag))


T = TypeVar("T")


async def _run(call: _Call, work: Callable[[], T]) -> T:
    try:
        return await asyncio.wait_for(asyncio.to_thread(work), call.seconds + _GRACE)
    except TimeoutError:
        call.expire()
        raise RegistryError(call.late()) from None


def _list_tags(call: _Call, *, max_tags: int) -> TagList:
    image = call.image
    url = f"{call.base}/v2/{image.repository}/tags/list?n={min(PAGE, max_tags)}"
    tags: list[str] = []
    seen: set[str] = set()
    while True:
        if url in seen or len(seen) >= MAX_PAGES:
            raise RegistryError(f"{image}: the registry's tag pages loop; report it to its owner")
        seen.add(url)
        reply = call.get(url, accept="application/json", max_body=MAX_PAGE, what="tags")
        page = registryspec.tags(image, reply.body)
        room = max_tags - len(tags)
        tags.extend(page[:room])
        try:
            nxt = registryspec.next_page(reply.headers.get_all("Link") or [], current=reply.url)
            registryspec.origin(nxt)
        except ValueError:
            raise RegistryError(
                f"{image}: the registry's Link header names a next page that is not a URL; "
                "report it to its owner"
            ) from None
        if len(page) > room or (len(tags) >= max_tags and nxt):
            return TagList(tuple(tags), truncated=True, requests=call.requests)
        if not nxt:
            return TagList(tuple(tags), truncated=False, requests=call.requests)
        if registryspec.origin(nxt) != registryspec.origin(call.base):
            raise RegistryError(
                f"{image}: the registry's next tag page is on another host "
                f"({registryspec.shown(nxt)}); refused"
            )
        url = nxt


def _digest(call: _Call, tag: str) -> str:
    url = f"{call.base}/v2/{call.image.repository}/manifests/{tag}"
    reply = call.get(url, accept=MANIFEST_TYPES, max_body=0, what=f"tag {tag}", method="HEAD")
    found = str(reply.headers.get("Docker-Content-Digest", "")).strip()
    if not found:  # some registries leave it out of HEAD: hash the manifest itself
        reply = call.get(url, accept=MANIFEST_TYPES, max_body=MAX_MANIFEST, what=f"tag {tag}")
        found = "sha256:" + hashlib.sha256(reply.body).hexdigest()
    if not registryspec.DIGEST.match(found):
        raise RegistryError(
            f"{call.image}:{tag}: the registry answered a digest that is not sha256:<hex>; "
            "report it to its owner"
        )
    return found


@dataclasses.dataclass
class _Reply:
    status: int
    headers: Any  # http.client.HTTPMessage
    body: bytes
    url: str  # where it came from, after redirects


class _Call:
    """One list_tags or digest call: its deadline, request count and the auth dance."""

    def __init__(self, image: Image, *, auth: Auth, deadline: float) -> None:
        self.image = image
        self.auth = auth
        self.seconds = deadline
        self.end = time.monotonic() + deadline
        self.base = f"{'http' if image.plain_http else 'https'}://{image.registry}"
        self.scope = f"repository:{image.repository}:pull"
        self.creds = auth.for_registry(image.registry)
        self.requests = 0
        self.expired = False
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self.tls = ssl.create_default_context()

    def late(self) -> str:
        return (
            f"{self.image}: the registry did not answer within {self.seconds:g} s; the next "
            "scan tries again (a slow or stalled registry)"
        )

    def expire(self) -> None:
        with self._lock:
            self.expired = True
            socks = list(self._socks)
        for sock in socks:
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def left(self) -> float:
        left = self.end - time.monotonic()
        if left <= 0 or self.expired:
            raise RegistryError(self.late())
        return left

    def get(
        self, url: str, *, accept: str, max_body: int, what: str, method: str = "GET"
    ) -> _Reply:
        """The answer to `url`, logged in as the registry asks, retried as it asks; a
        RegistryError for anything but 2xx."""
        image = self.image
        tried_auth = False
        waits = 0
        while True:
            header = self._authorization()
            reply = self._follow(url, method=method, accept=accept, auth=header, max_body=max_body)
            if reply.status == 401 and not tried_auth:
                tried_auth = True
                if registryspec.origin(reply.url) != registryspec.origin(self.base):
                    raise RegistryError(
                        f"{image}: {image.registry} redirected the {what} request to "
                        f"{urllib.parse.urlsplit(reply.url).netloc[:100]}, which asks for "
                        "credentials; they are only ever sent to the registry itself"
                    )
                if self._login(reply, had=header):
                    continue
            if reply.status == 429 or (reply.status >= 500 and reply.status != 501):
                if waits >= RETRIES:
                    raise RegistryError(registryspec.gave_up(image, reply.status, waits + 1))
                self._wait(reply, waits)
                waits += 1
                continue
            if 200 <= reply.status < 300:
                return reply
            source = self.creds.source if self.creds else self.auth.source
            raise RegistryError(
                registryspec.refused(
                    image, reply.status, what=what, source=source, sent=self.creds is not None
                )
            )

    def _authorization(self) -> str:
        host = self.image.registry
        scheme = self.auth.scheme.get(host)
        if scheme == "basic" and self.creds is not None:
            return self.creds.basic()
        if scheme == "bearer":
            token = self.auth.token(host, self.scope)
            if token:
                return f"Bearer {token}"
        return ""

    def _login(self, reply: _Reply, *, had: str) -> bool:
        """Learn from a 401 how to log in; True when a retry may now succeed."""
        host = self.image.registry
        challenge = registryspec.parse_challenge(reply.headers.get("WWW-Authenticate", ""))
        if challenge is None:
            return False
        if challenge.scheme == "basic":
            self.auth.scheme[host] = "basic"
            return self.creds is not None and not had.startswith("Basic ")
        if challenge.scheme != "bearer":
            raise RegistryError(
                f"{self.image}: the registry asks for {challenge.scheme[:20]!r} auth; only "
                "Basic and Bearer are supported"
            )
        self.auth.scheme[host] = "bearer"
        if had.startswith("Bearer "):
            self.auth.forget(host, self.scope)  # revoked or expired early: one new token
        token, expires = self._fetch_token(challenge.params)
        self.auth.keep(host, self.scope, token, expires_in=expires)
        return True

    def _fetch_token(self, params: dict[str, str]) -> tuple[str, float]:
        image = self.image
        realm = params.get("realm", "")
        scheme = urllib.parse.urlsplit(realm).scheme.lower()
        if scheme not in ("http", "https"):
            raise RegistryError(
                f"{image}: the registry's token realm is not an http(s) URL; report it to its owner"
            )
        if _internal(realm) and not _internal(self.base):
            raise RegistryError(
                f"{image}: the registry's token realm is a loopback or link-local address; "
                "refused (a registry does not send the hub to its own machine)"
            )
        query = {"scope": self.scope}
        if params.get("service"):
            query["service"] = params["service"]
        sep = "&" if urllib.parse.urlsplit(realm).query else "?"
        url = realm + sep + urllib.parse.urlencode(query)
        header = ""
        if self.creds is not None:
            if scheme == "http" and not self.image.plain_http:
                raise RegistryError(
                    f"{image}: the registry's token realm {registryspec.shown(realm)} is plain "
                    "http; credentials are not sent in cleartext"
                )
            header = self.creds.basic()
        waits = 0
        while True:
            reply = self._follow(
                url, method="GET", accept="application/json", auth=header, max_body=MAX_TOKEN
            )
            if reply.status in (429, 503) and waits < RETRIES:
                self._wait(reply, waits)
                waits += 1
                continue
            break
        return registryspec.token_answer(
            image,
            reply.status,
            reply.body,
            realm=urllib.parse.urlsplit(realm).netloc,
            source=self.creds.source if self.creds else "",
        )

    def _wait(self, reply: _Reply, waits: int) -> None:
        """Sleep as Retry-After says (or back off), within the call's deadline."""
        wait = registryspec.retry_after(reply.headers.get("Retry-After", ""))
        if wait is None:
            wait = BACKOFF * 2**waits
        if wait > MAX_WAIT or wait >= self.left():
            raise RegistryError(
                f"{reply.status} from {self.image.registry} for {self.image.repository}: "
                f"asked to retry after {wait:.0f} s, longer than this scan may wait; the "
                "next scan tries again (or set a longer interval)"
            )
        time.sleep(wait)

    def _follow(
        self,
        url: str,
        *,
        method: str,
        accept: str,
        auth: str,
        max_body: int,
    ) -> _Reply:
        """One request and its redirects: the Authorization header only while on the
        first URL's scheme, host and port (or the registry's own), never elsewhere."""
        own = registryspec.origin(url)
        for _ in range(MAX_REDIRECTS + 1):
            headers = {"Accept": accept, "User-Agent": "fleetops-hub"}
            if auth and registryspec.origin(url) == own:
                headers["Authorization"] = auth
            reply = self._one(url, method=method, headers=headers, max_body=max_body)
            if reply.status not in (301, 302, 303, 307, 308):
                return reply
            location = reply.headers.get("Location", "")
            try:
                new = urllib.parse.urljoin(url, location)
                registryspec.origin(new)
            except ValueError:
                raise RegistryError(
                    f"{self.image}: {reply.status} from {self.image.registry} redirects to "
                    "something that is not a URL; refused"
                ) from None
            if not location or urllib.parse.urlsplit(new).scheme not in ("http", "https"):
                raise RegistryError(
                    f"{self.image}: {reply.status} from {self.image.registry} redirects to "
                    "something that is not http(s); refused"
                )
            if registryspec.origin(new) != own and _internal(new) and not _internal(self.base):
                raise RegistryError(
                    f"{self.image}: {self.image.registry} redirects to a loopback or "
                    "link-local address; refused (a registry does not send the hub to its "
                    "own machine)"
                )
            if reply.status == 303 and method != "HEAD":
                method = "GET"
            url = new
        raise RegistryError(f"{self.image}: more than {MAX_REDIRECTS} redirects; refused")

    def _one(self, url: str, *, method: str, headers: dict[str, str], max_body: int) -> _Reply:
        timeout = min(TIMEOUT, self.left())
        self.requests += 1
        request = urllib.request.Request(url, headers=headers, method=method)
        try:
            with _opener(self).open(request, timeout=timeout) as resp:
                body: bytes = resp.read(max_body + 1) if method != "HEAD" else b""
                reply = _Reply(int(resp.status), resp.headers, body, url)
        except RegistryError:
            raise
        except Exception as e:  # anything the network or a broken server can cause
            if self.expired or time.monotonic() >= self.end or gatehttp.timed_out(e):
                raise RegistryError(self.late()) from None
            where = urllib.parse.urlsplit(url).netloc
            raise RegistryError(
                f"{self.image}: cannot reach {where}: {gatehttp.why(e)}; "
                "check the image's registry name and the hub's network"
            ) from None
        if self.expired:
            raise RegistryError(self.late())
        if len(reply.body) > max_body and 200 <= reply.status < 300:
            raise RegistryError(
                f"{self.image}: {urllib.parse.urlsplit(url).netloc} answered more than "
                f"{max_body // 1024} KiB; refused"
            )
        return reply

    def watch(self, sock: socket.socket | None) -> None:
        with self._lock:
            if sock is not None:
                self._socks.append(sock)
            if self.expired:
                raise TimeoutError("deadline passed")


def _internal(url: str) -> bool:
    """Whether `url`'s host is (or resolves to) a loopback, link-local or unspecified
    address."""
    host = urllib.parse.urlsplit(url).hostname or ""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return False  # the request then fails to reach it, naming it
    return registryspec.internal([str(info[4][0]) for info in infos])


def _opener(call: _Call) -> urllib.request.OpenerDirector:
    """urllib with every socket handed to `call` (its deadline shuts them) and no redirects."""

    class Plain(http.client.HTTPConnection):
        def connect(self) -> None:
            super().connect()
            call.watch(self.sock)

    class Tls(http.client.HTTPSConnection):
        def connect(self) -> None:
            super().connect()
            call.watch(self.sock)

    class PlainHandler(urllib.request.HTTPHandler):
        def http_open(self, req: urllib.request.Request) -> Any:
            return self.do_open(Plain, req)

    class TlsHandler(urllib.request.HTTPSHandler):
        def https_open(self, req: urllib.request.Request) -> Any:
            return self.do_open(Tls, req, context=call.tls)

    return urllib.request.build_opener(gatehttp.EveryStatus(), PlainHandler(), TlsHandler())
