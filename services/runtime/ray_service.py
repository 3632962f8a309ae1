"""Services inside Ray actors, and a pool that spreads calls over their endpoints.

``start_service_actor("store", {...})`` places an actor (with the resources
the caller asks for), starts the service's gRPC server on that actor's node
and hands back ``(actor, "ip:port")``. Ray restarts a crashed actor
(``max_restarts``); the restarted actor serves on a new port, which
:class:`EndpointPool` picks up by asking the actor again. An actor that is
gone for good is dropped from the pool and never handed out again.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable
from typing import Any

import grpc
import ray

from services.runtime.channel import connect
from services.runtime.server import DEFAULT_MAX_MESSAGE_BYTES, ServerConfig

log = logging.getLogger("nnmd.runtime")


@ray.remote
class ServiceActor:
    """Hosts one registered service's grpc.aio server on the actor's event loop (an async actor)."""

    def __init__(self, service: str, options: dict, config: dict) -> None:
        self._service, self._options, self._config = service, options, config
        self._running = None

    async def _ensure_started(self):
        if self._running is None:
            from services.runtime.server import start_service

            self._running = await start_service(
                self._service, self._options, ServerConfig(**self._config)
            )
        return self._running

    async def address(self) -> str:
        """host:port reachable from other nodes (the node's IP)."""
        running = await self._ensure_started()
        host = running.host
        if host in ("0.0.0.0", "[::]", "::"):
            host = ray.util.get_node_ip_address()
        return f"{host}:{running.port}"

    async def stop(self, grace_s: float = 5.0) -> None:
        if self._running is not None:
            await self._running.stop(grace_s)
            self._running = None


def start_service_actor(
    service: str,
    options: dict | None = None,
    *,
    token: str | None = None,
    allow_no_auth: bool = False,
    host: str = "0.0.0.0",
    tls_cert: str | None = None,
    tls_key: str | None = None,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    num_cpus: float = 1,
    num_gpus: float = 0,
    resources: dict | None = None,
    max_restarts: int = 3,
    name: str | None = None,
    timeout_s: float = 60.0,
    count: int = 1,
    many: bool = False,
) -> Any:
    """Starts ``service`` in a new actor; returns (actor handle, address).

    With ``count`` > 1 (or ``many``), starts that many actors at once and returns a list
    of (actor, address); Ray places each by its resources (spread over the nodes).

    The token travels as an actor argument (inside the Ray cluster, never over
    the service's own port) and is never logged.
    """
    config = {
        "host": host,
        "port": 0,
        "token": token,
        "allow_no_auth": allow_no_auth,
        "tls_cert": tls_cert,
        "tls_key": tls_key,
        "max_message_bytes": max_message_bytes,
    }
    ServerConfig(**config)  # validate here, with a clear error, not inside the actor
    actors = [
        ServiceActor.options(
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            resources=resources or {},
            max_restarts=max_restarts,
            max_task_retries=-1 if max_restarts else 0,
            name=name if count == 1 else None,
        ).remote(service, dict(options or {}), config)
        for _ in range(count)
    ]
    # all start at once; their addresses are awaited together
    addresses = ray.get([a.address.remote() for a in actors], timeout=timeout_s)
    if count == 1 and not many:
        return actors[0], addresses[0]
    return list(zip(actors, addresses))


class NoLiveEndpoints(RuntimeError):
    pass


class EndpointPool:
    """Round-robin calls over service actors; follows restarts, drops dead actors.

    ``call(lambda channel: Stub(channel).Method(request))`` runs on the next
    live endpoint; on UNAVAILABLE the endpoint's actor is asked for its
    (possibly new) address and the call moves on to the next endpoint.
    Thread-safe.
    """

    def __init__(self, actors: list, *, refresh_timeout_s: float = 30.0, **connect_kwargs) -> None:
        self._connect_kwargs = connect_kwargs
        self._refresh_timeout = refresh_timeout_s
        self._lock = threading.Lock()
        self._endpoints: list[list] = []  # [actor, address, channel]
        for actor, address in zip(actors, ray.get([a.address.remote() for a in actors])):
            self._endpoints.append([actor, address, self._channel(address)])
        self._rr = itertools.count()

    def _channel(self, address: str) -> grpc.Channel:
        return connect(address, **self._connect_kwargs)

    @property
    def addresses(self) -> list[str]:
        with self._lock:
            return [e[1] for e in self._endpoints]

    def __len__(self) -> int:
        with self._lock:
            return len(self._endpoints)

    def _next(self) -> list:
        with self._lock:
            if not self._endpoints:
                raise NoLiveEndpoints("no live endpoints left in the pool")
            return self._endpoints[next(self._rr) % len(self._endpoints)]

    def _refresh(self, endpoint: list) -> None:
        actor = endpoint[0]
        try:
            address = ray.get(actor.address.remote(), timeout=self._refresh_timeout)
        except ray.exceptions.GetTimeoutError:
            # still restarting (or busy): not dead, try it again on a later call
            log.warning("endpoint %s did not answer within %.0f s", endpoint[1], self._refresh_timeout)
            return
        except ray.exceptions.RayActorError as exc:
            log.warning("dropping endpoint %s: %s", endpoint[1], type(exc).__name__)
            with self._lock:
                if endpoint in self._endpoints:
                    self._endpoints.remove(endpoint)
            endpoint[2].close()
            return
        if address != endpoint[1]:
            endpoint[2].close()
            with self._lock:
                endpoint[1], endpoint[2] = address, self._channel(address)

    def call(self, fn: Callable[[grpc.Channel], Any], attempts: int | None = None) -> Any:
        """fn(channel) on a live endpoint; retries other endpoints on UNAVAILABLE."""
        tries = attempts or max(2, 2 * len(self))
        last: Exception | None = None
        for _ in range(tries):
            endpoint = self._next()
            try:
                return fn(endpoint[2])
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
                last = exc
                self._refresh(endpoint)
        raise NoLiveEndpoints(f"all attempts failed with UNAVAILABLE: {last}")

    def close(self) -> None:
        with self._lock:
            for e in self._endpoints:
                e[2].close()
            self._endpoints.clear()
