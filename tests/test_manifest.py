"""The manifest stage: image selection, speech join, splits and the written files."""

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from vgsalign import manifest
from vgsalign.config import load_params
from vgsalign.io import read_parquet_metadata
from vgsalign.layout import RunPaths

PROJECT = Path(__file__).resolve().parents[1]


def _speech_rows(rows):
    """Speech table as the speech readers return it; rows are (caption_id, image_id, text)."""
    return pd.DataFrame(
        {
            "caption_id": [r[0] for r in rows],
            "image_id": [r[1] for r in rows],
            "text": [r[2] for r in rows],
            "wav_path": [f"wav/{r[0]}.wav" for r in rows],
            "speaker": ["Phil"] * len(rows),
            "speed": [1.0] * len(rows),
            "sample_rate": [16000] * len(rows),
            "num_samples": [16000] * len(rows),
            "words": [[{"word": "a", "start_ms": 0.0, "end_ms": 100.0}] for _ in rows],
        }
    )


def test_first_image_ids_sorted():
    assert manifest.first_image_ids([5, 3, 9, 3, 1], 3).tolist() == [1, 3, 5]
    assert manifest.first_image_ids([5, 3, 9], None).tolist() == [3, 5, 9]


def test_validation_count_rule():
    assert manifest.validation_count(20, 0.05) == 1
    assert manifest.validation_count(50, 0.05) == 3  # 2.5 rounds half up
    assert manifest.validation_count(49, 0.05) == 2  # 2.45
    assert manifest.validation_count(2, 0.05) == 1  # at least one
    assert manifest.validation_count(10, 0.99) == 9  # at least one training image
    assert manifest.validation_count(1, 0.5) == 0


def test_split_train_images_seeded():
    ids = np.arange(100, 200)
    first = manifest.split_train_images(ids, 0.1, seed=0)
    again = manifest.split_train_images(ids[::-1], 0.1, seed=0)
    other = manifest.split_train_images(ids, 0.1, seed=1)
    assert (first == "val").sum() == 10
    assert first.index.tolist() == ids.tolist()
    assert first.equals(again)
    assert not first.equals(other)


def test_choose_test_captions_one_per_image():
    captions = pd.DataFrame({"caption_id": [11, 12, 13, 21, 22, 31], "image_id": [1, 1, 1, 2, 2, 3]})
    chosen = manifest.choose_test_captions(captions, seed=0)
    assert chosen["image_id"].tolist() == [1, 2, 3]
    assert chosen["caption_id"].tolist()[2] == 31
    assert set(chosen["caption_id"]) <= set(captions["caption_id"])
    shuffled = captions.sample(frac=1.0, random_state=4)
    assert manifest.choose_test_captions(shuffled, seed=0)["caption_id"].tolist() == chosen["caption_id"].tolist()
    # Over many seeds every caption of image 1 is drawn.
    drawn = {manifest.choose_test_captions(captions, seed=s)["caption_id"].iloc[0] for s in range(40)}
    assert drawn == {11, 12, 13}


def test_join_speech_skips():
    captions = pd.DataFrame(
        {"caption_id": [1, 2, 3, 4], "image_id": [10, 10, 20, 20], "caption": ["A dog.", "B", "C", "D"]}
    )
    speech = _speech_rows([(1, 10, ""), (1, 10, "again"), (2, 10, "b spoken"), (3, 99, "c"), (7, 20, "x")])
    joined, counts = manifest.join_speech(captions, speech)
    assert joined["caption_id"].tolist() == [1, 2]
    assert joined["text"].tolist() == ["A dog.", "b spoken"]  # empty spoken text falls back to the caption
    assert counts["duplicate_speech"] == 1
    assert counts["speech_without_caption"] == 1  # caption 7
    assert counts["caption_without_speech"] == 1  # caption 4
    assert counts["speech_image_mismatch"] == 1  # caption 3
    assert joined["words"].iloc[0] == [{"word": "a", "start_ms": 0.0, "end_ms": 100.0}]


