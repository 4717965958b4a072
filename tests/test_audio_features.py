"""Log-mel features: values against a NumPy computation, windowing, bad WAVs, the shard stage."""

from __future__ import annotations

import os

import librosa
import numpy as np
import pandas as pd
import pytest
import soundfile

from vgsalign.config import load_params
from vgsalign.features import audio
from vgsalign.features.audio import FLOOR_DB, AudioInputError, caption_features, fit_window, log_mel
from vgsalign.features.shards import FeatureStore, verify_shard
from vgsalign.frames import count_frames
from vgsalign.io import read_parquet_metadata
from vgsalign.layout import RunPaths

AUDIO = {"sample_rate": 16000, "n_mels": 40, "win_length": 400, "hop_length": 160, "n_fft": 512}


def _tone(frequency: float, seconds: float, rate: int = 16000, amplitude: float = 0.5) -> np.ndarray:
    time = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * frequency * time)).astype(np.float32)


def _numpy_log_mel(signal: np.ndarray, rate: int = 16000) -> np.ndarray:
    """Independent log-mel: centred framing, periodic Hann, rfft, librosa's mel matrix, zero-bin rule."""
    n_fft, hop, win = AUDIO["n_fft"], AUDIO["hop_length"], AUDIO["win_length"]
    padded = np.pad(signal.astype(np.float64), n_fft // 2)
    num_frames = 1 + len(signal) // hop
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / win)  # periodic Hann
    window = np.zeros(n_fft)
    window[(n_fft - win) // 2 : (n_fft - win) // 2 + win] = hann
    frames = np.stack([padded[t * hop : t * hop + n_fft] * window for t in range(num_frames)])
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2  # [F, n_fft // 2 + 1]
    mel = librosa.filters.mel(sr=rate, n_fft=n_fft, n_mels=AUDIO["n_mels"]).astype(np.float64) @ power.T
    positive = mel > 0
    mel = np.where(positive, mel, mel[positive].min())
    return 10 * np.log10(mel)


# -- log_mel ---------------------------------------------------------------------


def test_log_mel_tone_peak_band():
    spectrogram = log_mel(_tone(1000.0, 1.0), 16000, AUDIO)
    centres = librosa.mel_frequencies(n_mels=AUDIO["n_mels"] + 2, fmin=0.0, fmax=8000.0)[1:-1]
    expected_band = int(np.argmin(np.abs(centres - 1000.0)))
    assert spectrogram.shape == (40, 101)
    assert int(np.argmax(spectrogram[:, 50])) == expected_band


def test_log_mel_matches_numpy():
    rng = np.random.default_rng(0)
    signal = _tone(440.0, 0.7) + 0.01 * rng.normal(size=int(0.7 * 16000)).astype(np.float32)
    expected = _numpy_log_mel(signal)
    computed = log_mel(signal, 16000, AUDIO)
    assert computed.shape == expected.shape
    assert computed.dtype == np.float32
    # float32 STFT against float64: within 0.01 dB everywhere.
    np.testing.assert_allclose(computed, expected, atol=0.01)


def test_log_mel_power_matches_librosa():
    noise = 0.005 * np.random.default_rng(2).normal(size=8000).astype(np.float32)
    signal = _tone(300.0, 0.5) + _tone(2500.0, 0.5, amplitude=0.1) + noise
    reference = librosa.feature.melspectrogram(
        y=signal, sr=16000, n_fft=512, hop_length=160, win_length=400, window="hann",
        center=True, pad_mode="constant", power=2.0, n_mels=40,
    )
    np.testing.assert_allclose(log_mel(signal, 16000, AUDIO), 10 * np.log10(reference), atol=0.01)


def test_log_mel_silence_is_floor():
    spectrogram = log_mel(np.zeros(16000, dtype=np.float32), 16000, AUDIO)
    assert np.isfinite(spectrogram).all()
    assert np.all(spectrogram == np.float32(FLOOR_DB))
    assert FLOOR_DB == -100.0


def test_log_mel_zero_bins_take_smallest():
    rng = np.random.default_rng(1)
    signal = np.concatenate([np.zeros(8000), 0.1 * rng.normal(size=8000)]).astype(np.float32)
    expected = _numpy_log_mel(signal)
    computed = log_mel(signal, 16000, AUDIO)
    # Frames 0-20 only see the zero half: every bin is the spectrogram's smallest value.
    assert np.all(computed[:, :20] == computed.min())
    np.testing.assert_allclose(computed[:, :20], expected.min(), atol=0.01)


def test_log_mel_stereo_is_channel_mean():
    mono = _tone(700.0, 0.5)
    stereo = np.stack([mono, 0.5 * mono], axis=1)  # [samples, channels]
    np.testing.assert_allclose(log_mel(stereo, 16000, AUDIO), log_mel(0.75 * mono, 16000, AUDIO), atol=1e-4)


@pytest.mark.parametrize("rate", [8000, 44100])
def test_log_mel_resamples(rate):
    spectrogram = log_mel(_tone(1000.0, 1.0, rate=rate), rate, AUDIO)
    reference = log_mel(_tone(1000.0, 1.0), 16000, AUDIO)
    assert spectrogram.shape == reference.shape == (40, 101)
    assert int(np.argmax(spectrogram[:, 50])) == int(np.argmax(reference[:, 50]))
    # Away from the edges the resampled tone has the same spectrum within 0.5 dB in the loud bands.
    loud = reference[:, 50] > reference[:, 50].max() - 30
    np.testing.assert_allclose(spectrogram[loud, 20:80], reference[loud, 20:80], atol=0.5)


def test_log_mel_rejects_bad_fft():
    with pytest.raises(ValueError, match="smaller than win_length"):
        log_mel(_tone(100.0, 0.1), 16000, {**AUDIO, "n_fft": 256})
    with pytest.raises(ValueError, match="is odd"):
        log_mel(_tone(100.0, 0.1), 16000, {**AUDIO, "n_fft": 513})


# -- fit_window ------------------------------------------------------------------


def _ramp(frames: int) -> np.ndarray:
    return np.tile(np.arange(frames, dtype=np.float32), (40, 1)) - 50.0  # [40, frames], value = frame - 50


def test_window_pad_paper_end():
    fitted, num_frames, offset = fit_window(_ramp(300), 512, "paper")
    assert (num_frames, offset) == (300, 0)
    np.testing.assert_array_equal(fitted[:, :300], _ramp(300))
    assert np.all(fitted[:, 300:] == -50.0)  # the spectrogram minimum


def test_window_pad_released_start():
    spectrogram = _ramp(300)
    fitted, num_frames, offset = fit_window(spectrogram, 512, "released_code")
    assert (num_frames, offset) == (300, 212)
    assert np.all(fitted[:, :212] == -50.0)
    np.testing.assert_array_equal(fitted[:, 212:], spectrogram)
    # A word at frames [100, 110) of the caption sits at [312, 322) in the window.
    np.testing.assert_array_equal(fitted[:, 100 + offset : 110 + offset], spectrogram[:, 100:110])


@pytest.mark.parametrize("convention", ["paper", "released_code"])
def test_window_cut_keeps_start(convention):
    fitted, num_frames, offset = fit_window(_ramp(600), 512, convention)
    assert (num_frames, offset) == (600, 0)
    np.testing.assert_array_equal(fitted, _ramp(600)[:, :512])


@pytest.mark.parametrize("convention", ["paper", "released_code"])
def test_window_exact_length(convention):
    fitted, num_frames, offset = fit_window(_ramp(512), 512, convention)
    assert (num_frames, offset) == (512, 0)
    np.testing.assert_array_equal(fitted, _ramp(512))


# -- bad input -------------------------------------------------------------------


def _write(path, data, rate=16000):
    soundfile.write(path, data, rate, subtype="PCM_16")
    return path


@pytest.mark.parametrize(
    "name, make, status",
    [
        ("empty.wav", lambda p: _write(p, np.zeros(0, np.float32)), "empty"),
        ("short.wav", lambda p: _write(p, _tone(440.0, 200 / 16000)), "too_short"),
        ("corrupt.wav", lambda p: p.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt garbage" * 4), "unreadable"),
        ("missing.wav", lambda p: None, "missing"),
    ],
)
def test_caption_bad_wav_status(tmp_path, name, make, status):
    path = tmp_path / name
    make(path)
    with pytest.raises(AudioInputError) as caught:
        caption_features(path, AUDIO, 512, "paper")
    assert caught.value.status == status
    assert str(path) in str(caught.value)


def test_caption_nan_samples_status(tmp_path):
    path = tmp_path / "nan.wav"
    data = _tone(440.0, 0.2)
    data[100] = np.nan
    soundfile.write(path, data, 16000, subtype="FLOAT")
    with pytest.raises(AudioInputError) as caught:
        caption_features(path, AUDIO, 512, "paper")
    assert caught.value.status == "non_finite"


def test_caption_silent_wav_valid(tmp_path):
    path = _write(tmp_path / "silent.wav", np.zeros(16000, np.float32))
    features, num_frames, offset = caption_features(path, AUDIO, 512, "paper")
    assert (num_frames, offset) == (101, 0)
    assert np.all(features == np.float32(FLOOR_DB))


@pytest.mark.parametrize("rate, channels", [(8000, 1), (44100, 2), (22050, 1)])
def test_caption_frames_match_count_frames(tmp_path, rate, channels):
    samples = int(1.37 * rate)
    data = np.repeat(_tone(500.0, samples / rate, rate=rate)[:, None], channels, axis=1)
    path = _write(tmp_path / "tone.wav", data, rate)
    _, num_frames, offset = caption_features(path, AUDIO, 512, "released_code")
    assert num_frames == count_frames(samples, 160, rate, 16000)
    assert offset == 512 - num_frames


def test_caption_long_cut(tmp_path):
    path = _write(tmp_path / "long.wav", _tone(440.0, 6.0))
    features, num_frames, offset = caption_features(path, AUDIO, 512, "released_code")
    assert (num_frames, offset) == (601, 0)
    expected = log_mel(soundfile.read(path, dtype="float32")[0], 16000, AUDIO)[:, :512]
    np.testing.assert_array_equal(features, expected)


# -- stage -----------------------------------------------------------------------


@pytest.fixture()
def audio_run(tmp_path, monkeypatch, project_root):
    """A run folder in tmp_path with a 6-caption manifest: 4 valid WAVs, a missing one, a corrupt one."""
    monkeypatch.chdir(tmp_path)
    params = load_params(
        [project_root / "params.yaml"],
        overrides={"run": "unit", "features": {"audio_shards": 2}},
    )
    wav_dir = tmp_path / "wavs"
    wav_dir.mkdir()
    rows = []
    for caption_id in [11, 12, 13, 14, 15, 16]:
        path = wav_dir / f"{caption_id}.wav"
        if caption_id == 13:
            path.write_bytes(b"not a wav file at all")
        elif caption_id != 15:
            _write(path, _tone(200.0 * caption_id / 10, 0.5 + 0.5 * (caption_id % 3)))
        rows.append({"caption_id": caption_id, "image_id": caption_id // 2, "wav_path": os.path.relpath(path, tmp_path)})
    paths = RunPaths(params)
    paths.manifest.parent.mkdir(parents=True)
    # Unsorted on purpose: shards are blocks of the sorted ids.
    pd.DataFrame(rows).sample(frac=1.0, random_state=0).to_parquet(paths.manifest)
    return params, paths, rows


def test_stage_writes_blocks(audio_run):
    params, paths, rows = audio_run
    for shard in paths.audio_shard_names:
        audio.run(params, paths, shard)
    first = pd.read_parquet(paths.audio_index("0000"))
    second = pd.read_parquet(paths.audio_index("0001"))
    assert first["caption_id"].tolist() == [11, 12, 13]
    assert second["caption_id"].tolist() == [14, 15, 16]
    assert first["status"].tolist() == ["ok", "ok", "unreadable"]
    assert second["status"].tolist() == ["ok", "missing", "ok"]
    # 1.5 s and 0.5 s at 16 kHz: 1 + 24000 // 160 and 1 + 8000 // 160 frames.
    assert first["num_frames"].tolist() == [151, 51, 0]
    assert first["offset"].tolist() == [0, 0, 0]
    assert read_parquet_metadata(paths.audio_index("0001"))["skipped"] == {"missing": 1}
    assert read_parquet_metadata(paths.audio_index("0000"))["status_counts"] == {"ok": 2, "unreadable": 1}

    store = FeatureStore.from_dir(paths.audio_shard("0000").parent)
    assert store.dtype == np.float16
    assert store.item_shape == (40, 512)
    wav = dict((row["caption_id"], row["wav_path"]) for row in rows)
    for caption_id in [11, 12, 14, 16]:
        expected, _, _ = caption_features(wav[caption_id], params["features"]["audio"], 512, "paper")
        np.testing.assert_array_equal(store.get(int(store.position_of([caption_id])[0])), expected.astype(np.float16))
    assert np.all(store.get(int(store.position_of([15])[0])) == 0)


def test_stage_skips_current_shard(audio_run):
    params, paths, _ = audio_run
    audio.run(params, paths, "0000")
    stamp = os.stat(paths.audio_shard("0000")).st_mtime_ns
    audio.run(params, paths, "0000")
    assert os.stat(paths.audio_shard("0000")).st_mtime_ns == stamp


def test_stage_rebuilds_corrupt_shard(audio_run):
    params, paths, _ = audio_run
    audio.run(params, paths, "0000")
    original = paths.audio_shard("0000").read_bytes()
    damaged = bytearray(original)
    damaged[-100] ^= 0xFF
    paths.audio_shard("0000").write_bytes(bytes(damaged))
    audio.run(params, paths, "0000")
    assert paths.audio_shard("0000").read_bytes() == original


def test_stage_rebuilds_stale_shard(audio_run):
    params, paths, _ = audio_run
    audio.run(params, paths, "0001")
    released = {**params, "frames": {**params["frames"], "convention": "released_code"}}
    audio.run(released, paths, "0001")
    index = pd.read_parquet(paths.audio_index("0001"))
    # Captions 14 (1.5 s, 151 frames), 15 (missing) and 16 (1.0 s, 101 frames).
    assert index["offset"].tolist() == [512 - 151, 0, 512 - 101]
    assert verify_shard(paths.audio_shard("0001"), paths.audio_index("0001"), None) is None
