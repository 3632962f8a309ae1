"""Real pw.x on 8-atom Si (Si.pz-vbc.UPF, 20 Ry, examples/si8.pwi): the
backend's numbers against a direct pw.x run of the same input, forces against
a finite difference of the energy, stress against pw.x's printed pressure and
ASE's espresso reader, non-converged SCF reported and never labelled, timeouts
and missing programs typed. Each pw.x run takes a few seconds."""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase import units

from orchestrator.commands import label as label_cmd
from services.reference import (
    FailureReason,
    QEBackend,
    QEConfig,
    Result,
    RetryPolicy,
    label_all,
    make_backend,
)
from services.reference.aimd import AIMDConfig, run_aimd
from services.reference.qe import pw_environment
from tests.integration.qe_env import MPIRUN, QE_MARKS, SI8

pytestmark = QE_MARKS

CFG = QEConfig(ranks=1, timeout_s=300)


def variant(tmp_path, **electrons) -> Path:
    """examples/si8.pwi with extra &ELECTRONS settings."""
    extra = "".join(f"  {k} = {v}\n" for k, v in electrons.items())
    lines = [ln for ln in SI8.read_text().splitlines(keepends=True)
             if ln.split("=")[0].strip() not in electrons]
    text = "".join(lines).replace("&ELECTRONS\n", "&ELECTRONS\n" + extra)
    path = tmp_path / "si8_variant.pwi"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def direct_run(tmp_path_factory):
    """pw.x run by hand on the unchanged example input."""
    work = tmp_path_factory.mktemp("direct")
    shutil.copy(SI8, work / "si8.pwi")
    with open(work / "si8.pwo", "w") as out:
        rc = subprocess.run([MPIRUN, "-np", "1", "pw.x", "-in", "si8.pwi"], cwd=work,
                            stdout=out, stderr=subprocess.PIPE, env=pw_environment(1),
                            timeout=300).returncode
    assert rc == 0
    return (work / "si8.pwo").read_text(), work / "si8.pwo"


@pytest.fixture(scope="module")
def scratch_root(tmp_path_factory):
    return tmp_path_factory.mktemp("scratch")


@pytest.fixture(scope="module")
def backend_result(scratch_root):
    b = QEBackend(SI8, QEConfig(ranks=1, timeout_s=300, scratch_root=str(scratch_root),
                                keep="failed"))
    out = b.compute([ase.io.read(SI8, format="espresso-in")])
    return out[0]


def test_energy_equals_direct_pw_run(direct_run, backend_result):
    text, _ = direct_run
    e_direct_ry = float(re.findall(r"^!\s+total energy\s+=\s+(\S+) Ry", text, re.M)[-1])
    assert isinstance(backend_result, Result)
    assert abs(backend_result.info["energy_ry"] - e_direct_ry) < 1e-6
    assert abs(backend_result.energy / units.Ry - e_direct_ry) < 1e-6


