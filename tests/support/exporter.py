"""A Prometheus exporter served by the test process, for a real Prometheus to scrape: an HTTP
server on 127.0.0.1:0 answering /metrics in the Prometheus text format with the counters a
test sets (per cluster, per status code, ...). A counter holds still, or grows at a set rate
per second so `rate()` sees traffic. Thread-based; `close` (or leaving `serving`) stops it and
closes its socket.

    with exporter.serving() as metrics:
        metrics.requests("canary", ok=900, errors=100)  # 10% errors
        ... prometheus.running(tmp_path, targets=[metrics.address]) ...
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.server
import math
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

Labels = tuple[tuple[str, str], ...]


@dataclasses.dataclass
class _Series:
    value: float
    per_second: float
    since: float  # time.monotonic() when set

    def now(self) -> float:
        return self.value + self.per_second * (time.monotonic() - self.since)


class Exporter:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._series: dict[str, dict[Labels, _Series]] = {}
        self.scrapes = 0  # /metrics answers served
        exporter = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404)
                    return
                body = exporter.render().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                with exporter._lock:
                    exporter.scrapes += 1

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        """host:port, as a Prometheus scrape target."""
        return f"127.0.0.1:{self._server.server_address[1]}"

    def set(
        self,
        metric: str,
        labels: Mapping[str, str],
        value: float,
        *,
        per_second: float = 0.0,
    ) -> None:
        """The series `metric{labels}` is `value` now and grows by `per_second` from now."""
        key = tuple(sorted(labels.items()))
        with self._lock:
            self._series.setdefault(metric, {})[key] = _Series(value, per_second, time.monotonic())

    def remove(self, metric: str, labels: Mapping[str, str]) -> None:
        """The series is no longer served (Prometheus marks it stale on its next scrape)."""
        with self._lock:
            self._series.get(metric, {}).pop(tuple(sorted(labels.items())), None)

    def requests(
        self,
        cluster: str,
        *,
        ok: float,
        errors: float,
        per_second: bool = False,
        metric: str = "http_requests_total",
    ) -> None:
        """`metric{cluster=..., code="200"}` = ok and `code="500"` = errors; with
        `per_second`, the two numbers are rates the counters grow at from zero."""
        for code, n in (("200", ok), ("500", errors)):
            labels = {"cluster": cluster, "code": code}
            if per_second:
                self.set(metric, labels, 0.0, per_second=n)
            else:
                self.set(metric, labels, n)

    def render(self) -> str:
        """The text exposition format of every series, as served."""
        lines: list[str] = []
        with self._lock:
            for metric, series in sorted(self._series.items()):
                lines.append(f"# TYPE {metric} counter")
                for labels, s in sorted(series.items()):
                    inside = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
                    lines.append(f"{metric}{{{inside}}} {_number(s.now())}")
        return "\n".join(lines) + "\n"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


@contextlib.contextmanager
def serving() -> Iterator[Exporter]:
    exporter = Exporter()
    try:
        yield exporter
    finally:
        exporter.close()
