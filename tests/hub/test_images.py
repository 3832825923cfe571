"""Image automation in a running hub: a real registry (Debian's docker-registry, images pushed
over the distribution API), a real Git repository with Flux setter markers, and the hub's own
loop scanning, choosing and committing. No clusters: what is checked here is the commit (one
per change, author, only the marked line), that the hub follows it at once, status, errors, and
that a tag whose rollout was aborted is never proposed again (tests/e2e/test_images.py rolls
the commits out to real clusters)."""

from __future__ import annotations

import pathlib

from tests.support import fleet, hubproc, wait
from tests.support import registry as registrypush
from tests.support.imagefleet import (
    app_repo,
    deploy_yaml,
    docker_config,
    hub_config,
    push,
    rolling,
    status,
)
from tests.support.imagefleet import log as imagefleet_log

README = "image: {host}/team/web:1.0.0 # not under apps/, never touched\n"


def log(repo: fleet.Repo) -> list[str]:
    return imagefleet_log(repo, author=True)


async def test_the_newest_stable_tag_is_committed_once_and_the_hub_follows_it(
    tmp_path: pathlib.Path, reg: registrypush.OciRegistry
) -> None:
    push(reg, "1.0.0", "1.1.0", "1.10.0", "1.2.0-rc.1")
    repo = app_repo(tmp_path, reg.host, also={"README.md": README.format(host=reg.host)})
    first = fleet.git(repo.work, "rev-parse", "HEAD")
    async with hubproc.running(tmp_path / "hub", hub_config(repo, reg.host)) as proc:
        await wait.until("an image commit", lambda: len(log(repo)) == 2)
        sha, who = log(repo)[0].split(" ", 1)
        web = f"{reg.host}/team/web"
        subject = f"images: apps/web/deploy.yaml: {web}:1.0.0 -> {web}:1.10.0"
        assert who == f"fleetops-bot <bot@example.com> {subject}"
        diff = fleet.git(repo.work, "diff", first, sha)
        changed = [x for x in diff.splitlines() if x[:1] in "+-" and x[:3] not in ("+++", "---")]
        marker = '# {"$imagepolicy": "flux-system:web-stable"}'
        assert changed == [
            f"-          image: {web}:1.0.0 {marker}",
            f"+          image: {web}:1.10.0 {marker}",
        ]
        # the hub fetches its own commit at once (the repo polls hourly here)
        await wait.until("the hub at the image commit", lambda: proc.hub.heads["platform"] == sha)
        st = status(proc)
        (repository,) = st.repositories
        assert (repository.tags, repository.error) == (4, "")
        (policy,) = st.policies
        assert (policy.latest, policy.considered) == ("1.10.0", 4)
        (update,) = st.updates
        assert update.last_commit == sha
        assert update.last_changes == [f"apps/web/deploy.yaml: {web}:1.0.0 -> {web}:1.10.0"]
        history = await proc.hub.history(app="web", cluster="", limit=20)
        assert any(e.kind == "image-update" and e.revision == sha for e in history)

        # a new tag: one more commit
        push(reg, "1.11.0", "2.0.0")
        proc.hub.scan_images("web")
        await wait.until("a second image commit", lambda: len(log(repo)) == 3)
        assert log(repo)[0].endswith(f"{web}:1.10.0 -> {web}:1.11.0")
        # nothing new: scanning again commits nothing
        scanned = status(proc).repositories[0].last_scan
        proc.hub.scan_images()
        await wait.until("another scan", lambda: status(proc).repositories[0].last_scan > scanned)
        await wait.until("the update ran", lambda: status(proc).updates[0].error == "")
        assert len(log(repo)) == 3
    readme = (repo.work / "README.md").read_text()
    assert "1.0.0" in readme and "1.1" not in readme


async def test_two_repositories_found_at_start_make_one_commit(
    tmp_path: pathlib.Path, reg: registrypush.OciRegistry
) -> None:
    push(reg, "1.0.0", "1.5.0")
    registrypush.push_image(f"http://{reg.host}", "team/side", "2.1.0")
    repo = fleet.Repo.create(tmp_path / "git")
    side = '# {"$imagepolicy": "flux-system:side-stable"}'
    repo.write(
        "apps/web/deploy.yaml",
        deploy_yaml(reg.host).replace("side:2.0.0", f"side:2.0.0 {side}"),
    )
    repo.commit("web and side")
    cfg = hub_config(repo, reg.host)
    cfg["imageRepositories"].append({"name": "side", "image": f"{reg.host}/team/side"})
    cfg["imagePolicies"].append(
        {"name": "side-stable", "repository": "side", "policy": {"semver": {"range": "2.x"}}}
    )
    async with hubproc.running(tmp_path / "hub", cfg) as proc:
        await wait.until("an image commit", lambda: len(log(repo)) == 2)
        await wait.until("the hub at it", lambda: proc.hub.heads["platform"] == log(repo)[0][:40])
        assert len(log(repo)) == 2
    text = (repo.work / "apps/web/deploy.yaml").read_text()
    fleet.git(repo.work, "pull", "-q", "--ff-only", "origin", "main")
    text = (repo.work / "apps/web/deploy.yaml").read_text()
    assert "team/web:1.5.0" in text and "team/side:2.1.0" in text


