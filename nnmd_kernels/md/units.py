"""MD units: Angstrom, fs, eV, amu (velocities in A/fs), and the conversions, written once.

Derived from CODATA 2018 exact/recommended values.
"""

AMU_KG = 1.66053906660e-27
EV_J = 1.602176634e-19
KB_EV_PER_K = 8.617333262e-5  # Boltzmann constant, eV/K

# kinetic energy: 1 amu * (A/fs)^2 in eV  (1 A/fs = 1e5 m/s)
MVV_TO_EV = AMU_KG * 1.0e10 / EV_J  # = 103.6427...
# acceleration: a [A/fs^2] = F [eV/A] / (m [amu] * MVV_TO_EV)

EV_PER_A3_TO_BAR = EV_J * 1.0e30 / 1.0e5  # 1 eV/A^3 = 1.602e6 bar = 160.2 GPa
BAR_TO_EV_PER_A3 = 1.0 / EV_PER_A3_TO_BAR
FS_TO_PS = 1.0e-3
