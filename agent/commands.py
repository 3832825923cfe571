"""What each `fleetops-agent` command does, given its parsed arguments: apply, status,
reconcile, health and run. Each builds what it needs (a Kubernetes client, the reconciler, the
local state, the runner), calls it, and prints with `agent.output`; none holds reconcile logic.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import logging
import os
import pathlib
import signal
from collections.abc import Callable, Coroutine
from typing import Any

from fleetops.agent import (
    enroll,
    errors,
    health,
    keystore,
    kube,
    luahealth,
    manifests,
    output,
    reconcile,
    runner,
    state,
)
from fleetops.agent import status as st
from fleetops.proto import bundles
from fleetops.proto.v1 import types_pb2


def _options(ns: argparse.Namespace) -> reconcile.Options:
    return reconcile.Options(
        inventory_namespace=ns.inventory_namespace,
        wave_timeout=getattr(ns, "wave_timeout", 300.0),
        health_checks=_health_checks(ns),
    )


def _health_checks(ns: argparse.Namespace) -> tuple[luahealth.Source, ...]:
    """The scripts under --health-checks DIR; a directory that cannot be read stops the start."""
    root = getattr(ns, "health_checks", None)
    if root is None:
        return ()
    try:
        return tuple(luahealth.load_dir(root))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise errors.AgentError(f"--health-checks {root}: {e}") from None


def _connect(ns: argparse.Namespace) -> kube.Kube:
    if ns.kube_timeout <= 0:
        raise errors.AgentError(f"--kube-timeout {ns.kube_timeout:g}: give a number of seconds")
    timeouts = kube.Timeouts(
        connect=min(kube.CONNECT_TIMEOUT, ns.kube_timeout), read=ns.kube_timeout
    )
    return kube.connect(ns.kubeconfig, context=ns.context, timeouts=timeouts)


def _local(ns: argparse.Namespace) -> state.LocalState:
    return state.LocalState(ns.state or state.default_dir())


async def apply(ns: argparse.Namespace) -> int:
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
            result = _merge_actions(applied=result, checked=checked)
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
    output.show(result, ns.output)
    return 1 if result.failed else 0


def _merge_actions(*, applied: st.AppResult, checked: st.AppResult) -> st.AppResult:
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


async def status(ns: argparse.Namespace) -> int:
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
    output.show(result, ns.output)
    return 0


async def reconcile_loop(ns: argparse.Namespace) -> int:
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
                output.show(result, ns.output, brief=True)
            if ns.once:
                break
            try:
                await asyncio.wait_for(stop.wait(), ns.interval)
            except TimeoutError:
                pass
    finally:
        client.close()
    return 1 if (ns.once and failed) else 0


def health_of_files(ns: argparse.Namespace) -> int:
    rows: list[dict[str, str]] = []
    problems: list[str] = []
    checks = health.Checks(luahealth.Checks(_health_checks(ns)))
    for path in ns.files:
        try:
            text = path.read_text()
        except OSError as e:
            problems.append(f"{path}: cannot read: {e.strerror}")
            continue
        parsed = manifests.parse(source=str(path), text=text)
        problems += [str(p) for p in parsed.problems]
        for r in parsed.resources:
            h = checks.assess(r.obj)
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
    output.show_health(rows, problems, output=ns.output)
    return 1 if problems else 0


async def run(ns: argparse.Namespace) -> int:
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
        if ns.identity_secret and await _restore(
            root, client, secret=ns.identity_secret, token=token, stop=stop
        ):
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
            watching=ns.watch,
        )
        await runner_.run()
    finally:
        client.close()
    return 0


async def _restore(
    root: pathlib.Path, client: kube.Kube, *, secret: str, token: str, stop: asyncio.Event
) -> bool:
    """`keystore.restore`, waiting (with backoff) for an API server that does not answer: a
    pod that starts while it is down must not register again nor give up."""
    delay = 1.0
    while not stop.is_set():
        try:
            return await keystore.restore(root, client, secret=secret, token=token)
        except errors.Unreachable as e:
            logging.warning(
                "%s; the identity in Secret %s is read again in %.0f s", e, secret, delay
            )
        try:
            await asyncio.wait_for(stop.wait(), timeout=delay)
        except TimeoutError:
            pass
        delay = min(delay * 2, 60.0)
    return False


ASYNC: dict[str, Callable[[argparse.Namespace], Coroutine[Any, Any, int]]] = {
    "apply": apply,
    "status": status,
    "reconcile": reconcile_loop,
    "run": run,
}
