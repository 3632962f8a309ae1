"""Metropolis Monte Carlo with local (O(neighbours)) energy updates: pure numerics, no I/O.

The source's MC (docs/source.md, "Metropolis Monte Carlo for unknown structures"): with a
trained NNP, accept a move with probability
min(1, exp(-dE / kT)). Three moves:

    translate  one atom by a uniform displacement in [-d, d]^3 (d = max_displacement, A)
    swap       exchange the species of two atoms of different species
    vacancy    exchange an atom with a vacancy site (atomic number 0, element "X"): the
               atom jumps to the site and leaves a vacancy behind

Vacancy sites carry no energy and are no one's neighbour. Fixed sites (`MCConfig.fixed`,
indices) are never moved, swapped or filled.

Local update (why a move costs O(neighbours)): an atomic energy E_k depends only on the
atoms within the cutoff Rc of k (radial pairs, angular triplets j, l both within Rc of k,
the Delta baseline pair term). So after changing sites M (moved or re-typed), only E_k of
the atoms within Rc of the old or new positions of M change, plus M's own. Their neighbours
lie within 2 Rc of those points: one cell-list query of radius 2 Rc around each point gives
every periodic image needed (`CellIndex`, triclinic and small cells included), and
dE = sum_{k affected} (E_k' - E_k) with the stored E_k.

With the NNP (`NNPEnergy`, incremental=True, the default) run() goes further
(mc_incremental.py, docs/mc.md): the workspace keeps every centre's descriptor G_k, and a
move updates only the pair and triplet terms that involve the changed sites, re-runs the
networks of the affected centres, and restores the old rows from an undo log on rejection.
Any other LocalEnergy (and NNPEnergy(incremental=False)) takes the generic path above.
Both paths make the same proposals from the same U_PER_STEP uniforms per step, so they
produce the same chain.

    state = init(positions, numbers, cell, pbc, config, energy, seed)
    state = run(state, config, energy, n_steps)      # or step(state, config, energy)

`energy` is any `LocalEnergy` (the NNP's `NNPEnergy` in production, an analytic model in
the exactness tests). `run` works on private buffers and returns a new frozen `MCState`;
pass the same `Workspace` to successive calls to skip the O(N) rebuild of the cell list.

Proposals are symmetric (uniform atom, uniform displacement; uniform ordered pair over
atoms of different species, whose number a swap does not change; uniform over
(atom, vacancy) pairs), so the chain samples exp(-E/kT) restricted to the energy window.
Per-move temperatures (`move_temperatures`) make each move kind satisfy detailed balance at
its own temperature; mixing kinds at different temperatures is an exploration device of the
source product and samples no single Boltzmann distribution.

Units: A, eV, K. Index names: i, j sites; k affected centres; c candidates (site images).
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from .md.state import fields_from_json, json_fields, make_rng
from .md.units import KB_EV_PER_K
from .neighbors import MIN_DISTANCE, neighbor_pairs, validate_geometry

MOVES = ("translate", "swap", "vacancy")
VACANCY = 0  # atomic number of a vacancy site ("X")
U_PER_STEP = 8  # uniforms drawn per step (always, whatever the move): kind, picks, step, accept
_CHUNK = 4096  # steps of uniforms drawn at once (the stream does not depend on it)


# ---------------------------------------------------------------- the energy interface


class LocalEnergy(Protocol):
    """An energy that is a sum of atomic energies, each depending only on atoms within `cutoff`.

    cutoff: A (0 = independent atoms: E_k depends on atom k alone).
    energies(numbers_c (m,), positions_c (m, 3), pair_i (P,) sorted < m, numbers_j (P,),
             rij (P, 3)) -> (m,) eV: the atomic energies of m centres from every neighbour
             j within `cutoff` (all periodic images; rij = R_j - R_i, A). positions_c may be
             shifted by lattice vectors in periodic directions.
    """

    cutoff: float

    def energies(self, numbers_c, positions_c, pair_i, numbers_j, rij) -> np.ndarray: ...


class NNPEnergy:
    """The NNP (nnmd_kernels.potential.Potential) as a LocalEnergy, through compute_pairs.

    incremental: run() keeps per-centre descriptors and updates only the terms a move
    changes (nnmd_kernels/mc_incremental.py, docs/mc.md); False: every affected centre is
    recomputed through compute_pairs (the generic LocalEnergy path, the old behaviour).
    serial_below: evaluations of fewer centres run the numba kernels on one thread; a
    local update is ~100 centres, too little work to pay for waking a thread pool (on a
    busy machine that costs more than the work itself).
    """

    def __init__(self, potential, backend: str = "auto", serial_below: int = 512,
                 incremental: bool = True):
        if potential.coulomb is not None:
            raise ValueError("Monte Carlo updates energies locally, and this model has a Coulomb term "
                             "(fixed charges, Ewald: a global sum) that such updates cannot follow; "
                             "use a model trained without train.coulomb for MC")
        self.potential = potential
        self.backend = backend
        self.serial_below = int(serial_below)
        self.cutoff = float(potential.cutoff)
        self.incremental = bool(incremental)
        self._tables = None

    def tables(self):
        """The potential as flat arrays for the incremental kernels (built once)."""
        if self._tables is None:
            from .mc_incremental import Tables

            self._tables = Tables(self.potential)
        return self._tables

    def energies(self, numbers_c, positions_c, pair_i, numbers_j, rij) -> np.ndarray:
        pot = self.potential
        m = len(numbers_c)
        # Centres first, then one "ghost" entry per pair for its neighbour's type.
        types = np.concatenate([pot.types_of(numbers_c), pot.types_of(numbers_j)])
        pair_j = m + np.arange(len(pair_i), dtype=np.int64)
        with _threads(1 if m < self.serial_below else None):
            res = pot.compute_pairs(types, pair_i, pair_j, rij, m, forces=False,
                                    backend=self.backend)
        return res.energies


@contextmanager
def _threads(n):
    """numba's thread count for the calling thread, n (None = unchanged)."""
    try:
        import numba
    except ImportError:
        numba = None
    if n is None or numba is None:
        yield
        return
    old = numba.get_num_threads()
    numba.set_num_threads(min(n, old))
    try:
        yield
    finally:
        numba.set_num_threads(old)


