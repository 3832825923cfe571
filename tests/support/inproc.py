"""An agent runner in the test's own process, against a real cluster, with no hub.

The runner's app workers, its watches and (when asked) its resync timer run as tasks; apps
are assigned by writing them to the runner's local state, as the hub connection would, so a
test can read the runner's reports, its request counters and its watches directly. The
identity is a stand-in (no hub connection is made): it only names the cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
from collections.abc import AsyncIterator
from typing import Any

import yaml

from fleetops.agent import credentials, kube, reconcile, runner, state
from fleetops.proto import bundles
from fleetops.proto.v1 import types_pb2


@contextlib.asynccontextmanager
async def agent(
    client: kube.Kube,
    root: pathlib.Path,
    *,
    watching: bool = True,
    resync: float = 600.0,
    cluster: str = "c1",
) -> AsyncIterator[runner.Runner]:
    """A runner on `client` keeping its state in `root`, its loops stopped on exit."""
    me = credentials.Identity(cluster=cluster, key_pem=b"", cert_pem=b"", ca_pem=b"", agent_port=0)
    run = runner.Runner(
        address="127.0.0.1:1",
        me=me,
        client=client,
        local=state.LocalState(root),
        options=reconcile.Options(inventory_namespace="fleetops-test", poll_interval=0.3),
        resync=resync,
        labels={},
        watching=watching,
    )
    loops = [asyncio.create_task(run.workers(), name="workers")]
    if run.watches is not None:
        loops.append(asyncio.create_task(run.watches.run(), name="watches"))
    if resync < 600:
        loops.append(asyncio.create_task(run._resync_loop(), name="resync"))
    try:
        yield run
    finally:
        for task in loops:
            task.cancel()
        await asyncio.gather(*loops, return_exceptions=True)


def bundle(app: str, *objs: dict[str, Any], revision: str = "r1") -> types_pb2.Bundle:
    """A bundle of app `app` whose namespace is `app` too."""
    out = types_pb2.Bundle(app=app, revision=revision, namespace=app)
    out.manifests.add(source="manifests.yaml", yaml=yaml.safe_dump_all(list(objs)))
    return out


def assign(
    run: runner.Runner, bundle: types_pb2.Bundle, policy: types_pb2.SyncPolicy, generation: int = 1
) -> None:
    """Give `bundle` to the runner as the hub would: kept locally, then reconciled."""
    a = types_pb2.Assignment(
        app=bundle.app,
        revision=bundle.revision,
        bundle_digest=bundles.digest(bundle),
        namespace=bundle.namespace,
        policy=policy,
        generation=generation,
    )
    run.local.save(a, bundle)
    run.enqueue(bundle.app)
