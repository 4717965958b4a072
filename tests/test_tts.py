"""espeak-ng synthesis: words and onsets, speed, determinism, event alignment and timecode."""

from __future__ import annotations

import numpy as np
import pytest

from vgsalign.speech import speechcoco, tts
from vgsalign.speech.tts import EVENT_PHONEME, EVENT_WORD, Phone, RawEvent

try:
    import espeakng_loader  # noqa: F401

    HAVE_ESPEAK = True
except ImportError:  # the optional 'tts' extra is not installed
    HAVE_ESPEAK = False

needs_espeak = pytest.mark.skipif(not HAVE_ESPEAK, reason="espeakng-loader (optional extra 'tts') is not installed")

CAPTION = "A large red circle, on the left of a small blue square."


# -- text ---------------------------------------------------------------------------


def test_tokenize_strips_edge_punctuation():
    tokens = tts.tokenize("A man's t-shirt, & (blue) hat.")
    assert [t.word for t in tokens] == ["A", "man's", "t-shirt", "", "blue", "hat"]
    assert [(t.start, t.end) for t in tokens] == [(0, 1), (2, 7), (8, 16), (17, 18), (19, 25), (26, 30)]


def test_caption_words_normalised():
    assert tts.normalize_text("  two\tdogs \n running ") == "two dogs running"
    assert tts.caption_words(" two  dogs & a cat. ") == ["two", "dogs", "a", "cat"]


# -- event alignment (hand-made events) ---------------------------------------------


def _word(position: int, sample: int) -> RawEvent:
    return RawEvent(EVENT_WORD, position, sample)


def _phone(name: str, sample: int) -> RawEvent:
    return RawEvent(EVENT_PHONEME, 0, sample, name)


def test_align_splits_joined_words_by_phoneme_count():
    # espeak-ng speaks "on the" under one WORD event; "the" has 2 phonemes in its dictionary.
    text = "on the left"
    events = [
        _word(1, 0), _phone("O2", 0), _phone("n", 1400), _phone("D", 2500), _phone("@2", 3400),
        _word(8, 4500), _phone("l", 4500), _phone("'E", 5000), _phone("f", 6000), _phone("t", 7000),
        _phone("_:", 8000),
    ]  # fmt: skip
    words, boundaries = tts.align_events(text, events, speech_end=8000, phoneme_counts={"the": 2})
    assert [(w.word, w.start_sample, w.end_sample) for w in words] == [
        ("on", 0, 2500),
        ("the", 2500, 4500),
        ("left", 4500, 8000),
    ]
    assert words[1].phones == (Phone("D", 2500), Phone("@2", 3400))
    assert words[2].phones[1] == Phone("E", 5000)  # stress mark removed
    assert boundaries == [8000]


def test_align_interpolates_without_phones():
    # No phoneme events: "the" starts at its share of characters between the group onsets.
    text = "on the dog"
    events = [_word(1, 0), _word(8, 1000)]
    words, _ = tts.align_events(text, events, speech_end=2000, phoneme_counts={"the": 2})
    # Group "on the" spans characters 0-6; "the" starts at character 3: 1000 * 3 / 6 = 500.
    assert [(w.word, w.start_sample, w.end_sample) for w in words] == [
        ("on", 0, 500),
        ("the", 500, 1000),
        ("dog", 1000, 2000),
    ]


def test_align_pause_and_symbol_end_words():
    # A pause after "man" and the spoken "&" both end the word before them.
    text = "man, & dog"
    events = [
        _word(1, 0), _phone("m", 0), _phone("a", 500), _phone("n", 900), _phone("_:", 1200),
        _word(6, 2000), _phone("a", 2000), _phone("n", 2300),
        _word(8, 2600), _phone("d", 2600), _phone("0", 2900),
    ]  # fmt: skip
    words, boundaries = tts.align_events(text, events, speech_end=3500, phoneme_counts={})
    assert [(w.word, w.start_sample, w.end_sample) for w in words] == [("man", 0, 1200), ("dog", 2600, 3500)]
    assert boundaries == [1200, 2000]


def test_timecode_read_back_gives_words():
    # The timecode written for a synthesis must give back the same word spans under the reader's rule.
    synthesis = tts.Synthesis(
        waveform=np.zeros(16000, dtype=np.float32),
        sample_rate=16000,
        words=(
            tts.SpokenWord("man", 0, 4000, (Phone("m", 0), Phone("a", 1000), Phone("n", 3000))),
            tts.SpokenWord("and", 6000, 8000, (Phone("a", 6000), Phone("n", 7000))),
            tts.SpokenWord("dog", 8000, 12000, ()),
        ),
    )
    timecode = tts.build_timecode(synthesis)
    words = speechcoco.words_from_timecode(timecode, 1000.0)
    assert [(w.word, w.start_ms, w.end_ms) for w in words] == [
        ("man", 0.0, 250.0),
        ("and", 375.0, 500.0),
        ("dog", 500.0, 750.0),
    ]
    assert [250.0, "SIL", ""] in timecode
    assert [500.0, "PHO", "dog"] in timecode  # at least one PHO per word


