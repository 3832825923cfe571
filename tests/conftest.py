"""Fixtures shared by the whole suite.

`local_clusters` is one set of real local Kubernetes control planes (deploy/local/localkube)
for the whole session: starting an apiserver costs seconds, so tests share them and keep
their objects apart by namespace. The clusters are torn down at the end of the session, and
localkube's watcher tears them down too if pytest dies without running its teardown.

Set FLEETOPS_TEST_CLUSTERS to the state dir of clusters already started with
`localkube up --names c1,c2,c3 --state DIR` to reuse them while iterating.
"""

from __future__ import annotations

import os
import pathlib
import uuid
from collections.abc import Iterator

import pytest

from tests import localkube

CLUSTER_NAMES = ["c1", "c2", "c3"]


@pytest.fixture(scope="session")
def local_clusters(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[list[localkube.LocalCluster]]:
    reuse = os.environ.get("FLEETOPS_TEST_CLUSTERS")
    if reuse:
        root = pathlib.Path(reuse)
        yield [localkube.LocalCluster(n, root / n / "kubeconfig") for n in CLUSTER_NAMES]
        return
    state = tmp_path_factory.mktemp("localkube")
    clusters = localkube.up(state, CLUSTER_NAMES, owner_pid=os.getpid())
    try:
        yield clusters
    finally:
        localkube.down(state)


@pytest.fixture
def unique_name() -> str:
    """A DNS-safe name no other test uses, for namespaces and objects in the shared clusters."""
    return f"t-{uuid.uuid4().hex[:10]}"
