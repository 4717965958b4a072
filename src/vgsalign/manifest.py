"""Stage ``build_manifest``: join COCO images and captions with their speech and split the data.

Rules, in the order they apply to each COCO split:

1. Images come from ``instances_<split>.json``. With ``data.max_images: N`` only
   the N smallest image ids of the split are used (:func:`first_image_ids`).
   The speech synthesiser selects images by the same rule, so both stages see
   the same images.
2. An image whose JPEG is missing under the split's image folder is skipped
   and counted (``image_file_missing``), with its captions.
3. Captions come from ``captions_<split>.json`` and are joined with the speech
   metadata by caption id. A caption without speech is skipped
   (``caption_without_speech``), as is speech whose image id differs from the
   caption's (``speech_image_mismatch``). Speech for a caption id that is not
   in the captions file, or whose caption was dropped while reading that file,
   is counted (``speech_without_caption``) and ignored. A second speech entry
   for the same caption is ignored too (``duplicate_speech``). Speech of a
   caption skipped by another rule is ignored without a count of its own.
   An image left without a caption is skipped (``image_without_speech``).
4. Images of the training split go to ``train`` or ``val``: a seeded random
   ``round(val_fraction * N)`` of them (at least 1 and at most N - 1 when
   N >= 2) go to ``val``, with all their captions.
5. Images of the test split go to ``test`` with ONE caption each, drawn with a
   seeded generator from the image's captions that have speech.

Every caption of the captions file is either used or counted under exactly one
of CAPTION_SKIP_REASONS, so per COCO split ``captions_read`` equals the
captions used plus those counts. Besides the reasons above:
``caption_malformed``, ``caption_duplicate_id`` and ``caption_unknown_image``
(see :func:`vgsalign.coco.read_captions`), ``caption_image_not_in_instances``
(an image of the captions file that the instances file lacks),
``caption_image_without_size`` (an image that the instances file lists without a
positive width and height), ``caption_image_beyond_max_images`` (an image left
out by ``data.max_images``), ``caption_image_file_missing`` (rule 2) and
``caption_not_drawn_for_test`` (the test captions that rule 5 does not draw).

Both output files carry, in their Parquet metadata, the split sizes, every
skip count (this stage's and the speech reader's) and the parameters used.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from vgsalign import coco
from vgsalign.io import write_parquet_atomic
from vgsalign.layout import RunPaths

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
# Independent random streams of this stage, mixed with params["seed"].
_VAL_STREAM = 101
_TEST_CAPTION_STREAM = 102

WORD_TYPE = pa.struct([("word", pa.string()), ("start_ms", pa.float64()), ("end_ms", pa.float64())])
CAPTIONS_SCHEMA = pa.schema(
    [
        ("caption_id", pa.int64()),
        ("image_id", pa.int64()),
        ("split", pa.string()),
        ("coco_split", pa.string()),
        ("text", pa.string()),
        ("wav_path", pa.string()),
        ("speaker", pa.string()),
        ("speed", pa.float64()),
        ("sample_rate", pa.int32()),
        ("num_samples", pa.int64()),
        ("words", pa.list_(WORD_TYPE)),
    ]
)
IMAGES_SCHEMA = pa.schema(
    [
        ("image_id", pa.int64()),
        ("coco_split", pa.string()),
        ("split", pa.string()),
        ("file_path", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
    ]
)
SPEECH_COLUMNS = ("caption_id", "image_id", "text", "wav_path", "speaker", "speed", "sample_rate", "num_samples", "words")
# Skip reasons of captions, in the order the rules apply. Each caption that is not
# used is counted under exactly one of them.
CAPTION_FILE_SKIP_REASONS = ("caption_malformed", "caption_duplicate_id", "caption_unknown_image")
CAPTION_SKIP_REASONS = (
    *CAPTION_FILE_SKIP_REASONS,
    "caption_image_not_in_instances",
    "caption_image_without_size",
    "caption_image_beyond_max_images",
    "caption_image_file_missing",
    "caption_without_speech",
    "speech_image_mismatch",
    "caption_not_drawn_for_test",
)
# Captions left out by design (the test split's one drawn caption per image,
# data.max_images), not because of bad input: logged at INFO, not WARNING.
CAPTIONS_LEFT_OUT_BY_DESIGN = ("caption_image_beyond_max_images", "caption_not_drawn_for_test")


class ManifestError(ValueError):
    """Inputs of the manifest that cannot be combined. The message names the value and the fix."""


# -- pure steps -----------------------------------------------------------------


def first_image_ids(image_ids: Sequence[int] | np.ndarray, max_images: int | None) -> np.ndarray:
    """Return the image ids sorted, keeping only the first ``max_images`` (all when None)."""
    ids = np.unique(np.asarray(image_ids, dtype=np.int64))
    return ids if max_images is None else ids[:max_images]


def _generator(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), stream]))


def validation_count(num_images: int, val_fraction: float) -> int:
    """Return how many of ``num_images`` training images go to validation (see the module docstring)."""
    if num_images < 2:
        return 0
    count = int(np.floor(val_fraction * num_images + 0.5))
    return min(max(count, 1), num_images - 1)


def split_train_images(image_ids: Sequence[int] | np.ndarray, val_fraction: float, seed: int) -> pd.Series:
    """Return ``train`` or ``val`` for each image id (a Series indexed by the sorted ids)."""
    ids = np.unique(np.asarray(image_ids, dtype=np.int64))
    order = _generator(seed, _VAL_STREAM).permutation(len(ids))
    split = np.full(len(ids), "train", dtype=object)
    split[order[: validation_count(len(ids), val_fraction)]] = "val"
    return pd.Series(split, index=pd.Index(ids, name="image_id"), name="split")


def choose_test_captions(captions: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Keep one seeded random caption per image from ``captions`` (needs ``image_id``, ``caption_id``).

    Captions are ordered by (image id, caption id) before drawing, so the choice
    depends only on the seed and the set of captions.
    """
    ordered = captions.sort_values(["image_id", "caption_id"], kind="stable").reset_index(drop=True)
    if ordered.empty:
        return ordered
    sizes = ordered.groupby("image_id", sort=True).size().to_numpy()
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    picks = starts + _generator(seed, _TEST_CAPTION_STREAM).integers(0, sizes)
    return ordered.iloc[picks].reset_index(drop=True)


