"""Figures: Fig. 3 fits, category means, overlay maps against a literal upsampling, saved files."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from vgsalign.report import figures


def test_linear_fit_exact_line():
    x = np.array([0.05, 0.1, 0.2, 0.4])
    slope, intercept = figures.linear_fit(x, 0.8 * x + 0.1)
    assert slope == pytest.approx(0.8)
    assert intercept == pytest.approx(0.1)


def test_linear_fit_matches_polyfit():
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 1, 50)
    y = -0.3 * x + 0.6 + rng.normal(0, 0.05, 50)
    expected_slope, expected_intercept = np.polyfit(x, y, 1)
    slope, intercept = figures.linear_fit(x, y)
    assert slope == pytest.approx(expected_slope, rel=1e-9)
    assert intercept == pytest.approx(expected_intercept, rel=1e-9)


def test_linear_fit_ignores_nan():
    slope, intercept = figures.linear_fit([0.0, 1.0, np.nan, 2.0], [1.0, 3.0, 100.0, np.nan])
    assert slope == pytest.approx(2.0)
    assert intercept == pytest.approx(1.0)


def test_linear_fit_degenerate():
    assert all(math.isnan(value) for value in figures.linear_fit([0.3, 0.3, 0.3], [1, 2, 3]))
    assert all(math.isnan(value) for value in figures.linear_fit([0.3], [1]))


def _pairs(category: str, sizes: list[float], durations: list[float], score: float) -> list[dict]:
    return [
        {
            "category_name": category, "area_fraction": size, "word_duration_s": duration,
            "as_object": score, "as_word": score / 10, "gs_object": score, "gs_word": score / 2,
        }
        for size, duration in zip(sizes, durations)
    ]  # fmt: skip


def test_category_means():
    scores = pd.DataFrame(
        _pairs("dog", [0.1, 0.3], [0.2, 0.4], 0.5) + _pairs("cat", [0.2], [0.5], 0.25) + _pairs("dog", [0.2], [0.3], 0.2)
    )
    means = figures.category_means(scores).set_index("category_name")
    assert list(means.index) == ["cat", "dog"]
    assert means.loc["dog", "pairs"] == 3
    assert means.loc["dog", "area_fraction"] == pytest.approx(0.2)
    assert means.loc["dog", "word_duration_s"] == pytest.approx(0.3)
    assert means.loc["dog", "as_object"] == pytest.approx(0.4)
    assert means.loc["cat", "gs_word"] == pytest.approx(0.125)


def _synthetic_means(object_slope: float, word_slope: float) -> pd.DataFrame:
    """Per-category means where every object score is linear in size and every word score in duration."""
    size = np.linspace(0.02, 0.5, 8)
    duration = np.linspace(0.5, 0.15, 8)  # falls as size grows: a perfect negative correlation
    return pd.DataFrame(
        {
            "category_name": [f"c{i}" for i in range(8)],
            "pairs": 5,
            "area_fraction": size,
            "word_duration_s": duration,
            "as_object": object_slope * size + 0.1,
            "gs_object": object_slope * size + 0.2,
            "as_word": word_slope * duration + 0.01,
            "gs_word": word_slope * duration + 0.05,
        }
    )


def test_fig3_fits_known_slopes():
    model = _synthetic_means(object_slope=0.9, word_slope=0.4)
    baseline = _synthetic_means(object_slope=1.0, word_slope=0.2)
    fits = figures.fig3_fits(model, baseline).set_index(["source", "metric", "x"])
    assert len(fits) == 16
    assert fits.loc[("model", "as_object", "area_fraction"), "slope"] == pytest.approx(0.9)
    assert fits.loc[("model", "gs_object", "area_fraction"), "intercept"] == pytest.approx(0.2)
    assert fits.loc[("model", "gs_word", "word_duration_s"), "slope"] == pytest.approx(0.4)
    assert fits.loc[("baseline", "as_word", "word_duration_s"), "slope"] == pytest.approx(0.2)
    assert fits.loc[("baseline", "gs_object", "area_fraction"), "slope"] == pytest.approx(1.0)
    # Size and duration fall together here, so the object score against duration has slope -0.9 * 0.48 / 0.35.
    assert fits.loc[("model", "as_object", "word_duration_s"), "slope"] == pytest.approx(-0.9 * 0.48 / 0.35)


def test_fig3_fits_without_baseline():
    fits = figures.fig3_fits(_synthetic_means(0.5, 0.5), None)
    assert set(fits["source"]) == {"model"}
    assert len(fits) == 8


def _upsample(tensor: np.ndarray, image_size: int, window: int) -> np.ndarray:
    """Repeat each cell of T (H, W, F) to (image_size, image_size, window), as the authors' code does."""
    grid_h, grid_w, frames = tensor.shape
    big = np.repeat(tensor, image_size // grid_h, axis=0)
    big = np.repeat(big, image_size // grid_w, axis=1)
    return np.repeat(big, window // frames, axis=2)


def test_object_heat_map_matches_upsampling():
    rng = np.random.default_rng(0)
    tensor = rng.normal(0.2, 0.5, size=(2, 2, 4))  # some negatives, which must be clipped
    heat = figures.object_heat_map(tensor, frame_start=1, frame_end=6, image_size=4, window=8)
    big = np.clip(_upsample(tensor, 4, 8), 0, None)
    expected = big[:, :, 1:6].sum(axis=2)
    expected /= expected.sum()
    np.testing.assert_allclose(heat, expected, rtol=1e-12)


def test_word_attention_matches_upsampling():
    rng = np.random.default_rng(1)
    tensor = rng.normal(0.2, 0.5, size=(2, 2, 4))
    mask = np.zeros((4, 4), dtype=bool)
    mask[0:3, 1:4] = True
    attention = figures.word_attention(tensor, mask, window=8)
    big = np.clip(_upsample(tensor, 4, 8), 0, None)
    expected = big[mask].sum(axis=0)
    expected /= expected.sum()
    np.testing.assert_allclose(attention, expected, rtol=1e-12)


def test_overlay_maps_zero_tensor_uniform():
    tensor = -np.ones((2, 2, 4))
    mask = np.zeros((4, 4), dtype=bool)
    mask[0, 0] = True
    heat = figures.object_heat_map(tensor, 0, 2, image_size=4, window=8)
    attention = figures.word_attention(tensor, mask, window=8)
    np.testing.assert_allclose(heat, np.full((4, 4), 1 / 16))
    np.testing.assert_allclose(attention, np.full(8, 1 / 8))


def test_overlay_maps_paper_size_gs():
    """A constant T gives GS_object = mask fraction and GS_word = word frames / window."""
    tensor = np.ones((14, 14, 64))
    mask = np.zeros((224, 224), dtype=bool)
    mask[10:60, 20:120] = True
    heat = figures.object_heat_map(tensor, 100, 140)
    attention = figures.word_attention(tensor, mask)
    assert heat[mask].sum() == pytest.approx(50 * 100 / 224**2)
    assert attention[100:140].sum() == pytest.approx(40 / 512)


def test_confusion_matrix_order():
    confusion = pd.DataFrame(
        {
            "target": ["dog", "dog", "dog", "cat", "cat", "dog"],
            "compared": ["dog", "cat", "other", "cat", "dog", "dog"],
            "metric": ["as_object"] * 5 + ["gs_object"],
            "value": [0.6, 0.1, 0.3, 0.5, 0.2, 0.9],
            "count": [4, 2, 4, 3, 1, 4],
        }
    )
    matrix = figures.confusion_matrix(confusion, "as_object")
    assert list(matrix.index) == ["cat", "dog"]
    assert list(matrix.columns) == ["cat", "dog", "other"]
    assert matrix.loc["dog", "dog"] == 0.6
    assert matrix.loc["cat", "dog"] == 0.2
    assert math.isnan(matrix.loc["cat", "other"])


def test_fig3_png_size(tmp_path):
    model = _synthetic_means(0.9, 0.4)
    figure = figures.plot_fig3(model, _synthetic_means(1.0, 0.2), title="synthetic")
    png, pdf = figures.save_figure(figure, tmp_path / "fig3.png")
    with Image.open(png) as image:
        image.verify()
    with Image.open(png) as image:
        assert image.format == "PNG"
        assert image.size == (1400, 1080)  # 7.0 x 5.4 inches at 200 dpi
    assert pdf == tmp_path / "fig3.pdf"
    assert pdf.read_bytes().startswith(b"%PDF")
    assert not list(tmp_path.glob(".*tmp*"))


def test_pdf_is_reproducible(tmp_path):
    history = pd.DataFrame(
        {"epoch": [1, 2, 3], "train_loss": [0.3, 0.2, 0.1], "val_loss": [0.35, 0.25, 0.2],
         "val_r10_s2i": [0.1, 0.2, 0.3], "val_r10_i2s": [0.1, 0.15, 0.25]}
    )  # fmt: skip
    first = figures.save_figure(figures.plot_training_curves(history, "run", best_epoch=3), tmp_path / "a.png")
    second = figures.save_figure(figures.plot_training_curves(history, "run", best_epoch=3), tmp_path / "b.png")
    assert first[1].read_bytes() == second[1].read_bytes()


def _recall_labels(history: pd.DataFrame) -> list[str]:
    recall_axes = figures.plot_training_curves(history, "run").axes[1]
    return [line.get_label() for line in recall_axes.get_lines()]


def test_training_curves_merge_equal_recalls():
    history = pd.DataFrame(
        {"epoch": [1, 2], "train_loss": [0.3, 0.2], "val_loss": [0.35, 0.25],
         "val_r10_s2i": [0.1, 0.2], "val_r10_i2s": [0.1, 0.15],
         "val_full_r10_s2i": [0.1, 0.2], "val_full_r10_i2s": [0.05, 0.15]}
    )  # fmt: skip
    # The speech→image curves are equal, so they become one line. The image→speech curves differ.
    assert _recall_labels(history) == [
        "speech→image (pooled = full set)",
        "image→speech (pooled)",
        "image→speech (full set)",
    ]


def test_similarity_histogram_draws(tmp_path):
    similarities = pd.DataFrame({"similarity": [0.1, 0.55, 0.7, np.nan, 0.3], "best": [False, True, True, False, True]})
    figure = figures.plot_similarity_histogram(similarities, threshold=0.5)
    axes = figure.axes[0]
    legend = [text.get_text() for text in axes.get_legend().get_texts()]
    assert legend[0] == "all noun-label pairs (n=4)"
    assert legend[1] == "best label per noun (n=3)"
    assert legend[2] == "threshold 0.5 (67% of nouns kept)"
    png, _ = figures.save_figure(figure, tmp_path / "similarities.png")
    with Image.open(png) as image:
        assert image.size == (700, 520)  # 3.5 x 2.6 inches at 200 dpi
