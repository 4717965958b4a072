"""Export stage: T of every test pair in the exchange format, and the test-set retrieval."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from vgsalign import export
from vgsalign.config import load_params
from vgsalign.layout import RunPaths
from vgsalign.models import build_model
from vgsalign.tensors import iter_tensor_batches, read_tensor_info
from vgsalign.training import train
from vgsalign.training.data import open_feature_stores, write_synthetic_features

PROJECT_ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("cnnatt_v1", "cnn0_misa")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Train two variants for one epoch on a synthetic run and export both."""
    folder = tmp_path_factory.mktemp("export")
    previous = Path.cwd()
    os.chdir(folder)
    torch.set_num_threads(1)
    overrides = {
        "run": "export",
        "features": {"audio_shards": 1, "image_shards": 2},
        "models": {"width": 0.125, "variants": list(VARIANTS)},
        "report": {"fig3_variant": VARIANTS[0]},
        "export": {"dtype": "float32", "rows_per_group": 7},
        "train": {"epochs": 1, "batch_size": 8, "device": "cpu", "num_workers": 0, "recall_pools": 3, "recall_pool_size": 10},
    }
    try:
        params = load_params([PROJECT_ROOT / "params.yaml"], overrides)
        paths = RunPaths(params)
        write_synthetic_features(paths, num_images=24, captions_per_image=2, splits={"train": 0.5, "val": 0.2, "test": 0.3})
        for variant in VARIANTS:
            train.run(params, paths, variant)
            export.run(params, paths, variant)
        yield folder, params, paths
    finally:
        os.chdir(previous)


def _read_all(path: Path) -> dict[str, dict[tuple[int, int], np.ndarray]]:
    tensors: dict[str, dict[tuple[int, int], np.ndarray]] = {}
    for group in iter_tensor_batches(path):
        for kind, batch in group.items():
            for image_id, caption_id, tensor in zip(batch.image_ids, batch.caption_ids, batch.tensors):
                tensors.setdefault(kind, {})[(int(image_id), int(caption_id))] = tensor
    return tensors


def _test_pairs(paths: RunPaths) -> pd.DataFrame:
    manifest = pd.read_parquet(paths.manifest)
    return manifest.loc[manifest["split"] == "test"].sort_values("caption_id")


def _independent_forward(paths: RunPaths, variant: str, pairs: pd.DataFrame):
    """Run the stored best model on the test features read straight from the shards."""
    checkpoint = torch.load(paths.best_checkpoint(variant), weights_only=True)
    model = build_model(**checkpoint["model_config"])
    model.load_state_dict(checkpoint["model"])
    model.eval()
    audio_store, image_store = open_feature_stores(paths)
    mels = torch.from_numpy(audio_store.get_batch(audio_store.position_of(pairs["caption_id"]))).float()
    features = torch.from_numpy(image_store.get_batch(image_store.position_of(pairs["image_id"]))).float()
    with torch.no_grad():
        audio = model.encode_audio(mels)  # [N, F, D]
        image = model.encode_image(features)  # [N, P, D]
    return model, audio, image


@pytest.mark.parametrize("variant", VARIANTS)
def test_tensor_file_shape_and_kinds(exported, variant):
    folder, params, paths = exported
    with contextlib.chdir(folder):
        info = read_tensor_info(paths.tensors(variant))
        pairs = _test_pairs(paths)
    frames = 128 if variant == "cnnatt_v1" else 64
    kinds = ("raw", "softmax_space", "softmax_time") if variant.startswith("cnnatt") else ("raw",)
    assert info.grid == (14, 14)
    assert info.frames == frames
    assert info.kinds == kinds
    assert info.num_rows == len(pairs) * len(kinds)
    assert info.window == 512
    assert info.frames_convention == params["frames"]["convention"]
    assert info.variants == (variant,)


def test_raw_and_softmax_values(exported):
    folder, _, paths = exported
    variant = "cnnatt_v1"
    with contextlib.chdir(folder):
        pairs = _test_pairs(paths)
        tensors = _read_all(paths.tensors(variant))
        _, audio, image = _independent_forward(paths, variant, pairs)
    raw = torch.einsum("npd,nfd->npf", image, audio).reshape(len(pairs), 14, 14, -1)  # [N, H, W, F]
    space = torch.softmax(raw.reshape(len(pairs), 196, -1), dim=1).reshape(raw.shape)
    time = torch.softmax(raw, dim=3)
    for row, (image_id, caption_id) in enumerate(zip(pairs["image_id"], pairs["caption_id"])):
        key = (int(image_id), int(caption_id))
        np.testing.assert_allclose(tensors["raw"][key], raw[row].numpy(), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(tensors["softmax_space"][key], space[row].numpy(), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(tensors["softmax_time"][key], time[row].numpy(), rtol=1e-4, atol=1e-6)
    assert set(tensors["raw"]) == {(int(i), int(c)) for i, c in zip(pairs["image_id"], pairs["caption_id"])}


def test_retrieval_matches_embeddings(exported):
    folder, params, paths = exported
    variant = "cnn0_misa"
    with contextlib.chdir(folder):
        pairs = _test_pairs(paths)
        summary = json.loads(paths.retrieval(variant).read_text())
        model, audio, image = _independent_forward(paths, variant, pairs)
    captions = model.pool_audio(audio).numpy()  # [N, D]
    image_ids = pairs["image_id"].to_numpy()
    unique_ids, first = np.unique(image_ids, return_index=True)
    images = model.pool_image(image).numpy()[first]  # [G, D]
    similarity = captions @ images.T
    column = np.searchsorted(unique_ids, image_ids)
    for k in (1, 5, 10):
        hits = [np.sum(np.delete(similarity[q], column[q]) >= similarity[q, column[q]]) < k for q in range(len(pairs))]
        assert summary["full"][f"r{k}_s2i"] == pytest.approx(np.mean(hits), abs=1e-6)
    assert summary["pairs"] == len(pairs)
    assert summary["images"] == len(unique_ids)
    assert summary["kinds"] == ["raw"]
    assert summary["pooled"]["pool_size"] == 10
    assert summary["pooled"]["pools"] == 3
    assert summary["pooled"]["chance_r10"] == pytest.approx(1.0)


def test_missing_checkpoint_raises(exported, tmp_path):
    folder, params, paths = exported
    with contextlib.chdir(folder):
        moved = tmp_path / "best.pt"
        shutil.move(paths.best_checkpoint("cnn0_misa"), moved)
        try:
            with pytest.raises(FileNotFoundError, match="run the train_model stage for cnn0_misa"):
                export.run(params, paths, "cnn0_misa")
        finally:
            shutil.move(moved, paths.best_checkpoint("cnn0_misa"))


def test_checkpoint_of_other_variant_raises(exported):
    folder, _, paths = exported
    with contextlib.chdir(folder):
        with pytest.raises(ValueError, match="contains variant 'cnnatt_v1', not 'cnn0_misa'"):
            export.load_trained_model(paths.best_checkpoint("cnnatt_v1"), "cnn0_misa", torch.device("cpu"))


