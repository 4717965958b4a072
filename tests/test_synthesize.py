"""Stage synthesize_speech: COCO captions to SPEECH-COCO files, resuming, selection, determinism."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile

from vgsalign.config import load_params
from vgsalign.layout import RunPaths
from vgsalign.speech import speechcoco, synthesize, tts

pytest.importorskip("espeakng_loader", reason="espeakng-loader (optional extra 'tts') is not installed")

CAPTIONS = {
    101: (7, "A red circle on the left of a blue square."),
    102: (7, "Two  dogs & a cat,   sitting on the grass"),
    103: (3, "a large green triangle"),
}


def _params(project_root: Path, max_images: int | None = None, **synthesis) -> dict:
    overrides = {
        "run": "synth",
        "data": {
            "source": "coco",
            "coco_root": "coco",
            "train_split": "train2014",
            "test_split": "val2014",
            "max_images": max_images,
            "speech": {"source": "synthesize"},
        },
        "synthesis": {"voices": ["en-us", "en-gb"], **synthesis},
    }
    return load_params([project_root / "params.yaml"], overrides)


def _write_captions(path: Path, captions: dict[int, tuple[int, str]], image_ids=None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image_ids = sorted({image for image, _ in captions.values()}) if image_ids is None else image_ids
    annotations = [{"id": cid, "image_id": image, "caption": text} for cid, (image, text) in captions.items()]
    path.write_text(json.dumps({"images": [{"id": i} for i in image_ids], "annotations": annotations}))


@pytest.fixture
def run_dir(tmp_path, monkeypatch, project_root):
    monkeypatch.chdir(tmp_path)
    params = _params(project_root)
    paths = RunPaths(params)
    _write_captions(paths.captions_file("train2014"), CAPTIONS)
    _write_captions(paths.captions_file("val2014"), {201: (9, "a dog")})
    return params, paths


def _file_bytes(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def test_three_captions_end_to_end(run_dir):
    params, paths = run_dir
    summary = synthesize.run(params, paths, workers=1)
    assert summary["train2014"] == {"synthesized": 3, "stale_files_removed": 0}
    assert summary["val2014"] == {"synthesized": 1, "stale_files_removed": 0}

    frame, skips = speechcoco.load_split(paths.speech_dir("train2014"), progress=False)
    assert skips == {}
    assert list(frame["caption_id"]) == [103, 101, 102]  # sorted by image id, then caption id
    for row in frame.itertuples():
        image_id, text = CAPTIONS[row.caption_id]
        assert row.image_id == image_id
        assert row.text == tts.normalize_text(text)
        assert [word["word"] for word in row.words] == tts.caption_words(text)
        assert (row.speaker, row.speed) == synthesize.choose_voice(0, row.caption_id, ["en-us", "en-gb"], [0.9, 1.0, 1.1])
        assert row.sample_rate == 16000
        duration_ms = 1000 * row.num_samples / row.sample_rate
        starts = [word["start_ms"] for word in row.words]
        assert starts == sorted(starts)
        for word in row.words:
            assert 0 <= word["start_ms"] < word["end_ms"] <= duration_ms
        waveform, rate = soundfile.read(row.wav_path)
        assert rate == 16000
        assert len(waveform) == row.num_samples
        assert np.abs(waveform).max() > 0.05

    record = json.loads(Path(frame.loc[0, "wav_path"].replace("/wav/", "/json/").replace(".wav", ".json")).read_text())
    assert sorted(record) == sorted(speechcoco.JSON_KEYS)
    assert record["wavFilename"] == Path(frame.loc[0, "wav_path"]).name


def test_rerun_reuses_and_repairs(run_dir):
    params, paths = run_dir
    synthesize.run(params, paths, workers=1)
    split_dir = paths.speech_dir("train2014")
    before = _file_bytes(split_dir)
    times = {path: path.stat().st_mtime_ns for path in split_dir.rglob("*.json")}

    summary = synthesize.run(params, paths, workers=1)
    assert summary["train2014"] == {"reused": 3, "stale_files_removed": 0}
    assert {path: path.stat().st_mtime_ns for path in split_dir.rglob("*.json")} == times

    # An interrupted run: one WAV lost, one JSON truncated, one temporary file left behind.
    wavs = sorted((split_dir / "wav").glob("*.wav"))
    wavs[0].unlink()
    jsons = sorted((split_dir / "json").glob("*.json"))
    jsons[1].write_text(jsons[1].read_text()[:40])
    (split_dir / "wav" / f".{wavs[2].name}.abc123.tmp.wav").write_bytes(b"partial")
    summary = synthesize.run(params, paths, workers=1)
    assert summary["train2014"] == {"reused": 1, "synthesized": 2, "stale_files_removed": 1}
    assert _file_bytes(split_dir) == before


def test_changed_rate_synthesizes_again(run_dir, project_root):
    params, paths = run_dir
    synthesize.run(params, paths, workers=1)
    faster = _params(project_root, words_per_minute=200)
    summary = synthesize.run(faster, RunPaths(faster), workers=1)
    assert summary["train2014"] == {"synthesized": 3, "stale_files_removed": 0}
    settings = json.loads((paths.speech_dir("train2014") / "synthesis.json").read_text())
    assert settings["words_per_minute"] == 200
    assert settings["sample_rate"] == 16000


def test_changed_voices_remove_stale_files(run_dir, project_root):
    params, paths = run_dir
    synthesize.run(params, paths, workers=1)
    params = _params(project_root, voices=["en-gb"])
    summary = synthesize.run(params, RunPaths(params), workers=1)
    names = sorted(path.name for path in (paths.speech_dir("train2014") / "wav").iterdir())
    assert len(names) == 3
    assert all("_en-gb_" in name for name in names)
    choices = [synthesize.choose_voice(0, caption_id, ["en-us", "en-gb"], [0.9, 1.0, 1.1]) for caption_id in CAPTIONS]
    moved = sum(voice == "en-us" for voice, _ in choices)
    # Each caption that was spoken by en-us leaves a stale JSON and WAV.
    assert summary["train2014"]["stale_files_removed"] == 2 * moved


def test_max_images_first_ids(tmp_path, monkeypatch, project_root):
    monkeypatch.chdir(tmp_path)
    params = _params(project_root, max_images=2)
    paths = RunPaths(params)
    captions = {1: (30, "a cat"), 2: (10, "a dog"), 3: (20, "a bird"), 4: (10, "a big dog")}
    _write_captions(paths.captions_file("train2014"), captions, image_ids=[30, 20, 10])
    _write_captions(paths.captions_file("val2014"), {9: (5, "a cow")})
    synthesize.run(params, paths, workers=1)
    frame, _ = speechcoco.load_split(paths.speech_dir("train2014"), progress=False)
    assert list(frame["caption_id"]) == [2, 4, 3]
    assert synthesize.select_images([30, 20, 10, 20], 2) == [10, 20]
    assert synthesize.select_images([3, 1], None) == [1, 3]


def test_pool_matches_single_process(tmp_path, monkeypatch, project_root):
    texts = ["a red circle", "two blue squares on the left", "a cat on the mat of a dog", "a man, in a hat"]
    captions = {1000 + i: (i // 3, texts[i % len(texts)]) for i in range(synthesize.MIN_CAPTIONS_FOR_POOL)}
    outputs = []
    for workers in (1, 2):
        folder = tmp_path / f"workers{workers}"
        folder.mkdir()
        monkeypatch.chdir(folder)
        params = _params(project_root)
        paths = RunPaths(params)
        _write_captions(paths.captions_file("train2014"), captions)
        _write_captions(paths.captions_file("val2014"), {9: (99, "a cow")})
        summary = synthesize.run(params, paths, workers=workers)
        assert summary["train2014"]["synthesized"] == len(captions)
        outputs.append(_file_bytes(paths.speech_root))
    assert outputs[0] == outputs[1]


def test_caption_without_words_skipped(run_dir):
    params, paths = run_dir
    _write_captions(paths.captions_file("train2014"), {**CAPTIONS, 104: (3, " -- ")})
    summary = synthesize.run(params, paths, workers=1)
    assert summary["train2014"] == {"no_words": 1, "synthesized": 3, "stale_files_removed": 0}


def test_choose_voice_seeded_per_caption():
    voices, speeds = ["en-us", "en-gb"], [0.9, 1.0, 1.1]
    first = [synthesize.choose_voice(0, caption_id, voices, speeds) for caption_id in range(200)]
    again = [synthesize.choose_voice(0, caption_id, voices, speeds) for caption_id in reversed(range(200))][::-1]
    assert first == again
    assert {voice for voice, _ in first} == set(voices)
    assert {speed for _, speed in first} == set(speeds)
    other_seed = [synthesize.choose_voice(1, caption_id, voices, speeds) for caption_id in range(200)]
    assert other_seed != first


def test_read_captions_errors(tmp_path):
    with pytest.raises(synthesize.CaptionsFileError, match="not found"):
        synthesize.read_captions(tmp_path / "captions_train2014.json")
    path = tmp_path / "captions_val2014.json"
    path.write_text(json.dumps({"images": []}))
    with pytest.raises(synthesize.CaptionsFileError, match="no 'annotations' list"):
        synthesize.read_captions(path)
    path.write_text(json.dumps({"annotations": [{"id": 1, "image_id": 2, "caption": "a"}, {"id": 2, "caption": "b"}]}))
    assert synthesize.read_captions(path) == ([2], [{"id": 1, "image_id": 2, "caption": "a"}], 1)


def test_unknown_voice_stops_before_work(run_dir, project_root):
    _, paths = run_dir
    params = _params(project_root, voices=["en-us", "xx-none"])
    with pytest.raises(tts.SynthesisError, match="xx-none"):
        synthesize.run(params, paths, workers=1)
    assert not paths.speech_root.exists()
