"""The source's LLZO case end to end with the classical teacher (issue 19).

    .venv/bin/python benchmarks/llzo.py --quick      # < 10 min on 2 cores: a smoke run
    .venv/bin/python benchmarks/llzo.py --jobs 2     # the full case: ~2 h on 2 cores
                                                     # (docs/llzo.md)
    .venv/bin/python benchmarks/llzo.py --chgnet     # + the CHGNet distillation (~40 min)
    .venv/bin/python benchmarks/llzo.py --tables     # docs/llzo.md's tables from the JSON

Stages (each resumable: a stage whose marker `WORK/done/<stage>.json` exists is skipped,
and every output is written to a temporary name and renamed when complete, so an
interrupted run loses only the stage it was in). Each marker records the settings its
stage depends on (STAGE_FIELDS): changing the MD settings redoes the MD, analysis and
report stages and keeps the campaign; changing the campaign's is refused (its store).

  campaign     `nnmd campaign run` of examples/llzo/classical.yaml (the real runner; the
               campaign store resumes by itself), exported to WORK/model/model.nnmd
  relax        each phase's 192-atom cell relaxed by the teacher: the common MD start
  teacher_md   NPT (Nose-Hoover, aniso, 0 pressure) MD of the 192-atom cubic and tetragonal
               cells with the teacher in LAMMPS directly, `replicas` independent runs (velocity
               seeds) per phase and temperature; extxyz frames with time_fs, energy, forces and virial stress
  force_rmse   the student's force RMSE on held-out teacher frames (every k-th frame of the
               teacher runs after equilibration; never seen in training), per temperature,
               with services.trainer.evaluate
  student_md   `nnmd md` of the same cells (npt --anisotropic; engine lammps: LAMMPS'
               Nose-Hoover barostat as the teacher's), as many runs as the teacher's; a run whose volume leaves +-10 % of its start is marked unstable
  analysis     per phase, temperature and who (redone when one of its runs was redone):
               nnmd's own analysis of the independent runs together (`nnmd analyze A B C`:
               D their mean, its error the larger of their scatter and their block errors,
               and the diffusive verdict); then the Arrhenius fits (weighted) of teacher and
               student over the same temperatures, those where both are diffusive and
               stable -> Ea with error, D and Nernst-Einstein sigma at 600 K
  report       benchmarks/results/llzo[_quick].json (the issue's schema) + the tables of
               docs/llzo.md (printed again from any result JSON by --tables JSON)
  chgnet_*     (--chgnet) `nnmd campaign run` of examples/llzo/chgnet.yaml (CHGNet as the
               teacher), then the student's NPT MD of the cubic 192-atom cell at 1000 K for
               50 ps from its own relaxed cell (JSON extra.chgnet)

WORK defaults to out/llzo[_quick] (git-ignored). --quick writes
benchmarks/results/llzo_quick.json, the full run benchmarks/results/llzo.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "llzo"
SPEC = EXAMPLE / "classical.yaml"
RESULTS = ROOT / "benchmarks" / "results"
KB_EV = 8.617333262e-5  # eV/K
BAR_TO_EV_PER_A3 = 1e5 / 1.602176634e11  # 1 bar = 1e5 Pa; 1 eV/A^3 = 160.2 GPa
PHASES = {"cubic": ("cubic_192.extxyz", 0), "tetragonal": ("tetragonal_192.extxyz", 0)}
N_LI_192 = 56
# a student run whose volume leaves +-10 % of its start is "unstable" (the model has
# left the region it was trained on, e.g. a runaway expansion): analysed, reported, but
# never used in the Arrhenius fit nor the volume
MAX_VOLUME_CHANGE = 0.10
T_EXTRAPOLATE = 600.0
SOURCE_SIGMA_600K = {"cubic": 9.4e-2, "tetragonal": 4.2e-3}  # S/cm, the source's NNP-MD
EXPERIMENT_SIGMA = {"cubic": 2.5e-1, "tetragonal": 2.4e-2}  # S/cm, as quoted in SEED.md


@dataclass(frozen=True)
class Settings:
    """Everything a run depends on (stored with the stage markers)."""

    temperatures: tuple = (700.0, 850.0, 1000.0, 1100.0)
    # campaign overrides of classical.yaml ({} = the spec as it is)
    campaign: dict = field(default_factory=dict)
    dt_fs: float = 1.0  # production MD time step (teacher and student)
    equil_steps: int = 5000  # NPT equilibration before frames are kept
    prod_steps: int = 30000  # production steps per run (30 ps at 1 fs)
    frame_every: int = 50  # steps between frames
    blocks: int = 5  # D's block-average error
    # independent MD runs (velocity seeds) per phase, temperature and who: D is their mean
    # and its error includes their scatter, which one 30 ps run's blocks underestimate at
    # 700 K (four seeds of the teacher's cubic run: D 2.7-5.2e-6 cm^2/s, where each run's
    # block error said 12-14 %; docs/llzo.md)
    replicas: int = 3
    rmse_frames: int = 10  # held-out teacher frames per phase and temperature
    engine: str = "lammps"  # student MD engine: lammps (measured faster, docs/llzo.md) | native
    seed: int = 1


FULL = Settings()
QUICK = Settings(
    temperatures=(800.0, 1000.0, 1200.0),
    campaign={"chains": [{"count": 1}, {"count": 1, "structure": "cubic_96.extxyz", "bootstrap_steps": 20}],
              "steps": 40, "bootstrap_steps": 20, "retrain_every": 40,
              "retrain_epochs": 30, "md_steps": 10, "md_steps_max": 20,
              "train": {"descriptor": {"n_radial": 12, "n_angular": 6, "r_radial": 5.0,
                                       "r_angular": 5.0, "weighting": "typespin"},
                        "hidden": [20, 20], "max_epochs": 60}},
    equil_steps=500, prod_steps=6000, frame_every=20, blocks=4, rmse_frames=4, replicas=2)

# the settings each kind of stage depends on (Stages keys): changing the MD settings redoes
# the MD, analysis and report stages, never the campaign
_MD_FIELDS = ("dt_fs", "equil_steps", "prod_steps", "frame_every", "seed")
STAGE_FIELDS = {
    "campaign": ("campaign", "seed"),
    "md": _MD_FIELDS,
    "rmse": _MD_FIELDS + ("rmse_frames",),
    "analysis": _MD_FIELDS + ("blocks", "replicas"),
}


def stage_key(settings: Settings, kind: str) -> dict:
    """The part of the settings a kind of stage depends on (JSON-normalised)."""
    d = json.loads(json.dumps(asdict(settings)))
    return {k: d[k] for k in STAGE_FIELDS[kind]}


# ------------------------------------------------------------------ files and stages


def atomic_write_text(path: Path, text: str) -> None:
    """Write text to path via a temporary file in the same folder and os.replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, allow_nan=False) + "\n")


class Stages:
    """Stage markers in WORK/done/: a stage that completed is skipped on the next run.

    A marker holds the stage's result (JSON) and the settings key it was made with (the
    Stages' key, or the stage's own: the settings it depends on). A marker whose key
    differs in any of those settings is redone, or, for a stage that keeps state beyond
    its outputs (a campaign store: keep=True), refused (use another --work or delete it)."""

    def __init__(self, work: Path, key: dict, log=print):
        self.work = Path(work)
        self.key = key
        self.log = log
        self.timings: dict[str, float] = {}

    def marker(self, name: str) -> Path:
        return self.work / "done" / f"{name}.json"

    def done(self, name: str, key: dict | None = None, keep: bool = True):
        p = self.marker(name)
        if not p.exists():
            return None
        d = json.loads(p.read_text())
        key = self.key if key is None else key
        stored = d.get("key") or {}
        changed = sorted(k for k in key if stored.get(k) != key[k])
        if changed:
            if keep:
                raise SystemExit(f"{p}: made with other settings ({', '.join(changed)}); use "
                                 f"another --work or delete {self.work}")
            self.log(f"[{name}] made with other settings ({', '.join(changed)}): redone")
            return None
        return d

    def cached(self, name: str, depends=(), key: dict | None = None, keep: bool = True):
        """The stored result of a completed stage (None when it must run): its marker exists
        with this key, its outputs are there and no stage in `depends` completed after it."""
        d = self.done(name, key, keep)
        if d is None:
            return None
        mine = self.marker(name)
        stale = any(self.marker(dep).exists() and self.marker(dep).stat().st_mtime_ns
                    > mine.stat().st_mtime_ns for dep in depends)
        if stale or not all((self.work / o).exists() for o in d.get("outputs", [])):
            return None
        self.log(f"[{name}] done before ({d['wall_s']:.1f} s), skipped")
        self.timings[name] = 0.0
        return d

    def _finish(self, name: str, result, wall: float, outputs, key: dict | None = None) -> None:
        key = self.key if key is None else key
        atomic_write_json(self.marker(name), {"key": key, "wall_s": wall, "result": result,
                                              "outputs": [str(o) for o in outputs],
                                              "load_average": list(os.getloadavg())})
        self.timings[name] = wall
        self.log(f"[{name}] {wall:.1f} s")

    def run(self, name: str, fn, outputs=(), depends=(), key: dict | None = None, keep: bool = True):
        """fn() -> JSON-able result, unless the marker exists, its outputs are there and no
        stage in `depends` completed after it (then it is redone). key: the settings this
        stage depends on (default the Stages' key); keep: see the class."""
        d = self.cached(name, depends, key, keep)
        if d is not None:
            return d["result"]
        return self._timed(name, fn, outputs, key)

    def _timed(self, name: str, fn, outputs, key: dict | None):
        t0 = time.perf_counter()
        result = fn()
        self._finish(name, result, time.perf_counter() - t0, outputs, key)
        return result

    def run_many(self, stages, jobs: int = 1, key: dict | None = None, keep: bool = True) -> dict:
        """Independent stages [(name, fn, outputs)] or [(name, fn, outputs, depends)], `jobs`
        at a time in worker processes (fn must pickle: a partial of a module function); each
        marker is written as its stage completes, so an interrupted batch loses only the
        stages still running. key, keep: as run(), for every stage. Returns {name: result}."""
        out, todo = {}, []
        for name, fn, outputs, *dep in stages:
            d = self.cached(name, dep[0] if dep else (), key, keep)
            if d is not None:
                out[name] = d["result"]
            else:
                todo.append((name, fn, outputs))
        if jobs <= 1 or len(todo) <= 1:
            for name, fn, outputs in todo:
                out[name] = self._timed(name, fn, outputs, key)
            return out
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        sys.path.insert(0, str(ROOT / "benchmarks"))
        from llzo_structures import timed_call

        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(timed_call, fn): (name, outputs) for name, fn, outputs in todo}
            for f in as_completed(futures):
                name, outputs = futures[f]
                result, wall = f.result()
                self._finish(name, result, wall, outputs, key)
                out[name] = result
        return out



