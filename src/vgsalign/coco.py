"""Read MSCOCO instances and captions files and build the object masks used as ground truth.

Works with the 2014 and 2017 files alike (same format). Files are indexed with
pycocotools' ``COCO`` class and segmentations rasterised with
``pycocotools.mask``.

The ground-truth pixel set of a category in an image is the union of the
category's non-crowd instances at the image's original size. For scoring it is
resized to 224 x 224 in two ways:

``paper``
    nearest-neighbour resize, sampling the source pixel under each target
    pixel's centre: ``source = floor((i + 0.5) * H / 224)``, computed exactly.
``released``
    the authors' released code: bilinear resize (OpenCV ``INTER_LINEAR``
    arithmetic, half-pixel centres, edge pixels repeated), then ``>= 0.01``.
    At exactly 2x downscaling OpenCV averages 2 x 2 blocks, which the bilinear
    formula gives too. The released code (github.com/khazarkhorrami/VGS_alignment,
    ``scores/utils.py``) sums the instance masks where this module takes their
    union. After the threshold the two differ only where overlapping instances
    put a bilinear value between 0.005 and 0.01.

Both are stored as COCO RLE ``counts`` strings (``pycocotools.mask.encode`` of a
Fortran-ordered uint8 array, decoded as UTF-8); :func:`decode_mask` reverses it.

Rules for bad annotations (each case is counted under the key in brackets, and
the counts end up in the summary of the stage that reads the file):

- annotation without ``id``, ``image_id``, ``category_id`` or
  ``segmentation``: skipped [``malformed_annotation``].
- annotation for an image that is not in the file: skipped [``unknown_image``].
- annotation with a category that is not in the file: skipped [``unknown_category``].
- crowd annotation (``iscrowd: 1``): excluded from targets [``crowd_annotations``].
- empty segmentation (``[]``, ``{}`` or null): skipped [``empty_segmentation``].
- a flat list of numbers instead of a list of polygons: read as one polygon
  [``flat_polygon_repaired``].
- polygon with an odd number of coordinates or a non-numeric or non-finite
  value: that polygon is dropped [``invalid_polygon``].
- polygon of exactly 4 numbers: dropped, because two points enclose no area and
  pycocotools would read the list as a box ``[x, y, w, h]`` [``polygon_four_numbers``].
- polygon of 2 numbers (one point): dropped [``polygon_too_few_points``].
- polygon with a vertex outside ``[0, W] x [0, H]``: clipped to the image
  rectangle (Sutherland-Hodgman), which keeps the shape inside the image; moving
  the vertices would change it [``polygon_clipped``]. A polygon wholly outside
  the image is dropped [``polygon_outside_image``].
- annotation whose polygons were all dropped: skipped [``no_valid_polygon``].
- RLE whose ``size`` differs from the image's: skipped [``rle_size_mismatch``];
  uncompressed RLE whose run lengths do not sum to H x W, or an RLE of another
  shape: skipped [``invalid_rle``].
- category whose instances in an image are all crowd annotations: not present
  in that image [``crowd_only_categories``, counted per image and category].
- image with no annotations at all [``images_without_annotations``], or with
  no usable non-crowd instance [``images_without_objects``]: no masks.
- category whose union mask has no pixel (degenerate polygons): not present
  [``empty_masks``].
- image without a positive ``width``/``height``: skipped with its
  annotations [``image_without_size``].
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import os
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from tqdm import tqdm

logger = logging.getLogger(__name__)

MASK_SIZE = 224
RELEASED_THRESHOLD = 0.01
MASK_COLUMNS = {"paper": "mask_paper", "released_code": "mask_released"}
# Columns of the masks table; label_order ranks the categories of an image by first annotation.
MASK_TABLE_COLUMNS = [
    "image_id",
    "category_id",
    "category_name",
    "height",
    "width",
    "area_fraction",
    "mask_paper",
    "mask_released",
    "label_order",
]

Segmentation = list | dict


class AnnotationFileError(ValueError):
    """A COCO annotation file that is missing or cannot be read. The message names the file and the fix."""


@dataclass(frozen=True)
class ObjectInstance:
    """One usable non-crowd annotation, with its segmentation repaired."""

    annotation_id: int
    category_id: int
    # Polygons (lists of x, y pairs) or a COCO RLE dict with ``size`` and ``counts``.
    segmentation: Segmentation


@dataclass
class Instances:
    """Images, categories and usable object instances of one instances file."""

    path: Path
    images: pd.DataFrame  # image_id, file_name, width, height; sorted by image_id
    categories: pd.DataFrame  # category_id, category_name; in file order
    # image_id -> usable non-crowd instances, in annotation-file order.
    objects: dict[int, list[ObjectInstance]]
    # image_id -> category ids that have crowd annotations in that image.
    crowd_categories: dict[int, set[int]]
    counts: Counter = field(default_factory=Counter)

    def category_names(self) -> dict[int, str]:
        return dict(zip(self.categories["category_id"], self.categories["category_name"]))


# -- reading files ---------------------------------------------------------------


def _load_json(path: Path, kind: str) -> dict[str, Any]:
    if not path.is_file():
        raise AnnotationFileError(
            f"COCO {kind} file not found: {path}. Check data.coco_root and the split names in params.yaml."
        )
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise AnnotationFileError(
            f"COCO {kind} file {path} is not valid JSON ({error}). Download or extract it again."
        ) from error
    if not isinstance(data, dict):
        raise AnnotationFileError(
            f"COCO {kind} file {path} must contain a JSON object with 'images' and 'annotations', "
            f"not a {type(data).__name__}."
        )
    required = ["images", "annotations"] + (["categories"] if kind == "instances" else [])
    missing = [key for key in required if not isinstance(data.get(key), list)]
    if missing:
        raise AnnotationFileError(
            f"COCO {kind} file {path} has no list under {missing}. "
            f"Pass an {kind}_<split>.json file from the COCO annotations archive."
        )
    return data


def _index(data: dict[str, Any]) -> COCO:
    """Index loaded COCO data with pycocotools, without its progress prints on stdout."""
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _drop_malformed(data: dict[str, Any], required: Iterable[str], counts: Counter) -> None:
    required = tuple(required)
    annotations = [a for a in data["annotations"] if isinstance(a, dict) and all(k in a for k in required)]
    counts["malformed_annotation"] += len(data["annotations"]) - len(annotations)
    data["annotations"] = annotations
    images = [image for image in data["images"] if isinstance(image, dict) and "id" in image]
    counts["malformed_image"] += len(data["images"]) - len(images)
    data["images"] = images


def read_coco(path: str | os.PathLike, kind: str = "instances") -> tuple[COCO, Counter]:
    """Read a COCO ``instances`` or ``captions`` file into a pycocotools ``COCO`` index.

    Annotations that lack a key needed for indexing are dropped and counted
    (``malformed_annotation``), as are image entries without an ``id``.
    """
    path = Path(path)
    data = _load_json(path, kind)
    counts: Counter = Counter()
    if kind == "captions":
        # Some captions files carry a "categories" list; pycocotools would then index
        # every caption by a category_id that captions do not have.
        data.pop("categories", None)
    required = ("id", "image_id", "category_id", "segmentation") if kind == "instances" else ("id", "image_id", "caption")
    _drop_malformed(data, required, counts)
    return _index(data), counts


def read_captions(path: str | os.PathLike) -> tuple[pd.DataFrame, Counter]:
    """Read a ``captions_<split>.json`` file: ``caption_id``, ``image_id``, ``caption``, sorted by caption id.

    Every caption of the file is either returned or counted under one key.
    Captions without ``id``, ``image_id`` or ``caption`` are dropped
    (``caption_malformed``), as is every caption but the last in file order of
    an id that occurs more than once (``caption_duplicate_id``), and captions
    for an image that is not in the file (``caption_unknown_image``). Image
    entries without ``id`` are counted as ``caption_file_malformed_image``. The
    keys differ from :func:`read_coco`'s, so they stay apart from the instances
    file's counts when both are added up.
    """
    coco, read_counts = read_coco(path, kind="captions")
    counts: Counter = Counter()
    counts["caption_malformed"] = read_counts["malformed_annotation"]
    counts["caption_file_malformed_image"] = read_counts["malformed_image"]
    # pycocotools indexes annotations by id, so for a repeated id only the last one is in coco.anns.
    counts["caption_duplicate_id"] = len(coco.dataset["annotations"]) - len(coco.anns)
    rows = [(int(a["id"]), int(a["image_id"]), str(a["caption"])) for a in coco.anns.values()]
    captions = pd.DataFrame(rows, columns=["caption_id", "image_id", "caption"])
    captions = captions.astype({"caption_id": "int64", "image_id": "int64"})
    known = captions["image_id"].isin(list(coco.imgs))
    counts["caption_unknown_image"] += int((~known).sum())
    captions = captions.loc[known].sort_values("caption_id", kind="stable").reset_index(drop=True)
    return captions, counts


def image_table(coco: COCO, counts: Counter | None = None) -> pd.DataFrame:
    """Return ``image_id``, ``file_name``, ``width``, ``height`` of every image with a positive size."""
    counts = Counter() if counts is None else counts
    rows = []
    for image_id, image in coco.imgs.items():
        width, height = image.get("width"), image.get("height")
        if not (isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0):
            counts["image_without_size"] += 1
            continue
        file_name = image.get("file_name") or f"{int(image_id):012d}.jpg"
        rows.append((int(image_id), str(file_name), width, height))
    images = pd.DataFrame(rows, columns=["image_id", "file_name", "width", "height"])
    images = images.astype({"image_id": "int64", "width": "int32", "height": "int32"})
    return images.sort_values("image_id", kind="stable").reset_index(drop=True)


def read_instances(path: str | os.PathLike) -> Instances:
    """Read an ``instances_<split>.json`` file and keep the usable non-crowd instances of each image.

    Applies the rules in the module docstring; ``Instances.counts`` has the counts.
    """
    path = Path(path)
    coco, counts = read_coco(path, kind="instances")
    images = image_table(coco, counts)
    sizes = {int(i): (int(h), int(w)) for i, h, w in zip(images["image_id"], images["height"], images["width"])}
    categories = pd.DataFrame(
        [(int(c["id"]), str(c.get("name", c["id"]))) for c in coco.dataset["categories"] if "id" in c],
        columns=["category_id", "category_name"],
    ).astype({"category_id": "int64"})
    known_categories = set(categories["category_id"])

    objects: dict[int, list[ObjectInstance]] = {}
    crowd_categories: dict[int, set[int]] = {}
    for annotation in coco.dataset["annotations"]:
        image_id = int(annotation["image_id"])
        if image_id not in coco.imgs:
            counts["unknown_image"] += 1
            continue
        if image_id not in sizes:
            # Annotations of an image without a size go with the image (counted there).
            continue
        category_id = int(annotation["category_id"])
        if category_id not in known_categories:
            counts["unknown_category"] += 1
            continue
        if annotation.get("iscrowd", 0):
            counts["crowd_annotations"] += 1
            crowd_categories.setdefault(image_id, set()).add(category_id)
            continue
        height, width = sizes[image_id]
        segmentation = repair_segmentation(annotation["segmentation"], height, width, counts)
        if segmentation is None:
            continue
        instance = ObjectInstance(int(annotation["id"]), category_id, segmentation)
        objects.setdefault(image_id, []).append(instance)

    annotated = {int(i) for i, anns in coco.imgToAnns.items() if anns}
    for image_id in sizes:
        if image_id not in annotated:
            counts["images_without_annotations"] += 1
        elif image_id not in objects:
            counts["images_without_objects"] += 1
        present = {instance.category_id for instance in objects.get(image_id, [])}
        counts["crowd_only_categories"] += len(crowd_categories.get(image_id, set()) - present)

    instances = Instances(path, images, categories, objects, crowd_categories, counts)
    log_counts(f"instances {path}", counts)
    return instances


def log_counts(source: str, counts: Mapping[str, int]) -> None:
    """Log every non-zero skip or repair count of ``source`` at WARNING, in one line."""
    nonzero = {key: int(value) for key, value in sorted(counts.items()) if value}
    if nonzero:
        logger.warning("%s: skipped or repaired: %s", source, ", ".join(f"{k}={v}" for k, v in nonzero.items()))
    else:
        logger.info("%s: no annotation skipped or repaired", source)


# -- repairing segmentations -----------------------------------------------------


def repair_segmentation(segmentation: Any, height: int, width: int, counts: Counter) -> Segmentation | None:
    """Return a usable segmentation (polygons or RLE) for an image of ``height`` x ``width``, or None.

    Increments ``counts`` under the keys of the module docstring.
    """
    if segmentation is None or (isinstance(segmentation, (list, dict)) and len(segmentation) == 0):
        counts["empty_segmentation"] += 1
        return None
    if isinstance(segmentation, dict):
        return _check_rle(segmentation, height, width, counts)
    if not isinstance(segmentation, list):
        counts["invalid_rle"] += 1
        return None
    if all(isinstance(value, (int, float)) and not isinstance(value, bool) for value in segmentation):
        counts["flat_polygon_repaired"] += 1
        segmentation = [segmentation]
    polygons = []
    for polygon in segmentation:
        repaired = repair_polygon(polygon, height, width, counts)
        if repaired is not None:
            polygons.append(repaired)
    if not polygons:
        counts["no_valid_polygon"] += 1
        return None
    return polygons


def repair_polygon(polygon: Any, height: int, width: int, counts: Counter) -> list[float] | None:
    """Return the polygon ``[x1, y1, x2, y2, ...]`` clipped to the image, or None when it is unusable."""
    try:
        coordinates = np.asarray(polygon, dtype=np.float64)
    except (TypeError, ValueError):
        counts["invalid_polygon"] += 1
        return None
    if coordinates.ndim != 1 or len(coordinates) % 2 or not np.all(np.isfinite(coordinates)):
        counts["invalid_polygon"] += 1
        return None
    if len(coordinates) == 4:
        counts["polygon_four_numbers"] += 1
        return None
    if len(coordinates) < 6:
        counts["polygon_too_few_points"] += 1
        return None
    points = coordinates.reshape(-1, 2)
    outside = (points[:, 0] < 0) | (points[:, 0] > width) | (points[:, 1] < 0) | (points[:, 1] > height)
    if outside.any():
        counts["polygon_clipped"] += 1
        points = clip_polygon(points, width, height)
        if len(points) < 3:
            counts["polygon_outside_image"] += 1
            return None
    return points.ravel().tolist()


def clip_polygon(points: np.ndarray, width: float, height: float) -> np.ndarray:
    """Clip a polygon (``[N, 2]`` x, y vertices) to the rectangle ``[0, width] x [0, height]``.

    Sutherland-Hodgman clipping against the four edges; the result may have
    edges along the image border. Returns ``[M, 2]``, ``M`` < 3 when nothing is left.
    """
    # Each edge: (axis, limit, keep values >= limit when True, <= limit when False).
    edges = ((0, 0.0, True), (0, float(width), False), (1, 0.0, True), (1, float(height), False))
    vertices = [tuple(point) for point in points]
    for axis, limit, keep_above in edges:
        if not vertices:
            break

        def inside(vertex: tuple[float, float]) -> bool:
            return vertex[axis] >= limit if keep_above else vertex[axis] <= limit

        clipped: list[tuple[float, float]] = []
        previous = vertices[-1]
        for current in vertices:
            if inside(current):
                if not inside(previous):
                    clipped.append(_crossing(previous, current, axis, limit))
                clipped.append(current)
            elif inside(previous):
                clipped.append(_crossing(previous, current, axis, limit))
            previous = current
        vertices = clipped
    return np.asarray(vertices, dtype=np.float64).reshape(-1, 2)


def _crossing(a: tuple[float, float], b: tuple[float, float], axis: int, limit: float) -> tuple[float, float]:
    """Return the point where segment a-b crosses the line ``coordinate[axis] == limit``."""
    t = (limit - a[axis]) / (b[axis] - a[axis])
    point = [a[0] + t * (b[0] - a[0]), a[1] + t * (b[1] - a[1])]
    point[axis] = limit
    return point[0], point[1]


def _check_rle(rle: dict, height: int, width: int, counts: Counter) -> dict | None:
    size, run_lengths = rle.get("size"), rle.get("counts")
    if not (isinstance(size, (list, tuple)) and len(size) == 2) or run_lengths is None:
        counts["invalid_rle"] += 1
        return None
    if [int(size[0]), int(size[1])] != [height, width]:
        counts["rle_size_mismatch"] += 1
        return None
    if isinstance(run_lengths, list):
        integers = all(isinstance(value, int) and not isinstance(value, bool) for value in run_lengths)
        if not integers or sum(run_lengths) != height * width or any(value < 0 for value in run_lengths):
            counts["invalid_rle"] += 1
            return None
        return mask_utils.frPyObjects({"size": [height, width], "counts": run_lengths}, height, width)
    if isinstance(run_lengths, str):
        run_lengths = run_lengths.encode("utf-8")
    if not isinstance(run_lengths, bytes):
        counts["invalid_rle"] += 1
        return None
    return {"size": [height, width], "counts": run_lengths}


# -- masks -------------------------------------------------------------------------


def segmentation_rles(segmentation: Segmentation, height: int, width: int) -> list[dict]:
    """Return the compressed RLEs of a repaired segmentation (one per polygon, or the RLE itself)."""
    if isinstance(segmentation, dict):
        return [segmentation]
    return mask_utils.frPyObjects(segmentation, height, width)


def union_rle(segmentations: Iterable[Segmentation], height: int, width: int) -> dict:
    """Return the RLE of the union of the segmentations at ``height`` x ``width``."""
    rles = [rle for segmentation in segmentations for rle in segmentation_rles(segmentation, height, width)]
    if not rles:
        return mask_utils.encode(np.zeros((height, width), dtype=np.uint8, order="F"))
    return mask_utils.merge(rles, intersect=False)


def resize_nearest(mask: np.ndarray, size: int = MASK_SIZE) -> np.ndarray:
    """Resize a ``[H, W]`` mask to ``[size, size]`` by nearest neighbour at pixel centres."""
    height, width = mask.shape
    # floor((i + 0.5) * H / size) in integers, so a centre that falls exactly on a
    # pixel border picks the pixel after it (PIL's float arithmetic sometimes picks the one before).
    centres = 2 * np.arange(size, dtype=np.int64) + 1
    rows = centres * height // (2 * size)
    columns = centres * width // (2 * size)
    return mask[:, columns][rows]


@functools.lru_cache(maxsize=256)
def _linear_taps(source: int, target: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return the two source indices and the weight of the second for each target index.

    OpenCV's INTER_LINEAR: ``x = (i + 0.5) * source / target - 0.5``; a tap
    left of the first pixel or right of the last repeats the edge pixel.
    The arrays are cached per size and must not be modified.
    """
    position = (np.arange(target) + 0.5) * (source / target) - 0.5
    first = np.floor(position).astype(np.int64)
    weight = position - first
    before = first < 0
    first[before], weight[before] = 0, 0.0
    after = first >= source - 1
    first[after], weight[after] = source - 1, 0.0
    second = np.minimum(first + 1, source - 1)
    for array in (first, second, weight):
        array.flags.writeable = False
    return first, second, weight


