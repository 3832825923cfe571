"""X.509 building blocks for the hub's CA: fingerprints, CSR checks, lifetimes, names, keys.

Pure functions over certificates, requests and PEM text; this module holds no key and signs
nothing (hub.ca does). What an agent sends (a CSR) is checked here before anything is spent
on it.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import re
from collections.abc import Sequence

from cryptography import exceptions, x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from fleetops.hub import errors

AGENT_ORG = "fleetops-agents"
DEFAULT_CERT_LIFETIME = datetime.timedelta(days=90)
MIN_CERT_LIFETIME = datetime.timedelta(seconds=60)  # what the CLI accepts; tests go lower
MAX_CERT_LIFETIME = datetime.timedelta(days=3650)
SERVING_LIFETIME = datetime.timedelta(days=365)
CA_LIFETIME = datetime.timedelta(days=3650)
MAX_CSR_BYTES = 16 * 1024
MAX_BACKDATE = datetime.timedelta(minutes=5)  # tolerated clock skew between hub and agents


def spki_hash(cert: x509.Certificate) -> str:
    der = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def fingerprint(cert: x509.Certificate) -> str:
    """sha256 of the DER certificate, hex: how the hub knows a cluster's current certificate."""
    return cert.fingerprint(hashes.SHA256()).hex()


def fingerprint_pem(pem: bytes) -> str:
    return fingerprint(x509.load_pem_x509_certificate(pem))


def parse_lifetime(text: str) -> datetime.timedelta:
    """`90d`, `12h`, `30m`, `60s` (or plain seconds) -> a lifetime the CLI accepts."""
    m = re.fullmatch(r"\s*(\d+)\s*([smhd]?)\s*", text)
    if m is None:
        raise errors.InvalidArgument(
            f"--cert-lifetime {text!r}: use a whole number with a unit, e.g. 90d, 12h or 60s"
        )
    unit = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    seconds = int(m.group(1)) * unit
    if not MIN_CERT_LIFETIME.total_seconds() <= seconds <= MAX_CERT_LIFETIME.total_seconds():
        raise errors.InvalidArgument(
            f"--cert-lifetime {text!r}: use from 60s to {MAX_CERT_LIFETIME.days}d "
            f"(default {DEFAULT_CERT_LIFETIME.days}d); agents renew at two thirds of it"
        )
    return datetime.timedelta(seconds=seconds)


def read_csr(csr_pem: bytes) -> x509.CertificateSigningRequest:
    """The CSR in `csr_pem`, checked (parses, signature verifies, a key worth certifying), or
    InvalidArgument. Called before anything is spent on the request (a registration token)."""
    if len(csr_pem) > MAX_CSR_BYTES:
        raise errors.InvalidArgument(f"csr_pem is {len(csr_pem)} bytes; at most {MAX_CSR_BYTES}")
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
        valid = csr.is_signature_valid
        key = csr.public_key()
    except (ValueError, TypeError, exceptions.UnsupportedAlgorithm):
        raise errors.InvalidArgument("csr_pem is not a PEM certificate signing request") from None
    if not valid:
        raise errors.InvalidArgument("the CSR's signature does not verify")
    if isinstance(key, ec.EllipticCurvePublicKey):
        ok = key.curve.key_size >= 256
    elif isinstance(key, rsa.RSAPublicKey):
        ok = key.key_size >= 2048
    else:
        ok = isinstance(key, ed25519.Ed25519PublicKey)
    if not ok:
        raise errors.InvalidArgument(
            "the CSR's key is too weak or of an unsupported kind: use EC P-256 or larger, "
            "RSA 2048 or larger, or Ed25519"
        )
    return csr


def now(now: datetime.datetime | None) -> datetime.datetime:
    return now if now is not None else datetime.datetime.now(datetime.UTC)


def san(names: Sequence[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for n in sorted(set(names)):
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            entries.append(x509.DNSName(n))
    return x509.SubjectAlternativeName(entries)


def san_names(cert: x509.Certificate) -> set[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {str(v) for v in san.get_values_for_type(x509.DNSName)} | {
        str(v) for v in san.get_values_for_type(x509.IPAddress)
    }


def norm(name: str) -> str:
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        return name


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def load_ec_key(pem: bytes, where: str) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        raise errors.HubError(
            f"{where}: not a PEM private key; make one with `fleetops-hub ca new-key`"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise errors.HubError(f"{where}: not an EC private key")
    return key


def leaf_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        key_encipherment=False,
        content_commitment=False,
        data_encipherment=False,
        key_agreement=True,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
