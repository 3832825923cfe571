"""Rollout gates measured for one cluster, against real servers: a real Prometheus (Debian's
binary) scraping a real exporter served by this process, and an HTTP server on loopback as
the webhook receiver (and, where a test needs a Prometheus that checks a bearer token, as a
fake one, named so). What a person sees is asserted: the verdict, the value and the one-line
message; that nothing is followed, leaked or waited for past the gate's timeout.
"""

from __future__ import annotations

import dataclasses
import http.server
import json
import pathlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from fleetops.hub import gates, rolloutspec
from tests.support import exporter, prometheus

REVISION = "3f1c2ab9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3"
ERROR_RATE = (
    'sum(http_requests_total{cluster="{{cluster}}",code="500"}) '
    '/ sum(http_requests_total{cluster="{{ cluster }}"})'
)
KEY = b"webhook-key-5f2e9c"


def subject(cluster: str, **kw: str) -> gates.Subject:
    return gates.Subject(
        app=kw.get("app", "shop"),
        revision=kw.get("revision", REVISION),
        cluster=cluster,
        step=kw.get("step", "canary"),
    )


def prom_gate(
    url: str, query: str = ERROR_RATE, *, passes: str = "< 0.01", **kw: Any
) -> rolloutspec.Gate:
    op, limit = passes.split()
    spec = rolloutspec.Prometheus(
        url=url, query=query, threshold=rolloutspec.Threshold(op, float(limit)), **kw
    )
    return rolloutspec.Gate("error-rate", prometheus=spec)


def hook_gate(url: str, **kw: Any) -> rolloutspec.Gate:
    return rolloutspec.Gate("smoke", webhook=rolloutspec.Webhook(url=url, **kw))


def clock() -> float:
    return 1_795_000_000.25


# -- a real Prometheus scraping a real exporter


@dataclasses.dataclass
class Monitoring:
    metrics: exporter.Exporter
    prom: prometheus.Prometheus


@pytest.fixture(scope="module")
def monitoring(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Monitoring]:
    """One Prometheus for the module (it takes seconds to scrape a first time); each test
    uses its own cluster names, so their series never meet."""
    root = tmp_path_factory.mktemp("prometheus")
    with (
        exporter.serving() as metrics,
        prometheus.running(root, targets=[metrics.address]) as prom,
    ):
        yield Monitoring(metrics, prom)


def traffic(mon: Monitoring, cluster: str, *, ok: int, errors: int) -> None:
    """Counters for the cluster, and a wait until Prometheus has scraped them."""
    mon.metrics.requests(cluster, ok=ok, errors=errors)
    mon.prom.wait_for(f'sum(http_requests_total{{cluster="{_q(cluster)}"}}) == {ok + errors}')


