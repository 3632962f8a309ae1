"""Training: energy + force (+ stress) loss with analytic second derivatives.

Loss for one ensemble member, over the training structures s (N_s atoms):

    L = w_E mean_s (dE_s / N_s)^2 + w_F mean_{a,x} dF_ax^2 + w_S mean_{s,ab} dsigma_ab^2 + l2 |theta|^2

Forces are F = -J^T g with g_i = dE_i/dG_i and J the descriptor Jacobian, so the
force loss needs the derivative of g w.r.t. the weights: a second derivative of
the network. With dF fixed, sum_a dF_a . F_a = sum_i g_i . u_i where u = J v is
the descriptor JVP along the pair-space direction v_p = dF_i(p) - dF_j(p) (and,
for the stress, + dsigma^T r_p / V). g_i . u_i is the directional derivative of
the network along u_i: forward mode through the network (network.forward_tangent),
then reverse mode (network.parameter_gradient). The gradient is checked against
finite differences of the loss in tests.

The Delta baseline is fitted first by linear least squares on energies and
forces (guarded: the r^-12 coefficient stays >= 0 and the pair potential must
be repulsive below the shortest distance in the data); per-element reference
energies e0 by least squares on composition. The networks then learn the rest.

Arrays live in one flat "batch" over all structures: atoms concatenated, pairs
with global indices (sorted by centre), so one kernel call serves the whole set.
Over the memory budget (TrainConfig.batch_structures), the structures are split into
mini-batches (MiniBatches), each a Batch built when needed; the setup streams over them
(FeatureStatistics, ReferenceFit) and Adam steps over them (_optimise_minibatch).
Checkpoints (save_checkpoint) let an interrupted training resume (train(resume=True)).

Where the arrays live (TrainConfig.device): "cpu", or "cuda" (gpu/training_cuda.py):
the same Objective with xp = CuPy on a GPU (numpy in numba's CUDA simulator) for the
networks, the loss and the reductions, and the per-iteration descriptor products (the
VJP of energies, the JVP of the force-loss direction) as numba.cuda kernels on the
cached Jacobian. Setup (neighbours, descriptors, Jacobian, baseline fit,
standardisation) runs on the CPU once; the optimiser gets theta and the gradient as
numpy vectors (one small copy each way per iteration).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace

import numpy as np

from .baseline import PairBaseline, design_matrix_row, pair_terms
from .descriptor import ChebyshevDescriptor
from .electrostatics import CoulombTerm, coulomb
from .elements import atomic_number, symbol
from .gpu.device import to_host
from .neighbors import check_min_distance, neighbor_pairs, validate_geometry
from .network import (
    ElementNetwork,
    activation,
    forward,
    forward_tangent,
    input_gradient,
    parameter_gradient,
)
from .potential import Potential, _kernels


@dataclass(frozen=True)
class Structure:
    """One labelled structure. positions (N,3) A; numbers (N,); cell (3,3) A or None;
    pbc (3,); energy eV; forces (N,3) eV/A or None; stress (3,3) eV/A^3 (ASE sign) or None."""

    positions: np.ndarray
    numbers: np.ndarray
    cell: np.ndarray | None
    pbc: np.ndarray
    energy: float
    forces: np.ndarray | None = None
    stress: np.ndarray | None = None
    name: str = ""


DEVICES = ("auto", "cpu", "cuda")
DEFAULT_DESCRIPTOR = {"n_radial": 12, "n_angular": 6}  # TrainConfig.descriptor
# weighting when TrainConfig.descriptor does not give one: the source's "z" (one channel
# weighted by atomic number) for one or two elements; "blocks" (one channel per neighbour
# element and per element pair) from three. On 4-element LLZO, 12 + 6 orders, the same
# data and network: held-out force RMSE 595 meV/A with "z", 531 with "typespin", 291 with
# "blocks" (docs/llzo.md): one Z-weighted sum cannot tell Li, O, Zr and La neighbours apart
MULTI_ELEMENT_WEIGHTING = "blocks"


def descriptor_options(cfg_descriptor: dict, n_species: int) -> dict:
    """ChebyshevDescriptor options of a training: DEFAULT_DESCRIPTOR, the weighting default
    for the number of elements, then what the config gives."""
    out = dict(DEFAULT_DESCRIPTOR)
    if "weighting" not in cfg_descriptor and n_species >= 3:
        out["weighting"] = MULTI_ELEMENT_WEIGHTING
    return {**out, **cfg_descriptor}


def resolve_device(device: str) -> str:
    """"cpu" or "cuda"; "auto" is cuda only where CuPy sees a GPU (never the simulator)."""
    if device == "auto":
        from .gpu.device import gpu_available

        return "cuda" if gpu_available() else "cpu"
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES} (got {device!r})")
    return device


@dataclass(frozen=True)
class TrainConfig:
    """Training settings; defaults are sensible for a first potential.

    descriptor: ChebyshevDescriptor options (species are taken from the data); keys not
    given take ChebyshevDescriptor's defaults (the source's), except n_radial and
    n_angular, 12 and 6 unless given, and the weighting, "blocks" from three elements
    (descriptor_options).
    force_outlier: drop structures whose largest |F| component exceeds this (eV/A).
    jacobian_budget_gb: cache the descriptor Jacobian when it fits, else recompute.
    """

    # 12 radial + 6 angular Chebyshev orders at 6 A (0.5 A radial resolution, as aenet's
    # defaults): on 60 EMT Cu cells, the source's 50 + 30 memorised (held-out force RMSE
    # 178 meV/A against 51 in training); 12 + 6 gives 41 against 18 (docs/training.md)
    descriptor: dict = field(default_factory=lambda: dict(DEFAULT_DESCRIPTOR))
    hidden: tuple = (40, 40)
    activation: str = "twisted_tanh"
    n_models: int = 1
    delta: bool = True
    energy_weight: float = 1.0
    force_weight: float = 0.1
    stress_weight: float = 0.0
    l2: float = 1e-7
    optimizer: str = "lbfgs"
    max_epochs: int = 300
    warmup_epochs: int = 20
    lbfgs_history: int = 32
    adam_lr: float = 1e-3
    validation_fraction: float = 0.1
    # L-BFGS crosses plateaus where the validation score stalls for dozens of iterations
    # (on 60 EMT Cu cells: force RMSE flat at ~100 meV/A for 40+ iterations, then down
    # to 15-25); a patience of 60 stopped there (benchmarks/train_cu_emt.py, draw 1)
    patience: int = 150
    force_outlier: float | None = 50.0
    # the Delta baseline's force rows weighted by (1 + |F_i| / <|F|>)^p: the baseline is fitted
    # where the forces are large (the short-range wall, where data are sparse and the networks
    # would extrapolate), the networks learn the dense rest. On EMT Cu (benchmarks/train_cu_emt.py)
    # p = 3 took the baseline's own error on atoms with a neighbour under 2.0 A from 634 to 205
    # meV/A, the held-out force RMSE of draw 4 from 46.6 to 25.1 meV/A and halved it on the
    # other draws; but on LLZO (quick mode, with the Coulomb term) the held-out force RMSE went
    # from 38-42 to 175-200 meV/A, so it is not the default (docs/training.md)
    baseline_force_weighting: float = 0.0
    jacobian_budget_gb: float = 2.0
    # warm start (init=): re-fit e0, the Delta baseline and the feature standardisation to
    # the data given (else keep the initial model's)
    refit_on_warm_start: bool = True
    seed: int = 0
    backend: str = "auto"
    device: str = "auto"  # "cpu", "cuda", or "auto": cuda when gpu.device.gpu_available()
    # mini-batches (docs/training.md, Training at scale): "auto" = one full batch when the
    # estimated pair Jacobian of all structures fits jacobian_budget_gb, else mini-batches
    # of AUTO_BATCH structures; 0 = full batch always; n >= 1 = mini-batches of n structures
    # (Adam; max_epochs counts passes over the data, patience epochs, warmup_epochs steps)
    batch_structures: int | str = "auto"
    cache_gb: float = 2.0  # mini-batches: keep built batches (with their Jacobian) up to this
    max_steps: int | None = None  # mini-batches: stop after this many steps (a fixed budget)
    max_minutes: float | None = None  # stop after this much training time (either path)
    adam_lr_final: float | None = None  # Adam: decay the rate geometrically to this at max_epochs
    checkpoint_every: int = 10  # iterations (full batch) or steps (mini-batches) between checkpoints
    # fixed-charge electrostatics in the Delta baseline (electrostatics.py): {"charges": {"Li": 1,
    # "O": -2, ...}, "r_cut": 8.0, "accuracy": 1e-6}. Its Ewald energy, forces and stress are
    # taken off the labels before anything is fitted, and the model adds them back: the networks
    # learn only the short-range rest. A warm start keeps its initial model's term.
    coulomb: dict | None = None

    def __post_init__(self):
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES} (got {self.device!r})")
        if self.optimizer not in ("lbfgs", "adam"):
            raise ValueError(f"optimizer must be 'lbfgs' or 'adam' (got {self.optimizer!r})")
        if self.n_models < 1:
            raise ValueError(f"n_models must be >= 1 (got {self.n_models})")
        activation(self.activation)  # ValueError listing the known ones ("gelu", "twisted_tanh", ...)
        for name in ("energy_weight", "force_weight", "stress_weight", "l2", "jacobian_budget_gb",
                     "baseline_force_weighting"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (got {getattr(self, name)})")
        if not 0 <= self.validation_fraction < 1:
            raise ValueError(f"validation_fraction must be in [0, 1) (got {self.validation_fraction})")
        if self.max_epochs < 0 or self.warmup_epochs < 0:
            raise ValueError("max_epochs and warmup_epochs must be >= 0")
        bs = self.batch_structures
        if not (bs == "auto" or (isinstance(bs, (int, np.integer)) and not isinstance(bs, bool) and bs >= 0)):
            raise ValueError(f"batch_structures must be 'auto', 0 (full batch) or a number of structures >= 1 "
                             f"(got {bs!r})")
        for name in ("cache_gb",):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (got {getattr(self, name)})")
        for name in ("max_steps", "max_minutes", "adam_lr_final"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise ValueError(f"{name} must be > 0 or null (got {v})")
        if self.checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be >= 1 (got {self.checkpoint_every})")
        if self.coulomb is not None:
            if not isinstance(self.coulomb, dict):
                raise ValueError(f"coulomb must be a mapping like {{charges: {{Li: 1, O: -2}}}} or null "
                                 f"(got {self.coulomb!r})")
            CoulombTerm.from_dict(self.coulomb, tuple(self.coulomb.get("charges") or {}))  # field errors now
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"training config: unknown keys {sorted(unknown)}; allowed: {sorted(known)}")
        return cls(**d)


def validate_structures(structures, need_forces: bool, species=None):
    """Check every structure; ValueError names the structure and the field."""
    out = []
    for k, s in enumerate(structures):
        tag = f"structure {k}" + (f" ({s.name})" if s.name else "")
        try:
            pos, cell, pbc = validate_geometry(s.positions, s.cell, s.pbc)
        except ValueError as exc:
            raise ValueError(f"{tag}: {exc}") from None
        nums = np.asarray(s.numbers, dtype=np.int64)
        if nums.shape != (len(pos),):
            raise ValueError(f"{tag}: field 'numbers' has shape {nums.shape}, expected ({len(pos)},)")
        if species is not None:
            bad = [symbol(z) for z in set(nums.tolist()) if symbol(z) not in species]
            if bad:
                raise ValueError(f"{tag}: elements {sorted(bad)} are not in the model ({', '.join(species)})")
        e = s.energy
        if e is None or not np.isfinite(e):
            raise ValueError(f"{tag}: field 'energy' is missing or not finite ({e})")
        f = s.forces
        if f is None:
            if need_forces:
                raise ValueError(f"{tag}: field 'forces' is missing (needed with force_weight > 0)")
        else:
            f = np.asarray(f, dtype=np.float64)
            if f.shape != pos.shape:
                raise ValueError(f"{tag}: field 'forces' has shape {f.shape}, expected {pos.shape}")
            if not np.all(np.isfinite(f)):
                raise ValueError(f"{tag}: field 'forces' contains NaN or inf")
        st = s.stress
        if st is not None:
            st = np.asarray(st, dtype=np.float64)
            if st.shape == (6,):
                xx, yy, zz, yz, xz, xy = st
                st = np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
            if st.shape != (3, 3) or not np.all(np.isfinite(st)):
                raise ValueError(f"{tag}: field 'stress' must be a finite (3,3) or Voigt (6,) array")
        out.append(replace(s, positions=pos, numbers=nums, cell=cell, pbc=pbc, energy=float(e), forces=f,
                           stress=st))
    if not out:
        raise ValueError("no structures to train on")
    return out


class Batch:
    """All structures as one flat set of atoms and pairs, with descriptors (and Jacobian)."""

    def __init__(self, structures, desc: ChebyshevDescriptor, cutoff: float, budget_gb: float,
                 backend: str = "auto", device: str = "cpu", descriptors: bool = True):
        self.desc = desc
        self.kern = _kernels(backend)
        sp = desc.species
        z2t = {atomic_number(s): e for e, s in enumerate(sp)}
        pi, pj, vec, st_of_atom, st_of_pair = [], [], [], [], []
        off = 0
        self.n_atoms = np.array([len(s.positions) for s in structures])
        self.volume = np.full(len(structures), np.nan)
        for k, s in enumerate(structures):
            pairs = neighbor_pairs(s.positions, s.cell, s.pbc, cutoff)
            try:
                check_min_distance(pairs)
            except ValueError as exc:
                raise ValueError(f"structure {k}: {exc}") from None
            pi.append(pairs.i + off)
            pj.append(pairs.j + off)
            vec.append(pairs.vectors)
            st_of_atom.append(np.full(len(s.positions), k))
            st_of_pair.append(np.full(len(pairs), k))
            if np.all(s.pbc):
                self.volume[k] = abs(np.linalg.det(s.cell))
            off += len(s.positions)
        self.pair_i = np.concatenate(pi)
        self.pair_j = np.concatenate(pj)
        self.rij = np.concatenate(vec)
        self.struct_of_atom = np.concatenate(st_of_atom)
        self.struct_of_pair = np.concatenate(st_of_pair)
        self.types = np.array([z2t[int(z)] for s in structures for z in s.numbers], dtype=np.int64)
        self.N = off
        self.S = len(structures)
        self.type_j = self.types[self.pair_j]
        # descriptors=False: pairs only (the baseline's second pass over mini-batches)
        self.G = self.kern.descriptors(desc, self.rij, self.pair_i, self.type_j, self.N) if descriptors else None
        self.jacobian_gb = len(self.pair_i) * desc.n_features * 3 * 8 / 1e9
        self.J = None
        if descriptors:
            self.add_jacobian(budget_gb)
        self.by_element = [np.flatnonzero(self.types == e) for e in range(desc.n_species)]
        # x: the arrays the Objective reads, where its arithmetic runs (self on the CPU)
        self.device = resolve_device(device)
        # (x is a property, not `self.x = self`: that cycle kept every Batch, with its
        # Jacobian, alive until a full garbage collection; a campaign's RSS grew by the
        # mini-batch cache, ~2 GB, with each training: 10.8 GB in docs/llzo.md)
        self.xp = np
        self._device = None
        if self.device == "cuda":
            from .gpu.training_cuda import DeviceBatch

            self._device = DeviceBatch(self)
            self.xp = self._device.xp

    def add_jacobian(self, budget_gb: float) -> bool:
        """Compute and keep the pair Jacobian if it fits budget_gb (else the VJP/JVP kernels
        recompute it on each use); whether it is kept."""
        if self.J is None and self.G is not None and self.jacobian_gb <= budget_gb:
            self.J = self.kern.pair_jacobian(self.desc, self.rij, self.pair_i, self.type_j, self.N)
        return self.J is not None

    @property
    def x(self):
        """The arrays the Objective reads: this batch on the CPU, its device copy on a GPU."""
        return self if self._device is None else self._device

    @property
    def nbytes(self) -> int:
        """Memory held by the batch's arrays (what a mini-batch cache counts)."""
        arrays = (self.G, self.J, self.rij, self.pair_i, self.pair_j, self.type_j, self.struct_of_pair,
                  self.struct_of_atom, self.types)
        return int(sum(a.nbytes for a in arrays if a is not None))

    def vjp(self, g):
        """Pair gradients (P, 3) from dE/dG (N, F)."""
        if self.x is not self:
            return self.x.vjp(g)
        if self.J is not None:
            if hasattr(self.kern, "jacobian_vjp"):
                return self.kern.jacobian_vjp(self.J, self.pair_i, self.N, g)
            return np.einsum("pfx,pf->px", self.J, g[self.pair_i], optimize=True)
        return self.kern.descriptors_vjp(self.desc, self.rij, self.pair_i, self.type_j, self.N, g)

    def jvp(self, v):
        """dG (N, F) along a pair-space direction v (P, 3)."""
        if self.x is not self:
            return self.x.jvp(v)
        if self.J is not None:
            if hasattr(self.kern, "jacobian_jvp"):
                return self.kern.jacobian_jvp(self.J, self.pair_i, self.N, v)
            out = np.zeros((self.N, self.desc.n_features))
            np.add.at(out, self.pair_i, np.einsum("pfx,px->pf", self.J, v, optimize=True))
            return out
        return self.kern.descriptors_jvp(self.desc, self.rij, self.pair_i, self.type_j, self.N, v)

    def _where(self, a):
        """(xp, arrays) where `a` lives: host arrays for numpy input, else the device copies."""
        if self.xp is np or isinstance(a, np.ndarray):
            return np, self
        return self.xp, self.x

    def atom_forces(self, gp):
        xp, x = self._where(gp)
        F = xp.empty((self.N, 3))
        for k in range(3):
            F[:, k] = (xp.bincount(x.pair_i, weights=gp[:, k], minlength=self.N)
                       - xp.bincount(x.pair_j, weights=gp[:, k], minlength=self.N))
        return F

    def struct_virial(self, gp):
        """-sum_p r_p (x) g_p per structure, (S, 3, 3)."""
        xp, x = self._where(gp)
        rg = (-x.rij[:, :, None] * gp[:, None, :]).reshape(-1, 9)
        out = xp.stack([xp.bincount(x.struct_of_pair, weights=rg[:, k], minlength=self.S) for k in range(9)],
                       axis=1)
        return out.reshape(self.S, 3, 3)


