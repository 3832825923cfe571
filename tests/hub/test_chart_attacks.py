"""Attacks on the chart fetch stage (issue 13 review: H3, M3, M4, M5, L2, L3, L4, L5), each
written as the hostile input against the hub's real fetch code, a real chart repository
(http.server on loopback), a real OCI registry (docker-registry) and real sockets."""

from __future__ import annotations

import base64
import contextlib
import io
import pathlib
import secrets
import socket
import tarfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import yaml

from fleetops.hub import chartarchive, chartfetch, charts, chartspec, config, errors
from fleetops.proto.v1 import agent_pb2
from tests.support import chartrepo, fleet, hubproc, wait


def store(tmp_path: pathlib.Path) -> charts.Charts:
    return charts.Charts(root=tmp_path / "cache", tools=hubproc.tools())


def entry(name: str, url: str, **kw: Any) -> chartspec.HelmRepository:
    return chartspec.HelmRepository(name=name, url=url, **kw)


def with_credentials(
    monkeypatch: pytest.MonkeyPatch, name: str, url: str, *, password: str = "pw"
) -> chartspec.HelmRepository:
    monkeypatch.setenv("CHARTS_USER", "fleet")
    monkeypatch.setenv("CHARTS_PASSWORD", password)
    return entry(name, url, username_env="CHARTS_USER", password_env="CHARTS_PASSWORD")


def rewrite_index(repo: chartrepo.HttpRepo, chart: str, **fields: Any) -> None:
    """Set `fields` on every published version of `chart` in the served index.yaml."""
    path = repo.dir / "index.yaml"
    doc = yaml.safe_load(path.read_text())
    for e in doc["entries"][chart]:
        e.update(fields)
    path.write_text(yaml.safe_dump(doc))


@contextlib.asynccontextmanager
async def connected(proc: hubproc.HubProc, cluster: str) -> AsyncIterator[None]:
    """An agent for `cluster` connected to the hub, receiving assignments."""
    agent = await proc.agent(cluster)
    async with proc.channel(agent) as channel:
        stream = await agent.connect(channel, agent_pb2.Hello())
        await stream.next_assignments()
        yield
        stream.call.cancel()


def render_error(proc: hubproc.HubProc, app: str = "shop") -> str:
    found = next(a for a in proc.hub.snapshot().apps if a.name == app)
    return " ".join(t.render_error for t in found.targets)


