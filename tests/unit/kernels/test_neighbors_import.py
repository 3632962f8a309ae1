"""Building a neighbour list does not load torch or cupy (vesin would, when installed)."""

import subprocess
import sys

SCRIPT = """
import sys
import numpy as np
from nnmd_kernels.neighbors import naive_pairs, neighbor_pairs
x = np.random.default_rng(0).random((12, 3)) * 5.0
p = neighbor_pairs(x, 5.0 * np.eye(3), True, 3.0)
q = naive_pairs(x, 5.0 * np.eye(3), True, 3.0)
assert len(p) == len(q) > 0
print(sorted(m for m in ("torch", "cupy") if m in sys.modules))
try:
    import torch  # noqa: F401  (still importable afterwards, where installed)
    print("torch importable")
except ImportError:
    print("no torch")
"""


def test_neighbor_list_loads_neither_torch_nor_cupy():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                         timeout=120, check=True).stdout.splitlines()
    assert out[0] == "[]", out
    assert out[1] in ("torch importable", "no torch")
