"""What comes back from one request to the API server: its body read to the end (or its
connection closed), and whatever the client or transport raised mapped to our errors.

Whatever the transport raises (urllib3's MaxRetryError, a reset, a TLS failure) comes out as
`errors.Unreachable` naming the server, never as a foreign exception. It never puts request or
response bodies in a message of its own: they may be Secrets.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from kubernetes.client import exceptions
from urllib3 import exceptions as transport

from fleetops.agent import errors, kubewire


def unreachable(host: str, cause: str) -> errors.Unreachable:
    return errors.Unreachable(
        f"cannot reach the Kubernetes API server at {host or 'its address'}: {cause}"
    )


@contextlib.contextmanager
def mapped_errors(
    *,
    host: str,
    timeouts: kubewire.Timeouts,
    method: str,
    path: str,
    transport_errors: tuple[type[BaseException], ...] = (transport.HTTPError, OSError),
) -> Iterator[None]:
    """Turn what the client raises for `method` `path` into `errors.KubeError` (the server
    answered) or `errors.Unreachable` (it did not, or the connection broke)."""
    try:
        yield
    except exceptions.ApiException as e:
        if not e.status:  # the client reports a TLS failure as an ApiException without one
            raise unreachable(host, str(e.reason or e).replace("\n", ": ")) from None
        raise kubewire.error(
            e.status, body=e.body, http_reason=e.reason, method=method, path=path
        ) from None
    except transport_errors as e:
        raise unreachable(host, kubewire.transport_cause(e, timeouts)) from None


def read(resp: Any) -> bytes:
    """The whole body of `resp` (a kubernetes RESTResponse); a response that could not be read
    to its end is closed at once, its connection with it, never left half-read."""
    try:
        data: bytes = resp.read()
    except BaseException:
        with contextlib.suppress(Exception):
            resp.response.close()
        raise
    return data
