"""A repository committer tries to read the hub's own files through symlinks, and fails.

Each test is the hostile commit: a real Git repository, fetched and checked out by the hub's
RepoCache next to a hub data directory holding a CA key and a token, then rendered with the
real helm and kustomize. Where a test is parametrised over `source`, "checkout" is the hub's
path (repo.py's realpath sweep, then render.py) and "tree" renders the committer's work tree
directly, so render.py's own checks are all that stands in the way.
"""

from __future__ import annotations

import os
import pathlib
import stat
import tempfile

import pytest

from fleetops.hub import config, errors, render, repo
from tests import localkube
from tests.support import hostile

CM = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: %s}\ndata: {k: v}\n"
CHART = "apiVersion: v2\nname: web\nversion: 0.1.0\n"
FILES_GET = (
    "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: files}\ndata:\n"
    '  key: {{ .Files.Get "files/key.txt" | quote }}\n'
)
FILES_GLOB = (
    "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: files}\ndata:\n"
    '{{- range $path, $_ := .Files.Glob "files/**" }}\n'
    "  {{ base $path }}: {{ $.Files.Get $path | quote }}\n"
    "{{- end }}\n"
)


@pytest.fixture
def tools() -> render.Tools:
    return render.Tools(helm=localkube.binary("helm"), kustomize=localkube.binary("kustomize"))


@pytest.fixture
def data(tmp_path: pathlib.Path) -> pathlib.Path:
    return hostile.hub_data(tmp_path)


@pytest.fixture
def committer(tmp_path: pathlib.Path) -> hostile.Repo:
    r = hostile.Repo(tmp_path / "committer")
    r.link("d/l", hostile.root_hop("d/l"))  # lexically harmless: it points at the repo root
    r.write("apps/other/cm.yaml", CM % "other")
    return r


def app(path: str) -> config.App:
    return config.App(name="shop", repo="platform", path=path, namespace="shop")


def render_it(
    committer: hostile.Repo, data: pathlib.Path, tools: render.Tools, path: str, source: str
) -> render.Rendered:
    committer.commit()
    if source == "checkout":
        co = committer.checkout(data)
        root, refused = co.root, co.refused_links
    else:
        root, refused = committer.work, ()
    return render.render(
        checkout=root, refused_links=refused, app=app(path), target=None, tools=tools
    )


def refused(
    committer: hostile.Repo, data: pathlib.Path, tools: render.Tools, path: str, source: str
) -> str:
    with pytest.raises(errors.RenderError) as err:
        render_it(committer, data, tools, path, source)
    message = str(err.value)
    assert hostile.SECRET not in message
    return message


def hub_paths(data: pathlib.Path) -> list[str]:
    paths = {str(data), os.path.realpath(data), tempfile.gettempdir() + "/"}
    return sorted(paths | {str(repo.process_work_dir())})


# ------------------------------------------------------------------ plain YAML


@pytest.mark.parametrize("source", ["checkout", "tree"])
def test_a_symlink_chain_in_a_plain_yaml_app_is_a_render_error_naming_the_link(
    committer: hostile.Repo, data: pathlib.Path, tools: render.Tools, source: str
) -> None:
    committer.write("apps/web/cm.yaml", CM % "web")
    leak = "apps/web/leak.yaml"
    committer.link(leak, hostile.chain_to(leak, "d/l", data / "ca.key"))
    message = refused(committer, data, tools, "apps/web", source)
    assert "'apps/web/leak.yaml'" in message and "outside the repository" in message


def test_a_symlink_chain_leaves_no_hub_file_in_the_checkout(
    committer: hostile.Repo, data: pathlib.Path
) -> None:
    leak = "apps/web/leak.yaml"
    committer.link(leak, hostile.chain_to(leak, "d/l", data / "ca.key"))
    committer.link("apps/web/token", hostile.chain_to("apps/web/token", "d/l", data / "tokens"))
    committer.commit()
    co = committer.checkout(data)
    assert set(co.refused_links) >= {"apps/web/leak.yaml", "apps/web/token"}
    assert not os.path.lexists(co.root / "apps/web/token")
    for dirpath, _dirs, files in os.walk(co.root):
        for name in files:
            path = pathlib.Path(dirpath, name)
            if path.is_file():  # follows a symlink to a file
                assert hostile.SECRET not in path.read_text(errors="replace"), path


