"""The "cuda" backend of Potential: neighbours -> descriptor -> networks -> VJP -> forces, on the device.

Same model and same equations as potential.py (see its docstring); every array stays
on the device of `xp` (CuPy on a GPU; numpy in numba's CUDA simulator, where the very
same code runs the same kernels): the device neighbour list (neighbors_cuda), the
descriptor and its VJP (descriptor_cuda), the per-element networks as batched xp
matmuls over the ensemble (cuBLAS on a device), the Delta baseline as one kernel over
each centre's pairs, and forces/virial as xp reductions. Only the results cross to the
host, once per call (`compute`, `compute_pairs`); the MD engine (gpu/md.py) keeps them
on the device.

Precision: float64 throughout, as on the CPU, so the backends agree to 1e-10; a
float32 variant has not been measured against the 1e-5 force budget.
"""

from __future__ import annotations

import math
import weakref

import numpy as np
from numba import config, cuda

from ..neighbors import MIN_DISTANCE, NeighborList, validate_geometry
from ..potential import PairResult, PotentialResult
from . import descriptor_cuda as dk
from . import neighbors_cuda as nc
from .device import array_module as _array_module
from .device import default_xp, require_kernels, to_host

THREADS = 32 if config.ENABLE_CUDASIM else 128

# f(x) = a tanh(b x) + c x  (network.py's tanh family)
_TANH_FAMILY = {"twisted_tanh": (1.0, 1.0, 0.16), "aenet_twist": (1.7159, 2.0 / 3.0, 0.1),
                "tanh": (1.0, 1.0, 0.0)}


def _activation(name: str, xp):
    """(f, f') in xp ops for network.ACTIVATIONS[name]."""
    if name in _TANH_FAMILY:
        a, b, c = _TANH_FAMILY[name]

        def f(x):
            return a * xp.tanh(b * x) + c * x

        def df(x):
            t = xp.tanh(b * x)
            return a * b * (1.0 - t * t) + c

        return f, df
    if name == "sigmoid":
        def f(x):
            return 0.5 * (1.0 + xp.tanh(0.5 * x))

        def df(x):
            s = f(x)
            return s * (1.0 - s)

        return f, df
    if name == "linear":
        return (lambda x: x), (lambda x: xp.ones_like(x))
    if name == "elu":
        def f(x):
            return xp.where(x > 0, x, xp.expm1(xp.minimum(x, 0.0)))

        def df(x):
            return xp.where(x > 0, 1.0, xp.exp(xp.minimum(x, 0.0)))

        return f, df
    if name == "gelu":
        return _gelu_value, _gelu_derivative
    raise ValueError(f"the cuda backend has no activation {name!r}")


_INV_SQRT2 = 0.7071067811865476  # 1 / sqrt(2)
_INV_SQRT_2PI = 0.3989422804014327  # 1 / sqrt(2 pi)


@cuda.jit
def _gelu_kernel(z, out, derivative):
    """Exact GELU (network.py, ffield.sannp code 6), elementwise over flat arrays:
    f = x Phi(x), f' = Phi(x) + x phi(x), Phi(x) = erfc(-x / sqrt 2) / 2 (= (1 + erf(x / sqrt 2)) / 2
    without its cancellation for x << 0), phi(x) = exp(-x^2 / 2) / sqrt(2 pi)."""
    k = cuda.grid(1)
    if k >= z.shape[0]:
        return
    x = z[k]
    cdf = 0.5 * math.erfc(-_INV_SQRT2 * x)
    if derivative:
        out[k] = cdf + x * (_INV_SQRT_2PI * math.exp(-0.5 * x * x))
    else:
        out[k] = x * cdf


