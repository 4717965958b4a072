"""Confusion matrices: a word's frames scored against every mask of its image."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pycocotools import mask as mask_utils

from vgsalign.scoring.engine import Geometry
from vgsalign.scoring.reference import reference_scores
from vgsalign.scoring.stream import MaskStore, PairScorer
from vgsalign.tensors import TensorBatch

SMALL = Geometry(2, 2, 4, image_h=4, image_w=4, window=8)


def rle(mask: np.ndarray) -> str:
    return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"].decode()


def masks_frame(image_masks: dict[tuple[int, int, str], np.ndarray], released: dict | None = None) -> pd.DataFrame:
    rows = []
    for (image_id, category_id, name), mask in image_masks.items():
        other = (released or {}).get((image_id, category_id, name), mask)
        rows.append((image_id, category_id, name, mask.mean(), rle(mask), rle(other)))
    columns = ["image_id", "category_id", "category_name", "area_fraction", "mask_paper", "mask_released"]
    return pd.DataFrame(rows, columns=columns)


def pairs_frame(rows: list[tuple[int, int, int, int, int, str]]) -> pd.DataFrame:
    """rows: (pair_id, image_id, caption_id, frame_start, frame_end, category name) with ids from the name."""
    return pd.DataFrame(
        {
            "pair_id": [row[0] for row in rows],
            "image_id": [row[1] for row in rows],
            "caption_id": [row[2] for row in rows],
            "frame_start": [row[3] for row in rows],
            "frame_end": [row[4] for row in rows],
            "category_name": [row[5] for row in rows],
            "category_id": [{"a": 1, "b": 2, "c": 3}[row[5]] for row in rows],
            "word": [row[5] for row in rows],
        }
    )


def run_confusion(pairs, masks, tensors, geometry, conventions=("paper", "released_code")) -> pd.DataFrame:
    """Score one row group with tensors {caption_id: T} of image 1 and return the confusion table."""
    store = MaskStore(masks, geometry, conventions, pairs["image_id"].to_numpy(), confusion=True)
    scorer = PairScorer(pairs, store, geometry, conventions, confusion=True)
    captions = sorted(tensors)
    batch = TensorBatch(
        kind="raw",
        image_ids=np.ones(len(captions), dtype=np.int64),
        caption_ids=np.array(captions, dtype=np.int64),
        rows=np.arange(len(captions)),
        tensors=np.stack([tensors[caption] for caption in captions]),
    )
    scorer.add({"raw": batch})
    return scorer.confusion.to_frame()


def cell_value(table: pd.DataFrame, convention: str, target: str, compared: str, metric: str = "as_object"):
    selected = table[
        (table["convention"] == convention)
        & (table["target"] == target)
        & (table["compared"] == compared)
        & (table["metric"] == metric)
    ]
    assert len(selected) == 1, (convention, target, compared, metric)
    return float(selected["value"].iloc[0]), int(selected["count"].iloc[0])


def hand_case() -> pd.DataFrame:
    # 4 x 4 image. Mask a: cell (0,0) plus pixel (0,2); mask b: cell (0,1), which also contains (0,2).
    # "other": the 8 pixels of cells (1,0) and (1,1).
    mask_a = np.zeros((4, 4), dtype=bool)
    mask_a[0:2, 0:2] = True
    mask_a[0, 2] = True
    mask_b = np.zeros((4, 4), dtype=bool)
    mask_b[0:2, 2:4] = True
    masks = masks_frame({(1, 1, "a"): mask_a, (1, 2, "b"): mask_b})
    # Caption 10: T = 1, 2, 0, 1 on cells (0,0), (0,1), (1,0), (1,1) at every time: 16 per frame.
    # Caption 20: T = 1 on cell (0,0) only: 4 per frame.
    first = np.zeros((2, 2, 4))
    first[0, 0], first[0, 1], first[1, 1] = 1.0, 2.0, 1.0
    second = np.zeros((2, 2, 4))
    second[0, 0] = 1.0
    pairs = pairs_frame([(0, 1, 10, 0, 2, "a"), (1, 1, 10, 2, 4, "b"), (2, 1, 20, 0, 2, "a")])
    return run_confusion(pairs, masks, {10: first, 20: second}, SMALL)


@pytest.mark.parametrize("metric", ["as_object", "gs_object"])
def test_hand_case_paper(metric):
    # Caption 10 puts 6/16 on a (4 x 1 + 1 x 2), 8/16 on b, 4/16 on "other"; caption 20 puts all on a.
    # T is constant over time, so AS_object and GS_object agree.
    table = hand_case()
    assert cell_value(table, "paper", "a", "a", metric) == (pytest.approx((0.375 + 1.0) / 2), 2)
    assert cell_value(table, "paper", "a", "b", metric) == (pytest.approx((0.5 + 0.0) / 2), 2)
    assert cell_value(table, "paper", "a", "other", metric) == (pytest.approx((0.25 + 0.0) / 2), 2)
    assert cell_value(table, "paper", "b", "b", metric) == (pytest.approx(0.5), 1)
    assert cell_value(table, "paper", "b", "a", metric) == (pytest.approx(0.375), 1)
    assert cell_value(table, "paper", "b", "other", metric) == (pytest.approx(0.25), 1)


@pytest.mark.parametrize("metric", ["as_object", "gs_object"])
def test_hand_case_released_removes_target(metric):
    # Without the target's pixels: b loses (0,2) for target a (6/16), a loses (0,2) for target b (4/16).
    table = hand_case()
    assert cell_value(table, "released_code", "a", "a", metric) == (pytest.approx(0.6875), 2)
    assert cell_value(table, "released_code", "a", "b", metric) == (pytest.approx((0.375 + 0.0) / 2), 2)
    assert cell_value(table, "released_code", "b", "a", metric) == (pytest.approx(0.25), 1)
    assert cell_value(table, "released_code", "b", "b", metric) == (pytest.approx(0.5), 1)
    assert cell_value(table, "released_code", "b", "other", metric) == (pytest.approx(0.25), 1)


def test_hand_case_columns():
    table = hand_case()
    assert list(table.columns) == ["convention", "kind", "target", "compared", "metric", "value", "count"]
    assert set(table["kind"]) == {"raw"}
    assert set(table["metric"]) == {"as_object", "gs_object"}
    # 2 targets x 3 compared masks x 2 metrics x 2 conventions.
    assert len(table) == 24


def test_confusion_matches_reference():
    # Three overlapping boxes on a 224 x 224 image, random T; every cell checked with the reference.
    rng = np.random.default_rng(0)
    boxes = {"a": (20, 120, 30, 140), "b": (90, 200, 100, 220), "c": (0, 60, 0, 224)}
    full = {}
    for name, (top, bottom, left, right) in boxes.items():
        mask = np.zeros((224, 224), dtype=bool)
        mask[top:bottom, left:right] = True
        full[name] = mask
    masks = masks_frame({(1, index + 1, name): mask for index, (name, mask) in enumerate(full.items())})
    tensor = rng.random((14, 14, 64))
    pairs = pairs_frame([(0, 1, 10, 40, 75, "a"), (1, 1, 10, 200, 231, "b")])
    table = run_confusion(pairs, masks, {10: tensor}, Geometry(14, 14, 64))

    other = ~(full["a"] | full["b"] | full["c"])
    for target, start, end in (("a", 40, 75), ("b", 200, 231)):
        for compared in ("a", "b", "c", "other"):
            for convention in ("paper", "released_code"):
                mask = other if compared == "other" else full[compared]
                if convention == "released_code" and compared not in (target, "other"):
                    mask = mask & ~full[target]
                expected = reference_scores(tensor, mask, start, end, convention) if mask.any() else None
                for metric in ("as_object", "gs_object"):
                    value, count = cell_value(table, convention, target, compared, metric)
                    assert count == 1
                    assert value == pytest.approx(expected[metric] if expected else 0.0, abs=1e-9)
