"""Fixed-charge electrostatics for the Delta baseline: an Ewald sum of point charges.

An ionic material's forces are long-ranged: a rigid-ion teacher with formal charges
loses 27-38 % of its force RMS when its Coulomb sum is cut at 5 A (docs/llzo.md), more
than a 5 A network can learn back. With a `CoulombTerm` in the potential, the networks
learn only the short-range remainder E - E_coul, and E_coul is added back exactly.

Every atom of element e carries the fixed charge q_e (units of e). Energy, in eV:

    E = k_e [ 1/2 sum_{i,j,n}' q_i q_j erfc(a r)/r                       (real space, r < r_cut)
              + (2 pi / V) sum_{k != 0} exp(-k^2 / 4a^2) / k^2 |S(k)|^2  (reciprocal space, |k| < k_cut)
              - a / sqrt(pi) sum_i q_i^2                                 (self)
              - pi Q^2 / (2 V a^2) ]                                     (neutralising background, Q = sum q_i)

with S(k) = sum_i q_i exp(i k.r_i) and k_e = 14.399645 eV A (LAMMPS' qqr2e in metal
units, so that the same charges in LAMMPS' coul/long + kspace give the same energy).
The splitting a and the cut-offs come from one accuracy eps: a = sqrt(-ln eps) / r_cut,
k_cut = 2 a sqrt(-ln eps), so both neglected tails are ~eps. Open boundaries (no pbc):
the plain pair sum over all pairs. Mixed boundaries (slabs, wires) are not supported.

Per-atom energies split every term by atom (pairs half to each end, the reciprocal sum
as q_i Re(exp(-i k.r_i) S(k)), the background evenly), so they add up to E. The virial
(eV, the convention of potential.py: stress = -virial / V) of the reciprocal part is
sum_k E_k [delta_ab - 2 k_a k_b / k^2 (1 + k^2 / 4a^2)] and of the background E_bg delta_ab.

This module is numerics only (numpy): O(N * n_k) memory in chunks of k-vectors, fine
for the few hundred atoms of training cells and native MD; large MD runs in LAMMPS,
where the same term is pair_style coul/long + kspace_style (services/md/lammps.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import erfc

from .neighbors import neighbor_pairs, pair_forces, validate_geometry

COULOMB_EV_A = 14.399645  # e^2 / (4 pi eps0) in eV A; LAMMPS' qqr2e for units metal
K_CHUNK = 512  # k-vectors per block of the reciprocal sum (memory N x K_CHUNK)


@dataclass(frozen=True, eq=False)
class CoulombTerm:
    """charges (n_species,) in e, in the potential's species order; r_cut (A) of the real-space
    sum; accuracy: the relative size of the neglected real- and reciprocal-space tails."""

    charges: np.ndarray
    r_cut: float = 8.0
    accuracy: float = 1e-6

    def __post_init__(self):
        q = np.asarray(self.charges, dtype=np.float64)
        if q.ndim != 1 or q.size == 0 or not np.all(np.isfinite(q)):
            raise ValueError(f"coulomb charges must be a non-empty finite (n_species,) array, got {q!r}")
        if not (np.isfinite(self.r_cut) and self.r_cut > 0):
            raise ValueError(f"coulomb r_cut must be > 0 Angstrom (got {self.r_cut})")
        if not (0 < self.accuracy < 0.1):
            raise ValueError(f"coulomb accuracy must be in (0, 0.1), e.g. 1e-6 (got {self.accuracy})")
        object.__setattr__(self, "charges", q)
        object.__setattr__(self, "r_cut", float(self.r_cut))
        object.__setattr__(self, "accuracy", float(self.accuracy))

    def __eq__(self, other):
        return (isinstance(other, CoulombTerm) and np.array_equal(self.charges, other.charges)
                and self.r_cut == other.r_cut and self.accuracy == other.accuracy)

    def __hash__(self):
        return hash((tuple(self.charges.tolist()), self.r_cut, self.accuracy))

    @property
    def alpha(self) -> float:
        """The Ewald splitting parameter a, 1/A."""
        return float(np.sqrt(-np.log(self.accuracy)) / self.r_cut)

    @property
    def k_cut(self) -> float:
        """Reciprocal-space cut-off |k| (1/A)."""
        return float(2.0 * self.alpha * np.sqrt(-np.log(self.accuracy)))

    @classmethod
    def from_dict(cls, d: dict, species) -> CoulombTerm:
        """{"charges": {"Li": 1, ...}, "r_cut": 8.0, "accuracy": 1e-6} -> CoulombTerm for `species`.

        Every species needs a charge (0 is allowed); ValueError names the missing or
        unknown element."""
        if not isinstance(d, dict):
            raise ValueError(f"coulomb must be a mapping like {{charges: {{Li: 1, O: -2}}}}, got {d!r}")
        unknown = set(d) - {"charges", "r_cut", "accuracy"}
        if unknown:
            raise ValueError(f"coulomb: unknown keys {sorted(unknown)}; allowed: charges, r_cut, accuracy")
        charges = d.get("charges")
        if not isinstance(charges, dict) or not charges:
            raise ValueError("coulomb.charges must map every element to its charge in e, e.g. {Li: 1, O: -2}")
        missing = [s for s in species if s not in charges]
        if missing:
            raise ValueError(f"coulomb.charges: no charge for {', '.join(missing)} "
                             f"(the model's elements are {', '.join(species)}; give 0 for a neutral one)")
        extra = sorted(set(charges) - set(species))
        if extra:
            raise ValueError(f"coulomb.charges: {', '.join(extra)} not among the model's elements "
                             f"({', '.join(species)})")
        try:
            q = [float(charges[s]) for s in species]
        except (TypeError, ValueError):
            raise ValueError(f"coulomb.charges: every charge must be a number (got {charges!r})") from None
        return cls(np.array(q), float(d.get("r_cut", 8.0)), float(d.get("accuracy", 1e-6)))

    def to_dict(self, species) -> dict:
        return {"charges": {s: float(q) for s, q in zip(species, self.charges)}, "r_cut": self.r_cut,
                "accuracy": self.accuracy}


@dataclass(frozen=True)
class CoulombResult:
    """energy eV; energies (N,) eV; forces (N, 3) eV/A or None; virial (3, 3) eV or None."""

    energy: float
    energies: np.ndarray
    forces: np.ndarray | None
    virial: np.ndarray | None


def coulomb(term: CoulombTerm, positions, types, cell=None, pbc=False, *, forces: bool = True,
            pairs=None) -> CoulombResult:
    """The fixed-charge Coulomb energy (forces, virial) of one structure.

    positions (N, 3) A; types (N,) species indices into term.charges; cell (3, 3) rows are
    lattice vectors; pbc all True (Ewald) or all False (direct sum). pairs: the full
    neighbour list within term.r_cut at these positions (e.g. a NeighborList's update in
    MD), else one is built."""
    pos, cell, pbc = validate_geometry(positions, cell, pbc)
    types = np.asarray(types, dtype=np.int64)
    if types.shape != (len(pos),):
        raise ValueError(f"types has shape {types.shape}, expected ({len(pos)},)")
    if types.size and (types.min() < 0 or types.max() >= len(term.charges)):
        raise ValueError(f"types must be in 0..{len(term.charges) - 1}")
    q = term.charges[types]
    if pbc.all():
        return _ewald(term, pos, q, cell, forces, pairs)
    if not pbc.any():
        return _direct(pos, q, forces)
    raise ValueError("the Coulomb term needs pbc in all three directions or in none "
                     f"(got pbc={pbc.tolist()}); slabs and wires are not supported")


def _direct(pos, q, forces):
    n = len(pos)
    e_atoms = np.zeros(n)
    F = np.zeros((n, 3)) if forces else None
    vir = np.zeros((3, 3)) if forces else None
    if n < 2:
        return CoulombResult(0.0, e_atoms, F, vir)
    i, j = np.triu_indices(n, 1)
    r = pos[j] - pos[i]
    d = np.linalg.norm(r, axis=1)
    pe = COULOMB_EV_A * q[i] * q[j] / d
    e_atoms = 0.5 * (np.bincount(i, pe, n) + np.bincount(j, pe, n))
    if forces:
        g = (-pe / (d * d))[:, None] * r  # dE/dr_ij along r_ij = R_j - R_i
        F = pair_forces(i, j, g, n)
        vir = -(r.T @ g)
    return CoulombResult(float(e_atoms.sum()), e_atoms, F, vir)


def k_vectors(cell, k_cut: float) -> np.ndarray:
    """Reciprocal lattice vectors 0 < |k| < k_cut in one half-space (k and -k: one of them), (K, 3)."""
    B = 2.0 * np.pi * np.linalg.inv(cell).T  # rows b_i, a_i . b_j = 2 pi delta_ij
    nmax = [int(np.ceil(k_cut * np.linalg.norm(cell[a]) / (2.0 * np.pi))) for a in range(3)]
    n1 = np.arange(0, nmax[0] + 1)
    n2 = np.arange(-nmax[1], nmax[1] + 1)
    n3 = np.arange(-nmax[2], nmax[2] + 1)
    n = np.stack(np.meshgrid(n1, n2, n3, indexing="ij"), axis=-1).reshape(-1, 3)
    half = (n[:, 0] > 0) | ((n[:, 0] == 0) & ((n[:, 1] > 0) | ((n[:, 1] == 0) & (n[:, 2] > 0))))
    k = n[half] @ B
    k2 = np.einsum("kx,kx->k", k, k)
    return k[k2 < k_cut * k_cut]


def _ewald(term, pos, q, cell, forces, pairs=None):
    n = len(pos)
    a = term.alpha
    vol = abs(float(np.linalg.det(cell)))
    e_atoms = np.zeros(n)
    F = np.zeros((n, 3)) if forces else None
    vir = np.zeros((3, 3)) if forces else None
    # real space: a full pair list, each pair counted from both ends (half to each centre)
    if pairs is None:
        pairs = neighbor_pairs(pos, cell, True, term.r_cut)
    if len(pairs):
        d = pairs.distances
        qq = COULOMB_EV_A * q[pairs.i] * q[pairs.j]
        ec = erfc(a * d) / d
        e_atoms += 0.5 * np.bincount(pairs.i, qq * ec, n)
        if forces:
            # d/dr [erfc(a r)/r] = -erfc(a r)/r^2 - 2a/sqrt(pi) exp(-a^2 r^2)/r
            dphi = -qq * (ec / d + 2.0 * a / np.sqrt(np.pi) * np.exp(-(a * d) ** 2) / d)
            g = (0.5 * dphi / d)[:, None] * pairs.vectors  # dE/dr_ij per directed pair
            for k in range(3):
                F[:, k] += np.bincount(pairs.i, g[:, k], n) - np.bincount(pairs.j, g[:, k], n)
            vir += -(pairs.vectors.T @ g)
    # reciprocal space, over one half-space (factor 2), in blocks of k-vectors
    kv = k_vectors(cell, term.k_cut)
    pref = 4.0 * np.pi / vol * COULOMB_EV_A  # 2 (half-space) x 2 pi / V
    for s in range(0, len(kv), K_CHUNK):
        k = kv[s:s + K_CHUNK]
        k2 = np.einsum("kx,kx->k", k, k)
        f = pref * np.exp(-k2 / (4.0 * a * a)) / k2  # (K,)
        kr = pos @ k.T  # (N, K)
        c, sn = np.cos(kr), np.sin(kr)
        s_re, s_im = q @ c, q @ sn  # (K,)
        e_atoms += q * ((c * s_re + sn * s_im) @ f)
        if forces:
            # F_i = 2 x (2 pi / V) k_e 2 q_i sum_k f_k k Im(conj(S) e^{i k.r_i})
            w = (sn * s_re - c * s_im) * f  # (N, K)
            F += 2.0 * q[:, None] * (w @ k)
            ek = f * (s_re * s_re + s_im * s_im)  # (K,) energy of each k (both halves)
            fac = 2.0 / k2 * (1.0 + k2 / (4.0 * a * a))
            vir += np.eye(3) * ek.sum() - np.einsum("k,ka,kb->ab", ek * fac, k, k)
    # self and neutralising background
    e_atoms -= COULOMB_EV_A * a / np.sqrt(np.pi) * q * q
    qtot = q.sum()
    e_bg = -COULOMB_EV_A * np.pi * qtot * qtot / (2.0 * vol * a * a)
    if n:
        e_atoms += e_bg / n
    if forces:
        vir += np.eye(3) * e_bg
    return CoulombResult(float(e_atoms.sum()), e_atoms, F, vir)
