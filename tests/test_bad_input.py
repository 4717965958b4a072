"""Bad input, interrupted jobs and offline runs across stages.

Each stage's own test file covers most of its bad-input cases, and
docs/robustness.md lists every case with the test that pins its outcome. This
file holds the cases that span stages or go through the ``vgsalign`` command.
They are a shard that mixes every kind of bad WAV, the skip counts that must
reach report.md and parameter errors on the command line. Then come a feature
job killed with SIGKILL and downloads requested with networking blocked.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile
import torch
import yaml
from PIL import Image

from vgsalign.config import deep_merge, load_params, read_yaml, validate_params
from vgsalign.devices import DeviceError, resolve_device
from vgsalign.features import audio
from vgsalign.features.audio import FLOOR_DB
from vgsalign.features.image import IMAGENET_MEAN, IMAGENET_STD, ImageFiles
from vgsalign.features.shards import FeatureStore, verify_shard, write_shard
from vgsalign.io import atomic_path, read_parquet_metadata, write_json_atomic, write_parquet_atomic
from vgsalign.layout import RunPaths
from vgsalign.report import stage as report_stage
from vgsalign.scoring.bootstrap import summarise_scores
from vgsalign.speech import speechcoco, spokencoco

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PARAMS_FILE = PROJECT_ROOT / "params.yaml"
RATE = 16000


# -- helpers ---------------------------------------------------------------------


def _tone(seconds: float, rate: int = RATE, frequency: float = 440.0) -> np.ndarray:
    time_s = np.arange(int(round(seconds * rate))) / rate
    return (0.3 * np.sin(2 * np.pi * frequency * time_s)).astype(np.float32)


def _wav(path: Path, data: np.ndarray, rate: int = RATE, subtype: str = "PCM_16") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, data, rate, subtype=subtype)
    return path


def _vgsalign_command() -> list[str]:
    """Return the installed ``vgsalign`` script beside this interpreter, or the module as a fallback."""
    script = Path(sys.executable).parent / "vgsalign"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "vgsalign.cli"]


def _environment(**extra: str) -> dict[str, str]:
    return {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1", **extra}


def _vgsalign(cwd: Path, *arguments: str, prefix: tuple[str, ...] = (), timeout: int = 120, **env: str):
    return subprocess.run(
        [*prefix, *_vgsalign_command(), *arguments],
        cwd=cwd,
        env=_environment(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _overlay(folder: Path, data: dict, name: str = "overlay.yaml") -> str:
    path = folder / name
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _network_blocker() -> list[str]:
    """Return ``unshare -rn`` when it can run a program without network access here; skip the test otherwise."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("unshare is not installed, so networking cannot be blocked for the subprocess")
    if subprocess.run([unshare, "-rn", "true"], capture_output=True).returncode != 0:
        pytest.skip("unshare -rn is not permitted here (no user namespaces), so networking cannot be blocked")
    return [unshare, "-rn"]


# -- audio: every kind of bad WAV in one shard -------------------------------------------

# caption_id -> (what the caption tests, status, real frames). Caption 1 is bad, so the
# stage meets a bad file first. Frames of the valid ones: 1 + samples // 160 at 16 kHz.
AUDIO_CASES = {
    1: ("corrupt WAV header", "unreadable", 0),
    2: ("zero-length WAV", "empty", 0),
    3: ("200 samples, shorter than one 400-sample window", "too_short", 0),
    4: ("all-silent 1 s", "ok", 101),
    5: ("6 s caption, longer than the 5.12 s window", "ok", 601),
    6: ("stereo 1 s, both channels the mono tone", "ok", 101),
    7: ("mono 1 s at 16 kHz (reference)", "ok", 101),
    8: ("mono 1 s at 8 kHz", "ok", 101),
    9: ("mono 1 s at 44.1 kHz", "ok", 101),
    10: ("WAV listed in the manifest but missing", "missing", 0),
    11: ("NaN sample in a float WAV", "non_finite", 0),
    12: ("no WAV path in the manifest", "missing", 0),
}


