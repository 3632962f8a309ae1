"""Bounded re-training: which labels a campaign's warm-start re-training sees.

A campaign re-trains every `retrain_every` labels. Training on every label each time
costs time that grows with the data (951 labels: more than 3 minutes per re-training on
2 cores, most of a 30-minute campaign). A bounded re-training sees every label that is
new since the previous model, plus a replay sample of the older ones drawn uniformly
without replacement, so that its cost is bounded by the new labels plus a fixed budget
whatever the size of the data, while the replay keeps the network from forgetting what
it learned before (the warm start re-fits e0, the Delta baseline and the feature
standardisation on that selection, which is an unbiased sample of the whole).

The selection is a pure function of (labels, previous count, budget, seed), so a
campaign resumed after a kill re-trains on the same labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Selection:
    """Indices into the label list (sorted), and what they are."""

    indices: np.ndarray
    n_new: int
    n_replay: int
    n_old: int  # old labels available to replay from

    @property
    def full(self) -> bool:
        return self.n_replay == self.n_old


def retrain_selection(n_total: int, n_previous: int, max_structures: int,
                      seed: int = 0) -> Selection:
    """The labels a bounded warm-start re-training trains on.

    n_total: labels available now (in store order: older first); n_previous: how many of
    them the previous model's training had seen (labels at positions >= n_previous are
    new); max_structures: the budget (0 = every label). Every new label is taken; the
    replay sample of old labels fills the budget, and is never smaller than the number
    of new labels (as many old as new, so that a burst of new labels does not swamp what
    was learned), nor larger than what exists.
    """
    if n_total < 0 or max_structures < 0:
        raise ValueError(f"n_total and max_structures must be >= 0, got {n_total}, "
                         f"{max_structures}")
    n_previous = min(max(0, int(n_previous)), n_total)
    new = np.arange(n_previous, n_total)
    n_old = n_previous
    if max_structures == 0:
        return Selection(np.arange(n_total), len(new), n_old, n_old)
    n_replay = min(n_old, max(max_structures - len(new), len(new)))
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, n_total, n_previous])
    replay = np.sort(rng.choice(n_old, size=n_replay, replace=False)) if n_replay < n_old \
        else np.arange(n_old)
    return Selection(np.concatenate([replay, new]).astype(np.int64), len(new), n_replay, n_old)


__all__ = ["Selection", "retrain_selection"]