# ---------------------------------------------------------------------------------
# Baseline and reference energies
# ---------------------------------------------------------------------------------
def _pair_index(ne):
    idx = np.zeros((ne, ne), dtype=np.int64)
    k = 0
    for a in range(ne):
        for b in range(a, ne):
            idx[a, b] = idx[b, a] = k
            k += 1
    return idx, k


RIDGE = 1e-6  # relative ridge on the baseline coefficients (fit_reference)


def force_scale(forces, fmask) -> float:
    """<|F|> over the atoms with force labels (eV/A): the unit of the baseline's force-row
    weights (TrainConfig.baseline_force_weighting); 1 where there are none."""
    f = np.linalg.norm(np.asarray(forces)[np.asarray(fmask)], axis=1)
    m = float(f.mean()) if len(f) else 0.0
    return m if m > 0 else 1.0


def _reference_rows(batch: Batch, energies, forces, fmask, delta: bool, cutoff: float, force_rows: float = 1.0,
                    weighting: float = 0.0, scale: float = 1.0):
    """The least-squares rows of one batch for fit_reference: (A, y, d, col) with d the
    pair distances and col the pair-type column of each pair (None without delta). Each
    atom's three force rows are weighted by (1 + |F_i| / scale)^weighting."""
    ne = batch.desc.n_species
    comp = np.zeros((batch.S, ne))
    np.add.at(comp, (batch.struct_of_atom, batch.types), 1.0)
    y_e = energies / batch.n_atoms
    A_e0 = comp / batch.n_atoms[:, None]
    if not delta:
        return A_e0, y_e, None, None
    pidx, npt = _pair_index(ne)
    d = np.linalg.norm(batch.rij, axis=1)
    basis = design_matrix_row(d, cutoff)  # (P, 4)
    col = pidx[batch.types[batch.pair_i], batch.type_j]  # (P,)
    # energy rows: E_s = 1/2 sum_p phi(r_p)
    A_eb = np.zeros((batch.S, npt, 4))
    np.add.at(A_eb, (batch.struct_of_pair, col), 0.5 * basis)
    A_eb = A_eb.reshape(batch.S, -1) / batch.n_atoms[:, None]
    rows_A = [np.hstack([A_e0, A_eb])]
    rows_y = [y_e]
    # force rows: F_i += g, F_j -= g with g = 1/2 phi'(r) r_hat per pair
    R = cutoff
    powers = np.array([12, 10, 8, 6.0])
    inside = d < R
    r = np.where(inside, d, R)
    dbasis = np.where(inside[:, None], -powers * r[:, None] ** (-powers - 1) + powers * R ** (-powers - 1), 0.0)
    sel = np.flatnonzero(fmask[batch.pair_i] | fmask[batch.pair_j])
    if len(sel) and force_rows > 0:
        atoms = np.flatnonzero(fmask)
        row_of = -np.ones(batch.N, dtype=np.int64)
        row_of[atoms] = np.arange(len(atoms))
        A_f = np.zeros((len(atoms), 3, npt, 4))
        uhat = batch.rij[sel] / d[sel, None]
        gcoef = 0.5 * dbasis[sel][:, None, :] * uhat[:, :, None]  # (p, 3, 4)
        ri, rj = row_of[batch.pair_i[sel]], row_of[batch.pair_j[sel]]
        ok = ri >= 0
        np.add.at(A_f, (ri[ok], slice(None), col[sel][ok]), gcoef[ok])
        ok = rj >= 0
        np.add.at(A_f, (rj[ok], slice(None), col[sel][ok]), -gcoef[ok])
        w = force_rows * np.repeat((1.0 + np.linalg.norm(forces[atoms], axis=1) / scale) ** weighting, 3)
        A_f = A_f.reshape(len(atoms) * 3, -1) * w[:, None]
        rows_A.append(np.hstack([np.zeros((len(A_f), ne)), A_f]))
        rows_y.append(forces[atoms].ravel() * w)
    return np.vstack(rows_A), np.concatenate(rows_y), d, col


