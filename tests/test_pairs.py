"""Word-object pairing: vectors, the pairing rule on hand-made vectors, the stage, and coco-tiny end to end."""

import gzip
import json
import math
from fractions import Fraction
from pathlib import Path

import gensim.downloader
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from gensim.models import KeyedVectors
from PIL import Image, ImageDraw
from pycocotools.coco import COCO
from scipy import ndimage

from vgsalign import coco, manifest, nouns, pairs
from vgsalign.config import load_params
from vgsalign.io import write_parquet_atomic
from vgsalign.layout import RunPaths, names_vectors_file

PROJECT = Path(__file__).resolve().parents[1]
COCO_TINY = PROJECT / ".." / "shared" / "data" / "coco-tiny"
SQRT_HALF = math.sqrt(0.5)

# Hand-made 4-d vectors, chosen so that every similarity below is known exactly.
VECTORS = {
    "dog": [1.0, 0.0, 0.0, 0.0],
    "cat": [0.0, 0.0, 0.0, 1.0],
    "puppy": [3.0, 4.0, 0.0, 0.0],  # cos(puppy, dog) = 3 / 5, exact in floating point
    "animal": [1.0, 0.0, 0.0, 1.0],  # cos with dog = cos with cat = sqrt(1/2): a tie
    "car": [0.0, 0.0, 1.0, 0.0],  # cos with dog and cat = 0
    "table": [0.0, 0.0, 1.0, 0.0],
    "dining": [0.0, 0.0, 0.0, 1.0],
    "desk": [0.0, 0.0, 0.6, 0.8],  # cos(desk, mean(dining, table)) = 1.4 / sqrt(2)
    "hot": [0.0, 1.0, 0.0, 0.0],
    "sandwich": [1.0, 1.0, 0.0, 0.0],  # cos(sandwich, mean(hot, dog)) = 1
    "hair": [0.0, 0.0, 1.0, 0.0],
}


def _vectors(entries=VECTORS):
    vectors = KeyedVectors(vector_size=4)
    vectors.add_vectors(list(entries), np.array(list(entries.values()), dtype=np.float32))
    return vectors


# Categories present per image, in annotation order: (image_id, category_id, name).
PRESENT = [
    (1, 18, "dog"),
    (1, 17, "cat"),
    (2, 17, "cat"),
    (2, 18, "dog"),
    (3, 67, "dining table"),
    (5, 54, "hot dog"),
    (5, 62, "chair"),  # no word in the vocabulary
    (5, 89, "hair drier"),  # "drier" missing: the label is "hair" alone
]


def _present():
    rows = []
    for image_id, category_id, name in PRESENT:
        order = sum(1 for r in rows if r[0] == image_id)
        rows.append((image_id, category_id, name, order))
    return pd.DataFrame(rows, columns=["image_id", "category_id", "category_name", "label_order"])


# Nouns: (caption_id, image_id, word_index, word).
NOUNS = [
    (11, 1, 1, "puppy"),
    (11, 1, 4, "car"),
    (12, 1, 2, "animal"),
    (14, 1, 1, "puppy"),
    (14, 1, 3, "zebra"),
    (15, 1, 0, "zebra"),
    (21, 2, 1, "animal"),
    (31, 3, 1, "desk"),
    (41, 4, 1, "puppy"),
    (51, 5, 1, "sandwich"),
    (51, 5, 3, "dog's"),
]
CAPTIONS = [(11, 1), (12, 1), (13, 1), (14, 1), (15, 1), (21, 2), (31, 3), (41, 4), (51, 5)]


def _nouns():
    table = pd.DataFrame(NOUNS, columns=["caption_id", "image_id", "word_index", "word"])
    table["tag"] = "NN"
    table["start_ms"] = table["word_index"] * 100.0
    table["end_ms"] = table["start_ms"] + 90.0
    table["frame_start"] = table["word_index"] * 10
    table["frame_end"] = table["frame_start"] + 9
    return table


def _captions():
    return pd.DataFrame(CAPTIONS, columns=["caption_id", "image_id"])


