"""Flux setter markers in the shapes real Flux repositories use them, tried as a new user would.

Every fixture here is written for this test, in a shape found in public Flux repositories
(fluxcd/image-automation-controller's setter testdata, giantswarm/gitops-template,
rparmer/podinfo-image-automation, driv/flux-image-updates, darkweaver87/flux-image-automation-
lab): an indentless container list, a Kustomization `images:` entry with `newName`/`newTag`
(and Flux's `newDigest` marker, which we refuse), a kustomize patch held in a block scalar, a
double-quoted kpack stack image in a CRLF file, HelmRelease values split into repository and
tag, a Giant Swarm App `version`, one policy name in several namespaces. Each asserts the
rewrite byte for byte: only the marked scalars change; the last test commits them through a
real hub, a real registry and real Git.
"""

from __future__ import annotations

import pathlib

from fleetops.hub import imagemarkers
from tests.support import fleet, hubproc, wait
from tests.support import registry as registrypush


def changed(before: str, after: str) -> list[tuple[str, str]]:
    """(old, new) for each line that differs, line endings included; never a line more or less."""
    old, new = before.splitlines(keepends=True), after.splitlines(keepends=True)
    assert len(old) == len(new)
    return [(a, b) for a, b in zip(old, new, strict=True) if a != b]


# A Deployment whose container list is not indented under `containers:` (as `kubectl` and
# kyaml write it), a Docker Hub image spelled in full, and an unmarked twin left alone.
DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: edge
  namespace: lab # the lab only
spec:
  template:
    spec:
      containers:
      - name: proxy
        image: docker.io/library/proxy:v3.7.1 # {"$imagepolicy": "flux-system:proxy"}
        args: ["--log.level=INFO"]
      - name: echo
        image: docker.io/library/proxy:v3.7.1 # same image, no marker: never touched
"""


def test_an_indentless_container_list_with_a_full_docker_hub_name() -> None:
    out = imagemarkers.rewrite(DEPLOYMENT, {"proxy": "reg.local:5000/library/proxy:v3.7.2"})
    marker = ' # {"$imagepolicy": "flux-system:proxy"}\n'
    assert changed(DEPLOYMENT, out.text) == [
        (
            "        image: docker.io/library/proxy:v3.7.1" + marker,
            "        image: reg.local:5000/library/proxy:v3.7.2" + marker,
        )
    ]
    assert [(c.line, c.old, c.new) for c in out.changes] == [
        (11, "docker.io/library/proxy:v3.7.1", "reg.local:5000/library/proxy:v3.7.2")
    ]


# A Kustomization's `images:` entries: `newName` by :name, `newTag` by :tag, a `newDigest`
# marked with Flux's :digest (refused, named), an indentless second entry, and a JSON patch in
# a block scalar before a marked `target.image` below it (the block's text is not markers).
KUSTOMIZATION = """\
# not a working kustomization: the shapes only
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - app.yaml
images:
  - name: app
    newName: replaced # {"$imagepolicy": "automation-ns:app:name"}
    newTag: v1 # {"$imagepolicy": "automation-ns:app:tag"}
    newDigest: sha256:0123abcd # {"$imagepolicy": "automation-ns:app:digest"}
patches:
  - patch: |-
      - op: replace
        path: /spec/version
        value: '0.1.8' # {"$imagepolicy": "automation-ns:app:tag"}
    target:
      kind: Deployment
      image: worker # {"$imagepolicy": "automation-ns:worker"}