def _solve_baseline(A, y, scale, rmin, ne: int, cutoff: float):
    """The guarded, ridged bounded least squares of fit_reference on rows A, y (or on any
    (A, y) with the same normal equations: the triangular factor of the streaming fit);
    scale: max |A| per column over all rows; rmin: shortest distance per pair type."""
    from scipy.optimize import lsq_linear

    pidx, npt = _pair_index(ne)
    R = cutoff
    lo = np.full(A.shape[1], -np.inf)
    lo[ne::4] = 0.0  # A_12 >= 0: no collapse at short range
    # Powers each pair may use: all four first; a pair whose fit attracts below its
    # shortest distance seen is re-fitted with (12, 6), then with the r^-12 wall alone
    # (repulsive by its bound), so that the baseline always carries the short-range
    # repulsion the network would otherwise have to extrapolate.
    ladder = ((0, 1, 2, 3), (0, 3), (0,))
    rung = np.zeros(npt, dtype=np.int64)
    while True:
        allowed = np.ones(A.shape[1], dtype=bool)
        for t in range(npt):
            for k in range(4):
                allowed[ne + 4 * t + k] = k in ladder[rung[t]]
        active = (scale > 0) & allowed
        As = A[:, active] / scale[active]
        # a light ridge on the baseline's (scaled) coefficients: a pair type seen at nearly
        # one distance only (an element in one site per cell) makes its four columns
        # almost collinear, and unregularised they cancel at 1e20 eV A^p
        reg = np.sqrt(RIDGE * np.mean(np.sum(As ** 2, axis=0))) * \
            np.eye(As.shape[1])[np.flatnonzero(active) >= ne]
        res = lsq_linear(np.vstack([As, reg]), np.concatenate([y, np.zeros(len(reg))]),
                         bounds=(lo[active], np.inf), lsmr_tol="auto", max_iter=5000)
        x = np.zeros(A.shape[1])
        x[active] = res.x / scale[active]
        coef_flat = x[ne:].reshape(npt, 4)
        attracts = []
        for a in range(ne):
            for b in range(a, ne):
                t = pidx[a, b]
                if not np.isfinite(rmin[t]) or not np.any(coef_flat[t]):
                    continue
                rs = np.linspace(0.5 * rmin[t], rmin[t], 50)
                _, dphi = pair_terms(PairBaseline(coef_flat[t][None, None, :], R), rs,
                                     np.zeros(50, int), np.zeros(50, int))
                if np.any(dphi >= 0) and rung[t] < len(ladder) - 1:
                    attracts.append(t)
        if not attracts:
            break
        rung[attracts] += 1
    coef = np.zeros((ne, ne, 4))
    for a in range(ne):
        for b in range(ne):
            coef[a, b] = coef_flat[pidx[a, b]]
    return PairBaseline(coef, R)


def _min_per_type(d, col, npt):
    out = np.full(npt, np.inf)
    np.minimum.at(out, col, d)
    return out


def fit_reference(batch: Batch, energies, forces, fmask, delta: bool, cutoff: float, force_rows: float = 1.0,
                  weighting: float = 0.0):
    """Least-squares fit of e0 (per element) and, with delta, the baseline coefficients.

    Energy rows are per atom (E/N); force rows are scaled by `force_rows` and weighted by
    (1 + |F_i| / <|F|>)^weighting. Returns (e0 (ne,), PairBaseline or None). ReferenceFit
    does the same over mini-batches."""
    ne = batch.desc.n_species
    A, y, d, col = _reference_rows(batch, energies, forces, fmask, delta, cutoff, force_rows,
                                   weighting, force_scale(forces, fmask))
    A_e0 = A[:batch.S, :ne]
    if not delta:
        e0, *_ = np.linalg.lstsq(A_e0, y, rcond=None)
        return e0, None
    _, npt = _pair_index(ne)
    baseline = _solve_baseline(A, y, np.abs(A).max(axis=0), _min_per_type(d, col, npt), ne, cutoff)
    # Re-fit e0 for the guarded baseline.
    phi, _ = pair_terms(baseline, d, batch.types[batch.pair_i], batch.type_j)
    e_base = 0.5 * np.bincount(batch.struct_of_pair, phi, batch.S)
    e0, *_ = np.linalg.lstsq(A_e0, (energies - e_base) / batch.n_atoms, rcond=None)
    return e0, baseline


class ReferenceFit:
    """fit_reference over mini-batches without holding every row: the rows of each batch
    are folded into the triangular factor of a QR decomposition of [A | y] (same
    minimiser as the rows themselves), with the column maxima and the shortest distance
    per pair type kept on the side. add() every batch, then solve(); then e_base() of
    every batch (pairs only) and refit_e0() (composition rows, one per structure)."""

    def __init__(self, ne: int, delta: bool, cutoff: float, force_rows: float = 1.0, weighting: float = 0.0,
                 scale: float = 1.0):
        """scale: <|F|> over every batch to come (force_scale of all the labels), so that
        the weights are those of fit_reference on all the rows at once."""
        self.ne, self.delta, self.cutoff, self.force_rows = ne, delta, cutoff, force_rows
        self.weighting, self.fscale = weighting, scale
        _, self.npt = _pair_index(ne)
        ncol = ne + (4 * self.npt if delta else 0)
        self.Ry = np.zeros((0, ncol + 1))
        self.scale = np.zeros(ncol)
        self.rmin = np.full(self.npt, np.inf)
        self.comp, self.energies, self.e_base_rows = [], [], []
        self.baseline = None

    def add(self, batch: Batch, energies, forces, fmask):
        A, y, d, col = _reference_rows(batch, energies, forces, fmask, self.delta, self.cutoff, self.force_rows,
                                       self.weighting, self.fscale)
        self.comp.append(A[:batch.S, :self.ne] * batch.n_atoms[:, None])
        self.energies.append(np.asarray(energies, dtype=float))
        self.Ry = np.linalg.qr(np.vstack([self.Ry, np.hstack([A, y[:, None]])]), mode="r")
        self.scale = np.maximum(self.scale, np.abs(A).max(axis=0))
        if d is not None:
            self.rmin = np.minimum(self.rmin, _min_per_type(d, col, self.npt))

    def solve(self) -> PairBaseline | None:
        if self.delta:
            R, z = self.Ry[:, :-1], self.Ry[:, -1]
            # the factor of collinear columns (one composition in every cell) has ~0 on its
            # diagonal, where scipy's trust-region step tries a candidate of inf * 0 (and
            # discards it): the minimiser equals the full rows' (tests)
            with np.errstate(invalid="ignore", divide="ignore"):
                self.baseline = _solve_baseline(R, z, self.scale, self.rmin, self.ne, self.cutoff)
            if not np.all(np.isfinite(self.baseline.coefficients)):
                raise ValueError("baseline fit over mini-batches failed (non-finite coefficients)")
        return self.baseline

    def add_e_base(self, batch: Batch):
        """Baseline energy per structure of this batch (call for the batches in add()'s order)."""
        self.e_base_rows.append(baseline_terms(batch, self.baseline)[0] if self.baseline is not None
                                else np.zeros(batch.S))

    def e0(self) -> np.ndarray:
        comp = np.vstack(self.comp)
        n = comp.sum(axis=1)
        e = np.concatenate(self.energies)
        eb = np.concatenate(self.e_base_rows) if self.e_base_rows else np.zeros(len(e))
        e0, *_ = np.linalg.lstsq(comp / n[:, None], (e - eb) / n, rcond=None)
        return e0


