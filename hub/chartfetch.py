"""Talking to allowlisted Helm repositories: GET an index.yaml or a chart archive over HTTP(S)
(one overall deadline per fetch, a size cap, basic auth only to the repository's own scheme,
host and port, redirects only to http(s) and, without credentials, never to a loopback or
link-local address), and `helm pull` from an OCI registry (a deadline, a file-size cap) with
a registry config the hub writes privately for that one pull and removes after it (never a
password on argv, in the environment or in a log).

The network edge of hub.charts, which decides what to fetch; this module never decides, never
renders, and is given only URLs that hub.chartspec allowed.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import ipaddress
import json
import os
import pathlib
import re
import shutil
import socket
import ssl
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any, NoReturn

from fleetops.hub import chartspec, config, errors, gatehttp, registryspec, sandbox
from fleetops.hub.chartarchive import FetchError
from fleetops.hub.confined import Limits
from fleetops.proto import privatefile

TIMEOUT = 30.0  # seconds for one socket operation (connect, each read)
DEADLINE = 120.0  # seconds for a whole fetch, redirects and every read included
CHUNK = 1024 * 1024
MAX_INDEX = 64 * 1024 * 1024  # an index.yaml: the biggest public ones are tens of MiB
MAX_CHART = 32 * 1024 * 1024  # a chart archive
PULL_LIMITS = Limits(timeout=120.0, max_output=1024 * 1024)


def credentials(repo: config.HelmRepository) -> tuple[str, str] | None:
    """(username, password) from the env vars or files hub.yaml names; None without any.
    A missing variable or unreadable file is a FetchError naming it (never its value)."""
    if not (repo.username_env or repo.username_file):
        return None

    def one(env: str, file: str, what: str) -> str:
        if env:
            value = os.environ.get(env)
            if not value:
                raise FetchError(
                    f"Helm repository {repo.name}: env var {env} ({what}) is not set on the hub"
                )
            return value
        try:
            return pathlib.Path(file).read_text().strip()
        except OSError as e:
            raise FetchError(
                f"Helm repository {repo.name}: cannot read {what} file {file}: {e.strerror}"
            ) from None

    return (
        one(repo.username_env, repo.username_file, "username"),
        one(repo.password_env, repo.password_file, "password"),
    )


def get(
    url: str,
    *,
    repo: config.HelmRepository,
    what: str,
    max_bytes: int,
    deadline: float | None = None,
) -> bytes:
    """The body at `url` (http or https), at most `max_bytes`, within `deadline` seconds all
    told (DEADLINE unless given); FetchError saying what failed and what to do. Credentials
    go only to the repository's own scheme, host and port (never over http from https)."""
    deadline = DEADLINE if deadline is None else deadline
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise FetchError(f"{what}: {gatehttp.shown(url)} is not an http(s) URL; refused")
    request = urllib.request.Request(url, headers={"User-Agent": "fleetops-hub"})
    creds = credentials(repo)
    own = chartspec.origin(repo.url)
    if creds is not None and own is not None and chartspec.origin(url) == own:
        token = base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    context = ssl.create_default_context(cafile=repo.ca_file or None)
    watch = _Watch(deadline)
    opener = urllib.request.build_opener(
        _Redirects(with_credentials=request.has_header("Authorization"), entry=repo.url),
        _WatchedHttp(watch),
        _WatchedHttps(watch, context=context),
    )
    try:
        with watch, opener.open(request, timeout=min(TIMEOUT, deadline)) as resp:
            chunks: list[bytes] = []
            size = 0
            while size <= max_bytes:
                chunk: bytes = resp.read1(CHUNK)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
                watch.check()
            data = b"".join(chunks)
    except FetchError:
        raise
    except Exception as e:
        if not watch.expired:
            _failed(e, url=url, what=what, sent=request.has_header("Authorization"))
        raise FetchError(
            f"{what}: {gatehttp.shown(url)} did not answer in full within {deadline:g} s; "
            "stopped (a slow or stalled server; the clusters keep what they run)"
        ) from None
    if watch.expired:  # the last read ended as the watchdog closed the socket
        raise FetchError(
            f"{what}: {gatehttp.shown(url)} did not answer in full within {deadline:g} s; "
            "stopped (a slow or stalled server; the clusters keep what they run)"
        )
    if len(data) > max_bytes:
        raise FetchError(f"{what}: {gatehttp.shown(url)} is over {max_bytes} bytes; refused")
    return data


