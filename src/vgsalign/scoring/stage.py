"""Stages ``score_alignments`` and ``score_baseline``, and scoring of external tensor files.

Tensors are streamed one Parquet row group at a time, so memory stays flat in
the number of tensors. Only the per-pair scores (a few numbers per pair) and the
masks' pixel counts per cell (about 400 bytes per mask and convention) are kept. Each tensor row (image_id, caption_id, kind) is joined with the
word-object pairs of that image and caption, and each pair with the mask of its
category in that image.

Rules for bad input (counts go to the summary and the Parquet metadata):

- a tensor row with no pair: counted (``tensor_rows_without_pairs``) and ignored;
- a pair with no tensor: skipped and counted (``pair_without_tensor``);
- a pair whose (image, category) has no mask: skipped (``mask_not_found``);
- a pair whose mask is empty at 224 x 224 in a convention: skipped in that
  convention (``empty_mask``), because AS_word divides by the mask area;
- a pair with an empty word interval or one outside the window: skipped
  (``empty_word_interval``, ``word_outside_window``);
- a second tensor row for the same (image_id, caption_id, kind): ignored and
  counted (``duplicate_tensor_rows``);
- NaN or infinite values in a tensor: TensorValueError naming the pair;
- a row whose shape differs from the file's: TensorFormatError naming the row;
- an all-zero tensor is valid: the uniform rule of the scores applies.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from tqdm import tqdm

from vgsalign.io import read_parquet_metadata, write_json_atomic, write_parquet_atomic
from vgsalign.layout import RunPaths
from vgsalign.scoring.baseline import baseline_geometry, random_tensor_batches
from vgsalign.scoring.bootstrap import summarise_scores
from vgsalign.scoring.confusion import (
    ConfusionAccumulator,
    ImageMasks,
    confusion_scores,
    empty_confusion,
    other_pixel_counts,
    row_mask_block,
)
from vgsalign.scoring.engine import (
    CONVENTIONS,
    MASK_COLUMNS,
    METRICS,
    OBJECT_METRICS,
    WORD_METRICS,
    Geometry,
    PreparedTensors,
    check_convention,
    mask_attention,
    prepare_tensors,
    rle_cell_counts,
    scores_from_attention,
    word_attention,
    word_frame_counts,
)
from vgsalign.tensors import TensorBatch, TensorFileInfo, TensorFormatError, iter_tensor_batches, read_tensor_info

logger = logging.getLogger(__name__)

PAIR_COLUMNS = ("pair_id", "caption_id", "image_id", "word", "frame_start", "frame_end", "category_id", "category_name")
MASK_KEY_COLUMNS = ("image_id", "category_id", "category_name", "area_fraction")
SCORE_COLUMNS = (
    "pair_id",
    "caption_id",
    "image_id",
    "category_id",
    "category_name",
    "word",
    "convention",
    "kind",
    *METRICS,
    "area_fraction",
    "word_duration_s",
)
# Tensor kind read for each metric of each output kind.
KIND_SOURCES = {
    "raw": {metric: "raw" for metric in METRICS},
    "softmax": {
        **{metric: "softmax_space" for metric in OBJECT_METRICS},
        **{metric: "softmax_time" for metric in WORD_METRICS},
    },
}
# Metrics computed from each tensor kind.
TENSOR_KIND_METRICS = {"raw": METRICS, "softmax_space": OBJECT_METRICS, "softmax_time": WORD_METRICS}
# The confusion matrices use the object metrics, read from these tensor kinds.
CONFUSION_KINDS = {"raw": "raw", "softmax_space": "softmax"}
SKIP_REASONS = (
    "pair_without_tensor",
    "mask_not_found",
    "empty_mask",
    "empty_word_interval",
    "word_outside_window",
)
FRAME_SECONDS = 0.01
# Second word of the bootstrap's seed sequence (the baseline uses another).
BOOTSTRAP_STREAM = 2
# File names written by score_external into its output folder.
EXTERNAL_FILES = {"scores": "pairs.parquet", "summary": "summary.json", "confusion": "confusion.parquet"}


class ScoringInputError(ValueError):
    """Pairs, masks or tensors that cannot be scored together."""


# -- inputs -----------------------------------------------------------------------


def load_pairs(path: str | os.PathLike) -> pd.DataFrame:
    """Read the word-object pairs and check their columns."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pairs file not found: {path}. Run the pairing stage or check the path.")
    pairs = pd.read_parquet(path)
    missing = [column for column in PAIR_COLUMNS if column not in pairs.columns]
    if missing:
        raise ScoringInputError(f"pairs file {path} lacks the columns {', '.join(missing)}")
    if pairs["pair_id"].duplicated().any():
        duplicate = pairs.loc[pairs["pair_id"].duplicated(), "pair_id"].iloc[0]
        raise ScoringInputError(f"pairs file {path} repeats pair_id {duplicate}; pair ids must be unique")
    return pairs.sort_values("pair_id", kind="stable").reset_index(drop=True)


