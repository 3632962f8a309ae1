"""A campaign's traces so far, for a live view (the Coordinator's History and List RPCs).

Everything is read from the campaign's store (its chain checkpoints, whose ``history``
rows each step appends, and its published models' metadata), so the view is the same
whether the campaign runs on this coordinator, ran on another, or has ended; the
coordinator adds only its recent log lines. ``campaign_history`` returns one JSON-safe
dict:

- ``campaign``, ``state``, ``message``, ``settings`` (the campaign's stored config);
- ``chain_names`` (all, sorted) and ``n_chains``;
- ``chains``: for the page ``offset:offset+limit`` of chains, per-step traces ``step``,
  ``energy_ref`` (eV), ``volume`` (A^3), ``accepted`` (0/1), ``acceptance_rate``
  (running), ``n_md_steps``, ``phase``, ``time`` (Unix s);
- ``aggregate``: over all chains, by step: ``step``, ``acceptance_mean/min/max``,
  ``n_md_mean``, ``energy_ref_mean``, ``volume_mean``, ``n_chains`` (chains that reached
  that step);
- ``labels``: ``time`` and ``n_labels`` (labels from chains, cumulative);
- ``models``: per version its training and held-out errors and learning curve
  (``history``: [iteration, train E, val E, train F, val F] RMSE in eV/atom and eV/A);
- ``events``: the recent log (``kind`` log | state | model_published | chain_failed).

Traces longer than ``max_points`` are thinned evenly (the last point is always kept).
NaN becomes null.
"""

from __future__ import annotations

import math

import numpy as np

from services.runtime.convert import json_safe

MAX_LIMIT = 200
LOG_KINDS = ("log", "state", "model_published", "chain_failed")


def _thin(n: int, max_points: int) -> np.ndarray:
    if n <= max_points:
        return np.arange(n)
    idx = np.unique(np.linspace(0, n - 1, max_points).round().astype(int))
    return idx


def _num(v) -> float:
    try:
        return float(v) if v is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


def chain_traces(rows: list[dict]) -> dict:
    """Per-step arrays of one chain from its checkpoint's history rows."""
    steps = np.array([int(r.get("step", i + 1)) for i, r in enumerate(rows)], dtype=np.int64)
    accepted = np.array([bool(r.get("accepted", False)) for r in rows], dtype=float)
    tried = np.arange(1, len(rows) + 1, dtype=float)
    return {"step": steps,
            "energy_ref": np.array([_num(r.get("energy_ref")) for r in rows]),
            "volume": np.array([_num(r.get("volume")) for r in rows]),
            "accepted": accepted,
            "acceptance_rate": np.cumsum(accepted) / tried if len(rows) else accepted,
            "n_md_steps": np.array([int(r.get("n_md_steps", 0) or 0) for r in rows]),
            "phase": [str(r.get("phase", "")) for r in rows],
            "time": np.array([_num(r.get("time")) for r in rows]),
            "labelled": np.array([r.get("energy_proposal") is not None for r in rows])}


def _aggregate(traces: dict[str, dict]) -> dict:
    """Mean/min/max over chains at each step number."""
    if not traces:  # before the first step
        return {k: np.zeros(0) for k in ("step", "acceptance_mean", "acceptance_min",
                                         "acceptance_max", "n_md_mean", "energy_ref_mean",
                                         "volume_mean", "n_chains")}
    n = max((len(t["step"]) for t in traces.values()), default=0)
    steps = np.zeros(n, dtype=np.int64)
    m = len(traces)
    acc = np.full((m, n), np.nan)
    nmd = np.full((m, n), np.nan)
    e = np.full((m, n), np.nan)
    vol = np.full((m, n), np.nan)
    for i, t in enumerate(traces.values()):
        k = len(t["step"])
        if k > 0:
            steps[:k] = np.maximum(steps[:k], t["step"])
        acc[i, :k], nmd[i, :k] = t["acceptance_rate"], t["n_md_steps"]
        e[i, :k], vol[i, :k] = t["energy_ref"], t["volume"]
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return {"step": steps, "acceptance_mean": np.nanmean(acc, 0),
                    "acceptance_min": np.nanmin(acc, 0), "acceptance_max": np.nanmax(acc, 0),
                    "n_md_mean": np.nanmean(nmd, 0), "energy_ref_mean": np.nanmean(e, 0),
                    "volume_mean": np.nanmean(vol, 0),
                    "n_chains": np.isfinite(acc).sum(0)}


