"""The hub's certificate authority, the certificates it issues, and the form of registration
tokens (made and parsed here; spent, once, in `hub.enrollment`).

The CA signs and never serves. It issues two kinds of certificates:

- an agent's client certificate, one per cluster (its name is the CN, whatever the CSR
  asked), with a lifetime (`DEFAULT_CERT_LIFETIME`, `fleetops-hub serve --cert-lifetime`);
  agents renew it over mTLS at two thirds of that lifetime. Each certificate is known by
  its `fingerprint`, which the hub records so that only a cluster's current one works;
- the hub's TLS serving certificate (`serving_cert`): a leaf with its own key in
  data/hub.{key,crt}, the hub's names as SANs, presented with the CA as its chain, reissued
  when the names change or a third of its lifetime is left.

A registration token carries the CA's public-key hash (`CA.pin`, as kubeadm's discovery
hash): an agent holding one finds that CA in the chain the hub presents, checks that it
signed the leaf, and then trusts it as its root, with no CA file to copy around. Agents send
a CSR; their private keys never leave them.

Never log a token's secret or a private key; never serve TLS with the CA's key. The X.509
building blocks that hold no key (fingerprints, CSR checks, lifetimes, SANs) are hub.certs.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import pathlib
import secrets
import socket
from collections.abc import Sequence

from cryptography import exceptions, x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fleetops.hub import certs, errors

# the certificate vocabulary callers use, named here so that they import one module
from fleetops.hub.certs import (
    DEFAULT_CERT_LIFETIME,
    SERVING_LIFETIME,
    fingerprint,
    fingerprint_pem,
    parse_lifetime,
    read_csr,
    spki_hash,
)
from fleetops.proto import privatefile

__all__ = [
    "CA",
    "DEFAULT_CERT_LIFETIME",
    "SERVING_LIFETIME",
    "Issued",
    "RegistrationToken",
    "Serving",
    "default_names",
    "fingerprint",
    "fingerprint_pem",
    "load_or_create",
    "new_key_pem",
    "new_registration_token",
    "parse_lifetime",
    "parse_registration_token",
    "read_csr",
    "serving_cert",
    "spki_hash",
]


@dataclasses.dataclass(frozen=True)
class Issued:
    """A client certificate the CA issued: the PEM, its fingerprint and notAfter (epoch s)."""

    pem: bytes
    fingerprint: str
    expires: float


@dataclasses.dataclass(frozen=True)
class CA:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return certs.key_pem(self.key)

    @property
    def pin(self) -> str:
        """The CA's public-key hash, as registration tokens carry it."""
        return certs.spki_hash(self.cert)

    def window(
        self, now: datetime.datetime, lifetime: datetime.timedelta
    ) -> tuple[datetime.datetime, datetime.datetime]:
        """(notBefore, notAfter): backdated for clock skew by at most a tenth of the lifetime
        (so a short lifetime stays short), and never past the CA's own notAfter."""
        start = now - min(certs.MAX_BACKDATE, lifetime / 10)
        return start, min(now + lifetime, self.cert.not_valid_after_utc)

    def issue(
        self,
        csr: x509.CertificateSigningRequest,
        cluster: str,
        *,
        lifetime: datetime.timedelta = certs.DEFAULT_CERT_LIFETIME,
        now: datetime.datetime | None = None,
    ) -> Issued:
        """A client certificate for `cluster` for the key in `csr` (checked by `read_csr`)."""
        start, end = self.window(certs.now(now), lifetime)
        cert = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name(
                    [
                        x509.NameAttribute(NameOID.ORGANIZATION_NAME, certs.AGENT_ORG),
                        x509.NameAttribute(NameOID.COMMON_NAME, cluster),
                    ]
                )
            )
            .issuer_name(self.cert.subject)
            .public_key(csr.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(certs.leaf_usage(), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        return Issued(
            pem=cert.public_bytes(serialization.Encoding.PEM),
            fingerprint=certs.fingerprint(cert),
            expires=cert.not_valid_after_utc.timestamp(),
        )


def default_names() -> list[str]:
    return ["127.0.0.1", "localhost", "::1", socket.gethostname()]


def new_key_pem() -> bytes:
    return certs.key_pem(ec.generate_private_key(ec.SECP256R1()))


def load_or_create(
    data: pathlib.Path, names: Sequence[str] = (), *, key_file: pathlib.Path | None = None
) -> CA:
    """The CA in data/ca.{key,crt}, made on first start; with `key_file` (a key kept in a
    Secret) that key instead, and the certificate is made anew when it belongs to another key.
    A `key_file` that does not exist is an error: a new CA would cut off every agent.

    `names` is no longer used: the CA is not the hub's serving certificate (see
    `serving_cert`); a CA certificate made by an older hub with SANs is kept as it is."""
    del names
    data.mkdir(parents=True, exist_ok=True, mode=0o700)
    key_path, cert_path = data / "ca.key", data / "ca.crt"
    if key_file is not None:
        try:
            key = certs.load_ec_key(key_file.read_bytes(), f"--ca-key {key_file}")
        except FileNotFoundError:
            raise errors.HubError(
                f"--ca-key {key_file} does not exist; refusing to start, because a new CA "
                "would cut off every registered agent. Mount the CA key there (e.g. the "
                "fleetops-hub-ca Secret; `fleetops-hub ca new-key` makes one for a new fleet), "
                f"or leave out --ca-key to use the CA kept in {data}"
            ) from None
        except OSError as e:
            raise errors.HubError(f"--ca-key {key_file}: {e.strerror}") from None
    elif key_path.exists():
        key = certs.load_ec_key(key_path.read_bytes(), str(key_path))
    else:
        key = ec.generate_private_key(ec.SECP256R1())
        privatefile.write(key_path, certs.key_pem(key))
    if cert_path.exists():
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        if cert.public_key() == key.public_key():
            return CA(key, cert)
        # the Secret's key wins; the certificate is made anew
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fleetops"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"fleetops-hub-ca-{secrets.token_hex(4)}"),
        ]
    )
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - certs.MAX_BACKDATE)
        .not_valid_after(now + certs.CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=False,
                content_commitment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return CA(key, cert)


# ---------------------------------------------------------------- the hub's serving certificate


@dataclasses.dataclass(frozen=True)
class Serving:
    """The hub's TLS identity: its own key, a leaf the CA signed, and the chain [leaf, CA]."""

    key_pem: bytes
    cert: x509.Certificate
    chain_pem: bytes

    def due(self, now: datetime.datetime | None = None) -> bool:
        """Time to reissue: a third of the leaf's lifetime (or less) is left."""
        start, end = self.cert.not_valid_before_utc, self.cert.not_valid_after_utc
        return certs.now(now) >= end - (end - start) / 3


def serving_cert(
    data: pathlib.Path,
    authority: CA,
    names: Sequence[str],
    *,
    lifetime: datetime.timedelta = certs.SERVING_LIFETIME,
    now: datetime.datetime | None = None,
) -> Serving:
    """The hub's serving certificate in data/hub.{key,crt} (the key made once, 0600). The
    leaf is reissued with the same key when the hub's names change, when another CA (key)
    took over, or when a third of its lifetime is left."""
    key_path, cert_path = data / "hub.key", data / "hub.crt"
    if key_path.exists():
        key = certs.load_ec_key(key_path.read_bytes(), str(key_path))
    else:
        key = ec.generate_private_key(ec.SECP256R1())
        privatefile.write(key_path, certs.key_pem(key))
    wanted = {certs.norm(n) for n in names}
    moment = certs.now(now)
    if cert_path.exists():
        try:
            old = x509.load_pem_x509_certificate(cert_path.read_bytes())
        except ValueError:
            old = None
        fresh = old is not None and _current(
            old, key=key, authority=authority, names=wanted, now=moment
        )
        if old is not None and fresh:
            return _serving(key, old, authority)
    start, end = authority.window(moment, lifetime)
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fleetops"),
                    x509.NameAttribute(NameOID.COMMON_NAME, "fleetops-hub"),
                ]
            )
        )
        .issuer_name(authority.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(certs.leaf_usage(), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(authority.key.public_key()),
            critical=False,
        )
        .add_extension(certs.san(sorted(wanted)), critical=False)
        .sign(authority.key, hashes.SHA256())
    )
    privatefile.write(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return _serving(key, cert, authority)


def _current(
    cert: x509.Certificate,
    *,
    key: ec.EllipticCurvePrivateKey,
    authority: CA,
    names: set[str],
    now: datetime.datetime,
) -> bool:
    if cert.public_key() != key.public_key() or cert.issuer != authority.cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(authority.cert)
    except (ValueError, TypeError, exceptions.InvalidSignature):
        return False
    if certs.san_names(cert) != names:
        return False
    return not Serving(b"", cert, b"").due(now) and cert.not_valid_before_utc <= now


def _serving(key: ec.EllipticCurvePrivateKey, cert: x509.Certificate, authority: CA) -> Serving:
    leaf = cert.public_bytes(serialization.Encoding.PEM)
    return Serving(key_pem=certs.key_pem(key), cert=cert, chain_pem=leaf + authority.cert_pem)


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
