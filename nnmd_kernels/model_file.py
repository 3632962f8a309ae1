"""The .nnmd model file: one JSON document, versioned and content-hashed.

    {
      "format": "nnmd-model",
      "format_version": 1 (2 when the model has a "coulomb" term),
      "sha256": "<hex digest of the canonical JSON of 'model'>",
      "model": {
        "descriptor": {...ChebyshevDescriptor fields...},
        "activation": "twisted_tanh",
        "networks": {"Si": {"weights": [[[...]]], "biases": [[...]]}, ...},   # (M, in, out), (M, out)
        "feature_mean": {"Si": [...]}, "feature_std": {"Si": [...]},          # (F,) per element
        "energy_shift": {"Si": e0},                                            # eV/atom
        "baseline": null | {"cutoff": R, "coefficients": {"Si-Si": [A, B, C, D]}},
        "coulomb": {"charges": {"Li": 1.0, ...}, "r_cut": 8.0, "accuracy": 1e-6},  # only if present
        "metadata": {...}
      }
    }

Floats are written with Python's shortest round-trip repr, so a save/load
round trip is bit-exact. A file whose hash does not match (corrupted, edited)
or whose format_version is newer than this code is refused with a clear message.

Importing this module registers the format ("nnmd": Potential.load / save) and the dict
codec (Potential.to_dict / from_dict / content_hash) with Potential; potential.py itself
never imports this module.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

from .baseline import PairBaseline
from .descriptor import ChebyshevDescriptor
from .electrostatics import CoulombTerm
from .network import ElementNetwork
from .potential import Potential, register_codec, register_format

FORMAT = "nnmd-model"
FORMAT_VERSION = 2  # 2: the optional "coulomb" term; a model without one is still written as 1


def potential_to_dict(pot) -> dict:
    sp = pot.species
    model = {
        "descriptor": pot.descriptor.to_dict(),
        "activation": pot.activation,
        "networks": {
            s: {
                "weights": [w.tolist() for w in net.weights],
                "biases": [b.tolist() for b in net.biases],
            }
            for s, net in zip(sp, pot.networks)
        },
        "feature_mean": {s: pot.feature_mean[e].tolist() for e, s in enumerate(sp)},
        "feature_std": {s: pot.feature_std[e].tolist() for e, s in enumerate(sp)},
        "energy_shift": {s: float(pot.energy_shift[e]) for e, s in enumerate(sp)},
        "baseline": None,
        "metadata": _jsonable(pot.metadata),
    }
    if pot.baseline is not None:
        c = pot.baseline.coefficients
        model["baseline"] = {
            "cutoff": pot.baseline.cutoff,
            "coefficients": {
                f"{sp[a]}-{sp[b]}": c[a, b].tolist() for a in range(len(sp)) for b in range(a, len(sp))
            },
        }
    if pot.coulomb is not None:
        model["coulomb"] = pot.coulomb.to_dict(sp)
    return model


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def potential_from_dict(model: dict):
    try:
        desc = ChebyshevDescriptor.from_dict(model["descriptor"])
        sp = desc.species
        act = model["activation"]
        nets = []
        for s in sp:
            n = model["networks"][s]
            nets.append(ElementNetwork(
                tuple(np.asarray(w, dtype=np.float64) for w in n["weights"]),
                tuple(np.asarray(b, dtype=np.float64) for b in n["biases"]),
                act,
            ))
        mean = np.array([model["feature_mean"][s] for s in sp], dtype=np.float64)
        std = np.array([model["feature_std"][s] for s in sp], dtype=np.float64)
        shift = np.array([model["energy_shift"][s] for s in sp], dtype=np.float64)
        baseline = None
        if model.get("baseline"):
            b = model["baseline"]
            coef = np.zeros((len(sp), len(sp), 4))
            for key, vals in b["coefficients"].items():
                e1, e2 = key.split("-")
                i, j = sp.index(e1), sp.index(e2)
                coef[i, j] = coef[j, i] = vals
            baseline = PairBaseline(coef, b["cutoff"])
        coul = CoulombTerm.from_dict(model["coulomb"], sp) if model.get("coulomb") else None
    except KeyError as exc:
        raise ValueError(f"model file: missing field {exc}") from None
    return Potential(desc, tuple(nets), mean, std, shift, baseline, coul,
                     metadata=dict(model.get("metadata") or {}))


def _canonical(model: dict) -> bytes:
    return json.dumps(model, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def content_hash(pot) -> str:
    return hashlib.sha256(_canonical(potential_to_dict(pot))).hexdigest()


def dumps(pot) -> tuple[str, str]:
    """(file text, sha256) of a potential."""
    model = potential_to_dict(pot)
    digest = hashlib.sha256(_canonical(model)).hexdigest()
    # version 1 readers would ignore a Coulomb term and get every energy wrong: they must refuse it
    version = FORMAT_VERSION if "coulomb" in model else 1
    doc = {"format": FORMAT, "format_version": version, "sha256": digest, "model": model}
    return json.dumps(doc, sort_keys=True, allow_nan=False), digest


def loads(text: str | bytes, source: str = "<string>"):
    try:
        doc = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{source}: not a valid .nnmd model file (JSON error: {exc}); "
                         "the file is corrupted or truncated") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError(f"{source}: not an nnmd model file (missing format '{FORMAT}')")
    version = doc.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise ValueError(f"{source}: invalid format_version {version!r}")
    if version > FORMAT_VERSION:
        raise ValueError(f"{source}: written by a newer nnmd (format_version {version}); this nnmd reads "
                         f"up to {FORMAT_VERSION}: upgrade nnmd to load it")
    model = doc.get("model")
    if not isinstance(model, dict):
        raise ValueError(f"{source}: missing 'model' section")
    digest = hashlib.sha256(_canonical(model)).hexdigest()
    if digest != doc.get("sha256"):
        raise ValueError(f"{source}: content hash mismatch (file says {str(doc.get('sha256'))[:12]}..., "
                         f"content is {digest[:12]}...): the file is corrupted or was edited; refusing to load")
    return potential_from_dict(model)


def save_model(pot, path) -> str:
    """Write atomically (temp file + rename) so a crash never leaves half a model."""
    from nnmd_kernels._atomic import write_text_atomic

    text, digest = dumps(pot)
    write_text_atomic(path, text)
    return digest


def load_model(path):
    """Potential.load: a .nnmd, or any other registered format (ffield.sannp), by content."""
    return Potential.load(path)


def is_nnmd(data: bytes, path=None) -> bool:
    """A .nnmd file is one JSON object; anything else goes to the other formats."""
    return data.lstrip()[:1] == b"{"


register_codec(potential_to_dict, potential_from_dict, content_hash)
register_format("nnmd", detect=is_nnmd, load=loads, save=save_model)