"""


def test_kustomization_images_new_name_and_new_tag_and_a_refused_digest() -> None:
    latest = {"app": "reg.local/team/app:v1.0.1", "worker": "reg.local/team/worker:2.0.0"}
    out = imagemarkers.rewrite(KUSTOMIZATION, latest)
    assert changed(KUSTOMIZATION, out.text) == [
        (
            '    newName: replaced # {"$imagepolicy": "automation-ns:app:name"}\n',
            '    newName: reg.local/team/app # {"$imagepolicy": "automation-ns:app:name"}\n',
        ),
        (
            '    newTag: v1 # {"$imagepolicy": "automation-ns:app:tag"}\n',
            '    newTag: v1.0.1 # {"$imagepolicy": "automation-ns:app:tag"}\n',
        ),
        (
            '      image: worker # {"$imagepolicy": "automation-ns:worker"}\n',
            '      image: reg.local/team/worker:2.0.0 # {"$imagepolicy": "automation-ns:worker"}\n',
        ),
    ]
    (digest,) = out.problems
    assert digest.line == 10 and digest.policy == "app"
    assert "digest pinning" in digest.problem and ":tag" in digest.problem
    # the marker-like text inside `patch: |-` is the patch's text: neither set nor reported
    assert [m.line for m in imagemarkers.find(KUSTOMIZATION)] == [8, 9, 10, 18]


def test_an_indentless_images_entry_with_a_tag_only() -> None:
    text = (
        "apiVersion: kustomize.config.k8s.io/v1beta1\n"
        "kind: Kustomization\n"
        "namespace: dev\n"
        "images:\n"
        "- name: ghcr.io/someone/podinfo-auto\n"
        '  newTag: main-1656704279 # {"$imagepolicy": "dev:podinfo-auto:tag"}\n'
    )
    out = imagemarkers.rewrite(text, {"podinfo-auto": "ghcr.io/someone/podinfo-auto:main-1657"})
    assert out.text == text.replace("main-1656704279", "main-1657")


# kpack's ClusterStack: double-quoted images, in a file with CRLF line ends.
STACK = (
    "apiVersion: kpack.io/v1alpha2\r\n"
    "kind: ClusterStack\r\n"
    "metadata:\r\n"
    '  name: "base"\r\n'
    "spec:\r\n"
    '  id: "io.buildpacks.stacks.jammy"\r\n'
    "  buildImage:\r\n"
    '    image: "builders/build-base:0.1.115" # {"$imagepolicy": "flux-system:build-base"}\r\n'
    "  runImage:\r\n"
    '    image: "builders/run-base:0.1.115" # {"$imagepolicy": "flux-system:run-base"}\r\n'
)


def test_double_quoted_images_in_a_crlf_file_keep_their_quotes_and_line_ends() -> None:
    latest = {"build-base": "builders/build-base:0.2.0", "run-base": "builders/run-base:0.1.119"}
    out = imagemarkers.rewrite(STACK, latest)
    build = ' # {"$imagepolicy": "flux-system:build-base"}\r\n'
    run = ' # {"$imagepolicy": "flux-system:run-base"}\r\n'
    assert changed(STACK, out.text) == [
        (
            f'    image: "builders/build-base:0.1.115"{build}',
            f'    image: "builders/build-base:0.2.0"{build}',
        ),
        (
            f'    image: "builders/run-base:0.1.115"{run}',
            f'    image: "builders/run-base:0.1.119"{run}',
        ),
    ]


# HelmRelease values split into repository (:name) and a quoted tag (:tag), two spaces before
# one marker, and a build tag of branch, sha and timestamp.
HELMRELEASE = """\
apiVersion: helm.toolkit.fluxcd.io/v2
kind: HelmRelease
metadata:
  name: ledger
  namespace: default
spec:
  interval: 30m
  values:
    image:
      repository: registry.example.com/me/ledger # {"$imagepolicy": "default:ledger:name"}
      tag: "main-786bccf17263-1785740665"  # {"$imagepolicy": "default:ledger:tag"}
      pullPolicy: IfNotPresent
    imagePullSecrets:
      - name: regcred
"""


def test_helmrelease_values_repository_and_a_quoted_build_tag() -> None:
    out = imagemarkers.rewrite(
        HELMRELEASE, {"ledger": "registry.example.com/me/ledger:main-49e593937d85-1791349225"}
    )
    assert changed(HELMRELEASE, out.text) == [
        (
            '      tag: "main-786bccf17263-1785740665"  # {"$imagepolicy": "default:ledger:tag"}\n',
            '      tag: "main-49e593937d85-1791349225"  # {"$imagepolicy": "default:ledger:tag"}\n',
        )
    ]  # the repository is already the policy's: unchanged, and not a change


def test_an_empty_quoted_tag_or_image_is_a_placeholder_the_marker_fills() -> None:
    # a first commit often leaves the tag for the automation to fill, which Flux does
    text = (
        "values:\n"
        "  image:\n"
        '    repository: "" # {"$imagepolicy": "default:ledger:name"}\n'
        '    tag: "" # {"$imagepolicy": "default:ledger:tag"}\n'
        '  sidecar: \'\' # {"$imagepolicy": "default:ledger"}\n'
        '  other: "" # not marked\n'
    )
    out = imagemarkers.rewrite(text, {"ledger": "reg.example.com/me/ledger:1.4.0"})
    assert out.problems == ()
    assert out.text == (
        "values:\n"
        "  image:\n"
        '    repository: "reg.example.com/me/ledger" # {"$imagepolicy": "default:ledger:name"}\n'
        '    tag: "1.4.0" # {"$imagepolicy": "default:ledger:tag"}\n'
        '  sidecar: \'reg.example.com/me/ledger:1.4.0\' # {"$imagepolicy": "default:ledger"}\n'
        '  other: "" # not marked\n'
    )
    # a plain empty value is still no value: the marker is reported, nothing is guessed
    bare = 'tag: # {"$imagepolicy": "default:ledger:tag"}\n'
    assert imagemarkers.rewrite(bare, {"ledger": "reg/ledger:1.4.0"}).text == bare


# A Giant Swarm App: the chart `version` set by a :tag marker, single-quoted; a template whose
# marker names its policy through a `${var}` that only Flux's post-build substitution fills.
APP = """\
apiVersion: application.giantswarm.io/v1alpha1
kind: App
metadata:
  name: hello-auto
  namespace: org-acme
spec:
  catalog: giantswarm-catalog-oci
  name: hello-world-app
  version: '0.1.8' # {"$imagepolicy": "org-acme:hello-auto:tag"}
