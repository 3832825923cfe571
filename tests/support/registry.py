"""Images in a real registry without Docker: `push_image` uploads a minimal OCI image (a
config blob, one tiny layer, a manifest) over the distribution API (monolithic POST+PUT blob
uploads, the tag set by the manifest PUT), each tag with its own content so digests differ.
The registry itself is Debian's docker-registry, started as tests.support.chartrepo does
(`registry_server`, re-exported here)."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import tarfile
import urllib.parse
import urllib.request

from tests.support import chartrepo

registry_server = chartrepo.oci_registry  # (root, *, auth="user:password") -> OciRegistry

MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def _request(
    url: str, *, method: str, body: bytes = b"", headers: dict[str, str], auth: str
) -> tuple[int, dict[str, str]]:
    all_headers = dict(headers)
    if auth:
        all_headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
    req = urllib.request.Request(url, data=body or None, headers=all_headers, method=method)
    with urllib.request.urlopen(req, timeout=30) as resp:
        resp.read()
        return int(resp.status), dict(resp.headers.items())


def _push_blob(base: str, repo: str, data: bytes, *, auth: str) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    _, headers = _request(f"{base}/v2/{repo}/blobs/uploads/", method="POST", headers={}, auth=auth)
    location = urllib.parse.urljoin(base + "/", headers["Location"])
    sep = "&" if "?" in location else "?"
    _request(
        f"{location}{sep}digest={urllib.parse.quote(digest)}",
        method="PUT",
        body=data,
        headers={"Content-Type": "application/octet-stream"},
        auth=auth,
    )
    return digest


def _layer(text: str) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        payload = text.encode()
        info = tarfile.TarInfo("tag.txt")
        info.size = len(payload)
        info.mtime = 0
        tar.addfile(info, io.BytesIO(payload))
    return gzip.compress(raw.getvalue(), mtime=0)


def push_image(registry_url: str, repo: str, tag: str, *, auth: str = "") -> str:
    """Push a minimal OCI image as `repo`:`tag` to `registry_url` (http://host:port), with
    basic `auth` ("user:password") when given; the manifest's digest (sha256:...)."""
    base = registry_url.rstrip("/")
    layer = _layer(f"{repo}:{tag}\n")
    layer_digest = _push_blob(base, repo, layer, auth=auth)
    diff_id = "sha256:" + hashlib.sha256(gzip.decompress(layer)).hexdigest()
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Labels": {"tag": tag}},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        },
        sort_keys=True,
    ).encode()
    config_digest = _push_blob(base, repo, config, auth=auth)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": layer_digest,
                    "size": len(layer),
                }
            ],
        },
        sort_keys=True,
    ).encode()
    _request(
        f"{base}/v2/{repo}/manifests/{tag}",
        method="PUT",
        body=manifest,
        headers={"Content-Type": MANIFEST},
        auth=auth,
    )
    return "sha256:" + hashlib.sha256(manifest).hexdigest()
