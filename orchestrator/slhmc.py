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

import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from nnmd_kernels import slhmc
from nnmd_kernels.md.units import EV_PER_A3_TO_BAR

CAMPAIGN_DOC = "campaign"  # checkpoint key holding the campaign's settings
GPA_TO_EV_PER_A3 = 1.0e4 / EV_PER_A3_TO_BAR  # 1 GPa = 1e4 bar

# settings that must not change when a campaign resumes
_FIXED_ON_RESUME = ("reference", "chains", "temperature", "ensemble", "pressure_gpa", "dt",
                    "seed", "bootstrap_steps", "delayed_acceptance", "volume_proposal")


@dataclass(frozen=True)
class CampaignConfig:
    """A local SLHMC campaign. Units: K, GPa, fs. `train` overrides TrainConfig fields."""

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
    reference_workers: int = 1  # reference calls at once (one backend each, e.g. one pw.x)
    qe: dict = field(default_factory=dict)  # QEConfig fields (ranks, threads, timeout_s, ...)

    def __post_init__(self):
        from services.store.store import safe_name

        safe_name(self.campaign, "campaign")
        for name, lo in (("chains", 1), ("steps", 0), ("bootstrap_steps", 1),
                         ("retrain_every", 0), ("retrain_epochs", 1), ("reference_workers", 1)):
            if int(getattr(self, name)) < lo:
                raise ValueError(f"{name} must be >= {lo}, got {getattr(self, name)}"
                                 + (" (the first model is trained on the bootstrap frames)"
                                    if name == "bootstrap_steps" else ""))
        if not self.bootstrap_dt > 0:
            raise ValueError(f"bootstrap_dt must be > 0 fs, got {self.bootstrap_dt}")
        self.kernel_config()  # validates temperature, dt, md steps, ensemble, volume moves

    def kernel_config(self) -> slhmc.SLHMCConfig:
        return slhmc.SLHMCConfig(
            temperature=self.temperature, dt=self.dt, n_md=self.md_steps,
            n_md_min=min(self.md_steps_min, self.md_steps),
            n_md_max=max(self.md_steps_max, self.md_steps), ensemble=self.ensemble,
            pressure=self.pressure_gpa * GPA_TO_EV_PER_A3, volume_proposal=self.volume_proposal,
            volume_step=self.volume_step, delayed_acceptance=self.delayed_acceptance)


def chain_name(c: int) -> str:
    return f"chain{c:03d}"


def _atoms(positions, numbers, cell, pbc):
    from ase import Atoms

    return Atoms(numbers=numbers, positions=positions, cell=cell, pbc=pbc)


