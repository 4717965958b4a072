"""Stage ``make_report``: tables, figures, ``report.md`` and ``metrics.json`` of a run.

Every input except the parameters is optional, so the stage does not fail when a
variant was not trained or scored, or when a stage output is missing or
unreadable. Such a gap leaves ``n/a`` in the tables, a placeholder where a
declared figure would be, and a line in the report's list of missing inputs.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from pycocotools import mask as mask_utils
from tqdm import tqdm

from vgsalign.config import ParamsError, lookup
from vgsalign.io import read_parquet_metadata, write_json_atomic, write_text_atomic
from vgsalign.layout import RunPaths
from vgsalign.report import figures, published, tables

logger = logging.getLogger(__name__)

IMAGE_SIZE = 224
TENSOR_COLUMNS = ["image_id", "caption_id", "kind", "grid_h", "grid_w", "frames", "tensor"]


@dataclass
class ReportFigure:
    name: str
    png: Path
    title: str
    group: str


@dataclass
class ReportState:
    """Inputs read so far, and the figures, notes and skip counts for the report."""

    train_metrics: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    retrieval: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    summaries: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    baseline: dict[str, Any] | None = None
    pairs_summary: dict[str, Any] | None = None
    missing: list[str] = field(default_factory=list)
    unreadable: dict[str, str] = field(default_factory=dict)
    figures: list[ReportFigure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    overlay_skips: Counter = field(default_factory=Counter)

    def note_missing(self, path: Path) -> None:
        if str(path) not in self.missing:
            logger.warning("input not found: %s; the report lists it as missing", path)
            self.missing.append(str(path))

    def note_unreadable(self, path: Path, error: Exception) -> None:
        logger.warning("failed to read %s (%s); the report lists it as unreadable", path, error)
        self.unreadable[str(path)] = f"{type(error).__name__}: {error}"


# -- reading inputs ----------------------------------------------------------------------------


def _read_json(path: Path, state: ReportState) -> dict[str, Any] | None:
    if not path.is_file():
        state.note_missing(path)
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        state.note_unreadable(path, error)
        return None
    if not isinstance(data, dict):
        state.note_unreadable(path, ValueError(f"expected a JSON object, found {type(data).__name__}"))
        return None
    return data


def _check_columns(frame: pd.DataFrame, required: Sequence[str], path: Path, state: ReportState) -> pd.DataFrame | None:
    absent = [column for column in required if column not in frame.columns]
    if absent:
        state.note_unreadable(path, KeyError(f"columns {absent} not found"))
        return None
    return frame


def _read_parquet(
    path: Path, state: ReportState, columns: Sequence[str] | None = None, required: Sequence[str] = ()
) -> pd.DataFrame | None:
    """Read a Parquet table, or record it as missing or unreadable (also when a required column is absent)."""
    if not path.is_file():
        state.note_missing(path)
        return None
    try:
        frame = pd.read_parquet(path, columns=list(columns) if columns else None)
    except (OSError, ValueError, KeyError) as error:
        state.note_unreadable(path, error)
        return None
    return _check_columns(frame, required, path, state)


def _read_csv(path: Path, state: ReportState, required: Sequence[str] = ()) -> pd.DataFrame | None:
    if not path.is_file():
        state.note_missing(path)
        return None
    try:
        frame = pd.read_csv(path)
    except (OSError, ValueError) as error:
        state.note_unreadable(path, error)
        return None
    return _check_columns(frame, required, path, state)


def _read_metadata(path: Path, state: ReportState) -> dict[str, Any] | None:
    """Read the metadata a stage stored in a Parquet file, or record the file as missing or unreadable."""
    if not path.is_file():
        state.note_missing(path)
        return None
    try:
        return read_parquet_metadata(path)
    except (OSError, ValueError) as error:
        state.note_unreadable(path, error)
        return None


def load_summaries(params: Mapping[str, Any], paths: RunPaths, state: ReportState) -> None:
    """Read every variant's training metrics, test retrieval and score summary, the baseline's, the pairs'."""
    for variant in params["models"]["variants"]:
        state.train_metrics[variant] = _read_json(paths.train_metrics(variant), state)
        state.retrieval[variant] = _read_json(paths.retrieval(variant), state)
        state.summaries[variant] = _read_json(paths.score_summary(variant), state)
    state.baseline = _read_json(paths.baseline_summary, state)
    state.pairs_summary = _read_json(paths.pairs_summary, state)


