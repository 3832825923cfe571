"""Fixtures for reconciler tests against the shared local clusters."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import yaml

from fleetops.agent import kube, reconcile
from fleetops.proto.v1 import types_pb2
from tests import localkube

BundleFactory = Callable[..., types_pb2.Bundle]


@pytest.fixture
async def cluster(local_clusters: list[localkube.LocalCluster]) -> AsyncIterator[kube.Kube]:
    client = kube.connect(str(local_clusters[0].kubeconfig))
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def reconciler(cluster: kube.Kube) -> reconcile.Reconciler:
    return reconcile.Reconciler(
        cluster,
        reconcile.Options(wave_timeout=60, poll_interval=0.3, inventory_namespace="fleetops-test"),
    )


@pytest.fixture
def make_bundle(unique_name: str) -> BundleFactory:
    """make(obj, ..., revision=..): a Bundle of app and namespace `unique_name`."""

    def make(*objs: dict[str, Any], revision: str = "r1", app: str = "") -> types_pb2.Bundle:
        bundle = types_pb2.Bundle(app=app or unique_name, revision=revision, namespace=unique_name)
        if objs:
            bundle.manifests.add(source="manifests.yaml", yaml=yaml.safe_dump_all(list(objs)))
        return bundle

    return make
