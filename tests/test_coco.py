"""COCO reading, segmentation repairs and masks, on hand-made annotation files."""

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from vgsalign import coco

COCO_TINY = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "coco-tiny"


def _rect(x0, y0, x1, y1):
    """Polygon of the axis-aligned rectangle; pycocotools fills rows y0..y1-1 and columns x0..x1-1."""
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def _crowd_rle(height, width):
    # Uncompressed RLE of the whole image (column-major run lengths, starting with zeros).
    return {"size": [height, width], "counts": [0, height * width]}


CATEGORIES = [
    {"id": 1, "name": "dog"},
    {"id": 2, "name": "hot dog"},
    {"id": 3, "name": "cat"},
    {"id": 4, "name": "person"},
]
IMAGES = [
    {"id": 1, "file_name": "a.jpg", "height": 10, "width": 20},
    {"id": 2, "file_name": "b.jpg", "height": 10, "width": 20},  # no annotations
    {"id": 3, "file_name": "c.jpg", "height": 10, "width": 20},  # crowd only
    {"id": 4, "file_name": "d.jpg", "height": 6, "width": 5},
    {"id": 5, "file_name": "e.jpg", "height": 10, "width": 10},  # degenerate polygon only
    {"id": 6, "file_name": "f.jpg", "height": 0, "width": 10},  # no size
]


def _annotation(annotation_id, image_id, category_id, segmentation, iscrowd=0):
    return {
        "id": annotation_id,
        "image_id": image_id,
        "category_id": category_id,
        "segmentation": segmentation,
        "iscrowd": iscrowd,
    }


ANNOTATIONS = [
    _annotation(10, 1, 4, [_rect(15, -5, 25, 4)]),  # clipped to columns 15..19, rows 0..3
    _annotation(11, 1, 1, [_rect(2, 3, 7, 8)]),
    _annotation(12, 1, 1, [[3, 3], _rect(5, 1, 9, 4)]),  # one-point polygon dropped, rectangle kept
    _annotation(13, 1, 2, [[1, 1, 5, 5]]),  # 4 numbers: dropped, no polygon left
    _annotation(14, 1, 3, _crowd_rle(10, 20), iscrowd=1),  # crowd-only category in image 1
    _annotation(15, 99, 1, [_rect(0, 0, 2, 2)]),  # image not in the file
    _annotation(16, 1, 4, []),  # empty segmentation
    _annotation(17, 1, 77, [_rect(0, 0, 2, 2)]),  # unknown category
    _annotation(18, 3, 4, _crowd_rle(10, 20), iscrowd=1),
    _annotation(19, 4, 1, _rect(0, 0, 4, 4)),  # flat list: one polygon
    # Uncompressed RLE, column-major: 2 zeros, 2 ones (rows 2-3 of column 0), 26 zeros.
    _annotation(20, 4, 3, {"size": [6, 5], "counts": [2, 2, 26]}),
    _annotation(21, 4, 4, {"size": [5, 6], "counts": [30]}),  # wrong size
    _annotation(22, 5, 1, [[0, 0, 2, 2, 4, 4]]),  # collinear: no pixel
    _annotation(23, 6, 1, [_rect(0, 0, 2, 2)]),  # image without a size
    {"id": 24, "image_id": 1, "category_id": 1},  # no segmentation
    _annotation(25, 1, 4, [_rect(-30, -30, -10, -10)]),  # wholly outside: dropped
    _annotation(26, 4, 4, {"size": [6, 5], "counts": [2, 2, 2]}),  # run lengths do not sum to 30
]


@pytest.fixture
def instances_file(tmp_path):
    path = tmp_path / "instances_val2014.json"
    path.write_text(json.dumps({"images": IMAGES, "annotations": ANNOTATIONS, "categories": CATEGORIES}))
    return path


def _decode(masks, image_id, category_id, column):
    row = masks[(masks.image_id == image_id) & (masks.category_id == category_id)].iloc[0]
    return coco.decode_mask(row[column]), row


