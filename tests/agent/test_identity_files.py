"""The agent's identity on disk and its clock: a new identity replaces the old one whole
(never one's key with the other's certificate, whatever moment a crash picks), renewal is due
at two thirds of the certificate's lifetime, and a certificate near its end is spent."""

from __future__ import annotations

import datetime
import pathlib
import shutil

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fleetops.agent import credentials, keystore
from fleetops.hub import ca


def issued(
    tmp_path: pathlib.Path,
    *,
    lifetime: datetime.timedelta = datetime.timedelta(days=90),
    now: datetime.datetime | None = None,
) -> credentials.Identity:
    """An identity whose certificate a real hub CA issued."""
    authority = ca.load_or_create(tmp_path / "hub")
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
        .sign(key, hashes.SHA256())
    )
    cert = authority.issue(csr, "dev", lifetime=lifetime, now=now)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return credentials.Identity(
        cluster="dev",
        key_pem=key_pem,
        cert_pem=cert.pem,
        ca_pem=authority.cert_pem,
        agent_port=8444,
    )


def files(me: credentials.Identity) -> dict[str, bytes]:
    return {
        "agent.key": me.key_pem,
        "agent.crt": me.cert_pem,
        "ca.crt": me.ca_pem,
        "agent-port": str(me.agent_port).encode(),
    }


def test_a_save_cut_short_before_it_was_complete_keeps_the_old_identity(
    tmp_path: pathlib.Path,
) -> None:
    old, new = issued(tmp_path), issued(tmp_path)
    keystore.save(tmp_path, files(old))
    staged = tmp_path / "identity" / "next"
    staged.mkdir()
    (staged / "agent.key").write_bytes(new.key_pem)  # the crash came here
    assert keystore.load(tmp_path) == old
    assert not staged.exists()


def test_a_save_cut_short_while_moving_files_is_finished_by_the_next_load(
    tmp_path: pathlib.Path,
) -> None:
    old, new = issued(tmp_path), issued(tmp_path)
    keystore.save(tmp_path, files(old))
    d = tmp_path / "identity"
    staged = d / "next"
    staged.mkdir()
    for name, data in files(new).items():
        (staged / name).write_bytes(data)
    (staged / "complete").write_bytes(b"")
    shutil.move(staged / "agent.key", d / "agent.key")  # the crash came after the first move
    assert keystore.load(tmp_path) == new


def test_saved_files_are_readable_by_the_agent_only(tmp_path: pathlib.Path) -> None:
    keystore.save(tmp_path, files(issued(tmp_path)))
    d = tmp_path / "identity"
    assert d.stat().st_mode & 0o777 == 0o700
    assert {p.name: p.stat().st_mode & 0o777 for p in d.iterdir()} == {
        "agent.key": 0o600,
        "agent.crt": 0o600,
        "ca.crt": 0o600,
        "agent-port": 0o600,
    }


def test_renewal_is_due_at_two_thirds_of_the_lifetime(tmp_path: pathlib.Path) -> None:
    now = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
    me = issued(tmp_path, lifetime=datetime.timedelta(days=90), now=now)
    start = now - datetime.timedelta(minutes=5)  # backdated for clock skew
    want = start + (now + datetime.timedelta(days=90) - start) * 2 / 3
    assert me.renewal_due == want.timestamp()


def test_a_short_lifetime_is_backdated_by_a_tenth_of_it_at_most(tmp_path: pathlib.Path) -> None:
    now = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
    me = issued(tmp_path, lifetime=datetime.timedelta(seconds=6), now=now)
    # not five minutes (renewal would be due before the certificate was even issued);
    # certificates count whole seconds, so 0.6 s becomes 1 s
    assert now.timestamp() + 3 < me.renewal_due < now.timestamp() + 4


def test_a_certificate_with_less_than_an_hour_left_is_spent(tmp_path: pathlib.Path) -> None:
    me = issued(tmp_path)
    assert not me.spent(me.expires - 3601)
    assert me.spent(me.expires - 3599)
