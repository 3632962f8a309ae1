"""Anisotropic NPT relaxes a tetragonally strained cell to the reference's c/a.

Cu (ASE's EMT as the reference, and as the proposal force field) in a 32-atom
conventional fcc supercell, with c stretched by 5%: the reference's own equilibrium
shape (found here independently, by relaxing the cell with ASE's optimiser) is cubic.
Isotropic volume moves keep c/a at 1.05 for ever; anisotropic moves bring it back.
"""

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.data import atomic_masses

from nnmd_kernels.slhmc import SLHMCConfig, init_chain, step


def strained_cu(c_strain=0.05):
    atoms = bulk("Cu", "fcc", a=3.59, cubic=True).repeat((2, 2, 2))
    cell = atoms.cell[:].copy()
    cell[2] *= 1.0 + c_strain
    atoms.set_cell(cell, scale_atoms=True)
    return atoms


def emt_fns(atoms):
    calc_atoms = atoms.copy()
    calc_atoms.calc = EMT()

    def force_fn(x, cell):
        calc_atoms.set_cell(cell, scale_atoms=False)
        calc_atoms.positions = x
        e = calc_atoms.get_potential_energy()
        return e, calc_atoms.get_forces(), np.zeros((3, 3))

    def energy(x, cell):
        return force_fn(x, cell)[0]
    return force_fn, energy


def reference_c_over_a(atoms) -> float:
    from ase.filters import FrechetCellFilter
    from ase.optimize import BFGS

    a = atoms.copy()
    a.calc = EMT()
    BFGS(FrechetCellFilter(a), logfile=None).run(fmax=1e-4, steps=500)
    lengths = a.cell.lengths()
    return float(lengths[2] / np.sqrt(lengths[0] * lengths[1]))


def c_over_a(cell) -> float:
    lengths = np.linalg.norm(cell, axis=1)
    return float(lengths[2] / np.sqrt(lengths[0] * lengths[1]))


@pytest.mark.parametrize("cell_moves", ["anisotropic", "triclinic", "isotropic"])
def test_npt_relaxes_c_over_a_to_the_reference(cell_moves):
    atoms = strained_cu()
    force_fn, energy = emt_fns(atoms)
    target = reference_c_over_a(atoms)
    assert abs(target - 1.0) < 1e-3  # EMT Cu is cubic: the strain is pure misfit
    cfg = SLHMCConfig(temperature=100.0, dt=2.0, n_md=5, n_md_min=5, adapt=False,
                      ensemble="npt", pressure=0.0, volume_every=2, cell_moves=cell_moves,
                      volume_step=0.01 if cell_moves != "triclinic" else 0.004)
    s = init_chain(atoms.positions, atoms.numbers, atomic_masses[atoms.numbers], atoms.cell[:],
                   True, energy(atoms.positions, atoms.cell[:]), cfg, seed=(5,))
    ratios = []
    for _ in range(240):
        s, _, _, _ = step(s, cfg, force_fn, energy)
        ratios.append(c_over_a(s.cell))
    late = np.array(ratios[-80:])
    if cell_moves == "isotropic":  # the shape cannot change: stuck at the strained c/a
        np.testing.assert_allclose(late, 1.05, rtol=1e-9)
        return
    # thermal shape fluctuations at 100 K are ~0.5% for 32 atoms
    assert abs(late.mean() - target) < 0.01, (late.mean(), target)
    assert s.volume_accepted > 10
