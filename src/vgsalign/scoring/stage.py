"""Stages ``score_alignments`` and ``score_baseline``, and scoring of external tensor files.

Tensors are streamed one Parquet row group at a time, so memory stays flat in
the number of tensors. Only the per-pair scores (a few numbers per pair) and the
masks' pixel counts per cell (about 400 bytes per mask and convention) are kept. Each tensor row (image_id, caption_id, kind) is joined with the
word-object pairs of that image and caption, and each pair with the mask of its
category in that image.

Rules for bad input (counts go to the summary and the Parquet metadata):

- a tensor row with no pair: counted (``tensor_rows_without_pairs``) and ignored;
- a pair with no tensor: skipped and counted (``pair_without_tensor``);
- a pair whose (image, category) has no mask: skipped (``mask_not_found``);
- a pair whose mask is empty at 224 x 224 in a convention: skipped in that
  convention (``empty_mask``), because AS_word divides by the mask area;
- a pair with an empty word interval or one outside the window: skipped
  (``empty_word_interval``, ``word_outside_window``);
- a second tensor row for the same (image_id, caption_id, kind): ignored and
  counted (``duplicate_tensor_rows``);
- NaN or infinite values in a tensor: TensorValueError naming the pair;
- a row whose shape differs from the file's: TensorFormatError naming the row;
- an all-zero tensor is valid: the uniform rule of the scores applies. Negative
  values are clipped to 0, so a row with no positive value also scores as
  uniform attention; one warning counts such rows;
- a tensor file whose frames convention or window differs from the pairs':
  ScoringInputError naming both values;
- a file with only one of the two softmax kinds: a warning when its raw rows
  are scored without them, ScoringInputError when nothing else can be scored.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from vgsalign.io import read_parquet_metadata, write_json_atomic, write_parquet_atomic
from vgsalign.layout import RunPaths
from vgsalign.scoring.baseline import baseline_geometry, random_tensor_batches
from vgsalign.scoring.bootstrap import summarise_scores
from vgsalign.scoring.confusion import empty_confusion
from vgsalign.scoring.engine import CONVENTIONS, MASK_COLUMNS, METRICS, Geometry
from vgsalign.scoring.stream import (
    KIND_SOURCES,
    MaskStore,
    PairScorer,
    ScoringInputError,
    build_mask_store,
    score_stream,
)
from vgsalign.tensors import TensorFileInfo, TensorFormatError, iter_tensor_batches, read_tensor_info

logger = logging.getLogger(__name__)

PAIR_COLUMNS = ("pair_id", "caption_id", "image_id", "word", "frame_start", "frame_end", "category_id", "category_name")
MASK_KEY_COLUMNS = ("image_id", "category_id", "category_name", "area_fraction")
SCORE_COLUMNS = (
    "pair_id",
    "caption_id",
    "image_id",
    "category_id",
    "category_name",
    "word",
    "convention",
    "kind",
    *METRICS,
    "area_fraction",
    "word_duration_s",
)
# Second word of the bootstrap's seed sequence (the baseline uses another).
BOOTSTRAP_STREAM = 2
# File names written by score_external into its output folder.
EXTERNAL_FILES = {"scores": "pairs.parquet", "summary": "summary.json", "confusion": "confusion.parquet"}


# -- inputs -----------------------------------------------------------------------


def load_pairs(path: str | os.PathLike) -> pd.DataFrame:
    """Read the word-object pairs and check their columns."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pairs file not found: {path}. Run the pairing stage or check the path.")
    pairs = pd.read_parquet(path)
    missing = [column for column in PAIR_COLUMNS if column not in pairs.columns]
    if missing:
        raise ScoringInputError(f"pairs file {path} lacks the columns {', '.join(missing)}")
    if pairs["pair_id"].duplicated().any():
        duplicate = pairs.loc[pairs["pair_id"].duplicated(), "pair_id"].iloc[0]
        raise ScoringInputError(f"pairs file {path} repeats pair_id {duplicate}; pair ids must be unique")
    return pairs.sort_values("pair_id", kind="stable").reset_index(drop=True)


