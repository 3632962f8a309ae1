"""Built-in references through ASE (EMT, any factory), the spec string, label
CLI and the first-principles MD bootstrap, all on EMT (no pw.x needed)."""

from __future__ import annotations

import argparse

import ase.io
import numpy as np
import pytest
from ase.build import bulk, molecule
from ase.calculators.emt import EMT

from orchestrator.commands import label as label_cmd
from services.reference import Failure, FailureReason, Result, label_all, make_backend
from services.reference.aimd import AIMDConfig, run_aimd
from services.reference.ase_backend import optional_available
from services.reference.types import ReferenceBackend


def cu(seed=0, n=1):
    a = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(n)
    a.rattle(0.05, seed=seed)
    return a


def run_cli(argv):
    p = argparse.ArgumentParser(prog="nnmd")
    label_cmd.register(p.add_subparsers(dest="command"))
    args = p.parse_args(argv)
    return args.func(args)


def test_emt_backend_matches_emt_and_is_a_backend():
    b = make_backend("emt")
    assert isinstance(b, ReferenceBackend)
    atoms = [cu(0), cu(1)]
    out = b.compute(atoms)
    for a, r in zip(atoms, out):
        assert isinstance(r, Result)
        a = a.copy()
        a.calc = EMT()
        assert r.energy == pytest.approx(a.get_potential_energy(), abs=1e-12)
        np.testing.assert_allclose(r.forces, a.get_forces(), atol=1e-12)
        np.testing.assert_allclose(r.stress, a.get_stress(voigt=False), atol=1e-12)
        assert r.forces.shape == (len(a), 3) and r.stress.shape == (3, 3)


def test_non_periodic_has_no_stress():
    r = make_backend("emt").compute([molecule("H2O")])[0]
    assert r.ok and r.stress is None


def test_unsupported_element_is_a_failure_not_a_label():
    si = bulk("Si", "diamond", a=5.43)
    done, failed = label_all(make_backend("emt"), [cu(0), si, cu(1)])
    assert [a.info["index"] for a in done] == [0, 2]
    assert len(failed) == 1 and failed[0][0] == 1
    assert failed[0][1].reason == FailureReason.CRASHED and "Si" in failed[0][1].message


def test_ase_factory_spec():
    b = make_backend("ase:ase.calculators.lj:LennardJones")
    a = cu(0)
    r = b.compute([a])[0]
    assert r.ok and b.name == "ase:ase.calculators.lj:LennardJones"
    assert abs(r.forces.sum(axis=0)).max() < 1e-10  # Newton's third law


@pytest.mark.parametrize("spec, words", [
    ("ase:ase.calculators.lj", ["module.path:factory"]),
    ("ase:no_such_module_xyz:f", ["cannot import", "no_such_module_xyz"]),
    ("ase:ase.calculators.lj:Nope", ["no callable 'Nope'"]),
    ("vasp", ["unknown reference", "qe:path"]),
    ("qe:", ["pw.x input"]),
])
def test_bad_specs_say_what_to_write(spec, words):
    with pytest.raises(ValueError) as info:
        make_backend(spec)
    for w in words:
        assert w in str(info.value)


def test_factory_that_returns_junk():
    b = make_backend("ase:builtins:dict")
    with pytest.raises(TypeError, match="not an ASE calculator"):
        b.compute([cu(0)])


@pytest.mark.parametrize("spec, module", [("tblite:GFN1-xTB", "tblite.ase"),
                                          ("chgnet", "chgnet")])
def test_optional_backends_skip_cleanly(spec, module):
    if optional_available(module):
        b = make_backend(spec)
        assert b.name.startswith(spec.split(":")[0])
    else:
        with pytest.raises(ImportError, match="pip install"):
            make_backend(spec)


