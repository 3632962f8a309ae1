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

Where the arrays live (TrainConfig.device): "cpu", or "cuda" (gpu/training_cuda.py):
the same Objective with xp = CuPy on a GPU (numpy in numba's CUDA simulator) for the
networks, the loss and the reductions, and the per-iteration descriptor products (the
VJP of energies, the JVP of the force-loss direction) as numba.cuda kernels on the
cached Jacobian. Setup (neighbours, descriptors, Jacobian, baseline fit,
standardisation) runs on the CPU once; the optimiser gets theta and the gradient as
numpy vectors (one small copy each way per iteration).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np

from .baseline import PairBaseline, design_matrix_row, pair_terms
from .descriptor import ChebyshevDescriptor
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
    n_angular, 12 and 6 unless given.
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
    patience: int = 60
    force_outlier: float | None = 50.0
    jacobian_budget_gb: float = 2.0
    # warm start (init=): re-fit e0, the Delta baseline and the feature standardisation to
    # the data given (else keep the initial model's)
    refit_on_warm_start: bool = True
    seed: int = 0
    backend: str = "auto"
    device: str = "auto"  # "cpu", "cuda", or "auto": cuda when gpu.device.gpu_available()

    def __post_init__(self):
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES} (got {self.device!r})")
        if self.optimizer not in ("lbfgs", "adam"):
            raise ValueError(f"optimizer must be 'lbfgs' or 'adam' (got {self.optimizer!r})")
        if self.n_models < 1:
            raise ValueError(f"n_models must be >= 1 (got {self.n_models})")
        activation(self.activation)  # ValueError listing the known ones ("gelu", "twisted_tanh", ...)
        for name in ("energy_weight", "force_weight", "stress_weight", "l2", "jacobian_budget_gb"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (got {getattr(self, name)})")
        if not 0 <= self.validation_fraction < 1:
            raise ValueError(f"validation_fraction must be in [0, 1) (got {self.validation_fraction})")
        if self.max_epochs < 0 or self.warmup_epochs < 0:
            raise ValueError("max_epochs and warmup_epochs must be >= 0")
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
                 backend: str = "auto", device: str = "cpu"):
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
        self.G = self.kern.descriptors(desc, self.rij, self.pair_i, self.type_j, self.N)
        need = len(self.pair_i) * desc.n_features * 3 * 8 / 1e9
        self.J = None
        if need <= budget_gb:
            self.J = self.kern.pair_jacobian(desc, self.rij, self.pair_i, self.type_j, self.N)
        self.jacobian_gb = need
        self.by_element = [np.flatnonzero(self.types == e) for e in range(desc.n_species)]
        # x: the arrays the Objective reads, where its arithmetic runs (self on the CPU)
        self.device = resolve_device(device)
        self.xp = np
        self.x = self
        if self.device == "cuda":
            from .gpu.training_cuda import DeviceBatch

            self.x = DeviceBatch(self)
            self.xp = self.x.xp

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


def fit_reference(batch: Batch, energies, forces, fmask, delta: bool, cutoff: float, force_rows: float = 1.0):
    """Least-squares fit of e0 (per element) and, with delta, the baseline coefficients.

    Energy rows are per atom (E/N); force rows are scaled by `force_rows`. Returns
    (e0 (ne,), PairBaseline or None)."""
    from scipy.optimize import lsq_linear

    ne = batch.desc.n_species
    comp = np.zeros((batch.S, ne))
    np.add.at(comp, (batch.struct_of_atom, batch.types), 1.0)
    y_e = energies / batch.n_atoms
    A_e0 = comp / batch.n_atoms[:, None]
    if not delta:
        e0, *_ = np.linalg.lstsq(A_e0, y_e, rcond=None)
        return e0, None
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
        A_f = A_f.reshape(len(atoms) * 3, -1) * force_rows
        rows_A.append(np.hstack([np.zeros((len(A_f), ne)), A_f]))
        rows_y.append(forces[atoms].ravel() * force_rows)
    A = np.vstack(rows_A)
    y = np.concatenate(rows_y)
    # Scale columns for conditioning (r^-12 columns span many decades); drop empty ones
    # (element pairs never closer than the cutoff).
    scale = np.abs(A).max(axis=0)
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
                m = col == t
                if not m.any() or not np.any(coef_flat[t]):
                    continue
                rmin = d[m].min()
                rs = np.linspace(0.5 * rmin, rmin, 50)
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
    baseline = PairBaseline(coef, R)
    # Re-fit e0 for the guarded baseline.
    phi, _ = pair_terms(baseline, d, batch.types[batch.pair_i], batch.type_j)
    e_base = 0.5 * np.bincount(batch.struct_of_pair, phi, batch.S)
    e0, *_ = np.linalg.lstsq(A_e0, (energies - e_base) / batch.n_atoms, rcond=None)
    return e0, baseline


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
        nets, k = [], 0
        for net in self.pot.networks:
            ws, bs = [], []
            for w, b in zip(net.weights, net.biases):
                ws.append(theta[k:k + w[0].size].reshape((1,) + w.shape[1:]))
                k += w[0].size
                bs.append(theta[k:k + b[0].size].reshape((1,) + b.shape[1:]))
                k += b[0].size
            nets.append(ElementNetwork(tuple(ws), tuple(bs), net.activation))
        return nets

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