def load_masks(path: str | os.PathLike, conventions: Sequence[str]) -> pd.DataFrame:
    """Read the masks table with the mask columns of ``conventions``, sorted by image and category."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"masks file not found: {path}. Run the pairing stage or check the path.")
    needed = [*MASK_KEY_COLUMNS, *(MASK_COLUMNS[convention] for convention in conventions)]
    available = pq.read_schema(path).names
    missing = [column for column in needed if column not in available]
    if missing:
        raise ScoringInputError(f"masks file {path} lacks the columns {', '.join(missing)}")
    masks = pd.read_parquet(path, columns=needed)
    duplicated = masks.duplicated(["image_id", "category_id"])
    if duplicated.any():
        row = masks[duplicated].iloc[0]
        raise ScoringInputError(
            f"masks file {path} has two masks for image_id {row['image_id']}, category_id {row['category_id']}; "
            f"keep one row per category and image"
        )
    return masks.sort_values(["image_id", "category_id"], kind="stable").reset_index(drop=True)


def geometry_of(info: TensorFileInfo) -> Geometry:
    """Return the geometry of the T in a tensor file described by ``info``.

    Raises TensorFormatError for a file without rows or a grid finer than the 224 x 224 masks.
    """
    tensor_file = info.path
    if info.num_rows == 0:
        raise TensorFormatError(f"tensor file {tensor_file} contains no tensors. Rerun the export stage.")
    geometry = Geometry(info.grid[0], info.grid[1], info.frames, window=info.window)
    if info.grid[0] > geometry.image_h or info.grid[1] > geometry.image_w:
        raise TensorFormatError(
            f"tensor file {tensor_file} has a {info.grid[0]} x {info.grid[1]} grid, finer than the "
            f"{geometry.image_h} x {geometry.image_w} masks; export T at most at the mask resolution"
        )
    return geometry


# -- results ----------------------------------------------------------------------


def collect_results(
    scorer: PairScorer,
    resamples: int,
    confidence: float,
    seed: int,
    kinds: Sequence[str] | None = None,
    label: str | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Return all per-pair scores and the summary {convention: {kind: ...}} of a finished scorer."""
    kinds = scorer.output_kinds() if kinds is None else kinds
    frames = []
    summary: dict[str, Any] = {}
    for convention in scorer.conventions:
        summary[convention] = {}
        for kind in kinds:
            frame, skipped = scorer.results(convention, kind, label)
            name = label or kind
            rng = np.random.default_rng([seed, BOOTSTRAP_STREAM])
            entry = summarise_scores(frame, scorer.masks.categories, resamples, confidence, rng)
            entry["skipped"] = skipped
            entry["tensor_rows_without_pairs"] = scorer.unpaired_rows(kind)
            summary[convention][name] = entry
            frames.append(frame)
            _log_summary(convention, name, entry)
    scores = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(SCORE_COLUMNS))
    return scores[list(SCORE_COLUMNS)], summary


def _log_summary(convention: str, kind: str, entry: Mapping[str, Any]) -> None:
    total = ", ".join(f"{metric} {value:.3f}" for metric, value in entry["total"].items() if value is not None)
    logger.info("%s / %s: %d pairs; total %s", convention, kind, entry["pairs"], total or "none")
    skipped = {reason: number for reason, number in entry["skipped"].items() if number}
    if skipped:
        logger.warning("%s / %s: skipped pairs %s", convention, kind, skipped)


def _counts_metadata(scorer: PairScorer) -> dict[str, Any]:
    return {
        "tensor_rows": dict(scorer.counts.tensor_rows),
        "tensor_rows_without_pairs": dict(scorer.counts.tensor_rows_without_pairs),
        "duplicate_tensor_rows": dict(scorer.counts.duplicate_tensor_rows),
        "nonpositive_tensor_rows": dict(scorer.counts.nonpositive_tensor_rows),
        "pairs": len(scorer.pairs),
    }


# -- entry points -----------------------------------------------------------------


def _pairs_frames(pairs_file: Path) -> tuple[str | None, int | None]:
    """Return the frames convention and window recorded in the pairs file's metadata (None when absent)."""
    metadata = read_parquet_metadata(pairs_file)
    frames = metadata.get("frames")
    frames = frames if isinstance(frames, Mapping) else {}
    convention = metadata.get("frames_convention") or frames.get("convention")
    window = frames.get("window")
    return convention, int(window) if window is not None else None


