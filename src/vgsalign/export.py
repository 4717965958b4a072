"""Stage ``export_tensors``: T for every test pair, and the test-set retrieval recall.

The best checkpoint of a variant runs over the test split (one caption per test
image with its image) in eval mode. For every pair it writes T in the exchange
format of :mod:`vgsalign.tensors`: ``raw`` for every variant, and for CNNATT
also ``softmax_space`` and ``softmax_time``. The same pass collects the
retrieval embeddings, from which the pooled recall@10 and the full-set R@1/5/10
in both directions are computed.

Skip rule: a test caption without usable features is left out (as in
training), counted by reason in ``retrieval.json``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from vgsalign.layout import RunPaths
from vgsalign.io import write_json_atomic
from vgsalign.models import build_model
from vgsalign.models.encoders import VGSModel
from vgsalign.tensors import TensorWriter
from vgsalign.training.data import (
    EpochBatchSampler,
    PairBatches,
    make_loader,
    open_feature_stores,
    read_manifest,
    select_split,
)
from vgsalign.training.retrieval import retrieval_from_pairs
from vgsalign.devices import resolve_device
from vgsalign.training.train import deterministic_algorithms, load_checkpoint

logger = logging.getLogger(__name__)

# Pairs per forward pass. T of 32 pairs in three kinds is 32 x 3 x 196 x 128 floats
# at most (about 10 MB), so memory stays small on any device.
BATCH_SIZE = 32


def load_trained_model(path, variant: str, device: torch.device) -> tuple[VGSModel, dict[str, Any]]:
    """Build the model stored in checkpoint ``path`` and load its weights, in eval mode."""
    checkpoint = load_checkpoint(path, device)
    if checkpoint["variant"] != variant:
        raise ValueError(
            f"checkpoint {path} contains variant {checkpoint['variant']!r}, not {variant!r}; "
            "retrain this variant or check the model folder"
        )
    model = build_model(**checkpoint["model_config"]).to(device)
    model.load_state_dict(checkpoint["model"])
    model.eval()
    return model, checkpoint


@torch.inference_mode()
def export_split(
    model: VGSModel,
    batches,
    writer: TensorWriter | None,
    device: torch.device,
    progress: tqdm | None = None,
) -> dict[str, Any]:
    """Write T of every pair in ``batches`` and return the pairs' retrieval embeddings.

    Returns ``caption_embeddings`` ``[Q, D]``, ``image_embeddings`` ``[Q, D]`` (one
    per pair) and ``image_ids`` ``[Q]``. ``writer`` None computes the embeddings only.
    """
    caption_parts, image_parts, image_id_parts = [], [], []
    for batch in batches:
        audio = batch["audio"].to(device).float()  # [B, 40, 512]
        image = batch["image"].to(device).float()  # [B, 512, 14, 14]
        encoded_audio = model.encode_audio(audio)  # [B, F, D]
        encoded_image = model.encode_image(image)  # [B, P, D]
        if writer is not None:
            for kind, tensor in model.alignment(encoded_audio, encoded_image).items():  # [B, H, W, F]
                writer.write(batch["image_id"].numpy(), batch["caption_id"].numpy(), kind, tensor.float().cpu())
        caption_parts.append(model.pool_audio(encoded_audio).float().cpu())  # [B, D]
        image_parts.append(model.pool_image(encoded_image).float().cpu())  # [B, D]
        image_id_parts.append(batch["image_id"])
        if progress is not None:
            progress.update(1)
    return {
        "caption_embeddings": torch.cat(caption_parts),
        "image_embeddings": torch.cat(image_parts),
        "image_ids": torch.cat(image_id_parts).numpy(),
    }


def run(params: Mapping[str, Any], paths: RunPaths, variant: str) -> None:
    """Export the test-set tensors of ``variant`` and write its test-set retrieval recall."""
    device = resolve_device(params["train"]["device"], "train.device")
    with deterministic_algorithms(device):
        _export(params, paths, variant, device)


def _export(params: Mapping[str, Any], paths: RunPaths, variant: str, device: torch.device) -> None:
    checkpoint_path = paths.best_checkpoint(variant)
    if not checkpoint_path.is_file():
        raise FileNotFoundError(f"best checkpoint {checkpoint_path} not found; run the train_model stage for {variant}")
    model, checkpoint = load_trained_model(checkpoint_path, variant, device)

    audio_store, image_store = open_feature_stores(paths)
    items = select_split(read_manifest(paths.manifest), audio_store, image_store, "test")
    if len(items) < 2:
        raise ValueError(
            f"the test split has {len(items)} usable caption(s) in {paths.manifest}; "
            "export needs at least 2. Use more test images."
        )
    dataset = PairBatches(items, audio_store, image_store)
    sampler = EpochBatchSampler(len(dataset), BATCH_SIZE, params["seed"], 0, shuffle=False, drop_short_last=False)
    loader = make_loader(dataset, sampler, params["train"]["num_workers"], params["seed"], device.type == "cuda")

    export = params["export"]
    writer = TensorWriter(
        paths.tensors(variant),
        variant,
        dtype=export["dtype"],
        grid=model.grid,
        frames=model.t_frames,
        rows_per_group=export["rows_per_group"],
        window=params["frames"]["window"],
        frames_convention=params["frames"]["convention"],
        metadata={"checkpoint_epoch": checkpoint["epoch"]},
    )
    logger.info("exporting %s: %d test pairs from epoch %s", variant, len(items), checkpoint["epoch"])
    with writer, tqdm(total=len(sampler), desc=f"export {variant}", unit="batch", leave=False) as progress:
        embeddings = export_split(model, loader, writer, device, progress)

    train = params["train"]
    retrieval = retrieval_from_pairs(
        embeddings["caption_embeddings"],
        embeddings["image_embeddings"],
        embeddings["image_ids"],
        train["recall_pools"],
        train["recall_pool_size"],
        params["seed"],
    )
    summary = {
        "variant": variant,
        "split": "test",
        "checkpoint_epoch": checkpoint["epoch"],
        "pairs": len(items),
        "images": int(np.unique(items.image_ids).shape[0]),
        "skipped": items.skipped,
        "pooled": retrieval["pooled"],
        "full": retrieval["full"],
        "kinds": list(model.alignment_kinds),
    }
    write_json_atomic(paths.retrieval(variant), summary)
    pooled = retrieval["pooled"]
    logger.info(
        "%s test retrieval: pooled R@10 s2i %.3f i2s %.3f (%d pools of %d pairs, chance s2i %.3f i2s %.3f), "
        "full R@10 s2i %.3f i2s %.3f",
        variant,
        pooled["r10_s2i"],
        pooled["r10_i2s"],
        pooled["pools"],
        pooled["pool_size"],
        pooled["chance_r10_s2i"],
        pooled["chance_r10_i2s"],
        retrieval["full"]["r10_s2i"],
        retrieval["full"]["r10_i2s"],
    )
