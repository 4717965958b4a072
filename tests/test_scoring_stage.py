"""Stages score_alignments and score_baseline, external scoring, and their bad-input rules."""

from __future__ import annotations

import json
import logging
import re

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pycocotools import mask as mask_utils

from vgsalign.config import load_params
from vgsalign.io import read_parquet_metadata, write_parquet_atomic
from vgsalign.layout import RunPaths
from vgsalign.scoring.baseline import baseline_geometry, random_tensor_batches
from vgsalign.scoring.engine import METRICS, Geometry, mask_cell_counts, rle_cell_counts
from vgsalign.scoring.reference import reference_scores
from vgsalign.scoring.stage import (
    SCORE_COLUMNS,
    ScoringInputError,
    run,
    run_baseline,
    score_baseline_pairs,
    score_external,
)
from vgsalign.tensors import TensorFormatError, TensorValueError, TensorWriter

CATEGORY_IDS = {"cat": 1, "dog": 2, "kite": 3}


def rle(mask: np.ndarray) -> str:
    return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"].decode()


def box(top: int, bottom: int, left: int, right: int) -> np.ndarray:
    mask = np.zeros((224, 224), dtype=bool)
    mask[top:bottom, left:right] = True
    return mask


# Masks (paper, released) per (image, category). Image 3's kite is empty in the paper
# convention's mask (nearest-neighbour resize) but not in the released code's (bilinear).
MASKS = {
    (1, "cat"): (box(10, 100, 20, 150), box(9, 101, 19, 151)),
    (1, "dog"): (box(80, 220, 100, 200), box(79, 221, 99, 201)),
    (2, "cat"): (box(0, 224, 0, 112), box(0, 224, 0, 113)),
    (3, "kite"): (box(0, 0, 0, 0), box(50, 52, 60, 61)),
    (4, "cat"): (box(30, 60, 30, 60), box(30, 60, 30, 60)),
}
# (pair_id, image_id, caption_id, category, frame_start, frame_end, what the pair tests)
PAIRS = [
    (0, 1, 10, "cat", 10, 40, "scored"),
    (1, 1, 10, "dog", 100, 131, "scored"),
    (2, 2, 20, "cat", 0, 50, "scored, all-zero T"),
    (3, 2, 20, "dog", 5, 9, "mask_not_found"),
    (4, 3, 30, "kite", 60, 90, "empty_mask under paper"),
    (5, 4, 40, "cat", 20, 30, "pair_without_tensor"),
    (6, 1, 10, "cat", 50, 50, "empty_word_interval"),
    (7, 1, 10, "dog", 500, 520, "word_outside_window"),
]
# Tensors exist for captions 10, 20, 30 and 50; caption 50 (image 5) has no pair.
TENSOR_KEYS = [(1, 10), (2, 20), (3, 30), (5, 50)]


def pairs_table() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "pair_id": [p[0] for p in PAIRS],
            "caption_id": [p[2] for p in PAIRS],
            "image_id": [p[1] for p in PAIRS],
            "word_index": 0,
            "word": [p[3] + "s" for p in PAIRS],
            "start_ms": 0.0,
            "end_ms": 0.0,
            "frame_start": [p[4] for p in PAIRS],
            "frame_end": [p[5] for p in PAIRS],
            "category_id": [CATEGORY_IDS[p[3]] for p in PAIRS],
            "category_name": [p[3] for p in PAIRS],
            "similarity": 1.0,
        }
    )


def masks_table() -> pd.DataFrame:
    rows = []
    for (image_id, name), (paper, released) in MASKS.items():
        rows.append((image_id, CATEGORY_IDS[name], name, 480, 640, paper.mean(), rle(paper), rle(released)))
    columns = ["image_id", "category_id", "category_name", "height", "width", "area_fraction"]
    return pd.DataFrame(rows, columns=[*columns, "mask_paper", "mask_released"])


def make_tensors(seed: int = 0) -> dict[str, np.ndarray]:
    """raw, softmax_space and softmax_time tensors [4, 14, 14, 64], float16 values, caption 20 all zero."""
    rng = np.random.default_rng(seed)
    raw = rng.standard_normal((len(TENSOR_KEYS), 14, 14, 64)).astype(np.float16)
    raw[1] = 0.0
    flat = raw.astype(np.float64).reshape(len(TENSOR_KEYS), 196, 64)
    space = np.exp(flat) / np.exp(flat).sum(axis=1, keepdims=True)
    time = np.exp(flat) / np.exp(flat).sum(axis=2, keepdims=True)
    return {
        "raw": raw,
        "softmax_space": space.reshape(raw.shape).astype(np.float16),
        "softmax_time": time.reshape(raw.shape).astype(np.float16),
    }


