"""Chebyshev symmetry functions (Artrith, Urban & Ceder, PRB 96, 014112, 2017).

The descriptor of a central atom i is built from its neighbours j (pairs) and
unordered neighbour pairs {j, k} (triplets), all within a cutoff:

    radial   G_rad[c, n] = sum_j       w_c(e_j)       T_n(2 r_ij / R_r - 1)  fc(r_ij; R_r)
    angular  G_ang[c, n] = sum_{j<k}   w_c(e_j, e_k)  T_n(x(theta_ijk))      fc(r_ij; R_a) fc(r_ik; R_a)

with T_n the Chebyshev polynomials of the first kind, x(theta) = 2 theta/pi - 1
(the source product's choice, default) or cos(theta), and "channels" c that
carry the chemistry:

    weighting="z"         one channel,  w(e) = Z_e,  w(e, e') = sqrt(Z_e Z_e')   (source default)
    weighting="typespin"  aenet: an unweighted channel plus one weighted by the
                          "type spin" s_e (w(e, e') = s_e s_e'); one channel for one element
    weighting="blocks"    one radial channel per neighbour element and one
                          angular channel per unordered element pair

The feature vector is [radial channels (C_r x N_r), angular channels (C_a x N_a)],
which for "z" and "blocks" is exactly the column layout of the source's
ffield.sannp files (docs/sannp_format.md).

Everything below the config works in *pair space*: a neighbour list is a set of
directed pairs (i -> j) with displacement vectors r_ij = R_j - R_i (+ image
shift), sorted by i. Derivatives are taken with respect to those vectors, so
forces (F_i += g_ij, F_j -= g_ij) and the virial (-sum r_ij (x) g_ij) follow
without ever forming a dense dG/dR.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from .elements import atomic_number

CUTOFF_FUNCTIONS = ("tanh", "cos")
ANGLE_VARIABLES = ("theta", "cos")
WEIGHTINGS = ("z", "typespin", "blocks")

# The source product clamps sin(theta) from below in d(theta)/d(cos theta), so an
# exactly collinear triplet contributes no force instead of inf/NaN.
SIN_THETA_MIN = 1e-3


@dataclass(frozen=True)
class ChebyshevDescriptor:
    """Configuration of the Chebyshev descriptor. Lengths in Angstrom.

    Defaults are those of the source product: 50 radial + 30 angular functions,
    6.0 A cutoffs, tanh^3 cutoff function, angle variable 2 theta/pi - 1, and
    weighting by atomic number.
    """

    species: tuple[str, ...]
    n_radial: int = 50
    n_angular: int = 30
    r_radial: float = 6.0
    r_angular: float = 6.0
    cutoff_fn: str = "tanh"
    angle: str = "theta"
    weighting: str = "z"

    def __post_init__(self):
        species = tuple(str(s) for s in self.species)
        object.__setattr__(self, "species", species)
        if len(species) == 0:
            raise ValueError("species: at least one element is needed, e.g. species=('Si',)")
        if len(set(species)) != len(species):
            raise ValueError(f"species: duplicate elements in {species}")
        for s in species:
            atomic_number(s)  # raises ValueError naming an unknown element
        if int(self.n_radial) < 1:
            raise ValueError(f"n_radial must be >= 1 (got {self.n_radial})")
        if int(self.n_angular) < 0:
            raise ValueError(f"n_angular must be >= 0 (got {self.n_angular})")
        object.__setattr__(self, "n_radial", int(self.n_radial))
        object.__setattr__(self, "n_angular", int(self.n_angular))
        for name in ("r_radial", "r_angular"):
            value = float(getattr(self, name))
            if not np.isfinite(value) or value <= 0.5:
                raise ValueError(f"{name} must be a cutoff in Angstrom > 0.5 (got {value})")
            object.__setattr__(self, name, value)
        if self.cutoff_fn not in CUTOFF_FUNCTIONS:
            raise ValueError(f"cutoff_fn must be one of {CUTOFF_FUNCTIONS} (got {self.cutoff_fn!r})")
        if self.angle not in ANGLE_VARIABLES:
            raise ValueError(f"angle must be one of {ANGLE_VARIABLES} (got {self.angle!r})")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS} (got {self.weighting!r})")

    # -- derived sizes -------------------------------------------------------------
    @property
    def cutoff(self) -> float:
        """The neighbour-list cutoff R_max = max(R_r, R_a), Angstrom."""
        return max(self.r_radial, self.r_angular) if self.n_angular else self.r_radial

    @property
    def n_species(self) -> int:
        return len(self.species)

    @cached_property
    def channel_weights(self) -> tuple[np.ndarray, np.ndarray]:
        """(w_rad (C_r, n_species), w_ang (C_a, n_species, n_species)), float64."""
        ne = self.n_species
        if self.weighting == "z":
            z = np.array([atomic_number(s) for s in self.species], dtype=np.float64)
            return z[None, :], np.sqrt(np.outer(z, z))[None, :, :]
        if self.weighting == "typespin":
            ones_r = np.ones((1, ne))
            ones_a = np.ones((1, ne, ne))
            if ne == 1:
                return ones_r, ones_a
            s = typespin_values(ne)
            return (
                np.concatenate([ones_r, s[None, :]]),
                np.concatenate([ones_a, np.outer(s, s)[None]]),
            )
        # blocks: one-hot channels; angular index of the pair e1 <= e2 is e1 + e2(e2+1)/2
        w_rad = np.eye(ne)
        w_ang = np.zeros((ne * (ne + 1) // 2, ne, ne))
        for e2 in range(ne):
            for e1 in range(e2 + 1):
                c = e1 + e2 * (e2 + 1) // 2
                w_ang[c, e1, e2] = w_ang[c, e2, e1] = 1.0
        return w_rad, w_ang

    @property
    def n_radial_channels(self) -> int:
        return self.channel_weights[0].shape[0]

    @property
    def n_angular_channels(self) -> int:
        return self.channel_weights[1].shape[0] if self.n_angular else 0

    @property
    def n_features(self) -> int:
        return self.n_radial_channels * self.n_radial + self.n_angular_channels * self.n_angular

    def to_dict(self) -> dict:
        return {
            "species": list(self.species),
            "n_radial": self.n_radial,
            "n_angular": self.n_angular,
            "r_radial": self.r_radial,
            "r_angular": self.r_angular,
            "cutoff_fn": self.cutoff_fn,
            "angle": self.angle,
            "weighting": self.weighting,
        }

    @classmethod
    def from_dict(cls, d: dict) -> ChebyshevDescriptor:
        known = {
            "species", "n_radial", "n_angular", "r_radial", "r_angular",
            "cutoff_fn", "angle", "weighting",
        }
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"descriptor: unknown keys {sorted(unknown)}; allowed: {sorted(known)}")
        return cls(**{**d, "species": tuple(d["species"])})


def typespin_values(n: int) -> np.ndarray:
    """aenet's type spins: evenly spaced integers, symmetric about 0, zero skipped for even n."""
    if n % 2:
        return np.arange(-(n // 2), n // 2 + 1, dtype=np.float64)
    half = np.arange(1, n // 2 + 1, dtype=np.float64)
    return np.concatenate([-half[::-1], half])


# ---------------------------------------------------------------------------------
# Scalar building blocks (vectorised over arrays). Shapes follow the input.
# ---------------------------------------------------------------------------------
def cutoff_function(r: np.ndarray, rc: float, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """fc(r) and dfc/dr; zero for r >= rc.

    tanh: fc = tanh^3(1 - r/rc)   (fc(0) = tanh(1)^3 ~ 0.4417; C2-smooth at rc)
    cos:  fc = (cos(pi r/rc) + 1)/2
    """
    inside = r < rc
    if kind == "tanh":
        t = np.tanh(1.0 - r / rc)
        fc = t**3
        dfc = -3.0 * t**2 * (1.0 - t**2) / rc
    else:
        fc = 0.5 * (np.cos(np.pi * r / rc) + 1.0)
        dfc = -0.5 * np.pi / rc * np.sin(np.pi * r / rc)
    return np.where(inside, fc, 0.0), np.where(inside, dfc, 0.0)


def chebyshev(x: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """T_k(x) and dT_k/dx for k = 0..n-1 by the three-term recurrence. Shapes (..., n)."""
    x = np.asarray(x, dtype=np.float64)
    t = np.empty(x.shape + (n,))
    dt = np.empty(x.shape + (n,))
    if n == 0:
        return t, dt
    t[..., 0] = 1.0
    dt[..., 0] = 0.0
    if n > 1:
        t[..., 1] = x
        dt[..., 1] = 1.0
    for k in range(2, n):
        t[..., k] = 2.0 * x * t[..., k - 1] - t[..., k - 2]
        dt[..., k] = 2.0 * t[..., k - 1] + 2.0 * x * dt[..., k - 1] - dt[..., k - 2]
    return t, dt


def angle_variable(cos: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """x(theta) and dx/d(cos theta) for the angular Chebyshev argument."""
    c = np.clip(cos, -1.0, 1.0)
    if kind == "cos":
        return c, np.ones_like(c)
    theta = np.arccos(c)
    sin = np.maximum(np.sqrt(np.maximum(1.0 - c * c, 0.0)), SIN_THETA_MIN)
    return 2.0 * theta / np.pi - 1.0, -2.0 / (np.pi * sin)
