"""`fleetops-hub rollout ...` against a real in-process hub (tests/support/rolloutfleet.py:
podinfo rolls out to a canary, then prod one cluster at a time, each baking an hour on a
ManualClock; FAKE agents reporting Healthy) whose canary step has an error-rate gate (a real
Prometheus scraping an exporter the test sets) and a webhook gate (a receiver on loopback;
webhooks are called once the bake is over, so here it is never measured)."""

from __future__ import annotations

import asyncio
import http.server
import json
import pathlib
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from fleetops.hub import cli, cli_rollout
from fleetops.proto.v1 import fleet_pb2
from tests.support import exporter, hubproc, prometheus, rolloutfleet, wait


class SmokeReceiver:
    """A webhook receiver on loopback answering every call 200 with a message (the smoke
    gate's CI job, which these tests are not about)."""

    def __init__(self) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body = b'{"message": "smoke tests green (41/41)"}'
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/smoke"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


@pytest.fixture(scope="module")
def prom(tmp_path_factory: pytest.TempPathFactory) -> Iterator[prometheus.Prometheus]:
    """One Prometheus for the module (it takes seconds to scrape a first time): 3 errors in
    1000 requests on the canary."""
    with (
        exporter.serving() as metrics,
        prometheus.running(tmp_path_factory.mktemp("prometheus"), targets=[metrics.address]) as p,
    ):
        metrics.requests("canary-1", ok=997, errors=3)
        p.wait_for('sum(http_requests_total{cluster="canary-1"}) == 1000')
        yield p


ERROR_RATE = (
    'sum(http_requests_total{cluster="{{cluster}}",code=~"5.."}) '
    '/ sum(http_requests_total{cluster="{{cluster}}"})'
)


@pytest.fixture
def smoke() -> Iterator[SmokeReceiver]:
    receiver = SmokeReceiver()
    try:
        yield receiver
    finally:
        receiver.close()


@pytest.fixture
async def hub(
    tmp_path: pathlib.Path, smoke: SmokeReceiver, prom: prometheus.Prometheus
) -> AsyncIterator[hubproc.HubProc]:
    gates = [
        {"name": "error-rate",
         "prometheus": {"url": prom.url, "query": ERROR_RATE, "pass": "< 0.01"}},
        {"name": "smoke", "webhook": {"url": smoke.url, "timeout": "5s"}},
    ]  # fmt: skip
    async with rolloutfleet.running(
        tmp_path, gates=gates, canary_gates=["error-rate", "smoke"]
    ) as proc:
        yield proc


async def rollout_cli(
    proc: hubproc.HubProc, capsys: pytest.CaptureFixture[str], *args: str, role: str = ""
) -> tuple[int, str, str]:
    """`fleetops-hub rollout ARGS` as an operator runs it on the hub's machine (--data), or
    with the `role`'s token; (exit code, stdout, stderr). The command runs in a thread: its
    blocking gRPC calls must not stop the hub serving them."""
    argv = ["rollout", *args, "--hub", proc.address, "--data", str(proc.data)]
    if role:
        argv += ["--token", proc.running.tokens[role]]
    code = await asyncio.to_thread(cli.main, argv)
    out = capsys.readouterr()
    return code, out.out, out.err


async def error_rate_passed(proc: hubproc.HubProc) -> fleet_pb2.Rollout:
    seen: list[fleet_pb2.Rollout] = []

    async def probe() -> fleet_pb2.Rollout | None:
        r = await rolloutfleet.status(proc)
        seen[:] = [r]
        canary = next((c for c in r.clusters if c.cluster == "canary-1"), None)
        if canary is None or canary.phase != "Baking":
            return None
        return (
            r if any(g.name == "error-rate" and g.verdict == "pass" for g in canary.gates) else None
        )

    return await wait.until(
        "the canary baking with the error-rate gate passed",
        probe,
        within=20,
        explain=lambda: "\n".join(cli_rollout.text_lines(seen[0])) if seen else "",
    )


async def test_status_shows_the_steps_and_the_clusters_of_each_step(
    hub: hubproc.HubProc, capsys: pytest.CaptureFixture[str]
) -> None:
    r = await error_rate_passed(hub)
    code, out, err = await rollout_cli(hub, capsys, "status", "podinfo")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith(f"podinfo  {r.revision[:8]} ")
    assert lines[0].endswith("Running, step 1/2 canary"), lines[0]
    steps = {ln.split()[0]: ln.split() for ln in lines if ln.startswith("  ") and ln[2] != " "}
    assert steps["canary"][1:6] == ["Running", "0/1", "0", "0", "1h00m"], out
    assert steps["canary"][6:] == ["health,", "error-rate,", "smoke"], out
    assert steps["prod"][1:6] == ["Waiting", "0/2", "0", "0", "1h00m"], out
    assert "  step canary:" in lines and "  step prod:" in lines
    canary = next(ln for ln in lines if ln.startswith("    canary-1"))
    # the hub's clock has not moved since the canary became Healthy: a whole hour left
    assert "Baking 1h00m left" in canary, canary
    assert "error-rate 0.003 (< 0.01) pass; smoke (2xx) not measured yet" in canary, canary
    assert [ln.split()[1] for ln in lines if ln.startswith("    prod-")] == ["Waiting"] * 2


