"""Scoring engine on hand-built tensors, with every expected value worked out by hand.

The small setting: T is 2 x 2 cells x 4 time cells, covering a 4 x 4 image
(each cell is 2 x 2 pixels) and an 8-frame window (each time cell is 2 frames).
"""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from vgsalign.scoring.engine import (
    Geometry,
    mask_cell_counts,
    nearest_source_index,
    rle_cell_counts,
    rle_run_lengths,
    score_tensors,
    word_frame_counts,
)

SMALL = {"image_size": (4, 4), "window": 8}


def cell_mask(*cells: tuple[int, int], extra: tuple[tuple[int, int], ...] = ()) -> np.ndarray:
    """4 x 4 mask covering the 2 x 2 pixels of each given cell, plus single extra pixels."""
    mask = np.zeros((4, 4), dtype=bool)
    for row, col in cells:
        mask[2 * row : 2 * row + 2, 2 * col : 2 * col + 2] = True
    for row, col in extra:
        mask[row, col] = True
    return mask


def score_one(tensor: np.ndarray, mask: np.ndarray, start: int, end: int, convention: str) -> dict[str, float]:
    scores = score_tensors(tensor[None], mask[None], np.array([start]), np.array([end]), convention, **SMALL)
    return {name: float(values[0]) for name, values in scores.items()}


def fractional_case() -> tuple[np.ndarray, np.ndarray, int, int]:
    """Cell (0,0) = 1 at every time; cell (0,1) = 3 in time cell 0; mask = cell (0,0) + 2 pixels of (0,1)."""
    tensor = np.zeros((2, 2, 4))
    tensor[0, 0, :] = 1.0
    tensor[0, 1, 0] = 3.0
    mask = cell_mask((0, 0), extra=((0, 2), (1, 2)))
    return tensor, mask, 1, 4  # word frames {1, 2, 3}


def test_scores_exactly_one():
    # All attention sits on the object's cell, and only during the word's frames.
    tensor = np.zeros((2, 2, 4))
    tensor[0, 0, 0:2] = 2.5
    scores = score_one(tensor, cell_mask((0, 0)), 0, 4, "paper")
    assert scores == {"as_object": 1.0, "as_word": 1.0, "gs_object": 1.0, "gs_word": 1.0}


def test_scores_exactly_zero():
    # During the word all attention is on cell (1,1); the object's cell is attended only after the word.
    tensor = np.zeros((2, 2, 4))
    tensor[1, 1, 0:2] = 1.0
    tensor[0, 0, 2:4] = 1.0
    scores = score_one(tensor, cell_mask((0, 0)), 0, 4, "paper")
    assert scores == {"as_object": 0.0, "as_word": 0.0, "gs_object": 0.0, "gs_word": 0.0}


def test_scores_fractional_paper():
    # AS_object: frame 1 puts 10 of 16 on the mask, frames 2-3 put 4 of 4: (0.625 + 1 + 1) / 3.
    # AS_word: 4 pixels with 3/8 of their time in the word, 2 pixels with 3/6: (1.5 + 1) / 6.
    # GS_object: A = 3 on each of 8 attended pixels, 6 of them in the mask: 18 / 24.
    # GS_word: a = 10 at frames 0-1 and 4 at frames 2-7, total 44; word frames 10 + 4 + 4 = 18.
    tensor, mask, start, end = fractional_case()
    scores = score_one(tensor, mask, start, end, "paper")
    assert scores["as_object"] == pytest.approx(2.625 / 3, abs=1e-12)
    assert scores["as_word"] == pytest.approx(2.5 / 6, abs=1e-12)
    assert scores["gs_object"] == pytest.approx(18 / 24, abs=1e-12)
    assert scores["gs_word"] == pytest.approx(18 / 44, abs=1e-12)


def test_scores_fractional_released():
    # Same case; AS_word is divided by all 16 pixels (2.5 / 16 = 0.15625) and all scores are rounded.
    tensor, mask, start, end = fractional_case()
    scores = score_one(tensor, mask, start, end, "released_code")
    assert scores["as_object"] == 0.875
    assert scores["as_word"] == 0.156
    assert scores["gs_object"] == 0.75
    assert scores["gs_word"] == 0.409


def test_all_zero_tensor_uniform():
    # Every normaliser is zero, so each score is the uniform share: 6 of 16 pixels, 3 of 8 frames.
    _, mask, start, end = fractional_case()
    zero = np.zeros((2, 2, 4))
    paper = score_one(zero, mask, start, end, "paper")
    assert paper == pytest.approx({"as_object": 6 / 16, "as_word": 3 / 8, "gs_object": 6 / 16, "gs_word": 3 / 8})
    released = score_one(zero, mask, start, end, "released_code")
    assert released["as_word"] == 0.141  # 6 pixels x 3/8 / 16 = 0.140625


def test_zero_frame_and_pixel_uniform():
    # Cell (0,0) = 1 in time cell 1 only. Frame 1 (time cell 0) is all zero: uniform share 6/16;
    # frames 2-3 put everything on the mask. Cell (0,1) is zero at all times: uniform 3/8 per pixel.
    tensor = np.zeros((2, 2, 4))
    tensor[0, 0, 1] = 1.0
    _, mask, start, end = fractional_case()
    scores = score_one(tensor, mask, start, end, "paper")
    assert scores["as_object"] == pytest.approx((6 / 16 + 2) / 3)
    assert scores["as_word"] == pytest.approx((4 * 1.0 + 2 * 3 / 8) / 6)
    assert scores["gs_object"] == pytest.approx(1.0)
    assert scores["gs_word"] == pytest.approx(1.0)


