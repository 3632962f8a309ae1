"""A stand-in for ``mpirun -np N pw.x -in pw.in`` in unit tests (no Quantum ESPRESSO).

Run as ``python fake_pw.py -np N pw.x -in pw.in`` (the test's QEConfig.mpirun is a
one-line shell script that execs this). It reads pw.in from the working folder and
behaves as pw.x would for the settings the tests look at, following the JSON rule
in $FAKE_PW_RULE:

  need_beta_le     the SCF "converges" only when mixing_beta <= this (else exit 2
                   with pw.x's "convergence NOT achieved")
  crash_calls      1-based call numbers that crash ("Error in routine ...", exit 1)
  crash_restarted  crash whenever startingpot = 'file' found a density to read
  log              file that gets one JSON line per call: the settings it saw

A converged run prints energy, forces and stress blocks, the k-point list, and
writes ``out/<prefix>.save`` (charge density, xml, wavefunctions, a pseudopotential
copy), like pw.x 6.7.
"""

import json
import os
import re
import sys
from pathlib import Path


def value(text, key, default=None):
    m = re.search(rf"^\s*{key}\s*=\s*(.+?)\s*$", text, re.M | re.I)
    return default if m is None else m.group(1).strip().strip("'\"")


def main() -> int:
    rule = json.loads(os.environ.get("FAKE_PW_RULE", "{}"))
    text = Path("pw.in").read_text()
    prefix = value(text, "prefix", "pwscf")
    nat = int(value(text, "nat"))
    beta = float(value(text, "mixing_beta", "0.7").replace("d", "e"))
    save = Path("out") / f"{prefix}.save"
    restart_rho = value(text, "startingpot") == "file" and (save / "charge-density.dat").exists()
    restart_wfc = value(text, "startingwfc") == "file" and (save / "wfc1.dat").exists()
    calls = 1
    if rule.get("log"):
        log = Path(rule["log"])
        calls = len(log.read_text().splitlines()) + 1 if log.exists() else 1
        with open(log, "a") as f:
            f.write(json.dumps({
                "call": calls, "cwd": os.getcwd(), "mixing_beta": value(text, "mixing_beta"),
                "electron_maxstep": value(text, "electron_maxstep"),
                "degauss": value(text, "degauss"), "startingpot": value(text, "startingpot"),
                "startingwfc": value(text, "startingwfc"), "restart_rho": restart_rho,
                "restart_wfc": restart_wfc}) + "\n")
    out = ["     Program PWSCF v.6.7MaX starts", "     No symmetry found",
           "     number of k points=     1  Marzari-Vanderbilt smearing, width (Ry)=  0.0200",
           "        k(    1) = (   0.0000000   0.0000000   0.0000000), wk =   2.0000000"]
    if restart_rho:
        out.append("     The initial density is read from file :")
    if restart_wfc:
        out.append("     Starting wfcs from file")
    if calls in rule.get("crash_calls", ()) or (rule.get("crash_restarted") and restart_rho):
        out += ["     %%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%",
                "     Error in routine read_rhog (2):", "     error reading file",
                "     %%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%"]
        print("\n".join(out))
        return 1
    if beta > float(rule.get("need_beta_le", 1e9)):
        out.append("     convergence NOT achieved after   4 iterations: stopping")
        print("\n".join(out))
        return 2
    iters = 5 if restart_rho else 8
    out += ["!    total energy              =     -63.31432021 Ry",
            f"     convergence has been achieved in   {iters} iterations",
            "     Forces acting on atoms (cartesian axes, Ry/au):", ""]
    out += [f"     atom {i + 1:4d} type  1   force =     0.00100000    0.00000000   -0.00100000"
            for i in range(nat)]
    out += ["", "     total   stress  (Ry/bohr**3)                   (kbar)     P=      -1.00",
            "  -0.00001000   0.00000000   0.00000000           -1.00        0.00        0.00",
            "   0.00000000  -0.00001000   0.00000000            0.00       -1.00        0.00",
            "   0.00000000   0.00000000  -0.00001000            0.00        0.00       -1.00",
            "", "   JOB DONE."]
    save.mkdir(parents=True, exist_ok=True)
    (save / "charge-density.dat").write_bytes(b"not a real density")
    (save / "data-file-schema.xml").write_text("<qes/>")
    (save / "wfc1.dat").write_bytes(b"wfc")
    (save / "Si.pz-vbc.UPF").write_text("pseudopotential copy")
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
