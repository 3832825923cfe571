"""What an agent identity is: its key, its certificate, the hub's CA, and the pure
cryptography around them (CA pins, tokens, a new key and CSR). No I/O: storage is
`agent.keystore`, registration `agent.enroll`, renewal `agent.renewal`.

It never logs a private key nor puts one in a message.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fleetops.agent import errors, ids

RENEW_AT = 2 / 3  # of the certificate's lifetime
EXPIRY_MARGIN = 3600.0  # a certificate this close to its end (or a tenth of its life) is spent


@dataclasses.dataclass(frozen=True, kw_only=True)
class Identity:
    """An agent's credentials for the hub; `cluster` is its name in the fleet."""

    cluster: ids.ClusterName
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
        return certificate(self.cert_pem).not_valid_after_utc.timestamp()

    @property
    def renewal_due(self) -> float:
        """When to renew (epoch seconds): two thirds into the certificate's lifetime."""
        cert = certificate(self.cert_pem)
        start = cert.not_valid_before_utc.timestamp()
        return start + (cert.not_valid_after_utc.timestamp() - start) * RENEW_AT

    def spent(self, now: float) -> bool:
        """Expired, or so close to it (an hour, or a tenth of its lifetime) that it is no
        use to start with."""
        cert = certificate(self.cert_pem)
        end = cert.not_valid_after_utc.timestamp()
        margin = min(EXPIRY_MARGIN, (end - cert.not_valid_before_utc.timestamp()) / 10)
        return now >= end - margin


def certificate(pem: bytes) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise errors.StateError("the agent's certificate is not a PEM certificate") from None


def when(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def ca_pin(ca_pem: bytes) -> str:
    """The hash a registration token carries for this CA."""
    return hashlib.sha256(public_key(ca_pem)).hexdigest()


def token_pin(token: str) -> str:
    """The CA pin of a token, or '' when there is no (well-formed) token."""
    try:
        return split_token(token)[1] if token else ""
    except errors.AgentError:
        return ""


def split_token(token: str) -> tuple[str, str]:
    """(the token as sent to the hub, the CA pin it carries)."""
    parts = token.strip().split(".")
    if len(parts) != 3 or len(parts[2]) != 64:
        raise errors.AgentError(
            "malformed registration token: expected <id>.<secret>.<ca-hash> as printed by "
            "`fleetops-hub token create`"
        )
    return token.strip(), parts[2].lower()


def public_key(pem: bytes) -> bytes:
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise errors.AgentError(
            "the hub CA given (--ca, or ca.crt in the identity Secret) is not a PEM certificate"
        ) from None
    return spki(cert)


def spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def new_key_and_csr() -> tuple[bytes, bytes]:
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
