"""Certificate lifecycle, tried against a real hub on loopback with real gRPC clients: agent
certificates have a lifetime and are renewed over mTLS without dropping the stream; the hub
accepts only a cluster's current certificate, so re-registration and removal revoke the old
one at once; the hub serves TLS with its own leaf, never with the CA's key; a bad CSR spends
no token; a missing --ca-key refuses to start; an expired identity registers again.

Attacks are written as the attack, one claim each, with the exact status code.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import pathlib
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fleetops.agent import credentials, enroll, keystore, reconcile, renewal, runner, state
from fleetops.agent import errors as agent_errors
from fleetops.hub import ca, cli, server
from fleetops.hub import errors as hub_errors
from fleetops.proto.v1 import agent_pb2
from tests.support import certlife, rawagent, wait

# ---------------------------------------------------------------- helpers


@pytest.fixture
async def hub(tmp_path: pathlib.Path) -> AsyncIterator[certlife.FleetHub]:
    async with certlife.fleet_hub(tmp_path) as h:
        yield h


async def connect_refusal(hub: certlife.FleetHub, agent: rawagent.RawAgent) -> grpc.aio.AioRpcError:
    """Open the stream with `agent`'s certificate; the error the hub ends it with."""
    channel, _ = hub.stub(agent)
    async with channel:
        stream = await agent.connect(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stream.next_assignments(10)
        return err.value


async def an_assigned_digest(hub: certlife.FleetHub, agent: rawagent.RawAgent) -> str:
    """The bundle digest the hub assigns `agent`'s cluster (read from its stream)."""
    channel, _ = hub.stub(agent)
    async with channel:
        stream = await agent.connect(channel)

        async def assigned() -> str | None:
            got = await stream.next_assignments(30)
            return str(got.assignments[0].bundle_digest) if got.assignments else None

        digest = await wait.until("the hub to assign the app to the cluster", assigned, within=30)
        stream.call.cancel()
        return digest


async def download(hub: certlife.FleetHub, agent: rawagent.RawAgent, digest: str) -> bytes:
    channel, stub = hub.stub(agent)
    async with channel:
        parts = [c.data async for c in stub.GetBundle(agent_pb2.GetBundleRequest(digest=digest))]
    return b"".join(parts)


async def renew(
    hub: certlife.FleetHub, agent: rawagent.RawAgent, csr: bytes | None = None
) -> agent_pb2.RenewResponse:
    channel, stub = hub.stub(agent)
    async with channel:
        return await stub.Renew(agent_pb2.RenewRequest(csr_pem=csr or agent.csr()), timeout=10)


def peer_chain(
    port: int, client_cert: tuple[pathlib.Path, pathlib.Path] | None = None
) -> list[x509.Certificate]:
    """The certificates a TLS server on 127.0.0.1:`port` presents, unverified, leaf first."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    if client_cert is not None:
        ctx.load_cert_chain(certfile=client_cert[0], keyfile=client_cert[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        with ctx.wrap_socket(sock, server_hostname="127.0.0.1") as tls:
            chain = enroll.presented_chain(tls)
    return [x509.load_der_x509_certificate(der) for der in chain]


def spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def expired_identity(hub: certlife.FleetHub, cluster: str) -> credentials.Identity:
    """An identity for `cluster` whose certificate the hub's CA issued 100 days ago."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
        .sign(key, hashes.SHA256())
    )
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=100)
    issued = hub.running.ca.issue(csr, cluster, now=past)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return credentials.Identity(
        cluster=cluster,
        key_pem=key_pem,
        cert_pem=issued.pem,
        ca_pem=hub.ca_pem,
        agent_port=hub.running.agent_port,
    )


def keep_on_disk(root: pathlib.Path, me: credentials.Identity) -> None:
    keystore.save(
        root,
        {
            "agent.key": me.key_pem,
            "agent.crt": me.cert_pem,
            "ca.crt": me.ca_pem,
            "agent-port": str(me.agent_port).encode(),
        },
    )


# ---------------------------------------------------------------- lifetime and renewal


