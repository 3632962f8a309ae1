"""Prototype: a second, shorter-range Chebyshev block beside the accurate preset's, on mlearn-Si.

    .venv/bin/python benchmarks/mlearn_si_inner_angular.py [--inner '{"n_radial": 4, "r_radial": 4.5,
        "n_angular": 8, "r_angular": 4.5}'] [--seed 0] [--config '{"l2": 1e-6}']

A design experiment for issue 17 (docs/benchmarks.md, "Angular functions resolved by
distance"), not a feature: the angular functions of the Chebyshev descriptor weight every
neighbour pair by fc(r_ij) fc(r_ik) out to one cutoff, so the angles of the first shells and
those of the far neighbours are summed into one set. Here the features of a second
ChebyshevDescriptor with shorter cutoffs (`--inner`) are appended to the preset's, which
separates near angles from far ones. It is wired in by replacing the numba kernels' four
entry points (descriptors, their VJP and JVP, the pair Jacobian) with versions that
concatenate the two blocks, inside this process only, so the model cannot be saved, run
in LAMMPS or on the GPU. Trains with `nnmd train --preset accurate`'s settings on
training.json and prints one JSON line: test and training RMSEs, overall and per group.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "datasets" / "mlearn-si"


class TwoBlocks:
    """Two ChebyshevDescriptors over the same species whose features are concatenated."""

    def __init__(self, outer, inner):
        self.parts = (outer, inner)

    @property
    def n_features(self) -> int:
        return sum(p.n_features for p in self.parts)

    @property
    def cutoff(self) -> float:
        return max(p.cutoff for p in self.parts)

    def __getattr__(self, name):  # species, n_species, ... from the outer block
        return getattr(self.parts[0], name)

    def split(self, a):
        return np.split(a, [self.parts[0].n_features], axis=1)


def patch_kernels(inner_options: dict) -> None:
    import nnmd_kernels.descriptor_numba as K
    import nnmd_kernels.training as T
    from nnmd_kernels.descriptor import ChebyshevDescriptor

    orig = {n: getattr(K, n) for n in ("descriptors", "descriptors_vjp", "descriptors_jvp", "pair_jacobian")}

    def stacked(name, axis):
        def f(desc, *args):
            if not isinstance(desc, TwoBlocks):
                return orig[name](desc, *args)
            return np.concatenate([orig[name](p, *args) for p in desc.parts], axis=axis)
        return f

    def vjp(desc, rij, pair_i, type_j, n, dG):
        if not isinstance(desc, TwoBlocks):
            return orig["descriptors_vjp"](desc, rij, pair_i, type_j, n, dG)
        return sum(orig["descriptors_vjp"](p, rij, pair_i, type_j, n, np.ascontiguousarray(g))
                   for p, g in zip(desc.parts, desc.split(dG)))

    K.descriptors = stacked("descriptors", 1)
    K.descriptors_jvp = stacked("descriptors_jvp", 1)
    K.pair_jacobian = stacked("pair_jacobian", 1)  # (P, F, 3): features on axis 1
    K.descriptors_vjp = vjp

    def make(species, **options):
        return TwoBlocks(ChebyshevDescriptor(species, **options),
                         ChebyshevDescriptor(species, **{**options, **inner_options}))

    T.ChebyshevDescriptor = make  # training builds its descriptor through this name


def rmse_by_group(pot, structures) -> dict:
    """Energy (meV/atom) and force (meV/A) RMSE, overall and per mlearn group (`nnmd test`'s numbers)."""
    from services.trainer.evaluate import evaluate

    groups = [s.name.split()[-1] for s in structures]  # read_mlearn_json names end in the group
    res = evaluate(pot, structures, groups)

    def rmse(e: dict) -> dict:
        return {"E": round(e["energy_rmse_mev_per_atom"], 2), "F": round(e["force_rmse_mev_per_angstrom"], 1)}

    return {**rmse(res["overall"]), **{g: rmse(e) for g, e in res["groups"].items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--inner", default='{"n_radial": 4, "r_radial": 4.5, "n_angular": 8, "r_angular": 4.5}',
                    help="ChebyshevDescriptor options of the second block, JSON (default: 4 radial + 8 "
                         "angular orders to 4.5 A)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--config", default="{}", help="TrainConfig overrides on the accurate preset, JSON")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    import nnmd_kernels.training as T
    from services.runtime.threads import blas_one_thread
    from services.trainer.data import read_mlearn_json
    from services.trainer.run import load_config

    inner, over = json.loads(args.inner), json.loads(args.config)
    patch_kernels(inner)
    cfg = load_config(None, {"seed": args.seed, **over}, preset="accurate")
    train, test = read_mlearn_json(DATA / "training.json"), read_mlearn_json(DATA / "test.json")
    t0 = time.perf_counter()
    with blas_one_thread():  # as `nnmd train` does
        pot = T.train(train, cfg).potential
    print(json.dumps({"inner": inner, "config": over, "seed": args.seed, "features": pot.descriptor.n_features,
                      "train_s": round(time.perf_counter() - t0, 1), "test": rmse_by_group(pot, test),
                      "training": rmse_by_group(pot, train)}), flush=True)


if __name__ == "__main__":
    main()
