"""Descriptor kernels: fast == reference, JVP/VJP against finite differences, neighbour lists."""

from __future__ import annotations

import itertools
import zlib

import numpy as np
import pytest
from kernels_testlib import SPECIES4, jittered_cell

from nnmd_kernels import descriptor_numba as fast
from nnmd_kernels import descriptor_ref as ref
from nnmd_kernels.descriptor import ChebyshevDescriptor, typespin_values
from nnmd_kernels.neighbors import NeighborList, naive_pairs, neighbor_pairs


def rel(a, b):
    return np.abs(a - b).max() / max(np.abs(b).max(), 1e-300)


def _setup(seed=0, n_side=2, cutoff=4.0):
    pos, cell = jittered_cell(n_side=n_side, spacing=2.3, seed=seed)
    rng = np.random.default_rng(seed)
    types = rng.integers(0, 4, len(pos))
    pairs = neighbor_pairs(pos, cell, True, cutoff)
    return pos, cell, types, pairs


MODES = list(itertools.product(("z", "typespin", "blocks"), ("tanh", "cos"), ("theta", "cos")))


@pytest.mark.parametrize("weighting,cutoff_fn,angle", MODES)
def test_fast_matches_reference(weighting, cutoff_fn, angle):
    desc = ChebyshevDescriptor(SPECIES4, n_radial=9, n_angular=7, r_radial=4.0, r_angular=3.5,
                               cutoff_fn=cutoff_fn, angle=angle, weighting=weighting)
    pos, cell, types, pairs = _setup(seed=zlib.crc32(f"{weighting}-{cutoff_fn}-{angle}".encode()) % 1000)
    n = len(pos)
    args = (desc, pairs.vectors, pairs.i, types[pairs.j], n)
    G_ref = ref.descriptors(*args)
    assert np.abs(G_ref).max() > 0
    assert rel(fast.descriptors(*args), G_ref) < 1e-10
    rng = np.random.default_rng(1)
    dG = rng.normal(size=G_ref.shape)
    v = rng.normal(size=pairs.vectors.shape)
    assert rel(fast.descriptors_vjp(*args, dG), ref.descriptors_vjp(*args, dG)) < 1e-10
    assert rel(fast.descriptors_jvp(*args, v), ref.descriptors_jvp(*args, v)) < 1e-10


@pytest.mark.parametrize("n_radial,n_angular", [(1, 2), (3, 5), (6, 6), (10, 11), (30, 33)])
@pytest.mark.parametrize("weighting", ["z", "blocks"])
def test_fast_matches_reference_for_every_order_count(n_radial, n_angular, weighting):
    """The fast Chebyshev recurrences advance four orders per pass and finish the rest one
    at a time: order counts below, at and past each multiple of four agree with the reference."""
    desc = ChebyshevDescriptor(SPECIES4, n_radial=n_radial, n_angular=n_angular, r_radial=4.0, r_angular=3.5,
                               weighting=weighting)
    pos, cell, types, pairs = _setup(seed=n_radial + n_angular)
    args = (desc, pairs.vectors, pairs.i, types[pairs.j], len(pos))
    G_ref = ref.descriptors(*args)
    assert rel(fast.descriptors(*args), G_ref) < 1e-10
    rng = np.random.default_rng(n_radial)
    dG = rng.normal(size=G_ref.shape)
    v = rng.normal(size=pairs.vectors.shape)
    assert rel(fast.descriptors_vjp(*args, dG), ref.descriptors_vjp(*args, dG)) < 1e-10
    assert rel(fast.descriptors_jvp(*args, v), ref.descriptors_jvp(*args, v)) < 1e-10


@pytest.mark.parametrize("weighting,cutoff_fn,angle", MODES[::3])
def test_jvp_vjp_against_finite_differences(weighting, cutoff_fn, angle):
    desc = ChebyshevDescriptor(SPECIES4, n_radial=6, n_angular=5, r_radial=3.8, r_angular=3.8,
                               cutoff_fn=cutoff_fn, angle=angle, weighting=weighting)
    pos, cell, types, pairs = _setup(seed=3)
    n = len(pos)
    rng = np.random.default_rng(2)
    v = rng.normal(size=pairs.vectors.shape)
    h = 1e-6

    def G(r):
        return ref.descriptors(desc, r, pairs.i, types[pairs.j], n)

    fd = (G(pairs.vectors + h * v) - G(pairs.vectors - h * v)) / (2 * h)
    jvp = fast.descriptors_jvp(desc, pairs.vectors, pairs.i, types[pairs.j], n, v)
    assert rel(jvp, fd) < 1e-6
    # adjoint identity <VJP(u), v> == <u, JVP(v)>
    u = rng.normal(size=fd.shape)
    vjp = fast.descriptors_vjp(desc, pairs.vectors, pairs.i, types[pairs.j], n, u)
    assert np.isclose(np.sum(vjp * v), np.sum(u * jvp), rtol=1e-12)


