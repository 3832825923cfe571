"""The pure parts of hub.registry: an image reference parsed into a registry host and a
repository path (Docker's defaults), the one `RegistryError`, credentials from a Docker
`config.json`, `WWW-Authenticate` challenges, `Auth` (one registry's credentials and its Bearer
tokens, cached until they expire), and reading the registry's answers (a tag page, `Link`,
`Retry-After`).

It never opens a socket, and never puts a password, an `auth` value or a token in a message,
a repr or a log.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import email.utils
import ipaddress
import json
import pathlib
import re
import threading
import time
import urllib.parse
from collections.abc import Callable

from fleetops.hub import errors

DOCKER_HUB = "registry-1.docker.io"
_HUB_ALIASES = {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}
_LOOPBACK = re.compile(r"^(localhost|127(\.\d{1,3}){3}|\[::1\])(:\d+)?$")
_HOST = re.compile(
    r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9-]+)*|\[[0-9a-fA-F:.]+\])"
    r"(?::(\d{1,5}))?$"
)
_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*$")
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$|^sha512:[0-9a-f]{128}$")
_NEXT = re.compile(r'<([^>]*)>\s*;[^,]*\brel="?next"?', re.I)
TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
MAX_CONFIG = 1024 * 1024  # a Docker config.json
MAX_TOKENS = 256  # cached Bearer tokens per Auth


class RegistryError(errors.HubError):
    """A registry could not be read: one line naming the image and what to do next. That
    repository's scan failed; nothing else is affected."""


@dataclasses.dataclass(frozen=True)
class Image:
    registry: str  # host[:port], e.g. registry-1.docker.io or 127.0.0.1:5000
    repository: str  # path, e.g. library/nginx
    plain_http: bool = False  # http:// instead of https:// (loopback registries by default)

    def __str__(self) -> str:
        return f"{self.registry}/{self.repository}"


def parse_image(ref: str, *, plain_http: bool | None = None) -> Image:
    """The registry and repository of `ref` (no tag, no digest: a repository is wanted).
    `nginx` is registry-1.docker.io/library/nginx. `plain_http` None: http for a loopback
    registry (localhost, 127.x, [::1]), https otherwise. RegistryError for anything else."""
    shown = repr(ref[:200])
    text = ref.strip()
    if not text or any(c.isspace() or not c.isprintable() for c in text):
        raise RegistryError(f"image {shown}: empty or has spaces; write e.g. ghcr.io/org/app")
    if "://" in text:
        raise RegistryError(f"image {shown}: drop the scheme; write e.g. ghcr.io/org/app")
    if "@" in text:
        raise RegistryError(
            f"image {shown}: has a digest (@...); give the repository only, e.g. ghcr.io/org/app"
        )
    first, _, rest = text.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        registry, path = first, rest
    else:
        registry, path = "docker.io", text
    if ":" in path:
        raise RegistryError(
            f"image {shown}: has a tag (:{path.rsplit(':', 1)[1][:50]}); give the repository "
            "only (the policy picks the tag), e.g. ghcr.io/org/app"
        )
    match = _HOST.match(registry)
    if not match or (match.group(1) and not 0 < int(match.group(1)) < 65536):
        raise RegistryError(f"image {shown}: registry {registry[:100]!r} is not host[:port]")
    if registry.lower() in _HUB_ALIASES:
        registry = DOCKER_HUB
        if "/" not in path:
            path = f"library/{path}"
    parts = path.split("/")
    if len(path) > 255 or not all(_COMPONENT.match(p) for p in parts):
        raise RegistryError(
            f"image {shown}: repository {path[:100]!r} is not a valid path (lowercase letters, "
            "digits and . _ - between them, parts separated by /)"
        )
    if plain_http is None:
        plain_http = bool(_LOOPBACK.match(registry))
    return Image(registry=registry, repository=path, plain_http=plain_http)


