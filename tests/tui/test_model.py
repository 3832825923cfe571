"""The TUI's model on its own: what gates a cluster, filters with groups and several words,
per-cluster counts, what the certificate line says."""

from __future__ import annotations

from fleetops.proto.v1 import fleet_pb2, types_pb2
from fleetops.tui import model

CONNECTED, LOST = types_pb2.CONNECTIVITY_CONNECTED, types_pb2.CONNECTIVITY_DISCONNECTED


def fleet() -> model.Fleet:
    snap = fleet_pb2.Snapshot(version=1)
    for name, env, groups, conn in (
        ("eu-1", "prod", ["prod", "eu"], CONNECTED),
        ("us-1", "dev", ["dev"], LOST),
    ):
        c = snap.clusters.add(name=name, connectivity=conn, groups=groups)
        c.labels["env"] = env
    for a in ("api", "web"):
        snap.apps.add(name=a, head_revision="b" * 40)
    ok = {"sync": types_pb2.SYNC_STATUS_SYNCED, "health": types_pb2.HEALTH_STATUS_HEALTHY}
    snap.statuses.add(cluster="eu-1", app="api", **ok)
    snap.statuses.add(cluster="eu-1", app="web", sync=types_pb2.SYNC_STATUS_SYNCED,
                      health=types_pb2.HEALTH_STATUS_DEGRADED)  # fmt: skip
    snap.statuses.add(cluster="us-1", app="api", **ok)
    f = model.Fleet()
    f.load(snap)
    return f


def test_filters_by_group_label_state_and_all_words() -> None:
    f = fleet()
    assert f.cluster_names("group=eu") == ["eu-1"]
    assert f.cluster_names("group=dev") == ["us-1"]
    assert f.cluster_names("env=prod degraded") == ["eu-1"]
    assert f.cluster_names("env=dev degraded") == []
    assert f.cluster_names("disconnected") == ["us-1"]


def test_row_counts_and_worst_first() -> None:
    f = fleet()
    assert f.row_counts("eu-1") == (1, 2)
    assert f.row_counts("us-1") == (1, 1)
    assert f.cluster_names(sort="worst") == ["eu-1", "us-1"]  # Degraded beats offline


def test_the_gate_names_what_holds_a_cluster_back() -> None:
    f = fleet()
    cell = f.cells[("eu-1", "api")]
    app = f.apps["api"]
    assert model.gate(cell, app, f.clusters["eu-1"]) == "open"
    assert model.gate(f.cells[("us-1", "api")], app, f.clusters["us-1"]) == "agent offline"
    manual = fleet_pb2.ClusterAppStatus(reason="auto-sync is off: sync to deploy bbbbbbbb")
    assert model.gate(manual, app, f.clusters["eu-1"]) == "manual sync"
    broken = fleet_pb2.ClusterAppStatus(reason="render failed: kustomize build failed")
    assert model.gate(broken, app, f.clusters["eu-1"]) == "render failed"
    paused = fleet_pb2.App(name="api", paused=True)
    assert model.gate(cell, paused, f.clusters["eu-1"]) == "paused"
    pinned = fleet_pb2.ClusterAppStatus(pinned_revision="a" * 40)
    assert model.gate(pinned, paused, f.clusters["us-1"]) == "pinned aaaaaaa"


def test_the_certificate_line_says_how_long_and_worries_when_renewal_is_overdue() -> None:
    now = 1_795_000_000.0  # 2026-11-18 11:06:40Z
    c = types_pb2.Cluster(name="eu-1")
    assert model.certificate_state(c, now) == (
        "certificate: none on record (an older hub, or the agent never registered)",
        model.OK,
    )
    c.certificate_expires.FromSeconds(int(now) + 60 * 86400 + 5)
    assert model.certificate_state(c, now) == (
        "certificate valid until 2027-01-17 11:06:45Z (60 days left)",
        model.OK,
    )
    c.certificate_expires.FromSeconds(int(now) + 86400 + 5)
    assert model.certificate_state(c, now) == (
        "certificate valid until 2026-11-19 11:06:45Z (1 day left)",
        model.WARN,
    )
    c.certificate_expires.FromSeconds(int(now) + 600)
    assert model.certificate_state(c, now)[0].endswith("(less than a day left)")
    c.certificate_expires.FromSeconds(int(now) - 1)
    assert model.certificate_state(c, now) == (
        "certificate EXPIRED 2026-11-18 11:06:39Z: the agent must register with a new token",
        model.BAD,
    )
