"""A Python client of the Coordinator service: launch, watch and stop parallel chains.

    from orchestrator.client import Client

    client = Client("127.0.0.1:50051", token="...")         # or $NNMD_TOKEN
    cid = client.start("examples/campaigns/cu-emt.yaml")     # a path, or a dict of the spec
    for event in client.watch(cid):                          # dicts, until the campaign ends
        print(event["kind"], event.get("chain"), event.get("step"))
    client.status(cid)                                       # dict: state, chains, n_labels, ...
    client.export_model(cid, "/tmp/model.nnmd")              # or format="sannp"
    client.stop(cid)

Failures are grpc.RpcError with standard codes: NOT_FOUND (unknown campaign),
UNAUTHENTICATED (no or wrong token), INVALID_ARGUMENT naming the field (a bad spec:
``services.runtime.errors.error_detail(err).field`` is e.g. ``config.chains``).
A spec given as a path is read here; its relative paths (structure, qe:INPUT) are made
absolute, so they must exist where the coordinator runs too (the same machine or shared
storage).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

from services.proto.nnmd.v1 import common_pb2, coordinator_pb2, coordinator_pb2_grpc
from services.runtime.channel import connect, idempotency_metadata

STATE_NAMES = {v: k.removeprefix("CAMPAIGN_STATE_").lower()
               for k, v in coordinator_pb2.CampaignState.items()}


def _spec_dict(spec) -> dict:
    if isinstance(spec, dict):
        return dict(spec)
    import yaml

    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"spec: no file {path}")
    d = yaml.safe_load(path.read_text())
    if not isinstance(d, dict):
        raise ValueError(f"spec: {path} must be a YAML mapping of fields")
    base = path.resolve().parent

    def absolute(value: str) -> str:
        if not value or "://" in value or Path(value).is_absolute():
            return value
        return str(base / value) if (base / value).exists() else value

    for key in ("structure", "store"):
        if isinstance(d.get(key), str):
            d[key] = absolute(d[key])
    ref = d.get("reference")
    if isinstance(ref, str) and ref.lower().startswith("qe:"):
        d["reference"] = "qe:" + absolute(ref[3:])
    return d


class Client:
    """address: host:port of `nnmd serve coordinator`. token: default $NNMD_TOKEN.
    Other keyword arguments go to services.runtime.channel.connect (tls, tls_ca, ...)."""

    def __init__(self, address: str, token: str | None = None, *, timeout_s: float = 60.0,
                 **connect_kwargs) -> None:
        self.address = address
        self._channel = connect(address, token=token, timeout_s=timeout_s, **connect_kwargs)
        self._stub = coordinator_pb2_grpc.CoordinatorStub(self._channel)

    def start(self, spec, *, store: str | None = None, name: str | None = None) -> str:
        """Starts (or resumes) a campaign; returns its id (the campaign's name)."""
        req = coordinator_pb2.StartRequest(config_json=json.dumps(_spec_dict(spec)),
                                           campaign=name or "")
        if store:
            req.store.CopyFrom(common_pb2.StoreRef(url=store))
        # one key for this call: the channel's retries on UNAVAILABLE cannot start it twice
        return self._stub.Start(req, metadata=idempotency_metadata()).campaign

    def status(self, campaign: str) -> dict:
        st = self._stub.Status(coordinator_pb2.StatusRequest(campaign=campaign))
        return {"campaign": st.campaign, "state": STATE_NAMES[st.state],
                "n_labels": st.n_labels, "model_version": st.latest_model.version,
                "store": st.latest_model.store.url, "message": st.message,
                "chains": [{"chain": c.chain, "step": c.step,
                            "acceptance_rate": c.acceptance_rate,
                            "n_md_steps": c.n_md_steps, "model_version": c.model_version,
                            "temperature_k": c.temperature_k, "phase": c.phase,
                            "state": c.state, "failure": c.failure} for c in st.chains]}

    def watch(self, campaign: str, timeout_s: float | None = None) -> Iterator[dict]:
        """Events as dicts (kind: step | model_published | state) until the campaign ends."""
        stream = self._stub.Watch(coordinator_pb2.WatchRequest(campaign=campaign),
                                  timeout=timeout_s or 365 * 24 * 3600.0)
        try:
            for ev in stream:
                out = {"campaign": ev.campaign, "kind": ev.kind, "time": ev.time_s}
                if ev.kind == "step":
                    out.update(chain=ev.chain, step=ev.step, accepted=ev.accepted,
                               model_version=ev.model_version, message=ev.message)
                elif ev.kind == "model_published":
                    out.update(model_version=ev.model_version)
                elif ev.kind == "chain_failed":
                    out.update(chain=ev.chain, step=ev.step, message=ev.message)
                else:
                    out.update(state=STATE_NAMES[ev.state], message=ev.message)
                yield out
        finally:
            stream.cancel()

    def stop(self, campaign: str) -> str:
        """Asks the campaign to stop after each chain's current step; returns its state."""
        return STATE_NAMES[self._stub.Stop(coordinator_pb2.StopRequest(campaign=campaign)).state]

    def export_model(self, campaign: str, path: str | os.PathLike, *, version: int = 0,
                     format: str = "nnmd") -> str:
        """Writes the campaign's model (version 0 = latest) to `path` on the coordinator's
        host (or an fsspec URL); returns the destination."""
        dest = str(path)
        if "://" not in dest:
            dest = str(Path(dest).resolve())
        resp = self._stub.ExportModel(coordinator_pb2.ExportModelRequest(
            campaign=campaign, version=version, destination=dest, format=format))
        return resp.destination

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
