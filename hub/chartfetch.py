"""Talking to allowlisted Helm repositories: GET an index.yaml or a chart archive over HTTP(S)
(deadline, size cap, basic auth only to the repository's own host), and `helm pull` from an
OCI registry with a private registry config the hub writes (never a password on argv, in
the environment or in a log).

The network edge of hub.charts, which decides what to fetch; this module never decides, never
renders, and is given only URLs that hub.chartspec allowed.
"""

from __future__ import annotations

import base64
import json
import os
import pathlib
import re
import shutil
import ssl
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from fleetops.hub import config, errors, sandbox
from fleetops.hub.chartarchive import FetchError
from fleetops.hub.confined import Limits
from fleetops.proto import privatefile

TIMEOUT = 30.0  # seconds for one request (connect and each read)
MAX_INDEX = 64 * 1024 * 1024  # an index.yaml: the biggest public ones are tens of MiB
MAX_CHART = 32 * 1024 * 1024  # a chart archive
PULL_LIMITS = Limits(timeout=120.0, max_output=1024 * 1024)


def credentials(repo: config.HelmRepository) -> tuple[str, str] | None:
    """(username, password) from the env vars or files hub.yaml names; None without any.
    A missing variable or unreadable file is a FetchError naming it (never its value)."""
    if not (repo.username_env or repo.username_file):
        return None

    def one(env: str, file: str, what: str) -> str:
        if env:
            value = os.environ.get(env)
            if not value:
                raise FetchError(
                    f"Helm repository {repo.name}: env var {env} ({what}) is not set on the hub"
                )
            return value
        try:
            return pathlib.Path(file).read_text().strip()
        except OSError as e:
            raise FetchError(
                f"Helm repository {repo.name}: cannot read {what} file {file}: {e.strerror}"
            ) from None

    return (
        one(repo.username_env, repo.username_file, "username"),
        one(repo.password_env, repo.password_file, "password"),
    )


def get(url: str, *, repo: config.HelmRepository, what: str, max_bytes: int) -> bytes:
    """The body at `url` (http or https), at most `max_bytes`; FetchError saying what failed
    and what to do. Credentials go only to the repository's own host and port."""
    request = urllib.request.Request(url, headers={"User-Agent": "fleetops-hub"})
    own = urllib.parse.urlsplit(repo.url)
    there = urllib.parse.urlsplit(url)
    creds = credentials(repo)
    if creds is not None and (there.hostname, there.port) == (own.hostname, own.port):
        token = base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    context = ssl.create_default_context(cafile=repo.ca_file or None)
    opener = urllib.request.build_opener(
        _Redirects(with_credentials=request.has_header("Authorization")),
        urllib.request.HTTPSHandler(context=context),
    )
    try:
        with opener.open(request, timeout=TIMEOUT) as resp:
            data: bytes = resp.read(max_bytes + 1)
    except FetchError:
        raise
    except urllib.error.HTTPError as e:
        if e.code == 401 and request.has_header("Authorization"):
            e.code = 403  # sent and refused
        hint = {
            401: "the repository wants credentials: set usernameEnv/passwordEnv (or "
            "usernameFile/passwordFile) on its helmRepositories entry, or check them",
            403: "the credentials were refused; check what usernameEnv/passwordEnv (or "
            "usernameFile/passwordFile) hold",
            404: "not found; check the repository url and the chart name",
        }.get(e.code, "the repository failed")
        raise FetchError(f"{what}: {_safe(url)} answered HTTP {e.code}: {hint}") from None
    except (urllib.error.URLError, OSError, ssl.SSLError) as e:
        reason = getattr(e, "reason", e)
        raise FetchError(
            f"{what}: cannot reach {_safe(url)}: {reason}; the clusters keep what they run"
        ) from None
    if len(data) > max_bytes:
        raise FetchError(f"{what}: {_safe(url)} is over {max_bytes} bytes; refused")
    return data