def write_tensors(path, tensors, convention="paper", window=512) -> None:
    images = [key[0] for key in TENSOR_KEYS]
    captions = [key[1] for key in TENSOR_KEYS]
    with TensorWriter(
        path, "cnnatt_v0", "float16", (14, 14), 64, rows_per_group=5, frames_convention=convention, window=window
    ) as w:
        for kind, values in tensors.items():
            w.write(images, captions, kind, values)


@pytest.fixture
def run_setup(tmp_path, monkeypatch, project_root):
    """A run folder with pairs, masks and the tensors of variant cnnatt_v0; returns (params, paths, tensors)."""
    params = load_params([project_root / "params.yaml"], overrides={"run": "scoring-test"})
    params["scoring"]["bootstrap_resamples"] = 200
    monkeypatch.chdir(tmp_path)
    paths = RunPaths(params)
    paths.pairs.parent.mkdir(parents=True)
    pairs_table().to_parquet(paths.pairs)
    masks_table().to_parquet(paths.masks)
    tensors = make_tensors()
    write_tensors(paths.tensors("cnnatt_v0"), tensors)
    return params, paths, tensors


def expected_scores(tensors, pair_id: int, convention: str, kind: str) -> dict[str, float]:
    _, image_id, caption_id, category, start, end, _ = PAIRS[pair_id]
    row = TENSOR_KEYS.index((image_id, caption_id))
    mask = MASKS[(image_id, category)][0 if convention == "paper" else 1]
    if kind == "raw":
        return reference_scores(tensors["raw"][row], mask, start, end, convention)
    space = reference_scores(tensors["softmax_space"][row], mask, start, end, convention)
    time = reference_scores(tensors["softmax_time"][row], mask, start, end, convention)
    return {"as_object": space["as_object"], "gs_object": space["gs_object"], "as_word": time["as_word"], "gs_word": time["gs_word"]}


def test_run_scores_match_reference(run_setup):
    params, paths, tensors = run_setup
    run(params, paths, "cnnatt_v0")
    scores = pd.read_parquet(paths.scores("cnnatt_v0"))
    assert list(scores.columns) == list(SCORE_COLUMNS)
    scored = {
        (convention, kind): sorted(group["pair_id"])
        for (convention, kind), group in scores.groupby(["convention", "kind"])
    }
    assert scored == {
        ("paper", "raw"): [0, 1, 2],
        ("paper", "softmax"): [0, 1, 2],
        ("released_code", "raw"): [0, 1, 2, 4],
        ("released_code", "softmax"): [0, 1, 2, 4],
    }
    for row in scores.itertuples():
        expected = expected_scores(tensors, row.pair_id, row.convention, row.kind)
        for metric in METRICS:
            assert getattr(row, metric) == pytest.approx(expected[metric], abs=1e-9), (row.pair_id, metric)


def test_run_all_zero_tensor_uniform(run_setup):
    params, paths, _ = run_setup
    run(params, paths, "cnnatt_v0")
    scores = pd.read_parquet(paths.scores("cnnatt_v0"))
    zero = scores[(scores["pair_id"] == 2) & (scores["convention"] == "paper") & (scores["kind"] == "raw")].iloc[0]
    # Mask: the left half of the image; word: 50 of 512 frames.
    assert zero["as_object"] == pytest.approx(0.5)
    assert zero["gs_object"] == pytest.approx(0.5)
    assert zero["as_word"] == pytest.approx(50 / 512)
    assert zero["gs_word"] == pytest.approx(50 / 512)
    assert zero["word_duration_s"] == pytest.approx(0.5)
    assert zero["area_fraction"] == pytest.approx(0.5)


