"""Where a campaign's reference calls run: in-process threads, or Ray-hosted services.

``RayReferencePool`` starts W Ray actors, each serving the Reference gRPC service with
one backend (``num_cpus`` = the MPI ranks x threads of a pw.x run, plus any custom
resources such as ``{qe: 0.01}`` to pin them to QE nodes), so Ray spreads them across
the cluster's nodes. Chains call ``await pool.compute(atoms)``: the call goes over
gRPC (asyncio channel, bearer token, deadline, idempotency key) to an idle endpoint,
so no endpoint runs two calculations at once and hundreds of chains share W workers.
When an endpoint stops answering (UNAVAILABLE: its actor died), the actor is asked for
its new address (Ray restarts it, ``max_restarts``) and the call goes to the next idle
endpoint with the same idempotency key; an actor gone for good is dropped. The reference
failures of a call (SCF not converged, timeout) come back as typed Failures, never as
labels.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import uuid

import grpc

from services.reference.types import Failure, FailureReason

log = logging.getLogger("nnmd.coordinator")


class NoReferenceWorkers(RuntimeError):
    pass


class RayReferencePool:
    """W Ray actors serving ``reference`` (a spec string) over gRPC; async ``compute``."""

    def __init__(self, reference: str, workers: int = 1, *, qe: dict | None = None,
                 num_cpus: float | None = None, resources: dict | None = None,
                 max_restarts: int = 3, timeout_s: float = 24 * 3600.0,
                 start_timeout_s: float = 300.0) -> None:
        import ray

        from services.runtime.ray_service import start_service_actor

        if workers < 1:
            raise ValueError(f"resources.reference.workers must be >= 1, got {workers}")
        qe = dict(qe or {})
        options = {"reference": reference}
        for key in ("ranks", "threads", "timeout_s", "attempts", "restart", "restart_root"):
            if key in qe:
                options[key] = qe[key]
        cpus = float(num_cpus if num_cpus is not None
                     else int(qe.get("ranks", 1)) * int(qe.get("threads", 1)))
        # A token that only this coordinator and its workers know (travels inside Ray).
        self._token = secrets.token_urlsafe(24)
        self._timeout_s = timeout_s
        self._endpoints: list[list] = []  # [actor, address, channel, stub]
        self.settings_hash = ""
        try:
            started = start_service_actor(
                "reference", options, token=self._token, num_cpus=cpus,
                resources=dict(resources or {}), max_restarts=max_restarts,
                timeout_s=start_timeout_s, count=workers, many=True)
        except ray.exceptions.GetTimeoutError:
            free = ray.available_resources()
            raise RuntimeError(
                f"could not start {workers} reference workers with {cpus:g} CPUs "
                f"{'and ' + str(resources) + ' ' if resources else ''}each within "
                f"{start_timeout_s:g} s (free in the Ray cluster: {free}); lower "
                "resources.reference.workers or the ranks") from None
        for actor, address in started:
            self._endpoints.append([actor, address, None, None])
        self._idle: asyncio.Queue | None = None
        self.calls = 0
        self.retries = 0

    @property
    def addresses(self) -> list[str]:
        return [e[1] for e in self._endpoints]

    def _stub(self, endpoint):
        from services.proto.nnmd.v1 import reference_pb2_grpc
        from services.runtime.channel import connect_aio

        if endpoint[2] is None:
            endpoint[2] = connect_aio(endpoint[1], token=self._token, timeout_s=self._timeout_s)
            endpoint[3] = reference_pb2_grpc.ReferenceStub(endpoint[2])
        return endpoint[3]

    async def _refresh(self, endpoint) -> bool:
        """Ask the endpoint's actor for its address; False when it is gone for good."""
        import ray

        try:
            address = await asyncio.wait_for(endpoint[0].address.remote(), 120.0)
        except TimeoutError:
            return True  # still restarting: keep it
        except ray.exceptions.RayActorError:
            log.warning("reference worker %s is gone; dropping it", endpoint[1])
            if endpoint in self._endpoints:
                self._endpoints.remove(endpoint)
            return False
        if address != endpoint[1]:
            if endpoint[2] is not None:
                await endpoint[2].close()
            endpoint[1], endpoint[2], endpoint[3] = address, None, None
        return True

    async def compute(self, atoms):
        """The reference outcome (Result or Failure) of one structure."""
        from services.reference.client import compute_request, response_outcomes, rpc_failure
        from services.reference.service import failures_of
        from services.runtime.channel import idempotency_metadata

        if self._idle is None:
            self._idle = asyncio.Queue()
            for e in self._endpoints:
                self._idle.put_nowait(e)
        request = compute_request([atoms], ("energy", "forces", "stress"))
        key = uuid.uuid4().hex  # the same key on every retry: the work runs once
        for _attempt in range(8):
            if not self._endpoints:
                raise NoReferenceWorkers("every reference worker died and Ray could not "
                                         "restart them")
            endpoint = await self._idle.get()
            if endpoint not in self._endpoints:
                continue
            t0 = time.monotonic()
            try:
                call = self._stub(endpoint).Compute(request,
                                                    metadata=idempotency_metadata(key))
                resp = await call
                trailer = await call.trailing_metadata()
            except grpc.aio.AioRpcError as exc:
                if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
                    self.retries += 1
                    alive = await self._refresh(endpoint)
                    if alive:
                        self._idle.put_nowait(endpoint)
                    continue
                self._idle.put_nowait(endpoint)
                return rpc_failure(exc, endpoint[1])
            self._idle.put_nowait(endpoint)
            self.calls += 1
            self.settings_hash = resp.reference_settings_hash
            return response_outcomes(resp, failures_of(_Trailer(trailer)), [atoms],
                                     endpoint[1], t0)[0]
        return Failure(FailureReason.CRASHED, "no reference worker answered after 8 tries",
                       info={})

    def close(self) -> None:
        import ray

        for e in self._endpoints:
            if e[2] is not None:
                try:
                    asyncio.get_event_loop().create_task(e[2].close())
                except RuntimeError:
                    pass
            try:
                ray.kill(e[0])
            except Exception:  # noqa: BLE001 - already gone
                pass
        self._endpoints.clear()


class _Trailer:
    """Adapts aio trailing metadata to services.reference.service.failures_of."""

    def __init__(self, metadata) -> None:
        self._md = metadata

    def trailing_metadata(self):
        return self._md


def ray_trainer(resources: dict | None = None, max_retries: int = 3):
    """train(structures, config, init=) as a Ray task with the trainer's resources
    (``num_gpus``, ``num_cpus``, custom ``resources``), so re-training runs on a GPU node;
    a task whose worker dies is retried (max_retries) and the campaign waits for it."""
    import ray

    from services.runtime import faults

    res = dict(resources or {})
    opts = {"num_cpus": float(res.get("num_cpus", 1)), "num_gpus": float(res.get("num_gpus", 0)),
            "resources": dict(res.get("resources", {})), "max_retries": max_retries}
    env = faults.environment()
    if env:  # the fault suite's variables reach the trainer's worker too
        opts["runtime_env"] = {"env_vars": env}

    @ray.remote
    def _train(structures, config, init):
        from nnmd_kernels.training import train

        result = train(structures, config, init=init)
        faults.point("trainer_task")
        return result

    def train_fn(structures, config, init=None):
        return ray.get(_train.options(**opts).remote(structures, config, init))

    return train_fn
