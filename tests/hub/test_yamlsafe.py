"""A repository committer (or whoever edits hub.yaml) sends a YAML alias bomb; it is refused
with an error naming the file, and legitimate anchors still load.

The bomb is the 9-level billion laughs (about 400 bytes standing for 10**9 strings). Every
call that parses one runs under `hostile.within`: a bomb that got through would hang or
exhaust memory, and the guard turns that into a failure. Timings are not asserted here; the
loader's speed is measured by tests/bench.
"""

from __future__ import annotations

import pathlib

import pytest
import yaml

from fleetops.hub import config, errors, fleetyaml, render
from fleetops.proto import yamlsafe
from tests import localkube
from tests.support import hostile

GUARD = 30.0  # seconds; a refused bomb takes microseconds
CM = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: %s}\n"


@pytest.fixture
def tools() -> render.Tools:
    return render.Tools(helm=localkube.binary("helm"), kustomize=localkube.binary("kustomize"))


def render_error(
    tmp_path: pathlib.Path, files: dict[str, str], path: str, tools: render.Tools
) -> str:
    committer = hostile.Repo(tmp_path / "committer")
    for rel, text in files.items():
        committer.write(rel, text)
    committer.commit()
    co = committer.checkout(tmp_path / "data")
    app = config.App(name="shop", repo="platform", path=path, namespace="shop")
    with pytest.raises(errors.RenderError) as err:
        hostile.within(
            GUARD,
            f"rendering {path}",
            lambda: render.render(
                checkout=co.root,
                refused_links=co.refused_links,
                app=app,
                target=None,
                tools=tools,
            ),  # fmt: skip
        )
    return str(err.value)


# ------------------------------------------------------------------ the hub's files


def test_a_bomb_in_fleet_yaml_is_a_render_error_naming_the_file() -> None:
    app = config.App(name="shop", repo="platform", path="apps/web", namespace="shop")
    with pytest.raises(errors.RenderError) as err:
        hostile.within(GUARD, "fleet.yaml", lambda: fleetyaml.apply(app, hostile.bomb()))
    assert str(err.value).startswith("apps/web/fleet.yaml: invalid YAML: line ")
    assert "alias" in str(err.value)


def test_a_bomb_in_a_plain_manifest_is_a_render_error_naming_the_file(
    tmp_path: pathlib.Path, tools: render.Tools
) -> None:
    files = {"apps/web/cm.yaml": CM % "web", "apps/web/bomb.yaml": hostile.bomb()}
    message = render_error(tmp_path, files, "apps/web", tools)
    assert message.startswith("apps/web/bomb.yaml:") and "YAML refused" in message


def test_a_bomb_in_a_yaml_overlay_patch_is_a_render_error_naming_the_file(
    tmp_path: pathlib.Path,
) -> None:
    root = tmp_path / "repo"
    (root / "apps/web/overlays/prod").mkdir(parents=True)
    (root / "apps/web/cm.yaml").write_text(CM % "web")
    (root / "apps/web/overlays/prod/cm_patch.yaml").write_text(hostile.bomb())
    app = config.App(name="shop", repo="platform", path="apps/web", namespace="shop")
    prod = config.Target(name="prod", yaml_overlays=("prod",))
    with pytest.raises(errors.RenderError) as err:
        hostile.within(
            GUARD,
            "rendering the overlay",
            lambda: render.render(
                checkout=root, refused_links=(), app=app, target=prod, tools=render.Tools()
            ),
        )
    assert str(err.value).startswith("apps/web/overlays/prod/cm_patch.yaml:")


def test_a_bomb_in_kustomization_yaml_is_a_render_error_naming_the_file(
    tmp_path: pathlib.Path, tools: render.Tools
) -> None:
    files = {"apps/k/kustomization.yaml": hostile.bomb() + "resources: [cm.yaml]\n",
             "apps/k/cm.yaml": CM % "web"}  # fmt: skip
    message = render_error(tmp_path, files, "apps/k", tools)
    assert message.startswith("apps/k/kustomization.yaml:") and "alias" in message


def test_a_bomb_in_a_kustomize_resource_is_a_render_error_naming_the_file(
    tmp_path: pathlib.Path, tools: render.Tools
) -> None:
    files = {"apps/k/kustomization.yaml": "resources: [bomb.yaml]\n",
             "apps/k/bomb.yaml": hostile.bomb()}  # fmt: skip
    message = render_error(tmp_path, files, "apps/k", tools)
    assert message.startswith("apps/k/bomb.yaml:") and "alias" in message


def test_a_bomb_in_helm_values_is_a_render_error_naming_the_file(
    tmp_path: pathlib.Path, tools: render.Tools
) -> None:
    files = {"apps/chart/Chart.yaml": "apiVersion: v2\nname: web\nversion: 0.1.0\n",
             "apps/chart/values.yaml": hostile.bomb(),
             "apps/chart/templates/cm.yaml": CM % "web"}  # fmt: skip
    message = render_error(tmp_path, files, "apps/chart", tools)
    assert message.startswith("apps/chart/values.yaml:") and "alias" in message


def test_a_bomb_in_hub_yaml_is_a_config_error_naming_the_file_and_line() -> None:
    text = "repos: []\n" + hostile.bomb()
    with pytest.raises(errors.ConfigError) as err:
        hostile.within(GUARD, "hub.yaml", lambda: config.parse(text, file="hub.yaml"))
    assert str(err.value).startswith("hub.yaml: line ")
    assert "aliases are expanded" in str(err.value)