def test_run_summary_and_skips(run_setup):
    params, paths, _ = run_setup
    run(params, paths, "cnnatt_v0")
    summary = json.loads(paths.score_summary("cnnatt_v0").read_text())
    scores = pd.read_parquet(paths.scores("cnnatt_v0"))
    assert sorted(summary) == ["paper", "released_code"]
    assert sorted(summary["paper"]) == ["raw", "softmax"]

    paper = summary["paper"]["raw"]
    assert paper["skipped"] == {
        "pair_without_tensor": 1,
        "mask_not_found": 1,
        "empty_mask": 1,
        "empty_word_interval": 1,
        "word_outside_window": 1,
    }
    assert summary["released_code"]["raw"]["skipped"]["empty_mask"] == 0
    assert paper["tensor_rows_without_pairs"] == 1
    assert summary["paper"]["softmax"]["tensor_rows_without_pairs"] == 2
    assert paper["pairs"] == 3
    assert paper["categories_without_pairs"] == ["kite"]
    assert summary["released_code"]["raw"]["categories_without_pairs"] == []

    # The total is the mean of the category means: cat (pairs 0 and 2) and dog (pair 1).
    table = scores[(scores["convention"] == "paper") & (scores["kind"] == "raw")].set_index("pair_id")
    for metric in METRICS:
        cat = (table.loc[0, metric] + table.loc[2, metric]) / 2
        assert paper["per_category"]["cat"][metric] == pytest.approx(cat)
        assert paper["total"][metric] == pytest.approx((cat + table.loc[1, metric]) / 2)
        assert paper["ci_low"][metric] <= paper["total"][metric] <= paper["ci_high"][metric]
    assert paper["per_category"]["cat"]["pairs"] == 2

    metadata = read_parquet_metadata(paths.scores("cnnatt_v0"))
    assert metadata["counts"]["tensor_rows"] == {"raw": 4, "softmax_space": 4, "softmax_time": 4}
    assert metadata["counts"]["tensor_rows_without_pairs"]["raw"] == 1


def test_run_writes_confusion(run_setup):
    params, paths, _ = run_setup
    run(params, paths, "cnnatt_v0")
    confusion = pd.read_parquet(paths.confusion("cnnatt_v0"))
    assert set(confusion["kind"]) == {"raw", "softmax"}
    paper = confusion[confusion["convention"] == "paper"]
    assert set(paper["compared"]) == {"cat", "dog", "other"}
    # The kite's only pair is scored under the released mask alone.
    released = confusion[confusion["convention"] == "released_code"]
    assert set(released["target"]) == {"cat", "dog", "kite"}
    cat_row = paper[(paper["kind"] == "raw") & (paper["target"] == "cat") & (paper["metric"] == "as_object")]
    # Cat has 2 scored pairs (images 1 and 2); only image 1 also has a dog.
    assert dict(zip(cat_row["compared"], cat_row["count"])) == {"cat": 2, "dog": 1, "other": 2}


def test_run_rerun_identical(run_setup):
    params, paths, _ = run_setup
    run(params, paths, "cnnatt_v0")
    first = paths.score_summary("cnnatt_v0").read_text()
    run(params, paths, "cnnatt_v0")
    assert paths.score_summary("cnnatt_v0").read_text() == first


def test_nan_tensor_names_pair(run_setup):
    params, paths, tensors = run_setup
    table = pq.read_table(paths.tensors("cnnatt_v0"))
    values = table.column("tensor").combine_chunks().flatten().to_numpy().copy()
    values[3 * 14 * 14 * 64 + 5] = np.nan  # fourth row: image 5, caption 50
    tensor_type = table.schema.field("tensor").type
    table = table.set_column(7, "tensor", pa.FixedSizeListArray.from_arrays(pa.array(values), type=tensor_type))
    pq.write_table(table, paths.tensors("cnnatt_v0"))
    with pytest.raises(TensorValueError, match="image_id 5, caption_id 50"):
        run(params, paths, "cnnatt_v0")


def test_wrong_shape_row_rejected(run_setup):
    params, paths, _ = run_setup
    table = pq.read_table(paths.tensors("cnnatt_v0"))
    frames = table.column("frames").to_numpy().copy()
    frames[2] = 128
    pq.write_table(table.set_column(6, "frames", pa.array(frames, pa.int32())), paths.tensors("cnnatt_v0"))
    with pytest.raises(TensorFormatError, match=r"row 2 .*\(14, 14, 128\)"):
        run(params, paths, "cnnatt_v0")


