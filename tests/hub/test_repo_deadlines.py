"""A Git host that hangs never freezes the hub: every fetch ends within its deadlines with an
error naming the repo, the (redacted) URL and the limit; reads of what was fetched before go on
while a fetch hangs; the last fetched revision stays; a hub process whose Git host hangs still
answers operators and stops on SIGTERM.

The Git servers are real and on loopback (`git http-backend`), behind a proxy the test switches
to hang, trickle or drip (tests/support/gitserve.py); listeners that accept and never answer,
or never accept, stand for the hosts that are down in the worst way.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import signal
import threading
from collections.abc import Iterator

import pytest
import yaml

from fleetops.hub import config, errors, repo
from tests.support import fleet, gitserve, wait

SHORT = repo.Timeouts(connect=0.5, io=0.5, total=30)
CM = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}}


@pytest.fixture
def timeouts() -> Iterator[None]:
    """Fetch deadlines short enough for a test; the process's own ones come back after."""
    previous = repo.set_timeouts(SHORT)
    try:
        yield
    finally:
        repo.set_timeouts(previous)


@pytest.fixture
def origin(tmp_path: pathlib.Path) -> Iterator[tuple[fleet.Repo, gitserve.Proxy]]:
    """A repository with one commit, served over smart HTTP through a proxy the test steers."""
    source = fleet.Repo.create(tmp_path / "git")
    source.write("apps/web/cm.yaml", CM)
    source.commit("first")
    with gitserve.GitHttp(source.bare.parent) as http, gitserve.Proxy(http.port) as proxy:
        yield source, proxy


def cache_for(tmp_path: pathlib.Path, url: str) -> repo.RepoCache:
    spec = config.Repo(name="platform", url=url, branch="main")
    return repo.RepoCache(tmp_path / "cache", spec, work=tmp_path / "work")


@pytest.mark.parametrize(
    "url",
    [
        "http://deploy:s3cret-token@127.0.0.1:{port}/team/fleet.git",
        "https://deploy:s3cret-token@127.0.0.1:{port}/team/fleet.git",
        "ssh://deploy@127.0.0.1:{port}/team/fleet.git",
        "git://127.0.0.1:{port}/team/fleet.git",
    ],
    ids=["http", "https", "ssh", "git"],
)
def test_a_host_that_accepts_and_never_answers_is_an_error_naming_repo_url_and_limit(
    url: str, timeouts: None, tmp_path: pathlib.Path
) -> None:
    with gitserve.Silent() as silent:
        url = url.format(port=silent.port)
        with pytest.raises(errors.RepoError) as err:
            cache_for(tmp_path, url).fetch()
        assert silent.accepted >= 1  # it did connect: the hang is the server's
    shown = url.split("://")[0] + f"://127.0.0.1:{silent.port}/team/fleet.git"
    assert str(err.value).startswith(f"repo platform: no answer from {shown} within 0.5 s;")
    assert "the last fetched revision stays" in str(err.value)
    assert "s3cret-token" not in str(err.value) and "deploy@" not in str(err.value)


def test_a_host_that_never_completes_the_connection_is_an_error_naming_the_limit(
    timeouts: None, tmp_path: pathlib.Path
) -> None:
    with gitserve.Backlogged() as host:
        url = f"https://127.0.0.1:{host.port}/team/fleet.git"
        with pytest.raises(errors.RepoError) as err:
            cache_for(tmp_path, url).fetch()
    assert str(err.value).startswith(f"repo platform: could not connect to {url} within 0.5 s;")


async def test_reads_of_fetched_commits_answer_while_a_fetch_hangs_and_the_revision_stays(
    origin: tuple[fleet.Repo, gitserve.Proxy], tmp_path: pathlib.Path
) -> None:
    source, proxy = origin
    # the process's own deadlines (30 s without an answer): the hang lasts until we end it
    cache = cache_for(tmp_path, f"http://127.0.0.1:{proxy.port}/origin.git")
    first = await cache.afetch()
    source.write("apps/web/cm.yaml", {**CM, "data": {"v": "2"}})
    second = source.commit("second")

    proxy.mode = "hold"
    fetching = asyncio.ensure_future(cache.afetch())
    await wait.until("the fetch connected to the hung host", lambda: proxy.held >= 1)

    async def reads() -> tuple[repo.Checkout, str, str | None, str, repo.Commit]:
        return (
            await cache.acheckout(first),
            await cache.atree_key(first, ["apps/web"]),
            await asyncio.to_thread(cache.read, first, path="apps/web/cm.yaml"),
            await asyncio.to_thread(cache.resolve, first[:10]),
            await asyncio.to_thread(cache.commit, first),
        )

    try:
        checkout, key, text, full, commit = await asyncio.wait_for(reads(), timeout=20)
    except TimeoutError:
        raise AssertionError("reads waited for the hung fetch") from None
    assert (checkout.root / "apps/web/cm.yaml").read_text() == yaml.safe_dump(CM)
    assert key.startswith("apps/web=") and text == yaml.safe_dump(CM)
    assert full == first and commit.message == "first"
    assert not fetching.done()  # still hanging: the host has not said a word

    proxy.release()  # the host hangs up
    with pytest.raises(errors.RepoError, match="repo platform: fetch from http://127.0.0.1"):
        await fetching
    assert cache.resolve("refs/remotes/origin/main") == first  # the last good revision stays

    proxy.mode = "forward"  # the host is back
    assert await cache.afetch() == second
    assert cache.read(second, path="apps/web/cm.yaml") == yaml.safe_dump({**CM, "data": {"v": "2"}})


