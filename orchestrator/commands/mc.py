"""`nnmd mc`: Metropolis Monte Carlo with a trained NNP, and the "unknown" structures it visits.

Moves: translate an atom, swap the species of two atoms, exchange an atom with a vacancy
site (element X in the structure file). Every --every steps the current structure goes to
--traj and, when histograms are available (--training-data or --store) or an ensemble
spread threshold is set, is classified as known/unknown; unknown structures go to
--unknown-out and, with --reference, are labelled and added to --store (source "mc").
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from services.reference.spec import SPEC_HELP


def register(sub) -> None:
    p = sub.add_parser("mc", help="Metropolis Monte Carlo with a model (translate, swap, "
                       "vacancy moves); extract and label unknown structures",
                       description=__doc__)
    p.add_argument("--model", required=True, metavar="MODEL.nnmd")
    p.add_argument("--structure", required=True, metavar="FILE",
                   help="starting structure, any format ASE reads; vacancy sites are element X")
    p.add_argument("--steps", type=int, required=True, help="Monte Carlo moves")
    p.add_argument("--temperature", type=float, required=True, help="K")
    p.add_argument("--translate-step", type=float, default=0.1,
                   help="max displacement of a translate move, A (default 0.1)")
    p.add_argument("--moves", default="translate=1", metavar="KIND=W,...",
                   help="move weights, e.g. translate=1,swap=0.2,vacancy=0.1 (default translate=1)")
    p.add_argument("--move-temperature", default="", metavar="KIND=K,...",
                   help="per-move temperatures, e.g. swap=1500")
    p.add_argument("--fixed", default="", metavar="SPEC",
                   help="sites never moved: indices/ranges '0-15,20', 'tag=1' (ASE tags) or a "
                        "file of indices; FixAtoms constraints in the structure are added")
    p.add_argument("--energy-window", default="", metavar="EMIN,EMAX",
                   help="reject states whose energy per atom leaves [EMIN, EMAX] eV/atom "
                        "relative to the start, e.g. --energy-window=-0.5,0.5")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--every", type=int, default=10,
                   help="write/check the structure every this many steps (default 10)")
    p.add_argument("--traj", default=None, metavar="OUT.extxyz", help="trajectory (all sites)")
    p.add_argument("--force", action="store_true",
                   help="replace --traj / --unknown-out if they exist")
    g = p.add_argument_group("unknown structures")
    g.add_argument("--training-data", nargs="+", default=None, metavar="FILE",
                   help="training structures for the descriptor histograms: extxyz (or anything "
                        "ASE reads), mlearn JSON, n2p2 input.data, a DeePMD folder or a store")
    g.add_argument("--training-data-format", default=None, metavar="FORMAT",
                   help="format of the --training-data files (default: detected)")
    g.add_argument("--store", default=None, metavar="DIR",
                   help="Zarr store: the histograms' training data unless --training-data is "
                        "given, and where --reference labels go")
    g.add_argument("--bins", type=int, default=20, help="histogram bins per feature")
    g.add_argument("--min-count", type=int, default=1,
                   help="a bin with fewer training atoms is rare (default 1: only empty bins)")
    g.add_argument("--min-unknown-atoms", type=int, default=1,
                   help="unknown atoms that make a structure unknown (default 1)")
    g.add_argument("--max-energy-std", type=float, default=None,
                   help="ensemble spread (eV/atom) above which a structure is unknown")
    g.add_argument("--max-unknown", type=int, default=50,
                   help="stop collecting after this many unknown structures (default 50)")
    g.add_argument("--unknown-out", default=None, metavar="FILE.extxyz")
    g.add_argument("--reference", default=None, metavar="SPEC",
                   help=f"label the unknown structures ({SPEC_HELP}) and add them to --store")
    g.add_argument("--campaign", default="mc", help="campaign name of the labels in the store")
    p.set_defaults(func=cmd_mc)


# ------------------------------------------------------------------ argument parsing


def parse_weights(text: str, flag: str) -> dict:
    from nnmd_kernels.mc import MOVES

    out = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        kind, eq, value = item.partition("=")
        if not eq or kind.strip() not in MOVES:
            raise ValueError(f"{flag}: {item!r} is not KIND=VALUE with KIND one of {MOVES}")
        try:
            out[kind.strip()] = float(value)
        except ValueError:
            raise ValueError(f"{flag}: {value!r} in {item!r} is not a number") from None
    return out


def parse_fixed(text: str, atoms) -> tuple:
    """Indices from '0-15,20', 'tag=1[,2]' or a file of indices, plus FixAtoms constraints."""
    from ase.constraints import FixAtoms

    fixed = set()
    for c in atoms.constraints:
        if isinstance(c, FixAtoms):
            fixed.update(int(i) for i in c.get_indices())
    text = text.strip()
    if text.startswith("tag="):
        tags = {int(t) for t in text[4:].split(",") if t.strip()}
        fixed.update(int(i) for i in np.flatnonzero(np.isin(atoms.get_tags(), list(tags))))
    elif text and Path(text).is_file():
        words = Path(text).read_text().replace(",", " ").split()
        fixed.update(_indices(" ".join(words).replace(" ", ","), f"--fixed {text}"))
    elif text:
        fixed.update(_indices(text, "--fixed"))
    bad = [i for i in fixed if not 0 <= i < len(atoms)]
    if bad:
        raise ValueError(f"--fixed: index {bad[0]} is out of range for {len(atoms)} sites "
                         "(indices start at 0)")
    return tuple(sorted(fixed))


def _indices(text: str, flag: str) -> list:
    out = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        a, dash, b = item.partition("-")
        try:
            out.extend(range(int(a), int(b) + 1) if dash else [int(a)])
        except ValueError:
            raise ValueError(f"{flag}: {item!r} is not an index or a range like 0-15") from None
    return out


def parse_window(text: str):
    if not text:
        return None
    parts = text.split(",")
    try:
        lo, hi = (float(x) for x in parts)
    except ValueError:
        raise ValueError(f"--energy-window: {text!r} is not EMIN,EMAX in eV/atom, "
                         "e.g. -0.5,0.5") from None
    return lo, hi


# ------------------------------------------------------------------ the command


def training_histograms(pot, args, log):
    """Histograms of the model's descriptors over --training-data files or the --store."""
    from nnmd_kernels.novelty import FeatureHistograms
    from services.trainer.formats import canonical_format, read_structures_for

    structures = []
    if args.training_data:
        fmt = getattr(args, "training_data_format", None)
        fmt = canonical_format(fmt) if fmt else None
        for f in args.training_data:
            frames = read_structures_for("--training-data", f, fmt)
            structures += [(a.positions, a.numbers, a.cell[:] if a.pbc.any() else None, a.pbc)
                           for a in frames]
        where = " ".join(args.training_data)
    else:
        from services.store import Store

        for rec in Store(args.store, read_only=True).read():
            s = rec.structure
            structures.append((s.positions, s.numbers, s.cell, s.pbc))
        where = args.store
    G, T, skipped = [], [], 0
    for pos, num, cell, pbc in structures:
        num = np.asarray(num)
        real = num > 0
        try:
            res = pot.compute(pos[real], num[real], cell, pbc, forces=False)
        except ValueError:  # other elements than the model's
            skipped += 1
            continue
        G.append(res.descriptors)
        T.append(pot.types_of(num[real]))
    if not G:
        raise ValueError(f"no training structures with the model's elements in {where}")
    log(f"histograms from {len(G)} training structures ({sum(len(t) for t in T)} atoms) in "
        f"{where}" + (f"; {skipped} skipped (other elements)" if skipped else ""))
    return FeatureHistograms.build(np.concatenate(G), np.concatenate(T), pot.species,
                                   n_bins=args.bins)


