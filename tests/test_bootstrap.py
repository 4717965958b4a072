"""Category means, totals and bootstrap intervals."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from vgsalign.scoring.bootstrap import bootstrap_totals, category_means, percentile_interval, summarise_scores


def scores_frame(rows: list[tuple[str, float]]) -> pd.DataFrame:
    """Scores with every metric equal to the given value, plus a copy shifted for as_word."""
    return pd.DataFrame(
        {
            "category_name": [name for name, _ in rows],
            "as_object": [value for _, value in rows],
            "as_word": [value + 1 for _, value in rows],
            "gs_object": [value for _, value in rows],
            "gs_word": [value for _, value in rows],
        }
    )


def test_category_means_by_hand():
    values = np.array([[1.0, 10.0], [3.0, 30.0], [5.0, 50.0]])
    means, counts = category_means(values, np.array([0, 0, 2]), 3)
    assert counts.tolist() == [2, 0, 1]
    assert means[0].tolist() == [2.0, 20.0]
    assert np.isnan(means[1]).all()
    assert means[2].tolist() == [5.0, 50.0]


def test_total_is_mean_of_category_means():
    # cat: 0.2, 0.4 (mean 0.3); dog: 0.9 (mean 0.9). Mean of category means 0.6, not the pair mean 0.5.
    frame = scores_frame([("cat", 0.2), ("cat", 0.4), ("dog", 0.9)])
    summary = summarise_scores(frame, ["cat", "dog", "zebra"], 0, 0.95, np.random.default_rng(0))
    assert summary["total"]["as_object"] == pytest.approx(0.6)
    assert summary["total"]["as_word"] == pytest.approx(1.6)
    assert summary["per_category"]["cat"] == pytest.approx(
        {"as_object": 0.3, "as_word": 1.3, "gs_object": 0.3, "gs_word": 0.3, "pairs": 2}
    )
    assert summary["per_category"]["dog"]["pairs"] == 1
    assert summary["categories_without_pairs"] == ["zebra"]
    assert "zebra" not in summary["per_category"]
    assert summary["pairs"] == 3
    assert summary["ci_low"] is None
    assert summary["ci_high"] is None


def test_summary_without_pairs():
    summary = summarise_scores(scores_frame([]), ["cat"], 100, 0.95, np.random.default_rng(0))
    assert summary["total"] == {"as_object": None, "as_word": None, "gs_object": None, "gs_word": None}
    assert summary["ci_low"] is None
    assert summary["categories_without_pairs"] == ["cat"]
    assert summary["pairs"] == 0


def test_percentile_interval_by_hand():
    totals = np.arange(101, dtype=float)[:, None]  # 0, 1, ..., 100
    low, high = percentile_interval(totals, 0.9)
    assert low.tolist() == pytest.approx([5.0])
    assert high.tolist() == pytest.approx([95.0])
    with pytest.raises(ValueError, match="confidence"):
        percentile_interval(totals, 1.0)


def test_bootstrap_two_values_distribution():
    # One category with values 0 and 1: a resample mean is 0, 0.5 or 1 with probability 1/4, 1/2, 1/4.
    totals = bootstrap_totals(np.array([[0.0], [1.0]]), np.array([0, 0]), 1, 4000, np.random.default_rng(1))
    shares = [np.mean(totals[:, 0] == value) for value in (0.0, 0.5, 1.0)]
    assert shares == pytest.approx([0.25, 0.5, 0.25], abs=0.03)


def test_bootstrap_keeps_categories_apart():
    # Category 0 is constant 0, category 1 constant 1: every resample's total is exactly 0.5.
    values = np.array([[0.0], [0.0], [0.0], [1.0]])
    totals = bootstrap_totals(values, np.array([0, 0, 0, 1]), 2, 50, np.random.default_rng(2))
    assert np.all(totals == 0.5)


def test_bootstrap_small_blocks(monkeypatch):
    # Resamples drawn in blocks of one (to bound memory) keep the same distribution.
    import vgsalign.scoring.bootstrap as bootstrap

    monkeypatch.setattr(bootstrap, "BLOCK_INDICES", 2)
    totals = bootstrap_totals(np.array([[0.0], [1.0]]), np.array([0, 0]), 1, 4000, np.random.default_rng(1))
    shares = [np.mean(totals[:, 0] == value) for value in (0.0, 0.5, 1.0)]
    assert shares == pytest.approx([0.25, 0.5, 0.25], abs=0.03)


def test_interval_covers_true_mean():
    # Two categories of normal scores with means 0.3 and 0.5: the true total is 0.4.
    # The 95 % interval of 400 pairs per category has half-width about 0.01.
    rng = np.random.default_rng(5)
    rows = [("a", v) for v in rng.normal(0.3, 0.1, 400)] + [("b", v) for v in rng.normal(0.5, 0.1, 400)]
    summary = summarise_scores(scores_frame(rows), ["a", "b"], 1000, 0.95, np.random.default_rng(6))
    low, high = summary["ci_low"]["as_object"], summary["ci_high"]["as_object"]
    assert low < 0.4 < high
    assert 0.005 < high - low < 0.03
    assert low < summary["total"]["as_object"] < high


def test_interval_deterministic_per_seed():
    rows = [("a", v) for v in np.linspace(0, 1, 30)] + [("b", v) for v in np.linspace(0.2, 0.4, 10)]
    frame = scores_frame(rows)
    first = summarise_scores(frame, ["a", "b"], 300, 0.95, np.random.default_rng(7))
    again = summarise_scores(frame, ["a", "b"], 300, 0.95, np.random.default_rng(7))
    other = summarise_scores(frame, ["a", "b"], 300, 0.95, np.random.default_rng(8))
    assert first["ci_low"] == again["ci_low"]
    assert first["ci_high"] == again["ci_high"]
    assert first["ci_low"] != other["ci_low"]
