"""Keeps the agent's certificate valid: a new key and CSR, sent over mTLS with the current
certificate at two thirds of its lifetime (read from the certificate itself), saved as a whole
with `agent.keystore` (and in its Secret) before the agent switches to it. Failures are retried
with backoff and logged; an expired certificate says how to register again.

It never sends the private key anywhere, and never logs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import pathlib
import random
import time
from collections.abc import Callable
from typing import Protocol

import grpc
from cryptography import exceptions, x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from fleetops.agent import credentials, errors, keystore, kube
from fleetops.agent.credentials import Identity
from fleetops.proto.v1 import agent_pb2, agent_pb2_grpc

log = logging.getLogger("fleetops.agent")

RETRY_FIRST = 5.0
RETRY_MAX = 600.0
MAX_NAP = 3600.0  # look at the clock at least this often (suspend, clock changes)


async def renew(
    state: pathlib.Path, address: str, me: Identity, *, deadline: float = 30.0
) -> Identity:
    """A new key and a certificate for it, asked for over mTLS with the current certificate
    and saved in place of the current identity. Nothing is saved when anything fails: the
    current identity stays (the hub keeps accepting it until the new one is first used).
    `deadline`: seconds the hub has to answer."""
    key_pem, csr_pem = credentials.new_key_and_csr()
    try:
        async with grpc.aio.secure_channel(me.stream_address(address), me.credentials()) as channel:
            resp = await agent_pb2_grpc.AgentServiceStub(channel).Renew(
                agent_pb2.RenewRequest(csr_pem=csr_pem), timeout=deadline
            )
    except grpc.aio.AioRpcError as e:
        raise errors.AgentError(
            f"certificate renewal failed: {e.code().name}: {e.details()}"
        ) from None
    new = dataclasses.replace(me, key_pem=key_pem, cert_pem=bytes(resp.certificate_pem))
    _check_issued(new, csr_pem)
    if resp.ca_pem and credentials.ca_pin(bytes(resp.ca_pem)) == credentials.ca_pin(me.ca_pem):
        new = dataclasses.replace(new, ca_pem=bytes(resp.ca_pem))  # the same CA, reissued
    await asyncio.to_thread(keystore.save, state, keystore.files_of(new))
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
        credentials.spki(cert)
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
                await keystore.keep(state, client, secret=secret)
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
                    credentials.when(me.expires),
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
                    credentials.when(me.expires),
                )
            continue
        failures, retry_at = 0, 0.0
        renewed(new)
        log.info(
            "renewed the certificate of cluster %s: valid until %s, next renewal at %s",
            new.cluster,
            credentials.when(new.expires),
            credentials.when(new.renewal_due),
        )