def _pair(keep_oov=False, threshold=0.5):
    return pairs.pair_captions(
        _captions(), _nouns(), _present(), _vectors(), threshold=threshold, keep_oov_captions=keep_oov
    )


def test_pairs_by_hand():
    table, _, _ = _pair()
    got = {(r.caption_id, r.word): (r.category_name, r.similarity) for r in table.itertuples()}
    expected = {
        (11, "puppy"): ("dog", 0.6),
        (12, "animal"): ("dog", SQRT_HALF),  # tie: dog is first in image 1
        (21, "animal"): ("cat", SQRT_HALF),  # tie: cat is first in image 2
        (31, "desk"): ("dining table", 1.4 / math.sqrt(2)),
        (51, "sandwich"): ("hot dog", 1.0),
        (51, "dog's"): ("hot dog", SQRT_HALF),  # looked up as "dog"
    }
    assert set(got) == set(expected)
    for key, (name, similarity) in expected.items():
        assert got[key][0] == name, key
        assert got[key][1] == pytest.approx(similarity, abs=1e-6), key
    assert table["pair_id"].tolist() == list(range(len(table)))
    assert table.columns.tolist() == pairs.PAIR_COLUMNS
    row = table[table.caption_id == 11].iloc[0]
    assert (row.word_index, row.start_ms, row.end_ms, row.frame_start, row.frame_end) == (1, 100.0, 190.0, 10, 19)
    assert row.category_id == 18


def test_pairs_drop_counts():
    _, _, counts = _pair()
    assert counts["captions_read"] == 9
    assert counts["captions_dropped"] == {
        "no_word_times": 0, "no_nouns": 1, "oov_noun": 2, "no_nouns_in_vocabulary": 0, "no_objects": 1
    }
    assert counts["captions_kept"] == 5
    assert counts["captions_with_pairs"] == 5
    assert counts["nouns"]["below_threshold"] == 1  # "car"
    assert counts["nouns"]["paired"] == 6
    assert counts["label_words_missing"] == {"chair": ["chair"], "hair drier": ["drier"]}
    assert counts["labels_without_vector"] == ["chair"]


def test_captions_without_word_times_counted():
    # Every caption lacks word times: those without nouns count as no_word_times,
    # and those with nouns are paired as before.
    captions = _captions().assign(has_word_times=False)
    _, _, counts = pairs.pair_captions(
        captions, _nouns(), _present(), _vectors(), threshold=0.5, keep_oov_captions=False
    )
    assert counts["captions_dropped"]["no_word_times"] == 1
    assert counts["captions_dropped"]["no_nouns"] == 0
    assert counts["captions_with_pairs"] == 5


def test_pairs_keep_oov_captions():
    table, _, counts = _pair(keep_oov=True)
    assert counts["captions_dropped"]["oov_noun"] == 0
    assert counts["captions_dropped"]["no_nouns_in_vocabulary"] == 1  # caption 15: only "zebra"
    assert counts["nouns"]["out_of_vocabulary"] == 2
    caption_14 = table[table.caption_id == 14]
    assert caption_14["word"].tolist() == ["puppy"]


def test_pairs_threshold_inclusive():
    # 0.6 is kept at threshold 0.6 and dropped just above it.
    table, _, _ = _pair(threshold=0.6)
    assert (11, "puppy") in set(zip(table.caption_id, table.word))
    table, _, _ = _pair(threshold=0.6000001)
    assert (11, "puppy") not in set(zip(table.caption_id, table.word))


def test_similarities_table():
    _, similarities, _ = _pair()
    assert similarities.columns.tolist() == pairs.SIMILARITY_COLUMNS
    car = similarities[(similarities.caption_id == 11) & (similarities.word == "car")]
    assert car["category_name"].tolist() == ["dog", "cat"]
    assert car["similarity"].tolist() == [0.0, 0.0]
    assert car["is_best"].tolist() == [True, False]
    assert car["paired"].tolist() == [False, False]
    hair = similarities[(similarities.caption_id == 51) & (similarities.category_name == "hair drier")]
    assert hair["similarity"].tolist() == [0.0, 0.0]  # sandwich and dog against "hair" alone
    assert "chair" not in set(similarities["category_name"])
    assert similarities.loc[similarities.word == "dog's", "vector_word"].unique().tolist() == ["dog"]


