"""Real Helm chart sources for tests: charts packaged with `helm package`, an HTTP chart
repository (`helm repo index` served by Python's http.server on loopback, with basic auth
when asked), and an OCI registry (Debian's docker-registry on a loopback port, filesystem
storage in the test's directory, charts pushed with `helm push --plain-http`)."""

from __future__ import annotations

import base64
import contextlib
import functools
import http.server
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import tarfile
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import yaml

from tests import localkube

TEMPLATE = """apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ .Release.Name }}-{{ .Chart.Name }}
data:
  chartVersion: {{ .Chart.Version | quote }}
  greeting: {{ .Values.greeting | quote }}
"""


def helm(*args: str, home: pathlib.Path) -> str:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home)}
    return subprocess.run(
        [localkube.binary("helm"), *args],
        capture_output=True, text=True, check=True, env=env,
    ).stdout  # fmt: skip


def write_chart(
    where: pathlib.Path,
    name: str,
    version: str,
    *,
    greeting: str = "hello",
    dependencies: list[Mapping[str, Any]] | None = None,
) -> pathlib.Path:
    """A chart directory rendering one ConfigMap that says its version and greeting."""
    chart = where / name
    (chart / "templates").mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {"apiVersion": "v2", "name": name, "version": version}
    if dependencies:
        meta["dependencies"] = list(dependencies)
    (chart / "Chart.yaml").write_text(yaml.safe_dump(meta))
    (chart / "values.yaml").write_text(yaml.safe_dump({"greeting": greeting}))
    (chart / "templates" / "cm.yaml").write_text(TEMPLATE)
    return chart


def package(where: pathlib.Path, name: str, version: str, **kw: Any) -> pathlib.Path:
    """`helm package` of a chart written by `write_chart`: the .tgz path."""
    src = where / "src" / f"{name}-{version}"
    chart = write_chart(src, name, version, **kw)
    out = where / "packages"
    out.mkdir(parents=True, exist_ok=True)
    helm("package", str(chart), "--destination", str(out), home=where)
    return out / f"{name}-{version}.tgz"


def archive_without_dependencies(
    where: pathlib.Path, name: str, version: str, *, dependencies: list[Mapping[str, Any]]
) -> pathlib.Path:
    """A chart archive declaring `dependencies` it does not carry (`helm package` refuses to
    make one; some published charts are like it): written with tarfile."""
    chart = write_chart(where / "raw", name, version, dependencies=dependencies)
    out = where / "packages"
    out.mkdir(parents=True, exist_ok=True)
    tgz = out / f"{name}-{version}.tgz"
    with tarfile.open(tgz, "w:gz") as tar:
        tar.add(chart, arcname=name)
    return tgz


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Handler(http.server.SimpleHTTPRequestHandler):
    auth = ""  # "user:password" when the repository wants it
    redirects: dict[str, str] = {}  # per server: path -> where it went
    seen: list[str] = []  # per server: the Authorization headers received

    def do_GET(self) -> None:
        self.seen.append(self.headers.get("Authorization") or "")
        if self.auth:
            want = "Basic " + base64.b64encode(self.auth.encode()).decode()
            if self.headers.get("Authorization") != want:
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="charts"')
                self.end_headers()
                return
        if self.path in self.redirects:
            self.send_response(302)
            self.send_header("Location", self.redirects[self.path])
            self.end_headers()
            return
        super().do_GET()

    def log_message(self, format: str, *args: Any) -> None:
        pass


class HttpRepo:
    """A Helm chart repository: `publish` a packaged chart and the index is rebuilt."""

    def __init__(self, root: pathlib.Path, *, auth: str = "", port: int = 0) -> None:
        """Serving `root`/served on `port` (0: a free one; the port of a stopped repository
        brings it back with what it held)."""
        self.dir = root / "served"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.redirects: dict[str, str] = {}
        self.seen: list[str] = []
        kind = type("H", (_Handler,), {"auth": auth, "redirects": self.redirects,
                                       "seen": self.seen})  # fmt: skip
        handler = functools.partial(kind, directory=self.dir)
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self._home = root
        if not (self.dir / "index.yaml").exists():
            self.publish_index()

    def publish(self, tgz: pathlib.Path) -> None:
        shutil.copy(tgz, self.dir / tgz.name)
        self.publish_index()

    def publish_index(self) -> None:
        helm("repo", "index", str(self.dir), "--url", self.url, home=self._home)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@contextlib.contextmanager
def http_repo(root: pathlib.Path, *, auth: str = "") -> Iterator[HttpRepo]:
    repo = HttpRepo(root, auth=auth)
    try:
        yield repo
    finally:
        repo.stop()


class OciRegistry:
    """docker-registry on a free loopback port; with `auth` ("user:password") it wants
    basic auth (htpasswd, bcrypt)."""

    def __init__(self, root: pathlib.Path, *, auth: str = "") -> None:
        self.root = root
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.auth = auth
        doc: dict[str, Any] = {
            "version": 0.1,
            "storage": {"filesystem": {"rootdirectory": str(root / "blobs")}},
            "http": {"addr": self.host},
            "log": {"level": "error"},
        }
        if auth:
            user, password = auth.split(":", 1)
            line = subprocess.run(
                ["htpasswd", "-Bbn", user, password], capture_output=True, text=True, check=True
            ).stdout
            (root / "htpasswd").write_text(line)
            doc["auth"] = {"htpasswd": {"realm": "charts", "path": str(root / "htpasswd")}}
        config = root / "registry.yml"
        config.write_text(yaml.safe_dump(doc))
        self._log = (root / "registry.log").open("wb")
        self._proc = subprocess.Popen(
            ["/usr/bin/docker-registry", "serve", str(config)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                break
            if time.monotonic() > deadline or self._proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"docker-registry did not listen on {self.host}")
            time.sleep(0.05)

    def push(self, tgz: pathlib.Path, *, path: str = "charts") -> str:
        """`helm push` to oci://HOST/path; the output (which names the manifest digest)."""
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.root)}
        login = []
        if self.auth:
            token = base64.b64encode(self.auth.encode()).decode()
            cfg = self.root / "push-auth.json"
            cfg.write_text(json.dumps({"auths": {self.host: {"auth": token}}}))
            login = ["--registry-config", str(cfg)]
        done = subprocess.run(
            [localkube.binary("helm"), "push", str(tgz), f"oci://{self.host}/{path}",
             "--plain-http", *login],
            capture_output=True, text=True, check=True, env=env,
        )  # fmt: skip
        return done.stdout + done.stderr

    def stop(self) -> None:
        if self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGTERM)
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait()
        self._log.close()


@contextlib.contextmanager
def oci_registry(root: pathlib.Path, *, auth: str = "") -> Iterator[OciRegistry]:
    root.mkdir(parents=True, exist_ok=True)
    registry = OciRegistry(root, auth=auth)
    try:
        yield registry
    finally:
        registry.stop()