def _check_frames(info: TensorFileInfo, pairs_convention: str | None, pairs_window: int | None) -> None:
    """Raise ScoringInputError when the tensor file's frames convention or window differs from the pairs'."""
    tensor_file = info.path
    tensor_convention = info.frames_convention
    if tensor_convention and pairs_convention and tensor_convention != pairs_convention:
        raise ScoringInputError(
            f"tensor file {tensor_file} was exported with frames convention {tensor_convention!r}, but the "
            f"pairs use {pairs_convention!r}, so word frames would not line up with T. Export the tensors "
            f"and build the pairs with the same frames.convention."
        )
    if pairs_window is not None and info.window != pairs_window:
        # T spans the whole window, so in another window each time cell covers other frames.
        if info.metadata.get("window"):
            exported = f"was exported with window {info.window}"
        else:
            exported = f"records no window, so the default {info.window} applies"
        raise ScoringInputError(
            f"tensor file {tensor_file} {exported}, but the pairs use window {pairs_window} "
            f"(frames.window), so word frames would not line up with T. Export the tensors again with "
            f"window {pairs_window}, or build the pairs with frames.window {info.window}."
        )


def _source_kinds(output_kind: str) -> list[str]:
    """Return the tensor kinds that one output kind ('raw' or 'softmax') reads, in KIND_SOURCES order."""
    return list(dict.fromkeys(KIND_SOURCES[output_kind].values()))


def _complete_output_kinds(info: TensorFileInfo) -> list[str]:
    """Return the output kinds whose tensor kinds the file all has."""
    return [output for output in KIND_SOURCES if set(_source_kinds(output)) <= set(info.kinds)]


def _incomplete_kinds(info: TensorFileInfo) -> dict[str, tuple[list[str], list[str]]]:
    """Return {output kind: (tensor kinds present, tensor kinds missing)} for output kinds the file has in part."""
    incomplete = {}
    for output_kind in KIND_SOURCES:
        present = [kind for kind in _source_kinds(output_kind) if kind in info.kinds]
        missing = [kind for kind in _source_kinds(output_kind) if kind not in info.kinds]
        if present and missing:
            incomplete[output_kind] = (present, missing)
    return incomplete


def _scored_tensor_kinds(info: TensorFileInfo) -> list[str]:
    """Return the tensor kinds of the output kinds that the file has completely.

    Raises ScoringInputError naming the missing kinds when no output kind is complete.
    """
    kinds = [kind for output in _complete_output_kinds(info) for kind in _source_kinds(output)]
    if not kinds:
        missing = "; ".join(
            f"the {output_kind} scores need {' and '.join(_source_kinds(output_kind))}, and it has no "
            f"{' or '.join(missing)} rows"
            for output_kind, (_, missing) in _incomplete_kinds(info).items()
        )
        raise ScoringInputError(
            f"tensor file {info.path} has only {' and '.join(info.kinds)} tensors, so nothing can be scored: "
            f"{missing}. Add those rows, or raw rows."
        )
    return list(dict.fromkeys(kinds))


def _check_tensor_file(
    info: TensorFileInfo, pairs_convention: str | None, pairs_window: int | None
) -> tuple[Geometry, list[str]]:
    """Check a tensor file against the pairs before scoring; return its geometry and the tensor kinds to read."""
    geometry = geometry_of(info)
    _check_frames(info, pairs_convention, pairs_window)
    return geometry, _scored_tensor_kinds(info)


