"""The Coordinator gRPC service (nnmd.v1.Coordinator): campaigns on the server's loop.

    nnmd serve coordinator --port 50051 --store URL [--executor local|ray]

Start validates the spec (INVALID_ARGUMENT naming the field, e.g. ``config.chains``),
then runs the campaign as a task on the server's event loop (chains are asyncio tasks;
MD, store writes and training in threads; the reference local or on Ray). Starting a
campaign that is already running returns its id; starting one the store already holds
resumes it from its checkpoints. Status, Watch (a stream of events until the campaign
ends), Stop (after each chain's current step; resumable), ExportModel (a version of the
campaign's model as model.nnmd or ffield.sannp). An unknown campaign is NOT_FOUND.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import time

from orchestrator.coordinator.runner import TERMINAL, CampaignRun, status_from_store
from orchestrator.coordinator.spec import EXECUTORS, SpecError, parse_spec
from services.proto.nnmd.v1 import common_pb2, coordinator_pb2, coordinator_pb2_grpc
from services.runtime import registry
from services.runtime.errors import FailedPrecondition, InvalidArgument, NotFound
from services.runtime.server import IdempotencyCache

log = logging.getLogger("nnmd.coordinator")
_STATE = {"pending": coordinator_pb2.CAMPAIGN_STATE_PENDING,
          "running": coordinator_pb2.CAMPAIGN_STATE_RUNNING,
          "stopping": coordinator_pb2.CAMPAIGN_STATE_STOPPING,
          "finished": coordinator_pb2.CAMPAIGN_STATE_FINISHED,
          "stopped": coordinator_pb2.CAMPAIGN_STATE_STOPPED,
          "failed": coordinator_pb2.CAMPAIGN_STATE_FAILED}
MAX_CONFIG_BYTES = 1 << 20
EXPORT_FORMATS = ("nnmd", "sannp")


def _check_name(name: str, field: str) -> str:
    from services.store.store import safe_name

    try:
        return safe_name(name, field)
    except ValueError as exc:
        raise InvalidArgument(field, str(exc), "letters, digits, '.', '_' or '-'") from None


class CoordinatorServicer(coordinator_pb2_grpc.CoordinatorServicer):
    """store: the default store of campaigns whose spec names none; executor: the default
    executor (a spec's own `executor` wins); max_campaigns: running at once."""

    def __init__(self, store: str = "nnmd-store", executor: str = "auto",
                 max_campaigns: int = 16, base_dir: str | None = None,
                 store_roots: list[str] | None = None, allow_code: bool = False) -> None:
        if executor not in EXECUTORS:
            raise ValueError(f"executor must be one of {EXECUTORS}, got {executor!r}")
        self.store = store
        # None = any store this server can reach; else campaigns' stores must lie below
        self.store_roots = list(store_roots) if store_roots is not None else None
        # specs that name programs or Python code to run (a custom pw.x, mpirun, an
        # ase:module:factory reference) execute them on this server: off unless asked for
        self.allow_code = allow_code
        self.executor = executor
        self.max_campaigns = max_campaigns
        self.base_dir = base_dir
        self.runs: dict[str, CampaignRun] = {}
        self.tasks: dict[str, asyncio.Task] = {}
        self._idempotency = IdempotencyCache()

    # ------------------------------------------------------------ helpers
    def _run_of(self, name: str) -> CampaignRun | None:
        return self.runs.get(name)

    def _status(self, name: str) -> dict:
        _check_name(name, "campaign")
        run = self._run_of(name)
        if run is not None:
            return run.status()
        st = status_from_store(self.store, name)
        if st is None:
            raise NotFound("campaign", f"no campaign {name!r} on this coordinator or in its "
                           f"store {self.store}", "start it first (Start), or check the name")
        return st

    # ------------------------------------------------------------ RPCs
    async def Start(self, request, context):
        if len(request.config_json) > MAX_CONFIG_BYTES:
            raise InvalidArgument("config_json", "larger than 1 MiB",
                                  "put large inputs in files the spec names")
        try:
            raw = json.loads(request.config_json) if request.config_json.strip() else None
        except json.JSONDecodeError as exc:
            raise InvalidArgument("config_json", f"not valid JSON ({exc})",
                                  "send the spec as a JSON object") from None
        if not isinstance(raw, dict):
            raise InvalidArgument("config_json", "must be a JSON object (the campaign spec)",
                                  'e.g. {"name": "demo", "reference": "emt", ...}')
        if request.campaign:
            raw["name"] = _check_name(request.campaign, "campaign")
        raw.setdefault("executor", self.executor)
        store = request.store.url if request.HasField("store") and request.store.url else None
        self._check_code(raw)
        try:
            spec = await asyncio.to_thread(
                parse_spec, raw, store=store or (None if raw.get("store") else self.store),
                base_dir=self.base_dir)
        except SpecError as exc:
            raise InvalidArgument(f"config.{exc.field}", exc.reason, exc.hint) from None
        from services.store.store import check_store_url

        check_store_url(spec.store, "store.url" if store else "config.store", self.store_roots)

        async def start():
            old = self.runs.get(spec.name)
            if old is not None and old.state not in TERMINAL:
                return spec.name  # already running: the same campaign
            active = sum(r.state not in TERMINAL for r in self.runs.values())
            if active >= self.max_campaigns:
                raise FailedPrecondition("campaign", f"{active} campaigns are running (the "
                                         f"limit is {self.max_campaigns})",
                                         "stop one, or serve with a higher --max-campaigns")
            run = CampaignRun(spec, log=lambda m, n=spec.name: log.info("%s: %s", n, m))
            self.runs[spec.name] = run
            task = asyncio.get_running_loop().create_task(run.run())
            task.add_done_callback(lambda t, n=spec.name: self._done(n, t))
            self.tasks[spec.name] = task
            return spec.name

        name = await self._idempotency.run(context, start)
        return coordinator_pb2.StartResponse(campaign=name)

    def _check_code(self, raw: dict) -> None:
        if self.allow_code:
            return
        hint = "serve the coordinator with --allow-code to let specs run programs of their own"
        ref = raw.get("reference")
        if isinstance(ref, str) and ref.strip().lower().startswith("ase:"):
            raise InvalidArgument("config.reference", "an ase:module:factory reference runs "
                                  "Python code of the client's choosing on this server", hint)
        qe = raw.get("qe")
        if isinstance(qe, dict):
            for key in ("pw", "mpirun", "extra_mpirun_args"):
                if key in qe:
                    raise InvalidArgument(f"config.qe.{key}", "names a program (or its "
                                          "arguments) to run on this server", hint)

    def _done(self, name: str, task: asyncio.Task) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("campaign %s failed: %s: %s", name, type(exc).__name__, exc)

    async def Status(self, request, context):
        st = await asyncio.to_thread(self._status, request.campaign)
        return _status_proto(st)

    async def Watch(self, request, context):
        name = request.campaign
        run = self._run_of(name)
        if run is None:
            st = await asyncio.to_thread(self._status, name)  # NOT_FOUND when unknown
            yield coordinator_pb2.CampaignEvent(campaign=name, kind="state",
                                                state=_STATE[st["state"]],
                                                message=st.get("message", ""),
                                                time_s=time.time())
            return
        q = run.subscribe()
        try:
            while True:
                ev = await q.get()
                if ev is None:
                    return
                yield _event_proto(ev)
        finally:
            run.unsubscribe(q)

    async def Stop(self, request, context):
        name = _check_name(request.campaign, "campaign")
        run = self._run_of(name)
        if run is None:
            st = await asyncio.to_thread(self._status, name)
            return coordinator_pb2.StopResponse(state=_STATE[st["state"]])
        return coordinator_pb2.StopResponse(state=_STATE[run.stop()])

    async def ExportModel(self, request, context):
        name = _check_name(request.campaign, "campaign")
        fmt = request.format or "nnmd"
        if fmt not in EXPORT_FORMATS:
            raise InvalidArgument("format", f"unknown format {fmt!r}",
                                  f"use one of {', '.join(EXPORT_FORMATS)}")
        if not request.destination:
            raise InvalidArgument("destination", "empty",
                                  "a path (on the coordinator's host) or an fsspec URL")
        from services.store.store import check_store_url

        check_store_url(request.destination, "destination", self.store_roots)
        run = self._run_of(name)
        store = run.spec.store if run is not None else self.store
        version, dest = await asyncio.to_thread(self._export, name, store, int(request.version),
                                                request.destination, fmt)
        return coordinator_pb2.ExportModelResponse(
            model=common_pb2.ModelRef(store=common_pb2.StoreRef(url=store), version=version),
            destination=dest)

    def _export(self, name, store_url, version, destination, fmt):
        import fsspec

        from nnmd_kernels.model_file import loads
        from orchestrator.slhmc import campaign_models
        from services.store import Store

        try:
            store = Store(store_url, read_only=True)
        except Exception as exc:  # noqa: BLE001
            raise NotFound("campaign", f"no store for campaign {name!r} ({exc})") from None
        mine = [v for v, _ in campaign_models(store, name)]
        if not mine:
            raise NotFound("campaign", f"campaign {name!r} has no model yet",
                           "wait for its first training (Watch: model_published)")
        if version == 0:
            version = mine[-1]
        if version not in mine:
            raise NotFound("version", f"campaign {name!r} has no model version {version}",
                           f"its versions are {mine}")
        data, _ = store.load_model(version)
        if fmt == "sannp":
            from nnmd_kernels.sannp import write_sannp

            try:
                data = write_sannp(loads(data, source=f"model v{version}")).encode()
            except (ValueError, NotImplementedError) as exc:
                raise FailedPrecondition("format", f"this model cannot be written as "
                                         f"ffield.sannp: {exc}", "export as nnmd") from None
        try:
            with fsspec.open(destination, "wb") as f:
                f.write(data)
        except (OSError, ValueError) as exc:
            raise InvalidArgument("destination", f"cannot write {destination!r} ({exc})",
                                  "give a writable path or URL") from None
        return version, destination

    async def close(self) -> None:
        for run in self.runs.values():
            run.stop()
        tasks = [t for t in self.tasks.values() if not t.done()]
        if tasks:
            await asyncio.wait(tasks, timeout=60)


def _nan0(x) -> float:
    return 0.0 if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def _status_proto(st: dict):
    return coordinator_pb2.CampaignStatus(
        campaign=st["campaign"], state=_STATE[st["state"]],
        chains=[coordinator_pb2.ChainStatus(
            chain=c["chain"], step=c["step"], acceptance_rate=_nan0(c["acceptance_rate"]),
            n_md_steps=c["n_md_steps"], model_version=c["model_version"],
            temperature_k=_nan0(c["temperature_k"]), phase=c.get("phase", ""),
            state=c.get("state", ""), failure=c.get("failure", "")[:4096])
            for c in st["chains"]],
        n_labels=st["n_labels"],
        latest_model=common_pb2.ModelRef(store=common_pb2.StoreRef(url=st.get("store", "")),
                                         version=st["model_version"]),
        message=st.get("message", "")[:4096])


def _event_proto(ev: dict):
    return coordinator_pb2.CampaignEvent(
        campaign=ev.get("campaign", ""), kind=ev.get("kind", ""), chain=ev.get("chain", ""),
        step=int(ev.get("step", 0)), accepted=bool(ev.get("accepted", False)),
        model_version=int(ev.get("model_version", 0) or 0),
        state=_STATE.get(ev.get("state", ""), 0), message=str(ev.get("message", ""))[:4096],
        time_s=float(ev.get("time", time.time())))


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", default="nnmd-store",
                   help="default store of campaigns whose spec names none (folder or URL)")
    p.add_argument("--executor", choices=EXECUTORS, default="auto",
                   help="where reference calls run: local threads, or Ray actors (auto: Ray "
                        "when RAY_ADDRESS is set)")
    p.add_argument("--max-campaigns", type=int, default=16, help="campaigns running at once")
    p.add_argument("--store-root", action="append", default=None, metavar="DIR",
                   help="campaign stores must lie in this folder (or URL prefix); repeatable "
                        "(default: any store this server can reach)")
    p.add_argument("--allow-code", action="store_true",
                   help="let specs name programs or code to run here (qe.pw, qe.mpirun, "
                        "ase:module:factory references); off by default")


def _options_from_args(args) -> dict:
    return {"store": args.store, "executor": args.executor,
            "max_campaigns": args.max_campaigns, "store_roots": args.store_root,
            "allow_code": args.allow_code}


async def _close(servicers) -> None:
    for s in servicers:
        await s.close()


registry.register(registry.ServiceSpec(
    name="coordinator",
    service_names=("nnmd.v1.Coordinator",),
    build=lambda options: [(CoordinatorServicer(**options),
                            coordinator_pb2_grpc.add_CoordinatorServicer_to_server)],
    add_arguments=_add_arguments,
    options_from_args=_options_from_args,
    close=_close,
))
