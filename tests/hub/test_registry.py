"""hub.registry against a real registry (Debian's docker-registry, images pushed over the
distribution API by the test) and, for what it cannot do, tests.support.fakeregistry (a
named fake): pagination over 5,000 tags, 429 with Retry-After, the Bearer token flow, a
redirect to another host, a stalled registry."""

from __future__ import annotations

import base64
import email.utils
import json
import pathlib
import socket
import time

import pytest

from fleetops.hub import registry, registryspec
from tests.support import fakeregistry
from tests.support import registry as registrypush

PUSHED = ["1.0.0", "1.1.0", "1.10.0", "1.2.0-rc.1"]


def docker_config(path: pathlib.Path, host: str, user: str, password: str, *, form: str) -> str:
    if form == "auth":
        entry = {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}
    else:
        entry = {"username": user, "password": password}
    path.write_text(json.dumps({"auths": {host: entry}}))
    return str(path)


# the real registry


async def test_tags_and_digests_of_images_pushed_to_a_real_registry(tmp_path: pathlib.Path) -> None:
    with registrypush.registry_server(tmp_path / "reg") as server:
        url = f"http://{server.host}"
        pushed = {tag: registrypush.push_image(url, "team/podinfo", tag) for tag in PUSHED}
        image = registry.parse_image(f"{server.host}/team/podinfo")
        got = await registry.list_tags(image, max_tags=100, auth=registry.Auth.anonymous())
        assert sorted(got.tags) == sorted(PUSHED)
        assert not got.truncated
        digests = {tag: await registry.digest(image, tag, auth=registry.Auth()) for tag in PUSHED}
    assert digests == pushed
    assert len(set(digests.values())) == len(PUSHED)


@pytest.mark.parametrize("form", ["auth", "username/password"])
async def test_htpasswd_registry_with_a_docker_config_file(
    tmp_path: pathlib.Path, form: str
) -> None:
    with registrypush.registry_server(tmp_path / "reg", auth="fleet:s3cret-pw") as server:
        registrypush.push_image(
            f"http://{server.host}", "team/app", "1.0.0", auth="fleet:s3cret-pw"
        )
        cfg = docker_config(tmp_path / "config.json", server.host, "fleet", "s3cret-pw", form=form)
        auth = registry.Auth.from_docker_config(cfg, registry=server.host)
        image = registry.parse_image(f"{server.host}/team/app")
        got = await registry.list_tags(image, max_tags=10, auth=auth)
        assert got.tags == ("1.0.0",)
        assert (await registry.digest(image, "1.0.0", auth=auth)).startswith("sha256:")


async def test_a_wrong_password_names_the_file_and_never_shows_the_password(
    tmp_path: pathlib.Path,
) -> None:
    wrong = "not-the-Pa55word"
    with registrypush.registry_server(tmp_path / "reg", auth="fleet:right-one") as server:
        cfg = docker_config(tmp_path / "regcred.json", server.host, "fleet", wrong, form="auth")
        auth = registry.Auth.from_docker_config(cfg, registry=server.host)
        image = registry.parse_image(f"{server.host}/team/app")
        with pytest.raises(registry.RegistryError) as caught:
            await registry.list_tags(image, max_tags=10, auth=auth)
    said = str(caught.value)
    assert said == f"401 from {server.host} for team/app: check the credentials in {cfg}"
    encoded = base64.b64encode(f"fleet:{wrong}".encode()).decode()
    for shown in (said, repr(caught.value), repr(auth), repr(auth.credentials)):
        assert wrong not in shown and encoded not in shown


async def test_no_credentials_for_a_registry_that_wants_them_says_what_to_set(
    tmp_path: pathlib.Path,
) -> None:
    with registrypush.registry_server(tmp_path / "reg", auth="fleet:pw") as server:
        image = registry.parse_image(f"{server.host}/team/app")
        with pytest.raises(registry.RegistryError, match="wants credentials; set auth.docker"):
            await registry.list_tags(image, max_tags=10, auth=registry.Auth.anonymous())


