"""A client of the Reference service that is itself a reference backend:
``compute(atoms_list) -> [Result | Failure]`` over gRPC, so any code that takes
a backend (labelling, the MD bootstrap, a campaign) can use a remote pool of
pw.x workers. Spec string: ``service:HOST:PORT``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import grpc
from ase import Atoms

from services.proto.nnmd.v1 import reference_pb2, reference_pb2_grpc
from services.reference.types import Failure, FailureReason, Outcome, Result
from services.reference.wire import failures_of
from services.runtime.channel import connect, idempotency_metadata
from services.runtime.convert import from_atoms, labels_from_proto, structure_to_proto


class ReferenceClient:
    """address: host:port. timeout_s: deadline per request (a QE batch can take long).

    ``compute`` sends one request per structure, up to ``max_in_flight`` at once,
    so a pool of workers behind the service labels them in parallel. Each
    request has its own idempotency key; the channel retries UNAVAILABLE with
    that same key, so a retry never runs twice.
    """

    def __init__(self, address: str, *, timeout_s: float = 24 * 3600.0,
                 properties: Sequence[str] = ("energy", "forces", "stress"),
                 max_in_flight: int = 16, **connect_kwargs):
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
        self.max_in_flight = max_in_flight
        if not {"energy", "forces"} <= set(properties):
            raise ValueError(f"properties {list(properties)}: a label needs 'energy' and "
                             "'forces' (and optionally 'stress')")
        self.address = address
        self.name = f"service:{address}"
        self.properties = list(properties)
        self._channel = connect(address, timeout_s=timeout_s, **connect_kwargs)
        self._stub = reference_pb2_grpc.ReferenceStub(self._channel)
        self.settings_hash = ""

    def compute(self, atoms_list: Sequence[Atoms]) -> list[Outcome]:
        atoms_list = list(atoms_list)
        if len(atoms_list) <= 1 or self.max_in_flight == 1:
            return self._request(atoms_list)
        with ThreadPoolExecutor(min(self.max_in_flight, len(atoms_list))) as ex:
            return [o for out in ex.map(lambda a: self._request([a]), atoms_list) for o in out]

    def _request(self, atoms_list: list[Atoms]) -> list[Outcome]:
        req = compute_request(atoms_list, self.properties)
        t0 = time.monotonic()
        key = uuid.uuid4().hex
        try:
            resp, call = self._stub.Compute.with_call(req, metadata=idempotency_metadata(key))
        except grpc.RpcError as exc:
            return [rpc_failure(exc, self.name) for _ in atoms_list]
        self.settings_hash = resp.reference_settings_hash
        return response_outcomes(resp, failures_of(call), atoms_list, self.name, t0)

    def close(self) -> None:
        self._channel.close()


def compute_request(atoms_list: Sequence[Atoms], properties: Sequence[str]):
    """The ComputeRequest of these structures (``atoms.info["nnmd_id"]`` and
    ``["nnmd_restart_from"]`` become ``Structure.id`` / ``restart_from_id``)."""
    return reference_pb2.ComputeRequest(
        structures=[structure_to_proto(from_atoms(a)[0]) for a in atoms_list],
        properties=list(properties))


def rpc_failure(exc: grpc.RpcError, name: str) -> Failure:
    """A call that ended with an error status, as a typed Failure (never a label)."""
    reason = (FailureReason.TIMEOUT if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED
              else FailureReason.BAD_INPUT if exc.code() == grpc.StatusCode.INVALID_ARGUMENT
              else FailureReason.CRASHED)
    return Failure(reason, f"{name}: {exc.code().name}: {exc.details()}",
                   info={"backend": name})


def response_outcomes(resp, failures: list[dict], atoms_list: Sequence[Atoms], name: str,
                      t0: float) -> list[Outcome]:
    """Result or Failure per structure of a ComputeResponse and its failure records
    (``failures_of``); t0: time.monotonic() when the call was sent."""
    failed = {f["index"]: f for f in failures}
    out: list[Outcome] = []
    for i, a in enumerate(atoms_list):
        msg = resp.labels[i] if i < len(resp.labels) else None
        if i in failed or msg is None or not msg.HasField("energy_ev"):
            f = failed.get(i, {"reason": "crashed", "message": "no energy returned"})
            out.append(Failure(FailureReason(f["reason"]), f["message"],
                               info={"backend": name}))
            continue
        lab = labels_from_proto(msg, len(a))
        if lab.forces is None:
            out.append(Failure(FailureReason.CRASHED, "the service returned no forces",
                               info={"backend": name}))
            continue
        out.append(Result(lab.energy, lab.forces, lab.stress, info={
            "backend": name, "wall_s": resp.wall_time_s[i],
            "reference_settings_hash": resp.reference_settings_hash,
            "round_trip_s": time.monotonic() - t0}))
    return out