def figure_convention(params: Mapping[str, Any]) -> str:
    """Return the scoring convention of the figures.

    This is ``released_code`` when the run computes it, because Khorrami and Räsänen
    (Interspeech 2021) made their figures with their released scoring code.
    """
    conventions = params["scoring"]["conventions"]
    return published.TABLE2_CONVENTION if published.TABLE2_CONVENTION in conventions else conventions[0]


def scores_kind(variant: str) -> str:
    """Return the tensor kind the figures show: softmax T for CNNATT, raw T for CNN0."""
    return "softmax" if published.is_attention_variant(variant) else "raw"


# -- tables and metrics ----------------------------------------------------------------------------


def write_tables(paths: RunPaths, table1: pd.DataFrame, table2: pd.DataFrame) -> dict[int, str]:
    """Write both tables as CSV, Markdown and LaTeX; return the Markdown of each for report.md."""
    markdown = {}
    displays = {
        1: (table1, tables.display_table1(table1), 1, None),
        2: (table2, tables.display_table2(table2), 2, "Convention"),
    }
    for number, (numeric, display, text_columns, group_by) in displays.items():
        write_text_atomic(paths.table(number, "csv"), numeric.to_csv(index=False))
        markdown[number] = tables.to_markdown(display, text_columns=text_columns)
        write_text_atomic(paths.table(number, "md"), markdown[number])
        write_text_atomic(paths.table(number, "tex"), tables.to_latex(display, text_columns, group_by=group_by))
        logger.info("wrote table %d (%d rows) to %s", number, len(numeric), paths.table(number, "md"))
    return markdown


# -- Fig. 3 ------------------------------------------------------------------------------------------


def _select_scores(scores: pd.DataFrame | None, convention: str, kind: str) -> pd.DataFrame | None:
    if scores is None:
        return None
    selected = scores[(scores["convention"] == convention) & (scores["kind"] == kind)]
    return selected if not selected.empty else None


def draw_fig3(params: Mapping[str, Any], paths: RunPaths, state: ReportState) -> pd.DataFrame | None:
    """Draw Fig. 3 for ``report.fig3_variant`` in every scoring convention; return the main fits.

    ``paths.fig3`` shows the figure convention (see ``figure_convention``) and
    ``figures/fig3_<convention>`` every convention. The category means behind the
    main figure go to ``figures/fig3_data.csv`` for ``dvc plots``.
    """
    variant = params["report"]["fig3_variant"]
    kind = scores_kind(variant)
    main_convention = figure_convention(params)
    columns = ["convention", "kind", "category_name", *figures.CATEGORY_COLUMNS]
    scores = _read_parquet(paths.scores(variant), state, columns=columns)
    baseline_scores = _read_parquet(paths.baseline_scores, state, columns=columns)

    main_fits = None
    for convention in params["scoring"]["conventions"]:
        model = _select_scores(scores, convention, kind)
        baseline = _select_scores(baseline_scores, convention, "baseline")
        label = f"{published.model_label(variant, kind)}, {convention} convention"
        targets = [paths.figure(f"fig3_{convention}")]
        if convention == main_convention:
            targets.insert(0, paths.fig3)
        if model is None:
            message = f"No {kind} scores of {variant} for the {convention} convention."
            state.notes.append(f"Fig. 3 ({convention}): {message}")
            figure = figures.placeholder_figure(message)
            for target in targets:
                figures.save_figure(figure, target)
            if convention == main_convention:
                # Written with its header only, because dvc plots expects the file to exist.
                empty = pd.DataFrame(columns=["category_name", "pairs", *figures.CATEGORY_COLUMNS, "source"])
                write_text_atomic(paths.figure("fig3_data", "csv"), empty.to_csv(index=False))
            continue

        model_means = figures.category_means(model)
        baseline_means = figures.category_means(baseline) if baseline is not None else None
        if baseline is None:
            state.notes.append(f"Fig. 3 ({convention}): no baseline scores, so the baseline fits are not drawn.")
        figure = figures.plot_fig3(model_means, baseline_means, title=label)
        for target in targets:
            figures.save_figure(figure, target)
        state.figures.append(ReportFigure(f"fig3_{convention}", targets[-1], f"Fig. 3, {label}", "fig3"))

        if convention == main_convention:
            main_fits = figures.fig3_fits(model_means, baseline_means)
            data = [model_means.assign(source="model")]
            if baseline_means is not None:
                data.append(baseline_means.assign(source="baseline"))
            write_text_atomic(paths.figure("fig3_data", "csv"), pd.concat(data).to_csv(index=False))
    return main_fits


# -- training curves, confusions, similarities ------------------------------------------------------


