"""Rendering with the real helm and kustomize: overrides per target, and confinement."""

from __future__ import annotations

import pathlib
import time

import pytest
import yaml

from fleetops.hub import config, errors, render
from tests import localkube

FIXTURES = pathlib.Path(__file__).resolve().parent.parent / "fixtures"


@pytest.fixture
def tools() -> render.Tools:
    return render.Tools(helm=localkube.binary("helm"), kustomize=localkube.binary("kustomize"))


def write(root: pathlib.Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def objects(rendered: render.Rendered) -> dict[str, dict]:  # type: ignore[type-arg]
    out = {}
    for _source, text in rendered.manifests:
        for doc in yaml.safe_load_all(text):
            if doc:
                out[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return out


def app(path: str, **kw: object) -> config.App:
    return config.App(name="shop", repo="r", path=path, namespace="shop", **kw)  # type: ignore[arg-type]


def test_yaml_overlays_replace_remove_and_patch(
    tmp_path: pathlib.Path, tools: render.Tools
) -> None:
    write(tmp_path, {
        "shop/deploy.yaml": "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec: {replicas: 1, paused: false}\n",
        "shop/cm.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {level: info}\n",
        "shop/debug.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: debug}\n",
        "shop/values.yaml": "replicas: 3\n",
        "shop/fleet.yaml": "defaultNamespace: shop\n",
        "shop/overlays/prod/cm.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {level: warn}\n",
        "shop/overlays/prod/debug.yaml": "",
        "shop/overlays/prod/deploy_patch.yaml": "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec: {replicas: 3, paused: null}\n",
    })  # fmt: skip
    base = objects(
        render.render(
            checkout=tmp_path, refused_links=(), app=app("shop"), target=None, tools=tools
        )
    )
    assert set(base) == {"Deployment/web", "ConfigMap/settings", "ConfigMap/debug"}
    prod = config.Target(name="prod", yaml_overlays=("prod",))
    got = objects(
        render.render(
            checkout=tmp_path, refused_links=(), app=app("shop"), target=prod, tools=tools
        )
    )
    assert set(got) == {"Deployment/web", "ConfigMap/settings"}
    assert got["ConfigMap/settings"]["data"] == {"level": "warn"}
    assert got["Deployment/web"]["spec"] == {"replicas": 3}


def test_a_patch_whose_base_file_is_missing_is_an_error_naming_both(
    tmp_path: pathlib.Path, tools: render.Tools
) -> None:
    write(tmp_path, {
        "shop/cm.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\n",
        "shop/overlays/x/typo_patch.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: setings}\n",
    })  # fmt: skip
    with pytest.raises(errors.RenderError, match="typo_patch.yaml: patches shop/typo.yaml, which"):
        render.render(checkout=tmp_path, refused_links=(), app=app("shop"),
                      target=config.Target(name="x", yaml_overlays=("x",)), tools=tools)  # fmt: skip


def test_helm_values_files_then_inline_values(tmp_path: pathlib.Path, tools: render.Tools) -> None:
    for f in (FIXTURES / "charts/web").rglob("*"):
        if f.is_file():
            write(tmp_path, {f"chart/{f.relative_to(FIXTURES / 'charts/web')}": f.read_text()})
    write(tmp_path, {"chart/values-prod.yaml": "replicas: 5\nimage: registry.local/web:prod\n"})
    target = config.Target(name="prod", helm=config.Helm({"replicas": 7}, ("values-prod.yaml",)))
    got = objects(
        render.render(
            checkout=tmp_path, refused_links=(), app=app("chart"), target=target, tools=tools
        )
    )
    deploy = got["Deployment/shop"]
    assert deploy["spec"]["replicas"] == 7
    assert deploy["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.local/web:prod"


def test_values_files_and_kustomize_references_stay_in_the_repo(
    tmp_path: pathlib.Path, tools: render.Tools
) -> None:
    repo = tmp_path / "repo"
    (tmp_path / "outside.yaml").write_text("secret: host-file\n")
    for f in (FIXTURES / "charts/web").rglob("*"):
        if f.is_file():
            write(repo, {f"chart/{f.relative_to(FIXTURES / 'charts/web')}": f.read_text()})
    target = config.Target(name="x", helm=config.Helm({}, ("../../outside.yaml",)))
    with pytest.raises(errors.RenderError, match="resolves outside the repository"):
        render.render(checkout=repo, refused_links=(), app=app("chart"), target=target, tools=tools)
    write(repo, {"k/kustomization.yaml": "resources: [../../outside.yaml]\n"})
    with pytest.raises(errors.RenderError, match="resolves outside the repository"):
        render.render(checkout=repo, refused_links=(), app=app("k"), target=None, tools=tools)
    write(repo, {"remote/kustomization.yaml": "resources: [https://github.com/org/repo//base]\n"})
    with pytest.raises(errors.RenderError, match="remote reference .* is not allowed"):
        render.render(checkout=repo, refused_links=(), app=app("remote"), target=None, tools=tools)


def test_a_renderer_failure_is_reported_with_repo_relative_paths(
    tmp_path: pathlib.Path, tools: render.Tools
) -> None:
    write(tmp_path, {"k/kustomization.yaml": "resources: [missing.yaml]\n"})
    with pytest.raises(errors.RenderError) as err:
        render.render(checkout=tmp_path, refused_links=(), app=app("k"), target=None, tools=tools)
    assert "kustomize build failed" in str(err.value) and "missing.yaml" in str(err.value)
    assert str(tmp_path) not in str(err.value)


def test_a_renderer_over_its_memory_limit_is_stopped_with_a_clear_error(
    tools: render.Tools,
) -> None:
    small = render.Limits(max_memory=32 * 1024 * 1024)
    with pytest.raises(
        errors.RenderError, match=r"kustomize build .* its 33554432-byte memory limit; stopped"
    ):
        render.render(checkout=FIXTURES, refused_links=(), app=app("kustomize/overlays/prod"),
                      target=None, tools=tools, limits=small)  # fmt: skip


def test_a_chart_with_a_kustomize_dir_is_post_rendered_as_fleet_does(
    tmp_path: pathlib.Path, tools: render.Tools
) -> None:
    """Fleet's helm-kustomize examples: the chart renders, then the target's kustomize.dir
    patches its output (Fleet puts it first in the kustomization's resources)."""
    for f in (FIXTURES / "charts/web").rglob("*"):
        if f.is_file():
            write(tmp_path, {f"shop/{f.relative_to(FIXTURES / 'charts/web')}": f.read_text()})
    write(tmp_path, {
        "shop/overlays/prod/kustomization.yaml": "patches:\n- path: replicas.yaml\n",
        "shop/overlays/prod/replicas.yaml": "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: shop}\nspec: {replicas: 7}\n",
        "shop/overlays/plain/notes.txt": "no kustomization here\n",
    })  # fmt: skip
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    prod = config.Target(name="prod", kustomize_dir="overlays/prod")
    got = objects(
        render.render(
            checkout=tmp_path, refused_links=(), app=app("shop"), target=prod, tools=tools
        )
    )
    assert set(got) == {"Deployment/shop", "Service/shop"}, "the chart's objects were lost"
    assert got["Deployment/shop"]["spec"]["replicas"] == 7, "the kustomize.dir patch was ignored"
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before, (
        "post-rendering wrote into the checkout"
    )
    plain = config.Target(name="plain", kustomize_dir="overlays/plain")
    unchanged = objects(
        render.render(
            checkout=tmp_path, refused_links=(), app=app("shop"), target=plain, tools=tools
        )
    )
    assert unchanged["Deployment/shop"]["spec"]["replicas"] != 7
    assert set(unchanged) == {"Deployment/shop", "Service/shop"}


def test_post_render_does_not_follow_directory_links_in_the_kustomize_dir(
    tmp_path: pathlib.Path, tools: render.Tools
) -> None:
    """Two links to `.` in a kustomize.dir: following them copies the tree without end (3 GB
    in 15 s from 100 KB); the copy skips directory links and is bounded."""
    for f in (FIXTURES / "charts/web").rglob("*"):
        if f.is_file():
            write(tmp_path, {f"shop/chart/{f.relative_to(FIXTURES / 'charts/web')}": f.read_text()})
    write(tmp_path, {
        "shop/overlays/prod/kustomization.yaml": "patches:\n- path: replicas.yaml\n",
        "shop/overlays/prod/replicas.yaml": "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: shop}\nspec: {replicas: 7}\n",
        "shop/overlays/prod/filler.txt": "x" * 100_000,
    })  # fmt: skip
    for link in ("l1", "l2", "l3"):
        (tmp_path / "shop/overlays/prod" / link).symlink_to(".")
    started = time.monotonic()
    got = objects(
        render.render(
            checkout=tmp_path,
            refused_links=(),
            app=app("shop", helm=config.Chart(chart="chart")),  # the chart copy skips overlays/
            target=config.Target(name="prod", kustomize_dir="overlays/prod"),
            tools=tools,
        )
    )
    assert got["Deployment/shop"]["spec"]["replicas"] == 7
    assert time.monotonic() - started < 20