# ------------------------------------------------------------------ campaign


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


CAMPAIGN_START_STEPS = 5000  # teacher NPT steps (1 fs) that bring a 96-atom start to the campaign's T


def campaign_start(name: str, temperature: float, work: Path, seed: int) -> dict:
    """A 96-atom structure of examples/llzo/ brought to the teacher's equilibrium at the
    campaign's temperature: relaxed (positions, a, b, c) and then 5 ps of teacher NPT
    (0 GPa), the last frame kept. The shipped cells are DFT/experimental ones, -11 GPa for
    this teacher (its 800 K volume is ~3 % larger than theirs) and the campaign's bootstrap is
    fixed-cell MD: started from them, the first labels would sit at the wrong density."""
    from ase.io import read, write

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from llzo_structures import npt, relax

    atoms, e0 = relax(read(EXAMPLE / name))
    out, info = npt(atoms, temperature, CAMPAIGN_START_STEPS, seed=seed)
    out.set_velocities(np.zeros((len(out), 3)))
    path = work / f"campaign_start_{name}"
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp, out, format="extxyz")
    os.replace(tmp, path)
    return {"relaxed_E_eV_per_atom": e0 / len(atoms), "V_A3_per_atom": out.get_volume() / len(out),
            "relaxed_V_A3_per_atom": atoms.get_volume() / len(atoms), "ms_per_step": info["ms_per_step"]}


def campaign_structures(source: Path | None = None) -> list[str]:
    """The structure files a campaign spec starts from (its own and its chain groups')."""
    import yaml

    spec = yaml.safe_load((source or SPEC).read_text())
    names = [spec["structure"]]
    if isinstance(spec.get("chains"), list):
        names += [g["structure"] for g in spec["chains"] if "structure" in g]
    return names


def campaign_spec(settings: Settings, work: Path, source: Path | None = None, prefix: str = "") -> Path:
    """`source` (classical.yaml) with the settings' overrides (the classical campaign only),
    absolute paths, store in WORK/<prefix>store; structures equilibrated by `campaign_start`
    (WORK/campaign_start_<name>) replace the shipped ones where they exist."""
    import yaml

    def start(name):  # the classical teacher's equilibrated cells, for its own campaign only
        eq = work / f"campaign_start_{name}"
        return str(eq if (source is None and eq.exists()) else EXAMPLE / name)

    spec = yaml.safe_load((source or SPEC).read_text())
    if source is None:
        spec = _merge(spec, settings.campaign)
    if str(spec["reference"]).startswith("lammps:"):
        spec["reference"] = "lammps:" + str(EXAMPLE / spec["reference"].split(":", 1)[1])
    spec["structure"] = start(spec["structure"])
    if isinstance(spec.get("chains"), list):  # chain groups with a structure of their own
        spec["chains"] = [{**g, "structure": start(g["structure"])} if "structure" in g else g
                          for g in spec["chains"]]
    spec["store"] = str(work / f"{prefix}store")
    path = work / f"{prefix}campaign.yaml"
    atomic_write_text(path, yaml.safe_dump(spec, sort_keys=False))
    return path