HISTORY_COLUMNS = ["epoch", "train_loss", "val_loss", "val_r10_s2i", "val_r10_i2s"]


def draw_training_curves(params: Mapping[str, Any], paths: RunPaths, state: ReportState) -> None:
    for variant in params["models"]["variants"]:
        history = _read_csv(paths.history(variant), state, required=HISTORY_COLUMNS)
        if history is None or history.empty:
            state.notes.append(f"Training curves: no history for {variant}.")
            continue
        metrics = state.train_metrics.get(variant) or {}
        best_epoch = metrics.get("best_epoch")
        figure = figures.plot_training_curves(
            history, title=f"Training of {published.model_label(variant)}", best_epoch=best_epoch
        )
        png, _ = figures.save_figure(figure, paths.figure(f"training_{variant}"))
        state.figures.append(ReportFigure(f"training_{variant}", png, published.model_label(variant), "training"))


def _select_confusion(confusion: pd.DataFrame, convention: str, kind: str) -> pd.DataFrame:
    """Keep one convention and kind when the confusion table has such columns."""
    if "convention" in confusion and convention in set(confusion["convention"]):
        confusion = confusion[confusion["convention"] == convention]
    if "kind" in confusion and kind in set(confusion["kind"]):
        confusion = confusion[confusion["kind"] == kind]
    return confusion


def draw_confusions(params: Mapping[str, Any], paths: RunPaths, state: ReportState) -> None:
    convention = figure_convention(params)
    for variant in params["models"]["variants"]:
        confusion = _read_parquet(paths.confusion(variant), state, required=["target", "compared", "metric", "value"])
        if confusion is None or confusion.empty:
            state.notes.append(f"Confusion heat map: no confusion table for {variant}.")
            continue
        confusion = _select_confusion(confusion, convention, scores_kind(variant))
        for metric in sorted(set(confusion["metric"])):
            matrix = figures.confusion_matrix(confusion, metric)
            label = f"{published.model_label(variant, scores_kind(variant))}: mean {metric}"
            figure = figures.plot_confusion(matrix, title=label, value_label=f"mean {metric}")
            name = f"confusion_{variant}_{metric}"
            png, _ = figures.save_figure(figure, paths.figure(name))
            state.figures.append(ReportFigure(name, png, label, "confusion"))


def draw_similarity_histogram(params: Mapping[str, Any], paths: RunPaths, state: ReportState) -> None:
    similarities = _read_parquet(paths.similarities, state)
    if similarities is not None and "is_best" in similarities:
        # The pairs stage names the flag is_best; the histogram reads best.
        similarities = similarities.rename(columns={"is_best": "best"})
    if similarities is not None:
        similarities = _check_columns(similarities, ["similarity", "best"], paths.similarities, state)
    if similarities is None or similarities.empty:
        state.notes.append("Similarity histogram: no noun-label similarities.")
        return
    figure = figures.plot_similarity_histogram(similarities, threshold=float(params["pairs"]["threshold"]))
    png, _ = figures.save_figure(figure, paths.figure("similarities"))
    state.figures.append(ReportFigure("similarities", png, "Word-object similarities", "similarities"))


# -- alignment overlays -------------------------------------------------------------------------------


def choose_overlay_pairs(pairs: pd.DataFrame, count: int, seed: int) -> pd.DataFrame:
    """Pick ``count`` pairs at random (seeded), the same for every variant, sorted by pair_id."""
    ordered = pairs.sort_values("pair_id").reset_index(drop=True)
    count = min(count, len(ordered))
    chosen = np.random.default_rng(seed).choice(len(ordered), size=count, replace=False)
    return ordered.iloc[np.sort(chosen)].reset_index(drop=True)


def read_pair_tensors(path: Path, caption_ids: Sequence[int]) -> dict[tuple[int, int, str], np.ndarray]:
    """Read the T of the given captions from an exchange-format file, keyed by (image_id, caption_id, kind).

    Only the ``caption_id`` column is read from every row group. The tensors are
    read only from row groups that contain a requested caption, so besides the result
    at most one row group is in memory, and the time grows with the number of requested captions.
    """
    parquet = pq.ParquetFile(path)
    requested = np.asarray(sorted(set(caption_ids)), dtype=np.int64)
    tensors = {}
    for group in range(parquet.num_row_groups):
        group_ids = parquet.read_row_group(group, columns=["caption_id"]).column(0).to_numpy()
        hits = np.isin(group_ids, requested)
        if not hits.any():
            continue
        table = parquet.read_row_group(group, columns=TENSOR_COLUMNS).filter(pa.array(hits))
        values = table.column("tensor")
        for position, row in enumerate(table.drop_columns(["tensor"]).to_pylist()):
            shape = (row["grid_h"], row["grid_w"], row["frames"])
            flat = values[position].values.to_numpy(zero_copy_only=False).astype(np.float32)
            tensors[(row["image_id"], row["caption_id"], row["kind"])] = flat.reshape(shape)  # [H, W, F]
    return tensors


