"""The world the image automation tests share: a real registry (Debian's docker-registry) with
team/web pushed to it, a Git repository whose Deployment carries a Flux `$imagepolicy` marker,
and the hub.yaml keeping app "web" on the newest 1.x; plus the cluster-side pieces the e2e test
and the image rollout benchmark both use. Plain functions and one pytest fixture (`reg`)."""

from __future__ import annotations

import base64
import json
import pathlib
import subprocess
from collections.abc import Iterable, Iterator
from typing import Any

import pytest

from fleetops.hub import imagestatus
from tests import localkube
from tests.support import chartrepo, fleet, hubproc
from tests.support import registry as registrypush

BOT = {"name": "fleetops-bot", "email": "bot@example.com"}
MARKER = '# {"$imagepolicy": "flux-system:web-stable"}'
DEPLOYMENT = """\
{top}apiVersion: apps/v1
kind: Deployment
metadata:
  name: web{note}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers:
        - name: web
          image: {image} {marker}
{more}"""
STABLE = {"semver": {"range": ">=1.0.0 <2.0.0"}}


def deploy_yaml(host: str) -> str:
    """apps/web/deploy.yaml: team/web at 1.0.0 under the web-stable marker, team/side unmarked."""
    side = f"        - name: side\n          image: {host}/team/side:2.0.0\n"
    image = f"{host}/team/web:1.0.0"
    return DEPLOYMENT.format(top="", note="  # the web tier", image=image, marker=MARKER, more=side)


def cluster_deployment(image: str) -> str:
    """A Deployment of `image` (with its tag) under the web-stable marker, for real clusters:
    one container, so the pod can start."""
    top = "# the web tier; fleetops-bot keeps its image current\n"
    ports = "          ports: [{containerPort: 8080}]\n"
    return DEPLOYMENT.format(top=top, note="", image=image, marker=MARKER, more=ports)


@pytest.fixture
def reg(tmp_path: pathlib.Path) -> Iterator[chartrepo.OciRegistry]:
    """A real registry on loopback, empty."""
    with registrypush.registry_server(tmp_path / "reg") as server:
        yield server


def push(server: chartrepo.OciRegistry, *tags: str, auth: str = "") -> None:
    """Push team/web at each of `tags`."""
    for tag in tags:
        registrypush.push_image(f"http://{server.host}", "team/web", tag, auth=auth)


def docker_config(path: pathlib.Path, host: str, *, user: str, password: str) -> str:
    """Write a Docker config.json at `path` with `user`:`password` for `host`; its auth token."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    path.write_text(json.dumps({"auths": {host: {"auth": token}}}))
    return token


def app_repo(root: pathlib.Path, host: str, *, also: dict[str, str] | None = None) -> fleet.Repo:
    """A Git repo at root/git: apps/web/deploy.yaml (and the files in `also`) in one commit."""
    repo = fleet.Repo.create(root / "git")
    repo.write("apps/web/deploy.yaml", deploy_yaml(host))
    for path, text in (also or {}).items():
        repo.write(path, text)
    repo.commit("web 1.0.0")
    return repo


def image_config(
    host: str,
    *,
    interval: str = "1h",
    policy: dict[str, Any] | None = None,
    commit: dict[str, Any] | None = None,
    update: str = "platform-images",
    **repository: Any,
) -> dict[str, Any]:
    """The three hub.yaml image lists: repository web (team/web, plus `repository`'s fields),
    policy web-stable (`policy`, else the newest 1.x), update `update` of repo platform's apps/."""
    return {
        "imageRepositories": [
            {"name": "web", "image": f"{host}/team/web", "interval": interval, **repository}
        ],
        "imagePolicies": [
            {"name": "web-stable", "repository": "web", **(policy or {"policy": STABLE})}
        ],
        "imageUpdates": [
            {
                "name": update,
                "repo": "platform",
                "paths": ["apps/"],
                "commit": commit or {"author": BOT, "message": "images: {changes}"},
            }
        ],
    }


def hub_config(
    repo: fleet.Repo,
    host: str,
    *,
    policy: dict[str, Any] | None = None,
    commit: dict[str, Any] | None = None,
    canary: bool = False,
    **repository: Any,
) -> dict[str, Any]:
    """hubproc's hub.yaml for app web (apps/web of `repo`) with image_config's lists; with
    `canary`, web rolls out to c1 first and bakes there an hour (a rollout that stays open)."""
    cfg = hubproc.hub_yaml(repo.url, {"web": "apps/web"})
    if canary:
        cfg["apps"][0]["rollout"] = {
            "steps": [{"name": "canary", "clusters": ["c1"], "bake": "1h"}]
        }
    cfg.update(image_config(host, policy=policy, commit=commit, **repository))
    return cfg


def log(repo: fleet.Repo, branch: str = "main", *, author: bool = False) -> list[str]:
    """'sha subject' (with author: 'sha name <email> subject') of origin's `branch`, newest
    first, after a fetch."""
    fleet.git(repo.work, "fetch", "-q", "origin")
    fmt = "%H %an <%ae> %s" if author else "%H %s"
    return fleet.git(repo.work, "log", f"--format={fmt}", f"origin/{branch}").splitlines()


def status(proc: hubproc.HubProc) -> imagestatus.Status:
    return proc.hub.image_status()


def rolling(proc: hubproc.HubProc) -> str:
    """The revision app web's one rollout is at."""
    (got,) = proc.hub.rollout_status(app="web")
    return got.revision


def start_agents(
    hub: fleet.Hub,
    clusters: Iterable[localkube.LocalCluster],
    root: pathlib.Path,
    *,
    into: dict[str, fleet.Process],
) -> None:
    """An agent process per cluster, enrolled with a token of its own (root/agent-NAME), each
    put in `into` as it starts (so the caller stops those started when a later one fails)."""
    client = hub.fleet()
    for c in clusters:
        into[c.name] = fleet.start_agent(hub, client.token(c.name), c, root / f"agent-{c.name}")


def delete_namespace(kubeconfigs: Iterable[pathlib.Path], namespace: str) -> None:
    """Delete `namespace` on each cluster, without waiting (clusters may be shared)."""
    for kubeconfig in kubeconfigs:
        subprocess.run(
            [localkube.binary("kubectl"), f"--kubeconfig={kubeconfig}", "delete",
             "namespace", namespace, "--wait=false", "--ignore-not-found"],
            capture_output=True, check=False,
        )  # fmt: skip
