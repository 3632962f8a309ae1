"""How much of the teacher's force is long-ranged? (docs/llzo.md, "Side measurements")

The teacher (buckingham.lammps) sums the formal-charge Coulomb interaction by Ewald. This
compares its forces on teacher MD frames with the same Buckingham terms plus a pairwise
damped shifted-force Coulomb sum (LAMMPS coul/dsf, Fennell & Gezelter 2006) truncated at
Rc: the RMS difference is the part of the force that a pairwise Coulomb sum within Rc
misses (not a strict bound for a many-body local model, but the scale of what a 5 A
descriptor has to infer from its neighbourhood).

    .venv/bin/python examples/llzo/longrange_check.py FRAMES.extxyz [...]

FRAMES: extxyz with the teacher's forces (e.g. benchmarks/llzo.py's WORK/md/teacher_*).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DSF = """# nnmd: elements Li La Zr O
# nnmd: charges 1.0 3.0 4.0 -2.0
pair_style hybrid/overlay buck 10.0 coul/dsf {alpha} {rc}
pair_coeff * * buck 0.0 1.0 0.0
pair_coeff 1 4 buck 426.480 0.3000 0.0
pair_coeff 2 4 buck 1439.7 0.3651 0.0
pair_coeff 3 4 buck 1453.8 0.3500 0.0
pair_coeff 4 4 buck 22764.0 0.1490 27.879
pair_coeff * * coul/dsf
"""


def main(paths) -> int:
    from ase.io import read

    from services.reference.spec import make_backend

    frames = [a for p in paths for a in read(p, index=":")]
    f_ref = np.concatenate([a.get_forces() for a in frames])
    print(f"{len(frames)} frames; teacher force RMS {1e3 * np.sqrt((f_ref ** 2).mean()):.1f} meV/A")
    with tempfile.TemporaryDirectory() as tmp:
        for alpha, rc in ((0.2, 5.0), (0.3, 5.0), (0.2, 7.0), (0.2, 10.0)):
            path = Path(tmp) / "dsf.lammps"
            path.write_text(DSF.format(alpha=alpha, rc=rc))
            backend = make_backend(f"lammps:{path}")
            f = np.concatenate([backend.compute([a])[0].forces for a in frames])
            print(f"coul/dsf alpha {alpha} /A, Rc {rc} A: RMS(F_Ewald - F_dsf) = "
                  f"{1e3 * np.sqrt(((f - f_ref) ** 2).mean()):.1f} meV/A")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