def test_read_instances_counts(instances_file):
    instances = coco.read_instances(instances_file)
    expected = {
        "malformed_annotation": 1,
        "unknown_image": 1,
        "unknown_category": 1,
        "crowd_annotations": 2,
        "empty_segmentation": 1,
        "flat_polygon_repaired": 1,
        "polygon_four_numbers": 1,
        "polygon_too_few_points": 1,
        "polygon_clipped": 2,
        "polygon_outside_image": 1,
        "no_valid_polygon": 2,
        "rle_size_mismatch": 1,
        "invalid_rle": 1,
        "crowd_only_categories": 2,
        "images_without_annotations": 1,
        "images_without_objects": 1,
        "image_without_size": 1,
    }
    for key, value in expected.items():
        assert instances.counts[key] == value, key


def test_read_instances_objects(instances_file):
    instances = coco.read_instances(instances_file)
    assert instances.images["image_id"].tolist() == [1, 2, 3, 4, 5]
    assert [o.annotation_id for o in instances.objects[1]] == [10, 11, 12]
    assert [o.annotation_id for o in instances.objects[4]] == [19, 20]
    assert 2 not in instances.objects
    assert 3 not in instances.objects
    assert instances.crowd_categories[1] == {3}


def test_present_categories_order(instances_file):
    instances = coco.read_instances(instances_file)
    present = coco.present_categories(instances, [1, 2, 3, 4])
    image_1 = present[present.image_id == 1]
    # Annotation order: person (id 10) first, then dog; hot dog has no polygon and cat is crowd only.
    assert image_1["category_name"].tolist() == ["person", "dog"]
    assert image_1["label_order"].tolist() == [0, 1]
    assert image_1["instances"].tolist() == [1, 2]
    assert present[present.image_id == 4]["category_name"].tolist() == ["dog", "cat"]
    assert set(present["image_id"]) == {1, 4}


def test_build_masks_full_size_union(instances_file):
    instances = coco.read_instances(instances_file)
    masks, counts = coco.build_masks(instances, [1, 2, 3, 4, 5, 42], progress=False)
    assert counts["masks_built"] == 4
    assert counts["empty_masks"] == 1  # image 5: collinear polygon
    assert counts["images_not_in_file"] == 1

    dog = np.zeros((10, 20), dtype=np.uint8)
    dog[3:8, 2:7] = 1
    dog[1:4, 5:9] = 1
    row = masks[(masks.image_id == 1) & (masks.category_id == 1)].iloc[0]
    assert row["area_fraction"] == pytest.approx(dog.sum() / 200)
    assert (row["height"], row["width"]) == (10, 20)

    person = masks[(masks.image_id == 1) & (masks.category_id == 4)].iloc[0]
    assert person["area_fraction"] == pytest.approx(20 / 200)  # rows 0-3, columns 15-19

    cat = masks[(masks.image_id == 4) & (masks.category_id == 3)].iloc[0]
    assert cat["area_fraction"] == pytest.approx(2 / 30)
    flat = masks[(masks.image_id == 4) & (masks.category_id == 1)].iloc[0]
    assert flat["area_fraction"] == pytest.approx(16 / 30)


def test_build_masks_224_paper(instances_file):
    instances = coco.read_instances(instances_file)
    masks, _ = coco.build_masks(instances, [1], progress=False)
    paper, _ = _decode(masks, 1, 4, "mask_paper")
    # Person: rows 0-3 of 10, columns 15-19 of 20. Target row i samples floor((i + 0.5) * 10 / 224).
    rows = np.floor((np.arange(224) + 0.5) * 10 / 224).astype(int)
    columns = np.floor((np.arange(224) + 0.5) * 20 / 224).astype(int)
    expected = (rows[:, None] <= 3) & (columns[None, :] >= 15)
    assert paper.shape == (224, 224)
    assert np.array_equal(paper, expected)


