"""Map word times in milliseconds to the 10 ms frames of the model's fixed-length input.

Every stage that needs a word's frames (nouns, pairs, scoring) and the audio
feature stage, which pads or cuts the log-mel spectrogram, call this module, so
word intervals and features line up by construction.

The model input is ``window`` frames (512, i.e. 5.12 s). A caption's real frame
count is what librosa's centred STFT gives, ``1 + num_samples // hop_length``.
Shorter captions are padded, longer ones cut to the first ``window`` frames.

Two conventions (``frames.convention``):

``paper``
    Padding at the end, so word frames are not shifted (offset 0). A word covers
    the half-open interval ``[floor(start_ms / 10), ceil(end_ms / 10))`` and its
    end comes from the speech metadata. A word that starts at or after the
    window is dropped. A word that crosses the window's end is clipped to it or
    dropped, as ``frames.crossing_words`` sets.
``released_code``
    The authors' released code (github.com/khazarkhorrami/VGS_alignment,
    ``step_1/1_reading_words.py``): padding at the start, so every word moves by
    ``offset = window - num_frames`` frames (0 when the caption is cut). Onset
    and end are ``ceil(ms / 10)``, and the last word of a caption ends at its
    onset + 2 frames, ignoring the metadata. A word whose onset or end is at or
    beyond frame ``window``, counted before the shift, is dropped.
    For a caption with sorted times this drops the same words as the released
    code, which cuts the caption at the first such word.

Both conventions drop a word whose first frame lies past the caption's real
frames (``frame_start >= num_frames`` before the shift: metadata that points
past the end of the audio), and apply
two repairs: an interval that rounding leaves empty is widened to one frame,
and an end beyond the window after the shift is clipped to the window. Every
drop and repair is counted.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

FRAME_MS = 10.0
CONVENTIONS = ("paper", "released_code")
CROSSING_RULES = ("clip", "drop")
# The released code ends a caption's last word this many frames after its onset.
RELEASED_LAST_WORD_FRAMES = 2
# Times are rounded to this many decimals of a frame before floor/ceil, so that
# 1230 ms read back from seconds as 1229.9999999 still maps to frame 123.
_FRAME_DECIMALS = 6

COUNT_KEYS = (
    "words_in",
    "words_kept",
    "invalid_interval",
    "dropped_after_audio",
    "dropped_after_window",
    "dropped_crossing",
    "clipped",
    "widened",
)


class FramesError(ValueError):
    """Invalid frame parameters or input columns."""


def _check_convention(convention: str) -> None:
    if convention not in CONVENTIONS:
        raise FramesError(f"invalid frames convention {convention!r}: use one of {', '.join(CONVENTIONS)}")


def count_frames(
    num_samples: int | np.ndarray,
    hop_length: int,
    sample_rate: int | np.ndarray | None = None,
    feature_sample_rate: int | None = None,
) -> int | np.ndarray:
    """Return the number of STFT frames of a WAV: ``1 + n // hop_length`` (librosa, ``center=True``).

    When the WAV's ``sample_rate`` differs from ``feature_sample_rate`` the audio
    is resampled first, and ``n`` is the resampled length
    ``ceil(num_samples * feature_sample_rate / sample_rate)`` (librosa.resample's length).
    The count is not capped; :func:`window_offset` and the feature stage cap it.
    """
    if hop_length < 1:
        raise FramesError(f"invalid hop_length {hop_length}: it must be a positive number of samples")
    samples = np.asarray(num_samples, dtype=np.int64)
    if np.any(samples < 0):
        raise FramesError("num_samples contains a negative value; a WAV has zero or more samples")
    if sample_rate is not None and feature_sample_rate is not None:
        rate = np.asarray(sample_rate, dtype=np.int64)
        if np.any(rate <= 0):
            raise FramesError("sample_rate contains a value <= 0; every WAV needs a positive sample rate")
        # Integer arithmetic: ceil(a / b) = -(-a // b), exact for any size.
        samples = -(-(samples * feature_sample_rate) // rate)
    frames = 1 + samples // hop_length
    return int(frames) if frames.ndim == 0 else frames


def window_offset(num_frames: int | np.ndarray, window: int, convention: str) -> int | np.ndarray:
    """Return the frames of padding placed before the speech in the model's input.

    ``paper`` pads at the end, so the offset is 0. ``released_code`` pads at the
    start: the offset is ``window - num_frames`` for a caption shorter than the
    window and 0 for one that is cut. The audio feature stage pads its
    spectrogram with this same offset.
    """
    _check_convention(convention)
    frames = np.asarray(num_frames, dtype=np.int64)
    if convention == "paper":
        offset = np.zeros_like(frames)
    else:
        offset = np.maximum(window - frames, 0)
    return int(offset) if offset.ndim == 0 else offset


def ms_to_frame(ms: float | np.ndarray, rounding: str) -> np.ndarray:
    """Return the 10 ms frame index of each time, rounded down (``floor``) or up (``ceil``)."""
    scaled = np.round(np.asarray(ms, dtype=np.float64) / FRAME_MS, _FRAME_DECIMALS)
    if rounding == "floor":
        return np.floor(scaled).astype(np.int64)
    if rounding == "ceil":
        return np.ceil(scaled).astype(np.int64)
    raise FramesError(f"invalid rounding {rounding!r}: use 'floor' or 'ceil'")


def assign_frames(
    words: pd.DataFrame,
    *,
    convention: str,
    window: int,
    crossing_words: str = "clip",
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Add each word's half-open frame interval in the model's input; drop words outside it.

    ``words`` needs the columns ``start_ms``, ``end_ms``, ``num_frames`` (real
    frames of the word's caption, see :func:`count_frames`) and ``is_last``
    (the word is the last one of its caption). Other columns are kept.

    Returns the kept rows with ``frame_start``, ``frame_end`` (int64, inside
    ``[0, window]``) and ``offset`` added, and the counts named in ``COUNT_KEYS``.
    A word with a missing or negative time or an end before its start is
    dropped and counted as ``invalid_interval``.
    """
    _check_convention(convention)
    if crossing_words not in CROSSING_RULES:
        raise FramesError(f"invalid frames.crossing_words {crossing_words!r}: use 'clip' or 'drop'")
    if window < 1:
        raise FramesError(f"invalid frames.window {window}: it must be a positive number of frames")
    missing = [column for column in ("start_ms", "end_ms", "num_frames", "is_last") if column not in words]
    if missing:
        raise FramesError(f"assign_frames needs the columns {missing}; the word table has {list(words.columns)}")

    start_ms = words["start_ms"].to_numpy(dtype=np.float64)
    end_ms = words["end_ms"].to_numpy(dtype=np.float64)
    num_frames = words["num_frames"].to_numpy(dtype=np.int64)
    is_last = words["is_last"].to_numpy(dtype=bool)

    valid = np.isfinite(start_ms) & np.isfinite(end_ms) & (start_ms >= 0) & (end_ms >= start_ms)
    # Invalid rows get harmless times so the arithmetic below stays finite; they are dropped at the end.
    start_ms = np.where(valid, start_ms, 0.0)
    end_ms = np.where(valid, end_ms, 0.0)

    if convention == "paper":
        start = ms_to_frame(start_ms, "floor")
        end = ms_to_frame(end_ms, "ceil")
        after_window = start >= window
        crossing = ~after_window & (end > window)
        dropped_crossing = crossing if crossing_words == "drop" else np.zeros_like(crossing)
        keep = valid & ~after_window & ~dropped_crossing
    else:
        start = ms_to_frame(start_ms, "ceil")
        end = np.where(is_last, start + RELEASED_LAST_WORD_FRAMES, ms_to_frame(end_ms, "ceil"))
        after_window = (start >= window) | (end >= window)
        dropped_crossing = np.zeros_like(after_window)
        keep = valid & ~after_window

    after_audio = valid & ~after_window & ~dropped_crossing & (start >= num_frames)
    keep &= ~after_audio
    widened = keep & (end <= start)
    end = np.where(widened, start + 1, end)
    offset = np.asarray(window_offset(num_frames, window, convention), dtype=np.int64)
    start = start + offset
    end = end + offset
    clipped = keep & (end > window)
    end = np.minimum(end, window)

    counts = {
        "words_in": int(len(words)),
        "words_kept": int(keep.sum()),
        "invalid_interval": int((~valid).sum()),
        "dropped_after_audio": int(after_audio.sum()),
        "dropped_after_window": int((valid & after_window).sum()),
        "dropped_crossing": int((valid & dropped_crossing).sum()),
        "clipped": int(clipped.sum()),
        "widened": int(widened.sum()),
    }
    result = words.loc[keep].copy()
    result["frame_start"] = start[keep]
    result["frame_end"] = end[keep]
    result["offset"] = offset[keep]
    return result, counts


def frames_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Return the keyword arguments of :func:`assign_frames` from the run parameters."""
    frames = params["frames"]
    return {
        "convention": frames["convention"],
        "window": int(frames["window"]),
        "crossing_words": frames["crossing_words"],
    }


def log_frame_counts(counts: Mapping[str, int], convention: str) -> None:
    """Log how many words were dropped, clipped or widened by the frame rules."""
    logger.info(
        "frames (%s): %d of %d words kept; dropped: %d invalid interval, %d after the audio, %d after the window, "
        "%d crossing the window end; %d clipped at the window end; %d widened to one frame",
        convention,
        counts["words_kept"],
        counts["words_in"],
        counts["invalid_interval"],
        counts["dropped_after_audio"],
        counts["dropped_after_window"],
        counts["dropped_crossing"],
        counts["clipped"],
        counts["widened"],
    )
