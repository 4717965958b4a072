"""Frame intervals of words under both conventions, with values computed by hand."""

import math

import numpy as np
import pandas as pd
import pytest

from vgsalign import frames


def _words(rows):
    return pd.DataFrame(rows, columns=["caption_id", "start_ms", "end_ms", "num_frames", "is_last"])


def _intervals(table):
    return list(zip(table["caption_id"], table["frame_start"], table["frame_end"]))


def test_count_frames_librosa_rule():
    assert frames.count_frames(16000, 160) == 101
    assert frames.count_frames(159, 160) == 1
    assert frames.count_frames(160, 160) == 2
    assert frames.count_frames(0, 160) == 1
    assert list(frames.count_frames(np.array([320, 481]), 160)) == [3, 4]


def test_count_frames_resampled():
    # 8 kHz: 8000 samples become 16000 at 16 kHz.
    assert frames.count_frames(8000, 160, sample_rate=8000, feature_sample_rate=16000) == 101
    # 44.1 kHz: ceil(44101 * 16000 / 44100) = 16001 samples, so 1 + 16001 // 160 = 101.
    assert frames.count_frames(44101, 160, sample_rate=44100, feature_sample_rate=16000) == 101
    # 44.1 kHz: ceil(44200 * 16000 / 44100) = 16037, so 1 + 100 = 101; 44600 -> 16182 -> 102.
    assert frames.count_frames(44600, 160, sample_rate=44100, feature_sample_rate=16000) == 102


def test_count_frames_matches_librosa():
    librosa = pytest.importorskip("librosa")
    for num_samples in (1000, 16000, 16161):
        spectrogram = librosa.stft(np.zeros(num_samples, dtype=np.float32), n_fft=512, hop_length=160, win_length=400)
        assert frames.count_frames(num_samples, 160) == spectrogram.shape[1]


def test_count_frames_rejects_negative():
    with pytest.raises(frames.FramesError, match="negative"):
        frames.count_frames(-1, 160)


def test_window_offset_both_conventions():
    assert frames.window_offset(300, 512, "paper") == 0
    assert frames.window_offset(300, 512, "released_code") == 212
    assert frames.window_offset(512, 512, "released_code") == 0
    assert frames.window_offset(600, 512, "released_code") == 0
    assert list(frames.window_offset(np.array([1, 511, 900]), 512, "released_code")) == [511, 1, 0]


def test_window_offset_unknown_convention():
    with pytest.raises(frames.FramesError, match="released_code"):
        frames.window_offset(10, 512, "keras")


def test_ms_to_frame_rounding():
    assert list(frames.ms_to_frame([0.0, 9.99, 10.0, 255.5], "floor")) == [0, 0, 1, 25]
    assert list(frames.ms_to_frame([0.0, 9.99, 10.0, 255.5], "ceil")) == [0, 1, 1, 26]
    # 1.23 s read back as 1229.9999999999998 ms is frame 123, not 122 or 124.
    assert frames.ms_to_frame(1.23 * 1000, "floor") == 123
    assert frames.ms_to_frame(1.23 * 1000, "ceil") == 123


PAPER_WORDS = [
    (1, 0.0, 250.0, 900, False),  # [0, 25)
    (1, 255.5, 401.2, 900, False),  # floor(25.55) = 25, ceil(40.12) = 41
    (1, 300.0, 300.0, 900, False),  # empty [30, 30) widened to [30, 31)
    (1, 5100.0, 5150.0, 900, False),  # [510, 515) crosses 512
    (1, 5120.0, 5300.0, 900, True),  # starts at frame 512: always dropped
    (2, float("nan"), 100.0, 40, False),  # invalid
    (2, 200.0, 100.0, 40, True),  # end before start: invalid
]


def test_paper_clip():
    kept, counts = frames.assign_frames(_words(PAPER_WORDS), convention="paper", window=512, crossing_words="clip")
    assert _intervals(kept) == [(1, 0, 25), (1, 25, 41), (1, 30, 31), (1, 510, 512)]
    assert list(kept["offset"]) == [0, 0, 0, 0]
    assert counts["words_in"] == 7
    assert counts["words_kept"] == 4
    assert counts["clipped"] == 1
    assert counts["dropped_crossing"] == 0
    assert counts["dropped_after_window"] == 1
    assert counts["widened"] == 1
    assert counts["invalid_interval"] == 2


def test_paper_drop_crossing():
    kept, counts = frames.assign_frames(_words(PAPER_WORDS), convention="paper", window=512, crossing_words="drop")
    assert _intervals(kept) == [(1, 0, 25), (1, 25, 41), (1, 30, 31)]
    assert counts["dropped_crossing"] == 1
    assert counts["clipped"] == 0
    assert counts["dropped_after_window"] == 1