def baseline_terms(batch: Batch, baseline: PairBaseline | None):
    """(E_base per structure (S,), F_base (N,3), virial_base (S,3,3))."""
    if baseline is None:
        return np.zeros(batch.S), np.zeros((batch.N, 3)), np.zeros((batch.S, 3, 3))
    d = np.linalg.norm(batch.rij, axis=1)
    phi, dphi = pair_terms(baseline, d, batch.types[batch.pair_i], batch.type_j)
    gp = (0.5 * dphi / d)[:, None] * batch.rij
    return 0.5 * np.bincount(batch.struct_of_pair, phi, batch.S), batch.atom_forces(gp), batch.struct_virial(gp)


# ---------------------------------------------------------------------------------
# Loss and gradient
# ---------------------------------------------------------------------------------
class Objective:
    """Loss and analytic gradient of one ensemble member (M = 1 networks) on a Batch.

    One algorithm for both devices: arrays come from batch.x and ops from batch.xp
    (numpy on the CPU, where batch.x is the batch itself and nothing is copied)."""

    def __init__(self, batch: Batch, pot: Potential, targets: dict, cfg: TrainConfig, train_mask: np.ndarray):
        self.b = batch
        self.xp = xp = batch.xp
        self.pot = pot
        self.cfg = cfg
        self.t = {k: xp.asarray(v) for k, v in targets.items()}
        self.train = xp.asarray(train_mask)  # (S,) bool
        fm = self.t["fmask"] & self.train[batch.x.struct_of_atom]
        self.fmask_train = fm
        self.n_e = max(int(train_mask.sum()), 1)
        self.n_f = max(3 * int(fm.sum()), 1)
        smask = self.t["smask"] & self.train
        self.smask_train = smask
        self.n_s = max(9 * int(smask.sum()), 1)
        self.use_stress = cfg.stress_weight > 0 and bool(smask.any())
        self.feature_mean = xp.asarray(pot.feature_mean)
        self.feature_std = xp.asarray(pot.feature_std)
        self._tangent = lambda net, x, xdot: forward_tangent(net, x, xdot, xp)

    # flat parameter vector <-> networks
    def pack(self, nets) -> np.ndarray:
        return np.concatenate([a[0].ravel() for net in nets for w, b in zip(net.weights, net.biases) for a in (w, b)])

    def unpack(self, theta):
        """Networks viewing theta (numpy theta: host networks; an xp theta: networks on its device)."""
        return pot_unpack(self.pot, theta)

    def _on_device(self, nets):
        if self.xp is np:
            return nets
        xp = self.xp
        return [ElementNetwork(tuple(xp.asarray(w) for w in n.weights), tuple(xp.asarray(b) for b in n.biases),
                               n.activation) for n in nets]

    def predict(self, nets, virial: bool = True):
        """Network-only predictions: E (S,), F (N,3), virial (S,3,3) or None, plus caches (xp arrays)."""
        b, xp = self.b, self.xp
        x_b = b.x
        nets = self._on_device(nets)
        y = xp.zeros(b.N)
        g = xp.zeros((b.N, b.desc.n_features))
        xs = []
        one = xp.ones(1)
        for e, net in enumerate(nets):
            idx = x_b.by_element[e]
            x = (x_b.G[idx] - self.feature_mean[e]) / self.feature_std[e]
            xs.append(x)
            if idx.size == 0:
                continue
            ye, cache = forward(net, x)
            y[idx] = ye[0]
            g[idx] = input_gradient(net, cache, one) / self.feature_std[e]
        E = xp.bincount(x_b.struct_of_atom, weights=y, minlength=b.S)
        gp = b.vjp(g)
        return E, b.atom_forces(gp), (b.struct_virial(gp) if virial else None), xs

    def __call__(self, theta, energy_only=False):
        """(loss, gradient, metrics); theta and the gradient are numpy vectors."""
        b, cfg, t, xp = self.b, self.cfg, self.t, self.xp
        x_b = b.x
        th = xp.asarray(theta)
        nets = self.unpack(th)
        use_stress = self.use_stress and not energy_only
        E, F, V, xs = self.predict(nets, virial=use_stress)
        dE = (E - t["E"]) / x_b.n_atoms  # per atom
        tm = self.train
        loss_e = cfg.energy_weight * xp.sum(dE[tm] ** 2) / self.n_e
        dF = xp.where(self.fmask_train[:, None], F - t["F"], 0.0)
        loss_f = 0.0 if energy_only else cfg.force_weight * xp.sum(dF**2) / self.n_f
        dS = xp.zeros((b.S, 3, 3))
        if use_stress:
            sigma = -V / x_b.volume[:, None, None]
            dS = xp.where(self.smask_train[:, None, None], xp.nan_to_num(sigma - t["sigma"]), 0.0)
        loss_s = cfg.stress_weight * xp.sum(dS**2) / self.n_s if use_stress else 0.0
        loss_l2 = cfg.l2 * float(th @ th)
        # reverse pass: dL/dy per atom (energy), and the tangent direction (forces, stress)
        dy_atom = (2 * cfg.energy_weight / self.n_e) * xp.where(tm, dE / x_b.n_atoms, 0.0)[x_b.struct_of_atom]
        u = None
        if not energy_only and (cfg.force_weight > 0 or use_stress):
            cF = 2 * cfg.force_weight / self.n_f
            v = cF * (dF[x_b.pair_i] - dF[x_b.pair_j])
            if use_stress:
                cS = 2 * cfg.stress_weight / self.n_s
                ds = xp.nan_to_num(dS / x_b.volume[:, None, None])[x_b.struct_of_pair]
                v = v + cS * xp.einsum("pba,pb->pa", ds, x_b.rij)
            u = b.jvp(v)
        grads = []
        for e, net in enumerate(nets):
            idx = x_b.by_element[e]
            if idx.size == 0:
                grads.extend([(xp.zeros_like(w), xp.zeros_like(bb)) for w, bb in zip(net.weights, net.biases)])
                continue
            x = xs[e]
            dy = dy_atom[idx][None]
            if u is not None:
                xdot = u[idx] / self.feature_std[e]
                _, _, cache = self._tangent(net, x, xdot)
                gw, gb = parameter_gradient(net, cache, dy, xp.ones((1, len(idx))))
            else:
                _, _, cache = self._tangent(net, x, xp.zeros_like(x))
                gw, gb = parameter_gradient(net, cache, dy, None)
            grads.extend(zip(gw, gb))
        grad = xp.concatenate([a[0].ravel() for w, bb in grads for a in (w, bb)]) + 2 * cfg.l2 * th
        metrics = self.metrics(dE, F, E, V)
        return float(loss_e + loss_f + loss_s + loss_l2), to_host(grad), metrics

    def metrics(self, dE, F, E, V):
        t, b, xp = self.t, self.b, self.xp
        out = {}
        for name, mask in (("train", self.train), ("val", ~self.train)):
            if not bool(mask.any()):
                continue
            fm = t["fmask"] & mask[b.x.struct_of_atom]
            out[f"{name}_energy_rmse"] = float(xp.sqrt(xp.mean(dE[mask] ** 2)))
            out[f"{name}_energy_mae"] = float(xp.mean(xp.abs(dE[mask])))
            if bool(fm.any()):
                d = (F - t["F"])[fm]
                out[f"{name}_force_rmse"] = float(xp.sqrt(xp.mean(d**2)))
                out[f"{name}_force_mae"] = float(xp.mean(xp.abs(d)))
        return out


def _validation_score(m):
    """What early stopping watches: energy RMSE/atom + force RMSE scaled to comparable size."""
    key = "val" if "val_energy_rmse" in m else "train"
    return m[f"{key}_energy_rmse"] + 0.05 * m.get(f"{key}_force_rmse", 0.0)


@dataclass
class TrainResult:
    potential: Potential
    history: list  # per member, list of dict(epoch, loss, metrics..., time)
    metrics: dict  # final metrics of the ensemble (train/val)
    dropped: list  # indices of structures dropped as outliers


def min_pair_distances(types, pair_i, pair_j, rij, species) -> dict:
    """{"A-B": shortest distance (A)} over the pairs given, per element pair; A-B in the
    order of `species` (A first), pairs never seen left out."""
    types = np.asarray(types)
    d = np.linalg.norm(np.asarray(rij, dtype=float), axis=1)
    ti = types[np.asarray(pair_i, dtype=np.int64)]
    tj = types[np.asarray(pair_j, dtype=np.int64)]
    a, b = np.minimum(ti, tj), np.maximum(ti, tj)
    out = {}
    ne = len(species)
    key = a * ne + b
    for k in np.unique(key):
        out[f"{species[k // ne]}-{species[k % ne]}"] = float(d[key == k].min())
    return out


AUTO_BATCH_ATOMS = 2048  # batch_structures "auto" over the budget: about this many atoms per batch


