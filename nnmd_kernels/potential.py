"""The Behler–Parrinello potential: descriptor + per-element networks + Delta baseline.

    E = sum_i E_i,   E_i = e0[e_i] + (1/M) sum_m NN_{e_i, m}((G_i - mu_{e_i}) / sigma_{e_i}) + 1/2 sum_j phi(r_ij)
                            [+ E_i^coul: the fixed-charge Ewald term, electrostatics.py, when the potential has one]

Forces and the virial come from one vector-Jacobian product through the
descriptor in pair space (see descriptor.py): with g_ij = dE/dr_ij,
F_i += g_ij, F_j -= g_ij and virial = -sum_ij r_ij (x) g_ij (LAMMPS convention,
eV; stress = -virial / V in ASE's convention, eV/A^3).

Three interchangeable backends compute the descriptor: "numba" (fast, parallel;
chosen by "auto"), "numpy" (the readable reference) and, for whole-structure
energies only, "naive" (an O(N^2) oracle with explicit loops; tests only).
"cuda" (gpu/potential_cuda.py) runs neighbours, descriptor, networks and forces on a
GPU; "auto" picks it when CuPy sees a device, and never imports CuPy otherwise.

This module imports no file format and no device backend, not even lazily: they
depend on it, not the other way round. Each registers itself when imported
(`register_format`, `register_codec`, `register_backend`); `import nnmd_kernels`
imports model_file (.nnmd), sannp (ffield.sannp) and gpu (the "cuda" backend, whose
registration imports neither CuPy nor numba.cuda), so `Potential.load/save` and
`backend="cuda"` work as before for everyone who imports the package.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import descriptor_ref
from .baseline import PairBaseline, baseline_pairs
from .descriptor import ChebyshevDescriptor
from .electrostatics import CoulombTerm, coulomb
from .elements import SYMBOLS, atomic_number
from .neighbors import (
    NeighborList,
    check_min_distance,
    neighbor_pairs,
    pair_forces,
    validate_geometry,
)
from .network import ElementNetwork, forward, input_gradient

_CPU_BACKENDS = ("auto", "numba", "numpy", "naive")


# -- pluggable device backends ---------------------------------------------------------
@dataclass(frozen=True)
class Backend:
    """A backend that evaluates a whole Potential elsewhere (a device).

    compute(potential, positions, numbers, cell, pbc, *, neighbors, forces) -> PotentialResult
    compute_pairs(potential, types, pair_i, pair_j, rij, n_centers, *, forces) -> PairResult
    available() -> bool: True when backend="auto" should pick it (must be cheap, never raise)
    """

    name: str
    compute: Callable
    compute_pairs: Callable
    available: Callable[[], bool]


_BACKENDS: dict[str, Backend] = {}

# what backend="cuda" says when nnmd_kernels.gpu has not registered it
_UNREGISTERED = {
    "cuda": ("backend='cuda' is not registered: import nnmd_kernels.gpu (import nnmd_kernels does), "
             "which needs numba.cuda and, to run, a CUDA device with CuPy (pip install nnmd[gpu]) or "
             "numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1); or use backend='numba'"),
}


def register_backend(name: str, compute: Callable, compute_pairs: Callable,
                     available: Callable[[], bool] = lambda: False) -> None:
    """Make backend=`name` available to Potential.compute / compute_pairs (re-registering replaces)."""
    if name in _CPU_BACKENDS:
        raise ValueError(f"backend name {name!r} is reserved for the CPU kernels")
    _BACKENDS[name] = Backend(name, compute, compute_pairs, available)


def backends() -> tuple[str, ...]:
    """The backend names Potential.compute accepts now: the CPU ones and every registered one."""
    return _CPU_BACKENDS + tuple(n for n in _BACKENDS if n not in _CPU_BACKENDS)


def _device_backend(backend: str) -> Backend | None:
    """The registered backend that runs this call: `backend` itself, or for "auto" the
    first registered backend whose available() is True; None for the CPU kernels."""
    if backend == "auto":
        for b in _BACKENDS.values():
            if b.available():
                return b
        return None
    if backend in _CPU_BACKENDS:
        return None
    b = _BACKENDS.get(backend)
    if b is None and backend in _UNREGISTERED:
        raise RuntimeError(_UNREGISTERED[backend])
    return b  # None for an unknown name: _kernels names the valid ones


def _kernels(backend: str):
    if backend in ("auto", "numba"):
        try:
            from . import descriptor_numba

            return descriptor_numba
        except ImportError:
            if backend == "numba":
                raise
            return descriptor_ref
    if backend == "numpy":
        return descriptor_ref
    raise ValueError(f"backend must be one of {backends()} (got {backend!r})")


@dataclass(frozen=True)
class PairResult:
    """Result of the pair-space core.

    energies        (n_centers,)     atomic energies incl. baseline, eV
    energies_models (M, n_centers)   per-ensemble-member network + e0 energies (no baseline), eV
    pair_grad       (P, 3)           dE/dr_ij, eV/A (None when forces were not requested)
    descriptors     (n_centers, F)   G, for novelty detection
    """

    energies: np.ndarray
    energies_models: np.ndarray
    pair_grad: np.ndarray | None
    descriptors: np.ndarray


@dataclass(frozen=True)
class PotentialResult:
    """energy eV; energies (N,) eV; forces (N, 3) eV/A; virial (3, 3) eV;
    stress (3, 3) eV/A^3 or None (not periodic in 3D); energy_std eV (ensemble spread)."""

    energy: float
    energies: np.ndarray
    forces: np.ndarray | None
    virial: np.ndarray | None
    stress: np.ndarray | None
    energy_std: float
    energies_models: np.ndarray = field(repr=False)
    descriptors: np.ndarray = field(repr=False)


@dataclass(frozen=True)
class Potential:
    """A trained (or random) NNP. Immutable; evaluate with `compute` or `compute_pairs`.

    networks[e]      ElementNetwork for species e (same M and activation for all)
    feature_mean[e]  (F,) and feature_std[e] (F,): per-feature standardisation
    energy_shift[e]  per-element reference energy e0, eV/atom
    baseline         PairBaseline or None (Delta-NNP off)
    coulomb          CoulombTerm or None: fixed charges per species whose Ewald energy is part of
                     the baseline (compute adds it; compute_pairs, the local pair-space core, does
                     not: LAMMPS adds it as coul/long + kspace, services/md/lammps.py)
    """

    descriptor: ChebyshevDescriptor
    networks: tuple[ElementNetwork, ...]
    feature_mean: np.ndarray
    feature_std: np.ndarray
    energy_shift: np.ndarray
    baseline: PairBaseline | None = None
    coulomb: CoulombTerm | None = None
    metadata: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):
        ne, nf = self.descriptor.n_species, self.descriptor.n_features
        if len(self.networks) != ne:
            raise ValueError(f"need one network per species ({ne}), got {len(self.networks)}")
        acts = {n.activation for n in self.networks}
        ms = {n.n_models for n in self.networks}
        if len(ms) != 1:
            raise ValueError(f"all element networks must have the same ensemble size, got {sorted(ms)}")
        if len(acts) != 1:
            raise ValueError(f"all element networks must share one activation, got {sorted(acts)}")
        for e, n in enumerate(self.networks):
            if n.n_inputs != nf:
                raise ValueError(
                    f"network of {self.descriptor.species[e]} takes {n.n_inputs} inputs, descriptor has {nf}")
        for name, shape in (("feature_mean", (ne, nf)), ("feature_std", (ne, nf)), ("energy_shift", (ne,))):
            arr = np.asarray(getattr(self, name), dtype=np.float64)
            if arr.shape != shape:
                raise ValueError(f"{name} must have shape {shape}, got {arr.shape}")
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"{name} contains NaN or inf")
            object.__setattr__(self, name, arr)
        if np.any(self.feature_std <= 0):
            raise ValueError("feature_std must be > 0 everywhere")
        if self.baseline is not None and self.baseline.coefficients.shape[0] != ne:
            raise ValueError("baseline coefficients do not match the number of species")
        if self.coulomb is not None and len(self.coulomb.charges) != ne:
            raise ValueError(f"coulomb charges: {len(self.coulomb.charges)} given, the model has {ne} species")
        z = np.zeros(len(SYMBOLS), dtype=np.int64) - 1
        for e, s in enumerate(self.descriptor.species):
            z[atomic_number(s)] = e
        object.__setattr__(self, "_type_of_z", z)

    # -- basic facts ---------------------------------------------------------------
    @property
    def species(self) -> tuple[str, ...]:
        return self.descriptor.species

    @property
    def cutoff(self) -> float:
        """Neighbour cutoff (Angstrom): descriptor R_max, or the baseline's if larger."""
        rc = self.descriptor.cutoff
        return max(rc, self.baseline.cutoff) if self.baseline is not None else rc

    @property
    def n_models(self) -> int:
        return self.networks[0].n_models

    @property
    def activation(self) -> str:
        return self.networks[0].activation

    def types_of(self, numbers) -> np.ndarray:
        """Atomic numbers (N,) -> species indices (N,); ValueError for elements not in the model."""
        numbers = np.asarray(numbers)
        if numbers.ndim != 1:
            raise ValueError(f"numbers must have shape (N,), got {numbers.shape}")
        if numbers.size and (numbers.min() < 1 or numbers.max() >= len(SYMBOLS)):
            raise ValueError(f"numbers: atomic numbers must be in 1..{len(SYMBOLS) - 1}")
        types = self._type_of_z[numbers.astype(np.int64)]
        if np.any(types < 0):
            k = int(np.flatnonzero(types < 0)[0])
            raise ValueError(
                f"element {SYMBOLS[int(numbers[k])]} (atom {k}) is not in the model; "
                f"the model knows {', '.join(self.species)}")
        return types

    # -- evaluation ----------------------------------------------------------------
    def compute_pairs(self, types, pair_i, pair_j, rij, n_centers: int, *, forces: bool = True,
                      backend: str = "auto") -> PairResult:
        """The pair-space core (also used by the LAMMPS/MPI executor with ghost atoms).

        types (N,) species indices of all atoms (centres first, then ghosts);
        pair_i (P,) sorted, < n_centers; pair_j (P,) < N; rij (P, 3) = R_j - R_i, A.
        Energies are those of the n_centers centres; pair_grad includes every pair.
        """
        dev = _device_backend(backend)
        if dev is not None:
            return dev.compute_pairs(self, types, pair_i, pair_j, rij, n_centers, forces=forces)
        kern = _kernels(backend if backend != "naive" else "numpy")
        desc = self.descriptor
        types = np.asarray(types, dtype=np.int64)
        pair_i = np.asarray(pair_i, dtype=np.int64)
        rij = np.asarray(rij, dtype=np.float64)
        tj = types[np.asarray(pair_j, dtype=np.int64)]
        G = kern.descriptors(desc, rij, pair_i, tj, n_centers)
        M = self.n_models
        e_models = np.zeros((M, n_centers))
        dG = np.zeros_like(G) if forces else None
        ctypes = types[:n_centers]
        coef = np.full(M, 1.0 / M)
        for e, net in enumerate(self.networks):
            idx = np.flatnonzero(ctypes == e)
            if idx.size == 0:
                continue
            x = (G[idx] - self.feature_mean[e]) / self.feature_std[e]
            y, cache = forward(net, x)
            e_models[:, idx] = y + self.energy_shift[e]
            if forces:
                dG[idx] = input_gradient(net, cache, coef) / self.feature_std[e]
        energies = e_models.mean(axis=0)
        grad = kern.descriptors_vjp(desc, rij, pair_i, tj, n_centers, dG) if forces else None
        if self.baseline is not None and len(pair_i):
            if kern is descriptor_ref:
                pair_sum = baseline_pairs
            else:  # the compiled pass, same sums
                from .baseline_numba import baseline_pairs as pair_sum
            energies = energies + pair_sum(self.baseline, rij, pair_i, types[pair_i], tj, n_centers,
                                           grad if forces else None)
        return PairResult(energies, e_models, grad, G)

    def compute(self, positions, numbers, cell=None, pbc=False, *, neighbors: NeighborList | None = None,
                forces: bool = True, backend: str = "auto") -> PotentialResult:
        """Energy, forces, virial and stress of one structure.

        positions (N, 3) A; numbers (N,) atomic numbers; cell (3, 3) A (rows are
        lattice vectors) or None; pbc bool or (3,). Pass a NeighborList to reuse
        neighbours across calls (MD). The Coulomb term, if any, is included.
        """
        res = self.compute_local(positions, numbers, cell, pbc, neighbors=neighbors, forces=forces,
                                  backend=backend)
        if self.coulomb is None:
            return res
        return self.add_coulomb(res, positions, numbers, cell, pbc, forces=forces)

    def add_coulomb(self, res: PotentialResult, positions, numbers, cell, pbc, *, forces: bool = True):
        """`res` with this potential's Coulomb term added (energies, forces, virial, stress)."""
        pos, cell, pbc = validate_geometry(positions, cell, pbc)
        c = coulomb(self.coulomb, pos, self.types_of(numbers), cell, pbc, forces=forces and res.forces is not None)
        F = vir = stress = None
        if c.forces is not None:
            F = res.forces + c.forces
            vir = res.virial + c.virial
            if pbc.all():
                stress = -vir / abs(np.linalg.det(cell))
        return PotentialResult(res.energy + c.energy, res.energies + c.energies, F, vir, stress, res.energy_std,
                               res.energies_models, res.descriptors)

    def compute_local(self, positions, numbers, cell=None, pbc=False, *, neighbors: NeighborList | None = None,
                      forces: bool = True, backend: str = "auto") -> PotentialResult:
        """`compute` without the Coulomb term: the local part (networks, e0, pair baseline)."""
        pos, cell, pbc = validate_geometry(positions, cell, pbc)
        types = self.types_of(numbers)
        if len(types) != len(pos):
            raise ValueError(f"numbers has {len(types)} entries but positions has {len(pos)} atoms")
        dev = _device_backend(backend)
        if dev is not None:
            return dev.compute(self, positions, numbers, cell, pbc, neighbors=neighbors, forces=forces)
        if backend == "naive":
            from .naive import naive_energies

            e = naive_energies(self, pos, types, cell, pbc)
            return PotentialResult(float(e.sum()), e, None, None, None, 0.0, e[None], np.zeros((len(e), 0)))
        if neighbors is not None:
            if neighbors.cutoff < self.cutoff:
                raise ValueError(f"neighbor list cutoff {neighbors.cutoff} < potential cutoff {self.cutoff}")
            pairs = neighbors.update(pos, cell, pbc)
        else:
            pairs = neighbor_pairs(pos, cell, pbc, self.cutoff)
        check_min_distance(pairs)
        n = len(pos)
        res = self.compute_pairs(types, pairs.i, pairs.j, pairs.vectors, n, forces=forces, backend=backend)
        F = vir = stress = None
        if forces:
            g = res.pair_grad
            F = pair_forces(pairs.i, pairs.j, g, n)
            vir = -(pairs.vectors.T @ g)
            if pbc.all():
                stress = -vir / abs(np.linalg.det(cell))
        total_models = res.energies_models.sum(axis=1)
        return PotentialResult(
            energy=float(res.energies.sum()),
            energies=res.energies,
            forces=F,
            virial=vir,
            stress=stress,
            energy_std=float(total_models.std()) if self.n_models > 1 else 0.0,
            energies_models=res.energies_models,
            descriptors=res.descriptors,
        )

    # -- construction --------------------------------------------------------------
    @classmethod
    def random(cls, species, seed: int = 0, *, n_models: int = 1, hidden=(40, 40),
               activation: str = "twisted_tanh", delta: bool = True, density: float = 0.05,
               **descriptor_options) -> Potential:
        """A potential with random (Glorot) weights, for tests and benchmarks.

        Feature standardisation comes from a random jittered lattice at `density`
        (atoms/A^3), so the networks see O(1) inputs as they would after training;
        with `delta`, a weak repulsive baseline keeps atoms apart.
        """
        species = tuple(species)
        desc = ChebyshevDescriptor(species, **descriptor_options)
        rng = np.random.default_rng(seed)
        ne = len(species)
        nets = tuple(ElementNetwork.random(desc.n_features, hidden, n_models, activation, rng) for _ in species)
        # Feature statistics from a jittered simple-cubic lattice of mixed species.
        k = 4
        a = density ** (-1.0 / 3.0)
        grid = np.stack(np.meshgrid(*(np.arange(k),) * 3, indexing="ij"), -1).reshape(-1, 3) * a
        pos = grid + rng.normal(0, 0.1 * a, size=grid.shape)
        cell = np.eye(3) * k * a
        types = np.arange(len(pos)) % ne
        pairs = neighbor_pairs(pos, cell, True, desc.cutoff)
        G = _kernels("auto").descriptors(desc, pairs.vectors, pairs.i, types[pairs.j], len(pos))
        mean = np.tile(G.mean(axis=0), (ne, 1))
        std = np.tile(np.maximum(G.std(axis=0), 1e-3 * (np.abs(G).mean() + 1e-12)), (ne, 1))
        baseline = None
        if delta:
            # Repulsive wall ~0.1 eV at 1.6 A per pair, attraction-free: A/r^12 only.
            coef = np.zeros((ne, ne, 4))
            coef[:, :, 0] = 0.1 * 1.6**12
            baseline = PairBaseline(coef, desc.cutoff)
        return cls(desc, nets, mean, std, np.zeros(ne), baseline,
                   metadata={"origin": f"Potential.random(seed={seed})"})

    # -- persistence (through the registries below) ---------------------------------------
    def to_dict(self) -> dict:
        """The `model` section of a .nnmd file (model_file.py)."""
        return _codec("to_dict")(self)

    @classmethod
    def from_dict(cls, d: dict) -> Potential:
        return _codec("from_dict")(d)

    def save(self, path, format: str = "nnmd") -> str:
        """Write a model file, by default a versioned .nnmd (format="sannp": an ffield.sannp);
        returns the content hash (sha256 hex: of the model for .nnmd, of the file text otherwise)."""
        fmt = _FORMATS.get(format)
        if fmt is None or fmt.save is None:
            raise ValueError(f"cannot save format {format!r}: known formats that save are "
                             f"{sorted(n for n, f in _FORMATS.items() if f.save is not None)}"
                             f"{_FORMATS_HINT if not _FORMATS else ''}")
        return fmt.save(self, path)

    @classmethod
    def load(cls, path) -> Potential:
        """Read a model file of any registered format, recognised by its content: a .nnmd
        (JSON) or an ffield.sannp (anything else) once nnmd_kernels is imported."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"model file {path} does not exist")
        data = path.read_bytes()
        for fmt in _FORMATS.values():
            if fmt.detect(data, path):
                return fmt.load(data, str(path))
        raise ValueError(f"{path}: not a model file of a known format ({sorted(_FORMATS)})"
                         f"{_FORMATS_HINT if not _FORMATS else ''}")

    @property
    def content_hash(self) -> str:
        return _codec("content_hash")(self)


# -- pluggable model file formats --------------------------------------------------------
@dataclass(frozen=True)
class ModelFormat:
    """A model file format.

    detect(data: bytes, path: Path) -> bool: whether `data` is in this format
    load(data: bytes, source: str) -> Potential
    save(potential, path) -> str (a sha256 hex digest), or None for a read-only format
    """

    name: str
    detect: Callable
    load: Callable
    save: Callable | None = None


_FORMATS: dict[str, ModelFormat] = {}
_CODEC: dict[str, Callable] = {}
_FORMATS_HINT = ("; no model file format is registered: import nnmd_kernels (or nnmd_kernels.model_file "
                 "and nnmd_kernels.sannp), which registers .nnmd and ffield.sannp")


def register_format(name: str, detect: Callable, load: Callable, save: Callable | None = None) -> None:
    """Let Potential.load read (and, with `save`, Potential.save write) a file format.
    Formats are tried in registration order; `detect` should not overlap another format's."""
    _FORMATS[name] = ModelFormat(name, detect, load, save)


def register_codec(to_dict: Callable, from_dict: Callable, content_hash: Callable) -> None:
    """The dict form behind Potential.to_dict / from_dict / content_hash (model_file.py)."""
    _CODEC.update(to_dict=to_dict, from_dict=from_dict, content_hash=content_hash)


def _codec(name: str) -> Callable:
    try:
        return _CODEC[name]
    except KeyError:
        raise RuntimeError(f"Potential.{name}: no model codec is registered; import nnmd_kernels "
                           "(or nnmd_kernels.model_file)") from None
