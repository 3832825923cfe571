"""The hub's certificate authority, registration tokens and API tokens.

The hub's TLS identity is its CA certificate itself (self-signed, with the hub's addresses as
SANs): an agent that holds a registration token can check the certificate the hub presents
against the hash in the token, as kubeadm's discovery hash does, and then trust it as its
root, with no CA file to copy around. Agents send a CSR; their private keys never leave them.

Never log a token's secret or a private key.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import hmac
import ipaddress
import os
import pathlib
import secrets
import socket

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hub import errors

AGENT_ORG = "fleetops-agents"


def spki_hash(cert: x509.Certificate) -> str:
    der = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def _san(names: list[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for n in sorted(set(names)):
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            entries.append(x509.DNSName(n))
    return x509.SubjectAlternativeName(entries)


def _write_private(path: pathlib.Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


@dataclasses.dataclass(frozen=True)
class CA:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    @property
    def pin(self) -> str:
        return spki_hash(self.cert)

    def sign_csr(self, csr_pem: bytes, cluster: str, *, days: int = 365) -> bytes:
        """A client certificate for `cluster` (its name is the CN, whatever the CSR asked)."""
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError:
            raise errors.InvalidArgument(
                "csr_pem is not a PEM certificate signing request"
            ) from None
        if not csr.is_signature_valid:
            raise errors.InvalidArgument("the CSR's signature does not verify")
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name(
                    [
                        x509.NameAttribute(NameOID.ORGANIZATION_NAME, AGENT_ORG),
                        x509.NameAttribute(NameOID.COMMON_NAME, cluster),
                    ]
                )
            )
            .issuer_name(self.cert.subject)
            .public_key(csr.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_encipherment=False,
                    content_commitment=False,
                    data_encipherment=False,
                    key_agreement=True,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self.key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM)


def default_names() -> list[str]:
    return ["127.0.0.1", "localhost", "::1", socket.gethostname()]


def new_key_pem() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def load_or_create(
    data: pathlib.Path, names: list[str], *, key_file: pathlib.Path | None = None
) -> CA:
    """The CA in data/ca.{key,crt}, made on first start. When the hub's names change the
    certificate is reissued with the same key and subject, so pins and agent certs stay valid.
    `key_file` (a key kept in a Secret) is used instead of data/ca.key when it exists."""
    data.mkdir(parents=True, exist_ok=True)
    key_path, cert_path = data / "ca.key", data / "ca.crt"
    if key_file is not None and key_file.exists():
        try:
            key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
        except ValueError:
            raise errors.HubError(
                f"--ca-key {key_file}: not a PEM private key; make one with "
                "`fleetops-hub ca new-key`"
            ) from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise errors.HubError(f"--ca-key {key_file}: not an EC private key")
        if cert_path.exists():
            old = x509.load_pem_x509_certificate(cert_path.read_bytes())
            if old.public_key() != key.public_key():
                cert_path.unlink()  # the Secret's key wins; the certificate is made anew
    elif key_path.exists():
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise errors.HubError(f"{key_path} is not an EC private key")
    else:
        key = ec.generate_private_key(ec.SECP256R1())
        _write_private(
            key_path,
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )
    wanted = sorted(set(names))
    if cert_path.exists():
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            have = sorted(str(v) for v in san.get_values_for_type(x509.DNSName)) + sorted(
                str(v) for v in san.get_values_for_type(x509.IPAddress)
            )
        except x509.ExtensionNotFound:
            have = []
        if sorted(have) == sorted(str(_norm(n)) for n in wanted):
            return CA(key, cert)
        subject = cert.subject
    else:
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fleetops"),
                x509.NameAttribute(NameOID.COMMON_NAME, f"fleetops-hub-ca-{secrets.token_hex(4)}"),
            ]
        )
    now = datetime.datetime.now(datetime.UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=True,
                content_commitment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(_san(wanted), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return CA(key, cert)


def _norm(name: str) -> str:
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        return name


# ---------------------------------------------------------------- registration tokens


@dataclasses.dataclass(frozen=True)
class RegistrationToken:
    id: str
    secret: str
    pin: str

    def __str__(self) -> str:
        return f"{self.id}.{self.secret}.{self.pin}"

    @property
    def secret_hash(self) -> str:
        return hashlib.sha256(self.secret.encode()).hexdigest()


def new_registration_token(ca: CA) -> RegistrationToken:
    return RegistrationToken(secrets.token_hex(8), secrets.token_hex(16), ca.pin)


def parse_registration_token(text: str) -> RegistrationToken:
    parts = text.strip().split(".")
    if len(parts) != 3 or not all(parts):
        raise errors.Unauthenticated(
            "malformed registration token: expected <id>.<secret>.<ca-hash> as printed by "
            "`fleetops-hub token create`"
        )
    return RegistrationToken(*parts)


# ---------------------------------------------------------------- fleet API tokens

ROLES = ("operator", "readonly")


def api_tokens(data: pathlib.Path) -> dict[str, str]:
    """role -> token, made on first start in data/tokens/<role> (mode 0600)."""
    out = {}
    for role in ROLES:
        path = data / "tokens" / role
        if not path.exists():
            _write_private(path, f"{role}-{secrets.token_urlsafe(24)}".encode())
        out[role] = path.read_text().strip()
    return out


def role_of(token: str, tokens: dict[str, str]) -> str | None:
    for role, known in tokens.items():
        if hmac.compare_digest(token.encode(), known.encode()):
            return role
    return None
