"""The Kubernetes client's connections: loading credentials into an API client whose TLS
connections leave no socket open when a connect fails, and closing its connection pools.

Every connection is closed by us, never left to the garbage collector (an unclosed TLS socket
fails the tests).
"""

from __future__ import annotations

import contextlib
import ssl
from typing import Any

import urllib3
from kubernetes import client, config
from urllib3 import connection as transport_connection

from fleetops.agent import errors

# CPython's ssl.SSLSocket._create (3.11.5+, from the fix for CVE-2023-40217) takes over the
# TCP socket's descriptor, then, when the server has already reset the connection (between the
# TCP connect and the TLS handshake: what a stopped or killed API server, or a test's TCP gate,
# does to connections it has just accepted), re-raises ECONNRESET without closing the socket it
# made. Nobody holds that SSLSocket but the exception's frames, so only the garbage collector
# ever closed it (an unclosed-ssl.SSLSocket ResourceWarning, in whichever test ran then).
_SSL_CREATE = getattr(getattr(ssl.SSLSocket, "_create", None), "__code__", None)


def _close_half_made_tls_sockets(error: BaseException) -> None:
    """Close the TLS socket `ssl.SSLSocket._create` made and dropped on its way to `error` (or
    to an error `error` was raised from)."""
    seen: set[int] = set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        tb = cause.__traceback__
        while tb is not None:
            if tb.tb_frame.f_code is _SSL_CREATE:
                made = tb.tb_frame.f_locals.get("self")
                if isinstance(made, ssl.SSLSocket):
                    with contextlib.suppress(OSError):
                        made.close()
            tb = tb.tb_next
        cause = cause.__cause__ or cause.__context__


class _TLSConnection(transport_connection.HTTPSConnection):
    """urllib3's HTTPS connection, except that a failed connect leaves no TLS socket open."""

    def connect(self) -> None:
        try:
            super().connect()
        except BaseException as e:
            _close_half_made_tls_sockets(e)
            raise


class _TLSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _TLSConnection


def api_client(
    kubeconfig: str | None, *, context: str | None, concurrency: int
) -> client.ApiClient:
    """An API client for the cluster in `kubeconfig`, or the in-cluster service account when
    None, with up to `concurrency` pooled connections."""
    cfg = client.Configuration()
    # Reconnect at once when a connection cannot be made (e.g. a pooled one the server closed),
    # but never resend a request that may have reached the server, nor wait twice for a read:
    # the callers retry with backoff and report why meanwhile.
    cfg.retries = urllib3.Retry(total=2, connect=2, read=0, status=0, other=0, redirect=2)
    try:
        if kubeconfig:
            config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=kubeconfig, context=context, client_configuration=cfg
            )
        else:
            config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    except (config.ConfigException, OSError) as e:
        where = kubeconfig or "the in-cluster service account"
        raise errors.AgentError(f"cannot load cluster credentials from {where}: {e}") from None
    cfg.connection_pool_maxsize = concurrency
    api = client.ApiClient(cfg)
    manager = api.rest_client.pool_manager
    if manager.pool_classes_by_scheme.get("https") is urllib3.HTTPSConnectionPool:  # not SOCKS
        manager.pool_classes_by_scheme = {**manager.pool_classes_by_scheme, "https": _TLSPool}
    return api


def close_pools(api: Any) -> None:
    """Close every connection pool: the idle connections now, those in use as their
    requests end. (`ApiClient.close` alone is not enough: urllib3 2's `PoolManager.clear`
    only forgets the pools, leaving their sockets open until the garbage collector frees
    each pool, which a urllib3 error or response still referring to it delays.)"""
    manager = api.rest_client.pool_manager
    for key in manager.pools.keys():
        pool = manager.pools.get(key)
        if pool is not None:
            pool.close()
    api.close()