# H3 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/latest/meta-data/x", "/steal.tgz"])
def test_a_dependency_named_by_url_is_refused_and_nothing_is_fetched(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    with (
        chartrepo.http_repo(tmp_path / "corp") as corp,
        chartrepo.http_repo(tmp_path / "internal") as internal,
    ):
        repos = [with_credentials(monkeypatch, "corp", corp.url)]
        for target in (internal.url + path, corp.url + path):
            doc = {"dependencies": [{"name": target, "repository": "@corp"}]}
            with pytest.raises(charts.FetchError) as got:
                store(tmp_path).dependencies(doc, present=set(), repos=repos, chart_name="app")
            assert "dependencies[0] name" in str(got.value)
            assert "is not a chart name" in str(got.value)
        assert internal.seen == []  # the internal address was never asked
        assert corp.seen == []  # nor the entry's host, with or without its credentials


async def test_a_committed_chart_with_a_url_dependency_is_its_apps_error_and_fetches_nothing(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with (
        chartrepo.http_repo(tmp_path / "corp") as corp,
        chartrepo.http_repo(tmp_path / "internal") as internal,
    ):
        monkeypatch.setenv("CHARTS_USER", "fleet")
        monkeypatch.setenv("CHARTS_PASSWORD", "pw")
        git = fleet.Repo.create(tmp_path / "git")
        chartrepo.write_chart(
            git.work / "apps", "shop", "0.1.0",
            dependencies=[{"name": f"{internal.url}/latest/meta-data/x", "repository": "@corp"}],
        )  # fmt: skip
        git.commit("a chart whose dependency is a URL")
        cfg = hubproc.hub_yaml(git.url, {"shop": "apps/shop"})
        cfg["helmRepositories"] = [{"name": "corp", "url": corp.url,
                                    "usernameEnv": "CHARTS_USER",
                                    "passwordEnv": "CHARTS_PASSWORD"}]  # fmt: skip
        async with (
            hubproc.running(tmp_path / "hub", cfg, tools=hubproc.tools()) as proc,
            connected(proc, "c1"),
        ):
            await wait.until(
                "the URL dependency refused",
                lambda: "is not a chart name" in render_error(proc),
                within=30,
                explain=lambda: render_error(proc) or "no render error",
            )
            assert "apps/shop/Chart.yaml" in render_error(proc)
            assert proc.hub.assignment("c1", "shop") is None
        assert internal.seen == [] and corp.seen == []  # nothing was asked of either


def test_credentials_of_an_https_entry_never_go_to_plain_http_on_its_host(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with chartrepo.http_repo(tmp_path / "repo") as served:
        https_entry = with_credentials(monkeypatch, "corp", f"https://127.0.0.1:{served.port}")
        data = chartfetch.get(
            f"http://127.0.0.1:{served.port}/index.yaml",
            repo=https_entry,
            what="index",
            max_bytes=1 << 20,
        )
        assert b"entries" in data
        assert served.seen == [""]  # asked once, without an Authorization header


# M5 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "chart",
    [
        "https://charts.corp.example/team/../other/secret-1.0.0.tgz",
        "https://charts.corp.example/team/%2e%2e/other/secret-1.0.0.tgz",
        "https://charts.corp.example/team/%2E%2E/other/secret-1.0.0.tgz",
        "https://charts.corp.example/team/./../other/secret-1.0.0.tgz",
        "https://charts.corp.example/team/x%2f..%2f..%2fother/secret-1.0.0.tgz",
        "https://charts.corp.example/team\\..\\other/secret-1.0.0.tgz",
        "https://charts.corp.example/teamother/secret-1.0.0.tgz",
        "http://charts.corp.example/team/secret-1.0.0.tgz",
    ],
)
def test_an_archive_url_outside_the_entry_path_is_not_allowed(chart: str) -> None:
    repos = [entry("team", "https://charts.corp.example/team")]
    with pytest.raises(chartspec.NotAllowed, match="not under an allowlisted url"):
        chartspec.allowed(chartspec.Chart(chart=chart), repos)


def test_an_archive_url_is_compared_normalised() -> None:
    repos = [entry("team", "https://charts.corp.example/team")]
    for same in (
        "https://charts.corp.example/team/demo-1.0.0.tgz",
        "https://Charts.Corp.Example:443/team/demo-1.0.0.tgz",
        "https://charts.corp.example/%74eam/demo-1.0.0.tgz",
    ):
        assert chartspec.allowed(chartspec.Chart(chart=same), repos)[0].name == "team"


def test_an_index_url_walking_out_of_an_entry_gets_no_credentials(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with (
        chartrepo.http_repo(tmp_path / "public") as public,
        chartrepo.http_repo(tmp_path / "private", auth="fleet:pw") as private,
    ):
        public.publish(chartrepo.package(tmp_path, "demo", "1.0.0"))
        walk = f"{private.url}/team/../other/demo-1.0.0.tgz"
        rewrite_index(public, "demo", urls=[walk])
        team = with_credentials(monkeypatch, "team", private.url + "/team")
        repos = [entry("public", public.url), team]
        with pytest.raises(charts.FetchError, match="outside the allowlist"):
            store(tmp_path).pull(repos[0], name="demo", version="1.0.0", repos=repos)
        assert private.seen == []  # team's credentials went nowhere


# M3 ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def slow_server(head: bytes, *, every: float = 0.2) -> Iterator[str]:
    """A server that sends `head` quickly, then one byte every `every` seconds, forever."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        with contextlib.suppress(OSError):
            conn, _ = listener.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(head)
                while not stop.wait(every):
                    conn.sendall(b"x")

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        listener.close()
        t.join(5)


def in_thread_within(seconds: float, call: Any) -> BaseException | None:
    """What `call()` raised (None if nothing), failing the test if it takes over `seconds`."""
    got: list[BaseException | None] = []

    def run() -> None:
        try:
            call()
            got.append(None)
        except BaseException as e:
            got.append(e)

    t = threading.Thread(target=run, daemon=True)
    start = time.monotonic()
    t.start()
    t.join(seconds)
    assert got, (
        f"the fetch still ran after {seconds} s (started {time.monotonic() - start:.1f} s ago)"
    )
    return got[0]


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\n",  # a body dripping
        b"HTTP/1.1 200 OK\r\nX-Slow: ",  # headers dripping
    ],
)
def test_a_slow_drip_index_ends_at_the_fetch_deadline_naming_the_url(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, head: bytes
) -> None:
    monkeypatch.setattr(chartfetch, "DEADLINE", 1.0, raising=False)
    with slow_server(head) as url:
        repo = with_credentials(monkeypatch, "slow", url, password="s3cret-pw")
        raised = in_thread_within(10, lambda: store(tmp_path).pull(repo, name="demo", version=""))
    assert isinstance(raised, charts.FetchError)
    text = str(raised)
    assert f"{url}/index.yaml did not answer in full within 1 s" in text
    assert "s3cret-pw" not in text and "fleet" not in text


# M4 ---------------------------------------------------------------------------------------


def tarbomb(path: pathlib.Path, *, files: int) -> pathlib.Path:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=9) as t:
        meta = b"apiVersion: v2\nname: demo\nversion: 1.0.0\n"
        ti = tarfile.TarInfo("demo/Chart.yaml")
        ti.size = len(meta)
        t.addfile(ti, io.BytesIO(meta))
        for i in range(files):
            ti = tarfile.TarInfo(f"demo/templates/a{i % 10}")
            t.addfile(ti)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())
    return path


def test_an_archive_with_too_many_members_is_refused_naming_the_chart(
    tmp_path: pathlib.Path,
) -> None:
    with chartrepo.http_repo(tmp_path / "repo") as served:
        served.publish(tarbomb(tmp_path / "bomb" / "demo-1.0.0.tgz", files=30_000))
        repos = [entry("local", served.url)]
        s = store(tmp_path)
        pulled = s.pull(repos[0], name="demo", version="1.0.0", repos=repos)
        start = time.monotonic()
        with pytest.raises(charts.FetchError, match=r"chart demo 1\.0\.0: .* over 20000 files"):
            s.dependencies_of_archive(pulled, repos=repos)
        with pytest.raises(charts.FetchError, match=r"demo-1\.0\.0\.tgz.* over 20000 files"):
            chartarchive.extract(
                tmp_path / "bomb" / "demo-1.0.0.tgz", dest=tmp_path / "out", max_bytes=1 << 30
            )
        # bounded (the review's 300,000 members took 10 s and 131 MB in one scan); generous,
        # as the test machine is shared
        assert time.monotonic() - start < 20
        assert not (tmp_path / "out").exists()  # refused before writing anything


# L2 ---------------------------------------------------------------------------------------


def test_one_index_entry_with_a_huge_version_is_skipped(tmp_path: pathlib.Path) -> None:
    with chartrepo.http_repo(tmp_path / "repo") as served:
        served.publish(chartrepo.package(tmp_path, "demo", "1.0.0"))
        path = served.dir / "index.yaml"
        doc = yaml.safe_load(path.read_text())
        poisoned = dict(doc["entries"]["demo"][0], version="9" * 5000)
        doc["entries"]["demo"].append(poisoned)
        path.write_text(yaml.safe_dump(doc))
        repos = [entry("local", served.url)]
        pulled = store(tmp_path).pull(repos[0], name="demo", version=">=1.0.0", repos=repos)
        assert pulled.version == "1.0.0"


# L3 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["..", ".", "../../etc", "a/b", ""])
def test_a_dependency_named_dot_dot_is_refused_before_any_fetch(
    tmp_path: pathlib.Path, name: str
) -> None:
    with chartrepo.http_repo(tmp_path / "repo") as served:
        repos = [entry("local", served.url)]
        doc = {"dependencies": [{"name": name, "repository": "@local"}]}
        with pytest.raises(charts.FetchError, match="is not a chart name"):
            store(tmp_path).dependencies(doc, present=set(), repos=repos, chart_name="app")
        assert served.seen == []
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


# L4 ---------------------------------------------------------------------------------------


def test_no_registry_credentials_stay_on_disk_after_an_oci_pull(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "oci-pass-gone-after-pull"
    with chartrepo.oci_registry(tmp_path / "oci", auth=f"fleet:{secret}") as registry:
        registry.push(chartrepo.package(tmp_path, "demo", "1.0.0"))
        url = f"oci://{registry.host}/charts"
        monkeypatch.setenv("OCI_USER", "fleet")
        monkeypatch.setenv("OCI_PASSWORD", secret)
        repo = entry(
            "oci", url, username_env="OCI_USER", password_env="OCI_PASSWORD",
            insecure_plain_http=True,
        )  # fmt: skip
        s = store(tmp_path)
        pulled = s.resolve(chartspec.Chart(chart=f"{url}/demo", version="1.0.0"), repos=[repo],
                           revision="r1")  # fmt: skip
        assert pulled.version == "1.0.0"
        with pytest.raises(charts.FetchError):  # a failed pull leaves nothing either
            s.pull(repo, name="missing", version="1.0.0")
    token = base64.b64encode(f"fleet:{secret}".encode())
    for f in (tmp_path / "cache").rglob("*"):
        if f.is_file():
            body = f.read_bytes()
            assert token not in body and secret.encode() not in body, f"credentials in {f}"


# L5 ---------------------------------------------------------------------------------------


def test_a_redirect_to_ftp_is_refused_without_connecting(tmp_path: pathlib.Path) -> None:
    ftp = socket.create_server(("127.0.0.1", 0))
    ftp.setblocking(False)
    with ftp, chartrepo.http_repo(tmp_path / "repo") as served:
        served.publish(chartrepo.package(tmp_path, "demo", "1.0.0"))
        served.redirects["/demo-1.0.0.tgz"] = f"ftp://127.0.0.1:{ftp.getsockname()[1]}/demo.tgz"
        repos = [entry("local", served.url)]
        with pytest.raises(charts.FetchError, match=r"ftp://127\.0\.0\.1:\d+/demo.tgz: not http"):
            store(tmp_path).pull(repos[0], name="demo", version="1.0.0", repos=repos)
        with pytest.raises(BlockingIOError):
            ftp.accept()  # nobody connected


def test_a_redirect_without_credentials_never_goes_to_loopback_or_link_local() -> None:
    dns = {"charts.example": ["203.0.113.5"], "cdn.example": ["198.51.100.7"],
           "sneaky.example": ["127.0.0.1"], "localhost": ["127.0.0.1", "::1"]}  # fmt: skip

    def refusal(new: str, *, entry: str = "https://charts.example", creds: bool = False) -> str:
        return chartfetch.redirect_refusal(
            f"{entry}/demo-1.0.0.tgz",
            new,
            entry=entry,
            with_credentials=creds,
            resolve=lambda host: dns.get(host, [host]),
        )

    assert refusal("https://cdn.example/demo.tgz") == ""
    assert refusal("http://cdn.example/demo.tgz") == ""
    for internal in ("http://169.254.169.254/latest/meta-data/", "http://127.0.0.1:6443/",
                     "http://sneaky.example/x", "http://[::1]/x", "http://[::ffff:127.0.0.1]/",
                     "http://0.0.0.0/x", "http://localhost/x"):  # fmt: skip
        assert "loopback or link-local" in refusal(internal), internal
    assert refusal("http://127.0.0.2/x", entry="http://localhost:8080") == ""  # a local entry
    assert "not http(s)" in refusal("file:///etc/passwd")
    assert "credentials" in refusal("https://cdn.example/demo.tgz", creds=True)
    assert "credentials" in refusal("http://charts.example/demo-1.0.0.tgz", creds=True)
    assert refusal("https://charts.example/other/demo.tgz", creds=True) == ""


def test_an_oci_chart_over_the_byte_cap_is_refused(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with chartrepo.oci_registry(tmp_path / "oci") as registry:
        big = chartrepo.package(tmp_path, "demo", "1.0.0", greeting=secrets.token_hex(20_000))
        registry.push(big)
        monkeypatch.setattr(chartfetch, "MAX_CHART", 4096)
        url = f"oci://{registry.host}/charts"
        repo = entry("oci", url, insecure_plain_http=True)
        with pytest.raises(charts.FetchError, match="over 4096 bytes") as got:
            store(tmp_path).resolve(
                chartspec.Chart(chart=f"{url}/demo", version="1.0.0"), repos=[repo], revision="r"
            )
        assert "file too large" in str(got.value)  # stopped as helm wrote it, not after
    assert not [f for f in (tmp_path / "cache").rglob("*.tgz")]


@pytest.mark.parametrize(
    ("helm", "field"),
    [
        ({"repo": "r", "chart": "demo", "version": "9" * 5000}, "version"),
        ({"chart": "https://charts.example.com/team/../other/x-1.0.0.tgz"}, "chart"),
        ({"chart": "https://charts.example.com/team/%2e%2e/other/x-1.0.0.tgz"}, "chart"),
    ],
    ids=["5000-digit version", "dot-dot archive", "encoded dot-dot archive"],
)
def test_hub_yaml_refuses_a_huge_version_or_a_walking_archive_url(
    helm: dict[str, str], field: str
) -> None:
    doc = {
        "repos": [{"name": "platform", "url": "https://git.example.com/p.git"}],
        "helmRepositories": [{"name": "r", "url": "https://charts.example.com/team"}],
        "apps": [{"name": "shop", "repo": "platform", "path": "a", "helm": helm}],
    }
    with pytest.raises(errors.ConfigError, match=rf"apps\[0\]\.helm\.{field}"):
        config.parse(yaml.safe_dump(doc), file="hub.yaml")
