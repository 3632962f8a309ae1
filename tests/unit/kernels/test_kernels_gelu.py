"""The exact GELU activation (ffield.sannp code 6): derivatives, forces, files, training.

GELU(x) = x Phi(x), Phi(x) = (1 + erf(x / sqrt 2)) / 2: the exact form that the source
product's LAMMPS pair style evaluates (docs/sannp_format.md),
not the tanh approximation.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from kernels_testlib import SMALL, SPECIES4, jittered_cell, random_numbers

from nnmd_kernels import Potential
from nnmd_kernels.network import ElementNetwork, activation, forward_tangent, parameter_gradient
from nnmd_kernels.sannp import ACTIVATION_CODES, read_sannp, write_sannp
from nnmd_kernels.training import Structure, TrainConfig, train


def gelu_spec(x: float) -> float:
    """GELU exactly as docs/sannp_format.md writes it (erf form), in scalar Python."""
    return x * 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def gelu_spec_prime(x: float) -> float:
    """Its derivative as the spec writes it: Phi(x) + x exp(-x^2/2) / sqrt(2 pi)."""
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0))) + x * math.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


def rel(a, b):
    return float(np.abs(np.asarray(a) - np.asarray(b)).max() / max(np.abs(b).max(), 1e-300))


def richardson(fun, x, h=1e-3):
    """Fourth-order central difference: error ~h^4 f^(5) (~1e-13), rounding ~1e-16/h."""
    return (8.0 * (fun(x + h) - fun(x - h)) - (fun(x + 2 * h) - fun(x - 2 * h))) / (12.0 * h)


# f' vanishes near x = -0.7518 and f'' at +-sqrt(2): relative errors are measured away
# from those roots (the points below stay > 0.05 away)
X = np.array([-4.0, -3.1, -2.3, -1.7, -1.2, -0.9, -0.55, -0.3, -0.1, 0.05, 0.2, 0.6, 1.0, 1.3,
              1.55, 2.0, 2.7, 3.5, 4.0])


def test_gelu_value_matches_the_spec_formula():
    f, df, _ = activation("gelu")
    want = np.array([gelu_spec(v) for v in X])
    assert np.abs(f(X) - want).max() < 1e-15 * max(1.0, np.abs(want).max())
    assert rel(df(X), np.array([gelu_spec_prime(v) for v in X])) < 1e-14
    # landmarks: f(0) = 0, f'(0) = 1/2, f(x) -> x and f(-x) -> 0 in the tails
    assert f(np.array(0.0)) == 0.0 and df(np.array(0.0)) == 0.5
    assert f(np.array(40.0)) == 40.0 and f(np.array(-40.0)) == 0.0
    # the negative tail keeps its relative precision (the erfc form): x Phi(x) ~ -phi(x) (1 - 1/x^2)
    x = -10.0
    phi = math.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
    assert abs(float(f(np.array(x))) / (-phi * (1 - 1 / x**2 + 3 / x**4 - 15 / x**6)) - 1) < 2e-5
    # not the tanh approximation: they differ by ~1e-4 near |x| ~ 2
    tanh_approx = 0.5 * X * (1 + np.tanh(math.sqrt(2 / math.pi) * (X + 0.044715 * X**3)))
    assert np.abs(f(X) - tanh_approx).max() > 1e-4


def test_gelu_derivatives_by_finite_differences():
    f, df, d2f = activation("gelu")
    assert np.all(np.abs(richardson(f, X) - df(X)) <= 1e-7 * np.abs(df(X)))
    assert np.all(np.abs(richardson(df, X) - d2f(X)) <= 1e-7 * np.abs(d2f(X)))
    assert np.all(np.isfinite(d2f(np.array([-50.0, 50.0]))))


def test_gelu_network_second_derivatives_by_finite_differences():
    """The force-loss gradient of training (tangent pass + reverse mode, act'' inside)."""
    rng = np.random.default_rng(0)
    net = ElementNetwork.random(5, (4, 3), 2, "gelu", rng)
    net = ElementNetwork(net.weights, tuple(b + rng.normal(size=b.shape) for b in net.biases), "gelu")
    x, xd = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
    dy, dyd = rng.normal(size=(2, 6)), rng.normal(size=(2, 6))
    _, _, cache = forward_tangent(net, x, xd)
    gw, gb = parameter_gradient(net, cache, dy, dyd)

    def obj(ws, bs):
        y, yd, _ = forward_tangent(ElementNetwork(tuple(ws), tuple(bs), "gelu"), x, xd)
        return float((dy * y).sum() + (dyd * yd).sum())

    h = 1e-5
    for l in range(3):
        for params, grad, is_w in ((net.weights, gw, True), (net.biases, gb, False)):
            d = rng.normal(size=params[l].shape)
            plus = [p + (h * d if k == l else 0) for k, p in enumerate(params)]
            minus = [p - (h * d if k == l else 0) for k, p in enumerate(params)]
            if is_w:
                fd = (obj(plus, net.biases) - obj(minus, net.biases)) / (2 * h)
            else:
                fd = (obj(net.weights, plus) - obj(net.weights, minus)) / (2 * h)
            assert abs(fd - np.sum(grad[l] * d)) < 1e-7 * max(abs(fd), 1.0)


@pytest.fixture(scope="module")
def gelu_pot():
    return Potential.random(SPECIES4, seed=5, n_models=2, activation="gelu", **SMALL)


def test_gelu_potential_forces_and_stress_by_finite_differences(gelu_pot):
    pos, cell = jittered_cell(n_side=2, spacing=2.4, triclinic=True, seed=12)
    nums = random_numbers(len(pos), seed=3)
    res = gelu_pot.compute(pos, nums, cell, True)
    h = 1e-5
    fd = np.zeros_like(pos)
    for a in range(len(pos)):
        for k in range(3):
            p = pos.copy()
            p[a, k] += h
            ep = gelu_pot.compute(p, nums, cell, True, forces=False).energy
            p[a, k] -= 2 * h
            em = gelu_pot.compute(p, nums, cell, True, forces=False).energy
            fd[a, k] = -(ep - em) / (2 * h)
    assert rel(res.forces, fd) < 1e-7
    # the numba and numpy backends evaluate the same GELU networks
    ref = gelu_pot.compute(pos, nums, cell, True, backend="numpy")
    assert rel(res.forces, ref.forces) < 1e-10 and abs(res.energy - ref.energy) < 1e-10 * abs(ref.energy)


# ffield.sannp with activation code 6: Si, Z weighting, tanh^3 cutoff, no baseline;
# 3 radial + 2 angular functions (F = 5), two hidden layers of 3 nodes, two models.
def _sannp_gelu_text(seed=0):
    rng = np.random.default_rng(seed)
    F, H, M = 5, 3, 2
    per_model = F * H + H + H * H + H + H + 1
    w = rng.normal(0.0, 0.6, size=M * per_model)
    head = ["3 1 1 0", "3 2 4.2 3.8", "0", f"2 {H} 6 {M}", "1", "Si 1.5 2.5 14"]
    return "\n".join(head + [" ".join(repr(float(v)) for v in w)]) + "\n", w, (F, H, M)


def _spec_network_energy(x, stream, F, H, M):
    """E_i of one atom by the spec's recipe: layers y_o = act(sum_i w[o][i] x_i + b_o), w grouped
    by output node (input fastest), GELU hidden, linear output, mean over the M models."""
    k = 0
    total = 0.0
    for _ in range(M):
        a = list(x)
        for n_in, n_out, act in ((F, H, True), (H, H, True), (H, 1, False)):
            W = stream[k : k + n_in * n_out]
            k += n_in * n_out
            b = stream[k : k + n_out]
            k += n_out
            z = [sum(W[o * n_in + i] * a[i] for i in range(n_in)) + b[o] for o in range(n_out)]
            a = [gelu_spec(v) for v in z] if act else z
        total += a[0]
    assert k == len(stream)
    return total / M


def test_sannp_code6_import_matches_direct_evaluation():
    text, stream, (F, H, M) = _sannp_gelu_text()
    pot = read_sannp(text)
    assert pot.activation == "gelu" and pot.n_models == M and pot.networks[0].hidden == (H, H)
    pos, cell = jittered_cell(n_side=2, spacing=2.35, triclinic=True, seed=4)
    nums = np.full(len(pos), 14)
    res = pot.compute(pos, nums, cell, True)
    x = (res.descriptors - 1.5) / 2.5  # one scalar ave / dev per element
    want = np.array([_spec_network_energy(xi, stream, F, H, M) for xi in x])
    assert rel(res.energies, want) < 1e-12
    assert np.std(want) > 1e-3  # the atoms see different environments


def test_sannp_gelu_export_import_round_trip_is_bit_identical(gelu_pot):
    assert ACTIVATION_CODES["gelu"] == 6
    text = write_sannp(gelu_pot)
    assert text.splitlines()[3].split()[2] == "6"
    back = read_sannp(text)
    assert back.activation == "gelu"
    assert write_sannp(back) == text  # export -> import -> export: the same file, byte for byte
    again = read_sannp(write_sannp(back))
    for n1, n2 in zip(back.networks, again.networks):
        for a, b in zip(n1.weights + n1.biases, n2.weights + n2.biases):
            assert np.array_equal(a, b)
    # and the exported function is the original one (standardisation folded into layer 1)
    pos, cell = jittered_cell(n_side=2, spacing=2.4, seed=8)
    nums = random_numbers(len(pos), seed=1)
    r0, r1 = gelu_pot.compute(pos, nums, cell, True), back.compute(pos, nums, cell, True)
    assert abs(r1.energy - r0.energy) < 1e-10 * abs(r0.energy)
    assert rel(r1.forces, r0.forces) < 1e-9


def test_gelu_nnmd_and_sannp_files(gelu_pot, tmp_path):
    digest = gelu_pot.save(tmp_path / "g.nnmd")
    back = Potential.load(tmp_path / "g.nnmd")
    assert back.activation == "gelu" and back.content_hash == digest == gelu_pot.content_hash
    for n1, n2 in zip(gelu_pot.networks, back.networks):
        for a, b in zip(n1.weights + n1.biases, n2.weights + n2.biases):
            assert np.array_equal(a, b)
    gelu_pot.save(tmp_path / "ffield.sannp", format="sannp")
    assert (tmp_path / "ffield.sannp").read_text() == write_sannp(gelu_pot)
    assert Potential.load(tmp_path / "ffield.sannp").activation == "gelu"


def test_train_config_gelu_option():
    with pytest.raises(ValueError, match="gelu"):
        TrainConfig(activation="gleu")
    rng = np.random.default_rng(0)
    structs = []
    for k in range(6):
        pos, cell = jittered_cell(n_side=2, spacing=2.6, seed=20 + k)
        pot = Potential.random(("Li", "Ge"), seed=3, n_radial=4, n_angular=3, r_radial=3.5,
                               r_angular=3.2, hidden=(5,))
        nums = np.array([3, 32] * 4)
        r = pot.compute(pos, nums, cell, True)
        structs.append(Structure(pos, nums, cell, np.ones(3, bool), r.energy + rng.normal(0, 1e-3),
                                 r.forces, None, name=f"s{k}"))
    cfg = TrainConfig(descriptor=dict(n_radial=4, n_angular=3, r_radial=3.5, r_angular=3.2), hidden=(6,),
                      activation="gelu", max_epochs=4, warmup_epochs=1, validation_fraction=0.0,
                      device="cpu")
    res = train(structs, cfg)
    assert res.potential.activation == "gelu"
    assert np.isfinite(res.metrics["all_force_rmse"])