async def test_a_concurrent_commit_is_kept_and_the_update_lands_on_top(
    tmp_path: pathlib.Path, reg: registrypush.OciRegistry
) -> None:
    push(reg, "1.0.0")
    repo = app_repo(tmp_path, reg.host)
    async with hubproc.running(tmp_path / "hub", hub_config(repo, reg.host)) as proc:
        await wait.until("the first scan", lambda: status(proc).policies[0].latest == "1.0.0")
        # someone else pushes while the hub's image update cache is behind
        repo.write("apps/web/extra.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
        theirs = repo.commit("a colleague's change")
        push(reg, "1.3.0")
        proc.hub.scan_images()
        await wait.until("the image commit", lambda: len(log(repo)) == 3)
        sha = log(repo)[0].split()[0]
        assert fleet.git(repo.work, "rev-parse", f"{sha}^") == theirs
        await wait.until("the hub at it", lambda: proc.hub.heads["platform"] == sha)


async def test_an_aborted_rollout_rejects_its_tag_and_git_goes_back_to_the_last_good_one(
    tmp_path: pathlib.Path, reg: registrypush.OciRegistry
) -> None:
    push(reg, "1.0.0", "1.1.0")
    repo = app_repo(tmp_path, reg.host)
    cfg = hub_config(repo, reg.host, canary=True)
    async with hubproc.running(tmp_path / "hub", cfg) as proc:
        await proc.agent("c1")  # registered: the rollout has a cluster to wait for
        await wait.until("commit of 1.1.0", lambda: len(log(repo)) == 2)
        push(reg, "1.2.0")
        proc.hub.scan_images()
        await wait.until("commit of 1.2.0", lambda: len(log(repo)) == 3)
        bad = log(repo)[0].split()[0]
        await wait.until("its rollout", lambda: rolling(proc) == bad)
        await proc.hub.rollout_action(app="web", action="abort", actor="test")
        # 1.2.0 is rejected: the policy proposes 1.1.0 again, and Git says so
        await wait.until("the commit back to 1.1.0", lambda: len(log(repo)) == 4)
        assert log(repo)[0].endswith("web:1.2.0 -> " + f"{reg.host}/team/web:1.1.0")
        st = status(proc).policies[0]
        assert (st.latest, st.rejected_tags) == ("1.1.0", ["1.2.0"])
        # across a restart, and with a newer scan, 1.2.0 stays rejected
        await proc.restart()
        chosen = await wait.until(
            "a scan after the restart",
            lambda: [p.latest for p in status(proc).policies if p.latest],
        )
        assert chosen == ["1.1.0"]
        push(reg, "1.3.0")
        proc.hub.scan_images()
        await wait.until("commit of 1.3.0", lambda: len(log(repo)) == 5)
        assert log(repo)[0].endswith("web:1.1.0 -> " + f"{reg.host}/team/web:1.3.0")


async def test_htpasswd_auth_and_a_wrong_password_is_a_clear_per_repository_error(
    tmp_path: pathlib.Path,
) -> None:
    with registrypush.registry_server(tmp_path / "reg", auth="fleet:s3cret-pw") as server:
        push(server, "1.0.0", "1.4.0", auth="fleet:s3cret-pw")
        creds = tmp_path / "regcred.json"
        docker_config(creds, server.host, user="fleet", password="wrong-pw-123")
        repo = app_repo(tmp_path, server.host)
        cfg = hub_config(repo, server.host, auth={"dockerConfigFile": str(creds)})
        async with hubproc.running(tmp_path / "hub", cfg) as proc:
            await wait.until("a failed scan", lambda: status(proc).repositories[0].error)
            error = status(proc).repositories[0].error
            assert error.startswith("image repository web: ")
            assert str(creds) in error and "wrong-pw-123" not in error
            assert "401" in error or "denied" in error or "password" in error, error
            assert len(log(repo)) == 1
            history = await proc.hub.history(app="", cluster="", limit=20)
            assert any(e.kind == "image-scan-failed" for e in history)
            # the operator fixes the file: the next scan reads it again and commits
            docker_config(creds, server.host, user="fleet", password="s3cret-pw")
            proc.hub.scan_images("web")
            await wait.until("the image commit", lambda: len(log(repo)) == 2)
            assert status(proc).repositories[0].error == ""
            assert log(repo)[0].endswith("web:1.0.0 -> " + f"{server.host}/team/web:1.4.0")
