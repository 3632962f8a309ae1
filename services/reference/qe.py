"""Quantum ESPRESSO (pw.x) as a reference: one scratch folder and one
``mpirun -np N pw.x`` per structure, with a timeout, typed failures and retries.

pw.x is OpenMPI-linked on Debian, so it is started with the system's
``/usr/bin/mpirun`` (not the MPICH one a Python virtualenv may put first on
PATH). Output is parsed here (energy from the '!' line, forces, stress) and
converted to eV, eV/A, eV/A^3 with ASE's units; stress gets ASE's sign
(QE prints -sigma with P = trace/3 > 0 for a compressed cell).

Failed SCFs climb an explicit retry ladder (RetryPolicy); structures of a chain
can start from the previous structure's kept SCF (QEConfig.restart, the
mechanics in services/reference/qe_restart.py).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from ase import Atoms, units

from services.reference.qe_input import QETemplate, load_template
from services.reference.qe_restart import (
    RestartIdError,
    RestartPlan,
    RestartStore,
    parse_k_points,
    read_what_was_restarted,
)
from services.reference.types import Failure, FailureReason, Outcome, Result
from services.runtime.convert import ID_KEY, RESTART_FROM_KEY

log = logging.getLogger("nnmd.reference.qe")

RY_PER_BOHR = units.Ry / units.Bohr  # eV/A per Ry/bohr
RY_PER_BOHR3 = units.Ry / units.Bohr**3  # eV/A^3 per Ry/bohr^3


@dataclass(frozen=True)
class RetryPolicy:
    """How to try again after a failure: an explicit ladder of settings.

    attempts: total tries per structure (1 = no retry); on: the reasons worth a
    retry. Each not-converged SCF moves one rung up the ladder (a crash is retried
    on the same rung):

    - rung 0 (attempt 1): the input as given;
    - rung 1: electron_maxstep x ``maxstep_factor`` (2) and mixing_beta x
      ``mixing_factor`` (0.5);
    - rung 2: rung 1 and, only when the input has ``occupations = 'smearing'``,
      degauss x ``degauss_factor`` (2); an insulator input never gets smearing.
      More smearing changes the (free) energy a little: such a label is recorded
      with its settings (Outcome.info["settings"] and ["history"]);
    - rung k > 2: each factor once more per rung.

    A restarted attempt that fails is followed by a cold start on the same rung
    that does not count against ``attempts`` (see QEConfig.restart).
    """

    attempts: int = 3
    on: tuple[FailureReason, ...] = (FailureReason.NOT_CONVERGED, FailureReason.CRASHED)
    mixing_factor: float = 0.5
    maxstep_factor: float = 2.0
    degauss_factor: float = 2.0

    def __post_init__(self):
        if self.attempts < 1:
            raise ValueError(f"RetryPolicy.attempts (tries per structure) must be >= 1, got "
                             f"{self.attempts}; use 1 for no retry")
        if not 0 < self.mixing_factor <= 1:
            raise ValueError("RetryPolicy.mixing_factor must be in (0, 1] (it multiplies "
                             f"mixing_beta), got {self.mixing_factor}")
        if self.maxstep_factor < 1:
            raise ValueError("RetryPolicy.maxstep_factor must be >= 1 (it multiplies "
                             f"electron_maxstep), got {self.maxstep_factor}")
        if self.degauss_factor < 1:
            raise ValueError("RetryPolicy.degauss_factor must be >= 1 (it multiplies degauss; "
                             f"1 = never more smearing), got {self.degauss_factor}")


@dataclass(frozen=True)
class QEConfig:
    """How pw.x is run. ranks: MPI processes per structure; threads: OpenMP/BLAS
    threads per rank; timeout_s: wall-clock limit per attempt; scratch_root: where
    per-structure folders go (default: the system temp dir); keep: 'never',
    'failed' or 'always' keep the scratch folder afterwards.

    restart: keep the converged SCF of every structure that has
    ``atoms.info["nnmd_id"]`` and seed a structure with
    ``atoms.info["nnmd_restart_from"]`` from the kept SCF it names (pw.x
    startingpot/startingwfc = 'file'); False = always a cold start, nothing kept.
    restart_root: where kept SCFs go (default: ``nnmd-qe-restart`` under
    scratch_root or the temp dir). restart_max_displacement: largest per-atom move
    (A) since the kept structure for which it is still used. restart_extrapolation:
    'atomic' moves the atomic charges of the kept density to the new positions
    (as pw.x MD does), 'none' reuses the density as it is.
    """

    ranks: int = 1
    threads: int = 1
    timeout_s: float = 3600.0
    mpirun: str = "/usr/bin/mpirun"
    pw: str = "pw.x"
    scratch_root: str | None = None
    keep: str = "failed"
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    extra_mpirun_args: tuple[str, ...] = ("--bind-to", "none")
    restart: bool = True
    restart_root: str | None = None
    restart_max_displacement: float = 1.0
    restart_extrapolation: str = "atomic"

    def __post_init__(self):
        if self.ranks < 1:
            raise ValueError(f"QEConfig.ranks (MPI ranks per structure) must be >= 1, got "
                             f"{self.ranks}")
        if self.threads < 1:
            raise ValueError(f"QEConfig.threads must be >= 1, got {self.threads}")
        if self.timeout_s <= 0:
            raise ValueError(f"QEConfig.timeout_s must be > 0, got {self.timeout_s}")
        if self.keep not in ("never", "failed", "always"):
            raise ValueError(f"QEConfig.keep must be 'never', 'failed' or 'always', got "
                             f"{self.keep!r}")
        if not self.restart_max_displacement > 0:
            raise ValueError("QEConfig.restart_max_displacement (A) must be > 0, got "
                             f"{self.restart_max_displacement}; use restart=False to switch "
                             "restarts off")
        if self.restart_extrapolation not in ("atomic", "none"):
            raise ValueError("QEConfig.restart_extrapolation must be 'atomic' or 'none', got "
                             f"{self.restart_extrapolation!r}")

    def restart_dir(self) -> Path:
        """Where kept SCFs go."""
        if self.restart_root is not None:
            return Path(self.restart_root)
        return Path(self.scratch_root or tempfile.gettempdir()) / "nnmd-qe-restart"


@dataclass(frozen=True)
class PwOutput:
    """Numbers read from a pw.x output (QE units: Ry, Ry/bohr, Ry/bohr^3, QE sign)."""

    energy_ry: float | None
    forces_ry_bohr: np.ndarray | None  # (n_atoms, 3)
    stress_ry_bohr3: np.ndarray | None  # (3, 3), as printed by pw.x
    converged: bool
    not_converged: bool  # the explicit "convergence NOT achieved" message
    job_done: bool
    scf_iterations: int | None
    errors: tuple[str, ...]  # text of "Error in routine ..." blocks


_FLOAT = r"[-+]?\d*\.\d+(?:[EeDd][-+]?\d+)?"


def parse_pw_output(text: str, n_atoms: int) -> PwOutput:
    """Final energy, forces and stress of a single-point pw.x run."""
    energy = None
    for m in re.finditer(r"^!\s+total energy\s+=\s+(" + _FLOAT + r")\s+Ry", text, re.M):
        energy = float(m.group(1))
    forces = None
    m = re.search(r"Forces acting on atoms.*?\n", text)
    if m:
        rows = re.findall(r"atom\s+\d+\s+type\s+\d+\s+force\s+=\s+(" + _FLOAT + r")\s+("
                          + _FLOAT + r")\s+(" + _FLOAT + r")", text[m.end():])
        if len(rows) >= n_atoms:
            forces = np.array(rows[:n_atoms], dtype=float)  # (n_atoms, 3) Ry/bohr
    stress = None
    m = re.search(r"total\s+stress\s+\(Ry/bohr\*\*3\).*\n", text)
    if m:
        lines = text[m.end():].splitlines()[:3]
        try:
            stress = np.array([[float(x) for x in ln.split()[:3]] for ln in lines])
        except ValueError:
            stress = None
        if stress is not None and stress.shape != (3, 3):
            stress = None
    iters = re.findall(r"convergence has been achieved in\s+(\d+)\s+iterations", text)
    errors = tuple(
        " ".join(b.split())
        for b in re.findall(r"Error in routine(.*?)%{10,}", text, re.S)
    )
    return PwOutput(
        energy_ry=energy,
        forces_ry_bohr=forces,
        stress_ry_bohr3=stress,
        converged=bool(iters),
        not_converged="convergence NOT achieved" in text,
        job_done="JOB DONE" in text,
        scf_iterations=int(iters[-1]) if iters else None,
        errors=errors,
    )


def _seconds(text: str) -> float | None:
    """pw.x's clock format: '12.34s', ' 1m23.45s', ' 1h 2m'."""
    m = re.fullmatch(r"\s*(?:(\d+)h)?\s*(?:(\d+)m)?\s*(?:([\d.]+)s)?\s*", text)
    if not m or not any(m.groups()):
        return None
    h, mi, sec = m.groups()
    return int(h or 0) * 3600 + int(mi or 0) * 60 + float(sec or 0)


