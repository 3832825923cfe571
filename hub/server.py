"""Wiring: the running hub. Store, CA, Hub core, gRPC server (TLS on one port: agents with
client certificates, fleet callers with tokens), the HTTP side, Git pollers and the hub.yaml
watcher, each a guarded task that ends cleanly on stop.

A bad hub.yaml reload keeps the last good config running and says why (log, /metrics and
the config_error the fleet API shows); a failing poller never takes down the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import functools
import logging
import pathlib
import threading
import time
from collections.abc import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from fleetops.hub import (
    agent_service,
    apitokens,
    ca,
    config,
    core,
    errors,
    fleet_service,
    http,
    render,
    services,
    store,
)
from fleetops.proto import supervise
from fleetops.proto.v1 import agent_pb2_grpc, fleet_pb2_grpc

log = logging.getLogger("fleetops.hub")


@dataclasses.dataclass
class Running:
    hub: core.Hub
    grpc_port: int
    agent_port: int
    http_port: int
    ca: ca.CA
    tokens: dict[str, str]
    _server: grpc.aio.Server
    _http: http.Server
    _stop: asyncio.Event
    _supervisor: supervise.Supervisor

    async def stop(self) -> None:
        self._stop.set()
        await self._server.stop(grace=1)
        await self._http.stop()
        await self._supervisor.stop()
        with contextlib.suppress(errors.StoreUnavailable):  # logged; agents resend on connect
            await self.hub.flush_reports()
        self.hub.db.close()

    async def wait(self) -> None:
        await self._stop.wait()


def split_hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise errors.InvalidArgument(f"{text!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


async def start(
    *,
    config_path: pathlib.Path,
    data: pathlib.Path,
    listen: str,
    agent_listen: str = "",
    http_listen: str,
    names: list[str] | None = None,
    tools: render.Tools | None = None,
    ca_key: pathlib.Path | None = None,
    cert_lifetime: datetime.timedelta = ca.DEFAULT_CERT_LIFETIME,
    clock: Callable[[], float] = time.time,
    reconnect_grace: float = 30.0,
) -> Running:
    """Start serving. `clock` is the wall clock of everything with a lifetime the hub
    decides itself (registration and API tokens); tests move it by hand."""
    cfg = config.load(config_path)
    data.mkdir(parents=True, exist_ok=True, mode=0o700)  # noqa: ASYNC240 (start-up)
    data.chmod(0o700)  # noqa: ASYNC240 (the CA key, tokens and every bundle live here)
    host, _ = split_hostport(listen)
    # before anything else is opened: a missing --ca-key refuses to start (hub.errors)
    authority = ca.load_or_create(data, key_file=ca_key)
    serving = _Serving(data, authority, ca.default_names() + [host] + (names or []))
    db = store.Store(data / "hub.db")
    tokens = apitokens.bootstrap(data)
    registry = apitokens.Registry(db=db, bootstrap=tokens, clock=clock)
    await registry.load()
    hub = core.Hub(
        cfg=cfg,
        db=db,
        data=data,
        tools=tools or render.Tools(),
        authority=authority,
        registry=registry,
        cert_lifetime=cert_lifetime,
        now=clock,
        reconnect_grace=reconnect_grace,
    )
    await hub.load()

    server = grpc.aio.server(
        interceptors=[services.AuthInterceptor(registry)],
        options=[
            ("grpc.keepalive_time_ms", 20_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
            ("grpc.keepalive_permit_without_calls", 1),
            # keep pinging an idle stream: a black-holed agent is found within 20 + 10 s,
            # and its cluster shown Disconnected (without it gRPC stops after two pings)
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.http2.ping_timeout_ms", 10_000),  # keepalive_timeout_ms alone is not honoured
            ("grpc.max_concurrent_streams", 100_000),
            ("grpc.max_send_message_length", core.MAX_MESSAGE),
            ("grpc.max_receive_message_length", core.MAX_MESSAGE),
        ],
    )
    agents = agent_service.AgentService(hub)
    agent_pb2_grpc.add_AgentServiceServicer_to_server(agents, server)
    fleet = fleet_service.FleetService(hub)
    fleet_pb2_grpc.add_FleetServiceServicer_to_server(fleet, server)
    health_servicer = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_secure_port(listen, serving.credentials(client_auth=False))
    if port == 0:
        raise errors.HubError(f"cannot listen on {listen} (address in use?)")
    if not agent_listen:
        agent_listen = f"{host}:{port + 1 if split_hostport(listen)[1] else 0}"
    agent_port = server.add_secure_port(agent_listen, serving.credentials(client_auth=True))
    if agent_port == 0:
        raise errors.HubError(f"cannot listen on {agent_listen} for agents (address in use?)")
    agents.agent_port = agent_port
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)

    web = http.Server(hub)
    http_host, http_port = split_hostport(http_listen)
    bound_http = await web.start(http_host, http_port)

    stop = asyncio.Event()
    supervisor = supervise.Supervisor(stop)
    hub.supervisor = supervisor

    def ensure_pollers() -> None:  # a repo added to hub.yaml gets its poller
        for spec in hub.cfg.repos:
            supervisor.start(f"poller {spec.name}", functools.partial(hub.poll, spec.name, stop))

    ensure_pollers()
    supervisor.start(
        "config watcher", functools.partial(_watch_config, hub, config_path, stop, ensure_pollers)
    )
    supervisor.start("retention", functools.partial(hub.retain, stop))
    supervisor.start("rollouts", functools.partial(hub.run_rollouts, stop))
    supervisor.start("image automation", functools.partial(hub.run_images, stop))
    supervisor.start("stream watchdog", functools.partial(hub.watch_streams, stop))
    log.info(
        "hub serving gRPC on port %d (agents: %d), HTTP on port %d, data in %s",
        port,
        agent_port,
        bound_http,
        data,
    )
    return Running(
        hub, port, agent_port, bound_http, authority, tokens, server, web, stop, supervisor
    )


class _Serving:
    """The hub's TLS identity on both ports: its own key and a leaf the CA signed, presented
    with the chain [leaf, CA]; the CA's key never serves. gRPC asks before every new
    connection's handshake (one comparison), so a leaf that comes due is reissued while the
    hub runs and no client ever meets an expired hub certificate."""

    def __init__(self, data: pathlib.Path, authority: ca.CA, names: list[str]) -> None:
        self._args = (data, authority, names)
        self._lock = threading.Lock()
        self.current = ca.serving_cert(data, authority, names)
        self.version = 0
        self._retry_at = 0.0

    def _config(self, client_auth: bool) -> grpc.ServerCertificateConfiguration:
        roots = self._args[1].cert_pem if client_auth else None
        return grpc.ssl_server_certificate_configuration(
            [(self.current.key_pem, self.current.chain_pem)], root_certificates=roots
        )

    def credentials(self, *, client_auth: bool) -> grpc.ServerCredentials:
        seen = self.version

        def fetch() -> grpc.ServerCertificateConfiguration | None:
            nonlocal seen
            with self._lock:
                if self.current.due() and time.monotonic() >= self._retry_at:
                    try:
                        self.current = ca.serving_cert(*self._args)
                        self.version += 1
                        log.info("reissued the hub's serving certificate")
                    except (OSError, errors.HubError):
                        self._retry_at = time.monotonic() + 60
                        log.exception("cannot reissue the hub's serving certificate")
                if seen == self.version:
                    return None
                seen = self.version
                return self._config(client_auth)

        return grpc.dynamic_ssl_server_credentials(
            self._config(client_auth),
            fetch,  # type: ignore[arg-type]  # grpc documents None as "no change"; the stub not
            require_client_authentication=client_auth,
        )


async def _watch_config(
    hub: core.Hub, path: pathlib.Path, stop: asyncio.Event, ensure_pollers: Callable[[], None]
) -> None:
    def mtime() -> float:
        try:
            return path.stat().st_mtime_ns / 1e9
        except OSError:
            return 0.0

    seen = mtime()
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), timeout=1.0)
        except TimeoutError:
            pass
        now = mtime()
        if now == seen:
            continue
        seen = now
        try:
            cfg = config.load(path)
        except errors.ConfigError as e:
            hub.config_refused(f"{e}; still running the last good config")
            log.error("hub.yaml reload refused: %s", hub.config_error)
            continue
        except Exception as e:  # noqa: BLE001 (a parser bug must not end the watcher)
            log.exception("hub.yaml reload failed")
            hub.config_refused(
                f"{path}: could not be read ({type(e).__name__}: {str(e)[:200]}); still "
                "running the last good config"
            )
            continue
        log.info("hub.yaml reloaded")
        await hub.apply_config(cfg)
        ensure_pollers()
