"""Confusion matrices: a word's frames scored against every other object of its image.

For a pair (word w_c, object c) the object scores AS_object and GS_object are
computed again with the mask S_c replaced by the mask of every category present
in the image, c itself giving the diagonal. One more column uses the pixels of
no category ("other"). Averaged over pairs this gives a matrix with one row per target
category (the word's) and one column per compared mask. Under the
``released_code`` convention the pixels of the target object are removed from
the other objects' masks first, as the authors' code does, so overlapping
objects are not credited twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pycocotools import mask as mask_utils

from vgsalign.scoring.engine import (
    OBJECT_METRICS,
    Geometry,
    PreparedTensors,
    rle_cell_counts,
    scores_from_attention,
)

OTHER = "other"
CONFUSION_COLUMNS = ("convention", "kind", "target", "compared", "metric", "value", "count")


@dataclass(frozen=True)
class ImageMasks:
    """Masks of the categories of a few images, in one convention.

    Masks of one image are consecutive: image ``i`` owns masks
    ``image_starts[i] <= j < image_starts[i + 1]``.
    """

    counts: np.ndarray  # [M, C] mask pixels per spatial cell
    category_index: np.ndarray  # [M] category of each mask (index into the category list)
    image_starts: np.ndarray  # [I + 1]
    rles: Sequence[bytes | str]  # [M] COCO RLE counts strings of the image_h x image_w masks
    other_counts: np.ndarray | None = None  # [I, C] pixels of no category per cell


def _rle(counts: bytes | str, geometry: Geometry) -> dict:
    """Return a pycocotools RLE object of an image_h x image_w mask."""
    return {
        "size": [geometry.image_h, geometry.image_w],
        "counts": counts.encode() if isinstance(counts, str) else counts,
    }


def other_pixel_counts(
    rles: Sequence[bytes | str], counts: np.ndarray, image_starts: np.ndarray, geometry: Geometry
) -> np.ndarray:
    """Return the pixels of no category per cell for each image: [I, C].

    Image i owns masks image_starts[i] to image_starts[i + 1] of ``rles`` and
    ``counts`` [M, C]. Where no two masks of an image share a cell, the union is
    the sum of the counts. Otherwise the masks are merged on their runs.
    """
    sizes = np.diff(image_starts)  # [I]
    union = np.zeros((len(sizes), geometry.cells))
    present = np.flatnonzero(sizes > 0)
    if len(present):
        union[present] = np.add.reduceat(counts, image_starts[present], axis=0)
        masks_in_cell = np.add.reduceat((counts > 0).astype(np.int64), image_starts[present], axis=0)
        shared = present[(masks_in_cell > 1).any(axis=1)]
        if len(shared):
            merged = [
                mask_utils.merge([_rle(rles[j], geometry) for j in range(image_starts[i], image_starts[i + 1])])["counts"]
                for i in shared
            ]
            union[shared] = rle_cell_counts(merged, geometry)
    return geometry.cell_pixels[None, :] - union


def row_mask_block(image_of_row: np.ndarray, masks: ImageMasks, with_other: bool) -> tuple[np.ndarray, int]:
    """Stack the mask counts of each tensor row's image: ([B, K, C], slot of the "other" pixels).

    Row b (image i = image_of_row[b], -1 for none) gets mask j of its image in
    slot j - image_starts[i]; unused slots stay zero. With ``with_other`` the
    last slot contains the image's "other" pixels.
    """
    sizes = np.diff(masks.image_starts)  # [I]
    has_image = image_of_row >= 0
    row_sizes = np.where(has_image, sizes[np.maximum(image_of_row, 0)], 0)  # [B]
    slots = int(row_sizes.max(initial=0))
    block = np.zeros((len(image_of_row), slots + int(with_other), masks.counts.shape[1]))
    row_of_entry = np.repeat(np.arange(len(image_of_row)), row_sizes)
    slot = np.arange(len(row_of_entry)) - np.repeat(np.cumsum(row_sizes) - row_sizes, row_sizes)
    block[row_of_entry, slot] = masks.counts[masks.image_starts[image_of_row[row_of_entry]] + slot]
    if with_other:
        if masks.other_counts is None:
            raise ValueError("the 'other' slot needs ImageMasks.other_counts")
        block[has_image, slots] = masks.other_counts[image_of_row[has_image]]
    return block, slots


@dataclass(frozen=True)
class ConfusionItems:
    """(pair, compared mask) items: every mask of each pair's image, then its "other" pixels."""

    pair: np.ndarray  # [I] pair of each item
    compared: np.ndarray  # [I] compared mask (index into ImageMasks), -1 for "other"
    counts: np.ndarray  # [I, C] compared mask pixels per cell, target pixels removed if asked
    overlap: np.ndarray  # [O] items whose compared mask lost pixels of the target
    overlap_counts: np.ndarray  # [O, C] the pixels removed from those items


