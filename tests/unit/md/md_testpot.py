"""Small, obviously-right force functions for the MD tests (not product code)."""

import numpy as np
from ase.build import bulk


def morse_force_fn(d=0.3429, alpha=1.3588, r0=2.866, rc=5.0):
    """Girifalco-Weizer Cu Morse, shifted-force at rc; all pairs with the minimum image.

    Valid while rc < half the smallest cell width (checked). Returns force_fn(x, cell).
    """

    def phi(r):
        e = np.exp(-alpha * (r - r0))
        return d * (e * e - 2 * e), d * (-2 * alpha * e * e + 2 * alpha * e)

    phi_c, dphi_c = phi(rc)

    def force_fn(x, cell):
        volume = abs(np.linalg.det(cell))
        widths = [volume / np.linalg.norm(np.cross(cell[(a + 1) % 3], cell[(a + 2) % 3]))
                  for a in range(3)]
        assert rc < 0.5 * min(widths), "cell too small for the minimum image"
        inv = np.linalg.inv(cell)
        rij = x[None, :, :] - x[:, None, :]  # (N, N, 3) r_j - r_i
        s = rij @ inv
        rij = (s - np.round(s)) @ cell
        r = np.linalg.norm(rij, axis=2)
        iu = np.triu_indices(len(x), 1)
        rv, r = rij[iu], r[iu]
        mask = r < rc
        rv, r = rv[mask], r[mask]
        e, de = phi(r)
        energy = np.sum(e - phi_c - (r - rc) * dphi_c)
        g = ((de - dphi_c) / r)[:, None] * rv  # dE/d r_ij
        forces = np.zeros_like(x)
        np.add.at(forces, iu[0][mask], g)
        np.add.at(forces, iu[1][mask], -g)
        virial = -np.einsum("pa,pb->ab", rv, g)
        return float(energy), forces, virial

    return force_fn


def cu_crystal(repeat=3, a=3.61, rattle=0.0, seed=0):
    atoms = bulk("Cu", "fcc", a=a, cubic=True).repeat(repeat)
    if rattle:
        atoms.rattle(rattle, seed=seed)
    return atoms


def ideal_gas_force_fn(x, cell):
    return 0.0, np.zeros_like(x), np.zeros((3, 3))


def short_morse_force_fn():
    """A stiff, short-ranged Morse (bound fcc crystal, a ~ 3.63 A at P = 0, rc = 3.3 A
    between the first and second shells) so that 32-atom cells are big enough."""
    return morse_force_fn(alpha=4.0, r0=2.55, rc=3.3)
