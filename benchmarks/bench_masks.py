"""Time reading a val2014-sized instances file and building every test-image mask the pairs need.

Writes a synthetic COCO instances file with the size of val2014 (40,504 images,
about 291,000 instances, polygons plus about 1 % crowd RLE), then times
``vgsalign.coco.read_instances`` and ``vgsalign.coco.build_masks`` over all
images, and prints the figures.

    .venv/bin/python benchmarks/bench_masks.py                 # full size
    .venv/bin/python benchmarks/bench_masks.py --images 2000   # quick run

The file goes to benchmarks/out/ (ignored by git) and is reused when its
parameters match.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import time
from pathlib import Path

import numpy as np

from vgsalign import coco

OUT_DIR = Path(__file__).resolve().parent / "out"
# Image sizes common in COCO (height, width), drawn uniformly.
SIZES = [(480, 640), (427, 640), (640, 480), (640, 427), (375, 500), (500, 375), (612, 612), (424, 640)]
NUM_CATEGORIES = 80


def _polygon(rng: np.random.Generator, height: int, width: int) -> list[float]:
    """Return a star-shaped polygon of 8-40 vertices; about 5 % of the polygons reach outside the image."""
    vertices = int(rng.integers(8, 41))
    centre = rng.uniform([0, 0], [width, height])
    radius = rng.uniform(5, min(height, width) / 3)
    angles = np.sort(rng.uniform(0, 2 * np.pi, vertices))
    radii = radius * rng.uniform(0.5, 1.0, vertices)
    x = centre[0] + radii * np.cos(angles)
    y = centre[1] + radii * np.sin(angles)
    if rng.random() > 0.05:
        x, y = np.clip(x, 0, width), np.clip(y, 0, height)
    return np.round(np.column_stack([x, y]).ravel(), 2).tolist()


def _crowd_rle(rng: np.random.Generator, height: int, width: int) -> dict:
    """Return the uncompressed RLE of a random block, as COCO stores crowd regions."""
    mask = np.zeros((height, width), dtype=np.uint8)
    top, left = int(rng.integers(0, height // 2)), int(rng.integers(0, width // 2))
    mask[top : top + height // 3, left : left + width // 3] = 1
    flat = mask.ravel(order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0] == 1:
        counts = [0] + counts
    return {"size": [height, width], "counts": counts}


def make_instances(num_images: int, instances_per_image: float, seed: int) -> dict:
    """Return a synthetic instances file: ``num_images`` images, Poisson numbers of instances."""
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    annotation_id = 1
    for image_id in range(1, num_images + 1):
        height, width = SIZES[int(rng.integers(len(SIZES)))]
        images.append({"id": image_id, "file_name": f"{image_id:012d}.jpg", "height": height, "width": width})
        # About 3 categories per image, as in COCO.
        categories = rng.choice(np.arange(1, NUM_CATEGORIES + 1), size=int(rng.integers(1, 6)), replace=False)
        for _ in range(int(rng.poisson(instances_per_image))):
            crowd = rng.random() < 0.01
            segmentation = _crowd_rle(rng, height, width) if crowd else [_polygon(rng, height, width)]
            annotations.append(
                {
                    "id": annotation_id,
                    "image_id": image_id,
                    "category_id": int(rng.choice(categories)),
                    "iscrowd": int(crowd),
                    "segmentation": segmentation,
                    "area": 0.0,
                    "bbox": [0, 0, 0, 0],
                }
            )
            annotation_id += 1
    categories = [{"id": i, "name": f"category {i}", "supercategory": "thing"} for i in range(1, NUM_CATEGORIES + 1)]
    return {"images": images, "annotations": annotations, "categories": categories}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=40504, help="number of images (val2014: 40504)")
    parser.add_argument("--instances-per-image", type=float, default=7.2, help="mean instances per image (val2014: 7.2)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    OUT_DIR.mkdir(exist_ok=True)
    path = OUT_DIR / f"instances_synthetic_{args.images}_{args.instances_per_image}_{args.seed}.json"
    if not path.is_file():
        started = time.perf_counter()
        data = make_instances(args.images, args.instances_per_image, args.seed)
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(data))
        os.replace(temporary, path)
        print(f"wrote {path.name} in {time.perf_counter() - started:.1f} s")

    started = time.perf_counter()
    instances = coco.read_instances(path)
    read_seconds = time.perf_counter() - started
    num_objects = sum(len(objects) for objects in instances.objects.values())

    started = time.perf_counter()
    masks, counts = coco.build_masks(instances, instances.images["image_id"], progress=False)
    mask_seconds = time.perf_counter() - started
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    print(f"instances file: {path.stat().st_size / 2**20:.0f} MiB, {len(instances.images)} images, "
          f"{num_objects} usable non-crowd instances, {instances.counts['crowd_annotations']} crowd")
    print(f"read_instances: {read_seconds:.1f} s")
    print(f"build_masks: {len(masks)} masks in {mask_seconds:.1f} s "
          f"({1000 * mask_seconds / max(len(masks), 1):.2f} ms per mask, "
          f"{1000 * mask_seconds / len(instances.images):.2f} ms per image)")
    print(f"total: {read_seconds + mask_seconds:.1f} s; peak resident memory {peak_mib:.0f} MiB")
    print(f"skips: { {key: value for key, value in sorted({**instances.counts, **counts}.items()) if value} }")


if __name__ == "__main__":
    main()
