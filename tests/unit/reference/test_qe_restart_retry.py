"""QE restarts and the retry ladder without Quantum ESPRESSO: ids that cannot escape
the restart folder, keeping and pruning kept SCFs, the stale rules, the atomic
density extrapolation against an analytic Gaussian, the symmetry check, the ladder's
rendered inputs, and the whole compute_one flow on a fake pw.x (fake_pw.py)."""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

import numpy as np
import pytest
from ase import units
from ase.build import bulk

from services.proto.nnmd.v1 import common_pb2
from services.reference.qe import QEBackend, QEConfig, RetryPolicy
from services.reference.qe_input import parse_pw_input
from services.reference.qe_restart import (
    LEAF,
    RestartIdError,
    RestartStore,
    _read_records,
    _write_records,
    chain_key,
    extrapolate_density,
    has_symmetry,
    id_parts,
    parse_k_points,
)
from services.reference.types import FailureReason
from services.runtime.convert import (
    from_atoms,
    structure_from_proto,
    structure_to_proto,
    to_atoms,
)
from services.runtime.errors import InvalidArgument
from tests.unit.reference.test_reference_qe_input import SI, write_input

FAKE_PW = Path(__file__).with_name("fake_pw.py")


# ------------------------------------------------------------------ ids and folders
def test_id_parts_and_chain_key():
    assert id_parts("cu/chain000/17") == ["cu", "chain000", "17"]
    assert chain_key("cu/chain000/17") == "cu/chain000"
    assert id_parts("/abs//x/./y") == ["abs", "x", "y"]  # absolute = below the root too
    assert id_parts("a b/c:d") == ["a_b", "c_d"]
    assert id_parts(".hidden/1") == ["_.hidden", "1"]
    for bad in ("../x", "cu/../../etc/passwd", "cu/chain/..", "a\\..\\b", "", "  ", "/", 17):
        with pytest.raises(RestartIdError) as info:
            id_parts(bad)
        assert "nnmd_id" in str(info.value) and "campaign/chain/step" in str(info.value)


def test_folders_stay_below_the_root(tmp_path):
    store = RestartStore(tmp_path / "root", "h", 1.0)
    for sid in ("cu/c0/1", "/etc/passwd", "..x/y", "a/.../b"):
        assert store.folder(sid).resolve().is_relative_to((tmp_path / "root").resolve())
    with pytest.raises(RestartIdError, match=r"'\.\.'"):
        store.folder("cu/../../x")
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "link").symlink_to(tmp_path)  # a link inside the root
    with pytest.raises(RestartIdError, match="outside restart_root"):
        store.folder("link/x/1")


def _fake_save(folder: Path, tag: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "charge-density.dat").write_text(tag)
    (folder / "data-file-schema.xml").write_text(tag)
    (folder / "wfc1.dat").write_text(tag)
    (folder / "wfcup2.dat").write_text(tag)
    (folder / "Si.pz-vbc.UPF").write_text("pseudo")  # pw.x's copy: not kept
    (folder / "other.txt").write_text("?")
    return folder


def test_save_keeps_restart_files_and_prune_bounds_each_chain(tmp_path):
    store = RestartStore(tmp_path / "r", "h", 1.0)
    src = _fake_save(tmp_path / "save", "x")
    path = store.save("cu/c0/0", src, {"k": 1})
    assert sorted(p.name for p in path.iterdir()) == [
        "charge-density.dat", "data-file-schema.xml", "meta.json", "wfc1.dat", "wfcup2.dat"]
    meta = json.loads((path / "meta.json").read_text())
    assert meta["id"] == "cu/c0/0" and meta["settings"] == "h" and meta["k"] == 1
    store.save("cu/c1/0", src, {})  # another chain: never pruned by c0
    # an SLHMC chain: step s restarts from the last accepted step (accepted: 0, 3, 4)
    accepted = 0
    for step in range(1, 8):
        store.save(f"cu/c0/{step}", src, {})
        store.prune(f"cu/c0/{step}", f"cu/c0/{accepted}")
        left = sorted(p.name for p in (tmp_path / "r" / "cu" / "c0").iterdir())
        assert left == sorted({f"{accepted}{LEAF}", f"{step}{LEAF}"}), (step, left)
        if step in (3, 4):
            accepted = step
    assert (tmp_path / "r" / "cu" / "c1" / f"0{LEAF}").is_dir()
    # saving an id again replaces its folder
    _fake_save(tmp_path / "save2", "y")
    store.save("cu/c0/7", tmp_path / "save2", {})
    assert (store.folder("cu/c0/7") / "charge-density.dat").read_text() == "y"
    with pytest.raises(FileNotFoundError):
        store.save("cu/c0/8", tmp_path, {})  # nothing to keep: no charge density
    assert not store.folder("cu/c0/8").exists()


