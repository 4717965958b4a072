"""Caption-image pairs read from memory-mapped feature shards, in seeded batches.

Each item is one caption (log-mels ``[40, 512]``) with its image (VGG16 maps
``[512, 14, 14]``). Items are fetched a batch at a time through
:class:`~vgsalign.features.shards.FeatureStore`, which reads only the requested
rows of each shard, so the private memory of a process depends on the batch
size and not on the size of the data set. Pages of the memory-mapped shards
that were read still count in the reader's RSS until the kernel reclaims
them, which it does under memory pressure because they are clean file pages.

Skip rule: a caption of the split whose log-mels or image features are not in
the shards, or whose shard row has a status other than ``ok``, is left out.
The skips are counted by reason, logged, and written to the training metrics.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from vgsalign.features.shards import STATUS_OK, FeatureStore, ShardWriter, shard_block
from vgsalign.io import write_parquet_atomic
from vgsalign.layout import RunPaths

logger = logging.getLogger(__name__)

MANIFEST_COLUMNS = ("caption_id", "image_id", "split")
MEL_SHAPE = (40, 512)  # mel bands, frames
VGG_SHAPE = (512, 14, 14)  # channels, rows, columns


def open_feature_stores(paths: RunPaths) -> tuple[FeatureStore, FeatureStore]:
    """Open the audio store (keyed by ``caption_id``) and the image store (keyed by ``image_id``)."""
    audio = FeatureStore(
        [paths.audio_shard(name) for name in paths.audio_shard_names],
        [paths.audio_index(name) for name in paths.audio_shard_names],
        id_column="caption_id",
    )
    image = FeatureStore(
        [paths.image_shard(name) for name in paths.image_shard_names],
        [paths.image_index(name) for name in paths.image_shard_names],
        id_column="image_id",
    )
    return audio, image


def read_manifest(path: str | os.PathLike) -> pd.DataFrame:
    """Read the caption manifest's id and split columns, raising a clear error if they are missing."""
    try:
        manifest = pd.read_parquet(path, columns=list(MANIFEST_COLUMNS))
    except FileNotFoundError as error:
        raise FileNotFoundError(f"caption manifest {path} not found; run the build_manifest stage first") from error
    except (KeyError, ValueError) as error:
        raise ValueError(
            f"caption manifest {path} lacks one of the columns {', '.join(MANIFEST_COLUMNS)}; "
            "rebuild it with the build_manifest stage"
        ) from error
    return manifest


@dataclass
class SplitItems:
    """The usable caption-image pairs of one split and the captions skipped, by reason."""

    split: str
    caption_ids: np.ndarray  # [N] int64
    image_ids: np.ndarray  # [N] int64
    audio_positions: np.ndarray  # [N] positions in the audio store
    image_positions: np.ndarray  # [N] positions in the image store
    skipped: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.caption_ids.shape[0])


def select_split(
    manifest: pd.DataFrame, audio_store: FeatureStore, image_store: FeatureStore, split: str
) -> SplitItems:
    """Return the pairs of ``split`` whose features both stores contain with status ``ok``, sorted by caption id."""
    captions = manifest.loc[manifest["split"] == split].sort_values("caption_id", kind="stable")
    skipped: Counter[str] = Counter()
    keep = np.ones(len(captions), dtype=bool)

    audio_positions = _positions(audio_store, captions["caption_id"].to_numpy(), "audio", keep, skipped)
    image_positions = _positions(image_store, captions["image_id"].to_numpy(), "image", keep, skipped)

    items = SplitItems(
        split=split,
        caption_ids=captions["caption_id"].to_numpy(dtype=np.int64)[keep],
        image_ids=captions["image_id"].to_numpy(dtype=np.int64)[keep],
        audio_positions=audio_positions[keep],
        image_positions=image_positions[keep],
        skipped=dict(sorted(skipped.items())),
    )
    if items.skipped:
        logger.warning(
            "%s split: skipped %d of %d captions without usable features (%s)",
            split,
            sum(items.skipped.values()),
            len(captions),
            ", ".join(f"{reason}: {count}" for reason, count in items.skipped.items()),
        )
    return items


def _positions(
    store: FeatureStore, ids: np.ndarray, kind: str, keep: np.ndarray, skipped: Counter[str]
) -> np.ndarray:
    """Look ``ids`` up in ``store``; clear ``keep`` and count a reason for each unusable one."""
    lookup = pd.Index(store.index[store.id_column].to_numpy())
    positions = lookup.get_indexer(np.asarray(ids, dtype=np.int64))
    missing = positions < 0
    if (missing & keep).any():
        skipped[f"{kind}_missing"] += int((missing & keep).sum())
    keep &= ~missing
    if "status" in store.index.columns:
        status = np.full(len(ids), STATUS_OK, dtype=object)
        status[~missing] = store.index["status"].to_numpy()[positions[~missing]]
        bad = (status != STATUS_OK) & keep
        for reason, count in Counter(status[bad]).items():
            skipped[f"{kind}_{reason}"] += int(count)
        keep &= ~bad
    return positions.astype(np.int64)


