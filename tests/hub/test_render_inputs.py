"""What a render depended on (`Rendered.inputs`): the repo paths whose Git trees decide the
output, so the hub's render cache re-renders an app exactly when one of them changes. Real
Git repositories fetched by the hub's RepoCache, real helm and kustomize."""

from __future__ import annotations

import pathlib

import pytest

from fleetops.hub import config, confined, kustomize, render, repo
from tests import localkube
from tests.support import hostile

CM = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: %s}\ndata: {level: %s}\n"


@pytest.fixture
def tools() -> render.Tools:
    return render.Tools(helm=localkube.binary("helm"), kustomize=localkube.binary("kustomize"))


def cache_of(r: hostile.Repo, tmp_path: pathlib.Path) -> repo.RepoCache:
    spec = config.Repo(name="platform", url=r.url, branch="main")
    return repo.RepoCache(tmp_path / "data" / "platform", spec, work=tmp_path / "work")


def rendered_at(
    cache: repo.RepoCache, *, app: config.App, target: config.Target | None, tools: render.Tools
) -> tuple[str, render.Rendered]:
    sha = cache.fetch()
    co = cache.checkout(sha)
    out = render.render(
        checkout=co.root, refused_links=co.refused_links, app=app, target=target, tools=tools
    )
    return sha, out


def test_a_kustomize_base_outside_the_app_is_an_input_and_changing_it_changes_the_key(
    tmp_path: pathlib.Path, tools: render.Tools
) -> None:
    r = hostile.Repo(tmp_path / "src")
    r.write("base/kustomization.yaml", "resources: [cm.yaml]\n")
    r.write("base/cm.yaml", CM % ("settings", "info"))
    r.write("apps/shop/kustomization.yaml", "resources: [../../base]\n")
    r.write("unrelated/cm.yaml", CM % ("other", "info"))
    r.commit("first")
    cache = cache_of(r, tmp_path)
    shop = config.App(name="shop", repo="platform", path="apps/shop", namespace="shop")

    first, out = rendered_at(cache, app=shop, target=None, tools=tools)
    assert out.inputs == ("apps/shop", "base")
    key = cache.tree_key(first, list(out.inputs))
    assert "absent" not in key

    r.write("unrelated/cm.yaml", CM % ("other", "debug"))
    second = r.commit("unrelated change")
    assert cache.fetch() == second
    assert cache.tree_key(second, list(out.inputs)) == key, "an unrelated change re-renders"

    r.write("base/cm.yaml", CM % ("settings", "warn"))
    third = r.commit("base change")
    assert cache.fetch() == third
    assert cache.tree_key(third, list(out.inputs)) != key, "a base change is not noticed"


def test_a_helm_chart_link_into_the_repo_and_its_values_files_are_inputs(
    tmp_path: pathlib.Path, tools: render.Tools
) -> None:
    r = hostile.Repo(tmp_path / "src")
    r.write("apps/web/Chart.yaml", "apiVersion: v2\nname: web\nversion: 0.1.0\n")
    r.link("apps/web/templates", "../../shared/templates")
    r.write("shared/templates/cm.yaml", CM % ("web", "{{ .Values.level }}"))
    r.write("values/prod.yaml", "level: warn\n")
    r.commit()
    web = config.App(name="web", repo="platform", path="apps/web", namespace="web")
    prod = config.Target(name="prod", helm=config.Helm(values_files=("../../values/prod.yaml",)))

    _, out = rendered_at(cache_of(r, tmp_path), app=web, target=prod, tools=tools)
    assert "level: warn" in out.manifests[0][1]
    assert out.inputs == ("apps/web", "shared/templates", "values/prod.yaml")


def test_plain_yaml_reads_only_its_directory_and_what_its_links_stand_for(
    tmp_path: pathlib.Path, tools: render.Tools
) -> None:
    r = hostile.Repo(tmp_path / "src")
    r.write("apps/api/cm.yaml", CM % ("api", "info"))
    r.link("apps/api/ns.yaml", "../../common/ns.yaml")
    r.write("common/ns.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: api}\n")
    r.write("common/other.yaml", CM % ("other", "info"))
    r.commit()
    api = config.App(name="api", repo="platform", path="apps/api", namespace="api")

    _, out = rendered_at(cache_of(r, tmp_path), app=api, target=None, tools=tools)
    assert [source for source, _ in out.manifests] == ["cm.yaml", "ns.yaml"]
    assert out.inputs == ("apps/api", "common/ns.yaml")


def test_the_kustomize_walk_answers_what_inputs_carry(
    tmp_path: pathlib.Path, tools: render.Tools
) -> None:
    r = hostile.Repo(tmp_path / "src")
    r.write("base/kustomization.yaml", "resources: [cm.yaml]\n")
    r.write("base/cm.yaml", CM % ("settings", "info"))
    r.write("apps/shop/kustomization.yaml", "resources: [../../base]\n")
    r.commit()
    cache = cache_of(r, tmp_path)
    shop = config.App(name="shop", repo="platform", path="apps/shop", namespace="shop")
    _, out = rendered_at(cache, app=shop, target=None, tools=tools)

    co = cache.checkout(cache.fetch())
    root = co.root.resolve()
    src = confined.Source.of(root, refused_links=co.refused_links, limits=confined.DEFAULT_LIMITS)
    walked = kustomize.referenced_dirs(src, start=(root / "apps/shop").resolve())
    assert {str(p.relative_to(root)) for p in walked} == set(out.inputs)
