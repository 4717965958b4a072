"""Stage make_report on a small synthetic results folder that follows the stage contracts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import jinja2
from docutils.core import publish_parts
from PIL import Image
from pycocotools import mask as mask_utils

from vgsalign.config import deep_merge, read_yaml, validate_params
from vgsalign.io import write_json_atomic, write_parquet_atomic
from vgsalign.layout import RunPaths
from vgsalign.report import figures, overlays, stage

PROJECT_ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ["cnn0_sisa", "cnnatt_v1"]
CATEGORIES = {1: "dog", 2: "cat", 3: "car"}
METRICS = ["as_object", "as_word", "gs_object", "gs_word"]

# (pair_id, caption_id, image_id, word, category_id, frame_start, frame_end)
PAIRS = [
    (0, 100, 10, "dog", 1, 20, 60),
    (1, 101, 11, "puppy", 1, 100, 130),
    (2, 101, 11, "cat", 2, 200, 250),
    (3, 102, 12, "kitten", 2, 40, 90),
    (4, 102, 12, "car", 3, 300, 380),
    (5, 100, 10, "automobile", 3, 150, 170),
]
# Mask rectangles (row0, row1, col0, col1) per (image_id, category_id) on the 224 x 224 grid.
MASKS = {
    (10, 1): (0, 100, 0, 120),
    (10, 3): (120, 224, 100, 224),
    (11, 1): (50, 80, 50, 90),
    (11, 2): (0, 224, 150, 224),
    (12, 2): (10, 60, 10, 60),
    (12, 3): (100, 200, 0, 224),
}


def _params(overlays: int = 1) -> dict:
    overrides = {
        "run": "synthetic",
        "seed": 4,
        "models": {"variants": VARIANTS},
        "features": {"audio_shards": 1, "image_shards": 1, "image": {"weights": "none"}},
        "pairs": {"vectors": None},
        "report": {"fig3_variant": "cnnatt_v1", "overlays": overlays},
        "scoring": {"bootstrap_resamples": 50},
    }
    params = deep_merge(read_yaml(PROJECT_ROOT / "params.yaml"), overrides)
    validate_params(params)
    return params


def _mask(key: tuple[int, int]) -> np.ndarray:
    row0, row1, col0, col1 = MASKS[key]
    mask = np.zeros((224, 224), dtype=np.uint8)
    mask[row0:row1, col0:col1] = 1
    return mask


def _rle(mask: np.ndarray) -> str:
    return mask_utils.encode(np.asfortranarray(mask))["counts"].decode()


def _score_block(offset: float) -> dict:
    totals = {metric: round(0.1 + offset + 0.05 * index, 3) for index, metric in enumerate(METRICS)}
    return {
        "total": totals,
        "ci_low": {metric: value - 0.01 for metric, value in totals.items()},
        "ci_high": {metric: value + 0.01 for metric, value in totals.items()},
        "per_category": {name: {**totals, "pairs": 2} for name in CATEGORIES.values()},
        "categories_without_pairs": [],
        "pairs": len(PAIRS),
    }


def _per_pair_scores(kinds: list[str], seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for convention in ("paper", "released_code"):
        for kind in kinds:
            for pair_id, caption_id, image_id, word, category_id, start, end in PAIRS:
                rows.append(
                    {
                        "pair_id": pair_id, "caption_id": caption_id, "image_id": image_id,
                        "category_id": category_id, "category_name": CATEGORIES[category_id], "word": word,
                        "convention": convention, "kind": kind,
                        **{metric: float(rng.uniform()) for metric in METRICS},
                        "area_fraction": float(_mask((image_id, category_id)).mean()),
                        "word_duration_s": (end - start) / 100,
                    }
                )  # fmt: skip
    return pd.DataFrame(rows)


def _write_tensors(paths: RunPaths, variant: str, frames: int, kinds: list[str]) -> None:
    """Write T for every test caption; raw T of CNN0 is constant 1, so overlays have known GS values."""
    rng = np.random.default_rng(7)
    size = 14 * 14 * frames
    records = {"image_id": [], "caption_id": [], "variant": [], "kind": [], "grid_h": [], "grid_w": [], "frames": []}
    values = []
    for caption_id, image_id in sorted({(pair[1], pair[2]) for pair in PAIRS}):
        for kind in kinds:
            for column, value in zip(records, (image_id, caption_id, variant, kind, 14, 14, frames)):
                records[column].append(value)
            values.append(np.ones(size, np.float32) if variant.startswith("cnn0") else rng.uniform(size=size))
    table = pa.table(
        {
            **{column: records[column] for column in ("image_id", "caption_id", "variant", "kind")},
            **{column: pa.array(records[column], pa.int32()) for column in ("grid_h", "grid_w", "frames")},
            "tensor": pa.FixedSizeListArray.from_arrays(pa.array(np.concatenate(values), pa.float32()), size),
        }
    )
    write_parquet_atomic(paths.tensors(variant), table, metadata={"format_version": 1, "window": 512})


def _write_variant(paths: RunPaths, variant: str) -> None:
    attention = variant.startswith("cnnatt")
    frames = 128 if variant == "cnnatt_v1" else 64
    kinds = ["raw", "softmax"] if attention else ["raw"]
    tensor_kinds = ["raw", "softmax_space", "softmax_time"] if attention else ["raw"]

    write_json_atomic(
        paths.train_metrics(variant),
        {"variant": variant, "parameters": 1000 + frames, "t_frames": frames, "best_epoch": 2,
         "epochs_run": 3, "device": "cpu"},
    )  # fmt: skip
    history = pd.DataFrame(
        {
            "epoch": [1, 2, 3], "train_loss": [0.3, 0.2, 0.15], "val_loss": [0.3, 0.25, 0.26],
            "val_r10_s2i": [0.2, 0.4, 0.38], "val_r10_i2s": [0.25, 0.35, 0.36],
            **{f"val_full_r{k}_{d}": [0.1, 0.2, 0.2] for k in (1, 5, 10) for d in ("s2i", "i2s")},
            "seconds": [1.0, 1.0, 1.0], "peak_mem_mb": [100, 100, 100], "pairs_per_s": [50, 50, 50],
        }
    )  # fmt: skip
    paths.history(variant).write_text(history.to_csv(index=False))
    # The layout that the export stage writes.
    write_json_atomic(
        paths.retrieval(variant),
        {
            "pooled": {"r10_s2i": 0.6, "r10_i2s": 0.5, "pools": 1, "pool_size": 3, "chance_r10": 1.0},
            "full": {
                **{f"r{k}_{d}": value for k, value in ((1, 0.3), (5, 0.6), (10, 1.0)) for d in ("s2i", "i2s")},
                "chance_r10_s2i": 1.0,
                "chance_r10_i2s": 1.0,
            },
            "pairs": 3,
        },
    )
    write_parquet_atomic(paths.scores(variant), _per_pair_scores(kinds, seed=frames))
    summary = {
        convention: {kind: _score_block(0.2 if kind == "softmax" else 0.05) for kind in kinds}
        for convention in ("paper", "released_code")
    }
    write_json_atomic(paths.score_summary(variant), summary)
    confusion = pd.DataFrame(
        [
            {"target": target, "compared": compared, "metric": metric, "value": 0.5 if target == compared else 0.1,
             "count": 2}
            for target in CATEGORIES.values()
            for compared in [*CATEGORIES.values(), "other"]
            for metric in ("as_object", "gs_object")
        ]
    )  # fmt: skip
    write_parquet_atomic(paths.confusion(variant), confusion)
    _write_tensors(paths, variant, frames, tensor_kinds)


def _write_shared(paths: RunPaths, root: Path) -> None:
    pairs = pd.DataFrame(
        [
            {"pair_id": p, "caption_id": c, "image_id": i, "word_index": 0, "word": w, "start_ms": s * 10.0,
             "end_ms": e * 10.0, "frame_start": s, "frame_end": e, "category_id": k,
             "category_name": CATEGORIES[k], "similarity": 0.8}
            for p, c, i, w, k, s, e in PAIRS
        ]
    )  # fmt: skip
    write_parquet_atomic(paths.pairs, pairs)
    masks = pd.DataFrame(
        [
            {"image_id": image_id, "category_id": category_id, "category_name": CATEGORIES[category_id],
             "height": 224, "width": 224, "area_fraction": float(_mask((image_id, category_id)).mean()),
             "mask_paper": _rle(_mask((image_id, category_id))), "mask_released": _rle(_mask((image_id, category_id)))}
            for image_id, category_id in MASKS
        ]
    )  # fmt: skip
    write_parquet_atomic(paths.masks, masks)
    similarities = pd.DataFrame(
        {"caption_id": [100, 100, 101, 101], "word": ["dog", "dog", "cat", "cat"],
         "category_name": ["dog", "car", "cat", "dog"], "similarity": [1.0, 0.2, 1.0, 0.76],
         "is_best": [True, False, True, False]}
    )  # fmt: skip
    write_parquet_atomic(paths.similarities, similarities)
    write_json_atomic(
        paths.pairs_summary,
        {"vectors_source": "self-trained", "tagger": "pattern", "threshold": 0.5,
         "captions_read": 3, "dropped": {"oov_noun": 1, "no_nouns": 2},
         "frames": {"convention": "paper", "window": 512}},
    )  # fmt: skip

    image_dir = root / "images"
    image_dir.mkdir()
    image_rows = []
    for image_id in (10, 11, 12):
        file_path = image_dir / f"{image_id}.jpg"
        Image.new("RGB", (64, 48), (image_id * 10, 90, 160)).save(file_path)
        image_rows.append({"image_id": image_id, "coco_split": "val2014", "split": "test",
                           "file_path": str(file_path), "width": 64, "height": 48})  # fmt: skip
    write_parquet_atomic(paths.images, pd.DataFrame(image_rows))
    manifest = pd.DataFrame({"caption_id": [100, 101, 102], "image_id": [10, 11, 12], "split": "test"})
    write_parquet_atomic(paths.manifest, manifest, metadata={"split_sizes": {"test": 3}, "skipped": {"missing_wav": 2}})
    nouns = pairs[["caption_id", "image_id", "word_index", "word", "start_ms", "end_ms", "frame_start", "frame_end"]]
    write_parquet_atomic(paths.nouns, nouns.assign(tag="NN"), metadata={"tagger": "pattern"})

    audio_index = pd.DataFrame(
        {"row": [0, 1, 2], "caption_id": [100, 101, 102], "image_id": [10, 11, 12],
         "num_frames": [300, 400, 512], "offset": 0, "status": ["ok", "ok", "ok"]}
    )  # fmt: skip
    paths.audio_shard("0000").parent.mkdir(parents=True, exist_ok=True)
    np.save(paths.audio_shard("0000"), np.random.default_rng(0).normal(size=(3, 40, 512)).astype(np.float16))
    write_parquet_atomic(paths.audio_index("0000"), audio_index)
    image_index = pd.DataFrame({"row": [0, 1, 2], "image_id": [10, 11, 12], "status": ["ok", "ok", "truncated"]})
    write_parquet_atomic(paths.image_index("0000"), image_index, metadata={"weights": "none", "resize": "stretch"})

    write_parquet_atomic(paths.baseline_scores, _per_pair_scores(["baseline"], seed=1))
    baseline = {convention: {"baseline": _score_block(0.0)} for convention in ("paper", "released_code")}
    write_json_atomic(paths.baseline_summary, baseline)


def _build_results(root: Path) -> tuple[dict, RunPaths]:
    """Write a complete synthetic run under root/results/synthetic; the caller has changed into root."""
    params = _params()
    paths = RunPaths(params)
    for variant in VARIANTS:
        paths.model_dir(variant).mkdir(parents=True)
    _write_shared(paths, root)
    for variant in VARIANTS:
        _write_variant(paths, variant)
    return params, paths


@pytest.fixture
def results(tmp_path, monkeypatch):
    """A complete synthetic run that a test may change before running the stage."""
    monkeypatch.chdir(tmp_path)
    return _build_results(tmp_path)


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    """A complete synthetic run after the stage ran once; tests only read its outputs."""
    root = tmp_path_factory.mktemp("reported")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        params, paths = _build_results(root)
        stage.run(params, paths)
        yield params, paths


def test_stage_writes_every_file(reported):
    params, paths = reported

    expected = [paths.table(n, ext) for n in (1, 2) for ext in ("md", "csv", "tex")]
    expected += [paths.fig3, paths.fig3.with_suffix(".pdf"), paths.report, paths.metrics]
    expected += [paths.fig3_data]
    names = ["fig3/paper", "fig3/released_code", "similarities"]
    names += [f"training/{variant}" for variant in VARIANTS]
    names += [f"confusion/{variant}_{metric}" for variant in VARIANTS for metric in ("as_object", "gs_object")]
    for name in names:
        expected += [paths.figure(name, "png"), paths.figure(name, "pdf")]
    for path in expected:
        assert path.is_file(), f"{path} was not written"
    overlays = sorted(path.name for path in paths.figure("overlays/x").parent.glob("*.png"))
    assert len(overlays) == len(VARIANTS) * params["report"]["overlays"]
    assert not list(paths.root.rglob(".*tmp*")), "temporary files left behind"

    with Image.open(paths.fig3) as image:
        assert image.size == (1400, 1080)  # 7.0 x 5.4 inches at 200 dpi


def test_stage_tables_and_metrics(reported):
    params, paths = reported

    table1 = pd.read_csv(paths.table(1, "csv")).set_index("variant")
    assert table1.loc["cnnatt_v1", "r10_s2i"] == 0.6
    assert table1.loc["cnnatt_v1", "r10_s2i_diff"] == pytest.approx(0.6 - 0.547)
    assert table1.loc["cnnatt_v1", "t_frames"] == 128

    table2 = pd.read_csv(paths.table(2, "csv"))
    assert len(table2) == 2 * 4  # two conventions x (baseline, 2 raw rows, 1 softmax row)
    softmax = table2[(table2["row"] == "cnnatt_v1") & (table2["kind"] == "softmax")].set_index("convention")
    assert softmax.loc["released_code", "gs_word"] == pytest.approx(0.45)
    assert softmax.loc["released_code", "gs_word_diff"] == pytest.approx(0.45 - 0.446)

    metrics = json.loads(paths.metrics.read_text())
    assert metrics["recall"]["cnn0_sisa"]["r10_i2s"] == 0.5
    assert metrics["table2"]["paper"]["baseline"]["as_object"] == pytest.approx(0.1)
    assert metrics["table2"]["released_code"]["cnnatt_v1_softmax"]["as_object"] == pytest.approx(0.3)

    tex = paths.table(2, "tex").read_text()
    for rule in (r"\toprule", r"\midrule", r"\bottomrule"):
        assert rule in tex
    assert paths.table(1, "md").read_text().startswith("| Model |")


def test_stage_fig3_data(reported):
    params, paths = reported
    data = pd.read_csv(paths.fig3_data)
    assert set(data["source"]) == {"model", "baseline"}
    model = data[data["source"] == "model"].set_index("category_name")
    # Category "car" has pairs 4 (80 frames) and 5 (20 frames): mean duration 0.5 s.
    assert model.loc["car", "word_duration_s"] == pytest.approx(0.5)
    assert model.loc["car", "pairs"] == 2
    expected_area = (_mask((12, 3)).mean() + _mask((10, 3)).mean()) / 2
    assert model.loc["car", "area_fraction"] == pytest.approx(expected_area)


def test_stage_report_contents(reported):
    params, paths = reported
    report = paths.report.read_text()
    assert "**WARNING:** The image encoder was NOT pretrained" in report
    assert "**WARNING:** The word vectors were trained on this corpus" in report
    assert "![Fig. 3](fig3.png)" in report
    assert "figures/training/cnnatt_v1.png" in report
    assert "| skipped.missing_wav | 2 |" in report
    assert "| dropped.oov_noun | 1 |" in report
    assert "| items with status truncated | 1 |" in report
    assert "| frames.window | 512 |" not in report  # a setting, not a count
    assert "these recalls use pools of 3 test pairs, and the paper's use pools of 1,000 (chance 0.010)" in report
    chance = (
        ": pooled recall@10 1.0000 (pools: 1, pool size: 3); full-set recall@10 over 3 test pairs "
        "1.0000 speech→image, 1.0000 image→speech."
    )
    chance_lines = [line for line in report.splitlines() if line.endswith(chance)]
    # Variants tested on the same pairs share one line.
    assert len(chance_lines) == 1
    assert "CNNATT v1" in chance_lines[0]
    assert "| released_code.softmax.pairs | 6 |" in report
    assert "Missing inputs" not in report


def test_stage_overlay_gs_values(reported):
    """CNN0's T is constant, so an overlay's GS_obj is the mask fraction and GS_word the word's share of 512 frames."""
    params, paths = reported
    chosen = overlays.choose_overlay_pairs(pd.read_parquet(paths.pairs), 1, params["seed"]).iloc[0]
    report = paths.report.read_text()
    line = next(line for line in report.splitlines() if f"cnn0_sisa_pair{chosen['pair_id']}.png" in line)
    gs_object = _mask((chosen["image_id"], chosen["category_id"])).mean()
    gs_word = (chosen["frame_end"] - chosen["frame_start"]) / 512
    assert f"GS_obj {gs_object:.2f}, GS_word {gs_word:.2f}" in line


