"""Training stage: data selection and batches, determinism, resume after kill -9, rejected checkpoints."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from vgsalign.config import load_params
from vgsalign.features.shards import FeatureStore, write_shard
from vgsalign.layout import RunPaths
from vgsalign.training import train
from vgsalign.training.data import (
    EpochBatchSampler,
    PairBatches,
    open_feature_stores,
    select_split,
    write_synthetic_features,
)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
VARIANT = "cnnatt_v0"
EPOCHS = 3
SPLITS = {"train": 0.6, "val": 0.2, "test": 0.2}


def _overrides(run: str, **train_settings) -> dict:
    settings = {
        "epochs": EPOCHS,
        "batch_size": 8,
        "lr": 1.0e-3,
        "device": "cpu",
        "num_workers": 0,
        "patience": None,
        "recall_pools": 2,
        "recall_pool_size": 10,
    }
    settings.update(train_settings)
    return {
        "run": run,
        "seed": 0,
        "features": {"audio_shards": 2, "image_shards": 2},
        "models": {"width": 0.125},
        "train": settings,
    }


def _make_run(run: str, data_seed: int = 0, **train_settings) -> tuple[dict, RunPaths]:
    """Return parameters and paths of a tiny run, writing its synthetic data on first use."""
    params = load_params([PROJECT_ROOT / "params.yaml"], _overrides(run, **train_settings))
    paths = RunPaths(params)
    if not paths.manifest.is_file():
        write_synthetic_features(paths, num_images=20, captions_per_image=2, splits=SPLITS, seed=data_seed)
    return params, paths


def _history(paths: RunPaths) -> pd.DataFrame:
    return pd.read_csv(paths.history(VARIANT)).drop(columns=list(train.TIMING_COLUMNS))


def _metrics(paths: RunPaths) -> dict:
    return json.loads(paths.train_metrics(VARIANT).read_text())


def _best_weights(paths: RunPaths) -> dict[str, torch.Tensor]:
    return torch.load(paths.best_checkpoint(VARIANT), weights_only=True)["model"]


def _assert_same_weights(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> None:
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name


# -- data ------------------------------------------------------------------------


def test_sampler_seeded_per_epoch():
    first = [batch.tolist() for batch in EpochBatchSampler(20, 6, seed=1, epoch=3)]
    again = [batch.tolist() for batch in EpochBatchSampler(20, 6, seed=1, epoch=3)]
    next_epoch = [batch.tolist() for batch in EpochBatchSampler(20, 6, seed=1, epoch=4)]
    assert first == again
    assert first != next_epoch
    assert sorted(sum(first, [])) == list(range(20))
    assert [len(batch) for batch in first] == [6, 6, 6, 2]


def test_sampler_short_last_batch():
    dropped = EpochBatchSampler(13, 4, seed=0, epoch=1)
    merged = EpochBatchSampler(13, 4, seed=0, epoch=1, shuffle=False, drop_short_last=False)
    assert [len(batch) for batch in dropped] == [4, 4, 4]
    assert len(dropped) == 3
    assert dropped.used_items == 12
    assert [batch.tolist() for batch in merged] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11, 12]]


def _tiny_store(tmp_path: Path, name: str, frame: pd.DataFrame, item_shape: tuple[int, ...]) -> FeatureStore:
    array = np.arange(len(frame) * int(np.prod(item_shape)), dtype=np.float16).reshape(len(frame), *item_shape)
    write_shard(tmp_path / f"{name}.npy", tmp_path / f"{name}.parquet", array, frame, {"test": True})
    key = "caption_id" if "caption_id" in frame.columns else "image_id"
    return FeatureStore([tmp_path / f"{name}.npy"], [tmp_path / f"{name}.parquet"], id_column=key)


def test_select_split_counts_skips(tmp_path):
    audio = _tiny_store(
        tmp_path,
        "audio",
        pd.DataFrame(
            {
                "caption_id": [1, 2, 3, 4, 6],
                "image_id": [10, 10, 20, 30, 20],
                "status": ["ok", "ok", "too_short", "ok", "ok"],
            }
        ),
        (2, 3),
    )
    image = _tiny_store(tmp_path, "image", pd.DataFrame({"image_id": [10, 20]}), (2,))
    manifest = pd.DataFrame(
        {
            "caption_id": [2, 1, 3, 4, 5, 6],
            "image_id": [10, 10, 20, 30, 10, 20],
            "split": ["train", "train", "train", "train", "train", "val"],
        }
    )
    items = select_split(manifest, audio, image, "train")
    assert items.caption_ids.tolist() == [1, 2]
    assert items.image_ids.tolist() == [10, 10]
    # Caption 3: status too_short. Caption 4: image 30 has no features. Caption 5: no log-mels.
    assert items.skipped == {"audio_missing": 1, "audio_too_short": 1, "image_missing": 1}

    batch = PairBatches(items, audio, image)[np.array([1, 0])]
    np.testing.assert_array_equal(batch["audio"].numpy(), audio.get_batch([1, 0]))
    np.testing.assert_array_equal(batch["image"].numpy(), image.get_batch([0, 0]))
    assert batch["caption_id"].tolist() == [2, 1]


def test_synthetic_run_stores(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _, paths = _make_run("stores")
    audio, image = open_feature_stores(paths)
    manifest = pd.read_parquet(paths.manifest)
    assert len(audio) == 40
    assert len(image) == 20
    assert audio.item_shape == (40, 512)
    assert image.item_shape == (512, 14, 14)
    assert set(manifest["split"]) <= set(SPLITS)


# -- determinism and resume (in process) -------------------------------------------


@pytest.fixture(scope="module")
def trained_runs(tmp_path_factory):
    """Train the same tiny run twice, once in two sittings (2 + 1 epochs), and with another seed."""
    folder = tmp_path_factory.mktemp("train")
    previous = Path.cwd()
    os.chdir(folder)
    torch.set_num_threads(1)
    try:
        runs = {}
        for name in ("first", "second"):
            params, paths = _make_run(name)
            train.run(params, paths, VARIANT)
            runs[name] = paths
        params, paths = _make_run("in_two_sittings", epochs=2)
        train.run(params, paths, VARIANT)
        params, paths = _make_run("in_two_sittings")
        train.run(params, paths, VARIANT)
        runs["in_two_sittings"] = paths
        params = load_params([PROJECT_ROOT / "params.yaml"], {**_overrides("other_seed"), "seed": 1})
        paths = RunPaths(params)
        write_synthetic_features(paths, num_images=20, captions_per_image=2, splits=SPLITS, seed=0)
        train.run(params, paths, VARIANT)
        runs["other_seed"] = paths
        yield runs
    finally:
        os.chdir(previous)


def test_two_runs_identical(trained_runs):
    first, second = trained_runs["first"], trained_runs["second"]
    assert len(_history(first)) == EPOCHS
    pd.testing.assert_frame_equal(_history(first), _history(second))
    assert _metrics(first)["validation"] == _metrics(second)["validation"]
    _assert_same_weights(_best_weights(first), _best_weights(second))


def test_other_seed_differs(trained_runs):
    first, other = _history(trained_runs["first"]), _history(trained_runs["other_seed"])
    assert not np.allclose(first["train_loss"], other["train_loss"])


def test_resume_extends_training(trained_runs):
    resumed = trained_runs["in_two_sittings"]
    pd.testing.assert_frame_equal(_history(trained_runs["first"]), _history(resumed))
    _assert_same_weights(_best_weights(trained_runs["first"]), _best_weights(resumed))
    assert _metrics(resumed)["resumed_from_epoch"] == 2
    assert _metrics(resumed)["epochs_run"] == EPOCHS


def test_metrics_content(trained_runs):
    metrics = _metrics(trained_runs["first"])
    history = _history(trained_runs["first"])
    best = history.loc[history["epoch"] == metrics["best_epoch"]].iloc[0]
    assert metrics["variant"] == VARIANT
    assert metrics["t_frames"] == 64
    assert metrics["device"] == "cpu"
    assert metrics["best_value"] == pytest.approx((best["val_r10_s2i"] + best["val_r10_i2s"]) / 2)
    assert metrics["recall_protocol"]["chance_r10"] == pytest.approx(10 / metrics["recall_protocol"]["pool_size"])
    assert metrics["skipped"] == {"train": {}, "val": {}}
    assert list(pd.read_csv(trained_runs["first"].history(VARIANT)).columns) == train.HISTORY_COLUMNS


def test_other_parameters_restart(trained_runs, monkeypatch, tmp_path, caplog):
    """A checkpoint from other settings is refused with a warning; training restarts from scratch."""
    monkeypatch.chdir(trained_runs["first"].root.parents[1])
    params, paths = _make_run("first", lr=2.0e-3)
    with caplog.at_level("WARNING"):
        train.run(params, paths, VARIANT)
    assert "train.lr was 0.001, now 0.002" in caplog.text
    assert "training from scratch" in caplog.text
    assert _metrics(paths)["resumed_from_epoch"] is None
    assert len(_history(paths)) == EPOCHS

    # The same settings trained in a fresh folder give the same history.
    monkeypatch.chdir(tmp_path)
    fresh_params, fresh_paths = _make_run("first", lr=2.0e-3)
    train.run(fresh_params, fresh_paths, VARIANT)
    pd.testing.assert_frame_equal(_history(paths), _history(fresh_paths))


def test_other_data_restarts(trained_runs, monkeypatch, caplog):
    monkeypatch.chdir(trained_runs["second"].root.parents[1])
    params, paths = _make_run("second")
    write_synthetic_features(paths, num_images=20, captions_per_image=2, splits=SPLITS, seed=5)
    with caplog.at_level("WARNING"):
        train.run(params, paths, VARIANT)
    assert "training data" in caplog.text
    assert _metrics(paths)["resumed_from_epoch"] is None


def test_fewer_epochs_restarts(trained_runs, monkeypatch, caplog):
    """A checkpoint cannot be shortened: lowering train.epochs trains again."""
    monkeypatch.chdir(trained_runs["in_two_sittings"].root.parents[1])
    params, paths = _make_run("in_two_sittings", epochs=EPOCHS - 1)
    with caplog.at_level("WARNING"):
        train.run(params, paths, VARIANT)
    assert f"trained {EPOCHS} epochs and train.epochs is now {EPOCHS - 1}" in caplog.text
    assert list(_history(paths)["epoch"]) == list(range(1, EPOCHS))


def test_early_stopping(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.set_num_threads(1)
    # The validation set has at most 10 images, so every recall@10 is 1 and never improves after epoch 1.
    params, paths = _make_run("patience", epochs=5, patience=1)
    train.run(params, paths, VARIANT)
    metrics = _metrics(paths)
    assert metrics["recall_protocol"]["full_images"] <= 10
    assert metrics["best_epoch"] == 1
    assert metrics["epochs_run"] == 2
    assert metrics["stopped_early"] is True


def test_selection_rules():
    assert train.selection_value({"val_r10_s2i": 0.4, "val_r10_i2s": 0.6, "val_loss": 0.2}, "recall") == 0.5
    assert train.selection_value({"val_r10_s2i": 0.4, "val_r10_i2s": 0.6, "val_loss": 0.2}, "loss") == 0.2
    assert train.is_improvement(0.5, 0.4, "recall")
    assert not train.is_improvement(0.4, 0.4, "recall")
    assert train.is_improvement(0.1, 0.2, "loss")
    assert not train.is_improvement(0.3, 0.2, "loss")


# -- kill -9 in a subprocess -------------------------------------------------------

RUNNER = textwrap.dedent(
    """
    import io, json, os, signal, sys
    import torch
    from vgsalign.config import load_params
    from vgsalign.layout import RunPaths
    from vgsalign.training import train

    config = json.loads(sys.argv[1])
    params = load_params([config["params_file"]], config["overrides"])
    torch.set_num_threads(1)

    if config.get("kill_at_loss_call"):
        calls = [0]
        original_loss = train.batch_triplet_loss

        def loss_then_kill(*args, **kwargs):
            calls[0] += 1
            if calls[0] == config["kill_at_loss_call"]:
                os.kill(os.getpid(), signal.SIGKILL)
            return original_loss(*args, **kwargs)

        train.batch_triplet_loss = loss_then_kill

    if config.get("kill_at_last_save"):
        saves = [0]
        original_save = torch.save

        def half_write_then_kill(obj, destination, *args, **kwargs):
            if os.path.basename(str(destination)).startswith(".last.pt."):
                saves[0] += 1
                if saves[0] == config["kill_at_last_save"]:
                    buffer = io.BytesIO()
                    original_save(obj, buffer)
                    with open(destination, "wb") as handle:
                        handle.write(buffer.getvalue()[: buffer.tell() // 2])
                        handle.flush()
                        os.fsync(handle.fileno())
                    os.kill(os.getpid(), signal.SIGKILL)
            return original_save(obj, destination, *args, **kwargs)

        torch.save = half_write_then_kill

    train.run(params, RunPaths(params), config["variant"])
    """
)


def _train_in_subprocess(folder: Path, run: str, **kill) -> int:
    config = {
        "params_file": str(PROJECT_ROOT / "params.yaml"),
        "overrides": _overrides(run),
        "variant": VARIANT,
        **kill,
    }
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    completed = subprocess.run(
        [sys.executable, "-c", RUNNER, json.dumps(config)],
        cwd=folder,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if completed.returncode not in (0, -9):
        raise AssertionError(f"training subprocess failed ({completed.returncode}):\n{completed.stderr[-3000:]}")
    return completed.returncode


@pytest.fixture(scope="module")
def subprocess_folder(tmp_path_factory):
    """A folder with an uninterrupted subprocess run named ``reference``."""
    folder = tmp_path_factory.mktemp("killed")
    previous = Path.cwd()
    os.chdir(folder)
    try:
        _make_run("reference")
    finally:
        os.chdir(previous)
    assert _train_in_subprocess(folder, "reference") == 0
    return folder


def _prepare_run(folder: Path, run: str) -> tuple[RunPaths, int]:
    """Write the data of ``run`` in ``folder``; return its paths and loss calls per epoch."""
    previous = Path.cwd()
    os.chdir(folder)
    try:
        params, paths = _make_run(run)
        manifest = pd.read_parquet(paths.manifest)
    finally:
        os.chdir(previous)
    batch_size = params["train"]["batch_size"]
    train_batches = len(EpochBatchSampler(int((manifest["split"] == "train").sum()), batch_size, 0, 1))
    val_batches = len(
        EpochBatchSampler(int((manifest["split"] == "val").sum()), batch_size, 0, 1, shuffle=False, drop_short_last=False)
    )
    return paths, train_batches + val_batches


def _assert_matches_reference(folder: Path, paths: RunPaths) -> None:
    reference = RunPaths({**paths.params, "run": "reference"})
    with contextlib.chdir(folder):
        pd.testing.assert_frame_equal(_history(reference), _history(paths))
        assert _metrics(reference)["validation"] == _metrics(paths)["validation"]
        assert _metrics(reference)["best_epoch"] == _metrics(paths)["best_epoch"]
        _assert_same_weights(_best_weights(reference), _best_weights(paths))




def test_resume_after_kill_mid_epoch(subprocess_folder):
    paths, calls_per_epoch = _prepare_run(subprocess_folder, "killed_mid_epoch")
    # Second training batch of epoch 2.
    code = _train_in_subprocess(subprocess_folder, "killed_mid_epoch", kill_at_loss_call=calls_per_epoch + 2)
    assert code == -9
    with contextlib.chdir(subprocess_folder):
        assert torch.load(paths.last_checkpoint(VARIANT), weights_only=True)["epoch"] == 1
        # A workflow manager deletes the declared outputs of an incomplete job before rerunning it.
        paths.best_checkpoint(VARIANT).unlink()
        paths.history(VARIANT).unlink()
    assert _train_in_subprocess(subprocess_folder, "killed_mid_epoch") == 0
    _assert_matches_reference(subprocess_folder, paths)


def test_resume_after_kill_in_checkpoint_write(subprocess_folder):
    paths, _ = _prepare_run(subprocess_folder, "killed_in_write")
    code = _train_in_subprocess(subprocess_folder, "killed_in_write", kill_at_last_save=2)
    assert code == -9
    with contextlib.chdir(subprocess_folder):
        model_dir = paths.model_dir(VARIANT)
        strays = list(model_dir.glob(".last.pt.*"))
        assert len(strays) == 1
        assert torch.load(paths.last_checkpoint(VARIANT), weights_only=True)["epoch"] == 1
    assert _train_in_subprocess(subprocess_folder, "killed_in_write") == 0
    with contextlib.chdir(subprocess_folder):
        assert list(model_dir.glob(".last.pt.*")) == []
        assert torch.load(paths.last_checkpoint(VARIANT), weights_only=True)["epoch"] == EPOCHS
    _assert_matches_reference(subprocess_folder, paths)
