"""Noun extraction: tag alignment, taggers, real COCO captions and frame intervals."""

import json
import re
from pathlib import Path

import nltk
import pandas as pd
import pyarrow.parquet as pq
import pytest

from vgsalign import manifest, nouns
from vgsalign.config import load_params
from vgsalign.io import read_parquet_metadata, write_parquet_atomic
from vgsalign.layout import RunPaths

PROJECT = Path(__file__).resolve().parents[1]
COCO_TINY = PROJECT / ".." / "shared" / "data" / "coco-tiny"
needs_coco_tiny = pytest.mark.skipif(not COCO_TINY.is_dir(), reason="../shared/data/coco-tiny is not present")


@pytest.fixture(scope="module")
def pattern():
    tagger, name = nouns.make_tagger("pattern")
    assert name == "pattern"
    return tagger


def test_normalize_word():
    assert nouns.normalize_word("Dog's,") == "dog's"
    assert nouns.normalize_word('"Close-up."') == "close-up"
    assert nouns.normalize_word("...") == ""
    assert nouns.normalize_word("CAFÉ") == "café"


def test_alignment_key():
    assert nouns.alignment_key("Children's") == "childrens"
    assert nouns.alignment_key("close-up.") == "closeup"
    assert nouns.alignment_key("Café") == "cafe"
    assert nouns.alignment_key("n't") == "nt"


ALIGN_CASES = [
    # (speech words, tagger tokens with tags, expected tag per word)
    (["A", "man"], [("A", "DT"), ("man", "NN")], ["DT", "NN"]),
    (
        ["Children's", "toy"],
        [("Children", "NNS"), ("'", "POS"), ("s", "PRP"), ("toy", "NN")],
        ["NNS", "NN"],
    ),
    (
        ["There", "are", "three", "peacocks"],
        [("There", "EX"), ("are", "VBP"), ("3", "CD"), ("peacocks", "NNS")],
        ["EX", "VBP", "CD", "NNS"],
    ),
    (["a", "hot", "dog"], [("a", "DT"), ("hot-dog", "NN")], ["DT", "NN", "NN"]),
    (["a", "um", "dog"], [("a", "DT"), ("dog", "NN")], ["DT", None, "NN"]),
    (["cats", "&", "dogs"], [("cats", "NNS"), ("&", "CC"), ("dogs", "NNS")], ["NNS", None, "NNS"]),
    (["ab"], [("a", "X"), ("b", "Y")], ["X"]),  # tie: first token
    (["can't", "see"], [("ca", "MD"), ("n't", "RB"), ("see", "VB")], ["MD", "VB"]),
]


@pytest.mark.parametrize("words, tagged, expected", ALIGN_CASES)
def test_align_tags_cases(words, tagged, expected):
    assert nouns.align_tags(words, tagged) == expected


def test_align_tags_no_tokens():
    assert nouns.align_tags(["dog"], []) == [None]


def _fake_tagger(text):
    # Tags every whitespace token NN: shows that fillers are removed after tagging.
    return [(token, "NN") for token in text.split()]


def _caption_rows(rows):
    """Manifest-like rows: (caption_id, image_id, text, [(word, start_ms, end_ms)], num_samples, sample_rate)."""
    return pd.DataFrame(
        {
            "caption_id": [r[0] for r in rows],
            "image_id": [r[1] for r in rows],
            "text": [r[2] for r in rows],
            "words": [[{"word": w, "start_ms": s, "end_ms": e} for w, s, e in r[3]] for r in rows],
            "num_samples": [r[4] for r in rows],
            "sample_rate": [r[5] for r in rows],
        }
    )


def test_caption_nouns_fillers_never_nouns():
    captions = _caption_rows([(1, 10, "a um dog", [("a", 0, 1), ("um", 1, 2), ("dog", 2, 3)], 100, 16000)])
    table, counts = nouns.caption_nouns(captions, _fake_tagger, ["NN"], progress=False)
    assert table["word"].tolist() == ["a", "dog"]
    assert table["word_index"].tolist() == [0, 2]
    assert table["is_last"].tolist() == [False, True]
    assert counts["fillers"] == 1
    assert counts["nouns"] == 2


def test_caption_nouns_no_words():
    captions = _caption_rows([(1, 10, "a dog", [], 100, 16000)])
    table, counts = nouns.caption_nouns(captions, _fake_tagger, ["NN"], progress=False)
    assert len(table) == 0
    assert counts["captions_without_nouns"] == 1


