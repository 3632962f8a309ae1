"""The Trainer gRPC service (nnmd.v1.Trainer/Train).

Thin: unpack the request (dataset and warm-start references into the store,
a JSON config) -> `nnmd_kernels.training.train` in a worker thread -> stream
its progress -> publish the model file as the store's next model version and
send its ModelRef in the final message. Bulk data never travels in the RPC.

Publishing goes through the store's single writer: the named Ray writer actor
when Ray is running (the campaign's case), else a writer opened here (which
refuses, naming the store, if another process holds it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
from dataclasses import dataclass

import numpy as np

from nnmd_kernels.model_file import dumps, loads
from nnmd_kernels.training import TrainConfig, train
from services.proto.nnmd.v1 import common_pb2, trainer_pb2, trainer_pb2_grpc
from services.runtime import registry
from services.runtime.errors import FailedPrecondition, InvalidArgument, ServiceError
from services.runtime.threads import blas_one_thread
from services.store.store import check_store_url, safe_name
from services.trainer.data import read_store


def publish(url: str, data: bytes, metadata: dict) -> int:
    """Store the model bytes as the next version of store `url`; returns the version."""
    try:
        import ray

        if ray.is_initialized():
            from services.store.actor import writer_actor

            return int(ray.get(writer_actor(url).publish_model.remote(data, metadata)))
    except ImportError:
        pass
    from services.store.store import Store

    writer = Store(url).writer()
    try:
        return writer.publish_model(data, metadata)
    finally:
        writer.close()


def parse_config(text: str, defaults: dict) -> TrainConfig:
    try:
        d = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError as exc:
        raise InvalidArgument("config_json", f"not valid JSON ({exc})", "send a JSON object") from None
    if not isinstance(d, dict):
        raise InvalidArgument("config_json", "must be a JSON object", "e.g. {\"max_epochs\": 100}")
    try:
        return TrainConfig.from_dict({**defaults, **d})
    except (TypeError, ValueError) as exc:
        raise InvalidArgument("config_json", str(exc), "see TrainConfig in nnmd_kernels/training.py") from None


@dataclass(frozen=True)
class TrainLimits:
    """What one Train request may ask for (None = no limit). The defaults keep a request
    from allocating more than a few GB; max_epochs bounds the time."""

    max_epochs: int | None = None
    max_models: int | None = 64
    max_hidden: int | None = 4096  # neurons per layer
    max_layers: int | None = 16
    max_functions: int | None = 1024  # descriptor n_radial / n_angular each

    def check(self, cfg: TrainConfig, field: str = "config_json") -> TrainConfig:
        def over(name, value, limit):
            if limit is not None and value > limit:
                raise InvalidArgument(f"{field}.{name}", f"{value} is more than this server's "
                                      f"limit {limit}", "ask for less or raise the trainer's limits")

        over("max_epochs", cfg.max_epochs, self.max_epochs)
        over("warmup_epochs", cfg.warmup_epochs, self.max_epochs)
        over("n_models", cfg.n_models, self.max_models)
        over("hidden", len(cfg.hidden), self.max_layers)
        for k, h in enumerate(cfg.hidden):
            if h < 1:
                raise InvalidArgument(f"{field}.hidden[{k}]", f"{h} neurons", "use >= 1")
            over(f"hidden[{k}]", h, self.max_hidden)
        if not isinstance(cfg.descriptor, dict):
            raise InvalidArgument(f"{field}.descriptor", "must be a JSON object",
                                  "e.g. {\"n_radial\": 20}")
        for key in ("n_radial", "n_angular"):
            value = cfg.descriptor.get(key)
            if isinstance(value, int) and not isinstance(value, bool):
                over(f"descriptor.{key}", value, self.max_functions)
        return cfg


class _Stopped(Exception):
    """The client went away: training stops at the next epoch."""


class TrainerServicer(trainer_pb2_grpc.TrainerServicer):
    """defaults: TrainConfig fields applied under each request's config_json.
    limits: a TrainLimits (or its fields as a dict). store_roots: folders (or URL
    prefixes) that dataset, warm-start and output stores must be in (None = any)."""

    def __init__(self, defaults: dict | None = None, progress_every: int = 1,
                 limits: TrainLimits | dict | None = None,
                 store_roots: list[str] | None = None) -> None:
        self.defaults = dict(defaults or {})
        TrainConfig.from_dict(self.defaults)  # validate at start-up
        self.progress_every = max(1, int(progress_every))
        self.limits = limits if isinstance(limits, TrainLimits) else TrainLimits(**(limits or {}))
        self.store_roots = list(store_roots) if store_roots is not None else None
        self._lock = threading.Lock()  # one training at a time per servicer (it uses all cores)

    async def Train(self, request, context):
        ds = request.dataset
        if not ds.store.url:
            raise InvalidArgument("dataset.store.url", "is empty", "name the store holding the labels")
        check_store_url(ds.store.url, "dataset.store.url", self.store_roots)
        if request.output.url:
            check_store_url(request.output.url, "output.url", self.store_roots)
        warm = request.HasField("warm_start") and bool(request.warm_start.store.url)
        if warm:
            check_store_url(request.warm_start.store.url, "warm_start.store.url", self.store_roots)
        if ds.campaign:
            safe_name(ds.campaign, "dataset.campaign")
        cfg = self.limits.check(parse_config(request.config_json, self.defaults))
        out_url = request.output.url or ds.store.url
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        stop = threading.Event()

        def job():
            try:
                return run()
            except (ServiceError, _Stopped):
                raise
            except (ValueError, TypeError, KeyError, IndexError, ZeroDivisionError,
                    ArithmeticError, np.linalg.LinAlgError) as exc:
                # Bad data or settings that got past the checks: name them, never UNKNOWN.
                raise FailedPrecondition("dataset", f"training failed: {type(exc).__name__}: "
                                         f"{exc}", "check the labels and config_json") from None
            except MemoryError:
                raise FailedPrecondition("config_json", "training ran out of memory",
                                         "use a smaller model or descriptor") from None

        def run():
            with self._lock:
                structures = read_store(ds.store.url, ds.campaign or None)
                if ds.first_record or ds.end_record:
                    structures = structures[ds.first_record: ds.end_record or None]
                if not structures:
                    raise FailedPrecondition("dataset", "selects no labelled structures",
                                             "check the store URL, record range and campaign")
                init = None
                if warm:
                    from services.store.store import Store

                    data, _ = Store(request.warm_start.store.url, read_only=True).load_model(
                        int(request.warm_start.version))
                    init = loads(data, f"model {request.warm_start.version}")

                def progress(member, epoch, row):
                    if stop.is_set():
                        raise _Stopped()
                    if epoch % self.progress_every == 0:
                        loop.call_soon_threadsafe(queue.put_nowait, ("progress", member, row))

                with blas_one_thread():
                    result = train(structures, cfg, init=init, progress=progress)
                text, _ = dumps(result.potential)
                meta = {"campaign": request.campaign, "n_structures": len(structures),
                        "warm_start": int(request.warm_start.version) if init is not None else None,
                        "metrics": result.metrics}
                version = publish(out_url, text.encode(), meta)
                return version, result

        future = loop.run_in_executor(None, job)
        future.add_done_callback(lambda f: loop.call_soon_threadsafe(queue.put_nowait, ("done",)))
        try:
            while True:
                item = await queue.get()
                if item[0] == "done":
                    break
                _, member, row = item
                yield trainer_pb2.TrainProgress(
                    epoch=int(row["epoch"]), loss=float(row["loss"]),
                    train_energy_rmse_ev_per_atom=row.get("train_energy_rmse", 0.0),
                    train_force_rmse_ev_per_angstrom=row.get("train_force_rmse", 0.0),
                    valid_energy_rmse_ev_per_atom=row.get("val_energy_rmse", 0.0),
                    valid_force_rmse_ev_per_angstrom=row.get("val_force_rmse", 0.0),
                    message=f"model {member} {row['phase']}")
        finally:
            stop.set()  # a cancelled call stops its training (and frees the lock)
        try:
            version, result = future.result()
        except ValueError as exc:
            if isinstance(exc, (InvalidArgument, FailedPrecondition)):
                raise
            raise FailedPrecondition("dataset", str(exc), "fix or remove the named structure") from None
        m = result.metrics
        yield trainer_pb2.TrainProgress(
            done=True, epoch=sum(len(h) for h in result.history),
            train_energy_rmse_ev_per_atom=m.get("all_energy_rmse", 0.0),
            train_force_rmse_ev_per_angstrom=m.get("all_force_rmse", 0.0),
            model=common_pb2.ModelRef(store=common_pb2.StoreRef(url=out_url), version=version),
            message=f"published model version {version}")


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="default training settings (YAML/JSON of TrainConfig)")
    p.add_argument("--max-epochs", type=int, default=None,
                   help="most epochs a request may ask for (default: no limit)")
    p.add_argument("--store-root", action="append", default=None, metavar="DIR",
                   help="folder (or URL prefix) that dataset and output stores must be in; "
                        "repeatable (default: any)")


def _options_from_args(args) -> dict:
    out = {"limits": {"max_epochs": args.max_epochs}, "store_roots": args.store_root}
    if not args.config:
        return out
    from services.trainer.run import load_config

    cfg = load_config(args.config)
    return {**out, "defaults": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__}}


registry.register(
    registry.ServiceSpec(
        name="trainer",
        service_names=("nnmd.v1.Trainer",),
        build=lambda options: [(TrainerServicer(**options), trainer_pb2_grpc.add_TrainerServicer_to_server)],
        add_arguments=_add_arguments,
        options_from_args=_options_from_args,
    )
)
