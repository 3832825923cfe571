"""The hub in-process with a real Git repository: webhooks, hub.yaml reloads, metrics, auth."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import pathlib
import urllib.error
import urllib.request
from collections.abc import AsyncIterator

import grpc
import pytest

from fleetops.hub import server
from fleetops.proto.v1 import fleet_pb2, fleet_pb2_grpc
from tests.support import fleet, hubproc, wait

SECRET = "webhook-secret-for-tests"


@pytest.fixture
async def running(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[server.Running, fleet.Repo, pathlib.Path]]:
    monkeypatch.setenv("FLEETOPS_TEST_WEBHOOK", SECRET)
    repo = fleet.Repo.create(tmp_path / "git")
    repo.write(
        "apps/web/cm.yaml", {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}}
    )
    repo.commit("first")
    config = hubproc.hub_yaml(
        repo.url, {"web": "apps/web"}, webhookSecretEnv="FLEETOPS_TEST_WEBHOOK"
    )
    async with hubproc.running(tmp_path, config, ready=(), tools=hubproc.tools()) as proc:
        yield proc.running, repo, proc.config_path


def post(port: int, path: str, body: bytes, headers: dict[str, str]) -> int:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=body, headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except (urllib.error.URLError, ConnectionError) as e:
        # the hub answers an oversize body at once and closes; the client may still be sending
        if isinstance(e, ConnectionError) or isinstance(e.reason, ConnectionError):
            return 0
        raise


def get(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
        return str(resp.read().decode())


async def test_a_signed_push_fetches_at_once_and_bad_ones_are_refused(
    running: tuple[server.Running, fleet.Repo, pathlib.Path],
) -> None:
    hub, repo, _ = running
    await wait.until("the first fetch", lambda: hub.hub.heads.get("platform"))
    first = hub.hub.heads["platform"]
    repo.write(
        "apps/web/cm.yaml", {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "b"}}
    )
    second = repo.commit("second")
    body = b'{"ref": "refs/heads/main"}'
    good = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    port = hub.http_port
    call = asyncio.to_thread
    assert (
        await call(
            post, port, "/webhook/platform", body, {"X-Hub-Signature-256": "sha256=" + "0" * 64}
        )
        == 401
    )
    assert await call(post, port, "/webhook/platform", body, {}) == 401
    assert await call(post, port, "/webhook/nope", body, {"X-Hub-Signature-256": good}) == 404
    assert await call(
        post, port, "/webhook/platform", b"x" * (2 * 1024 * 1024), {"X-Hub-Signature-256": good}
    ) in (413, 0)
    await asyncio.sleep(0.5)  # not a wait: the claim is that nothing is fetched meanwhile
    assert hub.hub.heads["platform"] == first, "an unverified webhook made the hub fetch"
    assert await call(post, port, "/webhook/platform", body, {"X-Hub-Signature-256": good}) == 202
    await wait.until(
        "the fetch after a signed webhook", lambda: hub.hub.heads["platform"] == second, within=5
    )
    # GitLab sends the secret itself, Gitea an HMAC without prefix
    assert await call(post, port, "/webhook/platform", body, {"X-Gitlab-Token": SECRET}) == 202
    gitea = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert await call(post, port, "/webhook/platform", body, {"X-Gitea-Signature": gitea}) == 202


async def test_a_bad_reload_keeps_the_last_good_config(
    running: tuple[server.Running, fleet.Repo, pathlib.Path],
) -> None:
    hub, _, cfg = running
    assert "fleetops_config_ok 1" in await asyncio.to_thread(get, hub.http_port, "/metrics")
    good = cfg.read_text()
    cfg.write_text(
        good.replace("path: apps/web", "path: apps/web\n  targets: [{name: x, clusterGroup: nope}]")
    )
    await wait.until("the reload to be refused", lambda: hub.hub.config_error, within=10)
    assert "clusterGroup: unknown cluster group 'nope'" in hub.hub.config_error
    assert "fleetops_config_ok 0" in await asyncio.to_thread(get, hub.http_port, "/metrics")
    assert [a.name for a in hub.hub.cfg.apps] == ["web"]
    cfg.write_text(good.replace("name: web", "name: web2"))
    await wait.until(
        "the next good reload", lambda: [a.name for a in hub.hub.cfg.apps] == ["web2"], within=10
    )
    assert hub.hub.config_error == ""


async def test_the_fleet_api_needs_a_token(
    running: tuple[server.Running, fleet.Repo, pathlib.Path],
) -> None:
    hub, _, _ = running
    creds = grpc.ssl_channel_credentials(root_certificates=hub.ca.cert_pem)
    async with grpc.aio.secure_channel(f"127.0.0.1:{hub.grpc_port}", creds) as channel:
        stub = fleet_pb2_grpc.FleetServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetSnapshot(fleet_pb2.SnapshotRequest())
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetSnapshot(
                fleet_pb2.SnapshotRequest(), metadata=(("authorization", "Bearer guess"),)
            )
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        snap = await stub.GetSnapshot(
            fleet_pb2.SnapshotRequest(),
            metadata=(("authorization", f"Bearer {hub.tokens['readonly']}"),),
        )
        assert [a.name for a in snap.apps] == ["web"]


async def test_a_failed_fetch_keeps_the_last_good_revision_and_says_why(
    running: tuple[server.Running, fleet.Repo, pathlib.Path],
) -> None:
    hub, repo, cfg = running
    await wait.until("the first fetch", lambda: hub.hub.heads.get("platform"))
    good = hub.hub.heads["platform"]
    cfg.write_text(cfg.read_text().replace(repo.url, repo.url + "-moved"))
    await wait.until("the fetch error", lambda: hub.hub.repo_status["platform"].error, within=10)
    status = hub.hub.repo_status["platform"]
    assert "fetch from file://" in status.error and "failed" in status.error
    assert hub.hub.heads["platform"] == good
    snap = hub.hub.snapshot()
    assert snap.repos[0].revision == good and snap.repos[0].error == status.error
    assert 'fleetops_repo_fetch_ok{repo="platform"} 0' in await asyncio.to_thread(
        get, hub.http_port, "/metrics"
    )


async def test_the_standard_grpc_health_service_answers(
    running: tuple[server.Running, fleet.Repo, pathlib.Path],
) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    hub, _, _ = running
    creds = grpc.ssl_channel_credentials(root_certificates=hub.ca.cert_pem)
    async with grpc.aio.secure_channel(f"127.0.0.1:{hub.grpc_port}", creds) as channel:
        resp = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