def test_duplicate_tensor_row_counted(run_setup):
    params, paths, _ = run_setup
    run(params, paths, "cnnatt_v0")
    first = pd.read_parquet(paths.scores("cnnatt_v0"))
    table = pq.read_table(paths.tensors("cnnatt_v0"))
    pq.write_table(pa.concat_tables([table, table.slice(0, 1)]), paths.tensors("cnnatt_v0"))
    run(params, paths, "cnnatt_v0")
    assert read_parquet_metadata(paths.scores("cnnatt_v0"))["counts"]["duplicate_tensor_rows"] == {"raw": 1}
    pd.testing.assert_frame_equal(pd.read_parquet(paths.scores("cnnatt_v0")), first)


def test_frames_convention_mismatch(run_setup):
    params, paths, tensors = run_setup
    write_tensors(paths.tensors("cnnatt_v0"), tensors, convention="released_code")
    with pytest.raises(ScoringInputError, match="frames convention 'released_code'.*'paper'"):
        run(params, paths, "cnnatt_v0")


def test_missing_pairs_column(run_setup):
    params, paths, _ = run_setup
    pairs_table().drop(columns=["frame_end"]).to_parquet(paths.pairs)
    with pytest.raises(ScoringInputError, match="lacks the columns frame_end"):
        run(params, paths, "cnnatt_v0")


def test_corrupt_mask_named(run_setup):
    params, paths, _ = run_setup
    masks = masks_table()
    masks.loc[1, "mask_paper"] = rle(np.ones((10, 10), dtype=bool))
    masks.to_parquet(paths.masks)
    with pytest.raises(ScoringInputError, match="mask_paper of image_id 1, category_id 2"):
        run(params, paths, "cnnatt_v0")


def test_baseline_stage(run_setup):
    params, paths, _ = run_setup
    run_baseline(params, paths)
    scores = pd.read_parquet(paths.baseline_scores)
    summary = json.loads(paths.baseline_summary.read_text())
    assert set(scores["kind"]) == {"baseline"}
    assert sorted(summary["paper"]) == ["baseline"]
    # Pair 5 (caption 40) has no model tensor but does get a random one.
    assert sorted(scores.loc[scores["convention"] == "paper", "pair_id"]) == [0, 1, 2, 5]
    assert summary["paper"]["baseline"]["skipped"]["pair_without_tensor"] == 0

    run_baseline(params, paths)
    assert pd.read_parquet(paths.baseline_scores).equals(scores)
    params["seed"] = 1
    run_baseline(params, paths)
    assert not pd.read_parquet(paths.baseline_scores)["as_object"].equals(scores["as_object"])


def test_score_external(run_setup, tmp_path):
    params, paths, tensors = run_setup
    out = tmp_path / "external"
    summary = score_external(paths.tensors("cnnatt_v0"), paths.pairs, paths.masks, out, ["paper"], 50, 0.9, 3)
    assert sorted(summary["paper"]) == ["baseline", "raw", "softmax"]
    assert sorted(path.name for path in out.iterdir()) == ["confusion.parquet", "pairs.parquet", "summary.json"]
    scores = pd.read_parquet(out / "pairs.parquet")
    assert set(scores["kind"]) == {"raw", "softmax", "baseline"}
    raw = scores[scores["kind"] == "raw"].set_index("pair_id")
    assert raw.loc[0, "as_object"] == pytest.approx(expected_scores(tensors, 0, "paper", "raw")["as_object"])
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))


def test_score_external_baseline_on_scored_pairs(run_setup, tmp_path):
    """The baseline of external tensors covers only the pairs that have a tensor."""
    params, paths, tensors = run_setup
    score_external(paths.tensors("cnnatt_v0"), paths.pairs, paths.masks, tmp_path / "out", ["paper"], 0, 0.9, 3)
    scores = pd.read_parquet(tmp_path / "out" / "pairs.parquet")
    model_pairs = set(scores.loc[scores["kind"] == "raw", "pair_id"])
    baseline_pairs = set(scores.loc[scores["kind"] == "baseline", "pair_id"])
    assert 5 not in model_pairs
    assert baseline_pairs == model_pairs