def _synthesiser_words(text):
    """Whitespace tokens without edge punctuation, case kept (the espeak-ng synthesiser's words)."""
    return [w for w in (re.sub(r"^\W+|\W+$", "", token) for token in text.split()) if w]


def _speechcoco_like_words(text):
    """Lower case, hyphens split, apostrophes dropped, digits spelled out."""
    digits = {"1": "one", "2": "two", "3": "three", "4": "four", "5": "five"}
    words = []
    for token in text.lower().replace("-", " ").replace("'", "").split():
        word = re.sub(r"^\W+|\W+$", "", token)
        if word:
            words.append(digits.get(word, word))
    return words


REAL_CAPTIONS = [
    # Captions of coco-tiny val2017 and the nouns (lower case) each tokenisation must yield.
    ("A man is in a kitchen making pizzas.", ["man", "kitchen", "pizzas"], ["man", "kitchen", "pizzas"]),
    (
        "Children's toy animals are strewn across a floor.",
        ["children's", "toy", "animals", "floor"],
        ["childrens", "toy", "animals", "floor"],
    ),
    ("There are 3 female peacocks together walking around.", ["peacocks"], ["peacocks"]),
    (
        "A close-up picture of a toilet with a fountain.",
        ["close-up", "picture", "toilet", "fountain"],
        ["close", "up", "picture", "toilet", "fountain"],
    ),
    (
        "A stop sign has been placed upside-down in the grass beside a building. ",
        ["sign", "grass", "building"],
        ["sign", "grass", "building"],
    ),
    (
        "Several toy animals - a bull, giraffe, deer and parakeet.",
        ["toy", "animals", "bull", "giraffe", "deer", "parakeet"],
        ["toy", "animals", "bull", "giraffe", "deer", "parakeet"],
    ),
]


@pytest.mark.parametrize("text, synthesiser_nouns, speechcoco_nouns", REAL_CAPTIONS)
def test_real_caption_nouns(pattern, text, synthesiser_nouns, speechcoco_nouns):
    for tokenize, expected in ((_synthesiser_words, synthesiser_nouns), (_speechcoco_like_words, speechcoco_nouns)):
        words = tokenize(text)
        captions = _caption_rows([(1, 1, text, [(w, 0.0, 1.0) for w in words], 100, 16000)])
        table, _ = nouns.caption_nouns(captions, pattern, ["NN", "NNS"], progress=False)
        assert table["word"].tolist() == expected, tokenize.__name__


@pytest.mark.parametrize("text, synthesiser_nouns, speechcoco_nouns", REAL_CAPTIONS)
def test_upper_case_caption_same_nouns(pattern, text, synthesiser_nouns, speechcoco_nouns):
    # SpokenCOCO transcripts are upper case; they must give SPEECH-COCO's nouns.
    upper = text.upper()
    words = _speechcoco_like_words(upper)
    captions = _caption_rows([(1, 1, upper, [(w, 0.0, 1.0) for w in words], 100, 16000)])
    table, _ = nouns.caption_nouns(captions, pattern, ["NN", "NNS"], progress=False)
    assert table["word"].tolist() == speechcoco_nouns


def test_upper_case_words_are_not_proper_nouns(pattern):
    words = ["A", "CAT", "SITS", "ON", "A", "RED", "STREET"]
    tags = nouns.tag_caption(words, " ".join(words), pattern)
    assert tags[1] == "NN"  # cat
    assert tags[6] == "NN"  # street, NNP when tagged in upper case
    assert tags[5] == "JJ"  # red


@needs_coco_tiny
def test_coco_tiny_every_word_tagged(pattern):
    captions = []
    for split in ("train2017", "val2017"):
        data = json.loads((COCO_TINY / "annotations" / f"captions_{split}.json").read_text())
        captions += [annotation["caption"] for annotation in data["annotations"]]
    assert len(captions) == 450
    for tokenize in (_synthesiser_words, _speechcoco_like_words):
        for text in captions:
            words = tokenize(text)
            tags = nouns.tag_caption(words, text, pattern)
            assert len(tags) == len(words)
            assert None not in tags, (tokenize.__name__, text, list(zip(words, tags)))


@needs_coco_tiny
def test_coco_tiny_synthesiser_words(pattern):
    # The synthesiser's own tokenizer, when that module is present.
    tts = pytest.importorskip("vgsalign.speech.tts")
    data = json.loads((COCO_TINY / "annotations" / "captions_val2017.json").read_text())
    for annotation in data["annotations"]:
        words = tts.caption_words(annotation["caption"])
        assert None not in nouns.tag_caption(words, annotation["caption"], pattern)


