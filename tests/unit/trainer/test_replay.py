"""Bounded re-training's label selection: every new label, a uniform replay sample of the
old ones, a budget that does not grow with the data, the same selection on a resume."""

import numpy as np
import pytest

from services.trainer.replay import retrain_selection


@pytest.mark.parametrize("n_total,n_prev,budget", [(100, 90, 40), (1000, 950, 400),
                                                   (5000, 4900, 400), (30, 0, 10)])
def test_new_labels_all_in_and_the_replay_fills_the_budget(n_total, n_prev, budget):
    sel = retrain_selection(n_total, n_prev, budget, seed=3)
    idx = sel.indices
    assert len(np.unique(idx)) == len(idx)  # no label twice
    assert set(range(n_prev, n_total)) <= set(idx.tolist())  # every new label
    assert sel.n_new == n_total - n_prev and sel.n_old == n_prev
    assert np.all(idx[:sel.n_replay] < n_prev)  # the replay is drawn from the old labels
    new = n_total - n_prev
    assert sel.n_replay == min(n_prev, max(budget - new, new))
    assert len(idx) == sel.n_new + sel.n_replay


def test_the_cost_is_flat_as_the_data_grow():
    sizes = [len(retrain_selection(n, n - 50, 400).indices) for n in (500, 1000, 5000, 50000)]
    assert sizes == [400] * 4


def test_deterministic_and_changes_with_the_seed():
    a = retrain_selection(2000, 1900, 300, seed=1).indices
    assert np.array_equal(a, retrain_selection(2000, 1900, 300, seed=1).indices)
    assert not np.array_equal(a, retrain_selection(2000, 1900, 300, seed=2).indices)


def test_replay_is_roughly_uniform_over_the_old_labels():
    hits = np.zeros(1000)
    for seed in range(200):
        sel = retrain_selection(1100, 1000, 300, seed=seed)
        hits[sel.indices[:sel.n_replay]] += 1
    # 200 draws of 200 of 1000: each old label expected 40 times
    assert abs(hits[:500].mean() - hits[500:].mean()) < 3
    assert hits.min() > 15


def test_zero_budget_and_small_data_take_everything():
    sel = retrain_selection(120, 100, 0)
    assert np.array_equal(sel.indices, np.arange(120)) and sel.full
    sel = retrain_selection(120, 100, 1000)
    assert np.array_equal(sel.indices, np.arange(120)) and sel.full
    with pytest.raises(ValueError, match="max_structures"):
        retrain_selection(10, 5, -1)