def test_speech_end_by_energy():
    rate = 1000
    waveform = np.concatenate([0.5 * np.ones(300), 0.001 * np.ones(200)]).astype(np.float32)
    # 10 ms frames of 10 samples; the last loud frame ends at sample 300.
    assert tts.find_speech_end(waveform, rate) == 300
    assert tts.find_speech_end(np.zeros(100, dtype=np.float32), rate) == 0


def test_rate_range():
    # 175 x 1.1 = 192.5 and 175 x 0.9 = 157.5, both rounded half up.
    assert tts.rate_for(175, 1.1) == 193
    assert tts.rate_for(175, 0.9) == 158
    assert tts.rate_for(175, 1.0) == 175
    with pytest.raises(ValueError, match="outside espeak-ng's range"):
        tts.rate_for(420, 1.1)


# -- espeak-ng ----------------------------------------------------------------------


@needs_espeak
def test_synthesize_words_in_order():
    synthesis = tts.synthesize(CAPTION, "en-us", 175, 1.0, 16000)
    expected = ["A", "large", "red", "circle", "on", "the", "left", "of", "a", "small", "blue", "square"]
    assert [word.word for word in synthesis.words] == expected
    assert synthesis.sample_rate == 16000
    starts = [word.start_sample for word in synthesis.words]
    assert starts[0] == 0
    assert all(later > earlier for earlier, later in zip(starts, starts[1:]))
    for word, following in zip(synthesis.words, synthesis.words[1:]):
        assert word.start_sample < word.end_sample <= following.start_sample
    assert synthesis.words[-1].end_sample <= len(synthesis.waveform)
    # The comma makes a pause, so "circle" ends before "on" starts.
    assert synthesis.words[3].end_sample < synthesis.words[4].start_sample


@needs_espeak
def test_synthesize_speed_changes_duration():
    slow = tts.synthesize(CAPTION, "en-us", 175, 0.9, 16000)
    fast = tts.synthesize(CAPTION, "en-us", 175, 1.1, 16000)
    assert fast.duration_s < slow.duration_s
    assert fast.words[-1].start_sample < slow.words[-1].start_sample


@needs_espeak
def test_synthesize_deterministic_across_calls():
    first = tts.synthesize(CAPTION, "en-gb", 175, 0.9, 16000)
    tts.synthesize("something else entirely", "en-us", 175, 1.1)  # changes espeak-ng's internal state
    second = tts.synthesize(CAPTION, "en-gb", 175, 0.9, 16000)
    assert first.waveform.tobytes() == second.waveform.tobytes()
    assert first.words == second.words


@needs_espeak
def test_synthesize_resampling_scales_samples():
    native = tts.synthesize(CAPTION, "en-us", 175, 1.0)
    resampled = tts.synthesize(CAPTION, "en-us", 175, 1.0, 16000)
    assert native.sample_rate == tts.native_sample_rate() == 22050
    assert len(resampled.waveform) == int(np.ceil(len(native.waveform) * 16000 / 22050))
    for high, low in zip(native.words, resampled.words):
        assert low.start_sample == round(high.start_sample * 16000 / 22050)
    assert resampled.waveform.dtype == np.float32
    assert np.abs(resampled.waveform).max() <= 1.0


@needs_espeak
def test_synthesize_voice_errors():
    with pytest.raises(tts.SynthesisError, match="no voice 'xx-none'"):
        tts.synthesize("a dog", "xx-none")
    with pytest.raises(tts.SynthesisError, match="no word"):
        tts.synthesize(" ... ", "en-us")


@needs_espeak
def test_synthesize_after_server_crash():
    expected = tts.synthesize("a red circle", "en-us")
    with tts._Server.borrow() as server:
        server.process.kill()
        server.process.wait()
    # The dead server is dropped from the pool and a new one gives the same output.
    again = tts.synthesize("a red circle", "en-us")
    assert again.waveform.tobytes() == expected.waveform.tobytes()


@needs_espeak
def test_synthesize_joined_words_get_onsets():
    # "of a" and "on the" are single WORD events in espeak-ng's English dictionary.
    synthesis = tts.synthesize("a cat on the mat of a dog", "en-us", 175, 1.0, 16000)
    words = [word.word for word in synthesis.words]
    assert words == ["a", "cat", "on", "the", "mat", "of", "a", "dog"]
    durations = [word.end_sample - word.start_sample for word in synthesis.words]
    assert min(durations) > 16000 * 0.02  # every word lasts more than 20 ms