class Campaign:
    """Runs (or resumes) one campaign in this process; `run()` steps every chain to `steps`."""

    def __init__(self, config: CampaignConfig, store_url: str,
                 log: Callable[[str], None] | None = None):
        from services.reference.spec import make_backend, settings_hash
        from services.store import Store

        self.cfg = config
        self.kcfg = config.kernel_config()
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        from services.reference.qe import QEConfig, RetryPolicy

        qe_opts = dict(config.qe)
        attempts = qe_opts.pop("attempts", None)
        qe = QEConfig(**qe_opts, **({"retry": RetryPolicy(attempts=attempts)} if attempts else {}))
        try:
            self.backend = make_backend(config.reference, qe=qe)
            # one backend per worker: ASE calculators are not thread-safe when shared
            self.backends = [self.backend] + [make_backend(config.reference, qe=qe)
                                              for _ in range(config.reference_workers - 1)]
        except ImportError as exc:
            raise ValueError(f"--reference {config.reference}: {exc}") from exc
        self.ref_hash = settings_hash(self.backend)
        self.store = Store(store_url)
        self.writer = self.store.writer()
        try:
            self.resumed = self._check_resume()
        except BaseException:
            self.writer.close()
            raise
        self._models: dict[int, object] = {}
        self._n_hmc: int | None = None
        self._force_fns: dict[tuple[str, int], object] = {}
        self.stats = {"reference_calls": 0, "reference_failures": 0, "labels": 0,
                      "retrainings": 0, "replayed": 0, "md_steps": 0,
                      # wall seconds by phase (the campaign's own overhead is "store")
                      "seconds_md": 0.0, "seconds_reference": 0.0, "seconds_store": 0.0,
                      "seconds_training": 0.0}

    # ------------------------------------------------------------ settings
    def _check_resume(self) -> bool:
        doc = self.store.read_checkpoint(self.cfg.campaign, CAMPAIGN_DOC)
        mine = asdict(self.cfg)
        if doc is None:
            self.writer.write_checkpoint(self.cfg.campaign, CAMPAIGN_DOC,
                                         {"config": mine, "created": time.time()})
            return False
        old = doc["config"]
        for key in _FIXED_ON_RESUME:
            if old.get(key) != mine[key]:
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
        """First-principles MD frames (provenance aimd) until bootstrap_steps + 1 exist."""
        from services.reference.aimd import AIMD_CHAIN, AIMDConfig, run_aimd
        from services.runtime.convert import from_atoms
        from services.store import Provenance, Record

        batch = self._campaign_records()
        mask = batch.arrays["source"] == "aimd"
        have = int(mask.sum())
        want = self.cfg.bootstrap_steps + 1
        if have >= want:
            return
        start = atoms
        if have:  # a killed bootstrap keeps its frames and continues from the last one
            last = batch.record(int(np.flatnonzero(mask)[-1]))
            start = _atoms(last.structure.positions, last.structure.numbers,
                           last.structure.cell, last.structure.pbc)
        steps = want - have - (0 if have else 1)
        self.log(f"bootstrap: {steps} MD steps with the reference ({self.backend.name}), "
                 f"{self.cfg.temperature:g} K" + (f", continuing after {have} frames"
                                                  if have else ""))

        def write(frame):
            k = int(frame.info["step"])
            if have and k == 0:
                return  # the restart frame is already stored
            structure, labels = from_atoms(frame)
            self.writer.append(Record(structure, labels, Provenance(
                campaign=self.cfg.campaign, chain=AIMD_CHAIN, step=have + k - (1 if have else 0),
                source="aimd", accepted=True, reference_settings_hash=self.ref_hash,
                wall_time=float(frame.info.get("ref_wall_s", float("nan"))))))

        run = run_aimd(self.backend, start, AIMDConfig(
            temperature_K=self.cfg.temperature, steps=steps, timestep_fs=self.cfg.bootstrap_dt,
            seed=self.cfg.seed + have), on_frame=write)
        if run.failure is not None and have + len(run.frames) < 2:
            raise ValueError(f"bootstrap: the reference failed ({run.failure}); check the "
                             "reference settings or the structure")
        if run.failure is not None:
            self.log(f"bootstrap stopped early: {run.failure}; continuing with the frames made")

    # ------------------------------------------------------------ models
    def _campaign_models(self) -> list[tuple[int, dict]]:
        out = []
        for v in self.store.model_versions():
            g = self.store._group(f"models/v{v:06d}")
            meta = dict(g.attrs).get("metadata", {}) if g is not None else {}
            if meta.get("campaign") == self.cfg.campaign:
                out.append((v, meta))
        return out

    def model(self, version: int):
        if version not in self._models:
            from nnmd_kernels.model_file import loads

            data, _ = self.store.load_model(version)
            self._models[version] = loads(data, source=f"store model v{version}")
        return self._models[version]

    def _n_hmc_labels(self) -> int:
        if self._n_hmc is None:  # read once; then counted as labels are appended
            self._n_hmc = int((self._campaign_records().arrays["source"] == "hmc").sum())
        return self._n_hmc

    def maybe_train(self) -> int:
        """The current model version; trains first when none exists or one is due."""
        from nnmd_kernels.model_file import dumps
        from nnmd_kernels.training import TrainConfig, train
        from services.trainer.data import read_store

        models = self._campaign_models()
        n_hmc = self._n_hmc_labels()
        if models:
            version, meta = models[-1]
            due = self.cfg.retrain_every and n_hmc - int(meta.get("n_labels", 0)) >= \
                self.cfg.retrain_every
            if not due:
                return version
        structures = read_store(self.store.url, self.cfg.campaign)
        overrides = dict(self.cfg.train)
        init = None
        if models:
            init = self.model(models[-1][0])
            overrides.update(max_epochs=self.cfg.retrain_epochs, warmup_epochs=0)
        tc = TrainConfig.from_dict({"seed": self.cfg.seed, **overrides})
        t0 = time.perf_counter()
        self.log(f"training on {len(structures)} labels ({n_hmc} from chains)"
                 + (" (warm start)" if init is not None else "") + " ...")
        result = train(structures, tc, init=init)
        text, digest = dumps(result.potential)
        m = result.metrics
        meta = {"campaign": self.cfg.campaign, "n_labels": n_hmc,
                "n_structures": len(structures), "sha256": digest,
                "train_seconds": time.perf_counter() - t0,
                "energy_rmse_mev_per_atom": 1e3 * float(m.get("all_energy_rmse", np.nan)),
                "force_rmse_mev_per_angstrom": 1e3 * float(m.get("all_force_rmse", np.nan)),
                "warm_start": init is not None,
                # learning curve of member 0: [iteration, train E, val E, train F, val F]
                # (RMSE, eV/atom and eV/A; NaN where absent)
                "history": [[h.get("epoch"), *(float(h.get(k, np.nan)) for k in (
                    "train_energy_rmse", "val_energy_rmse", "train_force_rmse",
                    "val_force_rmse"))] for h in result.history[0]]}
        version = self.writer.publish_model(text.encode(), meta)
        self.stats["retrainings"] += 1
        self.stats["seconds_training"] += time.perf_counter() - t0
        self.log(f"model v{version}: energy RMSE {meta['energy_rmse_mev_per_atom']:.2f} meV/atom, "
                 f"force RMSE {meta['force_rmse_mev_per_angstrom']:.0f} meV/A "
                 f"({meta['train_seconds']:.1f} s)")
        return version

    def _force_fn(self, chain: str, version: int, numbers, pbc):
        from nnmd_kernels.md.forces import potential_force_fn

        key = (chain, version)
        if key not in self._force_fns:
            self._force_fns = {k: v for k, v in self._force_fns.items() if k[0] != chain}
            self._force_fns[key] = potential_force_fn(self.model(version), numbers, pbc)
        return self._force_fns[key]

    # ------------------------------------------------------------ chains
    def init_chains(self) -> dict[str, dict]:
        """Each chain's checkpoint document; new chains start from bootstrap frames."""
        batch = self._campaign_records()
        aimd = np.flatnonzero(batch.arrays["source"] == "aimd")
        docs = {}
        for c in range(self.cfg.chains):
            name = chain_name(c)
            doc = self.store.read_checkpoint(self.cfg.campaign, name)
            if doc is None:
                # later frames are closer to equilibrium: chain c starts from frame -1 - c
                rec = batch.record(int(aimd[max(0, len(aimd) - 1 - c)]))
                s = rec.structure
                from ase.data import atomic_masses

                cell = np.zeros((3, 3)) if s.cell is None else s.cell  # zeros: no cell
                state = slhmc.init_chain(
                    s.positions, s.numbers, atomic_masses[np.asarray(s.numbers)], cell,
                    s.pbc, rec.labels.energy, self.kcfg, seed=(self.cfg.seed, c))
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

    def run(self, atoms) -> dict:
        from services.runtime.convert import LabelArrays, StructureArrays
        from services.store import Provenance, Record

        self.log(("resuming" if self.resumed else "starting") + f" campaign '{self.cfg.campaign}' "
                 f"in {self.store.url}: {self.cfg.chains} chains x {self.cfg.steps} steps, "
                 f"{self.cfg.ensemble.upper()} {self.cfg.temperature:g} K, reference "
                 f"{self.backend.name}")
        self.bootstrap(atoms)
        version = self.maybe_train()
        docs = self.init_chains()
        states = {n: slhmc.ChainState.from_dict(d["state"]) for n, d in docs.items()}
        pending, pending_batch = self._pending_labels()
        t_start = time.perf_counter()
        while True:
            active = [n for n, s in states.items() if s.step < self.cfg.steps]
            if not active:
                break
            props, versions, replay = {}, {}, {}
            t_md = time.perf_counter()
            for n in active:
                s = states[n]
                k = pending.get((n, s.step + 1))
                v = version
                if k is not None:  # labelled before a kill: replay with its model
                    rec = pending_batch.record(k)
                    v, replay[n] = rec.provenance.model_version, rec
                versions[n] = v
                ff = self._force_fn(n, v, s.numbers, s.pbc)
                props[n] = slhmc.screen(slhmc.propose(s, self.kcfg, ff), self.kcfg)
                self.stats["md_steps"] += props[n].n_md
            self.stats["seconds_md"] += time.perf_counter() - t_md
            need = [n for n in active if slhmc.needs_reference(props[n]) and n not in replay]
            outcomes = {}
            if need:
                atoms_list = [_atoms(props[n].positions, states[n].numbers, props[n].cell,
                                     states[n].pbc) for n in need]
                t0 = time.perf_counter()
                results = self._label(atoms_list)
                self.stats["seconds_reference"] += time.perf_counter() - t0
                wall = (time.perf_counter() - t0) / len(need)
                self.stats["reference_calls"] += len(need)
                for n, r in zip(need, results):
                    outcomes[n] = (r, wall)
            records, new_states, rows = [], {}, {}
            for n in active:
                s, p = states[n], props[n]
                e_ref, status = None, "screened" if p.screened_out else "rejected"
                if n in replay:
                    rec = replay[n]
                    if not np.allclose(rec.structure.positions, p.positions, atol=1e-6):
                        self.log(f"{n} step {s.step + 1}: the replayed proposal differs from "
                                 "the stored label by > 1e-6 A; using the stored label")
                        p = replace(p, positions=rec.structure.positions,
                                    cell=rec.structure.cell)
                    e_ref = rec.labels.energy
                    self.stats["replayed"] += 1
                elif n in outcomes:
                    r, wall = outcomes[n]
                    if r.ok:
                        e_ref = r.energy
                    else:
                        status = "failed"
                        self.stats["reference_failures"] += 1
                        self.log(f"{n} step {s.step + 1}: reference failed ({r}); move rejected")
                new, accepted = slhmc.finish(s, p, e_ref, self.kcfg)
                if e_ref is not None:
                    status = "accepted" if accepted else "rejected"
                if n in replay and bool(replay[n].provenance.accepted) != accepted:
                    self.log(f"{n} step {new.step}: replayed decision differs from the stored "
                             "label's (non-deterministic MD?); keeping the replayed one")
                if n in outcomes and outcomes[n][0].ok:
                    r, wall = outcomes[n]
                    records.append(Record(
                        StructureArrays(positions=np.array(p.positions),
                                        numbers=np.asarray(s.numbers, np.int32),
                                        cell=np.array(p.cell), pbc=np.asarray(s.pbc, bool),
                                        id=f"{self.cfg.campaign}/{n}/{new.step}"),
                        LabelArrays(energy=float(r.energy), forces=r.forces, stress=r.stress),
                        Provenance(campaign=self.cfg.campaign, chain=n, step=new.step,
                                   source="hmc", model_version=versions[n], accepted=accepted,
                                   reference_settings_hash=self.ref_hash, wall_time=wall)))
                new_states[n] = new
                rows[n] = {"step": new.step, "move": p.kind, "status": status,
                           "accepted": bool(accepted), "energy_ref": new.energy_ref,
                           "energy_proposal": e_ref, "n_md_steps": p.n_md,
                           "model_version": versions[n], "volume": new.volume,
                           "time": time.time()}
            t_store = time.perf_counter()
            if records:  # durable before any checkpoint that counts these steps
                n_before = self._n_hmc_labels()
                self.writer.append(records)
                self.stats["labels"] += len(records)
                self._n_hmc = n_before + len(records)
            for n in active:
                docs[n]["state"] = new_states[n].to_dict()
                docs[n]["history"].append(rows[n])
                self.writer.write_checkpoint(self.cfg.campaign, n, docs[n])
                states[n] = new_states[n]
            self.stats["seconds_store"] += time.perf_counter() - t_store
            self._progress(states, t_start)
            version = self.maybe_train()
        return self.summary(states, time.perf_counter() - t_start)

    def _label(self, atoms_list) -> list:
        """Reference outcomes in order; up to reference_workers calls run at once."""
        k = min(len(self.backends), len(atoms_list))
        if k <= 1:
            return self.backend.compute(atoms_list)
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(k) as ex:
            parts = list(ex.map(lambda w: self.backends[w].compute(atoms_list[w::k]), range(k)))
        out = [None] * len(atoms_list)
        for w, part in enumerate(parts):
            out[w::k] = part
        return out

    def _progress(self, states, t_start) -> None:
        steps = [s.step for s in states.values()]
        tried = sum(s.hmc_tried + s.volume_tried for s in states.values())
        acc = sum(s.hmc_accepted + s.volume_accepted for s in states.values())
        n_md = [s.n_md for s in states.values()]
        e = np.mean([s.energy_ref / s.n_atoms for s in states.values()])
        self.log(f"step {min(steps)}/{self.cfg.steps}: acceptance {acc / max(tried, 1):.2f}, "
                 f"n_md {min(n_md)}-{max(n_md)}, <E_ref> {e:.4f} eV/atom, "
                 f"labels {self.stats['labels']}, {time.perf_counter() - t_start:.0f} s")

    def summary(self, states, seconds) -> dict:
        tried = sum(s.hmc_tried + s.volume_tried for s in states.values())
        acc = sum(s.hmc_accepted + s.volume_accepted for s in states.values())
        models = self._campaign_models()
        return {"campaign": self.cfg.campaign, "store": self.store.url,
                "chains": len(states), "steps": {n: s.step for n, s in states.items()},
                "acceptance": acc / tried if tried else math.nan,
                "model_version": models[-1][0] if models else 0,
                "seconds": seconds, **self.stats}

    def export_model(self, out_dir) -> list[str]:
        """The campaign's latest model as model.nnmd (+ ffield.sannp when it can be written)."""
        from nnmd_kernels.sannp import write_sannp

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        version = self._campaign_models()[-1][0]
        pot = self.model(version)
        paths = [out_dir / "model.nnmd"]
        pot.save(paths[0])
        try:
            (out_dir / "ffield.sannp").write_text(write_sannp(pot))
            paths.append(out_dir / "ffield.sannp")
        except (ValueError, NotImplementedError) as exc:
            self.log(f"ffield.sannp not written: {exc}")
        return [str(p) for p in paths]

    def close(self) -> None:
        self.writer.close()


def read_structure(config: CampaignConfig):
    """The starting structure: --structure, or the QE input's own structure."""
    import ase.io

    if not config.structure:
        from services.reference.spec import make_backend

        template = None
        if config.reference.strip().lower().startswith("qe:"):
            template = make_backend(config.reference).template
        if template is None:
            raise ValueError("--structure is required unless --reference is qe:INPUT (then "
                             "the structure of the QE input is used)")
        return template.atoms.copy()
    path = Path(config.structure)
    if not path.is_file():
        raise FileNotFoundError(f"--structure {path}: no such file")
    try:
        return ase.io.read(path)
    except Exception as exc:
        raise ValueError(f"--structure {path}: ASE cannot read it ({exc})") from exc


def run_campaign(config: CampaignConfig, store_url: str, log=None, export_dir=None) -> dict:
    """Run or resume a campaign to config.steps; returns a summary dict."""
    atoms = read_structure(config)
    if config.ensemble == "npt" and not (np.all(atoms.pbc) and atoms.cell.rank == 3):
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