def test_score_external_no_matching_rows(run_setup, tmp_path):
    params, paths, tensors = run_setup
    foreign = tmp_path / "foreign.parquet"
    with TensorWriter(foreign, "other_model", grid=(14, 14), frames=64) as writer:
        writer.write([999_001], [999_002], "raw", np.ones((1, 14, 14, 64), dtype=np.float32))
    with pytest.raises(ScoringInputError, match="no row of .*foreign.parquet matches a word-object pair"):
        score_external(foreign, paths.pairs, paths.masks, tmp_path / "out", ["paper"], 0, 0.9, 3)
    assert not (tmp_path / "out").exists()


def test_baseline_batching_invariant():
    geometry = baseline_geometry()
    images = np.arange(7)
    one = np.concatenate([group["raw"].tensors for group in random_tensor_batches(images, images, geometry, 4, 7)])
    three = np.concatenate([group["raw"].tensors for group in random_tensor_batches(images, images, geometry, 4, 3)])
    assert np.array_equal(one, three)
    other = np.concatenate([group["raw"].tensors for group in random_tensor_batches(images, images, geometry, 5, 7)])
    assert not np.array_equal(one, other)


def test_baseline_expectation():
    # Uniform T: expected AS_object and GS_object are the area fraction. Expected GS_word and
    # AS_word (paper convention) are the word's share of the 512 frames, and the released code's
    # AS_word is the product of both.
    rng = np.random.default_rng(9)
    count = 400
    rows, mask_rows = [], []
    for index in range(count):
        top, left = rng.integers(0, 200, 2)
        height, width = rng.integers(8, 224 - max(top, left), 2)
        mask = box(top, top + height, left, left + width)
        start = int(rng.integers(0, 480))
        end = int(start + rng.integers(5, 33))
        rows.append((index, index + 1, 10 * (index + 1), start, end, mask.mean(), (end - start) / 512))
        mask_rows.append((index + 1, 1, "cat", mask.mean(), rle(mask), rle(mask)))

    pairs = pd.DataFrame(
        {
            "pair_id": [r[0] for r in rows],
            "image_id": [r[1] for r in rows],
            "caption_id": [r[2] for r in rows],
            "frame_start": [r[3] for r in rows],
            "frame_end": [r[4] for r in rows],
            "category_id": 1,
            "category_name": "cat",
            "word": "cat",
        }
    )
    masks = pd.DataFrame(
        mask_rows, columns=["image_id", "category_id", "category_name", "area_fraction", "mask_paper", "mask_released"]
    )
    scores, _, _ = score_baseline_pairs(pairs, masks, ["paper", "released_code"], 0, 0.95, seed=0)

    area = np.array([r[5] for r in rows])
    duration = np.array([r[6] for r in rows])
    expectations = {
        ("paper", "as_object"): area,
        ("paper", "gs_object"): area,
        ("paper", "as_word"): duration,
        ("paper", "gs_word"): duration,
        ("released_code", "as_word"): area * duration,
    }
    for (convention, metric), expected in expectations.items():
        table = scores[scores["convention"] == convention].sort_values("pair_id")
        deviation = table[metric].to_numpy() - expected
        standard_error = deviation.std(ddof=1) / np.sqrt(count)
        # Within 4 standard errors, plus the released code's rounding of at most 0.0005 per pair.
        assert abs(deviation.mean()) < 4 * standard_error + 5e-4, (convention, metric)


def test_real_coco_masks(coco_tiny):
    # Masks of real COCO annotations (polygons and RLE), resized to 224 x 224 by nearest neighbour,
    # counted per cell from their RLE strings.
    from pycocotools.coco import COCO

    coco = COCO(str(coco_tiny / "annotations" / "instances_val2017.json"))
    geometry = Geometry(14, 14, 64)
    masks = []
    for image_id in sorted(coco.getImgIds())[:10]:
        info = coco.loadImgs(image_id)[0]
        rows = (np.arange(224) * info["height"]) // 224
        cols = (np.arange(224) * info["width"]) // 224
        for category_id in {a["category_id"] for a in coco.loadAnns(coco.getAnnIds(imgIds=image_id))}:
            union = np.zeros((info["height"], info["width"]), dtype=bool)
            for annotation in coco.loadAnns(coco.getAnnIds(imgIds=image_id, catIds=category_id, iscrowd=False)):
                union |= coco.annToMask(annotation).astype(bool)
            masks.append(union[rows][:, cols])
    assert len(masks) >= 10
    stacked = np.stack(masks)
    expected = mask_cell_counts(stacked, geometry)
    assert np.array_equal(rle_cell_counts([rle(mask) for mask in masks], geometry), expected)
    assert expected.sum(axis=1).tolist() == stacked.sum(axis=(1, 2)).tolist()