async def test_an_unknown_repository_says_so(tmp_path: pathlib.Path) -> None:
    with registrypush.registry_server(tmp_path / "reg") as server:
        registrypush.push_image(f"http://{server.host}", "team/app", "1.0.0")
        image = registry.parse_image(f"{server.host}/team/nope")
        with pytest.raises(registry.RegistryError) as caught:
            await registry.list_tags(image, max_tags=10, auth=registry.Auth())
        assert str(caught.value).startswith(
            f"404 from {server.host}: repository team/nope not found; check the image name"
        )
        known = registry.parse_image(f"{server.host}/team/app")
        with pytest.raises(registry.RegistryError, match="team/app has no tag 9.9.9"):
            await registry.digest(known, "9.9.9", auth=registry.Auth())


async def test_an_unreachable_registry_says_so() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connection refused
        image = registry.parse_image(f"127.0.0.1:{port}/team/app")
        with pytest.raises(registry.RegistryError, match=r"cannot reach 127\.0\.0\.1:\d+: conn"):
            await registry.list_tags(image, max_tags=10, auth=registry.Auth())


# the fake registry: what the real one cannot do

MANY = [f"1.{i // 100}.{i % 100}" for i in range(5000)]


async def test_five_thousand_tags_over_link_pagination_all_listed() -> None:
    with fakeregistry.fake_registry(tags={"big/app": MANY}) as fake:
        image = registry.parse_image(f"{fake.host}/big/app")
        got = await registry.list_tags(image, max_tags=5000, auth=registry.Auth())
        pages = fake.requests_to("/tags/list")
    assert got.tags == tuple(MANY)
    assert not got.truncated
    assert got.requests == len(pages) == 5
    assert pages[0].query["n"] == "1000"


async def test_max_tags_stops_the_listing_and_says_truncated() -> None:
    with fakeregistry.fake_registry(tags={"big/app": MANY}) as fake:
        image = registry.parse_image(f"{fake.host}/big/app")
        got = await registry.list_tags(image, max_tags=1200, auth=registry.Auth())
        pages = fake.requests_to("/tags/list")
    assert got.tags == tuple(MANY[:1200])
    assert got.truncated
    assert len(pages) == 2


async def test_absolute_link_on_the_same_host_followed_on_another_refused() -> None:
    with fakeregistry.fake_registry(tags={"a/b": MANY[:30]}, max_page=10) as fake:
        fake.link_base = fake.url
        image = registry.parse_image(f"{fake.host}/a/b")
        got = await registry.list_tags(image, max_tags=100, auth=registry.Auth())
        assert got.tags == tuple(MANY[:30])
        fake.link_base = "http://127.0.0.2:9"
        with pytest.raises(registry.RegistryError, match="next tag page is on another host"):
            await registry.list_tags(image, max_tags=100, auth=registry.Auth())


@pytest.mark.parametrize("form", ["seconds", "http-date"])
async def test_429_with_retry_after_is_waited_out(form: str) -> None:
    until = float(int(time.time()) + 2)  # an HTTP date has whole seconds
    if form == "seconds":
        answers = [(429, "1"), (429, "1")]
    else:
        answers = [(429, email.utils.formatdate(until, usegmt=True))]
    with fakeregistry.fake_registry(tags={"a/b": ["1.0.0"]}, answers=answers) as fake:
        image = registry.parse_image(f"{fake.host}/a/b")
        got = await registry.list_tags(image, max_tags=10, auth=registry.Auth())
        seen = fake.requests_to("/tags/list")
        retried_at = time.time() - (time.monotonic() - seen[-1].at)  # the retry, wall clock
    assert got.tags == ("1.0.0",)
    assert [s.status for s in seen] == [429] * len(answers) + [200]
    assert got.requests == len(answers) + 1
    if form == "seconds":
        gaps = [b.at - a.at for a, b in zip(seen, seen[1:], strict=False)]
        assert all(gap >= 0.95 for gap in gaps), gaps
    else:  # not before the date the registry named (however late the first request came)
        assert retried_at >= until - 0.05, (retried_at, until)


async def test_endless_429_gives_up_after_a_few_tries_saying_too_many_requests() -> None:
    answers = [(429, "0")] * 20
    with fakeregistry.fake_registry(tags={"a/b": ["1.0.0"]}, answers=answers) as fake:
        image = registry.parse_image(f"{fake.host}/a/b")
        with pytest.raises(registry.RegistryError) as caught:
            await registry.list_tags(image, max_tags=10, auth=registry.Auth())
        assert len(fake.requests_to("/tags/list")) == registry.RETRIES + 1
    assert str(caught.value).startswith(f"429 from {fake.host} for a/b: too many requests")