def test_build_masks_224_released(instances_file):
    instances = coco.read_instances(instances_file)
    masks, _ = coco.build_masks(instances, [1], progress=False)
    released, _ = _decode(masks, 1, 4, "mask_released")
    full = np.zeros((10, 20), dtype=np.float32)
    full[0:4, 15:20] = 1
    # Independent bilinear: torch with half-pixel centres and no antialiasing, as OpenCV INTER_LINEAR.
    reference = torch.nn.functional.interpolate(
        torch.from_numpy(full)[None, None], size=(224, 224), mode="bilinear", align_corners=False
    )[0, 0].numpy()
    assert np.array_equal(released, reference >= 0.01)
    # The bilinear mask reaches beyond the nearest-neighbour one: rows up to where row 4 still weighs >= 0.01.
    paper, _ = _decode(masks, 1, 4, "mask_paper")
    assert released.sum() > paper.sum()


def test_resize_nearest_by_hand():
    mask = np.arange(24).reshape(4, 6)
    # rows floor((i + 0.5) * 4 / 3) = 0, 2, 3; columns floor((i + 0.5) * 2) = 1, 3, 5.
    assert coco.resize_nearest(mask, 3).tolist() == [[1, 3, 5], [13, 15, 17], [19, 21, 23]]


def test_resize_bilinear_by_hand():
    # Downscale 4 -> 2: taps at 0.5 and 2.5, the mean of neighbouring pairs.
    assert coco.resize_bilinear(np.array([[0.0, 1.0, 1.0, 1.0]] * 4), 2)[0].tolist() == [0.5, 1.0]
    # Upscale 2 -> 4: positions -0.25 (edge), 0.25, 0.75, 1.25 (edge).
    upscaled = coco.resize_bilinear(np.array([[0.0, 4.0], [0.0, 4.0]]), 4)
    assert upscaled[0].tolist() == [0.0, 1.0, 3.0, 4.0]


def test_resize_bilinear_matches_torch():
    rng = np.random.default_rng(0)
    for height, width in [(480, 640), (427, 640), (100, 150), (448, 448), (224, 224)]:
        mask = (rng.random((height, width)) > 0.7).astype(np.uint8)
        reference = torch.nn.functional.interpolate(
            torch.from_numpy(mask.astype(np.float64))[None, None], size=(224, 224), mode="bilinear", align_corners=False
        )[0, 0].numpy()
        assert np.allclose(coco.resize_bilinear(mask), reference, atol=1e-12), (height, width)


def test_released_threshold_single_pixel():
    # 2x downscale: one pixel weighs 1/4 in its 2 x 2 block (>= 0.01).
    mask = np.zeros((448, 448), dtype=np.uint8)
    mask[0, 0] = 1
    assert coco.resize_mask(mask, "released_code").sum() == 1
    # 10x downscale without antialiasing: only source pixels 10i+4 and 10i+5 are sampled.
    mask = np.zeros((2240, 2240), dtype=np.uint8)
    mask[0, 0] = 1
    assert coco.resize_mask(mask, "released_code").sum() == 0
    mask[4, 4] = 1
    out = coco.resize_mask(mask, "released_code")
    assert out.sum() == 1
    assert out[0, 0] == 1


def test_encode_decode_roundtrip():
    mask = np.zeros((224, 224), dtype=np.uint8)
    mask[10:20, 30:35] = 1
    counts = coco.encode_mask(mask)
    assert isinstance(counts, str)
    assert np.array_equal(coco.decode_mask(counts), mask.astype(bool))


def test_repair_polygon_cases():
    counts = Counter()
    assert coco.repair_polygon([0, 0, 1, 0, 1, 1, 0], 10, 10, counts) is None  # odd length
    assert coco.repair_polygon([0, 0, float("nan"), 0, 1, 1], 10, 10, counts) is None
    assert coco.repair_polygon(["a", 0, 1, 0, 1, 1], 10, 10, counts) is None
    assert counts["invalid_polygon"] == 3
    assert coco.repair_polygon([1, 2, 3, 4], 10, 10, counts) is None
    assert counts["polygon_four_numbers"] == 1
    assert coco.repair_polygon([1, 2], 10, 10, counts) is None
    assert counts["polygon_too_few_points"] == 1
    assert coco.repair_polygon([1, 1, 5, 1, 5, 5], 10, 10, counts) == [1, 1, 5, 1, 5, 5]
    assert counts["polygon_clipped"] == 0