def _chain_docs(store, campaign: str) -> dict[str, dict]:
    from orchestrator.slhmc import CAMPAIGN_DOC, chain_history, is_history_segment

    docs = {}
    for name in sorted(store.list_checkpoints(campaign)):
        if name == CAMPAIGN_DOC or is_history_segment(name):
            continue
        d = store.read_checkpoint(campaign, name) or {}
        if d.get("kind") == "mc":  # a Metropolis explorer, not a chain
            continue
        if d.get("history_segments"):  # the rows moved out of the checkpoint, in order
            d = {**d, "history": chain_history(store, campaign, name, d)}
        docs[name] = d
    return docs


def campaign_history(store_url: str, campaign: str, *, state: str = "", message: str = "",
                     events=(), offset: int = 0, limit: int = 20,
                     max_points: int = 2000) -> dict | None:
    """The campaign's traces (see the module docstring); None when the store does not
    know it."""
    from orchestrator.slhmc import CAMPAIGN_DOC, campaign_models
    from services.store import Store

    try:
        store = Store(store_url, read_only=True)
        doc = store.read_checkpoint(campaign, CAMPAIGN_DOC)
    except Exception:  # noqa: BLE001 - no store, or not an nnmd store
        doc = None
    if doc is None:
        return None
    limit = min(max(int(limit) or 20, 1), MAX_LIMIT)
    max_points = max(int(max_points) or 2000, 2)
    docs = _chain_docs(store, campaign)
    traces = {n: chain_traces(d.get("history") or []) for n, d in docs.items()}
    names = list(traces)
    page = names[offset:offset + limit]

    def thinned(t: dict) -> dict:
        idx = _thin(len(t["step"]), max_points)
        return {k: ([v[i] for i in idx] if isinstance(v, list) else v[idx])
                for k, v in t.items() if k != "labelled"}

    agg = _aggregate(traces)
    idx = _thin(len(agg["step"]), max_points)
    agg = {k: v[idx] for k, v in agg.items()}
    # labels from chains over time: the steps whose proposal was labelled
    times = np.sort(np.concatenate([t["time"][t["labelled"]] for t in traces.values()])
                    if traces else np.zeros(0))
    times = times[np.isfinite(times)]
    counts = np.arange(1, len(times) + 1)
    li = _thin(len(times), max_points)
    models = []
    for version, meta in campaign_models(store, campaign):
        models.append({"version": version, "n_labels": meta.get("n_labels"),
                       "n_structures": meta.get("n_structures"),
                       "train_seconds": meta.get("train_seconds"),
                       "warm_start": meta.get("warm_start"),
                       "energy_rmse_mev_per_atom": meta.get("energy_rmse_mev_per_atom"),
                       "force_rmse_mev_per_angstrom": meta.get("force_rmse_mev_per_angstrom"),
                       "holdout": meta.get("holdout") or {"n": 0},
                       "history": meta.get("history") or []})
    log = [e for e in events if e.get("kind") in LOG_KINDS][-200:]
    if not state:
        from orchestrator.coordinator.runner import stored_state

        state = stored_state(doc.get("config") or {},
                             [(int((d.get("state") or {}).get("step", 0)), bool(d.get("failed")))
                              for d in docs.values()])
    return json_safe({
        "campaign": campaign, "state": state, "message": message,
        "settings": doc.get("config") or {},
        "chain_names": names, "n_chains": len(names), "offset": offset, "limit": limit,
        "chains": {n: thinned(traces[n]) for n in page},
        "aggregate": agg,
        "labels": {"time": times[li], "n_labels": counts[li]},
        "models": models,
        "events": [dict(e) for e in log]})


def campaign_summary(status: dict, settings: dict) -> dict:
    """One line of the campaign list from a status dict and the campaign's settings."""
    chains = status.get("chains") or []
    n_chains = int(settings.get("chains") or len(chains))
    steps = int(settings.get("steps") or 0)
    done = sum(int(c.get("step", 0)) for c in chains)
    # acceptance over all chains, weighted by their steps
    w = [(c.get("acceptance_rate"), int(c.get("step", 0))) for c in chains]
    w = [(a, s) for a, s in w if a is not None and a == a and s > 0]
    acc = sum(a * s for a, s in w) / sum(s for _, s in w) if w else math.nan
    return {"campaign": status["campaign"], "state": status.get("state", ""),
            "n_chains": n_chains, "steps_done": done, "steps_total": n_chains * steps,
            "acceptance": acc, "n_labels": int(status.get("n_labels", 0)),
            "model_version": int(status.get("model_version", 0)),
            "reference": str(settings.get("reference", "")), "store": status.get("store", "")}
