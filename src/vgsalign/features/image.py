"""Stage ``extract_image_features``: VGG16 ``block5_conv3`` maps of the images, one shard per job.

Each image becomes a ``[512, 14, 14]`` array: the output of torchvision's VGG16
``features`` up to ``block5_conv3`` and its ReLU (modules 0 to 29, before the
last max-pool) for a 224 x 224 input. The network is frozen and runs in
``torch.inference_mode``.

Weights (``features.image.weights``):

- ``imagenet``: torchvision's ``VGG16_Weights.IMAGENET1K_V1``, downloaded once
  into the torch hub cache. These weights expect RGB input scaled to [0, 1]
  and normalised with the ImageNet mean and standard deviation, which is what
  :func:`preprocess` does. Khorrami and Räsänen (Interspeech 2021) used
  Keras' VGG16, which takes BGR input with the ImageNet mean subtracted and no
  division by the standard deviation, and Keras' own weights file, so our
  features differ from theirs.
- ``none``: a random initialisation seeded by ``seed`` (torchvision's scheme:
  Kaiming-normal convolutions, zero biases), for offline runs and the demo.
  The stage logs a warning and records the choice in the shard metadata.

Preprocessing applies the EXIF orientation and converts any mode (grayscale,
16-bit grayscale, CMYK, palette, with or without alpha) to RGB. Alpha is
composited over the ImageNet mean colour, which normalises to zero. The image
is then resized by ``stretch`` (to 224 x 224 ignoring the aspect ratio, as
Khorrami and Räsänen did) or by ``center_crop`` (short side to 224, then the
centre crop). Resizing is bilinear with PIL's antialiasing.

A missing or undecodable image (including a truncated JPEG) is skipped and
counted: it keeps its row with an all-zero map and a ``status`` of
``missing`` or ``unreadable``.
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import socket
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageOps
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.models import VGG16_Weights, vgg
from tqdm import tqdm

from vgsalign.devices import resolve_device
from vgsalign.features.shards import STATUS_OK, ShardWriter, SkipLog, ids_digest, parse_shard, shard_block, verify_shard
from vgsalign.layout import RunPaths

logger = logging.getLogger(__name__)

INPUT_SIZE = 224
FEATURE_SHAPE = (512, 14, 14)
# Modules 0-29 of torchvision's vgg16().features end with block5_conv3's ReLU.
BLOCK5_CONV3_RELU = 30
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_BACKGROUND = tuple(round(255 * value) for value in IMAGENET_MEAN)
IMAGENET_WEIGHTS = VGG16_Weights.IMAGENET1K_V1
STATUS_REASONS = {
    "missing": "the image file listed in the manifest does not exist",
    "unreadable": "the image could not be decoded (truncated or corrupt file, unknown format)",
}
# Exceptions PIL raises for a corrupt, truncated or unsupported file.
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


class ImageFeatureError(RuntimeError):
    """The image stage cannot run (weights unavailable, device missing)."""


# -- preprocessing ---------------------------------------------------------------


def to_rgb(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation and convert any PIL mode to 8-bit RGB."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit grayscale: scale 0..65535 to 0..255 (PIL's own conversion would clip).
        levels = np.asarray(image, dtype=np.float32) / 257.0
        image = Image.fromarray(np.clip(np.rint(levels), 0, 255).astype(np.uint8), mode="L")
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        image.mode == "P" and "transparency" in image.info
    )
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*_BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def resize(image: Image.Image, mode: str) -> Image.Image:
    """Resize an RGB image to 224 x 224 by ``stretch`` or ``center_crop``."""
    if mode == "stretch":
        return image.resize((INPUT_SIZE, INPUT_SIZE), Image.Resampling.BILINEAR)
    if mode != "center_crop":
        raise ValueError(f"invalid features.image.resize {mode!r}: use 'stretch' or 'center_crop'")
    width, height = image.size
    scale = INPUT_SIZE / min(width, height)
    new_size = (max(INPUT_SIZE, round(width * scale)), max(INPUT_SIZE, round(height * scale)))
    image = image.resize(new_size, Image.Resampling.BILINEAR)
    left = int(round((new_size[0] - INPUT_SIZE) / 2.0))
    top = int(round((new_size[1] - INPUT_SIZE) / 2.0))
    return image.crop((left, top, left + INPUT_SIZE, top + INPUT_SIZE))


def preprocess(image: Image.Image, mode: str = "stretch") -> torch.Tensor:
    """Return the normalised input ``[3, 224, 224]`` float32 of one PIL image."""
    rgb = resize(to_rgb(image), mode)
    pixels = torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255.0).permute(2, 0, 1)  # [3, H, W]
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (pixels - mean) / std


def load_image(path: str | Path, mode: str) -> torch.Tensor:
    """Open, decode and preprocess one image file; PIL exceptions propagate."""
    with Image.open(path) as image:
        image.load()
        return preprocess(image, mode)


class ImageFiles(Dataset):
    """Preprocessed images for a DataLoader; a bad file gives zeros and its status instead of raising."""

    def __init__(self, files: Sequence[str], mode: str) -> None:
        self.files = list(files)
        self.mode = mode

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, str, str]:
        path = self.files[item]
        empty = torch.zeros(3, INPUT_SIZE, INPUT_SIZE)
        if path is None or not Path(path).is_file():
            return empty, "missing", f"image file {path} not found"
        try:
            return load_image(path, self.mode), STATUS_OK, ""
        except _DECODE_ERRORS as error:
            return empty, "unreadable", f"cannot decode image {path}: {error}"


# -- network ---------------------------------------------------------------------


def _hub_checkpoint() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(IMAGENET_WEIGHTS.url).name


# Seconds a download may wait for the server's next bytes before it fails. Without
# a limit, a network that accepts the connection but never responds hangs the job.
DOWNLOAD_TIMEOUT_S = 60.0


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    """Apply ``seconds`` as the default socket timeout (urllib's, used by torch.hub) inside the block."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _imagenet_state() -> dict[str, torch.Tensor]:
    """Return torchvision's ImageNet VGG16 state dict, downloading it into the torch cache if absent."""
    try:
        with _socket_timeout(DOWNLOAD_TIMEOUT_S):
            return IMAGENET_WEIGHTS.get_state_dict(progress=False, check_hash=True)
    except OSError as error:  # includes TimeoutError
        raise ImageFeatureError(
            f"cannot download the VGG16 ImageNet weights from {IMAGENET_WEIGHTS.url} ({error}); this machine "
            f"looks offline. Copy that file to {_hub_checkpoint()} (or set TORCH_HOME to a folder holding "
            "hub/checkpoints/ with it), or set features.image.weights: none for random weights."
        ) from error
    except (RuntimeError, pickle.UnpicklingError, EOFError) as error:
        raise ImageFeatureError(
            f"cannot read the cached VGG16 weights at {_hub_checkpoint()} ({error}); delete the file so it is downloaded again"
        ) from error


def build_vgg16_block5(weights: str, seed: int = 0) -> nn.Sequential:
    """Return VGG16 ``features`` up to block5_conv3 + ReLU, frozen and in eval mode.

    ``weights`` is ``imagenet`` or ``none`` (random, seeded by ``seed``).
    """
    layers = vgg.make_layers(vgg.cfgs["D"], batch_norm=False)[:BLOCK5_CONV3_RELU]
    if weights == "imagenet":
        state = _imagenet_state()
        prefix = "features."
        trimmed = {
            key[len(prefix) :]: value
            for key, value in state.items()
            if key.startswith(prefix) and int(key[len(prefix) :].split(".")[0]) < BLOCK5_CONV3_RELU
        }
        layers.load_state_dict(trimmed, strict=True)
    elif weights == "none":
        generator = torch.Generator().manual_seed(seed)
        for module in layers.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu", generator=generator)
                nn.init.zeros_(module.bias)
    else:
        raise ValueError(f"invalid features.image.weights {weights!r}: use 'imagenet' or 'none'")
    layers.requires_grad_(False)
    return layers.eval()


def extract_batch(
    model: nn.Module, images: torch.Tensor, device: torch.device, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Run the network on a batch ``[B, 3, 224, 224]``; return ``[B, 512, 14, 14]`` in ``dtype`` on the CPU.

    On CUDA the input is channels-last, the forward pass runs under float16
    autocast and the maps are cast to ``dtype`` before the copy to the CPU.
    """
    # NOTE: the CUDA branch has not run on a GPU yet (the tests and benchmarks ran on CPU only).
    with torch.inference_mode():
        if device.type == "cuda":
            images = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=torch.float16):
                maps = model(images)  # [B, 512, 14, 14]
        else:
            maps = model(images.to(device))  # [B, 512, 14, 14]
        return maps.to(dtype).contiguous().cpu()


# -- stage -----------------------------------------------------------------------


def shard_params(params: Mapping[str, Any], shard: int, ids: np.ndarray, device: torch.device) -> dict[str, Any]:
    """Return the values that determine an image shard's content (stored in and checked against its index).

    Batch size and worker count change only the speed, so they are left out,
    and a change of either does not rebuild a shard.
    """
    image = params["features"]["image"]
    return {
        "features.image.weights": image["weights"],
        "features.image.resize": image["resize"],
        "seed": params["seed"] if image["weights"] == "none" else None,
        "features.dtype": params["features"]["dtype"],
        "features.image_shards": params["features"]["image_shards"],
        "device_type": device.type,
        "shard": shard,
        "ids_sha256": ids_digest(ids),
    }


def shard_images(images: pd.DataFrame, num_shards: int, shard: int) -> pd.DataFrame:
    """Return the image manifest rows of shard ``shard`` (a contiguous block of the sorted image ids)."""
    block = shard_block(images["image_id"].to_numpy(), num_shards, shard)
    return images.set_index("image_id").loc[block].reset_index()


def make_loader(files: Sequence[str], image_params: Mapping[str, Any], device: torch.device) -> DataLoader:
    """Return a DataLoader that decodes and preprocesses images in worker processes."""
    workers = int(image_params["num_workers"])
    return DataLoader(
        ImageFiles(files, image_params["resize"]),
        batch_size=int(image_params["batch_size"]),
        shuffle=False,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        prefetch_factor=4 if workers > 0 else None,
    )


def run(params: Mapping[str, Any], paths: RunPaths, shard: str) -> None:
    """Write image shard ``shard``: VGG16 block5_conv3 maps of one block of the image manifest."""
    number = parse_shard(shard)
    image_params = params["features"]["image"]
    device = resolve_device(params["features"]["device"], "features.device")
    npy_path, index_path = paths.image_shard(shard), paths.image_index(shard)

    manifest = pd.read_parquet(paths.images, columns=["image_id", "file_path"])
    images = shard_images(manifest, params["features"]["image_shards"], number)
    params_used = shard_params(params, number, images["image_id"].to_numpy(), device)

    reason = verify_shard(npy_path, index_path, params_used)
    if reason is None:
        logger.info("image shard %s is up to date (%d images); nothing to do", shard, len(images))
        return
    if index_path.exists() or npy_path.exists():
        logger.warning("rebuilding image shard %s: %s", shard, reason)
    if image_params["weights"] == "none":
        logger.warning(
            "features.image.weights is none: VGG16 has random weights (seed %d), not ImageNet ones, so "
            "this run's scores are not comparable with results that use ImageNet VGG16 features",
            params["seed"],
        )

    model = build_vgg16_block5(image_params["weights"], seed=int(params["seed"])).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)

    shard_dtype = getattr(torch, params["features"]["dtype"])
    statuses = np.full(len(images), STATUS_OK, dtype=object)
    skips = SkipLog(logger, "image")
    started = time.perf_counter()
    loader = make_loader(images["file_path"].tolist(), image_params, device)
    with ShardWriter(npy_path, index_path, len(images), FEATURE_SHAPE, params["features"]["dtype"], params_used) as writer:
        start = 0
        progress = tqdm(total=len(images), desc=f"images {shard}", unit="img")
        with contextlib.closing(progress):
            for batch, batch_statuses, messages in loader:  # batch: [B, 3, 224, 224]
                good = np.array([status == STATUS_OK for status in batch_statuses])
                for item in np.flatnonzero(~good):
                    statuses[start + item] = batch_statuses[item]
                    skips.add(int(images["image_id"].iat[start + item]), batch_statuses[item], messages[item])
                if good.all():
                    maps = extract_batch(model, batch, device, shard_dtype)  # [B, 512, 14, 14]
                    writer.write_rows(slice(start, start + len(good)), maps.numpy())
                elif good.any():
                    maps = extract_batch(model, batch[torch.from_numpy(good)], device, shard_dtype)  # [B_good, 512, 14, 14]
                    writer.write_rows(start + np.flatnonzero(good), maps.numpy())
                start += len(batch_statuses)
                progress.update(len(batch_statuses))

        index = images[["image_id"]].assign(status=statuses)
        skipped = skips.sorted_counts()
        writer.finish(
            index,
            metadata={
                "skipped": skipped,
                "weights": image_params["weights"],
                "weights_name": str(IMAGENET_WEIGHTS) if image_params["weights"] == "imagenet" else "random",
                "device": str(device),
                "precision": "float16 autocast" if device.type == "cuda" else "float32",
                "torch": torch.__version__,
            },
        )

    elapsed = time.perf_counter() - started
    logger.info(
        "image shard %s: %d images in %.1f s (%.1f images/s) on %s, %d skipped by status %s",
        shard,
        len(images),
        elapsed,
        len(images) / max(elapsed, 1e-9),
        device,
        sum(skipped.values()),
        skipped,
    )