@dataclasses.dataclass(frozen=True)
class Credentials:
    username: str
    password: str = dataclasses.field(repr=False)
    source: str  # the file they came from, for messages

    def basic(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()


def docker_config(path: str | pathlib.Path, *, registry: str) -> Credentials | None:
    """The credentials for `registry` in a Docker config.json (`auths.<host>.auth`, base64
    user:password, or `username`/`password`); None when the file has no entry for it.
    `credsStore`, `credHelpers` and identity tokens are not supported: a RegistryError
    naming them. Never a secret in a message."""
    name = str(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG + 1)
    except OSError as e:
        raise RegistryError(
            f"registry {registry}: cannot read the Docker config {name}: {e.strerror}; check "
            "auth.dockerConfigFile"
        ) from None
    if len(raw) > MAX_CONFIG:
        raise RegistryError(f"registry {registry}: Docker config {name} is over 1 MiB; refused")
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise RegistryError(
            f"registry {registry}: Docker config {name} is not JSON; write "
            '{"auths": {"<host>": {"auth": "<base64 user:password>"}}}'
        ) from None
    if not isinstance(doc, dict):
        raise RegistryError(f"registry {registry}: Docker config {name} is not a JSON object")
    helpers = doc.get("credHelpers")
    if isinstance(helpers, dict) and any(_same_host(k, registry) for k in helpers):
        raise RegistryError(
            f"registry {registry}: Docker config {name} names a credHelpers entry for it; "
            "credential helpers are not supported: put auths.<host>.auth in the file instead"
        )
    auths = doc.get("auths", {})
    if not isinstance(auths, dict):
        raise RegistryError(f"registry {registry}: Docker config {name}: auths is not an object")
    entry = next((v for k, v in auths.items() if _same_host(k, registry)), None)
    if entry is None or entry == {}:
        if doc.get("credsStore"):
            raise RegistryError(
                f"registry {registry}: Docker config {name} keeps its credentials in credsStore, "
                "which is not supported: put auths.<host>.auth in the file instead"
            )
        return None
    where = f"registry {registry}: Docker config {name}: auths entry"
    if not isinstance(entry, dict):
        raise RegistryError(f"{where} is not an object")
    if entry.get("identitytoken") or entry.get("registrytoken"):
        raise RegistryError(
            f"{where} holds an identity token, which is not supported: give auth "
            "(base64 user:password) or username and password"
        )
    if entry.get("auth"):
        try:
            decoded = base64.b64decode(str(entry["auth"]), validate=True).decode()
        except (binascii.Error, ValueError):
            raise RegistryError(f"{where}: auth is not base64 of user:password") from None
        user, sep, password = decoded.partition(":")
        if not sep or not user:
            raise RegistryError(f"{where}: auth is not base64 of user:password")
        return Credentials(username=user, password=password, source=name)
    name_, secret = entry.get("username"), entry.get("password")
    if isinstance(name_, str) and name_ and isinstance(secret, str):
        return Credentials(username=name_, password=secret, source=name)
    raise RegistryError(f"{where} has neither auth nor username and password")


def _same_host(key: str, registry: str) -> bool:
    """Whether a config.json key ("host", "https://host", "https://index.docker.io/v1/")
    names `registry`."""
    host = key.split("://", 1)[-1].split("/", 1)[0].lower()
    if host in _HUB_ALIASES and registry == DOCKER_HUB:
        return True
    return host == registry.lower()


@dataclasses.dataclass(frozen=True)
class Challenge:
    scheme: str  # "basic" or "bearer" (lowercase)
    params: dict[str, str]


_PARAM = re.compile(r'\s*([A-Za-z0-9_-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,"]*))\s*,?')


def parse_challenge(header: str) -> Challenge | None:
    """The first challenge of a `WWW-Authenticate` header (`Bearer realm="...",
    service="...",scope="..."` or `Basic realm="..."`); None when there is none."""
    text = header.strip()[:4096]
    if not text:
        return None
    scheme, _, rest = text.partition(" ")
    params: dict[str, str] = {}
    pos = 0
    while pos < len(rest):
        m = _PARAM.match(rest, pos)
        if not m or m.end() == pos:
            break
        value = m.group(2) if m.group(2) is not None else m.group(3)
        params[m.group(1).lower()] = re.sub(r"\\(.)", r"\1", value)
        pos = m.end()
    return Challenge(scheme=scheme.lower(), params=params)


class Auth:
    """How to log in to one registry: its credentials (None: anonymous) and the Bearer
    tokens it handed out, cached until `expires_in` (the clock is injectable for tests).
    The credentials are only for `registry`; hub.registry sends them nowhere else but that
    registry's token realm. Thread-safe: scans share one Auth per repository."""

    def __init__(
        self,
        *,
        registry: str = "",
        credentials: Credentials | None = None,
        source: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.source = source  # the config file named, even when it has no entry for registry
        self.credentials = credentials
        self.clock = clock
        self._lock = threading.Lock()
        self._tokens: dict[tuple[str, str], tuple[str, float]] = {}
        self.scheme: dict[str, str] = {}  # registry -> "basic" | "bearer" once it said so

    def __repr__(self) -> str:
        who = self.credentials.username if self.credentials else "anonymous"
        return f"Auth(registry={self.registry!r}, user={who!r})"

    @classmethod
    def anonymous(cls, *, clock: Callable[[], float] = time.monotonic) -> Auth:
        return cls(clock=clock)

    @classmethod
    def from_docker_config(
        cls,
        path: str | pathlib.Path,
        *,
        registry: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> Auth:
        """Credentials for `registry` from a Docker config.json (anonymous when it has no
        entry for that registry; the 401 message then says so)."""
        creds = docker_config(path, registry=registry)
        return cls(registry=registry, credentials=creds, source=str(path), clock=clock)

    def for_registry(self, registry: str) -> Credentials | None:
        """The credentials when they belong to `registry`, else None."""
        if self.credentials is not None and self.registry == registry:
            return self.credentials
        return None

    def token(self, registry: str, scope: str) -> str | None:
        with self._lock:
            got = self._tokens.get((registry, scope))
            if got is None:
                return None
            if self.clock() >= got[1]:
                del self._tokens[(registry, scope)]
                return None
            return got[0]

    def keep(self, registry: str, scope: str, token: str, *, expires_in: float) -> None:
        """Cache `token` for `expires_in` seconds less a margin (at least 0)."""
        with self._lock:
            if len(self._tokens) >= MAX_TOKENS:
                self._tokens.pop(next(iter(self._tokens)))
            margin = min(10.0, expires_in / 10)
            self._tokens[(registry, scope)] = (token, self.clock() + max(0.0, expires_in - margin))

    def forget(self, registry: str, scope: str) -> None:
        with self._lock:
            self._tokens.pop((registry, scope), None)


def tags(image: Image, body: bytes) -> list[str]:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        doc = None
    tags = doc.get("tags") if isinstance(doc, dict) else None
    if not isinstance(doc, dict) or not isinstance(tags, (list, type(None))):
        raise RegistryError(
            f'{image}: the registry answered a tag list that is not JSON {{"tags": [...]}}; '
            "check that the image names a container registry"
        )
    out = tags or []
    for tag in out:
        if not isinstance(tag, str) or not TAG.match(tag):
            raise RegistryError(
                f"{image}: the registry listed {str(tag)[:130]!r}, which is not a valid tag; "
                "report it to the registry's owner"
            )
    return list(out)


def next_page(links: list[str], *, current: str) -> str:
    """The absolute URL of the `rel="next"` page among `Link` headers; "" when none."""
    for link in links:
        m = _NEXT.search(link)
        if m:
            return str(urllib.parse.urljoin(current, m.group(1).strip()))
    return ""


def origin(url: str) -> tuple[str, str, int | None]:
    p = urllib.parse.urlsplit(url)
    try:
        port = p.port or (443 if p.scheme == "https" else 80)
    except ValueError:
        port = None
    return (p.scheme.lower(), (p.hostname or "").lower(), port)


def retry_after(value: str) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None if absent."""
    value = value.strip()
    if not value:
        return None
    if value.isdigit():
        return float(int(value[:9]))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def shown(url: str) -> str:
    p = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((p.scheme, p.netloc.rpartition("@")[2], p.path, "", ""))


def refused(image: Image, status: int, *, what: str, source: str, sent: bool) -> str:
    """The message for a 4xx answer to a registry request (`sent`: credentials went)."""
    host, repo = image.registry, image.repository
    if status == 401 and sent:
        return f"401 from {host} for {repo}: check the credentials in {source}"
    if status == 401:
        named = (
            f"{source} has no auths entry for {host}: add one"
            if source
            else "set auth.dockerConfigFile on its imageRepositories entry"
        )
        return f"401 from {host} for {repo}: the registry wants credentials; {named}"
    if status == 403:
        where = f" in {source}" if source else ""
        return (
            f"403 from {host} for {repo}: access denied; check that the credentials{where} "
            f"may pull {repo}"
        )
    if status == 404 and what == "tags":
        return (
            f"404 from {host}: repository {repo} not found; check the image name (and that "
            "something was pushed to it)"
        )
    if status == 404:
        return f"404 from {host}: {repo} has no {what}; check that it was pushed"
    return f"{status} from {host} for {repo} ({what}); the next scan tries again"


def gave_up(image: Image, status: int, tries: int) -> str:
    if status == 429:
        return (
            f"429 from {image.registry} for {image.repository}: too many requests, still "
            f"after {tries} tries; the next scan tries again (or scan less often)"
        )
    return (
        f"{status} from {image.registry} for {image.repository}, still after {tries} tries: "
        "the registry is failing; the next scan tries again"
    )


def token_answer(
    image: Image, status: int, body: bytes, *, realm: str, source: str
) -> tuple[str, float]:
    """(token, seconds it lasts) from a token service's answer (`token` or `access_token`,
    `expires_in`, 60 s without); a RegistryError naming the credentials file on 401/403."""
    said = f"{status} from {realm} (the token service of {image.registry}) for {image.repository}"
    if status in (401, 403):
        if source:
            raise RegistryError(f"{said}: check the credentials in {source}")
        raise RegistryError(
            f"{said}: the registry wants credentials; set auth.dockerConfigFile on its "
            "imageRepositories entry"
        )
    if not 200 <= status < 300:
        raise RegistryError(f"{said}; the next scan tries again")
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        doc = None
    if not isinstance(doc, dict):
        doc = {}
    token = doc.get("token") or doc.get("access_token")
    if not isinstance(token, str) or not token or any(c in token for c in "\r\n"):
        raise RegistryError(f"{image}: the token service {realm} answered no token")
    expires = doc.get("expires_in", 60)
    if not isinstance(expires, (int, float)) or isinstance(expires, bool) or expires < 0:
        expires = 60
    return token, float(min(expires, 24 * 3600))


def internal(addresses: list[str]) -> bool:
    """Whether any address is loopback, link-local or unspecified (IPv4-mapped too)."""
    for text in addresses:
        try:
            ip = ipaddress.ip_address(text.split("%", 1)[0])
        except ValueError:
            continue
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if ip.is_loopback or ip.is_link_local or ip.is_unspecified:
            return True
    return False
