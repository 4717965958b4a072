"""Stage ``extract_audio_features``: 40-band log-mel spectrograms of the captions, one shard per job.

Each caption becomes a ``[n_mels, window]`` array (40 x 512 with the defaults
of params.yaml). The WAV is mixed to mono, resampled to ``features.audio.sample_rate``
(16 kHz) with soxr through librosa, and analysed with a Hann window of
``win_length`` samples (25 ms), a hop of ``hop_length`` samples (10 ms) and an
FFT of ``n_fft`` points. The STFT is centred as in ``librosa.stft`` (zero
padding of ``n_fft // 2`` at both ends), so frame ``t`` is centred on
``t * hop`` samples and a caption of ``S`` samples has ``1 + S // hop`` frames.
It is computed here with NumPy framing and ``scipy.fft.rfft``, about five
times faster than ``librosa.stft`` on short captions; a test checks the
result against ``librosa.feature.melspectrogram``.
The power spectrum goes through librosa's mel filter bank (Slaney scale
and norm, 0 Hz to Nyquist) and then ``10 * log10``. Zero mel bins are replaced
by the smallest non-zero value of the same spectrogram before the log, the
rule of Khorrami and Räsänen (Interspeech 2021). A spectrogram with no non-zero value at all (digital silence)
uses :data:`FLOOR_POWER` instead, so every value is finite.

The spectrogram is then cut or padded to ``frames.window`` frames:

- cut: the first ``window`` frames are kept;
- pad: at the end (``frames.convention: paper``) or at the start
  (``released_code``), where the authors' released code pads. The number of
  frames added in front is the index column ``offset`` and comes from
  :func:`vgsalign.frames.window_offset`, the same function that maps word time
  stamps to frames.

Bad input is skipped and counted, never fatal. Each skipped caption keeps its
row in the shard with an all-zero spectrogram, ``num_frames = 0`` and a
``status`` naming the reason (see :data:`STATUS_REASONS`).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import librosa
import numpy as np
import pandas as pd
import scipy.fft
import scipy.signal
import soundfile
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from vgsalign.features.shards import STATUS_OK, ShardWriter, SkipLog, ids_digest, parse_shard, shard_block, verify_shard
from vgsalign.frames import window_offset
from vgsalign.layout import RunPaths

logger = logging.getLogger(__name__)

# Mel power used in place of zero bins when a spectrogram has no non-zero bin at
# all (an all-zero WAV): 1e-10, i.e. -100 dB, below the quietest bin of a 16-bit
# recording. Every value of such a spectrogram equals FLOOR_DB.
FLOOR_POWER = 1e-10
FLOOR_DB = 10.0 * np.log10(FLOOR_POWER)

STATUS_REASONS = {
    "missing": "the WAV file listed in the manifest does not exist",
    "unreadable": "the WAV header or data could not be decoded",
    "empty": "the WAV has no samples",
    "too_short": "the WAV is shorter than one analysis window (win_length samples)",
    "non_finite": "the WAV contains NaN or infinite samples",
}


class AudioInputError(ValueError):
    """A caption whose audio cannot be turned into features; ``status`` is its skip reason."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status


# -- pure functions ------------------------------------------------------------


def to_mono(waveform: np.ndarray) -> np.ndarray:
    """Return a 1-D float32 waveform; a 2-D ``[samples, channels]`` array (soundfile's layout) is averaged."""
    waveform = np.asarray(waveform, dtype=np.float32)
    if waveform.ndim == 1:
        return waveform
    if waveform.ndim == 2:
        return waveform.mean(axis=1, dtype=np.float32)
    raise ValueError(f"waveform must be 1-D or [samples, channels], got shape {waveform.shape}")


def resample(waveform: np.ndarray, sample_rate: int, target_rate: int) -> np.ndarray:
    """Resample a mono waveform to ``target_rate`` (soxr, high quality); no-op at the same rate."""
    if sample_rate == target_rate:
        return waveform
    return librosa.resample(waveform, orig_sr=sample_rate, target_sr=target_rate, res_type="soxr_hq").astype(np.float32)


@functools.lru_cache(maxsize=8)
def stft_window(n_fft: int, win_length: int) -> np.ndarray:
    """Return the periodic Hann window of ``win_length`` samples centred in ``n_fft`` zeros, as librosa pads it."""
    window = np.zeros(n_fft, dtype=np.float32)
    start = (n_fft - win_length) // 2
    window[start : start + win_length] = scipy.signal.get_window("hann", win_length, fftbins=True)
    return window