def estimate_jacobian_gb(structures, desc: ChebyshevDescriptor, cutoff: float, sample: int = 20) -> float:
    """The pair Jacobian of all structures, GB, from the pairs per atom of a few of them."""
    step = max(1, len(structures) // sample)
    some = structures[::step][:sample]
    pairs = sum(len(neighbor_pairs(s.positions, s.cell, s.pbc, cutoff)) for s in some)
    atoms = sum(len(s.positions) for s in some)
    total = sum(len(s.positions) for s in structures)
    return pairs / max(atoms, 1) * total * desc.n_features * 3 * 8 / 1e9


def plan_batches(structures, desc, cutoff, cfg: TrainConfig) -> int:
    """Structures per batch: 0 for one full batch (batch_structures "auto" within
    jacobian_budget_gb or on a GPU, or 0), else the mini-batch size."""
    bs = cfg.batch_structures
    if bs == "auto":
        # the GPU path is full-batch only (over the budget its kernels recompute the
        # Jacobian, as before mini-batches existed)
        if resolve_device(cfg.device) == "cuda" or \
                estimate_jacobian_gb(structures, desc, cutoff) <= cfg.jacobian_budget_gb:
            return 0
        mean_atoms = np.mean([len(s.positions) for s in structures])
        bs = max(1, int(round(AUTO_BATCH_ATOMS / mean_atoms)))
    return 0 if int(bs) >= len(structures) else int(bs)


def _targets(batch: Batch, energies, forces, fmask, sigma, e0, baseline) -> dict:
    """What the networks fit: labels less the baseline and e0 (Objective's targets)."""
    e_base, f_base, v_base = baseline_terms(batch, baseline)
    comp_e0 = np.bincount(batch.struct_of_atom, e0[batch.types], batch.S)
    smask = np.all(np.isfinite(sigma), axis=(1, 2)) & np.isfinite(batch.volume)
    return {"E": energies - e_base - comp_e0, "F": forces - f_base, "fmask": fmask,
            "sigma": sigma - (-v_base / batch.volume[:, None, None]), "smask": smask}


def _labels(structures):
    """(energies (S,), forces (N,3) with NaN-free zeros where missing, fmask (N,), sigma (S,3,3))."""
    energies = np.array([s.energy for s in structures])
    forces = np.concatenate([s.forces if s.forces is not None else np.full((len(s.positions), 3), np.nan)
                             for s in structures])
    fmask = np.all(np.isfinite(forces), axis=1)
    sigma = np.array([s.stress if s.stress is not None else np.full((3, 3), np.nan) for s in structures])
    return energies, np.nan_to_num(forces), fmask, sigma


class FeatureStatistics:
    """Per-element feature mean and std accumulated batch by batch (Chan's parallel update
    of count, mean and sum of squared deviations); result() as feature_statistics()."""

    def __init__(self, n_species: int, n_features: int):
        self.n = np.zeros(n_species)
        self.mean = np.zeros((n_species, n_features))
        self.m2 = np.zeros((n_species, n_features))

    def add(self, batch: Batch):
        for e, idx in enumerate(batch.by_element):
            if not idx.size:
                continue
            G = batch.G[idx]
            nb, mb = len(idx), G.mean(axis=0)
            m2b = ((G - mb) ** 2).sum(axis=0)
            n = self.n[e] + nb
            delta = mb - self.mean[e]
            self.mean[e] += delta * nb / n
            self.m2[e] += m2b + delta ** 2 * self.n[e] * nb / n
            self.n[e] = n

    def result(self, init=None):
        mean = np.zeros_like(self.mean)
        std = np.ones_like(self.mean)
        if init is not None:
            mean[:], std[:] = init.feature_mean, init.feature_std
        for e in range(len(self.n)):
            if self.n[e]:
                mean[e] = self.mean[e]
                s = np.sqrt(self.m2[e] / self.n[e])
                std[e] = np.where(s > 1e-8 * (np.abs(mean[e]) + 1e-12), s, 1.0)
        return mean, std


class MiniBatches:
    """The structures in fixed blocks of `size` (a seeded shuffle), each block's Batch built
    when needed and kept within cache_gb: pairs and descriptors of every block first, the
    pair Jacobian where room is left (without it the VJP/JVP kernels recompute it); blocks
    beyond the budget are dropped after use. Peak memory: the cache, one batch and the labels.

    A campaign can train on any list of structures (new labels + a replay sample of old
    ones) for a fixed number of steps (TrainConfig.max_steps)."""

    def __init__(self, structures, desc, cutoff: float, cfg: TrainConfig, size: int, rng):
        self.structures, self.desc, self.cutoff, self.cfg = structures, desc, cutoff, cfg
        order = rng.permutation(len(structures))
        self.blocks = [np.sort(order[i:i + size]) for i in range(0, len(structures), size)]
        self.size = size
        self.cache: dict = {}
        self.cached_bytes = 0
        self.lite_bytes = 0  # the largest batch seen without its Jacobian (pairs, descriptors)
        self.reference = None  # (e0, baseline) once fitted: targets need them

    @property
    def n_jacobians(self) -> int:
        """Cached batches that hold their Jacobian (the rest of the cache: pairs and descriptors)."""
        return sum(ent[0].J is not None for ent in self.cache.values())

    def _labels(self, k):
        return _labels([self.structures[i] for i in self.blocks[k]])

    def get(self, k):
        """(Batch, targets or None before the reference fit) of block k."""
        if k in self.cache:
            ent = self.cache[k]
        else:
            # Two tiers in one budget (cache_gb). Without its Jacobian a batch keeps its pairs
            # and descriptors (~1/30 of the Jacobian's bytes at 80 features), which saves the
            # neighbour list, the descriptors and the targets of every step (a quarter of an
            # uncached step on 96-atom cells, benchmarks/train_scale.py); per byte that pays
            # ~10x more than a Jacobian. So room is kept for every block's pairs and
            # descriptors first, and Jacobians take what is left.
            cap = self.cfg.cache_gb * 1e9
            b = Batch([self.structures[i] for i in self.blocks[k]], self.desc, self.cutoff, 0.0,
                      self.cfg.backend, "cpu")
            ent = [b, None]
            self.lite_bytes = max(self.lite_bytes, b.nbytes)
            reserve = self.lite_bytes * (len(self.blocks) - len(self.cache) - 1)  # the other blocks'
            room = cap - self.cached_bytes - b.nbytes - reserve
            b.add_jacobian(min(room / 1e9, self.cfg.jacobian_budget_gb))
            if self.cached_bytes + b.nbytes <= cap:
                self.cache[k] = ent
                self.cached_bytes += b.nbytes
        if ent[1] is None and self.reference is not None:
            E, F, fm, sig = self._labels(k)
            ent[1] = _targets(ent[0], E, F, fm, sig, *self.reference)
        return ent[0], ent[1]

    def pairs_only(self, k) -> Batch:
        if k in self.cache:
            return self.cache[k][0]
        return Batch([self.structures[i] for i in self.blocks[k]], self.desc, self.cutoff, 0.0,
                     self.cfg.backend, "cpu", descriptors=False)


# ---------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------
CHECKPOINT = "checkpoint.npz"
_CKPT_ARRAYS = ("theta", "adam_m", "adam_v", "best_theta")


def save_checkpoint(path, state: dict) -> None:
    """Write `state` (numpy arrays under _CKPT_ARRAYS and members, the rest JSON) to `path`
    atomically: a temporary file beside it, fsync, os.replace."""
    import os
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays, meta = {}, {}
    for k, v in state.items():
        if k in _CKPT_ARRAYS:
            if v is not None:
                arrays[k] = np.asarray(v)
        elif k == "members":
            for i, th in enumerate(v):
                arrays[f"member_{i}"] = np.asarray(th)
            meta["n_members"] = len(v)
        else:
            meta[k] = v
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, meta=np.array(json.dumps(meta, default=_json_default)), **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def load_checkpoint(path) -> dict:
    with np.load(path, allow_pickle=False) as d:
        state = json.loads(str(d["meta"]))
        for k in _CKPT_ARRAYS:
            state[k] = d[k].copy() if k in d.files else None
        state["members"] = [d[f"member_{i}"].copy() for i in range(state.pop("n_members", 0))]
    return state


def _config_dict(cfg: TrainConfig) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.__dict__.items()}


def train(structures, cfg: TrainConfig | None = None, init: Potential | None = None,
          progress=None, checkpoint_dir=None, resume: bool = False, announce=None) -> TrainResult:
    """Train a potential (or warm-start from `init`) on labelled structures.

    progress(member, epoch, metrics) is called every iteration (for progress bars).
    checkpoint_dir: write CHECKPOINT there every cfg.checkpoint_every iterations (steps);
    resume: continue from the checkpoint there (same data and settings). announce(info)
    is called once before the optimisation with the expected time (info["expected_s"]).
    """
    cfg = cfg or TrainConfig()
    rng = np.random.default_rng(cfg.seed)
    need_forces = cfg.force_weight > 0
    if init is not None:
        species = init.species
    else:
        zs = sorted({int(z) for s in structures for z in np.asarray(s.numbers)})
        species = tuple(symbol(z) for z in zs)
    structures = validate_structures(structures, need_forces, species)
    coul = _coulomb_term(cfg, init, species)
    dropped = []
    if cfg.force_outlier:
        keep = []
        for k, s in enumerate(structures):
            if s.forces is not None and np.abs(s.forces).max() > cfg.force_outlier:
                dropped.append(k)
            else:
                keep.append(s)
        structures = keep
        if not structures:
            raise ValueError(f"every structure has |F| > force_outlier={cfg.force_outlier} eV/A")
    if coul is not None:
        structures = [without_coulomb(s, coul, species) for s in structures]
    result = _train(structures, cfg, init, progress, checkpoint_dir, resume, announce, species, rng, need_forces,
                    dropped)
    meta = dict(result.potential.metadata)
    volumes = volume_range(structures)
    if volumes is not None:
        # the range of cells the model has seen: MD stops a run whose cell leaves it far behind
        # (services/md/guards.py); models without this key still load
        meta["volume_per_atom_A3"] = volumes
    return replace(result, potential=replace(result.potential, coulomb=coul, metadata=meta))