def _si8(seed=None, amp=0.02):
    a = bulk("Si", "diamond", a=5.43, cubic=True)
    if seed is not None:
        a.rattle(amp, seed=seed)
    return a


def test_plan_stale_rules(tmp_path):
    store = RestartStore(tmp_path / "r", "h", 0.3)
    a = _si8(1)
    labels = ["Si"] * 8
    meta = {"labels": labels, "cell": a.cell[:].tolist(), "positions": a.positions.tolist(),
            "nks": 8, "k_points": None, "nsym": 1}
    store.save("si/c/1", _fake_save(tmp_path / "s", "x"), meta)
    b = a.copy()
    b.rattle(0.02, seed=2)
    plan = store.plan("si/c/1", b, labels, always_same_k=False)
    assert not isinstance(plan, str) and plan.use_wfc and plan.source_id == "si/c/1"
    assert "no kept SCF" in store.plan("si/c/9", b, labels, False)
    assert "'..'" in store.plan("../c/1", b, labels, False)
    assert "species order" in store.plan("si/c/1", b, ["Ge"] + labels[1:], False)
    strained = b.copy()
    strained.set_cell(b.cell[:] * 1.001, scale_atoms=True)
    assert "cell differs" in store.plan("si/c/1", strained, labels, False)
    far = b.copy()
    far.positions[3] += [0.5, 0, 0]
    assert "restart_max_displacement" in store.plan("si/c/1", far, labels, False)
    other = RestartStore(tmp_path / "r", "other-settings", 0.3)
    assert "other QE settings" in other.plan("si/c/1", b, labels, False)
    # a structure with symmetry: its k-points may differ, so the density only
    plan = store.plan("si/c/1", _si8(), labels, always_same_k=False)
    assert not plan.use_wfc and "symmetry" in plan.why_no_wfc
    assert store.plan("si/c/1", _si8(), labels, always_same_k=True).use_wfc
    store.save("si/c/2", _fake_save(tmp_path / "s", "x"), {**meta, "nsym": 6})
    assert not store.plan("si/c/2", b, labels, False).use_wfc


def test_has_symmetry():
    p = _si8()
    assert has_symmetry(p.cell[:], p.get_scaled_positions(), ["Si"] * 8)
    r = _si8(1)
    assert not has_symmetry(r.cell[:], r.get_scaled_positions(), ["Si"] * 8)
    big = p.repeat((2, 1, 1))
    big.rattle(0.02, seed=4)
    assert not has_symmetry(big.cell[:], big.get_scaled_positions(), ["Si"] * 16)
    sc = r.repeat((2, 1, 1))  # a supercell: a pure translation is a symmetry
    assert has_symmetry(sc.cell[:], sc.get_scaled_positions(), ["Si"] * 16)
    # two species on the diamond sites (zincblende) keep symmetry; labels matter
    assert has_symmetry(p.cell[:], p.get_scaled_positions(), ["Ga"] * 4 + ["As"] * 4)
    lab = ["Si"] * 7 + ["Si2"]
    assert has_symmetry(p.cell[:], p.get_scaled_positions(), lab)  # a single marked site
    q = p.copy()
    q.positions[7] += [0.05, 0.02, -0.03]
    q.positions[2] += [0.01, 0.04, 0.0]
    assert not has_symmetry(q.cell[:], q.get_scaled_positions(), ["Si"] * 8)


def test_parse_k_points():
    text = """
     No symmetry found
     number of k points=     2  Marzari-Vanderbilt smearing, width (Ry)=  0.0200
                       cart. coord. in units 2pi/alat
        k(    1) = (   0.0000000   0.0000000   0.0000000), wk =   0.5000000
        k(    2) = (   0.0000000   0.0000000  -0.5000000), wk =   1.5000000
                       cryst. coord.
        k(    1) = (   0.0000000   0.0000000   0.0000000), wk =   0.5000000
        k(    2) = (   0.0000000   0.0000000  -0.5000000), wk =   1.5000000
"""
    nks, kl, nsym = parse_k_points(text)
    assert nks == 2 and nsym == 1
    assert kl == ["0.0000000 0.0000000 0.0000000 0.5000000",
                  "0.0000000 0.0000000 -0.5000000 1.5000000"]
    nks, kl, nsym = parse_k_points(text.replace("No symmetry found",
                                                "6 Sym. Ops. (no inversion) found"))
    assert nsym == 6