def _failed(e: Exception, *, url: str, what: str, sent: bool) -> NoReturn:
    """The FetchError for a fetch that failed before its deadline."""
    if isinstance(e, urllib.error.HTTPError):
        code = 403 if e.code == 401 and sent else e.code  # 401 with credentials: refused
        hint = {
            401: "the repository wants credentials: set usernameEnv/passwordEnv (or "
            "usernameFile/passwordFile) on its helmRepositories entry, or check them",
            403: "the credentials were refused; check what usernameEnv/passwordEnv (or "
            "usernameFile/passwordFile) hold",
            404: "not found; check the repository url and the chart name",
        }.get(code, "the repository failed")
        raise FetchError(f"{what}: {gatehttp.shown(url)} answered HTTP {code}: {hint}") from None
    if isinstance(e, (urllib.error.URLError, OSError)):
        reason = getattr(e, "reason", e)
        raise FetchError(
            f"{what}: cannot reach {gatehttp.shown(url)}: {reason}; the clusters keep what they run"
        ) from None
    raise FetchError(
        f"{what}: {gatehttp.shown(url)} answered something that is not HTTP ({type(e).__name__}); "
        "the clusters keep what they run"
    ) from None


class _Watch:
    """A fetch's overall deadline: a timer that shuts down every socket the fetch opened
    (redirects included) when it passes, so a server dripping a byte at a time, or slow
    headers, cannot hold the thread past it."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expired = False
        self._lock = threading.Lock()
        self._conns: list[http.client.HTTPConnection] = []
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _Watch:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()

    def add(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if self.expired:
                raise TimeoutError("the fetch's deadline passed")
            self._conns.append(conn)

    def check(self) -> None:
        if self.expired:
            raise TimeoutError("the fetch's deadline passed")

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            conns = list(self._conns)
        for conn in conns:
            sock = conn.sock
            if sock is not None:
                with contextlib.suppress(OSError):
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)  # under TLS too


class _WatchedHttp(urllib.request.HTTPHandler):
    def __init__(self, watch: _Watch) -> None:
        super().__init__()
        self._watch = watch

    def http_open(self, req: urllib.request.Request) -> Any:
        def connection(host: str, **kw: Any) -> http.client.HTTPConnection:
            conn = _Connection(host, **kw)
            conn.watch = self._watch
            return conn

        return self.do_open(connection, req)


class _WatchedHttps(urllib.request.HTTPSHandler):
    def __init__(self, watch: _Watch, *, context: ssl.SSLContext) -> None:
        super().__init__(context=context)
        self._watch = watch
        self._ctx = context

    def https_open(self, req: urllib.request.Request) -> Any:
        def connection(host: str, **kw: Any) -> http.client.HTTPConnection:
            conn = _TlsConnection(host, **kw)
            conn.watch = self._watch
            return conn

        return self.do_open(connection, req, context=self._ctx)


class _Connection(http.client.HTTPConnection):
    watch: _Watch

    def connect(self) -> None:
        self.watch.add(self)
        super().connect()
        self.watch.check()


class _TlsConnection(http.client.HTTPSConnection):
    watch: _Watch

    def connect(self) -> None:
        self.watch.add(self)
        super().connect()
        self.watch.check()


class _Redirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only when `redirect_refusal` has nothing against it."""

    def __init__(self, *, with_credentials: bool, entry: str) -> None:
        self.with_credentials = with_credentials
        self.entry = entry

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: Any,
        code: int,
        msg: str,
        headers: Any,
        newurl: str,
    ) -> urllib.request.Request | None:
        why = redirect_refusal(
            req.full_url, newurl, entry=self.entry, with_credentials=self.with_credentials
        )
        if why:
            raise FetchError(
                f"{gatehttp.shown(req.full_url)} redirected to {gatehttp.shown(newurl)}: {why}"
            )
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def redirect_refusal(
    old: str,
    new: str,
    *,
    entry: str,
    with_credentials: bool,
    resolve: Callable[[str], list[str]] | None = None,
) -> str:
    """Why a redirect from `old` to `new` is not followed ("" when it is): only http(s);
    with credentials only to `old`'s own scheme, host and port (they must never reach
    another host, nor go out in cleartext); without, to any host but never to a loopback,
    link-local, or unspecified address (what `resolve` gives; DNS by default) unless the
    allowlist entry's own host is one (the archive is checked against the index digest
    either way)."""
    scheme = urllib.parse.urlsplit(new).scheme.lower()
    if scheme not in ("http", "https"):
        return f"not http(s) ({scheme or 'no scheme'}); refused"
    if with_credentials:
        if chartspec.origin(new) != chartspec.origin(old):
            return "another scheme, host or port; refused with credentials attached"
        return ""
    host = urllib.parse.urlsplit(new).hostname or ""
    own = urllib.parse.urlsplit(entry).hostname or ""
    lookup = resolve or _addresses
    if registryspec.internal(lookup(host)) and not registryspec.internal(lookup(own)):
        return (
            "a loopback or link-local address, which the repository is not on; refused (a "
            "chart repository does not send the hub to its own machine)"
        )
    return ""


