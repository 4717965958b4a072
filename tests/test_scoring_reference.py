"""The upsample-then-sum reference, and the engine checked against it on random cases."""

from __future__ import annotations

import numpy as np
import pytest

from vgsalign.scoring.engine import CONVENTIONS, METRICS, score_tensors
from vgsalign.scoring.reference import reference_scores, upsample_nearest


def random_case(rng: np.random.Generator, grid: tuple[int, int, int], size: tuple[int, int], window: int):
    """One random pair with zero frames, zero cells, negatives and a blob mask."""
    tensor = rng.standard_normal(grid)  # about half the values are negative and get clipped
    tensor[:, :, rng.integers(grid[2])] = 0.0  # an all-zero time cell
    tensor[rng.integers(grid[0]), rng.integers(grid[1]), :] = -1.0  # an all-zero spatial cell after clipping
    mask = np.zeros(size, dtype=bool)
    top, left = rng.integers(0, size[0] - 2), rng.integers(0, size[1] - 2)
    mask[top : top + rng.integers(2, size[0] - top + 1), left : left + rng.integers(2, size[1] - left + 1)] = True
    mask |= rng.random(size) < 0.02
    start = int(rng.integers(0, window - 1))
    end = int(min(window, start + rng.integers(1, window // 4 + 2)))
    return tensor, mask, start, end


def compare(cases, convention, size, window, tolerance):
    tensors = np.stack([case[0] for case in cases])
    masks = np.stack([case[1] for case in cases])
    starts = np.array([case[2] for case in cases])
    ends = np.array([case[3] for case in cases])
    engine = score_tensors(tensors, masks, starts, ends, convention, image_size=size, window=window)
    for index, (tensor, mask, start, end) in enumerate(cases):
        reference = reference_scores(tensor, mask, start, end, convention, window=window)
        for metric in METRICS:
            assert engine[metric][index] == pytest.approx(reference[metric], abs=tolerance), (metric, index)


def test_reference_hand_case():
    # The fractional case of test_scoring_engine, computed on the upsampled tensor.
    tensor = np.zeros((2, 2, 4))
    tensor[0, 0, :] = 1.0
    tensor[0, 1, 0] = 3.0
    mask = np.zeros((4, 4), dtype=bool)
    mask[0:2, 0:2] = True
    mask[0:2, 2] = True
    scores = reference_scores(tensor, mask, 1, 4, "paper", window=8)
    assert scores == pytest.approx({"as_object": 0.875, "as_word": 2.5 / 6, "gs_object": 0.75, "gs_word": 18 / 44})


def test_reference_uniform_rules():
    mask = np.zeros((4, 4), dtype=bool)
    mask[0, :3] = True
    scores = reference_scores(np.zeros((2, 2, 4)), mask, 2, 7, "paper", window=8)
    assert scores == pytest.approx({"as_object": 3 / 16, "as_word": 5 / 8, "gs_object": 3 / 16, "gs_word": 5 / 8})


def test_upsample_repeats_cells():
    tensor = np.arange(8, dtype=float).reshape(2, 2, 2)
    big = upsample_nearest(tensor, (4, 6, 4))
    assert big.shape == (4, 6, 4)
    assert big[3, 5, 3] == tensor[1, 1, 1]
    assert big[1, 2, 2] == tensor[0, 0, 1]
    uneven = upsample_nearest(tensor, (3, 3, 3))
    # PyTorch's nearest rule: position i copies cell floor(i * 2 / 3), so 0, 0, 1.
    assert uneven[:, 0, 0].tolist() == [0.0, 0.0, 4.0]


@pytest.mark.parametrize("convention", CONVENTIONS)
@pytest.mark.parametrize("frames", [64, 128])
def test_engine_matches_reference_reduced(convention, frames):
    # 14 x 14 cells over a 56 x 56 image (4 x 4 pixels per cell) and the 512-frame window.
    rng = np.random.default_rng(frames + len(convention))
    cases = [random_case(rng, (14, 14, frames), (56, 56), 512) for _ in range(6)]
    compare(cases, convention, (56, 56), 512, tolerance=1e-12)


@pytest.mark.parametrize("convention", CONVENTIONS)
@pytest.mark.parametrize("frames", [64, 128])
def test_engine_matches_reference_full_size(convention, frames):
    rng = np.random.default_rng(7 * frames + len(convention))
    cases = [random_case(rng, (14, 14, frames), (224, 224), 512) for _ in range(2)]
    compare(cases, convention, (224, 224), 512, tolerance=1e-9)


@pytest.mark.parametrize("convention", CONVENTIONS)
def test_engine_matches_reference_uneven_grid(convention):
    # Cells that do not divide the image or the window: the reference uses PyTorch's interpolation.
    rng = np.random.default_rng(11)
    cases = [random_case(rng, (5, 3, 7), (23, 17), 40) for _ in range(6)]
    compare(cases, convention, (23, 17), 40, tolerance=1e-12)


def test_engine_matches_reference_float16():
    rng = np.random.default_rng(5)
    cases = [random_case(rng, (14, 14, 64), (56, 56), 512) for _ in range(4)]
    half = [(tensor.astype(np.float16), mask, start, end) for tensor, mask, start, end in cases]
    # The reference works on the float16 values widened to float64, so the match stays exact.
    compare(half, "paper", (56, 56), 512, tolerance=1e-12)