def _tensor_window(path: Path, default: int) -> int:
    window = read_parquet_metadata(path).get("window")
    return int(window) if window else default


def _load_spectrograms(paths: RunPaths, caption_ids: set[int]) -> dict[int, np.ndarray]:
    """Return the log-mel spectrogram [mel, frames] of each requested caption found in the audio shards."""
    spectrograms: dict[int, np.ndarray] = {}
    for shard in paths.audio_shard_names:
        index_path, array_path = paths.audio_index(shard), paths.audio_shard(shard)
        if not (index_path.is_file() and array_path.is_file()):
            continue
        try:
            index = pd.read_parquet(index_path)
        except (OSError, ValueError) as error:
            logger.warning("failed to read audio index %s (%s); its spectrograms are not drawn", index_path, error)
            continue
        if not {"caption_id", "row"} <= set(index.columns):
            continue
        if "status" in index:
            index = index[index["status"] == "ok"]
        requested = index[index["caption_id"].isin(caption_ids)]
        if requested.empty:
            continue
        array = np.load(array_path, mmap_mode="r")  # [N, mel, frames]
        for caption_id, row in zip(requested["caption_id"], requested["row"]):
            spectrograms[int(caption_id)] = np.asarray(array[int(row)], dtype=np.float32)
    return spectrograms


def _load_image(file_path: str | None) -> np.ndarray | None:
    """Read an image as RGB, stretched to 224 x 224 like the masks; None when it cannot be read."""
    if not file_path or not Path(file_path).is_file():
        return None
    try:
        with Image.open(file_path) as image:
            resized = image.convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR)
            return np.asarray(resized)
    except OSError as error:
        logger.warning("failed to read image %s (%s); drawing the overlay on grey", file_path, error)
        return None


def _decode_mask(counts: str) -> np.ndarray:
    rle = {"size": [IMAGE_SIZE, IMAGE_SIZE], "counts": counts.encode()}
    return mask_utils.decode(rle).astype(bool)  # [224, 224]


@dataclass
class OverlayInputs:
    """Everything the overlays of all variants share: chosen pairs, masks, images, spectrograms."""

    pairs: pd.DataFrame
    masks: dict[tuple[int, int], np.ndarray]
    images: dict[int, np.ndarray | None]
    spectrograms: dict[int, np.ndarray]


PAIR_COLUMNS = ["pair_id", "image_id", "caption_id", "word", "category_id", "category_name", "frame_start", "frame_end"]


def load_overlay_inputs(params: Mapping[str, Any], paths: RunPaths, state: ReportState) -> OverlayInputs | None:
    mask_column = "mask_released" if figure_convention(params) == "released_code" else "mask_paper"
    pairs = _read_parquet(paths.pairs, state, required=PAIR_COLUMNS)
    masks = _read_parquet(paths.masks, state, required=["image_id", "category_id", mask_column])
    if pairs is None or masks is None or pairs.empty:
        state.notes.append("Alignment overlays: no pairs or no masks, so no overlays are drawn.")
        return None
    chosen = choose_overlay_pairs(pairs, params["report"]["overlays"], params["seed"])

    keys = set(zip(chosen["image_id"], chosen["category_id"]))
    mask_rows = masks[[key in keys for key in zip(masks["image_id"], masks["category_id"])]]
    decoded = {
        (int(image_id), int(category_id)): _decode_mask(counts)
        for image_id, category_id, counts in zip(mask_rows["image_id"], mask_rows["category_id"], mask_rows[mask_column])
    }

    images = _read_parquet(paths.images, state, required=["image_id", "file_path"])
    files = {} if images is None else dict(zip(images["image_id"], images["file_path"]))
    image_arrays = {int(image_id): _load_image(files.get(image_id)) for image_id in set(chosen["image_id"])}
    spectrograms = _load_spectrograms(paths, set(int(value) for value in chosen["caption_id"]))
    return OverlayInputs(chosen, decoded, image_arrays, spectrograms)


