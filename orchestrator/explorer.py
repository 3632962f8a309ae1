"""Metropolis explorers in a campaign: MC with the current NNP finds unknown structures.

The source's unknown-structure search (docs/source.md, "Metropolis Monte Carlo for
unknown structures") inside a campaign. Beside the SLHMC chains, E explorers each run
rounds of Metropolis MC (nnmd_kernels.mc: translate / swap / vacancy moves, local
energy updates) with the campaign's current model. Every `every` moves the structure is
checked against the histograms of the training data's descriptors (nnmd_kernels.novelty,
rebuilt for each model version from the campaign's labelled structures) and the model
ensemble's spread; up to `max_unknown` unknown structures a round are labelled by the
campaign's reference and stored with provenance source "mc" (chain "mcNNN", step = the
explorer's MC step). They count as new labels for re-training.

Resume: an explorer's checkpoint (key mcNNN, kind "mc") holds its round, the model
version of that round and its positions. A round is re-run from its checkpoint with the
same model and random stream, so it finds the same structures; those already stored are
not labelled again.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class ExplorerConfig:
    """Metropolis explorers of a campaign (the spec's `mc:` mapping)."""

    explorers: int = 1
    rounds: int = 3
    steps: int = 1000  # MC moves per round
    every: int = 50  # moves between novelty checks
    temperature: float = 1000.0  # K
    translate: float = 1.0
    swap: float = 0.0
    vacancy: float = 0.0
    max_displacement: float = 0.15  # A
    move_temperatures: dict = field(default_factory=dict)
    max_unknown: int = 4  # structures labelled per explorer per round
    bins: int = 20
    min_count: int = 1
    min_unknown_atoms: int = 1
    max_energy_std: float | None = None  # eV/atom
    max_structures: int = 400  # training structures sampled for the histograms

    def __post_init__(self):
        for name, lo in (("explorers", 1), ("rounds", 0), ("steps", 1), ("every", 1),
                         ("max_unknown", 0), ("bins", 2), ("min_count", 1),
                         ("min_unknown_atoms", 1), ("max_structures", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"mc.{name} must be a whole number >= {lo}, got {v!r}")
        if self.every > self.steps:
            raise ValueError(f"mc.every ({self.every}) must not exceed mc.steps ({self.steps})")
        self.mc_config()  # validates temperatures, weights, displacement

    def mc_config(self):
        from nnmd_kernels import mc as kmc

        try:
            return kmc.MCConfig(temperature=float(self.temperature),
                                translate=float(self.translate), swap=float(self.swap),
                                vacancy=float(self.vacancy),
                                max_displacement=float(self.max_displacement),
                                move_temperatures=dict(self.move_temperatures))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"mc.{exc}") from None

    def rule(self):
        from nnmd_kernels.novelty import NoveltyRule

        return NoveltyRule(min_count=self.min_count, min_atoms=self.min_unknown_atoms,
                           max_energy_std=self.max_energy_std)


def explorer_config(d: dict) -> ExplorerConfig | None:
    if not d:
        return None
    keys = [f.name for f in dataclasses.fields(ExplorerConfig)]
    unknown = [k for k in d if k not in keys]
    if unknown:
        raise ValueError(f"mc.{unknown[0]}: unknown field; known: {', '.join(keys)}")
    return ExplorerConfig(**d)


def explorer_name(e: int) -> str:
    return f"mc{e:03d}"


def histograms(potential, batch, n_bins: int, max_structures: int, seed: int):
    """Feature histograms of `potential`'s descriptors over (a sample of) the records."""
    from nnmd_kernels.novelty import FeatureHistograms

    idx = np.arange(len(batch))
    if len(idx) > max_structures:
        idx = np.sort(np.random.default_rng(seed).choice(idx, max_structures, replace=False))
    G, T = [], []
    for k in idx:
        s = batch.record(int(k)).structure
        try:
            res = potential.compute(s.positions, s.numbers, s.cell, s.pbc, forces=False)
        except ValueError:  # other elements than the model's
            continue
        G.append(res.descriptors)
        T.append(potential.types_of(s.numbers))
    if not G:
        return None
    return FeatureHistograms.build(np.concatenate(G), np.concatenate(T), potential.species,
                                   n_bins=n_bins)


def explore_round(potential, hist, cfg: ExplorerConfig, positions, numbers, cell, pbc,
                  seed, step0: int):
    """One round: cfg.steps Metropolis moves from `positions`; returns (final MCState,
    [(global step, positions, verdict reasons)] of up to max_unknown unknown structures)."""
    from nnmd_kernels import mc as kmc
    from nnmd_kernels.novelty import classify

    energy = kmc.NNPEnergy(potential)
    mcfg = cfg.mc_config()
    cell_or_none = cell if np.asarray(pbc).any() else None
    state = kmc.init(positions, numbers, cell_or_none, pbc, mcfg, energy, seed)
    ws = kmc.workspace_for(state, mcfg, energy)
    rule = cfg.rule()
    found, last_accepted = [], -1
    for _ in range(cfg.steps // cfg.every):
        state = kmc.run(state, mcfg, energy, cfg.every, ws)
        n_acc = sum(state.accepted.values())
        if n_acc == last_accepted or len(found) >= cfg.max_unknown:
            continue  # an unchanged state is not checked twice
        last_accepted = n_acc
        real = state.numbers != kmc.VACANCY
        res = potential.compute(state.positions[real], state.numbers[real], cell_or_none,
                                state.pbc, forces=False)
        v = classify(hist, rule, res.descriptors, potential.types_of(state.numbers[real]),
                     res.energy_std)
        if v.unknown:
            found.append((step0 + state.step, state.positions.copy(), ",".join(v.reasons)))
    return state, found


def acceptance(state) -> float:
    tried = sum(state.tried.values())
    return sum(state.accepted.values()) / tried if tried else math.nan
