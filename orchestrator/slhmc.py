"""A local SLHMC campaign: bootstrap, train, C chains, re-train; resumable from the store.

The campaign's whole state lives in the Zarr store, so a campaign killed at any point
(SIGKILL included) resumes with no label lost and no step counted twice:

- labels (provenance hmc / aimd) in the structures arrays, appended and durable before
  anything that depends on them;
- one checkpoint document per chain (``checkpoints/<campaign>/<chain>.json``): the
  nnmd_kernels.slhmc.ChainState after its last finished step, plus one history row per
  step (what `nnmd report` reads); written after the step's label is durable;
- the campaign document (checkpoint key ``<campaign>/campaign``): the settings, checked
  on resume;
- models (publish_model) with metadata {campaign, n_labels}: the latest of the campaign
  is the current one; a re-training is due when n_labels is `retrain_every` behind.

Order within a round: propose (NNP MD) -> reference for every chain's end point ->
decide -> append all labels (durable) -> checkpoint each chain -> maybe re-train.
A kill between the append and a checkpoint leaves a label at step k + 1 with the chain
checkpointed at k; on resume the step is replayed from the checkpoint's random stream
with the label's model version, which reproduces the proposal, and the stored label
stands in for the reference call: the label is used, not duplicated.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from nnmd_kernels import slhmc
from nnmd_kernels.md.units import GPA_TO_EV_PER_A3, pressure_gpa
from services.runtime import faults

CAMPAIGN_DOC = "campaign"  # checkpoint key holding the campaign's settings
ON_FAILURE = ("stop", "reject")
# the training's stress weight (per (eV/A^3)^2) when a campaign has NPT chains and its `train`
# section does not set one: NPT chains, and the NPT MD a user runs next, move the cell, and a
# model trained on energies and forces alone has an unconstrained pressure (LLZO: +27 GPa on
# a frame of the teacher's zero-pressure MD, and the box ran away; docs/llzo.md). 20 weighs a
# 0.3 GPa stress error like an 8 meV/atom energy error. Labels without a stress are skipped.
NPT_STRESS_WEIGHT = 20.0

# settings that must not change when a campaign resumes
_FIXED_ON_RESUME = ("reference", "chains", "temperature", "ensemble", "pressure_gpa", "dt",
                    "seed", "bootstrap_steps", "delayed_acceptance", "volume_proposal",
                    "chain_groups", "burn_in", "cell_moves", "volume_every", "adapt_md_steps",
                    "md_steps_jitter", "volume_step")


@dataclass(frozen=True)
class CampaignConfig:
    """A local SLHMC campaign. Units: K, GPa, fs. `train` overrides TrainConfig fields.

    Sampling (docs/slhmc.md, "What is exact"): burn_in = B makes steps 1..B of every
    chain the learning phase (n_md adapts, labels re-train the model) and later steps
    the production phase (model version and n_md frozen per chain: a fixed Markov
    kernel, so production samples the reference's ensemble exactly); None = the whole
    run learns. cell_moves: isotropic | anisotropic | triclinic (NPT); every
    volume_every-th step is a cell move. on_failure: what a reference failure (after
    the backend's own retries) does to its chain: "stop" (default; the chain ends in
    state failed, with the reason) or "reject" (the move is rejected: biased towards
    structures where the reference succeeds, and reported as such).
    """

    reference: str
    structure: str
    campaign: str = "slhmc"
    chains: int = 4
    steps: int = 100
    temperature: float = 300.0
    ensemble: str = "nvt"
    pressure_gpa: float = 0.0
    md_steps: int = 20
    md_steps_min: int = 10
    md_steps_max: int = 2000
    dt: float = 1.0
    retrain_every: int = 100
    seed: int = 0
    bootstrap_steps: int = 50
    bootstrap_dt: float = 1.0
    delayed_acceptance: bool = False
    volume_proposal: str = "lnV"
    volume_step: float = 0.02
    train: dict = field(default_factory=dict)
    retrain_epochs: int = 60
    # bounded re-training (services.trainer.replay): a warm-start re-training sees the new
    # labels plus a replay sample of the old ones, this many in all (0 = every label);
    # every retrain_full_every-th re-training sees every label (0 = only the run's last)
    retrain_max_structures: int = 250
    retrain_full_every: int = 0
    reference_workers: int = 1  # reference calls at once (one backend each, e.g. one pw.x)
    qe: dict = field(default_factory=dict)  # QEConfig fields (ranks, threads, timeout_s, ...)
    # chain groups with their own conditions: ({count, temperature, ensemble, pressure_gpa,
    # md_steps?, structure?, bootstrap_steps?}, ...); empty = `chains` chains at
    # temperature/ensemble/pressure_gpa. A group with a `structure` (a file) gets a reference-MD
    # bootstrap of its own from it (`bootstrap_steps`, default the campaign's, at the group's
    # temperature) and its chains start from those frames: e.g. two phases in one campaign
    chain_groups: tuple = ()
    # Metropolis explorers beside the chains (orchestrator.explorer.ExplorerConfig fields);
    # empty = none
    mc: dict = field(default_factory=dict)
    burn_in: int | None = None
    # a fixed share of the labels (chosen by a hash of each label's id, so a label is in
    # or out for good) that no training ever sees: every model version is scored on it
    holdout_fraction: float = 0.1
    cell_moves: str = "isotropic"
    volume_every: int = 2
    adapt_md_steps: bool = True
    md_steps_jitter: float = 0.0
    on_failure: str = "stop"
    # strained copies of every bootstrap's frames, labelled after it (chain "<bootstrap>.strain",
    # provenance aimd): {count, volume: [lo, hi] (x the frame's volume), shear (max |strain|
    # of the random symmetric part)}; empty = none. NPT chains visit only the volumes the
    # reference's own ensemble holds; labels on the energy-volume wall beyond them keep a
    # student's barostat from running into a cell the model never saw (docs/llzo.md, CHGNet)
    strain_labels: dict = field(default_factory=dict)

    def __post_init__(self):
        from services.store.store import safe_name

        safe_name(self.campaign, "campaign")
        object.__setattr__(self, "pressure_gpa", pressure_gpa(self.pressure_gpa, "pressure"))
        if not 0 <= float(self.holdout_fraction) < 0.5:
            raise ValueError(f"holdout_fraction must be in [0, 0.5), got "
                             f"{self.holdout_fraction}")
        if self.on_failure not in ON_FAILURE:
            raise ValueError(f"on_failure must be 'stop' (a chain whose reference keeps "
                             f"failing ends as failed) or 'reject' (biased), got "
                             f"{self.on_failure!r}")
        for name, lo in (("chains", 1), ("steps", 0), ("bootstrap_steps", 1),
                         ("retrain_every", 0), ("retrain_epochs", 1), ("reference_workers", 1),
                         ("retrain_max_structures", 0), ("retrain_full_every", 0)):
            if int(getattr(self, name)) < lo:
                raise ValueError(f"{name} must be >= {lo}, got {getattr(self, name)}"
                                 + (" (the first model is trained on the bootstrap frames)"
                                    if name == "bootstrap_steps" else ""))
        if not self.bootstrap_dt > 0:
            raise ValueError(f"bootstrap_dt must be > 0 fs, got {self.bootstrap_dt}")
        if self.chain_groups:
            object.__setattr__(self, "chain_groups", tuple(dict(g) for g in self.chain_groups))
            total = sum(int(g["count"]) for g in self.chain_groups)
            if total != self.chains:
                raise ValueError(f"chains ({self.chains}) must equal the sum of the chain "
                                 f"groups' counts ({total})")
            for g, grp in enumerate(self.chain_groups):
                if grp.get("structure") is not None and not Path(str(grp["structure"])).is_file():
                    raise ValueError(f"chain_groups[{g}].structure: no file {grp['structure']} (give a "
                                     "structure file ASE reads, relative to the spec)")
                if "bootstrap_steps" in grp and int(grp["bootstrap_steps"]) < 1:
                    raise ValueError(f"chain_groups[{g}].bootstrap_steps must be >= 1, got "
                                     f"{grp['bootstrap_steps']}")
        for c in range(self.chains if self.chain_groups else 1):
            self.kernel_config(c)  # validates temperature, dt, md steps, ensemble, volume moves
        from orchestrator.explorer import explorer_config

        explorer_config(self.mc)  # validates the explorers' settings
        self.strain_settings()

    def strain_settings(self) -> tuple[int, float, float, float]:
        """(count, volume lo, volume hi, shear) of `strain_labels`; count 0 = none."""
        d = dict(self.strain_labels or {})
        unknown = sorted(set(d) - {"count", "volume", "shear"})
        if unknown:
            raise ValueError(f"strain_labels: unknown key(s) {unknown}; use count, volume: [lo, hi], shear")
        count = int(d.get("count", 0))
        if count < 0:
            raise ValueError(f"strain_labels.count must be >= 0, got {count}")
        vol = d.get("volume", [0.85, 1.2])
        try:
            lo, hi = (float(v) for v in vol)
        except (TypeError, ValueError):
            raise ValueError(f"strain_labels.volume must be [lo, hi] (factors of the frame's volume, "
                             f"e.g. [0.85, 1.2]), got {vol!r}") from None
        if not 0.3 <= lo <= hi <= 3.0:
            raise ValueError(f"strain_labels.volume must satisfy 0.3 <= lo <= hi <= 3 (factors of the "
                             f"frame's volume), got [{lo}, {hi}]")
        shear = float(d.get("shear", 0.02))
        if not 0 <= shear <= 0.2:
            raise ValueError(f"strain_labels.shear must be in [0, 0.2] (a strain), got {shear}")
        return count, lo, hi, shear

    def train_settings(self) -> dict:
        """The `train` section with the campaign's defaults: a stress weight for NPT chains."""
        out = dict(self.train)
        if "stress_weight" not in out and any(self.chain_conditions(c)["ensemble"] == "npt"
                                              for c in range(self.chains)):
            out["stress_weight"] = NPT_STRESS_WEIGHT
        return out

    def chain_group(self, c: int) -> tuple[int | None, int]:
        """(index of chain c's group, c's index within it); (None, c) outside any group."""
        first = 0
        for g, grp in enumerate(self.chain_groups):
            if first <= c < first + int(grp["count"]):
                return g, c - first
            first += int(grp["count"])
        return None, c

    def bootstraps(self) -> list[tuple[str, str | None, int, float, int | None]]:
        """(chain name of the frames, structure file or None = the campaign's, steps,
        temperature K, group) of every reference-MD bootstrap: the campaign's, then one per
        chain group that has a structure of its own."""
        from services.reference.aimd import AIMD_CHAIN

        out = [(AIMD_CHAIN, None, int(self.bootstrap_steps), float(self.temperature), None)]
        for g, grp in enumerate(self.chain_groups):
            if grp.get("structure") is not None:
                out.append((f"{AIMD_CHAIN}.g{g}", str(grp["structure"]),
                            int(grp.get("bootstrap_steps", self.bootstrap_steps)),
                            float(grp.get("temperature", self.temperature)), g))
        return out

    def chain_conditions(self, c: int) -> dict:
        """Temperature (K), ensemble, pressure (GPa) and md_steps of chain c."""
        out = {"temperature": self.temperature, "ensemble": self.ensemble,
               "pressure_gpa": self.pressure_gpa, "md_steps": self.md_steps}
        g, _ = self.chain_group(c)
        if g is not None:
            out.update({k: self.chain_groups[g][k] for k in out if k in self.chain_groups[g]})
        return out

    def kernel_config(self, c: int = 0) -> slhmc.SLHMCConfig:
        cond = self.chain_conditions(c)
        if not 0 < float(cond["temperature"]) <= 1e5:
            raise ValueError(f"temperature must be in (0, 1e5] K, got {cond['temperature']}")
        return slhmc.SLHMCConfig(
            temperature=cond["temperature"], dt=self.dt, n_md=cond["md_steps"],
            n_md_min=min(self.md_steps_min, cond["md_steps"]),
            n_md_max=max(self.md_steps_max, cond["md_steps"]), ensemble=cond["ensemble"],
            pressure=pressure_gpa(cond["pressure_gpa"], "pressure") * GPA_TO_EV_PER_A3,
            volume_proposal=self.volume_proposal,
            volume_step=self.volume_step, delayed_acceptance=self.delayed_acceptance,
            cell_moves=self.cell_moves, volume_every=self.volume_every,
            adapt=self.adapt_md_steps, n_md_jitter=self.md_steps_jitter,
            burn_in=self.burn_in)  # validated there


def campaign_models(store, campaign: str | None) -> list[tuple[int, dict]]:
    """(version, metadata) of the store's models published by `campaign` (None: all)."""
    out = []
    for v in store.model_versions():
        g = store._group(f"models/v{v:06d}")
        meta = (dict(g.attrs).get("metadata") or {}) if g is not None else {}
        if campaign is None or meta.get("campaign") == campaign:
            out.append((v, meta))
    return out


# A chain checkpoint keeps its newest history rows; older ones move, HISTORY_SEGMENT_ROWS
# at a time, to history segments (checkpoint keys "<chain>.history.<first step>"), so a
# checkpoint's size, its write and the coordinator's memory stay flat over a long run
# (a row held in memory costs ~2 kB: 1,000 chains x 100 rows took 150 MB; with 32, one
# extra write per chain every 32 steps, at most ~64 MB for 1,000 chains)
HISTORY_SEGMENT_ROWS = 32
_HISTORY = ".history."


def history_segment_name(chain: str, first_step: int) -> str:
    return f"{chain}{_HISTORY}{int(first_step):09d}"


def is_history_segment(name: str) -> bool:
    """Whether a checkpoint key is a history segment (not a chain or an explorer)."""
    return _HISTORY in name


def chain_history(store, campaign: str, chain: str, doc: dict) -> list[dict]:
    """Every history row of a chain: its segments (in order), then its checkpoint's own."""
    rows: list[dict] = []
    for first in doc.get("history_segments") or ():
        seg = store.read_checkpoint(campaign, history_segment_name(chain, first)) or {}
        rows.extend(seg.get("rows") or ())
    return rows + list(doc.get("history") or ())


def is_held_out(name: str, fraction: float) -> bool:
    """Whether the label called `name` belongs to the held-out set (a stable hash)."""
    import zlib

    return fraction > 0 and (zlib.crc32(name.encode()) % 10000) < fraction * 10000


def holdout_errors(potential, structures) -> dict:
    """Energy (meV/atom) and force (meV/A) RMSE and MAE of `potential` on labels that
    training never saw; n = 0 when there are none."""
    from services.trainer.run import error_table, predictions

    if not structures:
        return {"n": 0}
    return {"n": len(structures), **error_table(predictions(potential, structures))}


def chain_name(c: int) -> str:
    return f"chain{c:03d}"


class LocalReference:
    """``await compute(atoms) -> Outcome`` over in-process backends, one call each at a time
    (each in a thread of its own, so pw.x runs side by side)."""

    def __init__(self, backends) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._backends = list(backends)
        self._idle: asyncio.Queue | None = None
        self._pool = ThreadPoolExecutor(len(self._backends), thread_name_prefix="reference")

    async def compute(self, atoms):
        if self._idle is None:
            self._idle = asyncio.Queue()
            for b in self._backends:
                self._idle.put_nowait(b)
        backend = await self._idle.get()
        try:
            loop = asyncio.get_running_loop()
            return (await loop.run_in_executor(self._pool, backend.compute, [atoms]))[0]
        finally:
            self._idle.put_nowait(backend)

    def close(self) -> None:
        self._pool.shutdown(wait=False)


def _atoms(positions, numbers, cell, pbc):
    from ase import Atoms

    return Atoms(numbers=numbers, positions=positions, cell=cell, pbc=pbc)


class Campaign:
    """Runs (or resumes) one campaign in this process; `run()` steps every chain to `steps`."""

    def __init__(self, config: CampaignConfig, store_url: str,
                 log: Callable[[str], None] | None = None, *, wait_for_model: bool = True,
                 make_backends: bool = True):
        from services.reference.spec import make_backend, settings_hash
        from services.store import Store

        self.cfg = config
        self.kcfgs = {chain_name(c): config.kernel_config(c) for c in range(config.chains)}
        # True: chains wait at their next step while a due re-training runs (the source's
        # rhythm; reproducible label counts); False: they go on with the current model
        self.wait_for_model = wait_for_model
        from orchestrator.explorer import explorer_config

        self.xcfg = explorer_config(config.mc)
        self._hists: dict[int, object] = {}
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        from services.reference.qe import QEConfig, RetryPolicy

        qe_opts = dict(config.qe)
        attempts = qe_opts.pop("attempts", None)
        qe = QEConfig(**qe_opts, **({"retry": RetryPolicy(attempts=attempts)} if attempts else {}))
        try:
            self.backend = make_backend(config.reference, qe=qe)
            # one backend per worker: ASE calculators are not thread-safe when shared
            # (a coordinator that calls remote reference services makes only the first)
            self.backends = [self.backend] + [make_backend(config.reference, qe=qe)
                                              for _ in range(config.reference_workers - 1)
                                              if make_backends]
        except ImportError as exc:
            raise ValueError(f"--reference {config.reference}: {exc}") from exc
        self.ref_hash = settings_hash(self.backend)
        self.store = Store(store_url)
        self.writer = self.store.writer(campaign=config.campaign)  # the campaign's lease
        try:
            self.resumed = self._check_resume()
        except BaseException:
            self.writer.close()
            raise
        self._models: dict[int, object] = {}
        self._n_hmc: int | None = None
        self._proposals = None  # the in-process ProposalEngine while chains run
        self.in_process_proposals = 0  # proposals it made (0 with MD executors)
        self.stats = {"reference_calls": 0, "reference_failures": 0, "labels": 0,
                      "retrainings": 0, "replayed": 0, "md_steps": 0,
                      # wall seconds by phase (the campaign's own overhead is "store")
                      "seconds_md": 0.0, "seconds_reference": 0.0, "seconds_store": 0.0,
                      "seconds_training": 0.0, "seconds_loop_cpu": 0.0, "chain_steps": 0,
                      "seconds_mc": 0.0, "mc_labels": 0, "rejected_failures": 0,
                      "seconds_bootstrap": 0.0}
        self._failed: dict[str, dict] = {}  # chain -> {step, reason, time}
        self._states: dict = {}
        self.version = 0
        self.bootstrap_backend = None  # the backend of the AIMD bootstrap (default: backend)
        self.train_fn = None  # train(structures, config, init=) elsewhere (default: here)
        # MD proposals elsewhere: ``await md_executor.propose(version, state, kcfg)`` (the
        # coordinator's RayMDPool); default None: MD threads of this process
        self.md_executor = None
        self._trained_at = 0  # chain labels the current model was trained with
        self.last_model_meta: dict | None = None  # metadata of the last model trained here
        self._t0 = time.perf_counter()

    # ------------------------------------------------------------ settings
    def _check_resume(self) -> bool:
        doc = self.store.read_checkpoint(self.cfg.campaign, CAMPAIGN_DOC)
        mine = asdict(self.cfg)
        if doc is None:
            self.writer.write_checkpoint(self.cfg.campaign, CAMPAIGN_DOC,
                                         {"config": mine, "created": time.time()})
            return False
        old = doc["config"]
        defaults = {f.name: (f.default if f.default is not dataclasses.MISSING else None)
                    for f in dataclasses.fields(CampaignConfig)}
        defaults["chain_groups"] = []
        for key in _FIXED_ON_RESUME:  # a key an older campaign lacks had its default then
            if json.loads(json.dumps(old.get(key, defaults[key]))) \
                    != json.loads(json.dumps(mine[key])):
                raise ValueError(
                    f"campaign '{self.cfg.campaign}' in the store was started with "
                    f"{key}={old.get(key)!r}, not {mine[key]!r}: resume with the same "
                    f"setting, or start a new campaign (--campaign NAME)")
        doc["config"].update({k: mine[k] for k in ("steps", "retrain_every")})
        self.writer.write_checkpoint(self.cfg.campaign, CAMPAIGN_DOC, doc)
        return True

    # ------------------------------------------------------------ bootstrap
    def _campaign_records(self):
        return self.store.read(campaign=self.cfg.campaign)

    def bootstrap(self, atoms) -> None:
        """First-principles MD frames (provenance aimd) until bootstrap_steps + 1 exist, from
        `atoms`, and as many for every chain group with a structure of its own (from it)."""
        from services.trainer.formats import read_structure

        for chain, path, steps, temperature, group in self.cfg.bootstraps():
            start = atoms if path is None else read_structure(path, f"chain_groups[{group}].structure")
            self._bootstrap_run(start, chain, steps, temperature, 0 if group is None else group + 1)
            self._strain_run(chain, 0 if group is None else group + 1)

    def _strain_run(self, boot: str, salt: int) -> None:
        """`strain_labels.count` labels of strained copies of bootstrap `boot`'s frames (chain
        "<boot>.strain"): the k-th takes frame k of an even spread over the bootstrap, scales
        its volume by lo + (hi - lo) k / (count - 1) and applies a random symmetric strain of
        up to `shear` (seeded by the campaign's seed, the bootstrap and k: a resumed run makes
        the same cells and continues after the ones stored)."""
        from services.reference.labels import labelled
        from services.reference.types import Result
        from services.runtime.convert import from_atoms
        from services.store import Provenance, Record

        count, lo, hi, shear = self.cfg.strain_settings()
        if count == 0:
            return
        chain = f"{boot}.strain"
        batch = self._campaign_records()
        src, chains = batch.arrays["source"], batch.arrays["chain"]
        have = int(((src == "aimd") & (chains == chain)).sum())
        frames = np.flatnonzero((src == "aimd") & (chains == boot))
        if have >= count or len(frames) == 0:
            return
        self.log(f"strain labels {chain}: {count - have} strained cells (volume x {lo:g}-{hi:g}, "
                 f"shear <= {shear:g}) with the reference ({self.backend.name})")
        todo = []
        for k in range(have, count):
            rec = batch.record(int(frames[(k * len(frames)) // count]))
            s = rec.structure
            if s.cell is None or not np.all(s.pbc):
                raise ValueError("strain_labels need a cell periodic in all three directions")
            rng = np.random.default_rng([int(self.cfg.seed), 7_919, salt, k])
            f = lo if count == 1 else lo + (hi - lo) * k / (count - 1)
            eps = rng.uniform(-shear, shear, (3, 3))
            eps = 0.5 * (eps + eps.T)
            m = np.eye(3) + eps
            m /= np.cbrt(np.linalg.det(m))  # volume from f alone
            a = _atoms(s.positions, s.numbers, s.cell, s.pbc)
            a.set_cell(a.cell.array @ (np.cbrt(f) * m), scale_atoms=True)
            todo.append((k, a))
        for i in range(0, len(todo), 8):  # stored eight at a time: a stop loses at most eight
            part = todo[i:i + 8]
            outcomes = self.backend.compute([a for _, a in part])
            for (k, a), res in zip(part, outcomes):
                if not isinstance(res, Result):
                    self.log(f"strain label {chain} {k}: the reference failed ({res}); skipped")
                    continue
                structure, labels = from_atoms(labelled(a, res, source="aimd"))
                self.writer.append(Record(structure, labels, Provenance(
                    campaign=self.cfg.campaign, chain=chain, step=k, source="aimd", accepted=True,
                    reference_settings_hash=self.ref_hash,
                    wall_time=float(res.info.get("wall_s", float("nan"))))))

    def _bootstrap_run(self, atoms, chain: str, n_steps: int, temperature: float, salt: int) -> None:
        from services.reference.aimd import AIMDConfig, run_aimd
        from services.runtime.convert import from_atoms
        from services.store import Provenance, Record

        batch = self._campaign_records()
        mask = (batch.arrays["source"] == "aimd") & (batch.arrays["chain"] == chain)
        have = int(mask.sum())
        want = n_steps + 1
        if have >= want:
            return
        start = atoms
        if have:  # a killed bootstrap keeps its frames and continues from the last one
            last = batch.record(int(np.flatnonzero(mask)[-1]))
            start = _atoms(last.structure.positions, last.structure.numbers,
                           last.structure.cell, last.structure.pbc)
        steps = want - have - (0 if have else 1)
        self.log(f"bootstrap{'' if salt == 0 else ' ' + chain}: {steps} MD steps with the reference "
                 f"({self.backend.name}), {temperature:g} K" + (f", continuing after {have} frames"
                                                                if have else ""))

        def write(frame):
            k = int(frame.info["step"])
            if have and k == 0:
                return  # the restart frame is already stored
            structure, labels = from_atoms(frame)
            self.writer.append(Record(structure, labels, Provenance(
                campaign=self.cfg.campaign, chain=chain, step=have + k - (1 if have else 0),
                source="aimd", accepted=True, reference_settings_hash=self.ref_hash,
                wall_time=float(frame.info.get("ref_wall_s", float("nan"))))))

        run = run_aimd(self.bootstrap_backend or self.backend, start, AIMDConfig(
            temperature_K=temperature, steps=steps, timestep_fs=self.cfg.bootstrap_dt,
            seed=self.cfg.seed + have + 1_000_003 * salt), on_frame=write)
        if run.failure is not None and have + len(run.frames) < 2:
            raise ValueError(f"bootstrap: the reference failed ({run.failure}); check the "
                             "reference settings or the structure")
        if run.failure is not None:
            self.log(f"bootstrap stopped early: {run.failure}; continuing with the frames made")

    # ------------------------------------------------------------ models
    def _campaign_models(self) -> list[tuple[int, dict]]:
        return campaign_models(self.store, self.cfg.campaign)

    def model(self, version: int):
        if version not in self._models:
            from nnmd_kernels.model_file import loads

            data, _ = self.store.load_model(version)
            self._models[version] = loads(data, source=f"store model v{version}")
        return self._models[version]

    def _n_hmc_labels(self) -> int:
        """Labels of the chains and explorers (sources hmc and mc) so far."""
        if self._n_hmc is None:  # read once; then counted as labels are appended
            src = self._campaign_records().arrays["source"]
            self._n_hmc = int(((src == "hmc") | (src == "mc")).sum())
        return self._n_hmc

    def maybe_train(self, n_labels: int | None = None, final: bool = False) -> int:
        """The current model version; trains first when none exists or one is due.

        n_labels: the chain-label count the training is for (default: all counted so far);
        a running campaign passes the count at which it became due, so that re-trainings
        fall every `retrain_every` labels even while chains append during a training.
        A warm-start re-training is bounded (services.trainer.replay): every new label
        plus a replay sample of the old ones, `retrain_max_structures` in all, and every
        `retrain_full_every`-th one sees every label. final: the run's end; the model
        that is exported sees every label, so a last re-training on all of them runs when
        the latest model saw a sample only.
        """
        from nnmd_kernels.model_file import dumps
        from nnmd_kernels.training import TrainConfig, train
        from services.trainer.data import read_store
        from services.trainer.replay import retrain_selection

        models = self._campaign_models()
        n_hmc = self._n_hmc_labels() if n_labels is None else int(n_labels)
        previous = 0  # labels (store rows) the previous model's training had
        if models:
            version, meta = models[-1]
            self._trained_at = int(meta.get("n_labels", 0))
            previous = int(meta.get("n_rows", 0))
            due = self.cfg.retrain_every and n_hmc - int(meta.get("n_labels", 0)) >= \
                self.cfg.retrain_every
            if final and not due and meta.get("sampled"):
                due = True  # the exported model sees every label
            if not due:
                return version
        structures = read_store(self.store.url, self.cfg.campaign)
        n_rows = len(structures)
        held = [s for s in structures if is_held_out(s.name, self.cfg.holdout_fraction)]
        sel = None
        if len(structures) - len(held) >= 2:  # keep the held-out labels out of training
            names = {s.name for s in held}
            n_prev_train = sum(s.name not in names for s in structures[:previous])
            structures = [s for s in structures if s.name not in names]
        else:
            held, n_prev_train = [], min(previous, n_rows)
        n_warm = sum(1 for v, m in models if m.get("warm_start"))
        full_due = final or (self.cfg.retrain_full_every
                             and (n_warm + 1) % self.cfg.retrain_full_every == 0)
        if models and self.cfg.retrain_max_structures and not full_due:
            sel = retrain_selection(len(structures), n_prev_train,
                                    self.cfg.retrain_max_structures, self.cfg.seed)
            structures = [structures[i] for i in sel.indices]
            if sel.full:
                sel = None
        overrides = self.cfg.train_settings()
        init = None
        if models:
            init = self.model(models[-1][0])
            overrides.update(max_epochs=self.cfg.retrain_epochs, warmup_epochs=0)
        tc = TrainConfig.from_dict({"seed": self.cfg.seed, **overrides})
        t0 = time.perf_counter()
        self.log(f"training on {len(structures)} labels ({n_hmc} from chains)"
                 + (f": {sel.n_new} new + {sel.n_replay} of {sel.n_old} replayed"
                    if sel is not None else "")
                 + (" (warm start)" if init is not None else "") + " ...")
        # train_fn: this process by default; on Ray a task with the trainer's resources
        if self.train_fn is None:
            from services.runtime.threads import blas_one_thread

            with blas_one_thread():  # the numba and BLAS pools apart (runtime/threads.py)
                result = train(structures, tc, init=init, progress=self._training_progress(tc))
        else:
            result = self.train_fn(structures, tc, init=init)
        faults.point("training")
        text, digest = dumps(result.potential)
        m = result.metrics
        meta = {"campaign": self.cfg.campaign, "n_labels": n_hmc,
                "n_structures": len(structures), "sha256": digest,
                "train_seconds": time.perf_counter() - t0,
                "energy_rmse_mev_per_atom": 1e3 * float(m.get("all_energy_rmse", np.nan)),
                "force_rmse_mev_per_angstrom": 1e3 * float(m.get("all_force_rmse", np.nan)),
                "warm_start": init is not None,
                # bounded re-training: store rows seen so far, and whether this model
                # saw a sample of them only (new labels + replay)
                "n_rows": n_rows, "sampled": sel is not None,
                "n_new": sel.n_new if sel is not None else None,
                "n_replay": sel.n_replay if sel is not None else None,
                # learning curve of member 0: [iteration, train E, val E, train F, val F]
                # (RMSE, eV/atom and eV/A; NaN where absent)
                "history": [[h.get("epoch"), *(float(h.get(k, np.nan)) for k in (
                    "train_energy_rmse", "val_energy_rmse", "train_force_rmse",
                    "val_force_rmse"))] for h in result.history[0]]}
        meta["holdout"] = holdout_errors(result.potential, held)
        version = self.writer.publish_model(text.encode(), meta)
        self.last_model_meta = meta
        self._trained_at = n_hmc
        self.stats["retrainings"] += 1
        self.stats["seconds_training"] += time.perf_counter() - t0
        h = meta["holdout"]
        self.log(f"model v{version}: energy RMSE {meta['energy_rmse_mev_per_atom']:.2f} meV/atom, "
                 f"force RMSE {meta['force_rmse_mev_per_angstrom']:.0f} meV/A "
                 + (f"(held-out {h['n']}: {h['energy_rmse_mev_per_atom']:.2f} meV/atom, "
                    f"{h.get('force_rmse_mev_per_angstrom', float('nan')):.0f} meV/A) "
                    if h["n"] else "")
                 + f"({meta['train_seconds']:.1f} s)")
        return version

    def _training_progress(self, tc, every_s: float = 10.0):
        """progress(member, iteration, metrics) for train(): a log line every ~10 s, so a
        long first training is not silent."""
        total = tc.max_epochs + tc.warmup_epochs
        t0 = last = time.perf_counter()

        def progress(member, iteration, row):
            nonlocal last
            now = time.perf_counter()
            if now - last < every_s:
                return
            last = now
            e = row.get("val_energy_rmse", row.get("train_energy_rmse", float("nan")))
            f = row.get("val_force_rmse", row.get("train_force_rmse", float("nan")))
            self.log(f"  training: model {member + 1}/{tc.n_models}, iteration "
                     f"{iteration}/{total}, energy RMSE {1e3 * e:.2f} meV/atom, force RMSE "
                     f"{1e3 * f:.0f} meV/A, {now - t0:.0f} s")
        return progress

    # ------------------------------------------------------------ chains
    def init_chains(self) -> dict[str, dict]:
        """Each chain's checkpoint document; new chains start from bootstrap frames."""
        batch = self._campaign_records()
        boots = self.cfg.bootstraps()
        frames_of = {chain: np.flatnonzero((batch.arrays["source"] == "aimd") & (batch.arrays["chain"] == chain))
                     for chain, *_ in boots}
        own = {group: chain for chain, _, _, _, group in boots if group is not None}
        docs = {}
        for c in range(self.cfg.chains):
            name = chain_name(c)
            doc = self.store.read_checkpoint(self.cfg.campaign, name)
            if doc is None:
                # a chain of a group with its own structure starts from that group's bootstrap,
                # the others from the campaign's; later frames are closer to equilibrium: the
                # k-th chain of a bootstrap starts from its frame -1 - k
                group, within = self.cfg.chain_group(c)
                boot, k = (own[group], within) if group in own else (boots[0][0], c)
                aimd = frames_of[boot]
                rec = batch.record(int(aimd[max(0, len(aimd) - 1 - k)]))
                s = rec.structure
                from ase.data import atomic_masses

                cell = np.zeros((3, 3)) if s.cell is None else s.cell  # zeros: no cell
                state = slhmc.init_chain(
                    s.positions, s.numbers, atomic_masses[np.asarray(s.numbers)], cell,
                    s.pbc, rec.labels.energy, self.kcfgs[name], seed=(self.cfg.seed, c))
                doc = {"state": state.to_dict(), "history": []}
                self.writer.write_checkpoint(self.cfg.campaign, name, doc)
            docs[name] = doc
        return docs

    def _pending_labels(self) -> dict[tuple[str, int], object]:
        """(chain, step) -> stored hmc label, for labels a checkpoint may not cover yet."""
        batch = self._campaign_records()
        a = batch.arrays
        return {(str(a["chain"][k]), int(a["step"][k])): k
                for k in np.flatnonzero(a["source"] == "hmc")}, batch

    def run(self, atoms, **kwargs) -> dict:
        """Run (or resume) every chain to `steps` in this process; see run_async."""
        return asyncio.run(self.run_async(atoms, **kwargs))

    async def run_async(self, atoms, *, reference=None, stop: asyncio.Event | None = None,
                        on_event: Callable[[dict], None] | None = None) -> dict:
        """Every chain as its own asyncio task; returns the summary.

        reference: an object with ``async compute(atoms) -> Outcome`` (default: this
        campaign's backends in threads, `reference_workers` at once; the coordinator passes
        a pool of Ray-hosted reference services reached over gRPC). stop: set it to end
        the campaign after each chain's current step (it resumes later from the store).
        on_event(dict): "step" and "model_published" events, called on the event loop.
        Per chain, a step's label is durable before its checkpoint, so a kill anywhere
        loses nothing and counts nothing twice (module docstring).
        """
        from concurrent.futures import ThreadPoolExecutor

        self._stop = stop or asyncio.Event()
        self._emit = on_event or (lambda event: None)
        own_ref = reference is None
        self._ref = reference or LocalReference(self.backends)
        self._failure: BaseException | None = None
        self.log(("resuming" if self.resumed else "starting") + f" campaign '{self.cfg.campaign}' "
                 f"in {self.store.url}: {self.cfg.chains} chains x {self.cfg.steps} steps, "
                 f"{self._conditions_text()}, reference {self.backend.name}")
        t0 = time.perf_counter()
        await asyncio.to_thread(self.bootstrap, atoms)
        self.stats["seconds_bootstrap"] += time.perf_counter() - t0
        self.version = await asyncio.to_thread(self.maybe_train)
        docs = await asyncio.to_thread(self.init_chains)
        states = {n: slhmc.ChainState.from_dict(d["state"]) for n, d in docs.items()}
        self._states = states
        pending, pending_batch = await asyncio.to_thread(self._pending_labels)
        self._model_ready = asyncio.Event()
        self._model_ready.set()
        self._training: asyncio.Task | None = None
        self._round = min(s.step for s in states.values())
        # chains (not failed) at each step: the slowest chain's step without a scan of
        # every chain at every step
        self._at_step = Counter(s.step for s in states.values())
        # MD proposals: without MD executors, one engine thread batches every chain's
        # trajectories into one potential evaluation per MD step (services.md.proposals);
        # the explorers' MC runs in a thread of its own. Store calls that block until
        # durable (the explorers', the rare checkpoint of a chain outside its step) get
        # threads of their own; a chain step's label and checkpoint go to the store
        # writer's group commit without a thread
        if self.md_executor is None:
            from services.md.proposals import ProposalEngine

            self._proposals = ProposalEngine(self.model)
        self._md_pool = ThreadPoolExecutor(1, thread_name_prefix="explorer")
        self._io_pool = ThreadPoolExecutor(min(64, len(states) + 2), thread_name_prefix="store")
        t_start, cpu_start = time.perf_counter(), time.thread_time()
        try:
            async with asyncio.TaskGroup() as tg:
                for n in states:
                    tg.create_task(self._chain(n, states, docs, pending, pending_batch))
                for e in range(self.xcfg.explorers if self.xcfg else 0):
                    tg.create_task(self._explorer(e, atoms, pending_batch))
            while self._training is not None:
                await self._training
            if self._failure is not None:
                raise self._failure
            if not self._stop.is_set():
                self.version = await asyncio.to_thread(self.maybe_train, None, True)
        finally:
            self.stats["seconds_loop_cpu"] += time.thread_time() - cpu_start
            self._md_pool.shutdown(wait=True)
            if self._proposals is not None:
                self._proposals.close()
                self.in_process_proposals += self._proposals.proposals
                self._proposals = None
            self._io_pool.shutdown(wait=True)
            if own_ref:
                self._ref.close()
        self._record_run()
        return self.summary(states, time.perf_counter() - t_start)

    def _record_run(self) -> None:
        """Append this run's wall time by phase to the campaign document (the report
        sums the runs of a resumed campaign)."""
        doc = self.store.read_checkpoint(self.cfg.campaign, CAMPAIGN_DOC) or {}
        keys = ("seconds_bootstrap", "seconds_md", "seconds_reference", "seconds_training",
                "seconds_store", "seconds_mc", "reference_calls", "reference_failures", "labels",
                "chain_steps", "retrainings")
        doc.setdefault("runs", []).append({
            "ended": time.time(), "seconds": time.perf_counter() - self._t0,
            **{k: self.stats[k] for k in keys}})
        self.writer.write_checkpoint(self.cfg.campaign, CAMPAIGN_DOC, doc)

    def _conditions_text(self) -> str:
        conds = {(c["ensemble"], c["temperature"], c["pressure_gpa"])
                 for c in map(self.cfg.chain_conditions, range(self.cfg.chains))}
        return ", ".join(f"{e.upper()} {t:g} K" + (f" {p:g} GPa" if e == "npt" else "")
                         for e, t, p in sorted(conds))

    def _retrain_due(self) -> bool:
        """Due every `retrain_every` labels, while some chain is still learning (once all
        chains are in production, their kernels are frozen and nothing re-trains until
        the run's end, when a final model is fitted on every label for export)."""
        if not self.cfg.retrain_every or \
                self._n_hmc_labels() - self._trained_at < self.cfg.retrain_every:
            return False  # (checked first: the scan below is over every chain)
        return any(slhmc.phase(st, self.kcfgs[c]) == "burn_in"
                   for c, st in self._states.items() if c not in self._failed)

    def _labels_added(self) -> None:
        if self._training is None and self._failure is None and self._retrain_due():
            self._model_ready.clear()
            # the training is for the last multiple of retrain_every reached (chains that
            # append at the same moment must not shift the rhythm)
            k = self.cfg.retrain_every
            n = self._trained_at + k * ((self._n_hmc_labels() - self._trained_at) // k)
            self._training = asyncio.get_running_loop().create_task(self._retrain(n))

    async def _retrain(self, n_labels: int) -> None:
        try:
            version = await asyncio.to_thread(self.maybe_train, n_labels)
            if version != self.version:
                self.version = version
                meta = self.last_model_meta or {}
                self._emit({"kind": "model_published", "model_version": version,
                            "n_labels": int(meta.get("n_labels", n_labels)),
                            "energy_rmse_mev_per_atom": meta.get("energy_rmse_mev_per_atom"),
                            "force_rmse_mev_per_angstrom":
                                meta.get("force_rmse_mev_per_angstrom"),
                            "time": time.time()})
        except BaseException as exc:  # the campaign fails; chains stop at their next step
            self._failure = exc
            self._stop.set()
        finally:
            self._training = None
            self._model_ready.set()
        if self._failure is None and not self._stop.is_set():
            self._labels_added()  # labels that arrived during the training

    async def _chain(self, n, states, docs, pending, pending_batch) -> None:
        from services.runtime.convert import LabelArrays, StructureArrays
        from services.store import Provenance, Record

        loop = asyncio.get_running_loop()
        kcfg = self.kcfgs[n]
        doc = docs[n]
        if doc.get("failed"):  # stopped by a reference failure (on_failure: stop)
            self._failed[n] = doc["failed"]
            self._left_step(states[n].step)
            return
        while states[n].step < self.cfg.steps and not self._stop.is_set():
            pinned = doc.get("production_model")
            if self.wait_for_model and pinned is None:  # production chains never wait
                await self._model_ready.wait()
                if self._stop.is_set():
                    break
            s = states[n]
            ph = slhmc.phase(s, kcfg)
            if ph == "production" and pinned is None:
                # the kernel is frozen from here on: this model version, this n_md
                pinned = doc["production_model"] = int(self.version)
                doc["production_from"] = s.step + 1
                await loop.run_in_executor(self._io_pool, self.writer.write_checkpoint,
                                           self.cfg.campaign, n, doc)
                self.log(f"{n}: production from step {s.step + 1} on (model v{pinned}, "
                         f"n_md {s.n_md} frozen)")
            v, rec = (self.version if pinned is None else int(pinned)), None
            k = pending.get((n, s.step + 1))
            if k is not None:  # labelled before a kill: replay with its model
                rec = pending_batch.record(k)
                v = rec.provenance.model_version
            t0 = time.perf_counter()
            if self.md_executor is not None:  # an MD executor: no numerics here
                p = await self.md_executor.propose(v, s, kcfg)
            else:
                p = await asyncio.wrap_future(self._proposals.submit(n, v, s, kcfg))
            self.stats["seconds_md"] += time.perf_counter() - t0
            self.stats["md_steps"] += p.n_md
            e_ref, status, outcome, wall = None, "screened" if p.screened_out else "rejected", \
                None, float("nan")
            if rec is not None:
                if not np.allclose(rec.structure.positions, p.positions, atol=1e-6):
                    self.log(f"{n} step {s.step + 1}: the replayed proposal differs from "
                             "the stored label by > 1e-6 A; using the stored label")
                    p = replace(p, positions=rec.structure.positions, cell=rec.structure.cell)
                e_ref = rec.labels.energy
                self.stats["replayed"] += 1
            elif slhmc.needs_reference(p):
                t0 = time.perf_counter()
                faults.point("before_reference")
                atoms = _atoms(p.positions, s.numbers, p.cell, s.pbc)
                # restart hints (QE: start the SCF from the chain state's density)
                atoms.info["nnmd_id"] = f"{self.cfg.campaign}/{n}/{s.step + 1}"
                if s.accepted_step > 0:
                    atoms.info["nnmd_restart_from"] = \
                        f"{self.cfg.campaign}/{n}/{s.accepted_step}"
                outcome = await self._ref.compute(atoms)
                faults.point("after_reference")
                wall = time.perf_counter() - t0
                self.stats["seconds_reference"] += wall
                self.stats["reference_calls"] += 1
                if outcome.ok:
                    e_ref = outcome.energy
                else:
                    status = "failed"
                    self.stats["reference_failures"] += 1
                    if self.cfg.on_failure == "stop":
                        await self._fail_chain(n, s.step + 1, str(outcome), doc)
                        return
                    self.stats["rejected_failures"] += 1
                    self.log(f"{n} step {s.step + 1}: reference failed ({outcome}); move "
                             "rejected (on_failure: reject, which biases the chain towards "
                             "structures where the reference succeeds)")
            new, accepted = slhmc.finish(s, p, e_ref, kcfg)
            if e_ref is not None:
                status = "accepted" if accepted else "rejected"
            if rec is not None and bool(rec.provenance.accepted) != accepted:
                self.log(f"{n} step {new.step}: replayed decision differs from the stored "
                         "label's (non-deterministic MD?); keeping the replayed one")
            row = {"step": new.step, "phase": ph, "move": p.kind, "status": status,
                   "accepted": bool(accepted), "energy_ref": new.energy_ref,
                   "energy_proposal": e_ref, "n_md_steps": p.n_md, "model_version": v,
                   "volume": new.volume, "temperature": kcfg.temperature, "time": time.time()}
            t0 = time.perf_counter()
            records = []
            if outcome is not None and outcome.ok:  # durable before the checkpoint counts it
                records = [Record(
                    StructureArrays(positions=np.array(p.positions),
                                    numbers=np.asarray(s.numbers, np.int32),
                                    cell=np.array(p.cell), pbc=np.asarray(s.pbc, bool),
                                    id=f"{self.cfg.campaign}/{n}/{new.step}"),
                    LabelArrays(energy=float(outcome.energy), forces=outcome.forces,
                                stress=outcome.stress),
                    Provenance(campaign=self.cfg.campaign, chain=n, step=new.step,
                               source="hmc", model_version=v, accepted=accepted,
                               reference_settings_hash=self.ref_hash,
                               wall_time=float(outcome.info.get("wall_s", wall))))]
            docs[n]["state"] = new.to_dict()
            docs[n]["history"].append(row)
            if len(docs[n]["history"]) > HISTORY_SEGMENT_ROWS:
                # the older rows become a history segment, durable before the checkpoint
                # that no longer holds them (a kill between: the old checkpoint still has
                # them, and the segment it does not list is written again on the replay)
                old, docs[n]["history"] = docs[n]["history"][:-1], docs[n]["history"][-1:]
                first = int(old[0]["step"])
                await loop.run_in_executor(
                    self._io_pool, self.writer.write_checkpoint, self.cfg.campaign,
                    history_segment_name(n, first), {"kind": "history", "chain": n,
                                                     "rows": old})
                docs[n].setdefault("history_segments", []).append(first)
            # one group commit of the store writer: the label durable first, then the
            # checkpoint that counts it (a kill between them: the step is replayed on resume
            # with the stored label); many chains' steps share a commit
            await asyncio.wrap_future(self.writer.submit(
                records, checkpoint=(self.cfg.campaign, n, docs[n])))
            if records:
                self.stats["labels"] += 1
                self._n_hmc = self._n_hmc_labels() + 1
            self.stats["seconds_store"] += time.perf_counter() - t0
            states[n] = new
            self.stats["chain_steps"] += 1
            tried = new.hmc_tried + new.volume_tried
            self._emit({"kind": "step", "chain": n, **row, "n_labels": int(self._n_hmc or 0),
                        "acceptance_rate": (new.hmc_accepted + new.volume_accepted) / tried
                        if tried else math.nan})
            if outcome is not None and outcome.ok:
                self._labels_added()
            self._left_step(s.step)
            self._at_step[new.step] += 1
            low = min(self._at_step, default=self._round)
            if low > self._round:
                self._round = low
                self._progress(states)

    def _left_step(self, step: int) -> None:
        """A chain left `step` (made its next step, or failed)."""
        self._at_step[step] -= 1
        if self._at_step[step] <= 0:
            del self._at_step[step]

    async def _fail_chain(self, n: str, step: int, reason: str, doc: dict) -> None:
        """on_failure: stop: the chain ends here, in state failed, with its reason kept in
        its checkpoint (the failed structure is stored nowhere); the others go on."""
        doc["failed"] = {"step": step, "reason": reason, "time": time.time()}
        self._failed[n] = doc["failed"]
        self._left_step(self._states[n].step)
        await asyncio.get_running_loop().run_in_executor(
            self._io_pool, self.writer.write_checkpoint, self.cfg.campaign, n, doc)
        self.log(f"{n} step {step}: the reference failed after its retries ({reason}); "
                 "chain stopped, state failed (on_failure: stop; 'reject' would go on, "
                 "biased)")
        self._emit({"kind": "chain_failed", "chain": n, "step": step, "message": reason,
                    "time": time.time()})

    def _histograms(self, version: int):
        """Descriptor histograms of model `version` over the data it was trained on."""
        if version not in self._hists:
            from orchestrator.explorer import histograms

            meta = dict(self._campaign_models()).get(version, {})
            batch = self._campaign_records()
            n = int(meta.get("n_structures", len(batch)))
            self._hists[version] = histograms(self.model(version), batch.take(np.arange(
                min(n, len(batch)))), self.xcfg.bins, self.xcfg.max_structures,
                self.cfg.seed + version)
        return self._hists[version]

    async def _explorer(self, e: int, atoms, stored_batch) -> None:
        """Rounds of Metropolis MC with the current model; unknown structures labelled."""
        from orchestrator.explorer import acceptance, explore_round, explorer_name
        from services.runtime.convert import LabelArrays, StructureArrays
        from services.store import Provenance, Record

        loop = asyncio.get_running_loop()
        xc, name, camp = self.xcfg, explorer_name(e), self.cfg.campaign
        a = stored_batch.arrays
        stored = {int(k) for k in a["step"][(a["source"] == "mc") & (a["chain"] == name)]}
        doc = await loop.run_in_executor(self._io_pool, self.store.read_checkpoint, camp, name)
        if doc is None:
            doc = {"kind": "mc", "round": 0, "started": -1, "model_version": 0,
                   "positions": atoms.positions.tolist(), "history": []}
        numbers = np.asarray(atoms.numbers)
        cell, pbc = np.array(atoms.cell[:]), np.asarray(atoms.pbc, bool)
        while doc["round"] < xc.rounds and not self._stop.is_set():
            if self.wait_for_model:
                await self._model_ready.wait()
                if self._stop.is_set():
                    break
            r = doc["round"]
            if doc["started"] != r:  # a new round: its model is fixed now (for a replay)
                doc.update(started=r, model_version=self.version)
                await loop.run_in_executor(self._io_pool, self.writer.write_checkpoint, camp,
                                           name, doc)
            v = int(doc["model_version"])
            t0 = time.perf_counter()
            hist = await loop.run_in_executor(self._md_pool, self._histograms, v)
            state, found = await loop.run_in_executor(
                self._md_pool, explore_round, self.model(v), hist, xc,
                np.asarray(doc["positions"], float).reshape(-1, 3), numbers, cell, pbc,
                (self.cfg.seed, 7919 + e, r), r * xc.steps)
            self.stats["seconds_mc"] += time.perf_counter() - t0
            todo = [f for f in found if f[0] not in stored]
            outcomes = await asyncio.gather(*(
                self._ref.compute(_atoms(pos, numbers, cell, pbc)) for _, pos, _ in todo))
            self.stats["reference_calls"] += len(todo)
            records = []
            for (k, pos, _reasons), out in zip(todo, outcomes):
                if not out.ok:
                    self.stats["reference_failures"] += 1
                    self.log(f"{name} step {k}: reference failed ({out}); not stored")
                    continue
                records.append(Record(
                    StructureArrays(positions=np.array(pos), numbers=numbers.astype(np.int32),
                                    cell=cell.copy(), pbc=pbc.copy(), id=f"{camp}/{name}/{k}"),
                    LabelArrays(energy=float(out.energy), forces=out.forces, stress=out.stress),
                    Provenance(campaign=camp, chain=name, step=int(k), source="mc",
                               model_version=v, accepted=True,
                               reference_settings_hash=self.ref_hash,
                               wall_time=float(out.info.get("wall_s", float("nan"))))))
            if records:  # durable before the checkpoint that counts the round
                await loop.run_in_executor(self._io_pool, self.writer.append, records)
                stored |= {int(rec.provenance.step) for rec in records}
                self._n_hmc = self._n_hmc_labels() + len(records)
                self.stats["labels"] += len(records)
                self.stats["mc_labels"] += len(records)
            row = {"round": r + 1, "model_version": v, "mc_steps": (r + 1) * xc.steps,
                   "acceptance": acceptance(state), "unknown": len(found),
                   "labelled": len(records), "energy_per_atom": state.energy / state.n_atoms,
                   "time": time.time()}
            doc.update(round=r + 1, positions=state.positions.tolist())
            doc["history"].append(row)
            await loop.run_in_executor(self._io_pool, self.writer.write_checkpoint, camp,
                                       name, doc)
            self.log(f"{name} round {r + 1}/{xc.rounds}: acceptance {row['acceptance']:.2f}, "
                     f"{len(found)} unknown structures, {len(records)} labelled (model v{v})")
            self._emit({"kind": "mc_round", "chain": name, "step": r + 1, **row})
            if records:
                self._labels_added()

    def _progress(self, states) -> None:
        steps = [s.step for s in states.values()]
        tried = sum(s.hmc_tried + s.volume_tried for s in states.values())
        acc = sum(s.hmc_accepted + s.volume_accepted for s in states.values())
        n_md = [s.n_md for s in states.values()]
        e = np.mean([s.energy_ref / s.n_atoms for s in states.values()])
        prod = sum(slhmc.phase(s, self.kcfgs[c]) == "production" for c, s in states.items())
        done = sum(steps)
        self.log(f"step {min(steps)}/{self.cfg.steps} (slowest chain; {done}/"
                 f"{self.cfg.steps * len(steps)} chain steps): acceptance "
                 f"{acc / max(tried, 1):.2f}, "
                 + (f"{prod} of {len(states)} chains in production, " if prod else "")
                 + f"{len(self._failed)} failed, " * bool(self._failed) +
                 f"n_md {min(n_md)}-{max(n_md)}, <E_ref> {e:.4f} eV/atom, "
                 f"labels {self.stats['labels']}, model v{self.version}, "
                 f"{time.perf_counter() - self._t0:.0f} s")

    def summary(self, states, seconds) -> dict:
        tried = sum(s.hmc_tried + s.volume_tried for s in states.values())
        acc = sum(s.hmc_accepted + s.volume_accepted for s in states.values())
        models = self._campaign_models()
        out = {"campaign": self.cfg.campaign, "store": self.store.url,
               "chains": len(states), "steps": {n: s.step for n, s in states.items()},
               "acceptance": acc / tried if tried else None,  # None: no move tried
               "model_version": models[-1][0] if models else 0,
               # wall time of the whole run (bootstrap and first training included), and
               # of the chains' part alone
               "seconds": time.perf_counter() - self._t0, "seconds_chains": seconds,
               **self.stats,
               "failed_chains": {n: f["reason"] for n, f in sorted(self._failed.items())}}
        if self.cfg.on_failure == "reject" and self.stats["rejected_failures"]:
            out["bias_warning"] = (
                f"{self.stats['rejected_failures']} reference failures were rejected moves "
                "(on_failure: reject): the chains are biased towards structures where the "
                "reference succeeds")
        return out

    def export_model(self, out_dir) -> list[str]:
        """The campaign's latest model as model.nnmd (+ ffield.sannp when it can be written)."""

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        version = self._campaign_models()[-1][0]
        pot = self.model(version)
        paths = [out_dir / "model.nnmd"]
        pot.save(paths[0])
        try:
            pot.save(out_dir / "ffield.sannp", format="sannp")  # atomic, as the model is
            paths.append(out_dir / "ffield.sannp")
        except (ValueError, NotImplementedError) as exc:
            self.log(f"ffield.sannp not written: {exc}")
        return [str(p) for p in paths]

    def close(self) -> None:
        self.writer.close()


def read_structure(config: CampaignConfig):
    """The starting structure: --structure, or the QE input's own structure."""

    if not config.structure:
        from services.reference.spec import make_backend

        template = None
        if config.reference.strip().lower().startswith("qe:"):
            template = make_backend(config.reference).template
        if template is None:
            raise ValueError("--structure is required unless --reference is qe:INPUT (then "
                             "the structure of the QE input is used)")
        return template.atoms.copy()
    from services.trainer.formats import read_structure

    return read_structure(config.structure, "--structure")


def run_campaign(config: CampaignConfig, store_url: str, log=None, export_dir=None) -> dict:
    """Run or resume a campaign to config.steps; returns a summary dict."""
    atoms = read_structure(config)
    npt = any(config.chain_conditions(c)["ensemble"] == "npt" for c in range(config.chains))
    if npt and not (np.all(atoms.pbc) and atoms.cell.rank == 3):
        raise ValueError("--ensemble npt needs a periodic structure with a full 3-D cell "
                         "(volume moves scale the cell); use nvt for molecules and slabs")
    camp = Campaign(config, store_url, log)
    try:
        summary = camp.run(atoms)
        if export_dir is not None:
            summary["exported"] = camp.export_model(export_dir)
    finally:
        camp.close()
    return summary