def _make_audio_cases(folder: Path) -> dict[int, str | None]:
    """Write the WAVs of AUDIO_CASES under ``folder``; return caption_id -> WAV path (None for no path)."""
    folder.mkdir(parents=True, exist_ok=True)
    corrupt = folder / "1.wav"
    corrupt.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt garbage" * 4)
    _wav(folder / "2.wav", np.zeros(0, np.float32))
    _wav(folder / "3.wav", _tone(200 / RATE))
    _wav(folder / "4.wav", np.zeros(RATE, np.float32))
    _wav(folder / "5.wav", _tone(6.0))
    _wav(folder / "6.wav", np.stack([_tone(1.0), _tone(1.0)], axis=1))
    _wav(folder / "7.wav", _tone(1.0))
    _wav(folder / "8.wav", _tone(1.0, rate=8000), rate=8000)
    _wav(folder / "9.wav", _tone(1.0, rate=44100), rate=44100)
    with_nan = _tone(1.0)
    with_nan[500] = np.nan
    _wav(folder / "11.wav", with_nan, subtype="FLOAT")
    paths: dict[int, str | None] = {caption_id: str(folder / f"{caption_id}.wav") for caption_id in AUDIO_CASES}
    paths[12] = None
    return paths


def _audio_params(run: str, **features) -> dict:
    return load_params([PARAMS_FILE], overrides={"run": run, "features": {"audio_shards": 1, **features}})


def test_audio_shard_every_bad_wav(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = _audio_params("bad-audio")
    paths = RunPaths(params)
    wavs = _make_audio_cases(tmp_path / "wavs")
    manifest = pd.DataFrame(
        {"caption_id": list(wavs), "image_id": [caption_id * 10 for caption_id in wavs], "wav_path": list(wavs.values())}
    )
    paths.manifest.parent.mkdir(parents=True)
    manifest.to_parquet(paths.manifest)

    audio.run(params, paths, "0000")

    index = pd.read_parquet(paths.audio_index("0000")).set_index("caption_id")
    for caption_id, (case, status, frames) in AUDIO_CASES.items():
        assert index.loc[caption_id, "status"] == status, case
        assert index.loc[caption_id, "num_frames"] == frames, case
        assert index.loc[caption_id, "offset"] == 0, case  # paper convention: end padding
    metadata = read_parquet_metadata(paths.audio_index("0000"))
    assert metadata["skipped"] == {"empty": 1, "missing": 2, "non_finite": 1, "too_short": 1, "unreadable": 1}
    assert metadata["status_counts"]["ok"] == 6

    store = FeatureStore.from_dir(paths.audio_shard("0000").parent)
    features = {caption_id: store.get(int(store.position_of([caption_id])[0])).astype(np.float32) for caption_id in wavs}
    for caption_id, (case, status, _) in AUDIO_CASES.items():
        if status != "ok":
            assert np.all(features[caption_id] == 0), case
    # Silence: every bin takes the floor of -100 dB, padding included.
    assert np.all(features[4] == np.float32(np.float16(FLOOR_DB)))
    # Identical channels average to the mono signal.
    np.testing.assert_array_equal(features[6], features[7])
    # The mel band of the 440 Hz tone in the 16 kHz reference.
    reference_band = int(np.argmax(features[7][:, 50]))
    # A 6 s caption is cut to its first 512 frames: the last frame is still the tone, not padding.
    assert int(np.argmax(features[5][:, -1])) == reference_band
    assert abs(features[5][reference_band, -1] - features[5][reference_band, 300]) < 1.0
    # Resampled captions put the tone in the same band, at the same level within 1 dB.
    for caption_id in (8, 9):
        assert int(np.argmax(features[caption_id][:, 50])) == reference_band, AUDIO_CASES[caption_id][0]
        np.testing.assert_allclose(features[caption_id][reference_band, 10:90], features[7][reference_band, 10:90], atol=1.0)
    # End padding: frames after the last real frame (101) hold the spectrogram's minimum.
    assert np.all(features[7][:, 101:] == features[7].min())


# -- speech metadata: empty WAVs get their own skip reason -------------------------------


def _speechcoco_caption(caption_id: int, image_id: int) -> speechcoco.SpeechCaption:
    timecode = [[0.0, "SIL", ""], [100.0, "WORD", "dog"], [100.0, "PHO", "d"], [400.0, "SYL", ""]]
    stem = speechcoco.format_name(image_id, caption_id, "Phil", "None", 1.0)
    return speechcoco.SpeechCaption(
        image_id=image_id,
        caption_id=caption_id,
        speaker="Phil",
        speed=1.0,
        duration_s=1.0,
        text="dog",
        wav_filename=f"{stem}.wav",
        disfluency=("None", ""),
        words=speechcoco.words_from_timecode(timecode, 1000.0),
        timecode=timecode,
    )


def test_speechcoco_empty_wav_counted(tmp_path):
    split = tmp_path / "val2014"
    speechcoco.write_caption(split, _speechcoco_caption(1, 10), _tone(1.0), RATE)
    speechcoco.write_caption(split, _speechcoco_caption(2, 20), np.zeros(0, np.float32), RATE)
    frame, skips = speechcoco.load_split(split, progress=False)
    assert frame["caption_id"].tolist() == [1]
    assert skips == {"empty_wav": 1}


def test_spokencoco_empty_wav_counted(tmp_path):
    captions = [
        {"wav": "wavs/good.wav", "text": "A DOG", "uttid": "spk1-HIT1_42_1001"},
        {"wav": "wavs/empty.wav", "text": "A CAT", "uttid": "spk1-HIT2_42_1002"},
    ]
    json_path = tmp_path / "SpokenCOCO_val.json"
    json_path.write_text(json.dumps({"data": [{"image": "val2014/COCO_val2014_000000000042.jpg", "captions": captions}]}))
    _wav(tmp_path / "wavs" / "good.wav", _tone(1.0))
    _wav(tmp_path / "wavs" / "empty.wav", np.zeros(0, np.float32))
    frame, skips = spokencoco.load_split(json_path, progress=False)
    assert frame["caption_id"].tolist() == [1001]
    assert skips == {"empty_wav": 1}


# -- images: colour modes read from files, the way the stage reads them --------------------


def _normalised(rgb: tuple[int, int, int]) -> np.ndarray:
    return (np.array(rgb, dtype=np.float64) / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)


def test_image_files_colour_modes(tmp_path):
    grey = tmp_path / "grey.jpg"
    Image.new("L", (40, 30), 128).save(grey, quality=100)
    cmyk = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (40, 30), (0, 0, 0, 0)).save(cmyk, quality=100)  # no ink: white
    rgba = tmp_path / "alpha.png"
    Image.new("RGBA", (40, 30), (255, 0, 0, 0)).save(rgba)  # fully transparent red
    grey_16 = tmp_path / "grey16.png"
    Image.fromarray(np.full((30, 40), 65535, dtype=np.uint16)).save(grey_16)

    files = ImageFiles([str(grey), str(cmyk), str(rgba), str(grey_16)], "stretch")
    expected = {
        0: (128, 128, 128),
        1: (255, 255, 255),
        2: (124, 116, 104),  # transparent pixels show the ImageNet mean colour
        3: (255, 255, 255),  # 16-bit white scaled to 8 bits
    }
    for item, rgb in expected.items():
        tensor, status, message = files[item]
        assert status == "ok", message
        assert tuple(tensor.shape) == (3, 224, 224)
        np.testing.assert_allclose(tensor[:, 100, 100].numpy(), _normalised(rgb), atol=0.02)