def _addresses(host: str) -> list[str]:
    try:
        ipaddress.ip_address(host)
        return [host]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return []  # the fetch then fails to reach it, naming it
    return [str(info[4][0]) for info in infos]


def registry_config(repo: config.HelmRepository, *, root: pathlib.Path) -> pathlib.Path | None:
    """A registry config (Docker's config.json shape, which helm reads) holding only this
    repository's credentials, written privately under `root`; None without credentials."""
    creds = credentials(repo)
    if creds is None:
        return None
    host = urllib.parse.urlsplit(repo.url).netloc
    auth = base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()
    path = root / "registry" / f"{repo.name}.json"
    privatefile.write(path, json.dumps({"auths": {host: {"auth": auth}}}).encode())
    return path


# words of a refused login (the status codes as words: digests and names hold digit runs)
_REFUSED = re.compile(r"\b(401|403|unauthorized|denied|credentials?)\b")
_PULLED = re.compile(r"^Pulled:\s*\S+:(\S+)\s*$", re.M)
_DIGEST = re.compile(r"^Digest:\s*(sha256:[0-9a-f]{64})\s*$", re.M)


def oci_pull(
    ref: str,
    *,
    version: str,
    repo: config.HelmRepository,
    tools: sandbox.Tools,
    root: pathlib.Path,
) -> tuple[pathlib.Path, str, str]:
    """`helm pull` of `ref` (oci://...) at `version` (exact or a range; "" the newest) into a
    new temporary directory under `root`: (the archive, the version pulled, the manifest
    digest). The caller moves the archive and removes the directory."""
    work = pathlib.Path(tempfile.mkdtemp(prefix="pull-", dir=root))
    try:
        return _pull(ref, version=version, repo=repo, tools=tools, root=root, work=work)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def _pull(
    ref: str,
    *,
    version: str,
    repo: config.HelmRepository,
    tools: sandbox.Tools,
    root: pathlib.Path,
    work: pathlib.Path,
) -> tuple[pathlib.Path, str, str]:
    dest = work / "out"
    dest.mkdir()
    args = [tools.helm, "pull", ref, "--destination", str(dest)]
    if version:
        args += ["--version", version]
    # the credentials live only in this pull's private directory, for this pull; a
    # registry/ left by an older hub is removed
    shutil.rmtree(root / "registry", ignore_errors=True)
    config_file = registry_config(repo, root=work)
    if config_file is not None:
        args += ["--registry-config", str(config_file)]
    if repo.insecure_plain_http:
        args += ["--plain-http"]
    if repo.ca_file:
        args += ["--ca-file", repo.ca_file]
    prlimit = shutil.which("prlimit")
    if prlimit:  # the kernel stops helm writing a file over the cap (PULL_LIMITS: the time)
        args = [prlimit, f"--fsize={MAX_CHART}", "--", *args]
    try:
        _, out = sandbox.run_both(
            args,
            what=f"helm pull {ref}",
            limits=PULL_LIMITS,
            scratch=work,
            shown={dest: "<download>"},
            network=True,
        )
    except errors.RenderError as e:
        text = str(e)
        low = text.lower()
        if any(w in low for w in ("file too large", "file size limit", "sigxfsz")):
            text += f" (the chart archive is over {MAX_CHART} bytes; refused)"
        elif _REFUSED.search(low):
            text += (
                f" (Helm repository {repo.name}: check the credentials its helmRepositories "
                "entry names in usernameEnv/passwordEnv or usernameFile/passwordFile)"
            )
        elif "not found" in low or "no matching" in low:
            text += " (check the chart name and that a version in the range was pushed)"
        raise FetchError(text) from None
    finally:
        if config_file is not None:
            config_file.unlink(missing_ok=True)
    archives = sorted(dest.glob("*.tgz"))
    if len(archives) != 1:
        raise FetchError(f"helm pull {ref}: expected one chart archive, got {len(archives)}")
    if archives[0].stat().st_size > MAX_CHART:
        raise FetchError(f"helm pull {ref}: the chart archive is over {MAX_CHART} bytes; refused")
    digest = _DIGEST.search(out)
    pulled = _PULLED.search(out)
    got = pulled.group(1).replace("_", "+") if pulled else ""
    return archives[0], got, digest.group(1) if digest else ""
