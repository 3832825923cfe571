"""The agent's identity: a private key that never leaves it, and the certificate the hub's CA
signed for it. Registration happens once: the token pins the hub's CA (its public-key hash),
so the agent checks whom it talks to before sending anything, with no CA file to copy.

    <state>/identity/agent.key   EC private key (0600)
    <state>/identity/agent.crt   client certificate from the hub
    <state>/identity/ca.crt      the hub's CA, as pinned at registration
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import os
import pathlib
import socket
import ssl

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent import errors, kube
from proto.fleetops.v1 import agent_pb2, agent_pb2_grpc


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


def _dir(state: pathlib.Path) -> pathlib.Path:
    return state / "identity"


def load(state: pathlib.Path) -> Identity | None:
    d = _dir(state)
    try:
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


def _save(state: pathlib.Path, name: str, data: bytes) -> None:
    d = _dir(state)
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(d / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


_FILES = ("agent.key", "agent.crt", "ca.crt", "agent-port")
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


async def restore(state: pathlib.Path, client: kube.Kube, ref: str, token: str = "") -> bool:
    """In a pod the state directory is an emptyDir: bring the identity kept in a Secret back
    into it, so a restarted agent does not need a new registration token. An identity from
    another hub than the token's (a re-install) is left alone. True when restored."""
    if load(state) is not None:
        return False
    namespace, name = _secret_ref(ref)
    secret = await client.get(_SECRET, namespace, name)
    data = (secret or {}).get("data") or {}
    if not all(f in data for f in _FILES):
        return False
    pin = _token_pin(token)
    if pin and ca_pin(base64.b64decode(data["ca.crt"])) != pin:
        return False
    for f in _FILES:
        _save(state, f, base64.b64decode(data[f]))
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
    return cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def fetch_pinned_ca(address: str, pin: str, *, timeout: float = 10.0) -> bytes:
    """The hub's CA certificate, taken from its TLS handshake and accepted only when its
    public-key hash is the one in the token (the hub presents its CA as its certificate)."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # verified below, by the pin
    ctx.set_alpn_protocols(["h2"])
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as sock:
            with ctx.wrap_socket(sock, server_hostname=host) as tls:
                der = tls.getpeercert(binary_form=True)
    except (OSError, ValueError) as e:
        raise errors.AgentError(f"cannot reach the hub at {address}: {e}") from None
    if not der:
        raise errors.AgentError(f"the hub at {address} presented no certificate")
    pem = x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)
    if ca_pin(pem) != pin:
        raise errors.AgentError(
            f"the server at {address} is not the hub that issued this token (CA hash mismatch); "
            "check --hub, or create a new token on the right hub"
        )
    return pem


def register(
    state: pathlib.Path,
    address: str,
    token: str,
    labels: dict[str, str],
    *,
    ca_pem: bytes = b"",
) -> Identity:
    """Register with the hub once and keep the result; later calls return what was kept.
    With `ca_pem` (the CA file of an install), the hub must also present that very CA."""
    known = load(state)
    pin = _token_pin(token)
    if known is not None and (not pin or ca_pin(known.ca_pem) == pin):
        return known  # a token for another hub (a move to a new hub) registers again
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
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fleetops-agent")]))
        .sign(key, hashes.SHA256())
    )
    channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(root_certificates=ca_pem))
    try:
        resp = agent_pb2_grpc.AgentServiceStub(channel).Register(
            agent_pb2.RegisterRequest(
                token=raw, csr_pem=csr.public_bytes(serialization.Encoding.PEM), labels=labels
            ),
            timeout=30,
        )
    except grpc.RpcError as e:
        raise errors.AgentError(f"registration refused by the hub: {e.details()}") from None
    finally:
        channel.close()
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _save(state, "agent.key", key_pem)
    _save(state, "ca.crt", resp.ca_pem or ca_pem)
    _save(state, "agent-port", str(resp.agent_port).encode())
    _save(state, "agent.crt", resp.certificate_pem)
    return Identity(
        resp.cluster, key_pem, resp.certificate_pem, resp.ca_pem or ca_pem, resp.agent_port
    )
