#!/usr/bin/env python3
"""Publish a tag of an image to the demo's registry, as a CI job would, without Docker.

    demopush.py --registry 127.0.0.1:PORT demo/podinfo 6.8.0

It uploads a minimal OCI image (an image config, one small layer naming the image, and a
manifest) over the registry's HTTP API: each blob with one POST (an upload session) and one PUT
(the whole blob and its digest), then the manifest PUT under the tag. Every tag gets content of
its own, so its digest differs from every other tag's. Pushing a tag again with the same name
gives the same image (nothing changes).

Plain HTTP and no credentials: the demo's registry (Debian's docker-registry on loopback) wants
neither. Standard library only, so any python3 runs it. Exit status 0 when the tag is
published, 1 when the registry refused it or did not answer (the message says why), 2 for a
bad argument.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import re
import sys
import tarfile
import urllib.error
import urllib.parse
import urllib.request

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
# the distribution spec's grammars for a repository path and a tag
_PART = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
REPOSITORY = re.compile(rf"^{_PART}(?:/{_PART})*$")
TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
HOST = re.compile(r"^[A-Za-z0-9.-]+:\d{1,5}$|^\[[0-9A-Fa-f:]+\]:\d{1,5}$")
TIMEOUT = 30.0  # seconds per request


class PushError(Exception):
    """The registry refused the push or did not answer; the message says which and why."""


def _send(url: str, *, method: str, body: bytes = b"", content_type: str = "") -> dict[str, str]:
    """One request; the response's headers. PushError naming the step when it fails."""
    headers = {"Content-Type": content_type} if content_type else {}
    req = urllib.request.Request(url, data=body, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
            resp.read()
            return dict(resp.headers.items())
    except urllib.error.HTTPError as e:
        detail = e.read(2000).decode(errors="replace").strip()
        e.close()
        raise PushError(
            f"{method} {url}: the registry answered {e.code} {e.reason}: {detail}"
        ) from None
    except (urllib.error.URLError, OSError) as e:
        why = getattr(e, "reason", e)
        raise PushError(
            f"{method} {url}: no answer ({why}); is the demo running? Its instructions give "
            "its registry's address"
        ) from None


def _blob(base: str, repository: str, data: bytes) -> str:
    """Upload `data` as a blob of `repository`; its digest."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    started = _send(f"{base}/v2/{repository}/blobs/uploads/", method="POST")
    location = started.get("Location", "")
    if not location:
        raise PushError(f"{base}: the registry started an upload without a Location header")
    url = urllib.parse.urljoin(f"{base}/", location)
    sep = "&" if "?" in url else "?"
    _send(
        f"{url}{sep}digest={urllib.parse.quote(digest)}",
        method="PUT",
        body=data,
        content_type="application/octet-stream",
    )
    return digest


def _layer(text: str) -> bytes:
    """A gzipped tar holding one file, `image.txt`, with `text`: the same bytes every time."""
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        payload = text.encode()
        info = tarfile.TarInfo("image.txt")
        info.size, info.mtime, info.mode = len(payload), 0, 0o644
        tar.addfile(info, io.BytesIO(payload))
    return gzip.compress(tar_bytes.getvalue(), mtime=0)


def push(registry: str, repository: str, tag: str) -> str:
    """Publish `repository`:`tag` on `registry` (host:port, plain HTTP); the manifest's
    digest. PushError when the registry refuses or does not answer."""
    base = f"http://{registry}"
    layer = _layer(f"{registry}/{repository}:{tag}\n")
    layer_digest = _blob(base, repository, layer)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Labels": {"org.opencontainers.image.version": tag}},
            "rootfs": {
                "type": "layers",
                "diff_ids": ["sha256:" + hashlib.sha256(gzip.decompress(layer)).hexdigest()],
            },
        },
        sort_keys=True,
    ).encode()
    config_digest = _blob(base, repository, config)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": {"mediaType": CONFIG, "digest": config_digest, "size": len(config)},
            "layers": [{"mediaType": LAYER, "digest": layer_digest, "size": len(layer)}],
        },
        sort_keys=True,
    ).encode()
    _send(
        f"{base}/v2/{repository}/manifests/{tag}",
        method="PUT",
        body=manifest,
        content_type=MANIFEST,
    )
    return "sha256:" + hashlib.sha256(manifest).hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="demopush.py", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument(
        "--registry", required=True, metavar="HOST:PORT", help="the registry (plain HTTP)"
    )
    parser.add_argument("repository", help="the image's repository path, e.g. demo/podinfo")
    parser.add_argument("tag", help="the tag to publish, e.g. 6.8.0")
    ns = parser.parse_args(argv)
    if not HOST.match(ns.registry):
        parser.error(f"--registry {ns.registry!r}: give host:port, e.g. 127.0.0.1:5000")
    if not REPOSITORY.match(ns.repository) or len(ns.repository) > 255:
        parser.error(
            f"repository {ns.repository!r}: lowercase letters, digits and . _ - between them, "
            "parts separated by /, e.g. demo/podinfo"
        )
    if not TAG.match(ns.tag):
        parser.error(f"tag {ns.tag!r}: letters, digits, _ . - (not first), at most 128, e.g. 6.8.0")
    try:
        digest = push(ns.registry, ns.repository, ns.tag)
    except PushError as e:
        print(
            f"demopush: {ns.registry}/{ns.repository}:{ns.tag} was not published: {e}",
            file=sys.stderr,
        )
        return 1
    print(f"pushed {ns.registry}/{ns.repository}:{ns.tag} ({digest})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