def pw_times(text: str) -> tuple[float | None, float | None]:
    """(CPU, wall) seconds of the whole run from pw.x's final 'PWSCF :' clock line."""
    found = re.findall(r"^\s*PWSCF\s*:(.*?)CPU(.*?)WALL", text, re.M)
    if not found:
        return None, None
    return _seconds(found[-1][0]), _seconds(found[-1][1])


def to_result(out: PwOutput, n_atoms: int) -> Result:
    forces = out.forces_ry_bohr * RY_PER_BOHR
    stress = None if out.stress_ry_bohr3 is None else -out.stress_ry_bohr3 * RY_PER_BOHR3
    return Result(
        energy=out.energy_ry * units.Ry,
        forces=forces,
        stress=stress,
        info={"energy_ry": out.energy_ry, "scf_iterations": out.scf_iterations},
    )


def pw_environment(threads: int) -> dict[str, str]:
    """Environment for mpirun/pw.x: our threads; OpenMPI allowed as root; no
    variables of an outer MPI job (an MPICH or OpenMPI parent would confuse mpirun)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OMPI_", "PMIX_", "PMI_", "HYDRA_", "MPIR_", "I_MPI_"))}
    for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[k] = str(threads)
    if os.geteuid() == 0:
        env["OMPI_ALLOW_RUN_AS_ROOT"] = "1"
        env["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1"
    env.setdefault("OMPI_MCA_btl_vader_single_copy_mechanism", "none")  # containers
    return env


def _tail(text: str, n: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-n:])


def _classify(rc: int, out: PwOutput, stdout: str, stderr: str) -> Failure | None:
    if out.not_converged or rc == 2:
        return Failure(FailureReason.NOT_CONVERGED,
                       "SCF convergence NOT achieved (pw.x exit code "
                       f"{rc}); try more electron_maxstep or a smaller mixing_beta")
    if out.errors:
        msg = "; ".join(out.errors)
        reason = FailureReason.CRASHED
        if "readpp" in msg or "pseudo" in msg.lower():
            reason = FailureReason.MISSING_PSEUDO
        elif "read_namelists" in msg or "card" in msg.lower():
            reason = FailureReason.BAD_INPUT
        return Failure(reason, f"pw.x: {msg}")
    if rc != 0:
        return Failure(FailureReason.CRASHED,
                       f"pw.x exited with code {rc}: {_tail(stderr or stdout, 8)}")
    if not out.converged or out.energy_ry is None or out.forces_ry_bohr is None:
        return Failure(FailureReason.CRASHED, "pw.x finished without a converged energy and "
                       f"forces in its output: {_tail(stdout, 8)}")
    return None


class QEBackend:
    """Labels structures with pw.x, using every setting of the user's input file."""

    def __init__(self, input_path, config: QEConfig | None = None):
        self.config = config or QEConfig()
        self.template: QETemplate = load_template(input_path)  # raises QEInputError
        self.input_path = str(input_path)
        self.name = f"qe:{input_path}"
        self.prefix = str(self.template.pw.value("control", "prefix", "pwscf"))
        self._restarts: RestartStore | None = None

    # -- what the run needs -------------------------------------------------
    def _executables(self) -> tuple[str, str] | Failure:
        mpirun = shutil.which(self.config.mpirun)
        pw = shutil.which(self.config.pw)
        if mpirun is None:
            return Failure(FailureReason.MISSING_EXECUTABLE,
                           f"mpirun '{self.config.mpirun}' not found; install OpenMPI "
                           "(apt-get install openmpi-bin) or set QEConfig.mpirun")
        if pw is None:
            return Failure(FailureReason.MISSING_EXECUTABLE,
                           f"'{self.config.pw}' not found on PATH; install Quantum ESPRESSO "
                           "(scripts/install.sh or apt-get install quantum-espresso) or set "
                           "QEConfig.pw")
        return mpirun, pw

    def _missing_pseudo(self) -> Failure | None:
        for sp in self.template.species:
            if not sp.pseudo.is_file():
                return Failure(FailureReason.MISSING_PSEUDO,
                               f"pseudopotential {sp.pseudo} for {sp.label} (line {sp.line} of "
                               f"{self.input_path}) no longer exists")
        return None

    # -- the retry ladder ---------------------------------------------------
    def uses_smearing(self) -> bool:
        occ = self.template.pw.value("system", "occupations", "fixed")
        return str(occ).strip().lower() == "smearing"

    def ladder(self, rung: int) -> dict[tuple[str, str], str]:
        """The settings of rung ``rung`` of the retry ladder (see RetryPolicy) as
        overrides {(namelist, key): raw value}; rung 0 = the input as given."""
        if rung <= 0:
            return {}
        r = self.config.retry
        pw = self.template.pw
        beta = float(pw.value("electrons", "mixing_beta", 0.7))
        steps = int(pw.value("electrons", "electron_maxstep", 100))
        k = rung if rung <= 1 else rung - 1  # rungs 1 and 2 share the SCF settings
        out = {("electrons", "mixing_beta"): f"{beta * r.mixing_factor ** k:.6g}",
               ("electrons", "electron_maxstep"): str(max(1, round(steps * r.maxstep_factor ** k)))}
        degauss = float(pw.value("system", "degauss", 0.0) or 0.0)
        if rung >= 2 and self.uses_smearing() and degauss > 0 and r.degauss_factor > 1:
            out[("system", "degauss")] = f"{degauss * r.degauss_factor ** (rung - 1):.6g}"
        return out

    # -- restarts -------------------------------------------------------------
    def restart_store(self) -> RestartStore:
        """The kept SCFs of this input (created on first use)."""
        if self._restarts is None:
            h = hashlib.sha256(Path(self.input_path).read_bytes())
            for sp in self.template.species:
                h.update(sp.label.encode() + b"\0" + sp.pseudo.read_bytes())
            self._restarts = RestartStore(self.config.restart_dir(), h.hexdigest()[:16],
                                          self.config.restart_max_displacement)
        return self._restarts

    def _same_k_points_always(self) -> bool:
        """True when pw.x's k-point list cannot depend on the structure's symmetry."""
        k = self.template.pw.cards.get("K_POINTS")
        if k is not None and k.option == "gamma":
            return True
        if k is not None and k.option == "automatic" and k.body:
            if k.body[0][1].split()[:6] == ["1", "1", "1", "0", "0", "0"]:
                return True
        return bool(self.template.pw.value("system", "nosym", False))

    def _restart_request(self, atoms: Atoms) -> tuple[str | None, str | None, list[str]]:
        """(id to keep this SCF under, id to restart from, notes) from atoms.info."""
        notes: list[str] = []
        if not self.config.restart:
            return None, None, notes
        sid = atoms.info.get(ID_KEY) or None
        src = atoms.info.get(RESTART_FROM_KEY) or None
        if sid is None and src is None:
            return None, None, notes
        try:
            store = self.restart_store()
        except OSError as exc:
            notes.append(f"restarts unavailable: cannot read {exc.filename} ({exc.strerror}); "
                         "cold start, nothing kept")
            return None, None, notes
        if sid is not None:
            try:
                store.folder(sid)
            except RestartIdError as exc:
                notes.append(f"{exc}; this SCF is not kept")
                sid = None
        if src is not None:
            try:
                store.folder(src, RESTART_FROM_KEY)
            except RestartIdError as exc:
                notes.append(f"{exc}; cold start")
                src = None
        return sid, src, notes

    # -- one structure --------------------------------------------------------
    def _run_once(self, atoms: Atoms, overrides: dict, folder: Path,
                  exe: tuple[str, str]) -> Outcome:
        try:
            text = self.template.render(atoms, overrides)
        except ValueError as exc:
            return Failure(FailureReason.BAD_INPUT, str(exc))
        (folder / "pw.in").write_text(text)
        mpirun, pw = exe
        cmd = [mpirun, "-np", str(self.config.ranks), *self.config.extra_mpirun_args,
               pw, "-in", "pw.in"]
        setpriv = shutil.which("setpriv")
        if setpriv:  # if this process dies (a killed worker), mpirun gets SIGTERM and stops pw.x
            cmd = [setpriv, "--pdeathsig", "TERM", "--", *cmd]
        t0 = time.monotonic()
        with open(folder / "pw.out", "w") as fout, open(folder / "pw.err", "w") as ferr:
            proc = subprocess.Popen(cmd, cwd=folder, stdout=fout, stderr=ferr,
                                    env=pw_environment(self.config.threads),
                                    start_new_session=True)  # own group: a timeout kills all ranks
            try:
                rc = proc.wait(timeout=self.config.timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                return Failure(FailureReason.TIMEOUT,
                               f"pw.x did not finish in {self.config.timeout_s:g} s; raise "
                               "the timeout (QEConfig.timeout_s, --timeout) or use more ranks",
                               info={"wall_s": time.monotonic() - t0})
        wall = time.monotonic() - t0
        stdout = (folder / "pw.out").read_text(errors="replace")
        stderr = (folder / "pw.err").read_text(errors="replace")
        out = parse_pw_output(stdout, len(atoms))
        failure = _classify(rc, out, stdout, stderr)
        if failure is not None:
            failure.info.update(wall_s=wall, scf_iterations=out.scf_iterations)
            return failure
        res = to_result(out, len(atoms))
        cpu, _ = pw_times(stdout)
        res.info.update(wall_s=wall, ranks=self.config.ranks, pw_cpu_s=cpu)
        return res

    def compute_one(self, atoms: Atoms) -> Outcome:
        exe = self._executables()
        if isinstance(exe, Failure):
            return exe
        missing = self._missing_pseudo()
        if missing is not None:
            return missing
        root = self.config.scratch_root
        if root is not None:
            Path(root).mkdir(parents=True, exist_ok=True)
        sid, src, notes = self._restart_request(atoms)
        plan: RestartPlan | None = None
        labels: list[str] = []
        if src is not None:
            try:
                labels = self.template.labels_for(atoms)
                found = self.restart_store().plan(src, atoms, labels,
                                                  self._same_k_points_always())
            except (ValueError, OSError) as exc:
                found = f"restart from {src!r} not possible ({exc}); cold start"
            if isinstance(found, str):
                notes.append(found)
            else:
                plan = found
                if found.why_no_wfc:
                    notes.append(found.why_no_wfc)
        folder = Path(tempfile.mkdtemp(prefix="nnmd-qe-", dir=root))
        retry = self.config.retry
        history: list[dict] = []
        rung, budget, attempt = 0, retry.attempts, 0
        outcome: Outcome | None = None
        restarted = False
        while attempt < budget:
            attempt += 1
            overrides = self.ladder(rung)
            attempt_dir = folder / f"attempt-{attempt}"
            attempt_dir.mkdir()
            run_overrides = dict(overrides)
            entry: dict = {"attempt": attempt, "rung": rung, "restarted": False,
                           "settings": _settings(overrides)}
            restarted = False
            if plan is not None:
                t_stage = time.monotonic()
                try:
                    how = self.restart_store().stage(
                        plan, attempt_dir / "out" / f"{self.prefix}.save", atoms, labels,
                        {sp.label: sp.pseudo for sp in self.template.species},
                        self.config.restart_extrapolation == "atomic")
                    run_overrides[("electrons", "startingpot")] = "'file'"
                    if plan.use_wfc:
                        run_overrides[("electrons", "startingwfc")] = "'file'"
                    restarted = True
                    entry.update(restarted=True, restart_from=plan.source_id,
                                 restart_density=how, restart_wfc=plan.use_wfc,
                                 stage_s=round(time.monotonic() - t_stage, 3))
                except Exception as exc:  # pruned under our feet, disk full, ...
                    notes.append(f"could not copy the kept SCF of {plan.source_id!r} ({exc}); "
                                 "cold start")
                    shutil.rmtree(attempt_dir / "out", ignore_errors=True)
                    plan = None
            outcome = self._run_once(atoms, run_overrides, attempt_dir, exe)
            if restarted:
                outcome = self._check_restart(outcome, plan, attempt_dir)
            entry.update(outcome="ok" if outcome.ok else outcome.reason.value,
                         scf_iterations=outcome.info.get("scf_iterations"),
                         wall_s=round(float(outcome.info.get("wall_s", 0.0)), 3))
            if not outcome.ok:
                entry["message"] = outcome.message
            history.append(entry)
            if outcome.ok:
                break
            if restarted:
                # the kept SCF may be the problem: a cold start on the same rung, not counted
                notes.append(f"restarted attempt {attempt} failed ({outcome.reason.value}); "
                             "cold start")
                plan = None
                budget += 1
                continue
            if outcome.reason not in retry.on:
                break
            if outcome.reason == FailureReason.NOT_CONVERGED:
                rung += 1
        keep = self.config.keep == "always" or (self.config.keep == "failed" and not outcome.ok)
        kept_as = None
        if outcome.ok and sid is not None:
            kept_as = self._keep_scf(sid, src, atoms, attempt_dir, outcome, notes)
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)
        scratch = str(folder) if keep else None
        for n in notes:
            log.info("%s: %s", self.name, n)
        if outcome.ok:
            # restarted = pw.x really started from the kept density ("Cannot read rho" = cold)
            restarted = restarted and bool(outcome.info.get("restart_read_density"))
            outcome.info.update(backend=self.name, attempts=attempt, scratch=scratch,
                                retried_after=[h["outcome"] for h in history[:-1]],
                                settings=_settings(overrides), history=history,
                                restarted=restarted, restart_from=src if restarted else None,
                                kept_as=kept_as, restart_notes=notes,
                                wall_s_total=round(sum(h["wall_s"] for h in history), 3))
            return outcome
        return Failure(outcome.reason, _failure_message(outcome, history), attempts=attempt,
                       scratch=scratch, info={"backend": self.name, "history": history,
                                              "restart_notes": notes})

    def _check_restart(self, outcome: Outcome, plan: RestartPlan, folder: Path) -> Outcome:
        """A restarted run whose wavefunctions came from another k-point list is not
        trusted: it becomes a failure, so the next attempt is a cold start."""
        if not outcome.ok:
            return outcome
        text = (folder / "pw.out").read_text(errors="replace")
        rho, wfc = read_what_was_restarted(text)
        outcome.info.update(restart_read_density=rho, restart_read_wfc=wfc)
        if wfc:
            nks, kl, _ = parse_k_points(text)
            old_nks, old_kl = plan.meta.get("nks"), plan.meta.get("k_points")
            if nks != old_nks or (kl is not None and old_kl is not None and kl != old_kl):
                return Failure(FailureReason.CRASHED,
                               f"restart from {plan.source_id!r} read wavefunctions of "
                               f"{old_nks} k-points into a run with {nks} different ones",
                               info=outcome.info)
        return outcome

    def _keep_scf(self, sid: str, src: str | None, atoms: Atoms, attempt_dir: Path,
                  outcome: Result, notes: list[str]) -> str | None:
        """Keep the converged SCF for later restarts; prune the chain."""
        store = self.restart_store()
        try:
            nks, kl, nsym = parse_k_points((attempt_dir / "pw.out").read_text(errors="replace"))
            meta = {"labels": self.template.labels_for(atoms), "cell": atoms.cell[:].tolist(),
                    "positions": atoms.positions.tolist(), "nks": nks, "k_points": kl,
                    "nsym": nsym, "prefix": self.prefix,
                    "energy_ry": outcome.info.get("energy_ry")}
            path = store.save(sid, attempt_dir / "out" / f"{self.prefix}.save", meta)
            store.prune(sid, src)
            return str(path)
        except Exception as exc:  # keeping is an optimisation: never fail the label for it
            notes.append(f"could not keep the SCF of {sid!r} for restarts ({exc})")
            return None

    def compute(self, atoms_list: Sequence[Atoms]) -> list[Outcome]:
        return [self.compute_one(a) for a in atoms_list]


def _settings(overrides: dict) -> dict[str, str]:
    return {f"{s}.{k}": v for (s, k), v in overrides.items()}


def _failure_message(last: Failure, history: list[dict]) -> str:
    """The last failure's message and, after retries, what each attempt tried."""
    if len(history) <= 1:
        return last.message
    tried = []
    for h in history:
        what = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in h["settings"].items())
        what = what or "input as given"
        if h.get("restarted"):
            what += f", restarted from {h['restart_from']!r}"
        tried.append(f"attempt {h['attempt']} ({what}): {h['outcome']}")
    return f"{last.message}. Tried: " + "; ".join(tried)