def test_forces_and_stress_units_and_signs(direct_run, backend_result):
    text, path = direct_run
    r = backend_result
    assert r.forces.shape == (8, 3) and r.stress.shape == (3, 3)
    assert np.abs(r.forces.sum(axis=0)).max() < 1e-3  # no net force (eV/A)
    assert np.abs(r.forces).max() > 0.1  # the displaced atom is really pushed
    np.testing.assert_allclose(r.stress, r.stress.T, atol=1e-12)
    # pressure: pw.x prints P (kbar) = trace(sigma_QE)/3; ASE sign: P = -trace(stress)/3
    p_kbar = float(re.search(r"P=\s*(\S+)", text).group(1))
    p_ours = -np.trace(r.stress) / 3 / units.GPa * 10
    assert p_ours == pytest.approx(p_kbar, abs=0.02)
    # ASE's own reader (CODATA 2006 constants: equal to ~1e-6 relative)
    ref = ase.io.read(path, format="espresso-out")
    np.testing.assert_allclose(r.forces, ref.get_forces(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(r.stress, ref.get_stress(voigt=False), rtol=1e-5, atol=1e-8)
    assert r.energy == pytest.approx(ref.get_potential_energy(), rel=1e-6)


def test_forces_are_minus_energy_gradient(tmp_path):
    """Central difference of the pw.x energy along x of atom 8 (the displaced one)."""
    b = QEBackend(variant(tmp_path, conv_thr="1.0d-10"), CFG)
    base = ase.io.read(SI8, format="espresso-in")
    h = 0.01  # A
    plus, minus = base.copy(), base.copy()
    plus.positions[7, 0] += h
    minus.positions[7, 0] -= h
    r0, rp, rm = b.compute([base, plus, minus])
    fd = -(rp.energy - rm.energy) / (2 * h)
    assert fd == pytest.approx(r0.forces[7, 0], rel=0.02, abs=0.005)


def test_not_converged_is_reported_and_never_labelled(tmp_path, capsys):
    pwi = variant(tmp_path, electron_maxstep=2)
    b = make_backend(f"qe:{pwi}", qe=QEConfig(ranks=1, retry=RetryPolicy(attempts=1),
                                               keep="failed", scratch_root=str(tmp_path / "s")))
    done, failed = label_all(b, [ase.io.read(SI8, format="espresso-in")])
    assert done == []
    (i, f), = failed
    assert f.reason == FailureReason.NOT_CONVERGED and f.attempts == 1
    assert f.scratch and "convergence NOT achieved" in (
        Path(f.scratch) / "attempt-1" / "pw.out").read_text()
    # the CLI writes nothing and says why
    p = argparse.ArgumentParser()
    label_cmd.register(p.add_subparsers())
    out = tmp_path / "labels.extxyz"
    args = p.parse_args(["label", "--reference", f"qe:{pwi}", "--in", str(SI8), "--out",
                         str(out), "--attempts", "1", "--keep-scratch", "never"])
    assert args.func(args) == 1
    assert not out.exists()
    assert "not_converged" in capsys.readouterr().err


def test_retry_with_gentler_mixing_converges(tmp_path):
    """electron_maxstep = 6 fails; the retry (mixing_beta/2, maxstep x2) converges."""
    b = QEBackend(variant(tmp_path, electron_maxstep=6),
                  QEConfig(ranks=1, retry=RetryPolicy(attempts=2), keep="never"))
    r = b.compute([ase.io.read(SI8, format="espresso-in")])[0]
    assert isinstance(r, Result), str(r)
    assert r.info["attempts"] == 2 and r.info["retried_after"] == ["not_converged"]
    assert r.info["settings"]["electrons.electron_maxstep"] == "12"
    assert r.info["scratch"] is None


def test_timeout_and_missing_programs(tmp_path):
    a = ase.io.read(SI8, format="espresso-in")
    cfg = QEConfig(ranks=1, timeout_s=0.2, retry=RetryPolicy(attempts=1), keep="never")
    r = QEBackend(SI8, cfg).compute([a])[0]
    assert r.reason == FailureReason.TIMEOUT
    r = QEBackend(SI8, QEConfig(pw="/nonexistent/pw.x")).compute([a])[0]
    assert r.reason == FailureReason.MISSING_EXECUTABLE and "pw.x" in r.message


def test_scratch_cleaned_on_success(backend_result, scratch_root):
    assert backend_result.ok and backend_result.info["scratch"] is None
    assert list(scratch_root.iterdir()) == []


def test_aimd_bootstrap_with_pw(tmp_path):
    """One MD step with pw.x: both frames labelled by pw.x at their own positions."""
    b = QEBackend(SI8, CFG)
    run = run_aimd(b, b.template.atoms, AIMDConfig(temperature_K=600, steps=1, timestep_fs=2.0,
                                                   thermostat="nve"))
    assert run.failure is None and len(run.frames) == 2
    assert all(f.info["source"] == "aimd" and "ref_energy_ry" in f.info for f in run.frames)
    assert run.frames[0].get_kinetic_energy() > 0
    assert not np.allclose(run.frames[1].positions, run.frames[0].positions)
    assert run.frames[1].get_potential_energy() != run.frames[0].get_potential_energy()


def test_service_pool_with_pw_eight_requests_one_worker_killed(direct_run, ray_session,
                                                              tmp_path):
    """The gRPC service over 2 pw.x workers: 8 concurrent requests complete although
    a worker is killed mid-request, and the unperturbed structure's energy equals
    the direct pw.x run to 1e-6 Ry."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    from services.proto.nnmd.v1 import reference_pb2
    from services.reference.service import ReferenceServicer
    from services.runtime.channel import idempotency_metadata
    from services.runtime.convert import from_atoms, labels_from_proto, structure_to_proto
    from tests.unit.reference.served import Served

    text, _ = direct_run
    e_direct_ry = float(re.findall(r"^!\s+total energy\s+=\s+(\S+) Ry", text, re.M)[-1])
    base = ase.io.read(SI8, format="espresso-in")
    structures = [base]
    for seed in range(7):
        a = base.copy()
        a.rattle(0.02, seed=seed)
        structures.append(a)
    # the killed worker cannot clean its scratch folder: keep it inside tmp_path
    served = Served(ReferenceServicer(f"qe:{SI8}", workers=2, ranks=1, keep_scratch="never",
                                      scratch=str(tmp_path)))
    try:
        pool = served.servicer.pool

        def call(a):
            req = reference_pb2.ComputeRequest(
                structures=[structure_to_proto(from_atoms(a)[0])],
                properties=["energy", "forces", "stress"])
            return served.stub.Compute(req, metadata=idempotency_metadata())

        with ThreadPoolExecutor(8) as ex:
            futures = [ex.submit(call, a) for a in structures]
            time.sleep(1.0)  # both workers are inside pw.x now
            victim = pool.actors[1]
            ray_session.kill(victim)
            responses = [f.result(timeout=600) for f in futures]
        labels = [labels_from_proto(r.labels[0], 8) for r in responses]
        assert all(np.isfinite(lab.energy) for lab in labels)
        assert abs(labels[0].energy / units.Ry - e_direct_ry) < 1e-6
        for lab in labels:
            assert np.abs(lab.forces.sum(axis=0)).max() < 1e-3 and lab.stress.shape == (3, 3)
        assert len({round(lab.energy, 6) for lab in labels}) == 8  # 8 different structures
        assert victim not in pool.actors
    finally:
        served.stop()
