"""Training with device="cuda" against device="cpu" (simulator in CI, device where present).

The same Objective runs on both; with "cuda" its arrays are xp arrays and the descriptor
products are the numba.cuda kernels of gpu/training_cuda.py (cached Jacobian) or of
gpu/descriptor_cuda.py (Jacobian over the budget). Tiny EMT Cu data so that the
simulator stays fast.
"""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT

pytest.importorskip("nnmd_kernels.gpu.training_cuda")

from nnmd_kernels.descriptor import ChebyshevDescriptor  # noqa: E402
from nnmd_kernels.network import ElementNetwork  # noqa: E402
from nnmd_kernels.potential import Potential  # noqa: E402
from nnmd_kernels.training import (  # noqa: E402
    Batch,
    Objective,
    Structure,
    TrainConfig,
    baseline_terms,
    fit_reference,
    resolve_device,
    train,
    validate_structures,
)

DESC = dict(n_radial=4, n_angular=3, r_radial=3.8, r_angular=3.0)


def _emt_cu():
    """3 rattled, strained Cu cells (4, 4 and 8 atoms) labelled by EMT."""
    rng = np.random.default_rng(3)
    out = []
    for k, rep in enumerate([(1, 1, 1), (1, 1, 1), (2, 1, 1)]):
        a = bulk("Cu", "fcc", a=3.61 * (1 + rng.uniform(-0.03, 0.03)), cubic=True).repeat(rep)
        a.rattle(0.1, seed=k)
        a.set_cell(a.cell.array @ (np.eye(3) + rng.uniform(-0.03, 0.03, (3, 3))), scale_atoms=True)
        a.calc = EMT()
        out.append(Structure(a.positions.copy(), a.numbers.copy(), a.cell.array.copy(), a.pbc.copy(),
                             a.get_potential_energy(), a.get_forces(), a.get_stress(voigt=False), name=f"cu{k}"))
    return out


def _objective(device, budget, structs, cfg):
    desc = ChebyshevDescriptor(("Cu",), **DESC)
    b = Batch(structs, desc, desc.cutoff, budget, device=device)
    E = np.array([s.energy for s in structs])
    F = np.concatenate([s.forces for s in structs])
    fm = np.ones(b.N, bool)
    e0, bl = fit_reference(b, E, F, fm, True, desc.cutoff)
    eb, fb, vb = baseline_terms(b, bl)
    targets = {"E": E - eb - np.bincount(b.struct_of_atom, e0[b.types], b.S), "F": F - fb, "fmask": fm,
               "sigma": np.array([s.stress for s in structs]) + vb / b.volume[:, None, None],
               "smask": np.ones(b.S, bool)}
    nets = [ElementNetwork.random(desc.n_features, cfg.hidden, 1, "twisted_tanh", np.random.default_rng(1))]
    pot = Potential(desc, tuple(nets), b.G.mean(0)[None], b.G.std(0)[None], e0, bl)
    return b, Objective(b, pot, targets, cfg, np.array([True, False, True]))


@pytest.mark.parametrize("budget", [2.0, 0.0])  # cached Jacobian kernels / descriptor_cuda recompute
def test_device_loss_and_gradient_equal_cpu(budget):
    structs = validate_structures(_emt_cu(), True)
    cfg = TrainConfig(descriptor=DESC, hidden=(4,), force_weight=0.3, stress_weight=0.5, l2=1e-4)
    b_cpu, cpu = _objective("cpu", budget, structs, cfg)
    b_dev, dev = _objective("cuda", budget, structs, cfg)
    assert b_dev.device == "cuda" and b_dev.x is not b_dev and b_cpu.x is b_cpu
    assert (b_dev.J is None) == (budget == 0.0)
    theta = cpu.pack(cpu.pot.networks) + np.random.default_rng(2).normal(0, 0.2, cpu.pack(cpu.pot.networks).size)
    for energy_only in (False, True):
        l_c, g_c, m_c = cpu(theta, energy_only)
        l_d, g_d, m_d = dev(theta, energy_only)
        assert isinstance(g_d, np.ndarray) and g_d.shape == g_c.shape
        assert abs(l_d - l_c) <= 1e-10 * abs(l_c)
        assert np.abs(g_d - g_c).max() <= 1e-10 * np.abs(g_c).max()
        assert m_d.keys() == m_c.keys()
        for k in m_c:
            assert abs(m_d[k] - m_c[k]) <= 1e-10 * abs(m_c[k]), k


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_device_training_follows_cpu(optimizer):
    structs = _emt_cu()
    common = dict(descriptor=DESC, hidden=(4,), force_weight=0.5, validation_fraction=0.34, max_epochs=3,
                  warmup_epochs=2, optimizer=optimizer, adam_lr=1e-2, seed=4)
    res_c = train(structs, TrainConfig(device="cpu", **common))
    res_d = train(structs, TrainConfig(device="cuda", **common))
    assert res_c.metrics["device"] == "cpu" and res_d.metrics["device"] == "cuda"
    assert [r["phase"] for r in res_d.history[0]] == [r["phase"] for r in res_c.history[0]]
    for a, b in zip(res_d.history[0], res_c.history[0]):
        assert abs(a["loss"] - b["loss"]) <= 1e-10 * abs(b["loss"])
    na, nb = res_d.potential.networks[0], res_c.potential.networks[0]
    for x, y in zip(na.weights + na.biases, nb.weights + nb.biases):
        assert isinstance(x, np.ndarray)
        assert np.abs(x - y).max() <= 1e-8 * max(np.abs(y).max(), 1.0)
    assert abs(res_d.metrics["all_force_rmse"] - res_c.metrics["all_force_rmse"]) <= 1e-8


def test_device_setting():
    assert resolve_device("cpu") == "cpu" and resolve_device("cuda") == "cuda"
    from nnmd_kernels.gpu.device import gpu_available

    assert resolve_device("auto") == ("cuda" if gpu_available() else "cpu")  # never the simulator
    with pytest.raises(ValueError, match="device"):
        TrainConfig(device="tpu")