def score_tensor_file(
    tensor_file: str | os.PathLike,
    pairs: pd.DataFrame,
    masks: pd.DataFrame,
    conventions: Sequence[str],
    resamples: int,
    confidence: float,
    seed: int,
    pairs_convention: str | None = None,
    store: MaskStore | None = None,
    pairs_window: int | None = None,
    info: TensorFileInfo | None = None,
) -> tuple[pd.DataFrame, dict[str, Any], pd.DataFrame, dict[str, Any]]:
    """Score one tensor file; return (per-pair scores, summary, confusion, metadata).

    ``store`` reuses mask counts made by :func:`build_mask_store` (with confusion)
    for the file's geometry. ``info`` reuses the file's description read by
    :func:`vgsalign.tensors.read_tensor_info`. The pairs' frames convention and
    window, when given, must match the file's.
    """
    tensor_file = Path(tensor_file)
    info = info if info is not None else read_tensor_info(tensor_file)
    geometry, kinds = _check_tensor_file(info, pairs_convention, pairs_window)
    for output_kind, (present, missing) in _incomplete_kinds(info).items():
        logger.warning(
            "tensor file %s has %s tensors but no %s tensors, and the %s scores need both, so its %s rows "
            "are ignored and only %s is scored. Add the %s rows to get the %s scores.",
            tensor_file,
            " and ".join(present),
            " or ".join(missing),
            output_kind,
            " and ".join(present),
            " and ".join(_complete_output_kinds(info)),
            " and ".join(missing),
            output_kind,
        )
    logger.info(
        "scoring %s: %d rows, kinds %s, T %s x %s x %s, window %d",
        tensor_file,
        info.num_rows,
        ", ".join(info.kinds) or "none",
        *info.shape,
        info.window,
    )
    if store is None:
        store = build_mask_store(pairs, masks, geometry, conventions, confusion=True)
    elif store.geometry != geometry:
        raise ValueError(f"the mask store was built for {store.geometry}, but {tensor_file} has {geometry}")
    batches = iter_tensor_batches(tensor_file, kinds=kinds, info=info)
    scorer = score_stream(batches, pairs, store, conventions, confusion=True, total=info.num_row_groups)
    scores, summary = collect_results(scorer, resamples, confidence, seed)
    confusion = scorer.confusion.to_frame() if scorer.confusion is not None else empty_confusion()
    metadata = {
        "tensor_file": str(tensor_file),
        "variants": list(info.variants),
        "shape": list(info.shape),
        "window": info.window,
        "frames_convention": info.frames_convention,
        "conventions": list(conventions),
        "counts": _counts_metadata(scorer),
        "skipped": {c: {k: v["skipped"] for k, v in kinds.items()} for c, kinds in summary.items()},
    }
    if not scorer.output_kinds():
        logger.warning("no tensors of a scorable kind matched any pair in %s", tensor_file)
    return scores, summary, confusion, metadata


