"""Training numerics: analytic loss gradient vs finite differences, learning on EMT data, bad data."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT

from nnmd_kernels import descriptor_numba, descriptor_ref
from nnmd_kernels.descriptor import ChebyshevDescriptor
from nnmd_kernels.network import ElementNetwork, forward_tangent, parameter_gradient
from nnmd_kernels.potential import Potential
from nnmd_kernels.training import (
    Batch,
    Objective,
    Structure,
    TrainConfig,
    baseline_terms,
    fit_reference,
    train,
    validate_structures,
)

DESC = dict(n_radial=6, n_angular=4, r_radial=4.5, r_angular=4.5)


def emt_structures(n, seed=0, repeat=(1, 1, 1), alloy=True):
    """Rattled, strained fcc Cu (and Cu-Ag) cells labelled by ASE's EMT."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        a = bulk("Cu", "fcc", a=3.61 * (1 + rng.uniform(-0.03, 0.03)), cubic=True).repeat(repeat)
        if alloy:
            a.numbers[rng.choice(len(a), size=max(1, len(a) // 4), replace=False)] = 47
        a.rattle(0.12, seed=int(rng.integers(1 << 30)))
        a.set_cell(a.cell.array @ (np.eye(3) + rng.uniform(-0.03, 0.03, (3, 3))), scale_atoms=True)
        a.calc = EMT()
        out.append(Structure(a.positions.copy(), a.numbers.copy(), a.cell.array.copy(), a.pbc.copy(),
                             a.get_potential_energy(), a.get_forces(), a.get_stress(voigt=False), name=f"emt{k}"))
    return out


def test_network_second_derivatives_by_finite_differences():
    rng = np.random.default_rng(0)
    for act in ("twisted_tanh", "aenet_twist", "tanh", "sigmoid"):
        net = ElementNetwork.random(5, (4, 3), 2, act, rng)
        net = ElementNetwork(net.weights, tuple(b + rng.normal(size=b.shape) for b in net.biases), act)
        x, xd = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
        dy, dyd = rng.normal(size=(2, 6)), rng.normal(size=(2, 6))
        _, _, cache = forward_tangent(net, x, xd)
        gw, _ = parameter_gradient(net, cache, dy, dyd)

        def obj(ws, net=net, act=act, x=x, xd=xd, dy=dy, dyd=dyd):
            y, yd, _ = forward_tangent(ElementNetwork(tuple(ws), net.biases, act), x, xd)
            return float((dy * y).sum() + (dyd * yd).sum())

        for l in range(3):
            d = rng.normal(size=net.weights[l].shape)
            h = 1e-6
            plus = [w + (h * d if k == l else 0) for k, w in enumerate(net.weights)]
            minus = [w - (h * d if k == l else 0) for k, w in enumerate(net.weights)]
            fd = (obj(plus) - obj(minus)) / (2 * h)
            assert abs(fd - np.sum(gw[l] * d)) < 1e-6 * max(abs(fd), 1.0)


def test_pair_jacobian_fast_matches_reference_and_jvp():
    structs = validate_structures(emt_structures(2, seed=3), True)
    for weighting in ("z", "blocks", "typespin"):
        desc = ChebyshevDescriptor(("Cu", "Ag"), weighting=weighting, **DESC)
        b = Batch(structs, desc, desc.cutoff, budget_gb=1.0)
        args = (desc, b.rij, b.pair_i, b.type_j, b.N)
        J = descriptor_ref.pair_jacobian(*args)
        # rattled fcc has near-collinear triplets where d theta/d cos ~ 1/sin(theta) amplifies
        # last-bit differences of cos(theta): 1e-9 relative, not 1e-12
        assert np.abs(descriptor_numba.pair_jacobian(*args) - J).max() < 1e-9 * np.abs(J).max()
        v = np.random.default_rng(0).normal(size=b.rij.shape)
        want = descriptor_ref.descriptors_jvp(*args, v)
        assert np.abs(b.jvp(v) - want).max() < 1e-9 * np.abs(want).max()


@pytest.mark.parametrize("budget", [1.0, 0.0])  # cached Jacobian, and recomputed each call
def test_loss_gradient_matches_finite_differences(budget):
    rng = np.random.default_rng(1)
    structs = validate_structures(emt_structures(4, seed=1), True)
    cfg = TrainConfig(descriptor=DESC, hidden=(6, 5), force_weight=0.3, stress_weight=0.5, l2=1e-4)
    desc = ChebyshevDescriptor(("Cu", "Ag"), **DESC)
    b = Batch(structs, desc, desc.cutoff, budget)
    assert (b.J is None) == (budget == 0.0)
    E = np.array([s.energy for s in structs])
    F = np.concatenate([s.forces for s in structs])
    fm = np.ones(b.N, bool)
    e0, bl = fit_reference(b, E, F, fm, True, desc.cutoff)
    eb, fb, vb = baseline_terms(b, bl)
    targets = {"E": E - eb - np.bincount(b.struct_of_atom, e0[b.types], b.S), "F": F - fb, "fmask": fm,
               "sigma": np.array([s.stress for s in structs]) + vb / b.volume[:, None, None],
               "smask": np.ones(b.S, bool)}
    nets = [ElementNetwork.random(desc.n_features, (6, 5), 1, "twisted_tanh", rng) for _ in range(2)]
    pot = Potential(desc, tuple(nets), b.G.mean(0)[None].repeat(2, 0), b.G.std(0)[None].repeat(2, 0), e0, bl)
    mask = np.array([True, True, False, True])
    obj = Objective(b, pot, targets, cfg, mask)
    theta = obj.pack(nets) + rng.normal(0, 0.2, obj.pack(nets).size)
    loss, grad, _ = obj(theta)
    h = 1e-6
    for _ in range(3):
        d = rng.normal(size=theta.shape)
        fd = (obj(theta + h * d)[0] - obj(theta - h * d)[0]) / (2 * h)
        assert abs(fd - grad @ d) < 1e-6 * abs(fd)
    # and a few single coordinates
    for k in rng.choice(theta.size, 5, replace=False):
        e = np.zeros_like(theta)
        e[k] = 1.0
        fd = (obj(theta + h * e)[0] - obj(theta - h * e)[0]) / (2 * h)
        assert abs(fd - grad[k]) < 1e-6 * max(abs(fd), 1e-3 * np.abs(grad).max())


def test_training_on_emt_learns_forces():
    """Held-out force error below 10% of the force standard deviation (issue acceptance)."""
    data = emt_structures(40, seed=7)
    train_set, test_set = data[:32], data[32:]
    cfg = TrainConfig(descriptor=dict(n_radial=10, n_angular=6, r_radial=5.0, r_angular=4.0), hidden=(16, 16),
                      max_epochs=250, warmup_epochs=10, force_weight=1.0, validation_fraction=0.1, seed=0)
    res = train(train_set, cfg)
    pot = res.potential
    f_ref = np.concatenate([s.forces for s in test_set])
    f_pred = np.concatenate([pot.compute(s.positions, s.numbers, s.cell, True).forces for s in test_set])
    rmse = np.sqrt(np.mean((f_pred - f_ref) ** 2))
    assert rmse < 0.1 * f_ref.std(), (rmse, f_ref.std())
    e_ref = np.array([s.energy / len(s.numbers) for s in test_set])
    e_pred = np.array([pot.compute(s.positions, s.numbers, s.cell, True).energy / len(s.numbers) for s in test_set])
    assert np.sqrt(np.mean((e_pred - e_ref) ** 2)) < 0.2 * max(e_ref.std(), 1e-3) + 0.01
    # warm start: continues from the trained model and does not get worse on its data
    res2 = train(train_set, TrainConfig(max_epochs=20, warmup_epochs=0, force_weight=1.0), init=pot)
    assert res2.potential.descriptor == pot.descriptor
    assert res2.metrics["all_force_rmse"] <= res.metrics["all_force_rmse"] * 1.05


def test_ensemble_training_gives_spread():
    data = emt_structures(12, seed=2)
    res = train(data, TrainConfig(descriptor=DESC, hidden=(8, 8), n_models=3, max_epochs=30, warmup_epochs=5))
    assert res.potential.n_models == 3 and len(res.history) == 3
    s = data[0]
    r = res.potential.compute(s.positions, s.numbers, s.cell, True)
    assert r.energy_std > 0


def test_bad_data_names_structure_and_field():
    good = emt_structures(3, seed=4)
    s = good[1]
    from dataclasses import replace

    with pytest.raises(ValueError, match=r"structure 1 \(emt1\): field 'forces' is missing"):
        train([good[0], replace(s, forces=None), good[2]], TrainConfig(max_epochs=1))
    with pytest.raises(ValueError, match=r"structure 1 \(emt1\): field 'forces' has shape"):
        train([good[0], replace(s, forces=s.forces[:-1]), good[2]], TrainConfig(max_epochs=1))
    with pytest.raises(ValueError, match=r"structure 1 \(emt1\): field 'energy' is missing or not finite"):
        train([good[0], replace(s, energy=float("nan")), good[2]], TrainConfig(max_epochs=1))
    bad_f = s.forces.copy()
    bad_f[0, 0] = np.inf
    with pytest.raises(ValueError, match=r"structure 1 \(emt1\): field 'forces' contains NaN"):
        train([good[0], replace(s, forces=bad_f), good[2]], TrainConfig(max_epochs=1))
    init = train(good, TrainConfig(descriptor=DESC, hidden=(4,), max_epochs=1, warmup_epochs=0)).potential
    nums = s.numbers.copy()
    nums[0] = 79
    with pytest.raises(ValueError, match=r"structure 0 \(emt1\): elements \['Au'\] are not in the model"):
        train([replace(s, numbers=nums)], TrainConfig(max_epochs=1), init=init)
    with pytest.raises(ValueError, match="unknown keys"):
        TrainConfig.from_dict({"epochs": 3})


def test_warm_start_networks_keep_the_atomic_energies_exactly():
    """New standardisation and e0, carried into the first layer and the output bias: the
    same energies and forces to round-off."""
    from nnmd_kernels.training import warm_start_networks

    init = Potential.random(["Cu", "Ag"], seed=4, hidden=(5, 3), n_models=2, **DESC)
    rng = np.random.default_rng(5)
    mean = init.feature_mean + rng.normal(0, 0.5, init.feature_mean.shape)
    std = init.feature_std * rng.uniform(0.5, 2.0, init.feature_std.shape)
    e0 = rng.normal(0, 3.0, 2)
    nets = warm_start_networks(list(init.networks), init, mean, std, e0)
    new = Potential(init.descriptor, tuple(nets), mean, std, e0, init.baseline)
    s = emt_structures(1, seed=6, repeat=(2, 1, 1))[0]
    a = init.compute(s.positions, s.numbers, s.cell, s.pbc)
    b = new.compute(s.positions, s.numbers, s.cell, s.pbc)
    assert abs(a.energy - b.energy) < 1e-9 * abs(a.energy)
    assert np.abs(a.forces - b.forces).max() < 1e-9


def test_warm_start_refits_e0_baseline_and_standardisation():
    """The same cells with energies offset by 1 eV per atom: the warm start's e0 follows
    (kept, it would leave the offset to the networks); compressed cells: the feature
    statistics and the baseline follow."""
    structs = emt_structures(8, seed=2)
    cfg = dict(descriptor=DESC, hidden=(8,), max_epochs=20, warmup_epochs=0, seed=0)
    first = train(structs, TrainConfig(**cfg)).potential
    offset = [Structure(s.positions, s.numbers, s.cell, s.pbc, s.energy + len(s.numbers),
                        s.forces, s.stress, s.name) for s in structs]
    again = train(offset, TrainConfig(**cfg), init=first).potential
    kept = train(offset, TrainConfig(**cfg, refit_on_warm_start=False), init=first).potential
    assert np.allclose(kept.energy_shift, first.energy_shift)
    # every cell is Cu3Ag: the data fix e0 only as 0.75 e0(Cu) + 0.25 e0(Ag)
    assert np.dot([0.75, 0.25], again.energy_shift - first.energy_shift) == pytest.approx(1.0, abs=0.02)
    assert np.allclose(again.feature_mean, first.feature_mean)

    def network_part(pot):  # mean atomic energy less e0: the networks' (and baseline's) share
        s = offset[0]
        types = np.where(s.numbers == 29, 0, 1)
        return np.mean(pot.compute(s.positions, s.numbers, s.cell, s.pbc).energies
                       - pot.energy_shift[types])
    # re-fitted, the offset went to e0 and the networks stay a small correction; kept, the
    # networks had to learn the whole offset
    assert abs(network_part(again) - network_part(first)) < 0.05
    assert network_part(kept) - network_part(first) == pytest.approx(1.0, abs=0.05)

    squeezed = [Structure(s.positions * 0.96, s.numbers, s.cell * 0.96, s.pbc, s.energy, s.forces,
                          s.stress, s.name) for s in emt_structures(8, seed=3)]
    moved = train(squeezed, TrainConfig(**{**cfg, "max_epochs": 0}), init=first).potential
    assert not np.allclose(moved.feature_mean, first.feature_mean)
    assert not np.allclose(moved.baseline.coefficients, first.baseline.coefficients)


def test_multi_element_descriptor_default_is_blocks():
    from nnmd_kernels.training import DEFAULT_DESCRIPTOR, descriptor_options

    assert descriptor_options({}, 1) == DEFAULT_DESCRIPTOR  # the source's "z" (descriptor default)
    assert "weighting" not in descriptor_options({}, 2)
    assert descriptor_options({}, 3)["weighting"] == "blocks"
    assert descriptor_options({"weighting": "z"}, 4)["weighting"] == "z"  # what the user gives wins
    assert descriptor_options({"n_radial": 8}, 4) == {"n_radial": 8, "n_angular": 6, "weighting": "blocks"}