def test_join_speech_missing_column():
    speech = _speech_rows([(1, 10, "x")]).drop(columns=["num_samples"])
    with pytest.raises(manifest.ManifestError, match="num_samples"):
        manifest.join_speech(pd.DataFrame({"caption_id": [1], "image_id": [10], "caption": ["x"]}), speech)


def _images(ids):
    return pd.DataFrame(
        {"image_id": ids, "file_name": [f"{i:012d}.jpg" for i in ids], "width": [64] * len(ids), "height": [48] * len(ids)}
    )


def test_assemble_split_missing_file_and_max_images(tmp_path):
    for image_id in (1, 3, 4):
        (tmp_path / f"{image_id:012d}.jpg").write_bytes(b"jpeg")
    images = _images([4, 1, 2, 3, 5])
    captions = pd.DataFrame(
        {"caption_id": [11, 12, 21, 31, 41], "image_id": [1, 1, 2, 3, 4], "caption": ["a", "b", "c", "d", "e"]}
    )
    speech = _speech_rows([(11, 1, "a"), (12, 1, "b"), (21, 2, "c"), (41, 4, "e")])
    rows, image_rows, counts = manifest.assemble_split(
        images,
        captions,
        speech,
        role="test",
        coco_split="val2014",
        image_dir=tmp_path,
        max_images=4,
        val_fraction=0.5,
        seed=0,
    )
    # max_images=4 keeps ids 1-4; id 2 has no file; id 3 has no speech.
    assert counts["image_file_missing"] == 1
    assert counts["image_without_speech"] == 1
    assert image_rows["image_id"].tolist() == [1, 4]
    assert rows["image_id"].tolist() == [1, 4]
    assert set(rows["split"]) == {"test"}
    assert set(rows["coco_split"]) == {"val2014"}
    assert image_rows["file_path"].iloc[1] == str(tmp_path / "000000000004.jpg")


def _write_coco(root, split, image_ids, captions_per_image=2, missing=()):
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / split).mkdir(parents=True, exist_ok=True)
    images = [{"id": i, "file_name": f"{i:012d}.jpg", "width": 64, "height": 48} for i in image_ids]
    for image in images:
        if image["id"] not in missing:
            (root / split / image["file_name"]).write_bytes(b"jpeg")
    captions = [
        {"id": i * 10 + k, "image_id": i, "caption": f"a dog number {k}"} for i in image_ids for k in range(captions_per_image)
    ]
    instances = {"images": images, "annotations": [], "categories": [{"id": 1, "name": "dog"}]}
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(instances))
    (root / "annotations" / f"captions_{split}.json").write_text(json.dumps({"images": images, "annotations": captions}))
    return captions


def test_run_writes_manifest(tmp_path, monkeypatch):
    root = tmp_path / "coco"
    train_captions = _write_coco(root, "train2014", list(range(1, 21)), missing=(7,))
    test_captions = _write_coco(root, "val2014", [101, 102, 103], captions_per_image=5)
    speech = {
        "train2014": _speech_rows([(c["id"], c["image_id"], c["caption"]) for c in train_captions]),
        "val2014": _speech_rows([(c["id"], c["image_id"], c["caption"]) for c in test_captions]),
    }
    monkeypatch.setattr(
        manifest, "load_speech", lambda params, paths, split, image_ids: (speech[split], {"json_unreadable": 2})
    )
    monkeypatch.chdir(tmp_path)
    params = load_params(
        [PROJECT / "params.yaml"],
        {"run": "unit", "data": {"coco_root": str(root), "val_fraction": 0.25}},
    )
    paths = RunPaths(params)
    manifest.run(params, paths)

    table = pq.read_table(paths.manifest)
    assert table.schema.names == manifest.CAPTIONS_SCHEMA.names
    assert table.schema.field("words").type == manifest.CAPTIONS_SCHEMA.field("words").type
    rows = table.to_pandas()
    metadata = read_parquet_metadata(paths.manifest)
    # 19 training images with files: round(0.25 * 19) = 5 to val.
    assert metadata["split_sizes"]["val"] == {"images": 5, "captions": 10}
    assert metadata["split_sizes"]["train"] == {"images": 14, "captions": 28}
    assert metadata["split_sizes"]["test"] == {"images": 3, "captions": 3}
    assert metadata["skips"]["train2014"]["image_file_missing"] == 1
    assert metadata["speech_skips"]["val2014"] == {"json_unreadable": 2}
    assert 7 not in set(rows["image_id"])
    assert rows.groupby("image_id")["split"].nunique().max() == 1

    images = pq.read_table(paths.images).to_pandas()
    assert len(images) == 22
    assert images.set_index("image_id").loc[101, "split"] == "test"
    assert read_parquet_metadata(paths.images)["split_sizes"] == metadata["split_sizes"]

    # Same seed, same manifest.
    manifest.run(params, paths)
    assert pq.read_table(paths.manifest).to_pandas().equals(rows)