def items_digest(items: SplitItems) -> str:
    """Return a SHA-256 of a split's caption and image ids, to tell training data apart."""
    digest = hashlib.sha256()
    digest.update(items.split.encode())
    digest.update(np.ascontiguousarray(items.caption_ids, dtype="<i8").tobytes())
    digest.update(np.ascontiguousarray(items.image_ids, dtype="<i8").tobytes())
    return digest.hexdigest()


class PairBatches(Dataset):
    """Batches of caption-image pairs, where ``dataset[indices]`` reads one whole batch.

    Use with :class:`EpochBatchSampler` and ``DataLoader(batch_size=None)``. A batch
    is a dict of ``audio`` ``[B, 40, 512]``, ``image`` ``[B, 512, 14, 14]``,
    ``caption_id`` ``[B]`` and ``image_id`` ``[B]``. The features keep the shards'
    dtype (float16 by default) and the training loop converts them on the device.
    """

    def __init__(self, items: SplitItems, audio_store: FeatureStore, image_store: FeatureStore) -> None:
        self.items = items
        self.audio_store = audio_store
        self.image_store = image_store

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, indices: np.ndarray) -> dict[str, torch.Tensor]:
        indices = np.asarray(indices, dtype=np.int64)
        audio = self.audio_store.get_batch(self.items.audio_positions[indices])  # [B, 40, 512]
        image = self.image_store.get_batch(self.items.image_positions[indices])  # [B, 512, 14, 14]
        return {
            "audio": torch.from_numpy(audio),
            "image": torch.from_numpy(image),
            "caption_id": torch.from_numpy(self.items.caption_ids[indices]),
            "image_id": torch.from_numpy(self.items.image_ids[indices]),
        }


def derive_seed(seed: int, *keys: int | str) -> int:
    """Return a 63-bit seed for one random stream, derived from the run seed and ``keys``."""
    text = ":".join(str(part) for part in (seed, *keys))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


class EpochBatchSampler(Sampler[np.ndarray]):
    """Yield arrays of item indices, one per batch, in an order fixed by (seed, epoch).

    With ``shuffle`` the order is a permutation drawn from the seed and epoch alone,
    so a resumed epoch gets the same batches as an uninterrupted one. Without it
    the items come in index order. A last batch of fewer than ``min_batch`` items
    (a batch of one has no impostors) is dropped when ``drop_short_last`` is set,
    which suits training, and otherwise joins the batch before it, so that an
    evaluation covers every item.
    """

    def __init__(
        self,
        num_items: int,
        batch_size: int,
        seed: int,
        epoch: int,
        shuffle: bool = True,
        drop_short_last: bool = True,
        min_batch: int = 2,
    ) -> None:
        if batch_size < min_batch:
            raise ValueError(f"invalid batch size {batch_size}: the triplet loss needs at least {min_batch} pairs")
        self.num_items = num_items
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = epoch
        self.shuffle = shuffle
        self.drop_short_last = drop_short_last
        self.min_batch = min_batch

    def _order(self) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.num_items)
        return np.random.default_rng(derive_seed(self.seed, "batches", self.epoch)).permutation(self.num_items)

    def _bounds(self) -> list[tuple[int, int]]:
        bounds = [(start, min(start + self.batch_size, self.num_items)) for start in range(0, self.num_items, self.batch_size)]
        if bounds and bounds[-1][1] - bounds[-1][0] < self.min_batch:
            short = bounds.pop()
            if not self.drop_short_last and bounds:
                bounds[-1] = (bounds[-1][0], short[1])
        return bounds

    def __iter__(self) -> Iterator[np.ndarray]:
        order = self._order()
        for start, stop in self._bounds():
            yield order[start:stop]

    def __len__(self) -> int:
        return len(self._bounds())

    @property
    def used_items(self) -> int:
        """Return how many items the batches cover (all but a dropped short last batch)."""
        return sum(stop - start for start, stop in self._bounds())


def _seed_worker(worker_id: int) -> None:
    """Seed Python, NumPy and torch in a DataLoader worker from the loader's base seed."""
    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)