def _word_dicts(words: Any) -> list[dict[str, Any]]:
    """Return the word time stamps as a list of ``{word, start_ms, end_ms}`` dicts."""
    if words is None or (isinstance(words, float) and np.isnan(words)):
        return []
    result = []
    for item in list(words):
        if isinstance(item, Mapping):
            word, start, end = item["word"], item["start_ms"], item["end_ms"]
        else:
            word, start, end = item
        result.append({"word": str(word), "start_ms": float(start), "end_ms": float(end)})
    return result


def join_speech(
    captions: pd.DataFrame, speech: pd.DataFrame, known_caption_ids: pd.Series | None = None
) -> tuple[pd.DataFrame, Counter]:
    """Join COCO captions (``caption_id``, ``image_id``, ``caption``) with speech rows by caption id.

    Returns one row per caption with speech, with the manifest's speech columns
    (``text`` is the spoken text, or the COCO caption when the speech has none),
    and the skip counts of rule 3 in the module docstring. Speech counts as
    ``speech_without_caption`` when its caption id is not in
    ``known_caption_ids`` (by default the ids of ``captions``). Speech of a
    known caption that is not in ``captions`` is ignored without a count.
    """
    counts: Counter = Counter()
    missing = [column for column in SPEECH_COLUMNS if column not in speech.columns]
    if missing:
        raise ManifestError(f"the speech reader returned no column {missing}; it must return {list(SPEECH_COLUMNS)}")
    speech = speech.loc[:, list(SPEECH_COLUMNS)]
    duplicated = speech["caption_id"].duplicated(keep="first")
    counts["duplicate_speech"] = int(duplicated.sum())
    speech = speech.loc[~duplicated]
    known = captions["caption_id"] if known_caption_ids is None else known_caption_ids
    counts["speech_without_caption"] = int((~speech["caption_id"].isin(known)).sum())

    joined = captions.merge(speech, on="caption_id", how="left", suffixes=("", "_speech"), indicator=True)
    has_speech = joined["_merge"] == "both"
    counts["caption_without_speech"] = int((~has_speech).sum())
    mismatch = has_speech & (joined["image_id_speech"].astype("Int64") != joined["image_id"])
    counts["speech_image_mismatch"] = int(mismatch.sum())
    joined = joined.loc[has_speech & ~mismatch].copy()

    spoken = joined["text"].fillna("").astype(str).str.strip()
    joined["text"] = np.where(spoken != "", joined["text"].fillna(""), joined["caption"])
    joined["words"] = [_word_dicts(words) for words in joined["words"]]
    joined = joined.drop(columns=["image_id_speech", "caption", "_merge"])
    return joined.reset_index(drop=True), counts


