"""A real Prometheus for tests: the `prometheus` binary (Debian's package, a test dependency
like helm) on a free loopback port, its config and TSDB in the test's directory, scraping the
given targets every second. `running` returns once every target has been scraped (or fails
with the server's log tail), and stops the server by its PID (terminate, wait, kill).

    with (
        exporter.serving() as metrics,
        prometheus.running(tmp_path, targets=[metrics.address]) as prom,
    ):
        metrics.requests("canary", ok=90, errors=10)
        prom.wait_for('http_requests_total{cluster="canary",code="500"} == 10')
        ... a gate with url=prom.url ...
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import socket
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from typing import Any

from tests.support import wait

INSTALL = "apt-get install prometheus"


def binary() -> str:
    """The prometheus binary; fails (never skips) naming the package when it is missing."""
    found = shutil.which("prometheus")
    if not found:
        raise RuntimeError(
            f"the prometheus binary is not on PATH; the gate tests need it: `{INSTALL}` "
            "(Debian/Ubuntu; .ci/run installs it)"
        )
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Prometheus:
    def __init__(
        self, root: pathlib.Path, *, targets: Sequence[str], scrape_interval: float = 1.0
    ) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.targets = list(targets)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = root / "prometheus.log"
        config = root / "prometheus.yml"
        every = f"{int(scrape_interval * 1000)}ms"
        # JSON is YAML: no YAML writer needed
        config.write_text(
            json.dumps(
                {
                    "global": {"scrape_interval": every, "evaluation_interval": every},
                    "scrape_configs": [
                        {
                            "job_name": "fleetops-test",
                            "scrape_interval": every,
                            "scrape_timeout": every,
                            "static_configs": [{"targets": self.targets}],
                        }
                    ],
                }
            )
        )
        self._log = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            [
                binary(),
                f"--config.file={config}",
                f"--storage.tsdb.path={root / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1h",
                "--log.level=info",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=root,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(root)},
        )
        self.pid = self._proc.pid

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no prometheus log)"
        return "prometheus log:\n" + "\n".join(text.splitlines()[-lines:])

    def alive(self) -> bool:
        return self._proc.poll() is None

    def _get(self, path: str, **params: str) -> Any:
        url = f"{self.url}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        if not self.alive():
            raise RuntimeError(
                f"prometheus (pid {self.pid}) exited with {self._proc.returncode}\n"
                + self.log_tail()
            )
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as e:
            with e:
                return json.loads(e.read())

    def wait_ready(self, *, within: float = 30.0) -> None:
        """Until Prometheus answers and has scraped every target successfully."""

        def scraped() -> bool:
            doc = self._get("/api/v1/targets", state="active")
            active = doc["data"]["activeTargets"]
            up = {t["labels"]["instance"] for t in active if t["health"] == "up"}
            return set(self.targets) <= up

        wait.until_sync(
            f"prometheus on {self.url} scraping {', '.join(self.targets) or 'nothing'}",
            scraped,
            within=within,
            every=0.1,
            retry_on=(OSError, KeyError, ValueError),
            explain=self.log_tail,
        )

    def query(self, promql: str) -> list[Any]:
        """An instant query's result (vector: list of series; scalar: [time, value])."""
        doc = self._get("/api/v1/query", query=promql)
        if doc.get("status") != "success":
            raise AssertionError(f"prometheus refused {promql!r}: {doc}")
        return list(doc["data"]["result"])

    def wait_for(self, promql: str, *, within: float = 20.0) -> list[Any]:
        """Until the instant query returns at least one series (e.g. `x == 10` once the
        new value has been scraped)."""
        return wait.until_sync(
            f"prometheus returning a series for {promql}",
            lambda: self.query(promql),
            within=within,
            every=0.1,
            retry_on=(OSError,),
            explain=self.log_tail,
        )

    def stop(self) -> None:
        """By PID: SIGTERM, wait, SIGKILL if it does not end."""
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._log.close()


@contextlib.contextmanager
def running(
    root: pathlib.Path, *, targets: Sequence[str], scrape_interval: float = 1.0
) -> Iterator[Prometheus]:
    """A Prometheus that has scraped every target once; stopped on leaving."""
    root.mkdir(parents=True, exist_ok=True)
    for attempt in range(3):  # the free port can be taken between choosing and binding
        prom = Prometheus(root / f"run{attempt}", targets=targets, scrape_interval=scrape_interval)
        try:
            prom.wait_ready()
        except BaseException:
            in_use = "address already in use" in prom.log_tail(50)
            prom.stop()
            if in_use and attempt < 2:
                continue
            raise
        break
    try:
        yield prom
    finally:
        prom.stop()