def load_masks(path: str | os.PathLike, conventions: Sequence[str]) -> pd.DataFrame:
    """Read the masks table with the mask columns of ``conventions``, sorted by image and category."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"masks file not found: {path}. Run the pairing stage or check the path.")
    needed = [*MASK_KEY_COLUMNS, *(MASK_COLUMNS[convention] for convention in conventions)]
    available = pq.read_schema(path).names
    missing = [column for column in needed if column not in available]
    if missing:
        raise ScoringInputError(f"masks file {path} lacks the columns {', '.join(missing)}")
    masks = pd.read_parquet(path, columns=needed)
    duplicated = masks.duplicated(["image_id", "category_id"])
    if duplicated.any():
        row = masks[duplicated].iloc[0]
        raise ScoringInputError(
            f"masks file {path} has two masks for image_id {row['image_id']}, category_id {row['category_id']}; "
            f"keep one row per category and image"
        )
    return masks.sort_values(["image_id", "category_id"], kind="stable").reset_index(drop=True)


class MaskStore:
    """Pixels per spatial cell of every mask of the images that have pairs, counted once up front.

    The counts are stored compactly (uint16 when a cell has at most 65,535
    pixels), so the masks of a 40,504-image test set take tens of megabytes per
    convention. Each row group then only indexes them.
    """

    CHUNK = 2048  # masks (or images) counted per call, to bound temporary memory

    def __init__(
        self,
        masks: pd.DataFrame,
        geometry: Geometry,
        conventions: Sequence[str],
        image_ids: np.ndarray,
        confusion: bool,
    ) -> None:
        self.masks = masks
        self.geometry = geometry
        self.categories = sorted(masks["category_name"].astype(str).unique().tolist())
        codes = {name: index for index, name in enumerate(self.categories)}
        self.category_index = masks["category_name"].astype(str).map(codes).to_numpy(dtype=np.int64)
        self.image_ids = masks["image_id"].to_numpy(dtype=np.int64)
        self.category_ids = masks["category_id"].to_numpy(dtype=np.int64)
        self.area_fraction = masks["area_fraction"].to_numpy(dtype=np.float64)

        # Images of the masks table, in order, and the mask rows each one owns.
        self.images, self.image_first = np.unique(self.image_ids, return_index=True)
        self.image_starts = np.append(self.image_first, len(self.image_ids))
        needed = np.isin(self.image_ids, image_ids)
        self.rles: dict[str, np.ndarray] = {}
        self.counts: dict[str, np.ndarray] = {}
        self.other: dict[str, np.ndarray] = {}
        compact = np.uint16 if geometry.cell_pixels.max() <= np.iinfo(np.uint16).max else np.float32
        for convention in conventions:
            self.rles[convention] = masks[MASK_COLUMNS[convention]].to_numpy(dtype=object)
            self.counts[convention] = np.zeros((len(masks), geometry.cells), dtype=compact)
            self._count(np.flatnonzero(needed), convention)
            if confusion:
                self.other[convention] = self._count_other(convention, compact)
        logger.info(
            "counted the pixels per cell of %d masks of %d images (%s)",
            int(needed.sum()),
            len(np.unique(self.image_ids[needed])),
            ", ".join(conventions),
        )

    def _rle_bytes(self, convention: str, row: int) -> bytes:
        text = self.rles[convention][row]
        return text.encode() if isinstance(text, str) else bytes(text)

    def _count(self, rows: np.ndarray, convention: str) -> None:
        """Count the pixels per cell of mask ``rows``, raising ScoringInputError naming a bad mask."""
        for first in range(0, len(rows), self.CHUNK):
            chunk = rows[first : first + self.CHUNK]
            strings = [self._rle_bytes(convention, row) for row in chunk]
            try:
                self.counts[convention][chunk] = rle_cell_counts(strings, self.geometry)
            except ValueError:
                for row, text in zip(chunk, strings):
                    try:
                        rle_cell_counts([text], self.geometry)
                    except ValueError as error:
                        raise ScoringInputError(
                            f"invalid {MASK_COLUMNS[convention]} of image_id {self.image_ids[row]}, category_id "
                            f"{self.category_ids[row]} in the masks file: {error}. Rebuild the masks (pairing stage)."
                        ) from error
                raise

    def _count_other(self, convention: str, dtype: type) -> np.ndarray:
        """Count the pixels of no category per cell of every image of the table: [I, C]."""
        other = np.zeros((len(self.images), self.geometry.cells), dtype=dtype)
        for first in range(0, len(self.images), self.CHUNK):
            last = min(first + self.CHUNK, len(self.images))
            rows = np.arange(self.image_starts[first], self.image_starts[last])
            other[first:last] = other_pixel_counts(
                self.rles[convention][rows],
                self.counts[convention][rows].astype(np.float64),
                self.image_starts[first : last + 1] - self.image_starts[first],
                self.geometry,
            )
        return other

    def find(self, image_ids: np.ndarray, category_ids: np.ndarray) -> np.ndarray:
        """Return the mask row of each (image, category), -1 where there is none."""
        index = pd.MultiIndex.from_arrays([self.image_ids, self.category_ids])
        return index.get_indexer(pd.MultiIndex.from_arrays([image_ids, category_ids]))

    def load(self, image_ids: np.ndarray, convention: str, confusion: bool) -> tuple[np.ndarray, ImageMasks]:
        """Return the masks of ``image_ids`` (sorted, unique, all in the table) in one convention.

        Returns (mask rows [M], ImageMasks); with ``confusion`` the "other" pixel
        counts are included.
        """
        image_index = np.searchsorted(self.images, image_ids)
        first = self.image_starts[image_index]
        sizes = self.image_starts[image_index + 1] - first
        rows = np.repeat(first, sizes) + np.arange(sizes.sum()) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        image_masks = ImageMasks(
            counts=self.counts[convention][rows].astype(np.float64),
            category_index=self.category_index[rows],
            image_starts=np.concatenate([[0], np.cumsum(sizes)]),
            rles=self.rles[convention][rows],
            other_counts=self.other[convention][image_index].astype(np.float64) if confusion else None,
        )
        return rows, image_masks


# -- streaming pass ---------------------------------------------------------------


@dataclass
class StreamCounts:
    """Counts of the streaming pass, per tensor kind."""

    tensor_rows: Counter = field(default_factory=Counter)
    tensor_rows_without_pairs: Counter = field(default_factory=Counter)
    duplicate_tensor_rows: Counter = field(default_factory=Counter)


class PairScorer:
    """Scores streamed tensor batches against the pairs and keeps the per-pair scores."""

    def __init__(
        self,
        pairs: pd.DataFrame,
        masks: MaskStore,
        geometry: Geometry,
        conventions: Sequence[str],
        confusion: bool = True,
    ) -> None:
        for convention in conventions:
            check_convention(convention)
        self.pairs = pairs
        self.masks = masks
        self.geometry = geometry
        self.conventions = tuple(conventions)
        self.counts = StreamCounts()
        self.confusion = ConfusionAccumulator(masks.categories) if confusion else None

        count = len(pairs)
        self.image_ids = pairs["image_id"].to_numpy(dtype=np.int64)
        self.mask_row = masks.find(self.image_ids, pairs["category_id"].to_numpy(dtype=np.int64))  # [N]
        self.frame_start = pairs["frame_start"].to_numpy(dtype=np.int64)
        self.frame_end = pairs["frame_end"].to_numpy(dtype=np.int64)
        self.reason = np.full(count, "", dtype=object)  # skip reason known before any tensor is read
        self.reason[self.mask_row < 0] = "mask_not_found"
        self.reason[self.frame_end <= self.frame_start] = "empty_word_interval"
        outside = (self.frame_start < 0) | (self.frame_end > geometry.window)
        self.reason[outside & (self.frame_end > self.frame_start)] = "word_outside_window"
        self.valid = self.reason == ""
        self._log_pair_skips()

        keys = pd.DataFrame({"image_id": self.image_ids, "caption_id": pairs["caption_id"].to_numpy(dtype=np.int64)})
        self._pairs_of_key = {
            (int(image_id), int(caption_id)): positions
            for (image_id, caption_id), positions in keys.groupby(["image_id", "caption_id"]).indices.items()
        }
        self.seen: dict[str, np.ndarray] = {}
        self.empty_mask = {convention: np.zeros(count, dtype=bool) for convention in self.conventions}
        self.scores: dict[tuple[str, str], np.ndarray] = {}

    def _log_pair_skips(self) -> None:
        for reason, number in Counter(self.reason[~self.valid]).items():
            logger.warning("skipping %d pairs: %s", number, reason.replace("_", " "))

    def _match(self, batch: TensorBatch) -> tuple[np.ndarray, np.ndarray]:
        """Return (pair positions [P], tensor row in the batch [P]) for the batch's rows."""
        seen = self.seen.setdefault(batch.kind, np.zeros(len(self.pairs), dtype=bool))
        pair_parts, row_parts = [], []
        without_pairs = duplicates = 0
        for row, key in enumerate(zip(batch.image_ids.tolist(), batch.caption_ids.tolist())):
            positions = self._pairs_of_key.get(key)
            if positions is None:
                without_pairs += 1
                continue
            if seen[positions[0]]:
                duplicates += 1
                continue
            seen[positions] = True
            pair_parts.append(positions)
            row_parts.append(np.full(len(positions), row))
        self.counts.tensor_rows[batch.kind] += len(batch.image_ids)
        self.counts.tensor_rows_without_pairs[batch.kind] += without_pairs
        if duplicates:
            if not self.counts.duplicate_tensor_rows[batch.kind]:
                logger.warning("ignoring repeated tensor rows of kind %s (first one is kept)", batch.kind)
            self.counts.duplicate_tensor_rows[batch.kind] += duplicates
        if not pair_parts:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        positions = np.concatenate(pair_parts)
        rows = np.concatenate(row_parts)
        keep = self.valid[positions]
        return positions[keep], rows[keep]

    def add(self, batches: Mapping[str, TensorBatch]) -> None:
        """Score the batches of one row group (one TensorBatch per kind)."""
        matched = {kind: self._match(batch) for kind, batch in batches.items()}
        if not any(len(positions) for positions, _ in matched.values()):
            return
        images = np.unique(np.concatenate([self.image_ids[positions] for positions, _ in matched.values()]))
        prepared = {
            kind: prepare_tensors(batch.tensors, self.geometry)
            for kind, batch in batches.items()
            if len(matched[kind][0])
        }
        for convention in self.conventions:
            rows, image_masks = self.masks.load(images, convention, confusion=self.confusion is not None)
            for kind, (positions, tensor_rows) in matched.items():
                if len(positions):
                    self._score(kind, convention, prepared[kind], positions, tensor_rows, rows, images, image_masks)

    def _score(
        self,
        kind: str,
        convention: str,
        prepared: PreparedTensors,
        positions: np.ndarray,
        tensor_rows: np.ndarray,
        rows: np.ndarray,
        images: np.ndarray,
        image_masks: ImageMasks,
    ) -> None:
        """Score the pairs ``positions`` of one tensor kind in one convention.

        ``tensor_rows`` gives each pair's tensor in ``prepared``; ``rows`` and
        ``images`` are the mask rows and image ids that ``image_masks`` contains.
        """
        target = np.searchsorted(rows, self.mask_row[positions])  # [P] index into image_masks
        image_of_pair = np.searchsorted(images, self.image_ids[positions])  # [P]
        mask_counts = image_masks.counts[target]  # [P, C]
        empty = mask_counts.sum(axis=1) <= 0
        if empty.any():
            self.empty_mask[convention][positions[empty]] = True
            keep = ~empty
            positions, tensor_rows, target = positions[keep], tensor_rows[keep], target[keep]
            image_of_pair, mask_counts = image_of_pair[keep], mask_counts[keep]
            if len(positions) == 0:
                return
        word_counts = word_frame_counts(self.frame_start[positions], self.frame_end[positions], self.geometry)
        with_confusion = self.confusion is not None and kind in CONFUSION_KINDS

        image_of_row = np.full(len(prepared.values), -1)
        image_of_row[tensor_rows] = image_of_pair
        block, other_slot = row_mask_block(image_of_row, image_masks, with_other=with_confusion)
        block_attention = mask_attention(prepared, block)  # [B, K, F]
        slot = target - image_masks.image_starts[image_of_pair]
        attention_map = word_attention(prepared, tensor_rows, word_counts)  # [P, C]
        scores = scores_from_attention(
            block_attention[tensor_rows, slot],
            attention_map,
            prepared.frame_totals[tensor_rows],
            prepared.pixel_totals[tensor_rows],
            mask_counts,
            word_counts,
            self.geometry,
            convention,
            TENSOR_KIND_METRICS[kind],
        )
        table = self.scores.setdefault((kind, convention), np.full((len(self.pairs), len(METRICS)), np.nan))
        for metric, values in scores.items():
            table[positions, METRICS.index(metric)] = values

        if with_confusion:
            targets, compared, item_scores = confusion_scores(
                prepared,
                block_attention,
                other_slot,
                tensor_rows,
                attention_map,
                word_counts,
                target,
                image_of_pair,
                image_masks,
                self.geometry,
                convention,
            )
            self.confusion.add(convention, CONFUSION_KINDS[kind], targets, compared, item_scores)

    # -- results ----------------------------------------------------------------------

    def output_kinds(self) -> list[str]:
        """Output kinds whose tensor kinds were all seen: 'raw' and/or 'softmax'."""
        return [kind for kind, sources in KIND_SOURCES.items() if set(sources.values()) <= set(self.seen)]

    def results(self, convention: str, kind: str, label: str | None = None) -> tuple[pd.DataFrame, dict[str, int]]:
        """Return the per-pair scores of one convention and output kind, and the skip counts."""
        sources = KIND_SOURCES[kind]
        seen = np.logical_and.reduce([self.seen[source] for source in set(sources.values())])
        values = np.full((len(self.pairs), len(METRICS)), np.nan)
        for column, metric in enumerate(METRICS):
            source = self.scores.get((sources[metric], convention))
            if source is not None:
                values[:, column] = source[:, column]
        empty = self.empty_mask[convention]
        scored = self.valid & seen & ~empty
        skipped = {reason: int((self.reason == reason).sum()) for reason in SKIP_REASONS}
        skipped["pair_without_tensor"] = int((self.valid & ~seen).sum())
        skipped["empty_mask"] = int((self.valid & seen & empty).sum())

        pairs = self.pairs[scored]
        frame = pd.DataFrame(
            {
                "pair_id": pairs["pair_id"].to_numpy(),
                "caption_id": pairs["caption_id"].to_numpy(),
                "image_id": pairs["image_id"].to_numpy(),
                "category_id": pairs["category_id"].to_numpy(),
                "category_name": pairs["category_name"].astype(str).to_numpy(),
                "word": pairs["word"].astype(str).to_numpy(),
                "convention": convention,
                "kind": label or kind,
            }
        )
        for column, metric in enumerate(METRICS):
            frame[metric] = values[scored, column]
        frame["area_fraction"] = self.masks.area_fraction[self.mask_row[scored]]
        frame["word_duration_s"] = (self.frame_end[scored] - self.frame_start[scored]) * FRAME_SECONDS
        return frame, skipped

    def unpaired_rows(self, kind: str) -> int:
        return int(sum(self.counts.tensor_rows_without_pairs[source] for source in set(KIND_SOURCES[kind].values())))