class _Redirects(urllib.request.HTTPRedirectHandler):
    """Redirects within the host only when credentials were sent (they must never reach
    another host); without credentials any redirect is followed (the archive is checked
    against the index digest either way)."""

    def __init__(self, *, with_credentials: bool) -> None:
        self.with_credentials = with_credentials

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: Any,
        code: int,
        msg: str,
        headers: Any,
        newurl: str,
    ) -> urllib.request.Request | None:
        a, b = urllib.parse.urlsplit(req.full_url), urllib.parse.urlsplit(newurl)
        if self.with_credentials and (a.scheme, a.hostname, a.port) != (
            b.scheme,
            b.hostname,
            b.port,
        ):
            raise FetchError(
                f"{_safe(req.full_url)} redirected to {b.scheme}://{b.hostname}, another "
                "host; refused with credentials attached"
            )
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _safe(url: str) -> str:
    """A URL without userinfo or query (where tokens hide)."""
    p = urllib.parse.urlsplit(url)
    host = p.hostname or ""
    if p.port:
        host += f":{p.port}"
    return urllib.parse.urlunsplit((p.scheme, host, p.path, "", ""))


def registry_config(repo: config.HelmRepository, *, root: pathlib.Path) -> pathlib.Path | None:
    """A registry config (Docker's config.json shape, which helm reads) holding only this
    repository's credentials, written privately under `root`; None without credentials."""
    creds = credentials(repo)
    if creds is None:
        return None
    host = urllib.parse.urlsplit(repo.url).netloc
    auth = base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()
    path = root / "registry" / f"{repo.name}.json"
    privatefile.write(path, json.dumps({"auths": {host: {"auth": auth}}}).encode())
    return path


_PULLED = re.compile(r"^Pulled:\s*\S+:(\S+)\s*$", re.M)
_DIGEST = re.compile(r"^Digest:\s*(sha256:[0-9a-f]{64})\s*$", re.M)


def oci_pull(
    ref: str,
    *,
    version: str,
    repo: config.HelmRepository,
    tools: sandbox.Tools,
    root: pathlib.Path,
) -> tuple[pathlib.Path, str, str]:
    """`helm pull` of `ref` (oci://...) at `version` (exact or a range; "" the newest) into a
    new temporary directory under `root`: (the archive, the version pulled, the manifest
    digest). The caller moves the archive and removes the directory."""
    work = pathlib.Path(tempfile.mkdtemp(prefix="pull-", dir=root))
    try:
        return _pull(ref, version=version, repo=repo, tools=tools, root=root, work=work)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def _pull(
    ref: str,
    *,
    version: str,
    repo: config.HelmRepository,
    tools: sandbox.Tools,
    root: pathlib.Path,
    work: pathlib.Path,
) -> tuple[pathlib.Path, str, str]:
    dest = work / "out"
    dest.mkdir()
    args = [tools.helm, "pull", ref, "--destination", str(dest)]
    if version:
        args += ["--version", version]
    config_file = registry_config(repo, root=root)
    if config_file is not None:
        args += ["--registry-config", str(config_file)]
    if repo.insecure_plain_http:
        args += ["--plain-http"]
    if repo.ca_file:
        args += ["--ca-file", repo.ca_file]
    try:
        _, out = sandbox.run_both(
            args,
            what=f"helm pull {ref}",
            limits=PULL_LIMITS,
            scratch=work,
            shown={dest: "<download>"},
            network=True,
        )
    except errors.RenderError as e:
        text = str(e)
        if any(w in text.lower() for w in ("401", "403", "unauthorized", "denied", "credential")):
            text += (
                f" (Helm repository {repo.name}: check the credentials its helmRepositories "
                "entry names in usernameEnv/passwordEnv or usernameFile/passwordFile)"
            )
        elif "not found" in text.lower() or "no matching" in text.lower():
            text += " (check the chart name and that a version in the range was pushed)"
        raise FetchError(text) from None
    archives = sorted(dest.glob("*.tgz"))
    if len(archives) != 1:
        raise FetchError(f"helm pull {ref}: expected one chart archive, got {len(archives)}")
    digest = _DIGEST.search(out)
    pulled = _PULLED.search(out)
    got = pulled.group(1).replace("_", "+") if pulled else ""
    return archives[0], got, digest.group(1) if digest else ""
