"""Hostile trees at checkout, written as the attack: a hand-made tree that names a file twice
to write through its own link, a huge blob, a git bomb, an oversized fleet.yaml. Real Git
repositories made with git's plumbing (tests/support/hostile.py) and the hub's RepoCache."""

from __future__ import annotations

import os
import pathlib
import subprocess

import pytest

from fleetops.hub import checkout, config, errors, render, repo
from tests.support import hostile


def objects(r: hostile.Repo, kind: str, data: bytes) -> str:
    return subprocess.run(
        ["git", "-C", str(r.work), "hash-object", "-w", "-t", kind, "--literally", "--stdin"],
        input=data, capture_output=True, check=True,
    ).stdout.decode().strip()  # fmt: skip


def commit_tree(r: hostile.Repo, tree: str) -> None:
    commit = hostile.git(r.work, "commit-tree", tree, "-m", "hand-made tree")
    hostile.git(r.work, "update-ref", "refs/heads/main", commit)


def entry(mode: bytes, name: bytes, oid: str) -> bytes:
    return mode + b" " + name + b"\0" + bytes.fromhex(oid)


def test_a_tree_naming_a_file_twice_cannot_write_through_its_own_link(
    tmp_path: pathlib.Path,
) -> None:
    victim = tmp_path / "victim" / "pwned.txt"
    victim.parent.mkdir()
    r = hostile.Repo(tmp_path / "committer")
    payload = objects(r, "blob", b"written by a repo committer\n")
    up = objects(r, "tree", entry(b"120000", b"l", objects(r, "blob", b"..")))
    chain = "d/l/" + "d/l/" * 12 + "../" * 26 + str(victim)[1:]
    assert not os.path.normpath(chain).startswith("..")  # lexically inside the repo
    top = (
        entry(b"40000", b"d", up)
        + entry(b"120000", b"x", objects(r, "blob", chain.encode()))
        + entry(b"100644", b"x", payload)
    )
    commit_tree(r, objects(r, "tree", top))
    with pytest.raises(errors.RenderError, match="lists 'x' twice"):
        r.checkout(tmp_path / "data", work=tmp_path / "work")
    assert not victim.exists()


def test_a_file_over_the_blob_limit_is_refused_unread_and_named(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(checkout, "MAX_EXPORT_BLOB", 1024)
    r = hostile.Repo(tmp_path / "committer")
    r.write("apps/web/big.yaml", "#" * 4096)
    r.write("apps/web/cm.yaml", "kind: ConfigMap\n")
    r.commit()
    co = r.checkout(tmp_path / "data", work=tmp_path / "work")
    assert "apps/web/big.yaml" in co.refused_links
    assert not (co.root / "apps/web/big.yaml").exists()
    assert (co.root / "apps/web/cm.yaml").exists()


def test_a_git_bomb_is_refused_at_the_entry_limit(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(checkout, "MAX_EXPORT_ENTRIES", 5000)
    r = hostile.Repo(tmp_path / "committer")
    tree = objects(r, "tree", entry(b"100644", b"f", objects(r, "blob", b"x")))
    for _ in range(5):  # 10**5 files from a few hundred bytes of objects
        tree = objects(
            r, "tree", b"".join(entry(b"40000", str(i).encode(), tree) for i in range(10))
        )
    commit_tree(r, tree)
    with pytest.raises(errors.RenderError, match="more than 5000 entries"):
        r.checkout(tmp_path / "data", work=tmp_path / "work")
    assert sum(1 for _ in (tmp_path / "work").rglob("*")) < 6000


def test_a_checkout_over_the_total_size_is_refused(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(checkout, "MAX_EXPORT_BYTES", 10_000)
    r = hostile.Repo(tmp_path / "committer")
    for i in range(20):
        r.write(f"data/{i}.txt", f"{i}" + "#" * 1000)
    r.commit()
    with pytest.raises(errors.RenderError, match="more than 0 MiB of files"):
        r.checkout(tmp_path / "data", work=tmp_path / "work")


def test_an_oversized_fleet_yaml_is_refused_before_it_is_read(tmp_path: pathlib.Path) -> None:
    r = hostile.Repo(tmp_path / "committer")
    r.write("apps/web/fleet.yaml", "#" * (repo.MAX_READ + 1))
    sha = r.commit()
    cache = repo.RepoCache(
        tmp_path / "data" / "repos" / "p", config.Repo(name="p", url=r.url), work=tmp_path / "w"
    )
    cache.fetch()
    with pytest.raises(errors.RenderError, match="apps/web/fleet.yaml is .* over the 1024 KiB"):
        cache.read(sha, path="apps/web/fleet.yaml")


def test_a_plain_yaml_app_bigger_than_the_output_limit_is_refused(tmp_path: pathlib.Path) -> None:
    r = hostile.Repo(tmp_path / "committer")
    for i in range(40):  # the same big file many times, as a committer could list one blob
        r.write(f"apps/web/cm{i}.yaml", "kind: ConfigMap\ndata: {k: '" + "x" * 500 + "'}\n")
    r.commit()
    co = r.checkout(tmp_path / "data", work=tmp_path / "work")
    app = config.App(name="web", repo="platform", path="apps/web", namespace="web")
    with pytest.raises(errors.RenderError, match="over the 10000 byte limit for one bundle"):
        render.render(
            checkout=co.root, refused_links=co.refused_links, app=app, target=None,
            tools=render.Tools(), limits=render.Limits(max_output=10_000),
        )  # fmt: skip