def test_negative_values_clipped():
    tensor, mask, start, end = fractional_case()
    negative = tensor.copy()
    negative[1, :, :] = -5.0
    negative[0, 1, 2:] = -0.5
    assert score_one(negative, mask, start, end, "paper") == score_one(tensor, mask, start, end, "paper")


def test_float16_input_matches_float64():
    tensor, mask, start, end = fractional_case()
    half = tensor.astype(np.float16)
    assert score_one(half, mask, start, end, "paper") == score_one(tensor, mask, start, end, "paper")


def test_empty_word_rejected():
    tensor, mask, _, _ = fractional_case()
    with pytest.raises(ValueError, match="empty word interval"):
        score_one(tensor, mask, 3, 3, "paper")


def test_empty_mask_rejected_for_paper_as_word():
    tensor, _, start, end = fractional_case()
    empty = np.zeros((4, 4), dtype=bool)
    with pytest.raises(ValueError, match="empty mask"):
        score_one(tensor, empty, start, end, "paper")
    released = score_one(tensor, empty, start, end, "released_code")
    assert released["as_object"] == 0.0
    assert released["as_word"] == 0.0


def test_unknown_convention_rejected():
    tensor, mask, start, end = fractional_case()
    with pytest.raises(ValueError, match="invalid scoring convention"):
        score_one(tensor, mask, start, end, "authors")


# -- geometry, word and mask counts ---------------------------------------------------


def test_nearest_index_repeat():
    assert nearest_source_index(8, 4).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    # 3 cells over 7 positions: floor(i * 3 / 7).
    assert nearest_source_index(7, 3).tolist() == [0, 0, 0, 1, 1, 2, 2]


def test_geometry_cell_sizes():
    geometry = Geometry(14, 14, 64)
    assert geometry.cell_pixels.tolist() == [256.0] * 196
    assert geometry.cell_frames.tolist() == [8.0] * 64
    uneven = Geometry(3, 2, 5, image_h=7, image_w=4, window=12)
    # Rows 7 over 3 cells: 3, 2, 2 pixels; columns 4 over 2 cells: 2, 2.
    assert uneven.cell_pixels.tolist() == [6.0, 6.0, 4.0, 4.0, 4.0, 4.0]
    # Frames 12 over 5 cells: floor(i * 5 / 12) gives 3, 2, 3, 2, 2 frames.
    assert uneven.cell_frames.tolist() == [3.0, 2.0, 3.0, 2.0, 2.0]


def test_word_frame_counts():
    geometry = Geometry(14, 14, 64)
    counts = word_frame_counts(np.array([5, 0, 500]), np.array([19, 8, 512]), geometry)
    # Frames 5-18: 3 in cell 0 (5, 6, 7), 8 in cell 1, 3 in cell 2 (16, 17, 18).
    assert counts[0, :4].tolist() == [3.0, 8.0, 3.0, 0.0]
    assert counts[0].sum() == 14
    assert counts[1, 0] == 8
    assert counts[1].sum() == 8
    assert counts[2, 62:].tolist() == [4.0, 8.0]


def rle(mask: np.ndarray) -> str:
    return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"].decode()


def brute_force_counts(mask: np.ndarray, geometry: Geometry) -> np.ndarray:
    counts = np.zeros((geometry.grid_h, geometry.grid_w))
    for row, col in zip(*np.nonzero(mask)):
        counts[geometry.row_cell[row], geometry.col_cell[col]] += 1
    return counts.reshape(-1)


def test_mask_counts_match_brute_force():
    rng = np.random.default_rng(3)
    masks = rng.random((6, 224, 224)) < 0.05
    masks[1] = False
    masks[2] = True
    masks[3, 40:180, 17:203] = True
    for geometry in (Geometry(14, 14, 64), Geometry(7, 7, 64), Geometry(13, 6, 64)):
        expected = np.stack([brute_force_counts(mask, geometry) for mask in masks])
        assert np.array_equal(mask_cell_counts(masks, geometry), expected)
        assert np.array_equal(mask_cell_counts(np.asfortranarray(masks.astype(np.uint8)), geometry), expected)
        assert np.array_equal(rle_cell_counts([rle(mask) for mask in masks], geometry), expected)


def test_rle_runs_decoded():
    mask = np.zeros((4, 3), dtype=bool)
    mask[1:3, 0] = True
    mask[0, 2] = True
    # Column-major pixels: 0 1 1 0 | 0 0 0 0 | 1 0 0 0, so runs of 1 zero, 2 ones, 5 zeros, 1 one, 3 zeros.
    encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"]
    lengths, runs = rle_run_lengths([encoded])
    assert lengths.tolist() == [1, 2, 5, 1, 3]
    assert runs.tolist() == [5]


def test_rle_long_runs_decoded():
    # Runs far above 32 need several 5-bit groups and negative differences.
    mask = np.zeros((224, 224), dtype=bool)
    mask[:, 100:101] = True
    mask[5:7, 150] = True
    mask[0:200, 210:224] = True
    decoded = mask_utils.decode({"size": [224, 224], "counts": rle(mask).encode()})
    lengths, _ = rle_run_lengths([rle(mask)])
    assert lengths.sum() == 224 * 224
    ones = lengths[1::2].sum()
    assert ones == decoded.sum() == mask.sum()


def test_rle_wrong_size_rejected():
    small = rle(np.ones((10, 10), dtype=bool))
    with pytest.raises(ValueError, match="covers 100 pixels"):
        rle_cell_counts([small], Geometry(14, 14, 64))


def test_rle_truncated_rejected():
    text = rle(np.eye(224, dtype=bool))
    with pytest.raises(ValueError):
        rle_cell_counts([text[:-3] + "i"], Geometry(14, 14, 64))
