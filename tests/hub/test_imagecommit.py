"""Image updates committed to real Git repositories and pushed fast-forward only.

Each test makes a bare "remote" in a temp dir (served over file:// or by `git http-backend`
on loopback), runs `imagecommit.update` against it, and checks the result with the `git` CLI:
the one commit, its author and message, the bytes of every file, and that nobody's commit
was lost. Over HTTP the remote is a real `git receive-pack` with `receive.denyNonFastForwards`
on, so a force push would be refused by the server itself, not just avoided by us (libgit2's
file:// transport writes the remote directly and runs no hooks).
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import os
import pathlib
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest

from fleetops.hub import config, imagecommit
from tests.support import fleet

TOKEN = "glpat-push-token-5678"

BOT = imagecommit.Signature("Image Bot", "bot@example.org")

DEPLOY = b"""\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web  # the web tier
spec:
  template:
    spec:
      containers:
        - name: web
          image: reg.example.com/web:1.0.0 # {"$imagepolicy": "flux-system:web"}
        - name: side
          image: reg.example.com/side:2.0.0
"""
VALUES = (
    b"image:\r\n"
    b'  repository: reg.example.com/old-api # {"$imagepolicy": "flux-system:api:name"}\r\n'
    b'  tag: \'1.0\' # {"$imagepolicy": "flux-system:api:tag"}\r\n'
    b"replicas: 2\r\n"
)
README = b'image: reg.example.com/web:1.0.0 # {"$imagepolicy": "flux-system:web"}\n'
LATEST = {"web": "reg.example.com/web:1.1.0", "api": "reg.example.com/api:1.2"}


def write(repo: fleet.Repo, path: str, data: bytes) -> None:
    target = repo.work / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)


def blob(repo: fleet.Repo, rev: str, path: str) -> bytes:
    """A file's exact bytes at `rev` in the remote."""
    return subprocess.run(
        ["git", "cat-file", "blob", f"{rev}:{path}"], cwd=repo.bare, check=True, capture_output=True
    ).stdout


def head(repo: fleet.Repo, branch: str = "main") -> str:
    return fleet.git(repo.bare, "rev-parse", f"refs/heads/{branch}")


def is_ancestor(repo: fleet.Repo, older: str, newer: str) -> bool:
    done = subprocess.run(
        ["git", "merge-base", "--is-ancestor", older, newer], cwd=repo.bare, check=False
    )
    return done.returncode == 0


@pytest.fixture
def remote(tmp_path: pathlib.Path) -> fleet.Repo:
    repo = fleet.Repo.create(tmp_path / "remote")
    fleet.git(repo.bare, "config", "receive.denyNonFastForwards", "true")
    fleet.git(repo.bare, "config", "http.receivepack", "true")
    write(repo, "apps/web/deploy.yaml", DEPLOY)
    write(repo, "apps/api/values.yml", VALUES)
    write(repo, "apps/web/README.md", README)
    write(repo, "elsewhere/deploy.yaml", DEPLOY)
    repo.commit("apps")
    return repo


@pytest.fixture
def other(remote: fleet.Repo, tmp_path: pathlib.Path) -> pathlib.Path:
    """A second clone, as a colleague would push from."""
    work = tmp_path / "colleague"
    fleet.git(tmp_path, "clone", "-q", str(remote.bare), str(work))
    return work


def colleague_pushes(work: pathlib.Path, path: str, text: str) -> str:
    fleet.git(work, "pull", "-q", "--ff-only", "origin", "main")
    (work / path).parent.mkdir(parents=True, exist_ok=True)
    (work / path).write_text(text)
    fleet.git(work, "add", "-A")
    fleet.git(work, "commit", "-q", "-m", f"colleague: {path}")
    fleet.git(work, "push", "-q", "origin", "HEAD:main")
    return fleet.git(work, "rev-parse", "HEAD")


def run(spec: config.Repo, cache: pathlib.Path, **kwargs: object) -> imagecommit.Outcome:
    args: dict[str, object] = {
        "cache": cache,
        "branch": "main",
        "paths": ["apps"],
        "latest": LATEST,
        "author": BOT,
        "message": "",
        "deadline": time.monotonic() + 60,
    }
    args.update(kwargs)
    return imagecommit.update(spec, **args)  # type: ignore[arg-type]


