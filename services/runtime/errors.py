"""Typed errors that servers map to gRPC status codes.

Plain code raises these; the runtime's error interceptor turns them into a
status with the message and an ``nnmd.v1.ErrorDetail`` trailer (key
``nnmd-error-bin``) naming the field and the fix. They subclass ValueError so the
command line prints them as one-line user errors too.
"""

from __future__ import annotations

import grpc

ERROR_TRAILER_KEY = "nnmd-error-bin"


class ServiceError(Exception):
    """Base: an error with a gRPC status code, a field and a hint."""

    code = grpc.StatusCode.INTERNAL

    def __init__(self, field: str, reason: str, hint: str = "") -> None:
        self.field = field
        self.reason = reason
        self.hint = hint
        text = f"{field}: {reason}" if field else reason
        super().__init__(f"{text} ({hint})" if hint else text)

    def detail(self):
        from services.proto.nnmd.v1 import common_pb2

        return common_pb2.ErrorDetail(field=self.field, reason=self.reason, hint=self.hint)


class InvalidArgument(ServiceError, ValueError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ServiceError, LookupError, ValueError):
    code = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(ServiceError, ValueError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class DataCorruption(FailedPrecondition):
    """Stored data is damaged (checksum mismatch, undecodable or missing chunk).

    A FailedPrecondition subclass, so callers that already refuse on
    FailedPrecondition refuse here too; the status code is DATA_LOSS.
    """

    code = grpc.StatusCode.DATA_LOSS


def error_detail(exc: grpc.RpcError):
    """The ErrorDetail attached to a failed call, or None."""
    from services.proto.nnmd.v1 import common_pb2

    trailers = exc.trailing_metadata() or ()
    for key, value in trailers:
        if key == ERROR_TRAILER_KEY:
            return common_pb2.ErrorDetail.FromString(value)
    return None
