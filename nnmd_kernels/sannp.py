"""Import/export of the source product's force-field file, ffield.sannp (Chebyshev case).

Layout and math as its LAMMPS `pair_style nnp` computes them (docs/sannp_format.md):

    symmFunc elemWeight tanhCutoff withClassical     (3 = Chebyshev; 1 = Z weights / 0 = blocks;
                                                      1 = tanh^3 / 0 = cosine; 1 = LJ-like block)
    Nrad Nang Rrad Rang
    withCharge                                        (0)
    layers nodes activ models
    nelem, then per element: Name ave dev Z
    [npairs, then per pair: E1 E2 A B C D]            (when withClassical == 1)
    weights: per element, per model: first layer (w[o][i], input fastest) + biases,
             hidden layers likewise, output layer: nodes weights + 1 bias

The file has one scalar ave/dev per element; our per-feature standardisation
folds exactly into the first layer on export (ave = 0, dev = 1), and the
per-element reference energy folds into the output bias. What the format cannot
express (typespin weighting, the cos(theta) angle variable, aenet's twist,
uneven hidden layers, a baseline cutoff other than R_max) is refused with a
message saying what to change.

Importing this module registers the format with Potential (potential.register_format,
name "sannp"): Potential.load reads any non-JSON file as an ffield.sannp, and
pot.save(path, format="sannp") writes one. potential.py itself never imports this module.
"""

from __future__ import annotations

import hashlib

import numpy as np

from .baseline import PairBaseline
from .descriptor import ChebyshevDescriptor
from .elements import atomic_number
from .network import ElementNetwork
from .potential import Potential, register_format

# activ codes of line 4 (nnp_common.h); 6 is the exact GELU x Phi(x) with the error function
ACTIVATION_CODES = {"linear": 1, "sigmoid": 2, "tanh": 3, "elu": 4, "twisted_tanh": 5, "gelu": 6}
CODE_ACTIVATIONS = {v: k for k, v in ACTIVATION_CODES.items()}


def _fmt(x: float) -> str:
    return repr(float(x))


def write_sannp(pot) -> str:
    """The ffield.sannp text of a potential (exact: floats in round-trip repr)."""
    desc = pot.descriptor
    if desc.weighting == "typespin":
        raise ValueError("sannp export: weighting 'typespin' has no ffield.sannp form; use 'z' or 'blocks'")
    if desc.angle != "theta":
        raise ValueError("sannp export: ffield.sannp uses the angle variable 2*theta/pi - 1; "
                         "train with angle='theta'")
    if 0 < abs(desc.r_radial - desc.r_angular) <= 1e-4:
        raise ValueError("sannp export: r_radial and r_angular differ by <= 1e-4 A, which pair_style nnp "
                         "treats as equal; make them equal or further apart")
    act = pot.activation
    if act not in ACTIVATION_CODES:
        raise ValueError(f"sannp export: activation {act!r} has no ffield.sannp code; "
                         f"use one of {sorted(ACTIVATION_CODES)}")
    hidden = pot.networks[0].hidden
    if len(hidden) < 1 or len(set(hidden)) != 1:
        raise ValueError(f"sannp export: all hidden layers must have the same width (got {hidden})")
    if any(n.hidden != hidden for n in pot.networks):
        raise ValueError("sannp export: all elements must have the same network shape")
    if pot.coulomb is not None:
        raise ValueError("sannp export: ffield.sannp has no electrostatic term, and this model's Coulomb "
                         "term (fixed charges, Ewald) is part of its energy; export it with --format lammps "
                         "(pair_style hybrid/overlay nnmd + coul/long) instead")
    with_classical = 0
    if pot.baseline is not None and np.any(pot.baseline.coefficients != 0):
        if abs(pot.baseline.cutoff - desc.cutoff) > 1e-12:
            raise ValueError(f"sannp export: the baseline cutoff ({pot.baseline.cutoff} A) must equal the "
                             f"descriptor cutoff R_max ({desc.cutoff} A) in ffield.sannp")
        with_classical = 1
    elem_weight = 1 if desc.weighting == "z" else 0
    tanh_cut = 1 if desc.cutoff_fn == "tanh" else 0
    sp = pot.species
    lines = [
        f"3 {elem_weight} {tanh_cut} {with_classical}",
        f"{desc.n_radial} {desc.n_angular} {_fmt(desc.r_radial)} {_fmt(desc.r_angular)}",
        "0",
        f"{len(hidden)} {hidden[0]} {ACTIVATION_CODES[act]} {pot.n_models}",
        f"{len(sp)}",
    ]
    for s in sp:
        lines.append(f"{s} 0.0 1.0 {atomic_number(s)}")
    if with_classical:
        c = pot.baseline.coefficients
        rows = [(a, b) for a in range(len(sp)) for b in range(a, len(sp))]
        lines.append(f"{len(rows)}")
        for a, b in rows:
            lines.append(f"{sp[a]} {sp[b]} " + " ".join(_fmt(v) for v in c[a, b]))
    for e, net in enumerate(pot.networks):
        mu, sd = pot.feature_mean[e], pot.feature_std[e]
        for m in range(net.n_models):
            for l, (w, b) in enumerate(zip(net.weights, net.biases)):
                wm, bm = w[m], b[m].copy()
                if l == 0:
                    # (G - mu)/sd @ W + b  ==  G @ (W/sd) + (b - (mu/sd) @ W)
                    bm = bm - (mu / sd) @ wm
                    wm = wm / sd[:, None]
                if l == len(net.weights) - 1:
                    bm = bm + pot.energy_shift[e]
                # grouped by output node, input index fastest: W^T row-major
                lines.append(" ".join(_fmt(v) for v in wm.T.ravel()))
                lines.append(" ".join(_fmt(v) for v in bm))
    return "\n".join(lines) + "\n"


