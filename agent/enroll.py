"""Registers the agent with the hub, once: the token pins the hub's CA (its public-key hash), so
the agent checks whom it talks to before sending anything, with no CA file to copy. The hub
signs a CSR for a key made here; the result is saved with `agent.keystore`.

It never sends the private key anywhere, and never logs it.
"""

from __future__ import annotations

import hashlib
import logging
import pathlib
import socket
import ssl
import time

import grpc
from cryptography import exceptions, x509
from cryptography.hazmat.primitives import serialization

from fleetops.agent import credentials, errors, ids, keystore
from fleetops.agent.credentials import Identity
from fleetops.proto.v1 import agent_pb2, agent_pb2_grpc

log = logging.getLogger("fleetops.agent")


def presented_chain(tls: ssl.SSLSocket) -> list[bytes]:
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


def fetch_pinned_ca(address: str, *, pin: str, timeout: float = 10.0) -> bytes:
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
                chain = presented_chain(tls)
    except (OSError, ValueError) as e:
        raise errors.AgentError(f"cannot reach the hub at {address}: {e}") from None
    if not chain:
        raise errors.AgentError(f"the hub at {address} presented no certificate")
    try:
        certs = [x509.load_der_x509_certificate(der) for der in chain]
    except ValueError:
        raise errors.AgentError(f"the hub at {address} presented a malformed certificate") from None
    pinned = [c for c in certs if hashlib.sha256(credentials.spki(c)).hexdigest() == pin]
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


def register(
    state: pathlib.Path,
    *,
    hub: str,
    token: str,
    labels: dict[str, str],
    ca_pem: bytes = b"",
    now: float | None = None,
) -> Identity:
    """Register with the hub once and keep the result; later calls return what was kept,
    unless its certificate has expired (or is about to) or the token is another hub's.
    With `ca_pem` (the CA file of an install), the hub must also present that very CA."""
    known = keystore.load(state)
    pin = credentials.token_pin(token)
    if known is not None and (not pin or credentials.ca_pin(known.ca_pem) == pin):
        if not known.spent(time.time() if now is None else now):
            return known  # a token for another hub (a move to a new hub) registers again
        if not token:
            raise errors.AgentError(
                f"the certificate of cluster {known.cluster} expired at "
                f"{credentials.when(known.expires)} "
                "(it was not renewed in time); register again: pass --token with a new token "
                f"from `fleetops-hub token create --cluster {known.cluster}`"
            )
        log.info(
            "the certificate of cluster %s expired at %s; registering again with the token",
            known.cluster,
            credentials.when(known.expires),
        )
    if not token:
        raise errors.AgentError(
            "this agent is not registered yet: pass --token (from `fleetops-hub token create`)"
        )
    raw, pin = credentials.split_token(token)
    pinned = fetch_pinned_ca(hub, pin=pin)
    if ca_pem and credentials.ca_pin(ca_pem) != pin:
        raise errors.AgentError(
            f"the hub at {hub} does not present the CA given with --ca; check --hub and the "
            "CA in the agent's Secret"
        )
    ca_pem = pinned
    key_pem, csr_pem = credentials.new_key_and_csr()
    channel = grpc.secure_channel(hub, grpc.ssl_channel_credentials(root_certificates=ca_pem))
    try:
        resp = agent_pb2_grpc.AgentServiceStub(channel).Register(
            agent_pb2.RegisterRequest(token=raw, csr_pem=csr_pem, labels=labels), timeout=30
        )
    except grpc.RpcError as e:
        raise errors.AgentError(f"registration refused by the hub: {e.details()}") from None
    finally:
        channel.close()
    me = Identity(
        cluster=ids.ClusterName(resp.cluster),
        key_pem=key_pem,
        cert_pem=resp.certificate_pem,
        ca_pem=resp.ca_pem or ca_pem,
        agent_port=resp.agent_port,
    )
    keystore.save(state, keystore.files_of(me))
    return me
