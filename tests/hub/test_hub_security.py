"""Attacks on the hub's own boundaries, one claim per test: a lying agent, a forged actor,
hostile text in reports and names, webhook abuse, token misuse. The hub runs in-process with
a real Git repository; agents are real gRPC clients driven by hand (tests/support/rawagent).
"""

from __future__ import annotations

import asyncio
import pathlib
import socket
import stat
import urllib.error
import urllib.request
from collections.abc import AsyncIterator

import grpc
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from fleetops.hub import apitokens, errors, http, render, server, store
from fleetops.proto.v1 import agent_pb2, fleet_pb2, fleet_pb2_grpc, types_pb2
from tests.support import fleet, rawagent, wait

SECRET = "webhook-secret-for-tests"
DEV_AND_PROD = [
    {"name": "dev", "clusterSelector": {"matchLabels": {"env": "dev"}}, "yaml": {"overlays": ["dev"]}},
    {"name": "prod", "clusterSelector": {"matchLabels": {"env": "prod"}}, "yaml": {"overlays": ["prod"]}},
]  # fmt: skip


def configmap(env: str) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"},
            "data": {"env": env}}  # fmt: skip


@pytest.fixture
async def hub(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[server.Running]:
    monkeypatch.setenv("FLEETOPS_TEST_WEBHOOK", SECRET)
    repo = fleet.Repo.create(tmp_path / "git")
    repo.write("apps/web/cm.yaml", configmap("base"))
    repo.write("apps/web/overlays/dev/cm.yaml", configmap("dev"))
    repo.write("apps/web/overlays/prod/cm.yaml", configmap("prod-with-secrets"))
    repo.write("apps/other/cm.yaml", configmap("other"))
    repo.commit("first")
    cfg = tmp_path / "hub.yaml"
    cfg.write_text(yaml.safe_dump({
        "repos": [{"name": "platform", "url": repo.url, "pollInterval": "1h",
                   "webhookSecretEnv": "FLEETOPS_TEST_WEBHOOK"}],
        "apps": [
            {"name": "web", "repo": "platform", "path": "apps/web", "namespace": "web",
             "targets": DEV_AND_PROD},
            {"name": "other", "repo": "platform", "path": "apps/other", "namespace": "other",
             "targets": [{"name": "prod", "clusterSelector": {"matchLabels": {"env": "prod"}}}]},
        ],
    }))  # fmt: skip
    running = await server.start(
        config_path=cfg, data=tmp_path / "data", listen="127.0.0.1:0", agent_listen="127.0.0.1:0",
        http_listen="127.0.0.1:0", tools=render.Tools(),
    )  # fmt: skip
    await wait.until("the first fetch", lambda: running.hub.heads.get("platform"))
    try:
        yield running
    finally:
        await running.stop()


def address(hub: server.Running) -> str:
    return f"127.0.0.1:{hub.grpc_port}"


async def enrolled(
    hub: server.Running, cluster: str, *, token_labels: dict[str, str], claims: dict[str, str]
) -> rawagent.RawAgent:
    """An agent whose token says `token_labels` and who claims `claims` about itself."""
    token = await rawagent.registration_token(
        address(hub), hub.ca.cert_pem, hub.tokens["operator"], cluster, token_labels
    )
    agent = rawagent.RawAgent()
    await agent.register(address(hub), hub.ca.cert_pem, token, labels=claims)
    return agent


def agent_channel(hub: server.Running, agent: rawagent.RawAgent) -> grpc.aio.Channel:
    return grpc.aio.secure_channel(
        f"127.0.0.1:{hub.agent_port}", agent.credentials(hub.ca.cert_pem)
    )


def fleet_stub(channel: grpc.aio.Channel) -> fleet_pb2_grpc.FleetServiceStub:
    return fleet_pb2_grpc.FleetServiceStub(channel)


def fleet_channel(hub: server.Running) -> grpc.aio.Channel:
    creds = grpc.ssl_channel_credentials(root_certificates=hub.ca.cert_pem)
    return grpc.aio.secure_channel(address(hub), creds)


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


# ---------------------------------------------------------------- a lying agent


async def test_an_agent_that_claims_prod_labels_still_gets_the_dev_bundle(
    hub: server.Running,
) -> None:
    agent = await enrolled(
        hub, "dev-1", token_labels={"env": "dev"}, claims={"env": "prod", "tier": "gold"}
    )
    async with agent_channel(hub, agent) as ch:
        stream = await agent.connect(ch, agent_pb2.Hello(labels={"env": "prod"}))
        got = await stream.next_assignments()
        stream.call.cancel()
    assert [a.app for a in got.assignments] == ["web"], "a prod-only app reached a dev cluster"
    yaml_text = "".join(m.yaml for m in got.assignments[0].bundle.manifests)
    assert "env: dev" in yaml_text and "prod-with-secrets" not in yaml_text


async def test_what_an_agent_says_about_itself_is_shown_as_facts_not_labels(
    hub: server.Running,
) -> None:
    agent = await enrolled(hub, "dev-2", token_labels={"env": "dev"}, claims={"env": "prod"})
    async with agent_channel(hub, agent) as ch:
        stream = await agent.connect(
            ch, agent_pb2.Hello(labels={"env": "prod", "bad key!": "[red]x", "zone": "a"})
        )
        await stream.next_assignments()
        cluster = next(c for c in hub.hub.snapshot().clusters if c.name == "dev-2")
        stream.call.cancel()
    assert cluster.labels["env"] == "dev"
    assert dict(cluster.agent_facts) == {"env": "prod", "zone": "a"}  # the invalid key dropped


async def test_a_report_for_an_app_the_cluster_was_not_assigned_is_dropped(
    hub: server.Running,
) -> None:
    agent = await enrolled(hub, "dev-3", token_labels={"env": "dev"}, claims={})
    async with agent_channel(hub, agent) as ch:
        stream = await agent.connect(ch)
        await stream.next_assignments()
        await stream.send(
            agent_pb2.AgentMessage(
                report=types_pb2.AppReport(
                    app="other", sync=types_pb2.SYNC_STATUS_SYNCED, reason="owned"
                )
            )
        )
        await wait.until("the report to be seen", lambda: hub.hub.dropped_reports)
        stream.call.cancel()
    assert ("dev-3", "other") not in hub.hub.reports
    assert hub.hub.cell("dev-3", hub.hub.cfg.apps[1]) is None


async def test_an_injected_app_name_cannot_add_lines_to_metrics(hub: server.Running) -> None:
    agent = await enrolled(hub, "dev-4", token_labels={"env": "dev"}, claims={})
    async with agent_channel(hub, agent) as ch:
        stream = await agent.connect(ch)
        await stream.next_assignments()
        evil = 'x"} 1\nfleetops_config_ok 0\n#'
        await stream.send(agent_pb2.AgentMessage(report=types_pb2.AppReport(app=evil)))
        # messages are handled in order: once this one is dropped, the evil one was handled
        await stream.send(agent_pb2.AgentMessage(report=types_pb2.AppReport(app="other")))
        await wait.until("the reports to be handled", lambda: hub.hub.dropped_reports)
        stream.call.cancel()
    text = await asyncio.to_thread(get, hub.http_port, "/metrics")
    ok = [
        s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == "fleetops_config_ok"
    ]
    assert ok == [1.0]


def test_metrics_label_values_are_escaped_so_they_parse() -> None:
    evil = 'x"} 1\nfleetops_config_ok 0\\'
    line = f'fleetops_app_sync{{app="{http.label(evil)}",sync="SYNCED"}} 1\n'
    [family] = list(text_string_to_metric_families(line))
    assert [s.labels["app"] for s in family.samples] == [evil]


async def hostile_enum_report(hub: server.Running) -> types_pb2.AppReport:
    """What the hub kept of a report with enum values no proto defines and a reason full of
    terminal escapes and Rich markup."""
    agent = await enrolled(hub, "dev-5", token_labels={"env": "dev"}, claims={})
    async with agent_channel(hub, agent) as ch:
        stream = await agent.connect(ch)
        await stream.next_assignments()
        await stream.send(
            agent_pb2.AgentMessage(
                report=types_pb2.AppReport(
                    app="web",
                    sync=99,
                    health=42,
                    reason="\x1b[31m[/]red\x1b[0m",  # type: ignore[arg-type]
                )
            )
        )
        await wait.until("the report", lambda: ("dev-5", "web") in hub.hub.reports)
        stream.call.cancel()
    return hub.hub.reports[("dev-5", "web")]


async def test_an_unknown_health_value_shows_as_unknown(hub: server.Running) -> None:
    report = await hostile_enum_report(hub)
    assert report.health == types_pb2.HEALTH_STATUS_UNKNOWN


async def test_an_unknown_sync_value_shows_as_unspecified(hub: server.Running) -> None:
    report = await hostile_enum_report(hub)
    assert report.sync == types_pb2.SYNC_STATUS_UNSPECIFIED


async def test_terminal_escapes_in_a_reported_reason_are_dropped_and_markup_kept_as_text(
    hub: server.Running,
) -> None:
    report = await hostile_enum_report(hub)
    assert "\x1b" not in report.reason and "[/]red" in report.reason


async def test_metrics_still_answer_after_a_report_with_unknown_enum_values(
    hub: server.Running,
) -> None:
    await hostile_enum_report(hub)
    text = await asyncio.to_thread(get, hub.http_port, "/metrics")
    assert any(
        s.labels.get("health") == "HEALTH_STATUS_UNKNOWN"
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    )


# ---------------------------------------------------------------- API callers


async def test_the_audit_actor_is_the_token_name_not_what_the_client_claims(
    hub: server.Running,
) -> None:
    async with fleet_channel(hub) as ch:
        stub = fleet_stub(ch)
        alice = await stub.CreateApiToken(
            fleet_pb2.CreateApiTokenRequest(name="alice", role="operator"),
            metadata=bearer(hub.tokens["operator"]),
        )
        resp = await stub.Pause(
            fleet_pb2.PauseRequest(app="web", reason="change freeze"),
            metadata=(*bearer(alice.token), ("x-fleetops-actor", "mallory")),
        )
    assert resp.event.actor == "alice"


async def test_the_bootstrap_operator_token_acts_as_admin(hub: server.Running) -> None:
    async with fleet_channel(hub) as ch:
        resp = await fleet_stub(ch).Pause(
            fleet_pb2.PauseRequest(app="web"), metadata=bearer(hub.tokens["operator"])
        )
    assert resp.event.actor == "admin"


async def named_token(hub: server.Running, *, name: str, role: str) -> str:
    async with fleet_channel(hub) as ch:
        made = await fleet_stub(ch).CreateApiToken(
            fleet_pb2.CreateApiTokenRequest(name=name, role=role),
            metadata=bearer(hub.tokens["operator"]),
        )
    return made.token


async def test_a_named_readonly_token_may_read(hub: server.Running) -> None:
    bob = await named_token(hub, name="bob", role="readonly")
    async with fleet_channel(hub) as ch:
        snap = await fleet_stub(ch).GetSnapshot(fleet_pb2.SnapshotRequest(), metadata=bearer(bob))
    assert {a.name for a in snap.apps} == {"web", "other"}


# Every method that changes the fleet, with a request that an operator could send.
OPERATOR_CALLS = [
    ("Pause", fleet_pb2.PauseRequest(app="web")),
    ("Sync", fleet_pb2.SyncRequest(app="web")),
    ("Rollback", fleet_pb2.RollbackRequest(app="web", revision="0" * 40)),
    ("Unpin", fleet_pb2.UnpinRequest(app="web")),
    ("RemoveCluster", fleet_pb2.RemoveClusterRequest(cluster="dev-1")),
    ("CreateToken", fleet_pb2.CreateTokenRequest(cluster="edge")),
    ("CreateApiToken", fleet_pb2.CreateApiTokenRequest(name="eve", role="operator")),
    ("RevokeApiToken", fleet_pb2.RevokeApiTokenRequest(name="bob")),
]


@pytest.mark.parametrize(("method", "request_"), OPERATOR_CALLS, ids=[m for m, _ in OPERATOR_CALLS])
async def test_a_named_readonly_token_cannot_act(
    hub: server.Running, method: str, request_: object
) -> None:
    bob = await named_token(hub, name="bob", role="readonly")
    async with fleet_channel(hub) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await getattr(fleet_stub(ch), method)(request_, metadata=bearer(bob))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert f"{method} changes the fleet and needs an operator token" in (err.value.details() or "")
    assert "'bob' is read-only" in (err.value.details() or "")


async def test_a_readonly_token_cannot_mint_an_operator_token(hub: server.Running) -> None:
    async with fleet_channel(hub) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await fleet_stub(ch).CreateApiToken(
                fleet_pb2.CreateApiTokenRequest(name="eve", role="operator"),
                metadata=bearer(hub.tokens["readonly"]),
            )
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "CreateApiToken changes the fleet" in (err.value.details() or "")
    assert "is read-only" in (err.value.details() or "")


async def test_a_revoked_token_is_refused_at_once(hub: server.Running) -> None:
    carol = await named_token(hub, name="carol", role="operator")
    async with fleet_channel(hub) as ch:
        stub = fleet_stub(ch)
        await stub.RevokeApiToken(
            fleet_pb2.RevokeApiTokenRequest(name="carol"), metadata=bearer(hub.tokens["operator"])
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetSnapshot(fleet_pb2.SnapshotRequest(), metadata=bearer(carol))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "unknown, revoked or expired" in (err.value.details() or "")


@pytest.mark.parametrize(
    "metadata",
    [(), (("authorization", "Bearer not-a-token"),), (("authorization", "Basic YWRtaW4="),)],
    ids=["no token", "an unknown token", "not a bearer token"],
)
async def test_a_call_without_a_valid_token_is_unauthenticated(
    hub: server.Running, metadata: tuple[tuple[str, str], ...]
) -> None:
    async with fleet_channel(hub) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await fleet_stub(ch).GetSnapshot(fleet_pb2.SnapshotRequest(), metadata=metadata)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "a valid fleet API token is required" in (err.value.details() or "")


async def test_token_list_shows_names_and_roles_never_secrets(hub: server.Running) -> None:
    async with fleet_channel(hub) as ch:
        stub = fleet_stub(ch)
        admin = bearer(hub.tokens["operator"])
        dave = await stub.CreateApiToken(
            fleet_pb2.CreateApiTokenRequest(name="dave", role="readonly", ttl_seconds=3600),
            metadata=admin,
        )
        listed = await stub.ListApiTokens(fleet_pb2.ListApiTokensRequest(), metadata=admin)
    assert [(t.name, t.role, t.created_by) for t in listed.tokens] == [
        ("dave", "readonly", "admin")
    ]
    assert dave.token not in str(listed)


async def test_an_expired_named_token_is_refused(tmp_path: pathlib.Path) -> None:
    now = [1000.0]
    db = store.Store(tmp_path / "hub.db")
    try:
        registry = apitokens.Registry(db=db, bootstrap={}, clock=lambda: now[0])
        secret, _ = await registry.create(name="tmp", role="readonly", ttl=60, created_by="admin")
        assert registry.resolve(secret) == apitokens.Caller("tmp", "readonly")
        now[0] += 61
        assert registry.resolve(secret) is None
    finally:
        db.close()


async def ask_for_an_absurd_ttl(hub: server.Running) -> grpc.aio.AioRpcError:
    async with fleet_channel(hub) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await fleet_stub(ch).CreateToken(
                fleet_pb2.CreateTokenRequest(cluster="edge", ttl_seconds=10**12),
                metadata=bearer(hub.tokens["operator"]),
            )
    return err.value


async def test_a_registration_token_with_an_absurd_ttl_is_an_invalid_argument(
    hub: server.Running,
) -> None:
    err = await ask_for_an_absurd_ttl(hub)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "ttl 1000000000000 s: a registration token may live from 1 s to" in (err.details() or "")


async def test_a_registration_token_with_an_absurd_ttl_writes_nothing(hub: server.Running) -> None:
    await ask_for_an_absurd_ttl(hub)
    assert await hub.hub.db.run(hub.hub.db.registration_tokens) == []


async def test_history_limit_is_clamped(hub: server.Running) -> None:
    async with fleet_channel(hub) as ch:
        resp = await fleet_stub(ch).History(
            fleet_pb2.HistoryRequest(limit=-1), metadata=bearer(hub.tokens["readonly"])
        )
    assert len(resp.events) <= 200


# ---------------------------------------------------------------- clusters


async def test_cluster_remove_deletes_assignments_and_is_in_history(hub: server.Running) -> None:
    agent = await enrolled(hub, "gone-1", token_labels={"env": "dev"}, claims={})
    async with agent_channel(hub, agent) as ch:
        stream = await agent.connect(ch)
        await stream.next_assignments()
        async with fleet_channel(hub) as fch:
            resp = await fleet_stub(fch).RemoveCluster(
                fleet_pb2.RemoveClusterRequest(cluster="gone-1"),
                metadata=bearer(hub.tokens["operator"]),
            )
        stream.call.cancel()
    assert resp.event.kind == "cluster-removed" and resp.event.actor == "admin"
    assert "gone-1" not in {c.name for c in hub.hub.snapshot().clusters}
    assert await hub.hub.db.run(hub.hub.db.assignments_for_cluster, "gone-1") == []


async def test_allow_mass_prune_is_sent_for_the_current_bundle_only(
    hub: server.Running,
) -> None:
    agent = await enrolled(hub, "dev-6", token_labels={"env": "dev"}, claims={})
    async with agent_channel(hub, agent) as ch:
        stream = await agent.connect(ch)
        first = await stream.next_assignments()
        assert not first.assignments[0].allow_mass_prune
        async with fleet_channel(hub) as fch:
            await fleet_stub(fch).Sync(
                fleet_pb2.SyncRequest(app="web", cluster="dev-6", allow_mass_prune=True),
                metadata=bearer(hub.tokens["operator"]),
            )
        allowed = await wait.until(
            "an assignment allowing the mass prune",
            lambda: hub.hub.assignments_for("dev-6").assignments[0].allow_mass_prune,
        )
        stream.call.cancel()
    assert allowed
    event = (await hub.hub.history(app="web", cluster="dev-6", limit=5))[0]
    assert event.kind in ("mass-prune-allowed", "sync-requested")


# ---------------------------------------------------------------- data at rest


async def test_the_data_directory_and_database_are_private(hub: server.Running) -> None:
    data = hub.hub.data
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    for name in ("hub.db", "hub.db-wal", "ca.key"):
        path = data / name
        if path.exists():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, name
    assert (data / "hub.db").exists()


# ---------------------------------------------------------------- webhooks


def get(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
        return str(resp.read().decode())


def raw_request(port: int, request: bytes, source: str = "127.0.0.1") -> bytes:
    with socket.create_connection(
        ("127.0.0.1", port), timeout=5, source_address=(source, 0)
    ) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


async def test_a_non_ascii_signature_is_a_401_not_a_traceback(hub: server.Running) -> None:
    body = b"{}"
    answer = await asyncio.to_thread(
        raw_request,
        hub.http_port,
        b"POST /webhook/platform HTTP/1.1\r\nHost: x\r\nX-Hub-Signature-256: sha256=\xff\xfe\xe9\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body,
    )
    assert answer.startswith(b"HTTP/1.1 401 ")


async def test_an_oversize_webhook_body_is_refused_unread(hub: server.Running) -> None:
    answer = await asyncio.to_thread(
        raw_request,
        hub.http_port,
        b"POST /webhook/platform HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999999\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 413 ")


async def test_one_client_holding_connections_gets_503_and_others_are_still_served(
    hub: server.Running,
) -> None:
    idle = [
        socket.create_connection(("127.0.0.1", hub.http_port)) for _ in range(http.MAX_PER_PEER)
    ]
    try:
        await wait.until(
            "every idle connection to be accepted",
            lambda: hub._http._per_peer.get("127.0.0.1", 0) >= http.MAX_PER_PEER,
        )
        answer = await asyncio.to_thread(
            raw_request, hub.http_port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        other = await asyncio.to_thread(
            raw_request, hub.http_port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", "127.0.0.2"
        )
    finally:
        for s in idle:
            s.close()
    assert answer.startswith(b"HTTP/1.1 503 ")
    assert other.startswith(b"HTTP/1.1 200 ")
    await wait.until("the hub to answer again", lambda: asyncio.to_thread(_healthz, hub.http_port))


async def test_a_client_that_sends_its_headers_slowly_is_cut(
    hub: server.Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http, "HEADER_DEADLINE", 0.5)
    with socket.create_connection(("127.0.0.1", hub.http_port), timeout=10) as sock:
        sock.sendall(b"POST /webhook/platform HTTP/1.1\r\nHost: x\r\n")  # and no more
        answer = await asyncio.to_thread(sock.recv, 1024)
    assert answer.startswith(b"HTTP/1.1 400 ")


def _healthz(port: int) -> bool:
    try:
        return get(port, "/healthz") == "ok\n"
    except (urllib.error.URLError, ConnectionError, OSError):
        return False


def test_webhook_signatures_compare_as_bytes() -> None:
    headers = {"x-hub-signature-256": "sha256=\u00e9" * 3}
    assert http.verify(headers, b"{}", SECRET) is False


def test_api_token_names_are_checked() -> None:
    with pytest.raises(errors.InvalidArgument, match="token name '../etc'"):
        apitokens.check_name("../etc")


async def test_an_agent_flooding_reports_cannot_flood_the_audit_log(hub: server.Running) -> None:
    agent = await enrolled(hub, "dev-7", token_labels={"env": "dev"}, claims={})
    async with agent_channel(hub, agent) as ch:
        stream = await agent.connect(ch)
        got = await stream.next_assignments()
        assigned = got.assignments[0]
        for i in range(200):  # flip between the assigned bundle and another, healing each time
            digest = assigned.bundle_digest if i % 2 else "ab" * 32
            failed = i % 3 == 0
            await stream.send(
                agent_pb2.AgentMessage(
                    report=types_pb2.AppReport(
                        app="web", revision=assigned.revision, bundle_digest=digest,
                        sync=types_pb2.SYNC_STATUS_APPLY_FAILED if failed else types_pb2.SYNC_STATUS_SYNCED,
                        reason=f"failure {i}", healed_resources=1,
                    )
                )
            )  # fmt: skip
        await stream.send(agent_pb2.AgentMessage(report=types_pb2.AppReport(app="other")))
        await wait.until("the reports to be handled", lambda: hub.hub.dropped_reports)
        stream.call.cancel()
    events = await hub.hub.history(app="web", cluster="dev-7", limit=1000)
    by_agent = [e for e in events if e.actor == "agent:dev-7"]
    assert len(by_agent) <= 3, [e.kind for e in by_agent]  # one applied, one failure, one heal