# ---------------------------------------------------------------- configuration


@dataclass(frozen=True)
class MCConfig:
    """Settings of a Metropolis run. Validated here, with messages that say what to change.

    temperature: K, for every move kind without its own entry in move_temperatures.
    translate, swap, vacancy: move weights (normalised to probabilities).
    max_displacement: A, half-width of the uniform translate step.
    move_temperatures: {kind: K} per-move temperatures.
    fixed: indices of sites never moved, swapped or filled.
    energy_window: (e_min, e_max) eV/atom relative to the starting energy per atom; a
      proposal outside is rejected. None = no window.
    """

    temperature: float
    translate: float = 1.0
    swap: float = 0.0
    vacancy: float = 0.0
    max_displacement: float = 0.1
    move_temperatures: tuple = ()
    fixed: tuple = ()
    energy_window: tuple | None = None

    def __post_init__(self):
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature must be a finite number > 0 K, got {self.temperature}")
        for kind in MOVES:
            w = getattr(self, kind)
            if not (math.isfinite(w) and w >= 0):
                raise ValueError(f"{kind}: move weight must be finite and >= 0, got {w}")
        if sum(getattr(self, k) for k in MOVES) <= 0:
            raise ValueError("moves: all move weights are 0; give at least one, e.g. translate=1")
        if self.translate > 0 and not (math.isfinite(self.max_displacement)
                                       and self.max_displacement > 0):
            raise ValueError(f"max_displacement must be > 0 A when translate moves are on, "
                             f"got {self.max_displacement}")
        temps = dict(self.move_temperatures.items() if isinstance(self.move_temperatures, dict)
                     else self.move_temperatures)
        for kind, t in temps.items():
            if kind not in MOVES:
                raise ValueError(f"move_temperatures: unknown move {kind!r}; use one of {MOVES}")
            if not (math.isfinite(t) and t > 0):
                raise ValueError(f"move_temperatures[{kind!r}] must be > 0 K, got {t}")
        object.__setattr__(self, "move_temperatures", tuple(sorted((k, float(v))
                                                                   for k, v in temps.items())))
        fixed = tuple(int(i) for i in self.fixed)
        if any(i < 0 for i in fixed):
            raise ValueError(f"fixed: site indices must be >= 0, got {min(fixed)}")
        object.__setattr__(self, "fixed", tuple(sorted(set(fixed))))
        if self.energy_window is not None:
            lo, hi = (float(x) for x in self.energy_window)
            if not lo <= 0 <= hi or lo == hi:
                raise ValueError(f"energy_window ({lo}, {hi}) eV/atom must contain the start "
                                 "(0) and have e_min < e_max, e.g. (-0.5, 0.5)")
            object.__setattr__(self, "energy_window", (lo, hi))

    @property
    def probabilities(self) -> np.ndarray:
        """(3,) probabilities of translate, swap, vacancy."""
        w = np.array([getattr(self, k) for k in MOVES], dtype=float)
        return w / w.sum()

    def beta(self, kind: str) -> float:
        """1/kT of a move kind, 1/eV."""
        return 1.0 / (KB_EV_PER_K * dict(self.move_temperatures).get(kind, self.temperature))