def draw_overlays(params: Mapping[str, Any], paths: RunPaths, state: ReportState) -> None:
    """Draw the alignment overlays of the chosen pairs for every variant with a tensor file.

    A pair without a mask or a tensor row is skipped and counted. A missing image or
    spectrogram is drawn as a grey panel or a text and counted.
    """
    if params["report"]["overlays"] == 0:
        return
    inputs = load_overlay_inputs(params, paths, state)
    if inputs is None:
        return
    state.overlay_skips["images not readable"] += sum(image is None for image in inputs.images.values())
    missing_audio = set(int(value) for value in inputs.pairs["caption_id"]) - set(inputs.spectrograms)
    state.overlay_skips["spectrograms not found"] += len(missing_audio)

    default_window = params["frames"]["window"]
    for variant in params["models"]["variants"]:
        tensor_path = paths.tensors(variant)
        if not tensor_path.is_file():
            state.note_missing(tensor_path)
            continue
        try:
            tensors = read_pair_tensors(tensor_path, inputs.pairs["caption_id"].tolist())
            window = _tensor_window(tensor_path, default_window)
        except (OSError, ValueError, KeyError, pa.ArrowException) as error:
            state.note_unreadable(tensor_path, error)
            continue
        attention = published.is_attention_variant(variant)
        object_kind, word_kind = ("softmax_space", "softmax_time") if attention else ("raw", "raw")
        for pair in inputs.pairs.to_dict("records"):
            _draw_one_overlay(paths, state, inputs, variant, pair, tensors, (object_kind, word_kind), window)


def _draw_one_overlay(
    paths: RunPaths,
    state: ReportState,
    inputs: OverlayInputs,
    variant: str,
    pair: Mapping[str, Any],
    tensors: Mapping[tuple[int, int, str], np.ndarray],
    kinds: tuple[str, str],
    window: int,
) -> None:
    image_id, caption_id = int(pair["image_id"]), int(pair["caption_id"])
    mask = inputs.masks.get((image_id, int(pair["category_id"])))
    if mask is None:
        state.overlay_skips["mask not found"] += 1
        return

    # Use the softmax kinds when the file has them, otherwise raw T.
    object_tensor = tensors.get((image_id, caption_id, kinds[0]), tensors.get((image_id, caption_id, "raw")))
    word_tensor = tensors.get((image_id, caption_id, kinds[1]), tensors.get((image_id, caption_id, "raw")))
    if object_tensor is None or word_tensor is None:
        state.overlay_skips[f"no tensor row in {variant}"] += 1
        return

    frame_start, frame_end = int(pair["frame_start"]), int(pair["frame_end"])
    heat = figures.object_heat_map(object_tensor, frame_start, frame_end, IMAGE_SIZE, window)
    attention = figures.word_attention(word_tensor, mask, window)
    gs_object, gs_word = float(heat[mask].sum()), float(attention[frame_start:frame_end].sum())
    title = (
        f"{published.model_label(variant, scores_kind(variant))}: '{pair['word']}' / {pair['category_name']} "
        f"(image {image_id}, caption {caption_id}); GS_obj {gs_object:.2f}, GS_word {gs_word:.2f}"
    )
    figure = figures.plot_overlay(
        inputs.images.get(image_id), mask, heat, inputs.spectrograms.get(caption_id),
        attention, frame_start, frame_end, title,
    )  # fmt: skip
    name = f"overlay_{variant}_pair{int(pair['pair_id'])}"
    png, _ = figures.save_figure(figure, paths.figure(name))
    state.figures.append(ReportFigure(name, png, title, "overlays"))


# -- skipped items and warnings -----------------------------------------------------------------------

# A nested mapping with more integer entries than this (such as pairs per category)
# is summarised as one line with its entry count and total.
MAX_LISTED_COUNTS = 12


def flatten_counts(data: Any, prefix: str = "") -> list[tuple[str, str]]:
    """List the non-zero integer entries of nested metadata as (dotted key, value text).

    Booleans are not counts and are left out. A mapping with more than
    ``MAX_LISTED_COUNTS`` integers directly inside becomes one summary line.
    """
    if not isinstance(data, Mapping):
        return []
    direct = {
        key: value for key, value in data.items() if isinstance(value, int) and not isinstance(value, bool) and value
    }
    if len(direct) > MAX_LISTED_COUNTS:
        lines = [(prefix or "(top level)", f"{len(direct)} entries, total {sum(direct.values()):,}")]
    else:
        lines = [(f"{prefix}.{key}" if prefix else str(key), f"{value:,}") for key, value in direct.items()]
    for key, value in data.items():
        if isinstance(value, Mapping):
            lines += flatten_counts(value, f"{prefix}.{key}" if prefix else str(key))
    return lines