def test_clip_polygon_triangle():
    # Triangle (0,0), (20,0), (0,20) clipped to 10 x 10: the corner (10,10) lies on its hypotenuse.
    clipped = coco.clip_polygon(np.array([[0.0, 0.0], [20.0, 0.0], [0.0, 20.0]]), 10, 10)
    # Both crossings of the hypotenuse land on (10, 10), so that vertex appears twice.
    assert set(map(tuple, clipped.tolist())) == {(0.0, 0.0), (10.0, 0.0), (10.0, 10.0), (0.0, 10.0)}


def test_clipped_polygon_matches_crop():
    # pycocotools crops a polygon that leaves the image; clipping must keep the same pixels.
    from pycocotools import mask as mask_utils

    polygon = [-20.0, -10.0, 70.0, 5.0, 30.0, 60.0, 10.0, 35.0]
    raw = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([polygon], 40, 50)))
    repaired = coco.repair_polygon(polygon, 40, 50, Counter())
    clipped = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([repaired], 40, 50)))
    assert (raw != clipped).sum() <= 2
    assert clipped.sum() > 1800


def test_read_instances_missing_file(tmp_path):
    with pytest.raises(coco.AnnotationFileError, match="not found.*missing.json"):
        coco.read_instances(tmp_path / "missing.json")


def test_read_instances_invalid_json(tmp_path):
    path = tmp_path / "instances_x.json"
    path.write_text("{not json")
    with pytest.raises(coco.AnnotationFileError, match="not valid JSON"):
        coco.read_instances(path)


def test_read_instances_no_categories(tmp_path):
    path = tmp_path / "instances_x.json"
    path.write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(coco.AnnotationFileError, match="categories"):
        coco.read_instances(path)


def test_read_captions_unknown_image(tmp_path):
    path = tmp_path / "captions_x.json"
    data = {
        "images": [{"id": 1, "height": 5, "width": 5}, {"file_name": "no_id.jpg"}],
        "annotations": [
            {"id": 7, "image_id": 1, "caption": "A dog."},
            {"id": 3, "image_id": 1, "caption": "A cat."},
            {"id": 9, "image_id": 2, "caption": "Nobody."},
            {"id": 10, "image_id": 1},
            {"id": 3, "image_id": 1, "caption": "A cat again."},
        ],
    }
    path.write_text(json.dumps(data))
    captions, counts = coco.read_captions(path)
    assert captions["caption_id"].tolist() == [3, 7]
    assert captions["caption"].tolist() == ["A cat again.", "A dog."]  # the last caption of id 3 is kept
    assert counts["caption_unknown_image"] == 1
    assert counts["caption_malformed"] == 1
    assert counts["caption_duplicate_id"] == 1
    assert counts["caption_file_malformed_image"] == 1
    assert "malformed_annotation" not in counts  # that key is the instances file's
    # Every caption of the file is returned or counted once.
    assert len(captions) + sum(counts.values()) - counts["caption_file_malformed_image"] == len(data["annotations"])


@pytest.mark.skipif(not COCO_TINY.is_dir(), reason="../shared/data/coco-tiny is not present")
def test_coco_tiny_crowd_excluded():
    path = COCO_TINY / "annotations" / "instances_val2017.json"
    raw = json.loads(path.read_text())
    crowd_ids = {a["id"] for a in raw["annotations"] if a["iscrowd"]}
    instances = coco.read_instances(path)
    kept_ids = {o.annotation_id for image in instances.objects.values() for o in image}
    assert len(instances.images) == len(raw["images"])
    assert instances.counts["crowd_annotations"] == len(crowd_ids)
    assert kept_ids.isdisjoint(crowd_ids)
    assert len(kept_ids) == len(raw["annotations"]) - len(crowd_ids)
