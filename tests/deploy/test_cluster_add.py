"""A cluster joins the fleet the way a platform engineer would do it: `fleetops-hub cluster add`
prints the install with a fresh token, it is applied with kubectl, and the agent runs with the
installed ServiceAccount's credentials (a process standing in for the pod: same arguments,
same Secret values, same RBAC). The cluster's labels come from the token, its app arrives,
and a restarted agent with an empty state directory gets its identity back from the Secret."""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys
import urllib.error
import urllib.request

import grpc
import pytest
import yaml

from fleetops.proto.v1 import types_pb2
from tests import localkube
from tests.deploy import tools
from tests.support import fleet, wait

pytestmark = pytest.mark.cluster
BIN = pathlib.Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _probe(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except OSError:
        return 0


def test_cluster_add_installs_an_agent_that_joins_with_its_labels(
    local_clusters: list[localkube.LocalCluster], tmp_path: pathlib.Path, unique_name: str
) -> None:
    admin = local_clusters[1].kubeconfig
    ns = unique_name
    cluster = f"joined-{unique_name[2:8]}"
    repo = fleet.Repo.create(tmp_path / "git")
    repo.write(
        "apps/web/cm.yaml",
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "web"}, "data": {"a": "1"}},
    )
    rev = repo.commit("web")
    config = tmp_path / "hub.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "repos": [{"name": "r", "url": repo.url, "pollInterval": "1s"}],
                "apps": [
                    {
                        "name": f"{ns}-web",
                        "repo": "r",
                        "path": "apps/web",
                        "namespace": ns,
                        "sync": {"prune": True, "selfHeal": True},
                        "targets": [
                            {"name": "prod", "clusterSelector": {"matchLabels": {"env": "prod"}}}
                        ],
                    },
                    {
                        "name": f"{ns}-dev",
                        "repo": "r",
                        "path": "apps/web",
                        "namespace": ns,
                        "targets": [
                            {"name": "dev", "clusterSelector": {"matchLabels": {"env": "dev"}}}
                        ],
                    },
                ],
            }
        )
    )
    hub = fleet.start_hub(config, tmp_path / "hub")
    agent: fleet.Process | None = None
    try:
        added = subprocess.run(
            [
                str(BIN / "fleetops-hub"),
                "cluster",
                "add",
                cluster,
                "--labels",
                "env=prod,tier=web",
                "--namespaces",
                ns,
                "--hub",
                hub.address,
                "--data",
                str(hub.data),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert added.returncode == 0, added.stderr
        assert f"# fleetops agent for cluster {cluster} (labels: env=prod,tier=web" in added.stdout
        docs = [d for d in yaml.safe_load_all(added.stdout) if d]
        secret = next(d for d in docs if d["kind"] == "Secret")["stringData"]
        assert secret["hub"] == hub.address
        assert secret["ca.crt"] == (hub.data / "ca.crt").read_text()

        namespaces = yaml.safe_dump_all([d for d in docs if d["kind"] == "Namespace"])
        assert (
            tools.kubectl(admin, "apply", "--server-side", "-f", "-", stdin=namespaces).returncode
            == 0
        )
        done = tools.kubectl(admin, "apply", "--server-side", "-f", "-", stdin=added.stdout)
        assert done.returncode == 0, done.stderr

        sa = tools.service_account_kubeconfig(
            admin, "fleetops-system", "fleetops-agent", tmp_path / "sa.kubeconfig"
        )
        ca_file = tmp_path / "ca.crt"
        ca_file.write_text(secret["ca.crt"])
        health = _free_port()

        def start(state: str) -> fleet.Process:
            log = tmp_path / f"{state}.log"
            with open(log, "a") as out:
                proc = subprocess.Popen(
                    [
                        str(BIN / "fleetops-agent"),
                        "run",
                        f"--hub={secret['hub']}",
                        f"--ca={ca_file}",
                        f"--kubeconfig={sa}",
                        f"--state={tmp_path / state}",
                        "--identity-secret=fleetops-system/fleetops-agent-identity",
                        f"--health-listen=127.0.0.1:{health}",
                        "--resync=2",
                    ],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    text=True,
                    env={**os.environ, "FLEETOPS_TOKEN": secret["token"]},
                )
            return fleet.Process(proc, log)

        agent = start("state-1")
        client = hub.fleet()
        running = agent

        def logs() -> str:
            return f"--- hub\n{hub.process.tail()}\n--- agent\n{running.tail()}"

        want = {(cluster, f"{ns}-web"): rev}
        wait.until_sync(
            "the app on the joined cluster",
            lambda: fleet.converged(client.cells(), want),
            within=90,
            retry_on=(grpc.RpcError,),  # the hub may still be starting its fleet API
            explain=logs,
        )
        snap = client.snapshot()
        (joined,) = [c for c in snap.clusters if c.name == cluster]
        assert joined.labels["env"] == "prod" and joined.labels["tier"] == "web"
        assert joined.connectivity == types_pb2.CONNECTIVITY_CONNECTED
        assert (cluster, f"{ns}-dev") not in client.cells()  # env=dev apps stay away
        got = tools.kubectl(admin, "get", "configmap", "web", "-n", ns, "-o", "jsonpath={.data.a}")
        assert got.stdout == "1"
        wait.until_sync(
            "/readyz", lambda: _probe(health, "/readyz") == 200, within=10, explain=logs
        )
        assert _probe(health, "/healthz") == 200
        idsecret = tools.kubectl(
            admin,
            "get",
            "secret",
            "fleetops-agent-identity",
            "-n",
            "fleetops-system",
            "-o",
            "jsonpath={.data}",
        )
        assert "agent.key" in idsecret.stdout

        # The pod restarts: empty state directory, the used token still in its environment.
        agent.stop()
        assert _probe(health, "/healthz") == 0
        agent = running = start("state-2")
        wait.until_sync(
            "/readyz after a restart",
            lambda: _probe(health, "/readyz") == 200,
            within=30,
            explain=logs,
        )
        assert "identity restored from Secret" in agent.tail()
        registered = [e for e in client.history(cluster=cluster) if e.kind == "registered"]
        assert len(registered) == 1, (
            "the restarted agent registered again instead of reusing its identity"
        )
        tools.kubectl(
            admin, "patch", "configmap", "web", "-n", ns, "--type=merge", "-p", '{"data":{"a":"2"}}'
        )
        wait.until_sync(
            "self-heal by the restarted agent",
            lambda: (
                tools.kubectl(
                    admin, "get", "configmap", "web", "-n", ns, "-o", "jsonpath={.data.a}"
                ).stdout
                == "1"
            ),
            within=30,
            explain=logs,
        )
    finally:
        if agent is not None:
            agent.stop()
        hub.process.stop()
        tools.kubectl(admin, "delete", "namespace", ns, "--wait=false")
        tools.kubectl(
            admin,
            "delete",
            "secret",
            "fleetops-agent-identity",
            "-n",
            "fleetops-system",
            "--ignore-not-found",
        )
