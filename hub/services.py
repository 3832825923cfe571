"""What the gRPC servicers share: the auth interceptor, caller and cluster identity, and
domain errors as status codes.

The servicers themselves (agent_service, fleet_service) only translate: messages to calls on
their narrow interface (`AgentHub`, `FleetHub`, implemented by `core.Hub`), domain errors to
gRPC status codes with the same message. Agents prove who they are with the client
certificate the hub's CA issued (mTLS; the cluster name is the certificate's CN), fleet
callers with a named bearer token whose role (operator, readonly) decides what they may do
and whose name is the audit actor.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from fleetops.hub import apitokens, errors

log = logging.getLogger("fleetops.hub")

FLEET_PREFIX = "/fleetops.v1.FleetService/"
READ_ONLY_METHODS = {
    "GetSnapshot",
    "Watch",
    "History",
    "RolloutStatus",
    "ImageStatus",
}  # everything else needs an operator
_CODES = {
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.RepoError: grpc.StatusCode.FAILED_PRECONDITION,
    errors.RenderError: grpc.StatusCode.FAILED_PRECONDITION,
    errors.StoreUnavailable: grpc.StatusCode.UNAVAILABLE,
}


async def abort(context: grpc.aio.ServicerContext[Any, Any], e: errors.HubError) -> None:
    await context.abort(_CODES.get(type(e), grpc.StatusCode.INTERNAL), str(e))


def cluster_of(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """The cluster name from the verified client certificate, or '' without one."""
    auth = context.auth_context()
    names = list(auth.get("x509_common_name") or [])
    return names[0].decode() if names else ""


def bearer(metadata: Any) -> str:
    """The bearer token of a call's metadata, or ''."""
    for key, value in metadata or ():
        if key == "authorization":
            text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
            return text.removeprefix("Bearer ").strip()
    return ""


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Fleet API: a named bearer token, and the operator role for anything that changes the
    fleet. Agent API: identity is checked in the servicer from the TLS auth context."""

    def __init__(self, registry: apitokens.Registry) -> None:
        self._registry = registry

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        method = details.method
        if method.startswith(FLEET_PREFIX):
            caller = self._registry.resolve(bearer(details.invocation_metadata))
            if caller is None:
                return _deny_like(
                    await continuation(details),
                    grpc.StatusCode.UNAUTHENTICATED,
                    "a valid fleet API token is required (authorization: Bearer <token>); it is "
                    "unknown, revoked or expired: ask an operator for one "
                    "(`fleetops-hub token create-api --name NAME --role readonly`)",
                )
            name = method.removeprefix(FLEET_PREFIX)
            if not caller.may_act and name not in READ_ONLY_METHODS:
                return _deny_like(
                    await continuation(details),
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"{name} changes the fleet and needs an operator token; token "
                    f"{caller.name!r} is read-only",
                )
        return await continuation(details)


def _deny_like(
    handler: grpc.RpcMethodHandler[Any, Any], code: grpc.StatusCode, message: str
) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of the same shape as `handler` that aborts with code and message."""

    async def unary(_req: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(code, message)

    async def streaming(
        _req: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        await context.abort(code, message)
        yield  # pragma: no cover

    kw = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary, **kw)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(streaming, **kw)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(unary, **kw)
    return grpc.stream_stream_rpc_method_handler(streaming, **kw)