def _atoms(state, real_only: bool, info: dict):
    from ase import Atoms

    keep = state.numbers != 0 if real_only else slice(None)
    a = Atoms(numbers=state.numbers[keep], positions=state.positions[keep],
              cell=state.cell, pbc=state.pbc)
    a.info.update(info)
    return a


def cmd_mc(args) -> int:
    import ase.io

    from nnmd_kernels import Potential
    from nnmd_kernels import mc as kmc
    from nnmd_kernels.novelty import NoveltyRule, classify

    def log(msg):
        print(msg, flush=True)

    from orchestrator.commands._output import check_out

    t0 = time.perf_counter()
    if args.steps < 0 or args.every < 1:
        raise ValueError("--steps must be >= 0 and --every >= 1")
    for option, path in (("--traj", args.traj), ("--unknown-out", args.unknown_out)):
        if path:
            check_out(path, args.force, option)
    if args.reference and not args.store:
        raise ValueError("--reference needs --store DIR to add the labelled structures to")
    pot = Potential.load(args.model)
    if not Path(args.structure).is_file():
        raise FileNotFoundError(f"--structure {args.structure}: no such file")
    from services.trainer.formats import read_structure

    atoms = read_structure(args.structure)
    numbers = np.asarray(atoms.numbers)
    from ase.data import atomic_numbers, chemical_symbols

    known = {atomic_numbers[s] for s in pot.species}
    bad = [i for i, z in enumerate(numbers) if z != 0 and z not in known]
    if bad:
        raise ValueError(f"--structure {args.structure}: element {chemical_symbols[numbers[bad[0]]]}"
                         f" (atom {bad[0]}) is not in the model; the model knows "
                         f"{', '.join(pot.species)} (vacancy sites are element X)")
    moves = {"translate": 0.0, **parse_weights(args.moves, "--moves")}
    cfg = kmc.MCConfig(temperature=args.temperature, max_displacement=args.translate_step,
                       move_temperatures=parse_weights(args.move_temperature,
                                                       "--move-temperature"),
                       fixed=parse_fixed(args.fixed, atoms),
                       energy_window=parse_window(args.energy_window), **moves)
    rule = NoveltyRule(min_count=args.min_count, min_atoms=args.min_unknown_atoms,
                       max_energy_std=args.max_energy_std)
    backend = None
    if args.reference:
        from services.reference.spec import make_backend

        try:
            backend = make_backend(args.reference)
        except ImportError as exc:
            raise ValueError(f"--reference {args.reference}: {exc}") from exc
    hist = training_histograms(pot, args, log) if (args.training_data or args.store) else None
    novelty = hist is not None or rule.max_energy_std is not None

    energy = kmc.NNPEnergy(pot)
    cell = atoms.cell[:] if atoms.pbc.any() else None
    state = kmc.init(atoms.positions, numbers, cell, atoms.pbc, cfg, energy, args.seed)
    ws = kmc.workspace_for(state, cfg, energy)
    n_real = state.n_atoms
    log(f"nnmd mc: {n_real} atoms + {len(numbers) - n_real} vacancy sites, {args.steps} steps "
        f"at {args.temperature:g} K, moves "
        + ", ".join(f"{k}={w:g}" for k, w in moves.items() if w > 0)
        + (f", {len(cfg.fixed)} fixed" if cfg.fixed else "")
        + f"; E0 = {state.energy0:.4f} eV/atom")
    traj = Path(args.traj) if args.traj else None
    if traj is not None and traj.exists():
        traj.unlink()  # --force was given (checked before the run): frames are appended
    unknown, checked, last_moves = [], 0, -1
    done, t_mc = 0, 0.0
    report_every = max(1, args.steps // 10)
    next_report = report_every
    while done < args.steps:
        n = min(args.every, args.steps - done)
        t = time.perf_counter()
        state = kmc.run(state, cfg, energy, n, ws)
        t_mc += time.perf_counter() - t
        done += n
        info = {"step": state.step, "energy": state.energy}
        if traj is not None:
            ase.io.write(traj, _atoms(state, False, info), format="extxyz", append=True)
        n_moves = sum(state.accepted.values())
        if novelty and n_moves != last_moves and len(unknown) < args.max_unknown:
            last_moves = n_moves  # an unchanged state is not checked twice
            real = state.numbers != 0
            res = pot.compute(state.positions[real], state.numbers[real], state.cell,
                              state.pbc, forces=False)
            v = classify(hist, rule, res.descriptors, pot.types_of(state.numbers[real]),
                         res.energy_std)
            checked += 1
            if v.unknown:
                unknown.append(_atoms(state, True, {
                    **info, "n_unknown_atoms": v.n_unknown_atoms,
                    "energy_std_per_atom": v.energy_std_per_atom, "reasons": ",".join(v.reasons)}))
        if done >= next_report or done == args.steps:
            next_report += report_every
            acc = sum(state.accepted.values()) / max(1, sum(state.tried.values()))
            log(f"  step {state.step:>8d}  E {state.energy / n_real:+.5f} eV/atom  "
                f"acceptance {acc:.3f}" + (f"  unknown {len(unknown)}/{checked}" if novelty else ""))
    if args.unknown_out and unknown:
        from orchestrator.commands._output import atomic_path

        with atomic_path(args.unknown_out) as tmp:
            ase.io.write(tmp, unknown, format="extxyz")
    stored, failed = _label_and_store(backend, unknown, args, log) if backend else (0, 0)

    log(f"done in {time.perf_counter() - t0:.1f} s ({1e3 * t_mc / max(1, args.steps):.2f} ms "
        "per move)")
    for k in kmc.MOVES:
        if state.tried[k]:
            log(f"  {k:<9s} tried {state.tried[k]:>8d}  accepted {state.accepted[k]:>8d}  "
                f"({state.accepted[k] / state.tried[k]:.3f})")
    if novelty:
        log(f"  unknown structures: {len(unknown)} of {checked} checked"
            + (f" -> {args.unknown_out}" if args.unknown_out and unknown else ""))
    if backend is not None:
        log(f"  labels stored: {stored} in {args.store} (campaign {args.campaign}, source mc)"
            + (f"; {failed} reference failures" if failed else ""))
    return 1 if failed else 0


def _label_and_store(backend, unknown, args, log):
    from services.reference.spec import settings_hash
    from services.runtime.convert import LabelArrays, from_atoms
    from services.store import Provenance, Record, Store

    if not unknown:
        return 0, 0
    log(f"labelling {len(unknown)} unknown structures with {backend.name} ...")
    results = backend.compute(unknown)
    ref_hash = settings_hash(backend)
    records, failed = [], 0
    for a, r in zip(unknown, results):
        if not r.ok:
            failed += 1
            print(f"  step {a.info['step']}: {r}", file=sys.stderr)
            continue
        structure, _ = from_atoms(a)
        labels = LabelArrays(float(r.energy), np.asarray(r.forces, dtype=float),
                             None if r.stress is None else np.asarray(r.stress, dtype=float))
        records.append(Record(structure, labels, Provenance(
            campaign=args.campaign, chain="mc", step=int(a.info["step"]), source="mc",
            accepted=True, reference_settings_hash=ref_hash,
            wall_time=float(r.info.get("wall_s", float("nan"))))))
    if records:
        writer = Store(args.store).writer()
        try:
            writer.append(records)
        finally:
            writer.close()
    return len(records), failed
