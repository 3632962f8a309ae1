"""Client side: channels with auth, default deadlines, retries on UNAVAILABLE, idempotency keys.

``connect(address)`` gives a sync ``grpc.Channel``; ``connect_aio(address)`` a
``grpc.aio.Channel``. Both retry UNAVAILABLE with exponential backoff (gRPC
service-config retry policy), send ``authorization: Bearer <token>`` (token
from the argument or $NNMD_TOKEN) and apply a default deadline to calls that
set none. Non-idempotent calls (Start, appends) should carry an idempotency
key so that a retry cannot do the work twice::

    stub.Start(request, metadata=idempotency_metadata())
"""

from __future__ import annotations

import collections
import json
import uuid
from dataclasses import dataclass
from pathlib import Path

import grpc

from services.runtime.auth import load_token
from services.runtime.server import DEFAULT_MAX_MESSAGE_BYTES, IDEMPOTENCY_KEY


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 5
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 5.0
    backoff_multiplier: float = 2.0

    def service_config(self) -> str:
        return json.dumps(
            {
                "methodConfig": [
                    {
                        "name": [{}],  # every method of every service
                        "retryPolicy": {
                            "maxAttempts": self.max_attempts,
                            "initialBackoff": f"{self.initial_backoff_s}s",
                            "maxBackoff": f"{self.max_backoff_s}s",
                            "backoffMultiplier": self.backoff_multiplier,
                            "retryableStatusCodes": ["UNAVAILABLE"],
                        },
                    }
                ]
            }
        )


def idempotency_metadata(key: str | None = None) -> tuple[tuple[str, str], ...]:
    """Metadata carrying an idempotency key (a fresh UUID unless given); reuse it for manual retries."""
    return ((IDEMPOTENCY_KEY, key or uuid.uuid4().hex),)


def _options(max_message_bytes: int, retry: RetryPolicy | None, tls_server_name: str | None):
    opts = [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.enable_retries", 1 if retry else 0),
    ]
    if retry:
        opts.append(("grpc.service_config", retry.service_config()))
    if tls_server_name:
        opts.append(("grpc.ssl_target_name_override", tls_server_name))
    return opts


def _credentials(tls_ca: str | None, tls: bool):
    if not (tls or tls_ca):
        return None
    root = Path(tls_ca).read_bytes() if tls_ca else None
    return grpc.ssl_channel_credentials(root_certificates=root)


def _add_metadata(metadata, token: str | None):
    md = list(metadata or ())
    if token and not any(k == "authorization" for k, _ in md):
        md.append(("authorization", f"Bearer {token}"))
    return md


class _Details(
    collections.namedtuple(
        "_Details",
        ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"),
    ),
    grpc.ClientCallDetails,
):
    pass


class _SyncInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    def __init__(self, token: str | None, timeout_s: float | None) -> None:
        self._token, self._timeout = token, timeout_s

    def _details(self, d):
        return _Details(
            d.method,
            d.timeout if d.timeout is not None else self._timeout,
            _add_metadata(d.metadata, self._token),
            d.credentials,
            getattr(d, "wait_for_ready", None),
            getattr(d, "compression", None),
        )

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation, details, request_iterator):
        return continuation(self._details(details), request_iterator)

    def intercept_stream_stream(self, continuation, details, request_iterator):
        return continuation(self._details(details), request_iterator)


class _AioInterceptor(
    grpc.aio.UnaryUnaryClientInterceptor,
    grpc.aio.UnaryStreamClientInterceptor,
    grpc.aio.StreamUnaryClientInterceptor,
    grpc.aio.StreamStreamClientInterceptor,
):
    def __init__(self, token: str | None, timeout_s: float | None) -> None:
        self._token, self._timeout = token, timeout_s

    def _details(self, d):
        return grpc.aio.ClientCallDetails(
            d.method,
            d.timeout if d.timeout is not None else self._timeout,
            grpc.aio.Metadata(*_add_metadata(d.metadata, self._token)),
            d.credentials,
            d.wait_for_ready,
        )

    async def intercept_unary_unary(self, continuation, details, request):
        return await continuation(self._details(details), request)

    async def intercept_unary_stream(self, continuation, details, request):
        return await continuation(self._details(details), request)

    async def intercept_stream_unary(self, continuation, details, request_iterator):
        return await continuation(self._details(details), request_iterator)

    async def intercept_stream_stream(self, continuation, details, request_iterator):
        return await continuation(self._details(details), request_iterator)


def connect(
    address: str,
    *,
    token: str | None = None,
    token_file: str | None = None,
    tls: bool = False,
    tls_ca: str | None = None,
    tls_server_name: str | None = None,
    timeout_s: float | None = 60.0,
    retry: RetryPolicy | None = RetryPolicy(),
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> grpc.Channel:
    """A sync channel to ``address`` (host:port). ``timeout_s`` is the default deadline per call."""
    token = token or load_token(token_file)
    opts = _options(max_message_bytes, retry, tls_server_name)
    creds = _credentials(tls_ca, tls)
    channel = (
        grpc.secure_channel(address, creds, opts) if creds else grpc.insecure_channel(address, opts)
    )
    return grpc.intercept_channel(channel, _SyncInterceptor(token, timeout_s))


def connect_aio(
    address: str,
    *,
    token: str | None = None,
    token_file: str | None = None,
    tls: bool = False,
    tls_ca: str | None = None,
    tls_server_name: str | None = None,
    timeout_s: float | None = 60.0,
    retry: RetryPolicy | None = RetryPolicy(),
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> grpc.aio.Channel:
    """An asyncio channel; same settings as :func:`connect`."""
    token = token or load_token(token_file)
    opts = _options(max_message_bytes, retry, tls_server_name)
    creds = _credentials(tls_ca, tls)
    interceptors = [_AioInterceptor(token, timeout_s)]
    if creds:
        return grpc.aio.secure_channel(address, creds, opts, interceptors=interceptors)
    return grpc.aio.insecure_channel(address, opts, interceptors=interceptors)