# -- skip counts reach report.md ----------------------------------------------------------


def _report_params(run: str) -> dict:
    overrides = {
        "run": run,
        "models": {"variants": ["cnnatt_v1"]},
        "features": {"audio_shards": 1, "image_shards": 1, "image": {"weights": "none"}},
        "pairs": {"vectors": None},
        "report": {"fig3_variant": "cnnatt_v1", "overlays": 0},
        "scoring": {"bootstrap_resamples": 10},
    }
    params = deep_merge(read_yaml(PARAMS_FILE), overrides)
    validate_params(params)
    return params


def _report_counts(report: str) -> dict[str, dict[str, str]]:
    """Parse the report's skip-count section into {source heading: {count name: value}}."""
    section = report.split("## Items counted and skipped by the stages", 1)[1].split("\n## ", 1)[0]
    counts: dict[str, dict[str, str]] = {}
    source = None
    for line in section.splitlines():
        if line.startswith("### "):
            source = line[4:].strip()
            counts[source] = {}
        elif source and line.startswith("| ") and line != "| count | value |":
            name, value = [cell.strip() for cell in line.strip("|").split("|")]
            counts[source][name] = value
    return counts


def _score_summary_block(skipped: dict[str, int], unpaired_rows: int) -> dict:
    """One {convention: {kind: ...}} entry as the scoring stage writes it (see scoring.stage.collect_results)."""
    scores = pd.DataFrame(
        {"category_name": ["dog", "cat"], "as_object": [0.5, 0.2], "as_word": [0.1, 0.3],
         "gs_object": [0.4, 0.6], "gs_word": [0.2, 0.2]}
    )  # fmt: skip
    entry = summarise_scores(scores, ["dog", "cat"], 10, 0.95, np.random.default_rng(0))
    entry["skipped"] = skipped
    entry["tensor_rows_without_pairs"] = unpaired_rows
    return entry


