"""Helm charts from repositories, as configured: hub.yaml's `helmRepositories` allowlist and
an app's chart source (`helm: {repo, chart, version, releaseName}`, or fleet.yaml's
`helm.repo/chart/version/releaseName`), validated, and which allowlist entry a source may
use (`allowed`).

Pure: no network, no files. Fetching is hub.charts'. Credentials are never held here, only
the names of the env vars or files that hold them.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any

from fleetops.hub import configfields, semver

_REPO_FIELDS = (
    "name",
    "url",
    "usernameEnv",
    "passwordEnv",
    "usernameFile",
    "passwordFile",
    "caFile",
    "insecurePlainHttp",
    "interval",
)
_CHART_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_REF_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")  # host:port, then path segments
CHART_FIELDS = ("repo", "chart", "version", "releaseName", "values", "valuesFiles")


@dataclasses.dataclass(frozen=True)
class HelmRepository:
    """An allowlisted Helm chart repository (`https://...`, with an index.yaml) or OCI
    registry path (`oci://host/path`): the hub fetches charts from these and nothing else.
    Credentials are named, never written here: env vars or files the hub reads."""

    name: str
    url: str
    username_env: str = ""
    password_env: str = ""
    username_file: str = ""
    password_file: str = ""
    ca_file: str = ""  # a PEM bundle to trust for this repository's TLS
    insecure_plain_http: bool = False  # oci on a loopback address only (a test registry)
    interval: float = 300.0  # how often version ranges are resolved again

    @property
    def oci(self) -> bool:
        return self.url.startswith("oci://")


@dataclasses.dataclass(frozen=True)
class Chart:
    """Where an app's Helm chart comes from, when not from its directory in Git: `repo` (a
    helmRepositories name, or in fleet.yaml its URL) and `chart` (a name in that repository,
    or an `oci://` reference), or `chart` alone (an `oci://` reference, or a chart directory
    relative to the app's path). `version`: exact or a range (hub.semver); "" the newest
    release. `values`/`values_files` apply under every target's."""

    repo: str = ""
    chart: str = ""
    version: str = ""
    release_name: str = ""
    values: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    values_files: tuple[str, ...] = ()

    @property
    def remote(self) -> bool:
        return bool(self.repo) or self.chart.startswith(("oci://", "https://", "http://"))


class NotAllowed(ValueError):
    """A chart source no helmRepositories entry allows; the message says which entry to add."""


def repository(r: configfields.Reader, item: Any, *, path: str) -> HelmRepository:
    """One `helmRepositories` entry."""
    m = r.mapping(item, path, _REPO_FIELDS)
    url = r.string(m, "url", path=path, required=True).rstrip("/")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("https", "http", "oci") or not parts.hostname:
        raise r.fail(
            f"{path}.url",
            message=f"{url!r}: expected https://host/path (a chart repository with an "
            "index.yaml) or oci://host/path (an OCI registry)",
        )
    if parts.username or parts.password:
        raise r.fail(
            f"{path}.url",
            message="must not contain credentials; name env vars in usernameEnv/passwordEnv "
            "or files in usernameFile/passwordFile",
        )
    plain = r.boolean(m, "insecurePlainHttp", path=path, default=False)
    if plain and (parts.scheme != "oci" or not _loopback(parts.hostname)):
        raise r.fail(
            f"{path}.insecurePlainHttp",
            message="is only for an oci:// registry on a loopback address (a test registry); "
            "use TLS (with caFile for a private CA) anywhere else",
        )
    out = HelmRepository(
        name=r.name(m, "name", path=path),
        url=url,
        username_env=r.string(m, "usernameEnv", path=path),
        password_env=r.string(m, "passwordEnv", path=path),
        username_file=r.string(m, "usernameFile", path=path),
        password_file=r.string(m, "passwordFile", path=path),
        ca_file=r.string(m, "caFile", path=path),
        insecure_plain_http=plain,
        interval=r.duration(m, "interval", path=path, default=HelmRepository.interval),
    )
    has_user = bool(out.username_env or out.username_file)
    has_password = bool(out.password_env or out.password_file)
    if has_user != has_password:
        raise r.fail(
            path,
            message="credentials need both a username (usernameEnv or usernameFile) and a "
            "password (passwordEnv or passwordFile)",
        )
    if (out.username_env and out.username_file) or (out.password_env and out.password_file):
        raise r.fail(path, message="give each credential once: an env var or a file, not both")
    return out


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def chart(
    r: configfields.Reader, value: Any, *, path: str, repos: Sequence[HelmRepository]
) -> Chart:
    """An app's `helm` block in hub.yaml (`repo` names a helmRepositories entry)."""
    out = chart_fields(r, value, path=path)
    if out.repo and all(x.name != out.repo for x in repos):
        names = ", ".join(x.name for x in repos) or "(none)"
        raise r.fail(
            f"{path}.repo",
            message=f"unknown Helm repository {out.repo!r}; helmRepositories: {names} (add "
            "an entry with its url to helmRepositories)",
        )
    if out.remote:
        try:
            allowed(out, repos)
        except NotAllowed as e:
            raise r.fail(f"{path}.chart", message=str(e)) from None
    return out


def chart_fields(r: configfields.Reader, value: Any, *, path: str) -> Chart:
    """The chart fields of a `helm` block (hub.yaml or fleet.yaml), each checked alone."""
    m = r.mapping(value, path, CHART_FIELDS)
    repo = r.string(m, "repo", path=path)
    name = r.string(m, "chart", path=path)
    version = m.get("version")
    if isinstance(version, (int, float)) and not isinstance(version, bool):
        version = str(version)  # `version: 1.2` in YAML is a number
    version = r.string({"version": version}, "version", path=path)
    if repo and not name:
        raise r.fail(f"{path}.chart", message="is required with repo: the chart's name")
    if version and not (repo or name.startswith(("oci://", "https://", "http://"))):
        raise r.fail(
            f"{path}.version",
            message="needs a chart from a repository: set repo (and chart), or chart to an "
            "oci:// reference",
        )
    if version:
        try:
            semver.parse_range(version)
        except semver.RangeError as e:
            raise r.fail(f"{path}.version", message=str(e)) from None
    if name.startswith("oci://") and repo:
        raise r.fail(
            f"{path}.repo", message="give either repo and a chart name, or chart as oci://..."
        )
    archive_url = name.startswith(("https://", "http://")) and not repo
    if archive_url:  # Fleet's form: a chart archive's URL, under an allowlisted url
        if version:
            raise r.fail(
                f"{path}.version",
                message="a chart archive URL is one version; drop version, or use repo and "
                "the chart's name for a range",
            )
        if not name.endswith(".tgz") or any(c in name for c in "?#@ "):
            raise r.fail(
                f"{path}.chart",
                message=f"{name!r}: expected the URL of a chart archive (.tgz) without "
                "credentials or query",
            )
    elif name and not repo and not name.startswith("oci://"):
        if "://" in name or name.startswith("git::"):
            raise r.fail(
                f"{path}.chart",
                message=f"{name!r}: a chart URL is not fetched; use repo (a helmRepositories "
                "url or name) with the chart's name, an oci:// reference, or an https:// "
                "URL of a .tgz",
            )
        r.relpath({"chart": name}, "chart", path=path)  # a chart directory in the repository
    elif name and not archive_url:
        where = name.removeprefix("oci://")
        parts = where.split("/")
        if (
            not _CHART_NAME.match(parts[-1])
            or any(p in ("", ".", "..") for p in parts)
            or not all(_REF_PART.match(p) for p in parts)
        ):
            raise r.fail(
                f"{path}.chart",
                message=f"{name!r}: expected a chart name (letters, digits, '.', '_', '-') or "
                "oci://host/path/name",
            )
    values = m.get("values") or {}
    if not isinstance(values, dict):
        raise r.fail(f"{path}.values", message="expected a mapping of Helm values")
    files = tuple(
        r.relpath({"f": f}, "f", path=f"{path}.valuesFiles[{j}]")
        for j, f in enumerate(r.items(m.get("valuesFiles"), f"{path}.valuesFiles"))
    )
    release = r.string(m, "releaseName", path=path)
    if release and (len(release) > 53 or not configfields.DNS_LABEL.match(release)):
        raise r.fail(
            f"{path}.releaseName",
            message=f"{release!r}: at most 53 lowercase letters, digits and '-' (Helm's rule)",
        )
    return Chart(repo, name, version, release, values, files)


def allowed(source: Chart, repos: Sequence[HelmRepository]) -> tuple[HelmRepository, str]:
    """The allowlist entry `source` fetches from and the chart's name there (the last part of
    an oci:// reference); NotAllowed saying which entry to add."""
    if source.chart.startswith("oci://"):
        ref = source.chart.rstrip("/")
        base = ref.rpartition("/")[0]
        found = next(
            (x for x in repos if x.oci and (base == x.url or base.startswith(x.url + "/"))),
            None,
        )
        name = ref[len(found.url) + 1 :] if found is not None else ""
        if found is None or not name:
            raise NotAllowed(
                f"chart {ref!r} is not under an allowlisted OCI registry path; add a "
                f"helmRepositories entry with url {base or ref}"
            )
        return found, name
    if source.chart.startswith(("https://", "http://")) and not source.repo:
        by_prefix = next((x for x in repos if not x.oci and under(source.chart, x.url)), None)
        if by_prefix is None:
            raise NotAllowed(
                f"chart archive {source.chart} is not under an allowlisted url; add a "
                f"helmRepositories entry with url {source.chart.rsplit('/', 1)[0]}"
            )
        return by_prefix, source.chart
    by_name = next((x for x in repos if x.name == source.repo), None)
    if by_name is not None:
        return by_name, source.chart
    url = source.repo.rstrip("/")
    by_url = next((x for x in repos if x.url == url), None)
    if by_url is None:
        raise NotAllowed(
            f"Helm repository {source.repo!r} is not allowlisted; add a helmRepositories "
            f"entry with url {url} to hub.yaml (or name an existing entry)"
        )
    return by_url, source.chart


def chart_name_ok(name: str) -> bool:
    """`name` is one chart name (letters, digits, '.', '_', '-', starting with a letter or
    digit): no scheme, no '/', never '.' or '..'. A Chart.yaml dependency's name is joined into
    URLs and cache paths, so nothing else may pass."""
    return bool(_CHART_NAME.match(name)) and len(name) <= 253


_DEFAULT_PORTS = {"http": 80, "https": 443, "oci": 443}


def origin(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of `url`, lowercased, with the scheme's default port; None when
    it has no host or a port that does not parse."""
    p = urllib.parse.urlsplit(url)
    scheme = p.scheme.lower()
    try:
        port = p.port
    except ValueError:
        return None
    if not p.hostname or scheme not in _DEFAULT_PORTS:
        return None
    return scheme, p.hostname.lower(), port or _DEFAULT_PORTS[scheme]


def segments(url: str) -> tuple[str, ...] | None:
    """The path of `url` as percent-decoded segments; None when one is '.' or '..' (or
    decodes to one), or holds a '/', a backslash or a NUL once decoded: such a path means
    another place to a server that normalises it, so it is never compared."""
    p = urllib.parse.urlsplit(url)
    if "\\" in p.path:
        return None
    raw = p.path.split("/")[1:] if p.path.startswith("/") else p.path.split("/")
    out = []
    for part in raw:
        try:
            plain = urllib.parse.unquote(part, errors="strict")
        except UnicodeDecodeError:
            return None
        if plain in (".", "..") or any(c in plain for c in "/\\\0"):
            return None
        out.append(plain)
    while out and out[-1] == "":
        out.pop()  # https://host/charts/ is https://host/charts
    return tuple(out)


def under(url: str, base: str) -> bool:
    """`url` is strictly below `base` (an allowlist entry's url): the same scheme, host and
    port after normalising, and `base`'s path segments, then more. No query, fragment or
    credentials in `url`."""
    p = urllib.parse.urlsplit(url)
    if p.username or p.password or p.query or p.fragment:
        return False
    here, there = origin(url), origin(base)
    a, b = segments(url), segments(base)
    if here is None or here != there or a is None or b is None:
        return False
    return len(a) > len(b) and a[: len(b)] == b


def dependency_repository(
    repository: str, repos: Sequence[HelmRepository]
) -> HelmRepository | None:
    """The allowlist entry a Chart.yaml dependency's `repository:` refers to (a URL, an
    oci:// registry path, or `@name`/`alias:name` for a helmRepositories name); None when no
    entry allows it."""
    if repository.startswith(("@", "alias:")):
        name = repository.split(":", 1)[1] if repository.startswith("alias:") else repository[1:]
        return next((x for x in repos if x.name == name), None)
    url = repository.rstrip("/")
    return next((x for x in repos if x.url == url), None)
