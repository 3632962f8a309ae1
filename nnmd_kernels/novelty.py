"""Novelty ("unknown structure") detection: per-feature histograms of the training descriptors.

As in the source (docs/source.md, "Metropolis Monte Carlo for unknown structures"): of the
many structures a Monte Carlo run visits, only those outside the distribution of the
existing training data are worth labelling. For every element e and
feature f the training set gives a range [min, max] and a histogram over that range widened
by a margin. An atom is unknown when any of its features

    lies outside [min, max] of its element's training values, or
    falls in a bin holding fewer than `min_count` training atoms (1 = only empty bins);

a structure is unknown when at least `min_atoms` of its atoms are, or when the ensemble
spread of its energy (PotentialResult.energy_std) exceeds `max_energy_std` eV/atom.

Shapes: E elements, F features, B bins. counts (E, F, B); lo, hi, edge_lo, edge_hi (E, F).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class FeatureHistograms:
    """Training-set descriptor histograms per element (uniform bins per feature).

    n_atoms (E,) training atoms per element (0: the element was never seen, every atom of
    it is unknown).
    """

    species: tuple
    lo: np.ndarray  # (E, F) training minimum
    hi: np.ndarray  # (E, F) training maximum
    edge_lo: np.ndarray  # (E, F) first bin edge
    edge_hi: np.ndarray  # (E, F) last bin edge
    counts: np.ndarray  # (E, F, B) training atoms per bin
    n_atoms: np.ndarray  # (E,)

    @property
    def n_bins(self) -> int:
        return self.counts.shape[2]

    @classmethod
    def build(cls, descriptors, types, species, n_bins: int = 20,
              margin: float = 0.05) -> FeatureHistograms:
        """From training descriptors G (A, F) and species indices (A,) of all training atoms.

        Bin edges span [min - margin w, max + margin w], w = max - min, per element/feature.
        """
        if int(n_bins) < 1:
            raise ValueError(f"n_bins must be >= 1, got {n_bins}")
        if not (np.isfinite(margin) and margin >= 0):
            raise ValueError(f"margin must be >= 0 (a fraction of the training range), got {margin}")
        G = np.asarray(descriptors, dtype=float)
        types = np.asarray(types, dtype=np.int64)
        if G.ndim != 2 or types.shape != (len(G),):
            raise ValueError(f"descriptors must be (A, F) with types (A,), got {G.shape}, "
                             f"{types.shape}")
        ne, nf = len(species), G.shape[1]
        lo = np.zeros((ne, nf))
        hi = np.zeros((ne, nf))
        counts = np.zeros((ne, nf, int(n_bins)), dtype=np.int64)
        n_atoms = np.bincount(types, minlength=ne)[:ne]
        for e in range(ne):
            g = G[types == e]
            if len(g):
                lo[e], hi[e] = g.min(axis=0), g.max(axis=0)
        pad = np.maximum(margin * (hi - lo), 1e-9 * np.maximum(1.0, np.abs(hi)))
        h = cls(tuple(species), lo, hi, lo - pad, hi + pad, counts, n_atoms)
        for e in range(ne):
            g = G[types == e]
            if len(g):
                b = h._bins(e, g)
                for f in range(nf):
                    counts[e, f] = np.bincount(b[:, f], minlength=int(n_bins))
        return h

    def _bins(self, e, g) -> np.ndarray:
        """Bin index (n, F) of values g (n, F) of element e, clipped into [0, B)."""
        width = (self.edge_hi[e] - self.edge_lo[e]) / self.n_bins
        b = np.floor((g - self.edge_lo[e]) / width).astype(np.int64)
        return np.clip(b, 0, self.n_bins - 1)

    def atom_flags(self, descriptors, types, min_count: int = 1):
        """Per atom: (unknown (N,) bool, outside (N,) bool, rare (N,) bool).

        outside: a feature outside the element's training [min, max]; rare: a feature in a
        bin with fewer than min_count training atoms.
        """
        G = np.asarray(descriptors, dtype=float)
        types = np.asarray(types, dtype=np.int64)
        if G.ndim != 2 or G.shape[1] != self.counts.shape[1]:
            raise ValueError(f"descriptors must have shape (N, {self.counts.shape[1]}), "
                             f"got {G.shape}: were the histograms built with this model?")
        n = len(G)
        outside = np.zeros(n, dtype=bool)
        rare = np.zeros(n, dtype=bool)
        for e in range(len(self.species)):
            idx = np.flatnonzero(types == e)
            if not len(idx):
                continue
            if self.n_atoms[e] == 0:
                outside[idx] = True
                continue
            g = G[idx]
            outside[idx] = np.any((g < self.lo[e]) | (g > self.hi[e]), axis=1)
            c = np.take_along_axis(self.counts[e].T, self._bins(e, g), axis=0)  # (n, F)
            rare[idx] = np.any(c < min_count, axis=1)
        return outside | rare, outside, rare

    def to_dict(self) -> dict:
        """Plain JSON types (store it with a model, e.g. in its metadata)."""
        return {"format": "nnmd.novelty.v1", "species": list(self.species),
                "lo": self.lo.tolist(), "hi": self.hi.tolist(),
                "edge_lo": self.edge_lo.tolist(), "edge_hi": self.edge_hi.tolist(),
                "counts": self.counts.tolist(), "n_atoms": self.n_atoms.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> FeatureHistograms:
        if d.get("format") != "nnmd.novelty.v1":
            raise ValueError(f"not a novelty histogram document (format {d.get('format')!r})")
        return cls(tuple(d["species"]), *(np.asarray(d[k], dtype=float)
                                          for k in ("lo", "hi", "edge_lo", "edge_hi")),
                   np.asarray(d["counts"], dtype=np.int64), np.asarray(d["n_atoms"], dtype=np.int64))


@dataclass(frozen=True)
class NoveltyRule:
    """min_count: a bin with fewer training atoms is rare (1 = only empty bins);
    min_atoms: unknown atoms that make a structure unknown;
    max_energy_std: eV/atom ensemble spread above which a structure is unknown (None = off)."""

    min_count: int = 1
    min_atoms: int = 1
    max_energy_std: float | None = None

    def __post_init__(self):
        if self.min_count < 0:
            raise ValueError(f"min_count must be >= 0, got {self.min_count}")
        if self.min_atoms < 1:
            raise ValueError(f"min_atoms must be >= 1, got {self.min_atoms}")
        if self.max_energy_std is not None and not self.max_energy_std > 0:
            raise ValueError(f"max_energy_std must be > 0 eV/atom or None, got {self.max_energy_std}")


@dataclass(frozen=True)
class Verdict:
    unknown: bool
    n_unknown_atoms: int
    energy_std_per_atom: float
    reasons: tuple  # "histogram", "ensemble"


def classify(histograms: FeatureHistograms | None, rule: NoveltyRule, descriptors, types,
             energy_std: float = 0.0) -> Verdict:
    """Is this structure unknown? descriptors (N, F), types (N,), energy_std eV (total)."""
    n = len(types)
    n_unknown = 0
    if histograms is not None:
        n_unknown = int(histograms.atom_flags(descriptors, types, rule.min_count)[0].sum())
    std = float(energy_std) / max(n, 1)
    reasons = []
    if histograms is not None and n_unknown >= rule.min_atoms:
        reasons.append("histogram")
    if rule.max_energy_std is not None and std > rule.max_energy_std:
        reasons.append("ensemble")
    return Verdict(bool(reasons), n_unknown, std, tuple(reasons))