def _write_skip_results(root: Path, params: dict) -> RunPaths:
    """Write, in each stage's own layout, the outputs that carry skip counts; the caller is in ``root``."""
    paths = RunPaths(params)
    wavs = root / "wavs"
    _wav(wavs / "100.wav", _tone(1.0))
    (wavs / "101.wav").write_bytes(b"not a WAV file")
    manifest = pd.DataFrame(
        {"caption_id": [100, 101, 102], "image_id": [10, 11, 12], "split": "test",
         "wav_path": [str(wavs / "100.wav"), str(wavs / "101.wav"), str(wavs / "102.wav")]}
    )  # fmt: skip
    # The manifest stage's metadata: skips per COCO split, the speech reader's skips per split.
    manifest_metadata = {
        "split_sizes": {"test": {"images": 3, "captions": 3}},
        "skips": {"val2014": {"image_file_missing": 3, "caption_without_speech": 0}},
        "speech_skips": {"val2014": {"empty_wav": 2, "missing_wav": 4}},
    }
    write_parquet_atomic(paths.manifest, manifest, metadata=manifest_metadata)
    images = pd.DataFrame({"image_id": [10, 11, 12], "split": "test", "file_path": ["a.jpg", "b.jpg", "c.jpg"]})
    write_parquet_atomic(paths.images, images, metadata=manifest_metadata)
    nouns = pd.DataFrame({"caption_id": [100], "image_id": [10], "word": ["dog"]})
    write_parquet_atomic(
        paths.nouns,
        nouns,
        metadata={"tagger": "pattern", "counts": {"tagging": {"captions_without_nouns": 5}, "frames": {"clipped": 6}}},
    )
    write_json_atomic(
        paths.pairs_summary,
        {"captions_read": 30, "captions_dropped": {"no_nouns": 9, "oov_noun": 8, "no_objects": 0},
         "masks": {"polygon_four_numbers": 10, "unknown_image": 11}, "vectors_source": "self-trained"},
    )  # fmt: skip

    # Audio features by the real stage: caption 101 is unreadable, caption 102 missing.
    audio.run(params, paths, "0000")
    image_index = pd.DataFrame({"image_id": [10, 11, 12], "status": ["ok", "unreadable", "missing"]})
    write_shard(paths.image_shard("0000"), paths.image_index("0000"), np.zeros((3, 2), np.float16), image_index, {})

    summary = {"paper": {"raw": _score_summary_block({"pair_without_tensor": 12, "empty_mask": 0}, 13)}}
    write_json_atomic(paths.score_summary("cnnatt_v1"), summary)
    # The training and export stages' skip counts: metrics.json and retrieval.json.
    write_json_atomic(
        paths.train_metrics("cnnatt_v1"),
        {"variant": "cnnatt_v1", "skipped": {"train": {"audio_too_short": 14}, "val": {"image_missing": 15}}},
    )
    write_json_atomic(paths.retrieval("cnnatt_v1"), {"variant": "cnnatt_v1", "skipped": {"audio_unreadable": 16}})
    return paths


@pytest.fixture(scope="module")
def skip_report(tmp_path_factory):
    """report.md of a results folder whose stage outputs carry known skip counts; returns its parsed counts."""
    root = tmp_path_factory.mktemp("skip-report")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        params = _report_params("skips")
        paths = _write_skip_results(root, params)
        report_stage.run(params, paths)
        return _report_counts(paths.report.read_text())


