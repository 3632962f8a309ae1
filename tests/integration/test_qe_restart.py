"""QE restarts on real pw.x (8-atom Si, examples/si8.pwi; a few seconds per run).

A chain-like sequence: A (the input's structure rattled by 0.02 A) cold, B (A
rattled again) restarted from A's kept SCF. The restarted energy equals a cold run
of B to 10 x conv_thr and takes fewer SCF iterations; a missing or stale kept SCF,
a symmetric source (other k-points: density only), kept wavefunctions missing
(pw.x fails, then a cold start), ids with '..' and the pruning bound are checked too, as
is a restart through the Reference gRPC service.
"""

from __future__ import annotations

import numpy as np
import pytest
from ase import units

from services.reference import QEBackend, QEConfig
from services.reference.qe_restart import LEAF
from tests.integration.qe_env import QE_MARKS, SI8

pytestmark = QE_MARKS


def tolerance_ev(backend: QEBackend) -> float:
    """10 x conv_thr of the input, Ry -> eV."""
    return 10 * float(backend.template.pw.value("electrons", "conv_thr", 1e-6)) * units.Ry


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("restart")


@pytest.fixture(scope="module")
def backend(work):
    return QEBackend(SI8, QEConfig(ranks=1, timeout_s=300, scratch_root=str(work / "scratch"),
                                   restart_root=str(work / "rr"), keep="failed"))


def step(atoms, seed, sid=None, restart_from=None):
    a = atoms.copy()
    a.rattle(0.02, seed=seed)
    a.info = {}
    if sid:
        a.info["nnmd_id"] = sid
    if restart_from:
        a.info["nnmd_restart_from"] = restart_from
    return a


def cold(atoms):
    a = atoms.copy()
    a.info = {}
    return a


@pytest.fixture(scope="module")
def chain(backend):
    """A cold, B restarted from A, B cold, C restarted from B."""
    a = step(backend.template.atoms, 1, "si/chain000/1")
    b = step(a, 2, "si/chain000/2", "si/chain000/1")
    c = step(b, 3, "si/chain000/3", "si/chain000/2")
    ra, rb = backend.compute([a, b])
    rb_cold = backend.compute_one(cold(b))
    rc = backend.compute_one(c)
    return {"A": ra, "B": rb, "B_cold": rb_cold, "C": rc}


def test_restarted_energy_equals_cold_with_fewer_scf_iterations(backend, chain):
    ra, rb, ref = chain["A"], chain["B"], chain["B_cold"]
    assert ra.ok and rb.ok and ref.ok
    assert ra.info["restarted"] is False and ra.info["kept_as"]
    assert rb.info["restarted"] is True and rb.info["restart_from"] == "si/chain000/1"
    h = rb.info["history"][-1]
    assert h["restart_density"] == "atomic" and h["restart_wfc"] is True
    assert rb.info["restart_read_density"] and rb.info["restart_read_wfc"]
    assert abs(rb.energy - ref.energy) < tolerance_ev(backend), (rb.energy, ref.energy)
    np.testing.assert_allclose(rb.forces, ref.forces, atol=2e-3)
    np.testing.assert_allclose(rb.stress, ref.stress, atol=1e-5)
    assert ref.info["restarted"] is False
    assert rb.info["scf_iterations"] < ref.info["scf_iterations"], (
        rb.info["scf_iterations"], ref.info["scf_iterations"])


def test_pruning_keeps_the_source_and_the_newest(work, chain):
    assert chain["C"].ok and chain["C"].info["restarted"]
    left = sorted(p.name for p in (work / "rr" / "si" / "chain000").iterdir())
    assert left == [f"2{LEAF}", f"3{LEAF}"]
    kept = work / "rr" / "si" / "chain000" / f"3{LEAF}"
    names = sorted(p.name for p in kept.iterdir())
    assert "charge-density.dat" in names and "data-file-schema.xml" in names
    assert any(n.startswith("wfc") for n in names) and not any(
        n.lower().endswith(".upf") for n in names)
    assert list((work / "scratch").iterdir()) == []  # scratch folders removed after success


