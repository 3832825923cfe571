"""The chart fetch stage: resolve an app's chart version against an allowlisted Helm
repository or OCI registry, download the archive once into the hub's cache, and do the same
for the chart dependencies it lacks, so that rendering (hub.helm) stays offline.

Index repositories: GET index.yaml (cached for the repository's `interval`), pick the highest
version the range allows (hub.semver), download the archive and check its sha256 against the
index's digest. OCI: `helm pull` (hub.chartfetch), keeping the manifest digest. The cache is
keyed by repository, chart, version and digest, private to the hub; an exact version already
cached is never fetched again, so it renders while its repository is down. A range is resolved
again when an app's Git revision is new to it or its repository's interval has passed.

Never renders; every failure is a FetchError that is that app's error.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import shutil
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import yaml

from fleetops.hub import chartarchive, chartfetch, chartspec, config, semver
from fleetops.hub.chartarchive import FetchError
from fleetops.hub.sandbox import Tools
from fleetops.proto import privatefile, yamlsafe

__all__ = ["Charts", "FetchError", "Pulled"]
INDEX_LIMITS = yamlsafe.Limits(
    max_chars=chartfetch.MAX_INDEX, max_nodes=20_000_000, max_alias_nodes=1_000_000
)
MAX_DEPENDENCIES = 50
# An index fetched this recently serves every app and target of one planning pass; a
# resolution that is due (new revision, interval passed) fetches it again after that.
INDEX_REUSE = 5.0


@dataclasses.dataclass(frozen=True)
class Pulled:
    """A chart archive in the cache: where it came from and what it is."""

    repo: str  # the helmRepositories entry
    chart: str
    version: str
    digest: str  # sha256:... of the archive (index repos) or of the OCI manifest
    archive: pathlib.Path

    def describe(self) -> str:
        return f"{self.chart} {self.version} ({self.digest})"


@dataclasses.dataclass(frozen=True)
class _Resolution:
    pulled: Pulled
    at: float
    revisions: frozenset[str]


class Charts:
    """Chart archives on the hub's disk under `root`; thread-safe (renders run in threads)."""

    def __init__(
        self, *, root: pathlib.Path, tools: Tools, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._root = root
        self._tools = tools
        self._clock = clock
        self._lock = threading.Lock()
        self._indexes: dict[str, tuple[float, dict[str, list[dict[str, Any]]]]] = {}
        # (repository url, chart, range) -> what it resolved to: a url edited in hub.yaml
        # resolves again
        self._resolved: dict[tuple[str, str, str], _Resolution] = {}

    def due(self, repos: Sequence[config.HelmRepository]) -> bool:
        """Some range was resolved longer ago than its repository's interval."""
        intervals = {r.url: r.interval for r in repos}
        now = self._clock()
        with self._lock:
            return any(
                now - res.at >= intervals.get(k[0], 0.0) for k, res in self._resolved.items()
            )

    def forget_due(self, repos: Sequence[config.HelmRepository]) -> None:
        """Forget resolutions past their interval (nothing resolved them again)."""
        intervals = {r.url: r.interval for r in repos}
        now = self._clock()
        with self._lock:
            for k in [k for k, r in self._resolved.items() if now - r.at >= intervals.get(k[0], 0)]:
                del self._resolved[k]

    def current(
        self, source: config.Chart, repos: Sequence[config.HelmRepository]
    ) -> Pulled | None:
        """What `source` resolved to last, without the network."""
        try:
            repo, name = chartspec.allowed(source, repos)
        except chartspec.NotAllowed:
            return None
        with self._lock:
            got = self._resolved.get((repo.url, name, source.version))
        return got.pulled if got else None

    def fresh(
        self, source: config.Chart, *, repos: Sequence[config.HelmRepository], revision: str
    ) -> Pulled | None:
        """What `source` resolved to, when that needs no new resolution for `revision`
        (no network, no blocking)."""
        try:
            repo, name = chartspec.allowed(source, repos)
        except chartspec.NotAllowed:
            return None
        with self._lock:
            got = self._resolved.get((repo.url, name, source.version))
        if got is not None and revision in got.revisions and self._clock() - got.at < repo.interval:
            return got.pulled
        return None

    def resolve(
        self, source: config.Chart, *, repos: Sequence[config.HelmRepository], revision: str
    ) -> Pulled:
        """The archive `source` stands for now (blocking: call it in a thread)."""
        try:
            repo, name = chartspec.allowed(source, repos)
        except chartspec.NotAllowed as e:
            raise FetchError(f"helm.chart: {e}") from None
        k = (repo.url, name, source.version)
        with self._lock:
            got = self._resolved.get(k)
        if got is not None and revision in got.revisions and self._clock() - got.at < repo.interval:
            return got.pulled
        if name.startswith(("https://", "http://")):
            pulled = self._pull_url(repo, url=name)  # allowed() checked it is under `repo`
        else:
            pulled = self.pull(repo, name=name, version=source.version, repos=repos)
        with self._lock:
            seen = got.revisions if got is not None and got.pulled == pulled else frozenset()
            self._resolved[k] = _Resolution(pulled, self._clock(), seen | {revision})
        return pulled

    def pull(
        self,
        repo: config.HelmRepository,
        *,
        name: str,
        version: str,
        repos: Sequence[config.HelmRepository] = (),
    ) -> Pulled:
        """The archive of chart `name` at `version` (exact or a range) from `repo`; its
        archive may live under another allowlist entry of `repos`. `name` is a chart name
        (for an OCI registry, path segments under the entry ending in one), never a URL."""
        if not all(chartspec.chart_name_ok(part) for part in name.split("/")) or (
            "/" in name and not repo.oci
        ):
            raise FetchError(
                f"chart name {name!r} is not a chart name (letters, digits, '.', '_', '-'; no "
                f"URL, '/' or '..'); nothing was fetched from {repo.name}"
            )
        rng = semver.parse_range(version) if version else None
        if rng is not None and rng.exact is not None:
            cached = self._cached(repo, name, str(rng.exact))
            if cached is not None:
                return cached
        if repo.oci:
            return self._pull_oci(repo, name=name, version=version)
        entries = self._index(repo).get(name)
        if not entries:
            raise FetchError(
                f"helm.chart: chart {name!r} is not in Helm repository {repo.name} "
                f"({repo.url}); check the name"
            )
        published = {str(e.get("version", "")): e for e in entries}
        # without a version Helm takes the newest release, never a prerelease
        picked = semver.best(published, rng or semver.parse_range(">=0.0.0"))
        if picked is None:
            raise FetchError(
                f"helm.version: no version of chart {name} in {repo.name} matches "
                f"{version or '(newest release)'}; newest published: "
                f"{', '.join(_newest(published)) or '(none)'}"
            )
        entry = published[picked]
        cached = self._cached(repo, name, picked)
        if cached is not None:
            return cached
        urls = entry.get("urls") or []
        if not urls or not isinstance(urls[0], str):
            raise FetchError(f"{repo.name}: index entry {name} {picked} has no download URL")
        url = urllib.parse.urljoin(repo.url + "/", urls[0])
        host = _allowlisted(url, repo=repo, repos=repos)
        if host is None:
            raise FetchError(
                f"{repo.name}: chart {name} {picked} downloads from {url}, outside the "
                f"allowlist; add a helmRepositories entry whose url it starts with (e.g. "
                f"{url.rsplit('/', 1)[0]}) or mirror the chart"
            )
        data = chartfetch.get(
            url, repo=host, what=f"chart {name} {picked}", max_bytes=chartfetch.MAX_CHART
        )
        digest = hashlib.sha256(data).hexdigest()
        want = str(entry.get("digest") or "").removeprefix("sha256:")
        if want and want != digest:
            raise FetchError(
                f"chart {name} {picked} from {repo.name}: the archive's sha256 is {digest[:16]}… "
                f"but the index says {want[:16]}…; refused (a tampered or half-published "
                "chart; the clusters keep what they run)"
            )
        return self._store(repo, name, picked, f"sha256:{digest}", data)

    def _pull_url(self, repo: config.HelmRepository, *, url: str) -> Pulled:
        """A chart archive by URL (Fleet's `helm.chart: https://...tgz`): fetched once."""
        cached = self._cached(repo, url, "archive")
        if cached is None:
            data = chartfetch.get(
                url, repo=repo, what=f"chart {url}", max_bytes=chartfetch.MAX_CHART
            )
            meta = chartarchive.chart_yaml(data, what=f"chart {url}")
            cached = self._store(
                repo,
                url,
                "archive",
                _sha256(data),
                data,
                shown=(str(meta.get("name") or url), str(meta.get("version") or "")),
            )
        return cached

    def _pull_oci(self, repo: config.HelmRepository, *, name: str, version: str) -> Pulled:
        self._private(self._root)
        archive, got, digest = chartfetch.oci_pull(
            f"{repo.url}/{name}", version=version, repo=repo, tools=self._tools, root=self._root
        )
        try:
            data = archive.read_bytes()
            got = got or chartarchive.chart_yaml(data, what=f"chart {name}").get("version", "")
            return self._store(repo, name, str(got), digest or _sha256(data), data)
        finally:
            shutil.rmtree(archive.parent.parent, ignore_errors=True)

    def _dir(self, repo: config.HelmRepository, name: str, version: str) -> pathlib.Path:
        safe = [urllib.parse.quote(p, safe="") for p in (repo.name, name, version)]
        return self._root.joinpath(*safe)

    def _private(self, folder: pathlib.Path) -> None:
        """`folder` and every directory between it and the cache root: the owner's only."""
        self._root.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self._root, 0o700)
        path = self._root
        for part in folder.relative_to(self._root).parts:
            path = path / part
            path.mkdir(exist_ok=True, mode=0o700)

    def _cached(self, repo: config.HelmRepository, name: str, version: str) -> Pulled | None:
        meta = self._dir(repo, name, version) / "pulled.json"
        try:
            doc = json.loads(meta.read_text())
            archive = meta.parent / doc["archive"]
            if _sha256(archive.read_bytes()) != doc["sha256"] or doc["url"] != repo.url:
                return None
            shown = doc.get("shown") or (name, version)
            return Pulled(repo.name, str(shown[0]), str(shown[1]), doc["digest"], archive)
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            return None

    def _store(
        self,
        repo: config.HelmRepository,
        name: str,
        version: str,
        digest: str,
        data: bytes,
        *,
        shown: tuple[str, str] | None = None,  # (chart, version) when not the cache's key
    ) -> Pulled:
        if not version:
            raise FetchError(f"chart {name} from {repo.name}: the archive names no version")
        folder = self._dir(repo, name, version)
        self._private(folder)
        sha = _sha256(data)
        archive = folder / f"{sha.removeprefix('sha256:')}.tgz"
        privatefile.write(archive, data)
        doc: dict[str, Any] = {
            "archive": archive.name,
            "sha256": sha,
            "digest": digest,
            "url": repo.url,
        }
        if shown:
            doc["shown"] = list(shown)
        privatefile.write(folder / "pulled.json", json.dumps(doc).encode())
        chart, version = shown or (name, version)
        return Pulled(repo.name, chart, version, digest, archive)

    def _index(self, repo: config.HelmRepository) -> dict[str, list[dict[str, Any]]]:
        with self._lock:
            got = self._indexes.get(repo.url)
        if got is not None and self._clock() - got[0] < min(INDEX_REUSE, repo.interval):
            return got[1]
        data = chartfetch.get(
            repo.url + "/index.yaml",
            repo=repo,
            what=f"Helm repository {repo.name}",
            max_bytes=chartfetch.MAX_INDEX,
        )
        try:
            doc = yamlsafe.load(
                data.decode(errors="replace"), source="index.yaml", limits=INDEX_LIMITS
            )
        except yaml.YAMLError as e:
            raise FetchError(
                f"Helm repository {repo.name}: its index.yaml does not read: {yamlsafe.describe(e)}"
            ) from None
        entries = doc.get("entries") if isinstance(doc, dict) else None
        if not isinstance(entries, dict):
            raise FetchError(
                f"Helm repository {repo.name}: {repo.url}/index.yaml has no entries; is the "
                "url a Helm chart repository?"
            )
        index = {
            str(k): [e for e in v if isinstance(e, dict)]
            for k, v in entries.items()
            if isinstance(v, list)
        }
        with self._lock:
            self._indexes[repo.url] = (self._clock(), index)
        return index

    def dependencies(
        self,
        chart_yaml: Mapping[str, Any],
        *,
        present: set[str],
        repos: Sequence[config.HelmRepository],
        chart_name: str,
    ) -> tuple[Pulled, ...]:
        """The archives of the chart's `dependencies` that `present` (names in its charts/)
        lacks, each from an allowlisted repository; FetchError naming the dependency and the
        fix when one is not allowed or not found."""
        deps = chart_yaml.get("dependencies") or []
        if not isinstance(deps, list):
            raise FetchError(f"chart {chart_name}: Chart.yaml dependencies must be a list")
        out = []
        for i, dep in enumerate(deps[:MAX_DEPENDENCIES]):
            if not isinstance(dep, dict) or not isinstance(dep.get("name"), str):
                raise FetchError(f"chart {chart_name}: dependencies[{i}] needs a name")
            name = dep["name"]
            if name in present:
                continue  # vendored in charts/: nothing to build, nothing fetched
            if not chartspec.chart_name_ok(name):  # it goes into URLs and cache paths
                raise FetchError(
                    f"chart {chart_name}: dependencies[{i}] name {name[:100]!r} is not a chart "
                    "name (letters, digits, '.', '_', '-'; no URL, '/' or '..'); a dependency "
                    "comes from its repository by name"
                )
            where = str(dep.get("repository") or "")
            if not where or where.startswith("file://"):
                raise FetchError(
                    f"chart {chart_name}: dependency {name} ({where or 'no repository'}) is "
                    "not in charts/; vendor it (helm dependency build, then commit charts/)"
                )
            repo = chartspec.dependency_repository(where, repos)
            if repo is None:
                raise FetchError(
                    f"chart {chart_name}: dependency {name} comes from {where}, which is not "
                    f"allowlisted; add a helmRepositories entry with url {where.rstrip('/')} "
                    "to hub.yaml, or vendor the dependency in charts/"
                )
            version = str(dep.get("version") or "")
            try:
                out.append(self.pull(repo, name=name, version=version, repos=repos))
            except semver.RangeError as e:
                raise FetchError(f"chart {chart_name}: dependency {name}: {e}") from None
        return tuple(out)

    def dependencies_of_archive(
        self, pulled: Pulled, *, repos: Sequence[config.HelmRepository]
    ) -> tuple[Pulled, ...]:
        """The dependencies a pulled archive lacks (most are packaged with theirs)."""
        data = pulled.archive.read_bytes()
        what = f"chart {pulled.chart} {pulled.version}"
        chart_yaml = chartarchive.chart_yaml(data, what=what)
        present = chartarchive.vendored(data, what=what)
        return self.dependencies(chart_yaml, present=present, repos=repos, chart_name=pulled.chart)


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _newest(published: Mapping[str, Any]) -> list[str]:
    versions = []
    for v in published:
        try:
            versions.append((semver.parse(v), v))
        except semver.RangeError:
            continue
    return [v for _, v in sorted(versions, reverse=True)[:5]]


def _allowlisted(
    url: str, *, repo: config.HelmRepository, repos: Sequence[config.HelmRepository]
) -> config.HelmRepository | None:
    """The allowlist entry an archive URL is fetched under (its credentials go with it):
    the repository's own host, else an entry the URL starts with; None when none allows it."""
    here = chartspec.origin(url)
    if here is not None and here == chartspec.origin(repo.url) and chartspec.segments(url):
        return repo
    return next((r for r in repos if not r.oci and chartspec.under(url, r.url)), None)