async def test_a_certificate_gets_the_configured_lifetime_and_the_hub_records_it(
    tmp_path: pathlib.Path,
) -> None:
    async with certlife.fleet_hub(
        tmp_path, cert_lifetime=datetime.timedelta(hours=12), with_app=False
    ) as hub:
        agent = await hub.registered("dev")
        cert = x509.load_pem_x509_certificate(agent.cert)
        left = cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
        assert datetime.timedelta(hours=11, minutes=59) < left <= datetime.timedelta(hours=12)
        shown = hub.running.hub.cluster_pb("dev").certificate_expires.ToDatetime(datetime.UTC)
        assert shown == cert.not_valid_after_utc
        assert hub.running.hub.clusters["dev"].cert_fingerprint == ca.fingerprint(cert)


async def test_a_short_lived_certificate_is_renewed_and_the_stream_never_drops(
    tmp_path: pathlib.Path,
) -> None:
    async with certlife.fleet_hub(
        tmp_path, cert_lifetime=datetime.timedelta(seconds=6), with_app=False
    ) as hub:
        root = tmp_path / "agent"
        me = await asyncio.to_thread(
            enroll.register, root, hub=hub.address, token=await hub.token("dev"), labels={}
        )
        agent = runner.Runner(
            address=hub.address,
            me=me,
            client=certlife.FakeNoCluster(),  # type: ignore[arg-type]
            local=state.LocalState(root),
            options=reconcile.Options(),
            resync=3600,
            labels={},
        )
        running = asyncio.create_task(agent.run())
        try:
            stream = await wait.until(
                "the agent's stream", lambda: hub.running.hub.streams.get("dev")
            )
            await wait.until(
                "a renewal",
                lambda: agent.me.cert_pem != me.cert_pem,
                within=me.expires - time.time() + 5,
            )
            # the stream outlives the certificate it was opened with
            await wait.until(
                "the first certificate's end", lambda: time.time() > me.expires + 0.5, within=10
            )
            assert hub.running.hub.streams.get("dev") is stream, "the agent reconnected"
            assert hub.running.hub.clusters["dev"].connected
            assert agent.connected.is_set()
        finally:
            agent.stop.set()
            await running


async def test_after_a_renewal_the_agent_reconnects_with_the_new_certificate(
    tmp_path: pathlib.Path,
) -> None:
    async with certlife.fleet_hub(
        tmp_path, cert_lifetime=datetime.timedelta(seconds=6), with_app=False
    ) as hub:
        root = tmp_path / "agent"
        me = await asyncio.to_thread(
            enroll.register, root, hub=hub.address, token=await hub.token("dev"), labels={}
        )
        agent = runner.Runner(
            address=hub.address,
            me=me,
            client=certlife.FakeNoCluster(),  # type: ignore[arg-type]
            local=state.LocalState(root),
            options=reconcile.Options(),
            resync=3600,
            labels={},
        )
        running = asyncio.create_task(agent.run())
        try:
            await wait.until("the agent's stream", lambda: hub.running.hub.streams.get("dev"))
            await wait.until(
                "the first certificate's end",
                lambda: time.time() > me.expires + 0.5,
                within=me.expires - time.time() + 5,
            )
            await hub.restart()  # the stream ends; only a renewed certificate can come back
            await wait.until(
                "the agent back on the restarted hub",
                lambda: hub.running.hub.streams.get("dev"),
                within=20,
            )
        finally:
            agent.stop.set()
            await running


async def test_a_renewal_saves_a_new_key_in_place_of_the_old_identity(
    hub: certlife.FleetHub, tmp_path: pathlib.Path
) -> None:
    root = tmp_path / "agent"
    me = await asyncio.to_thread(
        enroll.register, root, hub=hub.address, token=await hub.token("dev"), labels={}
    )
    new = await renewal.renew(root, hub.address, me)
    assert new.key_pem != me.key_pem
    assert keystore.load(root) == new
    assert hub.running.hub.certificate_ok("dev", ca.fingerprint_pem(new.cert_pem))


