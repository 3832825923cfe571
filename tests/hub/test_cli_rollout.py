"""`fleetops-hub rollout ...` against a real in-process hub: a Git repo, an app with a rollout
(canary, then prod one cluster at a time, each baking an hour) whose canary step has an
error-rate gate (a real Prometheus scraping an exporter the test sets) and a webhook gate
(a receiver on loopback; webhooks are called once the bake is over, so here it is never
measured), and FAKE agents (real gRPC and mTLS, in-memory clusters, see
tests/support/fakes.py) reporting Healthy. The hub's clock is a ManualClock, so bakes end
only when an operator promotes."""

from __future__ import annotations

import asyncio
import http.server
import json
import pathlib
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest

from fleetops.hub import cli, cli_rollout
from fleetops.proto.v1 import agent_pb2, agent_pb2_grpc, fleet_pb2, fleet_pb2_grpc
from tests.support import exporter, fakes, fleet, hubproc, prometheus, wait

CLUSTERS = {"canary-1": "canary", "prod-1": "prod", "prod-2": "prod"}


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


def config(repo_url: str, *, smoke_url: str, prom_url: str) -> dict[str, Any]:
    return {
        "repos": [{"name": "platform", "url": repo_url, "pollInterval": "1h"}],
        "clusters": [{"name": n, "labels": {"ring": ring}} for n, ring in CLUSTERS.items()],
        "clusterGroups": [
            {"name": ring, "selector": {"matchLabels": {"ring": ring}}}
            for ring in ("canary", "prod")
        ],
        "gates": [
            {"name": "error-rate",
             "prometheus": {"url": prom_url, "query": ERROR_RATE, "pass": "< 0.01"}},
            {"name": "smoke", "webhook": {"url": smoke_url, "timeout": "5s"}},
        ],
        "apps": [
            {
                "name": "podinfo",
                "repo": "platform",
                "path": "apps/podinfo",
                "namespace": "podinfo",
                "rollout": {
                    "steps": [
                        {"name": "canary", "clusterGroup": "canary", "bake": "1h",
                         "gates": ["error-rate", "smoke"]},
                        {"name": "prod", "clusterGroup": "prod", "maxParallel": 1, "bake": "1h"},
                    ],
                    "progressDeadline": "5m",
                },
            },
            {"name": "plain", "repo": "platform", "path": "apps/plain", "namespace": "plain"},
        ],
    }  # fmt: skip


@pytest.fixture
async def hub(
    tmp_path: pathlib.Path, smoke: SmokeReceiver, prom: prometheus.Prometheus
) -> AsyncIterator[hubproc.HubProc]:
    repo = fleet.Repo.create(tmp_path / "git")
    for app in ("podinfo", "plain"):
        repo.write(
            f"apps/{app}/cm.yaml",
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": app}},
        )
    repo.commit("podinfo: first release")
    agents: list[asyncio.Task[None]] = []
    clock = hubproc.ManualClock()
    async with hubproc.running(
        tmp_path / "hub",
        config(repo.url, smoke_url=smoke.url, prom_url=prom.url),
        tools=hubproc.tools(),
        clock=clock,
    ) as proc:
        try:
            async with grpc.aio.secure_channel(
                proc.address, grpc.ssl_channel_credentials(root_certificates=proc.ca_pem)
            ) as ch:
                for name in CLUSTERS:
                    fake = fakes.FakeAgent(name)
                    resp = await agent_pb2_grpc.AgentServiceStub(ch).Register(
                        agent_pb2.RegisterRequest(token=await proc.token(name), csr_pem=fake.csr())
                    )
                    fake.cert = resp.certificate_pem
                    run = fake.run(proc.agent_address, proc.ca_pem, asyncio.Event())
                    agents.append(asyncio.create_task(run))
            # The first revision reached an empty fleet (its rollout had no cluster to wait
            # for); the one under test rolls out over connected clusters. (Those never got
            # the first one: hub.rollouts sets no stable revision for a rollout that passes
            # as it starts. Reported to the lead.)
            await wait.until(
                "every fake agent connected",
                lambda: all(n in proc.hub.streams for n in CLUSTERS),
            )
            repo.write(
                "apps/podinfo/cm.yaml",
                {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": {"name": "podinfo"},
                    "data": {"replicas": "2"},
                },
            )
            second = repo.commit("podinfo: two replicas")
            proc.hub.trigger_fetch("platform")
            await wait.until("the hub seeing the second commit",
                             lambda: proc.hub.heads["platform"] == second)  # fmt: skip
            yield proc
        finally:
            for t in agents:
                t.cancel()
            await asyncio.gather(*agents, return_exceptions=True)


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


async def status(proc: hubproc.HubProc) -> fleet_pb2.Rollout:
    async with grpc.aio.secure_channel(
        proc.address, grpc.ssl_channel_credentials(root_certificates=proc.ca_pem)
    ) as ch:
        got = await fleet_pb2_grpc.FleetServiceStub(ch).RolloutStatus(
            fleet_pb2.RolloutStatusRequest(app="podinfo"),
            metadata=(("authorization", f"Bearer {proc.operator_token}"),),
        )
    return got.rollouts[0]


async def phases_become(proc: hubproc.HubProc, want: dict[str, str]) -> fleet_pb2.Rollout:
    """Wait until each named cluster stands in that phase of podinfo's rollout."""

    async def probe() -> fleet_pb2.Rollout | None:
        r = await status(proc)
        got = {c.cluster: c.phase for c in r.clusters}
        return r if all(got.get(k) == v for k, v in want.items()) else None

    return await wait.until(f"podinfo's rollout at {want}", probe, within=20)


async def error_rate_passed(proc: hubproc.HubProc) -> fleet_pb2.Rollout:
    seen: list[fleet_pb2.Rollout] = []

    async def probe() -> fleet_pb2.Rollout | None:
        r = await status(proc)
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
    await phases_become(hub, {"canary-1": "Passed", "prod-1": "Baking", "prod-2": "Waiting"})
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
    r = await status(hub)
    assert [s.promoted for s in r.steps] == [False, False], "a read-only token promoted"