def score_stream(
    batches: Iterable[Mapping[str, TensorBatch]],
    pairs: pd.DataFrame,
    store: MaskStore,
    conventions: Sequence[str] = CONVENTIONS,
    confusion: bool = True,
    total: int | None = None,
) -> PairScorer:
    """Score every batch (one row group each) and return the scorer holding the results."""
    scorer = PairScorer(pairs, store, store.geometry, conventions, confusion)
    for group in tqdm(batches, total=total, desc="scoring", unit="row group", leave=False):
        scorer.add(group)
    return scorer


def build_mask_store(
    pairs: pd.DataFrame, masks: pd.DataFrame, geometry: Geometry, conventions: Sequence[str], confusion: bool
) -> MaskStore:
    """Count the pixels per cell of the masks of every image that has a pair."""
    return MaskStore(masks, geometry, conventions, pairs["image_id"].to_numpy(dtype=np.int64), confusion)


def tensor_geometry(tensor_file: str | os.PathLike) -> tuple[TensorFileInfo, Geometry]:
    """Read a tensor file's description and the geometry of its T.

    Raises TensorFormatError for a file without rows or a grid finer than the 224 x 224 masks.
    """
    info = read_tensor_info(tensor_file)
    if info.num_rows == 0:
        raise TensorFormatError(f"tensor file {tensor_file} contains no tensors. Rerun the export stage.")
    geometry = Geometry(info.grid[0], info.grid[1], info.frames, window=info.window)
    if info.grid[0] > geometry.image_h or info.grid[1] > geometry.image_w:
        raise TensorFormatError(
            f"tensor file {tensor_file} has a {info.grid[0]} x {info.grid[1]} grid, finer than the "
            f"{geometry.image_h} x {geometry.image_w} masks; export T at most at the mask resolution"
        )
    return info, geometry