async def test_failed_renewals_are_retried_with_backoff_and_logged(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with certlife.fleet_hub(tmp_path, with_app=False) as hub:
        root = tmp_path / "agent"
        me = await asyncio.to_thread(
            enroll.register, root, hub=hub.address, token=await hub.token("dev"), labels={}
        )
    # the hub is gone: every attempt fails for real (connection refused)
    clock = certlife.StepClock(me.renewal_due + 1)
    stop = asyncio.Event()

    def current() -> credentials.Identity:
        if len(clock.naps) >= 3:
            stop.set()
        return me

    caplog.set_level(logging.WARNING, "fleetops.agent")
    await renewal.keep_renewed(
        state=root, address=hub.address, current=current, renewed=lambda _: None, stop=stop,
        clock=clock, deadline=5,
    )  # fmt: skip
    # each nap is the wait before the next attempt: 5 s doubling, with a little jitter
    assert [round(n / 5) * 5 for n in clock.naps] == [5, 10, 20], clock.naps
    assert "renewing the certificate of cluster dev failed (attempt 1)" in caplog.text
    assert keystore.load(root) == me  # nothing half-saved


async def test_a_lost_renewal_answer_does_not_lock_the_agent_out(hub: certlife.FleetHub) -> None:
    agent = await hub.registered("dev")
    await renew(hub, agent)  # the hub records the new certificate; the agent never hears of it
    again = await renew(hub, agent)
    assert again.certificate_pem


async def test_a_lost_renewal_answer_does_not_lock_the_agent_out_across_a_hub_restart(
    hub: certlife.FleetHub,
) -> None:
    agent = await hub.registered("dev")
    await renew(hub, agent)  # the hub records the new certificate; the agent never hears of it
    await hub.restart()  # mid-handover: the certificate the agent holds is the previous one
    again = await renew(hub, agent)
    assert again.certificate_pem
    agent.cert = again.certificate_pem
    assert await an_assigned_digest(hub, agent)  # and the renewed one connects


async def test_after_a_restart_the_renewed_certificate_in_use_still_retires_the_old_one(
    hub: certlife.FleetHub,
) -> None:
    old = await hub.registered("dev")
    new = rawagent.RawAgent()
    new.cert = (await renew(hub, old, new.csr())).certificate_pem
    await hub.restart()
    assert await an_assigned_digest(hub, new)  # the renewed certificate in use
    await hub.restart()  # its predecessor's retirement was stored, not only believed
    err = await connect_refusal(hub, old)
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_once_the_renewed_certificate_is_used_the_old_one_is_refused(
    hub: certlife.FleetHub,
) -> None:
    old = await hub.registered("dev")
    new = rawagent.RawAgent()
    new.cert = (await renew(hub, old, new.csr())).certificate_pem
    await renew(hub, new)  # the renewed certificate in use: its predecessor retires
    err = await connect_refusal(hub, old)
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_renew_refuses_a_csr_that_does_not_verify(hub: certlife.FleetHub) -> None:
    agent = await hub.registered("dev")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await renew(hub, agent, tampered(agent.csr()))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_an_expired_certificate_cannot_renew(
    hub: certlife.FleetHub, tmp_path: pathlib.Path
) -> None:
    await hub.registered("dev")
    expired = expired_identity(hub, "dev")
    with pytest.raises(agent_errors.AgentError, match="UNAVAILABLE"):  # TLS refuses it
        await renewal.renew(tmp_path / "agent", hub.address, expired, deadline=5)


async def test_renew_without_a_client_certificate_is_unauthenticated(
    hub: certlife.FleetHub,
) -> None:
    async with grpc.aio.secure_channel(
        hub.address, grpc.ssl_channel_credentials(root_certificates=hub.ca_pem)
    ) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await rawagent.agent_pb2_grpc.AgentServiceStub(ch).Renew(
                agent_pb2.RenewRequest(csr_pem=rawagent.RawAgent().csr()), timeout=10
            )
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


# ---------------------------------------------------------------- revocation


async def test_after_registering_again_the_old_certificate_cannot_connect(
    hub: certlife.FleetHub,
) -> None:
    old = await hub.registered("dev")
    await hub.registered("dev")
    err = await connect_refusal(hub, old)
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "replaced or revoked" in (err.details() or "")
    assert "token create --cluster dev" in (err.details() or "")


async def test_after_registering_again_the_old_certificate_cannot_download_bundles(
    hub: certlife.FleetHub,
) -> None:
    old = await hub.registered("dev")
    new = await hub.registered("dev")
    digest = await an_assigned_digest(hub, new)
    assert await download(hub, new, digest)  # the bundle is there for the current certificate
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await download(hub, old, digest)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_after_registering_again_the_old_certificate_cannot_renew(
    hub: certlife.FleetHub,
) -> None:
    old = await hub.registered("dev")
    await hub.registered("dev")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await renew(hub, old)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_certificate_renewed_before_registering_again_is_revoked_too(
    hub: certlife.FleetHub,
) -> None:
    old = await hub.registered("dev")
    await renew(hub, old)  # the old certificate is in its hand-over window
    await hub.registered("dev")
    err = await connect_refusal(hub, old)
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_removed_cluster_s_certificate_cannot_connect(hub: certlife.FleetHub) -> None:
    agent = await hub.registered("dev")
    await hub.running.hub.remove_cluster(cluster="dev", actor="tester")
    err = await connect_refusal(hub, agent)
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_removed_cluster_s_certificate_cannot_renew(hub: certlife.FleetHub) -> None:
    agent = await hub.registered("dev")
    await hub.running.hub.remove_cluster(cluster="dev", actor="tester")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await renew(hub, agent)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


# ---------------------------------------------------------------- the hub's own certificate


async def test_the_hub_serves_registration_with_a_leaf_not_with_the_ca(
    hub: certlife.FleetHub,
) -> None:
    chain = await asyncio.to_thread(peer_chain, hub.running.grpc_port)
    assert spki(chain[0]) != spki(hub.running.ca.cert)
    assert [spki(c) for c in chain[1:]] == [spki(hub.running.ca.cert)]
    chain[0].verify_directly_issued_by(hub.running.ca.cert)


async def test_the_hub_serves_agents_with_a_leaf_not_with_the_ca(
    hub: certlife.FleetHub, tmp_path: pathlib.Path
) -> None:
    agent = await hub.registered("dev")
    cert, key = tmp_path / "agent.crt", tmp_path / "agent.key"
    cert.write_bytes(agent.cert)
    key.write_bytes(
        agent.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    chain = await asyncio.to_thread(peer_chain, hub.running.agent_port, (cert, key))
    assert spki(chain[0]) != spki(hub.running.ca.cert)


async def test_an_agent_registers_with_the_pinned_token_through_the_leaf(
    hub: certlife.FleetHub, tmp_path: pathlib.Path
) -> None:
    me = await asyncio.to_thread(
        enroll.register,
        tmp_path / "agent",
        hub=hub.address,
        token=await hub.token("dev"),
        labels={},
    )
    assert credentials.ca_pin(me.ca_pem) == hub.running.ca.pin
    assert hub.running.hub.certificate_ok("dev", ca.fingerprint_pem(me.cert_pem))


@pytest.fixture
def impostor(hub: certlife.FleetHub, tmp_path: pathlib.Path) -> Iterator[int]:
    """A TLS server that presents the real hub's CA certificate (it is public) after a leaf
    of its own CA: the port it listens on."""
    own_ca = ca.load_or_create(tmp_path / "impostor")
    serving = ca.serving_cert(tmp_path / "impostor", own_ca, ["127.0.0.1"])
    chain = tmp_path / "chain.pem"
    chain.write_bytes(serving.chain_pem.replace(own_ca.cert_pem, b"") + hub.ca_pem)
    key = tmp_path / "impostor.key"
    key.write_bytes(serving.key_pem)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(certfile=chain, keyfile=key)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        try:
            conn, _ = listener.accept()
            with ctx.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)
        except OSError:
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        listener.close()
        thread.join(timeout=5)


async def test_a_server_that_shows_the_pinned_ca_over_a_leaf_it_did_not_sign_is_refused(
    hub: certlife.FleetHub, impostor: int
) -> None:
    with pytest.raises(agent_errors.AgentError, match="did not sign"):
        await asyncio.to_thread(
            enroll.fetch_pinned_ca, f"127.0.0.1:{impostor}", pin=hub.running.ca.pin
        )


# ---------------------------------------------------------------- registration


def tampered(csr_pem: bytes) -> bytes:
    """The same CSR with one byte of its signature changed: it parses, it does not verify."""
    der = bytearray(x509.load_pem_x509_csr(csr_pem).public_bytes(serialization.Encoding.DER))
    der[-3] ^= 0x01
    return x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)