def test_empty_tensor_file_rejected(run_setup):
    params, paths, _ = run_setup
    with TensorWriter(paths.tensors("cnnatt_v0"), "cnnatt_v0", "float16", (14, 14), 64):
        pass
    with pytest.raises(TensorFormatError, match="contains no tensors"):
        run(params, paths, "cnnatt_v0")


def test_external_convention_from_pairs_metadata(run_setup, tmp_path):
    _, paths, _ = run_setup
    write_parquet_atomic(paths.pairs, pairs_table(), metadata={"frames": {"convention": "released_code"}})
    with pytest.raises(ScoringInputError, match="frames convention 'paper'.*'released_code'"):
        score_external(paths.tensors("cnnatt_v0"), paths.pairs, paths.masks, tmp_path / "out", ["paper"], 0)


def test_window_mismatch_rejected(run_setup):
    params, paths, tensors = run_setup
    write_tensors(paths.tensors("cnnatt_v0"), tensors, window=1024)
    expected = (
        f"tensor file {paths.tensors('cnnatt_v0')} was exported with window 1024, but the pairs use window 512 "
        f"(frames.window), so word frames would not line up with T. Export the tensors again with window 512, "
        f"or build the pairs with frames.window 1024."
    )
    with pytest.raises(ScoringInputError, match=re.escape(expected)):
        run(params, paths, "cnnatt_v0")


def test_external_window_from_pairs_metadata(run_setup, tmp_path):
    _, paths, tensors = run_setup
    frames = {"convention": "paper", "crossing_words": "clip", "window": 512}
    write_parquet_atomic(paths.pairs, pairs_table(), metadata={"frames": frames})
    write_tensors(paths.tensors("cnnatt_v0"), tensors, window=1024)
    with pytest.raises(ScoringInputError, match="exported with window 1024, but the pairs use window 512"):
        score_external(paths.tensors("cnnatt_v0"), paths.pairs, paths.masks, tmp_path / "out", ["paper"], 0)
    assert not (tmp_path / "out").exists()


def test_external_default_window_mismatch(run_setup, tmp_path):
    """A file without metadata gets the default window 512, which must match the pairs' window too."""
    _, paths, _ = run_setup
    frames = {"convention": "paper", "crossing_words": "clip", "window": 1024}
    write_parquet_atomic(paths.pairs, pairs_table(), metadata={"frames": frames})
    table = pq.read_table(paths.tensors("cnnatt_v0"))
    pq.write_table(table.replace_schema_metadata({}), paths.tensors("cnnatt_v0"))
    expected = "records no window, so the default 512 applies, but the pairs use window 1024"
    with pytest.raises(ScoringInputError, match=expected):
        score_external(paths.tensors("cnnatt_v0"), paths.pairs, paths.masks, tmp_path / "out", ["paper"], 0)


def test_external_matching_window_scored(run_setup, tmp_path):
    _, paths, _ = run_setup
    frames = {"convention": "paper", "crossing_words": "clip", "window": 512}
    write_parquet_atomic(paths.pairs, pairs_table(), metadata={"frames": frames})
    summary = score_external(paths.tensors("cnnatt_v0"), paths.pairs, paths.masks, tmp_path / "out", ["paper"], 0)
    assert sorted(summary["paper"]) == ["baseline", "raw", "softmax"]