def volume_range(structures) -> list[float] | None:
    """[smallest, largest] volume per atom (A^3) of the fully periodic structures, or None."""
    v = [abs(float(np.linalg.det(s.cell))) / len(s.numbers) for s in structures
         if s.cell is not None and np.all(s.pbc) and len(s.numbers)]
    return [min(v), max(v)] if v else None


def _coulomb_term(cfg: TrainConfig, init: Potential | None, species) -> CoulombTerm | None:
    """The model's Coulomb term: the initial model's on a warm start, else cfg.coulomb's."""
    if init is not None:
        return init.coulomb
    if cfg.coulomb is None:
        return None
    return CoulombTerm.from_dict(cfg.coulomb, species)


def without_coulomb(s: Structure, term: CoulombTerm, species) -> Structure:
    """The labels of `s` less the fixed-charge Coulomb term (what the rest of the model fits)."""
    z2t = {atomic_number(e): k for k, e in enumerate(species)}
    types = np.array([z2t[int(z)] for z in s.numbers], dtype=np.int64)
    c = coulomb(term, s.positions, types, s.cell, s.pbc, forces=s.forces is not None or s.stress is not None)
    forces = None if s.forces is None else s.forces - c.forces
    stress = None
    if s.stress is not None:
        stress = s.stress + c.virial / abs(np.linalg.det(s.cell))  # ASE sign: stress = -virial / V
    return replace(s, energy=s.energy - c.energy, forces=forces, stress=stress)


def _train(structures, cfg, init, progress, checkpoint_dir, resume, announce, species, rng, need_forces,
           dropped) -> TrainResult:
    desc = init.descriptor if init is not None else ChebyshevDescriptor(
        species, **descriptor_options(cfg.descriptor, len(species)))
    cutoff = init.cutoff if init is not None else desc.cutoff
    ckpt = None
    if checkpoint_dir is not None:
        from pathlib import Path

        ckpt = Path(checkpoint_dir) / CHECKPOINT
    saved = None
    if resume:
        if ckpt is None or not ckpt.exists():
            raise ValueError(f"resume: no checkpoint {ckpt}")
        saved = load_checkpoint(ckpt)
        if saved.get("config") != json.loads(json.dumps(_config_dict(cfg))) or \
                saved.get("n_structures") != len(structures):
            raise ValueError(f"resume: {ckpt} was written for other data or settings "
                             f"({saved.get('n_structures')} structures)")
    size = plan_batches(structures, desc, cutoff, cfg)
    if size and resolve_device(cfg.device) == "cuda":
        raise ValueError("mini-batch training (batch_structures) runs on the CPU only for now: use "
                         "device 'cpu', or batch_structures 0 (full batch) on the GPU")
    t0 = time.perf_counter()
    if size:
        return _train_minibatch(structures, cfg, init, progress, desc, cutoff, species, size, rng, dropped, t0,
                                ckpt, saved, announce)
    batch = Batch(structures, desc, cutoff, cfg.jacobian_budget_gb, cfg.backend, cfg.device)
    energies, forces, fmask, sigma = _labels(structures)

    if init is not None and not cfg.refit_on_warm_start:
        e0, baseline = init.energy_shift, init.baseline
        mean, std = init.feature_mean, init.feature_std
    else:
        # a warm start re-fits e0, the baseline and the standardisation to the data it is
        # given (they grow in a campaign); the networks are then carried over exactly
        # (warm_start_networks) and adapt to what changed
        delta = cfg.delta if init is None else init.baseline is not None
        e0, baseline = fit_reference(batch, energies, forces, fmask, delta, cutoff,
                                     weighting=cfg.baseline_force_weighting)
        mean, std = feature_statistics(batch, len(species), desc.n_features,
                                       None if init is None else init)
    targets = _targets(batch, energies, forces, fmask, sigma, e0, baseline)
    setup_time = time.perf_counter() - t0

    members, history = [], []
    ck = _Checkpointer(ckpt, cfg, len(structures), saved)
    for m in range(cfg.n_models):
        rng_state = rng.bit_generator.state
        # each member: its own initial weights and its own validation split
        perm = rng.permutation(batch.S)
        n_val = int(round(cfg.validation_fraction * batch.S)) if batch.S > 1 else 0
        train_mask = np.ones(batch.S, dtype=bool)
        train_mask[perm[:n_val]] = False
        nets = _initial_networks(init, m, mean, std, e0, desc, species, cfg, rng)
        pot = Potential(desc, tuple(nets), mean, std, e0, baseline)
        obj = Objective(batch, pot, targets, cfg, train_mask)
        done = ck.done_member(m, obj)
        if done is not None:
            members.append(done[0])
            history.append(done[1])
            continue
        if m == 0 and announce is not None and ck.resume_state(m) is None:
            tt = time.perf_counter()
            obj(obj.pack(nets))
            dt = time.perf_counter() - tt
            its = cfg.warmup_epochs + cfg.max_epochs
            announce({"setup_s": setup_time, "s_per_iteration": dt, "iterations": its, "n_models": cfg.n_models,
                      "batch_structures": 0, "expected_s": dt * its * cfg.n_models})
        theta, hist = _optimise(obj, obj.pack(nets), cfg, lambda ep, mt, m=m: progress and progress(m, ep, mt),
                                save=ck.saver(m, rng_state, members, history), resume=ck.resume_state(m))
        members.append(obj.unpack(theta))
        history.append(hist)

    nets = _stack_members(members, species, cfg, init)
    meta = {
        "trained": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "n_structures": int(batch.S),
        "n_atoms": int(batch.N),
        "config": _config_dict(cfg),
        "warm_start": init.content_hash[:16] if init is not None else None,
        "setup_seconds": setup_time,
        # shortest distance per element pair in the training set: MD stops below a fraction
        # of it (services/md/guards.py); models without this key still load
        "min_pair_distance_A": min_pair_distances(batch.types, batch.pair_i, batch.pair_j,
                                                  batch.rij, species),
    }
    final = Potential(desc, nets, mean, std, e0, baseline, metadata=meta)
    # ensemble metrics over all structures (no train/val split: members differ)
    all_mask = np.ones(batch.S, dtype=bool)
    obj = Objective(batch, replace(final), targets, cfg, all_mask)
    E = obj.xp.zeros(batch.S)
    F = obj.xp.zeros((batch.N, 3))
    for mem in members:
        e_, f_, _, _ = obj.predict(mem, virial=False)
        E += e_ / len(members)
        F += f_ / len(members)
    dE = (E - obj.t["E"]) / batch.x.n_atoms
    metrics = {k.replace("train_", "all_"): v for k, v in obj.metrics(dE, F, E, None).items()}
    metrics["n_dropped_outliers"] = len(dropped)
    metrics["jacobian_cached"] = batch.J is not None
    metrics["jacobian_gb"] = batch.jacobian_gb
    metrics["device"] = batch.device
    metrics["batch_structures"] = 0
    metrics["optimizer"] = cfg.optimizer
    return TrainResult(final, history, metrics, dropped)


def _initial_networks(init, m, mean, std, e0, desc, species, cfg, rng):
    if init is not None:
        mm = m % init.n_models
        nets = [ElementNetwork(tuple(w[mm:mm + 1] for w in n.weights), tuple(b[mm:mm + 1] for b in n.biases),
                               n.activation) for n in init.networks]
        return warm_start_networks(nets, init, mean, std, e0)
    return [ElementNetwork.random(desc.n_features, cfg.hidden, 1, cfg.activation, rng) for _ in species]


def _stack_members(members, species, cfg, init):
    return tuple(
        ElementNetwork(
            tuple(np.concatenate([mem[e].weights[l] for mem in members]) for l in range(len(members[0][e].weights))),
            tuple(np.concatenate([mem[e].biases[l] for mem in members]) for l in range(len(members[0][e].biases))),
            cfg.activation if init is None else init.activation,
        )
        for e in range(len(species))
    )


class _Checkpointer:
    """Checkpoint bookkeeping shared by both paths: members finished, the member in
    progress (its RNG state at its start, so that its split and initial weights are drawn
    again identically) and its optimiser state."""

    def __init__(self, path, cfg, n_structures, saved):
        self.path, self.cfg, self.n, self.saved = path, cfg, n_structures, saved

    def done_member(self, m, obj):
        s = self.saved
        if s is None or m >= len(s["members"]):
            return None
        return obj.unpack(s["members"][m]), s["histories"][m]

    def resume_state(self, m):
        s = self.saved
        if s is None or s.get("member") != m or s.get("theta") is None:
            return None
        return s

    def saver(self, m, rng_state, members, histories):
        if self.path is None:
            return None

        def save(opt_state: dict):
            packed = [np.concatenate([a[0].ravel() for net in mem for w, b in zip(net.weights, net.biases)
                                      for a in (w, b)]) for mem in members]
            save_checkpoint(self.path, {**opt_state, "member": m, "members": packed,
                                        "histories": list(histories), "rng_member": rng_state,
                                        "config": _config_dict(self.cfg), "n_structures": self.n})
        return save