def power_spectrogram(signal: np.ndarray, n_fft: int, hop_length: int, win_length: int) -> np.ndarray:
    """Return the centred STFT power ``[n_fft // 2 + 1, 1 + len(signal) // hop_length]`` for an even ``n_fft``."""
    padded = np.pad(signal, n_fft // 2)  # zeros, as librosa.stft(center=True, pad_mode="constant")
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop_length]  # [F, n_fft]
    spectrum = scipy.fft.rfft(frames * stft_window(n_fft, win_length), axis=1)  # [F, n_fft // 2 + 1]
    return (spectrum.real**2 + spectrum.imag**2).T  # [n_fft // 2 + 1, F]


@functools.lru_cache(maxsize=8)
def mel_basis(sample_rate: int, n_fft: int, n_mels: int) -> np.ndarray:
    """Return librosa's mel filter bank ``[n_mels, n_fft // 2 + 1]`` (Slaney scale and norm)."""
    return librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels).astype(np.float32)


def log_mel(waveform: np.ndarray, sample_rate: int, params: Mapping[str, Any]) -> np.ndarray:
    """Compute the log-mel spectrogram ``[n_mels, frames]`` in dB of one waveform.

    ``waveform`` is 1-D or ``[samples, channels]``; ``params`` is the
    ``features.audio`` mapping. The input is mixed to mono and resampled to
    ``params["sample_rate"]`` first.
    """
    if params["n_fft"] % 2:
        raise ValueError(
            f"features.audio.n_fft ({params['n_fft']}) is odd; use an even size so that a caption of S samples "
            "has 1 + S // hop_length frames, the count that word frame mapping assumes"
        )
    if params["n_fft"] < params["win_length"]:
        raise ValueError(
            f"features.audio.n_fft ({params['n_fft']}) is smaller than win_length ({params['win_length']}); "
            "set n_fft >= win_length"
        )
    target_rate = int(params["sample_rate"])
    signal = resample(to_mono(waveform), int(sample_rate), target_rate)
    if signal.size == 0:
        raise ValueError("cannot compute a spectrogram of an empty waveform")

    power = power_spectrogram(signal, params["n_fft"], params["hop_length"], params["win_length"])
    mel = mel_basis(target_rate, params["n_fft"], params["n_mels"]) @ power  # [n_mels, F]
    mel = mel.astype(np.float64)  # so that the floor maps to exactly FLOOR_DB

    positive = mel > 0
    smallest = mel[positive].min() if positive.any() else FLOOR_POWER
    mel = np.where(positive, mel, smallest)
    return (10.0 * np.log10(mel)).astype(np.float32)


def fit_window(spectrogram: np.ndarray, window: int, convention: str) -> tuple[np.ndarray, int, int]:
    """Cut or pad ``spectrogram [n_mels, F]`` to ``[n_mels, window]``; return it, ``F`` and the offset.

    Output frame ``t`` contains input frame ``t - offset``, where ``offset`` comes
    from :func:`vgsalign.frames.window_offset`.
    Padding frames take the minimum of the spectrogram, the value that padding
    the waveform with silence would produce under the zero-bin rule.
    """
    # NOTE: Khorrami and Räsänen do not state their padding value, so the spectrogram minimum is our choice.
    num_frames = spectrogram.shape[1]
    offset = int(window_offset(num_frames, window, convention))
    fill = spectrogram.min() if spectrogram.size else FLOOR_DB
    fitted = np.full((spectrogram.shape[0], window), fill, dtype=spectrogram.dtype)  # [n_mels, window]
    first = max(offset, 0)  # first output frame that contains speech
    last = min(window, offset + num_frames)  # one past the last
    if last > first:
        fitted[:, first:last] = spectrogram[:, first - offset : last - offset]
    return fitted, num_frames, offset


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """Read a WAV as float32 ``[samples, channels]``; raise AudioInputError with the skip reason."""
    path = Path(path)
    if not path.is_file():
        raise AudioInputError("missing", f"WAV file {path} not found")
    try:
        waveform, sample_rate = soundfile.read(path, dtype="float32", always_2d=True)
    except (soundfile.SoundFileError, OSError) as error:
        raise AudioInputError("unreadable", f"cannot decode WAV file {path}: {error}") from error
    return waveform, int(sample_rate)


