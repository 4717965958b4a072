"""Stage ``train_model``: train one variant with the triplet loss, keep the best epoch.

Each epoch trains on the ``train`` split and validates on ``val``: loss, the
authors' pooled recall@10 and full-set R@1/5/10 in both directions. It then
appends a row to ``history.csv`` and writes ``last.pt``. ``best.pt`` is rewritten
when the selection metric (``train.select_by``) improves.

Interruptions: every checkpoint is written to a temporary name and renamed, so
a kill leaves the previous complete ``last.pt``. A rerun resumes from it when
its training parameters and data match, and finishes with the same numbers
as an uninterrupted run, because each epoch reseeds its random streams (batch
order, impostors, dropout) from the run seed and the epoch number. ``last.pt``
also keeps the best epoch's weights, so a rerun restores ``best.pt``,
``history.csv`` and ``metrics.json`` even when the workflow manager deleted them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import resource
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from vgsalign.config import lookup, params_digest
from vgsalign.devices import resolve_device
from vgsalign.io import atomic_path, ensure_dir, write_json_atomic, write_text_atomic
from vgsalign.layout import RunPaths
from vgsalign.models import build_model, count_parameters
from vgsalign.models.encoders import VGSModel
from vgsalign.training.data import (
    EpochBatchSampler,
    PairBatches,
    SplitItems,
    derive_seed,
    items_digest,
    make_loader,
    open_feature_stores,
    read_manifest,
    select_split,
)
from vgsalign.training.loss import batch_triplet_loss
from vgsalign.training.retrieval import retrieval_from_pairs

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
# Parameters that change the trained weights or the choice of the best epoch.
# train.epochs and train.patience only decide when to stop, and device and
# worker count do not change the numbers on the CPU, so a run may resume across them.
TRAINING_PARAMETERS = (
    "seed",
    "models.width",
    "models.dropout",
    "models.cnn0_pooling",
    "train.batch_size",
    "train.lr",
    "train.margin",
    "train.select_by",
    "train.amp",
    "train.recall_pools",
    "train.recall_pool_size",
)
HISTORY_COLUMNS = [
    "epoch",
    "train_loss",
    "val_loss",
    "val_r10_s2i",
    "val_r10_i2s",
    "val_full_r1_s2i",
    "val_full_r5_s2i",
    "val_full_r10_s2i",
    "val_full_r1_i2s",
    "val_full_r5_i2s",
    "val_full_r10_i2s",
    "seconds",
    "peak_mem_mb",
    "pairs_per_s",
]
# History columns that depend on the machine and its load, not on the computation.
TIMING_COLUMNS = ("seconds", "peak_mem_mb", "pairs_per_s")
PROGRESS_EVERY = 10  # batches between tqdm loss updates (each one synchronises the device)


class CheckpointMismatchError(RuntimeError):
    """A checkpoint made with other training parameters or data than the current run."""


# -- settings ------------------------------------------------------------------


def training_parameters(params: Mapping[str, Any], variant: str, data_fingerprint: str) -> dict[str, Any]:
    """Return the values a checkpoint must share with the run that resumes it, by dotted key."""
    values: dict[str, Any] = {"variant": variant, "data": data_fingerprint}
    for key in TRAINING_PARAMETERS:
        values[key] = lookup(params, key)
    return values


def parameter_differences(stored: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Describe each key whose value differs between a checkpoint and the current run."""
    differences = []
    for key in sorted(set(stored) | set(current)):
        before, now = stored.get(key, "<absent>"), current.get(key, "<absent>")
        if before == now:
            continue
        if key == "data":
            differences.append("the training data (manifest split or feature shards) changed")
        else:
            differences.append(f"{key} was {before!r}, now {now!r}")
    return differences


def data_fingerprint(train: SplitItems, val: SplitItems, audio_store, image_store) -> str:
    """Return a digest of the pair ids of both splits and the SHA-256 of every feature shard."""
    parts = [items_digest(train), items_digest(val)]
    for store in (audio_store, image_store):
        for number in range(len(store.npy_paths)):
            parts.append(str(store.metadata(number).get("sha256", store.npy_paths[number].name)))
    return params_digest({"parts": parts})


# -- random state and checkpoints ----------------------------------------------


