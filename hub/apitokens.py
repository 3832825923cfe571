"""Fleet API callers: named tokens with a role, so the audit log says who did what.

A token is shown once, when it is made; the hub keeps only its sha256. Every call on the
FleetService is resolved to a `Caller` (name, role) here, and the name is the audit actor:
nothing a client asserts about itself (headers, user names) is ever believed. Two tokens are
bootstrapped in the data directory on first start: `tokens/operator` (named `admin`) and
`tokens/readonly` (named `readonly`), for the hub's own machine; everyone else gets a named
token from `fleetops-hub token create-api`.

Never log a token or let one reach an event.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import pathlib
import re
import secrets
import time
from collections.abc import Callable

from fleetops.hub import errors, records, storeapi
from fleetops.proto import privatefile

ROLES = ("operator", "readonly")
BOOTSTRAP_NAMES = {"operator": "admin", "readonly": "readonly"}
NAME = re.compile(r"^[a-z0-9]([a-z0-9._@-]{0,61}[a-z0-9])?$")
MAX_TTL = 366 * 86400.0


@dataclasses.dataclass(frozen=True)
class Caller:
    name: str
    role: str

    @property
    def may_act(self) -> bool:
        return self.role == "operator"


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_name(name: str) -> None:
    if not NAME.match(name):
        raise errors.InvalidArgument(
            f"token name {name!r}: use 1 to 63 lowercase letters, digits, '.', '_', '@' or '-', "
            "starting and ending with a letter or digit (e.g. alice, ci-deployer)"
        )


class Registry:
    """The named tokens, in memory for the interceptor and in the store for restarts."""

    def __init__(
        self,
        *,
        db: storeapi.StoreApi,
        bootstrap: dict[str, str],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._db = db
        self._clock = clock
        self._bootstrap = {
            _hash(token): Caller(BOOTSTRAP_NAMES[role], role) for role, token in bootstrap.items()
        }
        self._named: dict[str, records.ApiToken] = {}

    async def load(self) -> None:
        self._named = {t.secret_hash: t for t in await self._db.run(self._db.api_tokens)}

    def resolve(self, token: str) -> Caller | None:
        """Who holds `token`, or None: unknown, revoked or expired."""
        if not token or len(token) > 512:
            return None
        digest = _hash(token)
        boot = self._bootstrap.get(digest)
        if boot is not None:
            return boot
        named = self._named.get(digest)
        if named is None or not hmac.compare_digest(named.secret_hash, digest):
            return None
        if named.expires_at and named.expires_at <= self._clock():
            return None
        return Caller(named.name, named.role)

    async def create(
        self, *, name: str, role: str, ttl: float, created_by: str
    ) -> tuple[str, records.ApiToken]:
        """A new token (the secret, shown once) and its record."""
        check_name(name)
        if name in BOOTSTRAP_NAMES.values():
            raise errors.InvalidArgument(
                f"token name {name!r} is the hub's bootstrap token; choose another name"
            )
        if role not in ROLES:
            raise errors.InvalidArgument(f"role {role!r}: use operator or readonly")
        if ttl < 0 or ttl > MAX_TTL:
            raise errors.InvalidArgument(
                f"ttl {ttl:.0f} s: use 0 (no expiry) or at most {MAX_TTL / 86400:.0f} days"
            )
        secret = f"fo_{secrets.token_urlsafe(32)}"
        now = self._clock()
        record = records.ApiToken(
            name=name,
            role=role,
            secret_hash=_hash(secret),
            created_at=now,
            expires_at=now + ttl if ttl else 0.0,
            created_by=created_by,
        )
        if not await self._db.run(self._db.add_api_token, record):
            raise errors.InvalidArgument(
                f"a token named {name!r} exists already; revoke it first or pick another name"
            )
        self._named[record.secret_hash] = record
        return secret, record

    def list(self) -> list[records.ApiToken]:
        return sorted(self._named.values(), key=lambda t: t.name)

    async def revoke(self, name: str) -> None:
        if not await self._db.run(self._db.revoke_api_token, name):
            known = ", ".join(t.name for t in self.list()) or "(none)"
            raise errors.NotFound(f"no API token named {name!r}; tokens: {known}")
        self._named = {h: t for h, t in self._named.items() if t.name != name}


def bootstrap(data: pathlib.Path) -> dict[str, str]:
    """role -> token of the data directory's bootstrap tokens, made on first start in
    data/tokens/<role> (mode 0600)."""
    out = {}
    for role in ROLES:
        path = data / "tokens" / role
        if not path.exists():
            privatefile.write(path, f"{role}-{secrets.token_urlsafe(24)}".encode())
        out[role] = path.read_text().strip()
    return out
