"""MD units: Angstrom, fs, eV, amu (velocities in A/fs), and the conversions, written once.

Derived from CODATA 2018 exact/recommended values.

Pressures a user gives or reads are in GPa (CLI, specs, Python APIs, reports, the gRPC
contracts); kernels work in eV/A^3, and LAMMPS (units metal) in bar. `pressure_gpa`
reads a user's pressure and refuses a value written in another unit, naming the
conversion.
"""

from __future__ import annotations

import math
import numbers
import re

AMU_KG = 1.66053906660e-27
EV_J = 1.602176634e-19
KB_EV_PER_K = 8.617333262e-5  # Boltzmann constant, eV/K

# kinetic energy: 1 amu * (A/fs)^2 in eV  (1 A/fs = 1e5 m/s)
MVV_TO_EV = AMU_KG * 1.0e10 / EV_J  # = 103.6427...
# acceleration: a [A/fs^2] = F [eV/A] / (m [amu] * MVV_TO_EV)

EV_PER_A3_TO_BAR = EV_J * 1.0e30 / 1.0e5  # 1 eV/A^3 = 1.602e6 bar = 160.2 GPa
BAR_TO_EV_PER_A3 = 1.0 / EV_PER_A3_TO_BAR
EV_PER_A3_TO_GPA = EV_J * 1.0e30 / 1.0e9  # 1 eV/A^3 = 160.2 GPa
GPA_TO_EV_PER_A3 = 1.0 / EV_PER_A3_TO_GPA  # 1 GPa = 6.24e-3 eV/A^3
GPA_TO_BAR = 1.0e4  # LAMMPS units metal
BAR_TO_GPA = 1.0e-4
FS_TO_PS = 1.0e-3

MAX_PRESSURE_GPA = 1000.0  # |P| beyond this is taken for a value in another unit
MIN_COMPRESSIBILITY_PER_GPA = 1.0e-4  # bulk modulus 10 TPa: no material is that stiff

# other pressure units (lower case, spaces removed) -> their value in GPa
_OTHER_UNITS = {
    "bar": ("bar", BAR_TO_GPA), "bars": ("bar", BAR_TO_GPA),
    "kbar": ("kbar", 0.1), "kbars": ("kbar", 0.1),
    "atm": ("atm", 1.01325e-4),
    "pa": ("Pa", 1.0e-9), "hpa": ("hPa", 1.0e-7), "kpa": ("kPa", 1.0e-6),
    "mpa": ("MPa", 1.0e-3), "tpa": ("TPa", 1.0e3),
    "psi": ("psi", 6.894757293168361e-6),
    "ev/a^3": ("eV/A^3", EV_PER_A3_TO_GPA), "ev/a3": ("eV/A^3", EV_PER_A3_TO_GPA),
}
_NUMBER_UNIT = re.compile(r"([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*(\S.*)")


def _unit_key(unit: str) -> str:
    u = unit.strip().lower().replace(" ", "").replace("**", "^").replace("å", "a").replace("³", "^3")
    for long in ("angstrom", "ang"):
        u = u.replace(long, "a")
    return u


def _fmt(x: float) -> str:
    return f"{x:.12g}"


def _write(field: str, value: float) -> str:
    return f"write {field} {_fmt(value)}" if field.startswith("-") else \
        f"write {field}: {_fmt(value)}"


def pressure_gpa(value, field: str = "--pressure") -> float:
    """A pressure in GPa from a number (GPa) or a string: "1.5", "1.5GPa", "1.5 gpa".

    A string in another unit (bar, kbar, atm, Pa, kPa, MPa, psi, eV/A^3, ...) raises
    ValueError naming `field` and the value in GPa; so do non-finite values, |P| > 1000
    GPa (a value in bar, most likely) and anything unparseable. Pure: no I/O.
    """
    if isinstance(value, str):
        text = value.strip()
        try:
            p = float(text)
        except ValueError:
            m = _NUMBER_UNIT.fullmatch(text)
            if m is None:
                raise ValueError(f"{field} {value!r}: not a pressure; pressures are in GPa "
                                 f"(a number, optionally followed by GPa)") from None
            number, unit = m.group(1), m.group(2)
            key = _unit_key(unit)
            if unit.strip().lower() == "gpa":
                p = float(number)
            elif key in _OTHER_UNITS:
                name, to_gpa = _OTHER_UNITS[key]
                gpa = float(number) * to_gpa
                raise ValueError(f"{field} {number} {name}: pressures are in GPa; {number} "
                                 f"{name} = {_fmt(gpa)} GPa, {_write(field, gpa)}") from None
            else:
                raise ValueError(f"{field} {value!r}: unknown unit {unit.strip()!r}; pressures "
                                 "are in GPa (a number, optionally followed by GPa)") from None
    elif isinstance(value, numbers.Real) and not isinstance(value, bool):
        p = float(value)
    else:
        raise ValueError(f"{field}: expected a pressure in GPa (a number), got {value!r}")
    if not math.isfinite(p):
        raise ValueError(f"{field} {p}: not a finite pressure; pressures are in GPa "
                         "(1 bar = 1e-4 GPa)")
    if abs(p) > MAX_PRESSURE_GPA:
        raise ValueError(f"{field} {_fmt(p)}: {_fmt(p)} GPa is beyond any MD pressure "
                         f"(|P| <= {MAX_PRESSURE_GPA:g} GPa); is it in bar? pressures are in "
                         f"GPa (1 bar = 1e-4 GPa; {_fmt(p)} bar = {_fmt(p * BAR_TO_GPA)} GPa)")
    return p


def compressibility_per_gpa(value, field: str = "--compressibility") -> float:
    """A barostat compressibility in 1/GPa (> 0). Values below 1e-4 /GPa (a bulk modulus
    above 10 TPa) raise ValueError: most likely they are in 1/bar (1/bar = 1e4 /GPa)."""
    try:
        if isinstance(value, bool):
            raise TypeError
        beta = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{field}: expected a compressibility in 1/GPa (a number), "
                         f"got {value!r}") from None
    if not (math.isfinite(beta) and beta > 0):
        raise ValueError(f"{field} {value}: the compressibility must be a finite number "
                         "> 0, in 1/GPa")
    if beta < MIN_COMPRESSIBILITY_PER_GPA:
        raise ValueError(f"{field} {_fmt(beta)}: {_fmt(beta)} /GPa is a bulk modulus of "
                         f"{1.0 / beta:.3g} GPa; is it in 1/bar? compressibilities are in "
                         f"1/GPa (1/bar = 1e4 /GPa; {_fmt(beta)} /bar = "
                         f"{_fmt(beta * GPA_TO_BAR)} /GPa)")
    return beta
