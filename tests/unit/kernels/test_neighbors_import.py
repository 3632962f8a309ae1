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


THREADS = """
import threading
import numpy as np
from nnmd_kernels.neighbors import neighbor_pairs
x = np.random.default_rng(0).random((12, 3)) * 5.0
errors, go = [], threading.Barrier(8)
def build():
    go.wait()
    try:
        neighbor_pairs(x, 5.0 * np.eye(3), True, 3.0)
    except Exception as exc:
        errors.append(repr(exc))
threads = [threading.Thread(target=build) for _ in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(errors)
"""


def test_first_neighbor_lists_from_many_threads_at_once():
    """No thread sees vesin half-imported (two campaigns starting in one coordinator)."""
    for _ in range(3):
        out = subprocess.run([sys.executable, "-c", THREADS], capture_output=True, text=True,
                             timeout=120, check=True).stdout.strip()
        assert out == "[]", out