def test_run_rejects_same_splits(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = load_params([PROJECT / "params.yaml"], {"data": {"test_split": "train2014"}})
    with pytest.raises(manifest.ManifestError, match="data.test_split"):
        manifest.run(params, RunPaths(params))


def test_load_speech_dispatch(tmp_path, monkeypatch):
    from vgsalign.speech import speechcoco, spokencoco

    calls = []

    def fake_reader(name):
        def read(source, **kwargs):
            calls.append((name, Path(source), kwargs))
            return _speech_rows([(1, 5, "a dog")]), {"missing_wav": 1}

        return read

    monkeypatch.setattr(speechcoco, "load_split", fake_reader("speechcoco"))
    monkeypatch.setattr(spokencoco, "load_split", fake_reader("spokencoco"))
    params = load_params([PROJECT / "params.yaml"], {"data": {"speech": {"root": str(tmp_path)}}})
    table, counts = manifest.load_speech(params, RunPaths(params), "val2014", image_ids=np.array([5, 9]))
    assert calls[-1] == ("speechcoco", tmp_path / "val2014", {"image_ids": [5, 9]})
    assert counts == {"missing_wav": 1}
    assert table["caption_id"].tolist() == [1]

    params = load_params(
        [PROJECT / "params.yaml"],
        {"data": {"speech": {"format": "spokencoco", "root": str(tmp_path), "alignments": "words.json"}}},
    )
    manifest.load_speech(params, RunPaths(params), "train2014")
    assert calls[-1] == (
        "spokencoco",
        tmp_path / "SpokenCOCO_train.json",
        {"alignments": "words.json", "image_ids": None},
    )
    manifest.load_speech(params, RunPaths(params), "val2014")
    assert calls[-1][1] == tmp_path / "SpokenCOCO_val.json"


def _write_speechcoco(split_dir, captions):
    """Per-caption SPEECH-COCO JSON and a 1 s silent WAV; word k of a caption starts at 100 + 200 k ms."""
    import soundfile

    (split_dir / "json").mkdir(parents=True)
    (split_dir / "wav").mkdir(parents=True)
    for caption in captions:
        stem = f"{caption['image_id']}_{caption['id']}_Phil_None_1-0"
        timecode = []
        for k, word in enumerate(caption["caption"].split()):
            onset = 100.0 + 200.0 * k
            timecode += [[onset, "SYL", ""], [onset, "SEPR", " "], [onset, "WORD", word], [onset, "PHO", "a"]]
        timecode.append([100.0 + 200.0 * len(caption["caption"].split()), "SYL", ""])
        record = {
            "duration": 1.0,
            "speaker": "Phil",
            "synthesisedCaption": caption["caption"],
            "timecode": timecode,
            "speed": 1.0,
            "wavFilename": f"{stem}.wav",
            "captionID": caption["id"],
            "imgID": caption["image_id"],
            "disfluency": ["None", ""],
        }
        (split_dir / "json" / f"{stem}.json").write_text(json.dumps(record))
        soundfile.write(split_dir / "wav" / f"{stem}.wav", np.zeros(16000, dtype=np.float32), 16000)


def _run_on_speechcoco(coco_root, speech_root):
    """Run the manifest stage of the paper's parameters on these COCO and SPEECH-COCO folders."""
    params = load_params(
        [PROJECT / "params.yaml"],
        {"run": "unit", "data": {"coco_root": str(coco_root), "speech": {"root": str(speech_root)}}},
    )
    paths = RunPaths(params)
    manifest.run(params, paths)
    return paths


@pytest.mark.parametrize("metadata_form", ["json", "sqlite"])
def test_run_with_speechcoco_reader(tmp_path, monkeypatch, metadata_form):
    # The real SPEECH-COCO reader, on files written in the documented format: per-caption
    # json/ files, or the split's database (train_2014.sqlite3) with no json/ folder.
    root = tmp_path / "coco"
    train_captions = _write_coco(root, "train2014", [1, 2, 3])
    test_captions = _write_coco(root, "val2014", [8, 9], captions_per_image=3)
    _write_speechcoco(tmp_path / "speech" / "train2014", train_captions)
    _write_speechcoco(tmp_path / "speech" / "val2014", test_captions[:-1])  # caption 92 has no speech
    if metadata_form == "sqlite":
        for split in ("train2014", "val2014"):
            database = _json_to_sqlite(tmp_path / "speech" / split)
            assert database.name == {"train2014": "train_2014.sqlite3", "val2014": "val_2014.sqlite3"}[split]
    monkeypatch.chdir(tmp_path)
    paths = _run_on_speechcoco(root, tmp_path / "speech")

    rows = pq.read_table(paths.manifest).to_pandas().set_index("caption_id")
    metadata = read_parquet_metadata(paths.manifest)
    assert metadata["split_sizes"]["test"] == {"images": 2, "captions": 2}
    assert metadata["split_sizes"]["train"]["captions"] + metadata["split_sizes"]["val"]["captions"] == 6
    assert metadata["skips"]["val2014"]["caption_without_speech"] == 1
    assert metadata["speech_skips"] == {"train2014": {}, "val2014": {}}
    words = list(rows.loc[10, "words"])
    assert [w["word"] for w in words] == ["a", "dog", "number", "0"]
    assert [(w["start_ms"], w["end_ms"]) for w in words] == [(100.0, 300.0), (300.0, 500.0), (500.0, 700.0), (700.0, 900.0)]
    assert rows.loc[10, "wav_path"] == str(tmp_path / "speech" / "train2014" / "wav" / "1_10_Phil_None_1-0.wav")
    assert rows.loc[10, "num_samples"] == 16000
    assert rows.loc[10, "sample_rate"] == 16000


def _write_quirky_coco(root):
    """COCO files with one case of each caption quirk; returns the number of caption annotations per split.

    train2014: images 1-7 in the instances file, image 4 without a size, no JPEG
    for image 3, two captions per image (ids 10 * image + k). The captions file
    also lists image 999999 (not in the instances file), a caption of the unlisted
    image 555, a caption without text and a second caption with id 10.
    val2014: images 101 and 102 with three captions each.
    """
    (root / "annotations").mkdir(parents=True)
    train_images = [{"id": i, "file_name": f"{i:012d}.jpg", "width": 64, "height": 48} for i in range(1, 8)]
    train_images[3] = {"id": 4, "file_name": "000000000004.jpg"}
    (root / "train2014").mkdir()
    for image in train_images:
        if image["id"] != 3:
            (root / "train2014" / image["file_name"]).write_bytes(b"jpeg")
    caption_images = [*train_images, {"id": 999999, "file_name": "000000999999.jpg", "width": 64, "height": 48}]
    train_captions = [
        {"id": image["id"] * 10 + k, "image_id": image["id"], "caption": f"a dog number {k}"}
        for image in caption_images
        for k in range(2)
    ]
    train_captions += [
        {"id": 5551, "image_id": 555, "caption": "an unlisted image"},
        {"id": 9001, "image_id": 1},
        {"id": 10, "image_id": 1, "caption": "a dog again"},
    ]
    instances = {"images": train_images, "annotations": [], "categories": [{"id": 1, "name": "dog"}]}
    (root / "annotations" / "instances_train2014.json").write_text(json.dumps(instances))
    captions_file = {"images": caption_images, "annotations": train_captions}
    (root / "annotations" / "captions_train2014.json").write_text(json.dumps(captions_file))

    test_images = [{"id": i, "file_name": f"{i:012d}.jpg", "width": 64, "height": 48} for i in (101, 102)]
    (root / "val2014").mkdir()
    for image in test_images:
        (root / "val2014" / image["file_name"]).write_bytes(b"jpeg")
    test_captions = [
        {"id": image["id"] * 10 + k, "image_id": image["id"], "caption": f"a cat number {k}"}
        for image in test_images
        for k in range(3)
    ]
    instances = {"images": test_images, "annotations": [], "categories": [{"id": 1, "name": "dog"}]}
    (root / "annotations" / "instances_val2014.json").write_text(json.dumps(instances))
    captions_file = {"images": test_images, "annotations": test_captions}
    (root / "annotations" / "captions_val2014.json").write_text(json.dumps(captions_file))
    return {"train2014": len(train_captions), "val2014": len(test_captions)}


def test_run_counts_every_caption(tmp_path, monkeypatch):
    root = tmp_path / "coco"
    annotations = _write_quirky_coco(root)
    # max_images 5 keeps the sized images 1, 2, 3, 5, 6. Speech: none for caption 21,
    # caption 50 with image 6, caption 8888 not in the captions file, caption 11 twice,
    # and speech for the captions of image 3, whose JPEG is missing.
    train_speech = [(10, 1, ""), (11, 1, ""), (11, 1, "again"), (20, 2, ""), (30, 3, ""), (31, 3, "")]
    train_speech += [(50, 6, ""), (51, 5, ""), (60, 6, ""), (61, 6, ""), (8888, 5, "")]
    test_speech = [(image * 10 + k, image, "") for image in (101, 102) for k in range(3)]
    speech = {"train2014": _speech_rows(train_speech), "val2014": _speech_rows(test_speech)}

    def read_speech(params, paths, split, image_ids):
        table = speech[split]
        assert set(table["image_id"]) <= set(image_ids)
        return table, {}

    monkeypatch.setattr(manifest, "load_speech", read_speech)
    monkeypatch.chdir(tmp_path)
    params = load_params(
        [PROJECT / "params.yaml"],
        {"run": "unit", "data": {"coco_root": str(root), "max_images": 5, "val_fraction": 0.25}},
    )
    paths = RunPaths(params)
    manifest.run(params, paths)

    rows = pq.read_table(paths.manifest).to_pandas()
    metadata = read_parquet_metadata(paths.manifest)
    assert metadata["skips"]["train2014"] == {
        "caption_duplicate_id": 1,
        "caption_file_malformed_image": 0,
        "caption_image_beyond_max_images": 2,
        "caption_image_file_missing": 2,
        "caption_image_not_in_instances": 2,
        "caption_image_without_size": 2,
        "caption_malformed": 1,
        "caption_not_drawn_for_test": 0,
        "caption_unknown_image": 1,
        "caption_without_speech": 1,
        "duplicate_speech": 1,
        "image_file_missing": 1,
        "image_without_size": 1,
        "image_without_speech": 0,
        "malformed_annotation": 0,
        "malformed_image": 0,
        "speech_image_mismatch": 1,
        "speech_without_caption": 1,
    }
    assert metadata["skips"]["val2014"]["caption_not_drawn_for_test"] == 4
    assert sorted(rows.loc[rows["coco_split"] == "train2014", "caption_id"]) == [10, 11, 20, 51, 60, 61]
    assert metadata["captions_read"] == annotations == {"train2014": 19, "val2014": 6}

    # Every caption read is used or counted under exactly one caption reason.
    for coco_split, read in annotations.items():
        used = int((rows["coco_split"] == coco_split).sum())
        skipped = sum(metadata["skips"][coco_split][reason] for reason in manifest.CAPTION_SKIP_REASONS)
        assert used + skipped == read, coco_split


def test_assemble_split_accounting_error(tmp_path, monkeypatch):
    # A join that loses a caption without counting it is reported as a bug.
    (tmp_path / "000000000001.jpg").write_bytes(b"jpeg")
    captions = pd.DataFrame({"caption_id": [11, 12], "image_id": [1, 1], "caption": ["a", "b"]})
    speech = _speech_rows([(11, 1, "a"), (12, 1, "b")])

    def lossy_join(captions, speech, known_caption_ids=None):
        joined, counts = original_join(captions, speech, known_caption_ids)
        return joined.iloc[:1], counts

    original_join = manifest.join_speech
    monkeypatch.setattr(manifest, "join_speech", lossy_join)
    with pytest.raises(RuntimeError, match=r"val2014 do not add up: 2 captions, 1 used, 0 skipped"):
        manifest.assemble_split(
            _images([1]), captions, speech, role="train", coco_split="val2014",
            image_dir=tmp_path, max_images=None, val_fraction=0.5, seed=0,
        )  # fmt: skip


def test_run_missing_image_counts_captions_once(tmp_path, monkeypatch):
    # The real SPEECH-COCO reader: speech of an image without a JPEG is not speech_without_caption.
    root = tmp_path / "coco"
    train_captions = _write_coco(root, "train2014", [1, 2, 3], captions_per_image=5, missing=(2,))
    test_captions = _write_coco(root, "val2014", [8, 9])
    _write_speechcoco(tmp_path / "speech" / "train2014", train_captions)
    _write_speechcoco(tmp_path / "speech" / "val2014", test_captions)
    monkeypatch.chdir(tmp_path)
    paths = _run_on_speechcoco(root, tmp_path / "speech")

    skips = read_parquet_metadata(paths.manifest)["skips"]["train2014"]
    assert skips["image_file_missing"] == 1
    assert skips["caption_image_file_missing"] == 5
    assert skips["speech_without_caption"] == 0
    assert skips["caption_without_speech"] == 0
    assert sum(skips[reason] for reason in manifest.CAPTION_SKIP_REASONS) == 5
    rows = pq.read_table(paths.manifest).to_pandas()
    assert sorted(rows.loc[rows["coco_split"] == "train2014", "image_id"].unique()) == [1, 3]


def _json_to_sqlite(split_dir):
    """Replace the json/ folder of a SPEECH-COCO split by the split's SQLite database."""
    from vgsalign.speech import speechcoco

    json_paths = sorted((split_dir / "json").glob("*.json"))
    captions = [speechcoco.read_caption_json(path) for path in json_paths]
    database = split_dir / speechcoco.database_name(split_dir.name)
    speechcoco.write_sqlite(database, captions)
    for path in json_paths:
        path.unlink()
    (split_dir / "json").rmdir()
    return database


def test_run_speechcoco_metadata_missing(tmp_path, monkeypatch):
    from vgsalign.speech.speechcoco import SpeechDataError

    root = tmp_path / "coco"
    _write_coco(root, "train2014", [1])
    _write_coco(root, "val2014", [8])
    (tmp_path / "speech" / "train2014" / "wav").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    params = load_params(
        [PROJECT / "params.yaml"],
        {"run": "unit", "data": {"coco_root": str(root), "speech": {"root": str(tmp_path / "speech")}}},
    )
    split_dir = tmp_path / "speech" / "train2014"
    with pytest.raises(SpeechDataError) as raised:
        manifest.run(params, RunPaths(params))
    message = str(raised.value)
    assert f"the folder {split_dir / 'json'} (one JSON file per caption)" in message
    assert f"the SQLite database {split_dir / 'train_2014.sqlite3'}" in message
    assert "\n" not in message


def test_test_caption_draw_not_warned(tmp_path, monkeypatch, caplog):
    # Leaving out all but one caption per test image is the protocol, not a skip.
    root = tmp_path / "coco"
    train_captions = _write_coco(root, "train2014", [1, 2, 3])
    test_captions = _write_coco(root, "val2014", [8, 9], captions_per_image=3)
    _write_speechcoco(tmp_path / "speech" / "train2014", train_captions)
    _write_speechcoco(tmp_path / "speech" / "val2014", test_captions)
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.INFO):
        paths = _run_on_speechcoco(root, tmp_path / "speech")
    assert read_parquet_metadata(paths.manifest)["skips"]["val2014"]["caption_not_drawn_for_test"] == 4
    warnings = [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]
    assert not [message for message in warnings if "caption_not_drawn_for_test" in message]
    assert "manifest val2014: captions left out by design: {'caption_not_drawn_for_test': 4}" in caplog.text