def _feature_status_counts(index_paths: Sequence[Path]) -> list[tuple[str, str]]:
    """Count feature items by ``status`` over the shard indexes, plus the shards without a readable index.

    An index without a ``status`` column counts all its items as ``ok``.
    """
    statuses: Counter = Counter()
    shards_without_index = 0
    for index_path in index_paths:
        try:
            index = pd.read_parquet(index_path)
        except (OSError, ValueError):
            shards_without_index += 1
            continue
        statuses.update(index["status"].astype(str) if "status" in index else ["ok"] * len(index))
    lines = [(f"items with status {status}", f"{count:,}") for status, count in sorted(statuses.items())]
    if shards_without_index:
        lines.append(("shards with a missing or unreadable index", f"{shards_without_index:,}"))
    return lines


def _score_counts(summary: Mapping[str, Any]) -> dict[str, Any]:
    """Keep the pair counts and skip counts of a score summary, per convention and kind."""
    counts: dict[str, Any] = {}
    for convention, kinds in summary.items():
        if not isinstance(kinds, Mapping):
            continue
        for kind, block in kinds.items():
            if not isinstance(block, Mapping):
                continue
            counts[f"{convention}.{kind}"] = {
                "pairs": block.get("pairs"),
                "categories_without_pairs": len(block.get("categories_without_pairs") or []),
                "skipped": block.get("skipped") or {},
                "tensor_rows_without_pairs": block.get("tensor_rows_without_pairs"),
            }
    return counts


def collect_skip_counts(paths: RunPaths, state: ReportState) -> dict[str, list]:
    """Gather item counts and skip counts that the earlier stages stored, by source."""
    counts: dict[str, list[tuple[str, str]]] = {}
    for label, path in (("manifest", paths.manifest), ("images manifest", paths.images), ("nouns", paths.nouns)):
        metadata = _read_metadata(path, state)
        if metadata is not None:
            counts[label] = flatten_counts(metadata)
    if state.pairs_summary is not None:
        counts["pairs"] = flatten_counts(state.pairs_summary)
    counts["audio features"] = _feature_status_counts([paths.audio_index(shard) for shard in paths.audio_shard_names])
    counts["image features"] = _feature_status_counts([paths.image_index(shard) for shard in paths.image_shard_names])
    for variant, summary in [*state.summaries.items(), ("baseline", state.baseline)]:
        if summary is not None:
            counts[f"scores of {variant}"] = flatten_counts(_score_counts(summary))
    overlay_skips = [(reason, f"{count:,}") for reason, count in sorted(state.overlay_skips.items()) if count]
    if overlay_skips:
        counts["alignment overlays"] = overlay_skips
    return counts


def _find_key(data: Any, key: str) -> Any:
    """Return the first value stored under ``key`` anywhere in nested mappings, or None."""
    if not isinstance(data, Mapping):
        return None
    if key in data:
        return data[key]
    for value in data.values():
        found = _find_key(value, key)
        if found is not None:
            return found
    return None


def image_weights(params: Mapping[str, Any], paths: RunPaths) -> str:
    """Return the VGG16 weights the image features were made with.

    The value comes from the first readable shard index's metadata, or from the
    parameters when no index records it.
    """
    for shard in paths.image_shard_names:
        try:
            weights = _find_key(read_parquet_metadata(paths.image_index(shard)), "weights")
        except (OSError, ValueError):
            continue
        if weights is not None:
            return str(weights)
    return str(params["features"]["image"]["weights"])


def vectors_source(params: Mapping[str, Any], pairs_summary: Mapping[str, Any] | None) -> str:
    """Return where the word vectors came from: ``self-trained`` or the configured file or name."""
    source = (pairs_summary or {}).get("vectors_source")
    if source:
        return str(source)
    return "self-trained" if params["pairs"]["vectors"] is None else str(params["pairs"]["vectors"])


def tagger_name(params: Mapping[str, Any], pairs_summary: Mapping[str, Any] | None) -> str:
    """Return the part-of-speech tagger the pairs stage recorded, or the configured choice."""
    return str((pairs_summary or {}).get("tagger") or params["nouns"]["tagger"])