def test_feature_layout_and_sizes():
    d = ChebyshevDescriptor(SPECIES4)
    assert (d.n_radial, d.n_angular, d.r_radial, d.r_angular) == (50, 30, 6.0, 6.0)
    assert (d.cutoff_fn, d.angle, d.weighting) == ("tanh", "theta", "z")
    assert d.n_features == 80
    assert ChebyshevDescriptor(SPECIES4, weighting="blocks").n_features == 4 * 50 + 10 * 30
    assert ChebyshevDescriptor(SPECIES4, weighting="typespin").n_features == 160
    assert ChebyshevDescriptor(("Si",), weighting="typespin").n_features == 80
    np.testing.assert_array_equal(typespin_values(4), [-2, -1, 1, 2])
    np.testing.assert_array_equal(typespin_values(3), [-1, 0, 1])
    w_rad, w_ang = d.channel_weights
    np.testing.assert_allclose(w_rad[0], [3, 32, 15, 16])
    assert np.isclose(w_ang[0, 0, 1], np.sqrt(3 * 32))
    # blocks: the angular channel of pair (e1 <= e2) is e1 + e2 (e2 + 1) / 2, as in ffield.sannp
    _, wa = ChebyshevDescriptor(SPECIES4, weighting="blocks").channel_weights
    assert wa[1 + 3 * 4 // 2, 1, 3] == 1 and wa[1 + 3 * 4 // 2, 3, 1] == 1 and wa.sum() == 16


@pytest.mark.parametrize("bad,match", [
    (dict(n_radial=0), "n_radial"), (dict(r_angular=-1.0), "r_angular"),
    (dict(cutoff_fn="exp"), "cutoff_fn"), (dict(weighting="mass"), "weighting"),
    (dict(angle="deg"), "angle"),
])
def test_descriptor_config_errors_name_the_field(bad, match):
    with pytest.raises(ValueError, match=match):
        ChebyshevDescriptor(SPECIES4, **bad)
    with pytest.raises(ValueError, match="Xx"):
        ChebyshevDescriptor(("Si", "Xx"))


def test_cutoff_smoothness():
    """A neighbour crossing R_c changes G continuously (tanh^3: value and slope vanish)."""
    for kind in ("tanh", "cos"):
        desc = ChebyshevDescriptor(("Si",), n_radial=6, n_angular=0, r_radial=4.0, cutoff_fn=kind)
        rs = np.array([4.0 - 1e-4, 4.0 - 1e-7, 4.0, 4.0 + 1e-7])
        G = [ref.descriptors(desc, np.array([[r, 0, 0]]), np.array([0]), np.array([0]), 1) for r in rs]
        assert np.abs(G[0]).max() < (1e-8 if kind == "tanh" else 1e-7)
        assert np.abs(G[1]).max() < (1e-20 if kind == "tanh" else 1e-12)
        assert np.abs(G[2]).max() == 0 and np.abs(G[3]).max() == 0


def test_collinear_triplet_is_finite():
    """theta = 0 or pi: the clamp on sin(theta) keeps forces finite (zero from that triplet)."""
    desc = ChebyshevDescriptor(("Si",), n_radial=4, n_angular=6, r_radial=4.0, r_angular=4.0)
    rij = np.array([[2.0, 0, 0], [-2.5, 0, 0], [3.0, 0, 0]])
    pi = np.zeros(3, dtype=np.int64)
    tj = np.zeros(3, dtype=np.int64)
    for mod in (ref, fast):
        G = mod.descriptors(desc, rij, pi, tj, 1)
        g = mod.descriptors_vjp(desc, rij, pi, tj, 1, np.ones_like(G))
        assert np.all(np.isfinite(G)) and np.all(np.isfinite(g))


@pytest.mark.parametrize("pbc", [(True, True, True), (False, False, False), (True, False, True)])
def test_neighbor_list_matches_naive(pbc):
    pos, cell = jittered_cell(n_side=2, spacing=2.0, seed=5)  # cell ~4 A < cutoff: many images
    for cutoff in (3.0, 6.0):
        a = neighbor_pairs(pos, cell, pbc, cutoff)
        b = naive_pairs(pos, cell, pbc, cutoff)
        key = lambda p: sorted(zip(p.i.tolist(), p.j.tolist(), map(tuple, p.shifts.tolist())))  # noqa: E731
        assert key(a) == key(b)
        assert np.all(a.distances < cutoff)
        np.testing.assert_allclose(np.sort(a.distances), np.sort(b.distances), atol=1e-12)
    # self-images of atom 0 are there in periodic directions
    a = neighbor_pairs(pos, cell, pbc, 6.0)
    assert np.any((a.i == 0) & (a.j == 0)) == any(pbc)


def test_verlet_skin_reuse_is_exact():
    pos, cell = jittered_cell(n_side=3, spacing=2.3, seed=7)
    nl = NeighborList(4.0, skin=1.0)
    rng = np.random.default_rng(0)
    for step in range(12):
        pos = pos + rng.normal(0, 0.03, pos.shape)
        cell = cell * (1 + 0.002 * (step % 2))
        got = nl.update(pos, cell, True)
        want = neighbor_pairs(pos, cell, True, 4.0)
        assert sorted(zip(got.i, got.j, map(tuple, got.shifts))) == sorted(
            zip(want.i, want.j, map(tuple, want.shifts)))
    assert nl.n_builds < 12  # it did reuse


def test_fast_acos_within_two_ulp():
    from numba import njit

    from nnmd_kernels.descriptor_numba import acos_fast

    @njit
    def many(x):
        out = np.empty_like(x)
        for k in range(len(x)):
            out[k] = acos_fast(x[k])
        return out

    x = np.concatenate([np.linspace(-1, 1, 200001), [-1.0, 1.0, 0.5, -0.5, np.nextafter(0.5, 1), 1 - 1e-16]])
    want = np.arccos(x)
    assert np.all(np.abs(many(x) - want) <= 2 * np.spacing(np.maximum(want, 1e-300)) + 1e-300)
