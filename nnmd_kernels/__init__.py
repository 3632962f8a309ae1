"""nnmd_kernels: the numerics of nnmd. Arrays in, arrays out; no I/O but model files.

Main entry points:
    Potential            a Behler–Parrinello NNP (descriptor + networks + Delta baseline)
    ChebyshevDescriptor  the descriptor configuration
    NeighborList         Verlet-skin neighbour list
    nnmd_kernels.ase.NNPCalculator   ASE calculator (import separately: needs ASE)
"""

from .baseline import PairBaseline
from .descriptor import ChebyshevDescriptor
from .neighbors import NeighborList, Pairs, neighbor_pairs
from .network import ElementNetwork
from .potential import Potential, PotentialResult

# File formats and device backends register themselves with Potential when imported
# (potential.py imports none of them); importing them here keeps Potential.load/save
# (.nnmd, ffield.sannp) and backend="cuda" working for every user of the package.
from . import model_file, sannp  # noqa: E402,F401  isort: skip
from . import gpu  # noqa: E402,F401  isort: skip  (registers "cuda"; imports neither CuPy nor numba.cuda)

__version__ = "0.1.0"

__all__ = [
    "ChebyshevDescriptor",
    "ElementNetwork",
    "NeighborList",
    "PairBaseline",
    "Pairs",
    "Potential",
    "PotentialResult",
    "neighbor_pairs",
]