# ------------------------------------------------------------------ the loader itself


def test_the_limit_error_is_a_yaml_error_so_existing_handlers_catch_it() -> None:
    with pytest.raises(yaml.YAMLError) as err:
        hostile.within(GUARD, "load", lambda: yamlsafe.load(hostile.bomb(), source="f.yaml"))
    assert isinstance(err.value, yamlsafe.YAMLLimitError)


def test_the_limit_error_names_the_file_the_line_the_cap_and_the_fix() -> None:
    with pytest.raises(yamlsafe.YAMLLimitError) as err:
        yamlsafe.load(hostile.bomb(), source="apps/web/x.yaml")
    e = err.value
    assert (e.source, e.limit) == ("apps/web/x.yaml", "max_nodes")
    assert 1 < e.line <= 9
    assert str(e).startswith(f"apps/web/x.yaml:{e.line}: YAML refused: ")
    assert "write the values out" in str(e)


def test_many_small_aliases_are_refused_by_count() -> None:
    text = "a: &a 1\nb: [" + ", ".join(["*a"] * 101) + "]\n"
    with pytest.raises(yamlsafe.YAMLLimitError) as err:
        yamlsafe.load(text, source="f.yaml")
    assert err.value.limit == "max_aliases"


def test_deep_nesting_is_refused_by_depth() -> None:
    text = "".join(f"{'  ' * i}k:\n" for i in range(150)) + f"{'  ' * 150}leaf\n"
    with pytest.raises(yamlsafe.YAMLLimitError) as err:
        yamlsafe.load(text, source="f.yaml")
    assert (err.value.limit, err.value.line) == ("max_depth", 100)  # the 101st level


def test_very_deep_flow_nesting_is_a_yaml_error_not_a_crash() -> None:
    with pytest.raises(yaml.YAMLError):
        hostile.within(GUARD, "flow nesting", lambda: yamlsafe.load("[" * 200_000, source="f.yaml"))


def test_an_alias_counts_at_the_depth_it_stands_for() -> None:
    deep = "a: &a " + "[" * 60 + "]" * 60 + "\nb: " + "[" * 60 + "*a" + "]" * 60 + "\n"
    with pytest.raises(yamlsafe.YAMLLimitError) as err:
        yamlsafe.load(deep, source="f.yaml")
    assert err.value.limit == "max_depth"


def test_a_recursive_alias_is_refused() -> None:
    with pytest.raises(yamlsafe.YAMLLimitError) as err:
        yamlsafe.load("a: &a\n  b: *a\n", source="f.yaml")
    assert (err.value.limit, err.value.line) == ("recursion", 2)


def test_a_bomb_spread_over_many_documents_is_refused_for_the_file() -> None:
    doc = "a: &a [1,1,1,1,1,1,1,1,1,1]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]\n"
    doc += "c: [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"  # 1,000 nodes by aliases per document
    with pytest.raises(yamlsafe.YAMLLimitError) as err:
        yamlsafe.load_all("---\n".join([doc] * 1200), source="f.yaml")
    assert err.value.limit == "max_alias_nodes"


def test_input_over_the_size_cap_is_refused_unparsed() -> None:
    limits = yamlsafe.Limits(max_chars=1000)
    with pytest.raises(yamlsafe.YAMLLimitError) as err:
        yamlsafe.load_all("x: 1\n" * 1000, source="f.yaml", limits=limits)
    assert err.value.limit == "max_chars" and "split it" in str(err.value)


def test_an_integer_too_long_to_convert_is_a_yaml_error_not_a_crash() -> None:
    with pytest.raises(yaml.YAMLError):
        yamlsafe.load("n: " + "9" * 5000 + "\n", source="f.yaml")


def test_legitimate_anchors_and_merge_keys_load_as_safe_load_does() -> None:
    text = (
        "defaults: &defaults {replicas: 2, image: web:1}\n"
        "prod: {<<: *defaults, replicas: 5}\n"
        "ports: &ports [80, 443]\n"
        "copy: *ports\n"
        "---\n"
        "octal: 0o17\n"
    )
    assert yamlsafe.load_all(text, source="f.yaml") == list(yaml.safe_load_all(text))


def test_a_timestamp_stays_the_string_it_was_written_as_as_kubernetes_reads_it() -> None:
    docs = yamlsafe.load_all("when: 2024-01-02\nat: 2001-12-14t21:59:43.10-05:00\n", source="f")
    assert docs == [{"when": "2024-01-02", "at": "2001-12-14t21:59:43.10-05:00"}]


@pytest.mark.parametrize("value", ["!!binary aGk=", "!!set {a, b}"])
def test_values_json_cannot_hold_are_refused_with_the_line(value: str) -> None:
    with pytest.raises(yaml.YAMLError) as err:
        yamlsafe.load(f"kind: ConfigMap\ndata:\n  k: {value}\n", source="cm.yaml")
    assert "not supported in manifests" in str(err.value)
    assert yamlsafe.describe(err.value).startswith("line 3: ")


def test_syntax_errors_are_described_by_line_without_quoting_the_document() -> None:
    text = "apiVersion: v1\nkind: Secret\ndata:\n  password: hunter2: b\n"
    with pytest.raises(yaml.MarkedYAMLError) as err:
        yamlsafe.load(text, source="s.yaml")
    described = yamlsafe.describe(err.value)
    assert described.startswith("line 4: ") and "hunter2" not in described