def test_missing_or_stale_restart_starts_cold(backend, chain, work):
    base = backend.template.atoms
    missing = step(base, 4, "si/chain001/5", "si/chain001/4")
    strained = step(base, 5, "si/chain000/9", "si/chain000/3")
    strained.set_cell(strained.cell[:] * 1.01, scale_atoms=True)
    r_missing, r_strained = backend.compute([missing, strained])
    assert r_missing.ok and r_missing.info["restarted"] is False
    assert "no kept SCF" in " ".join(r_missing.info["restart_notes"])
    assert r_strained.ok and r_strained.info["restarted"] is False
    assert "cell differs" in " ".join(r_strained.info["restart_notes"])
    assert all(not h["restarted"] for h in r_strained.info["history"])


def test_ids_with_dotdot_cannot_escape(backend, work):
    a = step(backend.template.atoms, 6, "../../escaped/1", "../escaped/0")
    r = backend.compute_one(a)
    assert r.ok and r.info["kept_as"] is None and r.info["restarted"] is False
    assert any("'..'" in n for n in r.info["restart_notes"])
    assert not (work / "escaped").exists() and not (work.parent / "escaped").exists()
    assert not list(work.parent.glob("**/escaped"))


def test_symmetric_source_reuses_the_density_only(backend):
    """The input's own structure has 6 symmetry operations (4 k-points); a rattled one
    has none (8 k-points): its wavefunctions cannot be reused, its density can."""
    src = cold(backend.template.atoms)
    src.info["nnmd_id"] = "si/chain002/0"
    nxt = step(backend.template.atoms, 7, "si/chain002/1", "si/chain002/0")
    r0, r1 = backend.compute([src, nxt])
    ref = backend.compute_one(cold(nxt))
    assert r0.ok and r1.ok and ref.ok
    assert r1.info["restarted"] is True and r1.info["restart_read_wfc"] is False
    assert r1.info["history"][-1]["restart_wfc"] is False
    assert "symmetry" in " ".join(r1.info["restart_notes"])
    assert abs(r1.energy - ref.energy) < tolerance_ev(backend)


def test_failed_restart_is_followed_by_a_cold_start(backend, work):
    a = step(backend.template.atoms, 8, "si/chain003/0")
    assert backend.compute_one(a).ok
    kept = work / "rr" / "si" / "chain003" / f"0{LEAF}"
    # wavefunctions of one k-point only (as if kept from a run with fewer k-points):
    # pw.x stops with "cannot open restart file ./out/si8.save/wfc2"
    for f in kept.glob("wfc*.dat"):
        if f.name != "wfc1.dat":
            f.unlink()
    r = backend.compute_one(step(a, 9, "si/chain003/1", "si/chain003/0"))
    assert r.ok, str(r)
    h = r.info["history"]
    assert [(x["restarted"], x["outcome"]) for x in h] == [(True, "crashed"), (False, "ok")]
    assert "read_wfc" in h[0]["message"]
    assert r.info["restarted"] is False and r.info["attempts"] == 2


def test_restart_through_the_reference_service(work):
    from services.proto.nnmd.v1 import reference_pb2
    from services.reference.service import ReferenceServicer
    from services.runtime.channel import idempotency_metadata
    from services.runtime.convert import from_atoms, structure_to_proto
    from tests.unit.reference.served import Served

    servicer = ReferenceServicer(f"qe:{SI8}", workers=0, ranks=1, scratch=str(work / "svc"),
                                 restart_root=str(work / "svc-rr"))
    seen = []
    inner = servicer.backend.compute

    def recording(atoms_list):
        out = inner(atoms_list)
        seen.extend(out)
        return out

    servicer.backend.compute = recording
    served = Served(servicer)
    try:
        a = step(servicer.backend.template.atoms, 10, "si/svc/0")
        b = step(a, 11, "si/svc/1", "si/svc/0")
        for s in (a, b):
            req = reference_pb2.ComputeRequest(structures=[structure_to_proto(from_atoms(s)[0])])
            resp = served.stub.Compute(req, metadata=idempotency_metadata())
            assert resp.labels[0].HasField("energy_ev")
    finally:
        served.stop()
    assert [o.info["restarted"] for o in seen] == [False, True]
    assert (work / "svc-rr" / "si" / "svc" / f"1{LEAF}").is_dir()
