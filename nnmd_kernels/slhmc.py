"""Self-learning hybrid Monte Carlo (SLHMC), exactly: pure numerics, no I/O.

Nagai et al., Phys. Rev. B 102, 041124 (2020); docs/slhmc.md, "What one chain step does".
A chain step is split where the reference (QE, EMT, ...) must be called, so that the
caller owns all I/O:

    prop = propose(state, config, force_fn)        # HMC trajectory with the NNP, or a volume move
    prop = screen(prop, config)                    # delayed acceptance, stage 1 (optional)
    e_ref = reference(prop.positions, prop.cell)   # caller; None when it failed
    state, accepted = finish(state, prop, e_ref, config)

Every random number is drawn from the chain's own stream (ChainState.rng_state), so a
step re-run from a checkpoint reproduces the same proposal and the same decision.

Units: positions and cell A (cell rows are lattice vectors), masses amu, velocities
A/fs, energies eV, time fs, temperature K, pressure eV/A^3.

Why the chain samples exp(-beta E_ref) however poor the NNP is:
- HMC move: momenta p ~ Maxwell-Boltzmann (all 3N components, no centre-of-mass
  projection: the NNP need not conserve momentum for the argument to hold); velocity
  Verlet with any force field is reversible and volume-preserving, so accepting with
  min(1, exp(-beta [H_ref(x', p') - H_ref(x, p)])), H_ref = E_ref + K, satisfies
  detailed balance for exp(-beta E_ref(x)) (Duane et al. 1987 with the NNP as the
  "shadow" force field).
- Cell move (NPT; scaled coordinates s = x H^-1 fixed, so x -> s H' and the Jacobian
  of x given H is V^N). The target is V^N exp(-beta [E_ref + P V]) times a flat
  measure on the cell variables that the move changes (`cell_moves`):
  * isotropic: V alone (shape fixed). Uniform steps in V give N ln(V'/V); a random
    walk in ln V adds the Jacobian dV = V d ln V, hence (N + 1) ln(V'/V).
  * anisotropic: the three lengths L_i = |h_i| at fixed angles, measure
    dL_1 dL_2 dL_3. A random walk in ln L_i (each independent) has Jacobian
    L_1 L_2 L_3, proportional to V at fixed angles, hence (N + 1) ln(V'/V).
  * triclinic: the six entries of the lower-triangular form of the cell, H = L Q
    (rows of H are lattice vectors; L lower triangular with L_ii > 0; Q the cell's
    orientation, which no move changes, so rotations are not sampled), measure
    prod dL_ij over i >= j. A symmetric random walk of those entries has no Jacobian,
    hence N ln(V'/V), V = L_11 L_22 L_33; steps with some L_ii <= 0 are outside the
    support and rejected without a reference call.
  The shape measures differ from each other only by factors of order one in the cell
  variables: their volume distributions agree to O(1/N), and each is exact for its own
  stated measure (tests/unit/slhmc/test_exactness.py checks each in closed form).
- Delayed acceptance (Christen & Fox, J. Comput. Graph. Stat. 14, 795 (2005)): stage 1
  accepts with a1 = min(1, r_nnp), r_nnp the same ratio with the NNP in place of the
  reference; only then is the reference called and stage 2 accepts with
  a2 = min(1, r_ref / r_nnp). The proposal terms (kinetic energy, P dV, N ln V'/V)
  cancel in r_ref / r_nnp, leaving exp(-beta [(E_ref' - E_ref) - (E_nnp' - E_nnp)]).
- A failed reference call (SCF not converged) rejects the move here; that biases the
  chain towards structures where the reference converges, so campaigns stop a chain
  whose reference keeps failing unless told to reject (orchestrator.slhmc, on_failure).

Learning, then production: adapting n from the acceptance rate, and re-training the NNP
from the chain's own history, make the kernel depend on the past, and an adaptive chain
is not guaranteed to sample the target. With `burn_in = B`, steps 1..B are the learning
phase (n adapts; campaigns re-train), and from step B + 1 on the kernel is fixed: n is
frozen (each trajectory length may still be drawn from the fixed jitter distribution,
which does not depend on the state), and campaigns pin the model version. The
production phase is then a Markov chain with exp(-beta E_ref) (NVT) or the NPT target
above as its stationary law, exactly, whatever the NNP.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from nnmd_kernels.md.integrators import init as md_init
from nnmd_kernels.md.integrators import nve
from nnmd_kernels.md.state import (
    fields_from_json,
    json_fields,
    kinetic_energy,
    make_rng,
    maxwell_boltzmann,
)
from nnmd_kernels.md.units import KB_EV_PER_K

ENSEMBLES = ("nvt", "npt")
VOLUME_PROPOSALS = ("lnV", "V")
CELL_MOVES = ("isotropic", "anisotropic", "triclinic")
MOVES = ("hmc", "volume")
PHASES = ("burn_in", "production")

# force_fn(positions (N, 3) A, cell (3, 3) A) -> (energy eV, forces (N, 3) eV/A, virial (3, 3) eV)
ForceFn = Callable[[np.ndarray, np.ndarray], tuple]


@dataclass(frozen=True)
class SLHMCConfig:
    """Settings of one chain. Validated here, with messages that say what to change.

    n_md: initial number of NVE steps per HMC move; adapted within [n_md_min, n_md_max]
      after every `adapt_window` HMC moves: multiplied by `adapt_factor` when the
      window's acceptance rate is >= adapt_up, divided when <= adapt_down; only in the
      learning phase (steps 1..burn_in; every step when burn_in is None).
    burn_in: steps of the learning phase; None = the whole run learns (no production
      phase, so no exactness claim).
    n_md_jitter: each trajectory length is drawn uniformly from
      [ceil((1 - jitter) n), n] (independent of the state, so still exact); breaks the
      resonance of a fixed n dt with a harmonic period.
    volume_every: in NPT every k-th step is a cell (volume) move, the others HMC moves.
    cell_moves: "isotropic" (V only), "anisotropic" (three lengths, fixed angles) or
      "triclinic" (the whole cell but its orientation); module docstring.
    volume_step: the cell step. isotropic: max |d ln V| ("lnV") or max |dV| in A^3
      ("V"); anisotropic: max |d ln L_i| of each length; triclinic: max |dL_ij| of each
      lower-triangular entry in units of the chain's length scale V_0^(1/3)
      (ChainState.cell_scale, from the starting cell).
    """

    temperature: float  # K
    dt: float = 1.0  # fs
    n_md: int = 20
    n_md_min: int = 10
    n_md_max: int = 2000
    adapt: bool = True
    adapt_up: float = 0.20
    adapt_down: float = 0.05
    adapt_window: int = 10
    adapt_factor: float = 1.5
    n_md_jitter: float = 0.0
    ensemble: str = "nvt"
    pressure: float = 0.0  # eV/A^3
    volume_every: int = 2
    volume_proposal: str = "lnV"
    volume_step: float = 0.02
    delayed_acceptance: bool = False
    cell_moves: str = "isotropic"
    burn_in: int | None = None

    def __post_init__(self):
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0 K, got {self.temperature}")
        if not self.dt > 0:
            raise ValueError(f"dt must be > 0 fs, got {self.dt}")
        if not 1 <= self.n_md_min <= self.n_md_max:
            raise ValueError(f"need 1 <= n_md_min <= n_md_max, got {self.n_md_min}, "
                             f"{self.n_md_max}")
        if not self.n_md_min <= self.n_md <= self.n_md_max:
            raise ValueError(f"n_md (md steps) must lie in [{self.n_md_min}, {self.n_md_max}], "
                             f"got {self.n_md}; change --md-steps or the bounds")
        if not 0 <= self.adapt_down < self.adapt_up <= 1:
            raise ValueError(f"need 0 <= adapt_down < adapt_up <= 1, got {self.adapt_down}, "
                             f"{self.adapt_up}")
        if self.adapt_window < 1 or not self.adapt_factor > 1:
            raise ValueError("adapt_window must be >= 1 and adapt_factor > 1")
        if not 0 <= self.n_md_jitter < 1:
            raise ValueError(f"n_md_jitter must be in [0, 1), got {self.n_md_jitter}")
        if self.ensemble not in ENSEMBLES:
            raise ValueError(f"ensemble must be one of {ENSEMBLES}, got {self.ensemble!r}")
        if self.volume_proposal not in VOLUME_PROPOSALS:
            raise ValueError(f"volume_proposal must be one of {VOLUME_PROPOSALS}, "
                             f"got {self.volume_proposal!r}")
        if self.volume_every < 1 or not self.volume_step > 0:
            raise ValueError("volume_every must be >= 1 and volume_step > 0")
        if self.ensemble == "npt" and self.volume_every < 2:
            raise ValueError("volume_every must be >= 2 in NPT (1 would never move the atoms)")
        if self.cell_moves not in CELL_MOVES:
            raise ValueError(f"cell_moves must be one of {', '.join(CELL_MOVES)}, got "
                             f"{self.cell_moves!r}")
        if self.cell_moves != "isotropic" and self.volume_proposal != "lnV":
            raise ValueError(f"volume_proposal {self.volume_proposal!r} is for isotropic cell "
                             f"moves only ({self.cell_moves} moves walk in the cell's own "
                             "variables); leave volume_proposal at 'lnV'")
        if self.burn_in is not None and (isinstance(self.burn_in, bool)
                                         or int(self.burn_in) != self.burn_in
                                         or self.burn_in < 0):
            raise ValueError(f"burn_in must be a whole number of steps >= 0 (or None: the "
                             f"whole run learns), got {self.burn_in!r}")

    @property
    def beta(self) -> float:
        """1/kT, 1/eV."""
        return 1.0 / (KB_EV_PER_K * self.temperature)


@dataclass(frozen=True, eq=False)
class ChainState:
    """One chain between steps. Frozen; to_dict/from_dict give a JSON checkpoint."""

    positions: np.ndarray  # (N, 3) A
    cell: np.ndarray  # (3, 3) A, rows = lattice vectors
    numbers: np.ndarray  # (N,) atomic numbers
    masses: np.ndarray  # (N,) amu
    pbc: np.ndarray  # (3,) bool
    energy_ref: float  # eV, reference energy at `positions`
    n_md: int  # current NVE steps per HMC move
    step: int = 0
    hmc_tried: int = 0
    hmc_accepted: int = 0
    volume_tried: int = 0
    volume_accepted: int = 0
    failed: int = 0  # reference failures (rejected moves)
    screened: int = 0  # rejected at delayed-acceptance stage 1 (no reference call)
    window_tried: int = 0  # HMC moves in the current adaptation window
    window_accepted: int = 0
    rng_state: dict | None = None
    cell_scale: float = 0.0  # A, V^(1/3) of the starting cell (triclinic step unit)
    accepted_step: int = 0  # the step whose proposal is the current state (0: the start)

    def replace(self, **changes) -> ChainState:
        return dataclasses.replace(self, **changes)

    @property
    def n_atoms(self) -> int:
        return len(self.numbers)

    @property
    def volume(self) -> float:
        return float(abs(np.linalg.det(self.cell)))

    def to_dict(self) -> dict:
        """Plain JSON types only (lists, numbers, strings)."""
        return json_fields(self)

    @classmethod
    def from_dict(cls, d: dict) -> ChainState:
        out = fields_from_json(cls, d)
        for name in ("positions", "cell", "masses"):
            out[name] = np.asarray(out[name], dtype=float)
        out["numbers"] = np.asarray(out["numbers"], dtype=int)
        out["pbc"] = np.asarray(out["pbc"], dtype=bool)
        out["energy_ref"] = float(out["energy_ref"])
        if "cell_scale" in out:
            out["cell_scale"] = float(out["cell_scale"])
        return cls(**out)


def init_chain(positions, numbers, masses, cell, pbc, energy_ref: float, config: SLHMCConfig,
               seed) -> ChainState:
    """A chain at step 0. seed: int or sequence of ints (e.g. (campaign_seed, chain_index))."""
    x = np.array(positions, dtype=float)
    n = len(x)
    if x.shape != (n, 3):
        raise ValueError(f"positions must have shape (N, 3), got {x.shape}")
    m = np.array(masses, dtype=float)
    if m.shape != (n,) or np.any(m <= 0):
        raise ValueError(f"masses must be ({n},) positive amu")
    if not np.isfinite(energy_ref):
        raise ValueError("energy_ref of the starting structure must be finite")
    rng = np.random.Generator(np.random.PCG64(seed))
    h = np.array(cell, dtype=float)
    volume = abs(np.linalg.det(h)) if h.shape == (3, 3) else 0.0
    return ChainState(positions=x, cell=h,
                      numbers=np.array(numbers, dtype=int), masses=m,
                      pbc=np.broadcast_to(np.asarray(pbc, bool), (3,)).copy(),
                      energy_ref=float(energy_ref), n_md=int(config.n_md),
                      rng_state=rng.bit_generator.state,
                      cell_scale=float(volume ** (1.0 / 3.0)) if volume > 0 else 0.0)


def phase(state: ChainState, config: SLHMCConfig) -> str:
    """The phase of the step that `state` is about to make: "burn_in" (learning: n adapts,
    campaigns re-train) for steps 1..burn_in, "production" (fixed kernel) after."""
    if config.burn_in is None or state.step < config.burn_in:
        return "burn_in"
    return "production"


# ----------------------------------------------------------------- acceptance rules


def hmc_log_acceptance(e_old, e_new, k_old, k_new, beta) -> float:
    """log of exp(-beta [(E(x') + K(p')) - (E(x) + K(p))]); energies eV, beta 1/eV."""
    return -beta * ((e_new + k_new) - (e_old + k_old))


def cell_jacobian_power(n_atoms: int, cell_moves: str = "isotropic",
                        proposal: str = "lnV") -> int:
    """k in the acceptance's k ln(V'/V) term: N from the scaled coordinates, plus one for
    a random walk in ln V (isotropic) or in the ln L_i (anisotropic); module docstring."""
    if cell_moves not in CELL_MOVES:
        raise ValueError(f"cell_moves must be one of {CELL_MOVES}, got {cell_moves!r}")
    if proposal not in VOLUME_PROPOSALS:
        raise ValueError(f"proposal must be one of {VOLUME_PROPOSALS}, got {proposal!r}")
    if cell_moves == "triclinic" or (cell_moves == "isotropic" and proposal == "V"):
        return n_atoms
    return n_atoms + 1


def volume_log_acceptance(e_old, e_new, v_old, v_new, n_atoms, pressure, beta,
                          proposal="lnV", cell_moves="isotropic") -> float:
    """log of exp(-beta [dE + P dV] + k ln(V'/V)), k = cell_jacobian_power(...):
    N (uniform in V; triclinic walk) or N + 1 (walk in ln V; anisotropic walk in ln L)."""
    k = cell_jacobian_power(n_atoms, cell_moves, proposal)
    return -beta * ((e_new - e_old) + pressure * (v_new - v_old)) + k * math.log(v_new / v_old)


def lower_triangular_form(cell) -> tuple[np.ndarray, np.ndarray]:
    """(L, Q) with cell = L @ Q, L lower triangular with L_ii > 0, Q orthogonal.

    Rows of `cell` are lattice vectors, so L holds the cell in the standard orientation
    (a along x, b in the xy plane) and Q is the cell's rotation (det Q = sign det cell).
    """
    h = np.asarray(cell, dtype=float)
    q, r = np.linalg.qr(h.T)  # h^T = q r, r upper triangular
    d = np.where(np.diag(r) < 0, -1.0, 1.0)
    r, q = d[:, None] * r, q * d[None, :]
    return r.T, q.T


def delayed_log_acceptance(log_r_ref, log_r_nnp) -> tuple[float, float]:
    """(log a1, log a2) of delayed acceptance (Christen & Fox 2005), a = min(1, ratio).

    log_r_nnp / log_r_ref: the log Metropolis-Hastings ratio of the move with the NNP /
    the reference energies (proposal terms included). Stage 2 uses r_ref / r_nnp.
    """
    return min(0.0, log_r_nnp), min(0.0, log_r_ref - log_r_nnp)


def accept(log_alpha: float, rng) -> bool:
    """Metropolis test: True with probability min(1, exp(log_alpha))."""
    if log_alpha >= 0.0:
        return True
    if not np.isfinite(log_alpha):
        return False
    return bool(np.log(rng.random()) < log_alpha)


def adapt_n_md(n_md: int, rate: float, config: SLHMCConfig) -> int:
    """Longer trajectories while the NNP is good (rate >= adapt_up), shorter when poor."""
    if rate >= config.adapt_up:
        n_md = math.ceil(n_md * config.adapt_factor)
    elif rate <= config.adapt_down:
        n_md = math.floor(n_md / config.adapt_factor)
    return int(min(config.n_md_max, max(config.n_md_min, n_md)))


# ----------------------------------------------------------------- one step


@dataclass(frozen=True, eq=False)
class Proposal:
    """A proposed end point and everything the decision needs except E_ref there.

    log_q: the log MH ratio's part that does not involve E_ref: -beta (K' - K) for HMC,
      -beta P dV + N' ln(V'/V) for a volume move.
    e_nnp_old / e_nnp_new: NNP energies (eV) at the start and the end, same model
      (NaN when not computed: volume moves without delayed acceptance).
    screened_out: rejected by delayed-acceptance stage 1 (do not call the reference).
    """

    kind: str  # "hmc" | "volume"
    positions: np.ndarray  # (N, 3) A
    cell: np.ndarray  # (3, 3) A
    log_q: float
    e_nnp_old: float
    e_nnp_new: float
    n_md: int  # NVE steps run (0 for a volume move)
    rng_state: dict
    kinetic_old: float = float("nan")  # eV
    kinetic_new: float = float("nan")  # eV
    screened_out: bool = False

    @property
    def log_r_nnp(self) -> float:
        """Stage-1 log ratio: the NNP in place of the reference."""
        return self.log_q - self.beta * (self.e_nnp_new - self.e_nnp_old)

    beta: float = 0.0  # 1/eV, for log_r_nnp


def move_kind(state: ChainState, config: SLHMCConfig) -> str:
    """NVT: always HMC. NPT: every volume_every-th step (1-based) is a volume move."""
    if config.ensemble == "npt" and (state.step + 1) % config.volume_every == 0:
        return "volume"
    return "hmc"


def propose(state: ChainState, config: SLHMCConfig, force_fn: ForceFn,
            energy_fn: Callable | None = None) -> Proposal:
    """The next move's proposal. force_fn drives the NVE trajectory (the current NNP).

    energy_fn(positions, cell) -> eV is used for volume moves under delayed acceptance
    (default: force_fn's energy).
    """
    if move_kind(state, config) == "volume":
        return _propose_volume(state, config, energy_fn or (lambda x, h: force_fn(x, h)[0]))
    return _propose_hmc(state, config, force_fn)


def _hmc_draws(state, config):
    """(rng, trajectory length, momenta as velocities) of an HMC move, drawn from the
    chain's stream in this order (propose and ProposalBatch both)."""
    rng = make_rng(state.rng_state)
    n = state.n_md
    if config.n_md_jitter > 0:
        lo = max(1, math.ceil((1.0 - config.n_md_jitter) * n))
        n = int(rng.integers(lo, n + 1))
    v = maxwell_boltzmann(state.masses, config.temperature, rng, zero_momentum=False)
    return rng, n, v


def _hmc_proposal(state, config, rng, n, positions, velocities, e0, k0, e1) -> Proposal:
    """The HMC move's Proposal from its trajectory's end (positions, velocities, energy
    e1) and start (energy e0, kinetic energy k0)."""
    k1 = kinetic_energy(velocities, state.masses)
    ok = np.isfinite(positions).all() and np.isfinite(k1) and np.isfinite(e1)
    return Proposal(kind="hmc", positions=positions, cell=state.cell.copy(),
                    log_q=-config.beta * (k1 - k0) if ok else -np.inf,
                    e_nnp_old=float(e0), e_nnp_new=float(e1), n_md=n,
                    rng_state=rng.bit_generator.state, kinetic_old=k0, kinetic_new=k1,
                    beta=config.beta)


def _propose_hmc(state, config, force_fn) -> Proposal:
    rng, n, v = _hmc_draws(state, config)
    _, step_fn = nve(force_fn, config.dt)
    s = md_init(force_fn, state.positions, state.masses, state.numbers, state.cell, state.pbc,
                velocities=v)
    e0, k0 = s.energy, kinetic_energy(s.velocities, s.masses)
    for _ in range(n):
        s = step_fn(s)
    return _hmc_proposal(state, config, rng, n, s.positions, s.velocities, e0, k0, s.energy)


def _propose_volume(state, config, energy_fn) -> Proposal:
    """A cell move at fixed scaled coordinates (module docstring for the measures)."""
    rng = make_rng(state.rng_state)
    h0, v0 = state.cell, state.volume
    step = config.volume_step
    h1 = None
    if config.cell_moves == "isotropic":
        u = 2.0 * rng.random() - 1.0
        v1 = v0 * math.exp(step * u) if config.volume_proposal == "lnV" else v0 + step * u
        if v1 > 0:
            h1 = h0 * (v1 / v0) ** (1.0 / 3.0)
    elif config.cell_moves == "anisotropic":
        u = 2.0 * rng.random(3) - 1.0
        h1 = h0 * np.exp(step * u)[:, None]  # row i (lattice vector i) scaled, angles kept
    else:  # triclinic: a symmetric walk of the lower-triangular entries, orientation kept
        if not state.cell_scale > 0:
            raise ValueError("triclinic cell moves need the chain's length scale "
                             "(ChainState.cell_scale > 0): start the chain with init_chain "
                             "from a cell of nonzero volume")
        low, rot = lower_triangular_form(h0)
        u = np.tril(2.0 * rng.random((3, 3)) - 1.0)
        low1 = low + step * state.cell_scale * u
        if np.all(np.diag(low1) > 0):
            h1 = low1 @ rot
    if h1 is None:  # outside the support: rejected, never sent to the reference
        return Proposal("volume", state.positions, state.cell, -np.inf, np.nan, np.nan, 0,
                        rng.bit_generator.state, beta=config.beta)
    v1 = float(abs(np.linalg.det(h1)))
    x1 = state.positions @ np.linalg.solve(h0, h1)  # x H0^-1 H1: scaled coordinates kept
    log_q = volume_log_acceptance(0.0, 0.0, v0, v1, state.n_atoms, config.pressure,
                                  config.beta, config.volume_proposal, config.cell_moves)
    e0 = e1 = np.nan
    if config.delayed_acceptance:
        e0, e1 = float(energy_fn(state.positions, state.cell)), float(energy_fn(x1, h1))
    return Proposal("volume", x1, h1, log_q, e0, e1, 0, rng.bit_generator.state,
                    beta=config.beta)


def screen(prop: Proposal, config: SLHMCConfig) -> Proposal:
    """Delayed acceptance stage 1 with the NNP; a no-op unless config.delayed_acceptance."""
    if not config.delayed_acceptance:
        return prop
    rng = make_rng(prop.rng_state)
    log_a1, _ = delayed_log_acceptance(0.0, prop.log_r_nnp)
    passed = accept(log_a1, rng)
    return dataclasses.replace(prop, screened_out=not passed, rng_state=rng.bit_generator.state)


def needs_reference(prop: Proposal) -> bool:
    """Whether the caller must compute E_ref at prop.positions / prop.cell."""
    return not prop.screened_out and np.isfinite(prop.log_q)


def finish(state: ChainState, prop: Proposal, e_ref_new: float | None,
           config: SLHMCConfig) -> tuple[ChainState, bool]:
    """The Metropolis decision and the next state (step + 1, counters, n adapted).

    e_ref_new: the reference energy at the proposal (eV), or None when the reference
    failed or was not called (screened out, outside the support): the move is rejected.
    """
    rng = make_rng(prop.rng_state)
    beta = config.beta
    failed = needs_reference(prop) and (e_ref_new is None or not np.isfinite(e_ref_new))
    if e_ref_new is None or not needs_reference(prop) or failed:
        accepted = False
    else:
        log_r_ref = prop.log_q - beta * (e_ref_new - state.energy_ref)
        if config.delayed_acceptance:
            _, log_a = delayed_log_acceptance(log_r_ref, prop.log_r_nnp)
        else:
            log_a = log_r_ref
        accepted = accept(log_a, rng)
    changes = {"step": state.step + 1, "failed": state.failed + int(failed),
               "screened": state.screened + int(prop.screened_out),
               "rng_state": rng.bit_generator.state}
    if accepted:
        changes.update(positions=np.array(prop.positions), cell=np.array(prop.cell),
                       energy_ref=float(e_ref_new), accepted_step=state.step + 1)
    if prop.kind == "hmc":
        wt, wa = state.window_tried + 1, state.window_accepted + int(accepted)
        n_md = state.n_md
        if wt >= config.adapt_window:
            if config.adapt and phase(state, config) == "burn_in":
                n_md = adapt_n_md(n_md, wa / wt, config)
            wt, wa = 0, 0
        changes.update(hmc_tried=state.hmc_tried + 1,
                       hmc_accepted=state.hmc_accepted + int(accepted),
                       window_tried=wt, window_accepted=wa, n_md=n_md)
    else:
        changes.update(volume_tried=state.volume_tried + 1,
                       volume_accepted=state.volume_accepted + int(accepted))
    return state.replace(**changes), accepted


def step(state: ChainState, config: SLHMCConfig, force_fn: ForceFn,
         reference_energy: Callable) -> tuple[ChainState, Proposal, float | None, bool]:
    """One whole step with an in-process reference_energy(positions, cell) -> eV or None.

    Convenience for tests and small drivers; campaign runners call the pieces.
    Returns (new state, proposal, E_ref at the proposal or None, accepted).
    """
    prop = screen(propose(state, config, force_fn), config)
    e_ref = reference_energy(prop.positions, prop.cell) if needs_reference(prop) else None
    new, accepted = finish(state, prop, e_ref, config)
    return new, prop, e_ref, accepted


# ------------------------------------------------------- many chains at once


class _Trajectory:
    """One chain's HMC trajectory inside a ProposalBatch (velocity Verlet, as `nve`)."""

    __slots__ = ("key", "state", "config", "rng", "n", "done", "x", "v", "f", "e", "e0",
                 "k0", "system")

    def __init__(self, key, state: ChainState, config: SLHMCConfig, system) -> None:
        self.key, self.state, self.config, self.system = key, state, config, system
        self.rng, self.n, self.v = _hmc_draws(state, config)  # the draws of _propose_hmc
        self.done = 0
        self.x = np.array(state.positions, dtype=float)
        self.f = self.e = self.e0 = self.k0 = None

    def proposal(self) -> Proposal:
        return _hmc_proposal(self.state, self.config, self.rng, self.n, self.x, self.v,
                             self.e0, self.k0, self.e)


class ProposalBatch:
    """Many chains' proposals with one potential, their HMC trajectories batched.

    `add(key, state, config)` any time; each `advance()` moves every trajectory one
    velocity-Verlet step with one evaluation of the potential for all of them
    (nnmd_kernels.md.batch.batch_forces) and returns the (key, Proposal) pairs that
    ended, or (key, exception) for a chain whose evaluation failed (overlapping atoms:
    the ValueError that `propose` raises). Trajectories of different lengths leave as
    they end and new ones join at the next step (continuous batching), so no chain
    waits for a longer one. Each chain draws from its own random stream exactly as
    `propose` does and keeps its own neighbour list (built at its start), so a
    proposal is the one `propose(state, config, force_fn)` makes, whatever else shares
    the batch, up to floating-point summation order (tests/unit/slhmc/test_proposal_batch.py).
    Proposals are not screened: call `screen` on each, as after `propose`.
    Volume moves need no trajectory; they are made in `add` (their delayed-acceptance
    energies from one-system evaluations) and returned by the next `advance`.
    """

    def __init__(self, potential, *, skin: float = 1.0, backend: str = "auto") -> None:
        self.potential, self.skin, self.backend = potential, skin, backend
        self._running: list[_Trajectory] = []
        self._ready: list[tuple] = []
        self.evaluations = 0  # batched potential evaluations

    def __len__(self) -> int:
        return len(self._running) + len(self._ready)

    @property
    def n_atoms(self) -> int:
        return sum(t.state.n_atoms for t in self._running)

    def system(self, state: ChainState):
        """A BatchSystem (species, neighbour list) for a chain of this potential: pass it
        to `add` again with the chain's next states to keep its neighbour list."""
        from nnmd_kernels.md.batch import BatchSystem

        return BatchSystem(self.potential, state.numbers, state.pbc, self.skin)

    def add(self, key, state: ChainState, config: SLHMCConfig, system=None) -> None:
        """A chain's next proposal joins the batch. system: the chain's BatchSystem from
        earlier proposals with this potential (its Verlet list is reused; the proposal
        then differs from a fresh one by summation order only), else a fresh one."""
        try:
            system = system if system is not None else self.system(state)
            if move_kind(state, config) == "volume":
                self._ready.append((key, _propose_volume(state, config,
                                                         self._energy_fn(system))))
            else:
                self._running.append(_Trajectory(key, state, config, system))
        except Exception as exc:  # noqa: BLE001 - handed back to the chain that asked
            self._ready.append((key, exc))

    def _energy_fn(self, system):
        from nnmd_kernels.md.batch import batch_forces

        def energy(x, h):
            out = batch_forces(self.potential, [system], [x], [h], self.backend)[0]
            if isinstance(out, Exception):
                raise out
            return out[0]

        return energy

    def advance(self) -> list[tuple]:
        """One MD step of every trajectory; the (key, Proposal | exception) that ended."""
        from nnmd_kernels.md.batch import batch_forces
        from nnmd_kernels.md.integrators import _half_kick

        ended, self._ready = self._ready, []
        run = self._running
        if not run:
            return ended
        for t in run:  # started ones: half kick and drift (fresh ones: forces at the start)
            if t.f is not None:
                t.v = _half_kick(t.v, t.f, t.state.masses, t.config.dt)
                t.x = t.x + t.config.dt * t.v
        res = batch_forces(self.potential, [t.system for t in run], [t.x for t in run],
                           [t.state.cell for t in run], self.backend)
        self.evaluations += 1
        going = []
        for t, r in zip(run, res):
            if isinstance(r, Exception):
                ended.append((t.key, r))
                continue
            e, f, _ = r
            if t.f is None:
                t.e0, t.k0 = float(e), kinetic_energy(t.v, t.state.masses)
            else:
                t.v = _half_kick(t.v, f, t.state.masses, t.config.dt)
                t.done += 1
            t.e, t.f = float(e), np.asarray(f)
            if t.done >= t.n:
                ended.append((t.key, t.proposal()))
            else:
                going.append(t)
        self._running = going
        return ended

    def drain(self) -> list[tuple]:
        """Every chain still in the batch as (key, None); the batch is left empty."""
        out = [(t.key, None) for t in self._running] + [(k, None) for k, _ in self._ready]
        self._running, self._ready = [], []
        return out

    def run(self) -> list[tuple]:
        """advance() until every trajectory has ended; all (key, result) pairs."""
        out = []
        while len(self):
            out.extend(self.advance())
        return out


def propose_many(states, configs, potential, *, backend: str = "auto") -> list:
    """`propose` for many chains at once (one ProposalBatch): a Proposal or the
    exception per chain, in order."""
    batch = ProposalBatch(potential, backend=backend)
    for k, (s, c) in enumerate(zip(states, configs)):
        batch.add(k, s, c)
    out = dict(batch.run())
    return [out[k] for k in range(len(states))]