async def test_status_as_json_is_the_hubs_answer(
    hub: hubproc.HubProc, capsys: pytest.CaptureFixture[str]
) -> None:
    await error_rate_passed(hub)
    code, out, err = await rollout_cli(hub, capsys, "status", "--output", "json")
    assert code == 0, err
    doc = json.loads(out)
    [r] = doc["rollouts"]  # `plain` has no rollout policy: not listed
    assert r["app"] == "podinfo" and r["phase"] == "Running" and r["step"] == 0
    assert [(s["name"], s["phase"], s["clusters"]) for s in r["steps"]] == [
        ("canary", "Running", 1),
        ("prod", "Waiting", 2),
    ]
    canary = next(c for c in r["clusters"] if c["cluster"] == "canary-1")
    assert canary["step"] == "canary" and canary["gate"] == "ROLLOUT_GATE_BAKING"
    assert canary["bake_left_seconds"] == 3600
    rate, smoke = canary["gates"]
    assert (rate["name"], rate["kind"], rate["verdict"]) == ("error-rate", "prometheus", "pass")
    assert (rate["value"], rate["threshold"]) == (0.003, "< 0.01")
    assert (smoke["name"], smoke["kind"], smoke["verdict"]) == ("smoke", "webhook", "")


async def test_promote_pause_and_resume_change_what_status_shows(
    hub: hubproc.HubProc, capsys: pytest.CaptureFixture[str]
) -> None:
    await error_rate_passed(hub)
    code, out, err = await rollout_cli(hub, capsys, "promote", "podinfo")
    assert code == 0, err
    assert "step canary of" in out and "promoted by" in out, out
    # canary passed; prod moves one cluster at a time (maxParallel 1)
    await rolloutfleet.phases_become(
        hub, {"canary-1": "Passed", "prod-1": "Baking", "prod-2": "Waiting"}
    )
    code, out, err = await rollout_cli(hub, capsys, "status", "podinfo")
    assert code == 0, err
    assert out.splitlines()[0].endswith("Running, step 2/2 prod"), out
    assert "  canary  Passed (promoted)  1/1 " in out, out

    code, out, err = await rollout_cli(hub, capsys, "pause", "podinfo")
    assert code == 0 and "paused by" in out, (out, err)
    code, out, err = await rollout_cli(hub, capsys, "status", "podinfo")
    assert out.splitlines()[0].endswith("Paused, step 2/2 prod"), out

    code, out, err = await rollout_cli(hub, capsys, "resume", "podinfo")
    assert code == 0 and "resumed by" in out, (out, err)
    code, out, err = await rollout_cli(hub, capsys, "status", "podinfo")
    assert out.splitlines()[0].endswith("Running, step 2/2 prod"), out


async def test_an_action_without_a_running_rollout_exits_with_the_hubs_message(
    hub: hubproc.HubProc, capsys: pytest.CaptureFixture[str]
) -> None:
    await error_rate_passed(hub)
    code, out, err = await rollout_cli(hub, capsys, "abort", "podinfo")
    assert code == 0, err
    code, out, err = await rollout_cli(hub, capsys, "promote", "podinfo")
    assert code == 1 and out == ""
    assert err.startswith("fleetops-hub: FAILED_PRECONDITION: app podinfo: no rollout is running")
    assert "(the latest is Aborted)" in err, err
    code, out, err = await rollout_cli(hub, capsys, "status", "plain")
    assert code == 1 and err.startswith("fleetops-hub: FAILED_PRECONDITION: "), err
    code, out, err = await rollout_cli(hub, capsys, "status", "nope")
    assert code == 1 and err.startswith("fleetops-hub: NOT_FOUND: "), err


async def test_a_readonly_token_may_read_the_status_but_not_promote(
    hub: hubproc.HubProc, capsys: pytest.CaptureFixture[str]
) -> None:
    await error_rate_passed(hub)
    code, out, err = await rollout_cli(hub, capsys, "status", "podinfo", role="readonly")
    assert code == 0 and out.startswith("podinfo  "), err
    code, out, err = await rollout_cli(hub, capsys, "promote", "podinfo", role="readonly")
    assert code == 1 and err.startswith("fleetops-hub: PERMISSION_DENIED: "), err
    assert hub.running.tokens["readonly"] not in err
    r = await rolloutfleet.status(hub)
    assert [s.promoted for s in r.steps] == [False, False], "a read-only token promoted"


def test_text_from_agents_and_receivers_is_printed_plain(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A reason or gate message carrying terminal escapes (a lying agent, a hostile webhook
    receiver) reaches the terminal as text, never as control sequences."""
    r = fleet_pb2.Rollout(app="podinfo", revision="ab" * 20, phase="Running", step=0,
                          reason="\x1b]0;owned\x07step canary")  # fmt: skip
    r.steps.add(name="canary", phase="Running", clusters=1)
    c = r.clusters.add(cluster="canary-1", step="canary", phase="Failed", reason="\x1b[2Jgone")
    c.gates.add(name="smoke", verdict="fail", threshold="2xx", message="smoke: \x1b[31mred\x1b[0m")
    assert cli_rollout.print_status([r], output="text") == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert "smoke (2xx) fail: smoke: " in out and "gone" in out