@pytest.mark.parametrize("bad", ["garbage", "bad signature"])
async def test_a_bad_csr_does_not_spend_the_token(hub: certlife.FleetHub, bad: str) -> None:
    token = await hub.token("dev")
    agent = rawagent.RawAgent()
    csr = (
        b"-----BEGIN CERTIFICATE REQUEST-----\nnope\n"
        if bad == "garbage"
        else tampered(agent.csr())
    )
    async with grpc.aio.secure_channel(
        hub.address, grpc.ssl_channel_credentials(root_certificates=hub.ca_pem)
    ) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await rawagent.agent_pb2_grpc.AgentServiceStub(ch).Register(
                agent_pb2.RegisterRequest(token=token, csr_pem=csr), timeout=10
            )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    await agent.register(hub.address, hub.ca_pem, token)  # the same token still works
    assert agent.cluster == "dev"


async def test_an_expired_identity_registers_again_with_a_fresh_token(
    hub: certlife.FleetHub, tmp_path: pathlib.Path
) -> None:
    root = tmp_path / "agent"
    await hub.registered("dev")
    expired = expired_identity(hub, "dev")
    keep_on_disk(root, expired)
    me = await asyncio.to_thread(
        enroll.register, root, hub=hub.address, token=await hub.token("dev"), labels={}
    )
    assert me.cert_pem != expired.cert_pem and me.expires > time.time()
    assert hub.running.hub.certificate_ok("dev", ca.fingerprint_pem(me.cert_pem))


