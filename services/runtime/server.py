"""One way to start any service as a grpc.aio server.

Every server gets: health checking (grpc.health.v1, per service and overall),
reflection, bearer-token auth, typed-error mapping (services.runtime.errors ->
status code + ErrorDetail trailer), message size limits, optional TLS and a
graceful shutdown (health NOT_SERVING, then finish in-flight calls within the
grace period). Servicers read their deadline with ``context.time_remaining()``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import signal
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.runtime import registry
from services.runtime.auth import BearerTokenInterceptor
from services.runtime.errors import ERROR_TRAILER_KEY, InvalidArgument, ServiceError

log = logging.getLogger("nnmd.runtime")
IDEMPOTENCY_KEY = "nnmd-idempotency-key"
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
T = TypeVar("T")


@dataclass(frozen=True)
class ServerConfig:
    """How to serve. ``token`` None means no auth, which needs ``allow_no_auth=True``."""

    host: str = "127.0.0.1"
    port: int = 0  # 0 = any free port
    token: str | None = None
    allow_no_auth: bool = False
    tls_cert: str | None = None  # PEM files; both or neither
    tls_key: str | None = None
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_concurrent_rpcs: int | None = None
    grace_s: float = 5.0

    def __post_init__(self):
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls: give both --tls-cert and --tls-key, or neither")
        if self.token is None and not self.allow_no_auth:
            raise ValueError(
                "token: none configured; set NNMD_TOKEN or --token-file (or --no-auth on a trusted host)"
            )
        if not 1024 <= self.max_message_bytes <= 2**31 - 1:
            raise ValueError("max_message_bytes: must be between 1 KiB and 2 GiB")

    def __repr__(self) -> str:  # never show the token
        return f"ServerConfig(host={self.host!r}, port={self.port}, auth={'on' if self.token else 'off'}, tls={'on' if self.tls_cert else 'off'})"


# ---------------------------------------------------------------- typed errors -> status


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Turns a raised ServiceError into its status code with an ErrorDetail trailer.

    Also turns a request that is not a valid protobuf message of the method's input type
    into INVALID_ARGUMENT (field "request") instead of gRPC's UNKNOWN.
    """

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None:
            return handler
        kwargs = {
            "request_deserializer": _tolerant(handler.request_deserializer),
            "response_serializer": handler.response_serializer,
        }
        if handler.response_streaming:
            inner = handler.stream_stream if handler.request_streaming else handler.unary_stream

            async def stream(request, context):
                try:
                    if not handler.request_streaming:
                        _raise_if_malformed(request)
                    else:
                        request = _checked_stream(request)
                    result = inner(request, context)
                    if inspect.isasyncgen(result):
                        async for item in result:
                            yield item
                    else:
                        for item in await result if inspect.isawaitable(result) else result:
                            yield item
                except ServiceError as exc:
                    await _abort(context, exc)

            make = (
                grpc.stream_stream_rpc_method_handler
                if handler.request_streaming
                else grpc.unary_stream_rpc_method_handler
            )
            return make(stream, **kwargs)

        inner = handler.stream_unary if handler.request_streaming else handler.unary_unary

        async def unary(request, context):
            try:
                if not handler.request_streaming:
                    _raise_if_malformed(request)
                else:
                    request = _checked_stream(request)
                result = inner(request, context)
                return await result if inspect.isawaitable(result) else result
            except ServiceError as exc:
                await _abort(context, exc)

        make = (
            grpc.stream_unary_rpc_method_handler
            if handler.request_streaming
            else grpc.unary_unary_rpc_method_handler
        )
        return make(unary, **kwargs)


