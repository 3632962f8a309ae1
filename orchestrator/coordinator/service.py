"""The Coordinator gRPC service (nnmd.v1.Coordinator): campaigns on the server's loop.

    nnmd serve coordinator --port 50051 --store URL [--executor local|ray]

Start validates the spec (INVALID_ARGUMENT naming the field, e.g. ``config.chains``),
then runs the campaign as a task on the server's event loop (chains are asyncio tasks;
MD, store writes and training in threads; the reference local or on Ray). Starting a
campaign that is already running returns its id; starting one the store already holds
resumes it from its checkpoints. Status, Watch (a stream of events until the campaign
ends), Stop (after each chain's current step; resumable), ExportModel (a version of the
campaign's model as model.nnmd, ffield.sannp or a LAMMPS zip, written to a destination or
returned), List (every campaign, a line each), History (a campaign's traces so far, for a
live view: orchestrator/coordinator/history.py) and Report (report.html). Start may carry
small input files (a QE input, a structure) for clients that share no disk with the
coordinator (the web console), kept under --upload-dir, and may only validate. An unknown
campaign is NOT_FOUND.

Recovery: Start records the campaign's spec in the coordinator's store (document
``documents/coordinator/<campaign>.json``); Stop records there that a user stopped it.
``nnmd serve coordinator`` resumes on start, with no client call, every campaign so
recorded that has not finished, failed or been stopped by a user (``--no-resume``: not).
A campaign's store lease (services/store/log.py) keeps two coordinators off one campaign;
the lease of a coordinator that was killed on this host is taken over at once, one from
elsewhere once it expires (NNMD_LEASE_TTL_S, default 30 s): resuming waits for it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
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
MAX_UPLOAD_BYTES = 8 << 20
MAX_CONTENT_BYTES = 32 << 20
EXPORT_FORMATS = ("nnmd", "sannp", "lammps")
EXPORT_NAMES = {"nnmd": "model.nnmd", "sannp": "ffield.sannp", "lammps": "nnmd-lammps.zip"}
DOC_KIND = "coordinator"  # documents/coordinator/<campaign>.json in the coordinator's store


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
                 store_roots: list[str] | None = None, allow_code: bool = False,
                 upload_dir: str | None = None, resume: bool = False) -> None:
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
        # uploaded inputs (Start's files): one folder per set of files
        self.upload_dir = upload_dir or os.path.join(base_dir or os.getcwd(), "nnmd-uploads")
        self.runs: dict[str, CampaignRun] = {}
        self.tasks: dict[str, asyncio.Task] = {}
        self._idempotency = IdempotencyCache()
        self.resume_task: asyncio.Task | None = None
        if resume:  # built on the server's loop (registry.start_service): resume from there
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
            if loop is not None:
                self.resume_task = loop.create_task(self.resume_campaigns())

    # ------------------------------------------------------------ recovery
    def _record(self, name: str, update: dict | None = None, *, replace: dict | None = None):
        """Read-modify-write of the campaign's coordinator document in self.store."""
        from services.store import Store

        store = Store(self.store)
        doc = replace if replace is not None else (store.read_document(DOC_KIND, name) or {})
        doc.update(update or {})
        store.put_document(DOC_KIND, name, doc)
        return doc

    def _resumable(self) -> list[tuple[str, dict]]:
        """(name, document) of every campaign recorded in self.store that should run."""
        from services.store import Store

        try:
            store = Store(self.store, read_only=True)
        except Exception:  # noqa: BLE001 - no store yet: nothing ran here
            return []
        out = []
        for name in store.list_documents(DOC_KIND):
            try:
                doc = store.read_document(DOC_KIND, name) or {}
            except ValueError:
                log.error("campaign %s: its coordinator document is not JSON; not resumed", name)
                continue
            if doc.get("stop") or doc.get("failed") or not isinstance(doc.get("spec"), dict):
                continue
            st = status_from_store(doc.get("store") or self.store, name)
            if st is not None and st["state"] == "finished":
                continue
            out.append((name, doc))
        return out

    async def resume_campaigns(self, wait_s: float = 0.5) -> list[str]:
        """Starts every recorded campaign that was running (see the module doc); waits for
        a campaign's lease held by a coordinator that is gone to expire. Returns the names."""
        from services.store import Store

        pending = await asyncio.to_thread(self._resumable)
        started = []
        while pending:
            later = []
            for name, doc in pending:
                if name in self.runs and self.runs[name].state not in TERMINAL:
                    continue  # a client started it meanwhile
                url = doc.get("store") or self.store
                lease = (await asyncio.to_thread(
                    lambda u=url: Store(u, read_only=True).leases())).get(name)
                if lease is not None and not lease["stale"]:
                    later.append((name, doc))
                    continue
                try:
                    spec = await asyncio.to_thread(parse_spec, doc["spec"], store=url,
                                                   base_dir=doc.get("base_dir"))
                except SpecError as exc:
                    log.error("campaign %s not resumed: its spec no longer parses (%s: %s)",
                              name, exc.field, exc.reason)
                    continue
                log.info("campaign %s: resuming (it was running when this coordinator "
                         "stopped)", name)
                self._launch(spec)
                started.append(name)
            if not later:
                break
            await asyncio.sleep(wait_s)
            wait_s = min(2 * wait_s, 5.0)
            waiting = {n for n, _ in later}  # still unfinished, unstopped and recorded?
            pending = [(n, d) for n, d in await asyncio.to_thread(self._resumable)
                       if n in waiting]
        return started

    def _launch(self, spec) -> str:
        run = CampaignRun(spec, log=lambda m, n=spec.name: log.info("%s: %s", n, m))
        self.runs[spec.name] = run
        task = asyncio.get_running_loop().create_task(run.run())
        task.add_done_callback(lambda t, n=spec.name: self._done(n, t))
        self.tasks[spec.name] = task
        return spec.name

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
        files = _check_files(request.files)
        base_dir, staging = self.base_dir, None
        if files:  # bare names in the spec resolve to the uploaded files
            base_dir, staging = await asyncio.to_thread(
                self._write_uploads, files, request.validate_only)
        try:
            spec = await asyncio.to_thread(
                parse_spec, raw, store=store or (None if raw.get("store") else self.store),
                base_dir=base_dir)
        except SpecError as exc:
            raise InvalidArgument(f"config.{exc.field}", exc.reason, exc.hint) from None
        finally:
            if staging is not None:
                staging.cleanup()
        from services.store.store import check_store_url

        check_store_url(spec.store, "store.url" if store else "config.store", self.store_roots)
        if request.validate_only:
            return coordinator_pb2.StartResponse(campaign=spec.name)

        async def start():
            old = self.runs.get(spec.name)
            if old is not None and old.state not in TERMINAL:
                return spec.name  # already running: the same campaign
            active = sum(r.state not in TERMINAL for r in self.runs.values())
            if active >= self.max_campaigns:
                raise FailedPrecondition("campaign", f"{active} campaigns are running (the "
                                         f"limit is {self.max_campaigns})",
                                         "stop one, or serve with a higher --max-campaigns")
            # recorded first: a coordinator restarted from here on resumes it; a client's
            # Start clears a user's Stop
            try:
                await asyncio.to_thread(self._record, spec.name, replace={
                    "spec": {**raw, "name": spec.name}, "store": spec.store,
                    "base_dir": base_dir, "started": time.time(), "stop": None,
                    "failed": None})
            except Exception:  # noqa: BLE001 - the campaign runs; only its auto-resume is lost
                log.exception("campaign %s: could not record it in %s; a restarted "
                              "coordinator will not resume it by itself", spec.name, self.store)
            return self._launch(spec)

        name = await self._idempotency.run(context, start)
        return coordinator_pb2.StartResponse(campaign=name)

    def _write_uploads(self, files: dict[str, bytes], temporary: bool):
        """Writes uploaded inputs to a folder named by their content (the same files give
        the same folder, so a resumed campaign finds its paths again); a temporary one
        when only validating. Returns (folder, TemporaryDirectory or None)."""
        import hashlib
        import tempfile
        from pathlib import Path

        if temporary:
            tmp = tempfile.TemporaryDirectory(prefix="nnmd-upload-")
            folder, staging = Path(tmp.name), tmp
        else:
            h = hashlib.sha256()
            for name in sorted(files):
                h.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
            folder, staging = Path(self.upload_dir) / h.hexdigest()[:16], None
        folder.mkdir(parents=True, exist_ok=True)
        for name, content in files.items():
            path = folder / name
            if not (path.is_file() and path.read_bytes() == content):
                part = path.with_name(path.name + ".part")
                part.write_bytes(content)
                part.replace(path)
        return str(folder), staging

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
            from services.runtime.errors import FailedPrecondition as _Busy

            if isinstance(exc, _Busy) and "lease" in str(exc):
                return  # another coordinator runs it: not a failure of the campaign
            try:  # not resumed on restart (it would fail again); a client's Start retries
                self._record(name, {"failed": {"time": time.time(),
                                               "error": f"{type(exc).__name__}: {exc}"[:2000]}})
            except Exception:  # noqa: BLE001
                log.exception("campaign %s: could not record the failure", name)

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
        # a user's Stop: recorded, so a restarted coordinator does not resume the campaign
        # (a shutdown of the server stops campaigns too, and they are resumed)
        await asyncio.to_thread(self._record_stop, name)
        if run is None:
            st = await asyncio.to_thread(self._status, name)
            return coordinator_pb2.StopResponse(state=_STATE[st["state"]])
        return coordinator_pb2.StopResponse(state=_STATE[run.stop()])

    def _record_stop(self, name: str) -> None:
        from services.store import Store

        try:
            doc = Store(self.store, read_only=True).read_document(DOC_KIND, name)
        except Exception:  # noqa: BLE001 - no store: nothing to resume anyway
            return
        if doc is not None:
            try:
                self._record(name, {"stop": {"by": "user", "reason": "Stop RPC",
                                             "time": time.time()}})
            except Exception:  # noqa: BLE001 - the Stop itself goes on
                log.exception("campaign %s: could not record the user's Stop", name)

    async def ExportModel(self, request, context):
        name = _check_name(request.campaign, "campaign")
        fmt = request.format or "nnmd"
        if fmt not in EXPORT_FORMATS:
            raise InvalidArgument("format", f"unknown format {fmt!r}",
                                  f"use one of {', '.join(EXPORT_FORMATS)}")
        if request.return_content:
            if request.destination:
                raise InvalidArgument("destination", "given with return_content",
                                      "ask for one: the file in the response, or written "
                                      "to a destination")
        elif not request.destination:
            raise InvalidArgument("destination", "empty",
                                  "a path (on the coordinator's host) or an fsspec URL")
        else:
            from services.store.store import check_store_url

            check_store_url(request.destination, "destination", self.store_roots)
        run = self._run_of(name)
        store = run.spec.store if run is not None else self.store
        version, data = await asyncio.to_thread(self._export, name, store,
                                                int(request.version), fmt)
        filename = EXPORT_NAMES[fmt]
        if request.return_content:
            if len(data) > MAX_CONTENT_BYTES:
                raise FailedPrecondition("return_content", f"the file has {len(data)} bytes "
                                         f"(the limit is {MAX_CONTENT_BYTES})",
                                         "export to a destination instead")
            return coordinator_pb2.ExportModelResponse(
                model=common_pb2.ModelRef(store=common_pb2.StoreRef(url=store),
                                          version=version), content=data, filename=filename)
        dest = await asyncio.to_thread(_write_destination, request.destination, data)
        return coordinator_pb2.ExportModelResponse(
            model=common_pb2.ModelRef(store=common_pb2.StoreRef(url=store), version=version),
            destination=dest, filename=filename)

    def _export(self, name, store_url, version, fmt) -> tuple[int, bytes]:
        """(version, the file's bytes) of the campaign's model `version` (0: latest)."""
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
        elif fmt == "lammps":
            data = _lammps_bundle(loads(data, source=f"model v{version}"), data, name,
                                  version)
        return version, data

    # ------------------------------------------------------------ console views
    def _summaries(self) -> list[dict]:
        from orchestrator.commands.slhmc import campaigns
        from orchestrator.coordinator.history import campaign_summary
        from orchestrator.slhmc import CAMPAIGN_DOC
        from services.store import Store

        out = {}
        for name, run in list(self.runs.items()):
            out[name] = campaign_summary(run.status(), _settings(run.spec.config))
        try:
            store = Store(self.store, read_only=True)
            names = campaigns(store)
        except Exception:  # noqa: BLE001 - no store yet: only the running ones
            names = []
        for name in names:
            if name in out:
                continue
            st = status_from_store(self.store, name)
            if st is not None:
                doc = store.read_checkpoint(name, CAMPAIGN_DOC) or {}
                out[name] = campaign_summary(st, doc.get("config") or {})
        return [out[k] for k in sorted(out)]

    async def List(self, request, context):
        rows = await asyncio.to_thread(self._summaries)
        return coordinator_pb2.ListResponse(campaigns=[coordinator_pb2.CampaignSummary(
            campaign=r["campaign"], state=_STATE.get(r["state"], 0), n_chains=r["n_chains"],
            steps_done=r["steps_done"], steps_total=r["steps_total"],
            acceptance_rate=r["acceptance"], n_labels=r["n_labels"],
            model_version=r["model_version"], reference=r["reference"],
            store_url=r["store"]) for r in rows])

    async def History(self, request, context):
        from orchestrator.coordinator.history import campaign_history

        name = _check_name(request.campaign, "campaign")
        run = self._run_of(name)
        store = run.spec.store if run is not None else self.store
        kw = {"offset": int(request.offset), "limit": int(request.limit),
              "max_points": int(request.max_points)}
        if run is not None:
            kw.update(state=run.state, message=run.message, events=list(run.events))
        doc = await asyncio.to_thread(campaign_history, store, name, **kw)
        if doc is None:
            if run is None:
                self._status(name)  # NOT_FOUND, naming the store
            doc = {"campaign": name, "state": run.state, "message": run.message,
                   "settings": _settings(run.spec.config), "chain_names": [], "n_chains": 0,
                   "chains": {}, "aggregate": {}, "labels": {"time": [], "n_labels": []},
                   "models": [], "events": [e for e in run.events
                                            if e.get("kind") in ("log", "state")][-200:]}
        return coordinator_pb2.HistoryResponse(json=json.dumps(doc, allow_nan=False))

    async def Report(self, request, context):
        name = _check_name(request.campaign, "campaign")
        run = self._run_of(name)
        store = run.spec.store if run is not None else self.store
        if run is None:
            await asyncio.to_thread(self._status, name)  # NOT_FOUND when unknown
        html = await asyncio.to_thread(_report_html, store, name)
        return coordinator_pb2.ReportResponse(html=html)

    async def close(self) -> None:
        if self.resume_task is not None and not self.resume_task.done():
            self.resume_task.cancel()
        for run in self.runs.values():
            run.stop()
        tasks = [t for t in self.tasks.values() if not t.done()]
        if tasks:
            await asyncio.wait(tasks, timeout=60)


