"""Novelty histograms: ranges, empty/rare bins, the structure rule, JSON round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nnmd_kernels import Potential
from nnmd_kernels.novelty import FeatureHistograms, NoveltyRule, classify


def test_outside_range_and_empty_bins():
    rng = np.random.default_rng(0)
    # element 0: feature 0 in two clusters (a gap), feature 1 uniform; element 1 unseen
    g = np.column_stack([np.concatenate([rng.uniform(0, 1, 500), rng.uniform(3, 4, 500)]),
                         rng.uniform(-1, 1, 1000)])
    h = FeatureHistograms.build(g, np.zeros(1000, int), ("Cu", "Ag"), n_bins=8, margin=0.1)
    assert np.all(h.lo[0] <= g.min(0)) and h.counts[0].sum() == 2 * 1000
    probe = np.array([[0.5, 0.0],    # inside, populated bin
                      [2.0, 0.0],    # in the gap: empty bin
                      [4.2, 0.0],    # above the training max (inside the margin bins)
                      [0.5, -1.5],   # below the training min of feature 1
                      [0.5, 0.0]])   # an atom of the unseen element
    unknown, outside, rare = h.atom_flags(probe, [0, 0, 0, 0, 1])
    assert unknown.tolist() == [False, True, True, True, True]
    assert outside.tolist() == [False, False, True, True, True]
    assert rare.tolist()[:2] == [False, True]
    # the training atoms themselves are known
    assert not h.atom_flags(g, np.zeros(1000, int))[0].any()
    # a high min_count makes the thinly populated bins rare too
    assert h.atom_flags(g, np.zeros(1000, int), min_count=10**6)[0].all()


def test_structure_rule_and_json_round_trip():
    rng = np.random.default_rng(1)
    g = rng.normal(size=(300, 3))
    h = FeatureHistograms.build(g, rng.integers(0, 2, 300), ("Cu", "Ag"))
    h2 = FeatureHistograms.from_dict(json.loads(json.dumps(h.to_dict())))
    probe = np.array([[0.0, 0.0, 0.0], [10.0, 0, 0], [0, 10.0, 0]])
    types = [0, 1, 1]
    for hh in (h, h2):
        assert classify(hh, NoveltyRule(min_atoms=2), probe, types).unknown
        v = classify(hh, NoveltyRule(min_atoms=3), probe, types)
        assert not v.unknown and v.n_unknown_atoms == 2
    v = classify(h, NoveltyRule(min_atoms=3, max_energy_std=0.01), probe, types, energy_std=0.06)
    assert v.unknown and v.reasons == ("ensemble",)
    assert v.energy_std_per_atom == pytest.approx(0.02)
    assert not classify(None, NoveltyRule(max_energy_std=0.05), probe, types, 0.06).unknown
    with pytest.raises(ValueError, match="min_atoms"):
        NoveltyRule(min_atoms=0)
    with pytest.raises(ValueError, match="shape"):
        h.atom_flags(np.zeros((2, 5)), [0, 0])


def test_descriptors_of_a_potential_compressed_crystal_is_unknown():
    """The real use: histograms of an NNP's descriptors on a crystal; the same crystal with
    thermal noise is known, a compressed one is not."""
    pot = Potential.random(["Cu"], seed=0, hidden=(4,), n_radial=6, n_angular=4,
                           r_radial=4.5, r_angular=4.0)
    rng = np.random.default_rng(2)
    a, k = 3.6, 3
    base = np.array([[0, 0, 0], [0, .5, .5], [.5, 0, .5], [.5, .5, 0]])
    grid = (base[None] + np.stack(np.meshgrid(*(np.arange(k),) * 3, indexing="ij"),
                                  -1).reshape(-1, 1, 3)).reshape(-1, 3) * a
    cell = np.eye(3) * a * k
    train = [pot.compute(grid + rng.normal(0, 0.08, grid.shape), [29] * len(grid), cell, True,
                         forces=False).descriptors for _ in range(6)]
    G = np.concatenate(train)
    h = FeatureHistograms.build(G, np.zeros(len(G), int), pot.species, n_bins=10)
    rule = NoveltyRule(min_atoms=5)  # a new sample may set a new extreme in a tail atom
    warm = pot.compute(grid + rng.normal(0, 0.04, grid.shape), [29] * len(grid), cell, True,
                       forces=False)
    squeezed = pot.compute(grid * 0.9, [29] * len(grid), cell * 0.9, True, forces=False)
    types = np.zeros(len(grid), int)
    assert not classify(h, rule, warm.descriptors, types).unknown
    v = classify(h, rule, squeezed.descriptors, types)
    assert v.unknown and v.n_unknown_atoms == len(grid)