def make_loader(
    dataset: PairBatches,
    sampler: EpochBatchSampler,
    num_workers: int,
    seed: int,
    pin_memory: bool = False,
) -> DataLoader:
    """Return a DataLoader that yields the sampler's batches, seeded for reproducibility.

    The batches draw no random numbers, so worker count and timing do not change
    the data. The generator and ``worker_init_fn`` keep any random step added
    later reproducible as well.
    """
    generator = torch.Generator()
    generator.manual_seed(derive_seed(seed, "loader", sampler.epoch))
    return DataLoader(
        dataset,
        sampler=sampler,
        batch_size=None,
        num_workers=num_workers,
        pin_memory=pin_memory,
        worker_init_fn=_seed_worker if num_workers > 0 else None,
        generator=generator,
        prefetch_factor=4 if num_workers > 0 else None,
        persistent_workers=False,
    )


# -- synthetic data for tests and benchmarks -----------------------------------


def write_synthetic_features(
    paths: RunPaths,
    num_images: int,
    captions_per_image: int,
    splits: Mapping[str, float],
    seed: int = 0,
    classes: int = 4,
    chunk: int = 256,
) -> pd.DataFrame:
    """Write a learnable synthetic data set in the stage formats: feature shards and a manifest.

    Each image belongs to one of ``classes`` classes. Its VGG16-like map carries a
    class-specific channel block at one random 3 x 3 patch, and each of its
    captions carries a class-specific band block over 50 random frames, so a
    model can learn to match them. ``splits`` maps split names to fractions of
    the images (for example ``{"train": 0.6, "val": 0.2, "test": 0.2}``). Shards
    are filled ``chunk`` items at a time, so memory stays flat for large sets.
    Returns the manifest (``caption_id``, ``image_id``, ``split``, ``label``).
    """
    rng = np.random.default_rng(seed)
    image_ids = np.arange(1, num_images + 1, dtype=np.int64) * 10
    labels = rng.integers(0, classes, size=num_images)
    names = np.array(list(splits))
    bounds = np.cumsum([splits[name] for name in names])
    split_numbers = np.searchsorted(bounds / bounds[-1], rng.random(num_images), side="right")
    split_of_image = names[np.minimum(split_numbers, len(names) - 1)]

    caption_numbers = np.tile(np.arange(captions_per_image), num_images)
    manifest = pd.DataFrame(
        {
            "caption_id": np.repeat(image_ids, captions_per_image) * 10 + caption_numbers,
            "image_id": np.repeat(image_ids, captions_per_image),
            "split": np.repeat(split_of_image, captions_per_image),
            "label": np.repeat(labels, captions_per_image),
        }
    )
    label_of = dict(zip(image_ids.tolist(), labels.tolist()))

    def image_item(image_id: int, generator: np.random.Generator) -> np.ndarray:
        item = np.abs(generator.standard_normal(VGG_SHAPE, dtype=np.float32)) * 0.5  # [512, 14, 14]
        block = VGG_SHAPE[0] // classes
        row, column = generator.integers(0, VGG_SHAPE[1] - 2, size=2)
        label = label_of[image_id]
        item[label * block : (label + 1) * block, row : row + 3, column : column + 3] += 2.0
        return item

    def audio_item(image_id: int, generator: np.random.Generator) -> np.ndarray:
        item = generator.standard_normal(MEL_SHAPE, dtype=np.float32)  # [40, 512]
        block = MEL_SHAPE[0] // classes
        start = int(generator.integers(0, MEL_SHAPE[1] - 50))
        label = label_of[image_id]
        item[label * block : (label + 1) * block, start : start + 50] += 3.0
        return item

    audio_shards = [(paths.audio_shard(name), paths.audio_index(name)) for name in paths.audio_shard_names]
    image_shards = [(paths.image_shard(name), paths.image_index(name)) for name in paths.image_shard_names]
    _write_synthetic_shards(manifest[["caption_id", "image_id"]], "caption_id", audio_shards, MEL_SHAPE, audio_item, [seed, 0], chunk)
    _write_synthetic_shards(pd.DataFrame({"image_id": image_ids}), "image_id", image_shards, VGG_SHAPE, image_item, [seed, 1], chunk)
    write_parquet_atomic(paths.manifest, manifest, metadata={"synthetic": True, "seed": seed})
    return manifest


def _write_synthetic_shards(index, key, shard_paths, item_shape, make_item, seed, chunk) -> None:
    """Cut ``index`` into blocks of sorted ``key`` values and fill one shard per block."""
    for number, (npy_path, index_path) in enumerate(shard_paths):
        ids = shard_block(index[key].to_numpy(), len(shard_paths), number)
        rows = index.set_index(key).loc[ids].reset_index()[list(index.columns)]
        generator = np.random.default_rng([*seed, number])
        image_ids = rows["image_id"].to_numpy()
        with ShardWriter(npy_path, index_path, len(rows), item_shape, "float16", {"synthetic": True}) as writer:
            for start in range(0, len(rows), chunk):
                items = np.stack([make_item(int(image_id), generator) for image_id in image_ids[start : start + chunk]])
                writer.write_rows(slice(start, start + len(items)), items.astype(np.float16))
            writer.finish(rows)