def test_extract_nouns_frames(pattern):
    words = [("A", 0.0, 100.0), ("dog", 100.0, 350.0), ("runs", 350.0, 600.0)]
    captions = _caption_rows(
        [
            (1, 10, "A dog runs", words, 16000, 16000),  # 101 frames
            (2, 20, "A dog runs", words, 8000, 8000),  # 16000 samples at 16 kHz: 101 frames
            (3, 30, "A dog runs", words, 100000, 16000),  # 626 frames: cut
        ]
    )
    args = {"convention": "paper", "window": 512, "crossing_words": "clip"}
    table, counts = nouns.extract_nouns(
        captions, pattern, tags=["NN", "NNS"], frame_args=args, hop_length=160, feature_sample_rate=16000, progress=False
    )
    assert table.columns.tolist() == nouns.NOUN_COLUMNS
    assert table["word"].tolist() == ["dog", "dog", "dog"]
    assert table["frame_start"].tolist() == [10, 10, 10]
    assert table["frame_end"].tolist() == [35, 35, 35]

    args = {"convention": "released_code", "window": 512, "crossing_words": "clip"}
    table, counts = nouns.extract_nouns(
        captions, pattern, tags=["NN", "NNS"], frame_args=args, hop_length=160, feature_sample_rate=16000, progress=False
    )
    # Start padding of 512 - 101 = 411 frames for the first two, none for the cut caption.
    assert table["frame_start"].tolist() == [421, 421, 10]
    assert table["frame_end"].tolist() == [446, 446, 35]
    assert counts["tagging"]["nouns"] == 3
    assert counts["frames"]["words_kept"] == 3


def test_make_tagger_invalid():
    with pytest.raises(nouns.TaggerError, match="pattern"):
        nouns.make_tagger("spacy")


def test_make_tagger_nltk_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])
    with pytest.raises(nouns.TaggerError, match="NLTK_DATA"):
        nouns.make_tagger("nltk")
    _, name = nouns.make_tagger("auto")
    assert name == "pattern"


def _install_tiny_nltk_model(root):
    from nltk.tag.perceptron import PerceptronTagger

    sentences = [[("a", "DT"), ("dog", "NN"), ("runs", "VBZ")], [("the", "DT"), ("cats", "NNS"), ("sleep", "VBP")]] * 5
    tagger = PerceptronTagger(load=False)
    tagger.train(sentences, nr_iter=3)
    location = root / "taggers" / "averaged_perceptron_tagger_eng"
    location.parent.mkdir(parents=True)
    tagger.save_to_json(lang="eng", loc=str(location))


def test_make_tagger_nltk_installed(tmp_path, monkeypatch):
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])
    _install_tiny_nltk_model(tmp_path)
    tagger, name = nouns.make_tagger("auto")
    assert name == "nltk"
    assert tagger("a dog runs") == [("a", "DT"), ("dog", "NN"), ("runs", "VBZ")]
    assert nouns.tag_caption(["the", "cats", "sleep"], "the cats sleep.", tagger) == ["DT", "NNS", "VBP"]


def test_run_writes_nouns(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = load_params([PROJECT / "params.yaml"], {"run": "unit", "nouns": {"tagger": "pattern"}})
    paths = RunPaths(params)
    rows = _caption_rows(
        [
            (1, 10, "A dog runs.", [("A", 0.0, 100.0), ("dog", 100.0, 350.0), ("runs", 350.0, 600.0)], 16000, 16000),
            (2, 10, "Cats sleep.", [("Cats", 0.0, 300.0), ("sleep", 300.0, 500.0)], 16000, 16000),
            (3, 20, "Quickly.", [("Quickly", 0.0, 300.0)], 16000, 16000),
        ]
    ).assign(split=["test", "train", "test"], coco_split="val2014", wav_path="x.wav", speaker="Phil", speed=1.0)
    write_parquet_atomic(paths.manifest, manifest.manifest_table(rows))
    nouns.run(params, paths)
    table = pq.read_table(paths.nouns).to_pandas()
    assert table["caption_id"].tolist() == [1]  # caption 2 is a training caption, caption 3 has no noun
    assert table["word"].tolist() == ["dog"]
    assert (table["frame_start"].iloc[0], table["frame_end"].iloc[0]) == (10, 35)
    metadata = read_parquet_metadata(paths.nouns)
    assert metadata["tagger"] == "pattern"
    assert metadata["counts"]["tagging"]["captions"] == 2
    assert metadata["counts"]["tagging"]["captions_without_nouns"] == 1