def test_choose_overlay_pairs_seeded():
    pairs = pd.DataFrame({"pair_id": [5, 3, 9, 1, 7], "word": list("abcde")})
    first = overlays.choose_overlay_pairs(pairs, 3, seed=11)
    assert list(first["pair_id"]) == sorted(first["pair_id"])
    assert len(set(first["pair_id"])) == 3
    assert list(first["pair_id"]) == list(overlays.choose_overlay_pairs(pairs, 3, seed=11)["pair_id"])
    assert len(overlays.choose_overlay_pairs(pairs, 10, seed=11)) == 5


def test_stage_missing_variant(results):
    params, paths = results
    for path in (paths.train_metrics("cnn0_sisa"), paths.retrieval("cnn0_sisa"), paths.score_summary("cnn0_sisa"),
                 paths.history("cnn0_sisa"), paths.tensors("cnn0_sisa"), paths.confusion("cnn0_sisa")):  # fmt: skip
        path.unlink()
    paths.baseline_summary.write_text("{not json")
    stage.run(params, paths)

    table1 = pd.read_csv(paths.table(1, "csv")).set_index("variant")
    assert table1.loc["cnn0_sisa", "status"] == "missing training metrics and test retrieval"
    assert math.isnan(table1.loc["cnn0_sisa", "r10_s2i"])
    table2 = pd.read_csv(paths.table(2, "csv"))
    assert set(table2.loc[table2["row"] == "baseline", "status"]) == {"missing score summary"}

    report = paths.report.read_text()
    assert "## Missing inputs and gaps" in report
    assert f"missing: `{paths.train_metrics('cnn0_sisa')}`" in report
    assert f"unreadable: `{paths.baseline_summary}`" in report
    assert "Training curves: no history for cnn0_sisa." in report
    assert not paths.figure("training/cnn0_sisa").exists()
    assert "cnn0_sisa" not in json.loads(paths.metrics.read_text())["recall"]


