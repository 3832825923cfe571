"""The agent's install: Kustomize, Helm and `fleetops-hub cluster add` render the same objects,
the objects pass a server-side dry-run, and the agent's ServiceAccount can do what it needs and
no more (`kubectl auth can-i` against a real API server, then the agent itself running with
that ServiceAccount's token)."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest
import yaml

from fleetops.hub import install
from tests import localkube
from tests.deploy import tools

AS_AGENT = "--as=system:serviceaccount:fleetops-system:fleetops-agent"


def test_kustomize_helm_and_cluster_add_render_the_same_objects(tmp_path: pathlib.Path) -> None:
    hub_values = {
        "address": tools.PLACEHOLDERS["hub_address"],
        "token": tools.PLACEHOLDERS["token"],
        "ca": tools.PLACEHOLDERS["ca_pem"],
    }
    for overlay, values, kwargs in (
        ("namespaced", {"namespaces": ["apps"]}, {"namespaces": ["apps"], "cluster_admin": False}),
        ("cluster-admin", {"clusterAdmin": True}, {"namespaces": [], "cluster_admin": True}),
    ):
        from_kustomize = tools.kustomize(overlay)
        from_helm = tools.helm_objects({"hub": hub_values, **values}, tmp_path)
        from_python = tools.keyed(install.agent_objects(**tools.PLACEHOLDERS, **kwargs))
        assert sorted(from_kustomize) == sorted(from_python), overlay
        assert sorted(from_helm) == sorted(from_python), overlay
        for key, obj in from_python.items():
            assert from_kustomize[key] == obj, f"{overlay}: kustomize differs on {key}"
            assert from_helm[key] == obj, f"{overlay}: helm differs on {key}"
        kinds = {k[1] for k in from_python}
        assert {"Namespace", "ServiceAccount", "Secret", "Deployment", "ClusterRole"} <= kinds


def test_helm_chart_names_what_is_missing(tmp_path: pathlib.Path) -> None:
    done = tools.helm({"namespaces": ["apps"]}, tmp_path)
    assert done.returncode != 0
    assert "hub.address is required" in done.stderr
    hub_values = {"address": "h:1", "token": "t", "ca": "c"}
    done = tools.helm({"hub": hub_values}, tmp_path)
    assert done.returncode != 0
    assert "set namespaces (least privilege) or clusterAdmin: true" in done.stderr
    lint = subprocess.run(
        [localkube.binary("helm"), "lint", str(tools.AGENT / "helm" / "fleetops-agent"),
         "--set", "hub.address=h:1,hub.token=t,hub.ca=c", "--set", "namespaces={apps}"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert lint.returncode == 0 and "0 chart(s) failed" in lint.stdout, lint.stdout + lint.stderr
    # two namespaces: a Namespace and a RoleBinding in each
    objs = tools.helm_objects({"hub": hub_values, "namespaces": ["a", "b"]}, tmp_path)
    for ns in ("a", "b"):
        assert ("v1", "Namespace", "", ns) in objs
        assert ("rbac.authorization.k8s.io/v1", "RoleBinding", ns, "fleetops-agent-apply") in objs


def test_deployment_is_locked_down() -> None:
    objs = tools.keyed(
        install.agent_objects(**tools.PLACEHOLDERS, namespaces=["apps"], cluster_admin=False)
    )
    dep = objs[("apps/v1", "Deployment", "fleetops-system", "fleetops-agent")]
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert c["resources"]["requests"] and c["resources"]["limits"]
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    read = objs[("rbac.authorization.k8s.io/v1", "ClusterRole", "", "fleetops-agent-read")]
    assert all("secrets" not in r["resources"] for r in read["rules"])


@pytest.mark.cluster
def test_install_dry_runs_and_grants_least_privilege(
    local_clusters: list[localkube.LocalCluster], tmp_path: pathlib.Path, unique_name: str
) -> None:
    admin = local_clusters[2].kubeconfig
    ns = unique_name
    objs = install.agent_objects(**tools.PLACEHOLDERS, namespaces=[ns], cluster_admin=False)
    manifest = yaml.safe_dump_all(objs)
    namespaces = yaml.safe_dump_all([o for o in objs if o["kind"] == "Namespace"])

    # The namespaces first (a dry run creates nothing for the objects inside them), then the
    # whole install as a server-side dry run, then for real.
    done = tools.kubectl(admin, "apply", "--server-side", "-f", "-", stdin=namespaces)
    assert done.returncode == 0, done.stderr
    done = tools.kubectl(
        admin, "apply", "--server-side", "--dry-run=server", "-f", "-", stdin=manifest
    )
    assert done.returncode == 0, done.stderr
    assert "deployment.apps/fleetops-agent serverside-applied (server dry run)" in done.stdout
    done = tools.kubectl(admin, "apply", "--server-side", "-f", "-", stdin=manifest)
    assert done.returncode == 0, done.stderr

    def can(*args: str) -> bool:
        out = tools.kubectl(admin, "auth", "can-i", AS_AGENT, *args)
        assert out.stdout.strip() in ("yes", "no"), out.stderr
        return out.stdout.strip() == "yes"

    try:
        # apply and prune anything namespaced in its namespace
        assert can("create", "deployments.apps", "-n", ns)
        assert can("patch", "services", "-n", ns)
        assert can("delete", "configmaps", "-n", ns)
        assert can("get", "secrets", "-n", ns)
        assert can("create", "roles.rbac.authorization.k8s.io", "-n", ns)
        # nothing outside it
        assert not can("create", "deployments.apps", "-n", "default")
        assert not can("get", "secrets", "-n", "default")
        assert not can("get", "secrets", "-n", "kube-system")
        assert not can("list", "secrets", "--all-namespaces")
        assert not can("create", "namespaces")
        assert not can("create", "customresourcedefinitions.apiextensions.k8s.io")
        assert not can("create", "clusterrolebindings.rbac.authorization.k8s.io")
        # what health needs, everywhere
        assert can("list", "deployments.apps", "--all-namespaces")
        assert can("get", "namespaces")
        assert can("get", "customresourcedefinitions.apiextensions.k8s.io")
        # its own bookkeeping
        assert can("create", "configmaps", "-n", "fleetops-system")
        assert can("get", "secrets/fleetops-agent-identity", "-n", "fleetops-system")
        assert not can("get", "secrets/fleetops-agent-bootstrap", "-n", "fleetops-system")

        # The agent itself, as that ServiceAccount: deploys into its namespace, and is refused
        # elsewhere with a message naming the object.
        sa = tools.service_account_kubeconfig(
            admin, "fleetops-system", "fleetops-agent", tmp_path / "sa.kubeconfig"
        )
        bundle = tmp_path / "bundle"
        bundle.mkdir()
        (bundle / "cm.yaml").write_text(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: hello}\ndata: {greeting: hi}\n"
        )
        (bundle / "deploy.yaml").write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "metadata": {"name": "web"},
                    "spec": {
                        "replicas": 1,
                        "selector": {"matchLabels": {"app": "web"}},
                        "template": {
                            "metadata": {"labels": {"app": "web"}},
                            "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]},
                        },
                    },
                }
            )
        )
        state = tmp_path / "state"
        ok = _agent(
            sa,
            state,
            "apply",
            f"--app={ns}",
            f"--namespace={ns}",
            f"--bundle={bundle}",
            "--prune",
            "--wait=60",
        )
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert "Healthy" in ok.stdout
        live = tools.kubectl(admin, "get", "deploy/web", "-n", ns, "-o", "name")
        assert live.stdout.strip() == "deployment.apps/web"
        refused = _agent(
            sa,
            state,
            "apply",
            f"--app={ns}-x",
            "--namespace=default",
            f"--bundle={bundle}",
            "--wait=10",
        )
        assert refused.returncode == 1
        assert "forbidden" in (refused.stdout + refused.stderr).lower()
        assert "ConfigMap default/hello" in refused.stdout + refused.stderr

        # cluster-admin is an explicit opt-in, and it is what reaches other namespaces' Secrets
        opt_in = install.agent_objects(**tools.PLACEHOLDERS, namespaces=[], cluster_admin=True)
        crb = [o for o in opt_in if o["metadata"]["name"] == "fleetops-agent-cluster-admin"]
        done = tools.kubectl(
            admin, "apply", "--server-side", "-f", "-", stdin=yaml.safe_dump_all(crb)
        )
        assert done.returncode == 0, done.stderr
        assert can("get", "secrets", "-n", "kube-system")
        assert can("create", "namespaces")
        tools.kubectl(admin, "delete", "clusterrolebinding", "fleetops-agent-cluster-admin")
        assert not can("get", "secrets", "-n", "kube-system")
    finally:
        tools.kubectl(admin, "delete", "namespace", ns, "--wait=false")
        # the refused app's inventory still claims default/hello: on shared clusters it would
        # refuse the next run's app before RBAC is even asked
        for app in (ns, f"{ns}-x"):
            tools.kubectl(
                admin,
                "delete",
                "configmap",
                f"fleetops-inventory-{app}",
                "-n",
                "fleetops-system",
                "--ignore-not-found",
            )
        tools.kubectl(
            admin,
            "delete",
            "clusterrolebinding",
            "fleetops-agent-cluster-admin",
            "--ignore-not-found",
        )


def _agent(
    kubeconfig: pathlib.Path, state: pathlib.Path, *args: str
) -> subprocess.CompletedProcess[str]:
    cmd, *rest = args
    return subprocess.run(
        [
            str(pathlib.Path(sys.executable).parent / "fleetops-agent"),
            cmd,
            f"--kubeconfig={kubeconfig}",
            f"--state={state}",
            *rest,
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
