"""Quantum ESPRESSO (pw.x) as a reference: one scratch folder and one
``mpirun -np N pw.x`` per structure, with a timeout, typed failures and retries.

pw.x is OpenMPI-linked on Debian, so it is started with the system's
``/usr/bin/mpirun`` (not the MPICH one a Python virtualenv may put first on
PATH). Output is parsed here (energy from the '!' line, forces, stress) and
converted to eV, eV/A, eV/A^3 with ASE's units; stress gets ASE's sign
(QE prints -sigma with P = trace/3 > 0 for a compressed cell).
"""

from __future__ import annotations

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
from services.reference.types import Failure, FailureReason, Outcome, Result

RY_PER_BOHR = units.Ry / units.Bohr  # eV/A per Ry/bohr
RY_PER_BOHR3 = units.Ry / units.Bohr**3  # eV/A^3 per Ry/bohr^3


@dataclass(frozen=True)
class RetryPolicy:
    """How to try again after a failure.

    attempts: total tries per structure (1 = no retry). on: the reasons worth a
    retry. After a non-converged SCF the next try multiplies mixing_beta by
    ``mixing_factor`` and electron_maxstep by ``maxstep_factor`` (1.0 = same input).
    """

    attempts: int = 2
    on: tuple[FailureReason, ...] = (FailureReason.NOT_CONVERGED, FailureReason.CRASHED)
    mixing_factor: float = 0.5
    maxstep_factor: float = 2.0

    def __post_init__(self):
        if self.attempts < 1:
            raise ValueError(f"RetryPolicy.attempts must be >= 1, got {self.attempts}")
        if not 0 < self.mixing_factor <= 1:
            raise ValueError("RetryPolicy.mixing_factor must be in (0, 1], got "
                             f"{self.mixing_factor}")
        if self.maxstep_factor < 1:
            raise ValueError(f"RetryPolicy.maxstep_factor must be >= 1, got {self.maxstep_factor}")


@dataclass(frozen=True)
class QEConfig:
    """How pw.x is run. ranks: MPI processes per structure; threads: OpenMP/BLAS
    threads per rank; timeout_s: wall-clock limit per attempt; scratch_root: where
    per-structure folders go (default: the system temp dir); keep: 'never',
    'failed' or 'always' keep the scratch folder afterwards."""

    ranks: int = 1
    threads: int = 1
    timeout_s: float = 3600.0
    mpirun: str = "/usr/bin/mpirun"
    pw: str = "pw.x"
    scratch_root: str | None = None
    keep: str = "failed"
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    extra_mpirun_args: tuple[str, ...] = ("--bind-to", "none")

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
                               "the timeout or use more ranks")
        wall = time.monotonic() - t0
        stdout = (folder / "pw.out").read_text(errors="replace")
        stderr = (folder / "pw.err").read_text(errors="replace")
        out = parse_pw_output(stdout, len(atoms))
        failure = _classify(rc, out, stdout, stderr)
        if failure is not None:
            return failure
        res = to_result(out, len(atoms))
        res.info.update(wall_s=wall, ranks=self.config.ranks)
        return res

    def _retry_overrides(self, overrides: dict) -> dict:
        r = self.config.retry
        pw = self.template.pw
        beta = float(overrides.get(("electrons", "mixing_beta"),
                                   pw.value("electrons", "mixing_beta", 0.7)))
        steps = int(overrides.get(("electrons", "electron_maxstep"),
                                  pw.value("electrons", "electron_maxstep", 100)))
        return {**overrides,
                ("electrons", "mixing_beta"): f"{beta * r.mixing_factor:.6g}",
                ("electrons", "electron_maxstep"): str(max(1, round(steps * r.maxstep_factor)))}

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
        folder = Path(tempfile.mkdtemp(prefix="nnmd-qe-", dir=root))
        overrides: dict = {}
        history = []
        outcome: Outcome | None = None
        for attempt in range(1, self.config.retry.attempts + 1):
            if attempt > 1 and outcome.reason == FailureReason.NOT_CONVERGED:
                overrides = self._retry_overrides(overrides)
            attempt_dir = folder / f"attempt-{attempt}"
            attempt_dir.mkdir()
            outcome = self._run_once(atoms, overrides, attempt_dir, exe)
            if outcome.ok:
                break
            history.append(outcome.reason.value)
            if outcome.reason not in self.config.retry.on:
                break
        keep = self.config.keep == "always" or (self.config.keep == "failed" and not outcome.ok)
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)
        scratch = str(folder) if keep else None
        if outcome.ok:
            outcome.info.update(backend=self.name, attempts=attempt, scratch=scratch,
                                retried_after=history,
                                settings={f"{s}.{k}": v for (s, k), v in overrides.items()})
            return outcome
        return Failure(outcome.reason, outcome.message, attempts=attempt, scratch=scratch,
                       info={"backend": self.name, "history": history})

    def compute(self, atoms_list: Sequence[Atoms]) -> list[Outcome]:
        return [self.compute_one(a) for a in atoms_list]
