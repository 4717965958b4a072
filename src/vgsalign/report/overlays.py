"""Alignment overlays of the ``make_report`` stage.

For a seeded sample of word-object pairs, each variant's T is drawn as a heat
map over the image and as attention over the caption's spectrogram.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from pycocotools import mask as mask_utils

from vgsalign.io import read_parquet_metadata
from vgsalign.layout import RunPaths
from vgsalign.report import figures, published
from vgsalign.report.state import ReportFigure, ReportState, _read_parquet, figure_convention, scores_kind

logger = logging.getLogger(__name__)

IMAGE_SIZE = 224
TENSOR_COLUMNS = ["image_id", "caption_id", "kind", "grid_h", "grid_w", "frames", "tensor"]


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
    name = f"{variant}_pair{int(pair['pair_id'])}"
    png, _ = figures.save_figure(figure, paths.figure(f"overlays/{name}"))
    state.figures.append(ReportFigure(name, png, title, "overlays"))