# ------------------------------------------------------------------ density extrapolation
ALPHA = 1.3  # 1/bohr^2: a Gaussian atomic charge of 4 electrons


def _gaussian_upf(path: Path) -> Path:
    r = np.exp(np.linspace(np.log(1e-4), np.log(40.0), 1201))  # log mesh, bohr
    rab = r * (np.log(40.0) - np.log(1e-4)) / 1200
    rho = 4 * np.pi * r**2 * 4 * (ALPHA / np.pi) ** 1.5 * np.exp(-ALPHA * r**2)

    def block(tag, x):
        return f"<{tag} type=\"real\" size=\"{len(x)}\">\n" + " ".join(
            f"{v:.15e}" for v in x) + f"\n</{tag}>\n"

    path.write_text("<UPF version=\"2.0.1\">\n<PP_MESH>\n" + block("PP_R", r)
                    + block("PP_RAB", rab) + "</PP_MESH>\n" + block("PP_RHOATOM", rho)
                    + "</UPF>\n")
    return path


def _gaussian_rho_g(mill, b, atoms):
    g2 = ((mill @ b) ** 2).sum(axis=1)
    omega = atoms.get_volume() / units.Bohr**3
    phase = np.exp(-2j * np.pi * mill @ atoms.get_scaled_positions(wrap=False).T).sum(axis=1)
    return 4 * np.exp(-g2 / (4 * ALPHA)) * phase / omega


def test_atomic_extrapolation_moves_the_atomic_charges(tmp_path):
    old = _si8(1)
    new = old.copy()
    new.rattle(0.05, seed=2)
    b = 2 * np.pi * np.linalg.inv(old.cell[:] / units.Bohr).T
    n = 4
    mill = np.array([(i, j, k) for i in range(-n, n + 1) for j in range(-n, n + 1)
                     for k in range(-n, n + 1)], dtype=np.int32)
    bonding = 0.01 * np.exp(-np.abs(mill).sum(axis=1))  # "the SCF's own part"
    rho_old = _gaussian_rho_g(mill, b, old) + bonding
    magnet = np.linspace(0, 1, len(mill)) + 0j
    src = tmp_path / "charge-density.dat"
    _write_records(src, [np.array([0, len(mill), 2], "<i4").tobytes(),
                         b.astype("<f8").tobytes(), mill.astype("<i4").tobytes(),
                         rho_old.astype("<c16").tobytes(), magnet.astype("<c16").tobytes()])
    pseudo = _gaussian_upf(tmp_path / "Si.gauss.UPF")
    dst = tmp_path / "new.dat"
    extrapolate_density(src, dst, old, new, ["Si"] * 8, {"Si": pseudo})
    recs = _read_records(dst)
    assert recs[:3] == _read_records(src)[:3] and recs[4] == _read_records(src)[4]
    rho_new = np.frombuffer(recs[3], "<c16")
    expected = _gaussian_rho_g(mill, b, new) + bonding
    assert np.abs(rho_new - expected).max() < 1e-6 * np.abs(expected).max()
    g0 = np.flatnonzero((mill == 0).all(axis=1))[0]
    assert abs(rho_new[g0] - rho_old[g0]) < 1e-12 * abs(rho_old[g0])  # total charge unchanged
    with pytest.raises(ValueError):
        extrapolate_density(src, dst, old, new, ["Si"] * 8, {"Si": tmp_path / "none.UPF"})
    strained = new.copy()
    strained.set_cell(new.cell[:] * 1.01, scale_atoms=True)
    with pytest.raises(ValueError, match="volume"):
        extrapolate_density(src, dst, old, strained, ["Si"] * 8, {"Si": pseudo})


# ------------------------------------------------------------------ the ladder
INSULATOR = SI.replace("  occupations = 'smearing', smearing = 'mv', degauss = 0.02\n", "")


def _backend(tmp_path, text=SI, **cfg) -> QEBackend:
    tmp_path.mkdir(parents=True, exist_ok=True)
    return QEBackend(write_input(tmp_path, text), QEConfig(**cfg))


