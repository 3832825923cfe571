"""Fetching over smart HTTP with a token, from a real `git http-backend` on loopback that asks
for Basic credentials, as GitHub and GitLab do for private repositories."""

from __future__ import annotations

import base64
import http.server
import os
import pathlib
import subprocess
import threading
from collections.abc import Iterator

import pytest

from fleetops.hub import config, errors, repo
from tests.support import fleet

TOKEN = "glpat-test-token-1234"


class GitHandler(http.server.BaseHTTPRequestHandler):
    root: pathlib.Path

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def _serve(self) -> None:
        expected = "Basic " + base64.b64encode(f"x-access-token:{TOKEN}".encode()).decode()
        if self.headers.get("Authorization") != expected:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        path, _, query = self.path.partition("?")
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
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
        status = 200
        headers = []
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


@pytest.fixture
def served(tmp_path: pathlib.Path) -> Iterator[tuple[str, fleet.Repo]]:
    source = fleet.Repo.create(tmp_path / "git")
    source.write(
        "apps/web/cm.yaml", {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}}
    )
    source.commit("first")
    handler = type("Handler", (GitHandler,), {"root": source.bare.parent})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/{source.bare.name}", source
    finally:
        server.shutdown()
        server.server_close()


def test_a_token_from_the_environment_fetches_a_private_repo(
    served: tuple[str, fleet.Repo], tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, source = served
    monkeypatch.setenv("TEST_GIT_TOKEN", TOKEN)
    spec = config.Repo(name="private", url=url, branch="main", token_env="TEST_GIT_TOKEN")
    cache = repo.RepoCache(tmp_path / "cache", spec)
    assert cache.fetch() == fleet.git(source.work, "rev-parse", "HEAD")


def test_without_the_token_the_error_says_what_to_set_and_leaks_nothing(
    served: tuple[str, fleet.Repo], tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _ = served
    spec = config.Repo(name="private", url=url, branch="main")
    with pytest.raises(errors.RepoError, match="set tokenEnv or sshKeyFile"):
        repo.RepoCache(tmp_path / "a", spec).fetch()
    monkeypatch.setenv("TEST_GIT_TOKEN", "wrong-token-9876")
    wrong = config.Repo(name="private", url=url, branch="main", token_env="TEST_GIT_TOKEN")
    with pytest.raises(errors.RepoError) as err:
        repo.RepoCache(tmp_path / "b", wrong).fetch()
    assert "repo private: fetch from" in str(err.value)
    assert "wrong-token-9876" not in str(err.value)
