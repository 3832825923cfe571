"""The agent's identity: a private key that never leaves it, and the certificate the hub's CA
signed for it. Registration happens once: the token pins the hub's CA (its public-key hash),
so the agent checks whom it talks to before sending anything, with no CA file to copy.

The certificate has a lifetime (the hub's `--cert-lifetime`, 90 days by default). The agent
renews it over mTLS at two thirds of that lifetime, read from the certificate itself, with a
new key and CSR (`keep_renewed`); failures are retried with backoff and logged. An identity
whose certificate has expired (or is about to) is never handed back or restored: a fresh
token registers the agent again.

    <state>/identity/agent.key   EC private key (0600)
    <state>/identity/agent.crt   client certificate from the hub
    <state>/identity/ca.crt      the hub's CA, as pinned at registration
    <state>/identity/agent-port  the hub's mTLS port for agents
    <state>/identity/next/       a new identity being saved (see `save`)

It never sends the private key anywhere, and never logs it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import datetime
import hashlib
import logging
import os
import pathlib
import random
import shutil
import socket
import ssl
import time
from collections.abc import Callable
from typing import Protocol

import grpc
from cryptography import exceptions, x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fleetops.agent import errors, kube
from fleetops.proto.v1 import agent_pb2, agent_pb2_grpc

log = logging.getLogger("fleetops.agent")

RENEW_AT = 2 / 3  # of the certificate's lifetime
EXPIRY_MARGIN = 3600.0  # a certificate this close to its end (or a tenth of its life) is spent
RETRY_FIRST = 5.0
RETRY_MAX = 600.0
MAX_NAP = 3600.0  # look at the clock at least this often (suspend, clock changes)


@dataclasses.dataclass(frozen=True)
class Identity:
    cluster: str
    key_pem: bytes
    cert_pem: bytes
    ca_pem: bytes
    agent_port: int

    def stream_address(self, hub: str) -> str:
        """Where to stream: the hub's host, on the mTLS port it gave at registration."""
        host = hub.rpartition(":")[0]
        return f"{host}:{self.agent_port}" if self.agent_port else hub

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca_pem, private_key=self.key_pem, certificate_chain=self.cert_pem
        )

    @property
    def expires(self) -> float:
        """The certificate's notAfter, in epoch seconds."""
        return _cert(self.cert_pem).not_valid_after_utc.timestamp()

    @property
    def renewal_due(self) -> float:
        """When to renew (epoch seconds): two thirds into the certificate's lifetime."""
        cert = _cert(self.cert_pem)
        start = cert.not_valid_before_utc.timestamp()
        return start + (cert.not_valid_after_utc.timestamp() - start) * RENEW_AT

    def spent(self, now: float) -> bool:
        """Expired, or so close to it (an hour, or a tenth of its lifetime) that it is no
        use to start with."""
        cert = _cert(self.cert_pem)
        end = cert.not_valid_after_utc.timestamp()
        margin = min(EXPIRY_MARGIN, (end - cert.not_valid_before_utc.timestamp()) / 10)
        return now >= end - margin


def _cert(pem: bytes) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise errors.StateError("the agent's certificate is not a PEM certificate") from None