def _electrons(backend, rung):
    atoms = backend.template.atoms
    pw = parse_pw_input(backend.template.render(atoms, backend.ladder(rung)))
    return (pw.value("electrons", "mixing_beta"), pw.value("electrons", "electron_maxstep"),
            pw.value("system", "degauss"), pw.value("system", "occupations"))


def test_ladder_renders_each_rung(tmp_path):
    b = _backend(tmp_path)
    assert b.uses_smearing()
    assert _electrons(b, 0) == (0.4, None, 0.02, "smearing")
    assert _electrons(b, 1) == (0.2, 200, 0.02, "smearing")
    assert _electrons(b, 2) == (0.2, 200, 0.04, "smearing")
    assert _electrons(b, 3) == (0.1, 400, 0.08, "smearing")
    ins = _backend(tmp_path / "ins", INSULATOR)
    assert not ins.uses_smearing()
    for rung, expected in ((0, (0.4, None)), (1, (0.2, 200)), (2, (0.2, 200)), (3, (0.1, 400))):
        beta, steps, degauss, occ = _electrons(ins, rung)
        assert (beta, steps) == expected and degauss is None and occ is None  # no smearing added
    custom = _backend(tmp_path / "c", SI.replace("mixing_beta = 0.4",
                                                 "mixing_beta = 0.6, electron_maxstep = 30"),
                      retry=RetryPolicy(mixing_factor=0.25, maxstep_factor=3, degauss_factor=1.5))
    assert _electrons(custom, 2) == (0.15, 90, 0.03, "smearing")
    assert RetryPolicy().attempts == 3
    for bad, word in (({"attempts": 0}, "attempts"), ({"degauss_factor": 0.5}, "degauss"),
                      ({"mixing_factor": 0}, "mixing_factor")):
        with pytest.raises(ValueError, match=word):
            RetryPolicy(**bad)