class _GitHandler(http.server.BaseHTTPRequestHandler):
    """`git http-backend` (fetch and push) for requests with the token, 401 for the rest.
    Push bodies come chunked from libgit2, so they are de-chunked here."""

    root: pathlib.Path

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = b""
        while size := int(self.rfile.readline().split(b";")[0], 16):
            body += self.rfile.read(size)
            self.rfile.readline()
        self.rfile.readline()
        return body

    def _serve(self) -> None:
        expected = "Basic " + base64.b64encode(f"x-access-token:{TOKEN}".encode()).decode()
        body = self._body()
        if self.headers.get("Authorization") != expected:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        path, _, query = self.path.partition("?")
        env = {
            "PATH": os.environ["PATH"],
            "GIT_PROJECT_ROOT": str(self.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "REQUEST_METHOD": self.command,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_USER": "x-access-token",
        }
        out = subprocess.run(
            ["git", "http-backend"], input=body, env=env, capture_output=True, check=False
        ).stdout
        head, _, payload = out.partition(b"\r\n\r\n")
        status, headers = 200, []
        for line in head.decode().split("\r\n"):
            name, _, value = line.partition(": ")
            if name.lower() == "status":
                status = int(value.split()[0])
            elif name:
                headers.append((name, value))
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = _serve
    do_POST = _serve


@contextlib.contextmanager
def smart_http(root: pathlib.Path) -> Iterator[int]:
    """Smart HTTP with token auth for the repositories under `root`; yields the port."""
    handler = type("Handler", (_GitHandler,), {"root": root})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture(params=["file", "http"])
def spec(
    request: pytest.FixtureRequest, remote: fleet.Repo, monkeypatch: pytest.MonkeyPatch
) -> Iterator[config.Repo]:
    """The remote as hub.yaml names it: over file://, or over HTTP with a token (tokenEnv)."""
    if request.param == "file":
        yield config.Repo(name="apps", url=remote.url)
        return
    monkeypatch.setenv("APPS_TOKEN", TOKEN)
    with smart_http(remote.bare.parent) as port:
        url = f"http://127.0.0.1:{port}/{remote.bare.name}"
        yield config.Repo(name="apps", url=url, token_env="APPS_TOKEN")


def test_one_commit_by_the_bot_changes_only_the_marked_values(
    remote: fleet.Repo, spec: config.Repo, tmp_path: pathlib.Path
) -> None:
    before = head(remote)
    done = run(spec, tmp_path / "cache", message="images: bump\n\n{changes}\n\nby fleetops")

    assert done.commit == head(remote) and done.pushed_to == "main" and done.attempts == 1
    assert fleet.git(remote.bare, "rev-list", "--parents", "-n1", "main").split() == [
        done.commit,
        before,
    ]
    assert fleet.git(remote.bare, "log", "-1", "--format=%an <%ae>|%cn <%ce>", "main") == (
        "Image Bot <bot@example.org>|Image Bot <bot@example.org>"
    )
    assert fleet.git(remote.bare, "log", "-1", "--format=%B", "main") == (
        "images: bump\n\n"
        "apps/api/values.yml: reg.example.com/old-api -> reg.example.com/api\n"
        "apps/api/values.yml: 1.0 -> 1.2\n"
        "apps/web/deploy.yaml: reg.example.com/web:1.0.0 -> reg.example.com/web:1.1.0\n\n"
        "by fleetops"
    )
    changed = fleet.git(remote.bare, "diff", "--name-only", before, done.commit).split()
    assert changed == ["apps/api/values.yml", "apps/web/deploy.yaml"]  # not README, not elsewhere
    assert blob(remote, "main", "apps/web/deploy.yaml") == DEPLOY.replace(
        b"web:1.0.0 #", b"web:1.1.0 #"
    )
    assert blob(remote, "main", "apps/api/values.yml") == VALUES.replace(
        b"old-api #", b"api #"
    ).replace(b"'1.0'", b"'1.2'")  # CRLF and quoting kept
    assert [(c.file, c.line, c.policy, c.new) for c in done.changes] == [
        ("apps/api/values.yml", 2, "api", "reg.example.com/api"),
        ("apps/api/values.yml", 3, "api", "1.2"),
        ("apps/web/deploy.yaml", 10, "web", "reg.example.com/web:1.1.0"),
    ]
    assert done.problems == []


def test_nothing_to_change_makes_no_commit(remote: fleet.Repo, tmp_path: pathlib.Path) -> None:
    spec = config.Repo(name="apps", url=remote.url)
    first = run(spec, tmp_path / "cache")
    again = run(spec, tmp_path / "cache")
    assert again.commit == "" and again.pushed_to == "" and again.changes == []
    assert head(remote) == first.commit == again.base
    assert fleet.git(remote.bare, "rev-list", "--count", "main") == "2"


def test_a_file_named_kustomization_is_read_as_flux_reads_it(
    remote: fleet.Repo, tmp_path: pathlib.Path
) -> None:
    kust = b'images:\n  - name: web\n    newTag: 1.0.0 # {"$imagepolicy": "flux-system:web:tag"}\n'
    write(remote, "apps/web/Kustomization", kust)
    write(remote, "apps/web/Kustomization.txt", kust)  # not a name Flux reads
    remote.commit("kustomization")
    done = run(config.Repo(name="apps", url=remote.url), tmp_path / "cache")
    assert {c.file for c in done.changes} >= {"apps/web/Kustomization"}
    assert "apps/web/Kustomization.txt" not in {c.file for c in done.changes}
    assert blob(remote, done.commit, "apps/web/Kustomization") == kust.replace(b"1.0.0", b"1.1.0")


def test_the_default_message_lists_the_changes(remote: fleet.Repo, tmp_path: pathlib.Path) -> None:
    spec = config.Repo(name="apps", url=remote.url)
    run(spec, tmp_path / "cache", paths=["apps/web/deploy.yaml"])
    assert fleet.git(remote.bare, "log", "-1", "--format=%B", "main") == (
        "Update container images\n\n"
        "apps/web/deploy.yaml: reg.example.com/web:1.0.0 -> reg.example.com/web:1.1.0"
    )


def test_a_concurrent_commit_is_kept_and_ours_is_rebuilt_on_it(
    remote: fleet.Repo, other: pathlib.Path, spec: config.Repo, tmp_path: pathlib.Path
) -> None:
    theirs: list[str] = []

    def race(attempt: int) -> None:
        if attempt == 1:  # between our fetch and our push, a colleague pushes
            theirs.append(colleague_pushes(other, "apps/web/notes.yaml", "note: hello\n"))

    done = run(spec, tmp_path / "cache", race_for_tests=race)

    assert done.attempts == 2 and done.commit == head(remote)
    assert done.base == theirs[0]  # built on their commit, which survives
    assert fleet.git(remote.bare, "rev-list", "--parents", "-n1", "main").split()[1] == theirs[0]
    assert blob(remote, "main", "apps/web/notes.yaml") == b"note: hello\n"
    assert b"web:1.1.0" in blob(remote, "main", "apps/web/deploy.yaml")
    assert fleet.git(remote.bare, "rev-list", "--count", "main") == "3"


def test_a_concurrent_edit_of_the_marked_line_is_rewritten_on_top(
    remote: fleet.Repo, other: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    hand = DEPLOY.replace(b"web:1.0.0 #", b"web:1.0.5 #")
    edited = hand.decode().replace("name: web  # the web tier", "name: web  # edited by hand")

    def race(attempt: int) -> None:
        if attempt == 1:
            colleague_pushes(other, "apps/web/deploy.yaml", edited)

    spec = config.Repo(name="apps", url=remote.url)
    done = run(spec, tmp_path / "cache", paths=["apps/web"], race_for_tests=race)
    assert [(c.old, c.new) for c in done.changes] == [
        ("reg.example.com/web:1.0.5", "reg.example.com/web:1.1.0")
    ]
    assert blob(remote, "main", "apps/web/deploy.yaml") == edited.encode().replace(
        b"web:1.0.5 #", b"web:1.1.0 #"
    )  # their comment edit stays


def test_a_remote_that_keeps_moving_is_never_forced(
    remote: fleet.Repo, other: pathlib.Path, spec: config.Repo, tmp_path: pathlib.Path
) -> None:
    theirs: list[str] = []

    def race(attempt: int) -> None:
        theirs.append(colleague_pushes(other, "apps/notes.yaml", f"note: {attempt}\n"))

    with pytest.raises(imagecommit.CommitError) as caught:
        run(spec, tmp_path / "cache", attempts=3, race_for_tests=race)
    assert str(caught.value).startswith("repo apps, branch main: the push was refused on each")
    assert "3 attempts" in str(caught.value) and "next run tries again" in str(caught.value)
    assert head(remote) == theirs[-1] and len(theirs) == 3
    assert b"web:1.0.0" in blob(remote, "main", "apps/web/deploy.yaml")  # ours never landed


def test_a_new_review_branch_starts_from_the_branch(
    remote: fleet.Repo, tmp_path: pathlib.Path
) -> None:
    main = head(remote)
    spec = config.Repo(name="apps", url=remote.url)
    done = run(spec, tmp_path / "cache", push_branch="image-updates")
    assert done.pushed_to == "image-updates" and done.base == main
    assert head(remote) == main  # the branch itself is untouched
    assert head(remote, "image-updates") == done.commit
    assert fleet.git(remote.bare, "rev-parse", "image-updates^") == main


def test_a_review_branch_behind_the_branch_is_fast_forwarded(
    remote: fleet.Repo, other: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    old = head(remote)
    fleet.git(remote.bare, "branch", "image-updates", old)  # merged earlier; main moved on
    main = colleague_pushes(other, "apps/notes.yaml", "note: later\n")
    spec = config.Repo(name="apps", url=remote.url)
    done = run(spec, tmp_path / "cache", push_branch="image-updates")
    assert done.base == main
    assert fleet.git(remote.bare, "rev-parse", "image-updates^") == main
    assert is_ancestor(remote, old, "image-updates")


def test_a_review_branch_with_its_own_commits_is_built_on_not_reset(
    remote: fleet.Repo, other: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    spec = config.Repo(name="apps", url=remote.url)
    first = run(spec, tmp_path / "cache", push_branch="image-updates")
    colleague_pushes(other, "apps/notes.yaml", "note: main moved\n")

    again = run(spec, tmp_path / "cache", push_branch="image-updates")
    assert again.commit == ""  # the update is already on the review branch: no second commit

    newer = {**LATEST, "web": "reg.example.com/web:1.2.0"}
    done = run(spec, tmp_path / "cache", push_branch="image-updates", latest=newer)
    assert done.base == first.commit  # on top of the unmerged update, never a reset
    assert fleet.git(remote.bare, "rev-parse", "image-updates^") == first.commit
    assert [c.new for c in done.changes] == ["reg.example.com/web:1.2.0"]


def test_a_url_that_refuses_gives_a_clear_error_without_credentials(
    remote: fleet.Repo, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("APPS_TOKEN", "wrong-" + TOKEN)
    with smart_http(remote.bare.parent) as port:
        url = f"http://bot:s3cret-t0ken@127.0.0.1:{port}/{remote.bare.name}"
        spec = config.Repo(name="apps", url=url, token_env="APPS_TOKEN")
        with pytest.raises(imagecommit.CommitError) as caught:
            run(spec, tmp_path / "cache")
    text = str(caught.value)
    assert text.startswith(f"repo apps, branch main: fetch from http://127.0.0.1:{port}/")
    assert "check the URL and the credentials (tokenEnv" in text
    assert "s3cret" not in text and "bot:" not in text and TOKEN not in text


def test_a_push_the_server_refuses_says_so(
    remote: fleet.Repo, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hook = remote.bare / "hooks" / "pre-receive"  # run by receive-pack (not by file:// pushes)
    hook.write_text("#!/bin/sh\necho 'main is protected' >&2\nexit 1\n")
    hook.chmod(0o755)
    before = head(remote)
    monkeypatch.setenv("APPS_TOKEN", TOKEN)
    with smart_http(remote.bare.parent) as port:
        url = f"http://127.0.0.1:{port}/{remote.bare.name}"
        spec = config.Repo(name="apps", url=url, token_env="APPS_TOKEN")
        with pytest.raises(imagecommit.CommitError) as caught:
            run(spec, tmp_path / "cache")
    text = str(caught.value)
    assert text.startswith("repo apps, branch main: the server refused the push (")
    assert "pre-receive hook declined" in text
    assert "check that these credentials may push" in text
    assert head(remote) == before


def test_markers_with_problems_are_reported_and_the_rest_committed(
    remote: fleet.Repo, tmp_path: pathlib.Path
) -> None:
    write(
        remote,
        "apps/cron/job.yaml",
        b'a: reg.example.com/cron:1 # {"$imagepolicy": "flux-system:cron"}\n'
        b'b: &x reg.example.com/web:1 # {"$imagepolicy": "flux-system:web"}\n',
    )
    remote.commit("cron")
    spec = config.Repo(name="apps", url=remote.url)
    done = run(spec, tmp_path / "cache")
    assert done.commit == head(remote)
    assert [p.split(":")[0:2] for p in done.problems] == [
        ["apps/cron/job.yaml", "1 (policy cron)"],
        ["apps/cron/job.yaml", "2 (policy web)"],
    ]
    assert "no tag fits it yet" in done.problems[0] and "anchor" in done.problems[1]
    assert "apps/cron/job.yaml" not in fleet.git(
        remote.bare, "diff", "--name-only", "main^", "main"
    )


def test_a_file_over_the_cap_is_reported_not_read(
    remote: fleet.Repo, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(imagecommit, "MAX_FILE_BYTES", len(VALUES))
    spec = config.Repo(name="apps", url=remote.url)
    done = run(spec, tmp_path / "cache")
    assert {c.file for c in done.changes} == {"apps/api/values.yml"}
    assert done.problems == [
        f"apps/web/deploy.yaml: {len(DEPLOY)} bytes, over the limit of {len(VALUES)} bytes; "
        "not read (split it)"
    ]
    assert b"web:1.0.0" in blob(remote, "main", "apps/web/deploy.yaml")


def test_a_symlink_named_yaml_is_not_followed(remote: fleet.Repo, tmp_path: pathlib.Path) -> None:
    (remote.work / "apps/link.yaml").symlink_to("../elsewhere/deploy.yaml")
    remote.commit("link")
    spec = config.Repo(name="apps", url=remote.url)
    done = run(spec, tmp_path / "cache")
    assert {c.file for c in done.changes} == {"apps/api/values.yml", "apps/web/deploy.yaml"}
    assert blob(remote, "main", "elsewhere/deploy.yaml") == DEPLOY


def test_a_submodule_and_a_missing_path_are_passed_over(
    remote: fleet.Repo, tmp_path: pathlib.Path
) -> None:
    sha = head(remote)  # a gitlink: a commit of another repository, absent here
    fleet.git(remote.work, "update-index", "--add", "--cacheinfo", f"160000,{sha},apps/sub.yaml")
    fleet.git(remote.work, "commit", "-q", "-m", "submodule")
    fleet.git(remote.work, "push", "-q", "origin", "main")
    spec = config.Repo(name="apps", url=remote.url)
    done = run(spec, tmp_path / "cache", paths=["apps", "nowhere"])
    assert {c.file for c in done.changes} == {"apps/api/values.yml", "apps/web/deploy.yaml"}
    assert done.problems == ["path 'nowhere' is not in the branch; fix the paths"]
    listed = fleet.git(remote.bare, "ls-tree", "main", "apps/sub.yaml")
    assert listed.startswith(f"160000 commit {sha}")  # kept as it was in our commit


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"push_branch": "bad..name"}, "pushBranch 'bad..name' is not a valid branch name"),
        ({"paths": ["../outside"]}, "path '../outside' has '..'"),
        ({"branch": "gone"}, "no branch 'gone' at file://"),
        ({"author": imagecommit.Signature("Bot", "<x@y>")}, "author email '<x@y>' cannot"),
        ({"deadline": time.monotonic() - 1}, "the deadline passed before attempt 1 could start"),
    ],
)
def test_bad_settings_are_named(
    remote: fleet.Repo, tmp_path: pathlib.Path, kwargs: dict[str, object], says: str
) -> None:
    spec = config.Repo(name="apps", url=remote.url)
    with pytest.raises(imagecommit.CommitError, match="^repo apps, branch ") as caught:
        run(spec, tmp_path / "cache", **kwargs)
    assert says in str(caught.value)