def report_warnings(weights: str, vectors: str, state: ReportState) -> list[str]:
    """Return the warnings printed at the top of the report, most serious first."""
    warnings = []
    if weights != "imagenet":
        warnings.append(
            f"The image encoder was NOT pretrained (features.image.weights: {weights}). VGG16 had random "
            "weights, so retrieval and alignment scores cannot be compared with the paper's."
        )
    if vectors == "self-trained":
        warnings.append(
            "The word vectors were trained on this corpus's captions (pairs.vectors: null), not the "
            "pretrained GoogleNews word2vec, so the word-object pairs differ from the paper's."
        )
    if state.missing or state.unreadable:
        warnings.append(
            f"{len(state.missing) + len(state.unreadable)} input files are missing or unreadable; the "
            "tables show n/a for their values (list at the end of this report)."
        )
    return warnings


# -- report.md ---------------------------------------------------------------------------------------

PARAMETER_KEYS = [
    "run", "seed", "data.source", "data.coco_root", "data.train_split", "data.test_split",
    "data.max_images", "data.speech.format", "data.speech.source", "frames.convention",
    "frames.window", "nouns.tagger", "pairs.vectors", "pairs.threshold", "features.image.weights",
    "features.image.resize", "models.variants", "models.width", "models.cnn0_pooling",
    "train.epochs", "train.batch_size", "train.lr", "train.select_by", "train.recall_pools",
    "train.recall_pool_size", "scoring.conventions", "scoring.bootstrap_resamples",
    "scoring.confidence", "report.fig3_variant",
]  # fmt: skip


def _link(target: Path, report: Path) -> str:
    return Path(os.path.relpath(target, report.parent)).as_posix()


def _chance_lines(table1: pd.DataFrame) -> list[str]:
    lines = []
    for record in table1.to_dict("records"):
        if pd.isna(record["chance"]):
            continue
        line = (
            f"- {record['model']}: pooled recall@10 {tables.format_score(record['chance'], digits=4)} "
            f"(pools: {tables.format_integer(record['pools'])}, pool size: {tables.format_integer(record['pool_size'])})"
        )
        if pd.notna(record["full_chance_r10_s2i"]):
            line += (
                f"; full-set recall@10 over {tables.format_integer(record['test_pairs'])} test pairs "
                f"{tables.format_score(record['full_chance_r10_s2i'], digits=4)} speech→image, "
                f"{tables.format_score(record['full_chance_r10_i2s'], digits=4)} image→speech"
            )
        lines.append(line + ".")
    return lines or ["- No test retrieval results."]


def _fits_markdown(fits: pd.DataFrame) -> str:
    pivot = fits.pivot_table(index=["metric", "x"], columns="source", values="slope", aggfunc="first", dropna=False)
    display = pd.DataFrame(
        {
            "Score": [metric for metric, _ in pivot.index],
            "against": [figures.AXIS_LABELS[x] for _, x in pivot.index],
            "slope (model)": [tables.format_score(value) for value in pivot.get("model", pd.Series(np.nan, pivot.index))],
            "slope (baseline)": [
                tables.format_score(value) for value in pivot.get("baseline", pd.Series(np.nan, pivot.index))
            ],
        }
    )
    return tables.to_markdown(display, text_columns=2)