def _q(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


async def test_an_error_rate_of_10_percent_fails_saying_the_value_and_the_threshold(
    monitoring: Monitoring,
) -> None:
    traffic(monitoring, "c-ten", ok=90, errors=10)
    got = await gates.measure(prom_gate(monitoring.prom.url), subject("c-ten"), now=clock)
    assert got == gates.Measurement(
        gate="error-rate",
        cluster="c-ten",
        verdict="fail",
        value=0.1,
        message="error-rate = 0.1 (passes when < 0.01)",
        at=clock(),
    )


async def test_no_errors_passes(monitoring: Monitoring) -> None:
    traffic(monitoring, "c-zero", ok=250, errors=0)
    got = await gates.measure(prom_gate(monitoring.prom.url), subject("c-zero"))
    assert (got.verdict, got.value) == ("pass", 0.0)
    assert got.message == "error-rate = 0 (passes when < 0.01)"


async def test_an_error_rate_over_rate_windows_is_measured(monitoring: Monitoring) -> None:
    """The query as people write it: rates over a window of a growing counter."""
    monitoring.metrics.requests("c-rate", ok=95, errors=5, per_second=True)
    query = (
        'sum(rate(http_requests_total{cluster="{{cluster}}",code="500"}[10s])) '
        '/ sum(rate(http_requests_total{cluster="{{cluster}}"}[10s]))'
    )
    monitoring.prom.wait_for('count_over_time(http_requests_total{cluster="c-rate"}[10s]) >= 3')
    got = await gates.measure(prom_gate(monitoring.prom.url, query), subject("c-rate"))
    assert got.verdict == "fail"
    assert got.value == pytest.approx(0.05, rel=0.05)
    assert got.message.endswith("(passes when < 0.01)")


async def test_a_query_matching_no_series_is_nodata(monitoring: Monitoring) -> None:
    gate = prom_gate(monitoring.prom.url, no_data="fail")
    got = await gates.measure(gate, subject("c-nobody-sends"))
    assert (got.verdict, got.value) == ("nodata", None)
    assert got.message == "error-rate: the query returned no series (noData: fail)"


async def test_no_traffic_at_all_is_nodata_saying_nan(monitoring: Monitoring) -> None:
    traffic(monitoring, "c-idle", ok=0, errors=0)  # 0/0
    got = await gates.measure(prom_gate(monitoring.prom.url), subject("c-idle"))
    assert (got.verdict, got.value) == ("nodata", None)
    assert got.message.startswith("error-rate: the query returned NaN")
    assert got.message.endswith("(noData: wait)")


async def test_several_series_must_all_pass_and_the_worst_is_shown(
    monitoring: Monitoring,
) -> None:
    traffic(monitoring, "c-many", ok=90, errors=150)
    query = 'sum by (code) (http_requests_total{cluster="{{cluster}}"})'
    got = await gates.measure(
        prom_gate(monitoring.prom.url, query, passes="< 100"), subject("c-many")
    )
    assert (got.verdict, got.value) == ("fail", 150.0)
    assert got.message == "error-rate = 150, the worst of 2 series (each passes when < 100)"
    got = await gates.measure(
        prom_gate(monitoring.prom.url, query, passes="> 50"), subject("c-many")
    )
    assert (got.verdict, got.value) == ("pass", 90.0)


async def test_a_scalar_result_is_its_value(monitoring: Monitoring) -> None:
    traffic(monitoring, "c-scalar", ok=3, errors=1)
    query = 'scalar(sum(http_requests_total{cluster="{{cluster}}"}))'
    got = await gates.measure(
        prom_gate(monitoring.prom.url, query, passes=">= 4"), subject("c-scalar")
    )
    assert (got.verdict, got.value, got.message) == (
        "pass",
        4.0,
        "error-rate = 4 (passes when >= 4)",
    )


async def test_a_bad_query_is_an_error_quoting_prometheus(monitoring: Monitoring) -> None:
    gate = prom_gate(monitoring.prom.url, 'sum(rate(http_requests_total{cluster="{{cluster}}"}')
    got = await gates.measure(gate, subject("c-bad"))
    assert (got.verdict, got.value) == ("error", None)
    assert got.message.startswith("error-rate: Prometheus answered bad_data: ")
    assert "parse error" in got.message


async def test_a_range_vector_is_an_error_saying_what_to_write(monitoring: Monitoring) -> None:
    gate = prom_gate(monitoring.prom.url, 'http_requests_total{cluster="{{cluster}}"}[1m]')
    got = await gates.measure(gate, subject("c-matrix"))
    assert got.verdict == "error"
    assert "returned a matrix, not a number" in got.message


async def test_prometheus_down_is_an_error_naming_the_url() -> None:
    url = f"http://127.0.0.1:{prometheus.free_port()}"  # nothing listens there
    got = await gates.measure(prom_gate(url), subject("c-down"))
    assert (got.verdict, got.value) == ("error", None)
    assert got.message == f"error-rate: cannot reach {url}/api/v1/query: connection refused"


async def test_a_cluster_name_cannot_break_out_of_its_label_string(
    monitoring: Monitoring,
) -> None:
    """The hostile name would turn the query into `... or vector(0)` (a pass) if it were
    pasted in as it is; escaped, it is only a label value no series has."""
    traffic(monitoring, "c-victim", ok=0, errors=50)
    hostile = 'nope",code="500"} or vector(0)) #'
    query = 'max(http_requests_total{cluster="{{cluster}}",code="500"})'
    assert gates.fill(query, subject(hostile)) == (
        'max(http_requests_total{cluster="nope\\",code=\\"500\\"} or vector(0)) #",code="500"})'
    )
    got = await gates.measure(prom_gate(monitoring.prom.url, query, passes="< 1"), subject(hostile))
    assert got.verdict == "nodata"
    assert got.message == "error-rate: the query returned no series (noData: wait)"


async def test_a_name_with_a_quote_and_a_backslash_matches_its_own_series(
    monitoring: Monitoring,
) -> None:
    odd = 'we"ird\\one'
    traffic(monitoring, odd, ok=199, errors=1)
    got = await gates.measure(prom_gate(monitoring.prom.url), subject(odd))
    assert (got.verdict, got.value) == ("pass", 0.005)


def test_every_placeholder_is_filled_with_or_without_spaces() -> None:
    query = '{cluster="{{cluster}}",app="{{ app }}",rev="{{revision }}",step="{{  step}}"}'
    got = gates.fill(query, subject("eu-1", app="shop", step="wave\n2"))
    assert got == f'{{cluster="eu-1",app="shop",rev="{REVISION}",step="wave\\n2"}}'


async def test_a_manual_gate_is_never_measured() -> None:
    with pytest.raises(ValueError, match="manual"):
        await gates.measure(rolloutspec.Gate("approval", manual=True), subject("c1"))


# -- HTTP receivers on loopback (webhooks; a fake Prometheus behind a token check)


@dataclasses.dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: bytes


class Receiver:
    """An HTTP server on loopback answering every POST with `status` and `body` (after
    `hold` is set, when given; a byte every 0.1 s when `drip`), recording what it was sent."""

    def __init__(self) -> None:
        self.status = 200
        self.body = b'{"message": "ok"}'
        self.headers: dict[str, str] = {}
        self.hold: threading.Event | None = None
        self.drip = False
        self.seen: list[Seen] = []
        self.released = threading.Event()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                size = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(size)
                receiver.seen.append(Seen(self.path, dict(self.headers.items()), body))
                if receiver.hold is not None:
                    receiver.hold.wait(timeout=30)
                self.send_response(receiver.status)
                for k, v in receiver.headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(receiver.body)))
                self.end_headers()
                if receiver.drip:
                    for i in range(len(receiver.body)):
                        self.wfile.write(receiver.body[i : i + 1])
                        self.wfile.flush()
                        if receiver.released.wait(timeout=0.1):
                            return
                else:
                    self.wfile.write(receiver.body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(http.server.ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # the hub hung up on a stalled answer: expected here

        self._server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def answer(self, status: int, body: bytes | str | dict[str, Any], **headers: str) -> None:
        if isinstance(body, dict):
            body = json.dumps(body)
        self.status = status
        self.body = body.encode() if isinstance(body, str) else body
        self.headers = headers

    def close(self) -> None:
        self.released.set()
        if self.hold is not None:
            self.hold.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    try:
        yield r
    finally:
        r.close()


async def test_a_webhook_answering_200_passes_with_its_message(receiver: Receiver) -> None:
    receiver.answer(200, {"message": "smoke tests green (41/41)"})
    got = await gates.measure(hook_gate(receiver.url + "/hooks/smoke"), subject("eu-1"), now=clock)
    assert got == gates.Measurement(
        "smoke",
        "eu-1",
        "pass",
        None,
        "smoke: webhook answered 200: smoke tests green (41/41)",
        clock(),
    )
    [call] = receiver.seen
    assert call.path == "/hooks/smoke"
    assert call.headers["Content-Type"] == "application/json"
    assert call.headers["User-Agent"] == "fleetops-hub"
    assert "X-Fleetops-Signature" not in call.headers  # no secretFile, no signature
    assert call.body == (
        b'{"app":"shop","cluster":"eu-1","gate":"smoke","revision":"' + REVISION.encode()
        + b'","step":"canary","timestamp":1795000000.25}'
    )  # fmt: skip


async def test_a_webhook_answering_500_fails_with_the_first_line_of_its_body(
    receiver: Receiver,
) -> None:
    receiver.answer(500, "database migration pending\nat step 3 of 7\n")
    got = await gates.measure(hook_gate(receiver.url), subject("eu-1"))
    assert (got.verdict, got.value) == ("fail", None)
    assert got.message == "smoke: webhook answered 500: database migration pending"


async def test_a_webhook_message_is_plain_text_and_capped(receiver: Receiver) -> None:
    receiver.answer(422, {"message": "\x1b[31mred\x1b[0m \u202eevil " + "x" * 400})
    got = await gates.measure(hook_gate(receiver.url), subject("eu-1"))
    said = got.message.removeprefix("smoke: webhook answered 422: ")
    assert said.startswith("[31mred[0m evil xxx")
    assert len(said) == gates.MESSAGE_CAP
    assert all(c.isprintable() for c in got.message)


async def test_a_receiver_past_the_timeout_is_an_error(receiver: Receiver) -> None:
    receiver.hold = threading.Event()  # accepts, reads, never answers until released
    started = time.monotonic()
    got = await gates.measure(hook_gate(receiver.url, timeout=0.5), subject("eu-1"))
    took = time.monotonic() - started
    assert (got.verdict, got.value) == ("error", None)
    assert got.message == f"smoke: {receiver.url} did not answer within 0.5 s (the gate's timeout)"
    assert took < 1.4  # the request itself ended at its deadline


async def test_a_receiver_dripping_its_answer_is_cut_off_at_the_timeout(
    receiver: Receiver,
) -> None:
    """Each byte arrives well within a socket timeout; the gate's deadline is for the
    whole answer."""
    receiver.answer(200, "x" * 100)
    receiver.drip = True  # 10 s for the whole body
    started = time.monotonic()
    got = await gates.measure(hook_gate(receiver.url, timeout=0.8), subject("eu-1"))
    assert got.verdict == "error"
    assert "did not answer within 0.8 s" in got.message
    assert time.monotonic() - started < 1.6  # the deadline cut the read, not a fallback


async def test_the_signature_verifies_with_the_key_and_not_with_another(
    receiver: Receiver, tmp_path: pathlib.Path
) -> None:
    key_file = tmp_path / "smoke.key"
    key_file.write_bytes(KEY + b"\n")  # the trailing newline is not part of the key
    receiver.answer(403, "bad signature? no: checks failed")
    got = await gates.measure(hook_gate(receiver.url, secret_file=str(key_file)), subject("eu-1"))
    [call] = receiver.seen
    header = call.headers["X-Fleetops-Signature"]
    assert header.startswith("sha256=")
    assert gates.verify_signature(call.body, header, KEY)
    assert not gates.verify_signature(call.body, header, b"another-key")
    assert not gates.verify_signature(call.body + b" ", header, KEY)  # a changed body
    assert KEY.decode() not in got.message
    assert got.verdict == "fail"


async def test_the_key_never_appears_even_when_the_receiver_echoes_it(
    receiver: Receiver, tmp_path: pathlib.Path
) -> None:
    key_file = tmp_path / "smoke.key"
    key_file.write_bytes(KEY)
    receiver.answer(500, {"message": f"expected key {KEY.decode()}"})
    got = await gates.measure(hook_gate(receiver.url, secret_file=str(key_file)), subject("eu-1"))
    assert KEY.decode() not in got.message
    assert got.message == "smoke: webhook answered 500: expected key <redacted>"


async def test_a_missing_key_file_is_an_error_naming_it_and_nothing_is_sent(
    receiver: Receiver, tmp_path: pathlib.Path
) -> None:
    missing = tmp_path / "nope.key"
    got = await gates.measure(hook_gate(receiver.url, secret_file=str(missing)), subject("eu-1"))
    assert got.verdict == "error"
    assert got.message == (
        f"smoke: cannot read secretFile {missing}: No such file or directory; create it "
        "(readable by the hub) or fix the secretFile of gate smoke in hub.yaml"
    )
    assert receiver.seen == []


async def test_a_redirect_is_not_followed(receiver: Receiver) -> None:
    with_target = Receiver()
    try:
        receiver.answer(302, "", Location=with_target.url + "/elsewhere?token=abc")
        got = await gates.measure(hook_gate(receiver.url + "/hook"), subject("eu-1"))
        assert with_target.seen == []
    finally:
        with_target.close()
    assert got.verdict == "error"
    assert got.message == (
        f"smoke: {receiver.url}/hook answered 302, a redirect to {with_target.url}/elsewhere; "
        "redirects are not followed: set the gate's url to the address that answers"
    )


async def test_a_prometheus_url_that_redirects_is_not_followed(receiver: Receiver) -> None:
    with_target = Receiver()
    try:
        receiver.answer(301, "", Location=with_target.url + "/api/v1/query")
        got = await gates.measure(prom_gate(receiver.url), subject("eu-1"))
        assert with_target.seen == []
    finally:
        with_target.close()
    assert got.verdict == "error"
    assert f"{receiver.url}/api/v1/query answered 301, a redirect" in got.message


async def test_an_answer_over_1_mib_is_refused(receiver: Receiver) -> None:
    receiver.answer(200, b"y" * (1024 * 1024 + 10))
    got = await gates.measure(hook_gate(receiver.url), subject("eu-1"))
    assert got.verdict == "error"
    assert got.message == f"smoke: {receiver.url} answered more than 1024 KiB; refused"


async def test_the_bearer_token_is_read_at_each_measurement_and_never_shown(
    receiver: Receiver, tmp_path: pathlib.Path
) -> None:
    """A fake Prometheus (the receiver answering Prometheus' JSON) behind a token check."""
    token = tmp_path / "token"
    token.write_text("tok-first-7d1\n")
    gate = prom_gate(receiver.url, bearer_token_file=str(token))
    receiver.answer(
        200, {"status": "success", "data": {"resultType": "scalar", "result": [1, "0"]}}
    )
    got = await gates.measure(gate, subject("eu-1"))
    assert (got.verdict, got.value) == ("pass", 0.0)
    token.write_text("tok-second-9a2\n")  # rotated: the next measurement sends the new one
    receiver.answer(
        401,
        {
            "status": "error",
            "errorType": "unauthorized",
            "error": "token tok-second-9a2 has expired",
        },
    )
    got = await gates.measure(gate, subject("eu-1"))
    assert [s.headers["Authorization"] for s in receiver.seen] == [
        "Bearer tok-first-7d1",
        "Bearer tok-second-9a2",
    ]
    assert receiver.seen[0].body.startswith(b"query=")
    assert got.verdict == "error"
    assert (
        got.message == "error-rate: Prometheus answered unauthorized: token <redacted> has expired"
    )


async def test_a_missing_token_file_is_an_error_naming_it(
    receiver: Receiver, tmp_path: pathlib.Path
) -> None:
    gate = prom_gate(receiver.url, bearer_token_file=str(tmp_path / "gone"))
    got = await gates.measure(gate, subject("eu-1"))
    assert got.verdict == "error"
    assert f"cannot read bearerTokenFile {tmp_path / 'gone'}" in got.message
    assert receiver.seen == []


async def test_a_server_that_is_not_prometheus_is_an_error_saying_so(receiver: Receiver) -> None:
    receiver.answer(200, "<html>login page</html>")
    got = await gates.measure(prom_gate(receiver.url), subject("eu-1"))
    assert got.verdict == "error"
    assert got.message == (
        f"error-rate: {receiver.url}/api/v1/query answered HTTP 200 but not a Prometheus API "
        "answer: <html>login page</html>; check the gate's url"
    )


# -- hostile answers (the review's findings, as the attack)


async def test_an_answer_nested_past_any_parser_is_an_error_not_a_crash(
    receiver: Receiver,
) -> None:
    receiver.answer(200, b"[" * 200_000)
    got = await gates.measure(prom_gate(receiver.url), subject("eu-1"))
    assert got.verdict == "error"
    receiver.answer(200, b'{"message": ' + b"[" * 200_000)
    got = await gates.measure(hook_gate(receiver.url), subject("eu-1"))
    assert got.verdict == "pass"  # a 2xx passes; its unreadable body is no message


async def test_a_value_too_large_for_a_float_is_an_error(receiver: Receiver) -> None:
    huge = "1" * 400
    receiver.answer(
        200,
        '{"status": "success", "data": {"resultType": "vector", "result": '
        '[{"metric": {}, "value": [1, ' + huge + "]}]}}",
    )
    got = await gates.measure(prom_gate(receiver.url), subject("eu-1"))
    assert got.verdict in ("error", "fail"), got
    assert huge not in got.message


async def test_a_token_echoed_where_the_message_is_cut_leaves_no_part_of_it(
    receiver: Receiver, tmp_path: pathlib.Path
) -> None:
    token = tmp_path / "token"
    secret = "tok-0123456789abcdef"
    token.write_text(secret + "\n")
    gate = prom_gate(receiver.url, bearer_token_file=str(token))
    for pad in range(150, 200, 3):  # the echo lands across the 200-character cut
        receiver.answer(
            400,
            {"status": "error", "errorType": "bad_data", "error": "x" * pad + " Bearer " + secret},
        )
        got = await gates.measure(gate, subject("eu-1"))
        for k in range(6, len(secret) + 1):
            assert secret[:k] not in got.message, (pad, got.message)
