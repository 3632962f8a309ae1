"""Ionic-transport analysis of MD trajectories: MSD, diffusion, Nernst-Einstein, RDF.

Array-only numerics. Units: positions in Angstrom, times in ps, temperatures in K.
Index names: t = frame, i/j = atom, a/b = Cartesian component.
"""

from nnmd_kernels.analysis.blocking import BlockedMean, blocked_mean
from nnmd_kernels.analysis.rdf import rdf
from nnmd_kernels.analysis.transport import (
    A2_PER_PS_TO_CM2_PER_S,
    DiffusionFit,
    diffusion_coefficient,
    msd,
    nernst_einstein_conductivity,
    remove_drift,
    unwrap,
)

__all__ = [
    "A2_PER_PS_TO_CM2_PER_S",
    "BlockedMean",
    "blocked_mean",
    "DiffusionFit",
    "diffusion_coefficient",
    "msd",
    "nernst_einstein_conductivity",
    "rdf",
    "remove_drift",
    "unwrap",
]