# ------------------------------------------------------------------ compute_one on a fake pw.x
@pytest.fixture
def fake(tmp_path, monkeypatch):
    """QEConfig pieces that run fake_pw.py instead of mpirun + pw.x; ``rule`` sets its
    behaviour, ``calls()`` what it saw."""
    script = tmp_path / "fake-mpirun"
    script.write_text(f"#!/bin/sh\nexec {sys.executable} {FAKE_PW} \"$@\"\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    log = tmp_path / "calls.jsonl"

    class Fake:
        cfg = {"mpirun": str(script), "pw": str(script), "extra_mpirun_args": (),
               "scratch_root": str(tmp_path / "scratch"), "restart_root": str(tmp_path / "rr"),
               "timeout_s": 60}

        @staticmethod
        def rule(**kw):
            monkeypatch.setenv("FAKE_PW_RULE", json.dumps({"log": str(log), **kw}))

        @staticmethod
        def calls():
            return [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []

    Fake.rule()
    return Fake


def test_ladder_runs_until_converged_and_records_every_attempt(tmp_path, fake):
    b = _backend(tmp_path, **fake.cfg)
    fake.rule(need_beta_le=0.25)
    r = b.compute_one(b.template.atoms)
    assert r.ok and r.info["attempts"] == 2 and r.info["retried_after"] == ["not_converged"]
    assert r.info["settings"] == {"electrons.mixing_beta": "0.2",
                                  "electrons.electron_maxstep": "200"}
    h = r.info["history"]
    assert [x["outcome"] for x in h] == ["not_converged", "ok"]
    assert h[0]["settings"] == {} and "NOT achieved" in h[0]["message"]
    assert [c["mixing_beta"] for c in fake.calls()] == ["0.4", "0.2"]


def test_ladder_exhausted_failure_says_what_was_tried(tmp_path, fake):
    b = _backend(tmp_path, **fake.cfg)
    fake.rule(need_beta_le=0.01)
    f = b.compute_one(b.template.atoms)
    assert not f.ok and f.reason == FailureReason.NOT_CONVERGED and f.attempts == 3
    seen = [(c["mixing_beta"], c["electron_maxstep"], c["degauss"]) for c in fake.calls()]
    assert seen == [("0.4", None, "0.02"), ("0.2", "200", "0.02"), ("0.2", "200", "0.04")]
    assert [x["rung"] for x in f.info["history"]] == [0, 1, 2]
    assert f.info["history"][2]["settings"]["system.degauss"] == "0.04"
    assert "attempt 1 (input as given): not_converged" in f.message
    assert "attempt 3 (mixing_beta=0.2, electron_maxstep=200, degauss=0.04)" in f.message
    assert f.scratch and Path(f.scratch, "attempt-3", "pw.in").is_file()


def test_insulator_ladder_never_adds_smearing(tmp_path, fake):
    b = _backend(tmp_path, INSULATOR, **fake.cfg)
    fake.rule(need_beta_le=0.01)
    f = b.compute_one(b.template.atoms)
    assert f.attempts == 3 and [c["degauss"] for c in fake.calls()] == [None] * 3
    for i in (1, 2, 3):
        assert "smearing" not in Path(f.scratch, f"attempt-{i}", "pw.in").read_text()


def test_a_crash_is_retried_on_the_same_rung(tmp_path, fake):
    b = _backend(tmp_path, **fake.cfg)
    fake.rule(crash_calls=[1], need_beta_le=0.25)
    r = b.compute_one(b.template.atoms)
    assert r.ok and [x["outcome"] for x in r.info["history"]] == ["crashed", "not_converged", "ok"]
    assert [x["rung"] for x in r.info["history"]] == [0, 0, 1]


def _chain(b, n, *, restart=True):
    structures = []
    a = b.template.atoms.repeat((2, 2, 1))  # (2 atoms always have inversion symmetry)
    for step in range(n):
        a = a.copy()
        a.rattle(0.01, seed=step)
        a.info = {"nnmd_id": f"si/chain000/{step}"}
        if restart and step:
            a.info["nnmd_restart_from"] = f"si/chain000/{step - 1}"
        structures.append(a)
    return structures


def test_restart_flow_on_fake_pw(tmp_path, fake):
    b = _backend(tmp_path, **fake.cfg)
    out = b.compute(_chain(b, 4))
    assert all(o.ok for o in out)
    assert [o.info["restarted"] for o in out] == [False, True, True, True]
    assert [o.info["scf_iterations"] for o in out] == [8, 5, 5, 5]
    calls = fake.calls()
    assert [c["startingpot"] for c in calls] == [None, "file", "file", "file"]
    assert all(c["restart_wfc"] for c in calls[1:])  # no symmetry, same k-points
    assert out[1].info["history"][0]["restart_density"].startswith("copy")  # placeholder UPF
    chain = tmp_path / "rr" / "si" / "chain000"
    assert sorted(p.name for p in chain.iterdir()) == [f"2{LEAF}", f"3{LEAF}"]
    kept = Path(out[3].info["kept_as"])
    assert not (kept / "Si.pz-vbc.UPF").exists() and (kept / "wfc1.dat").exists()
    assert list((tmp_path / "scratch").iterdir()) == []  # scratch folders cleaned up


def test_missing_restart_and_bad_ids_start_cold(tmp_path, fake):
    b = _backend(tmp_path, **fake.cfg)
    a = b.template.atoms.copy()
    a.info = {"nnmd_id": "si/c/5", "nnmd_restart_from": "si/c/4"}
    r = b.compute_one(a)
    assert r.ok and r.info["restarted"] is False and "no kept SCF" in r.info["restart_notes"][0]
    assert fake.calls()[-1]["startingpot"] is None
    a.info = {"nnmd_id": "../../escaped/1", "nnmd_restart_from": "../x"}
    r = b.compute_one(a)
    assert r.ok and r.info["kept_as"] is None and not r.info["restarted"]
    assert any("'..'" in n and "not kept" in n for n in r.info["restart_notes"])
    assert not (tmp_path / "escaped").exists() and not (tmp_path.parent / "escaped").exists()
    off = _backend(tmp_path / "off", **{**fake.cfg, "restart": False,
                                        "restart_root": str(tmp_path / "off-rr")})
    a.info = {"nnmd_id": "si/c/6"}
    assert off.compute_one(a).info["kept_as"] is None and not (tmp_path / "off-rr").exists()


def test_failed_restart_is_followed_by_an_uncounted_cold_start(tmp_path, fake):
    b = _backend(tmp_path, **{**fake.cfg, "retry": RetryPolicy(attempts=1)})
    first, second = _chain(b, 2)
    assert b.compute_one(first).ok
    fake.rule(crash_restarted=True)
    r = b.compute_one(second)
    assert r.ok and r.info["attempts"] == 2 and r.info["restarted"] is False
    h = r.info["history"]
    assert [(x["restarted"], x["outcome"], x["rung"]) for x in h] == [
        (True, "crashed", 0), (False, "ok", 0)]
    assert [c["startingpot"] for c in fake.calls()[1:]] == ["file", None]
    assert any("cold start" in n for n in r.info["restart_notes"])


def test_restart_settings_validated():
    with pytest.raises(ValueError, match="restart_max_displacement"):
        QEConfig(restart_max_displacement=0)
    with pytest.raises(ValueError, match="restart_extrapolation"):
        QEConfig(restart_extrapolation="linear")
    assert QEConfig(scratch_root="/x").restart_dir() == Path("/x/nnmd-qe-restart")
    assert QEConfig(restart_root="/y").restart_dir() == Path("/y")


# ------------------------------------------------------------------ the wire
def test_ids_travel_through_proto_and_ase():
    a = _si8(1)
    a.info.update(nnmd_id="cu/chain000/17", nnmd_restart_from="cu/chain000/12")
    s, _ = from_atoms(a)
    assert (s.id, s.restart_from) == ("cu/chain000/17", "cu/chain000/12")
    msg = common_pb2.Structure.FromString(structure_to_proto(s).SerializeToString())
    assert (msg.id, msg.restart_from_id) == ("cu/chain000/17", "cu/chain000/12")
    back = to_atoms(structure_from_proto(msg))
    assert back.info["nnmd_id"] == "cu/chain000/17"
    assert back.info["nnmd_restart_from"] == "cu/chain000/12"
    plain = to_atoms(structure_from_proto(structure_to_proto(from_atoms(_si8())[0])))
    assert "nnmd_id" not in plain.info and "nnmd_restart_from" not in plain.info
    legacy = _si8()
    legacy.info["id"] = "old-style"
    assert from_atoms(legacy)[0].id == "old-style"
    msg.restart_from_id = "x" * 2000
    with pytest.raises(InvalidArgument) as info:
        structure_from_proto(msg, field="structures[3]")
    assert info.value.field == "structures[3].restart_from_id"


def test_client_request_carries_the_ids():
    from services.reference.client import compute_request

    a = _si8(1)
    a.info.update(nnmd_id="si/c/2", nnmd_restart_from="si/c/1")
    req = compute_request([a, _si8(2)], ["energy", "forces"])
    assert (req.structures[0].id, req.structures[0].restart_from_id) == ("si/c/2", "si/c/1")
    assert (req.structures[1].id, req.structures[1].restart_from_id) == ("", "")


def test_service_hands_the_ids_to_the_backend():
    from services.proto.nnmd.v1 import reference_pb2
    from services.reference.service import ReferenceServicer
    from services.runtime.channel import idempotency_metadata
    from tests.unit.reference.served import Served

    seen = []

    class Recording:
        name = "recording"

        def compute(self, atoms_list):
            from services.reference import make_backend

            seen.extend(dict(a.info) for a in atoms_list)
            return make_backend("emt").compute(atoms_list)

    served = Served(ReferenceServicer("emt", backend=Recording()))
    try:
        cu = bulk("Cu", "fcc", a=3.6, cubic=True)
        cu.info.update(nnmd_id="cu/c/3", nnmd_restart_from="cu/c/2")
        req = reference_pb2.ComputeRequest(structures=[structure_to_proto(from_atoms(cu)[0])])
        served.stub.Compute(req, metadata=idempotency_metadata())
    finally:
        served.stop()
    assert seen[0]["nnmd_id"] == "cu/c/3" and seen[0]["nnmd_restart_from"] == "cu/c/2"


def test_wavefunctions_of_other_k_points_are_not_trusted(tmp_path, fake):
    b = _backend(tmp_path, **{**fake.cfg, "retry": RetryPolicy(attempts=1)})
    first, second = _chain(b, 2)
    r = b.compute_one(first)
    meta_path = Path(r.info["kept_as"]) / "meta.json"
    meta = json.loads(meta_path.read_text())
    assert meta["nks"] == 1 and meta["nsym"] == 1
    meta_path.write_text(json.dumps({**meta, "nks": 2}))  # as if kept from another k-point list
    r = b.compute_one(second)
    assert r.ok and not r.info["restarted"]
    h = r.info["history"]
    assert [(x["restarted"], x["outcome"]) for x in h] == [(True, "crashed"), (False, "ok")]
    assert "k-points" in h[0]["message"]
