"""Mini-batch training: the objective of a mini-batch is the full objective restricted to
its structures; the streaming setup (reference fit, feature statistics) equals the
full-batch one; training over mini-batches learns as well as full-batch Adam."""

from __future__ import annotations

import numpy as np
import pytest
from test_trainer_kernels import DESC, emt_structures

from nnmd_kernels.descriptor import ChebyshevDescriptor
from nnmd_kernels.network import ElementNetwork
from nnmd_kernels.potential import Potential
from nnmd_kernels.training import (
    Batch,
    FeatureStatistics,
    Objective,
    ReferenceFit,
    TrainConfig,
    _labels,
    _targets,
    feature_statistics,
    fit_reference,
    force_scale,
    plan_batches,
    train,
    validate_structures,
)


@pytest.fixture(scope="module")
def structs():
    return validate_structures(emt_structures(6, seed=1), True)


def test_minibatch_gradient_is_the_full_gradient_restricted_to_its_structures(structs):
    """Objective on a Batch of structures {1, 3, 4} (all trained) == Objective on all six
    with only those three in the training mask: same loss and gradient (energy, force and
    stress terms); the full gradient is itself checked by finite differences in
    test_trainer_kernels."""
    rng = np.random.default_rng(2)
    desc = ChebyshevDescriptor(("Cu", "Ag"), **DESC)
    cfg = TrainConfig(descriptor=DESC, hidden=(6, 5), force_weight=0.3, stress_weight=0.5, l2=1e-4)
    full = Batch(structs, desc, desc.cutoff, 1.0)
    E, F, fm, sig = _labels(structs)
    e0, bl = fit_reference(full, E, F, fm, True, desc.cutoff)
    mean, std = feature_statistics(full, 2, desc.n_features)
    nets = [ElementNetwork.random(desc.n_features, (6, 5), 1, "twisted_tanh", rng) for _ in range(2)]
    pot = Potential(desc, tuple(nets), mean, std, e0, bl)
    sel = [1, 3, 4]
    mask = np.isin(np.arange(len(structs)), sel)
    obj_full = Objective(full, pot, _targets(full, E, F, fm, sig, e0, bl), cfg, mask)
    theta = obj_full.pack(nets) + rng.normal(0, 0.2, obj_full.pack(nets).size)
    sub = [structs[k] for k in sel]
    for budget in (1.0, 0.0):  # cached Jacobian, recomputed
        mini = Batch(sub, desc, desc.cutoff, budget)
        E_, F_, fm_, sig_ = _labels(sub)
        obj_mini = Objective(mini, pot, _targets(mini, E_, F_, fm_, sig_, e0, bl), cfg, np.ones(3, bool))
        for energy_only in (False, True):
            lf, gf, _ = obj_full(theta, energy_only)
            lm, gm, _ = obj_mini(theta, energy_only)
            assert lm == pytest.approx(lf, rel=1e-12)
            assert np.abs(gm - gf).max() <= 1e-10 * np.abs(gf).max()


