"""`fleetops-hub`: run the hub, and the admin commands that talk to a running hub.

Parses arguments and calls the hub's modules or its FleetService; no logic of its own.
Admin commands find the hub and their credentials in flags, then the environment
(FLEETOPS_HUB, FLEETOPS_TOKEN, FLEETOPS_CA), then the hub's data directory when run on the
hub's machine (--data: its CA and operator token).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import logging
import os
import pathlib
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any

import grpc
import yaml

from fleetops import hub
from fleetops.hub import ca, errors, install, render, reports, server
from fleetops.proto.v1 import fleet_pb2, fleet_pb2_grpc, types_pb2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fleetops-hub",
        description=(
            "The fleetops hub: watches Git repos, renders each app for each cluster and "
            "serves assignments to the agents that dial in."
        ),
    )
    parser.add_argument("--version", action="version", version=f"fleetops-hub {hub.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the hub")
    serve.add_argument("--config", type=pathlib.Path, required=True, help="hub.yaml")
    serve.add_argument(
        "--data", type=pathlib.Path, required=True, help="state directory (SQLite, CA, Git cache)"
    )
    serve.add_argument(
        "--listen",
        default="0.0.0.0:8443",
        help="gRPC HOST:PORT (TLS) for agent registration and the fleet API",
    )
    serve.add_argument(
        "--agent-listen",
        default="",
        help="gRPC HOST:PORT (mTLS) agents stream on (default: --listen's port + 1)",
    )
    serve.add_argument(
        "--http", default="127.0.0.1:8080", help="HTTP HOST:PORT for webhooks and /metrics"
    )
    serve.add_argument(
        "--advertise",
        action="append",
        default=[],
        metavar="NAME",
        help="a DNS name or IP agents use to reach the hub (repeatable)",
    )
    serve.add_argument(
        "--ca-key",
        type=pathlib.Path,
        default=None,
        help="the CA's private key (e.g. a mounted Secret, see `ca new-key`); the hub refuses "
        "to start when this file is missing (without --ca-key it keeps its own CA in --data)",
    )
    serve.add_argument(
        "--cert-lifetime",
        type=_cert_lifetime,
        default=ca.DEFAULT_CERT_LIFETIME,
        metavar="DURATION",
        help="lifetime of the agents' client certificates, e.g. 90d, 12h or 60s (default 90d); "
        "agents renew theirs at two thirds of it",
    )
    serve.add_argument("--helm", default="helm", help="helm binary")
    serve.add_argument("--kustomize", default="kustomize", help="kustomize binary")
    serve.add_argument("--log-level", default="INFO")

    def client_args(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--hub", default=os.environ.get("FLEETOPS_HUB", ""), help="HOST:PORT (env FLEETOPS_HUB)"
        )
        p.add_argument(
            "--token",
            default=os.environ.get("FLEETOPS_TOKEN", ""),
            help="fleet API token (env FLEETOPS_TOKEN)",
        )
        p.add_argument(
            "--ca", default=os.environ.get("FLEETOPS_CA", ""), help="hub CA file (env FLEETOPS_CA)"
        )
        p.add_argument(
            "--data",
            type=pathlib.Path,
            default=None,
            help="the hub's data dir, to read its CA and operator token on the hub machine",
        )
        p.add_argument("--output", choices=("text", "json"), default="text")

    tok = sub.add_parser("token", help="registration tokens for agents, API tokens for people")
    toks = tok.add_subparsers(dest="token_command", metavar="SUBCOMMAND", required=True)
    create = toks.add_parser("create", help="print a one-time, expiring registration token")
    create.add_argument("--cluster", required=True, help="the cluster the agent will be")
    create.add_argument("--ttl", default="1h", help="validity, e.g. 30m, 1h, 24h (default 1h)")
    create.add_argument(
        "--labels",
        default="",
        metavar="K=V,...",
        help="labels the cluster starts with, e.g. env=prod,region=eu (hub.yaml still wins)",
    )
    client_args(create)
    api = toks.add_parser(
        "create-api",
        help="print a new named fleet API token (shown once); its name is the audit actor",
    )
    api.add_argument("--name", required=True, help="who will use it, e.g. alice or ci-deployer")
    api.add_argument("--role", choices=("operator", "readonly"), required=True)
    api.add_argument("--ttl", default="0", help="validity, e.g. 30d or 12h (default: no expiry)")
    client_args(api)
    client_args(toks.add_parser("list", help="the named fleet API tokens (never their secrets)"))
    rv = toks.add_parser("revoke", help="revoke a named fleet API token at once")
    rv.add_argument("name")
    client_args(rv)

    cl = sub.add_parser("cluster", help="add clusters to the fleet, or remove them")
    cls = cl.add_subparsers(dest="cluster_command", metavar="SUBCOMMAND", required=True)
    add = cls.add_parser(
        "add",
        help="print ready-to-apply YAML that installs an agent with a fresh token",
        description="Create a one-time registration token for NAME and print everything its "
        "cluster needs (namespace, service account, least-privilege RBAC, the agent's "
        "Deployment and a Secret with the hub address, CA and token). Pipe it into "
        "`kubectl apply --server-side -f -` with the cluster's kubeconfig.",
    )
    add.add_argument("name", help="the cluster's name in the fleet (a DNS label)")
    add.add_argument(
        "--labels",
        default="",
        metavar="K=V,...",
        help="labels the cluster starts with, e.g. env=prod,region=eu (hub.yaml still wins)",
    )
    scope = add.add_mutually_exclusive_group(required=True)
    scope.add_argument(
        "--namespaces",
        default="",
        metavar="NS,...",
        help="least privilege: the agent may apply and prune only in these namespaces",
    )
    scope.add_argument(
        "--cluster-admin",
        action="store_true",
        help="opt in to cluster-admin (needed for apps with CRDs, namespaces or cluster RBAC)",
    )
    add.add_argument(
        "--agent-hub",
        default="",
        metavar="HOST:PORT",
        help="the hub's address as the agent sees it (default: --hub)",
    )
    add.add_argument("--image", default=install.DEFAULT_IMAGE, help="the agent's image")
    add.add_argument(
        "--pod-security",
        default=install.DEFAULT_POD_SECURITY,
        choices=install.POD_SECURITY_LEVELS,
        help="Pod Security level enforced in the --namespaces it creates (default baseline, "
        "warn and audit restricted; fleetops-system is always restricted)",
    )
    add.add_argument("--ttl", default="24h", help="how long the token may wait to be used")
    client_args(add)
    rm = cls.add_parser(
        "remove",
        help="forget a cluster: revoke its certificate, delete its assignments",
    )
    rm.add_argument("name")
    client_args(rm)

    ca_cmd = sub.add_parser("ca", help="the hub's certificate authority")
    cas = ca_cmd.add_subparsers(dest="ca_command", metavar="SUBCOMMAND", required=True)
    cas.add_parser(
        "new-key",
        help="print a new CA private key (PEM) to keep in a Secret and pass as serve --ca-key",
    )

    st = sub.add_parser(
        "status", help="clusters x apps: desired and applied revision, sync, health"
    )
    client_args(st)
    rb = sub.add_parser("rollback", help="pin an app (or one cluster of it) to an earlier revision")
    rb.add_argument("app")
    rb.add_argument("revision")
    rb.add_argument("--cluster", default="")
    client_args(rb)
    up = sub.add_parser("unpin", help="lift a rollback pin; auto-sync resumes")
    up.add_argument("app")
    up.add_argument("--cluster", default="")
    client_args(up)
    sy = sub.add_parser("sync", help="sync an app now (also for apps without auto-sync)")
    sy.add_argument("app")
    sy.add_argument("--cluster", default="")
    sy.add_argument(
        "--allow-mass-prune",
        action="store_true",
        help="let the current bundle prune past the app's sync.maxPrunePercent, once",
    )
    client_args(sy)
    for name, hlp in (("pause", "keep what runs; assign nothing new"), ("resume", "undo pause")):
        p = sub.add_parser(name, help=hlp)
        p.add_argument("app")
        p.add_argument("--reason", default="")
        client_args(p)
    hi = sub.add_parser("history", help="what revision went where, when, why and by whom")
    hi.add_argument("app", nargs="?", default="")
    hi.add_argument("--cluster", default="")
    hi.add_argument("--limit", type=int, default=50)
    client_args(hi)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    if ns.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        if ns.command == "serve":
            return asyncio.run(cmd_serve(ns))
        if ns.command == "ca":
            sys.stdout.write(ca.new_key_pem().decode())
            return 0
        return run_client(ns)
    except errors.HubError as e:
        print(plain(f"fleetops-hub: {e}"), file=sys.stderr)
        return 1
    except grpc.RpcError as e:
        print(plain(f"fleetops-hub: {e.code().name}: {e.details()}"), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _cert_lifetime(text: str) -> datetime.timedelta:
    try:
        return ca.parse_lifetime(text)
    except errors.InvalidArgument as e:
        raise argparse.ArgumentTypeError(
            str(e).removeprefix(f"--cert-lifetime {text!r}: ")
        ) from None


async def cmd_serve(ns: argparse.Namespace) -> int:
    logging.basicConfig(level=ns.log_level.upper(), format="%(asctime)s %(levelname)s %(message)s")
    running = await server.start(
        config_path=ns.config,
        data=ns.data,
        listen=ns.listen,
        agent_listen=ns.agent_listen,
        http_listen=ns.http,
        names=ns.advertise,
        tools=render.Tools(helm=ns.helm, kustomize=ns.kustomize),
        ca_key=ns.ca_key,
        cert_lifetime=ns.cert_lifetime,
    )
    print(
        f"fleetops-hub: gRPC on port {running.grpc_port}, agents on port {running.agent_port}, "
        f"HTTP on port {running.http_port}",
        flush=True,
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, running._stop.set)
    await running.wait()
    await running.stop()
    return 0


# ---------------------------------------------------------------- admin client


def _credentials(ns: argparse.Namespace) -> tuple[str, bytes, str]:
    if not ns.hub:
        raise errors.InvalidArgument("which hub? pass --hub HOST:PORT or set FLEETOPS_HUB")
    ca_pem = b""
    if ns.ca:
        ca_pem = pathlib.Path(ns.ca).read_bytes()
    elif ns.data and (ns.data / "ca.crt").exists():
        ca_pem = (ns.data / "ca.crt").read_bytes()
    if not ca_pem:
        raise errors.InvalidArgument(
            "the hub's CA is needed: pass --ca FILE, set FLEETOPS_CA, or --data DIR"
        )
    token = ns.token
    if not token and ns.data and (ns.data / "tokens" / "operator").exists():
        token = (ns.data / "tokens" / "operator").read_text().strip()
    if not token:
        raise errors.InvalidArgument(
            "a fleet API token is needed: pass --token, set FLEETOPS_TOKEN, or --data DIR"
        )
    return ns.hub, ca_pem, token


def _duration(text: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        if text[-1] in units:
            return int(float(text[:-1]) * units[text[-1]])
        return int(text)
    except (ValueError, IndexError):
        raise errors.InvalidArgument(f"--ttl {text!r}: use e.g. 30m, 1h or 24h") from None


def run_client(ns: argparse.Namespace) -> int:
    addr, ca_pem, token = _credentials(ns)
    meta = (("authorization", f"Bearer {token}"),)
    with grpc.secure_channel(
        addr, grpc.ssl_channel_credentials(root_certificates=ca_pem)
    ) as channel:
        stub = fleet_pb2_grpc.FleetServiceStub(channel)
        if ns.command == "cluster" and ns.cluster_command == "remove":
            action = stub.RemoveCluster(
                fleet_pb2.RemoveClusterRequest(cluster=ns.name), metadata=meta
            )
            print(plain(action.message))
            return 0
        if ns.command == "cluster":
            return _cluster_add(stub, meta, ns)
        if ns.command == "token" and ns.token_command != "create":
            return _api_tokens(stub, meta, ns)
        if ns.command == "token":
            resp = stub.CreateToken(
                fleet_pb2.CreateTokenRequest(
                    cluster=ns.cluster, ttl_seconds=_duration(ns.ttl), labels=_labels(ns.labels)
                ),
                metadata=meta,
            )
            print(resp.token)
            return 0
        if ns.command == "status":
            return _status(stub.GetSnapshot(fleet_pb2.SnapshotRequest(), metadata=meta), ns.output)
        if ns.command == "history":
            req = fleet_pb2.HistoryRequest(app=ns.app, cluster=ns.cluster, limit=ns.limit)
            return _history(stub.History(req, metadata=meta).events, ns.output)
        if ns.command == "rollback":
            action = stub.Rollback(
                fleet_pb2.RollbackRequest(app=ns.app, revision=ns.revision, cluster=ns.cluster),
                metadata=meta,
            )
        elif ns.command == "unpin":
            action = stub.Unpin(
                fleet_pb2.UnpinRequest(app=ns.app, cluster=ns.cluster), metadata=meta
            )
        elif ns.command == "sync":
            action = stub.Sync(
                fleet_pb2.SyncRequest(
                    app=ns.app, cluster=ns.cluster, allow_mass_prune=ns.allow_mass_prune
                ),
                metadata=meta,
            )
        elif ns.command == "pause":
            action = stub.Pause(fleet_pb2.PauseRequest(app=ns.app, reason=ns.reason), metadata=meta)
        else:
            action = stub.Resume(
                fleet_pb2.PauseRequest(app=ns.app, reason=ns.reason), metadata=meta
            )
        print(plain(action.message))
        return 0


def _api_tokens(stub: fleet_pb2_grpc.FleetServiceStub, meta: Any, ns: argparse.Namespace) -> int:
    if ns.token_command == "create-api":
        resp = stub.CreateApiToken(
            fleet_pb2.CreateApiTokenRequest(
                name=ns.name, role=ns.role, ttl_seconds=_duration(ns.ttl)
            ),
            metadata=meta,
        )
        print(resp.token)
        return 0
    if ns.token_command == "revoke":
        action = stub.RevokeApiToken(fleet_pb2.RevokeApiTokenRequest(name=ns.name), metadata=meta)
        print(plain(action.message))
        return 0
    tokens = stub.ListApiTokens(fleet_pb2.ListApiTokensRequest(), metadata=meta).tokens
    rows = [
        {
            "name": t.name,
            "role": t.role,
            "created": _when(t.created_at.seconds),
            "expires": _when(t.expires_at.seconds) if t.HasField("expires_at") else "never",
            "created_by": t.created_by,
        }
        for t in tokens
    ]
    if ns.output == "json":
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'NAME':<24} {'ROLE':<9} {'CREATED':<20} {'EXPIRES':<20} CREATED BY")
    for r in rows:
        print(
            plain(
                f"{r['name']:<24} {r['role']:<9} {r['created']:<20} {r['expires']:<20} "
                f"{r['created_by']}"
            )
        )
    return 0


def _when(seconds: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds))


def plain(text: str) -> str:
    """Text from the hub (names, reasons, messages: some of it written by agents or commits)
    as one plain line: control characters and terminal escapes shown as U+FFFD."""
    return reports.text(text, 100_000)


def _labels(text: str) -> dict[str, str]:
    labels = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise errors.InvalidArgument(f"--labels {item!r}: use KEY=VALUE[,KEY=VALUE]")
        labels[key] = value
    return labels


def _cluster_add(stub: fleet_pb2_grpc.FleetServiceStub, meta: Any, ns: argparse.Namespace) -> int:
    labels = _labels(ns.labels)
    namespaces = [n.strip() for n in ns.namespaces.split(",") if n.strip()]
    install.check_scope(namespaces, ns.cluster_admin, pod_security=ns.pod_security)
    resp = stub.CreateToken(
        fleet_pb2.CreateTokenRequest(cluster=ns.name, ttl_seconds=_duration(ns.ttl), labels=labels),
        metadata=meta,
    )
    objs = install.agent_objects(
        hub_address=ns.agent_hub or ns.hub,
        token=resp.token,
        ca_pem=resp.ca_pem.decode(),
        namespaces=namespaces,
        cluster_admin=ns.cluster_admin,
        image=ns.image,
        pod_security=ns.pod_security,
    )
    until = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(resp.expires_at.seconds))
    scope = "cluster-admin" if ns.cluster_admin else "namespaces " + ", ".join(namespaces)
    shown = ",".join(f"{k}={v}" for k, v in labels.items()) or "none"
    print(f"# fleetops agent for cluster {ns.name} (labels: {shown}; may deploy to: {scope})")
    print(f"# The token inside works once, until {until}. Apply with the cluster's kubeconfig:")
    print("#   kubectl apply --server-side -f THIS_FILE")
    sys.stdout.write(yaml.safe_dump_all(objs, sort_keys=False, explicit_start=True))
    return 0


def _name(enum: Any, value: int, prefix: str) -> str:
    try:
        words = enum.Name(value).removeprefix(prefix).split("_")
    except ValueError:  # a newer hub, or a value nobody should have sent
        return "Unknown"
    return "".join(w.title() for w in words)


def status_rows(snap: fleet_pb2.Snapshot) -> list[dict[str, str]]:
    connectivity = {c.name: c for c in snap.clusters}
    rows = []
    for s in snap.statuses:
        c = connectivity.get(s.cluster)
        rows.append(
            {
                "cluster": s.cluster,
                "app": s.app,
                "target": s.target,
                "desired": s.desired_revision,
                "applied": s.applied_revision,
                "sync": _name(types_pb2.SyncStatus, s.sync, "SYNC_STATUS_"),
                "health": _name(types_pb2.HealthStatus, s.health, "HEALTH_STATUS_"),
                "connectivity": _name(types_pb2.Connectivity, c.connectivity, "CONNECTIVITY_")
                if c
                else "",
                "pinned": s.pinned_revision,
                "reason": s.reason,
            }
        )
    return rows


def _status(snap: fleet_pb2.Snapshot, output: str) -> int:
    rows = status_rows(snap)
    if output == "json":
        repos = [{"name": r.name, "revision": r.revision, "error": r.error} for r in snap.repos]
        tasks = [
            {"name": t.name, "running": t.running, "restarts": t.restarts, "error": t.last_error}
            for t in snap.tasks
        ]
        print(json.dumps({"statuses": rows, "repos": repos, "tasks": tasks}, indent=2))
        return 0
    header = ("CLUSTER", "APP", "DESIRED", "APPLIED", "SYNC", "HEALTH", "REASON")
    table = [header] + [
        (
            r["cluster"],
            r["app"],
            r["desired"][:8] or "-",
            r["applied"][:8] or "-",
            r["sync"],
            r["health"],
            r["reason"],
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    for row in table:
        print(
            plain(
                "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False))
                + "  "
                + row[-1]
            )
        )
    for r in snap.repos:
        if r.error:
            print(plain(f"repo {r.name}: {r.error}"))
    for t in snap.tasks:
        if t.restarts or not t.running:
            state = "running" if t.running else "waiting to restart"
            print(plain(f"hub task {t.name}: {state}, {t.restarts} restarts; last: {t.last_error}"))
    return 0


def _history(events: Sequence[types_pb2.Event], output: str) -> int:
    rows = [
        {
            "at": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(e.at.seconds)),
            "app": e.app,
            "cluster": e.cluster,
            "kind": e.kind,
            "revision": e.revision,
            "cause": _name(types_pb2.Cause, e.cause, "CAUSE_"),
            "actor": e.actor,
            "message": e.message,
        }
        for e in events
    ]
    if output == "json":
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        print(
            plain(
                f"{r['at']}  {r['kind']:<15} {r['app'] or '-':<12} {r['cluster'] or '*':<10} "
                f"{r['revision'][:8] or '-':<8}  {r['actor']:<14} {r['message']}"
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