def _evaluate_blocks(mb: MiniBatches, blocks, pot, nets_list, cfg, mask, prefix: str) -> dict:
    """Energy and force errors (and the loss without l2) of the mean of `nets_list` over the
    structures selected by `mask` (S,), block by block."""
    se = ae = ne_ = sf = af = nf = 0.0
    for k in blocks:
        blk = mb.blocks[k]
        sel = mask[blk]
        if not sel.any():
            continue
        b, t = mb.get(k)
        obj = Objective(b, pot, t, cfg, sel)
        E = np.zeros(b.S)
        F = np.zeros((b.N, 3))
        for nets in nets_list:
            e_, f_, _, _ = obj.predict(nets, virial=False)
            E += e_ / len(nets_list)
            F += f_ / len(nets_list)
        dE = ((E - t["E"]) / b.n_atoms)[sel]
        se += float(np.sum(dE ** 2))
        ae += float(np.sum(np.abs(dE)))
        ne_ += len(dE)
        fm = t["fmask"] & sel[b.struct_of_atom]
        d = (F - t["F"])[fm]
        sf += float(np.sum(d ** 2))
        af += float(np.sum(np.abs(d)))
        nf += d.size
    out = {}
    if ne_:
        out[f"{prefix}_energy_rmse"] = float(np.sqrt(se / ne_))
        out[f"{prefix}_energy_mae"] = ae / ne_
        loss = cfg.energy_weight * se / ne_
        if nf:
            out[f"{prefix}_force_rmse"] = float(np.sqrt(sf / nf))
            out[f"{prefix}_force_mae"] = af / nf
            loss += cfg.force_weight * sf / nf
        out[f"{prefix}_loss"] = loss
    return out


def _train_minibatch(structures, cfg, init, progress, desc, cutoff, species, size, rng, dropped, t0, ckpt,
                     saved, announce) -> TrainResult:
    """train() over mini-batches: the setup streams over the blocks (feature statistics,
    the reference fit's QR factor), then Adam over the blocks of each member's training
    structures, early stopping on its validation structures (evaluated block by block)."""
    # blocks from their own stream, so that `rng` draws the same splits and initial
    # weights as the full-batch path with the same seed
    mb = MiniBatches(structures, desc, cutoff, cfg, size, np.random.default_rng([cfg.seed, 7]))
    S = len(structures)
    n_atoms = np.array([len(s.positions) for s in structures])
    pair_min: dict = {}
    if init is not None and not cfg.refit_on_warm_start:
        e0, baseline = init.energy_shift, init.baseline
        mean, std = init.feature_mean, init.feature_std
        for k in range(len(mb.blocks)):
            b = mb.pairs_only(k)
            for key, v in min_pair_distances(b.types, b.pair_i, b.pair_j, b.rij, species).items():
                pair_min[key] = min(v, pair_min.get(key, np.inf))
    else:
        delta = cfg.delta if init is None else init.baseline is not None
        scale = 1.0
        if cfg.baseline_force_weighting:  # <|F|> over every structure: one pass over the labels
            _, F_all, fm_all, _ = _labels(structures)
            scale = force_scale(F_all, fm_all)
            del F_all, fm_all
        ref = ReferenceFit(len(species), delta, cutoff, weighting=cfg.baseline_force_weighting, scale=scale)
        stats = FeatureStatistics(len(species), desc.n_features)
        for k in range(len(mb.blocks)):
            b, _ = mb.get(k)
            E, F, fm, _ = mb._labels(k)
            ref.add(b, E, F, fm)
            stats.add(b)
            for key, v in min_pair_distances(b.types, b.pair_i, b.pair_j, b.rij, species).items():
                pair_min[key] = min(v, pair_min.get(key, np.inf))
            del b
        baseline = ref.solve()
        if baseline is not None:
            for k in range(len(mb.blocks)):
                ref.add_e_base(mb.pairs_only(k))
        e0 = ref.e0()
        mean, std = stats.result(None if init is None else init)
    mb.reference = (e0, baseline)
    setup_time = time.perf_counter() - t0

    members, history = [], []
    ck = _Checkpointer(ckpt, cfg, S, saved)
    for m in range(cfg.n_models):
        rng_state = rng.bit_generator.state
        perm = rng.permutation(S)
        n_val = int(round(cfg.validation_fraction * S)) if S > 1 else 0
        train_mask = np.ones(S, dtype=bool)
        train_mask[perm[:n_val]] = False
        nets = _initial_networks(init, m, mean, std, e0, desc, species, cfg, rng)
        pot = Potential(desc, tuple(nets), mean, std, e0, baseline)
        b0, t0_ = mb.get(0)
        obj0 = Objective(b0, pot, t0_, cfg, np.ones(b0.S, bool))
        done = ck.done_member(m, obj0)
        if done is not None:
            members.append(done[0])
            history.append(done[1])
            continue
        theta, hist = _optimise_minibatch(mb, pot, obj0.pack(nets), cfg, train_mask,
                                          lambda ep, mt, m=m: progress and progress(m, ep, mt),
                                          np.random.default_rng([cfg.seed, 11, m]),
                                          save=ck.saver(m, rng_state, members, history),
                                          resume=ck.resume_state(m),
                                          announce=announce if m == 0 else None, setup_time=setup_time)
        members.append(obj0.unpack(theta))
        history.append(hist)

    nets = _stack_members(members, species, cfg, init)
    meta = {
        "trained": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "n_structures": int(S),
        "n_atoms": int(n_atoms.sum()),
        "config": _config_dict(cfg),
        "warm_start": init.content_hash[:16] if init is not None else None,
        "setup_seconds": setup_time,
        "min_pair_distance_A": {k: float(v) for k, v in pair_min.items()},
    }
    final = Potential(desc, nets, mean, std, e0, baseline, metadata=meta)
    metrics = _evaluate_blocks(mb, range(len(mb.blocks)), final, members, cfg, np.ones(S, bool), "all")
    metrics.pop("all_loss", None)
    metrics.update({"n_dropped_outliers": len(dropped), "jacobian_cached": mb.n_jacobians == len(mb.blocks),
                    "batches_cached": f"{mb.n_jacobians}/{len(mb.blocks)}",
                    "descriptors_cached": f"{len(mb.cache)}/{len(mb.blocks)}", "cache_gb": mb.cached_bytes / 1e9,
                    "jacobian_gb": estimate_jacobian_gb(structures, desc, cutoff), "device": "cpu",
                    "batch_structures": size, "optimizer": "adam"})
    return TrainResult(final, history, metrics, dropped)


def _optimise_minibatch(mb: MiniBatches, pot, theta0, cfg: TrainConfig, train_mask, report, rng, save=None,
                        resume=None, announce=None, setup_time=0.0):
    """Adam over mini-batches: warmup_epochs energy-only steps, then epochs (passes over the
    training blocks in a shuffled order), the validation errors after each epoch, early
    stopping after `patience` epochs without improvement; the best parameters are kept."""
    train_blocks = [k for k, blk in enumerate(mb.blocks) if train_mask[blk].any()]
    val_blocks = [k for k, blk in enumerate(mb.blocks) if (~train_mask[blk]).any()]
    n_steps = len(train_blocks)
    total = max(cfg.max_epochs * n_steps, 1)
    b1, b2, eps = 0.9, 0.999, 1e-8
    st = {"phase": "energy", "k": 0, "epoch": 0, "pos": 0, "order": None, "step": 0, "since": 0,
          "best_score": np.inf, "hist": [], "acc": [0.0, 0.0, 0.0, 0.0], "rng": None, "time": 0.0}
    theta, m1, v1, best = theta0.copy(), np.zeros_like(theta0), np.zeros_like(theta0), theta0.copy()
    if resume is not None:
        st.update({k: resume[k] for k in st if k in resume})
        theta, m1, v1 = resume["theta"].copy(), resume["adam_m"].copy(), resume["adam_v"].copy()
        best = resume["best_theta"].copy()
        if st["rng"] is not None:
            rng.bit_generator.state = st["rng"]
    t_start = time.perf_counter() - st["time"]

    def checkpoint():
        if save is not None:
            st["rng"] = rng.bit_generator.state
            st["time"] = time.perf_counter() - t_start
            save({**st, "theta": theta, "adam_m": m1, "adam_v": v1, "best_theta": best})

    def step(k_block, energy_only, lr):
        nonlocal theta, m1, v1
        blk = mb.blocks[k_block]
        b, t = mb.get(k_block)
        obj = Objective(b, pot, t, cfg, train_mask[blk])
        loss, grad, metrics = obj(theta, energy_only)
        st["k"] += 1
        k = st["k"]
        m1 = b1 * m1 + (1 - b1) * grad
        v1 = b2 * v1 + (1 - b2) * grad * grad
        theta = theta - lr * (m1 / (1 - b1 ** k)) / (np.sqrt(v1 / (1 - b2 ** k)) + eps)
        return loss, metrics, obj.n_e

    if st["phase"] == "energy":
        if announce is not None:
            tt = time.perf_counter()
            b, t = mb.get(train_blocks[0])
            Objective(b, pot, t, cfg, train_mask[mb.blocks[train_blocks[0]]])(theta)
            dt = time.perf_counter() - tt
            per_epoch = dt * (n_steps + 0.5 * len(val_blocks))
            announce({"setup_s": setup_time, "s_per_iteration": dt, "iterations": cfg.max_epochs * n_steps,
                      "n_models": cfg.n_models, "batch_structures": mb.size, "s_per_epoch": per_epoch,
                      "steps_per_epoch": n_steps,
                      "expected_s": (per_epoch * cfg.max_epochs + dt * cfg.warmup_epochs) * cfg.n_models})
        loss = np.nan
        while st["k"] < cfg.warmup_epochs:
            loss, metrics, _ = step(train_blocks[st["k"] % n_steps], True, cfg.adam_lr)
            row = {"epoch": 0, "step": st["k"], "phase": "energy", "loss": float(loss),
                   "time": time.perf_counter() - t_start, **metrics}
            report(st["k"], row)
            if st["k"] % cfg.checkpoint_every == 0:
                checkpoint()
        st["hist"].append({"epoch": 0, "step": st["k"], "phase": "energy", "loss": float(loss),
                           "time": time.perf_counter() - t_start})
        st.update(phase="full", k=0)
        m1, v1 = np.zeros_like(theta), np.zeros_like(theta)
    stop = False
    while st["epoch"] < cfg.max_epochs and not stop:
        if st["pos"] == 0:
            st["order"] = [int(train_blocks[i]) for i in rng.permutation(n_steps)]
            st["acc"] = [0.0, 0.0, 0.0, 0.0]
        while st["pos"] < n_steps:
            lr = cfg.adam_lr
            if cfg.adam_lr_final:
                lr = cfg.adam_lr * (cfg.adam_lr_final / cfg.adam_lr) ** min(st["step"] / total, 1.0)
            loss, metrics, n_e = step(st["order"][st["pos"]], False, lr)
            st["pos"] += 1
            st["step"] += 1
            a = st["acc"]  # running train errors over the epoch
            a[0] += metrics.get("train_energy_rmse", 0.0) ** 2 * n_e
            a[1] += n_e
            a[2] += metrics.get("train_force_rmse", 0.0) ** 2 * n_e
            a[3] += float(loss) * n_e
            report(st["epoch"] + st["pos"] / n_steps, {"phase": "full", "loss": float(loss), **metrics})
            out_of_time = cfg.max_minutes is not None and time.perf_counter() - t_start > 60 * cfg.max_minutes
            if (cfg.max_steps is not None and st["step"] >= cfg.max_steps) or out_of_time:
                stop = True
                break
            if st["step"] % cfg.checkpoint_every == 0 and st["pos"] < n_steps:
                checkpoint()
        # end of an epoch (or of the budget): validation, early stopping
        st["epoch"] += 1
        st["pos"] = 0
        nets = pot_unpack(pot, theta)
        a = st["acc"]
        row = {"epoch": st["epoch"], "step": st["step"], "phase": "full", "loss": a[3] / max(a[1], 1),
               "lr": lr, "time": time.perf_counter() - t_start,
               "train_energy_rmse": float(np.sqrt(a[0] / max(a[1], 1)))}
        if cfg.force_weight > 0:
            row["train_force_rmse"] = float(np.sqrt(a[2] / max(a[1], 1)))
        row.update(_evaluate_blocks(mb, val_blocks, pot, [nets], cfg, ~train_mask, "val"))
        st["hist"].append(row)
        report(st["epoch"], row)
        score = _validation_score(row)
        if score < st["best_score"]:
            st["best_score"], st["since"] = score, 0
            best = theta.copy()
        else:
            st["since"] += 1
            if st["since"] >= cfg.patience:
                stop = True
        checkpoint()
    if cfg.max_epochs > 0 and np.isfinite(st["best_score"]):
        theta = best
    return theta, st["hist"]