@pytest.mark.parametrize(
    "source, name, value",
    [
        ("manifest", "skips.val2014.image_file_missing", "3"),
        ("manifest", "speech_skips.val2014.empty_wav", "2"),
        ("manifest", "speech_skips.val2014.missing_wav", "4"),
        ("nouns", "counts.tagging.captions_without_nouns", "5"),
        ("nouns", "counts.frames.clipped", "6"),
        ("pairs", "captions_dropped.oov_noun", "8"),
        ("pairs", "captions_dropped.no_nouns", "9"),
        ("pairs", "masks.polygon_four_numbers", "10"),
        ("pairs", "masks.unknown_image", "11"),
        ("audio features", "items with status unreadable", "1"),
        ("audio features", "items with status missing", "1"),
        ("image features", "items with status unreadable", "1"),
        ("image features", "items with status missing", "1"),
        ("scores of cnnatt_v1", "paper.raw.skipped.pair_without_tensor", "12"),
        ("scores of cnnatt_v1", "paper.raw.tensor_rows_without_pairs", "13"),
    ],
)
def test_report_lists_skip_count(skip_report, source, name, value):
    assert skip_report.get(source, {}).get(name) == value, f"{source}: {skip_report.get(source)}"


def test_report_omits_zero_counts(skip_report):
    assert "skips.val2014.caption_without_speech" not in skip_report["manifest"]
    assert "captions_dropped.no_objects" not in skip_report["pairs"]
    assert "paper.raw.skipped.empty_mask" not in skip_report["scores of cnnatt_v1"]


def test_report_lists_training_skips(skip_report):
    listed = {name: value for counts in skip_report.values() for name, value in counts.items()}
    assert any(name.endswith("audio_too_short") and value == "14" for name, value in listed.items())
    assert any(name.endswith("image_missing") and value == "15" for name, value in listed.items())
    assert any(name.endswith("audio_unreadable") and value == "16" for name, value in listed.items())


# -- parameters on the command line ----------------------------------------------------------

PARAMETER_CASES = {
    "unknown key": ({"train": {"epochz": 3}}, "unknown parameter 'train.epochz' (did you mean 'epochs'?)"),
    "wrong type": ({"train": {"epochs": "many"}}, "invalid type for 'train.epochs': 'many'"),
    "unknown variant": (
        {"models": {"variants": ["cnn0_sisa", "cnnatt_v9"]}},
        "invalid value 'cnnatt_v9' for 'models.variants.1'",
    ),
}


