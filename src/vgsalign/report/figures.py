"""Figures of the report: Fig. 3 of Khorrami and Räsänen (Interspeech 2021) and further figures.

Every plotting function takes data frames or arrays and returns a matplotlib
``Figure`` built without pyplot, so no global figure state or GUI backend is
involved. ``save_figure`` writes it as PNG and as vector PDF. One style (fonts,
sizes, colours) applies to every figure: objects are drawn in vermillion and
words in blue, two colours of the Okabe-Ito palette, which was designed to stay
distinct for colour-blind readers.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from vgsalign.io import atomic_path

OBJECT_COLOUR = "#D55E00"
WORD_COLOUR = "#0072B2"
BASELINE_ALPHA = 0.3
OKABE_ITO = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000"]
PNG_DPI = 200

# Figure widths in inches: one column and the full width of a two-column paper.
SINGLE_COLUMN = 3.5
DOUBLE_COLUMN = 7.0

STYLE = {
    "font.family": "DejaVu Sans",
    "font.size": 8,
    "axes.titlesize": 9,
    "axes.labelsize": 8,
    "legend.fontsize": 7,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.5,
    "lines.linewidth": 1.5,
    "axes.prop_cycle": matplotlib.cycler(color=OKABE_ITO),
    "image.cmap": "viridis",
    # Embed TrueType fonts so text in the PDF stays selectable and editable.
    "pdf.fonttype": 42,
    "ps.fonttype": 42,
}

SCORE_LABELS = {"as": "alignment score (AS)", "gs": "glancing score (GS)"}
AXIS_LABELS = {
    "area_fraction": "mean object size (fraction of image)",
    "word_duration_s": "mean word duration (s)",
}

FigureFunction = TypeVar("FigureFunction", bound=Callable[..., Figure])


@contextlib.contextmanager
def style_context() -> Iterator[None]:
    with matplotlib.rc_context(STYLE):
        yield


def styled(function: FigureFunction) -> FigureFunction:
    """Run a plotting function under the report style, which matplotlib reads when artists are created."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Figure:
        with style_context():
            return function(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def new_figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def save_figure(figure: Figure, png_path: str | Path) -> tuple[Path, Path]:
    """Write ``figure`` to ``png_path`` and to a PDF beside it, atomically; return both paths.

    The PNG is exactly ``figsize * PNG_DPI`` pixels because no tight bounding box is used.
    The PDF carries no creation date, so the same figure gives the same bytes.
    """
    png_path = Path(png_path)
    pdf_path = png_path.with_suffix(".pdf")
    with style_context():
        with atomic_path(png_path) as temporary:
            figure.savefig(temporary, format="png", dpi=PNG_DPI)
        with atomic_path(pdf_path) as temporary:
            figure.savefig(temporary, format="pdf", metadata={"CreationDate": None})
    return png_path, pdf_path


@styled
def placeholder_figure(message: str, width: float = SINGLE_COLUMN, height: float = 2.0) -> Figure:
    """Draw a figure that only states why the real one is missing, so every declared output exists."""
    figure = new_figure(width, height)
    axes = figure.add_subplot()
    axes.axis("off")
    axes.text(0.5, 0.5, message, ha="center", va="center", wrap=True, transform=axes.transAxes)
    return figure


# -- Fig. 3: scores against object size and word duration -------------------------------


def linear_fit(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """Return (slope, intercept) of the least-squares line through the finite points.

    Points where x or y is NaN are ignored. With fewer than two distinct x values the
    line is undefined and both numbers are NaN.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    finite = np.isfinite(x) & np.isfinite(y)
    x, y = x[finite], y[finite]
    if x.size < 2 or np.ptp(x) == 0:
        return math.nan, math.nan
    x_centred = x - x.mean()
    slope = float(np.dot(x_centred, y - y.mean()) / np.dot(x_centred, x_centred))
    intercept = float(y.mean() - slope * x.mean())
    return slope, intercept


CATEGORY_COLUMNS = ["area_fraction", "word_duration_s", "as_object", "as_word", "gs_object", "gs_word"]


def category_means(scores: pd.DataFrame) -> pd.DataFrame:
    """Average per-pair scores, object size and word duration per category.

    ``scores`` has one row per pair for a single convention and kind. Returns one
    row per category with ``category_name``, ``pairs`` and the mean of each column
    in ``CATEGORY_COLUMNS``, sorted by category name.
    """
    if scores.empty:
        return pd.DataFrame(columns=["category_name", "pairs", *CATEGORY_COLUMNS])
    grouped = scores.groupby("category_name", sort=True)
    means = grouped[CATEGORY_COLUMNS].mean()
    means.insert(0, "pairs", grouped.size())
    return means.reset_index()


# Each Fig. 3 panel: (score family, x column); each panel shows the object and the word metric.
FIG3_PANELS = [("as", "area_fraction"), ("as", "word_duration_s"), ("gs", "area_fraction"), ("gs", "word_duration_s")]


def fig3_fits(model_means: pd.DataFrame, baseline_means: pd.DataFrame | None) -> pd.DataFrame:
    """Fit every Fig. 3 line: one row per (source, metric, x) with slope and intercept.

    ``source`` is ``model`` or ``baseline``. The fits are unweighted, with one point
    per category as in the published Fig. 3, so a category with few pairs counts as
    much as a large one.
    """
    rows = []
    sources = [("model", model_means)] + ([("baseline", baseline_means)] if baseline_means is not None else [])
    for source, means in sources:
        for family, x_column in FIG3_PANELS:
            for target in ("object", "word"):
                metric = f"{family}_{target}"
                slope, intercept = linear_fit(means[x_column], means[metric])
                rows.append(
                    {"source": source, "metric": metric, "x": x_column, "slope": slope, "intercept": intercept}
                )
    return pd.DataFrame(rows, columns=["source", "metric", "x", "slope", "intercept"])


def _fit_line(axes: Any, x_values: pd.Series, slope: float, intercept: float, **style: Any) -> None:
    finite = x_values[np.isfinite(x_values)]
    if finite.empty or math.isnan(slope):
        return
    x_line = np.linspace(finite.min(), finite.max(), 50)
    axes.plot(x_line, slope * x_line + intercept, **style)


@styled
def plot_fig3(model_means: pd.DataFrame, baseline_means: pd.DataFrame | None, title: str) -> Figure:
    """Draw Fig. 3: AS (top) and GS (bottom) per category against object size and word duration.

    Points are category means, solid lines the model's linear fits, and wide faint
    lines the random baseline's fits over the same x range.
    """
    fits = fig3_fits(model_means, baseline_means).set_index(["source", "metric", "x"])
    figure = new_figure(DOUBLE_COLUMN, 5.4)
    grid = figure.subplots(2, 2, sharey="row")
    for axes, (family, x_column) in zip(grid.flat, FIG3_PANELS):
        for target, colour in (("object", OBJECT_COLOUR), ("word", WORD_COLOUR)):
            metric = f"{family}_{target}"
            axes.scatter(
                model_means[x_column], model_means[metric], s=10, color=colour, alpha=0.8,
                label=f"{target} score per category",
            )  # fmt: skip
            slope, intercept = fits.loc[("model", metric, x_column), ["slope", "intercept"]]
            _fit_line(axes, model_means[x_column], slope, intercept, color=colour, label=f"{target}: linear fit")
            if baseline_means is not None:
                slope, intercept = fits.loc[("baseline", metric, x_column), ["slope", "intercept"]]
                _fit_line(
                    axes, baseline_means[x_column], slope, intercept,
                    color=colour, alpha=BASELINE_ALPHA, linewidth=4, label=f"{target}: random baseline's fit",
                )  # fmt: skip
        axes.set_xlabel(AXIS_LABELS[x_column])
        axes.set_ylabel(SCORE_LABELS[family])
        axes.set_ylim(bottom=0)
    # One legend for all panels, below them, so no entry hides a data point. The
    # legend fills column by column, so this order puts objects in the first row.
    handles = dict(zip(*reversed(grid[0, 0].get_legend_handles_labels())))
    order = [
        label
        for suffix in (" score per category", ": linear fit", ": random baseline's fit")
        for label in ("object" + suffix, "word" + suffix)
        if label in handles
    ]
    figure.legend([handles[label] for label in order], order, loc="outside lower center", ncols=3, frameon=False)
    figure.suptitle(title)
    return figure


# -- training curves, confusion, similarities ------------------------------------------------


@styled
def plot_training_curves(history: pd.DataFrame, title: str, best_epoch: float | None = None) -> Figure:
    """Draw loss (left) and validation recall@10 in both directions (right) per epoch.

    Pooled recall@10 is drawn solid and full-set recall@10 dashed when the history
    has it; when the two are equal (a validation set of one pool) one line is
    drawn and its label states that. A dotted vertical line marks the selected epoch.
    """
    figure = new_figure(DOUBLE_COLUMN, 2.6)
    loss_axes, recall_axes = figure.subplots(1, 2)
    epochs = history["epoch"]
    loss_axes.plot(epochs, history["train_loss"], color=OKABE_ITO[0], label="train")
    loss_axes.plot(epochs, history["val_loss"], color=OKABE_ITO[1], label="validation")
    loss_axes.set_xlabel("epoch")
    loss_axes.set_ylabel("triplet loss")

    for column, colour, label in (("s2i", OKABE_ITO[0], "speech→image"), ("i2s", OKABE_ITO[2], "image→speech")):
        pooled = history[f"val_r10_{column}"].to_numpy(dtype=float)
        full = history.get(f"val_full_r10_{column}")
        if full is not None and np.allclose(pooled, full.to_numpy(dtype=float), equal_nan=True):
            # A validation set no larger than one pool makes the two curves the same line.
            recall_axes.plot(epochs, pooled, color=colour, label=f"{label} (pooled = full set)")
            continue
        recall_axes.plot(epochs, pooled, color=colour, label=f"{label} (pooled)")
        if full is not None:
            recall_axes.plot(epochs, full, color=colour, linestyle="--", label=f"{label} (full set)")
    recall_axes.set_xlabel("epoch")
    recall_axes.set_ylabel("validation recall@10")
    recall_axes.set_ylim(0, 1)

    if best_epoch is not None and not math.isnan(best_epoch):
        for axes in (loss_axes, recall_axes):
            axes.axvline(best_epoch, color="black", linestyle=":", linewidth=1, label="selected epoch")
    for axes in (loss_axes, recall_axes):
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.legend(frameon=False)
    figure.suptitle(title)
    return figure


def confusion_matrix(confusion: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Pivot the long confusion table to targets (rows) x compared categories (columns).

    Columns follow the row order, with ``other`` (pixels of no category) last.
    Combinations without a value are NaN.
    """
    selected = confusion[confusion["metric"] == metric]
    matrix = selected.pivot_table(index="target", columns="compared", values="value", aggfunc="mean")
    targets = sorted(matrix.index)
    compared = [name for name in targets if name in matrix.columns]
    compared += sorted(name for name in matrix.columns if name not in targets and name != "other")
    if "other" in matrix.columns:
        compared.append("other")
    return matrix.reindex(index=targets, columns=compared)


@styled
def plot_confusion(matrix: pd.DataFrame, title: str, value_label: str) -> Figure:
    """Draw a confusion heat map; the tick font shrinks with the number of categories."""
    size = max(len(matrix.index), len(matrix.columns), 1)
    side = min(max(SINGLE_COLUMN, 0.12 * size + 1.5), 10.0)
    figure = new_figure(side + 0.8, side)
    axes = figure.add_subplot()
    axes.grid(False)
    image = axes.imshow(np.ma.masked_invalid(matrix.to_numpy(dtype=float)), aspect="auto", interpolation="nearest")
    tick_size = max(3.0, min(7.0, 280.0 / size))
    axes.set_xticks(range(len(matrix.columns)), matrix.columns, rotation=90, fontsize=tick_size)
    axes.set_yticks(range(len(matrix.index)), matrix.index, fontsize=tick_size)
    axes.set_xlabel("compared object mask (other: pixels of no object)")
    axes.set_ylabel("target category (word frames)")
    figure.colorbar(image, ax=axes, label=value_label)
    axes.set_title(title)
    return figure


@styled
def plot_similarity_histogram(similarities: pd.DataFrame, threshold: float) -> Figure:
    """Draw histograms of every noun-label similarity and of the best label per noun.

    The dashed line marks the pairing threshold; the legend gives the share of
    nouns whose best similarity reaches it.
    """
    values = similarities["similarity"].astype(float)
    finite = np.isfinite(values)
    all_values = values[finite]
    best_values = values[finite & similarities["best"].astype(bool)]
    figure = new_figure(SINGLE_COLUMN, 2.6)
    axes = figure.add_subplot()
    low = min(float(all_values.min()) if len(all_values) else 0.0, threshold)
    high = max(float(all_values.max()) if len(all_values) else 1.0, threshold)
    bins = np.linspace(low, high, 41)
    axes.hist(all_values, bins=bins, color="0.7", label=f"all noun-label pairs (n={len(all_values)})")
    axes.hist(best_values, bins=bins, histtype="step", color=WORD_COLOUR, linewidth=1.5,
              label=f"best label per noun (n={len(best_values)})")  # fmt: skip
    paired_share = float((best_values >= threshold).mean()) if len(best_values) else math.nan
    axes.axvline(threshold, color="black", linestyle="--", linewidth=1,
                 label=f"threshold {threshold:g} ({paired_share:.0%} of nouns kept)")  # fmt: skip
    axes.set_xlabel("word2vec cosine similarity")
    axes.set_ylabel("count")
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes.legend(frameon=False)
    return figure


# -- alignment overlays ------------------------------------------------------------------------


def _normalise(values: np.ndarray) -> np.ndarray:
    """Scale to sum 1, or return the uniform distribution when the sum is 0."""
    total = values.sum()
    if total <= 0:
        return np.full_like(values, 1.0 / values.size)
    return values / total


def object_heat_map(
    tensor: np.ndarray, frame_start: int, frame_end: int, image_size: int = 224, window: int = 512
) -> np.ndarray:
    """Return A'_c: T summed over the word's frames, normalised to sum 1 over the image.

    ``tensor`` is one pair's T with shape (H, W, F) covering an ``image_size``-pixel
    square and ``window`` frames. T is clipped at 0 and upsampled by repeating each
    cell (nearest neighbour), so the sum is taken on the grid with each time cell
    weighted by the number of word frames it covers. Shape: (image_size, image_size).
    """
    grid_h, grid_w, frames = tensor.shape
    clipped = np.clip(tensor.astype(np.float64), 0, None)  # [H, W, F]
    cell_of_frame = (np.arange(window) * frames) // window  # [window]
    word_frames_per_cell = np.bincount(cell_of_frame[frame_start:frame_end], minlength=frames)  # [F]
    cells = clipped @ word_frames_per_cell  # [H, W]
    rows = (np.arange(image_size) * grid_h) // image_size
    columns = (np.arange(image_size) * grid_w) // image_size
    return _normalise(cells[np.ix_(rows, columns)])  # [image_size, image_size]


def word_attention(tensor: np.ndarray, mask: np.ndarray, window: int = 512) -> np.ndarray:
    """Return a'_c: T summed over the object's mask pixels, normalised to sum 1 over time.

    ``mask`` is a square boolean image (S, S) and ``tensor`` one pair's T (H, W, F).
    Each grid cell is weighted by the number of mask pixels it covers. Shape: (window,).
    """
    grid_h, grid_w, frames = tensor.shape
    size = mask.shape[0]
    clipped = np.clip(tensor.astype(np.float64), 0, None)  # [H, W, F]
    rows = (np.arange(size) * grid_h) // size
    columns = (np.arange(size) * grid_w) // size
    pixel_rows, pixel_columns = np.nonzero(mask)
    cell_index = rows[pixel_rows] * grid_w + columns[pixel_columns]
    mask_pixels_per_cell = np.bincount(cell_index, minlength=grid_h * grid_w).reshape(grid_h, grid_w)  # [H, W]
    cells = np.tensordot(mask_pixels_per_cell, clipped, axes=([0, 1], [0, 1]))  # [F]
    cell_of_frame = (np.arange(window) * frames) // window
    return _normalise(cells[cell_of_frame])  # [window]


@styled
def plot_overlay(
    image: np.ndarray | None,
    mask: np.ndarray,
    heat: np.ndarray,
    spectrogram: np.ndarray | None,
    attention: np.ndarray,
    frame_start: int,
    frame_end: int,
    title: str,
) -> Figure:
    """Draw one word-object pair: heat map on the image, spectrogram and attention over time.

    ``image`` is (S, S, 3) uint8 or None (drawn grey), ``mask`` and ``heat`` (S, S),
    ``spectrogram`` (mel bands, frames) or None, ``attention`` (frames,). The mask
    contour is cyan and the word's frames [frame_start, frame_end) are shaded.
    """
    figure = new_figure(DOUBLE_COLUMN, 2.8)
    layout = figure.add_gridspec(2, 2, width_ratios=[1.0, 2.4])
    image_axes = figure.add_subplot(layout[:, 0])
    spectrogram_axes = figure.add_subplot(layout[0, 1])
    attention_axes = figure.add_subplot(layout[1, 1], sharex=spectrogram_axes)

    image_axes.grid(False)
    if image is None:
        image = np.full((*heat.shape, 3), 128, dtype=np.uint8)
    image_axes.imshow(image)
    image_axes.imshow(heat, cmap="inferno", alpha=0.55)
    if mask.any():
        image_axes.contour(mask.astype(float), levels=[0.5], colors="cyan", linewidths=1)
    image_axes.set_xticks([])
    image_axes.set_yticks([])
    image_axes.set_title("T at the word's frames")

    spectrogram_axes.grid(False)
    if spectrogram is not None:
        spectrogram_axes.imshow(spectrogram, origin="lower", aspect="auto", cmap="magma", interpolation="nearest")
    else:
        spectrogram_axes.text(0.5, 0.5, "spectrogram not available", ha="center", va="center",
                              transform=spectrogram_axes.transAxes)  # fmt: skip
    for boundary in (frame_start, frame_end):
        spectrogram_axes.axvline(boundary, color="white", linewidth=1)
    spectrogram_axes.set_ylabel("mel band")
    spectrogram_axes.tick_params(labelbottom=False)

    attention_axes.plot(np.arange(attention.size), attention, color=OBJECT_COLOUR)
    attention_axes.axvspan(frame_start, frame_end, color=WORD_COLOUR, alpha=0.25, label="word's frames")
    attention_axes.set_xlim(0, attention.size)
    attention_axes.set_ylim(bottom=0)
    attention_axes.set_xlabel("frame (10 ms)")
    attention_axes.set_ylabel("T over mask (sum 1)")
    attention_axes.legend(frameon=False, loc="lower right")
    figure.suptitle(title)
    return figure