def test_streaming_reference_fit_and_statistics_equal_the_full_batch(structs):
    desc = ChebyshevDescriptor(("Cu", "Ag"), **DESC)
    full = Batch(structs, desc, desc.cutoff, 0.0)
    E, F, fm, _ = _labels(structs)
    unweighted = None
    for delta, weighting in ((True, 0.0), (True, 1.0), (True, 3.0), (False, 1.0)):
        # the force-row weights of the baseline fit: their unit <|F|> is over every batch
        e0, bl = fit_reference(full, E, F, fm, delta, desc.cutoff, weighting=weighting)
        ref = ReferenceFit(2, delta, desc.cutoff, weighting=weighting, scale=force_scale(F, fm))
        stats = FeatureStatistics(2, desc.n_features)
        blocks = [[0, 1], [2], [3, 4, 5]]
        for blk in blocks:
            sub = [structs[k] for k in blk]
            b = Batch(sub, desc, desc.cutoff, 0.0)
            E_, F_, fm_, _ = _labels(sub)
            ref.add(b, E_, F_, fm_)
            stats.add(b)
        bl2 = ref.solve()
        for blk in blocks:
            ref.add_e_base(Batch([structs[k] for k in blk], desc, desc.cutoff, 0.0, descriptors=False))
        # unweighted, the two minimisers agree to rounding; weighted, the bounded solver
        # (lsq_linear) stops within its tolerance of the minimum on either set of rows
        tol = 1e-5 if weighting == 0 else 1e-3
        assert np.allclose(ref.e0(), e0, rtol=1e-7 if weighting == 0 else 1e-4, atol=1e-9)
        if delta:
            c1, c2 = bl.coefficients, bl2.coefficients
            assert np.abs(c2 - c1).max() <= tol * np.abs(c1).max()
            if weighting == 0:
                unweighted = c1
            else:  # the weights matter far beyond that tolerance: the fit moved to the wall
                assert np.abs(c1 - unweighted).max() > 0.05 * np.abs(unweighted).max()
        else:
            assert bl2 is None
        mean, std = feature_statistics(full, 2, desc.n_features)
        m2, s2 = stats.result()
        assert np.allclose(m2, mean, rtol=1e-10, atol=1e-12) and np.allclose(s2, std, rtol=1e-8)


def test_minibatch_training_learns_like_full_batch_adam():
    data = emt_structures(30, seed=7)
    tr, te = data[:24], data[24:]
    common = dict(descriptor=dict(n_radial=8, n_angular=4, r_radial=4.5, r_angular=4.0), hidden=(12, 12),
                  force_weight=1.0, optimizer="adam", adam_lr=3e-3, warmup_epochs=10, patience=1000, seed=0)
    f_ref = np.concatenate([s.forces for s in te])

    def test_rmse(pot):
        f = np.concatenate([pot.compute(s.positions, s.numbers, s.cell, True).forces for s in te])
        return np.sqrt(np.mean((f - f_ref) ** 2))

    full = train(tr, TrainConfig(batch_structures=0, max_epochs=180, **common))
    # 22 training structures in blocks of 4 (some blocks hold a validation structure): 6 steps
    # per epoch, 30 epochs = 180 steps as above
    mini = train(tr, TrainConfig(batch_structures=4, max_epochs=30, **common))
    assert mini.metrics["batch_structures"] == 4 and mini.metrics["optimizer"] == "adam"
    assert full.metrics["batch_structures"] == 0
    # the streamed setup gives the full batch's standardisation, e0, baseline and distances
    pf, pm = full.potential, mini.potential
    assert np.allclose(pm.feature_mean, pf.feature_mean, rtol=1e-10, atol=1e-12)
    assert np.allclose(pm.feature_std, pf.feature_std, rtol=1e-8)
    assert np.allclose(pm.energy_shift, pf.energy_shift, rtol=1e-6)
    assert np.allclose(pm.baseline.coefficients, pf.baseline.coefficients, rtol=1e-5,
                       atol=1e-5 * np.abs(pf.baseline.coefficients).max())
    assert pm.metadata["min_pair_distance_A"] == pf.metadata["min_pair_distance_A"]
    r_full, r_mini = test_rmse(full.potential), test_rmse(mini.potential)
    assert r_mini < 0.25 * f_ref.std(), (r_mini, f_ref.std())
    assert r_mini < 1.5 * r_full, (r_mini, r_full)
    assert mini.metrics["all_energy_rmse"] < 3 * max(full.metrics["all_energy_rmse"], 0.01)
    rows = [h for h in mini.history[0] if h["phase"] == "full"]
    assert len(rows) == 30 and all("val_force_rmse" in h and "val_loss" in h for h in rows)
    # no cache (every batch recomputed by the VJP/JVP kernels): the same training to round-off
    short = dict(common, max_epochs=3)
    a = train(tr, TrainConfig(batch_structures=4, cache_gb=2.0, **short))
    b = train(tr, TrainConfig(batch_structures=4, cache_gb=0.0, **short))
    assert a.metrics["batches_cached"] == "6/6" and b.metrics["batches_cached"] == "0/6"
    assert b.metrics["descriptors_cached"] == "0/6" and b.metrics["cache_gb"] == 0
    assert b.metrics["all_force_rmse"] == pytest.approx(a.metrics["all_force_rmse"], rel=1e-6)
    # a budget that holds every block's pairs and descriptors but few Jacobians: the
    # descriptors are kept first (they pay more per byte), and the training is the same
    desc = ChebyshevDescriptor(("Cu", "Ag"), **common["descriptor"])
    one = [Batch([s], desc, desc.cutoff, 10.0) for s in tr]  # the blocks' arrays are these, joined
    lite = sum(x.nbytes - x.J.nbytes for x in one)
    cap = (1.02 * lite + 0.3 * min(x.J.nbytes for x in one)) / 1e9
    c = train(tr, TrainConfig(batch_structures=4, cache_gb=cap, **short))
    assert c.metrics["descriptors_cached"] == "6/6" and c.metrics["batches_cached"] == "0/6"
    assert 0 < c.metrics["cache_gb"] <= cap
    assert c.metrics["all_force_rmse"] == pytest.approx(a.metrics["all_force_rmse"], rel=1e-6)
    # a fixed budget of steps (campaign re-training over new labels + a replay sample)
    d = train(tr, TrainConfig(batch_structures=4, max_steps=4, **dict(common, max_epochs=10)))
    assert [h["step"] for h in d.history[0] if h["phase"] == "full"] == [4]


