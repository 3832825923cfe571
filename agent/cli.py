"""`fleetops-agent`: the agent's command line.

Parses arguments, calls the reconciler and prints results; it holds no reconcile logic of
its own. Output never contains object content, so a Secret's data cannot be printed.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import json
import logging
import os
import pathlib
import signal
import sys
from collections.abc import Sequence
from typing import Any

from fleetops import agent
from fleetops.agent import (
    enroll,
    errors,
    health,
    keystore,
    kube,
    manifests,
    reconcile,
    runner,
    state,
)
from fleetops.agent import status as st
from fleetops.proto import bundles
from fleetops.proto.v1 import types_pb2


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
    run.add_argument("--resync", type=float, default=30.0, help="seconds between drift checks")
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
        if ns.command == "health":
            return cmd_health(ns)
        return asyncio.run(_COMMANDS[ns.command](ns))
    except errors.AgentError as e:
        print(f"fleetops-agent: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


# ---------------------------------------------------------------- commands


def _options(ns: argparse.Namespace) -> reconcile.Options:
    return reconcile.Options(
        inventory_namespace=ns.inventory_namespace,
        wave_timeout=getattr(ns, "wave_timeout", 300.0),
    )


def _connect(ns: argparse.Namespace) -> kube.Kube:
    if ns.kube_timeout <= 0:
        raise errors.AgentError(f"--kube-timeout {ns.kube_timeout:g}: give a number of seconds")
    timeouts = kube.Timeouts(
        connect=min(kube.CONNECT_TIMEOUT, ns.kube_timeout), read=ns.kube_timeout
    )
    return kube.connect(ns.kubeconfig, context=ns.context, timeouts=timeouts)


def _local(ns: argparse.Namespace) -> state.LocalState:
    return state.LocalState(ns.state or state.default_dir())


async def cmd_apply(ns: argparse.Namespace) -> int:
    if not ns.bundle.exists():
        raise errors.AgentError(f"--bundle {ns.bundle}: no such file or directory")
    bundle = manifests.bundle_from_dir(
        ns.bundle, app=ns.app, namespace=ns.namespace, revision=ns.revision
    )
    policy = types_pb2.SyncPolicy(
        auto=True,
        prune=ns.prune,
        self_heal=ns.self_heal,
        force_conflicts=not ns.no_force_conflicts,
        allow_empty=ns.allow_empty,
        max_prune_percent=ns.max_prune_percent,
    )
    allow = ns.allow_mass_prune
    client = _connect(ns)
    try:
        rec = reconcile.Reconciler(client, _options(ns))
        result = await rec.sync(bundle, policy, allow_mass_prune=allow)
        if ns.wait and not result.failed:
            checked = await rec.wait_healthy(bundle, policy, ns.wait, allow_mass_prune=allow)
            result = _merge_actions(result, checked)
    finally:
        client.close()
    assignment = types_pb2.Assignment(
        app=ns.app,
        revision=ns.revision,
        bundle_digest=bundles.digest(bundle),
        namespace=ns.namespace,
        policy=policy,
    )
    _local(ns).save(assignment, bundle)
    _print(result, ns.output)
    return 1 if result.failed else 0


def _merge_actions(applied: st.AppResult, checked: st.AppResult) -> st.AppResult:
    """The health of a later check, with the actions (applied, pruned) of the sync."""
    actions = {r.key: r for r in applied.resources}
    merged = [
        dataclasses.replace(r, action=actions[r.key].action) if r.key in actions else r
        for r in checked.resources
    ]
    merged += [r for r in applied.resources if r.action == "pruned"]
    return st.AppResult.rolled_up(
        app=applied.app,
        revision=applied.revision,
        bundle_digest=applied.bundle_digest,
        results=merged,
        applied_at=applied.applied_at,
        reason=applied.reason if applied.prune_held else "",
        sync=applied.sync if applied.prune_held else None,
        prune_held=applied.prune_held,
    )


async def cmd_status(ns: argparse.Namespace) -> int:
    stored = _local(ns).load(ns.app)
    client = _connect(ns)
    try:
        rec = reconcile.Reconciler(client, _options(ns))
        if stored is not None:
            result = await rec.check(stored.bundle, stored.assignment.policy)
        else:
            found = await rec.inventory_health(ns.app)
            if found is None:
                raise errors.AgentError(
                    f"app {ns.app!r} was never applied to this cluster (no inventory "
                    f"{ns.inventory_namespace}/fleetops-inventory-{ns.app}) and {_local(ns).root} "
                    "has no copy of it: apply it with `fleetops-agent apply` first"
                )
            result = found
    finally:
        client.close()
    _print(result, ns.output)
    return 0


async def cmd_reconcile(ns: argparse.Namespace) -> int:
    local = _local(ns)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    client = _connect(ns)
    failed = False
    try:
        rec = reconcile.Reconciler(client, _options(ns))
        while not stop.is_set():
            for stored in local.load_all():
                result = await rec.reconcile(stored.bundle, stored.assignment.policy)
                failed = failed or result.failed
                _print(result, ns.output, brief=True)
            if ns.once:
                break
            try:
                await asyncio.wait_for(stop.wait(), ns.interval)
            except TimeoutError:
                pass
    finally:
        client.close()
    return 1 if (ns.once and failed) else 0


def cmd_health(ns: argparse.Namespace) -> int:
    rows: list[dict[str, str]] = []
    problems: list[str] = []
    for path in ns.files:
        try:
            text = path.read_text()
        except OSError as e:
            problems.append(f"{path}: cannot read: {e.strerror}")
            continue
        parsed = manifests.parse(str(path), text)
        problems += [str(p) for p in parsed.problems]
        for r in parsed.resources:
            h = health.assess(r.obj)
            rows.append(
                {
                    "apiVersion": r.api_version,
                    "kind": r.kind,
                    "namespace": r.namespace,
                    "name": r.name,
                    "health": h.name,
                    "reason": h.reason,
                }
            )
    if ns.output == "json":
        print(json.dumps({"objects": rows, "errors": problems}, indent=2))
    else:
        width = max((len(_ident(row)) for row in rows), default=0)
        for row in rows:
            print(f"{_ident(row):<{width}}  {row['health']:<11}  {row['reason']}")
        for p in problems:
            print(f"error: {p}", file=sys.stderr)
    return 1 if problems else 0


def _ident(row: dict[str, str]) -> str:
    where = f"{row['namespace']}/{row['name']}" if row["namespace"] else row["name"]
    return f"{row['kind']} {where}"


async def cmd_run(ns: argparse.Namespace) -> int:
    """Until SIGTERM/SIGINT (exit 0). It exits non-zero only when it cannot start: bad
    arguments or credentials, a refused registration, a health address it cannot bind."""
    logging.basicConfig(level=ns.log_level.upper(), format="%(asctime)s %(levelname)s %(message)s")
    labels = {}
    for item in ns.label:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise errors.AgentError(f"--label {item!r}: use KEY=VALUE")
        labels[key] = value
    root = ns.state or state.default_dir()
    token = ns.token or os.environ.get("FLEETOPS_TOKEN", "")
    ca_pem = b""
    if ns.ca is not None:
        try:
            ca_pem = ns.ca.read_bytes()
        except OSError as e:
            raise errors.AgentError(f"--ca {ns.ca}: {e.strerror}") from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    client = _connect(ns)
    try:
        if ns.identity_secret and await _restore(root, client, ns.identity_secret, token, stop):
            logging.info("identity restored from Secret %s", ns.identity_secret)
        if stop.is_set():
            return 0
        me = await asyncio.to_thread(
            functools.partial(
                enroll.register, root, hub=ns.hub, token=token, labels=labels, ca_pem=ca_pem
            )
        )
        runner_ = runner.Runner(
            address=ns.hub,
            me=me,
            client=client,
            local=state.LocalState(root),
            options=_options(ns),
            resync=ns.resync,
            labels=labels,
            health_listen=ns.health_listen,
            identity_secret=ns.identity_secret,
            stop=stop,
        )
        await runner_.run()
    finally:
        client.close()
    return 0


async def _restore(
    root: pathlib.Path, client: kube.Kube, ref: str, token: str, stop: asyncio.Event
) -> bool:
    """`keystore.restore`, waiting (with backoff) for an API server that does not answer: a
    pod that starts while it is down must not register again nor give up."""
    delay = 1.0
    while not stop.is_set():
        try:
            return await keystore.restore(root, client, secret=ref, token=token)
        except errors.Unreachable as e:
            logging.warning("%s; the identity in Secret %s is read again in %.0f s", e, ref, delay)
        try:
            await asyncio.wait_for(stop.wait(), timeout=delay)
        except TimeoutError:
            pass
        delay = min(delay * 2, 60.0)
    return False


_COMMANDS = {"apply": cmd_apply, "status": cmd_status, "reconcile": cmd_reconcile, "run": cmd_run}


# ---------------------------------------------------------------- output


def result_json(result: st.AppResult) -> dict[str, Any]:
    return {
        "app": result.app,
        "revision": result.revision,
        "bundleDigest": result.bundle_digest,
        "sync": st.sync_name(result.sync),
        "health": health.name(result.health),
        "reason": result.reason,
        "healed": result.healed,
        "pruneHeld": result.prune_held,
        "resources": [
            {
                "group": r.key.group,
                "version": r.version,
                "kind": r.key.kind,
                "namespace": r.key.namespace,
                "name": r.key.name,
                "sync": st.sync_name(r.sync),
                "health": r.health.name if r.health else "",
                "healthReason": r.health.reason if r.health else "",
                "action": r.action,
                "message": r.message,
                "conflictManager": r.conflict_manager,
                "drift": [{"path": f.path, "desired": f.desired, "live": f.live} for f in r.drift],
            }
            for r in result.resources
        ],
    }


def _print(result: st.AppResult, output: str, *, brief: bool = False) -> None:
    if output == "json":
        print(json.dumps(result_json(result), indent=None if brief else 2), flush=True)
        return
    rev = result.revision[:12] or "-"
    head = (
        f"app {result.app}  revision {rev}  sync {st.sync_name(result.sync)}  "
        f"health {health.name(result.health)}"
    )
    if brief:
        extra = f"  healed {result.healed}" if result.healed else ""
        print(f"{head}{extra}  {result.reason}", flush=True)
        return
    print(head)
    idents = [str(r.key) for r in result.resources]
    width = max((len(i) for i in idents), default=0)
    for ident, r in zip(idents, result.resources, strict=True):
        h = r.health.name if r.health else "-"
        note = r.message or (r.health.reason if r.health else "")
        print(f"  {ident:<{width}}  {r.action or '-':<8} {st.sync_name(r.sync):<11} {h:<11} {note}")
        for f in r.drift:
            print(f"  {'':<{width}}    {f.path}: Git {f.desired}, live {f.live}")
    print(f"reason: {result.reason}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