def test_multiword_label_matches_gensim():
    vectors = _vectors()
    unit, _ = pairs.label_vectors({67: "dining table", 54: "hot dog"}, vectors)
    desk = vectors["desk"] / np.linalg.norm(vectors["desk"])
    assert float(desk @ unit[67]) == pytest.approx(vectors.n_similarity(["desk"], ["dining", "table"]), abs=1e-6)
    assert float(desk @ unit[67]) == pytest.approx(1.4 / math.sqrt(2), abs=1e-6)


def test_lookup_forms():
    assert pairs.lookup_forms("dog's") == ["dog's", "dog"]
    assert pairs.lookup_forms("hot-dog") == ["hot-dog", "hot_dog", "hotdog"]
    assert pairs.lookup_forms("dogs'") == ["dogs'", "dogs"]
    assert pairs.vector_word("zebra", _vectors()) is None


# -- vectors files -------------------------------------------------------------------


@pytest.mark.parametrize("name, binary", [("v.bin", True), ("v.txt", False), ("v.vec", False), ("v.w2v", True)])
def test_load_word2vec_formats(tmp_path, name, binary):
    path = tmp_path / name
    _vectors().save_word2vec_format(str(path), binary=binary)
    loaded, source = pairs.load_vectors(str(path))
    assert source == str(path)
    assert np.allclose(loaded["desk"], VECTORS["desk"])


def test_load_native_and_gzip(tmp_path):
    native = tmp_path / "v.kv"
    _vectors().save(str(native))
    assert np.allclose(pairs.load_vectors(str(native))[0]["puppy"], VECTORS["puppy"])
    text = tmp_path / "v.txt"
    _vectors().save_word2vec_format(str(text), binary=False)
    packed = tmp_path / "v.txt.gz"
    packed.write_bytes(gzip.compress(text.read_bytes()))
    assert np.allclose(pairs.load_vectors(str(packed))[0]["hot"], VECTORS["hot"])


def test_load_vectors_errors(tmp_path):
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    with pytest.raises(pairs.VectorsError, match="empty.bin is empty"):
        pairs.load_vectors(str(empty))
    wrong = tmp_path / "notes.txt"
    wrong.write_text("hello world\n")
    with pytest.raises(pairs.VectorsError, match="notes.txt is neither a word2vec file"):
        pairs.load_vectors(str(wrong))
    truncated = tmp_path / "cut.bin"
    full = tmp_path / "full.bin"
    _vectors().save_word2vec_format(str(full), binary=True)
    truncated.write_bytes(full.read_bytes()[:40])
    with pytest.raises(pairs.VectorsError, match="cannot read word vectors file .*cut.bin"):
        pairs.load_vectors(str(truncated))
    with pytest.raises(pairs.VectorsError, match="not found: .*GoogleNews.bin"):
        pairs.load_vectors(str(tmp_path / "GoogleNews.bin"))
    with pytest.raises(pairs.VectorsError, match="is a directory"):
        pairs.load_vectors(str(tmp_path))


def test_load_vectors_offline_download(monkeypatch):
    def offline(name):
        raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(gensim.downloader, "load", offline)
    with pytest.raises(pairs.VectorsError, match="'glove-wiki-gigaword-50'.*network access"):
        pairs.load_vectors("glove-wiki-gigaword-50")


# -- self-trained vectors -----------------------------------------------------------------


def _manifest_rows(texts):
    return pd.DataFrame(
        {
            "text": texts,
            "words": [[{"word": w, "start_ms": 0.0, "end_ms": 1.0} for w in text.split()] for text in texts],
        }
    )


