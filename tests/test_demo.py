"""Demo corpus: masks against painted pixels, COCO files, determinism, caption nouns."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from textblob.taggers import PatternTagger

from vgsalign import demo
from vgsalign.config import load_params
from vgsalign.layout import RunPaths

# pycocotools 2.0.11 warns on every decode under NumPy 2; the warning is not about this code.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

ALL_CATEGORIES = list(demo.CATEGORY_STYLES)
DEMO = {
    "train_images": 6,
    "test_images": 4,
    "captions_per_image": 3,
    "categories": ALL_CATEGORIES,
    "objects_per_image": [1, 3],
    "image_size": [96, 200],
    "synonym_rate": 0.3,
}


def _params(project_root: Path, seed: int = 0) -> dict:
    overrides = {
        "run": "demo-test",
        "seed": seed,
        "data": {"source": "demo", "train_split": "train", "test_split": "test"},
        "demo": DEMO,
    }
    return load_params([project_root / "params.yaml"], overrides)


def _decode(segmentation, height: int, width: int) -> np.ndarray:
    """Rasterise a COCO segmentation independently of the generator's own mask."""
    if isinstance(segmentation, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    else:
        rle = {"size": segmentation["size"], "counts": segmentation["counts"].encode("ascii")}
    return mask_utils.decode(rle).astype(bool)


def _painted(pixels: np.ndarray, category: str, tolerance: float = 60.0) -> np.ndarray:
    """Pixels within ``tolerance`` (RGB distance) of a category's colour."""
    colour = np.array(demo.CATEGORY_STYLES[category].rgb, dtype=np.float64)
    return np.linalg.norm(pixels.astype(np.float64) - colour, axis=2) < tolerance


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return (a & b).sum() / max((a | b).sum(), 1)


def _images(count: int = 60) -> list[demo.DemoImage]:
    return [demo.draw_image(np.random.default_rng([7, index]), DEMO) for index in range(count)]


def test_masks_match_painted_pixels():
    seen = set()
    for image in _images():
        for obj in image.objects:
            seen.add(obj.category)
            annotation = _decode(obj.segmentation, image.height, image.width)
            same_colour = [other for other in image.objects if other.category == obj.category]
            painted = _painted(image.pixels, obj.category)
            if len(same_colour) == 1:
                assert _iou(annotation, painted) > 0.99, obj.category
            else:
                # Two objects of one colour: compare the union of their masks.
                union = np.logical_or.reduce([_decode(o.segmentation, image.height, image.width) for o in same_colour])
                assert _iou(union, painted) > 0.99, obj.category
    assert seen == set(ALL_CATEGORIES)


def test_ring_is_rle_with_hole():
    ring = demo.make_object("ring", 50.0, 50.0, 60.0, 0.0, 100, 100)
    assert isinstance(ring.segmentation, dict) and ring.segmentation["size"] == [100, 100]
    mask = _decode(ring.segmentation, 100, 100)
    assert not mask[50, 50]  # the hole
    # The ring covers radii 16.5 to 30 pixels from the centre.
    assert mask[50, 50 + 24]
    assert not mask[50, 50 + 32]
    disc = demo.make_object("circle", 50.0, 50.0, 60.0, 0.0, 100, 100)
    # Ring area = disc area minus the inner disc of radius 0.55: about 1 - 0.3025 of the disc.
    assert ring.area == pytest.approx(disc.area * (1 - 0.55**2), rel=0.05)


def test_objects_sized_and_apart():
    for image in _images():
        short_side = min(image.height, image.width)
        occupied = np.zeros((image.height, image.width), dtype=int)
        for obj in image.objects:
            assert 0.2 * short_side - 1e-9 <= obj.size <= 0.6 * short_side + 1e-9
            occupied += obj.mask
            x, y, w, h = obj.bbox
            assert x >= 0
            assert y >= 0
            assert x + w <= image.width
            assert y + h <= image.height
        assert occupied.max() <= 1
        assert 1 <= len(image.objects) <= 3


def test_corpus_files_are_coco(tmp_path, monkeypatch, project_root):
    monkeypatch.chdir(tmp_path)
    params = _params(project_root)
    paths = RunPaths(params)
    demo.run(params, paths)

    ids = {"image": set(), "annotation": set(), "caption": set()}
    for split, count in (("train", 6), ("test", 4)):
        coco = COCO(str(paths.instances_file(split)))
        assert len(coco.getImgIds()) == count
        assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ALL_CATEGORIES
        assert {c["supercategory"] for c in coco.loadCats(coco.getCatIds())} == {"shape"}
        for image in coco.loadImgs(coco.getImgIds()):
            ids["image"].add(image["id"])
            with Image.open(paths.image_dir(split) / image["file_name"]) as jpeg:
                assert jpeg.format == "JPEG"
                assert jpeg.mode == "RGB"
                assert jpeg.size == (image["width"], image["height"])
                pixels = np.asarray(jpeg)
            for annotation in coco.loadAnns(coco.getAnnIds(imgIds=image["id"])):
                ids["annotation"].add(annotation["id"])
                mask = coco.annToMask(annotation).astype(bool)
                assert annotation["iscrowd"] == 0
                assert annotation["area"] == mask.sum()
                category = coco.loadCats(annotation["category_id"])[0]["name"]
                others = coco.loadAnns(coco.getAnnIds(imgIds=image["id"], catIds=annotation["category_id"]))
                union = np.logical_or.reduce([coco.annToMask(a).astype(bool) for a in others])
                # JPEG compression (quality 95, no chroma subsampling) changes a few edge pixels.
                assert _iou(union, _painted(pixels, category)) > 0.95
        captions = json.loads(paths.captions_file(split).read_text())
        assert len(captions["annotations"]) == count * DEMO["captions_per_image"]
        assert captions["images"] == json.loads(paths.instances_file(split).read_text())["images"]
        ids["caption"].update(c["id"] for c in captions["annotations"])
    # Ids are unique across both splits.
    assert len(ids["image"]) == 10
    assert len(ids["caption"]) == 10 * DEMO["captions_per_image"]


def test_same_seed_same_bytes(tmp_path, monkeypatch, project_root):
    outputs = []
    for name, seed in (("first", 0), ("second", 0), ("other", 1)):
        folder = tmp_path / name
        folder.mkdir()
        monkeypatch.chdir(folder)
        params = _params(project_root, seed)
        demo.run(params, RunPaths(params))
        outputs.append(
            {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
        )
    assert outputs[0] == outputs[1]
    assert outputs[0].keys() == outputs[2].keys()
    assert outputs[0] != outputs[2]


def test_caption_nouns_tagged_as_nouns():
    tagger = PatternTagger()
    rng = np.random.default_rng(11)
    tagged_verbs = set()
    for image in _images(80):
        present = {obj.category for obj in image.objects}
        names = {}
        for category in present:
            style = demo.CATEGORY_STYLES[category]
            names.update({category: category, style.plural: category, **{s: category for s in style.synonyms}})
        for tokens in demo.make_captions(image, rng, 4, synonym_rate=0.4):
            text = demo.caption_text(tokens)
            tags = tagger.tag(text)
            assert [word for word, _ in tags] == text.split()
            for (word, is_noun), (_, tag) in zip(tokens, tags):
                if not is_noun:
                    continue
                assert word in names, f"{word!r} names no object of the image: {text!r}"
                if names[word] in demo.PATTERN_TAGGER_VERBS and word in (names[word], demo.CATEGORY_STYLES[names[word]].plural):
                    tagged_verbs.add((word, tag))
                    continue
                assert tag in ("NN", "NNS"), f"{word!r} tagged {tag} in {text!r}"
    # The documented exception: PatternTagger tags "cross" and "crosses" as verbs.
    assert {tag for _, tag in tagged_verbs} <= {"VB", "VBZ"}
    assert tagged_verbs


def test_caption_examples():
    image = demo.DemoImage(
        pixels=np.zeros((200, 300, 3), dtype=np.uint8),
        objects=[
            demo.make_object("circle", 60.0, 100.0, 110.0, 0.0, 200, 300),
            demo.make_object("square", 240.0, 100.0, 45.0, 0.0, 200, 300),
        ],
        texture="striped",
    )
    texts = {demo.caption_text(demo.caption_tokens(image, np.random.default_rng(i), 0.0)) for i in range(60)}
    # Sizes: 110 / 200 = 0.55 is large, 45 / 200 = 0.225 is small.
    assert "a large red circle to the left of a small blue square" in texts
    assert "a small blue square to the right of a large red circle" in texts
    assert "a large red circle on the left and a small blue square on the right" in texts
    assert "a large red circle and a small blue square on a striped background" in texts
    for text in texts:
        assert "red circle" in text
        assert "blue square" in text
        assert "small red" not in text
        assert "large blue" not in text
