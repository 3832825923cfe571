"""`fleetops-hub`'s admin commands: calls to a running hub's FleetService, one per command.

Finds the hub and the caller's credentials (flags, then the environment, then the hub's data
directory when run on the hub's machine), makes the call and hands the answer to
hub.cli_output. No logic of the hub's own: what an action does is the hub's to decide.
"""

from __future__ import annotations

import argparse
import contextlib
import pathlib
import sys
import time
from collections.abc import Iterator
from typing import Any

import grpc
import yaml

from fleetops.hub import cli_output, errors, install
from fleetops.hub.cli_output import plain
from fleetops.proto.v1 import fleet_pb2, fleet_pb2_grpc


def credentials(ns: argparse.Namespace) -> tuple[str, bytes, str]:
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


Meta = tuple[tuple[str, str], ...]


@contextlib.contextmanager
def connect(ns: argparse.Namespace) -> Iterator[tuple[fleet_pb2_grpc.FleetServiceStub, Meta]]:
    """The fleet API stub for `ns`'s hub and the metadata carrying its token (every admin
    command's connection: TLS with the hub's CA, the token as a Bearer header)."""
    addr, ca_pem, token = credentials(ns)
    meta = (("authorization", f"Bearer {token}"),)
    with grpc.secure_channel(
        addr, grpc.ssl_channel_credentials(root_certificates=ca_pem)
    ) as channel:
        yield fleet_pb2_grpc.FleetServiceStub(channel), meta


def run_client(ns: argparse.Namespace) -> int:
    """Run the admin command `ns` names against the hub; the exit code."""
    with connect(ns) as (stub, meta):
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
            snap = stub.GetSnapshot(fleet_pb2.SnapshotRequest(), metadata=meta)
            return cli_output.print_status(snap, output=ns.output)
        if ns.command == "history":
            req = fleet_pb2.HistoryRequest(app=ns.app, cluster=ns.cluster, limit=ns.limit)
            return cli_output.print_history(
                stub.History(req, metadata=meta).events, output=ns.output
            )
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
    return cli_output.print_api_tokens(tokens, output=ns.output)


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