def test_caption_sentences_normalised():
    rows = _manifest_rows(["A Dog's bowl.", "Two cats,"])
    rows.loc[1, "words"] = []  # no word time stamps: the text is split instead
    assert pairs.caption_sentences(rows) == [["a", "dog's", "bowl"], ["two", "cats"]]


def test_word2vec_deterministic():
    sentences = [["a", "dog", "on", "a", "table"], ["a", "cat", "near", "a", "dog"]] * 20
    settings = {"vector_size": 8, "window": 2, "min_count": 1, "epochs": 3}
    first = pairs.train_word2vec(sentences, settings, seed=0)
    second = pairs.train_word2vec(sentences, settings, seed=0)
    other = pairs.train_word2vec(sentences, settings, seed=1)
    assert set(first.key_to_index) == {"a", "dog", "on", "table", "cat", "near"}
    assert np.array_equal(first.vectors, second.vectors)
    assert not np.array_equal(first.vectors, other.vectors)


# -- the stage on a hand-made COCO split ----------------------------------------------------


def _write_split(root):
    """A val2014 split with two images: dog (two overlapping boxes) + cat, and an image with only a crowd."""
    (root / "annotations").mkdir(parents=True)
    images = [{"id": 1, "file_name": "1.jpg", "height": 20, "width": 30}, {"id": 2, "file_name": "2.jpg", "height": 20, "width": 30}]
    annotations = [
        {"id": 1, "image_id": 1, "category_id": 17, "iscrowd": 0, "segmentation": [[20, 0, 30, 0, 30, 5, 20, 5]]},
        {"id": 2, "image_id": 1, "category_id": 18, "iscrowd": 0, "segmentation": [[0, 0, 10, 0, 10, 10, 0, 10]]},
        {"id": 3, "image_id": 1, "category_id": 18, "iscrowd": 0, "segmentation": [[5, 5, 15, 5, 15, 15, 5, 15]]},
        {"id": 4, "image_id": 2, "category_id": 18, "iscrowd": 1, "segmentation": {"size": [20, 30], "counts": [0, 600]}},
    ]
    categories = [{"id": 17, "name": "cat"}, {"id": 18, "name": "dog"}]
    data = {"images": images, "annotations": annotations, "categories": categories}
    (root / "annotations" / "instances_val2014.json").write_text(json.dumps(data))


def test_run_writes_outputs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write_split(tmp_path / "coco")
    vectors_file = tmp_path / "vectors.kv"
    _vectors().save(str(vectors_file))
    params = load_params(
        [PROJECT / "params.yaml"],
        {"run": "unit", "data": {"coco_root": str(tmp_path / "coco")}, "pairs": {"vectors": str(vectors_file)}},
    )
    paths = RunPaths(params)
    rows = pd.DataFrame(
        {
            "caption_id": [100, 200],
            "image_id": [1, 2],
            "split": "test",
            "coco_split": "val2014",
            "text": ["a puppy and a cat", "a dog"],
            "wav_path": "x.wav",
            "speaker": "Phil",
            "speed": 1.0,
            "sample_rate": 16000,
            "num_samples": 16000,
            "words": [[], []],
        }
    )
    write_parquet_atomic(paths.manifest, manifest.manifest_table(rows))
    images = pd.DataFrame(
        {"image_id": [1, 2], "coco_split": "val2014", "split": "test", "file_path": "x.jpg", "width": 30, "height": 20}
    )
    write_parquet_atomic(paths.images, manifest.images_table(images))
    noun_rows = pd.DataFrame(
        {
            "caption_id": [100, 100, 200],
            "image_id": [1, 1, 2],
            "word_index": [1, 4, 1],
            "word": ["puppy", "cat", "dog"],
            "tag": "NN",
            "start_ms": [100.0, 400.0, 100.0],
            "end_ms": [200.0, 500.0, 200.0],
            "frame_start": [10, 40, 10],
            "frame_end": [20, 50, 20],
        }
    )
    write_parquet_atomic(paths.nouns, noun_rows, metadata={"tagger": "pattern", "frames": {"convention": "paper"}})

    pairs.run(params, paths)

    table = pq.read_table(paths.pairs).to_pandas()
    assert list(zip(table.word, table.category_name)) == [("puppy", "dog"), ("cat", "cat")]
    masks = pq.read_table(paths.masks).to_pandas()
    assert list(zip(masks.image_id, masks.category_name)) == [(1, "cat"), (1, "dog")]
    dog = masks[masks.category_name == "dog"].iloc[0]
    assert dog.area_fraction == pytest.approx((100 + 100 - 25) / 600)  # two 10 x 10 boxes overlapping 5 x 5
    summary = json.loads(paths.pairs_summary.read_text())
    assert summary["captions_dropped"]["no_objects"] == 1  # image 2: crowd only
    assert summary["pairs_per_category"] == {"cat": 1, "dog": 1}
    assert summary["vectors_source"] == str(vectors_file)
    assert summary["tagger"] == "pattern"
    assert summary["masks"]["crowd_only_categories"] == 1
    similarities = pq.read_table(paths.similarities).to_pandas()
    assert len(similarities) == 4  # 2 nouns x 2 labels