def confusion_items(
    target_mask: np.ndarray,
    image_of_pair: np.ndarray,
    masks: ImageMasks,
    geometry: Geometry,
    remove_target: bool,
) -> ConfusionItems:
    """List the items of P pairs and count their compared masks per cell.

    With ``remove_target`` the pixels of the pair's target mask are removed from
    every other mask. The intersection is computed on the runs (pycocotools'
    merge) only where the two masks share a cell, so most items need no merge.
    """
    starts = masks.image_starts[image_of_pair]  # [P]
    sizes = masks.image_starts[image_of_pair + 1] - starts  # [P]
    pair = np.repeat(np.arange(len(target_mask)), sizes + 1)  # [I]
    position = np.arange(len(pair)) - np.repeat(np.cumsum(sizes + 1) - (sizes + 1), sizes + 1)
    compared = starts[pair] + position
    is_other = position == sizes[pair]
    compared[is_other] = -1

    counts = np.empty((len(pair), geometry.cells))
    if masks.other_counts is not None:
        counts[is_other] = masks.other_counts[image_of_pair[pair[is_other]]]
    elif is_other.any():
        raise ValueError("confusion items need ImageMasks.other_counts")
    counts[~is_other] = masks.counts[compared[~is_other]]

    overlap = np.zeros(0, dtype=np.int64)
    overlap_counts = np.zeros((0, geometry.cells))
    if remove_target and len(pair):
        target = target_mask[pair]  # [I]
        candidates = ~is_other & (compared != target)
        shared_cell = (masks.counts[np.where(candidates, compared, target)] > 0) & (masks.counts[target] > 0)
        overlap = np.flatnonzero(candidates & shared_cell.any(axis=1))
        if len(overlap):
            both = [
                mask_utils.merge(
                    [_rle(masks.rles[compared[item]], geometry), _rle(masks.rles[target[item]], geometry)],
                    intersect=True,
                )["counts"]
                for item in overlap
            ]
            overlap_counts = rle_cell_counts(both, geometry)
            counts[overlap] -= overlap_counts
    return ConfusionItems(pair, compared, counts, overlap, overlap_counts)


def confusion_scores(
    prepared: PreparedTensors,
    block_attention: np.ndarray,
    other_slot: int,
    tensor_rows: np.ndarray,
    word_attention_map: np.ndarray,
    word_counts: np.ndarray,
    target_mask: np.ndarray,
    image_of_pair: np.ndarray,
    masks: ImageMasks,
    geometry: Geometry,
    convention: str,
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Score each pair's word against every mask of its image and the "other" pixels.

    ``block_attention`` [B, K, F] is :func:`mask_attention` of a
    :func:`row_mask_block` built with the "other" slot. ``tensor_rows``,
    ``word_attention_map`` [P, C], ``word_counts`` [P, F], ``target_mask`` and
    ``image_of_pair`` describe the P pairs. Returns (target category [I], compared category [I] with -1 for
    "other", {metric: [I]}) for AS_object and GS_object.
    """
    items = confusion_items(target_mask, image_of_pair, masks, geometry, remove_target=convention == "released_code")
    rows = tensor_rows[items.pair]  # [I]
    slot = np.where(
        items.compared >= 0, items.compared - masks.image_starts[image_of_pair[items.pair]], other_slot
    )
    attention = block_attention[rows, slot]  # [I, F]
    if len(items.overlap):
        removed = np.matmul(items.overlap_counts[:, None, :], prepared.values[rows[items.overlap]])[:, 0, :]
        attention[items.overlap] -= removed
    scores = scores_from_attention(
        attention,
        word_attention_map[items.pair],
        prepared.frame_totals[rows],
        prepared.pixel_totals[rows],
        items.counts,
        word_counts[items.pair],
        geometry,
        convention,
        metrics=OBJECT_METRICS,
    )
    target_category = masks.category_index[target_mask[items.pair]]
    compared_category = np.where(items.compared >= 0, masks.category_index[np.maximum(items.compared, 0)], -1)
    return target_category, compared_category, scores


class ConfusionAccumulator:
    """Running sums of confusion scores per (convention, kind, metric), target and compared category."""

    def __init__(self, categories: Sequence[str]) -> None:
        self.categories = list(categories)
        size = len(self.categories)
        self._sums: dict[tuple[str, str, str], np.ndarray] = {}
        self._counts: dict[tuple[str, str], np.ndarray] = {}
        self._shape = (size, size + 1)  # last column: "other" pixels

    def add(
        self,
        convention: str,
        kind: str,
        target_category: np.ndarray,
        compared_category: np.ndarray,
        scores: dict[str, np.ndarray],
    ) -> None:
        column = np.where(compared_category >= 0, compared_category, self._shape[1] - 1)
        counts = self._counts.setdefault((convention, kind), np.zeros(self._shape, dtype=np.int64))
        np.add.at(counts, (target_category, column), 1)
        for metric, values in scores.items():
            sums = self._sums.setdefault((convention, kind, metric), np.zeros(self._shape))
            np.add.at(sums, (target_category, column), values)

    def to_frame(self) -> pd.DataFrame:
        """Return the mean score per cell in long format, one row per cell with at least one pair."""
        names = np.array([*self.categories, OTHER], dtype=object)
        frames = []
        for (convention, kind, metric), sums in sorted(self._sums.items()):
            counts = self._counts[(convention, kind)]
            target, compared = np.nonzero(counts)
            frames.append(
                pd.DataFrame(
                    {
                        "convention": convention,
                        "kind": kind,
                        "target": names[target],
                        "compared": names[compared],
                        "metric": metric,
                        "value": sums[target, compared] / counts[target, compared],
                        "count": counts[target, compared],
                    }
                )
            )
        if not frames:
            return empty_confusion()
        return pd.concat(frames, ignore_index=True)


def empty_confusion() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "convention": pd.Series(dtype=str),
            "kind": pd.Series(dtype=str),
            "target": pd.Series(dtype=str),
            "compared": pd.Series(dtype=str),
            "metric": pd.Series(dtype=str),
            "value": pd.Series(dtype=np.float64),
            "count": pd.Series(dtype=np.int64),
        }
    )
