"""Per-element multilayer perceptrons, evaluated for an ensemble of M models at once.

A network maps a standardised descriptor x (n, F) to atomic energies y (M, n):

    a_0 = x;   z_l = a_{l-1} W_l + b_l;   a_l = act(z_l)  (hidden layers);   y = a_L W_out + b_out

W_l has shape (M, n_in, n_out) and b_l (M, n_out): the ensemble axis comes first
so that all members run as one batched matmul. The output layer is linear.

Activations (value, first and second derivative; the second is for the
force-loss gradient in training):
    twisted_tanh  tanh(x) + 0.16 x             (the source product's default)
    aenet_twist   1.7159 tanh(2x/3) + 0.1 x    (aenet's "twisted tanh")
    tanh, sigmoid, linear, elu
    gelu          x Phi(x), Phi(x) = (1 + erf(x / sqrt 2)) / 2   (the exact GELU, not the
                  tanh approximation; ffield.sannp activation code 6)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _tanh_family(a: float, b: float, c: float):
    """f(x) = a tanh(b x) + c x with derivatives."""

    def f(x):
        return a * np.tanh(b * x) + c * x

    def df(x):
        t = np.tanh(b * x)
        return a * b * (1.0 - t * t) + c

    def d2f(x):
        t = np.tanh(b * x)
        return -2.0 * a * b * b * t * (1.0 - t * t)

    return f, df, d2f


def _sigmoid():
    def f(x):
        return 0.5 * (1.0 + np.tanh(0.5 * x))

    def df(x):
        s = f(x)
        return s * (1.0 - s)

    def d2f(x):
        s = f(x)
        return s * (1.0 - s) * (1.0 - 2.0 * s)

    return f, df, d2f


def _linear():
    return (lambda x: x), (lambda x: np.ones_like(x)), (lambda x: np.zeros_like(x))


def _elu():
    def f(x):
        return np.where(x > 0, x, np.expm1(np.minimum(x, 0.0)))

    def df(x):
        return np.where(x > 0, 1.0, np.exp(np.minimum(x, 0.0)))

    def d2f(x):
        return np.where(x > 0, 0.0, np.exp(np.minimum(x, 0.0)))

    return f, df, d2f


_INV_SQRT2 = 0.7071067811865476  # 1 / sqrt(2)
_INV_SQRT_2PI = 0.3989422804014327  # 1 / sqrt(2 pi)


def _erfc(x):
    """erfc for numpy arrays/scalars (scipy) and, on the training device path, CuPy arrays.
    scipy.special is imported on first use: it costs more than the rest of nnmd_kernels."""
    if type(x).__module__.startswith("cupy"):
        from cupyx.scipy import special as cupy_special

        return cupy_special.erfc(x)
    from scipy import special

    return special.erfc(x)


def _gelu():
    """The exact GELU, f(x) = x Phi(x) with Phi the standard normal CDF.

    Phi(x) = (1 + erf(x / sqrt 2)) / 2 is evaluated as erfc(-x / sqrt 2) / 2, the same
    function without the cancellation of 1 + erf(...) for x << 0 (where the erf form loses
    all relative precision; the two agree to ~1e-16 absolute everywhere).
        f'(x)  = Phi(x) + x phi(x),        phi(x) = exp(-x^2 / 2) / sqrt(2 pi)
        f''(x) = (2 - x^2) phi(x)
    """

    def f(x):
        return x * (0.5 * _erfc(-_INV_SQRT2 * x))

    def df(x):
        return 0.5 * _erfc(-_INV_SQRT2 * x) + x * (_INV_SQRT_2PI * np.exp(-0.5 * x * x))

    def d2f(x):
        return (2.0 - x * x) * (_INV_SQRT_2PI * np.exp(-0.5 * x * x))

    return f, df, d2f


ACTIVATIONS = {
    "twisted_tanh": _tanh_family(1.0, 1.0, 0.16),
    "aenet_twist": _tanh_family(1.7159, 2.0 / 3.0, 0.1),
    "tanh": _tanh_family(1.0, 1.0, 0.0),
    "sigmoid": _sigmoid(),
    "linear": _linear(),
    "elu": _elu(),
    "gelu": _gelu(),
}


def activation(name: str):
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)} (got {name!r})") from None


@dataclass(frozen=True)
class ElementNetwork:
    """An ensemble of M MLPs for one element.

    weights[l]: (M, n_in, n_out), biases[l]: (M, n_out); last layer has n_out = 1.
    """

    weights: tuple[np.ndarray, ...]
    biases: tuple[np.ndarray, ...]
    activation: str = "twisted_tanh"

    def __post_init__(self):
        activation(self.activation)
        if len(self.weights) != len(self.biases) or len(self.weights) < 1:
            raise ValueError("network: need one bias per weight matrix and at least one layer")
        m = self.weights[0].shape[0]
        for l, (w, b) in enumerate(zip(self.weights, self.biases)):
            if w.ndim != 3 or b.shape != (w.shape[0], w.shape[2]) or w.shape[0] != m:
                raise ValueError(f"network layer {l}: weights {w.shape} and biases {b.shape} do not match")
            if l and w.shape[1] != self.weights[l - 1].shape[2]:
                raise ValueError(f"network layer {l}: input size {w.shape[1]} != previous output")
        if self.weights[-1].shape[2] != 1:
            raise ValueError("network: the output layer must have one node")

    @property
    def n_models(self) -> int:
        return self.weights[0].shape[0]

    @property
    def n_inputs(self) -> int:
        return self.weights[0].shape[1]

    @property
    def hidden(self) -> tuple[int, ...]:
        return tuple(w.shape[2] for w in self.weights[:-1])

    @property
    def n_parameters(self) -> int:
        return sum(w[0].size + b[0].size for w, b in zip(self.weights, self.biases))

    @classmethod
    def random(cls, n_inputs: int, hidden=(40, 40), n_models: int = 1, activation_name="twisted_tanh",
               rng: np.random.Generator | None = None) -> ElementNetwork:
        """Glorot-normal weights, zero biases."""
        rng = np.random.default_rng() if rng is None else rng
        sizes = [n_inputs, *hidden, 1]
        ws, bs = [], []
        for a, b in zip(sizes[:-1], sizes[1:]):
            ws.append(rng.normal(0.0, np.sqrt(2.0 / (a + b)), size=(n_models, a, b)))
            bs.append(np.zeros((n_models, b)))
        return cls(tuple(ws), tuple(bs), activation_name)


def forward(net: ElementNetwork, x: np.ndarray):
    """y (M, n) and the cache [(z_l, a_l)] of the hidden layers."""
    f, _, _ = activation(net.activation)
    a = x[None, :, :]  # (1, n, F) broadcast over models
    cache = []
    for w, b in zip(net.weights[:-1], net.biases[:-1]):
        z = a @ w + b[:, None, :]  # (M, n, h)
        a = f(z)
        cache.append(z)
    y = (a @ net.weights[-1])[..., 0] + net.biases[-1]  # (M, n)
    return y, cache


def input_gradient(net: ElementNetwork, cache, coef: np.ndarray) -> np.ndarray:
    """d/dx sum_m coef[m] y_m, shape (n, F). coef (M,) e.g. 1/M for the ensemble mean."""
    _, df, _ = activation(net.activation)
    # delta of the last hidden layer: (M, n, h_L) = w_out^T scaled by coef
    delta = np.broadcast_to((net.weights[-1][:, :, 0] * coef[:, None])[:, None, :],
                            (net.n_models, cache[-1].shape[1], net.weights[-1].shape[1]))
    for l in range(len(cache) - 1, -1, -1):
        delta = delta * df(cache[l])
        delta = delta @ np.swapaxes(net.weights[l], 1, 2)  # (M, n, n_in)
    return delta.sum(axis=0)


def forward_tangent(net: ElementNetwork, x: np.ndarray, xdot: np.ndarray, xp=np):
    """Primal and tangent pass: y (M, n) and ydot (M, n) = dy/dx . xdot, with the cache
    needed by `parameter_gradient`. xdot (n, F) is a direction in input space.
    xp: the array module of x (numpy, or cupy for device arrays)."""
    f, df, _ = activation(net.activation)
    # (1, n, F): broadcasts over the M models in matmul without stride-0 copies, which
    # would push the weight-gradient products off BLAS
    a = xp.ascontiguousarray(x)[None]
    ad = xp.ascontiguousarray(xdot)[None]
    cache = []
    for w, b in zip(net.weights[:-1], net.biases[:-1]):
        z = a @ w + b[:, None, :]
        zd = ad @ w
        cache.append((a, ad, z, zd))
        a = f(z)
        ad = df(z) * zd
    y = (a @ net.weights[-1])[..., 0] + net.biases[-1]
    yd = (ad @ net.weights[-1])[..., 0]
    cache.append((a, ad, None, None))
    return y, yd, cache


def parameter_gradient(net: ElementNetwork, cache, dy: np.ndarray, dyd: np.ndarray | None):
    """Gradient w.r.t. weights and biases of  sum_{m,n} dy[m,n] y[m,n] + dyd[m,n] ydot[m,n].

    Reverse mode through the primal and the tangent pass together (the second
    derivatives of the force loss: act'' enters through the tangent). Returns
    (grad_weights, grad_biases) with the shapes of net.weights / net.biases.
    """
    _, df, d2f = activation(net.activation)
    L = len(net.weights)
    gw = [None] * L
    gb = [None] * L
    a_last, ad_last, _, _ = cache[-1]
    w_out = net.weights[-1]  # (M, h, 1)
    gw[-1] = np.swapaxes(a_last, 1, 2) @ dy[:, :, None]
    gb[-1] = dy.sum(axis=1)[:, None]
    da = dy[:, :, None] * w_out[:, None, :, 0]  # (M, n, h): d/d a_L
    dad = None
    if dyd is not None:
        gw[-1] = gw[-1] + np.swapaxes(ad_last, 1, 2) @ dyd[:, :, None]
        dad = dyd[:, :, None] * w_out[:, None, :, 0]  # d/d adot_L
    for l in range(L - 2, -1, -1):
        a_in, ad_in, z, zd = cache[l]
        fp = df(z)
        dz = da * fp
        if dad is not None:
            dz = dz + dad * d2f(z) * zd
            dzd = dad * fp
        w = net.weights[l]
        gw[l] = np.swapaxes(a_in, 1, 2) @ dz
        gb[l] = dz.sum(axis=1)
        if dad is not None:
            gw[l] = gw[l] + np.swapaxes(ad_in, 1, 2) @ dzd
        if l:
            wt = np.swapaxes(w, 1, 2)
            da = dz @ wt
            if dad is not None:
                dad = dzd @ wt
    return gw, gb
