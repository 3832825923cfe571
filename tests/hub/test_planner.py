"""The planner's decision, with no server, store, Git or clock: which target and revision each
(app, cluster) should run, given config, pins, pauses, heads and the registered clusters."""

from __future__ import annotations

from collections.abc import Collection, Mapping

from fleetops.hub import config, planner

HUB_YAML = """
repos: [{name: r, url: "file:///x"}, {name: empty, url: "file:///y"}]
clusters: [{name: lab, labels: {env: dev}}]
clusterGroups:
  - {name: prod, selector: {matchLabels: {env: prod}}}
  - {name: dev, selector: {matchLabels: {env: dev}}}
apps:
  - name: web
    repo: r
    path: web
    targets:
      - {name: production, clusterGroup: prod}
      - {name: development, clusterGroup: dev}
  - {name: everywhere, repo: r, path: e}
  - {name: unborn, repo: empty, path: u}
"""
CFG = config.parse(HUB_YAML, file="hub.yaml")
CLUSTERS = {"eu-1": {"env": "prod"}, "us-1": {"env": "prod"}, "lab": {}}
HEADS = {"r": "h2"}


def decide(
    cfg: config.Config = CFG,
    *,
    clusters: Mapping[str, Mapping[str, str]] = CLUSTERS,
    heads: Mapping[str, str] = HEADS,
    pins: Mapping[tuple[str, str], str] | None = None,
    paused: Collection[str] = (),
    current: Mapping[tuple[str, str], str] | None = None,
    sync_requests: Collection[tuple[str, str]] = (),
    held: Collection[str] = (),
) -> dict[tuple[str, str], tuple[str, str, str]]:
    """(app, cluster) -> (target, revision, why)."""
    got = planner.decide(
        cfg=cfg,
        apps=cfg.apps,
        clusters=clusters,
        heads=heads,
        pins=pins or {},
        paused=paused,
        current=current or {},
        sync_requests=sync_requests,
        held=held,
    )
    assert not got.failed
    return {k: (d.target.name, d.revision, d.why) for k, d in got.assignments.items()}


def test_clusters_get_the_target_their_labels_select() -> None:
    got = decide()
    assert got[("web", "eu-1")] == ("production", "h2", "auto")
    assert got[("web", "us-1")] == ("production", "h2", "auto")
    assert got[("web", "lab")] == ("development", "h2", "auto")  # labelled in hub.yaml
    assert got[("everywhere", "lab")] == ("default", "h2", "auto")


def test_a_cluster_no_target_selects_gets_nothing_of_that_app() -> None:
    got = decide(clusters={"edge": {"env": "staging"}})
    assert ("web", "edge") not in got
    assert ("everywhere", "edge") in got


def test_a_pinned_revision_wins_over_the_head() -> None:
    got = decide(pins={("web", ""): "h1", ("web", "us-1"): "h0"})
    assert got[("web", "eu-1")] == ("production", "h1", "pin")
    assert got[("web", "us-1")] == ("production", "h0", "pin")  # the cluster's own pin first
    assert got[("everywhere", "eu-1")][1:] == ("h2", "auto")


def test_a_paused_app_keeps_its_current_revision() -> None:
    current = {("eu-1", "web"): "h1"}
    got = decide(paused={"web"}, current=current, pins={("web", "eu-1"): "h0"})
    assert got[("web", "eu-1")] == ("production", "h1", "hold")  # neither head nor pin moves it
    assert ("web", "us-1") not in got  # paused before it ever ran: nothing is started
    assert got[("everywhere", "us-1")][1:] == ("h2", "auto")


def test_an_app_whose_repo_has_no_head_yet_is_not_assigned() -> None:
    got = decide()
    assert not [k for k in got if k[0] == "unborn"]


def test_a_removed_cluster_loses_its_assignments() -> None:
    current = {("us-1", "web"): "h2", ("us-1", "everywhere"): "h2"}
    got = decide(clusters={"eu-1": {"env": "prod"}}, current=current)
    assert not [k for k in got if k[1] == "us-1"]
    assert ("web", "eu-1") in got


def test_replanning_after_a_config_change_moves_a_cluster_to_a_new_target() -> None:
    before = decide(clusters={"lab": {}})
    assert before[("web", "lab")][0] == "development"
    moved = config.parse(HUB_YAML.replace("{name: lab, labels: {env: dev}}", "{name: lab, "
                                          "labels: {env: prod}}"), file="hub.yaml")  # fmt: skip
    after = decide(moved, clusters={"lab": {}}, current={("lab", "web"): "h2"})
    assert after[("web", "lab")] == ("production", "h2", "auto")


def test_hub_yaml_labels_beat_the_labels_a_registration_token_carried() -> None:
    got = decide(clusters={"lab": {"env": "prod"}})
    assert got[("web", "lab")][0] == "development"


def test_without_auto_sync_a_cluster_moves_only_when_asked() -> None:
    cfg = config.parse(HUB_YAML.replace("path: e}", "path: e, sync: {auto: false}}"), file="x")
    current = {("eu-1", "everywhere"): "h1"}
    assert decide(cfg, current=current)[("everywhere", "eu-1")][1:] == ("h1", "hold")
    assert ("everywhere", "us-1") not in decide(cfg, current=current)
    asked = decide(cfg, current=current, sync_requests={("everywhere", "")})
    assert asked[("everywhere", "eu-1")][1:] == ("h2", "sync")
    assert asked[("everywhere", "us-1")][1:] == ("h2", "sync")
    one = decide(cfg, current=current, sync_requests={("everywhere", "us-1")})
    assert one[("everywhere", "eu-1")][1:] == ("h1", "hold")


def test_an_app_whose_fleet_yaml_does_not_read_holds_what_it_runs() -> None:
    got = decide(held={"everywhere"}, current={("eu-1", "everywhere"): "h1"})
    assert got[("everywhere", "eu-1")][1] == "h1"  # not the head h2
    assert ("everywhere", "us-1") not in got


def test_what_to_render_is_one_job_per_target_at_the_head() -> None:
    wanted = planner.renders_wanted(
        cfg=CFG, apps=CFG.apps, clusters=CLUSTERS, heads=HEADS, paused={"everywhere"}
    )
    assert sorted((a.name, t.name, rev) for a, t, rev in wanted) == [
        ("web", "development", "h2"),
        ("web", "production", "h2"),
    ]


def test_the_same_facts_give_the_same_decision() -> None:
    assert decide() == decide()
