"""`fleetops-hub`: run the hub, and the admin commands that talk to a running hub.

Parses arguments and dispatches: `serve` runs the hub here, the admin commands go to
hub.cli_admin (FleetService calls) and print through hub.cli_output; no logic of its own.
Admin commands find the hub and their credentials in flags, then the environment
(FLEETOPS_HUB, FLEETOPS_TOKEN, FLEETOPS_CA), then the hub's data directory when run on the
hub's machine (--data: its CA and operator token).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import logging
import os
import pathlib
import signal
import sys
from collections.abc import Sequence

import grpc

from fleetops import hub
from fleetops.hub import (
    ca,
    cli_images,
    cli_rollout,
    errors,
    gitfetch,
    install,
    programs,
    render,
    server,
)
from fleetops.hub.cli_admin import run_client
from fleetops.hub.cli_output import plain, status_rows

log = logging.getLogger(__name__)

__all__ = ["build_parser", "cmd_serve", "main", "plain", "run_client", "status_rows"]


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
    serve.add_argument(
        "--reconnect-grace",
        type=_seconds,
        default=30.0,
        metavar="SECONDS",
        help="after the hub starts, how long a cluster whose agent has not reconnected yet is "
        "not counted offline by rollouts (default 30)",
    )
    serve.add_argument(
        "--git-timeout",
        type=_git_seconds,
        default=gitfetch.DEFAULT_TIMEOUTS.io,
        metavar="SECONDS",
        help="how long a Git fetch or push may wait for the server to send or take more data "
        f"(default {gitfetch.DEFAULT_TIMEOUTS.io:g}); a hung server is that repo's error after it",
    )
    serve.add_argument(
        "--helm",
        default="",
        help="helm binary (default: helm on PATH, else the one `make setup` built)",
    )
    serve.add_argument(
        "--kustomize",
        default="",
        help="kustomize binary (default: kustomize on PATH, else the one `make setup` built)",
    )
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
    ro = sub.add_parser(
        "rollout", help="an app's progressive rollout: where it stands, and steering it"
    )
    ros = ro.add_subparsers(dest="rollout_command", metavar="SUBCOMMAND", required=True)
    rst = ros.add_parser(
        "status", help="steps, clusters per step, gate readings, bake time left (read-only)"
    )
    rst.add_argument("app", nargs="?", default="", help="default: every app with a rollout")
    client_args(rst)
    for name, hlp in (
        ("pause", "hold the rollout where it is (nothing new is given out)"),
        ("resume", "undo pause"),
        ("promote", "pass the running step now: its Healthy clusters skip bake and gates"),
        ("abort", "stop the rollout and revert the clusters that took its revision"),
        ("retry", "forget the rejected revision (or a halted rollout) and roll out again"),
    ):
        p = ros.add_parser(name, help=hlp)
        p.add_argument("app")
        client_args(p)
    cli_images.add_parser(sub, client_args)
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
        if ns.command == "rollout":
            return cli_rollout.run(ns)
        if ns.command == "images":
            return cli_images.run(ns)
        return run_client(ns)
    except errors.HubError as e:
        print(plain(f"fleetops-hub: {e}"), file=sys.stderr)
        return 1
    except grpc.RpcError as e:
        print(plain(f"fleetops-hub: {e.code().name}: {e.details()}"), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _git_seconds(text: str) -> float:
    value = _seconds(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give 1 to 3600 seconds")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"{text!r}: give 0 to 3600 seconds")
    return value


def _cert_lifetime(text: str) -> datetime.timedelta:
    try:
        return ca.parse_lifetime(text)
    except errors.InvalidArgument as e:
        raise argparse.ArgumentTypeError(
            str(e).removeprefix(f"--cert-lifetime {text!r}: ")
        ) from None


def _tools(*, helm: str, kustomize: str) -> render.Tools:
    """The renderer programs; a missing one is a warning now and each app's error later."""
    found = [programs.find("helm", explicit=helm), programs.find("kustomize", explicit=kustomize)]
    for f in found:
        if f.missing:
            log.warning("%s; apps that need it will show this as their error", f.missing)
    h, k = found
    return render.Tools(helm=h.path or h.name, kustomize=k.path or k.name)


async def cmd_serve(ns: argparse.Namespace) -> int:
    logging.basicConfig(level=ns.log_level.upper(), format="%(asctime)s %(levelname)s %(message)s")
    gitfetch.set_timeouts(dataclasses.replace(gitfetch.current(), io=ns.git_timeout))
    running = await server.start(
        config_path=ns.config,
        data=ns.data,
        listen=ns.listen,
        agent_listen=ns.agent_listen,
        http_listen=ns.http,
        names=ns.advertise,
        tools=_tools(helm=ns.helm, kustomize=ns.kustomize),
        ca_key=ns.ca_key,
        cert_lifetime=ns.cert_lifetime,
        reconnect_grace=ns.reconnect_grace,
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


if __name__ == "__main__":
    sys.exit(main())