---
apiVersion: application.giantswarm.io/v1alpha1
kind: App
metadata:
  name: ${cluster_name}-hello
spec:
  version: v0.3.0 # {"$imagepolicy": "default:${cluster_name}-hello-world:tag"}
"""


def test_an_app_version_by_tag_and_a_templated_policy_name_reported() -> None:
    out = imagemarkers.rewrite(APP, {"hello-auto": "reg.local/giantswarm/hello-world-app:0.1.9"})
    assert changed(APP, out.text) == [
        (
            """  version: '0.1.8' # {"$imagepolicy": "org-acme:hello-auto:tag"}\n""",
            """  version: '0.1.9' # {"$imagepolicy": "org-acme:hello-auto:tag"}\n""",
        )
    ]
    (templated,) = out.problems
    assert templated.line == 16
    assert "${...} variable" in templated.problem and "policy's own name" in templated.problem


def test_a_whole_image_marker_on_a_bare_name_gets_name_and_tag() -> None:
    # KubeVela's example marks `image: nginx` with no tag: Flux writes name:tag, so do we
    text = 'properties:\n  image: nginx # {"$imagepolicy": "default:image-gitops"}\n'
    out = imagemarkers.rewrite(text, {"image-gitops": "docker.io/library/nginx:1.27.1"})
    assert out.text == text.replace("nginx #", "docker.io/library/nginx:1.27.1 #")


def test_one_policy_name_in_several_namespaces_is_one_policy() -> None:
    # Flux has dev:podinfo and prod:podinfo as two policies; here the namespace is ignored
    text = "".join(
        f'{env}: main-1 # {{"$imagepolicy": "{env}:podinfo:tag"}}\n' for env in ("dev", "prod")
    )
    out = imagemarkers.rewrite(text, {"podinfo": "reg/podinfo:main-2"})
    assert out.text == text.replace("main-1", "main-2")
    assert [m.policy for m in imagemarkers.find(text)] == ["podinfo", "podinfo"]


async def test_the_shapes_in_a_real_hub_make_one_commit_changing_only_marked_scalars(
    tmp_path: pathlib.Path,
) -> None:
    with registrypush.registry_server(tmp_path / "reg") as reg:
        for tag in ("v1", "v1.0.1", "v1.1.0-rc.1"):
            registrypush.push_image(f"http://{reg.host}", "team/app", tag)
        repo = fleet.Repo.create(tmp_path / "git")
        files = {
            "apps/app/kustomization.yaml": KUSTOMIZATION,
            "apps/app/stack.yaml": STACK.replace("builders/build-base:0.1.115", "team/app:v1")
            .replace("builders/run-base:0.1.115", f"{reg.host}/team/app:v1")
            .replace("flux-system:build-base", "flux-system:app")
            .replace("flux-system:run-base", "flux-system:app"),
        }
        for path, text in files.items():
            target = repo.work / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(text.encode())  # bytes: CRLF stays CRLF
        first = repo.commit("as a Flux user has it")
        cfg = hubproc.hub_yaml(repo.url, {"app": "apps/app"})
        cfg["imageRepositories"] = [{"name": "app", "image": f"{reg.host}/team/app"}]
        cfg["imagePolicies"] = [
            {"name": "app", "repository": "app", "policy": {"semver": {"range": ">=1.0.0"}}}
        ]
        cfg["imageUpdates"] = [{"name": "apps", "repo": "platform", "paths": ["apps/"]}]
        async with hubproc.running(tmp_path / "hub", cfg) as proc:

            def commits() -> list[str]:
                fleet.git(repo.work, "fetch", "-q", "origin")
                return fleet.git(repo.work, "rev-list", f"{first}..origin/main").splitlines()

            (sha,) = await wait.until("the image commit", commits)
            await wait.until(
                "the run's status", lambda: proc.hub.image_status().updates[0].last_commit == sha
            )
            problems = proc.hub.image_status().updates[0].problems
        app = f"{reg.host}/team/app"
        show = fleet.git(repo.work, "show", f"{sha}:apps/app/kustomization.yaml")
        assert show + "\n" == KUSTOMIZATION.replace("newName: replaced", f"newName: {app}").replace(
            "newTag: v1 ", "newTag: v1.0.1 "
        )
        stack = (repo.work / "apps/app/stack.yaml").read_bytes()  # the work tree: the old one
        fleet.git(repo.work, "merge", "-q", "--ff-only", "origin/main")
        new_stack = (repo.work / "apps/app/stack.yaml").read_bytes()
        assert new_stack == stack.replace(b'"team/app:v1"', f'"{app}:v1.0.1"'.encode()).replace(
            f'"{app}:v1"'.encode(), f'"{app}:v1.0.1"'.encode()
        )
        assert new_stack.count(b"\r\n") == new_stack.count(b"\n") == 10
        assert any(
            p.startswith("apps/app/kustomization.yaml:10 (policy app): ") and "digest" in p
            for p in problems
        ), problems
        assert any("apps/app/kustomization.yaml:18 (policy worker)" in p for p in problems)
