"""Which target each cluster gets, and which revision it should run: pins beat auto-sync."""

from __future__ import annotations

from fleetops.hub import config, plan

CFG = config.parse(
    """
repos: [{name: r, url: "file:///x"}]
clusterGroups: [{name: prod, selector: {matchLabels: {env: prod}}}]
apps:
  - name: web
    repo: r
    path: web
    targets:
      - {name: canary, clusterName: eu-1, clusterGroup: prod}
      - {name: prod, clusterGroup: prod}
      - name: nonprod
        clusterSelector:
          matchExpressions:
            - {key: env, operator: In, values: [dev, test]}
            - {key: frozen, operator: DoesNotExist}
  - {name: everywhere, repo: r, path: e}
""",
    file="hub.yaml",
)


def target(app: str, cluster: str, **labels: str) -> str | None:
    a = CFG.app(app)
    assert a is not None
    t = plan.target_for(CFG, a, cluster, labels)
    return t.name if t else None


def test_first_matching_target_wins() -> None:
    assert target("web", "eu-1", env="prod") == "canary"
    assert target("web", "us-1", env="prod") == "prod"
    assert target("web", "eu-1", env="dev") == "nonprod"  # canary needs the prod group too
    assert target("web", "lab", env="dev", frozen="yes") is None
    assert target("web", "lab") is None
    assert target("everywhere", "anything") == "default"


def test_hub_yaml_labels_override_token_labels() -> None:
    cfg = config.parse("clusters: [{name: c1, labels: {env: prod}}]", file="hub.yaml")
    labels = plan.cluster_labels(cfg, "c1", {"env": "dev", "zone": "a"})
    assert labels == {"env": "prod", "zone": "a", "fleetops.io/cluster": "c1"}


def test_a_pin_beats_auto_sync_and_a_cluster_pin_beats_an_app_pin() -> None:
    def want(**kw: object) -> str | None:
        args = {"head": "h2", "auto": True, "current": "h1", "pin_app": "", "pin_cluster": "",
                "sync_requested": False}  # fmt: skip
        args.update(kw)
        w = plan.desired_revision(**args)  # type: ignore[arg-type]
        return w.revision if w else None

    assert want() == "h2"
    assert want(pin_app="h0") == "h0"
    assert want(pin_app="h0", pin_cluster="hx") == "hx"
    assert want(auto=False) == "h1"
    assert want(auto=False, sync_requested=True) == "h2"
    assert want(auto=False, current="") is None