class _Malformed:
    """What the tolerant deserializer hands on for bytes that do not parse."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _tolerant(deserializer):
    if deserializer is None:
        return None

    def deserialize(data: bytes):
        try:
            return deserializer(data)
        except Exception as exc:  # DecodeError, invalid UTF-8 in a string field, ...
            return _Malformed(f"{type(exc).__name__}: {exc}")

    return deserialize


def _raise_if_malformed(request) -> None:
    if isinstance(request, _Malformed):
        raise InvalidArgument("request", f"not a valid protobuf message ({request.reason})",
                              "send a serialized message of the method's request type")


async def _checked_stream(requests):
    async for request in requests:
        _raise_if_malformed(request)
        yield request


async def _abort(context, exc: ServiceError):
    context.set_trailing_metadata(((ERROR_TRAILER_KEY, exc.detail().SerializeToString()),))
    await context.abort(exc.code, str(exc))


# ---------------------------------------------------------------- idempotency


def idempotency_key(context) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == IDEMPOTENCY_KEY:
            return value
    return None


class IdempotencyCache:
    """Runs a non-idempotent operation once per idempotency key; repeats get the first result.

    A retry that arrives while the first attempt still runs waits for it.
    Failures are not cached (the client may retry them). Bounded LRU with a TTL.
    """

    def __init__(self, max_entries: int = 4096, ttl_s: float = 3600.0) -> None:
        self.max_entries, self.ttl_s = max_entries, ttl_s
        self._done: OrderedDict[str, tuple[float, Any]] = OrderedDict()
        self._running: dict[str, asyncio.Future] = {}

    async def run(self, context, operation: Callable[[], Awaitable[T]]) -> T:
        key = idempotency_key(context)
        if key is None:
            return await operation()
        now = time.monotonic()
        hit = self._done.get(key)
        if hit is not None and now - hit[0] < self.ttl_s:
            self._done.move_to_end(key)
            return hit[1]
        if key in self._running:
            return await asyncio.shield(self._running[key])
        fut = asyncio.get_running_loop().create_future()
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._running[key] = fut
        try:
            result = await operation()
        except BaseException as exc:
            fut.set_exception(exc)
            raise
        finally:
            self._running.pop(key, None)
        fut.set_result(result)
        self._done[key] = (now, result)
        while len(self._done) > self.max_entries:
            self._done.popitem(last=False)
        return result


# ---------------------------------------------------------------- the server


@dataclass
class RunningServer:
    server: grpc.aio.Server
    port: int
    host: str
    health: health.aio.HealthServicer
    service_names: tuple[str, ...]
    servicers: list[Any]
    spec: registry.ServiceSpec | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def stop(self, grace_s: float = 5.0) -> None:
        """Graceful: report NOT_SERVING, refuse new calls, let running ones finish within grace_s."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)
        if self.spec is not None and self.spec.close is not None:
            result = self.spec.close(self.servicers)
            if inspect.isawaitable(result):
                await result


async def start_server(
    servicers: list[tuple[Any, Callable]],
    service_names: tuple[str, ...],
    config: ServerConfig,
    spec: registry.ServiceSpec | None = None,
) -> RunningServer:
    """Starts a grpc.aio server with the given (servicer, add_fn) pairs on the running loop."""
    interceptors = [ErrorInterceptor()]
    if config.token:
        interceptors.insert(0, BearerTokenInterceptor(config.token))
    options = [
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]
    server = grpc.aio.server(
        interceptors=interceptors,
        options=options,
        maximum_concurrent_rpcs=config.max_concurrent_rpcs,
    )
    for servicer, add in servicers:
        add(servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    bind = f"{config.host}:{config.port}"
    if config.tls_cert:
        creds = grpc.ssl_server_credentials(
            [(Path(config.tls_key).read_bytes(), Path(config.tls_cert).read_bytes())]
        )
        port = server.add_secure_port(bind, creds)
    else:
        port = server.add_insecure_port(bind)
    if port == 0:
        raise OSError(f"port: cannot bind {bind}")
    await server.start()
    for name in (*service_names, ""):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("serving %s on %s:%d (%r)", ", ".join(service_names), config.host, port, config)
    return RunningServer(
        server, port, config.host, health_servicer, service_names, [s for s, _ in servicers], spec
    )


async def start_service(name: str, options: dict[str, Any], config: ServerConfig) -> RunningServer:
    """Starts the registered service ``name`` built with ``options``."""
    spec = registry.get(name)
    return await start_server(spec.build(options), spec.service_names, config, spec)


async def serve_forever(
    name: str,
    options: dict[str, Any],
    config: ServerConfig,
    ready: Callable[[RunningServer], None] | None = None,
) -> None:
    """Serves until SIGINT/SIGTERM, then shuts down gracefully."""
    running = await start_service(name, options, config)
    if ready is not None:
        ready(running)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down %s (grace %.1f s)", name, config.grace_s)
    await running.stop(config.grace_s)