# ---------------------------------------------------------------- state


@dataclass(frozen=True, eq=False)
class MCState:
    """A Metropolis chain between steps. Frozen; to_dict/from_dict give a JSON checkpoint.

    positions (N, 3) A (sites: atoms and vacancies); numbers (N,) (0 = vacancy);
    cell (3, 3) A, rows = lattice vectors; pbc (3,); energy eV (sum of energies);
    energies (N,) eV per site (0 on vacancies); energy0 eV/atom at the start (window);
    tried/accepted: moves per kind; rng_state: the bit generator's state.
    """

    positions: np.ndarray
    numbers: np.ndarray
    cell: np.ndarray
    pbc: np.ndarray
    energy: float
    energies: np.ndarray
    energy0: float
    step: int = 0
    tried: dict = field(default_factory=lambda: dict.fromkeys(MOVES, 0))
    accepted: dict = field(default_factory=lambda: dict.fromkeys(MOVES, 0))
    rng_state: dict | None = None

    def replace(self, **changes) -> MCState:
        return dataclasses.replace(self, **changes)

    @property
    def n_atoms(self) -> int:
        """Real atoms (vacancy sites excluded)."""
        return int(np.count_nonzero(self.numbers != VACANCY))

    def acceptance(self) -> dict:
        return {k: (self.accepted[k] / self.tried[k] if self.tried[k] else float("nan"))
                for k in MOVES}

    def to_dict(self) -> dict:
        return json_fields(self)

    @classmethod
    def from_dict(cls, d: dict) -> MCState:
        out = fields_from_json(cls, d)
        for name in ("positions", "cell", "energies"):
            out[name] = np.asarray(out[name], dtype=float)
        out["positions"] = out["positions"].reshape(-1, 3)
        out["numbers"] = np.asarray(out["numbers"], dtype=np.int64)
        out["pbc"] = np.asarray(out["pbc"], dtype=bool)
        for name in ("energy", "energy0"):
            out[name] = float(out[name])
        for name in ("tried", "accepted"):
            out[name] = {k: int(out[name].get(k, 0)) for k in MOVES}
        return cls(**out)


# ---------------------------------------------------------------- cell list


def _index_box(cell, pbc) -> np.ndarray:
    """A non-singular box: the cell, with open directions' zero vectors completed by unit
    vectors (fractional coordinates along them are then Cartesian, never wrapped)."""
    box = np.array(cell, dtype=float)
    for k in range(3):
        if not pbc[k] and np.linalg.norm(box[k]) < 1e-6:
            best, best_det = None, -1.0
            for e in np.eye(3):
                trial = box.copy()
                trial[k] = e
                # Rank test with the other zero vectors replaced by something independent.
                det = abs(np.linalg.det(np.where(np.linalg.norm(trial, axis=1)[:, None] < 1e-6,
                                                 np.eye(3), trial)))
                if det > best_det:
                    best, best_det = e, det
            box[k] = best
    if abs(np.linalg.det(box)) < 1e-9:
        raise ValueError("cell: open directions need lattice vectors independent of the "
                         "periodic ones (or zero vectors)")
    return box


_KEY_BASE = 1 << 20  # flat bin keys: (t + base/2) packed base-2^20 per direction


