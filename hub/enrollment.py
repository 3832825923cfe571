"""Enrollment: registration tokens (made, spent once, expiring on `now`), registration (a CSR
becomes the cluster's client certificate), renewal, and which certificate may act for a
cluster.

Only the newest certificate of a cluster is accepted: re-registration and `cluster remove`
revoke the old one at once. Renewal is a rotation, not a revocation: the certificate a Renew
was made with keeps working until its successor is first presented, so a lost RenewResponse
does not lock the agent out. That handover is stored with the cluster (its previous
fingerprint), so a hub restart in the window does not lock the agent out either; its end
(the successor presented) is stored with the cluster's next write, the connectivity of the
stream that presented it. A registration token is spent only on a request that can succeed
(a CSR that verifies).

Never logs a token, a secret hash or a key.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import hmac
import logging
from collections.abc import Callable

from fleetops.hub import ca, config, errors, events, fleetstate, records, reports, status, storeapi
from fleetops.proto.v1 import types_pb2

log = logging.getLogger("fleetops.hub")
MAX_REGISTRATION_TTL = 30 * 86400  # a registration token is for an install, not a credential
DEFAULT_REGISTRATION_TTL = 3600


@dataclasses.dataclass(frozen=True)
class Token:
    """A registration token as shown once to whoever made it."""

    text: str
    expires_at: float
    ca_pem: bytes


@dataclasses.dataclass(frozen=True)
class Certificate:
    """A client certificate issued to a cluster, with the CA that signed it."""

    cluster: str
    pem: bytes
    ca_pem: bytes
    expires: float


class Enrollment:
    def __init__(
        self,
        *,
        db: storeapi.StoreApi,
        authority: ca.CA,
        clusters: fleetstate.Clusters,
        recorder: events.Recorder,
        on_registered: Callable[[str], None],
        on_renewed: Callable[[str], None],
        now: Callable[[], float],
        cert_lifetime: datetime.timedelta = ca.DEFAULT_CERT_LIFETIME,
    ) -> None:
        self._db = db
        self._ca = authority
        self._clusters = clusters
        self._recorder = recorder
        self._on_registered = on_registered  # ends the old stream, tells the fleet view
        self._on_renewed = on_renewed
        self._now = now
        self.cert_lifetime = cert_lifetime

    # ------------------------------------------------------------ tokens

    async def create_token(
        self, *, cluster: str, labels: dict[str, str], ttl: int, actor: str
    ) -> Token:
        """A one-time registration token for `cluster`, starting with `labels`, valid `ttl`
        seconds (0: an hour). Everything is checked before anything is written."""
        if not config.DNS_LABEL.match(cluster) or len(cluster) > 63:
            raise errors.InvalidArgument(
                f"cluster name {cluster!r}: use at most 63 lowercase letters, digits, '-'"
            )
        for key, value in labels.items():
            problem = config.label_problem(key, value)
            if problem:
                raise errors.InvalidArgument(f"label {key}={value}: {problem}")
        asked = ttl
        ttl = ttl or DEFAULT_REGISTRATION_TTL
        if not 0 < ttl <= MAX_REGISTRATION_TTL:
            raise errors.InvalidArgument(
                f"ttl {asked} s: a registration token may live from 1 s to "
                f"{MAX_REGISTRATION_TTL // 86400} days; make a new one when it runs out"
            )
        token = ca.new_registration_token(self._ca)
        now = self._now()
        await self._db.run(
            self._db.add_registration_token,
            records.RegistrationToken(
                id=token.id,
                secret_hash=token.secret_hash,
                cluster=cluster,
                created_at=now,
                expires_at=now + ttl,
                used_at=0.0,
                labels=dict(labels),
            ),
        )
        await self._recorder.record(
            events.Entry(
                cluster=cluster,
                kind="token-created",
                cause=types_pb2.CAUSE_USER,
                actor=actor,
                message=f"registration token {token.id} for cluster {cluster}, valid {ttl} s",
            )
        )
        return Token(text=str(token), expires_at=now + ttl, ca_pem=self._ca.cert_pem)

    async def register(self, *, token: str, csr_pem: bytes, facts: dict[str, str]) -> Certificate:
        """Spend `token` on a certificate for the key in `csr_pem`: the cluster it was made
        for is registered (again), and every earlier certificate of it is revoked."""
        parsed = ca.parse_registration_token(token)
        if parsed.pin != self._ca.pin:
            raise errors.Unauthenticated(
                "registration token was issued by another hub (CA hash differs)"
            )
        csr = ca.read_csr(csr_pem)  # before the token is spent
        secret_hash = hashlib.sha256(parsed.secret.encode()).hexdigest()
        consumed = await self._db.run(
            self._db.use_registration_token,
            token_id=parsed.id,
            secret_hash=secret_hash,
            now=self._now(),
        )
        if consumed is None:
            raise errors.Unauthenticated(
                "registration token is unknown, expired or already used; create a new one with "
                "`fleetops-hub token create --cluster NAME`"
            )
        cluster, labels = consumed.cluster, dict(consumed.labels)
        issued = self._ca.issue(csr, cluster, lifetime=self.cert_lifetime)
        await self._register_cluster(
            cluster,
            facts=facts,
            hub_labels=labels,
            cert_fingerprint=issued.fingerprint,
            cert_expires=issued.expires,
        )
        log.info("cluster %s registered (certificate valid until %s)", cluster, _when(issued))
        return Certificate(cluster, issued.pem, self._ca.cert_pem, issued.expires)

    async def _register_cluster(
        self,
        cluster: str,
        *,
        facts: dict[str, str],
        hub_labels: dict[str, str],
        cert_fingerprint: str,
        cert_expires: float,
    ) -> None:
        """`facts` are what the agent says of itself (shown, never matched), `hub_labels`
        came with its token (`fleetops-hub cluster add --labels`); a re-registration keeps
        the earlier hub labels unless its token carries new ones."""
        known = self._clusters.row(cluster)
        row = dataclasses.replace(
            known or fleetstate.Cluster(name=cluster, registered_at=self._now()),
            facts=reports.clean_facts(facts),
            cert_fingerprint=cert_fingerprint,
            cert_expires=cert_expires,
            previous_fingerprint="",  # every earlier certificate is revoked
            previous_expires=0.0,
        )
        if hub_labels:
            row.labels = dict(hub_labels)
        await self._db.run(self._db.put_cluster, row.record())
        self._clusters.put(row)
        await self._recorder.record(
            events.Entry(
                cluster=cluster,
                kind="registered",
                cause=types_pb2.CAUSE_AGENT,
                actor=f"agent:{cluster}",
                message=f"cluster {cluster} registered",
            )
        )
        self._on_registered(cluster)

    # ------------------------------------------------------------ certificates

    def certificate_ok(self, cluster: str, fingerprint: str) -> bool:
        """Whether `fingerprint` is the cluster's current certificate: a removed cluster's, or
        one replaced by re-registration or renewal, is refused."""
        row = self._clusters.row(cluster)
        if row is None:
            return False
        known = row.cert_fingerprint
        # clusters registered before fingerprints were kept: trust until the first renewal
        return not known or hmac.compare_digest(known, fingerprint)

    def accepts(self, cluster: str, fingerprint: str) -> bool:
        """Whether `fingerprint` may act for `cluster`: its current certificate, or the one
        just renewed from until the new one is first presented."""
        row = self._clusters.row(cluster)
        if row is None:
            return False
        if self.certificate_ok(cluster, fingerprint):
            if row.previous_fingerprint and row.cert_fingerprint:
                # the successor is in use: its predecessor retires (stored with the next write)
                row.previous_fingerprint, row.previous_expires = "", 0.0
            return True
        return bool(row.previous_fingerprint) and hmac.compare_digest(
            row.previous_fingerprint, fingerprint
        )

    async def renew(self, *, cluster: str, presented: str, csr_pem: bytes) -> Certificate:
        """A new certificate for `cluster`'s new key, asked with certificate `presented`."""
        csr = ca.read_csr(csr_pem)
        issued = self._ca.issue(csr, cluster, lifetime=self.cert_lifetime)
        # checked again with no await since: a re-registration cannot slip in between
        if not self.accepts(cluster, presented):
            raise errors.Unauthenticated(refused(cluster))
        await self._renewed(cluster, presented, issued)
        log.info("cluster %s renewed its certificate (valid until %s)", cluster, _when(issued))
        return Certificate(cluster, issued.pem, self._ca.cert_pem, issued.expires)

    async def _renewed(self, cluster: str, presented: str, issued: ca.Issued) -> None:
        """Store the handover: `issued` is the cluster's certificate, and `presented` (the
        one the Renew was made with) stays accepted until `issued` is first presented."""
        row = self._clusters.row(cluster)
        if row is None:
            raise errors.PermissionDenied(f"cluster {cluster} is not registered (was it removed?)")
        was_current = hmac.compare_digest(row.cert_fingerprint, presented)
        new = dataclasses.replace(
            row,
            cert_fingerprint=issued.fingerprint,
            cert_expires=issued.expires,
            previous_fingerprint=presented,
            previous_expires=row.cert_expires if was_current else row.previous_expires,
        )
        await self._db.run(self._db.put_cluster, new.record())  # stored, believed
        self._clusters.put(new)
        await self._recorder.record(
            events.Entry(
                cluster=cluster,
                kind="certificate-renewed",
                cause=types_pb2.CAUSE_AGENT,
                actor=f"agent:{cluster}",
                message=f"cluster {cluster} renewed its certificate (valid until "
                f"{status.since(issued.expires)})",
            )
        )
        self._on_renewed(cluster)


def refused(cluster: str) -> str:
    return (
        f"the client certificate of cluster {cluster} was replaced or revoked (the cluster "
        "registered again, or was removed); register this agent again with a new token from "
        f"`fleetops-hub token create --cluster {cluster}`"
    )


def _when(issued: ca.Issued) -> str:
    return status.since(issued.expires)