async def test_a_retry_after_longer_than_the_cap_fails_at_once_saying_the_wait() -> None:
    with fakeregistry.fake_registry(tags={"a/b": ["1"]}, answers=[(503, "3600")]) as fake:
        image = registry.parse_image(f"{fake.host}/a/b")
        with pytest.raises(registry.RegistryError, match="retry after 3600 s, longer than"):
            await registry.list_tags(image, max_tags=10, auth=registry.Auth())
        assert len(fake.requests_to("/tags/list")) == 1


async def test_a_passing_5xx_is_retried() -> None:
    answers = [(500, ""), (502, "")]
    with fakeregistry.fake_registry(tags={"a/b": ["1.0.0"]}, answers=answers) as fake:
        image = registry.parse_image(f"{fake.host}/a/b")
        got = await registry.list_tags(image, max_tags=10, auth=registry.Auth())
        assert [s.status for s in fake.requests_to("/tags/list")] == [500, 502, 200]
    assert got.tags == ("1.0.0",)


@pytest.mark.parametrize("field", ["token", "access_token"])
async def test_bearer_token_flow_with_scope_and_a_cached_token(
    tmp_path: pathlib.Path, field: str
) -> None:
    now = [1000.0]
    users = {"robot": "t0ken-pw"}
    with fakeregistry.fake_registry(
        tags={"team/app": ["1.0.0", "2.0.0"]}, bearer_users=users, token_field=field
    ) as fake:
        cfg = docker_config(tmp_path / "c.json", fake.host, "robot", "t0ken-pw", form="auth")
        auth = registry.Auth.from_docker_config(cfg, registry=fake.host, clock=lambda: now[0])
        image = registry.parse_image(f"{fake.host}/team/app")
        first = await registry.list_tags(image, max_tags=10, auth=auth)
        again = await registry.list_tags(image, max_tags=10, auth=auth)
        assert await registry.digest(image, "2.0.0", auth=auth) == fakeregistry.fake_digest(
            "team/app", "2.0.0"
        )
        assert len(fake.requests_to("/token")) == 1  # cached across calls
        now[0] += 300  # expires_in passed
        await registry.list_tags(image, max_tags=10, auth=auth)
        tokens = fake.requests_to("/token")
    assert first.tags == again.tags == ("1.0.0", "2.0.0")
    assert first.requests == 3 and again.requests == 1  # 401, token, page; then the page
    assert len(tokens) == 2
    assert tokens[0].query == {"scope": "repository:team/app:pull", "service": "fake-registry"}
    assert tokens[0].headers["Authorization"].startswith("Basic ")


async def test_bearer_with_a_wrong_password_names_the_token_service_and_the_file(
    tmp_path: pathlib.Path,
) -> None:
    with fakeregistry.fake_registry(tags={"a/b": ["1"]}, bearer_users={"robot": "right"}) as fake:
        cfg = docker_config(tmp_path / "c.json", fake.host, "robot", "wr0ng-pw", form="auth")
        auth = registry.Auth.from_docker_config(cfg, registry=fake.host)
        image = registry.parse_image(f"{fake.host}/a/b")
        with pytest.raises(registry.RegistryError) as caught:
            await registry.list_tags(image, max_tags=10, auth=auth)
    assert "wr0ng-pw" not in str(caught.value)
    assert str(caught.value) == (
        f"401 from {fake.host} (the token service of {fake.host}) for a/b: "
        f"check the credentials in {cfg}"
    )


async def test_a_redirect_to_another_host_is_followed_without_credentials() -> None:
    with (
        fakeregistry.fake_registry(host="127.0.0.2", tags={"a/b": ["1.0.0"]}) as storage,
        fakeregistry.fake_registry(
            tags={"a/b": ["1.0.0"]}, bearer_users={}, redirect_to=storage.url
        ) as fake,
    ):
        image = registry.parse_image(f"{fake.host}/a/b")
        got = await registry.list_tags(image, max_tags=10, auth=registry.Auth())
        sent_home = fake.requests_to("/tags/list")
        sent_away = storage.requests_to("/tags/list")
    assert got.tags == ("1.0.0",)
    assert sent_home[-1].headers["Authorization"].startswith("Bearer ")
    assert sent_home[-1].status == 307
    assert len(sent_away) == 1 and "Authorization" not in sent_away[0].headers


