"""pw.x restarts along a chain: keep the converged SCF of a structure, seed a later
structure of the same chain with it.

What QE 6.7 reads (PW/src/potinit.f90, wfcinit.f90, pw_restart_new.f90; checked
by experiment on Debian's pw.x 6.7):

- ``startingpot = 'file'``: ``<outdir>/<prefix>.save/charge-density.dat`` (``.hdf5``
  in HDF5 builds), plus ``paw.txt`` with PAW, ``occup.txt`` with DFT+U and
  ``ekin-density.dat`` with meta-GGA. Missing file: pw.x prints "Cannot read rho :
  file not found" and starts from atomic charges.
- ``startingwfc = 'file'``: ``<prefix>.save/data-file-schema.xml`` (``wf_collected``
  must be true, the 6.7 default) and ``wfc<k>.dat`` (``wfcup<k>``/``wfcdw<k>`` with
  LSDA) for every k-point of the *new* run. Missing: "Cannot read wfcs: file not
  found" and a randomised atomic start.

Both arrays are placed by the index of the G-vector (k+G) in the new run's own
ordering, not by Miller index. So a restart is only meaningful with the same
cell (the same G-vector list) and, for wavefunctions, the same k-point list
(which pw.x derives from the structure's symmetry). Those are the "stale"
rules below; a stale or missing kept SCF means a cold start.

A plain copy of the old density is a poor start for moved atoms (the charge
around each atom is left behind). As QE's MD does (``pot_extrapolation =
'atomic'``), the density written for the new run is ``rho_old - atomic(old
positions) + atomic(new positions)``, the atomic charges computed here from
each pseudopotential's ``PP_RHOATOM`` exactly as pw.x's ``atomic_rho_g``.
It is only a starting guess: the SCF converges to the same ground state
whatever it starts from.

Layout: ``<restart_root>/<chain key path>/<last id component>@scf/`` holding the
kept files of ``<prefix>.save`` (no pseudopotential copies) and ``meta.json``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms, units

log = logging.getLogger("nnmd.reference.qe")

LEAF = "@scf"  # suffix of a kept folder; '@' never survives id sanitising
TMP = "@tmp"  # suffix of a folder being written
META = "meta.json"
CELL_TOL_A = 1e-6  # largest change of a cell component (A) that still counts as "the same"
SYM_TOL = 1e-4  # crystal-coordinate tolerance of the symmetry check (pw.x: 1e-5)
_SAFE = re.compile(r"[^A-Za-z0-9._-]")
_KEEP_PATTERNS = (r"charge-density\..*", r"data-file-schema\.xml", r"wfc(up|dw)?\d+\..*",
                  r"paw\.txt", r"occup\.txt", r"ekin-density\..*")


class RestartIdError(ValueError):
    """An nnmd_id / nnmd_restart_from that cannot name a folder under restart_root."""


def id_parts(sid, field: str = "nnmd_id") -> list[str]:
    """The folder components of an id ('cu/chain000/17' -> ['cu', 'chain000', '17']).

    Components are split at '/' (and '\\'); empty and '.' components are dropped;
    characters other than letters, digits, '.', '_', '-' become '_'. A '..'
    component is refused: ids name folders *below* restart_root.
    """
    if not isinstance(sid, str) or not sid.strip():
        raise RestartIdError(f"atoms.info[{field!r}] = {sid!r} is not a non-empty string; use "
                             "'campaign/chain/step', e.g. 'cu/chain000/17'")
    raw = [p for p in re.split(r"[/\\]+", sid.strip()) if p not in ("", ".")]
    if any(p == ".." for p in raw):
        raise RestartIdError(f"atoms.info[{field!r}] = {sid!r} has a '..' component; ids name "
                             "folders below restart_root and may not climb out of it; use "
                             "'campaign/chain/step', e.g. 'cu/chain000/17'")
    if not raw:
        raise RestartIdError(f"atoms.info[{field!r}] = {sid!r} names no folder; use "
                             "'campaign/chain/step', e.g. 'cu/chain000/17'")
    out = []
    for p in raw:
        s = _SAFE.sub("_", p)
        if s.startswith("."):
            s = "_" + s  # no hidden names (and never '.' or '..' after mapping)
        if len(s) > 120:
            s = s[:100] + "-" + hashlib.sha256(p.encode()).hexdigest()[:16]
        out.append(s)
    return out


def chain_key(sid: str) -> str:
    """The chain an id belongs to: the id without its last component."""
    return "/".join(id_parts(sid)[:-1])


# ------------------------------------------------------------------ symmetry
def _lattice_rotations(cell: np.ndarray, tol: float = 1e-5) -> np.ndarray:
    """Integer matrices W (entries -1, 0, 1; crystal coordinates, f' = W f) that map
    the lattice onto itself: W^T G W = G with G the metric of the cell's rows."""
    g = cell @ cell.T
    ws = np.array(list(itertools.product((-1, 0, 1), repeat=9)), dtype=float).reshape(-1, 3, 3)
    ws = ws[np.abs(np.abs(np.linalg.det(ws)) - 1) < 1e-9]
    gt = np.einsum("nji,jk,nkl->nil", ws, g, ws)
    ok = np.abs(gt - g).max(axis=(1, 2)) < tol * np.abs(g).max()
    return ws[ok]


def has_symmetry(cell, frac, labels, tol: float = SYM_TOL, max_atoms: int = 2000) -> bool:
    """True when an operation other than the identity (a lattice rotation with a
    fractional translation, or a pure translation) maps the structure onto itself
    within ``tol`` (crystal coordinates), atoms of a species onto the same species.

    Looser than pw.x (1e-5), so 'no symmetry' here means none for pw.x either and
    pw.x's k-point list is then the full grid reduced by time reversal alone. Above
    ``max_atoms`` the check is skipped and the answer is True (the safe side).
    """
    frac = np.asarray(frac, float)
    n = len(frac)
    if n > max_atoms:
        return True
    lab = np.asarray(labels)
    codes = np.unique(lab, return_inverse=True)[1]
    counts = np.bincount(codes)
    ref = int(np.flatnonzero(codes == np.argmin(counts))[0])  # an atom of the rarest species
    same_as_ref = np.flatnonzero(codes == codes[ref])
    same = codes[:, None] == codes[None, :]
    eye = np.eye(3)
    for w in _lattice_rotations(np.asarray(cell, float)):
        rot = frac @ w.T  # (n, 3): W f_i
        ts = frac[same_as_ref] - rot[ref]  # translations that take ref onto an atom of its kind
        if np.allclose(w, eye):
            d = ts - np.round(ts)
            ts = ts[np.abs(d).max(axis=1) > tol]  # the identity itself is not a symmetry
        for t in ts:
            ok = True
            for lo in range(0, n, 16):  # a few atoms rule out most candidates
                d = rot[lo:lo + 16, None, :] + t - frac[None, :, :]
                d -= np.round(d)
                hit = (np.abs(d).max(axis=2) < tol) & same[lo:lo + 16]
                if not hit.any(axis=1).all():
                    ok = False
                    break
            if ok:
                return True
    return False


# ------------------------------------------------------------------ pw.x output bits
def parse_k_points(text: str) -> tuple[int | None, list[str] | None, int | None]:
    """(number of k-points, their printed Cartesian list or None, nsym) from a pw.x output."""
    m = re.search(r"number of k points=\s*(\d+)", text)
    nks = int(m.group(1)) if m else None
    kl = None
    if m:
        rows = re.findall(r"k\(\s*\d+\) = \(\s*([-\d.]+\s+[-\d.]+\s+[-\d.]+)\), wk =\s*([-\d.]+)",
                          text[m.end():])
        if nks is not None and len(rows) >= nks:
            kl = [" ".join(r[0].split()) + " " + r[1] for r in rows[:nks]]
    nsym = None
    if re.search(r"No symmetry found", text):
        nsym = 1
    else:
        s = re.search(r"(\d+)\s+Sym\. Ops\.", text)
        nsym = int(s.group(1)) if s else None
    return nks, kl, nsym


def read_what_was_restarted(text: str) -> tuple[bool, bool]:
    """(density read from file, wavefunctions read from file) according to pw.x."""
    rho = "The initial density is read from file" in text
    wfc = "Starting wfcs from file" in text or "Starting wfc from file" in text
    return rho, wfc


# ------------------------------------------------------------------ charge density file
def _read_records(path: Path) -> list[bytes]:
    """The records of a Fortran sequential unformatted file (4-byte markers)."""
    data = path.read_bytes()
    out, pos = [], 0
    while pos < len(data):
        (n,) = np.frombuffer(data, "<i4", 1, pos)
        if n < 0 or pos + 8 + n > len(data):
            raise ValueError(f"{path}: not a plain Fortran unformatted file")
        out.append(data[pos + 4:pos + 4 + n])
        (m,) = np.frombuffer(data, "<i4", 1, pos + 4 + n)
        if m != n:
            raise ValueError(f"{path}: record markers disagree")
        pos += 8 + n
    return out


def _write_records(path: Path, records: list[bytes]) -> None:
    with open(path, "wb") as f:
        for r in records:
            marker = np.int32(len(r)).tobytes()
            f.write(marker + r + marker)


@dataclass(frozen=True)
class RadialRho:
    """A pseudopotential's atomic charge 4 pi r^2 rho(r) on its radial mesh (bohr),
    cut at 10 bohr and to an odd number of points, as pw.x does."""

    r: np.ndarray
    rab: np.ndarray
    rho_at: np.ndarray

    def transform(self, gnorm: np.ndarray) -> np.ndarray:
        """int rho_at(r) sin(g r)/(g r) dr by pw.x's Simpson rule, for |G| = gnorm (1/bohr)."""
        out = np.empty(len(gnorm))
        n = len(self.r)
        wts = np.zeros(n)  # Simpson weights of pw.x's simpson() (odd n)
        wts[0:n - 1:2] += 1
        wts[1:n - 1:2] += 4
        wts[2:n:2] += 1
        wts *= self.rab / 3.0
        fw = self.rho_at * wts
        for lo in range(0, len(gnorm), 2048):
            x = gnorm[lo:lo + 2048, None] * self.r[None, :]
            with np.errstate(invalid="ignore", divide="ignore"):
                j0 = np.where(x < 1e-8, 1.0, np.sin(x) / np.where(x == 0, 1, x))
            out[lo:lo + 2048] = j0 @ fw
        return out


_RADIAL_CACHE: dict[tuple[str, float], RadialRho | None] = {}


def radial_rho(pseudo: Path) -> RadialRho | None:
    """PP_R, PP_RAB, PP_RHOATOM of a UPF file (v1 or v2); None without them."""
    try:
        key = (str(pseudo), pseudo.stat().st_mtime)
    except OSError:
        return None
    if key in _RADIAL_CACHE:
        return _RADIAL_CACHE[key]
    out = None
    try:
        text = pseudo.read_text(errors="replace")

        def arr(tag):
            m = re.search(rf"<{tag}(?:\s[^>]*)?>(.*?)</{tag}\s*>", text, re.S)
            if m is None:
                raise ValueError(tag)
            return np.array(m.group(1).replace("D", "E").replace("d", "e").split(), float)

        r, rab, rho = arr("PP_R"), arr("PP_RAB"), arr("PP_RHOATOM")
        n = min(len(r), len(rab), len(rho))
        above = np.flatnonzero(r[:n] > 10.0)
        msh = int(above[0]) + 1 if above.size else n
        msh = 2 * ((msh + 1) // 2) - 1
        out = RadialRho(r[:msh], rab[:msh], rho[:msh])
    except (OSError, ValueError):
        out = None
    _RADIAL_CACHE[key] = out
    return out


def structure_factor(mill: np.ndarray, frac: np.ndarray) -> np.ndarray:
    """sum_j exp(-2 pi i m . f_j) for every Miller index m (rows of ``mill``), as a
    product of three per-axis tables (pw.x's struct_fact sign convention)."""
    lo = int(mill.min())
    k = np.arange(lo, int(mill.max()) + 1)
    tables = np.exp(-2j * np.pi * frac[:, :, None] * k[None, None, :])  # (atoms, 3, k)
    idx = mill - lo
    out = np.empty(len(mill), complex)
    for a in range(0, len(mill), 16384):
        i = idx[a:a + 16384]
        out[a:a + 16384] = (tables[:, 0, i[:, 0]] * tables[:, 1, i[:, 1]]
                            * tables[:, 2, i[:, 2]]).sum(axis=0)
    return out


def extrapolate_density(src: Path, dst: Path, old: Atoms, new: Atoms, labels: list[str],
                        pseudos: dict[str, Path]) -> None:
    """Write ``dst`` = charge-density.dat ``src`` with the atomic charges moved from
    ``old`` to ``new`` positions (total charge, spin parts untouched).
    Raises ValueError when the file or a pseudopotential cannot be used."""
    recs = _read_records(src)
    if len(recs) < 4 or len(recs[0]) != 12:
        raise ValueError(f"{src}: unexpected layout")
    _gamma, ngm, nspin = np.frombuffer(recs[0], "<i4")
    b = np.frombuffer(recs[1], "<f8").reshape(3, 3)  # rows b1, b2, b3, 1/bohr
    mill = np.frombuffer(recs[2], "<i4").reshape(ngm, 3)
    if len(recs) != 3 + nspin or len(recs[3]) != 16 * ngm:
        raise ValueError(f"{src}: {len(recs)} records for nspin = {nspin}")
    rho = np.frombuffer(recs[3], "<c16").copy()
    omega = (2 * np.pi) ** 3 / abs(np.linalg.det(b))  # bohr^3
    vol_new = new.get_volume() / units.Bohr**3
    if abs(omega - vol_new) > 1e-6 * omega:
        raise ValueError(f"{src}: cell volume {omega:.6f} bohr^3, the structure's {vol_new:.6f}")
    gvec = mill @ b
    gnorm = np.sqrt((gvec**2).sum(axis=1))
    shells, inv = np.unique(np.round(gnorm, 10), return_inverse=True)
    f_old = old.get_scaled_positions(wrap=False)
    f_new = new.get_scaled_positions(wrap=False)
    delta = np.zeros(ngm, complex)
    for label in sorted(set(labels)):
        rad = radial_rho(pseudos[label])
        if rad is None:
            raise ValueError(f"no PP_RHOATOM in {pseudos[label]}")
        idx = [i for i, lab in enumerate(labels) if lab == label]
        form = rad.transform(shells)[inv]
        delta += form * (structure_factor(mill, f_new[idx]) - structure_factor(mill, f_old[idx]))
    rho += delta / omega
    recs[3] = rho.astype("<c16").tobytes()
    _write_records(dst, recs)


# ------------------------------------------------------------------ the store
@dataclass(frozen=True)
class RestartPlan:
    """A kept SCF found compatible with a new structure."""

    source_id: str
    folder: Path
    meta: dict
    use_wfc: bool  # wavefunctions too (same k-point list), not only the density
    why_no_wfc: str | None


class RestartStore:
    """Kept SCFs under ``root``, for one QE input (``settings``: its hash)."""

    def __init__(self, root: Path, settings: str, max_displacement: float):
        self.root = Path(root)
        self.settings = settings
        self.max_displacement = max_displacement

    # -- paths
    def folder(self, sid: str, field: str = "nnmd_id") -> Path:
        parts = id_parts(sid, field)
        path = self.root.joinpath(*parts[:-1], parts[-1] + LEAF)
        root = self.root.resolve()
        if not path.resolve().is_relative_to(root):  # a symlink inside the root
            raise RestartIdError(f"atoms.info[{field!r}] = {sid!r} resolves to {path.resolve()}, "
                                 f"outside restart_root {root}; remove the link or use another "
                                 "restart_root")
        return path

    # -- find
    def plan(self, sid: str, atoms: Atoms, labels: list[str], always_same_k: bool
             ) -> RestartPlan | str:
        """The kept SCF of ``sid`` if it may seed ``atoms``; otherwise why not (stale)."""
        try:
            folder = self.folder(sid, "nnmd_restart_from")
        except RestartIdError as exc:
            return str(exc)
        try:
            meta = json.loads((folder / META).read_text())
        except FileNotFoundError:
            return (f"no kept SCF for nnmd_restart_from = {sid!r} (looked in {folder}); "
                    "cold start")
        except (OSError, ValueError) as exc:
            return f"kept SCF of {sid!r} unreadable ({exc}); cold start"
        if meta.get("id") != sid:
            return (f"{folder} holds the SCF of {meta.get('id')!r}, not {sid!r} (ids that "
                    "differ only in characters outside [A-Za-z0-9._-] share a folder); cold start")
        if meta.get("settings") != self.settings:
            return (f"kept SCF of {sid!r} was computed with other QE settings (input or "
                    "pseudopotentials changed); cold start")
        if meta.get("labels") != list(labels):
            return (f"kept SCF of {sid!r} has other atoms or another species order "
                    f"({len(meta.get('labels', []))} atoms) than this structure "
                    f"({len(labels)} atoms); cold start")
        old_cell = np.array(meta["cell"])
        dcell = float(np.abs(old_cell - atoms.cell[:]).max())
        if dcell > CELL_TOL_A:
            return (f"cell differs from that of {sid!r} by {dcell:.3g} A (> {CELL_TOL_A:g}); pw.x "
                    "maps kept densities by G-vector index, so only the same cell can restart; "
                    "cold start")
        old = Atoms(symbols=["X"] * len(labels), positions=meta["positions"], cell=old_cell,
                    pbc=True)
        d = atoms.get_scaled_positions(wrap=False) - old.get_scaled_positions(wrap=False)
        d -= np.round(d)
        disp = float(np.linalg.norm(d @ atoms.cell[:], axis=1).max())
        if disp > self.max_displacement:
            return (f"an atom moved {disp:.3g} A since {sid!r} (> restart_max_displacement "
                    f"{self.max_displacement:g} A); cold start")
        if not (folder / "charge-density.dat").exists() and not (
                folder / "charge-density.hdf5").exists():
            return f"kept SCF of {sid!r} has no charge density; cold start"
        use_wfc, why = True, None
        if not always_same_k:
            if meta.get("nsym") != 1:
                use_wfc, why = False, f"{sid!r} had symmetry (nsym = {meta.get('nsym')})"
            elif has_symmetry(atoms.cell[:], atoms.get_scaled_positions(), labels):
                use_wfc, why = False, "this structure has symmetry"
            if not use_wfc:
                why += ": its k-point list may differ, so only the density is reused"
        return RestartPlan(sid, folder, meta, use_wfc, why)

    def stage(self, plan: RestartPlan, save_dir: Path, atoms: Atoms, labels: list[str],
              pseudos: dict[str, Path], extrapolate: bool) -> str:
        """Copy the kept files into ``save_dir`` (<outdir>/<prefix>.save of the new run);
        returns how the density was prepared ('atomic' or 'copy' with a reason)."""
        save_dir.mkdir(parents=True, exist_ok=True)
        for f in plan.folder.iterdir():
            if f.name == META:
                continue
            if not plan.use_wfc and (f.name.startswith("wfc") or f.name.endswith(".xml")):
                continue
            shutil.copyfile(f, save_dir / f.name)
        how = "copy"
        if extrapolate and (plan.folder / "charge-density.dat").exists():
            old = Atoms(symbols=["X"] * len(labels), positions=plan.meta["positions"],
                        cell=plan.meta["cell"], pbc=True)
            try:
                extrapolate_density(plan.folder / "charge-density.dat",
                                    save_dir / "charge-density.dat", old, atoms, labels, pseudos)
                how = "atomic"
            except (ValueError, KeyError, OSError) as exc:
                shutil.copyfile(plan.folder / "charge-density.dat",
                                save_dir / "charge-density.dat")
                how = f"copy ({exc})"
        return how

    # -- keep
    def save(self, sid: str, save_dir: Path, meta: dict) -> Path:
        """Keep the restart files of ``save_dir`` as ``sid`` (replacing an older copy)."""
        final = self.folder(sid)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f".{final.name[:-len(LEAF)]}-{uuid.uuid4().hex[:8]}{TMP}"
        tmp.mkdir()
        try:
            kept = []
            for f in save_dir.iterdir():
                if f.is_file() and any(re.fullmatch(p, f.name) for p in _KEEP_PATTERNS):
                    shutil.copyfile(f, tmp / f.name)
                    kept.append(f.name)
            if not any(n.startswith("charge-density.") for n in kept):
                raise FileNotFoundError(f"no charge-density file in {save_dir}")
            (tmp / META).write_text(json.dumps({**meta, "id": sid, "settings": self.settings,
                                                "files": sorted(kept), "saved": time.time()}))
            old = None
            if final.exists():
                old = final.parent / f".{final.name[:-len(LEAF)]}-{uuid.uuid4().hex[:8]}-old{TMP}"
                os.replace(final, old)
            os.replace(tmp, final)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final

    def prune(self, sid: str, restart_from: str | None) -> list[Path]:
        """Remove the chain's kept SCFs except ``sid``'s and ``restart_from``'s; returns
        what was removed. Also removes half-written folders older than an hour."""
        final = self.folder(sid)
        keep = {final.name}
        if restart_from:
            try:
                other = self.folder(restart_from, "nnmd_restart_from")
                if other.parent == final.parent:
                    keep.add(other.name)
            except RestartIdError:
                pass
        removed = []
        now = time.time()
        for p in final.parent.iterdir():
            if p.name.endswith(LEAF) and p.name not in keep and p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
            elif p.name.endswith(TMP) and p.is_dir():
                try:
                    if now - p.stat().st_mtime > 3600:
                        shutil.rmtree(p, ignore_errors=True)
                except OSError:
                    pass
        return removed