def _check_files(files) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    total = 0
    for i, f in enumerate(files):
        field = f"files[{i}].name"
        name = f.name
        if not name or "/" in name or "\\" in name or name in (".", "..") or \
                name.startswith(".") or len(name) > 255:
            raise InvalidArgument(field, f"{name!r} is not a bare file name",
                                  "send files as plain names such as cu.xyz or pw.in")
        if name in out:
            raise InvalidArgument(field, f"{name!r} is sent twice", "send each file once")
        total += len(f.content)
        if total > MAX_UPLOAD_BYTES:
            raise InvalidArgument("files", f"more than {MAX_UPLOAD_BYTES >> 20} MiB in all",
                                  "put large inputs on storage the coordinator reads and "
                                  "name them in the spec")
        out[name] = bytes(f.content)
    return out


def _write_destination(destination: str, data: bytes) -> str:
    import fsspec

    try:
        with fsspec.open(destination, "wb") as f:
            f.write(data)
    except (OSError, ValueError) as exc:
        raise InvalidArgument("destination", f"cannot write {destination!r} ({exc})",
                              "give a writable path or URL") from None
    return destination


def _lammps_bundle(pot, model_json: bytes, campaign: str, version: int) -> bytes:
    """A zip: nnmd.model (pair_style nnmd's model), in.nnmd (the input lines) and
    model.nnmd (the model itself), like `nnmd export --format lammps`."""
    import io
    import zipfile

    from services.md.lammps_plugin import PluginBuildError, input_snippet, model_text, plugin_path

    try:
        lib = plugin_path(build=False)
        lib = lib if lib.exists() else "nnmdplugin.so"
    except PluginBuildError:
        lib = "nnmdplugin.so"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("nnmd.model", model_text(pot))
        z.writestr("in.nnmd", f"# {campaign}, model v{version}; build the plugin with "
                   "`nnmd lammps plugin` and put its path on the plugin load line\n"
                   + input_snippet(lib, "nnmd.model", pot.species, pot.coulomb))
        z.writestr("model.nnmd", model_json)
    return buf.getvalue()