def test_auto_batches_and_device_check(structs, monkeypatch):
    import nnmd_kernels.training as training

    desc = ChebyshevDescriptor(("Cu", "Ag"), **DESC)
    assert plan_batches(structs, desc, desc.cutoff, TrainConfig()) == 0  # small: one full batch
    # over the Jacobian budget: batches of about AUTO_BATCH_ATOMS atoms (4-atom cells here)
    monkeypatch.setattr(training, "AUTO_BATCH_ATOMS", 8)
    assert plan_batches(structs, desc, desc.cutoff, TrainConfig(jacobian_budget_gb=1e-6)) == 2
    # the GPU path stays full-batch under "auto"; explicit mini-batches on it are refused
    assert plan_batches(structs, desc, desc.cutoff, TrainConfig(jacobian_budget_gb=1e-6, device="cuda")) == 0
    assert plan_batches(structs, desc, desc.cutoff, TrainConfig(batch_structures=2)) == 2
    assert plan_batches(structs, desc, desc.cutoff, TrainConfig(batch_structures=100)) == 0
    with pytest.raises(ValueError, match="CPU only"):
        train(structs, TrainConfig(descriptor=DESC, batch_structures=2, device="cuda", max_epochs=1))
    with pytest.raises(ValueError, match="batch_structures"):
        TrainConfig(batch_structures="big")
    with pytest.raises(ValueError, match="batch_structures"):
        TrainConfig(batch_structures=-1)


def test_a_batch_and_its_jacobian_are_freed_by_reference_counting():
    """No reference cycle holds a Batch: when the last reference goes, its Jacobian goes with
    it, without waiting for the cycle collector (a `self.x = self` cycle kept every mini-batch
    cache alive after its training: a campaign's RSS grew ~2 GB per training, docs/llzo.md).
    In a fresh interpreter with the collector off, after a first Batch (the first import of
    the neighbour-list library keeps a traceback, and with it its callers' frames)."""
    import subprocess
    import sys
    from pathlib import Path

    here = str(Path(__file__).parent)
    code = f"""
import gc, sys, weakref
sys.path.insert(0, {here!r})
from test_trainer_kernels import DESC, emt_structures
from nnmd_kernels.descriptor import ChebyshevDescriptor
from nnmd_kernels.training import Batch, validate_structures
structs = validate_structures(emt_structures(6, seed=1), True)
desc = ChebyshevDescriptor(("Cu", "Ag"), **DESC)
Batch(structs, desc, desc.cutoff, 1.0)  # first calls: imports that keep their callers' frames
gc.disable()
b = Batch(structs, desc, desc.cutoff, 1.0)
assert b.J is not None and b.x is b
ref = weakref.ref(b)
del b
print("freed" if ref() is None else "alive")
"""
    root = Path(__file__).resolve().parents[3]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "freed"