async def test_an_expired_identity_without_a_token_says_how_to_register_again(
    hub: certlife.FleetHub, tmp_path: pathlib.Path
) -> None:
    root = tmp_path / "agent"
    keep_on_disk(root, expired_identity(hub, "dev"))
    with pytest.raises(agent_errors.AgentError, match="token create --cluster dev"):
        enroll.register(root, hub=hub.address, token="", labels={})


# ---------------------------------------------------------------- start-up


async def test_a_missing_ca_key_file_refuses_to_start(tmp_path: pathlib.Path) -> None:
    config_path = tmp_path / "hub.yaml"
    config_path.write_text("repos: []\napps: []\n")
    with pytest.raises(hub_errors.HubError, match="does not exist; refusing to start"):
        await server.start(
            config_path=config_path, data=tmp_path / "data", listen="127.0.0.1:0",
            agent_listen="127.0.0.1:0", http_listen="127.0.0.1:0", ca_key=tmp_path / "ca.key",
        )  # fmt: skip
    assert not (tmp_path / "data" / "ca.key").exists(), "a new CA was made"


def test_serve_with_a_missing_ca_key_exits_with_the_reason(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config_path = tmp_path / "hub.yaml"
    config_path.write_text("repos: []\napps: []\n")
    code = cli.main(
        ["serve", "--config", str(config_path), "--data", str(tmp_path / "data"),
         "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0", "--ca-key", str(tmp_path / "gone.key")]
    )  # fmt: skip
    assert code == 1
    assert f"--ca-key {tmp_path / 'gone.key'} does not exist" in capsys.readouterr().err


def test_cert_lifetime_takes_days_hours_and_seconds() -> None:
    parse = cli.build_parser().parse_args
    base = ["serve", "--config", "c", "--data", "d", "--cert-lifetime"]
    assert parse([*base, "90d"]).cert_lifetime == datetime.timedelta(days=90)
    assert parse([*base, "12h"]).cert_lifetime == datetime.timedelta(hours=12)
    assert parse([*base, "60s"]).cert_lifetime == datetime.timedelta(seconds=60)
    assert parse(base[:-1]).cert_lifetime == datetime.timedelta(days=90)


def test_a_serving_certificate_is_reissued_when_names_change_or_it_comes_due(
    tmp_path: pathlib.Path,
) -> None:
    authority = ca.load_or_create(tmp_path)
    first = ca.serving_cert(tmp_path, authority, ["127.0.0.1", "hub"])
    assert ca.serving_cert(tmp_path, authority, ["hub", "127.0.0.1"]).cert == first.cert
    renamed = ca.serving_cert(tmp_path, authority, ["127.0.0.1", "hub", "hub.example.com"])
    assert renamed.cert != first.cert and spki(renamed.cert) == spki(first.cert)
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=250)
    assert renamed.due(later)
    fresh = ca.serving_cert(tmp_path, authority, ["127.0.0.1", "hub", "hub.example.com"], now=later)
    assert fresh.cert != renamed.cert and not fresh.due(later)
    assert (tmp_path / "hub.key").stat().st_mode & 0o777 == 0o600
