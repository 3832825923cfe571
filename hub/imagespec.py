"""hub.yaml's image automation: `imageRepositories` (what to scan), `imagePolicies` (which tag
is the newest, hub.imagepolicy) and `imageUpdates` (which Git repo and paths get the commits).

Pure: a validated value or a ConfigError naming the file, the field path and the fix. It never
reads a credentials file (hub.registryspec does, when scanning) and never touches a registry.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
from collections.abc import Sequence
from typing import Any

from fleetops.hub import configfields, errors, imagepolicy, registryspec

REPOSITORY_FIELDS = ("name", "image", "interval", "maxTags", "exclude", "auth")
UPDATE_FIELDS = ("name", "repo", "paths", "push", "commit")
DEFAULT_MESSAGE = "images: {changes}"
_BRANCH = re.compile(r"^(?!/)(?!.*//)(?!.*\.\.)(?!.*/$)(?!.*\.lock$)[A-Za-z0-9._/-]{1,200}$")


@dataclasses.dataclass(frozen=True)
class ImageRepository:
    name: str
    image: registryspec.Image
    ref: str = ""  # the image as written in hub.yaml: what markers get, before `:tag`
    interval: float = 300.0
    max_tags: int = 5000
    exclude: tuple[re.Pattern[str], ...] = ()
    docker_config_file: str = ""  # credentials, read when scanning (never here)


@dataclasses.dataclass(frozen=True)
class ImageUpdate:
    name: str
    repo: str  # a hub.yaml repos entry
    paths: tuple[str, ...] = ()  # relative paths; empty: the whole repo
    push_branch: str = ""  # '' pushes to the repo's branch
    author_name: str = "fleetops"
    author_email: str = "fleetops@localhost"
    message: str = DEFAULT_MESSAGE


@dataclasses.dataclass(frozen=True)
class Images:
    repositories: tuple[ImageRepository, ...] = ()
    policies: tuple[imagepolicy.ImagePolicy, ...] = ()
    updates: tuple[ImageUpdate, ...] = ()


def parse(
    r: configfields.Reader,
    *,
    repositories: Any,
    policies: Any,
    updates: Any,
    repos: Sequence[str],
) -> Images:
    """The three top-level lists; `repos` are hub.yaml's Git repo names."""
    image_repos = tuple(
        _repository(r, item, f"imageRepositories[{i}]")
        for i, item in enumerate(r.items(repositories, "imageRepositories"))
    )
    _unique(r, "imageRepositories", [x.name for x in image_repos])
    names = [x.name for x in image_repos]
    image_policies = []
    for i, item in enumerate(r.items(policies, "imagePolicies")):
        p = f"imagePolicies[{i}]"
        policy = imagepolicy.parse_policy(r, item, p)
        if policy.repository not in names:
            raise r.fail(
                f"{p}.repository",
                message=f"unknown image repository {policy.repository!r}; imageRepositories: "
                f"{', '.join(names) or '(none)'}",
            )
        image_policies.append(policy)
    _unique(r, "imagePolicies", [x.name for x in image_policies])
    image_updates = tuple(
        _update(r, item, f"imageUpdates[{i}]", repos=repos)
        for i, item in enumerate(r.items(updates, "imageUpdates"))
    )
    _unique(r, "imageUpdates", [x.name for x in image_updates])
    return Images(image_repos, tuple(image_policies), image_updates)


def _repository(r: configfields.Reader, item: Any, path: str) -> ImageRepository:
    m = r.mapping(item, path, REPOSITORY_FIELDS)
    ref = r.string(m, "image", path=path, required=True)
    try:
        image = registryspec.parse_image(ref)
    except errors.HubError as e:
        raise r.fail(f"{path}.image", message=str(e)) from None
    exclude = []
    for j, text in enumerate(r.items(m.get("exclude"), f"{path}.exclude")):
        if not isinstance(text, str) or len(text) > 1024:
            raise r.fail(f"{path}.exclude[{j}]", message="expected a regular expression")
        try:
            exclude.append(re.compile(text))
        except (re.error, RecursionError, OverflowError) as e:
            raise r.fail(
                f"{path}.exclude[{j}]",
                message=f"{text[:100]!r} is not a regular expression Python can use: {e}",
            ) from None
    am = r.mapping(m.get("auth"), f"{path}.auth", ("dockerConfigFile",))
    max_tags = r.count(m, "maxTags", path=path, default=5000)
    if max_tags > 100_000:
        raise r.fail(f"{path}.maxTags", message="at most 100000 tags are read per scan")
    return ImageRepository(
        name=r.name(m, "name", path=path),
        image=image,
        ref=ref.strip(),
        interval=r.duration(m, "interval", path=path, default=300.0),
        max_tags=max_tags,
        exclude=tuple(exclude),
        docker_config_file=r.string(am, "dockerConfigFile", path=f"{path}.auth"),
    )


def _update(r: configfields.Reader, item: Any, path: str, *, repos: Sequence[str]) -> ImageUpdate:
    m = r.mapping(item, path, UPDATE_FIELDS)
    repo = r.string(m, "repo", path=path, required=True)
    if repo not in repos:
        raise r.fail(
            f"{path}.repo", message=f"unknown repo {repo!r}; repos: {', '.join(repos) or '(none)'}"
        )
    paths = []
    for j, value in enumerate(r.items(m.get("paths"), f"{path}.paths")):
        text = value if isinstance(value, str) else ""
        if not text or text.startswith("/") or ".." in pathlib.PurePosixPath(text).parts:
            raise r.fail(
                f"{path}.paths[{j}]",
                message=f"{value!r} must be a relative path inside the repository, e.g. apps/",
            )
        paths.append(text.strip("/"))
    pm = r.mapping(m.get("push"), f"{path}.push", ("branch",))
    branch = r.string(pm, "branch", path=f"{path}.push")
    if branch.startswith("refs/") or not _BRANCH.match(branch or "main"):
        raise r.fail(
            f"{path}.push.branch",
            message=f"{branch[:200]!r} is not a branch name; write the name alone, e.g. "
            f"{branch.removeprefix('refs/heads/')[:100] or 'main'!r}",
        )
    cm = r.mapping(m.get("commit"), f"{path}.commit", ("author", "message"))
    am = r.mapping(cm.get("author"), f"{path}.commit.author", ("name", "email"))
    message = r.string(cm, "message", path=f"{path}.commit", default=DEFAULT_MESSAGE)
    if len(message) > 4096:
        raise r.fail(f"{path}.commit.message", message="at most 4096 characters")
    email = r.string(am, "email", path=f"{path}.commit.author", default="fleetops@localhost")
    if "<" in email or ">" in email or "\n" in email:
        raise r.fail(f"{path}.commit.author.email", message=f"{email!r} is not an email address")
    return ImageUpdate(
        name=r.name(m, "name", path=path),
        repo=repo,
        paths=tuple(paths),
        push_branch=branch,
        author_name=r.string(am, "name", path=f"{path}.commit.author", default="fleetops"),
        author_email=email,
        message=message,
    )


def _unique(r: configfields.Reader, path: str, names: list[str]) -> None:
    seen: set[str] = set()
    for i, n in enumerate(names):
        if n in seen:
            raise r.fail(f"{path}[{i}].name", message=f"duplicate name {n!r}; names must be unique")
        seen.add(n)
