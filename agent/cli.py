"""`fleetops-agent`: the agent's command line.

Parses arguments and hands them to the command (`agent.commands`), which calls the
reconciler and prints with `agent.output`; it holds no reconcile logic of its own. Output
never contains object content, so a Secret's data cannot be printed.
"""

from __future__ import annotations

import argparse
import asyncio
import pathlib
import sys
from collections.abc import Sequence

from fleetops import agent
from fleetops.agent import commands, errors, kube


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fleetops-agent",
        description=(
            "The fleetops agent: runs in one cluster, pulls its assignments from the hub and "
            "reconciles them with server-side apply, prune, drift detection and self-heal."
        ),
    )
    parser.add_argument(
        "--version", action="version", version=f"fleetops-agent {agent.__version__}"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def cluster_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster service account)")
        p.add_argument("--context", help="kubeconfig context (default: its current context)")
        p.add_argument(
            "--inventory-namespace",
            default="fleetops-system",
            help="namespace of the per-app inventory ConfigMaps (default: fleetops-system)",
        )
        p.add_argument(
            "--state",
            type=pathlib.Path,
            default=None,
            help="local state directory (default: $FLEETOPS_AGENT_STATE or "
            "~/.local/state/fleetops-agent)",
        )
        p.add_argument(
            "--kube-timeout",
            type=float,
            default=kube.READ_TIMEOUT,
            metavar="SECONDS",
            help="how long one Kubernetes API call may wait for its answer (connecting: at most "
            f"{kube.CONNECT_TIMEOUT:g} s); default {kube.READ_TIMEOUT:g}",
        )
        p.add_argument("--output", choices=("text", "json"), default="text")
        health_checks_arg(p)

    def health_checks_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--health-checks",
            type=pathlib.Path,
            default=None,
            metavar="DIR",
            help="custom health checks in Argo CD's Lua format, laid out "
            "<group>/<Kind>/health.lua (<Kind>/health.lua for the core group, '_' a wildcard); "
            "they override the built-in rules, and the hub's healthChecks override them",
        )

    apply = sub.add_parser(
        "apply",
        help="apply a directory of rendered manifests as one app",
        description="Apply a directory of rendered manifests (YAML, multi-document, recursive) "
        "as one app and print the result per resource. Exits 1 when anything failed.",
    )
    cluster_args(apply)
    apply.add_argument("--app", required=True, help="app name (names the inventory)")
    apply.add_argument("--namespace", default="", help="default namespace for namespaced objects")
    apply.add_argument("--bundle", required=True, type=pathlib.Path, help="directory or file")
    apply.add_argument("--revision", default="", help="the Git revision the bundle came from")
    apply.add_argument("--prune", action="store_true", help="delete what left the bundle")
    apply.add_argument("--self-heal", action="store_true", help="record that drift is re-applied")
    apply.add_argument(
        "--no-force-conflicts",
        action="store_true",
        help="report conflicts with other field managers instead of taking the fields",
    )
    apply.add_argument(
        "--allow-empty", action="store_true", help="let an empty bundle prune everything"
    )
    apply.add_argument(
        "--max-prune-percent",
        type=int,
        default=0,
        metavar="PERCENT",
        help="hold a prune of more than this share of the app's objects (default 50; 100: off)",
    )
    apply.add_argument(
        "--allow-mass-prune",
        action="store_true",
        help="prune even past --max-prune-percent, this once",
    )
    apply.add_argument(
        "--wave-timeout", type=float, default=300.0, help="seconds a wave may take to get healthy"
    )
    apply.add_argument(
        "--wait", type=float, default=0.0, metavar="SECONDS", help="then wait until healthy"
    )

    status = sub.add_parser(
        "status",
        help="print sync, health and drift of an applied app, changing nothing",
        description="Compare the cluster with the app's last applied bundle (server-side "
        "dry-run) and print sync, health and drifted fields per resource. Sends no write.",
    )
    cluster_args(status)
    status.add_argument("--app", required=True)

    hl = sub.add_parser(
        "health",
        help="print the health of objects in saved YAML, with no cluster",
        description="Print the health and its reason for every object in saved YAML "
        "(e.g. `kubectl get -o yaml` output, one object or a List), by the reconciler's rules.",
    )
    hl.add_argument("files", nargs="+", type=pathlib.Path, metavar="FILE")
    hl.add_argument("--output", choices=("text", "json"), default="text")
    health_checks_arg(hl)

    run = sub.add_parser(
        "run",
        help="connect to the hub and reconcile its assignments (the agent's normal mode)",
        description="Register with the hub once (the token pins the hub's CA), then pull "
        "assignments over one long-lived gRPC stream, reconcile them and report back. With the "
        "hub gone it keeps reconciling and self-healing what it has.",
    )
    cluster_args(run)
    run.add_argument("--hub", required=True, help="the hub's gRPC HOST:PORT")
    run.add_argument(
        "--token", default="", help="registration token (needed once; env FLEETOPS_TOKEN)"
    )
    run.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a label for this cluster (repeatable)",
    )
    run.add_argument(
        "--ca",
        type=pathlib.Path,
        default=None,
        help="the hub's CA file; registration then also checks the hub presents it",
    )
    run.add_argument(
        "--identity-secret",
        default="",
        metavar="NAMESPACE/NAME",
        help="keep the agent's identity in this Secret too, so a pod restarted with an empty "
        "--state need not register again",
    )
    run.add_argument(
        "--health-listen",
        default="",
        metavar="HOST:PORT",
        help="serve /healthz (alive) and /readyz (connected to the hub) over HTTP",
    )
    run.add_argument(
        "--resync",
        type=float,
        default=300.0,
        help="seconds between full drift checks, a safety net: watches see changes at once",
    )
    run.add_argument(
        "--no-watch",
        dest="watch",
        action="store_false",
        help="do not watch the applied objects: drift is seen only by the resync "
        "(then set --resync lower, e.g. 30)",
    )
    run.add_argument("--wave-timeout", type=float, default=300.0)
    run.add_argument("--log-level", default="INFO")

    rec = sub.add_parser(
        "reconcile",
        help="keep the locally stored apps reconciled (drift, self-heal), with no hub",
        description="Reconcile every app in the local state on an interval: apply what was "
        "not applied yet, report drift, and self-heal apps whose policy allows it.",
    )
    cluster_args(rec)
    rec.add_argument("--interval", type=float, default=30.0, help="seconds between passes")
    rec.add_argument("--once", action="store_true", help="one pass, then exit")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    if ns.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return _dispatch(ns)
    except errors.AgentError as e:
        print(f"fleetops-agent: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _dispatch(ns: argparse.Namespace) -> int:
    if ns.command == "health":
        return commands.health_of_files(ns)
    return asyncio.run(commands.ASYNC[ns.command](ns))


if __name__ == "__main__":
    sys.exit(main())