async def test_a_host_trickling_its_answer_is_cut_off_at_the_fetch_deadline(
    origin: tuple[fleet.Repo, gitserve.Proxy], tmp_path: pathlib.Path
) -> None:
    source, proxy = origin
    # 3 MB that does not compress, at 2 KiB per 20 ms: half a minute, never silent for long
    (source.work / "blob.bin").write_bytes(os.urandom(3_000_000))
    source.commit("big")
    proxy.chunk, proxy.mode = 2048, "trickle"
    url = f"http://127.0.0.1:{proxy.port}/origin.git"
    previous = repo.set_timeouts(repo.Timeouts(connect=5, io=5, total=1.5))
    try:
        with pytest.raises(errors.RepoError) as err:
            await cache_for(tmp_path, url).afetch()
        # the fetch itself gives up too (at its next progress report), with the host still
        # trickling: no thread is left downloading
        await wait.until(
            "the fetch thread gave up while the host still trickled",
            lambda: not any(t.name == "fetch platform" for t in threading.enumerate()),
        )
    finally:
        repo.set_timeouts(previous)
    assert str(err.value) == (
        f"repo platform: fetch from {url} did not finish within 1.5 s; "
        "the last fetched revision stays"
    )


async def test_a_host_never_silent_long_enough_for_a_read_timeout_still_ends_the_wait(
    origin: tuple[fleet.Repo, gitserve.Proxy], tmp_path: pathlib.Path
) -> None:
    _, proxy = origin
    proxy.mode = "drip"  # a header byte every 20 ms, forever: no read ever times out
    cache = cache_for(tmp_path, f"http://127.0.0.1:{proxy.port}/origin.git")
    previous = repo.set_timeouts(repo.Timeouts(connect=5, io=5, total=1))
    try:
        with pytest.raises(errors.RepoError, match="did not finish within 1 s"):
            await cache.afetch()
    finally:
        repo.set_timeouts(previous)
    # the abandoned fetch ends once the host hangs up, and fetching works again
    proxy.mode = "forward"
    proxy.release()
    await wait.until(
        "the abandoned fetch thread ended",
        lambda: not any(t.name == "fetch platform" for t in threading.enumerate()),
    )
    assert await cache.afetch()


def test_a_ref_lock_left_by_a_fetch_that_died_does_not_stop_fetching(
    tmp_path: pathlib.Path,
) -> None:
    source = fleet.Repo.create(tmp_path / "git")
    source.write("apps/web/cm.yaml", CM)
    source.commit("first")
    cache = cache_for(tmp_path, source.url)
    cache.fetch()
    source.write("apps/web/cm.yaml", {**CM, "data": {"v": "2"}})
    second = source.commit("second")
    lock = cache.bare / "refs" / "remotes" / "origin" / "main.lock"

    lock.write_text("")  # a fetch running right now (another process) is left alone
    with pytest.raises(errors.RepoError, match="failed to lock file"):
        cache.fetch()
    assert lock.exists()

    hour_ago = lock.stat().st_mtime - 3600  # a fetch that died with its process
    os.utime(lock, (hour_ago, hour_ago))
    assert cache.fetch() == second
    assert not lock.exists()


async def test_a_hub_whose_git_host_hangs_answers_operators_and_stops_on_sigterm(
    origin: tuple[fleet.Repo, gitserve.Proxy], tmp_path: pathlib.Path
) -> None:
    source, proxy = origin
    cfg = tmp_path / "hub.yaml"
    cfg.write_text(yaml.safe_dump({
        "repos": [{"name": "platform", "url": f"http://127.0.0.1:{proxy.port}/origin.git",
                   "branch": "main", "pollInterval": "1s"}],
        "apps": [{"name": "web", "repo": "platform", "path": "apps/web", "namespace": "web"}],
    }))  # fmt: skip
    first = fleet.git(source.work, "rev-parse", "HEAD")
    hub = fleet.start_hub(cfg, tmp_path / "data")
    try:
        client = hub.fleet()
        await wait.until(
            "the hub fetched the first commit",
            lambda: any(r.revision == first for r in client.snapshot().repos),
            within=30,
        )
        source.write("apps/web/cm.yaml", {**CM, "data": {"v": "2"}})
        source.commit("second")
        proxy.mode = "hold"
        await wait.until("the hub's fetch hung", lambda: proxy.held >= 1, within=30)
        # planning needs the repo (resolve, tree keys); it must not wait for the hung fetch
        done = client.rollback("web", first[:12])
        assert done.event.revision == first, done
        assert client.snapshot().repos[0].revision == first

        # the process's fetch deadlines are 10 s to connect and 30 s per read: SIGTERM must
        # not wait for them
        hub.process.proc.send_signal(signal.SIGTERM)
        try:
            await wait.until(
                "the hub exited on SIGTERM with its fetch still hanging",
                lambda: hub.process.proc.poll() is not None,
                within=15,
            )
        except AssertionError as e:
            raise AssertionError(f"{e}\n{hub.process.tail()}") from None
        assert hub.process.proc.returncode == 0, hub.process.tail()
    finally:
        hub.process.stop()
