"""Fleet's raw-YAML overlays, rendered as a Fleet user expects: patches and replacements matched
by file name, the patch kind chosen from the content, overlays in list order (the top-level
fleet.yaml `yaml.overlays` first), multi-document files never losing a document, and errors
that name the patch, the base file it looked for and the fix."""

from __future__ import annotations

import pathlib
import shutil
import time
from typing import Any

import pytest
import yaml

from fleetops.hub import config, errors, fleetyaml, plan, render

FIXTURES = pathlib.Path(__file__).resolve().parent.parent / "fixtures"
EXAMPLE = FIXTURES / "fleet-multi-cluster"
CM = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cm}\n"


def write(root: pathlib.Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def objects(rendered: render.Rendered) -> dict[str, dict[str, Any]]:
    out = {}
    for _source, text in rendered.manifests:
        for doc in yaml.safe_load_all(text):
            if doc:
                out[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return out


def run(root: pathlib.Path, overlays: tuple[str, ...], path: str = "app") -> dict[str, Any]:
    app = config.App(name="app", repo="r", path=path, namespace="app")
    target = config.Target(name="t", yaml_overlays=overlays)
    return objects(
        render.render(checkout=root, refused_links=(), app=app, target=target, tools=render.Tools())
    )


def error(root: pathlib.Path, overlays: tuple[str, ...]) -> str:
    with pytest.raises(errors.RenderError) as err:
        run(root, overlays)
    return str(err.value)


def deployment(name: str, *containers: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {"replicas": 1, "template": {"spec": {"containers": list(containers)}}},
    }


# ------------------------------------------------------------ Fleet's multi-cluster example


def example_for(env: str) -> dict[str, Any]:
    """The example as a cluster labelled env=<env> gets it: fleet.yaml read, the target the
    hub would pick for those labels, rendered."""
    app = fleetyaml.apply(
        config.App(name="mc", repo="r", path="fleet-multi-cluster"),
        (EXAMPLE / "fleet.yaml").read_text(),
    )
    cfg = config.Config(file="hub.yaml", apps=(app,))
    target = plan.target_for(cfg, app, "c1", {"env": env})
    assert target is not None
    return objects(
        render.render(
            checkout=FIXTURES, refused_links=(), app=app, target=target, tools=render.Tools()
        )
    )


def test_fleets_example_dev_has_no_redis_replica_and_its_service_points_at_the_master() -> None:
    dev = example_for("dev")
    assert "Deployment/redis-replica" not in dev
    assert dev["Service/redis-replica"]["spec"]["selector"] == {"app": "redis", "role": "master"}
    assert dev["Deployment/frontend"]["spec"]["replicas"] == 1
    assert dev["Service/frontend"]["spec"]["type"] == "NodePort"


def test_fleets_example_test_runs_three_frontends() -> None:
    test = example_for("test")
    assert test["Deployment/frontend"]["spec"]["replicas"] == 3
    assert test["Deployment/redis-replica"]["spec"]["replicas"] == 2
    assert test["Service/frontend"]["spec"]["type"] == "NodePort"
    # the strategic merge kept everything the patch did not mention
    container = test["Deployment/frontend"]["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "registry.local/guestbook-frontend:v1"


def test_fleets_example_prod_has_three_frontends_behind_a_load_balancer() -> None:
    prod = example_for("prod")
    assert prod["Deployment/frontend"]["spec"]["replicas"] == 3
    assert prod["Service/frontend"]["spec"]["type"] == "LoadBalancer"
    assert prod["Service/frontend"]["spec"]["ports"] == [{"port": 80}]
    assert prod["Service/redis-replica"]["spec"]["selector"]["role"] == "replica"


def test_fleets_example_other_clusters_get_the_base() -> None:
    other = example_for("staging")
    assert len(other) == 6
    assert other["Deployment/frontend"]["spec"]["replicas"] == 1


# ------------------------------------------------------------ file names


def test_a_yml_patch_patches_the_yml_file_and_subfolders_carry_over(tmp_path: pathlib.Path) -> None:
    write(tmp_path, {
        "app/web.yml": yaml.safe_dump(deployment("web", {"name": "app", "image": "a:1"})),
        "app/sub/cm.yaml": CM + "data: {a: '1'}\n",
        "app/overlays/x/web_patch.yml": "spec: {replicas: 4}\n",
        "app/overlays/x/sub/cm_patch.yaml": "data: {b: '2'}\n",
    })  # fmt: skip
    got = run(tmp_path, ("x",))
    assert got["Deployment/web"]["spec"]["replicas"] == 4
    assert got["ConfigMap/cm"]["data"] == {"a": "1", "b": "2"}


def test_a_yaml_patch_never_targets_a_yml_file(tmp_path: pathlib.Path) -> None:
    write(tmp_path, {
        "app/web.yml": yaml.safe_dump(deployment("web", {"name": "app", "image": "a:1"})),
        "app/overlays/x/web_patch.yaml": "spec: {replicas: 4}\n",
    })  # fmt: skip
    message = error(tmp_path, ("x",))
    assert message.startswith("app/overlays/x/web_patch.yaml: patches app/web.yaml, which does")
    assert "add that file or rename the patch" in message


def test_a_patch_needs_no_kind_and_is_not_matched_by_kind_or_name(tmp_path: pathlib.Path) -> None:
    # a patch naming another object still patches the file its own name points at
    write(tmp_path, {
        "app/a.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\ndata: {x: '1'}\n",
        "app/b.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: b}\ndata: {x: '1'}\n",
        "app/overlays/x/a_patch.yaml": "data: {x: '2'}\n",
    })  # fmt: skip
    got = run(tmp_path, ("x",))
    assert got["ConfigMap/a"]["data"] == {"x": "2"}
    assert got["ConfigMap/b"]["data"] == {"x": "1"}


def test_replacing_adding_and_emptying_files(tmp_path: pathlib.Path) -> None:
    write(tmp_path, {
        "app/a.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\ndata: {v: base}\n",
        "app/gone.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: gone}\n",
        "app/overlays/x/a.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a2}\n",
        "app/overlays/x/new.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: new}\n",
        "app/overlays/x/gone.yaml": "",
    })  # fmt: skip
    assert set(run(tmp_path, ("x",))) == {"ConfigMap/a2", "ConfigMap/new"}


# ------------------------------------------------------------ the patch kind


def test_a_built_in_kind_gets_a_strategic_merge_by_container_name(tmp_path: pathlib.Path) -> None:
    base = deployment(
        "web",
        {"name": "app", "image": "app:1", "env": [{"name": "A", "value": "1"}]},
        {"name": "sidecar", "image": "proxy:1"},
        {"name": "debug", "image": "busybox"},
    )
    patch = {"spec": {"template": {"spec": {"containers": [
        {"name": "sidecar", "image": "proxy:2"},
        {"name": "app", "env": [{"name": "B", "value": "2"}]},
        {"name": "debug", "$patch": "delete"},
    ]}}}}  # fmt: skip
    write(tmp_path, {
        "app/web.yaml": yaml.safe_dump(base),
        "app/overlays/x/web_patch.yaml": yaml.safe_dump(patch),
    })  # fmt: skip
    containers = run(tmp_path, ("x",))["Deployment/web"]["spec"]["template"]["spec"]["containers"]
    assert containers == [
        {"name": "app", "image": "app:1", "env": [{"name": "A", "value": "1"},
                                                  {"name": "B", "value": "2"}]},
        {"name": "sidecar", "image": "proxy:2"},
    ]  # fmt: skip


def test_a_custom_resource_gets_a_json_merge_patch(tmp_path: pathlib.Path) -> None:
    # the same patch on a custom resource replaces the whole list, as Fleet does
    cr = deployment("web", {"name": "app", "image": "app:1"}, {"name": "sidecar", "image": "p:1"})
    cr["apiVersion"] = "example.com/v1"
    patch = {"spec": {"template": {"spec": {"containers": [{"name": "sidecar", "image": "p:2"}]}}}}
    write(tmp_path, {
        "app/web.yaml": yaml.safe_dump(cr),
        "app/overlays/x/web_patch.yaml": yaml.safe_dump(patch),
    })  # fmt: skip
    got = run(tmp_path, ("x",))["Deployment/web"]["spec"]["template"]["spec"]["containers"]
    assert got == [{"name": "sidecar", "image": "p:2"}]


def test_a_yaml_list_is_a_json_patch(tmp_path: pathlib.Path) -> None:
    write(tmp_path, {
        "app/web.yaml": yaml.safe_dump(deployment("web", {"name": "app", "image": "app:1"})),
        "app/overlays/x/web_patch.yaml": (
            "- {op: replace, path: /spec/replicas, value: 5}\n"
            "- {op: add, path: /spec/template/spec/containers/-, value: {name: b, image: b:1}}\n"
            "- {op: add, path: /metadata/labels, value: {team~1x: a}}\n"
        ),
    })  # fmt: skip
    web = run(tmp_path, ("x",))["Deployment/web"]
    assert web["spec"]["replicas"] == 5
    assert [c["name"] for c in web["spec"]["template"]["spec"]["containers"]] == ["app", "b"]


def test_a_json_patch_that_fails_names_the_files_and_the_operation(
    tmp_path: pathlib.Path,
) -> None:
    write(tmp_path, {
        "app/web.yaml": yaml.safe_dump(deployment("web", {"name": "app", "image": "app:1"})),
        "app/overlays/x/web_patch.yaml": "- {op: remove, path: /spec/paused}\n",
    })  # fmt: skip
    assert error(tmp_path, ("x",)) == (
        "app/overlays/x/web_patch.yaml: cannot patch app/web.yaml (Deployment web) with a JSON "
        "patch (RFC 6902): operation 0 (remove /spec/paused): /spec/paused does not exist"
    )


# ------------------------------------------------------------ order


def test_overlays_apply_in_list_order_and_replacements_before_patches(
    tmp_path: pathlib.Path,
) -> None:
    write(tmp_path, {
        "app/cm.yaml": CM + "data: {a: base}\n",
        # one overlay replaces cm.yaml and patches it: the patch lands on the replacement
        "app/overlays/one/cm.yaml": CM + "data: {a: one}\n",
        "app/overlays/one/cm_patch.yaml": "data: {b: one}\n",
        "app/overlays/two/cm_patch.yaml": "data: {b: two}\n",
        # a file added by an earlier overlay can be patched by a later one
        "app/overlays/one/extra.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: extra}\n",
        "app/overlays/two/extra_patch.yaml": "data: {from: two}\n",
    })  # fmt: skip
    got = run(tmp_path, ("one", "two"))
    assert got["ConfigMap/cm"]["data"] == {"a": "one", "b": "two"}
    assert got["ConfigMap/extra"]["data"] == {"from": "two"}
    # the other way round, two's patch comes before one adds extra.yaml
    assert error(tmp_path, ("two", "one")).startswith(
        "app/overlays/two/extra_patch.yaml: patches app/extra.yaml, which does not exist"
    )


def test_top_level_yaml_overlays_come_first_for_every_target() -> None:
    text = yaml.safe_dump({
        "yaml": {"overlays": ["common"]},
        "targetCustomizations": [
            {"name": "prod", "clusterSelector": {"matchLabels": {"env": "prod"}},
             "yaml": {"overlays": ["scale3"]}},
            {"name": "dev", "clusterSelector": {"matchLabels": {"env": "dev"}}},
        ],
    })  # fmt: skip
    app = fleetyaml.apply(config.App(name="mc", repo="r", path="mc"), text)
    assert app.targets is not None
    got = {t.name: t.yaml_overlays for t in app.targets}
    assert got == {"prod": ("common", "scale3"), "dev": ("common",), "default": ("common",)}


def test_a_bad_top_level_yaml_overlays_names_the_field() -> None:
    with pytest.raises(errors.RenderError, match=r"mc/fleet.yaml: yaml.overlays: expected a list"):
        fleetyaml.apply(config.App(name="mc", repo="r", path="mc"), "yaml: {overlays: common}\n")


# ------------------------------------------------------------ several documents in one file

THREE = """\
apiVersion: v1
kind: ConfigMap
metadata: {name: a}
data: {v: '1'}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: b}
data: {v: '1'}
---
apiVersion: v1
kind: Secret
metadata: {name: a}
"""


def test_a_patch_with_kind_and_name_patches_its_document_and_keeps_the_others(
    tmp_path: pathlib.Path,
) -> None:
    write(tmp_path, {
        "app/all.yaml": THREE,
        "app/overlays/x/all_patch.yaml": "kind: ConfigMap\nmetadata: {name: b}\ndata: {v: '2'}\n",
    })  # fmt: skip
    got = run(tmp_path, ("x",))
    assert set(got) == {"ConfigMap/a", "ConfigMap/b", "Secret/a"}
    assert got["ConfigMap/a"]["data"] == {"v": "1"}
    assert got["ConfigMap/b"]["data"] == {"v": "2"}


def test_a_patch_that_cannot_say_which_document_asks_to_split_the_file(
    tmp_path: pathlib.Path,
) -> None:
    write(tmp_path, {"app/all.yaml": THREE, "app/overlays/x/all_patch.yaml": "data: {v: '2'}\n"})
    assert error(tmp_path, ("x",)).startswith(
        "app/overlays/x/all_patch.yaml: app/all.yaml holds 3 documents and the patch does not "
        "say which to patch; split the file"
    )


# ------------------------------------------------------------ errors


def test_patching_a_file_an_earlier_overlay_emptied_is_an_error(tmp_path: pathlib.Path) -> None:
    write(tmp_path, {
        "app/cm.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cm}\n",
        "app/overlays/off/cm.yaml": "",
        "app/overlays/on/cm_patch.yaml": "data: {a: b}\n",
    })  # fmt: skip
    assert error(tmp_path, ("off", "on")).startswith(
        "app/overlays/on/cm_patch.yaml: app/cm.yaml (from app/overlays/off/cm.yaml) holds no "
        "object to patch"
    )


def test_invalid_yaml_in_a_patch_names_the_patch(tmp_path: pathlib.Path) -> None:
    write(tmp_path, {
        "app/cm.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cm}\n",
        "app/overlays/x/cm_patch.yaml": "data: [unclosed\n",
    })  # fmt: skip
    assert error(tmp_path, ("x",)).startswith("app/overlays/x/cm_patch.yaml: invalid YAML")


def test_the_example_renders_the_same_from_a_copy(tmp_path: pathlib.Path) -> None:
    # the fixture is read only through the renderer's confined reader: a copy elsewhere works
    shutil.copytree(EXAMPLE, tmp_path / "app")
    got = run(tmp_path, ("servicelb", "scale3"))
    assert got["Service/frontend"]["spec"]["type"] == "LoadBalancer"


def test_a_patched_file_holds_no_yaml_aliases(tmp_path: pathlib.Path) -> None:
    # the base shares one label map by an anchor; the rendered file spells it out twice
    write(tmp_path, {
        "app/web.yaml": (
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, labels: &l {app: web}}\n"
            "spec:\n  selector: {matchLabels: *l}\n  template: {metadata: {labels: *l}}\n"
        ),
        "app/overlays/x/web_patch.yaml": "spec: {replicas: 2}\n",
    })  # fmt: skip
    app = config.App(name="app", repo="r", path="app", namespace="app")
    target = config.Target(name="t", yaml_overlays=("x",))
    rendered = render.render(
        checkout=tmp_path, refused_links=(), app=app, target=target, tools=render.Tools()
    )
    [(_, text)] = rendered.manifests
    assert "&" not in text and "*" not in text
    assert yaml.safe_load(text)["spec"]["selector"]["matchLabels"] == {"app": "web"}


def test_a_patch_that_doubles_the_object_forty_times_is_refused(tmp_path: pathlib.Path) -> None:
    # the attack: a few hundred bytes of JSON patch that would grow a ConfigMap to terabytes
    doubling = "".join("- {op: copy, from: /data, path: /data/x}\n" for _ in range(40))
    write(tmp_path, {
        "app/cm.yaml": CM + "data: {a: " + "x" * 1000 + "}\n",
        "app/overlays/x/cm_patch.yaml": doubling,
    })  # fmt: skip
    app = config.App(name="app", repo="r", path="app", namespace="app")
    with pytest.raises(errors.RenderError) as err:
        render.render(
            checkout=tmp_path, refused_links=(), app=app, tools=render.Tools(),
            target=config.Target(name="t", yaml_overlays=("x",)),
            limits=render.Limits(max_output=100_000),
        )  # fmt: skip
    assert str(err.value).startswith("app/overlays/x/cm_patch.yaml: cannot patch app/cm.yaml")
    assert "the values copied exceed 100000 characters" in str(err.value)


def test_fleet_values_templating_is_an_error_not_literal_text() -> None:
    """Fleet evaluates `${ .ClusterLabels.env }` in helm.values per cluster; fleetops renders
    per target, so the text would reach the clusters as it is: refused, naming the value."""
    app = config.App(name="shop", repo="r", path="shop")
    text = (
        "targetCustomizations:\n"
        "- name: dev\n"
        "  clusterSelector: {matchLabels: {env: dev}}\n"
        "  helm:\n"
        "    values:\n"
        "      ingress: {hosts: ['${ .ClusterName }.example.com']}\n"
    )
    with pytest.raises(errors.RenderError) as e:
        fleetyaml.apply(app, text)
    assert "shop/fleet.yaml: targetCustomizations[0].helm.values.ingress.hosts[0]" in str(e.value)
    assert "disablePreProcess" in str(e.value)
    literal = fleetyaml.apply(
        app, "helm:\n  disablePreProcess: true\n  values: {greeting: '${ not a template }'}\n"
    )
    assert literal.targets is not None
    assert literal.targets[-1].helm.values == {"greeting": "${ not a template }"}


def test_a_patch_of_aliases_to_a_big_value_is_refused_quickly(tmp_path: pathlib.Path) -> None:
    """YAML aliases are written out in full when a patched file is written: thirty aliases to a
    1 MiB scalar would have the hub spend about half a minute writing 30 MiB in-process."""
    (tmp_path / "shop/overlays/x").mkdir(parents=True)
    (tmp_path / "shop/cm.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n")
    big = "x" * (1 << 20)
    aliases = "".join(f"  a{i}: *s\n" for i in range(1, 30))
    (tmp_path / "shop/overlays/x/cm_patch.yaml").write_text(f"data:\n  a0: &s {big}\n{aliases}")
    started = time.monotonic()
    with pytest.raises(errors.RenderError) as e:
        render.render(
            checkout=tmp_path,
            refused_links=(),
            app=config.App(name="shop", repo="r", path="shop", namespace="shop"),
            target=config.Target(name="x", yaml_overlays=("x",)),
            tools=render.Tools(),
        )
    assert "shop/overlays/x/cm_patch.yaml: the patched shop/cm.yaml would be over" in str(e.value)
    assert "aliases" in str(e.value)
    assert time.monotonic() - started < 5, "the refusal itself took the time it protects"
    # a few aliases of a small value are fine
    (tmp_path / "shop/overlays/x/cm_patch.yaml").write_text(
        "data:\n  a0: &s small\n  a1: *s\n  a2: *s\n"
    )
    got = render.render(
        checkout=tmp_path,
        refused_links=(),
        app=config.App(name="shop", repo="r", path="shop", namespace="shop"),
        target=config.Target(name="x", yaml_overlays=("x",)),
        tools=render.Tools(),
    )
    (doc,) = [d for _s, text in got.manifests for d in yaml.safe_load_all(text) if d]
    assert doc["data"] == {"a0": "small", "a1": "small", "a2": "small"}
