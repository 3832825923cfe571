"""Image automation attacked, and misused by a tired operator: each test is one attack or one
mistake, against a real registry or a named fake one (tests.support.fakeregistry), real Git
and a real hub in-process. A test marked xfail is a finding in a module this review could
not change; its reason names the bug."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import os
import pathlib
import socket
import subprocess
import threading
import time
from collections.abc import AsyncIterator

import grpc
import pytest
import yaml

from fleetops.hub import config as hubconfig
from fleetops.hub import (
    imageauth,
    imagechoice,
    imagecommit,
    imagemarkers,
    registry,
    registryspec,
)
from fleetops.proto.v1 import fleet_pb2, fleet_pb2_grpc
from tests.support import fakeregistry, fleet, hubproc, wait
from tests.support import registry as registrypush
from tests.support.imagefleet import (
    app_repo,
    deploy_yaml,
    docker_config,
    hub_config,
    log,
    push,
    rolling,
    status,
)


@contextlib.asynccontextmanager
async def loop_gaps() -> AsyncIterator[list[float]]:
    """The gaps (seconds) between ticks of a 50 ms heartbeat on this event loop, which the
    in-process hub shares: a long one is a hub that answered nobody meanwhile."""
    gaps: list[float] = []

    async def heartbeat() -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.05)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    beat = asyncio.create_task(heartbeat())
    try:
        yield gaps
    finally:
        beat.cancel()
        await asyncio.gather(beat, return_exceptions=True)


# ---------------------------------------------------------------- the registry


async def test_credentials_never_reach_the_token_realm_of_a_host_the_registry_redirected_to(
    tmp_path: pathlib.Path,
) -> None:
    secret = "s3cret-Pa55"
    with (
        # the host a redirect sends the hub to asks for a login on a token service of its own
        fakeregistry.fake_registry(
            host="127.0.0.2", tags={"a/b": ["1.0.0"]}, bearer_users={"robot": secret}
        ) as elsewhere,
        fakeregistry.fake_registry(tags={"a/b": ["1.0.0"]}, redirect_to=elsewhere.url) as own,
    ):
        creds = tmp_path / "config.json"
        token = docker_config(creds, own.host, user="robot", password=secret)
        auth = registry.Auth.from_docker_config(creds, registry=own.host)
        image = registry.parse_image(f"{own.host}/a/b")
        with pytest.raises(registry.RegistryError) as caught:
            await registry.list_tags(image, max_tags=10, auth=auth)
        sent = [s.headers.get("Authorization", "") for s in elsewhere.requests_to("/token")]
    assert secret not in str(caught.value)
    assert sent == [] or all(token not in header for header in sent), sent


class FakeChallenger:
    """A FAKE registry on a public-looking address that answers every /v2/ request 401 with
    a Bearer challenge whose realm is `realm` (what a hostile registry may name)."""

    def __init__(self, *, host: str, realm: str) -> None:
        realm_header = f'Bearer realm="{realm}",service="x",scope="repository:a/b:pull"'

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                self.send_response(401)
                self.send_header("WWW-Authenticate", realm_header)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self._server = http.server.ThreadingHTTPServer((host, 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.host = f"{host}:{self._server.server_address[1]}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


def _public_address() -> str:
    """An address of this machine that is not loopback or link-local (the registry under
    test must not look like the hub's own machine), or '' when there is none."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.200", 9))  # no packet is sent: only the route is looked up
        except OSError:
            return ""
        address = str(s.getsockname()[0])
    return "" if registryspec.internal([address]) else address


async def test_a_token_realm_on_the_hubs_own_machine_is_refused_like_a_redirect_there() -> None:
    address = _public_address()
    if not address:
        pytest.skip("this machine has no address other than loopback")
    with fakeregistry.fake_registry(tags={"a/b": ["1"]}, bearer_users={}) as inside:
        hostile = FakeChallenger(host=address, realm=f"{inside.url}/token")
        try:
            image = registry.parse_image(f"{hostile.host}/a/b", plain_http=True)
            with pytest.raises(registry.RegistryError) as caught:
                await registry.list_tags(image, max_tags=10, auth=registry.Auth())
        finally:
            hostile.stop()
        asked = inside.requests_to("/token")
    assert asked == [], f"the hub asked its own machine: {asked}"
    assert "loopback or link-local" in str(caught.value), str(caught.value)


@pytest.mark.parametrize("knob", ["link_base", "redirect_to"])
async def test_a_next_page_or_redirect_url_that_does_not_parse_is_the_registrys_error(
    knob: str,
) -> None:
    with fakeregistry.fake_registry(tags={"a/b": [f"1.0.{i}" for i in range(30)]}) as fake:
        fake.max_page = 10
        setattr(fake, knob, "http://[")
        image = registry.parse_image(f"{fake.host}/a/b")
        with pytest.raises(registry.RegistryError) as caught:
            await registry.list_tags(image, max_tags=100, auth=registry.Auth())
    assert str(caught.value).startswith(f"{fake.host}/a/b: "), str(caught.value)


CONTROL = [chr(c) for c in [*range(32), *range(127, 160)]]


@pytest.mark.parametrize(
    "link", ["http://evil\x1bc\x1b(0\x07.example", "http://["], ids=["escapes", "unparsable"]
)
async def test_a_hostile_link_header_is_one_plain_scan_error_with_one_event(
    tmp_path: pathlib.Path, link: str
) -> None:
    """A registry's header reaches the repository's status, the log and an event: terminal
    escapes in it are shown escaped, and a failure nobody foresaw is still a scan, at a time,
    with its event."""
    tags = [f"1.0.{i}" for i in range(30)]
    with fakeregistry.fake_registry(tags={"team/web": tags}, max_page=10) as fake:
        fake.link_base = link
        repo = app_repo(tmp_path, fake.host)
        async with hubproc.running(tmp_path / "hub", hub_config(repo, fake.host)) as proc:
            said = await wait.until("the scan error", lambda: status(proc).repositories[0].error)
            repository = status(proc).repositories[0]
            history = await proc.hub.history(app="", cluster="", limit=50)
    failed = [e.message for e in history if e.kind == "image-scan-failed"]
    assert failed == [said], failed
    assert not [c for c in said if c in CONTROL], repr(said)
    assert said.startswith("image repository web: "), said
    assert repository.last_scan > 0


# ---------------------------------------------------------------- hub.yaml patterns

SLOW_TAG = "a" * 26 + "-"  # ~6 s of backtracking for the pattern below; 2x per extra letter
CATASTROPHIC = r"^([a-z0-9]+)+$"


def _said(text: str, part: str) -> str:
    return text if part in text else ""


@pytest.mark.parametrize("where", ["filterTags", "exclude"])
async def test_a_catastrophic_pattern_and_a_hostile_tag_never_freeze_the_hub(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """hub.yaml has a pattern with nested repeats (an operator's mistake) and the registry
    lists a tag made to backtrack (an attacker who may push tags): Python's re has no
    timeout and holds the GIL, so matching in the hub's loop (or a thread) stops every
    agent stream, API call and rollout for as long as it runs (years at 128 characters)."""
    monkeypatch.setattr(imagechoice, "REGEX_SECONDS", 1.0, raising=False)
    with fakeregistry.fake_registry(tags={"team/web": ["1.0.0", "1.1.0", SLOW_TAG]}) as fake:
        repo = app_repo(tmp_path, fake.host)
        if where == "filterTags":
            policy = {
                "filterTags": {"pattern": CATASTROPHIC},
                "policy": {"alphabetical": {"order": "asc"}},
            }
            cfg = hub_config(repo, fake.host, policy=policy)
        else:
            cfg = hub_config(repo, fake.host, exclude=[CATASTROPHIC])
        async with loop_gaps() as gaps, hubproc.running(tmp_path / "hub", cfg) as proc:
            if where == "filterTags":
                said = await wait.until(
                    "the policy to say its pattern is too slow",
                    lambda: _said(status(proc).policies[0].error, "backtrack"),
                    within=30,
                )
            else:
                said = await wait.until(
                    "the repository to say its exclude pattern is too slow",
                    lambda: _said(status(proc).repositories[0].error, "backtrack"),
                    within=30,
                )
    assert max(gaps) < 2.0, f"the hub's event loop stood still for {max(gaps):.1f} s"
    assert "backtrack" in said and where in said, said


async def test_ordinary_patterns_still_choose_and_exclude_through_the_guard(
    tmp_path: pathlib.Path,
) -> None:
    """The child process that bounds a pattern changes nothing for a pattern that is fine."""
    tags = ["v1.0.0", "v1.3.0", "v1.3.0.sig", "v2.0.0", "1.4.0-rc.1", "latest"]
    with fakeregistry.fake_registry(tags={"team/web": tags}) as fake:
        repo = app_repo(tmp_path, fake.host)
        policy = {
            "filterTags": {"pattern": r"^v?(?P<v>\d+\.\d+\.\d+)$", "extract": "$v"},
            "policy": {"semver": {"range": ">=1.0.0 <2.0.0"}},
        }
        cfg = hub_config(repo, fake.host, policy=policy, exclude=[r"\.sig$"])
        async with hubproc.running(tmp_path / "hub", cfg) as proc:
            await wait.until("the image commit", lambda: len(log(repo)) == 2)
            st = status(proc)
    assert log(repo)[0].endswith(f"{fake.host}/team/web:1.0.0 -> {fake.host}/team/web:v1.3.0")
    assert (st.repositories[0].tags, st.repositories[0].error) == (5, "")
    assert (st.policies[0].latest, st.policies[0].considered) == ("v1.3.0", 3)


async def test_the_status_never_shows_a_half_made_choice_while_a_pattern_runs(
    tmp_path: pathlib.Path,
) -> None:
    """A pattern runs in a child process (~0.1 s): ImageStatus and /metrics read meanwhile
    show the policy's last choice, never an empty one."""
    tags = ["v1.0.0", "v1.3.0"]
    with fakeregistry.fake_registry(tags={"team/web": tags}) as fake:
        repo = app_repo(tmp_path, fake.host)
        policy = {
            "filterTags": {"pattern": r"^v(?P<v>\d+\.\d+\.\d+)$", "extract": "$v"},
            "policy": {"semver": {"range": ">=1.0.0 <2.0.0"}},
        }
        async with hubproc.running(
            tmp_path / "hub", hub_config(repo, fake.host, policy=policy)
        ) as proc:
            await wait.until("v1.3.0 chosen", lambda: status(proc).policies[0].latest == "v1.3.0")
            seen: set[str] = set()
            for tag in ("v1.4.0", "v1.5.0"):
                fake.tags["team/web"].append(tag)
                fake._index["team/web"][tag] = len(fake.tags["team/web"]) - 1

                def chosen(tag: str = tag) -> bool:
                    latest = status(proc).policies[0].latest
                    seen.add(latest)
                    return latest == tag

                proc.hub.scan_images("web")
                await wait.until(f"{tag} chosen", chosen, every=0.002)
    assert "" not in seen, seen


@pytest.mark.parametrize(
    "pattern", ["a{99999999999}", "(" * 510 + ")" * 510], ids=["overflow", "recursion"]
)
async def test_an_exclude_pattern_python_cannot_compile_is_a_refused_reload(
    tmp_path: pathlib.Path, reg: registrypush.OciRegistry, pattern: str
) -> None:
    push(reg, "1.0.0")
    repo = app_repo(tmp_path, reg.host)
    cfg = hub_config(repo, reg.host)
    async with hubproc.running(tmp_path / "hub", cfg) as proc:
        bad = hub_config(repo, reg.host, exclude=[pattern])
        proc.config_path.write_text(yaml.safe_dump(bad))
        said = await wait.until("the reload refused", lambda: proc.hub.config_error, within=10)
    assert "imageRepositories[0].exclude[0]" in said, said


async def test_a_hundred_thousand_tags_never_stall_the_hub(
    tmp_path: pathlib.Path,
) -> None:
    """maxTags allows 100,000 tags, and whoever may push tags can push that many: choosing
    the newest of them takes seconds of Python, which must not be seconds of a hub that
    answers nobody (agents, API, rollouts)."""
    many = [f"1.{i // 1000}.{i % 1000}" for i in range(100_000)]
    with fakeregistry.fake_registry(tags={"team/web": many}) as fake:
        repo = app_repo(tmp_path, fake.host)
        cfg = hub_config(repo, fake.host, maxTags=100_000)
        async with hubproc.running(tmp_path / "hub", cfg) as proc:
            await wait.until(
                "the newest of 100,000 chosen",
                lambda: status(proc).policies[0].latest == "1.99.999",
                within=60,
            )
            async with loop_gaps() as gaps:
                # one more tag (the registry lists it last): scanned and chosen again
                fake.tags["team/web"][-1] = "1.100.0"
                fake._index["team/web"] = {t: i for i, t in enumerate(fake.tags["team/web"])}
                proc.hub.scan_images("web")
                await wait.until(
                    "the new newest chosen",
                    lambda: status(proc).policies[0].latest == "1.100.0",
                    within=60,
                )
    assert max(gaps) < 1.0, f"the hub's event loop stood still for {max(gaps):.1f} s"


# ---------------------------------------------------------------- repository content


@pytest.mark.parametrize("tag", ["y", "N", "1e10", "0o17", "007", "1_000", "on"])
def test_a_tag_go_yaml_would_not_read_as_a_string_is_written_quoted(tag: str) -> None:
    text = 'image:\n  tag: 1.0.0 # {"$imagepolicy": "flux-system:web:tag"}\n'
    got = imagemarkers.rewrite(text, {"web": f"reg.example.com/web:{tag}"})
    (change,) = got.changes
    assert change.new == tag
    assert f'tag: "{tag}" #' in got.text or f"tag: '{tag}' #" in got.text, got.text


async def test_a_file_name_with_terminal_escapes_is_shown_plain_in_the_status(
    tmp_path: pathlib.Path, reg: registrypush.OciRegistry
) -> None:
    """Whoever may commit names a marked file with terminal escapes: `images status` and
    the API show the change with them escaped."""
    push(reg, "1.0.0", "1.1.0")
    repo = fleet.Repo.create(tmp_path / "git")
    name = "apps/web/\x1b]2;owned\x07\x1b[2J.yaml"
    repo.write(name, deploy_yaml(reg.host))
    repo.commit("web 1.0.0")
    async with hubproc.running(tmp_path / "hub", hub_config(repo, reg.host)) as proc:
        await wait.until("commit of 1.1.0", lambda: status(proc).updates[0].last_changes)
        (change,) = status(proc).updates[0].last_changes
    assert "\x1b" not in change and "\x07" not in change, repr(change)
    assert change.startswith("apps/web/\\x1b]2;owned\\x07"), change


# ---------------------------------------------------------------- hub.yaml mistakes


def test_a_push_branch_written_as_a_full_ref_is_refused_not_made_a_new_branch(
    tmp_path: pathlib.Path,
) -> None:
    repo = app_repo(tmp_path, "reg.example.com")
    spec = hubconfig.Repo(name="platform", url=repo.url, branch="main")
    try:
        outcome = imagecommit.update(
            spec,
            cache=tmp_path / "cache",
            branch="main",
            push_branch="refs/heads/main",
            paths=["apps/"],
            latest={"web-stable": "reg.example.com/team/web:1.1.0"},
            author=imagecommit.Signature("bot", "bot@example.com"),
            deadline=time.monotonic() + 60,
        )
    except imagecommit.CommitError as e:
        assert "refs/heads/main" in str(e) and "branch" in str(e)
        return
    branches = fleet.git(repo.work, "ls-remote", "--heads", "origin")
    assert "refs/heads/refs/heads/main" not in branches, branches
    assert outcome.commit in fleet.git(repo.work, "ls-remote", "origin", "refs/heads/main")


async def test_a_docker_config_that_never_reads_fails_the_scan_instead_of_stopping_it(
    tmp_path: pathlib.Path, reg: registrypush.OciRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """auth.dockerConfigFile names something a read waits on forever (a pipe here; a stalled
    network or FUSE mount of a secret in real life): the scan says so in bounded time, and
    the other repositories keep being scanned."""
    monkeypatch.setattr(imageauth, "READ_SECONDS", 1.0, raising=False)
    push(reg, "1.0.0")
    repo = app_repo(tmp_path, reg.host)
    fifo = tmp_path / "regcred.json"
    os.mkfifo(fifo)
    cfg = hub_config(repo, reg.host, auth={"dockerConfigFile": str(fifo)})
    cfg["imageRepositories"].append(
        {"name": "other", "image": f"{reg.host}/team/web", "interval": "1h"}
    )
    try:
        async with hubproc.running(tmp_path / "hub", cfg) as proc:
            said = await wait.until(
                "the scan to fail", lambda: status(proc).repositories[0].error, within=30
            )
            assert str(fifo) in said and "dockerConfigFile" in said, said
            assert status(proc).repositories[1].tags == 1
            # asked again while the first read still hangs: no second reader is started
            before = threading.active_count()
            proc.hub.scan_images("web")
            scanned = status(proc).repositories[0].last_scan
            await wait.until(
                "another scan", lambda: status(proc).repositories[0].last_scan > scanned
            )
            assert threading.active_count() <= before
    finally:
        # let a reader stuck on the pipe go (it reads an empty file); none there: ENXIO
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


def _commit_as_a_colleague(repo: fleet.Repo, message: str) -> None:
    """Commit and push as a person does: when the push is refused because the branch moved
    (the bot got there first), fetch, rebase and push again."""
    try:
        repo.commit(message)
    except subprocess.CalledProcessError:
        fleet.git(repo.work, "pull", "-q", "--rebase", "origin", "main")
        fleet.git(repo.work, "push", "-q", "origin", "main")


async def test_a_refused_push_is_one_event_when_it_starts_and_one_when_it_clears(
    tmp_path: pathlib.Path, reg: registrypush.OciRegistry
) -> None:
    """The Git server refuses the bot's pushes (a protected branch) until the operator fixes
    it: the history says when the image update started failing and when it worked again."""
    push(reg, "1.0.0", "1.1.0")
    repo = app_repo(tmp_path, reg.host)
    # the branch cannot be written (file:// pushes run no hooks: a lock that cannot be taken)
    lock = repo.bare / "refs" / "heads" / "main.lock"
    lock.mkdir()
    async with hubproc.running(tmp_path / "hub", hub_config(repo, reg.host)) as proc:
        said = await wait.until("the refusal", lambda: status(proc).updates[0].error)
        assert "push" in said, said
        lock.rmdir()  # from here the bot's own retry may push before the colleague does
        repo.write("apps/web/extra.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
        _commit_as_a_colleague(repo, "a colleague's change")
        proc.hub.trigger_fetch("platform")
        await wait.until("commit of 1.1.0", lambda: len(log(repo)) == 3)
        await wait.until("no error", lambda: not status(proc).updates[0].error)
        top = log(repo)[0].split()[0]
        await wait.until("the hub at the branch's head", lambda: proc.hub.heads["platform"] == top)
        assert any(line.endswith("a colleague's change") for line in log(repo)), log(repo)
        history = await proc.hub.history(app="", cluster="", limit=50)
    kinds = [e.kind for e in reversed(history) if e.kind.startswith("image-update-")]
    assert kinds[:1] == ["image-update-failed"], kinds
    assert "image-update-recovered" in kinds, kinds


async def test_an_update_removed_from_hub_yaml_while_it_runs_still_records_its_commit(
    tmp_path: pathlib.Path, reg: registrypush.OciRegistry
) -> None:
    """The operator deletes an imageUpdates entry while its run is pushing: the commit lands
    all the same, so the hub must still remember which tag it brought (or a rollback of it
    is never known to reject the tag) and follow it at once."""
    push(reg, "1.0.0")
    repo = app_repo(tmp_path, reg.host)
    cfg = hub_config(repo, reg.host)
    async with hubproc.running(tmp_path / "hub", cfg) as proc:
        await wait.until("the first run", lambda: status(proc).updates[0].last_run)
        # the update's next run waits here (as if the Git server were slow) until released
        held = imagecommit._lock(proc.data / "images" / "platform-images")
        assert held.acquire(timeout=10)
        try:
            push(reg, "1.1.0")
            proc.hub.scan_images("web")
            await wait.until("1.1.0 chosen", lambda: status(proc).policies[0].latest == "1.1.0")
            proc.config_path.write_text(yaml.safe_dump({**cfg, "imageUpdates": []}))
            await wait.until("the reload", lambda: not status(proc).updates, within=10)
            scanned = status(proc).repositories[0].last_scan
            proc.hub.scan_images("web")  # the loop has looked at the new hub.yaml once scanned
            await wait.until("a scan", lambda: status(proc).repositories[0].last_scan > scanned)
        finally:
            held.release()
        await wait.until("the image commit", lambda: len(log(repo)) == 2)
        sha = log(repo)[0].split()[0]
        await wait.until("the hub at its commit", lambda: proc.hub.heads["platform"] == sha)
        kept = await proc.hub.db.run(proc.hub.db.image_commits)
        assert [(c.revision, c.policy, c.tag) for c in kept] == [(sha, "web-stable", "1.1.0")]


async def test_an_exclude_added_to_hub_yaml_applies_at_once_not_at_the_next_interval(
    tmp_path: pathlib.Path, reg: registrypush.OciRegistry
) -> None:
    """1.1.0 turns out bad and the operator excludes it in hub.yaml: the repository is read
    again with the new settings at once, not an interval (an hour here) later."""
    push(reg, "1.0.0", "1.1.0")
    repo = app_repo(tmp_path, reg.host)
    cfg = hub_config(repo, reg.host)
    async with hubproc.running(tmp_path / "hub", cfg) as proc:
        await wait.until("commit of 1.1.0", lambda: len(log(repo)) == 2)
        proc.config_path.write_text(
            yaml.safe_dump(hub_config(repo, reg.host, exclude=[r"^1\.1\.0$"]))
        )
        await wait.until("1.0.0 chosen", lambda: status(proc).policies[0].latest == "1.0.0")
        await wait.until("the commit back to 1.0.0", lambda: len(log(repo)) == 3)
        assert status(proc).repositories[0].tags == 1


async def test_a_huge_repository_name_in_image_scan_is_a_short_not_found(
    tmp_path: pathlib.Path, reg: registrypush.OciRegistry
) -> None:
    """An API caller asks to scan a 1 MiB repository name: the answer is NOT_FOUND naming
    the repositories there are, not a status message too big for gRPC's trailers."""
    push(reg, "1.0.0")
    repo = app_repo(tmp_path, reg.host)
    async with hubproc.running(tmp_path / "hub", hub_config(repo, reg.host)) as proc:
        async with grpc.aio.secure_channel(
            proc.address, grpc.ssl_channel_credentials(root_certificates=proc.ca_pem)
        ) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await fleet_pb2_grpc.FleetServiceStub(ch).ImageScan(
                    fleet_pb2.ImageScanRequest(repository="x" * 1024 * 1024),
                    metadata=(("authorization", f"Bearer {proc.operator_token}"),),
                )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND, caught.value.code()
    said = caught.value.details() or ""
    assert said.startswith("no image repository 'xxx") and len(said) < 1000, said[:200]
    assert "imageRepositories: web" in said


# ---------------------------------------------------------------- rollouts


async def test_a_bad_commit_under_image_commits_never_walks_git_down_every_tag(
    tmp_path: pathlib.Path, reg: registrypush.OciRegistry
) -> None:
    """A colleague's bad commit is under the image commits: the rollout of the image commit
    bringing 1.2.0 fails (for the colleague's change), so 1.2.0 is rejected and Git goes back
    to 1.1.0; that commit fails too, and must not reject 1.1.0 in turn (and so on down to
    the oldest tag): a commit that only goes back from rejected tags rejects nothing. (Which
    change failed a rollout cannot be known; a human commit on top of an image commit is not
    taken for the image's fault, and a human revert of an image commit is written again by
    the next scan, as Flux does: abort the rollout to reject a tag.)"""
    push(reg, "1.0.0", "1.1.0")
    repo = app_repo(tmp_path, reg.host)
    cfg = hub_config(repo, reg.host, canary=True)
    async with hubproc.running(tmp_path / "hub", cfg) as proc:
        await proc.agent("c1")
        await wait.until("commit of 1.1.0", lambda: len(log(repo)) == 2)
        fleet.git(repo.work, "pull", "-q", "--ff-only", "origin", "main")
        repo.write("apps/web/extra.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
        theirs = repo.commit("a colleague's bad change")
        proc.hub.trigger_fetch("platform")
        await wait.until("the colleague's rollout", lambda: rolling(proc) == theirs)
        await proc.hub.rollout_action(app="web", action="abort", actor="test")
        push(reg, "1.2.0")
        proc.hub.scan_images()
        await wait.until("commit of 1.2.0", lambda: len(log(repo)) == 4)
        await wait.until("its rollout", lambda: rolling(proc) == log(repo)[0][:40])
        await proc.hub.rollout_action(app="web", action="abort", actor="test")
        await wait.until("the commit back to 1.1.0", lambda: len(log(repo)) == 5)
        back = log(repo)[0][:40]
        await wait.until("its rollout", lambda: rolling(proc) == back)
        await proc.hub.rollout_action(app="web", action="abort", actor="test")
        await wait.until(
            "the revert", lambda: "aborted" in proc.hub.rollout_status(app="web")[0].reason
        )
        proc.hub.scan_images()
        scanned = status(proc).repositories[0].last_scan
        await wait.until("another scan", lambda: status(proc).repositories[0].last_scan > scanned)
        await wait.until("the update looked", lambda: not status(proc).updates[0].error)
        assert status(proc).policies[0].rejected_tags == ["1.2.0"]
        assert status(proc).policies[0].latest == "1.1.0"
        assert len(log(repo)) == 5, log(repo)


async def test_renaming_a_policy_keeps_the_tags_its_rollouts_rejected(
    tmp_path: pathlib.Path, reg: registrypush.OciRegistry
) -> None:
    push(reg, "1.0.0", "1.1.0")
    repo = app_repo(tmp_path, reg.host)
    cfg = hub_config(repo, reg.host, canary=True)
    async with hubproc.running(tmp_path / "hub", cfg) as proc:
        await proc.agent("c1")
        await wait.until("commit of 1.1.0", lambda: len(log(repo)) == 2)
        push(reg, "1.2.0")
        proc.hub.scan_images()
        await wait.until("commit of 1.2.0", lambda: len(log(repo)) == 3)
        bad = log(repo)[0].split()[0]
        await wait.until("its rollout", lambda: rolling(proc) == bad)
        await proc.hub.rollout_action(app="web", action="abort", actor="test")
        await wait.until("the commit back to 1.1.0", lambda: len(log(repo)) == 4)
        # the operator renames the policy, in hub.yaml and in the marker
        cfg["imagePolicies"][0]["name"] = "web-prod"
        proc.config_path.write_text(yaml.safe_dump(cfg))
        await wait.until("the reload", lambda: status(proc).policies[0].name == "web-prod")
        fleet.git(repo.work, "merge", "-q", "--ff-only", "origin/main")
        path = repo.work / "apps/web/deploy.yaml"
        path.write_text(path.read_text().replace("flux-system:web-stable", "flux-system:web-prod"))
        renamed = repo.commit("rename the image policy")
        ran = status(proc).updates[0].last_run
        proc.hub.trigger_fetch("platform")
        # a run that read the renamed marker (one before it reports web-stable unknown)
        await wait.until(
            "a run at the rename",
            lambda: status(proc).updates[0].last_run > ran and not status(proc).updates[0].problems,
        )
        assert log(repo)[0].split()[0] == renamed, log(repo)[0]
        assert status(proc).policies[0].latest == "1.1.0"