def _crop_taps(source: int, target: int, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return the taps of :func:`_linear_taps` relative to the crop ``[start, stop)`` of the source.

    A tap outside the crop reads index 0 of the crop with weight 0, which is
    exact because the mask is zero outside the crop.
    """
    first, second, weight = _linear_taps(source, target)
    first_inside = (first >= start) & (first < stop)
    second_inside = (second >= start) & (second < stop)
    first_weight = np.where(first_inside, 1.0 - weight, 0.0)
    second_weight = np.where(second_inside, weight, 0.0)
    return (
        np.where(first_inside, first - start, 0),
        np.where(second_inside, second - start, 0),
        first_weight,
        second_weight,
    )


def _nonzero_span(occupied: np.ndarray) -> tuple[int, int]:
    indices = np.flatnonzero(occupied)
    return (int(indices[0]), int(indices[-1]) + 1) if len(indices) else (0, 0)


def resize_bilinear(mask: np.ndarray, size: int = MASK_SIZE) -> np.ndarray:
    """Resize a ``[H, W]`` mask to ``[size, size]`` float64 values by OpenCV-style bilinear interpolation.

    Only the bounding box of the mask's nonzero pixels is read. The result is
    the same as interpolating the whole mask, because every other term is zero.
    """
    height, width = mask.shape
    top, bottom = _nonzero_span(mask.any(axis=1))
    left, right = _nonzero_span(mask.any(axis=0))
    if bottom == top:
        return np.zeros((size, size))
    crop = mask[top:bottom, left:right]  # [h, w]
    first, second, first_weight, second_weight = _crop_taps(width, size, left, right)
    columns = crop[:, first] * first_weight + crop[:, second] * second_weight  # [h, size]
    first, second, first_weight, second_weight = _crop_taps(height, size, top, bottom)
    return columns[first] * first_weight[:, None] + columns[second] * second_weight[:, None]  # [size, size]


def resize_mask(mask: np.ndarray, convention: str, size: int = MASK_SIZE) -> np.ndarray:
    """Return the ``[size, size]`` uint8 mask of ``convention`` (``paper`` or ``released_code``)."""
    if convention == "paper":
        return resize_nearest(mask, size).astype(np.uint8)
    if convention == "released_code":
        return (resize_bilinear(mask, size) >= RELEASED_THRESHOLD).astype(np.uint8)
    raise ValueError(f"invalid mask convention {convention!r}: use 'paper' or 'released_code'")


def encode_mask(mask: np.ndarray) -> str:
    """Return the COCO RLE ``counts`` string of a binary ``[H, W]`` mask."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return rle["counts"].decode("utf-8")


def decode_mask(counts: str, height: int = MASK_SIZE, width: int = MASK_SIZE) -> np.ndarray:
    """Return the boolean ``[height, width]`` mask of a COCO RLE ``counts`` string."""
    return mask_utils.decode({"size": [height, width], "counts": counts.encode("utf-8")}).astype(bool)


def present_categories(instances: Instances, image_ids: Iterable[int]) -> pd.DataFrame:
    """Return the categories with a usable non-crowd instance in each image, in annotation order.

    Columns: ``image_id``, ``category_id``, ``category_name``, ``label_order``
    (0 for the category of the image's first usable annotation, and so on) and
    ``instances`` (number of usable instances).
    """
    names = instances.category_names()
    rows = []
    for image_id in image_ids:
        order: dict[int, int] = {}
        for instance in instances.objects.get(int(image_id), []):
            order[instance.category_id] = order.get(instance.category_id, 0) + 1
        for rank, (category_id, number) in enumerate(order.items()):
            rows.append((int(image_id), category_id, names[category_id], rank, number))
    table = pd.DataFrame(rows, columns=["image_id", "category_id", "category_name", "label_order", "instances"])
    return table.astype({"image_id": "int64", "category_id": "int64", "label_order": "int64", "instances": "int64"})


def build_masks(
    instances: Instances, image_ids: Iterable[int], progress: bool = True
) -> tuple[pd.DataFrame, Counter]:
    """Build the masks of every category present in each image.

    Returns the masks table and the counts ``masks_built``, ``empty_masks`` and
    ``images_not_in_file``. The table has one row per (image, category) with
    the columns of :data:`MASK_TABLE_COLUMNS`. ``area_fraction`` is union
    pixels / image pixels at the original size, and ``mask_paper`` and
    ``mask_released`` are the RLE strings of the 224 x 224 masks.
    """
    counts: Counter = Counter()
    sizes = instances.images.set_index("image_id")[["height", "width"]]
    names = instances.category_names()
    rows = []
    image_ids = [int(i) for i in image_ids]
    for image_id in tqdm(image_ids, desc="masks", unit="image", disable=not progress, mininterval=5):
        if image_id not in sizes.index:
            counts["images_not_in_file"] += 1
            continue
        height, width = (int(value) for value in sizes.loc[image_id])
        by_category: dict[int, list[Segmentation]] = {}
        for instance in instances.objects.get(image_id, []):
            by_category.setdefault(instance.category_id, []).append(instance.segmentation)
        for rank, (category_id, segmentations) in enumerate(by_category.items()):
            rle = union_rle(segmentations, height, width)
            area = int(mask_utils.area(rle))
            if area == 0:
                counts["empty_masks"] += 1
                continue
            full = mask_utils.decode(rle)  # [H, W] uint8, Fortran order
            rows.append(
                (
                    image_id,
                    category_id,
                    names[category_id],
                    height,
                    width,
                    area / (height * width),
                    encode_mask(resize_mask(full, "paper")),
                    encode_mask(resize_mask(full, "released_code")),
                    rank,
                )
            )
            counts["masks_built"] += 1
    masks = pd.DataFrame(rows, columns=MASK_TABLE_COLUMNS)
    masks = masks.astype(
        {"image_id": "int64", "category_id": "int64", "height": "int32", "width": "int32", "label_order": "int64"}
    )
    if counts["empty_masks"]:
        logger.warning("%d image categories have an empty mask (degenerate polygons) and are not present", counts["empty_masks"])
    return masks, counts