def caption_features(
    path: str | Path, audio_params: Mapping[str, Any], window: int, convention: str
) -> tuple[np.ndarray, int, int]:
    """Read one WAV and return its windowed log-mel ``[n_mels, window]``, real frame count and offset.

    Raises AudioInputError (with ``status``) for the skip cases of :data:`STATUS_REASONS`.
    """
    waveform, sample_rate = read_wav(path)
    if waveform.shape[0] == 0:
        raise AudioInputError("empty", f"WAV file {path} has no samples")
    if not np.isfinite(waveform).all():
        raise AudioInputError("non_finite", f"WAV file {path} contains NaN or infinite samples")
    signal = resample(to_mono(waveform), sample_rate, int(audio_params["sample_rate"]))
    if signal.size < audio_params["win_length"]:
        raise AudioInputError(
            "too_short",
            f"WAV file {path} has {signal.size} samples at {audio_params['sample_rate']} Hz, "
            f"fewer than one analysis window of {audio_params['win_length']}",
        )
    spectrogram = log_mel(signal, int(audio_params["sample_rate"]), audio_params)
    return fit_window(spectrogram, window, convention)


# -- stage ---------------------------------------------------------------------


def shard_params(params: Mapping[str, Any], shard: int, ids: np.ndarray) -> dict[str, Any]:
    """Return the values that determine an audio shard's content (stored in and checked against its index)."""
    return {
        "features.audio": dict(params["features"]["audio"]),
        "features.dtype": params["features"]["dtype"],
        "features.audio_shards": params["features"]["audio_shards"],
        "frames.window": params["frames"]["window"],
        "frames.convention": params["frames"]["convention"],
        "shard": shard,
        "ids_sha256": ids_digest(ids),
        "librosa": librosa.__version__,
    }


def shard_captions(manifest: pd.DataFrame, num_shards: int, shard: int) -> pd.DataFrame:
    """Return the manifest rows of shard ``shard`` (a contiguous block of the sorted caption ids)."""
    block = shard_block(manifest["caption_id"].to_numpy(), num_shards, shard)
    return manifest.set_index("caption_id").loc[block].reset_index()


def run(params: Mapping[str, Any], paths: RunPaths, shard: str) -> None:
    """Write audio shard ``shard``: log-mel spectrograms of one block of the caption manifest."""
    number = parse_shard(shard)
    audio_params = params["features"]["audio"]
    window = int(params["frames"]["window"])
    convention = params["frames"]["convention"]
    npy_path, index_path = paths.audio_shard(shard), paths.audio_index(shard)

    manifest = pd.read_parquet(paths.manifest, columns=["caption_id", "image_id", "wav_path"])
    captions = shard_captions(manifest, params["features"]["audio_shards"], number)
    params_used = shard_params(params, number, captions["caption_id"].to_numpy())

    reason = verify_shard(npy_path, index_path, params_used)
    if reason is None:
        logger.info("audio shard %s is up to date (%d captions); nothing to do", shard, len(captions))
        return
    if index_path.exists() or npy_path.exists():
        logger.warning("rebuilding audio shard %s: %s", shard, reason)

    num_frames = np.zeros(len(captions), dtype=np.int64)
    offsets = np.zeros(len(captions), dtype=np.int64)
    statuses = np.full(len(captions), STATUS_OK, dtype=object)
    skips = SkipLog(logger, "caption")
    started = time.perf_counter()
    item_shape = (int(audio_params["n_mels"]), window)
    # One BLAS thread: the mel projection is a small matrix product, and a multi-threaded BLAS
    # made it several times slower on a busy 2-core machine. Shards run as parallel jobs instead.
    with (
        threadpool_limits(limits=1, user_api="blas"),
        ShardWriter(npy_path, index_path, len(captions), item_shape, params["features"]["dtype"], params_used) as writer,
    ):
        rows = zip(captions["caption_id"], captions["wav_path"])
        for row, (caption_id, wav_path) in enumerate(tqdm(rows, total=len(captions), desc=f"audio {shard}", unit="caption")):
            try:
                if wav_path is None or pd.isna(wav_path):
                    raise AudioInputError("missing", f"caption {caption_id} has no WAV path in the manifest")
                features, num_frames[row], offsets[row] = caption_features(wav_path, audio_params, window, convention)
            except AudioInputError as error:
                statuses[row] = error.status
                skips.add(caption_id, error.status, str(error))
                continue
            writer.write(row, features)

        index = captions[["caption_id", "image_id"]].assign(num_frames=num_frames, offset=offsets, status=statuses)
        skipped = skips.sorted_counts()
        writer.finish(index, metadata={"skipped": skipped, "floor_db": FLOOR_DB, "pad_value": "spectrogram minimum"})

    elapsed = time.perf_counter() - started
    logger.info(
        "audio shard %s: %d captions in %.1f s (%.0f captions/s), %d skipped by status %s",
        shard,
        len(captions),
        elapsed,
        len(captions) / max(elapsed, 1e-9),
        sum(skipped.values()),
        skipped,
    )