def test_nonpositive_rows_warned_once(run_setup, caplog):
    params, paths, tensors = run_setup
    shifted = dict(tensors, raw=(-np.abs(tensors["raw"].astype(np.float32)) - 1).astype(np.float16))
    write_tensors(paths.tensors("cnnatt_v0"), shifted)
    with caplog.at_level(logging.WARNING):
        run(params, paths, "cnnatt_v0")
    warnings = [record.getMessage() for record in caplog.records if "no value above 0" in record.getMessage()]
    # Captions 10, 20 and 30 have pairs to score; image 5's caption 50 has none.
    assert warnings == [
        "3 scored tensor rows (raw: 3) have no value above 0: scoring clips negative values of T to 0, so "
        "these rows score as uniform attention. If the export shifted the similarities below 0, export "
        "them without the shift."
    ]
    assert read_parquet_metadata(paths.scores("cnnatt_v0"))["counts"]["nonpositive_tensor_rows"] == {"raw": 3}

    # Clipped to all zeros, T gives the uniform scores: the mask's share of the image, the word's of the window.
    scores = pd.read_parquet(paths.scores("cnnatt_v0"))
    pair = scores[(scores["pair_id"] == 0) & (scores["convention"] == "paper") & (scores["kind"] == "raw")].iloc[0]
    assert pair["as_object"] == pytest.approx(90 * 130 / 224**2)
    assert pair["gs_object"] == pytest.approx(90 * 130 / 224**2)
    assert pair["as_word"] == pytest.approx(30 / 512)
    assert pair["gs_word"] == pytest.approx(30 / 512)


def test_raw_and_one_softmax_kind_warns(run_setup, tmp_path, caplog):
    _, paths, tensors = run_setup
    path = tmp_path / "partial.parquet"
    write_tensors(path, {"raw": tensors["raw"], "softmax_space": tensors["softmax_space"]})
    with caplog.at_level(logging.WARNING):
        summary = score_external(path, paths.pairs, paths.masks, tmp_path / "out", ["paper"], 0)
    assert sorted(summary["paper"]) == ["baseline", "raw"]
    warnings = [record.getMessage() for record in caplog.records if record.name == "vgsalign.scoring.stage"]
    assert (
        f"tensor file {path} has softmax_space tensors but no softmax_time tensors, and the softmax scores need "
        f"both, so its softmax_space rows are ignored and only raw is scored. Add the softmax_time rows to get "
        f"the softmax scores."
    ) in warnings


@pytest.mark.parametrize("kind, missing", [("softmax_space", "softmax_time"), ("softmax_time", "softmax_space")])
def test_one_softmax_kind_alone_rejected(run_setup, tmp_path, kind, missing):
    _, paths, tensors = run_setup
    path = tmp_path / "partial.parquet"
    write_tensors(path, {kind: tensors[kind]})
    expected = (
        f"tensor file {path} has only {kind} tensors, so nothing can be scored: the softmax scores need "
        f"softmax_space and softmax_time, and it has no {missing} rows. Add those rows, or raw rows."
    )
    with pytest.raises(ScoringInputError, match=re.escape(expected)):
        score_external(path, paths.pairs, paths.masks, tmp_path / "out", ["paper"], 0)


def test_missing_metadata_warned_once(run_setup, tmp_path, caplog):
    _, paths, _ = run_setup
    table = pq.read_table(paths.tensors("cnnatt_v0"))
    pq.write_table(table.replace_schema_metadata({}), paths.tensors("cnnatt_v0"))
    with caplog.at_level(logging.WARNING):
        score_external(paths.tensors("cnnatt_v0"), paths.pairs, paths.masks, tmp_path / "out", ["paper"], 0)
    warnings = [record for record in caplog.records if "has no 'vgsalign' metadata" in record.getMessage()]
    assert len(warnings) == 1


def test_external_repeated_convention_rejected(run_setup, tmp_path):
    _, paths, _ = run_setup
    with pytest.raises(ValueError, match="scoring conventions given twice: paper. List each convention once."):
        score_external(paths.tensors("cnnatt_v0"), paths.pairs, paths.masks, tmp_path / "out", ["paper", "paper"], 0)


def test_no_pairs_scores_nothing(run_setup):
    # SpokenCOCO without word alignments gives a pair table with no rows:
    # scoring writes empty results instead of failing.
    params, paths, _ = run_setup
    pairs_table().iloc[:0].to_parquet(paths.pairs)
    run_baseline(params, paths)
    run(params, paths, "cnnatt_v0")
    baseline = json.loads(paths.baseline_summary.read_text())
    model = json.loads(paths.score_summary("cnnatt_v0").read_text())
    assert baseline["paper"]["baseline"]["pairs"] == 0
    assert model["paper"]["raw"]["pairs"] == 0
    assert model["paper"]["raw"]["tensor_rows_without_pairs"] == len(TENSOR_KEYS)
    assert len(pd.read_parquet(paths.scores("cnnatt_v0"))) == 0
