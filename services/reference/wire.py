"""What a Reference client and the service agree on besides the proto: the trailer that
carries the failure records. Shared by both, so the client needs no service module."""

from __future__ import annotations

import json

FAILURES_TRAILER = "nnmd-failures"


def failures_of(call_or_error) -> list[dict]:
    """The failure records of a finished call (``with_call`` result or RpcError)."""
    for key, value in call_or_error.trailing_metadata() or ():
        if key == FAILURES_TRAILER:
            return json.loads(value)
    return []