def _gelu_launch(z, derivative: bool):
    """f or f' of z (any shape, float64) on z's device; the kernel runs on the flat view."""
    xp = _array_module(z)
    flat = xp.ascontiguousarray(z, dtype=xp.float64).reshape(-1)
    out = xp.empty_like(flat)
    if flat.shape[0]:
        _gelu_kernel[(flat.shape[0] + THREADS - 1) // THREADS, THREADS](flat, out, derivative)
    return out.reshape(z.shape)


def _gelu_value(z):
    return _gelu_launch(z, False)


def _gelu_derivative(z):
    return _gelu_launch(z, True)


@cuda.jit
def _baseline(rij, offsets, type_c, type_j, coef, R, r_pow, r_pow1, energies, grad):
    """Delta baseline (baseline.py): energies[i] += 1/2 sum_j phi(r_ij), grad[p] += 1/2 phi'(r) r/|r|.

    One thread per centre over its own pairs: no write races."""
    i = cuda.grid(1)
    if i >= offsets.shape[0] - 1:
        return
    ti = type_c[i]
    e = 0.0
    for p in range(offsets[i], offsets[i + 1]):
        d = dk._norm(rij, p)
        if d >= R:
            continue
        tj = type_j[p]
        i2 = 1.0 / (d * d)
        i6 = i2 * i2 * i2
        i8 = i6 * i2
        i10 = i8 * i2
        i12 = i10 * i2
        phi = 0.0
        dphi = 0.0
        for k in range(4):
            if k == 0:
                rp, pw = i12, 12.0
            elif k == 1:
                rp, pw = i10, 10.0
            elif k == 2:
                rp, pw = i8, 8.0
            else:
                rp, pw = i6, 6.0
            A = coef[ti, tj, k]
            phi += A * (rp - r_pow[k] + r_pow1[k] * (d - R))
            dphi += A * (-pw * rp / d + r_pow1[k])
        e += 0.5 * phi
        s = 0.5 * dphi / d
        grad[p, 0] += s * rij[p, 0]
        grad[p, 1] += s * rij[p, 1]
        grad[p, 2] += s * rij[p, 2]
    energies[i] += e


class DevicePotential:
    """A Potential's parameters on the device of xp (built once per potential and xp)."""

    def __init__(self, potential, xp):
        self.potential = potential
        self.xp = xp
        self.n_models = potential.n_models
        self.weights = [[xp.asarray(w) for w in net.weights] for net in potential.networks]
        self.weights_t = [[xp.ascontiguousarray(xp.asarray(np.swapaxes(w, 1, 2))) for w in net.weights]
                          for net in potential.networks]
        self.biases = [[xp.asarray(b) for b in net.biases] for net in potential.networks]
        self.mean = xp.asarray(potential.feature_mean)
        self.inv_std = xp.asarray(1.0 / potential.feature_std)
        self.energy_shift = [float(v) for v in potential.energy_shift]
        self.act, self.dact = _activation(potential.activation, xp)
        b = potential.baseline
        if b is not None:
            from ..baseline import POWERS

            self.base_coef = xp.asarray(b.coefficients)
            self.base_R = float(b.cutoff)
            self.base_rp = xp.asarray(b.cutoff ** (-POWERS))
            self.base_rp1 = xp.asarray(POWERS * b.cutoff ** (-(POWERS + 1.0)))

    def groups(self, types_centres):
        """Per species, the centre indices (device arrays), computed once per type vector."""
        xp = self.xp
        return [xp.flatnonzero(types_centres == e) for e in range(len(self.weights))]

    def network(self, e: int, x, grad: bool):
        """y (M, n) and, with grad, d(mean_m y_m)/dx (n, F) for species e; x (n, F) standardised."""
        W, Wt, B = self.weights[e], self.weights_t[e], self.biases[e]
        a = x[None]  # (1, n, F): broadcast over the M members in one batched matmul
        zs = []
        for w, b in zip(W[:-1], B[:-1]):
            z = a @ w + b[:, None, :]  # (M, n, h)
            zs.append(z)
            a = self.act(z)
        y = (a @ W[-1])[..., 0] + B[-1]  # (M, n)
        if not grad:
            return y, None
        delta = (W[-1][:, :, 0] * (1.0 / self.n_models))[:, None, :]  # (M, 1, h_L)
        for l in range(len(zs) - 1, -1, -1):
            delta = (delta * self.dact(zs[l])) @ Wt[l]  # (M, n, n_in)
        return y, delta.sum(axis=0)

    def evaluate(self, types, pair_i, pair_j, rij, offsets, n_centers: int, forces: bool = True,
                 groups=None):
        """The pair-space core on the device: (energies (n,), energies_models (M, n),
        pair_grad (P, 3) or None, G (n, F)); types (N,) of all atoms, pairs sorted by i."""
        xp = self.xp
        pot = self.potential
        desc = pot.descriptor
        tj = types[pair_j]  # (P,)
        G = dk.descriptors(desc, rij, pair_i, tj, n_centers)  # (n, F)
        M = self.n_models
        e_models = xp.zeros((M, n_centers))
        dG = xp.zeros_like(G) if forces else None
        if groups is None:
            groups = self.groups(types[:n_centers])
        for e, idx in enumerate(groups):
            if idx.shape[0] == 0:
                continue
            x = (G[idx] - self.mean[e]) * self.inv_std[e]
            y, g = self.network(e, x, forces)
            e_models[:, idx] = y + self.energy_shift[e]
            if forces:
                dG[idx] = g * self.inv_std[e]
        energies = e_models.mean(axis=0)
        grad = dk.descriptors_vjp(desc, rij, pair_i, tj, n_centers, dG) if forces else None
        if pot.baseline is not None and pair_i.shape[0]:
            g_base = grad if forces else xp.zeros(rij.shape)
            n = max(1, n_centers)
            _baseline[(n + THREADS - 1) // THREADS, THREADS](
                rij, offsets, types[:n_centers], tj, self.base_coef, self.base_R, self.base_rp,
                self.base_rp1, energies, g_base)
        return energies, e_models, grad, G


# id(potential) -> (weakref to it, {xp name: DevicePotential}); kept off the Potential
# itself so that pickling a Potential (Ray, files) never meets device arrays.
_DEVICE_COPIES: dict = {}


def _forget(ref, key) -> None:
    """Drops a collected potential's device copies (only its own entry: ids are reused;
    the dict is None while the interpreter shuts down)."""
    copies = _DEVICE_COPIES
    if copies is not None and copies.get(key, (None,))[0] is ref:
        copies.pop(key, None)


def device_potential(potential, xp=None) -> DevicePotential:
    """The potential's device copy, made once per (immutable) potential and array module."""
    xp = default_xp() if xp is None else xp
    key = id(potential)
    entry = _DEVICE_COPIES.get(key)
    if entry is None or entry[0]() is not potential:
        entry = (weakref.ref(potential, lambda r, k=key: _forget(r, k)), {})
        _DEVICE_COPIES[key] = entry
    copies = entry[1]
    if xp.__name__ not in copies:
        copies[xp.__name__] = DevicePotential(potential, xp)
    return copies[xp.__name__]


def forces_virial(xp, pair_i, pair_j, rij, grad, n: int):
    """F_i = sum_j g_ij - sum_j g_ji (N, 3) eV/A and virial -sum r_ij (x) g_ij (3, 3) eV."""
    F = xp.empty((n, 3))
    for k in range(3):
        F[:, k] = (xp.bincount(pair_i, weights=grad[:, k], minlength=n)
                   - xp.bincount(pair_j, weights=grad[:, k], minlength=n))
    return F, -(rij.T @ grad)


def check_min_distance(xp, pair_i, pair_j, rij, min_distance: float = MIN_DISTANCE):
    """The CPU message for overlapping atoms; one scalar read from the device."""
    if not pair_i.shape[0]:
        return
    d2 = (rij * rij).sum(axis=1)
    if float(d2.min()) < min_distance * min_distance:
        k = int(d2.argmin())
        raise ValueError(
            f"atoms {int(pair_i[k])} and {int(pair_j[k])} are {float(d2[k]) ** 0.5:.4f} A apart "
            f"(< {min_distance} A): overlapping atoms; check positions and cell units (Angstrom)")


def compute_pairs(potential, types, pair_i, pair_j, rij, n_centers: int, *, forces: bool = True):
    """Potential.compute_pairs on the device: host arrays in, PairResult (numpy) out."""
    require_kernels()
    xp = default_xp()
    dp = device_potential(potential, xp)
    pi = xp.asarray(np.asarray(pair_i, dtype=np.int64))
    offsets = xp.searchsorted(pi, xp.arange(n_centers + 1))
    e, em, g, G = dp.evaluate(xp.asarray(np.asarray(types, dtype=np.int64)), pi,
                              xp.asarray(np.asarray(pair_j, dtype=np.int64)),
                              xp.asarray(np.asarray(rij, dtype=np.float64)), offsets, n_centers,
                              forces)
    return PairResult(to_host(e), to_host(em), None if g is None else to_host(g), to_host(G))


def compute(potential, positions, numbers, cell=None, pbc=False, *, neighbors=None,
            forces: bool = True):
    """Potential.compute on the device. neighbors: None (a fresh device list), a
    neighbors_cuda.DeviceNeighborList (reused, Verlet skin) or a CPU NeighborList (its
    pairs are copied to the device)."""
    require_kernels()
    pos, cell, pbc = validate_geometry(positions, cell, pbc)
    types = potential.types_of(numbers)
    if len(types) != len(pos):
        raise ValueError(f"numbers has {len(types)} entries but positions has {len(pos)} atoms")
    xp = default_xp()
    dp = device_potential(potential, xp)
    n = len(pos)
    d_pos = xp.asarray(pos)
    if neighbors is not None and neighbors.cutoff < potential.cutoff:
        raise ValueError(f"neighbor list cutoff {neighbors.cutoff} < potential cutoff {potential.cutoff}")
    if isinstance(neighbors, NeighborList):
        p = neighbors.update(pos, cell, pbc)
        pi, pj, rij = xp.asarray(p.i), xp.asarray(p.j), xp.asarray(p.vectors)
        offsets = xp.searchsorted(pi, xp.arange(n + 1))
    else:
        if neighbors is None:
            p = nc.neighbor_pairs(d_pos, cell, pbc, potential.cutoff)
        else:
            p = neighbors.update(d_pos, cell, pbc)
        pi, pj, rij, offsets = p.i, p.j, p.vectors, p.offsets
    check_min_distance(xp, pi, pj, rij)
    e, em, g, G = dp.evaluate(xp.asarray(types), pi, pj, rij, offsets, n, forces)
    F = vir = stress = None
    if forces:
        F, vir = forces_virial(xp, pi, pj, rij, g, n)
        F, vir = to_host(F), to_host(vir)
        if pbc.all():
            stress = -vir / abs(np.linalg.det(cell))
    em = to_host(em)
    total_models = em.sum(axis=1)
    e = to_host(e)
    return PotentialResult(
        energy=float(e.sum()), energies=e, forces=F, virial=vir, stress=stress,
        energy_std=float(total_models.std()) if potential.n_models > 1 else 0.0,
        energies_models=em, descriptors=to_host(G))