def _when(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


# ---------------------------------------------------------------- on disk


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
        return Identity(str(cn), key_pem, cert_pem, (d / "ca.crt").read_bytes(), port)
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


def _files(me: Identity) -> dict[str, bytes]:
    return {
        "agent.key": me.key_pem,
        "agent.crt": me.cert_pem,
        "ca.crt": me.ca_pem,
        "agent-port": str(me.agent_port).encode(),
    }


# ---------------------------------------------------------------- the identity Secret

_SECRET = kube.ResourceType("", "v1", "Secret", "secrets", namespaced=True)


def _secret_ref(ref: str) -> tuple[str, str]:
    namespace, sep, name = ref.partition("/")
    if not sep or not namespace or not name:
        raise errors.AgentError(f"--identity-secret {ref!r}: use NAMESPACE/NAME")
    return namespace, name


def ca_pin(ca_pem: bytes) -> str:
    """The hash a registration token carries for this CA."""
    return hashlib.sha256(_public_key(ca_pem)).hexdigest()


def _token_pin(token: str) -> str:
    """The CA pin of a token, or '' when there is no (well-formed) token."""
    try:
        return split_token(token)[1] if token else ""
    except errors.AgentError:
        return ""


async def restore(
    state: pathlib.Path, client: kube.Kube, ref: str, token: str = "", *, now: float | None = None
) -> bool:
    """In a pod the state directory is an emptyDir: bring the identity kept in a Secret back
    into it, so a restarted agent does not need a new registration token. An identity from
    another hub than the token's (a re-install), or one whose certificate has expired (or is
    about to), is left alone. True when restored."""
    if load(state) is not None:
        return False
    namespace, name = _secret_ref(ref)
    secret = await client.get(_SECRET, namespace, name)
    data = (secret or {}).get("data") or {}
    if not all(f in data for f in _FILES):
        return False
    files = {f: base64.b64decode(data[f]) for f in _FILES}
    pin = _token_pin(token)
    if pin and ca_pin(files["ca.crt"]) != pin:
        return False
    kept = Identity("", files["agent.key"], files["agent.crt"], files["ca.crt"], 0)
    if kept.spent(time.time() if now is None else now):
        log.warning(
            "the identity in Secret %s expired at %s; not restored (a new token registers "
            "the agent again)",
            ref,
            _when(kept.expires),
        )
        return False
    save(state, files)
    return load(state) is not None


async def keep(state: pathlib.Path, client: kube.Kube, ref: str) -> None:
    """Keep the identity in a Secret (created, or updated when it differs)."""
    namespace, name = _secret_ref(ref)
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
    live = await client.get(_SECRET, namespace, name)
    if live is None:
        await client.create(_SECRET, body)
    elif live.get("data") != data:
        body["metadata"] = {**live["metadata"], "name": name, "namespace": namespace}
        await client.replace(_SECRET, body)


# ---------------------------------------------------------------- registration


def split_token(token: str) -> tuple[str, str]:
    """(the token as sent to the hub, the CA pin it carries)."""
    parts = token.strip().split(".")
    if len(parts) != 3 or len(parts[2]) != 64:
        raise errors.AgentError(
            "malformed registration token: expected <id>.<secret>.<ca-hash> as printed by "
            "`fleetops-hub token create`"
        )
    return token.strip(), parts[2].lower()


def _public_key(pem: bytes) -> bytes:
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise errors.AgentError(
            "the hub CA given (--ca, or ca.crt in the identity Secret) is not a PEM certificate"
        ) from None
    return _spki(cert)


def _spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _presented_chain(tls: ssl.SSLSocket) -> list[bytes]:
    """The certificates the server sent, leaf first, DER, unverified."""
    public = getattr(tls, "get_unverified_chain", None)  # Python 3.13+: DER bytes
    if public is not None:
        return [bytes(c) for c in public() or []]
    private = getattr(getattr(tls, "_sslobj", None), "get_unverified_chain", None)  # 3.10-3.12
    if private is not None:
        der = getattr(ssl, "_ssl").ENCODING_DER  # noqa: B009 (not in the typeshed stubs)
        return [c.public_bytes(der) for c in private() or []]
    leaf = tls.getpeercert(binary_form=True)
    return [leaf] if leaf else []


def fetch_pinned_ca(address: str, pin: str, *, timeout: float = 10.0) -> bytes:
    """The hub's CA certificate, found in the chain of its TLS handshake and accepted only
    when its public-key hash is the one in the token and it signed the certificate the hub
    presented (its serving leaf; an older hub presents the CA itself)."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # verified below, by the pin
    ctx.set_alpn_protocols(["h2"])
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as sock:
            with ctx.wrap_socket(sock, server_hostname=host) as tls:
                chain = _presented_chain(tls)
    except (OSError, ValueError) as e:
        raise errors.AgentError(f"cannot reach the hub at {address}: {e}") from None
    if not chain:
        raise errors.AgentError(f"the hub at {address} presented no certificate")
    try:
        certs = [x509.load_der_x509_certificate(der) for der in chain]
    except ValueError:
        raise errors.AgentError(f"the hub at {address} presented a malformed certificate") from None
    pinned = [c for c in certs if hashlib.sha256(_spki(c)).hexdigest() == pin]
    if not pinned:
        raise errors.AgentError(
            f"the server at {address} is not the hub that issued this token (CA hash mismatch); "
            "check --hub, or create a new token on the right hub"
        )
    ca = pinned[0]
    try:
        is_ca = ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        certs[0].verify_directly_issued_by(ca)
    except (x509.ExtensionNotFound, ValueError, TypeError, exceptions.InvalidSignature):
        is_ca = False
    if not is_ca:
        raise errors.AgentError(
            f"the server at {address} sent the pinned CA, but a certificate that CA did not "
            "sign: it is not the hub that issued this token"
        )
    return ca.public_bytes(serialization.Encoding.PEM)


def _new_key_and_csr() -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fleetops-agent")]))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key_pem, csr.public_bytes(serialization.Encoding.PEM)


def register(
    state: pathlib.Path,
    address: str,
    token: str,
    labels: dict[str, str],
    *,
    ca_pem: bytes = b"",
    now: float | None = None,
) -> Identity:
    """Register with the hub once and keep the result; later calls return what was kept,
    unless its certificate has expired (or is about to) or the token is another hub's.
    With `ca_pem` (the CA file of an install), the hub must also present that very CA."""
    known = load(state)
    pin = _token_pin(token)
    if known is not None and (not pin or ca_pin(known.ca_pem) == pin):
        if not known.spent(time.time() if now is None else now):
            return known  # a token for another hub (a move to a new hub) registers again
        if not token:
            raise errors.AgentError(
                f"the certificate of cluster {known.cluster} expired at {_when(known.expires)} "
                "(it was not renewed in time); register again: pass --token with a new token "
                f"from `fleetops-hub token create --cluster {known.cluster}`"
            )
        log.info(
            "the certificate of cluster %s expired at %s; registering again with the token",
            known.cluster,
            _when(known.expires),
        )
    if not token:
        raise errors.AgentError(
            "this agent is not registered yet: pass --token (from `fleetops-hub token create`)"
        )
    raw, pin = split_token(token)
    pinned = fetch_pinned_ca(address, pin)
    if ca_pem and ca_pin(ca_pem) != pin:
        raise errors.AgentError(
            f"the hub at {address} does not present the CA given with --ca; check --hub and the "
            "CA in the agent's Secret"
        )
    ca_pem = pinned
    key_pem, csr_pem = _new_key_and_csr()
    channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(root_certificates=ca_pem))
    try:
        resp = agent_pb2_grpc.AgentServiceStub(channel).Register(
            agent_pb2.RegisterRequest(token=raw, csr_pem=csr_pem, labels=labels), timeout=30
        )
    except grpc.RpcError as e:
        raise errors.AgentError(f"registration refused by the hub: {e.details()}") from None
    finally:
        channel.close()
    me = Identity(
        resp.cluster, key_pem, resp.certificate_pem, resp.ca_pem or ca_pem, resp.agent_port
    )
    save(state, _files(me))
    return me


# ---------------------------------------------------------------- renewal


async def renew(
    state: pathlib.Path, address: str, me: Identity, *, deadline: float = 30.0
) -> Identity:
    """A new key and a certificate for it, asked for over mTLS with the current certificate
    and saved in place of the current identity. Nothing is saved when anything fails: the
    current identity stays (the hub keeps accepting it until the new one is first used).
    `deadline`: seconds the hub has to answer."""
    key_pem, csr_pem = _new_key_and_csr()
    try:
        async with grpc.aio.secure_channel(me.stream_address(address), me.credentials()) as channel:
            resp = await agent_pb2_grpc.AgentServiceStub(channel).Renew(
                agent_pb2.RenewRequest(csr_pem=csr_pem), timeout=deadline
            )
    except grpc.aio.AioRpcError as e:
        raise errors.AgentError(
            f"certificate renewal failed: {e.code().name}: {e.details()}"
        ) from None
    new = Identity(me.cluster, key_pem, bytes(resp.certificate_pem), me.ca_pem, me.agent_port)
    _check_issued(new, csr_pem)
    if resp.ca_pem and ca_pin(bytes(resp.ca_pem)) == ca_pin(me.ca_pem):
        new = dataclasses.replace(new, ca_pem=bytes(resp.ca_pem))  # the same CA, reissued
    await asyncio.to_thread(save, state, _files(new))
    return new


def _check_issued(new: Identity, csr_pem: bytes) -> None:
    """The hub's answer is a certificate for our new key and our cluster, from our CA."""
    try:
        cert = x509.load_pem_x509_certificate(new.cert_pem)
        ca = x509.load_pem_x509_certificate(new.ca_pem)
        cert.verify_directly_issued_by(ca)
        cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    except (ValueError, TypeError, IndexError, exceptions.InvalidSignature):
        raise errors.AgentError(
            "certificate renewal: the hub's answer is not a certificate from its CA"
        ) from None
    csr = x509.load_pem_x509_csr(csr_pem)
    if (
        _spki(cert)
        != csr.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        or str(cn) != new.cluster
    ):
        raise errors.AgentError(
            f"certificate renewal: the hub's certificate is not for this key and cluster "
            f"{new.cluster}"
        )


class Clock(Protocol):
    """Time for the renewal loop; tests hand in one they move by hand."""

    def now(self) -> float:
        """Epoch seconds, comparable with certificate times."""
        ...

    async def sleep(self, seconds: float, stop: asyncio.Event) -> None:
        """Return after `seconds`, or as soon as `stop` is set."""
        ...


class SystemClock:
    def now(self) -> float:
        return time.time()

    async def sleep(self, seconds: float, stop: asyncio.Event) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=max(seconds, 0.0))