def collect_results(
    scorer: PairScorer,
    resamples: int,
    confidence: float,
    seed: int,
    kinds: Sequence[str] | None = None,
    label: str | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Return all per-pair scores and the summary {convention: {kind: ...}} of a finished scorer."""
    kinds = scorer.output_kinds() if kinds is None else kinds
    frames = []
    summary: dict[str, Any] = {}
    for convention in scorer.conventions:
        summary[convention] = {}
        for kind in kinds:
            frame, skipped = scorer.results(convention, kind, label)
            name = label or kind
            rng = np.random.default_rng([seed, BOOTSTRAP_STREAM])
            entry = summarise_scores(frame, scorer.masks.categories, resamples, confidence, rng)
            entry["skipped"] = skipped
            entry["tensor_rows_without_pairs"] = scorer.unpaired_rows(kind)
            summary[convention][name] = entry
            frames.append(frame)
            _log_summary(convention, name, entry)
    scores = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(SCORE_COLUMNS))
    return scores[list(SCORE_COLUMNS)], summary


def _log_summary(convention: str, kind: str, entry: Mapping[str, Any]) -> None:
    total = ", ".join(f"{metric} {value:.3f}" for metric, value in entry["total"].items() if value is not None)
    logger.info("%s / %s: %d pairs; total %s", convention, kind, entry["pairs"], total or "none")
    skipped = {reason: number for reason, number in entry["skipped"].items() if number}
    if skipped:
        logger.warning("%s / %s: skipped pairs %s", convention, kind, skipped)


def _counts_metadata(scorer: PairScorer) -> dict[str, Any]:
    return {
        "tensor_rows": dict(scorer.counts.tensor_rows),
        "tensor_rows_without_pairs": dict(scorer.counts.tensor_rows_without_pairs),
        "duplicate_tensor_rows": dict(scorer.counts.duplicate_tensor_rows),
        "pairs": len(scorer.pairs),
    }


# -- entry points -----------------------------------------------------------------


def _pairs_frames_convention(pairs_file: Path) -> str | None:
    """Return the frames convention recorded in the pairs file's metadata, or None when absent."""
    metadata = read_parquet_metadata(pairs_file)
    if metadata.get("frames_convention"):
        return metadata["frames_convention"]
    frames = metadata.get("frames")
    return frames.get("convention") if isinstance(frames, Mapping) else None


def _check_frames_convention(tensor_convention: str | None, pairs_convention: str | None, tensor_file: Path) -> None:
    if tensor_convention and pairs_convention and tensor_convention != pairs_convention:
        raise ScoringInputError(
            f"tensor file {tensor_file} was exported with frames convention {tensor_convention!r}, but the "
            f"pairs use {pairs_convention!r}, so word frames would not line up with T. Export the tensors "
            f"and build the pairs with the same frames.convention."
        )


def score_tensor_file(
    tensor_file: str | os.PathLike,
    pairs: pd.DataFrame,
    masks: pd.DataFrame,
    conventions: Sequence[str],
    resamples: int,
    confidence: float,
    seed: int,
    pairs_convention: str | None = None,
    store: MaskStore | None = None,
) -> tuple[pd.DataFrame, dict[str, Any], pd.DataFrame, dict[str, Any]]:
    """Score one tensor file; return (per-pair scores, summary, confusion, metadata).

    ``store`` reuses mask counts made by :func:`build_mask_store` (with confusion)
    for the file's geometry.
    """
    tensor_file = Path(tensor_file)
    info, geometry = tensor_geometry(tensor_file)
    _check_frames_convention(info.frames_convention, pairs_convention, tensor_file)
    logger.info(
        "scoring %s: %d rows, kinds %s, T %s x %s x %s, window %d",
        tensor_file,
        info.num_rows,
        ", ".join(info.kinds) or "none",
        *info.shape,
        info.window,
    )
    if store is None:
        store = build_mask_store(pairs, masks, geometry, conventions, confusion=True)
    elif store.geometry != geometry:
        raise ValueError(f"the mask store was built for {store.geometry}, but {tensor_file} has {geometry}")
    batches = iter_tensor_batches(tensor_file, info=info)
    scorer = score_stream(batches, pairs, store, conventions, confusion=True, total=info.num_row_groups)
    scores, summary = collect_results(scorer, resamples, confidence, seed)
    confusion = scorer.confusion.to_frame() if scorer.confusion is not None else empty_confusion()
    metadata = {
        "tensor_file": str(tensor_file),
        "variants": list(info.variants),
        "shape": list(info.shape),
        "window": info.window,
        "frames_convention": info.frames_convention,
        "conventions": list(conventions),
        "counts": _counts_metadata(scorer),
        "skipped": {c: {k: v["skipped"] for k, v in kinds.items()} for c, kinds in summary.items()},
    }
    if not scorer.output_kinds():
        logger.warning("no tensors of a scorable kind matched any pair in %s", tensor_file)
    return scores, summary, confusion, metadata


def score_baseline_pairs(
    pairs: pd.DataFrame,
    masks: pd.DataFrame,
    conventions: Sequence[str],
    resamples: int,
    confidence: float,
    seed: int,
    geometry: Geometry | None = None,
    batch_size: int = 256,
    store: MaskStore | None = None,
) -> tuple[pd.DataFrame, dict[str, Any], dict[str, Any]]:
    """Score a seeded uniform random T for every image-caption pair; return (scores, summary, metadata)."""
    geometry = geometry or baseline_geometry()
    if store is None:
        store = build_mask_store(pairs, masks, geometry, conventions, confusion=False)
    keys = pairs[["image_id", "caption_id"]].drop_duplicates().sort_values(["image_id", "caption_id"])
    batches = random_tensor_batches(
        keys["image_id"].to_numpy(), keys["caption_id"].to_numpy(), geometry, seed, batch_size
    )
    total = -(-len(keys) // batch_size)
    scorer = score_stream(batches, pairs, store, conventions, confusion=False, total=total)
    scores, summary = collect_results(scorer, resamples, confidence, seed, kinds=["raw"], label="baseline")
    metadata = {
        "shape": [geometry.grid_h, geometry.grid_w, geometry.frames],
        "window": geometry.window,
        "seed": seed,
        "conventions": list(conventions),
        "counts": _counts_metadata(scorer),
    }
    return scores, summary, metadata


def run(params: Mapping[str, Any], paths: RunPaths, variant: str) -> None:
    """Stage ``score_alignments``: score one variant's test-set tensors against the pairs."""
    scoring = params["scoring"]
    conventions = list(scoring["conventions"])
    pairs = load_pairs(paths.pairs)
    masks = load_masks(paths.masks, conventions)
    scores, summary, confusion, metadata = score_tensor_file(
        paths.tensors(variant),
        pairs,
        masks,
        conventions,
        scoring["bootstrap_resamples"],
        scoring["confidence"],
        params["seed"],
        pairs_convention=params["frames"]["convention"],
    )
    metadata.update(variant=variant, seed=params["seed"], scoring=dict(scoring))
    write_parquet_atomic(paths.scores(variant), scores, metadata=metadata)
    write_json_atomic(paths.score_summary(variant), summary)
    write_parquet_atomic(paths.confusion(variant), confusion, metadata={"variant": variant})
    logger.info("wrote %s, %s and %s", paths.scores(variant), paths.score_summary(variant), paths.confusion(variant))


def run_baseline(params: Mapping[str, Any], paths: RunPaths) -> None:
    """Stage ``score_baseline``: score the seeded random baseline against the pairs."""
    scoring = params["scoring"]
    conventions = list(scoring["conventions"])
    pairs = load_pairs(paths.pairs)
    masks = load_masks(paths.masks, conventions)
    scores, summary, metadata = score_baseline_pairs(
        pairs, masks, conventions, scoring["bootstrap_resamples"], scoring["confidence"], params["seed"]
    )
    metadata.update(scoring=dict(scoring))
    write_parquet_atomic(paths.baseline_scores, scores, metadata=metadata)
    write_json_atomic(paths.baseline_summary, summary)
    logger.info("wrote %s and %s", paths.baseline_scores, paths.baseline_summary)


def score_external(
    tensor_file: str | os.PathLike,
    pairs_file: str | os.PathLike,
    masks_file: str | os.PathLike,
    out_dir: str | os.PathLike,
    conventions: Sequence[str] = CONVENTIONS,
    bootstrap_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    baseline: bool = True,
) -> dict[str, Any]:
    """Score any tensor file in the exchange format and write pairs.parquet, summary.json, confusion.parquet.

    With ``baseline`` the random baseline, drawn at the tensor file's
    resolution, is scored on the same pairs and added as kind ``baseline``.
    Returns the summary.
    """
    out_dir = Path(out_dir)
    pairs_file = Path(pairs_file)
    pairs = load_pairs(pairs_file)
    masks = load_masks(masks_file, conventions)
    _, geometry = tensor_geometry(tensor_file)
    store = build_mask_store(pairs, masks, geometry, conventions, confusion=True)
    scores, summary, confusion, metadata = score_tensor_file(
        tensor_file,
        pairs,
        masks,
        conventions,
        bootstrap_resamples,
        confidence,
        seed,
        pairs_convention=_pairs_frames_convention(pairs_file),
        store=store,
    )
    if baseline:
        baseline_scores, baseline_summary, _ = score_baseline_pairs(
            pairs, masks, conventions, bootstrap_resamples, confidence, seed, geometry, store=store
        )
        scores = pd.concat([scores, baseline_scores], ignore_index=True)
        for convention, kinds in baseline_summary.items():
            summary[convention].update(kinds)
    metadata.update(seed=seed, bootstrap_resamples=bootstrap_resamples, confidence=confidence)
    write_parquet_atomic(out_dir / EXTERNAL_FILES["scores"], scores, metadata=metadata)
    write_json_atomic(out_dir / EXTERNAL_FILES["summary"], summary)
    write_parquet_atomic(out_dir / EXTERNAL_FILES["confusion"], confusion)
    logger.info("wrote the scores of %s to %s", tensor_file, out_dir)
    return summary