def compose_report(
    params: Mapping[str, Any],
    paths: RunPaths,
    state: ReportState,
    table_markdown: Mapping[int, str],
    table1: pd.DataFrame,
    fig3_fits: pd.DataFrame | None,
    warnings: Sequence[str],
    counts: Mapping[str, Sequence[tuple[str, str]]],
) -> str:
    """Assemble report.md: warnings, parameters, both tables, Fig. 3, other figures, counts, gaps."""
    report = paths.report
    lines = [f"# Results of run `{params['run']}`", ""]
    for warning in warnings:
        lines += [f"> **WARNING:** {warning}", ""]

    lines += ["## Run parameters", "", "| parameter | value |", "| :--- | :--- |"]
    for key in PARAMETER_KEYS:
        try:
            value = json.dumps(lookup(params, key))
        except ParamsError:
            value = "not set"
        lines.append(f"| `{key}` | `{value}` |")
    lines += [
        "",
        f"Word vectors used: `{vectors_source(params, state.pairs_summary)}`. "
        f"Part-of-speech tagger: `{tagger_name(params, state.pairs_summary)}`. "
        f"Image features: VGG16 weights `{image_weights(params, paths)}`.",
        "",
    ]

    lines += ["## Table 1: model size and retrieval", "", table_markdown[1]]
    lines += [
        "Recall@10 is the mean over pools of test pairs, as in the authors' code; "
        "\"paper\" columns are the published values and Δ is ours minus the paper's. "
        f"Files: [CSV]({_link(paths.table(1, 'csv'), report)}), [LaTeX]({_link(paths.table(1, 'tex'), report)}).",
        "",
        "Chance levels:",
        "",
        *_chance_lines(table1),
        "",
    ]

    lines += ["## Table 2: alignment and glancing scores", "", table_markdown[2]]
    lines += [
        "Each score is the mean of the per-category means, with its bootstrap confidence interval "
        f"({params['scoring']['confidence']:.0%}, {params['scoring']['bootstrap_resamples']} resamples within "
        "categories). The published values were computed with the authors' released scoring code, so they are "
        "comparable with the `released_code` rows; they are repeated beside the `paper` rows for reference. "
        f"Files: [CSV]({_link(paths.table(2, 'csv'), report)}), [LaTeX]({_link(paths.table(2, 'tex'), report)}).",
        "",
    ]

    variant = params["report"]["fig3_variant"]
    lines += [
        "## Fig. 3: scores against object size and word duration",
        "",
        f"![Fig. 3]({_link(paths.fig3, report)})",
        "",
        f"{published.model_label(variant, scores_kind(variant))}, {figure_convention(params)} convention. "
        "Points are categories; solid lines are linear fits, faint wide lines the random baseline's fits. "
        f"Data: [CSV]({_link(paths.figure('fig3_data', 'csv'), report)}).",
        "",
    ]
    if fig3_fits is not None:
        lines += ["Slopes of the linear fits:", "", _fits_markdown(fig3_fits)]

    groups = [
        ("fig3", "Fig. 3 in every scoring convention"),
        ("overlays", "Alignment overlays"),
        ("training", "Training curves"),
        ("confusion", "Confusion heat maps"),
        ("similarities", "Word-object similarities"),
    ]
    lines += ["## Figures", ""]
    for group, heading in groups:
        members = [item for item in state.figures if item.group == group]
        if not members:
            continue
        lines += [f"### {heading}", ""]
        for item in members:
            png, pdf = _link(item.png, report), _link(item.png.with_suffix(".pdf"), report)
            lines.append(f"- [{item.title}]({png}) ([PDF]({pdf}))")
        lines.append("")

    lines += ["## Items counted and skipped by the stages", "", "Counts of zero are not listed.", ""]
    for source, entries in counts.items():
        if not entries:
            continue
        lines += [f"### {source}", "", "| count | value |", "| :--- | ---: |"]
        lines += [f"| {name} | {value} |" for name, value in entries]
        lines.append("")

    if state.notes or state.missing or state.unreadable:
        lines += ["## Missing inputs and gaps", ""]
        lines += [f"- {note}" for note in state.notes]
        lines += [f"- missing: `{path}`" for path in state.missing]
        lines += [f"- unreadable: `{path}` ({error})" for path, error in state.unreadable.items()]
        lines.append("")
    return "\n".join(lines)


# -- entry point ---------------------------------------------------------------------------------------


def run(params: Mapping[str, Any], paths: RunPaths) -> None:
    """Write Tables 1-2, Fig. 3, the other figures, report.md and metrics.json of a run."""
    logger.info("making the report of run %s under %s", params["run"], paths.root)
    state = ReportState()
    load_summaries(params, paths, state)

    variants = params["models"]["variants"]
    table1 = tables.build_table1(variants, state.train_metrics, state.retrieval)
    table2 = tables.build_table2(variants, params["scoring"]["conventions"], state.summaries, state.baseline)
    table_markdown = write_tables(paths, table1, table2)
    write_json_atomic(paths.metrics, tables.table_metrics(table1, table2))

    logger.info("drawing Fig. 3")
    fig3_fits = draw_fig3(params, paths, state)
    steps = [
        ("training curves", draw_training_curves),
        ("confusion heat maps", draw_confusions),
        ("similarity histogram", draw_similarity_histogram),
        ("alignment overlays", draw_overlays),
    ]
    for label, step in tqdm(steps, desc="report figures", unit="step"):
        logger.info("drawing %s", label)
        step(params, paths, state)

    weights, vectors = image_weights(params, paths), vectors_source(params, state.pairs_summary)
    counts = collect_skip_counts(paths, state)
    warnings = report_warnings(weights, vectors, state)
    for warning in warnings:
        logger.warning(warning)
    text = compose_report(params, paths, state, table_markdown, table1, fig3_fits, warnings, counts)
    write_text_atomic(paths.report, text)
    logger.info(
        "wrote %s with %d figures; %d inputs missing, %d unreadable",
        paths.report, len(state.figures), len(state.missing), len(state.unreadable),
    )  # fmt: skip