async def keep_renewed(
    *,
    state: pathlib.Path,
    address: str,
    current: Callable[[], Identity],
    renewed: Callable[[Identity], None],
    stop: asyncio.Event,
    clock: Clock | None = None,
    client: kube.Kube | None = None,
    secret: str = "",
    deadline: float = 30.0,
) -> None:
    """Renew `current()` at two thirds of its certificate's lifetime, until `stop`. A renewed
    identity is saved (and kept in the `secret` NAMESPACE/NAME too, when given) before
    `renewed` is told, so the agent switches to it only once a restart would find it.
    Failures are logged and retried with backoff (5 s doubling to 10 min)."""
    clock = clock or SystemClock()
    failures = 0
    retry_at = 0.0
    while not stop.is_set():
        me = current()
        wait = max(me.renewal_due, retry_at) - clock.now()
        if wait > 0:
            await clock.sleep(min(wait, MAX_NAP), stop)
            continue
        try:
            new = await renew(state, address, me, deadline=deadline)
            if client is not None and secret:
                await keep(state, client, secret)
        except (errors.AgentError, OSError) as e:
            failures += 1
            delay = min(RETRY_FIRST * 2 ** (failures - 1), RETRY_MAX) * random.uniform(0.9, 1.1)
            retry_at = clock.now() + delay
            if clock.now() >= me.expires:
                log.error(
                    "the certificate of cluster %s expired at %s and cannot be renewed (%s); "
                    "register the agent again with a new token from `fleetops-hub token "
                    "create --cluster %s`",
                    me.cluster,
                    _when(me.expires),
                    e,
                    me.cluster,
                )
            else:
                log.warning(
                    "renewing the certificate of cluster %s failed (attempt %d): %s; retrying "
                    "in %.0f s (it expires at %s)",
                    me.cluster,
                    failures,
                    e,
                    delay,
                    _when(me.expires),
                )
            continue
        failures, retry_at = 0, 0.0
        renewed(new)
        log.info(
            "renewed the certificate of cluster %s: valid until %s, next renewal at %s",
            new.cluster,
            _when(new.expires),
            _when(new.renewal_due),
        )
