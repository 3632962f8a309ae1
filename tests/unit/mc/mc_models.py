"""Small analytic LocalEnergy models and structures for the Monte Carlo tests."""

from __future__ import annotations

import numpy as np

from nnmd_kernels.md.units import KB_EV_PER_K


def kelvin(kt_ev: float) -> float:
    """The temperature (K) of kT in eV."""
    return kt_ev / KB_EV_PER_K


class DoubleWell:
    """Independent atoms: E = h ((x/a)^2 - 1)^2 + k (y^2 + z^2) / 2 (eV, A). cutoff 0."""

    cutoff = 0.0

    def __init__(self, h=0.05, a=1.0, k=1.0):
        self.h, self.a, self.k = h, a, k

    def energies(self, numbers_c, positions_c, pair_i, numbers_j, rij):
        x, y, z = positions_c.T
        return self.h * ((x / self.a) ** 2 - 1.0) ** 2 + 0.5 * self.k * (y**2 + z**2)


class RingLattice:
    """Sites on a periodic chain x_k = k a (cell L a along x): E_k = field[z_k] cos(2 pi x_k / (L a))
    + 1/2 sum_{nearest j} J[z_k, z_j], for atomic numbers in `species` (0 = vacancy, no energy)."""

    def __init__(self, n_sites, species, field, coupling, a=2.0):
        self.n_sites, self.a = n_sites, a
        self.cutoff = 1.5 * a
        self.code = {int(z): e for e, z in enumerate(species)}
        self.field = np.asarray(field, dtype=float)
        self.coupling = np.asarray(coupling, dtype=float)

    def structure(self, numbers):
        pos = np.zeros((self.n_sites, 3))
        pos[:, 0] = self.a * np.arange(self.n_sites)
        cell = np.diag([self.n_sites * self.a, 10.0, 10.0])
        return pos, np.asarray(numbers), cell, True

    def energies(self, numbers_c, positions_c, pair_i, numbers_j, rij):
        ec = np.array([self.code[int(z)] for z in numbers_c], dtype=int)
        ej = np.array([self.code[int(z)] for z in numbers_j], dtype=int)
        phase = 2 * np.pi * positions_c[:, 0] / (self.n_sites * self.a)
        e = self.field[ec] * np.cos(phase)
        if len(pair_i):
            e += 0.5 * np.bincount(pair_i, weights=self.coupling[ec[pair_i], ej],
                                   minlength=len(ec))
        return e

    def exact_energy(self, numbers):
        """Total energy of an occupation, written out directly (vacancies: no energy, no bonds)."""
        n = self.n_sites
        e = 0.0
        for k in range(n):
            if numbers[k] == 0:
                continue
            e += self.field[self.code[numbers[k]]] * np.cos(2 * np.pi * k / n)
            nxt = numbers[(k + 1) % n]
            if nxt != 0:
                e += self.coupling[self.code[numbers[k]], self.code[nxt]]
        return e


def blocking_error(x) -> float:
    """Standard error of the mean of a correlated series (Flyvbjerg & Petersen 1989):
    the largest blocked estimate over levels that keep at least 32 blocks."""
    x = np.asarray(x, dtype=float)
    best = x.std(ddof=1) / np.sqrt(len(x))
    while len(x) >= 64:
        x = 0.5 * (x[: len(x) // 2 * 2 : 2] + x[1 : len(x) // 2 * 2 : 2])
        best = max(best, x.std(ddof=1) / np.sqrt(len(x)))
    return best