class CellIndex:
    """Active sites binned in fractional coordinates, updated one site at a time.

    Bins are at least `radius` wide in every direction (perpendicular heights), and periodic
    directions wrap; `query(points, r)` returns every image (site, lattice shift) within r of
    any point, for any cell (triclinic; cells smaller than 2 r see several images of a site).
    Open directions are binned without bounds.
    """

    def __init__(self, positions, cell, pbc, active, radius: float):
        self.pbc = np.asarray(pbc, dtype=bool)
        self.box = _index_box(cell, self.pbc)
        self.inv = np.linalg.inv(self.box)
        self.recip = np.linalg.norm(self.inv, axis=0)  # |b*_k| = 1 / height_k
        self.radius = float(radius) if radius > 0 else 1.0
        width = self.radius * self.recip  # fractional width of `radius` per direction
        self.n_bins = np.where(self.pbc, np.maximum(1, np.floor(1.0 / width)), 1).astype(np.int64)
        self.width = np.where(self.pbc, 1.0 / self.n_bins, width)
        n = len(positions)
        self.frac = np.zeros((n, 3))
        self.active = np.zeros(n, dtype=bool)
        self.bin_of = np.zeros(n, dtype=np.int64)
        self.bins: dict = {}
        for i in range(n):
            self._set_frac(i, positions[i])
            if active[i]:
                self.activate(i)

    def _set_frac(self, i, x):
        s = np.asarray(x, dtype=float) @ self.inv
        s = np.where(self.pbc, s - np.floor(s), s)
        self.frac[i] = np.where(self.pbc & (s >= 1.0), 0.0, s)

    def _key(self, t):
        """Flat integer key(s) of wrapped bin indices t (..., 3)."""
        t = np.asarray(t, dtype=np.int64) + _KEY_BASE // 2
        return (t[..., 0] * _KEY_BASE + t[..., 1]) * _KEY_BASE + t[..., 2]

    def _bin(self, s) -> int:
        t = np.floor(s / self.width).astype(np.int64)
        t = np.where(self.pbc, np.minimum(t, self.n_bins - 1), t)
        return int(self._key(t))

    def cartesian(self, i) -> np.ndarray:
        """Wrapped Cartesian position(s) of site(s) i, A."""
        return self.frac[i] @ self.box

    def activate(self, i):
        b = self._bin(self.frac[i])
        self.bins.setdefault(b, []).append(int(i))
        self.bin_of[i] = b
        self.active[i] = True

    def deactivate(self, i):
        self.bins[int(self.bin_of[i])].remove(int(i))
        self.active[i] = False

    def move(self, i, x):
        was = self.active[i]
        if was:
            self.deactivate(i)
        self._set_frac(i, x)
        if was:
            self.activate(i)

    def query(self, points, r: float):
        """Active site images within r (strictly) of any point: (site (K,), position (K, 3) A)."""
        points = np.atleast_2d(np.asarray(points, dtype=float))
        s = points @ self.inv
        delta = r * self.recip
        lo = np.floor((s - delta) / self.width).astype(np.int64)  # (p, 3)
        hi = np.floor((s + delta) / self.width).astype(np.int64)
        half = _KEY_BASE // 2
        keys = []
        for a, b in zip(lo + half, hi + half):  # flat keys of the unwrapped bins per point
            ka = np.arange(a[0], b[0] + 1)[:, None, None] * _KEY_BASE
            kb = np.arange(a[1], b[1] + 1)[None, :, None]
            kc = np.arange(a[2], b[2] + 1)[None, None, :]
            keys.append(((ka + kb) * _KEY_BASE + kc).ravel())
        keys = np.unique(np.concatenate(keys))  # one per (bin, image)
        t = np.stack([keys // _KEY_BASE**2, (keys // _KEY_BASE) % _KEY_BASE,
                      keys % _KEY_BASE], axis=1) - half
        w = np.where(self.pbc, t % self.n_bins, t)
        shift = np.where(self.pbc, (t - w) // self.n_bins, 0)
        sites, rows, counts = [], [], []
        get = self.bins.get
        for row, key in enumerate(self._key(w).tolist()):
            ids = get(key)
            if ids:
                sites.extend(ids)
                rows.append(row)
                counts.append(len(ids))
        if not sites:
            return np.zeros(0, dtype=np.int64), np.zeros((0, 3))
        sites = np.asarray(sites, dtype=np.int64)
        y = (self.frac[sites] + np.repeat(shift[rows], counts, axis=0)) @ self.box
        d2 = np.min(np.sum((y[:, None, :] - points[None, :, :]) ** 2, axis=2), axis=1)
        keep = d2 < r * r
        return sites[keep], y[keep]


# ---------------------------------------------------------------- local energies


def local_energies(index: CellIndex, numbers, sites, points, energy: LocalEnergy):
    """Atomic energies of every active site within energy.cutoff of `points`, plus `sites`.

    Returns (centres (m,) site indices, E (m,) eV); inactive `sites` get 0. Raises
    _Overlap when two atoms are closer than MIN_DISTANCE.
    """
    rc = energy.cutoff
    sites = np.asarray(sites, dtype=np.int64)
    if rc <= 0:
        centres = sites[index.active[sites]]
        e = np.zeros(len(sites))
        if len(centres):
            z = np.zeros(0, dtype=np.int64)
            e[index.active[sites]] = energy.energies(numbers[centres], index.cartesian(centres),
                                                     z, z, np.zeros((0, 3)))
        return sites, e
    cand, y = index.query(points, 2.0 * rc)  # (K,), (K, 3)
    d2 = np.min(np.sum((y[:, None, :] - points[None, :, :]) ** 2, axis=2), axis=1)
    near = np.flatnonzero(d2 < rc * rc)
    # One image per affected site (any image gives the same neighbourhood).
    centres, first = np.unique(cand[near], return_index=True)
    crow = near[first]  # candidate rows of the centres
    d = y[None, :, :] - y[crow][:, None, :]  # (m, K, 3)
    r2 = np.einsum("mkx,mkx->mk", d, d)
    mask = r2 < rc * rc
    mask[np.arange(len(crow)), crow] = False  # the centre itself
    pi, pk = np.nonzero(mask)  # row-major: sorted by centre
    if len(pi) and r2[pi, pk].min() < MIN_DISTANCE**2:
        raise _Overlap
    e = energy.energies(numbers[centres], y[crow], pi, numbers[cand[pk]], d[pi, pk])
    others = np.setdiff1d(sites, centres)  # moved sites that are now vacancies
    return np.concatenate([centres, others]), np.concatenate([e, np.zeros(len(others))])


class _Overlap(Exception):
    """A proposal put two atoms within MIN_DISTANCE: rejected."""


def full_energies(positions, numbers, cell, pbc, energy: LocalEnergy) -> np.ndarray:
    """(N,) atomic energies of every site from a full neighbour list (vesin); 0 on vacancies."""
    pos, cell, pbc = validate_geometry(positions, cell, pbc)
    numbers = np.asarray(numbers, dtype=np.int64)
    real = np.flatnonzero(numbers != VACANCY)
    box = _index_box(cell, pbc)
    s = pos[real] @ np.linalg.inv(box)
    s = np.where(pbc, s - np.floor(s), s)
    x = s @ box  # the same wrapped positions the cell list sees
    out = np.zeros(len(numbers))
    if len(real) == 0:
        return out
    if energy.cutoff > 0:
        pairs = neighbor_pairs(x, cell, pbc, energy.cutoff)
        if len(pairs) and pairs.distances.min() < MIN_DISTANCE:
            k = int(np.argmin(pairs.distances))
            raise ValueError(f"atoms {real[pairs.i[k]]} and {real[pairs.j[k]]} are "
                             f"{pairs.distances[k]:.4f} A apart (< {MIN_DISTANCE} A): "
                             "overlapping atoms in the starting structure")
        pi, pj, rij = pairs.i, pairs.j, pairs.vectors
    else:
        pi = pj = np.zeros(0, dtype=np.int64)
        rij = np.zeros((0, 3))
    out[real] = energy.energies(numbers[real], x, pi, numbers[real][pj], rij)
    return out


# ---------------------------------------------------------------- workspace


class Workspace:
    """Mutable caches of a run, in sync with one state: the cell list and, per species, the
    movable sites (for O(1) uniform proposals). Built in O(N) from a state."""

    def __init__(self, state: MCState, config: MCConfig, energy: LocalEnergy,
                 caches: bool = True):
        n = len(state.numbers)
        if config.fixed and config.fixed[-1] >= n:
            raise ValueError(f"fixed: site index {config.fixed[-1]} is out of range for "
                             f"{n} sites (indices start at 0)")
        self.positions = np.array(state.positions, dtype=float)
        self.numbers = np.array(state.numbers, dtype=np.int64)
        self.energies = np.array(state.energies, dtype=float)
        self.energy = float(state.energy)
        movable = np.ones(n, dtype=bool)
        movable[list(config.fixed)] = False
        self.movable = movable
        self.groups: dict = {}  # atomic number -> sorted list of movable sites
        for i in np.flatnonzero(movable):
            self.groups.setdefault(int(self.numbers[i]), []).append(int(i))
        self.config = config
        self.synced = None  # the state these caches describe
        self.index = self.engine = None
        if not caches:  # proposals only (init's check of the moves)
            return
        if _incremental(energy):
            self._build_engine(state, config, energy)
        else:
            # Bins 2 Rc wide: a move queries radius 2 Rc, so 2-3 bins per direction.
            self.index = CellIndex(self.positions, state.cell, state.pbc,
                                   self.numbers != VACANCY, 2.0 * energy.cutoff)

    def _build_engine(self, state, config, energy):
        """The incremental engine (O(N): Verlet list, every descriptor) and the proposal
        groups as arrays."""
        from .mc_incremental import MIN_HALF_SKIN, Engine

        step = math.sqrt(3.0) * config.max_displacement if config.translate > 0 else 0.0
        # Half skin h >= the longest single step (x 1.01): a list rebuilt at the current
        # positions is always valid for the proposed one.
        self.engine = Engine(energy.tables(), self.positions, self.numbers, state.cell,
                             state.pbc, max(MIN_HALF_SKIN, 1.01 * step))
        # The engine's energies are its own full evaluation (equal to state.energies to
        # rounding); the chain continues from them.
        self.energies = self.engine.E
        self.energy = math.fsum(self.engine.E)
        zs = sorted(self.groups)
        n = len(self.numbers)
        self.gsites = np.zeros((len(zs), max(1, n)), dtype=np.int64)
        self.gcount = np.zeros(len(zs), dtype=np.int64)
        self.gof = np.full(n, -1, dtype=np.int64)
        for g, z in enumerate(zs):
            sites = self.groups[z]
            self.gsites[g, :len(sites)] = sites
            self.gcount[g] = len(sites)
            self.gof[sites] = g
        self.greal = np.array([g for g, z in enumerate(zs) if z != VACANCY and self.groups[z]],
                              dtype=np.int64)
        self.gvac = zs.index(VACANCY) if VACANCY in zs else -1

    def retype(self, i, z):
        """Site i gets atomic number z. Groups stay sorted, so that a proposal depends on the
        state alone (a run resumed from a checkpoint draws the same moves)."""
        old = int(self.numbers[i])
        if self.movable[i]:
            g = self.groups[old]
            del g[bisect.bisect_left(g, i)]  # memmove: negligible next to the energy
            bisect.insort(self.groups.setdefault(int(z), []), int(i))
        self.numbers[i] = z


def check_moves(config: MCConfig, ws: Workspace) -> None:
    """ValueError when a move kind with weight > 0 can never be proposed on this structure."""
    real = {z: len(g) for z, g in ws.groups.items() if z != VACANCY and g}
    if config.translate > 0 and not real:
        raise ValueError("translate: no movable atoms (all fixed?); set translate=0 or "
                         "free some atoms")
    if config.swap > 0 and len(real) < 2:
        raise ValueError("swap: the movable atoms are all of one species; set swap=0")
    if config.vacancy > 0 and (not real or not ws.groups.get(VACANCY)):
        raise ValueError("vacancy: needs movable atoms and movable vacancy sites (element X, "
                         "atomic number 0); set vacancy=0 or add X sites")


# ---------------------------------------------------------------- init / step / run


def init(positions, numbers, cell, pbc, config: MCConfig, energy: LocalEnergy, seed) -> MCState:
    """A chain at step 0 (full O(N) energy evaluation). seed: int or sequence of ints."""
    pos, cell, pbc = validate_geometry(positions, cell, pbc)
    numbers = np.asarray(numbers, dtype=np.int64)
    if numbers.shape != (len(pos),):
        raise ValueError(f"numbers must have shape ({len(pos)},), got {numbers.shape}")
    e = full_energies(pos, numbers, cell, pbc, energy)
    n_real = max(1, int(np.count_nonzero(numbers != VACANCY)))
    rng = make_rng(seed)
    state = MCState(positions=pos.copy(), numbers=numbers.copy(), cell=cell, pbc=pbc,
                    energy=float(e.sum()), energies=e, energy0=float(e.sum()) / n_real,
                    rng_state=rng.bit_generator.state)
    check_moves(config, Workspace(state, config, energy, caches=False))
    return state


def _index(u: float, n: int) -> int:
    """floor(u n) for a uniform u in [0, 1), clipped to n - 1."""
    return min(int(u * n), n - 1)


def _pick(groups, u) -> int:
    """The site floor(u n) of the union of `groups` (lists of sites, concatenated)."""
    k = _index(u, sum(len(g) for g in groups))
    for g in groups:
        if k < len(g):
            return g[k]
        k -= len(g)
    raise AssertionError("unreachable")


def _propose(kind, ws: Workspace, config: MCConfig, u):
    """(sites, displacement or None), or None when this move is impossible now.

    u: this step's U_PER_STEP uniforms (u[1:4] picks, u[2:5] the displacement). The
    incremental kernels (mc_incremental.run_moves) make the same proposals from the same u.
    """
    real = [g for z, g in sorted(ws.groups.items()) if z != VACANCY and g]
    if kind == "translate":
        if not real:
            return None
        d = config.max_displacement
        return (_pick(real, u[1]),), d * (2.0 * np.asarray(u[2:5]) - 1.0)
    if kind == "swap":
        if len(real) < 2:
            return None
        # Uniform over ordered pairs of atoms of different species: the species pair
        # (a, b), a != b, with weight n_a n_b, then one atom of each. A swap keeps every
        # n_a, so the reverse move has the same probability.
        n = [len(g) for g in real]
        w = [(n[a] * n[b] if a != b else 0, a, b) for a in range(len(n)) for b in range(len(n))]
        total = 0.0
        for x, _, _ in w:
            total += x
        target, acc = u[1] * total, 0.0
        a, b = len(n) - 1, len(n) - 2
        for x, aa, bb in w:
            if aa != bb:
                acc += x
                if acc > target:
                    a, b = aa, bb
                    break
        return (real[a][_index(u[2], n[a])], real[b][_index(u[3], n[b])]), None
    vac = ws.groups.get(VACANCY)
    if not real or not vac:
        return None
    return (_pick(real, u[1]), vac[_index(u[2], len(vac))]), None


def _attempt(kind, ws: Workspace, config: MCConfig, energy: LocalEnergy, u, n_real) -> bool:
    prop = _propose(kind, ws, config, u)
    log_u = math.log(u[7]) if u[7] > 0 else -math.inf
    if prop is None:
        return False
    sites, data = prop
    idx = ws.index
    if kind == "translate":
        (i,) = sites
        old = idx.cartesian(i)
        idx.move(i, old + data)
        points = np.stack([old, idx.cartesian(i)])

        def undo():
            idx.move(i, old)
    else:
        i, j = sites
        zi, zj = int(ws.numbers[i]), int(ws.numbers[j])
        ws.retype(i, zj)
        ws.retype(j, zi)
        if kind == "vacancy":  # i real -> vacancy, j vacancy -> real
            idx.deactivate(i)
            idx.activate(j)
        points = np.stack([idx.cartesian(i), idx.cartesian(j)])

        def undo():
            if kind == "vacancy":
                idx.deactivate(j)
                idx.activate(i)
            ws.retype(i, zi)
            ws.retype(j, zj)
    try:
        centres, e_new = local_energies(idx, ws.numbers, sites, points, energy)
    except _Overlap:
        undo()
        return False
    de = float(e_new.sum() - ws.energies[centres].sum())
    ok = math.isfinite(de)
    if ok and config.energy_window is not None:
        lo, hi = config.energy_window
        rel = (ws.energy + de) / n_real - ws.energy0
        ok = lo <= rel <= hi
    ok = ok and (de <= 0 or log_u < -config.beta(kind) * de)
    if not ok:
        undo()
        return False
    ws.energies[centres] = e_new
    ws.energy += de
    if kind == "translate":
        ws.positions[sites[0]] = ws.positions[sites[0]] + data
    return True


def _incremental(energy) -> bool:
    """The incremental engine applies: the NNP, with numba available."""
    if not (isinstance(energy, NNPEnergy) and energy.incremental):
        return False
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def _uniforms(rng, n_steps):
    """U_PER_STEP uniforms per step, in chunks (the same stream for any split of a run)."""
    done = 0
    while done < n_steps:
        k = min(_CHUNK, n_steps - done)
        yield rng.random((k, U_PER_STEP))
        done += k


def run(state: MCState, config: MCConfig, energy: LocalEnergy, n_steps: int,
        workspace: Workspace | None = None) -> MCState:
    """n_steps Metropolis moves from `state`; returns the new state (the input is untouched).

    Pass the Workspace returned by `workspace_for` (or one used in the previous call) to
    avoid the O(N) rebuild; it is rebuilt whenever it is not in sync with `state`.
    """
    if n_steps < 0:
        raise ValueError(f"n_steps must be >= 0, got {n_steps}")
    ws = workspace if workspace is not None else Workspace.__new__(Workspace)
    inc = _incremental(energy)
    if (getattr(ws, "synced", None) is not state or ws.config is not config
            or (ws.engine is not None) != inc):
        ws.__init__(state, config, energy)  # O(N): the caches describe another state
    ws.energy0 = state.energy0
    rng = make_rng(state.rng_state)
    p = config.probabilities
    n_real = max(1, state.n_atoms)
    cp = np.cumsum(p)
    if inc:
        tried, accepted = _run_incremental(ws, config, rng, n_steps, n_real, cp)
        tried = {k: state.tried[k] + int(tried[a]) for a, k in enumerate(MOVES)}
        accepted = {k: state.accepted[k] + int(accepted[a]) for a, k in enumerate(MOVES)}
        eng = ws.engine
        ws.positions = eng.pos
        ws.numbers = eng.numbers()
        ws.energies = eng.E
        ws.energy = math.fsum(eng.E)  # re-summed once per call: no accumulated rounding
    else:
        tried, accepted = dict(state.tried), dict(state.accepted)
        for U in _uniforms(rng, n_steps):
            for u in U:
                kind = MOVES[min(int(np.searchsorted(cp, u[0] * cp[-1], side="right")), 2)]
                tried[kind] += 1
                if _attempt(kind, ws, config, energy, u, n_real):
                    accepted[kind] += 1
    new = state.replace(positions=ws.positions.copy(), numbers=ws.numbers.copy(),
                        energy=ws.energy, energies=ws.energies.copy(),
                        step=state.step + n_steps, tried=tried, accepted=accepted,
                        rng_state=rng.bit_generator.state)
    ws.synced = new
    return new


def _run_incremental(ws: Workspace, config: MCConfig, rng, n_steps, n_real, cp):
    """The moves in mc_incremental.run_moves; (tried (3,), accepted (3,))."""
    from .mc_incremental import run_moves

    eng = ws.engine
    t = eng.t
    betas = np.array([config.beta(k) for k in MOVES])
    window = (np.array([*config.energy_window, 1.0]) if config.energy_window is not None
              else np.zeros(3))
    tried = np.zeros(3, dtype=np.int64)
    accepted = np.zeros(3, dtype=np.int64)
    estate = np.array([ws.energy])
    for U in _uniforms(rng, n_steps):
        s, last = 0, -1
        while s < len(U):
            s, rebuild = run_moves(
                U, s, cp, betas, float(config.max_displacement), window, float(n_real),
                float(ws.energy0), estate, eng.pos, eng.ref, eng.typ, ws.gof, ws.gsites,
                ws.gcount, ws.greal, ws.gvac, eng.half_skin, eng.G, eng.B, eng.E, eng.off,
                eng.nbr, eng.sh, t.mean, t.istd, t.P, eng.S, t.N, eng.xb, eng.a, eng.b,
                eng.logc, eng.logG, eng.logB, eng.logE, eng.flag, tried, accepted, *eng.scratch)
            if rebuild:
                if s == last:
                    raise RuntimeError("mc: Verlet list rebuilt twice for one proposal")
                last = s
                eng.rebuild()  # a site would leave its Verlet skin: O(N), rare
    return tried, accepted


def step(state: MCState, config: MCConfig, energy: LocalEnergy,
         workspace: Workspace | None = None) -> MCState:
    """One Metropolis move."""
    return run(state, config, energy, 1, workspace)


def workspace_for(state: MCState, config: MCConfig, energy: LocalEnergy) -> Workspace:
    """A Workspace in sync with `state`, to pass to run/step."""
    ws = Workspace(state, config, energy)
    ws.synced = state
    return ws