def read_sannp(text: str, source: str = "ffield.sannp"):
    """Parse an ffield.sannp (Chebyshev) file into a Potential."""
    raw = [ln.split("#")[0].strip() for ln in text.splitlines()]
    lines = [(k + 1, ln) for k, ln in enumerate(raw) if ln]
    pos = 0

    def next_line(what):
        nonlocal pos
        if pos >= len(lines):
            raise ValueError(f"{source}: file ends before {what}")
        lineno, ln = lines[pos]
        pos += 1
        return lineno, ln.split()

    def ints(tokens, lineno, what):
        try:
            return [int(t) for t in tokens]
        except ValueError:
            raise ValueError(f"{source}, line {lineno}: expected integers for {what}, got {' '.join(tokens)!r}") from None

    lineno, tok = next_line("the header")
    head = ints(tok[:4], lineno, "symmFunc elemWeight tanhCutoff withClassical")
    symm = head[0]
    elem_weight = head[1] if len(head) > 1 else 0
    tanh_cut = head[2] if len(head) > 2 else 1
    with_classical = head[3] if len(head) > 3 else 0
    if len(head) == 1:
        elem_weight, tanh_cut = 0, 1
    if symm != 3:
        raise ValueError(f"{source}, line {lineno}: symmFunc {symm} is not supported (only 3 = Chebyshev)")
    if with_classical >= 2:
        raise ValueError(f"{source}, line {lineno}: withClassical {with_classical} (ReaxFF mode) is not supported")
    lineno, tok = next_line("Nrad Nang Rrad Rang")
    if len(tok) < 4:
        raise ValueError(f"{source}, line {lineno}: expected 'Nrad Nang Rrad Rang'")
    nrad, nang = ints(tok[:2], lineno, "Nrad Nang")
    rrad, rang = float(tok[2]), float(tok[3])
    if abs(rrad - rang) <= 1e-4:
        rang = rrad  # pair_style nnp uses Rrad for both when they are this close
    lineno, tok = next_line("withCharge")
    if ints(tok[:1], lineno, "withCharge")[0] != 0:
        raise ValueError(f"{source}, line {lineno}: charge networks (withCharge != 0) are not supported")
    lineno, tok = next_line("layers nodes activ [models]")
    lay = ints(tok, lineno, "layers nodes activ [models]")
    if len(lay) < 3:
        raise ValueError(f"{source}, line {lineno}: expected 'layers nodes activ [models]'")
    n_layers, nodes, act_code = lay[:3]
    n_models = lay[3] if len(lay) > 3 else 1
    if act_code not in CODE_ACTIVATIONS:
        raise ValueError(f"{source}, line {lineno}: activation code {act_code} is not supported "
                         f"(known: {sorted(CODE_ACTIVATIONS)})")
    lineno, tok = next_line("nelem")
    nelem = ints(tok[:1], lineno, "nelem")[0]
    names, ave, dev = [], [], []
    for _ in range(nelem):
        lineno, tok = next_line("an element line 'Name ave dev Z'")
        name = tok[0]
        z_file = atomic_number(name)
        if len(tok) < 3:
            raise ValueError(f"{source}, line {lineno}: expected 'Name ave dev Z'")
        a, d = float(tok[1]), float(tok[2])
        if d <= 0:
            raise ValueError(f"{source}, line {lineno}: dev must be > 0 (got {d})")
        if elem_weight and len(tok) > 3 and int(float(tok[3])) != z_file:
            raise ValueError(f"{source}, line {lineno}: Z={tok[3]} for {name} differs from its atomic number "
                             f"{z_file}; nnmd weights by the true atomic number")
        names.append(name)
        ave.append(a)
        dev.append(d)
    desc = ChebyshevDescriptor(tuple(names), n_radial=nrad, n_angular=nang, r_radial=rrad, r_angular=rang,
                               cutoff_fn="tanh" if tanh_cut else "cos", angle="theta",
                               weighting="z" if elem_weight else "blocks")
    baseline = None
    if with_classical == 1:
        lineno, tok = next_line("npairs")
        npairs = ints(tok[:1], lineno, "npairs")[0]
        coef = np.zeros((nelem, nelem, 4))
        for _ in range(npairs):
            lineno, tok = next_line("a pair line 'E1 E2 A B C D'")
            if len(tok) < 6:
                raise ValueError(f"{source}, line {lineno}: expected 'E1 E2 A B C D'")
            try:
                i, j = names.index(tok[0]), names.index(tok[1])
            except ValueError:
                raise ValueError(f"{source}, line {lineno}: pair {tok[0]}-{tok[1]} names an element "
                                 f"not in the element list {names}") from None
            coef[i, j] = coef[j, i] = [float(v) for v in tok[2:6]]
        baseline = PairBaseline(coef, desc.cutoff)
    # the rest is one whitespace-separated stream of numbers
    stream_start = lines[pos][0] if pos < len(lines) else None
    try:
        stream = np.array([float(t) for _, ln in lines[pos:] for t in ln.split()], dtype=np.float64)
    except ValueError as exc:
        raise ValueError(f"{source}: non-numeric token in the weights (from line {stream_start}): {exc}") from None
    nf = desc.n_features
    sizes = [nf] + [nodes] * n_layers + [1]
    per_model = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
    need = per_model * n_models * nelem
    if stream.size != need:
        raise ValueError(f"{source}: expected {need} weights ({nelem} elements x {n_models} models x "
                         f"{per_model}) for {nf} inputs and {n_layers}x{nodes} hidden, found {stream.size}")
    k = 0
    nets = []
    for _ in range(nelem):
        ws = [np.empty((n_models, a, b)) for a, b in zip(sizes[:-1], sizes[1:])]
        bs = [np.empty((n_models, b)) for b in sizes[1:]]
        for m in range(n_models):
            for l, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
                ws[l][m] = stream[k : k + a * b].reshape(b, a).T
                k += a * b
                bs[l][m] = stream[k : k + b]
                k += b
        nets.append(ElementNetwork(tuple(ws), tuple(bs), CODE_ACTIVATIONS[act_code]))
    mean = np.repeat(np.asarray(ave)[:, None], nf, axis=1)
    std = np.repeat(np.asarray(dev)[:, None], nf, axis=1)
    return Potential(desc, tuple(nets), mean, std, np.zeros(nelem), baseline,
                     metadata={"imported_from": "ffield.sannp"})


def is_sannp(data: bytes, path=None) -> bool:
    """Anything that is not a JSON object (.nnmd) is read as an ffield.sannp, whose parser
    then says what is wrong with it (as Potential.load always did)."""
    return data.lstrip()[:1] != b"{"


def _load(data: bytes, source: str):
    return read_sannp(data.decode(errors="replace"), source=source)


def save_sannp(pot, path) -> str:
    """Write ffield.sannp atomically (temp file + rename); returns the sha256 of its text."""
    from nnmd_kernels._atomic import write_text_atomic

    text = write_sannp(pot)
    write_text_atomic(path, text)
    return hashlib.sha256(text.encode()).hexdigest()


register_format("sannp", detect=is_sannp, load=_load, save=save_sannp)
