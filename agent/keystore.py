"""Where the agent's identity is kept: files in the state directory, replaced as a whole, and
(in a pod, whose state directory is an emptyDir) a copy in a Secret.

    <state>/identity/agent.key   EC private key (0600)
    <state>/identity/agent.crt   client certificate from the hub
    <state>/identity/ca.crt      the hub's CA, as pinned at registration
    <state>/identity/agent-port  the hub's mTLS port for agents
    <state>/identity/next/       a new identity being saved (see `save`)

A crash while saving leaves the old identity or the new one, never a mix. An identity whose
certificate is spent, or from another hub than the token's, is never restored from the Secret.
It never logs the private key.
"""

from __future__ import annotations

import base64
import logging
import os
import pathlib
import shutil
import time

from cryptography import x509
from cryptography.x509.oid import NameOID

from fleetops.agent import credentials, errors, ids, kube
from fleetops.agent.credentials import Identity

log = logging.getLogger("fleetops.agent")


def _dir(state: pathlib.Path) -> pathlib.Path:
    return state / "identity"


_FILES = ("agent.key", "agent.crt", "ca.crt", "agent-port")
_COMPLETE = "complete"


def load(state: pathlib.Path) -> Identity | None:
    d = _dir(state)
    try:
        _settle(d)
        cert_pem = (d / "agent.crt").read_bytes()
        cert = x509.load_pem_x509_certificate(cert_pem)
        cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        port_file = d / "agent-port"
        port = int(port_file.read_text()) if port_file.exists() else 0
        key_pem = (d / "agent.key").read_bytes()
        return Identity(
            cluster=ids.ClusterName(str(cn)),
            key_pem=key_pem,
            cert_pem=cert_pem,
            ca_pem=(d / "ca.crt").read_bytes(),
            agent_port=port,
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, IndexError) as e:
        raise errors.StateError(
            f"agent identity in {d} is unreadable ({e}); delete it to register again"
        ) from None


def _write(path: pathlib.Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _sync_dir(d: pathlib.Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _settle(d: pathlib.Path) -> None:
    """Finish or forget a save that was cut short: a complete `next/` is moved into place
    (again, file by file), an incomplete one is dropped and the old identity stands."""
    nxt = d / "next"
    if not nxt.exists():
        return
    if (nxt / _COMPLETE).exists():
        for name in _FILES:
            if (nxt / name).exists():
                os.replace(nxt / name, d / name)
        _sync_dir(d)
    shutil.rmtree(nxt)


def save(state: pathlib.Path, files: dict[str, bytes]) -> None:
    """Replace the identity as a whole: a crash leaves the old one or the new one, never a
    key of one with the certificate of the other. Written into `next/` first, marked
    complete, then moved into place; `load` finishes a move that was interrupted."""
    d = _dir(state)
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    _settle(d)
    nxt = d / "next"
    nxt.mkdir(mode=0o700)
    for name in _FILES:
        _write(nxt / name, files[name])
    _sync_dir(nxt)
    _write(nxt / _COMPLETE, b"")
    _sync_dir(nxt)
    _settle(d)


def files_of(me: Identity) -> dict[str, bytes]:
    return {
        "agent.key": me.key_pem,
        "agent.crt": me.cert_pem,
        "ca.crt": me.ca_pem,
        "agent-port": str(me.agent_port).encode(),
    }


SECRET = kube.ResourceType(group="", version="v1", kind="Secret", plural="secrets", namespaced=True)


def _secret_ref(ref: str) -> tuple[str, str]:
    namespace, sep, name = ref.partition("/")
    if not sep or not namespace or not name:
        raise errors.AgentError(f"--identity-secret {ref!r}: use NAMESPACE/NAME")
    return namespace, name


async def restore(
    state: pathlib.Path,
    client: kube.Kube,
    *,
    secret: str,
    token: str = "",
    now: float | None = None,
) -> bool:
    """In a pod the state directory is an emptyDir: bring the identity kept in a Secret back
    into it, so a restarted agent does not need a new registration token. An identity from
    another hub than the token's (a re-install), or one whose certificate has expired (or is
    about to), is left alone. True when restored."""
    if load(state) is not None:
        return False
    namespace, name = _secret_ref(secret)
    found = await client.get(SECRET, namespace=namespace, name=name)
    data = (found or {}).get("data") or {}
    if not all(f in data for f in _FILES):
        return False
    files = {f: base64.b64decode(data[f]) for f in _FILES}
    pin = credentials.token_pin(token)
    if pin and credentials.ca_pin(files["ca.crt"]) != pin:
        return False
    kept = Identity(
        cluster=ids.ClusterName(""),
        key_pem=files["agent.key"],
        cert_pem=files["agent.crt"],
        ca_pem=files["ca.crt"],
        agent_port=0,
    )
    if kept.spent(time.time() if now is None else now):
        log.warning(
            "the identity in Secret %s expired at %s; not restored (a new token registers "
            "the agent again)",
            secret,
            credentials.when(kept.expires),
        )
        return False
    save(state, files)
    return load(state) is not None


async def keep(state: pathlib.Path, client: kube.Kube, *, secret: str) -> None:
    """Keep the identity in the Secret `secret` (NAMESPACE/NAME): created, or updated when it
    differs."""
    namespace, name = _secret_ref(secret)
    d = _dir(state)
    data = {f: base64.b64encode((d / f).read_bytes()).decode() for f in _FILES}
    body: dict[str, object] = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/name": "fleetops-agent"},
        },
        "data": data,
    }
    live = await client.get(SECRET, namespace=namespace, name=name)
    if live is None:
        await client.create(SECRET, body)
    elif live.get("data") != data:
        body["metadata"] = {**live["metadata"], "name": name, "namespace": namespace}
        await client.replace(SECRET, body)