def test_the_other_apps_of_a_hostile_commit_still_render(
    committer: hostile.Repo, data: pathlib.Path, tools: render.Tools
) -> None:
    leak = "apps/web/leak.yaml"
    committer.link(leak, hostile.chain_to(leak, "d/l", data / "ca.key"))
    got = render_it(committer, data, tools, "apps/other", "checkout")
    assert [source for source, _ in got.manifests] == ["cm.yaml"]


@pytest.mark.parametrize("source", ["checkout", "tree"])
def test_an_absolute_symlink_is_refused(
    committer: hostile.Repo, data: pathlib.Path, tools: render.Tools, source: str
) -> None:
    committer.write("apps/web/cm.yaml", CM % "web")
    committer.link("apps/web/key.yaml", str(data / "ca.key"))
    message = refused(committer, data, tools, "apps/web", source)
    assert "'apps/web/key.yaml'" in message


@pytest.mark.parametrize("source", ["checkout", "tree"])
def test_a_symlink_to_a_directory_outside_is_refused(
    committer: hostile.Repo, data: pathlib.Path, tools: render.Tools, source: str
) -> None:
    committer.write("apps/web/cm.yaml", CM % "web")
    committer.link("apps/web/hub", hostile.chain_to("apps/web/hub", "d/l", data))
    message = refused(committer, data, tools, "apps/web", source)
    assert "'apps/web/hub'" in message


def test_a_symlink_inside_the_repo_still_renders(
    committer: hostile.Repo, data: pathlib.Path, tools: render.Tools
) -> None:
    committer.write("common/shared.yaml", CM % "shared")
    committer.link("apps/web/shared.yaml", "../../common/shared.yaml")
    got = render_it(committer, data, tools, "apps/web", "checkout")
    assert dict(got.manifests) == {"shared.yaml": CM % "shared"}


# ------------------------------------------------------------------ Helm


def chart(committer: hostile.Repo, template: str) -> None:
    committer.write("apps/chart/Chart.yaml", CHART)
    committer.write("apps/chart/templates/cm.yaml", template)


@pytest.mark.parametrize("source", ["checkout", "tree"])
def test_helm_files_get_on_a_symlink_chain_is_refused(
    committer: hostile.Repo, data: pathlib.Path, tools: render.Tools, source: str
) -> None:
    chart(committer, FILES_GET)
    key = "apps/chart/files/key.txt"
    committer.link(key, hostile.chain_to(key, "d/l", data / "ca.key"))
    message = refused(committer, data, tools, "apps/chart", source)
    assert "'apps/chart/files/key.txt'" in message


@pytest.mark.parametrize("source", ["checkout", "tree"])
def test_helm_files_glob_over_a_directory_outside_is_refused(
    committer: hostile.Repo, data: pathlib.Path, tools: render.Tools, source: str
) -> None:
    chart(committer, FILES_GLOB)
    committer.write("apps/chart/files/readme.txt", "hello\n")
    hub = "apps/chart/files/hub"
    committer.link(hub, hostile.chain_to(hub, "d/l", data))
    message = refused(committer, data, tools, "apps/chart", source)
    assert "'apps/chart/files/hub'" in message


def test_helm_files_get_on_a_symlink_inside_the_repo_still_works(
    committer: hostile.Repo, data: pathlib.Path, tools: render.Tools
) -> None:
    chart(committer, FILES_GET)
    committer.write("common/key.txt", "public-value")
    committer.link("apps/chart/files/key.txt", "../../../common/key.txt")
    got = render_it(committer, data, tools, "apps/chart", "checkout")
    assert 'key: "public-value"' in got.manifests[0][1]


def test_a_chart_symlink_loop_is_refused(
    committer: hostile.Repo, data: pathlib.Path, tools: render.Tools
) -> None:
    chart(committer, CM % "web")
    committer.link("apps/chart/files/again", "..")
    message = refused(committer, data, tools, "apps/chart", "checkout")
    assert "'apps/chart/files/again'" in message and "loop" in message


