"""A Python client of the Coordinator service: launch, watch and stop parallel chains.

    from orchestrator.client import Client

    client = Client("127.0.0.1:50051", token="...")         # or $NNMD_TOKEN
    cid = client.start("examples/campaigns/cu-emt.yaml")     # a path, or a dict of the spec
    for event in client.watch(cid):                          # dicts, until the campaign ends
        print(event["kind"], event.get("chain"), event.get("step"))
    client.status(cid)                                       # dict: state, chains, n_labels, ...
    client.export_model(cid, "/tmp/model.nnmd")              # or format="sannp"
    name, data = client.export_bytes(cid, "lammps")          # the file itself, no shared disk
    client.list(); client.history(cid); client.report_html(cid)
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

import grpc

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
    for kind in ("qe:", "lammps:"):
        if isinstance(ref, str) and ref.lower().startswith(kind):
            d["reference"] = kind + absolute(ref[len(kind):])
    return d


def _none(x: float) -> float | None:
    return None if x != x else x


def _event_dict(ev) -> dict:
    out = {"campaign": ev.campaign, "kind": ev.kind, "time": ev.time_s}
    if ev.kind == "step":
        out.update(chain=ev.chain, step=ev.step, accepted=ev.accepted,
                   model_version=ev.model_version, message=ev.message,
                   energy_ref=_none(ev.energy_ref_ev), volume=_none(ev.volume_angstrom3),
                   n_md_steps=ev.n_md_steps, acceptance_rate=_none(ev.acceptance_rate),
                   phase=ev.phase, status=ev.status, n_labels=ev.n_labels)
    elif ev.kind == "model_published":
        out.update(model_version=ev.model_version, n_labels=ev.n_labels,
                   energy_rmse_mev_per_atom=_none(ev.energy_rmse_mev_per_atom),
                   force_rmse_mev_per_angstrom=_none(ev.force_rmse_mev_per_angstrom))
    elif ev.kind == "chain_failed":
        out.update(chain=ev.chain, step=ev.step, message=ev.message)
    elif ev.kind == "log":
        out.update(message=ev.message)
    else:
        out.update(state=STATE_NAMES[ev.state], message=ev.message)
    return out


class WatchStream:
    """A campaign's events (Client.watch): iterable once, as dicts; ``cancel()`` from any
    thread ends the iteration (the gRPC call is cancelled; iterating then raises nothing
    more)."""

    def __init__(self, call) -> None:
        self._call = call
        self.cancelled = False

    def __iter__(self) -> Iterator[dict]:
        try:
            for ev in self._call:
                yield _event_dict(ev)
        except grpc.RpcError as exc:
            if not (self.cancelled and exc.code() == grpc.StatusCode.CANCELLED):
                raise
        finally:
            self._call.cancel()

    def cancel(self) -> None:
        self.cancelled = True
        self._call.cancel()


class Client:
    """address: host:port of `nnmd serve coordinator`. token: default $NNMD_TOKEN.
    Other keyword arguments go to services.runtime.channel.connect (tls, tls_ca, ...)."""

    def __init__(self, address: str, token: str | None = None, *, timeout_s: float = 60.0,
                 **connect_kwargs) -> None:
        self.address = address
        self._channel = connect(address, token=token, timeout_s=timeout_s, **connect_kwargs)
        self._stub = coordinator_pb2_grpc.CoordinatorStub(self._channel)

    def start(self, spec, *, store: str | None = None, name: str | None = None,
              files: dict[str, bytes] | None = None, validate_only: bool = False) -> str:
        """Starts (or resumes) a campaign; returns its id (the campaign's name).

        files: inputs sent along ({bare name: bytes}, 8 MiB in all) for a coordinator
        that shares no storage with this client; spec fields that name them by their
        bare name (structure: cu.xyz, reference: qe:pw.in) resolve to the coordinator's
        copy. validate_only: check the spec (and files) and return the name; nothing
        starts."""
        req = coordinator_pb2.StartRequest(config_json=json.dumps(_spec_dict(spec)),
                                           campaign=name or "", validate_only=validate_only)
        if store:
            req.store.CopyFrom(common_pb2.StoreRef(url=store))
        for fname, content in (files or {}).items():
            req.files.add(name=fname, content=bytes(content))
        # one key for this call: the channel's retries on UNAVAILABLE cannot start it twice
        return self._stub.Start(req, metadata=idempotency_metadata()).campaign

    def list(self) -> list[dict]:
        """The campaigns the coordinator runs or its default store holds: campaign, state,
        n_chains, steps_done, steps_total, acceptance (None before any step), n_labels,
        model_version, reference, store."""
        resp = self._stub.List(coordinator_pb2.ListRequest())
        return [{"campaign": c.campaign, "state": STATE_NAMES[c.state],
                 "n_chains": c.n_chains, "steps_done": c.steps_done,
                 "steps_total": c.steps_total,
                 "acceptance": None if c.acceptance_rate != c.acceptance_rate
                 else c.acceptance_rate, "n_labels": c.n_labels,
                 "model_version": c.model_version, "reference": c.reference,
                 "store": c.store_url} for c in resp.campaigns]

    def history(self, campaign: str, *, offset: int = 0, limit: int = 20,
                max_points: int = 2000) -> dict:
        """The campaign's traces so far (orchestrator/coordinator/history.py): settings,
        chain_names, the page offset:offset+limit of chains' traces, the aggregate over
        all chains, labels over time, models with errors and learning curves, the log."""
        resp = self._stub.History(coordinator_pb2.HistoryRequest(
            campaign=campaign, offset=offset, limit=limit, max_points=max_points))
        return json.loads(resp.json)

    def export_bytes(self, campaign: str, format: str = "nnmd", *,
                     version: int = 0) -> tuple[str, bytes]:
        """(file name, content) of the campaign's model (version 0 = latest) as nnmd
        (model.nnmd), sannp (ffield.sannp) or lammps (nnmd-lammps.zip)."""
        resp = self._stub.ExportModel(coordinator_pb2.ExportModelRequest(
            campaign=campaign, version=version, format=format, return_content=True))
        return resp.filename, resp.content

    def report_html(self, campaign: str) -> bytes:
        """The campaign's report.html, as `nnmd report` writes it."""
        return self._stub.Report(coordinator_pb2.ReportRequest(campaign=campaign)).html

    def status(self, campaign: str) -> dict:
        st = self._stub.Status(coordinator_pb2.StatusRequest(campaign=campaign))
        return {"campaign": st.campaign, "state": STATE_NAMES[st.state],
                "n_labels": st.n_labels, "model_version": st.latest_model.version,
                "store": st.latest_model.store.url, "message": st.message,
                "chains": [{"chain": c.chain, "step": c.step,
                            "acceptance_rate": c.acceptance_rate,
                            "n_md_steps": c.n_md_steps, "model_version": c.model_version,
                            "temperature_k": c.temperature_k, "phase": c.phase,
                            "state": c.state, "failure": c.failure} for c in st.chains],
                # where the work runs: MD executors and reference workers, calls each
                "md_executors": [{"address": w.address, "calls": w.calls, "kind": w.kind}
                                 for w in st.md_executors],
                "reference_workers": [{"address": w.address, "calls": w.calls,
                                       "kind": w.kind} for w in st.reference_workers]}

    def watch(self, campaign: str, timeout_s: float | None = None) -> WatchStream:
        """The campaign's events until it ends: iterate it for dicts; ``cancel()`` (from
        any thread) ends the iteration. kind "step": chain, step, accepted, energy_ref
        (eV), volume (A^3), n_md_steps, acceptance_rate, phase, status, n_labels;
        "model_published": model_version, n_labels and its training errors;
        "chain_failed"; "log": message; "state": state, message."""
        return WatchStream(self._stub.Watch(coordinator_pb2.WatchRequest(campaign=campaign),
                                            timeout=timeout_s or 365 * 24 * 3600.0))

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
