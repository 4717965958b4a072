"""Per-category means, the total (mean of the category means) and its bootstrap interval.

The total weighs every category equally: Khorrami and Raesaenen (Interspeech
2021, section 4) average the 80 per-class scores, each the mean over the pairs of
that class. The
bootstrap resamples pairs with replacement within each category (so every
category keeps its pair count), recomputes the total per resample and reports
the percentile interval. It is vectorised over resamples, and its random
numbers depend only on the seed and the pair counts per category, so a rerun
with the same seed gives the same interval.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from vgsalign.scoring.engine import METRICS

# Resamples are drawn in blocks of at most this many indices, to bound memory.
BLOCK_INDICES = 1_000_000


def category_means(values: np.ndarray, codes: np.ndarray, categories: int) -> tuple[np.ndarray, np.ndarray]:
    """Return per-category means [K, M] (NaN for a category without pairs) and pair counts [K].

    ``values`` is [N, M] (pairs x metrics) and ``codes`` [N] the category index of each pair.
    """
    values = np.asarray(values, dtype=np.float64)
    counts = np.bincount(codes, minlength=categories)  # [K]
    sums = np.zeros((categories, values.shape[1]))
    np.add.at(sums, codes, values)
    with np.errstate(divide="ignore", invalid="ignore"):
        means = sums / counts[:, None]
    means[counts == 0] = np.nan
    return means, counts


def bootstrap_totals(
    values: np.ndarray, codes: np.ndarray, categories: int, resamples: int, rng: np.random.Generator
) -> np.ndarray:
    """Return the total (mean of category means) of each resample: [R, M].

    Each resample draws, for every category with n pairs, n of its pairs with
    replacement. Categories without pairs stay out of every total.
    """
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(codes, kind="stable")
    sorted_values = values[order]
    counts = np.bincount(codes, minlength=categories)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    present = np.flatnonzero(counts)
    totals = np.zeros((resamples, values.shape[1]))
    for category in present:
        size = int(counts[category])
        members = sorted_values[starts[category] : starts[category] + size]  # [n, M]
        block = max(1, BLOCK_INDICES // size)
        for first in range(0, resamples, block):
            count = min(block, resamples - first)
            picks = rng.integers(0, size, size=(count, size))  # [r, n] pairs drawn per resample
            # Times each pair is drawn per resample, so the resample means are one matrix product.
            drawn = np.bincount((picks + size * np.arange(count)[:, None]).ravel(), minlength=count * size)
            totals[first : first + count] += drawn.reshape(count, size) @ members / size  # [r, M]
    return totals / max(len(present), 1)


def percentile_interval(totals: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """Return the (low, high) percentile interval of ``totals`` [R, M] at ``confidence``."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(totals, [tail, 1.0 - tail], axis=0)
    return low, high


def summarise_scores(
    scores: pd.DataFrame,
    categories: Sequence[str],
    resamples: int,
    confidence: float,
    rng: np.random.Generator,
    metrics: Sequence[str] = METRICS,
) -> dict[str, Any]:
    """Summarise the per-pair scores of one convention and kind.

    ``scores`` has a ``category_name`` column and one column per metric;
    ``categories`` lists every category that could have pairs. Returns
    {"total", "ci_low", "ci_high", "per_category", "categories_without_pairs",
    "pairs"}; the intervals are None when ``resamples`` is 0 or there are no pairs.
    """
    names = sorted(set(categories) | set(scores["category_name"]))
    index = {name: position for position, name in enumerate(names)}
    codes = scores["category_name"].map(index).to_numpy(dtype=np.int64)
    values = scores[list(metrics)].to_numpy(dtype=np.float64)  # [N, M]
    means, counts = category_means(values, codes, len(names))

    present = counts > 0
    total = means[present].mean(axis=0) if present.any() else np.full(len(metrics), np.nan)
    per_category = {
        name: {**{metric: float(means[position, m]) for m, metric in enumerate(metrics)}, "pairs": int(counts[position])}
        for position, name in enumerate(names)
        if counts[position]
    }
    summary: dict[str, Any] = {
        "total": _by_metric(total, metrics),
        "ci_low": None,
        "ci_high": None,
        "per_category": per_category,
        "categories_without_pairs": [name for position, name in enumerate(names) if not counts[position]],
        "pairs": int(len(scores)),
    }
    if resamples > 0 and present.any():
        totals = bootstrap_totals(values, codes, len(names), resamples, rng)
        low, high = percentile_interval(totals, confidence)
        summary["ci_low"] = _by_metric(low, metrics)
        summary["ci_high"] = _by_metric(high, metrics)
    return summary


def _by_metric(values: np.ndarray, metrics: Sequence[str]) -> dict[str, float | None]:
    return {metric: (None if np.isnan(value) else float(value)) for metric, value in zip(metrics, values)}