def test_paper_word_ending_at_window():
    # [500, 512) ends exactly at the window: neither clipped nor dropped.
    kept, counts = frames.assign_frames(
        _words([(1, 5000.0, 5120.0, 700, True)]), convention="paper", window=512, crossing_words="drop"
    )
    assert _intervals(kept) == [(1, 500, 512)]
    assert counts["dropped_crossing"] == 0


def test_released_start_padding():
    rows = [
        # 301 real frames: offset 512 - 301 = 211.
        (1, 0.0, 250.0, 301, False),  # ceil: [0, 25) + 211
        (1, 255.5, 401.2, 301, False),  # ceil(25.55) = 26, ceil(40.12) = 41
        (1, 2991.0, 3050.0, 301, True),  # last: 300 .. 302, + 211 = [511, 513) clipped to 512
    ]
    kept, counts = frames.assign_frames(_words(rows), convention="released_code", window=512)
    assert _intervals(kept) == [(1, 211, 236), (1, 237, 252), (1, 511, 512)]
    assert list(kept["offset"]) == [211, 211, 211]
    assert counts["clipped"] == 1
    assert counts["dropped_after_window"] == 0


def test_released_cut_caption():
    rows = [
        # 600 real frames: cut, offset 0.
        (2, 4000.0, 4100.0, 600, False),  # [400, 410)
        (2, 5000.0, 5115.0, 600, False),  # ceil(511.5) = 512: ends at the window, dropped
        (2, 5110.0, 5300.0, 600, True),  # last: onset 511, end 513: dropped
    ]
    kept, counts = frames.assign_frames(_words(rows), convention="released_code", window=512)
    assert _intervals(kept) == [(2, 400, 410)]
    assert counts["dropped_after_window"] == 2


def test_released_ignores_last_end():
    # The metadata end (9000 ms) is ignored: the last word ends 2 frames after ceil(101.1) = 102.
    rows = [(3, 1011.0, 9000.0, 110, True)]
    kept, _ = frames.assign_frames(_words(rows), convention="released_code", window=512)
    offset = 512 - 110
    assert _intervals(kept) == [(3, 102 + offset, 104 + offset)]


@pytest.mark.parametrize("convention", ["paper", "released_code"])
def test_word_after_audio_dropped(convention):
    # 50 real frames; a word at 600 ms (frame 60) points past the end of the audio.
    rows = [(5, 100.0, 200.0, 50, False), (5, 600.0, 700.0, 50, True)]
    kept, counts = frames.assign_frames(_words(rows), convention=convention, window=512)
    assert kept["caption_id"].tolist() == [5]
    assert counts["dropped_after_audio"] == 1
    assert counts["words_kept"] == 1


def test_released_widens_empty():
    # ceil(10.1) = ceil(10.9) = 11, so the empty [11, 11) is widened to [11, 12).
    rows = [(4, 101.0, 109.0, 512, False), (4, 200.0, 300.0, 512, True)]
    kept, counts = frames.assign_frames(_words(rows), convention="released_code", window=512)
    assert _intervals(kept) == [(4, 11, 12), (4, 20, 22)]
    assert counts["widened"] == 1


def test_assign_frames_keeps_columns():
    table = _words([(1, 0.0, 10.0, 5, True)]).assign(word="dog")
    kept, _ = frames.assign_frames(table, convention="paper", window=512)
    assert kept["word"].tolist() == ["dog"]


def test_assign_frames_missing_column():
    table = pd.DataFrame({"start_ms": [0.0], "end_ms": [1.0]})
    with pytest.raises(frames.FramesError, match="num_frames"):
        frames.assign_frames(table, convention="paper", window=512)


def test_assign_frames_empty_table():
    kept, counts = frames.assign_frames(_words([]), convention="released_code", window=512)
    assert len(kept) == 0
    assert counts["words_in"] == 0


def test_small_window_matches_loop():
    # An independent per-word loop of the paper convention, on random times and a 20-frame window.
    rng = np.random.default_rng(3)
    starts = rng.uniform(0, 260, size=200)
    ends = starts + rng.uniform(0, 60, size=200)
    table = _words([(i, s, e, 30, False) for i, (s, e) in enumerate(zip(starts, ends))])
    kept, _ = frames.assign_frames(table, convention="paper", window=20, crossing_words="clip")
    expected = []
    for i, (s, e) in enumerate(zip(starts, ends)):
        first, last = math.floor(s / 10), math.ceil(e / 10)
        if first >= 20:
            continue
        last = max(last, first + 1)
        expected.append((i, first, min(last, 20)))
    assert _intervals(kept) == expected