def _report_html(store_url: str, campaign: str) -> bytes:
    import tempfile
    from pathlib import Path

    from orchestrator.commands.slhmc import write_html

    with tempfile.TemporaryDirectory(prefix="nnmd-report-") as tmp:
        out = Path(tmp) / "report.html"
        write_html(store_url, out, campaign)
        return out.read_bytes()


def _settings(cfg) -> dict:
    from dataclasses import asdict, is_dataclass

    return asdict(cfg) if is_dataclass(cfg) else dict(cfg)


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
        message=st.get("message", "")[:4096],
        md_executors=[_worker_proto(w) for w in st.get("md_executors", ())],
        reference_workers=[_worker_proto(w) for w in st.get("reference_workers", ())])


def _worker_proto(w: dict):
    return coordinator_pb2.WorkerStatus(address=str(w.get("address", "")),
                                        calls=int(w.get("calls", 0)), kind=str(w.get("kind", "")))


def _f(x) -> float:
    try:
        return float(x) if x is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


def _event_proto(ev: dict):
    return coordinator_pb2.CampaignEvent(
        campaign=ev.get("campaign", ""), kind=ev.get("kind", ""), chain=ev.get("chain", ""),
        step=int(ev.get("step", 0)), accepted=bool(ev.get("accepted", False)),
        model_version=int(ev.get("model_version", 0) or 0),
        state=_STATE.get(ev.get("state", ""), 0), message=str(ev.get("message", ""))[:4096],
        time_s=float(ev.get("time", time.time())),
        energy_ref_ev=_f(ev.get("energy_ref")), volume_angstrom3=_f(ev.get("volume")),
        n_md_steps=int(ev.get("n_md_steps", 0) or 0),
        acceptance_rate=_f(ev.get("acceptance_rate")), phase=str(ev.get("phase", "")),
        status=str(ev.get("status", "")), n_labels=int(ev.get("n_labels", 0) or 0),
        energy_rmse_mev_per_atom=_f(ev.get("energy_rmse_mev_per_atom")),
        force_rmse_mev_per_angstrom=_f(ev.get("force_rmse_mev_per_angstrom")))


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
    p.add_argument("--upload-dir", default=None, metavar="DIR",
                   help="where inputs uploaded with Start (the web console's QE input or "
                        "structure) are kept, a folder per set of files (default: "
                        "./nnmd-uploads)")
    p.add_argument("--no-resume", dest="resume", action="store_false",
                   help="do not resume, on start, the campaigns that were running in --store "
                        "when this coordinator last stopped (default: resume them)")
    p.add_argument("--allow-code", action="store_true",
                   help="let specs name programs or code to run here (qe.pw, qe.mpirun, "
                        "ase:module:factory references); off by default")


def _options_from_args(args) -> dict:
    return {"store": args.store, "executor": args.executor,
            "max_campaigns": args.max_campaigns, "store_roots": args.store_root,
            "allow_code": args.allow_code, "upload_dir": args.upload_dir,
            "resume": getattr(args, "resume", True)}


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