def test_run_self_trained(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write_split(tmp_path / "coco")
    params = load_params(
        [PROJECT / "params.yaml"],
        {
            "run": "unit",
            "data": {"coco_root": str(tmp_path / "coco")},
            "pairs": {"vectors": None, "word2vec": {"vector_size": 8, "epochs": 2}},
        },
    )
    paths = RunPaths(params)

    rows = pd.DataFrame(
        {
            "caption_id": [100],
            "image_id": [1],
            "split": "test",
            "coco_split": "val2014",
            "text": ["a dog and a cat"],
            "wav_path": "x.wav",
            "speaker": "Phil",
            "speed": 1.0,
            "sample_rate": 16000,
            "num_samples": 16000,
            "words": [[]],
        }
    )
    write_parquet_atomic(paths.manifest, manifest.manifest_table(rows))
    images = pd.DataFrame({"image_id": [1], "coco_split": "val2014", "split": "test", "file_path": "x.jpg", "width": 30, "height": 20})
    write_parquet_atomic(paths.images, manifest.images_table(images))
    noun_rows = pd.DataFrame(
        {"caption_id": [100], "image_id": [1], "word_index": [1], "word": ["dog"], "tag": "NN", "start_ms": [0.0],
         "end_ms": [1.0], "frame_start": [0], "frame_end": [1]}
    )
    write_parquet_atomic(paths.nouns, noun_rows, metadata={"tagger": "pattern"})

    pairs.run(params, paths)

    summary = json.loads(paths.pairs_summary.read_text())
    assert summary["vectors_source"] == "self-trained"
    assert summary["vectors_self_trained"] is True
    saved = KeyedVectors.load(str(paths.word_vectors))
    assert set(saved.key_to_index) == {"a", "dog", "and", "cat"}
    # "dog" against the label "dog": the same vector, similarity 1.
    table = pq.read_table(paths.pairs).to_pandas()
    assert table.loc[table.category_name == "dog", "similarity"].iloc[0] == pytest.approx(1.0)


# -- acceptance: coco-tiny with hand-timed speech -------------------------------------------

WORD_MS = 350.0  # every word lasts 350 ms; word k starts at 20 + 350 k ms


def _timed_words(text):
    words = [w for w in (nouns.normalize_word(t) for t in text.split()) if w]
    return [{"word": w, "start_ms": 20.0 + WORD_MS * k, "end_ms": 20.0 + WORD_MS * (k + 1)} for k, w in enumerate(words)]


def _tiny_speech(split):
    captions, _ = coco.read_captions(COCO_TINY / "annotations" / f"captions_{split}.json")
    words = [_timed_words(text) for text in captions["caption"]]
    return pd.DataFrame(
        {
            "caption_id": captions["caption_id"],
            "image_id": captions["image_id"],
            "text": captions["caption"],
            "wav_path": [f"{split}/{c}.wav" for c in captions["caption_id"]],
            "speaker": "Phil",
            "speed": 1.0,
            "sample_rate": 16000,
            # Audio lasts until 200 ms after the last word.
            "num_samples": [int((w[-1]["end_ms"] + 200.0) * 16) for w in words],
            "words": words,
        }
    )


def _tiny_vectors(manifest_rows, labels):
    """Random 300-d vectors for every caption word; a noun spelled like a label word gets that word's vector."""
    rng = np.random.default_rng(0)
    vocabulary = sorted({w["word"] for words in manifest_rows["words"] for w in words} | {w for l in labels for w in l.split()})
    vectors = KeyedVectors(vector_size=300)
    vectors.add_vectors(vocabulary, rng.standard_normal((len(vocabulary), 300)).astype(np.float32))
    return vectors


def _independent_frames(start_ms, end_ms, num_samples, convention, is_last):
    real = 1 + num_samples // 160
    if convention == "paper":
        first, last = math.floor(start_ms / 10), math.ceil(end_ms / 10)
        return first, min(last, 512)
    first = math.ceil(start_ms / 10)
    last = first + 2 if is_last else math.ceil(end_ms / 10)
    offset = max(512 - real, 0)
    return first + offset, min(last + offset, 512)


def _reference_mask(api, image_id, category_id, height, width):
    """Union of the non-crowd instances with pycocotools' own COCO API (annToMask)."""
    union = np.zeros((height, width), dtype=np.uint8)
    for annotation in api.loadAnns(api.getAnnIds(imgIds=image_id, catIds=category_id, iscrowd=False)):
        union |= api.annToMask(annotation)
    return union


def _pil_polygons(api, image_id, category_id, height, width):
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for annotation in api.loadAnns(api.getAnnIds(imgIds=image_id, catIds=category_id, iscrowd=False)):
        for polygon in annotation["segmentation"]:
            draw.polygon(list(zip(polygon[::2], polygon[1::2])), fill=1)
    return np.array(canvas, dtype=bool)


@pytest.mark.skipif(not COCO_TINY.is_dir(), reason="../shared/data/coco-tiny is not present")
@pytest.mark.parametrize("convention", ["paper", "released_code"])
def test_coco_tiny_acceptance(tmp_path, monkeypatch, convention):
    monkeypatch.chdir(tmp_path)
    speech = {split: _tiny_speech(split) for split in ("train2017", "val2017")}
    monkeypatch.setattr(manifest, "load_speech", lambda params, paths, split, image_ids: (speech[split], {}))
    params = load_params(
        [PROJECT / "params.yaml"],
        {
            "run": "tiny",
            "data": {"coco_root": str(COCO_TINY), "train_split": "train2017", "test_split": "val2017"},
            "nouns": {"tagger": "pattern"},
            "frames": {"convention": convention, "crossing_words": "clip"},
            "pairs": {"vectors": str(tmp_path / "vectors.kv")},
        },
    )
    paths = RunPaths(params)
    manifest.run(params, paths)
    rows = pq.read_table(paths.manifest).to_pandas()
    api = COCO(str(COCO_TINY / "annotations" / "instances_val2017.json"))
    labels = [category["name"] for category in api.loadCats(api.getCatIds())]
    _tiny_vectors(rows, labels).save(str(tmp_path / "vectors.kv"))
    nouns.run(params, paths)
    pairs.run(params, paths)

    table = pq.read_table(paths.pairs).to_pandas()
    masks = pq.read_table(paths.masks).to_pandas().set_index(["image_id", "category_id"])
    test = rows[rows.split == "test"].set_index("caption_id")
    assert len(test) == 40

    # Independent pairing: with random 300-d vectors (unrelated words have |cos| < 0.3), a noun pairs
    # exactly when it is a word of a label present in the image: cos 1 for the label itself, about
    # 0.7 for a two-word label.
    noun_table = pq.read_table(paths.nouns).to_pandas()
    expected = {}
    for noun in noun_table.itertuples():
        present = {api.cats[a["category_id"]]["name"] for a in api.imgToAnns[noun.image_id] if not a["iscrowd"]}
        if not present:
            continue  # the caption is dropped: no objects
        matches = sorted((len(label.split()), label) for label in present if noun.word in label.split())
        if matches:
            expected[(noun.caption_id, noun.word_index)] = matches[0][1]
    got = dict(zip(zip(table.caption_id, table.word_index), table.category_name))
    assert got == expected
    assert len(got) >= 15

    for pair in table.itertuples():
        # Word interval: the hand-assigned times, independently converted.
        caption = test.loc[pair.caption_id]
        word = caption.words[pair.word_index]
        assert word["word"] == pair.word
        assert (pair.start_ms, pair.end_ms) == (word["start_ms"], word["end_ms"])
        is_last = pair.word_index == len(caption.words) - 1
        expected = _independent_frames(word["start_ms"], word["end_ms"], caption.num_samples, convention, is_last)
        assert (pair.frame_start, pair.frame_end) == expected, pair

        # Mask: pycocotools' own union, checked against PIL polygons, then resized independently.
        mask_row = masks.loc[(pair.image_id, pair.category_id)]
        height, width = int(mask_row.height), int(mask_row.width)
        reference = _reference_mask(api, pair.image_id, pair.category_id, height, width)
        assert mask_row.area_fraction == pytest.approx(reference.sum() / (height * width))
        # PIL fills polygon borders and self-intersections differently from pycocotools, so the two
        # rasterisations may differ on the edges and, for at most 2 % of the area on coco-tiny, in slivers.
        drawn = _pil_polygons(api, pair.image_id, pair.category_id, height, width)
        differing = reference.astype(bool) ^ drawn
        edge_band = ndimage.binary_dilation(drawn, iterations=1) & ~ndimage.binary_erosion(drawn, iterations=1)
        assert (differing & ~edge_band).sum() <= 0.02 * drawn.sum(), "pixels differ away from the polygon edges"

        rows_224 = [math.floor(Fraction(2 * i + 1, 448) * height) for i in range(224)]
        columns_224 = [math.floor(Fraction(2 * i + 1, 448) * width) for i in range(224)]
        nearest = reference[np.ix_(rows_224, columns_224)].astype(bool)
        assert np.array_equal(coco.decode_mask(mask_row.mask_paper), nearest)

        bilinear = torch.nn.functional.interpolate(
            torch.from_numpy(reference.astype(np.float64))[None, None], size=(224, 224), mode="bilinear", align_corners=False
        )[0, 0].numpy()
        released = coco.decode_mask(mask_row.mask_released)
        decided = np.abs(bilinear - 0.01) > 1e-9
        assert np.array_equal(released[decided], (bilinear >= 0.01)[decided])


def test_similarity_histogram_counts(tmp_path):
    _, similarities, _ = _pair()
    counts = pairs.plot_similarity_histogram(similarities, 0.5, tmp_path / "similarities.png", bins=4)
    # Bins [-1, -0.5), [-0.5, 0), [0, 0.5), [0.5, 1]. Five similarities are 0 (car x dog, car x cat,
    # puppy x cat, sandwich x hair drier, dog's x hair drier). The other eight lie in 0.6 .. 1.
    # Best per noun: car's best is 0, and the six paired nouns are >= 0.6.
    assert counts["every"].tolist() == [0, 0, 5, 8]
    assert counts["best"].tolist() == [0, 0, 1, 6]
    assert (tmp_path / "similarities.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "spec, is_file",
    [
        ("word2vec-google-news-300", False),
        ("glove-wiki-gigaword-100", False),
        ("vectors.model", True),
        ("GoogleNews-vectors-negative300.bin", True),
        ("data/vectors", True),
    ],
)
def test_vectors_file_or_download_name(spec, is_file):
    assert names_vectors_file(spec) is is_file


def test_missing_local_model_file_is_not_downloaded(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(pairs.VectorsError, match="word vectors file not found: vectors.model"):
        pairs.load_vectors("vectors.model")