def test_label_cli_writes_labels_and_lists_failures(tmp_path, capsys):
    src = tmp_path / "in.extxyz"
    ase.io.write(src, [cu(0), bulk("Si", "diamond", a=5.43), cu(1)])
    out = tmp_path / "out.extxyz"
    rc = run_cli(["label", "--reference", "emt", "--in", str(src), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 1
    assert "structure 1: crashed" in err and "1 of 3 structures failed" in err
    back = ase.io.read(out, ":")
    assert len(back) == 2
    for a, seed in zip(back, (0, 1)):
        ref = cu(seed)
        ref.calc = EMT()
        assert a.get_potential_energy() == pytest.approx(ref.get_potential_energy(), abs=1e-6)
        np.testing.assert_allclose(a.get_forces(), ref.get_forces(), atol=1e-6)
        np.testing.assert_allclose(a.get_stress(), ref.get_stress(), atol=1e-7)
        assert a.info["source"] == "label" and a.info["reference"] == "emt"
        assert len(a.info["nnmd_reference_settings_hash"]) == 16


def test_label_cli_all_good_and_missing_input(tmp_path):
    src = tmp_path / "in.extxyz"
    ase.io.write(src, [cu(0)])
    assert run_cli(["label", "--in", str(src), "--out", str(tmp_path / "o.extxyz")]) == 0
    with pytest.raises(FileNotFoundError, match="--in"):
        run_cli(["label", "--in", str(tmp_path / "missing.xyz"), "--out", "x.extxyz"])


def test_aimd_frames_are_consistent_labels_and_nve_conserves_energy():
    b = make_backend("emt")
    cfg = AIMDConfig(temperature_K=300, steps=40, timestep_fs=1.0, thermostat="nve", seed=3)
    run = run_aimd(b, cu(0, 2), cfg)
    assert run.failure is None and len(run.frames) == 41
    assert [f.info["step"] for f in run.frames] == list(range(41))
    for f in run.frames[::10]:
        assert f.info["source"] == "aimd"
        a = f.copy()
        a.calc = EMT()  # the stored label is the reference at the frame's own positions
        assert f.get_potential_energy() == pytest.approx(a.get_potential_energy(), abs=1e-10)
        np.testing.assert_allclose(f.get_forces(), a.get_forces(), atol=1e-10)
    etot = [f.get_potential_energy() + f.get_kinetic_energy() for f in run.frames]
    ekin0 = run.frames[0].get_kinetic_energy()
    assert ekin0 > 0
    assert np.ptp(etot) < 0.01 * ekin0  # velocity Verlet at 1 fs: tiny fluctuation
    moved = np.abs(run.frames[-1].positions - run.frames[0].positions).max()
    assert moved > 1e-3


def test_aimd_langevin_heats_a_cold_start(tmp_path):
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    cfg = AIMDConfig(temperature_K=600, steps=150, timestep_fs=2.0, friction_per_fs=0.05, seed=1)
    run = run_aimd(make_backend("emt"), atoms, cfg)
    temps = [f.info["temperature_K"] for f in run.frames[50:]]
    assert 250 < np.mean(temps) < 950  # thermalised near 600 K (32 atoms: broad)


class FailsAfter:
    """A backend that labels with EMT until its n-th call, then fails (unit-test fake)."""

    name = "fails-after"

    def __init__(self, n):
        self.n, self.calls, self.emt = n, 0, make_backend("emt")

    def compute(self, atoms_list):
        self.calls += 1
        if self.calls > self.n:
            return [Failure(FailureReason.NOT_CONVERGED, "fake") for _ in atoms_list]
        return self.emt.compute(atoms_list)


def test_aimd_stops_on_failure_and_keeps_only_good_frames():
    run = run_aimd(FailsAfter(5), cu(0), AIMDConfig(temperature_K=300, steps=20))
    assert run.failure is not None and run.failure.reason == FailureReason.NOT_CONVERGED
    assert len(run.frames) == 5 and all(f.info["source"] == "aimd" for f in run.frames)


def test_bootstrap_cli(tmp_path, capsys):
    start = tmp_path / "start.extxyz"
    ase.io.write(start, cu(0))
    out = tmp_path / "aimd.extxyz"
    rc = run_cli(["bootstrap", "--reference", "emt", "--structure", str(start), "--steps", "6",
                  "--temperature", "300", "--out", str(out)])
    assert rc == 0
    frames = ase.io.read(out, ":")
    assert len(frames) == 7 and frames[3].info["source"] == "aimd"
    assert frames[3].get_momenta().any() and "stress" in frames[3].calc.results
    # and into the Zarr store, provenance aimd, labels equal to the file's
    store = tmp_path / "store"
    with pytest.raises(ValueError, match="--force"):  # exit 2 through nnmd's main
        run_cli(["bootstrap", "--reference", "emt", "--structure", str(start), "--steps", "3",
                 "--temperature", "300", "--out", str(out)])
    assert len(ase.io.read(out, ":")) == 7  # the first run's file is untouched
    rc = run_cli(["bootstrap", "--reference", "emt", "--structure", str(start), "--steps", "3",
                  "--temperature", "300", "--store", str(store), "--campaign", "boot",
                  "--out", str(out), "--force"])
    assert rc == 0
    from services.store import Store

    records = list(Store(str(store), read_only=True).read())
    frames = ase.io.read(out, ":")
    assert len(records) == 4
    for rec, f in zip(records, frames):
        p = rec.provenance
        assert (p.source, p.campaign, p.chain, p.accepted) == ("aimd", "boot", "aimd", True)
        assert len(p.reference_settings_hash) == 16
        assert rec.labels.energy == pytest.approx(f.get_potential_energy(), abs=1e-9)
        np.testing.assert_allclose(rec.labels.forces, f.get_forces(), atol=1e-6)
    assert [r.provenance.step for r in records] == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="--structure is required"):
        run_cli(["bootstrap", "--reference", "emt", "--temperature", "300", "--out", str(out)])


def test_configs_reject_bad_values():
    with pytest.raises(ValueError, match="thermostat"):
        AIMDConfig(temperature_K=300, thermostat="nose")
    with pytest.raises(ValueError, match="temperature_K"):
        AIMDConfig(temperature_K=-1)
