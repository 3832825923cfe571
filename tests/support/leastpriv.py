"""A least-privilege agent account on a shared cluster, under names no other test uses.

The same RBAC shape `fleetops-hub cluster add --namespaces` installs (hub.install): read what
health needs cluster-wide, everything namespaced in the granted namespaces (a RoleBinding to an
all-verbs ClusterRole in each), ConfigMaps in the agent's own namespace for its inventories,
and nothing cluster-scoped. The account is a real ServiceAccount with a real token; the
kubeconfig acts as it. `remove()` deletes every object made here, cluster-scoped ones included.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import yaml

from fleetops.hub import install
from tests import localkube
from tests.support import kubectl_run

SA = "fleetops-agent"


@dataclasses.dataclass
class Account:
    cluster: localkube.LocalCluster
    prefix: str
    agent_namespace: str
    granted: list[str]
    kubeconfig: pathlib.Path

    async def remove(self) -> None:
        for kind in ("clusterrolebinding", "clusterrole"):
            for name in (f"{self.prefix}-read", f"{self.prefix}-apply"):
                await kubectl_run.kubectl(
                    self.cluster, "delete", kind, name, "--ignore-not-found", "--wait=false"
                )
        for ns in [self.agent_namespace, *self.granted]:
            await kubectl_run.kubectl(
                self.cluster, "delete", "namespace", ns, "--ignore-not-found", "--wait=false"
            )


def _objects(prefix: str, agent_ns: str, granted: list[str]) -> list[dict[str, Any]]:
    rbac = "rbac.authorization.k8s.io/v1"
    subject = [{"kind": "ServiceAccount", "name": SA, "namespace": agent_ns}]

    def ref(kind: str, name: str) -> dict[str, str]:
        return {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": name}

    objs: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": agent_ns}},
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": SA, "namespace": agent_ns}},
        {"apiVersion": rbac, "kind": "ClusterRole", "metadata": {"name": f"{prefix}-read"},
         "rules": install.READ_RULES},
        {"apiVersion": rbac, "kind": "ClusterRoleBinding", "metadata": {"name": f"{prefix}-read"},
         "roleRef": ref("ClusterRole", f"{prefix}-read"), "subjects": subject},
        {"apiVersion": rbac, "kind": "Role", "metadata": {"name": SA, "namespace": agent_ns},
         "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["*"]}]},
        {"apiVersion": rbac, "kind": "RoleBinding", "metadata": {"name": SA, "namespace": agent_ns},
         "roleRef": ref("Role", SA), "subjects": subject},
        {"apiVersion": rbac, "kind": "ClusterRole", "metadata": {"name": f"{prefix}-apply"},
         "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]},
    ]  # fmt: skip
    for ns in granted:
        objs.append({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        objs.append(
            {"apiVersion": rbac, "kind": "RoleBinding",
             "metadata": {"name": f"{prefix}-apply", "namespace": ns},
             "roleRef": ref("ClusterRole", f"{prefix}-apply"), "subjects": subject}
        )  # fmt: skip
    return objs


async def account(
    cluster: localkube.LocalCluster, *, prefix: str, granted: list[str], out: pathlib.Path
) -> Account:
    """Make the account (its own namespace is `<prefix>-sys`) and a kubeconfig acting as it."""
    agent_ns = f"{prefix}-sys"
    made = Account(cluster, prefix, agent_ns, list(granted), out)
    try:
        docs = yaml.safe_dump_all(_objects(prefix, agent_ns, granted))
        await kubectl_run.kubectl(cluster, "apply", "--server-side", "-f", "-", stdin=docs)
        token = await kubectl_run.kubectl(
            cluster, "create", "token", SA, "-n", agent_ns, "--duration=1h"
        )
    except BaseException:
        await made.remove()
        raise
    _write_kubeconfig(cluster.kubeconfig, token.stdout.strip(), out)
    return made


def _write_kubeconfig(admin: pathlib.Path, token: str, out: pathlib.Path) -> None:
    """`admin`'s server and CA, with the ServiceAccount's token as the user."""
    cfg = yaml.safe_load(admin.read_text())
    name = cfg["clusters"][0]["name"]
    cfg["users"] = [{"name": "sa", "user": {"token": token}}]
    cfg["contexts"] = [{"name": "sa", "context": {"cluster": name, "user": "sa"}}]
    cfg["current-context"] = "sa"
    out.write_text(yaml.safe_dump(cfg))
    out.chmod(0o600)