def assemble_split(
    images: pd.DataFrame,
    captions: pd.DataFrame,
    speech: pd.DataFrame,
    *,
    role: str,
    coco_split: str,
    image_dir: Path,
    max_images: int | None,
    val_fraction: float,
    seed: int,
    unsized_image_ids: Collection[int] = (),
) -> tuple[pd.DataFrame, pd.DataFrame, Counter]:
    """Return the manifest rows and image rows of one COCO split, and its skip counts.

    ``role`` is ``train`` (split into train and val) or ``test`` (one caption
    per image). ``images`` is :func:`vgsalign.coco.image_table` of the
    instances file, ``captions`` :func:`vgsalign.coco.read_captions`, and
    ``speech`` the speech reader's table. ``unsized_image_ids`` are the images
    of the instances file that ``image_table`` left out for lack of a size.
    Each caption of ``captions`` is used or counted under one caption reason
    (module docstring), and a RuntimeError is raised if the counts do not add up.
    """
    counts: Counter = Counter()
    if role not in ("train", "test"):
        raise ValueError(f"invalid role {role!r}: use 'train' or 'test'")
    selected = first_image_ids(images["image_id"], max_images)
    known_caption_ids = captions["caption_id"]
    unsized = captions["image_id"].isin(list(unsized_image_ids))
    in_instances = captions["image_id"].isin(images["image_id"])
    counts["caption_image_not_in_instances"] = int((~in_instances & ~unsized).sum())
    counts["caption_image_without_size"] = int(unsized.sum())
    counts["caption_image_beyond_max_images"] = int((in_instances & ~captions["image_id"].isin(selected)).sum())

    images = images.loc[images["image_id"].isin(selected)].sort_values("image_id").reset_index(drop=True)
    images["file_path"] = [str(image_dir / name) for name in images["file_name"]]
    exists = np.array([Path(path).is_file() for path in images["file_path"]], dtype=bool)
    counts["image_file_missing"] = int((~exists).sum())
    for path in images.loc[~exists, "file_path"].head(5):
        logger.warning("image file missing, skipped: %s", path)
    missing_file_ids = images.loc[~exists, "image_id"]
    counts["caption_image_file_missing"] = int(captions["image_id"].isin(missing_file_ids).sum())
    images = images.loc[exists]

    captions_with_image = captions.loc[captions["image_id"].isin(images["image_id"])]
    joined, join_counts = join_speech(captions_with_image, speech, known_caption_ids=known_caption_ids)
    counts.update(join_counts)

    with_speech = images["image_id"].isin(joined["image_id"])
    counts["image_without_speech"] = int((~with_speech).sum())
    images = images.loc[with_speech].copy()

    if role == "train":
        split = split_train_images(images["image_id"], val_fraction, seed)
        images["split"] = split.reindex(images["image_id"]).to_numpy()
        counts["caption_not_drawn_for_test"] = 0
    else:
        drawn = choose_test_captions(joined, seed)
        counts["caption_not_drawn_for_test"] = len(joined) - len(drawn)
        joined = drawn
        images["split"] = "test"
    joined = joined.merge(images[["image_id", "split"]], on="image_id", how="inner")
    joined["coco_split"] = coco_split
    images["coco_split"] = coco_split
    joined = joined.sort_values(["image_id", "caption_id"], kind="stable").reset_index(drop=True)
    _check_caption_accounting(coco_split, len(captions), len(joined), counts)
    return joined, images.reset_index(drop=True), counts


def _check_caption_accounting(coco_split: str, read: int, used: int, counts: Mapping[str, int]) -> None:
    """Raise RuntimeError unless every caption is used or counted once under a caption reason."""
    skipped = {reason: int(counts.get(reason, 0)) for reason in CAPTION_SKIP_REASONS if counts.get(reason, 0)}
    if read != used + sum(skipped.values()):
        raise RuntimeError(
            f"caption counts of {coco_split} do not add up: {read} captions, {used} used, "
            f"{sum(skipped.values())} skipped ({skipped}). This is a bug in vgsalign.manifest.assemble_split."
        )


def manifest_table(rows: pd.DataFrame) -> pa.Table:
    """Return the manifest rows as an Arrow table with the manifest schema."""
    columns = {}
    for name in CAPTIONS_SCHEMA.names:
        values = rows[name].tolist() if name in rows else []
        columns[name] = pa.array(values, type=CAPTIONS_SCHEMA.field(name).type)
    return pa.Table.from_pydict(columns, schema=CAPTIONS_SCHEMA)


def images_table(rows: pd.DataFrame) -> pa.Table:
    """Return the image rows as an Arrow table with the images schema."""
    columns = {name: pa.array(rows[name].tolist(), type=IMAGES_SCHEMA.field(name).type) for name in IMAGES_SCHEMA.names}
    return pa.Table.from_pydict(columns, schema=IMAGES_SCHEMA)


def split_sizes(manifest: pd.DataFrame) -> dict[str, dict[str, int]]:
    """Return the number of images and captions of each split."""
    sizes = {}
    for split in SPLITS:
        part = manifest.loc[manifest["split"] == split]
        sizes[split] = {"images": int(part["image_id"].nunique()), "captions": int(len(part))}
    return sizes


# -- the stage ------------------------------------------------------------------