def _assert_short_error(result, fragment: str) -> None:
    """Exit code 2, the message on stderr without a traceback, naming ``fragment``."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    starts = [number for number, line in enumerate(lines) if line.startswith("vgsalign: error: ")]
    assert len(starts) == 1, result.stderr
    # Log lines of a stage that had started come first ("12:00:00 INFO vgsalign: ...").
    assert all(re.match(r"\d\d:\d\d:\d\d [A-Z]+ ", line) for line in lines[: starts[0]]), result.stderr
    # The message: one line, or for schema errors a heading, one line per invalid key and the fix.
    assert len(lines) - starts[0] <= 3, result.stderr
    assert fragment in "\n".join(lines[starts[0] :])
    assert result.stdout == ""


@pytest.mark.parametrize("case", sorted(PARAMETER_CASES))
def test_cli_invalid_parameter(tmp_path, case):
    overlay, fragment = PARAMETER_CASES[case]
    result = _vgsalign(tmp_path, "manifest", "--params", str(PARAMS_FILE), _overlay(tmp_path, {"run": "p", **overlay}))
    _assert_short_error(result, fragment)
    assert not (tmp_path / "results").exists()


def test_cli_unknown_variant_option(tmp_path):
    result = _vgsalign(tmp_path, "train", "--params", str(PARAMS_FILE), "--variant", "cnn9")
    _assert_short_error(result, "invalid --variant 'cnn9' for stage train_model")
    assert "cnnatt_v0" in result.stderr


def test_cli_missing_parameter_file(tmp_path):
    result = _vgsalign(tmp_path, "manifest", "--params", str(PARAMS_FILE), "absent.yaml")
    _assert_short_error(result, "parameter file not found: absent.yaml")


def test_cli_run_folder_is_a_file(tmp_path):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "blocked").write_text("a file where the run folder belongs")
    result = _vgsalign(tmp_path, "manifest", "--params", str(PARAMS_FILE), _overlay(tmp_path, {"run": "blocked"}))
    _assert_short_error(result, "results/blocked exists and is not a directory")
    assert (tmp_path / "results" / "blocked").read_text() == "a file where the run folder belongs"


def test_cli_output_subfolder_is_a_file(tmp_path):
    params = _audio_params("nested")
    paths = RunPaths(params)
    root = tmp_path / paths.root
    (root / "manifest").mkdir(parents=True)
    _wav(tmp_path / "a.wav", _tone(0.5))
    pd.DataFrame({"caption_id": [1], "image_id": [1], "wav_path": ["a.wav"]}).to_parquet(tmp_path / paths.manifest)
    (root / "features").write_text("a file where the features folder belongs")
    overlay = _overlay(tmp_path, {"run": "nested", "features": {"audio_shards": 1}})
    result = _vgsalign(tmp_path, "audio-features", "--params", str(PARAMS_FILE), overlay, "--shard", "0000")
    _assert_short_error(result, f"{paths.root / 'features'} exists and is not a directory")


# -- a feature job killed with SIGKILL, then rerun ------------------------------------------

# Captions in the shard: a few seconds of work, so the kill lands mid-shard. A 128-frame
# window keeps the shard at 30 MB; the work per caption (the STFT of 3 s) does not change.
KILL_CAPTIONS = 3000
KILL_OVERRIDES = {"features": {"audio_shards": 1}, "frames": {"window": 128}}


def _feature_run(folder: Path, run: str) -> tuple[RunPaths, str]:
    """Write a manifest of KILL_CAPTIONS captions of one 3 s WAV for run ``run``; return its paths and overlay."""
    overlay = {"run": run, **KILL_OVERRIDES}
    paths = RunPaths(load_params([PARAMS_FILE], overrides=overlay))
    (folder / paths.manifest).parent.mkdir(parents=True)
    captions = np.arange(KILL_CAPTIONS)
    frame = pd.DataFrame({"caption_id": captions, "image_id": captions // 5, "wav_path": "caption.wav"})
    frame.to_parquet(folder / paths.manifest)
    return paths, _overlay(folder, overlay, f"{run}.yaml")


def _strays(folder: Path) -> list[Path]:
    return sorted(folder.glob(".shard-0000.*.tmp*"))


def test_audio_stage_kill_and_rerun(tmp_path):
    _wav(tmp_path / "caption.wav", _tone(3.0))
    reference, reference_overlay = _feature_run(tmp_path, "reference")
    killed, killed_overlay = _feature_run(tmp_path, "killed")
    arguments = ("audio-features", "--params", str(PARAMS_FILE))

    done = _vgsalign(tmp_path, *arguments, reference_overlay, "--shard", "0000")
    assert done.returncode == 0, done.stderr[-3000:]

    shard_dir = tmp_path / killed.audio_shard("0000").parent
    job = subprocess.Popen(
        [*_vgsalign_command(), *arguments, killed_overlay, "--shard", "0000"],
        cwd=tmp_path,
        env=_environment(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 90
        while not _strays(shard_dir) and job.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)  # into the loop over captions
        if job.poll() is not None:
            pytest.fail(f"the feature job ended (exit {job.returncode}) before the kill; raise KILL_CAPTIONS")
        job.send_signal(signal.SIGKILL)
        assert job.wait(timeout=30) == -signal.SIGKILL
    finally:
        if job.poll() is None:
            job.kill()

    # Nothing under a final name; one temporary array.
    assert not (tmp_path / killed.audio_shard("0000")).exists()
    assert not (tmp_path / killed.audio_index("0000")).exists()
    assert len(_strays(shard_dir)) == 1

    rerun = _vgsalign(tmp_path, *arguments, killed_overlay, "--shard", "0000")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert _strays(shard_dir) == []
    npy, index = tmp_path / killed.audio_shard("0000"), tmp_path / killed.audio_index("0000")
    assert verify_shard(npy, index, None) is None
    assert npy.read_bytes() == (tmp_path / reference.audio_shard("0000")).read_bytes()
    expected_index = tmp_path / reference.audio_index("0000")
    pd.testing.assert_frame_equal(pd.read_parquet(index), pd.read_parquet(expected_index))
    assert read_parquet_metadata(index) == read_parquet_metadata(expected_index)


# -- downloads requested with networking blocked --------------------------------------------


def test_offline_vectors_download_message(tmp_path):
    blocker = _network_blocker()
    script = (
        "import sys\n"
        "from vgsalign import pairs\n"
        "try:\n"
        "    pairs.load_vectors('glove-wiki-gigaword-50')\n"
        "except pairs.VectorsError as error:\n"
        "    print(error)\n"
        "    sys.exit(3)\n"
    )
    result = subprocess.run(
        [*blocker, sys.executable, "-c", script],
        cwd=tmp_path,
        env=_environment(GENSIM_DATA_DIR=str(tmp_path / "gensim-data")),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 3, result.stderr[-3000:]
    message = result.stdout
    assert "could not load word vectors 'glove-wiki-gigaword-50'" in message
    assert "needs network access" in message
    assert "set pairs.vectors to null" in message


def test_offline_imagenet_weights_message(tmp_path):
    blocker = _network_blocker()
    params = load_params([PARAMS_FILE], overrides={"run": "offline", "features": {"image_shards": 1}})
    paths = RunPaths(params)
    Image.new("RGB", (32, 32), (200, 10, 10)).save(tmp_path / "1.jpg")
    (tmp_path / paths.images).parent.mkdir(parents=True)
    pd.DataFrame({"image_id": [1], "file_path": ["1.jpg"]}).to_parquet(tmp_path / paths.images)
    overlay = _overlay(
        tmp_path, {"run": "offline", "features": {"image_shards": 1, "device": "cpu", "image": {"weights": "imagenet"}}}
    )
    torch_home = tmp_path / "torch-cache"

    result = _vgsalign(
        tmp_path, "image-features", "--params", str(PARAMS_FILE), overlay, "--shard", "0000",
        prefix=tuple(blocker), TORCH_HOME=str(torch_home),
    )  # fmt: skip

    assert result.returncode != 0
    assert "cannot download the VGG16 ImageNet weights" in result.stderr
    assert "looks offline" in result.stderr
    assert str(torch_home / "hub" / "checkpoints" / "vgg16-397923af.pth") in result.stderr
    assert "features.image.weights: none" in result.stderr
    assert not (tmp_path / paths.image_index("0000")).exists()
    assert not (tmp_path / paths.image_shard("0000")).exists()



def test_shard_writer_removes_strays(tmp_path):
    npy, index = tmp_path / "shard-0000.npy", tmp_path / "shard-0000.parquet"
    strays = [tmp_path / ".shard-0000.npy.k1l2m3.tmp.npy", tmp_path / ".shard-0000.parquet.x9y8.tmp.parquet"]
    other_shard = tmp_path / ".shard-0001.npy.a1b2c3.tmp.npy"
    for path in [*strays, other_shard]:
        path.write_bytes(b"left by a killed job")
    write_shard(npy, index, np.ones((2, 3), np.float16), pd.DataFrame({"image_id": [1, 2]}), {"case": "strays"})
    assert not any(path.exists() for path in strays)
    assert other_shard.exists()
    assert verify_shard(npy, index, {"case": "strays"}) is None


def test_atomic_path_removes_strays_of_killed_write(tmp_path):
    target = tmp_path / "pairs.parquet"
    stray = tmp_path / ".pairs.parquet.abc123.tmp.parquet"
    stray.write_bytes(b"partial")
    unrelated = tmp_path / ".other.parquet.abc123.tmp.parquet"
    unrelated.write_bytes(b"another output's temporary")

    with atomic_path(target) as temporary:
        temporary.write_bytes(b"complete")

    assert target.read_bytes() == b"complete"
    assert not stray.exists()
    assert unrelated.exists()


def test_stage_input_error_is_one_line(tmp_path):
    """A stage's own input error reaches the user as one line with exit code 1."""
    overlay = tmp_path / "run.yaml"
    overlay.write_text(yaml.safe_dump({"run": "missing-inputs", "pairs": {"vectors": str(tmp_path / "absent.bin")}}))
    result = subprocess.run(
        [str(Path(sys.executable).parent / "vgsalign"), "pairs", "--params", str(PARAMS_FILE), str(overlay)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    message = [line for line in result.stderr.splitlines() if line.startswith("vgsalign: error: ")]
    assert len(message) == 1, result.stderr
    assert "not found" in message[0]
    assert "VGSALIGN_TRACEBACK=1" in message[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_cuda_device_without_gpu_is_rejected():
    with pytest.raises(DeviceError, match="train.device is 'cuda' but no CUDA device is available"):
        resolve_device("cuda", "train.device")


def test_auto_device_on_cpu_machine():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto", "features.device").type == expected