def capture_rng() -> dict[str, Any]:
    """Return the Python, NumPy, torch CPU and CUDA random states as checkpoint-safe values."""
    numpy_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "key": torch.from_numpy(numpy_state[1].astype(np.int64)),
            "pos": int(numpy_state[2]),
            "has_gauss": int(numpy_state[3]),
            "cached_gaussian": float(numpy_state[4]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def restore_rng(state: Mapping[str, Any]) -> None:
    """Restore the random states stored by :func:`capture_rng`."""
    random.setstate(_as_tuple(state["python"]))
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            numpy_state["key"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value: Any) -> Any:
    """Turn the lists that a checkpoint round trip may produce back into tuples."""
    if isinstance(value, (list, tuple)):
        return tuple(_as_tuple(item) for item in value)
    return value


def save_checkpoint(path: Path, checkpoint: Mapping[str, Any]) -> None:
    """Write ``checkpoint`` with torch.save to a temporary name and rename it to ``path``."""
    with atomic_path(path) as temporary:
        torch.save(dict(checkpoint), temporary)


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`, raising a clear error if it is unreadable."""
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError) as error:
        raise RuntimeError(f"checkpoint {path} cannot be read ({error}); delete it to train from scratch") from error
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise RuntimeError(
            f"checkpoint {path} is not a vgsalign checkpoint of format {CHECKPOINT_FORMAT}; "
            "delete it to train from scratch"
        )
    return checkpoint


def remove_stray_temporaries(folder: Path, names: list[str]) -> int:
    """Delete temporary files that a killed write of ``names`` left in ``folder``; return the count."""
    removed = 0
    for name in names:
        for stray in folder.glob(f".{name}.*.tmp*"):
            stray.unlink()
            removed += 1
    if removed:
        logger.info("removed %d temporary file(s) left by an interrupted write in %s", removed, folder)
    return removed


# -- one epoch -----------------------------------------------------------------


def _autocast(device: torch.device, amp: bool):
    """Return a bf16 autocast context on CUDA when ``amp`` is set, else a no-op context."""
    # NOTE: the CUDA path (bf16 autocast, pinned memory, deterministic cuBLAS) has only
    # been written, not run: the tests and benchmarks so far ran on CPUs only.
    if amp and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _to_device(batch: Mapping[str, torch.Tensor], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    audio = batch["audio"].to(device, non_blocking=True).float()  # [B, 40, 512]
    image = batch["image"].to(device, non_blocking=True).float()  # [B, 512, 14, 14]
    return audio, image


def train_epoch(
    model: VGSModel,
    batches: Iterator[Mapping[str, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    impostors: torch.Generator,
    margin: float,
    device: torch.device,
    amp: bool,
    progress: tqdm | None = None,
) -> dict[str, float]:
    """Run one optimisation pass and return the mean loss, pair count and seconds."""
    model.train()
    started = time.perf_counter()
    loss_sum = torch.zeros((), device=device)
    pairs = 0
    for number, batch in enumerate(batches, start=1):
        audio, image = _to_device(batch, device)
        with _autocast(device, amp):
            encoded_audio = model.encode_audio(audio)  # [B, F, D]
            encoded_image = model.encode_image(image)  # [B, P, D]
            loss = batch_triplet_loss(model, encoded_audio, encoded_image, batch["image_id"], impostors, margin)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

        size = audio.shape[0]
        loss_sum += loss.detach().float() * size
        pairs += size
        if progress is not None:
            progress.update(1)
            if number % PROGRESS_EVERY == 0:
                elapsed = time.perf_counter() - started
                progress.set_postfix(loss=f"{float(loss_sum) / pairs:.4f}", pairs_per_s=f"{pairs / elapsed:.0f}")
    seconds = time.perf_counter() - started
    mean_loss = float(loss_sum) / max(pairs, 1)
    if not np.isfinite(mean_loss):
        raise FloatingPointError(
            f"the training loss is {mean_loss}; lower train.lr or set train.amp to false and delete the model folder"
        )
    return {"train_loss": mean_loss, "pairs": pairs, "seconds": seconds}


@torch.inference_mode()
def evaluate(
    model: VGSModel,
    batches: Iterator[Mapping[str, torch.Tensor]],
    margin: float,
    seed: int,
    pools: int,
    pool_size: int,
    device: torch.device,
    amp: bool,
) -> dict[str, Any]:
    """Return the loss and retrieval recalls of one split (batches in a fixed order).

    The impostors are drawn from a generator seeded the same way every epoch, so
    validation losses of different epochs are comparable.
    """
    model.eval()
    impostors = torch.Generator().manual_seed(derive_seed(seed, "validation impostors"))
    loss_sum = 0.0
    caption_parts, image_parts, image_id_parts = [], [], []
    for batch in batches:
        audio, image = _to_device(batch, device)
        with _autocast(device, amp):
            encoded_audio = model.encode_audio(audio)  # [B, F, D]
            encoded_image = model.encode_image(image)  # [B, P, D]
            loss = batch_triplet_loss(model, encoded_audio, encoded_image, batch["image_id"], impostors, margin)
            caption_parts.append(model.pool_audio(encoded_audio).float().cpu())  # [B, D]
            image_parts.append(model.pool_image(encoded_image).float().cpu())  # [B, D]
        loss_sum += float(loss) * audio.shape[0]
        image_id_parts.append(batch["image_id"])
    image_ids = torch.cat(image_id_parts).numpy()
    summary = retrieval_from_pairs(
        torch.cat(caption_parts), torch.cat(image_parts), image_ids, pools, pool_size, seed
    )
    summary["loss"] = loss_sum / max(len(image_ids), 1)
    return summary


def history_row(epoch: int, trained: Mapping[str, float], validation: Mapping[str, Any], peak_mem_mb: float) -> dict:
    """Flatten one epoch's training and validation results into a history.csv row."""
    pooled, full = validation["pooled"], validation["full"]
    return {
        "epoch": epoch,
        "train_loss": trained["train_loss"],
        "val_loss": validation["loss"],
        "val_r10_s2i": pooled["r10_s2i"],
        "val_r10_i2s": pooled["r10_i2s"],
        **{f"val_full_r{k}_{d}": full[f"r{k}_{d}"] for d in ("s2i", "i2s") for k in (1, 5, 10)},
        "seconds": trained["seconds"],
        "peak_mem_mb": peak_mem_mb,
        "pairs_per_s": trained["pairs"] / trained["seconds"] if trained["seconds"] > 0 else float("nan"),
    }


def selection_value(row: Mapping[str, float], select_by: str) -> float:
    """Return the value ``train.select_by`` compares: mean validation recall@10, or validation loss."""
    if select_by == "recall":
        return (row["val_r10_s2i"] + row["val_r10_i2s"]) / 2
    return row["val_loss"]


def is_improvement(value: float, best: float | None, select_by: str) -> bool:
    """Return whether ``value`` beats ``best`` (higher recall or lower loss; any value beats None)."""
    if best is None:
        return True
    return value > best if select_by == "recall" else value < best


def peak_memory_mb(device: torch.device) -> float:
    """Return peak memory in MiB: CUDA memory allocated on a GPU, the process's peak RSS on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is in bytes on macOS and in KiB on Linux.
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


# -- the stage -----------------------------------------------------------------


@contextlib.contextmanager
def deterministic_algorithms(device: torch.device) -> Iterator[None]:
    """Select deterministic kernels (warning where none exists) for the block, then restore the settings."""
    previous = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
    )
    if device.type == "cuda":
        # cuBLAS needs a fixed workspace for reproducible results; it must be set before its first use.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.backends.cudnn.benchmark = previous[2]
        torch.backends.cudnn.deterministic = previous[3]


class TrainingRun:
    """State of one variant's training: model, optimizer, history and best epoch, saved and resumed."""

    def __init__(self, params: Mapping[str, Any], paths: RunPaths, variant: str) -> None:
        self.params = params
        self.paths = paths
        self.variant = variant
        self.settings = params["train"]
        self.seed = int(params["seed"])
        self.device = resolve_device(self.settings["device"], "train.device")
        self.amp = bool(self.settings["amp"]) and self.device.type == "cuda"
        self.select_by = self.settings["select_by"]

        models = params["models"]
        self.model_config = {
            "variant": variant,
            "width": models["width"],
            "dropout": models["dropout"],
            "cnn0_pooling": models["cnn0_pooling"],
        }
        # Initialisation draws from the global generators, seeded here.
        random.seed(self.seed)
        np.random.seed(self.seed % 2**32)
        torch.manual_seed(self.seed)
        self.model = build_model(**self.model_config).to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.settings["lr"])

        self.epoch = 0
        self.history: list[dict[str, float]] = []
        self.best_epoch: int | None = None
        self.best_value: float | None = None
        self.best_model: dict[str, torch.Tensor] | None = None
        self.stopped_early = False
        self.protocol: dict[str, Any] = {}
        self.resumed_from: int | None = None
        self.splits: dict[str, SplitItems] = {}
        self.training_params: dict[str, Any] = {}
        self.digest = ""

    # -- checkpoints ------------------------------------------------------------

    def checkpoint(self) -> dict[str, Any]:
        """Return the full state, as stored in ``last.pt``."""
        return {
            "format": CHECKPOINT_FORMAT,
            "variant": self.variant,
            "model_config": self.model_config,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch,
            "rng": capture_rng(),
            "params_digest": self.digest,
            "params": self.training_params,
            "history": self.history,
            "best": {"epoch": self.best_epoch, "value": self.best_value, "select_by": self.select_by},
            "best_model": self.best_model,
            "stopped_early": self.stopped_early,
            "protocol": self.protocol,
        }

    def best_checkpoint(self) -> dict[str, Any]:
        """Return the best epoch's weights in checkpoint form; ``optimizer`` and ``rng`` are None."""
        return {
            "format": CHECKPOINT_FORMAT,
            "variant": self.variant,
            "model_config": self.model_config,
            "model": self.best_model,
            "optimizer": None,
            "epoch": self.best_epoch,
            "rng": None,
            "params_digest": self.digest,
            "params": self.training_params,
            "history": self.history[: self.best_epoch],
            "best": {"epoch": self.best_epoch, "value": self.best_value, "select_by": self.select_by},
        }

    def stale_reason(self, path: Path) -> str | None:
        """Return why the checkpoint at ``path`` cannot be resumed by this run, or None when it can.

        A checkpoint is stale when it was made with other training parameters or data,
        or when it has already trained more epochs than ``train.epochs`` asks for.
        """
        checkpoint = load_checkpoint(path, self.device)
        if checkpoint["params_digest"] != self.digest:
            differences = parameter_differences(checkpoint["params"], self.training_params)
            return "it was made with other settings: " + "; ".join(differences)
        if int(checkpoint["epoch"]) > self.settings["epochs"]:
            return (
                f"it has trained {int(checkpoint['epoch'])} epochs and train.epochs is now "
                f"{self.settings['epochs']}, so it cannot be shortened"
            )
        return None

    def resume(self, path: Path) -> None:
        """Restore the state saved in ``path``; raise CheckpointMismatchError for other parameters or data."""
        checkpoint = load_checkpoint(path, self.device)
        if checkpoint["params_digest"] != self.digest:
            differences = parameter_differences(checkpoint["params"], self.training_params)
            raise CheckpointMismatchError(
                f"checkpoint {path} does not match this run: {'; '.join(differences)}. "
                f"Delete {path.parent} to train from scratch, or restore those parameters to resume."
            )
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        restore_rng(checkpoint["rng"])
        self.epoch = int(checkpoint["epoch"])
        self.history = list(checkpoint["history"])
        self.best_epoch = checkpoint["best"]["epoch"]
        self.best_value = checkpoint["best"]["value"]
        self.best_model = checkpoint["best_model"]
        self.stopped_early = bool(checkpoint["stopped_early"])
        self.protocol = dict(checkpoint["protocol"])
        self.resumed_from = self.epoch
        logger.info("resumed %s from %s after epoch %d (best epoch %s)", self.variant, path, self.epoch, self.best_epoch)

    # -- training ---------------------------------------------------------------

    def train(self) -> None:
        """Train until ``train.epochs``, early stopping or a previous run's end; then write the outputs."""
        paths, variant = self.paths, self.variant
        model_dir = ensure_dir(paths.model_dir(variant))
        outputs = [paths.last_checkpoint(variant), paths.best_checkpoint(variant), paths.history(variant), paths.train_metrics(variant)]
        remove_stray_temporaries(model_dir, [path.name for path in outputs])

        audio_store, image_store = open_feature_stores(paths)
        manifest = read_manifest(paths.manifest)
        self.splits = {split: select_split(manifest, audio_store, image_store, split) for split in ("train", "val")}
        for split, items in self.splits.items():
            if len(items) < 2:
                raise ValueError(
                    f"the {split} split has {len(items)} usable caption(s) in {paths.manifest}; training needs "
                    "at least 2 in each of train and val. Use more images or raise data.val_fraction."
                )
        fingerprint = data_fingerprint(self.splits["train"], self.splits["val"], audio_store, image_store)
        self.training_params = training_parameters(self.params, variant, fingerprint)
        self.digest = params_digest(self.training_params)

        last = paths.last_checkpoint(variant)
        if last.is_file():
            reason = self.stale_reason(last)
            if reason is None:
                self.resume(last)
            else:
                # Snakemake and DVC rerun this stage when its parameters or inputs change;
                # the old checkpoint is then refused and overwritten, never resumed.
                logger.warning("not resuming %s from %s: %s; training from scratch", variant, last, reason)

        train_data = PairBatches(self.splits["train"], audio_store, image_store)
        val_data = PairBatches(self.splits["val"], audio_store, image_store)
        logger.info(
            "training %s (%s parameters, T frames %d) on %s: %d training pairs, %d validation pairs",
            variant,
            f"{count_parameters(self.model):,}",
            self.model.t_frames,
            self.device,
            len(train_data),
            len(val_data),
        )
        started = time.perf_counter()
        while self.epoch < self.settings["epochs"] and not self.stopped_early:
            self.run_epoch(self.epoch + 1, train_data, val_data)
        self.write_outputs(time.perf_counter() - started)

    def run_epoch(self, epoch: int, train_data: PairBatches, val_data: PairBatches) -> None:
        """Train and validate one epoch, then save the checkpoints and the history."""
        settings, seed = self.settings, self.seed
        # Reseeding makes an epoch depend only on the seed, the epoch number and the model and
        # optimizer state, which resuming relies on.
        torch.manual_seed(derive_seed(seed, "dropout", epoch))
        impostors = torch.Generator().manual_seed(derive_seed(seed, "impostors", epoch))
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        pin_memory = self.device.type == "cuda"

        sampler = EpochBatchSampler(len(train_data), settings["batch_size"], seed, epoch)
        loader = make_loader(train_data, sampler, settings["num_workers"], seed, pin_memory)
        description = f"{self.variant} epoch {epoch}/{settings['epochs']}"
        with tqdm(total=len(sampler), desc=description, unit="batch", leave=False, dynamic_ncols=True) as progress:
            trained = train_epoch(
                self.model, loader, self.optimizer, impostors, settings["margin"], self.device, self.amp, progress
            )

        val_sampler = EpochBatchSampler(
            len(val_data), settings["batch_size"], seed, epoch, shuffle=False, drop_short_last=False
        )
        val_loader = make_loader(val_data, val_sampler, settings["num_workers"], seed, pin_memory)
        validation = evaluate(
            self.model,
            val_loader,
            settings["margin"],
            seed,
            settings["recall_pools"],
            settings["recall_pool_size"],
            self.device,
            self.amp,
        )
        row = history_row(epoch, trained, validation, peak_memory_mb(self.device))
        self.history.append(row)
        self.protocol = _protocol(validation)
        self.epoch = epoch

        value = selection_value(row, self.select_by)
        improved = is_improvement(value, self.best_value, self.select_by)
        if improved:
            self.best_epoch, self.best_value = epoch, value
            self.best_model = {name: tensor.detach().cpu().clone() for name, tensor in self.model.state_dict().items()}
        patience = settings["patience"]
        if patience is not None and epoch - self.best_epoch >= patience:
            self.stopped_early = True

        # last.pt first: it also contains the best weights, so best.pt can be rebuilt from it.
        save_checkpoint(self.paths.last_checkpoint(self.variant), self.checkpoint())
        if improved:
            save_checkpoint(self.paths.best_checkpoint(self.variant), self.best_checkpoint())
        self.write_history()
        self.log_epoch(row)
        if self.stopped_early:
            logger.info("stopping %s early: no improvement for %d epochs", self.variant, patience)

    def log_epoch(self, row: Mapping[str, float]) -> None:
        logger.info(
            "%s epoch %d/%d: train loss %.4f, val loss %.4f, val R@10 s2i %.3f i2s %.3f "
            "(pool %d, chance s2i %.3f i2s %.3f), full R@10 s2i %.3f i2s %.3f, %.1f s, %.0f pairs/s, "
            "peak %.0f MiB, best epoch %d",
            self.variant,
            row["epoch"],
            self.settings["epochs"],
            row["train_loss"],
            row["val_loss"],
            row["val_r10_s2i"],
            row["val_r10_i2s"],
            self.protocol["pool_size"],
            self.protocol["chance_r10_s2i"],
            self.protocol["chance_r10_i2s"],
            row["val_full_r10_s2i"],
            row["val_full_r10_i2s"],
            row["seconds"],
            row["pairs_per_s"],
            row["peak_mem_mb"],
            self.best_epoch,
        )

    # -- outputs ----------------------------------------------------------------

    def write_history(self) -> None:
        frame = pd.DataFrame(self.history, columns=HISTORY_COLUMNS)
        write_text_atomic(self.paths.history(self.variant), frame.to_csv(index=False))

    def metrics(self, seconds: float) -> dict[str, Any]:
        """Return the content of ``metrics.json``."""
        best_row = self.history[self.best_epoch - 1]
        return {
            "variant": self.variant,
            "parameters": count_parameters(self.model),
            "t_frames": self.model.t_frames,
            "width": self.model_config["width"],
            "cnn0_pooling": self.model_config["cnn0_pooling"],
            "device": str(self.device),
            "amp": self.amp,
            "select_by": self.select_by,
            "best_epoch": self.best_epoch,
            "best_value": self.best_value,
            "epochs_run": self.epoch,
            "epochs_max": self.settings["epochs"],
            "stopped_early": self.stopped_early,
            "validation": {key: value for key, value in best_row.items() if key not in TIMING_COLUMNS},
            "recall_protocol": self.protocol,
            "pairs": {split: len(items) for split, items in self.splits.items()},
            "skipped": {split: items.skipped for split, items in self.splits.items()},
            "resumed_from_epoch": self.resumed_from,
            "seconds_this_run": seconds,
        }

    def write_outputs(self, seconds: float) -> None:
        """Write best.pt, history.csv and metrics.json from the current state."""
        if self.best_model is None:
            raise RuntimeError(f"no epoch of {self.variant} finished, so there is no best checkpoint to write")
        save_checkpoint(self.paths.best_checkpoint(self.variant), self.best_checkpoint())
        self.write_history()
        metrics = self.metrics(seconds)
        write_json_atomic(self.paths.train_metrics(self.variant), metrics)
        logger.info(
            "%s done: best epoch %d of %d (%s %.4f), validation R@10 s2i %.3f i2s %.3f, chance s2i %.3f i2s %.3f",
            self.variant,
            self.best_epoch,
            self.epoch,
            self.select_by,
            self.best_value,
            metrics["validation"]["val_r10_s2i"],
            metrics["validation"]["val_r10_i2s"],
            self.protocol["chance_r10_s2i"],
            self.protocol["chance_r10_i2s"],
        )


def _protocol(validation: Mapping[str, Any]) -> dict[str, Any]:
    """Return the pool size, pool count and chance levels of the validation recall."""
    pooled, full = validation["pooled"], validation["full"]
    return {
        "pool_size": pooled["pool_size"],
        "pools": pooled["pools"],
        "chance_r10": pooled["chance_r10"],
        "chance_r10_s2i": pooled["chance_r10_s2i"],
        "chance_r10_i2s": pooled["chance_r10_i2s"],
        "full_captions": full["captions"],
        "full_images": full["images"],
        "full_chance_r10_s2i": full["chance_r10_s2i"],
        "full_chance_r10_i2s": full["chance_r10_i2s"],
    }


def run(params: Mapping[str, Any], paths: RunPaths, variant: str) -> None:
    """Train ``variant`` on the run's feature shards and write its folder under ``models/``.

    Resumes from ``last.pt`` when one exists with the same training parameters and
    data and no more epochs than ``train.epochs``. Otherwise the checkpoint is
    refused with a warning that names the differences, and training starts from
    scratch, because Snakemake and DVC rerun this stage after such a change.
    """
    device = resolve_device(params["train"]["device"], "train.device")
    with deterministic_algorithms(device):
        TrainingRun(params, paths, variant).train()
