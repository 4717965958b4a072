"""Streaming pass of the scoring stages over tensor batches, one Parquet row group at a time.

``MaskStore`` counts the pixels per spatial cell of every needed mask once, and
``PairScorer`` joins each batch's tensor rows with their word-object pairs and
masks and keeps the per-pair scores. The rules for bad input are listed in the
docstring of ``vgsalign.scoring.stage``.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from tqdm import tqdm

from vgsalign.scoring.confusion import (
    ConfusionAccumulator,
    ImageMasks,
    confusion_scores,
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
from vgsalign.tensors import TensorBatch

logger = logging.getLogger(__name__)

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


class ScoringInputError(ValueError):
    """Pairs, masks or tensors that cannot be scored together."""


# -- mask pixel counts ------------------------------------------------------------


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
    # Scored rows whose T has no value above 0, which score as uniform attention once clipped at 0.
    nonpositive_tensor_rows: Counter = field(default_factory=Counter)


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
        for kind, tensors in prepared.items():
            scored_rows = np.unique(matched[kind][1])
            # The clipped values are >= 0, so a zero total means that no value of T was above 0.
            nonpositive = int((tensors.pixel_totals[scored_rows].sum(axis=1) <= 0).sum())
            if nonpositive:
                self.counts.nonpositive_tensor_rows[kind] += nonpositive
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
        # A kind never seen (no tensor row matched a pair, or no pairs at all) marks every pair as unseen.
        unseen = np.zeros(len(self.pairs), dtype=bool)
        seen = np.logical_and.reduce([self.seen.get(source, unseen) for source in set(sources.values())])
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
    _warn_nonpositive(scorer.counts)
    return scorer


def _warn_nonpositive(counts: StreamCounts) -> None:
    """Log one warning that counts the scored tensor rows with no value above 0, per kind."""
    nonpositive = counts.nonpositive_tensor_rows
    if not nonpositive:
        return
    logger.warning(
        "%d scored tensor rows (%s) have no value above 0: scoring clips negative values of T to 0, so "
        "these rows score as uniform attention. If the export shifted the similarities below 0, export "
        "them without the shift.",
        sum(nonpositive.values()),
        ", ".join(f"{kind}: {number}" for kind, number in sorted(nonpositive.items())),
    )


def build_mask_store(
    pairs: pd.DataFrame, masks: pd.DataFrame, geometry: Geometry, conventions: Sequence[str], confusion: bool
) -> MaskStore:
    """Count the pixels per cell of the masks of every image that has a pair."""
    return MaskStore(masks, geometry, conventions, pairs["image_id"].to_numpy(dtype=np.int64), confusion)
