"""Benchmark the scoring engine: speed and agreement with the reference, and a full test-set pass.

Part 1 scores the same random pairs of paper size (T 14 x 14 x 64, random box
masks, random word intervals) with the engine and with the upsample-then-sum
reference, and prints the speed ratio (target >= 1000) and the largest absolute
difference (target <= 1e-6). The reference needs about half a second per pair,
so by default it runs on the first ``--reference-pairs`` pairs; the ratio
compares time per pair.

Part 2 writes a synthetic test set of ``--test-pairs`` image-caption pairs
(40,504 as in COCO val2014) as a float16 tensor file with raw, softmax_space
and softmax_time rows. A fresh process then scores it in both conventions, raw
and softmax, with confusion matrices, bootstrap intervals and the random
baseline. The script prints the wall time (target <= 60 s on 2 cores) and the
peak resident memory of the scoring process.

    .venv/bin/python benchmarks/bench_scoring.py                 # both parts
    .venv/bin/python benchmarks/bench_scoring.py --part engine --reference-pairs 1000
    .venv/bin/python benchmarks/bench_scoring.py --part stream --test-pairs 10000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from pycocotools import mask as mask_utils

from vgsalign.scoring.engine import METRICS, Geometry, mask_cell_counts, prepare_tensors, score_pairs, word_frame_counts
from vgsalign.tensors import TensorWriter

GRID = (14, 14)
FRAMES = 64
IMAGE = 224
WINDOW = 512
CATEGORIES = [f"category_{index:02d}" for index in range(80)]


def random_boxes(rng: np.random.Generator, count: int) -> np.ndarray:
    """Return ``count`` random rectangular masks [count, 224, 224] (bool)."""
    masks = np.zeros((count, IMAGE, IMAGE), dtype=bool)
    for mask in masks:
        top, bottom = np.sort(rng.integers(0, IMAGE, 2))
        left, right = np.sort(rng.integers(0, IMAGE, 2))
        mask[top : bottom + 1, left : right + 1] = True
    return masks


def random_words(rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Return word intervals [start, end) inside the window, 1 to 60 frames long."""
    start = rng.integers(0, WINDOW - 60, count)
    return start, start + rng.integers(1, 61, count)


def bench_engine(pairs: int, reference_pairs: int, seed: int) -> None:
    # Imported here so that the scoring process of part 2 does not load torch (the reference needs it).
    from vgsalign.scoring.reference import reference_scores

    rng = np.random.default_rng(seed)
    geometry = Geometry(*GRID, FRAMES)
    tensors = rng.random((pairs, *GRID, FRAMES))  # [P, H, W, F]
    masks = random_boxes(rng, pairs)
    start, end = random_words(rng, pairs)

    def run_engine(convention: str) -> dict[str, np.ndarray]:
        prepared = prepare_tensors(tensors, geometry)
        mask_counts = mask_cell_counts(masks, geometry)
        word_counts = word_frame_counts(start, end, geometry)
        return score_pairs(prepared, np.arange(pairs), mask_counts, word_counts, geometry, convention)

    for convention in ("paper", "released_code"):
        # Best of 3 runs, so that a busy shared machine and first-touch page faults weigh less.
        timings = []
        for _ in range(3):
            began = time.perf_counter()
            engine = run_engine(convention)
            timings.append(time.perf_counter() - began)
        engine_seconds = min(timings)

        checked = min(reference_pairs, pairs)
        began = time.perf_counter()
        largest = 0.0
        for index in range(checked):
            reference = reference_scores(tensors[index], masks[index], start[index], end[index], convention)
            for metric in METRICS:
                largest = max(largest, abs(reference[metric] - engine[metric][index]))
        reference_seconds = time.perf_counter() - began

        engine_per_pair = engine_seconds / pairs
        reference_per_pair = reference_seconds / max(checked, 1)
        print(f"engine vs reference, convention {convention}")
        print(f"  engine:    {pairs} pairs in {engine_seconds:.3f} s, best of 3 ({engine_per_pair * 1e6:.1f} us per pair)")
        print(f"  reference: {checked} pairs in {reference_seconds:.1f} s ({reference_per_pair * 1e3:.1f} ms per pair)")
        print(f"  speed ratio: {reference_per_pair / engine_per_pair:.0f} x (target >= 1000)")
        print(f"  max abs difference over {checked} pairs: {largest:.2e} (target <= 1e-6)")


