"""The agent's identity, one name for what its parts do: a private key that never leaves it,
and the certificate the hub's CA signed for it.

    agent.credentials  what an identity is (key, certificate, CA) and its pure cryptography
    agent.keystore     where it is kept: the state directory, and a Secret in a pod
    agent.enroll       registration, once, with a token that pins the hub's CA
    agent.renewal      renewal over mTLS at two thirds of the certificate's lifetime

Registration happens once: the token pins the hub's CA (its public-key hash), so the agent
checks whom it talks to before sending anything, with no CA file to copy. The certificate has a
lifetime (the hub's `--cert-lifetime`, 90 days by default); the agent renews it with a new key
and CSR (`keep_renewed`); failures are retried with backoff and logged. An identity whose
certificate has expired (or is about to) is never handed back or restored: a fresh token
registers the agent again.

This module only re-exports; it holds no logic. It never sends the private key anywhere, and
never logs it.
"""

from __future__ import annotations

from fleetops.agent import credentials, enroll, keystore, renewal

Identity = credentials.Identity
ca_pin = credentials.ca_pin
split_token = credentials.split_token
load = keystore.load
save = keystore.save
restore = keystore.restore
keep = keystore.keep
renew = renewal.renew
keep_renewed = renewal.keep_renewed
Clock = renewal.Clock
SystemClock = renewal.SystemClock
register = enroll.register
fetch_pinned_ca = enroll.fetch_pinned_ca