def score_baseline_pairs(
    pairs: pd.DataFrame,
    masks: pd.DataFrame,
    conventions: Sequence[str],
    resamples: int,
    confidence: float,
    seed: int,
    geometry: Geometry | None = None,
    batch_size: int = 256,
    store: MaskStore | None = None,
) -> tuple[pd.DataFrame, dict[str, Any], dict[str, Any]]:
    """Score a seeded uniform random T for every image-caption pair; return (scores, summary, metadata)."""
    geometry = geometry or baseline_geometry()
    if store is None:
        store = build_mask_store(pairs, masks, geometry, conventions, confusion=False)
    keys = pairs[["image_id", "caption_id"]].drop_duplicates().sort_values(["image_id", "caption_id"])
    batches = random_tensor_batches(
        keys["image_id"].to_numpy(), keys["caption_id"].to_numpy(), geometry, seed, batch_size
    )
    total = -(-len(keys) // batch_size)
    scorer = score_stream(batches, pairs, store, conventions, confusion=False, total=total)
    scores, summary = collect_results(scorer, resamples, confidence, seed, kinds=["raw"], label="baseline")
    metadata = {
        "shape": [geometry.grid_h, geometry.grid_w, geometry.frames],
        "window": geometry.window,
        "seed": seed,
        "conventions": list(conventions),
        "counts": _counts_metadata(scorer),
    }
    return scores, summary, metadata


def run(params: Mapping[str, Any], paths: RunPaths, variant: str) -> None:
    """Stage ``score_alignments``: score one variant's test-set tensors against the pairs."""
    scoring = params["scoring"]
    conventions = list(scoring["conventions"])
    pairs = load_pairs(paths.pairs)
    masks = load_masks(paths.masks, conventions)
    scores, summary, confusion, metadata = score_tensor_file(
        paths.tensors(variant),
        pairs,
        masks,
        conventions,
        scoring["bootstrap_resamples"],
        scoring["confidence"],
        params["seed"],
        pairs_convention=params["frames"]["convention"],
        pairs_window=params["frames"]["window"],
    )
    metadata.update(variant=variant, seed=params["seed"], scoring=dict(scoring))
    write_parquet_atomic(paths.scores(variant), scores, metadata=metadata)
    write_json_atomic(paths.score_summary(variant), summary)
    write_parquet_atomic(paths.confusion(variant), confusion, metadata={"variant": variant})
    logger.info("wrote %s, %s and %s", paths.scores(variant), paths.score_summary(variant), paths.confusion(variant))


def run_baseline(params: Mapping[str, Any], paths: RunPaths) -> None:
    """Stage ``score_baseline``: score the seeded random baseline against the pairs."""
    scoring = params["scoring"]
    conventions = list(scoring["conventions"])
    pairs = load_pairs(paths.pairs)
    masks = load_masks(paths.masks, conventions)
    scores, summary, metadata = score_baseline_pairs(
        pairs, masks, conventions, scoring["bootstrap_resamples"], scoring["confidence"], params["seed"]
    )
    metadata.update(scoring=dict(scoring))
    write_parquet_atomic(paths.baseline_scores, scores, metadata=metadata)
    write_json_atomic(paths.baseline_summary, summary)
    logger.info("wrote %s and %s", paths.baseline_scores, paths.baseline_summary)


def score_external(
    tensor_file: str | os.PathLike,
    pairs_file: str | os.PathLike,
    masks_file: str | os.PathLike,
    out_dir: str | os.PathLike,
    conventions: Sequence[str] = CONVENTIONS,
    bootstrap_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    baseline: bool = True,
) -> dict[str, Any]:
    """Score any tensor file in the exchange format and write pairs.parquet, summary.json, confusion.parquet.

    With ``baseline`` the random baseline, drawn at the tensor file's
    resolution, is scored on the same pairs and added as kind ``baseline``.
    Returns the summary.
    """
    duplicated = sorted({convention for convention in conventions if list(conventions).count(convention) > 1})
    if duplicated:
        raise ValueError(f"scoring conventions given twice: {', '.join(duplicated)}. List each convention once.")
    out_dir = Path(out_dir)
    tensor_file = Path(tensor_file)
    pairs_file = Path(pairs_file)
    pairs = load_pairs(pairs_file)
    masks = load_masks(masks_file, conventions)
    pairs_convention, pairs_window = _pairs_frames(pairs_file)
    info = read_tensor_info(tensor_file)
    # Checked before the mask pixel counts are built, so that a mismatch stops the command early.
    geometry, _ = _check_tensor_file(info, pairs_convention, pairs_window)
    store = build_mask_store(pairs, masks, geometry, conventions, confusion=True)
    scores, summary, confusion, metadata = score_tensor_file(
        tensor_file,
        pairs,
        masks,
        conventions,
        bootstrap_resamples,
        confidence,
        seed,
        pairs_convention=pairs_convention,
        store=store,
        pairs_window=pairs_window,
        info=info,
    )
    scored = pairs[pairs["pair_id"].isin(scores["pair_id"])]
    if scored.empty:
        raise ScoringInputError(
            f"no row of {tensor_file} matches a word-object pair of {pairs_file} by (image_id, caption_id). "
            "Write tensors for the test image-caption pairs listed in that pairs file."
        )
    if len(scored) < len(pairs):
        logger.warning(
            "%d of %d word-object pairs have no tensor in %s; the totals and the baseline cover the other %d",
            len(pairs) - len(scored), len(pairs), tensor_file, len(scored),
        )  # fmt: skip
    if baseline:
        # The baseline is scored on the same pairs as the tensors, so the two are comparable.
        baseline_scores, baseline_summary, _ = score_baseline_pairs(
            scored, masks, conventions, bootstrap_resamples, confidence, seed, geometry, store=store
        )
        scores = pd.concat([scores, baseline_scores], ignore_index=True)
        for convention, kinds in baseline_summary.items():
            summary[convention].update(kinds)
    metadata.update(seed=seed, bootstrap_resamples=bootstrap_resamples, confidence=confidence)
    write_parquet_atomic(out_dir / EXTERNAL_FILES["scores"], scores, metadata=metadata)
    write_json_atomic(out_dir / EXTERNAL_FILES["summary"], summary)
    write_parquet_atomic(out_dir / EXTERNAL_FILES["confusion"], confusion)
    logger.info("wrote the scores of %s to %s", tensor_file, out_dir)
    return summary
