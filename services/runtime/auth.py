"""Bearer tokens: where they come from, and the server interceptor that checks them.

The token is read from ``NNMD_TOKEN`` or a token file (first line). It is
never logged or put in an error message. Health checks stay open so that
load balancers and Kubernetes probes work without it.
"""

from __future__ import annotations

import hmac
import os
from pathlib import Path

import grpc

TOKEN_ENV = "NNMD_TOKEN"
OPEN_METHOD_PREFIXES = ("/grpc.health.v1.Health/",)


def load_token(token_file: str | os.PathLike | None = None) -> str | None:
    """The token from ``token_file`` if given, else from $NNMD_TOKEN; None if neither."""
    if token_file:
        path = Path(token_file)
        if not path.is_file():
            raise FileNotFoundError(f"--token-file: no file {path}")
        lines = path.read_text().splitlines()
        token = lines[0].strip() if lines else ""
        if not token:
            raise ValueError(f"--token-file: {path} is empty; put the token on its first line")
        return token
    token = os.environ.get(TOKEN_ENV, "").strip()
    return token or None


def _deny_handler(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    async def deny_unary(request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def deny_stream(request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # pragma: no cover - makes this an async generator

    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(deny_stream, **kwargs)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(deny_unary, **kwargs)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(deny_stream, **kwargs)
    return grpc.unary_unary_rpc_method_handler(deny_unary, **kwargs)


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Rejects calls whose ``authorization`` metadata is not ``Bearer <token>`` with UNAUTHENTICATED."""

    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("token: empty; set NNMD_TOKEN or pass --token-file")
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or details.method.startswith(OPEN_METHOD_PREFIXES):
            return handler
        given = ""
        for key, value in details.invocation_metadata or ():
            if key == "authorization":
                given = value if isinstance(value, str) else value.decode(errors="replace")
                break
        if not given:
            return _deny_handler(
                handler, "missing bearer token: send metadata 'authorization: Bearer <token>'"
            )
        if not hmac.compare_digest(given.encode(), self._expected):
            return _deny_handler(handler, "invalid bearer token")
        return handler