def test_helm_errors_name_repo_paths_never_the_hubs(
    committer: hostile.Repo, data: pathlib.Path, tools: render.Tools
) -> None:
    """helm warns where each symlink of a chart resolved on disk; the hub renders a copy
    with no symlinks, so that warning (and any other hub path) never reaches the user."""
    chart(committer, '{{ fail "replicas must be set" }}\n')
    committer.write("common/key.txt", "public-value")
    committer.link("apps/chart/files/key.txt", "../../../common/key.txt")
    committer.write("apps/chart/values.yaml", "replicas: null\n")
    committer.commit()
    co = committer.checkout(data)
    with pytest.raises(errors.RenderError) as err:
        render.render(
            checkout=co.root, refused_links=co.refused_links, app=app("apps/chart"),
            target=None, tools=tools,
        )  # fmt: skip
    message = str(err.value)
    assert "replicas must be set" in message
    assert "resolves to" not in message and "symbolic link" not in message
    for path in [*hub_paths(data), str(co.root), os.path.realpath(co.root)]:
        assert path not in message, f"{path} in {message!r}"


# ------------------------------------------------------------------ Kustomize


@pytest.mark.parametrize("source", ["checkout", "tree"])
def test_a_kustomize_resource_that_links_out_is_refused(
    committer: hostile.Repo, data: pathlib.Path, tools: render.Tools, source: str
) -> None:
    committer.write("apps/k/kustomization.yaml", "resources: [cm.yaml, key.yaml]\n")
    committer.write("apps/k/cm.yaml", CM % "web")
    committer.link("apps/k/key.yaml", hostile.chain_to("apps/k/key.yaml", "d/l", data / "ca.key"))
    message = refused(committer, data, tools, "apps/k", source)
    assert "'apps/k/key.yaml'" in message


def test_a_kustomize_base_linked_inside_the_repo_still_builds(
    committer: hostile.Repo, data: pathlib.Path, tools: render.Tools
) -> None:
    committer.write("apps/k/kustomization.yaml", "resources: [base]\n")
    committer.write("common/base/kustomization.yaml", "resources: [cm.yaml]\n")
    committer.write("common/base/cm.yaml", CM % "shared")
    committer.link("apps/k/base", "../../common/base")
    got = render_it(committer, data, tools, "apps/k", "checkout")
    assert "name: shared" in got.manifests[0][1]


# ------------------------------------------------------------------ where checkouts live


def test_checkouts_live_outside_the_hub_data_directory(
    committer: hostile.Repo, data: pathlib.Path
) -> None:
    committer.write("apps/web/cm.yaml", CM % "web")
    committer.commit()
    co = committer.checkout(data)
    assert not co.root.resolve().is_relative_to(data.resolve())
    assert stat.S_IMODE(repo.process_work_dir().stat().st_mode) == 0o700


def test_checkouts_go_where_the_work_keyword_says(
    committer: hostile.Repo, data: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    committer.write("apps/web/cm.yaml", CM % "web")
    sha = committer.commit()
    co = committer.checkout(data, work=tmp_path / "work")
    assert co.root == tmp_path / "work" / "platform" / sha
    assert stat.S_IMODE((tmp_path / "work").stat().st_mode) == 0o700


def test_a_symlink_loop_in_a_plain_yaml_app_is_a_render_error(
    committer: hostile.Repo, data: pathlib.Path, tools: render.Tools
) -> None:
    committer.write("apps/web/cm.yaml", CM % "web")
    committer.link("apps/web/a.yaml", "b.yaml")
    committer.link("apps/web/b.yaml", "a.yaml")
    message = refused(committer, data, tools, "apps/web", "checkout")
    assert "'apps/web/a.yaml' is a loop" in message


def test_a_hand_made_tree_entry_named_dotdot_writes_nothing_outside_the_checkout(
    committer: hostile.Repo, data: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    hostile.commit_escaping_tree(committer, "planted.yaml", CM % "planted", levels=3)
    co = committer.checkout(data, work=tmp_path / "work")
    assert ".." in co.refused_links
    planted = [p for p in tmp_path.rglob("planted.yaml") if not p.is_relative_to(committer.work)]
    assert planted == []