def train(structures, cfg: TrainConfig | None = None, init: Potential | None = None,
          progress=None) -> TrainResult:
    """Train a potential (or warm-start from `init`) on labelled structures.

    progress(member, epoch, metrics) is called every iteration (for progress bars).
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
    desc = init.descriptor if init is not None else ChebyshevDescriptor(
        species, **{**DEFAULT_DESCRIPTOR, **cfg.descriptor})
    cutoff = init.cutoff if init is not None else desc.cutoff
    t0 = time.perf_counter()
    batch = Batch(structures, desc, cutoff, cfg.jacobian_budget_gb, cfg.backend, cfg.device)
    energies = np.array([s.energy for s in structures])
    forces = np.concatenate([s.forces if s.forces is not None else np.full((len(s.positions), 3), np.nan)
                             for s in structures])
    fmask = np.all(np.isfinite(forces), axis=1)
    forces = np.nan_to_num(forces)
    sigma = np.array([s.stress if s.stress is not None else np.full((3, 3), np.nan) for s in structures])
    smask = np.all(np.isfinite(sigma), axis=(1, 2)) & np.isfinite(batch.volume)

    if init is not None and not cfg.refit_on_warm_start:
        e0, baseline = init.energy_shift, init.baseline
        mean, std = init.feature_mean, init.feature_std
    else:
        # a warm start re-fits e0, the baseline and the standardisation to the data it is
        # given (they grow in a campaign); the networks are then carried over exactly
        # (warm_start_networks) and adapt to what changed
        delta = cfg.delta if init is None else init.baseline is not None
        e0, baseline = fit_reference(batch, energies, forces, fmask, delta, cutoff)
        mean, std = feature_statistics(batch, len(species), desc.n_features,
                                       None if init is None else init)
    e_base, f_base, v_base = baseline_terms(batch, baseline)
    comp_e0 = np.bincount(batch.struct_of_atom, e0[batch.types], batch.S)
    targets = {
        "E": energies - e_base - comp_e0,
        "F": forces - f_base,
        "fmask": fmask,
        "sigma": sigma - (-v_base / batch.volume[:, None, None]),
        "smask": smask,
    }
    setup_time = time.perf_counter() - t0

    members, history = [], []
    for m in range(cfg.n_models):
        # each member: its own initial weights and its own validation split
        perm = rng.permutation(batch.S)
        n_val = int(round(cfg.validation_fraction * batch.S)) if batch.S > 1 else 0
        train_mask = np.ones(batch.S, dtype=bool)
        train_mask[perm[:n_val]] = False
        if init is not None:
            mm = m % init.n_models
            nets = [ElementNetwork(tuple(w[mm:mm + 1] for w in n.weights), tuple(b[mm:mm + 1] for b in n.biases),
                                   n.activation) for n in init.networks]
            nets = warm_start_networks(nets, init, mean, std, e0)
        else:
            nets = [ElementNetwork.random(desc.n_features, cfg.hidden, 1, cfg.activation, rng) for _ in species]
        pot = Potential(desc, tuple(nets), mean, std, e0, baseline)
        obj = Objective(batch, pot, targets, cfg, train_mask)
        theta, hist = _optimise(obj, obj.pack(nets), cfg, lambda ep, mt, m=m: progress and progress(m, ep, mt))
        members.append(obj.unpack(theta))
        history.append(hist)

    nets = tuple(
        ElementNetwork(
            tuple(np.concatenate([mem[e].weights[l] for mem in members]) for l in range(len(members[0][e].weights))),
            tuple(np.concatenate([mem[e].biases[l] for mem in members]) for l in range(len(members[0][e].biases))),
            cfg.activation if init is None else init.activation,
        )
        for e in range(len(species))
    )
    meta = {
        "trained": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "n_structures": int(batch.S),
        "n_atoms": int(batch.N),
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.__dict__.items()},
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
    return TrainResult(final, history, metrics, dropped)


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


def _optimise(obj: Objective, theta0, cfg: TrainConfig, report):
    """Energy-only warm-up, then the full loss; L-BFGS or Adam; early stopping on validation."""
    hist = []
    state = {"epoch": 0, "best": (np.inf, theta0.copy()), "since": 0, "last": None}
    t_start = time.perf_counter()

    def record(theta, loss, metrics, phase):
        state["epoch"] += 1
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

    def run(theta, n_iter, energy_only):
        phase = "energy" if energy_only else "full"
        if n_iter <= 0:
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
                if phase == "full" and state["since"] >= cfg.patience:
                    raise StopIteration

            res = minimize(fun, theta, jac=True, method="L-BFGS-B", callback=callback,
                           options={"maxiter": n_iter, "maxcor": cfg.lbfgs_history, "ftol": 1e-14, "gtol": 1e-10})
            return res.x
        # Adam, full batch
        m = np.zeros_like(theta)
        v = np.zeros_like(theta)
        b1, b2, eps = 0.9, 0.999, 1e-8
        for k in range(1, n_iter + 1):
            loss, grad, metrics = obj(theta, energy_only)
            m = b1 * m + (1 - b1) * grad
            v = b2 * v + (1 - b2) * grad * grad
            theta = theta - cfg.adam_lr * (m / (1 - b1**k)) / (np.sqrt(v / (1 - b2**k)) + eps)
            record(theta, loss, metrics, phase)
            if phase == "full" and state["since"] >= cfg.patience:
                break
        return theta

    theta = run(theta0, cfg.warmup_epochs, True)
    theta = run(theta, cfg.max_epochs, False)
    if cfg.max_epochs > 0 and np.isfinite(state["best"][0]):
        theta = state["best"][1]
    return theta, hist