def pot_unpack(pot: Potential, theta):
    """Networks (M = 1) of `pot`'s shapes viewing theta (Objective.unpack without a batch)."""
    nets, k = [], 0
    for net in pot.networks:
        ws, bs = [], []
        for w, b in zip(net.weights, net.biases):
            ws.append(theta[k:k + w[0].size].reshape((1,) + w.shape[1:]))
            k += w[0].size
            bs.append(theta[k:k + b[0].size].reshape((1,) + b.shape[1:]))
            k += b[0].size
        nets.append(ElementNetwork(tuple(ws), tuple(bs), net.activation))
    return nets


def feature_statistics(batch: Batch, n_species: int, n_features: int, init=None):
    """Per-element feature mean and std over the batch (constant features get std 1);
    elements absent from the batch keep `init`'s statistics (or 0 and 1)."""
    mean = np.zeros((n_species, n_features))
    std = np.ones((n_species, n_features))
    if init is not None:
        mean[:], std[:] = init.feature_mean, init.feature_std
    for e in range(n_species):
        idx = batch.by_element[e]
        if idx.size:
            mean[e] = batch.G[idx].mean(axis=0)
            s = batch.G[idx].std(axis=0)
            std[e] = np.where(s > 1e-8 * (np.abs(mean[e]) + 1e-12), s, 1.0)
    return mean, std


def warm_start_networks(nets, init, mean, std, e0):
    """`init`'s networks re-expressed for new feature statistics (mean, std) and a new
    per-element energy shift e0: the first layer absorbs the change of standardisation
    and the output bias the change of e0, so each element's atomic energy
    NN(x) + e0 is unchanged (exactly, before training adapts it to the new data)."""
    out = []
    for e, net in enumerate(nets):
        r = std[e] / init.feature_std[e]  # x_old = x_new * r + c
        c = (mean[e] - init.feature_mean[e]) / init.feature_std[e]
        w0, b0 = net.weights[0], net.biases[0]  # (M, n_in, n_out), (M, n_out)
        weights = (w0 * r[None, :, None],) + tuple(net.weights[1:])
        biases = [b0 + np.einsum("i,mio->mo", c, w0)] + list(net.biases[1:])
        biases[-1] = biases[-1] + (init.energy_shift[e] - e0[e])
        out.append(ElementNetwork(weights, tuple(biases), net.activation))
    return out


def _optimise(obj: Objective, theta0, cfg: TrainConfig, report, save=None, resume=None):
    """Energy-only warm-up, then the full loss; L-BFGS or Adam; early stopping on validation.

    save(state): called every cfg.checkpoint_every iterations with the optimiser state
    (theta, Adam moments, phase and iteration, best so far, history); resume: such a
    state to continue from. Adam continues exactly; L-BFGS restarts its history (scipy
    keeps it internal) from the checkpoint's parameters."""
    hist = []
    state = {"epoch": 0, "best": (np.inf, theta0.copy()), "since": 0, "last": None, "stop": False}
    start_phase, k0 = "energy", 0
    t_offset = 0.0
    if resume is not None:
        hist = list(resume["hist"])
        state.update(epoch=resume["epoch"], best=(resume["best_score"], resume["best_theta"].copy()),
                     since=resume["since"])
        start_phase, k0 = resume["phase"], resume["k"]
        theta0 = resume["theta"].copy()
        t_offset = resume.get("time", 0.0)
    t_start = time.perf_counter() - t_offset
    ctx = {"phase": start_phase, "k": k0, "m": None, "v": None}

    def checkpoint(theta):
        if save is None:
            return
        save({"phase": ctx["phase"], "k": ctx["k"], "epoch": state["epoch"], "theta": theta,
              "adam_m": ctx["m"], "adam_v": ctx["v"], "best_score": state["best"][0],
              "best_theta": state["best"][1], "since": state["since"], "hist": hist,
              "time": time.perf_counter() - t_start})

    def record(theta, loss, metrics, phase):
        state["epoch"] += 1
        ctx["k"] += 1
        row = {"epoch": state["epoch"], "phase": phase, "loss": float(loss), "time": time.perf_counter() - t_start,
               **metrics}
        hist.append(row)
        report(state["epoch"], row)
        if phase == "full":
            score = _validation_score(metrics)
            if score < state["best"][0]:
                state["best"] = (score, theta.copy())
                state["since"] = 0
            else:
                state["since"] += 1
        if cfg.max_minutes is not None and time.perf_counter() - t_start > 60 * cfg.max_minutes:
            state["stop"] = True
        if state["epoch"] % cfg.checkpoint_every == 0:
            checkpoint(theta)

    def stopping(phase):
        return state["stop"] or (phase == "full" and state["since"] >= cfg.patience)

    def run(theta, n_iter, energy_only, k_start=0, moments=None):
        phase = "energy" if energy_only else "full"
        ctx.update(phase=phase, k=k_start, m=None, v=None)
        if n_iter - k_start <= 0 or state["stop"]:
            return theta
        if cfg.optimizer == "lbfgs":
            from scipy.optimize import minimize

            def fun(th):
                loss, grad, metrics = obj(th, energy_only)
                state["last"] = (loss, metrics)
                return loss, grad

            def callback(intermediate_result):
                loss, metrics = state["last"]
                record(intermediate_result.x, loss, metrics, phase)
                if stopping(phase):
                    raise StopIteration

            res = minimize(fun, theta, jac=True, method="L-BFGS-B", callback=callback,
                           options={"maxiter": n_iter - k_start, "maxcor": cfg.lbfgs_history, "ftol": 1e-14,
                                    "gtol": 1e-10})
            return res.x
        # Adam, full batch
        m, v = moments if moments is not None else (np.zeros_like(theta), np.zeros_like(theta))
        b1, b2, eps = 0.9, 0.999, 1e-8
        for k in range(k_start + 1, n_iter + 1):
            loss, grad, metrics = obj(theta, energy_only)
            m = b1 * m + (1 - b1) * grad
            v = b2 * v + (1 - b2) * grad * grad
            lr = cfg.adam_lr
            if cfg.adam_lr_final and not energy_only:
                lr = cfg.adam_lr * (cfg.adam_lr_final / cfg.adam_lr) ** ((k - 1) / max(n_iter, 1))
            theta = theta - lr * (m / (1 - b1**k)) / (np.sqrt(v / (1 - b2**k)) + eps)
            ctx["m"], ctx["v"] = m, v
            record(theta, loss, metrics, phase)
            if stopping(phase):
                break
        return theta

    moments = None
    if resume is not None and resume.get("adam_m") is not None:
        moments = (resume["adam_m"].copy(), resume["adam_v"].copy())
    theta = theta0
    if start_phase == "energy":
        theta = run(theta, cfg.warmup_epochs, True, k0, moments)
        k0, moments = 0, None
    theta = run(theta, cfg.max_epochs, False, k0, moments)
    if cfg.max_epochs > 0 and np.isfinite(state["best"][0]):
        theta = state["best"][1]
    return theta, hist