def write_test_set(folder: Path, image_pairs: int, seed: int) -> None:
    """Write tensors.parquet, pairs.parquet and masks.parquet of a synthetic test set."""
    rng = np.random.default_rng(seed)
    # A pool of distinct masks keeps the set-up short. Scoring still counts every mask row.
    pool_size = 4000
    pool = random_boxes(rng, pool_size)
    paper_pool = [mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))["counts"].decode() for m in pool]
    grown = pool.copy()
    grown[:, 1:, :] |= pool[:, :-1, :]
    grown[:, :, 1:] |= grown[:, :, :-1]
    released_pool = [mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))["counts"].decode() for m in grown]
    areas = pool.mean(axis=(1, 2))

    image_ids = np.arange(1, image_pairs + 1, dtype=np.int64)
    caption_ids = image_ids * 10
    mask_rows, pair_rows = [], []
    for image_id in image_ids.tolist():
        present = rng.choice(len(CATEGORIES), int(rng.integers(1, 5)), replace=False)
        for category in present.tolist():
            pick = int(rng.integers(pool_size))
            mask_rows.append((image_id, category + 1, CATEGORIES[category], areas[pick], paper_pool[pick], released_pool[pick]))
        for category in present[: int(rng.integers(1, 3))].tolist():
            pair_rows.append((image_id, category))
    masks = pd.DataFrame(
        mask_rows, columns=["image_id", "category_id", "category_name", "area_fraction", "mask_paper", "mask_released"]
    )
    masks.to_parquet(folder / "masks.parquet")
    start, end = random_words(rng, len(pair_rows))
    pair_images = np.array([row[0] for row in pair_rows])
    pair_categories = np.array([row[1] for row in pair_rows])
    pairs = pd.DataFrame(
        {
            "pair_id": np.arange(len(pair_rows)),
            "caption_id": pair_images * 10,
            "image_id": pair_images,
            "word": [CATEGORIES[c] for c in pair_categories],
            "frame_start": start,
            "frame_end": end,
            "category_id": pair_categories + 1,
            "category_name": [CATEGORIES[c] for c in pair_categories],
        }
    )
    pairs.to_parquet(folder / "pairs.parquet")

    batch = 256
    with TensorWriter(folder / "tensors.parquet", "synthetic", "float16", GRID, FRAMES, frames_convention="paper") as writer:
        for first in range(0, image_pairs, batch):
            ids = slice(first, min(first + batch, image_pairs))
            raw = rng.standard_normal((ids.stop - ids.start, *GRID, FRAMES), dtype=np.float32)  # [B, H, W, F]
            flat = raw.reshape(len(raw), -1, FRAMES)
            space = np.exp(flat - flat.max(axis=1, keepdims=True))
            space /= space.sum(axis=1, keepdims=True)
            time_ = np.exp(flat - flat.max(axis=2, keepdims=True))
            time_ /= time_.sum(axis=2, keepdims=True)
            writer.write(image_ids[ids], caption_ids[ids], "raw", raw)
            writer.write(image_ids[ids], caption_ids[ids], "softmax_space", space.reshape(raw.shape))
            writer.write(image_ids[ids], caption_ids[ids], "softmax_time", time_.reshape(raw.shape))
    print(f"test set: {image_pairs} image-caption pairs, {len(pairs)} word-object pairs, {len(masks)} masks")


def score_folder(folder: Path) -> None:
    """Score a written test set (run in a fresh process) and print time and peak memory as JSON."""
    from vgsalign.scoring.stage import score_external

    began = time.perf_counter()
    score_external(folder / "tensors.parquet", folder / "pairs.parquet", folder / "masks.parquet", folder / "out")
    seconds = time.perf_counter() - began
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_rss_mb": peak_mb}))


def bench_stream(image_pairs: int, seed: int, keep: bool) -> None:
    folder = Path(tempfile.mkdtemp(prefix="bench-scoring-"))
    try:
        began = time.perf_counter()
        write_test_set(folder, image_pairs, seed)
        size_gb = (folder / "tensors.parquet").stat().st_size / 1e9
        print(f"  written in {time.perf_counter() - began:.1f} s; tensor file {size_gb:.2f} GB")
        result = subprocess.run(
            [sys.executable, __file__, "--score-folder", str(folder)],
            check=True,
            capture_output=True,
            text=True,
        )
        figures = json.loads(result.stdout.strip().splitlines()[-1])
        print(
            f"streamed scoring of {image_pairs} image-caption pairs (raw + softmax + baseline, both conventions, "
            f"confusion, 1000 bootstrap resamples): {figures['seconds']:.1f} s (target <= 60 s), "
            f"peak RSS {figures['peak_rss_mb']:.0f} MB"
        )
    finally:
        if keep:
            print(f"  kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["engine", "stream", "all"], default="all", help="which benchmark to run")
    parser.add_argument("--pairs", type=int, default=1000, help="pairs scored by the engine in part 1")
    parser.add_argument("--reference-pairs", type=int, default=50, help="of those, pairs also scored by the reference")
    parser.add_argument("--test-pairs", type=int, default=40504, help="image-caption pairs of the synthetic test set")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic data")
    parser.add_argument("--keep", action="store_true", help="keep the synthetic test set folder")
    parser.add_argument("--score-folder", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.score_folder:
        score_folder(Path(args.score_folder))
        return
    print(f"machine: {os.cpu_count()} CPUs, numpy {np.__version__}")
    if args.part in ("engine", "all"):
        bench_engine(args.pairs, args.reference_pairs, args.seed)
    if args.part in ("stream", "all"):
        bench_stream(args.test_pairs, args.seed, args.keep)


if __name__ == "__main__":
    main()