def run_campaign(settings: Settings, work: Path, log=print, source: Path | None = None,
                 prefix: str = "") -> dict:
    from orchestrator.coordinator.spec import parse_spec
    from services.trainer.data import read_store

    path = campaign_spec(settings, work, source, prefix)
    spec = parse_spec(path)
    out = work / f"{prefix}model"
    cmd = [str(Path(sys.executable).with_name("nnmd")), "campaign", "run", str(path),
           "-o", str(out), "--force"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    (work / f"{prefix}campaign.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0 or not (out / "model.nnmd").exists():
        raise SystemExit(f"campaign failed (exit {proc.returncode}); see {work}/{prefix}campaign.log:\n"
                         + "\n".join((proc.stdout + proc.stderr).splitlines()[-20:]))
    labels = len(read_store(spec.store, spec.name))
    log(f"[{prefix}campaign] {labels} labels in {wall:.0f} s")
    return {"labels": labels, "wall_s": wall, "model": str(out / "model.nnmd"),
            "holdout": last_holdout(spec.store, spec.name)}


def campaign_report(store: Path, campaign: str, out: Path) -> dict:
    """The campaign's report.html (`nnmd report --format html`: acceptance, energies, volumes,
    errors per model version)."""
    cmd = [str(Path(sys.executable).with_name("nnmd")), "report", "--store", str(store), "--campaign", campaign,
           "--format", "html", "-o", str(out), "--force"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"nnmd report failed (exit {proc.returncode}): {(proc.stdout + proc.stderr).strip()[-500:]}")
    return {"report": str(out), "bytes": out.stat().st_size}


def last_holdout(store: str, campaign: str) -> dict:
    """Held-out errors of the campaign's last model (labels no training saw; meV/atom, meV/A)."""
    from orchestrator.slhmc import campaign_models
    from services.store import Store

    models = campaign_models(Store(store, read_only=True), campaign)
    return dict(models[-1][1].get("holdout") or {}) if models else {}


CHGNET_SPEC = EXAMPLE / "chgnet.yaml"
CHGNET_MD_PS = 50.0  # the issue: the CHGNet student's MD stable for 50 ps at 1000 K
CHGNET_MD_T = 1000.0


def nnmd_npt(model: Path, atoms, traj: Path, temperature: float, n_steps: int, dt_fs: float,
             frame_every: int, seed: int, engine: str = "lammps"):
    """`nnmd md` NPT (anisotropic, 0 GPa, guards on) of `atoms` from a start file beside `traj`;
    its frames go to a partial file that the caller finishes. Returns (process, wall s,
    frames (possibly none), the partial file); the command and its output go to traj.log."""
    from ase.io import read, write

    start = traj.with_name(f"{traj.stem}.start.extxyz")
    start.parent.mkdir(parents=True, exist_ok=True)
    write(start, atoms, format="extxyz")
    tmp = traj.with_name(f"{traj.stem}.partial.extxyz")
    cmd = [str(Path(sys.executable).with_name("nnmd")), "md", "--model", str(model), "--structure", str(start),
           "--engine", engine, "--ensemble", "npt", "--temperature", str(temperature), "--pressure", "0",
           "--anisotropic", "--dt", str(dt_fs), "--steps", str(n_steps), "--traj-interval", str(frame_every),
           "--thermo-interval", str(frame_every * 10), "--seed", str(seed), "-o", str(tmp), "--force", "--quiet"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    traj.with_suffix(".log").write_text(" ".join(cmd) + "\n" + proc.stdout + proc.stderr)
    frames = read(tmp, index=":") if tmp.exists() and tmp.stat().st_size else []
    return proc, wall, frames, tmp


def _write_frames(frames, traj: Path, tmp: Path) -> None:
    """The kept frames to `traj` (atomically); the partial file removed."""
    from ase.io import write

    if frames:
        write(traj.with_name(f".{traj.name}.tmp"), frames, format="extxyz")
        os.replace(traj.with_name(f".{traj.name}.tmp"), traj)
    if tmp.exists():
        tmp.unlink()


def chgnet_start(phase: str, work: Path, fmax: float = 0.05, steps: int = 400) -> dict:
    """The phase's 192-atom cell relaxed by CHGNet itself (positions and the cell at zero
    pressure, ASE FIRE on a FrechetCellFilter): the start of the CHGNet student's MD, at its
    teacher's own equilibrium (the classical teacher's cell is at +11 GPa for CHGNet). A
    student's own relaxation is no start: it slides into whatever hole the model has."""
    from ase.filters import FrechetCellFilter
    from ase.io import write
    from ase.optimize import FIRE
    from chgnet.model.dynamics import CHGNetCalculator

    a = phase_structure(phase, work).copy()
    a.calc = CHGNetCalculator(use_device="cpu")
    opt = FIRE(FrechetCellFilter(a), logfile=None)
    converged = bool(opt.run(fmax=fmax, steps=steps))
    p = float(-a.get_stress()[:3].mean() / BAR_TO_EV_PER_A3 / 1e4)
    out = a.copy()
    out.calc = None
    path = work / f"chgnet_start_{phase}.extxyz"
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp, out, format="extxyz")
    os.replace(tmp, path)
    return {"steps": int(opt.nsteps), "converged": converged, "P_GPa": p,
            "V_per_atom_A3": out.get_volume() / len(out), "energy_eV": float(a.get_potential_energy())}


def teacher_check(model: Path, frames, out: Path, n: int) -> dict:
    """n of `frames`, spread evenly, labelled by CHGNet (`nnmd label --reference chgnet`, to
    `out`) and the student's errors on them: how far the student's own MD is from its
    teacher's physics (a trajectory can keep its volume while it sits in a hole of the model)."""
    from ase.io import write

    from nnmd_kernels.potential import Potential
    from services.trainer.data import read_training_data
    from services.trainer.evaluate import errors, predict

    pick = np.unique(np.linspace(0, len(frames) - 1, n).round().astype(int))
    picked = out.with_name(f"{out.stem}.picked.extxyz")
    write(picked, [frames[i] for i in pick], format="extxyz")
    t0 = time.perf_counter()
    lab = subprocess.run([str(Path(sys.executable).with_name("nnmd")), "label", "--in", str(picked), "--reference",
                          "chgnet", "-o", str(out), "--force"], cwd=ROOT, capture_output=True, text=True)
    if lab.returncode != 0:
        raise SystemExit(f"nnmd label failed (exit {lab.returncode}): {(lab.stdout + lab.stderr).strip()[-500:]}")
    err = errors(predict(Potential.load(str(model)), read_training_data([str(out)])))
    err["label_s"] = time.perf_counter() - t0
    err["times_ps"] = [float(frames[i].info.get("time_fs", 0.0)) / 1000.0 for i in pick]
    return err


def agrees(err: dict) -> bool:
    """Whether the student's errors on frames of its own MD are those of a working model."""
    return (err.get("force_rmse_mev_per_angstrom", np.inf) <= CHGNET_AGREE_FORCE
            and err.get("energy_rmse_mev_per_atom", np.inf) <= CHGNET_AGREE_ENERGY)


CHGNET_REFINE_ROUNDS = 5  # at most this many rounds of labels from the student's own MD
CHGNET_REFINE_PS = 10.0  # each round's probe: NPT MD at CHGNET_MD_T for up to this long
CHGNET_REFINE_LABELS = 24  # frames of a failed probe labelled by CHGNet per round
CHGNET_REFINE_MINUTES = 6.0  # each round's warm-start re-training
# the student's own MD agrees with CHGNet when, on frames of it labelled by CHGNet, the force
# RMSE is at most this (meV/A; the campaign's held-out labels: ~150) and the energy RMSE this
# (meV/atom): a student in a hole of its own is off by 100s of meV/atom and > 1 eV/A
CHGNET_AGREE_FORCE = 250.0
CHGNET_AGREE_ENERGY = 20.0


def campaign_split(store: Path, campaign: str, fraction: float, train_path: Path, test_path: Path) -> dict:
    """The campaign's labels as two extxyz files: its training labels and its held-out ones
    (the campaign's own split: orchestrator.slhmc.is_held_out on the label names)."""
    from ase.io import write

    from orchestrator.slhmc import is_held_out
    from services.runtime.convert import to_atoms
    from services.store import Store
    from services.trainer.data import store_label_name

    train, test = [], []
    for rec in Store(str(store), read_only=True).read(campaign=campaign):
        if not np.isfinite(rec.labels.energy):
            continue
        a = to_atoms(rec.structure, rec.labels)
        name = store_label_name(rec.structure.id, rec.provenance.step)
        (test if is_held_out(name, fraction) else train).append(a)
    for frames, path in ((train, train_path), (test, test_path)):
        tmp = path.with_name(f".{path.name}.tmp")
        write(tmp, frames, format="extxyz")
        os.replace(tmp, path)
    return {"train": len(train), "test": len(test)}


def chgnet_refine_round(r: int, work: Path, start, seed: int, model: str) -> dict:
    """Round r of labels from the student's own MD (active learning, as DP-GEN's loop): the
    current student (the campaign's model, or round r-1's) runs NPT MD at CHGNET_MD_T for up
    to CHGNET_REFINE_PS from CHGNet's relaxed cell; CHGNET_REFINE_LABELS of its frames, spread
    evenly over it, are labelled by CHGNet (`nnmd label --reference chgnet`) and the student
    scored on them. A run that the guards let finish and whose frames the student gets right
    (agrees()) ends the loop; otherwise a warm-start re-training (`nnmd train --init`) on the
    campaign's training labels plus every round's labels so far, scored on the campaign's
    held-out labels, makes round r's model."""
    folder = work / "chgnet_refine"
    folder.mkdir(parents=True, exist_ok=True)
    model = Path(model)
    n = int(round(CHGNET_REFINE_PS * 1000))
    traj = folder / f"probe_{r}.extxyz"
    proc, wall, frames, tmp = nnmd_npt(model, start, traj, CHGNET_MD_T, n, 1.0, 20, seed + 101 * r)
    _write_frames(frames, traj, tmp)
    ps = float(frames[-1].info.get("time_fs", 0.0)) / 1000.0 if frames else 0.0
    out = {"round": r, "model": str(model), "probe_ps": ps, "probe_exit": proc.returncode,
           "probe_wall_s": wall, "probe_why": (proc.stdout + proc.stderr).strip().splitlines()[-1:],
           "V_per_atom_A3": [frames[0].get_volume() / len(frames[0]), frames[-1].get_volume() / len(frames[-1])]
           if frames else []}
    if len(frames) < 2:
        raise SystemExit(f"chgnet refine round {r}: the probe made {len(frames)} frames; see {traj.with_suffix('.log')}")
    labelled = folder / f"labels_{r}.extxyz"
    out["probe_errors"] = teacher_check(model, frames, labelled, CHGNET_REFINE_LABELS)
    out["held"] = proc.returncode == 0 and ps >= CHGNET_REFINE_PS - 1e-6 and agrees(out["probe_errors"])
    if out["held"]:
        return out
    import yaml

    from orchestrator.coordinator.spec import parse_spec

    train_cfg = parse_spec(CHGNET_SPEC).config.train_settings()  # the campaign's own training settings
    train_cfg.update(max_minutes=CHGNET_REFINE_MINUTES, max_epochs=60, warmup_epochs=0, seed=seed + r)
    cfg_path = folder / "train.yaml"
    cfg_path.write_text(yaml.safe_dump(train_cfg))
    data = [str(work / "chgnet_train.extxyz")] + [str(folder / f"labels_{k}.extxyz") for k in range(r + 1)]
    new = folder / f"model_{r}.nnmd"
    t0 = time.perf_counter()
    tr = subprocess.run([str(Path(sys.executable).with_name("nnmd")), "train", "--data", *data, "--test",
                         str(work / "chgnet_test.extxyz"), "--config", str(cfg_path), "--init", str(model), "-o",
                         str(new), "--force", "--no-progress", "--report-dir", str(folder / f"training_{r}")],
                        cwd=ROOT, capture_output=True, text=True)
    (folder / f"training_{r}.log").write_text(tr.stdout + tr.stderr)
    if tr.returncode != 0:
        raise SystemExit(f"nnmd train failed (exit {tr.returncode}): {(tr.stdout + tr.stderr).strip()[-500:]}")
    out["train_s"] = time.perf_counter() - t0
    metrics = json.loads((folder / f"training_{r}" / "metrics.json").read_text())
    out["test"] = metrics["errors"].get("test", {})  # the campaign's held-out labels
    out["new_model"] = str(new)
    return out


def chgnet_md(model: Path, start, traj: Path, seed: int) -> dict:
    """The CHGNet student's NPT (anisotropic, 0 GPa) MD of a 192-atom cell at 1000 K for
    CHGNET_MD_PS at 1 fs (`nnmd md --engine lammps`, guards on) from CHGNet's relaxed cell.
    Stable = the run ends normally (no guard stop), its volume after the first 5 ps stays
    within MAX_VOLUME_CHANGE of its mean, and the student agrees with CHGNet on 10 of its
    frames (agrees(): a trajectory in a hole of the model is not a stable one)."""
    n = int(round(CHGNET_MD_PS * 1000))
    proc, wall, frames, tmp = nnmd_npt(model, start, traj, CHGNET_MD_T, n, 1.0, 500, seed)
    _write_frames(frames, traj, tmp)
    ps = float(frames[-1].info.get("time_fs", 0.0)) / 1000.0 if frames else 0.0
    t = np.array([a.info.get("time_fs", 0.0) for a in frames]) / 1000.0
    v = np.array([a.get_volume() for a in frames]) if frames else np.array([np.nan])
    prod = v[t >= 5.0] if frames and (t >= 5.0).sum() >= 2 else v
    drift = float(np.nanmax(np.abs(prod / np.nanmean(prod) - 1.0)))
    check = teacher_check(model, frames, traj.with_name(f"{traj.stem}.chgnet.extxyz"), 10) if len(frames) >= 2 else {}
    return {"exit": proc.returncode, "ps": ps, "wall_s": wall, "ms_per_step": 1000.0 * wall / n,
            "frames": len(frames), "max_volume_change": drift,
            "start_V_per_atom_A3": start.get_volume() / len(start),
            "mean_V_A3": float(np.nanmean(prod)), "why": (proc.stdout + proc.stderr).strip().splitlines()[-1:],
            "teacher_check": check,
            "stable": proc.returncode == 0 and ps >= CHGNET_MD_PS - 1e-6 and drift < MAX_VOLUME_CHANGE
            and agrees(check)}


# ------------------------------------------------------------------ teacher MD (LAMMPS)


def phase_structure(phase: str, work: Path | None = None):
    """The 192-atom cell of a phase: the teacher-relaxed one in WORK when there, else
    the shipped (unrelaxed) structure."""
    from ase.io import read

    if work is not None and (work / f"start_{phase}.extxyz").exists():
        return read(work / f"start_{phase}.extxyz")
    name, frame = PHASES[phase]
    return read(EXAMPLE / name, index=frame)


def relax_start(phase: str, work: Path) -> dict:
    """The phase's cell relaxed by the teacher (positions and a, b, c at zero pressure):
    the common starting point of the teacher's and the student's MD, so neither barostat
    starts from the shipped structure's -11 GPa (DFT cell, larger than the teacher's)."""
    from ase.io import write

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from llzo_structures import relax

    atoms, e = relax(phase_structure(phase))
    path = work / f"start_{phase}.extxyz"
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp, atoms, format="extxyz")
    os.replace(tmp, path)
    return {"energy_eV": e, "cell_A": atoms.cell.lengths().tolist(), "V_A3": atoms.get_volume()}


def _snapshot(lmp, elements, time_fs: float):
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    boxlo, boxhi, xy, yz, xz, _, _ = lmp.extract_box()
    lo, hi = np.array(boxlo), np.array(boxhi)
    cell = np.array([[hi[0] - lo[0], 0, 0], [xy, hi[1] - lo[1], 0], [xz, yz, hi[2] - lo[2]]])
    n = lmp.get_natoms()
    x = np.array(lmp.gather_atoms("x", 1, 3), dtype=float).reshape(n, 3) - lo
    f = np.array(lmp.gather_atoms("f", 1, 3), dtype=float).reshape(n, 3)
    t = np.array(lmp.gather_atoms("type", 0, 1), dtype=int)
    a = Atoms([elements[k - 1] for k in t], positions=x, cell=cell, pbc=True)
    # the virial part of the pressure tensor (no kinetic term), as the teacher's labels:
    # LAMMPS order xx yy zz xy xz yz in bar -> ASE stress (Voigt xx yy zz yz xz xy) = -P
    thermo = lmp.last_thermo()
    p = [float(thermo[f"c_nnmd_pv[{i}]"]) for i in range(1, 7)]
    stress = -np.array([p[0], p[1], p[2], p[5], p[4], p[3]]) * BAR_TO_EV_PER_A3
    a.calc = SinglePointCalculator(a, energy=float(thermo["PotEng"]), forces=f, stress=stress)
    a.info["time_fs"] = float(time_fs)
    a.info["temperature_K"] = float(thermo["Temp"])
    return a


def teacher_md(atoms, temperature: float, settings: Settings, traj: Path, seed: int) -> dict:
    """NPT MD of the teacher (Nose-Hoover, aniso, zero pressure), frames to traj (extxyz)."""
    from ase.io import write

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from llzo_structures import _lammps

    dt = settings.dt_fs
    lmp, els = _lammps(atoms)
    try:
        lmp.commands_list([
            f"timestep {dt / 1000.0}",
            f"velocity all create {temperature} {seed} mom yes rot yes dist gaussian",
            f"fix nnmd_npt all npt temp {temperature} {temperature} {100 * dt / 1000} "
            f"aniso 0.0 0.0 {1000 * dt / 1000}",
            "compute nnmd_pv all pressure NULL virial",
            "thermo_style custom step temp pe press lx ly lz vol "
            + " ".join(f"c_nnmd_pv[{i}]" for i in range(1, 7)),
            f"thermo {settings.frame_every}", "run 0"])
        t0 = time.perf_counter()
        if settings.equil_steps:
            lmp.command(f"run {settings.equil_steps} pre no post no")
        frames = [_snapshot(lmp, els, 0.0)]
        for k in range(1, settings.prod_steps // settings.frame_every + 1):
            lmp.command(f"run {settings.frame_every} pre no post no")
            frames.append(_snapshot(lmp, els, k * settings.frame_every * dt))
        wall = time.perf_counter() - t0
    finally:
        lmp.close()
    tmp = traj.with_name(f".{traj.name}.tmp")
    traj.parent.mkdir(parents=True, exist_ok=True)
    write(tmp, frames, format="extxyz")
    os.replace(tmp, traj)
    n = settings.equil_steps + settings.prod_steps
    return {"ms_per_step": 1000.0 * wall / n, "wall_s": wall, "frames": len(frames),
            "mean_T_K": float(np.mean([a.info["temperature_K"] for a in frames])),
            "mean_V_A3": float(np.mean([a.get_volume() for a in frames]))}


# ------------------------------------------------------------------ student MD (nnmd md)


def student_md(model: Path, atoms, temperature: float, settings: Settings, traj: Path,
               seed: int, work: Path) -> dict:
    """`nnmd md` NPT (anisotropic) from the same start; equilibration frames dropped later."""
    n = settings.equil_steps + settings.prod_steps
    proc, wall, frames, tmp = nnmd_npt(model, atoms, traj, temperature, n, settings.dt_fs, settings.frame_every,
                                       seed, settings.engine)
    if proc.returncode != 0:
        return {"failed": True, "exit": proc.returncode, "wall_s": wall,
                "why": (proc.stdout + proc.stderr).strip().splitlines()[-1:]}
    v = np.array([a.get_volume() for a in frames])
    drift = float(np.max(np.abs(v / v[0] - 1.0)))
    keep = frames[settings.equil_steps // settings.frame_every:]
    t_first = keep[0].info["time_fs"]
    for a in keep:  # production time origin at 0, as the teacher's
        a.info["time_fs"] = float(a.info["time_fs"] - t_first)
    _write_frames(keep, traj, tmp)
    return {"ms_per_step": 1000.0 * wall / n, "wall_s": wall, "frames": len(keep),
            "mean_V_A3": float(np.mean([a.get_volume() for a in keep])),
            "max_volume_change": drift, "stable": drift < MAX_VOLUME_CHANGE}


# ------------------------------------------------------------------ analysis


def md_name(who: str, phase: str, temperature: float, replica: int) -> str:
    """The stage of one MD run (its trajectory: md/<name without '_md'>.extxyz); replica 0
    keeps the name of the single run of earlier versions, so their runs are reused."""
    return f"{who}_md_{phase}_{temperature:g}" + (f"_r{replica}" if replica else "")


REPLICA_SEED_STRIDE = 1000  # replica r's velocity seed: seed + temperature index + 1000 r


def analyze_run(trajs, temperature: float, blocks: int) -> dict:
    """nnmd's analysis of independent runs (one path or several, `nnmd analyze A B C`): D
    with its error (runs' scatter and block errors), verdict, volume, NE sigma."""
    from ase.io import read

    from nnmd_kernels.analysis import A2_PER_PS_TO_CM2_PER_S as TO_CM2
    from orchestrator.commands.analyze import analyze

    trajs = [trajs] if isinstance(trajs, (str, Path)) else list(trajs)
    runs = [read(tr, index=":") for tr in trajs]  # one run: pooled_diffusion gives it back
    res, curves = analyze(runs, "Li", temperature, charges={"Li": 1.0}, n_blocks=blocks)
    return {"D_cm2_per_s": res["D_cm2_per_s"], "D_err_cm2_per_s": res["D_err_cm2_per_s"],
            "D_runs_cm2_per_s": [v * TO_CM2 for v in res.get("D_runs_A2_per_ps", [res["D_A2_per_ps"]])],
            "D_err_between_runs_cm2_per_s": (res["D_err_between_runs_A2_per_ps"] * TO_CM2
                                             if "D_err_between_runs_A2_per_ps" in res else None),
            "n_runs": len(runs),
            "diffusive": bool(res["diffusive"]), "note": res["diffusive_note"],
            "V_A3": res["mean_volume_A3"], "sigma_S_per_cm": res["sigma_S_per_cm"],
            "duration_ps": res["duration_ps"], "window_ps": res["window_ps"],
            "msd_t_ps": [float(v) for v in curves["t_ps"][::max(1, len(curves["t_ps"]) // 200)]],
            "msd_A2": [float(v) for v in curves["msd"][::max(1, len(curves["t_ps"]) // 200)]]}


def arrhenius(temperatures, d, d_err, use=None) -> dict | None:
    """Weighted fit ln D = ln D0 - Ea / (kB T) over the points in `use` (default: D > 0).

    Weights 1/sigma_lnD^2 with sigma_lnD = D_err / D. Returns Ea (eV) with its standard
    error (from the weighted covariance, scaled by the reduced chi^2 when > 1), ln D0 and
    the points used; None with fewer than 2 usable points.
    """
    t = np.asarray(temperatures, dtype=float)
    d = np.asarray(d, dtype=float)
    e = np.asarray(d_err, dtype=float)
    ok = (d > 0) & np.isfinite(d) & (e > 0)
    if use is not None:
        ok &= np.asarray(use, dtype=bool)
    if ok.sum() < 2:
        return None
    x = 1.0 / (KB_EV * t[ok])
    y = np.log(d[ok])
    s = e[ok] / d[ok]
    w = 1.0 / s ** 2
    a = np.stack([np.ones_like(x), -x], axis=1)
    aw = a * w[:, None]
    cov = np.linalg.inv(a.T @ aw)
    coef = cov @ (aw.T @ y)
    n = int(ok.sum())
    if n > 2:
        chi2 = float(((y - a @ coef) ** 2 * w).sum() / (n - 2))
        cov = cov * max(1.0, chi2)
    return {"Ea_eV": float(coef[1]), "Ea_err_eV": float(math.sqrt(cov[1, 1])),
            "lnD0": float(coef[0]), "cov": cov.tolist(), "n_points": n,
            "temperatures_K": [float(v) for v in t[ok]]}


def extrapolate(fit: dict, temperature: float) -> tuple[float, float]:
    """D (cm^2/s) and its standard error at a temperature from an Arrhenius fit."""
    g = np.array([1.0, -1.0 / (KB_EV * temperature)])
    lnd = fit["lnD0"] - fit["Ea_eV"] / (KB_EV * temperature)
    var = float(g @ np.asarray(fit["cov"]) @ g)
    d = math.exp(lnd)
    return d, d * math.sqrt(max(var, 0.0))


def sigma_ne(d_cm2_s: float, volume_a3: float, temperature: float, n_li: int = N_LI_192) -> float:
    from nnmd_kernels.analysis.transport import nernst_einstein_conductivity

    return nernst_einstein_conductivity(d_cm2_s, n_li, volume_a3, temperature, 1.0)


def phase_summary(temps, runs: dict) -> dict:
    """The schema's per-phase block (+ extra keys, + "fits") from analyze_run results per
    (who, T).

    Both Arrhenius fits use the same temperatures: those where the teacher's and the
    student's runs are both diffusive (and stable), so that Ea and sigma at 600 K compare
    like with like; a point where only one side is diffusive would otherwise tilt that
    side's fit alone (the fresh-clone run of 2026-12-02: cubic 700 K). Each side's fit over
    all of its own diffusive points is kept in extra as Ea_own_points_eV."""
    out: dict = {}
    extra: dict = {}
    fits: dict = {}
    diffusive = {who: [bool(r and r["diffusive"]) for r in (runs.get((who, T)) for T in temps)]
                 for who in ("teacher", "student")}
    common = [a and b for a, b in zip(diffusive["teacher"], diffusive["student"])]
    for who in ("teacher", "student"):
        rows = [runs.get((who, T)) for T in temps]
        d = [r["D_cm2_per_s"] if r else None for r in rows]
        e = [r["D_err_cm2_per_s"] if r else None for r in rows]
        out[f"{who}_D"] = d
        out[f"{who}_D_err"] = e
        use = diffusive[who]
        dd = [x if x is not None else np.nan for x in d]
        ee = [x if x is not None else np.nan for x in e]
        fit = arrhenius(temps, dd, ee, common)
        own = arrhenius(temps, dd, ee, use)
        fits[who] = fit
        out[f"{who}_Ea_eV"] = fit["Ea_eV"] if fit else None
        vols = [r["V_A3"] for r in rows if r and r.get("stable", True)]
        out[f"{who}_V_A3"] = float(np.mean(vols)) if vols else None
        info = {"diffusive": use, "stable": [bool(r and r.get("stable", True)) for r in rows],
                "V_A3_per_T": [r["V_A3"] if r else None for r in rows],
                "Ea_err_eV": fit["Ea_err_eV"] if fit else None,
                "fit_points": fit["n_points"] if fit else 0,
                "fit_temperatures_K": fit["temperatures_K"] if fit else [],
                "Ea_own_points_eV": own["Ea_eV"] if own else None,
                "Ea_own_points_err_eV": own["Ea_err_eV"] if own else None,
                "own_points_temperatures_K": own["temperatures_K"] if own else []}
        if fit:
            # sigma at 600 K: D extrapolated, volume of the lowest-temperature run
            d600, d600_err = extrapolate(fit, T_EXTRAPOLATE)
            v = next((r["V_A3"] for r in rows if r and r.get("stable", True)),
                     next(r["V_A3"] for r in rows if r))
            info.update(D_600K=d600, D_600K_err=d600_err,
                        sigma_600K_S_per_cm=sigma_ne(d600, v, T_EXTRAPOLATE),
                        sigma_600K_err_S_per_cm=sigma_ne(d600_err, v, T_EXTRAPOLATE))
        extra[who] = info
    out["extra"] = extra
    out["fits"] = fits
    return out


def build_result(teacher: str, labels: int, wall_s: float, temps, phases: dict,
                 rmse: dict, extra: dict | None = None) -> dict:
    """The issue's schema (exactly its keys), plus an "extra" block beside it."""
    keys = ("teacher_D", "teacher_D_err", "student_D", "student_D_err", "teacher_Ea_eV",
            "student_Ea_eV", "teacher_V_A3", "student_V_A3")
    out = {"teacher": str(teacher), "labels": int(labels), "wall_s": float(wall_s),
           "temperatures_K": [float(t) for t in temps],
           "phases": {p: {k: phases[p][k] for k in keys} for p in ("cubic", "tetragonal")},
           "force_rmse_meV_A": {f"{float(t):g}": float(v) for t, v in rmse.items()}}
    if extra is not None:
        out["extra"] = extra
    return out


SCHEMA_KEYS = {"teacher", "labels", "wall_s", "temperatures_K", "phases", "force_rmse_meV_A"}


def acceptance(result: dict) -> dict:
    """The issue's acceptance checks on a result (its schema + extra.phases), each with the
    numbers it compared and a verdict (None where it cannot be decided):

    D: at each T where the teacher's D has a standard error < 15 % and both runs are
       diffusive and stable: |D_s - D_t| <= max(0.25 D_t, 2 sqrt(err_s^2 + err_t^2));
    Ea: |Ea_s - Ea_t| <= 0.05 eV (both fitted);
    V: per temperature |V_s / V_t - 1| <= 0.5 %;
    ratio: the student's sigma_cubic / sigma_tetragonal at 600 K (extrapolated) within 30 %
       of the teacher's (D ratio times the volume ratio, as sigma = n q^2 D / kT)."""
    temps = result["temperatures_K"]
    ex = (result.get("extra") or {}).get("phases") or {}
    out: dict = {"D": [], "Ea": {}, "V": [], "ratio": None}
    for p in ("cubic", "tetragonal"):
        ph = result["phases"][p]
        info = ex.get(p) or {}
        for k, t in enumerate(temps):
            dt, et = ph["teacher_D"][k], ph["teacher_D_err"][k]
            ds, es = ph["student_D"][k], ph["student_D_err"][k]
            ok_runs = all(bool((info.get(w) or {}).get(key, [True] * len(temps))[k])
                          for w in ("teacher", "student") for key in ("diffusive", "stable"))
            row = {"phase": p, "T": t, "teacher_D": dt, "student_D": ds}
            if None in (dt, et, ds, es) or not dt > 0:
                row["verdict"] = None
            else:
                row["teacher_rel_err"] = et / dt
                tol = max(0.25 * dt, 2.0 * float(np.hypot(es, et)))
                row.update(tolerance=tol, deviation=abs(ds - dt))
                row["verdict"] = (abs(ds - dt) <= tol) if (et / dt < 0.15 and ok_runs) else None
            out["D"].append(row)
            vt = (info.get("teacher") or {}).get("V_A3_per_T", [None] * len(temps))[k]
            vs = (info.get("student") or {}).get("V_A3_per_T", [None] * len(temps))[k]
            dv = (vs / vt - 1.0) if (vt and vs) else None
            out["V"].append({"phase": p, "T": t, "teacher_V_A3": vt, "student_V_A3": vs, "rel": dv,
                             "verdict": None if dv is None else abs(dv) <= 0.005})
        et_, es_ = ph["teacher_Ea_eV"], ph["student_Ea_eV"]
        out["Ea"][p] = {"teacher": et_, "student": es_,
                        "verdict": None if None in (et_, es_) else abs(es_ - et_) <= 0.05}
        # beside the verdict (the rule on the point estimates): how many combined
        # standard errors the difference is, i.e. whether the runs could tell at all
        ee = [(info.get(w) or {}).get("Ea_err_eV") for w in ("teacher", "student")]
        if None not in (et_, es_) and None not in ee:
            comb = float(np.hypot(*ee))
            out["Ea"][p].update(combined_err=comb, z=abs(es_ - et_) / comb if comb > 0 else None)
    sig = {(p, w): (ex.get(p) or {}).get(w, {}).get("sigma_600K_S_per_cm")
           for p in ("cubic", "tetragonal") for w in ("teacher", "student")}
    if all(v for v in sig.values()):
        rt = sig[("cubic", "teacher")] / sig[("tetragonal", "teacher")]
        rs = sig[("cubic", "student")] / sig[("tetragonal", "student")]
        out["ratio"] = {"teacher": rt, "student": rs, "rel": rs / rt - 1.0, "verdict": abs(rs / rt - 1.0) <= 0.30}
        # the ratios' own relative standard errors (from the extrapolated sigma errors)
        rel = {}
        for w in ("teacher", "student"):
            errs = [(ex.get(p) or {}).get(w, {}).get("sigma_600K_err_S_per_cm") for p in ("cubic", "tetragonal")]
            if None not in errs:
                rel[w] = float(np.hypot(errs[0] / sig[("cubic", w)], errs[1] / sig[("tetragonal", w)]))
        if len(rel) == 2:
            out["ratio"].update(teacher_rel_err=rel["teacher"], student_rel_err=rel["student"])
    verdicts = ([r["verdict"] for r in out["D"] + out["V"]] + [v["verdict"] for v in out["Ea"].values()]
                + [out["ratio"]["verdict"] if out["ratio"] else None])
    out["all_decided_pass"] = all(v for v in verdicts if v is not None)
    out["undecided"] = sum(v is None for v in verdicts)
    return out


def check_schema(d: dict) -> None:
    """ValueError unless d has the issue's schema (extra top-level 'extra' allowed)."""
    missing = SCHEMA_KEYS - set(d)
    if missing:
        raise ValueError(f"missing keys {sorted(missing)}")
    n = len(d["temperatures_K"])
    for p in ("cubic", "tetragonal"):
        ph = d["phases"][p]
        for k in ("teacher_D", "teacher_D_err", "student_D", "student_D_err"):
            if len(ph[k]) != n:
                raise ValueError(f"phases.{p}.{k}: {len(ph[k])} values for {n} temperatures")
        for k in ("teacher_Ea_eV", "student_Ea_eV", "teacher_V_A3", "student_V_A3"):
            if k not in ph:
                raise ValueError(f"phases.{p}.{k} missing")


# ------------------------------------------------------------------ tables (docs/llzo.md)


def _e(x, digits=2):
    return "-" if x is None else f"{x:.{digits}e}"


def _g(x, fmt=".3f"):
    return "-" if x is None else format(x, fmt)


def results_table(res: dict) -> list[str]:
    """Per phase and temperature: D of both with errors, their ratio, the D check, volumes."""
    ex = res.get("extra") or {}
    acc = ex.get("acceptance") or {}
    d_acc = {(r["phase"], float(r["T"])): r for r in acc.get("D", [])}
    out = ["| phase | T (K) | teacher D (cm^2/s) | student D (cm^2/s) | student / teacher | "
           "D check | teacher V (A^3) | student V (A^3) |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for p, ph in res["phases"].items():
        e = (ex.get("phases") or {}).get(p) or {}
        n = len(res["temperatures_K"])
        diff = {w: (e.get(w) or {}).get("diffusive", [None] * n) for w in ("teacher", "student")}
        vol = {w: (e.get(w) or {}).get("V_A3_per_T", [None] * n) for w in ("teacher", "student")}
        for k, t in enumerate(res["temperatures_K"]):
            td, te, sd, se = (ph["teacher_D"][k], ph["teacher_D_err"][k], ph["student_D"][k],
                              ph["student_D_err"][k])
            r = d_acc.get((p, float(t)), {})
            if r.get("verdict") is not None:
                check = "pass" if r["verdict"] else "FAIL"
            elif diff["teacher"][k] is False or diff["student"][k] is False:
                who = " and ".join(w for w in ("teacher", "student") if diff[w][k] is False)
                check = f"undecided ({who} not diffusive)"
            elif td and te and te / td >= 0.15:
                check = "undecided (teacher error >= 15 %)"
            else:
                check = "-"
            vt, vs = vol["teacher"][k], vol["student"][k]
            rel = f"{100 * (vs - vt) / vt:+.2f} %" if None not in (vt, vs) else "-"
            ratio = f"{sd / td:.2f}" if td and sd else "-"
            pct = f" ({100 * te / td:.0f} %)" if td and te is not None else ""
            out.append(f"| {p} | {t:g} | {_e(td)} +- {_e(te, 1)}{pct} | "
                       f"{_e(sd)} +- {_e(se, 1)} | {ratio} | {check} | {_g(vt, '.1f')} | "
                       f"{_g(vs, '.1f')} ({rel}) |")
    return out


def fits_table(res: dict) -> list[str]:
    """Per phase: Ea of both (fitted over the same temperatures), sigma at 600 K beside the
    source's and experiment's, and each side's Ea over all of its own diffusive points."""
    ex = (res.get("extra") or {}).get("phases") or {}
    out = ["| phase | fit T (K) | teacher Ea (eV) | student Ea (eV) | teacher sigma 600 K (S/cm) | "
           "student sigma 600 K (S/cm) | source NNP-MD 600 K | experiment | Ea, own diffusive points "
           "(teacher / student) |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for p, ph in res["phases"].items():
        t, s = (ex.get(p) or {}).get("teacher") or {}, (ex.get(p) or {}).get("student") or {}
        fit_t = ", ".join(f"{v:g}" for v in t.get("fit_temperatures_K", [])) or "-"
        own = " / ".join(f"{_g(w.get('Ea_own_points_eV'))} ({len(w.get('own_points_temperatures_K', []))} T)"
                         for w in (t, s))
        out.append(f"| {p} | {fit_t} | {_g(ph['teacher_Ea_eV'])} +- {_g(t.get('Ea_err_eV'))} | "
                   f"{_g(ph['student_Ea_eV'])} +- {_g(s.get('Ea_err_eV'))} | "
                   f"{_g(t.get('sigma_600K_S_per_cm'))} +- {_g(t.get('sigma_600K_err_S_per_cm'))} | "
                   f"{_g(s.get('sigma_600K_S_per_cm'))} +- {_g(s.get('sigma_600K_err_S_per_cm'))} | "
                   f"{SOURCE_SIGMA_600K[p]:g} | {EXPERIMENT_SIGMA[p]:g} | {own} |")
    return out


def summary_lines(res: dict) -> list[str]:
    """One line per check and the stage times."""
    ex = res.get("extra") or {}
    acc = ex.get("acceptance") or {}
    rm = ex.get("force_rmse") or {}
    out = ["force RMSE on the teacher's 192-atom frames: " + (", ".join(
        f"{t} K {v['force_rmse_meV_A']:.1f} meV/A ({v['n_structures']} frames, "
        f"{v['energy_rmse_meV_atom']:.3f} meV/atom)" for t, v in rm.items()) or ", ".join(
        f"{t} K {v:.1f} meV/A" for t, v in res["force_rmse_meV_A"].items()))]
    settings = ex.get("settings") or {}
    if settings:
        out.append(f"MD per phase, temperature and who: {settings.get('replicas', 1)} independent run(s) of "
                   f"{settings['prod_steps'] * settings['dt_fs'] / 1000:g} ps after "
                   f"{settings['equil_steps'] * settings['dt_fs'] / 1000:g} ps of equilibration")
    for p, r in (acc.get("Ea") or {}).items():
        out.append(f"Ea {p}: student {_g(r.get('student'))} vs teacher {_g(r.get('teacher'))} eV "
                   f"-> {r.get('verdict')}")
    vs = [r["rel"] for r in acc.get("V", []) if r.get("rel") is not None]
    if vs:
        out.append(f"V: student - teacher {100 * min(vs):+.2f} .. {100 * max(vs):+.2f} %")
    r = acc.get("ratio")
    if r:
        out.append(f"sigma_c/sigma_t 600 K: student {r['student']:.3g} vs teacher {r['teacher']:.3g} "
                   f"({100 * r['rel']:+.0f} %) -> {r['verdict']}")
    ds = [r["student_D"] / r["teacher_D"] for r in acc.get("D", [])
          if r.get("student_D") and r.get("teacher_D")]
    dec = [r["student_D"] / r["teacher_D"] for r in acc.get("D", []) if r.get("verdict") is not None]
    if ds:
        out.append(f"D student/teacher: all {min(ds):.2f}-{max(ds):.2f}; decided ({len(dec)}) "
                   + (f"{min(dec):.2f}-{max(dec):.2f}" if dec else "-"))
    out.append(f"all decided pass: {acc.get('all_decided_pass')}; undecided {acc.get('undecided')}")
    kinds: dict[str, list[float]] = {}
    for k, v in (ex.get("stage_wall_s") or {}).items():
        if not k.startswith("chgnet_"):
            kind = next((x for x in ("teacher_md", "student_md", "analysis", "campaign_start",
                                     "relax") if k.startswith(x)), k)
            kinds.setdefault(kind, []).append(v)
    out.append(f"labels {res['labels']}; wall_s {res['wall_s']:.0f}; stage wall s: " + ", ".join(
        f"{k} {v[0]:.0f}" if len(v) == 1 else f"{k} {len(v)} x {min(v):.0f}-{max(v):.0f}"
        for k, v in kinds.items()))
    return out


def chgnet_lines(res: dict) -> list[str]:
    """The CHGNet distillation (--chgnet): start, campaign, refinement rounds, final MD."""
    c = (res.get("extra") or {}).get("chgnet")
    if not c:
        return ["(no CHGNet stages in this JSON)"]
    st, camp = c["start"], c["campaign"]
    h = camp.get("holdout") or {}
    out = [f"start: {st['steps']} FIRE steps, {st['P_GPa']:.2f} GPa, "
           f"{st['V_per_atom_A3']:.2f} A^3/atom",
           f"campaign: {camp['labels']} labels, {camp['wall_s'] / 60:.1f} min; held-out "
           f"({h.get('n')}): {h.get('energy_rmse_mev_per_atom', 0):.2f} meV/atom, "
           f"{h.get('force_rmse_mev_per_angstrom', 0):.0f} meV/A, {h.get('stress_rmse_gpa', 0):.2f} GPa",
           "",
           "| round | its MD at 1000 K | student vs CHGNet on its frames | "
           "re-trained: held-out (campaign labels) |", "| --- | --- | --- | --- |"]
    for r in c["refine"]:
        pe, t = r.get("probe_errors") or {}, r.get("test") or {}
        v = r.get("V_per_atom_A3") or [None, None]
        md = (f"{r.get('probe_ps', 0):g} ps, {v[0]:.1f} -> {v[-1]:.1f} A^3/atom"
              + ("" if r.get("probe_exit", 0) == 0 else f" (guard stop, exit {r['probe_exit']})"))
        vs = (f"{pe.get('energy_rmse_mev_per_atom', 0):.1f} meV/atom, "
              f"{pe.get('force_rmse_mev_per_angstrom', 0):.0f} meV/A, "
              f"{pe.get('stress_rmse_gpa', 0):.1f} GPa" + (": holds" if r.get("held") else ""))
        tr = ("-" if r.get("held") else
              f"{t.get('energy_rmse_mev_per_atom', 0):.2f} meV/atom, "
              f"{t.get('force_rmse_mev_per_angstrom', 0):.0f} meV/A, {t.get('stress_rmse_gpa', 0):.2f} "
              f"GPa ({r.get('train_s', 0):.0f} s)")
        out.append(f"| {r['round']} | {md} | {vs} | {tr} |")
    m = c["md"]
    tc = m.get("teacher_check") or {}
    out += ["", f"final MD: exit {m['exit']}, {m['ps']:g} ps, {m['wall_s']:.0f} s, "
            f"{m['ms_per_step']:.1f} ms/step, volume within {100 * m['max_volume_change']:.1f} % of its "
            f"mean ({m['mean_V_A3'] / 192:.2f} A^3/atom), vs CHGNet on {tc.get('n_structures')} frames: "
            f"{tc.get('energy_rmse_mev_per_atom', 0):.1f} meV/atom, "
            f"{tc.get('force_rmse_mev_per_angstrom', 0):.0f} meV/A, {tc.get('stress_rmse_gpa', 0):.2f} GPa; "
            f"stable {m['stable']}; model {Path(m['model']).name}"]
    stage = res["extra"].get("stage_wall_s") or {}
    out.append("CHGNet stage wall s: " + ", ".join(f"{k} {v:.0f}" for k, v in stage.items()
                                                 if k.startswith("chgnet_"))
               + f"; total {sum(v for k, v in stage.items() if k.startswith('chgnet_')) / 60:.1f} min")
    return out


def acceptance_table(result: dict) -> list[str]:
    """The acceptance checks (extra.acceptance) with the numbers each compared."""
    lines: list[str] = []
    acc = (result.get("extra") or {}).get("acceptance")
    if acc:
        def mark(v):
            return "-" if v is None else ("pass" if v else "FAIL")

        lines += ["| acceptance check | numbers | verdict |", "| --- | --- | --- |"]
        for r in acc["D"]:
            num = (f"D_s {r['student_D']:.3g} vs D_t {r['teacher_D']:.3g} (tolerance {r['tolerance']:.2g}; "
                   f"teacher error {100 * r['teacher_rel_err']:.0f} %)" if "tolerance" in r else "no D")
            lines.append(f"| D {r['phase']} {r['T']:g} K | {num} | {mark(r['verdict'])} |")
        for p, r in acc["Ea"].items():
            num = (f"{r['student']:.3f} vs {r['teacher']:.3f} eV" if None not in (r["student"], r["teacher"])
                   else "not fitted")
            if r.get("z") is not None:
                num += f" (difference {r['z']:.1f} x the combined standard error {r['combined_err']:.3f} eV)"
            lines.append(f"| Ea {p} | {num} | {mark(r['verdict'])} |")
        for r in acc["V"]:
            num = f"{100 * r['rel']:+.2f} %" if r["rel"] is not None else "no volume"
            lines.append(f"| V {r['phase']} {r['T']:g} K | {num} | {mark(r['verdict'])} |")
        r = acc["ratio"]
        lines.append("| sigma_c / sigma_t at 600 K | "
                     + (f"{r['student']:.3g} vs {r['teacher']:.3g} ({100 * r['rel']:+.0f} %)" if r else "not fitted")
                     + (f"; their standard errors {100 * r['student_rel_err']:.0f} % and "
                        f"{100 * r['teacher_rel_err']:.0f} %" if r and "teacher_rel_err" in r else "")
                     + f" | {mark(r['verdict'] if r else None)} |")
        lines.append(f"\n{'every decided check passes' if acc['all_decided_pass'] else 'some checks FAIL'}; "
                     f"{acc['undecided']} undecided ('-': teacher error >= 15 %, a run not diffusive, "
                     "or nothing fitted)")
    return lines


def markdown_table(result: dict) -> str:
    """Every table of docs/llzo.md from a result JSON (`llzo.py --tables JSON` prints it),
    so that the docs' numbers are the JSON's."""
    blocks = [results_table(result), fits_table(result), acceptance_table(result),
              summary_lines(result), chgnet_lines(result)]
    return "\n\n".join("\n".join(b) for b in blocks if b)


def plots(result: dict, runs: dict, folder: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    temps = result["temperatures_K"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for ax, p in zip(axes, ("cubic", "tetragonal")):
        for k, t in enumerate(temps):
            for who, ls in (("teacher", "-"), ("student", "--")):
                r = runs.get(f"{who}/{p}/{t:g}")
                if r:
                    bad = "" if r.get("stable", True) else " (unstable)"
                    ax.loglog(r["msd_t_ps"][1:], r["msd_A2"][1:], ls, color=f"C{k}",
                              label=f"{who} {t:g} K{bad}")
        ax.set_title(f"{p}: Li MSD (solid teacher, dashed student)")
        ax.set_xlabel("lag time (ps)")
        ax.legend(fontsize=7)
    axes[0].set_ylabel("MSD (A$^2$)")
    fig.tight_layout()
    msd_png = folder / "msd.png"
    fig.savefig(msd_png, dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5.5, 4))
    x = 1000.0 / np.asarray(temps)
    for k, p in enumerate(("cubic", "tetragonal")):
        ph = result["phases"][p]
        for who, mk in (("teacher", "o"), ("student", "s")):
            d = np.array([np.nan if v is None else v for v in ph[f"{who}_D"]], dtype=float)
            e = np.array([np.nan if v is None else v for v in ph[f"{who}_D_err"]], dtype=float)
            stable = np.array(result.get("extra", {}).get("phases", {}).get(p, {}).get(
                who, {}).get("stable", [True] * len(temps)), dtype=bool)
            pos = (d > 0) & stable
            ax.errorbar(x[pos], d[pos], yerr=np.minimum(e[pos], 0.99 * d[pos]), fmt=mk,
                        color=f"C{k}", mfc="none" if who == "student" else None,
                        label=f"{p} {who}")
            bad = (d > 0) & ~stable
            if bad.any():
                ax.plot(x[bad], d[bad], "x", color=f"C{k}",
                        label=f"{p} {who}: unstable run, not fitted")
            ea = ph[f"{who}_Ea_eV"]
            fit = result.get("extra", {}).get("fits", {}).get(f"{p}/{who}")
            if ea is not None and fit:
                xx = np.linspace(1000.0 / max(temps), 1000.0 / T_EXTRAPOLATE, 20)
                ax.plot(xx, np.exp(fit["lnD0"] - ea * xx / (1000.0 * KB_EV)),
                        "-" if who == "teacher" else "--", color=f"C{k}", lw=0.8)
    ax.set_yscale("log")
    ax.set_xlabel("1000 / T (1/K)")
    ax.set_ylabel("D$_{Li}$ (cm$^2$/s)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    arr_png = folder / "arrhenius.png"
    fig.savefig(arr_png, dpi=110)
    plt.close(fig)
    return [str(msd_png), str(arr_png)]


# ------------------------------------------------------------------ force RMSE


def force_rmse(model: Path, trajs: dict, settings: Settings) -> dict:
    """Held-out teacher frames (evenly spread over each teacher run) -> RMSE per T."""
    from ase.io import read

    from nnmd_kernels import Potential
    from services.trainer.data import atoms_to_structure
    from services.trainer.evaluate import evaluate

    pot = Potential.load(model)
    out = {}
    for t, paths in trajs.items():
        structs = []
        for path in paths:
            frames = read(path, index=":")
            pick = np.linspace(1, len(frames) - 1, settings.rmse_frames).round().astype(int)
            structs += [atoms_to_structure(frames[i], f"{Path(path).stem}[{i}]") for i in pick]
        ev = evaluate(pot, structs)["overall"]
        out[f"{t:g}"] = {"force_rmse_meV_A": ev["force_rmse_mev_per_angstrom"],
                         "energy_rmse_meV_atom": ev["energy_rmse_mev_per_atom"],
                         "n_structures": ev["n_structures"]}
    return out


# ------------------------------------------------------------------ descriptor weighting


def compare_weighting(store: str, campaign: str, test_trajs, weightings=("z", "typespin", "blocks"),
                      descriptor=None, train=None, n_test: int = 8, log=print, coulomb=None) -> dict:
    """Train one model per descriptor weighting on the same campaign labels and score each
    on held-out teacher frames (forces, energies, stress). Same seed, data, network, epochs,
    and the campaign's Coulomb baseline (`coulomb`, train.coulomb of its spec) when it has one.
    """
    from ase.io import read

    from nnmd_kernels.training import TrainConfig
    from nnmd_kernels.training import train as fit
    from services.runtime.threads import blas_one_thread
    from services.trainer.data import atoms_to_structure, read_store
    from services.trainer.evaluate import evaluate

    labels = read_store(store, campaign)
    test = []
    for path in test_trajs:
        frames = read(path, index=":")
        pick = np.linspace(1, len(frames) - 1, n_test).round().astype(int)
        test += [atoms_to_structure(frames[i], f"{Path(path).stem}[{i}]") for i in pick]
    descriptor = dict(descriptor or {"n_radial": 12, "n_angular": 6, "r_radial": 5.0,
                                     "r_angular": 5.0})
    train = dict(train or {"hidden": [20, 20], "max_epochs": 60, "stress_weight": 20.0})
    if coulomb is not None:
        train["coulomb"] = coulomb
    out = {"labels": len(labels), "test_structures": len(test), "descriptor": descriptor,
           "train": train, "by_weighting": {}}
    for w in weightings:
        cfg = TrainConfig.from_dict({**train, "descriptor": {**descriptor, "weighting": w}})
        t0 = time.perf_counter()
        with blas_one_thread():  # as `nnmd train` does: BLAS threads spin against the kernels'
            res = fit(labels, cfg)
        wall = time.perf_counter() - t0
        ev = evaluate(res.potential, test)["overall"]
        row = {"features": res.potential.descriptor.n_features, "train_s": wall,
               "force_rmse_meV_A": ev["force_rmse_mev_per_angstrom"],
               "energy_rmse_meV_atom": ev["energy_rmse_mev_per_atom"],
               "stress_rmse_GPa": ev.get("stress_rmse_gpa")}
        out["by_weighting"][w] = row
        log(f"[weighting] {w}: {row}")
    return out


# ------------------------------------------------------------------ main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small smoke run (< 10 min)")
    ap.add_argument("--work", default=None, help="working folder (default out/llzo[_quick], "
                    "git-ignored)")
    ap.add_argument("--out", default=None, help="result JSON (default "
                    "benchmarks/results/llzo[_quick].json)")
    ap.add_argument("--engine", choices=("native", "lammps"), default=None,
                    help="student MD engine (default lammps)")
    ap.add_argument("--plots", default=None, help="folder for msd.png and arrhenius.png "
                    "(default WORK/plots)")
    ap.add_argument("--jobs", type=int, default=1,
                    help="MD runs (teacher and student) at once, in worker processes (default 1; "
                         "2 on 2 cores halves the MD stages' wall time)")
    ap.add_argument("--chgnet", action="store_true",
                    help="also distil CHGNet (examples/llzo/chgnet.yaml: a ~440-label campaign, then "
                         "rounds of labels from the student's own MD until it agrees with "
                         "CHGNet; needs pip install -e '.[chgnet]'; ~50 min on 2 cores) and run "
                         f"the student's NPT MD for {CHGNET_MD_PS:g} ps at {CHGNET_MD_T:g} K "
                         "(JSON extra.chgnet)")
    ap.add_argument("--compare-weighting", action="store_true",
                    help="after the run: train z / typespin / blocks models on the campaign's "
                         "labels and score them on held-out teacher frames "
                         "(WORK/weighting.json)")
    ap.add_argument("--tables", nargs="?", const=str(RESULTS / "llzo.json"), default=None, metavar="JSON",
                    help="only print docs/llzo.md's tables from a result JSON (default "
                         "benchmarks/results/llzo.json) and exit")
    args = ap.parse_args(argv)
    if args.tables:
        print(markdown_table(json.loads(Path(args.tables).read_text())))
        return 0
    settings = QUICK if args.quick else FULL
    if args.engine:
        settings = replace(settings, engine=args.engine)
    tag = "_quick" if args.quick else ""
    work = Path(args.work or ROOT / "out" / f"llzo{tag}").resolve()
    out = Path(args.out or RESULTS / f"llzo{tag}.json")
    work.mkdir(parents=True, exist_ok=True)
    # each kind of stage keyed by the settings it depends on (the engine is in none: it may
    # change between resumes, student runs keep theirs)
    st = Stages(work, stage_key(settings, "campaign"))
    t_start = time.perf_counter()
    temps = list(settings.temperatures)

    import yaml

    camp_t = float(_merge(yaml.safe_load(SPEC.read_text()), settings.campaign)["temperature"])
    starts96 = [f"campaign_start_{n}" for n in campaign_structures()]
    for k, n in enumerate(campaign_structures()):
        st.run(f"campaign_start_{n}", partial(campaign_start, n, camp_t, work, settings.seed + 100 + k),
               [f"campaign_start_{n}"])
    camp = st.run("campaign", lambda: run_campaign(settings, work), ["model/model.nnmd"], depends=starts96)
    model = work / "model" / "model.nnmd"
    st.run("report_html", partial(campaign_report, work / "store", "llzo-classical", work / "report.html"),
           ["report.html"], depends=["campaign"])

    starts = {p: st.run(f"relax_{p}", partial(relax_start, p, work), [f"start_{p}.extxyz"])
              for p in PHASES}
    # the teacher's and the student's MD runs: independent, `--jobs` at a time
    md_stages = []
    md_key, reps = stage_key(settings, "md"), range(settings.replicas)
    for who in ("teacher", "student"):
        for p in PHASES:
            atoms = phase_structure(p, work)
            for k, t in enumerate(temps):
                for r in reps:
                    name = md_name(who, p, t, r)
                    traj = work / "md" / f"{name.replace('_md_', '_')}.extxyz"
                    seed = settings.seed + k + REPLICA_SEED_STRIDE * r
                    fn = (partial(teacher_md, atoms, t, settings, traj, seed) if who == "teacher" else
                          partial(student_md, model, atoms, t, settings, traj, seed, work))
                    dep = [f"relax_{p}"] + (["campaign"] if who == "student" else [])
                    md_stages.append((name, fn, [traj.relative_to(work)], dep))
    md_done = st.run_many(md_stages, jobs=args.jobs, key=md_key, keep=False)
    teacher = {(p, t): [md_done[md_name("teacher", p, t, r)] for r in reps] for p in PHASES for t in temps}
    student = {(p, t): [md_done[md_name("student", p, t, r)] for r in reps] for p in PHASES for t in temps}
    rmse = st.run("force_rmse", lambda: force_rmse(
        model, {t: [work / "md" / f"teacher_{p}_{t:g}.extxyz" for p in PHASES] for t in temps},
        settings), depends=["campaign"] + [md_name("teacher", p, t, 0) for p in PHASES for t in temps],
        key=stage_key(settings, "rmse"), keep=False)

    def analysis(who, p, t, mds):
        trajs = [work / "md" / f"{md_name(who, p, t, r).replace('_md_', '_')}.extxyz" for r in reps]
        ok = [(tr, md) for tr, md in zip(trajs, mds) if not md.get("failed") and tr.exists()]
        if not ok:
            return None
        try:
            res = analyze_run([tr for tr, _ in ok], t, settings.blocks)
        except ValueError as exc:
            print(f"[analysis] {who} {p} {t:g} K: {exc}")
            return None
        res["runs_failed"] = len(mds) - len(ok)
        res["stable"] = all(bool(md.get("stable", True)) for _, md in ok) and not res["runs_failed"]
        if not res["stable"]:
            res["diffusive"] = False
            res["note"] = (f"{res['runs_failed']} of {len(mds)} runs failed; " if res["runs_failed"] else "") + (
                "unstable (volume runaway); " if not all(md.get("stable", True) for _, md in ok) else "") + res["note"]
        return res

    runs = {}
    for p in PHASES:
        for t in temps:
            for who, done in (("teacher", teacher), ("student", student)):
                runs[f"{who}/{p}/{t:g}"] = st.run(
                    f"analysis_{who}_{p}_{t:g}",
                    partial(analysis, who, p, t, done[(p, t)]),
                    depends=[md_name(who, p, t, r) for r in reps],
                    key=stage_key(settings, "analysis"), keep=False)
    chgnet = None
    if args.chgnet:
        chg_traj = work / "md" / f"chgnet_cubic_{CHGNET_MD_T:g}.extxyz"
        chgnet = {"start": st.run("chgnet_start_cubic", partial(chgnet_start, "cubic", work),
                                  ["chgnet_start_cubic.extxyz"])}
        from ase.io import read as _read

        cubic = _read(work / "chgnet_start_cubic.extxyz")
        chgnet["campaign"] = st.run("chgnet_campaign", lambda: run_campaign(settings, work, source=CHGNET_SPEC,
                                                                            prefix="chgnet_"),
                                    ["chgnet_model/model.nnmd"])
        from orchestrator.coordinator.spec import parse_spec

        chg_cfg = parse_spec(CHGNET_SPEC).config  # the campaign's name and held-out share
        chgnet["split"] = st.run("chgnet_split", partial(
            campaign_split, work / "chgnet_store", chg_cfg.campaign, chg_cfg.holdout_fraction,
            work / "chgnet_train.extxyz",
            work / "chgnet_test.extxyz"), ["chgnet_train.extxyz", "chgnet_test.extxyz"], depends=["chgnet_campaign"])
        rounds, prev, model = [], "chgnet_split", str(work / "chgnet_model" / "model.nnmd")
        for r in range(CHGNET_REFINE_ROUNDS):
            res = st.run(f"chgnet_refine_{r}", partial(chgnet_refine_round, r, work, cubic, settings.seed, model),
                         depends=[prev, "chgnet_start_cubic"])
            model = res.get("new_model", model)
            prev = f"chgnet_refine_{r}"
            rounds.append(res)
            t, pe = res.get("test") or {}, res.get("probe_errors") or {}
            print(f"[chgnet] refine round {r}: probe {res.get('probe_ps', 0):g} ps, student vs CHGNet on "
                  f"{pe.get('n_structures', 0)} of its frames: {pe.get('energy_rmse_mev_per_atom', float('nan')):.1f} "
                  f"meV/atom, {pe.get('force_rmse_mev_per_angstrom', float('nan')):.0f} meV/A"
                  + (" (held)" if res.get("held") else f"; re-trained: held-out force RMSE "
                     f"{t.get('force_rmse_mev_per_angstrom', float('nan')):.0f} meV/A"))
            if res.get("held"):
                break
        chgnet["refine"] = rounds
        chgnet["md"] = st.run(f"chgnet_md_cubic_{CHGNET_MD_T:g}",
                              lambda: {**chgnet_md(Path(model), cubic, chg_traj, settings.seed), "model": model},
                              depends=[prev, "chgnet_start_cubic"])
        h = chgnet["campaign"].get("holdout") or {}
        print(f"[chgnet] {chgnet['campaign']['labels']} labels; held-out ({h.get('n', 0)} labels) force RMSE "
              f"{h.get('force_rmse_mev_per_angstrom', float('nan')):.0f} meV/A, energy RMSE "
              f"{h.get('energy_rmse_mev_per_atom', float('nan')):.2f} meV/atom; student NPT MD at "
              f"{CHGNET_MD_T:g} K: {chgnet['md']['ps']:g} ps, stable {chgnet['md']['stable']}")
    phases, fits = {}, {}
    for p in PHASES:
        by = {}
        for t in temps:
            for who in ("teacher", "student"):
                r = runs.get(f"{who}/{p}/{t:g}")
                if r:
                    by[(who, t)] = r
        phases[p] = phase_summary(temps, by)
        for who in ("teacher", "student"):
            fits[f"{p}/{who}"] = phases[p]["fits"][who]
    # the classical pipeline's stages only (the CHGNet distillation and the weighting
    # comparison are extras, timed in their own markers)
    wall = sum(json.loads(m.read_text()).get("wall_s", 0.0) for m in (work / "done").glob("*.json")
               if not (m.stem.startswith("chgnet_") or m.stem == "compare_weighting"))
    extra = {
        "mode": "quick" if args.quick else "full",
        "settings": asdict(settings),
        "stage_wall_s": {m.stem: json.loads(m.read_text())["wall_s"]
                         for m in sorted((work / "done").glob("*.json"))},
        "this_invocation_wall_s": time.perf_counter() - t_start,
        "jobs": args.jobs,
        "start_structures": starts,
        "teacher_md": {f"{p}/{t:g}": v for (p, t), v in teacher.items()},
        "student_md": {f"{p}/{t:g}": v for (p, t), v in student.items()},
        "force_rmse": rmse,
        "phases": {p: phases[p]["extra"] for p in phases},
        "fits": fits,
        "runs": {k: ({kk: vv for kk, vv in v.items() if not kk.startswith("msd_")} if v else None)
                 for k, v in runs.items()},
        "load_average": os.getloadavg(),  # now; each stage's is in stage_load_average
        "stage_load_average": {m.stem: json.loads(m.read_text()).get("load_average")
                               for m in sorted((work / "done").glob("*.json"))},
    }
    if chgnet is not None:
        extra["chgnet"] = chgnet
    result = build_result(
        f"LAMMPS Buckingham + Ewald ({EXAMPLE.relative_to(ROOT)}/buckingham.lammps)",
        camp["labels"], wall, temps, phases,
        {float(t): v["force_rmse_meV_A"] for t, v in rmse.items()}, extra)
    check_schema(result)
    result["extra"]["acceptance"] = acceptance(result)
    result["extra"]["plots"] = plots(result, runs, Path(args.plots) if args.plots
                                     else work / "plots")
    atomic_write_json(out, result)
    print(markdown_table(result))
    print("\nstage wall times (s): " + ", ".join(
        f"{k} {v:.0f}" for k, v in extra["stage_wall_s"].items()))
    print(f"total {wall:.0f} s; wrote {out}")
    if args.compare_weighting:
        import yaml

        spec_train = (yaml.safe_load((work / "campaign.yaml").read_text()) or {}).get("train") or {}
        cmp = st.run("compare_weighting", lambda: compare_weighting(
            str(work / "store"), "llzo-classical",
            [work / "md" / f"teacher_{p}_{temps[0]:g}.extxyz" for p in PHASES],
            coulomb=spec_train.get("coulomb")))
        atomic_write_json(work / "weighting.json", cmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