def test_stage_fig3_placeholder(results):
    params, paths = results
    paths.scores("cnnatt_v1").unlink()
    stage.run({**params, "report": {"fig3_variant": "cnnatt_v1", "overlays": 0}}, paths)
    assert paths.fig3.is_file()
    assert paths.fig3.with_suffix(".pdf").is_file()
    assert pd.read_csv(paths.fig3_data).empty
    report = paths.report.read_text()
    assert "Fig. 3 (released_code): No softmax scores of cnnatt_v1 for the released_code convention." in report
    assert not list(paths.figure("overlays/x").parent.glob("*"))


def test_stage_without_pairs(results):
    # SpokenCOCO without alignments: no pairs, no similarities, no confusion tables.
    params, paths = results
    write_json_atomic(
        paths.pairs_summary,
        {"vectors_source": "self-trained", "tagger": "pattern", "pairs": 0, "captions_read": 3,
         "captions_dropped": {"no_word_times": 3, "no_nouns": 0}},
    )  # fmt: skip
    similarities = pd.read_parquet(paths.similarities)
    write_parquet_atomic(paths.similarities, similarities.iloc[:0])
    for variant in VARIANTS:
        paths.confusion(variant).unlink()
    stage.run(params, paths)

    report = paths.report.read_text()
    assert "There are no word-object pairs: 3 test captions have no word time stamps" in report
    # Every output the workflow declares exists.
    assert paths.figure("similarities", "png").is_file()
    assert paths.figure("similarities", "pdf").is_file()
    for group in ("fig3", "overlays", "training", "confusion"):
        assert paths.figure_group(group).is_dir(), group