async def test_a_stalled_registry_fails_at_the_deadline() -> None:
    with fakeregistry.fake_registry(tags={"a/b": ["1"]}, stall=("a/b",)) as fake:
        image = registry.parse_image(f"{fake.host}/a/b")
        started = time.monotonic()
        with pytest.raises(registry.RegistryError, match="did not answer within 1 s"):
            await registry.list_tags(image, max_tags=10, auth=registry.Auth(), deadline=1.0)
        assert time.monotonic() - started < 10
        fake.release()


# pure parts


@pytest.mark.parametrize(
    ("ref", "host", "path", "plain"),
    [
        ("nginx", "registry-1.docker.io", "library/nginx", False),
        ("docker.io/bitnami/redis", "registry-1.docker.io", "bitnami/redis", False),
        ("localhost:5000/x", "localhost:5000", "x", True),
        ("ghcr.io/org/team/app", "ghcr.io", "org/team/app", False),
        ("registry.example.com:8443/a/b", "registry.example.com:8443", "a/b", False),
    ],
)
def test_image_references(ref: str, host: str, path: str, plain: bool) -> None:
    assert registry.parse_image(ref) == registry.Image(host, path, plain)


@pytest.mark.parametrize(
    ("ref", "says"),
    [
        ("nginx:1.25", "has a tag (:1.25); give the repository only"),
        ("ghcr.io/org/app@sha256:" + "0" * 64, "has a digest"),
        ("Org/App", "not a valid path"),
        ("https://ghcr.io/org/app", "drop the scheme"),
        ("", "empty"),
    ],
)
def test_bad_image_references_say_what_to_write(ref: str, says: str) -> None:
    with pytest.raises(registry.RegistryError, match=says.replace("(", r"\(").replace(")", r"\)")):
        registry.parse_image(ref)


@pytest.mark.parametrize(
    ("doc", "says"),
    [
        ({"credsStore": "desktop"}, "credsStore, which is not supported"),
        ({"credHelpers": {"r.example.com": "ecr-login"}}, "credHelpers entry for it"),
        ({"auths": {"r.example.com": {"auth": "!!"}}}, "auth is not base64 of user:password"),
        ({"auths": {"r.example.com": {"identitytoken": "x"}}}, "identity token"),
    ],
)
def test_unsupported_docker_configs_say_so(tmp_path: pathlib.Path, doc: object, says: str) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(registry.RegistryError, match=says):
        registryspec.docker_config(path, registry="r.example.com")


def test_docker_hub_entries_in_a_config_file_count_for_docker_hub(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "config.json"
    encoded = base64.b64encode(b"me:pw").decode()
    path.write_text(json.dumps({"auths": {"https://index.docker.io/v1/": {"auth": encoded}}}))
    creds = registryspec.docker_config(path, registry=registryspec.DOCKER_HUB)
    assert creds is not None and creds.username == "me"
    assert registryspec.docker_config(path, registry="ghcr.io") is None


@pytest.mark.parametrize(
    ("addresses", "inside"),
    [
        (["127.0.0.2"], True),
        (["169.254.169.254"], True),
        (["::ffff:127.0.0.1"], True),
        (["0.0.0.0"], True),
        (["203.0.113.7", "2001:db8::1"], False),
    ],
)
def test_redirect_targets_on_the_hubs_own_machine_are_recognised(
    addresses: list[str], inside: bool
) -> None:
    assert registryspec.internal(addresses) is inside


def test_a_bearer_challenge_is_read_with_quoted_commas() -> None:
    got = registryspec.parse_challenge(
        'Bearer realm="https://auth.example.com/token",service="registry.example.com",'
        'scope="repository:a/b:pull,push"'
    )
    assert got == registryspec.Challenge(
        "bearer",
        {
            "realm": "https://auth.example.com/token",
            "service": "registry.example.com",
            "scope": "repository:a/b:pull,push",
        },
    )
