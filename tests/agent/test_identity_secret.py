"""The identity kept in a Secret, against a real apiserver and a real hub: an expired
identity is never brought back from it, and a renewed certificate is kept there before the
agent switches to it (so a restarted pod finds the certificate the hub accepts)."""

from __future__ import annotations

import asyncio
import base64
import datetime
import pathlib

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fleetops.agent import credentials, enroll, keystore, kube, renewal
from fleetops.hub import ca
from tests.support import certlife

pytestmark = pytest.mark.cluster

NAMESPACE = kube.ResourceType(
    group="", version="v1", kind="Namespace", plural="namespaces", namespaced=False
)


@pytest.fixture
async def namespace(cluster: kube.Kube, unique_name: str) -> str:
    await cluster.create(
        NAMESPACE, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": unique_name}}
    )
    return unique_name


def expired_files(tmp_path: pathlib.Path) -> dict[str, bytes]:
    authority = ca.load_or_create(tmp_path / "hub")
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
        .sign(key, hashes.SHA256())
    )
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=100)
    return {
        "agent.key": key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        "agent.crt": authority.issue(csr, "dev", now=past).pem,
        "ca.crt": authority.cert_pem,
        "agent-port": b"8444",
    }


async def test_an_expired_identity_in_the_secret_is_not_restored(
    cluster: kube.Kube, namespace: str, tmp_path: pathlib.Path
) -> None:
    keystore.save(tmp_path / "old-pod", expired_files(tmp_path))
    await keystore.keep(tmp_path / "old-pod", cluster, secret=f"{namespace}/identity")
    restored = await keystore.restore(tmp_path / "new-pod", cluster, secret=f"{namespace}/identity")
    assert not restored
    assert keystore.load(tmp_path / "new-pod") is None


async def test_a_renewed_certificate_is_kept_in_the_identity_secret(
    cluster: kube.Kube, namespace: str, tmp_path: pathlib.Path
) -> None:
    ref = f"{namespace}/identity"
    async with certlife.fleet_hub(tmp_path / "hub", with_app=False) as hub:
        root = tmp_path / "agent"
        me = await asyncio.to_thread(
            enroll.register, root, hub=hub.address, token=await hub.token("dev"), labels={}
        )
        await keystore.keep(root, cluster, secret=ref)
        stop = asyncio.Event()
        seen: list[credentials.Identity] = []

        def renewed(new: credentials.Identity) -> None:
            seen.append(new)
            stop.set()

        await renewal.keep_renewed(
            state=root,
            address=hub.address,
            current=lambda: me,
            renewed=renewed,
            stop=stop,
            clock=certlife.StepClock(me.renewal_due),
            client=cluster,
            secret=ref,
        )
    secret = await cluster.get(keystore.SECRET, namespace=namespace, name="identity")
    assert secret is not None
    assert base64.b64decode(secret["data"]["agent.crt"]) == seen[0].cert_pem != me.cert_pem