def spokencoco_json(paths: RunPaths, coco_split: str) -> Path:
    """Return the SpokenCOCO file of a COCO split: ``SpokenCOCO_train.json`` for train2014, else ``_val``."""
    name = "train" if coco_split.startswith("train") else "val"
    return paths.speech_root / f"SpokenCOCO_{name}.json"


def load_speech(
    params: Mapping[str, Any], paths: RunPaths, coco_split: str, image_ids: Sequence[int] | None = None
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Read the speech of one COCO split with the reader that ``data.speech.format`` names.

    ``image_ids``, when given, limits the reading to those images.
    """
    speech = params["data"]["speech"]
    selected = None if image_ids is None else [int(image_id) for image_id in image_ids]
    if speech["format"] == "speechcoco":
        from vgsalign.speech import speechcoco

        table, counts = speechcoco.load_split(paths.speech_dir(coco_split), image_ids=selected)
    elif speech["format"] == "spokencoco":
        from vgsalign.speech import spokencoco

        table, counts = spokencoco.load_split(
            spokencoco_json(paths, coco_split), alignments=speech["alignments"], image_ids=selected
        )
    else:
        raise ManifestError(f"invalid data.speech.format {speech['format']!r}: use 'speechcoco' or 'spokencoco'")
    return table, dict(counts)


def run(params: Mapping[str, Any], paths: RunPaths) -> None:
    """Build ``paths.manifest`` and ``paths.images`` from the COCO files and the speech metadata."""
    data = params["data"]
    train_split, test_split = paths.coco_splits
    if train_split == test_split:
        raise ManifestError(
            f"data.train_split and data.test_split are both {train_split!r}; the test images would also be "
            "training images. Set data.test_split to the held-out split (val2014 in the paper)."
        )

    manifests, image_rows = [], []
    skips: dict[str, dict[str, int]] = {}
    speech_skips: dict[str, dict[str, int]] = {}
    captions_read: dict[str, int] = {}
    for role, coco_split in (("train", train_split), ("test", test_split)):
        instances, instance_counts = coco.read_coco(paths.instances_file(coco_split), kind="instances")
        images = coco.image_table(instances, instance_counts)
        unsized_image_ids = list(set(instances.imgs) - set(images["image_id"].tolist()))
        captions, caption_counts = coco.read_captions(paths.captions_file(coco_split))
        captions_read[coco_split] = len(captions) + sum(caption_counts[r] for r in CAPTION_FILE_SKIP_REASONS)
        selected = first_image_ids(images["image_id"], data["max_images"])
        speech, speech_counts = load_speech(params, paths, coco_split, image_ids=selected)
        rows, split_images, counts = assemble_split(
            images,
            captions,
            speech,
            role=role,
            coco_split=coco_split,
            image_dir=paths.image_dir(coco_split),
            max_images=data["max_images"],
            val_fraction=data["val_fraction"],
            seed=params["seed"],
            unsized_image_ids=unsized_image_ids,
        )
        counts.update(instance_counts)
        counts.update(caption_counts)
        skips[coco_split] = {key: int(value) for key, value in sorted(counts.items())}
        speech_skips[coco_split] = {key: int(value) for key, value in sorted(speech_counts.items())}
        by_design = {key: int(counts[key]) for key in CAPTIONS_LEFT_OUT_BY_DESIGN if counts.get(key)}
        if by_design:
            logger.info("manifest %s: captions left out by design: %s", coco_split, by_design)
        coco.log_counts(
            f"manifest {coco_split}", {key: value for key, value in counts.items() if key not in by_design}
        )
        manifests.append(rows)
        image_rows.append(split_images)

    manifest = pd.concat(manifests, ignore_index=True)
    images = pd.concat(image_rows, ignore_index=True)
    sizes = split_sizes(manifest)
    for split in SPLITS:
        if sizes[split]["captions"] == 0:
            logger.warning("split %s is empty; check data.max_images, data.val_fraction and the speech files", split)
    metadata = {
        "split_sizes": sizes,
        "skips": skips,
        "speech_skips": speech_skips,
        "captions_read": captions_read,
        "coco_splits": {"train": train_split, "test": test_split},
        "seed": params["seed"],
        "val_fraction": data["val_fraction"],
        "max_images": data["max_images"],
        "speech_format": data["speech"]["format"],
        "test_rule": "one seeded random caption per test image",
        "max_images_rule": "the first max_images image ids of each COCO split, sorted",
    }
    write_parquet_atomic(paths.manifest, manifest_table(manifest), metadata=metadata)
    write_parquet_atomic(paths.images, images_table(images), metadata=metadata)
    logger.info(
        "manifest: %s",
        "; ".join(f"{split} {size['images']} images, {size['captions']} captions" for split, size in sizes.items()),
    )