def test_stage_bad_inputs(results):
    params, paths = results
    paths.tensors("cnnatt_v1").write_bytes(b"not a parquet file")
    write_parquet_atomic(paths.confusion("cnn0_sisa"), pd.DataFrame({"target": ["dog"], "value": [0.5]}))
    paths.history("cnnatt_v1").write_text("epoch,train_loss\n1,0.3\n")
    stage.run(params, paths)

    report = paths.report.read_text()
    assert f"unreadable: `{paths.tensors('cnnatt_v1')}`" in report
    assert f"unreadable: `{paths.confusion('cnn0_sisa')}`" in report
    assert "'compared', 'metric'" in report
    assert f"unreadable: `{paths.history('cnnatt_v1')}`" in report
    assert paths.figure("overlays/cnn0_sisa_pair4").is_file()
    assert not list(paths.figure("overlays/x").parent.glob("cnnatt_v1_*"))
    assert not list(paths.figure("x").parent.glob("confusion_cnn0_sisa_*"))


@pytest.mark.parametrize("weights, vectors", [("imagenet", "data/vectors.bin"), ("none", None)])
def test_captions_render(weights, vectors):
    """Every caption renders with Jinja (as snakemake --report does) and parses as reStructuredText."""
    config = deep_merge(_params(), {"features": {"image": {"weights": weights}}, "pairs": {"vectors": vectors}})

    class Snakemake:
        pass

    Snakemake.config = config
    captions = sorted((PROJECT_ROOT / "workflow" / "report").glob("*.rst"))
    assert {path.stem for path in captions} >= {"table1", "table2", "fig3", "overlays", "training_curves",
                                                "confusion", "similarities", "workflow"}  # fmt: skip
    for path in captions:
        text = jinja2.Environment(undefined=jinja2.StrictUndefined).from_string(path.read_text())
        rendered = text.render(snakemake=Snakemake)
        html = publish_parts(rendered, writer_name="html", settings_overrides={"halt_level": 2})["body"]
        assert html.strip(), path.name
        expected_warnings = 2 if path.name == "workflow.rst" and weights == "none" else 0
        assert html.count("admonition warning") == expected_warnings, path.name
