"""SPEECH-COCO reader and writer: file names, word ends, JSON and SQLite, bad input."""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import soundfile

from vgsalign.speech import speechcoco
from vgsalign.speech.speechcoco import SpeechCaption, SpeechDataError, SpeechMetadataError, Word

# The published excerpt of one SPEECH-COCO timecode: the word "white".
WHITE_EXCERPT = [
    [1926.3068, "SYL", ""], [1926.3068, "SEPR", " "], [1926.3068, "WORD", "white"],
    [1926.3068, "PHO", "w"], [2050.7955, "PHO", "ai"], [2144.6591, "PHO", "t"],
    [2179.3182, "SYL", ""], [2179.3182, "SEPR", " "],
]  # fmt: skip

# "a circle um there": a syllable boundary inside "circle", a pause after it,
# and a disfluency filler.
TWO_WORDS = [
    [0.0, "SIL", ""],
    [10.0, "SYL", ""], [10.0, "SEPR", " "], [10.0, "WORD", "a"], [10.0, "PHO", "@"],
    [80.0, "SYL", ""], [80.0, "SEPR", " "], [80.0, "WORD", "circle"], [80.0, "PHO", "s"],
    [150.0, "PHO", "3:"], [250.0, "SYL", ""], [250.0, "PHO", "k"], [300.0, "PHO", "@L"],
    [360.0, "SIL", ""],
    [420.0, "SYL", ""], [420.0, "SEPR", " "], [420.0, "WORD", "um"], [420.0, "PHO", "@m"],
    [520.0, "SYL", ""], [520.0, "SEPR", " "], [520.0, "WORD", "there"], [520.0, "PHO", "D"],
    [600.0, "PHO", "e@"], [700.0, "SYL", ""], [700.0, "SEPR", " "],
]  # fmt: skip

SAMPLE_RATE = 16000


def _caption(caption_id: int = 26763, image_id: int = 298817, timecode=None, duration_s: float = 1.0) -> SpeechCaption:
    timecode = TWO_WORDS if timecode is None else timecode
    stem = speechcoco.format_name(image_id, caption_id, "Phil", "Middle", 0.9)
    return SpeechCaption(
        image_id=image_id,
        caption_id=caption_id,
        speaker="Phil",
        speed=0.9,
        duration_s=duration_s,
        text="a circle um there",
        wav_filename=f"{stem}.wav",
        disfluency=("Middle", "um"),
        words=speechcoco.words_from_timecode(timecode, duration_s * 1000),
        timecode=[list(entry) for entry in timecode],
    )


def _waveform(duration_s: float = 1.0) -> np.ndarray:
    t = np.arange(int(duration_s * SAMPLE_RATE)) / SAMPLE_RATE
    return (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def _write(split_dir: Path, caption: SpeechCaption, duration_s: float = 1.0) -> tuple[Path, Path]:
    return speechcoco.write_caption(split_dir, caption, _waveform(duration_s), SAMPLE_RATE)


# -- file names ---------------------------------------------------------------------


def test_name_format_published_example():
    assert speechcoco.format_name(298817, 26763, "Phil", "None", 0.9) == "298817_26763_Phil_None_0-9"
    assert speechcoco.format_speed(1.0) == "1-0"
    assert speechcoco.format_speed(1.1) == "1-1"


def test_name_round_trip():
    for speed in (0.9, 1.0, 1.1):
        for speaker, position in (("Phil", "None"), ("en-us", "Beginning"), ("Judith_2", "End")):
            stem = speechcoco.format_name(12, 34, speaker, position, speed)
            parsed = speechcoco.parse_name(Path("json") / f"{stem}.json")
            assert parsed == speechcoco.SpeechName(12, 34, speaker, position, speed)
            assert parsed.stem == stem


def test_name_parse_rejects_bad_names():
    for name in ("298817_26763_Phil_None.json", "x_26763_Phil_None_0-9.json", "1_2_Phil_Sometimes_0-9.wav",
                 "1_2_Phil_None_0.9.wav"):  # fmt: skip
        with pytest.raises(ValueError):
            speechcoco.parse_name(name)


def test_speed_format_rejects_two_decimals():
    with pytest.raises(ValueError, match="0.95"):
        speechcoco.format_speed(0.95)


# -- word ends ----------------------------------------------------------------------


def test_words_published_excerpt():
    words = speechcoco.words_from_timecode(WHITE_EXCERPT)
    assert words == [Word("white", 1926.3068, 2179.3182)]


def test_words_end_rules():
    words = speechcoco.words_from_timecode(TWO_WORDS, 1000.0)
    # "a": next boundary after its phone is the SYL at 80. "circle": the SYL at 250 is
    # before its last phone, the SIL at 360 is the first boundary after it. The filler
    # "um" is a word. "there" is last and ends at the last SYL (700).
    assert words == [
        Word("a", 10.0, 80.0),
        Word("circle", 80.0, 360.0),
        Word("um", 420.0, 520.0),
        Word("there", 520.0, 700.0),
    ]


def test_words_without_boundary_end_at_next_word():
    timecode = [[0, "WORD", "big"], [0, "PHO", "b"], [90, "WORD", "dog"], [90, "PHO", "d"], [200, "PHO", "g"]]
    words = speechcoco.words_from_timecode(timecode, 400.0)
    # No SYL at all: the last word falls back to the audio duration.
    assert words == [Word("big", 0.0, 90.0), Word("dog", 90.0, 400.0)]


def test_words_end_clipped_to_audio():
    words = speechcoco.words_from_timecode(WHITE_EXCERPT, 2100.0)
    assert words == [Word("white", 1926.3068, 2100.0)]


@pytest.mark.parametrize(
    ("timecode", "reason"),
    [
        ([[0, "SYL", ""], [0, "PHO", "a"], [50, "SYL", ""]], "no_words"),
        ([[0, "WORD", "a"], [1200, "WORD", "late"]], "word_after_audio_end"),
        ([[0, "WORD", "a"], [300, "PHO", "x"], [200, "SYL", ""]], "unsorted_timecode"),
        ([[0, "WORD", "a"], [10, "BREATH", ""]], "unknown_timecode_kind"),
        ([[0, "WORD"]], "invalid_timecode"),
        ([["soon", "WORD", "a"]], "invalid_timecode"),
        ({"WORD": 0}, "invalid_timecode"),
    ],
)
def test_words_bad_timecode_reasons(timecode, reason):
    with pytest.raises(SpeechMetadataError) as caught:
        speechcoco.words_from_timecode(timecode, 1000.0)
    assert caught.value.reason == reason


# -- JSON ---------------------------------------------------------------------------


def test_json_write_read_round_trip(tmp_path):
    caption = _caption()
    json_path, wav_path = _write(tmp_path / "val2014", caption)
    assert json_path == tmp_path / "val2014" / "json" / "298817_26763_Phil_Middle_0-9.json"
    assert wav_path == tmp_path / "val2014" / "wav" / "298817_26763_Phil_Middle_0-9.wav"
    record = json.loads(json_path.read_text())
    assert sorted(record) == sorted(speechcoco.JSON_KEYS)
    assert record["disfluency"] == ["Middle", "um"]
    assert speechcoco.read_caption_json(json_path) == caption
    info = soundfile.info(str(wav_path))
    assert (info.samplerate, info.frames, info.channels, info.subtype) == (SAMPLE_RATE, SAMPLE_RATE, 1, "PCM_16")


def test_json_disfluency_forms():
    record = speechcoco.caption_to_record(_caption())
    for value, expected in ((None, ("None", "")), (["None", None], ("None", "")), (["End", "uh"], ("End", "uh"))):
        record["disfluency"] = value
        assert speechcoco.caption_from_record(record).disfluency == expected


def test_json_missing_key_reason():
    record = speechcoco.caption_to_record(_caption())
    del record["timecode"]
    with pytest.raises(SpeechMetadataError) as caught:
        speechcoco.caption_from_record(record)
    assert caught.value.reason == "missing_key"


# -- SQLite -------------------------------------------------------------------------


def test_sqlite_round_trip(tmp_path):
    captions = [_caption(1, 10), _caption(2, 10, WHITE_EXCERPT, 2.5), _caption(3, 11)]
    database = tmp_path / "val_2014.sqlite3"
    speechcoco.write_sqlite(database, captions, speakers=[("Phil", "Male", "American")])
    assert speechcoco.read_sqlite(database) == captions
    with sqlite3.connect(database) as connection:
        assert connection.execute("SELECT name, gender, nationality FROM speakers").fetchall() == [
            ("Phil", "Male", "American")
        ]
        assert connection.execute("SELECT disfluencyPos, disfluencyVal FROM captions WHERE captionID = 1").fetchone() == (
            "Middle",
            "um",
        )


def test_sqlite_load_split_reads_wavs(tmp_path):
    captions = [_caption(1, 10), _caption(2, 11, WHITE_EXCERPT, 2.5)]
    for caption in captions:
        _write(tmp_path / "val2014", caption, caption.duration_s)
    database = tmp_path / "val_2014.sqlite3"
    speechcoco.write_sqlite(database, captions)
    frame, skips = speechcoco.load_split(database, wav_dir=tmp_path / "val2014" / "wav", progress=False)
    assert skips == {}
    assert list(frame["caption_id"]) == [1, 2]
    assert list(frame["num_samples"]) == [16000, 40000]
    assert frame.loc[1, "words"] == [{"word": "white", "start_ms": 1926.3068, "end_ms": 2179.3182}]


def test_sqlite_missing_table_raises(tmp_path):
    database = tmp_path / "train_2014.sqlite3"
    with sqlite3.connect(database) as connection:
        connection.execute("CREATE TABLE speakers (name TEXT, gender TEXT, nationality TEXT)")
    with pytest.raises(SpeechDataError, match=r"train_2014\.sqlite3 has no table 'captions'"):
        speechcoco.load_split(database, wav_dir=tmp_path, progress=False)


def test_sqlite_missing_column_raises(tmp_path):
    database = tmp_path / "val_2014.sqlite3"
    with sqlite3.connect(database) as connection:
        connection.execute("CREATE TABLE captions (captionID INTEGER, imageID INTEGER)")
    with pytest.raises(SpeechDataError, match="lacks column"):
        speechcoco.read_sqlite(database)


def test_sqlite_not_a_database_raises(tmp_path):
    database = tmp_path / "val_2014.sqlite3"
    database.write_bytes(b"this is not SQLite" * 100)
    with pytest.raises(SpeechDataError, match="not a readable SQLite database"):
        speechcoco.read_sqlite(database)


def test_sqlite_missing_file_raises(tmp_path):
    with pytest.raises(SpeechDataError, match="not found"):
        speechcoco.read_sqlite(tmp_path / "absent.sqlite3")
    assert not (tmp_path / "absent.sqlite3").exists()


# -- a split with bad files ---------------------------------------------------------


def _write_bad_json(split_dir: Path, caption_id: int, change) -> None:
    """Write a good caption, then rewrite its JSON record through ``change``."""
    caption = _caption(caption_id, 500 + caption_id)
    json_path, _ = _write(split_dir, caption)
    record = json.loads(json_path.read_text())
    change(record)
    json_path.write_text(json.dumps(record))


def test_load_split_skips_each_bad_case(tmp_path, caplog):
    split_dir = tmp_path / "val2014"
    _write(split_dir, _caption(1, 501))
    _write(split_dir, _caption(2, 502))
    _write_bad_json(split_dir, 3, lambda r: r.update(timecode=[e for e in r["timecode"] if e[1] != "WORD"]))
    _write_bad_json(split_dir, 4, lambda r: r["timecode"].append([1500.0, "WORD", "late"]))
    _write_bad_json(split_dir, 5, lambda r: r["timecode"].reverse())
    _write_bad_json(split_dir, 6, lambda r: r["timecode"].insert(3, [10.0, "NOISE", ""]))
    _write_bad_json(split_dir, 7, lambda r: r.pop("speaker"))
    # Missing WAV that the metadata lists.
    json_path, wav_path = _write(split_dir, _caption(8, 508))
    wav_path.unlink()
    # Corrupt WAV header.
    _, wav_path = _write(split_dir, _caption(9, 509))
    wav_path.write_bytes(b"RIFF\x00\x00garbage" + bytes(100))
    # Not JSON at all.
    json_path, _ = _write(split_dir, _caption(10, 510))
    json_path.write_text("{not json")
    # JSON ids that disagree with the file name.
    _write_bad_json(split_dir, 11, lambda r: r.update(captionID=999))
    # A file that does not follow the naming convention.
    (split_dir / "json" / "notes.json").write_text("{}")

    with caplog.at_level(logging.WARNING, logger="vgsalign.speech.speechcoco"):
        frame, skips = speechcoco.load_split(split_dir, progress=False)

    assert list(frame["caption_id"]) == [1, 2]
    assert skips == {
        "file_name_mismatch": 1,
        "invalid_file_name": 1,
        "invalid_json": 1,
        "missing_key": 1,
        "missing_wav": 1,
        "no_words": 1,
        "unknown_timecode_kind": 1,
        "unreadable_wav": 1,
        "unsorted_timecode": 1,
        "word_after_audio_end": 1,
    }
    assert sum("skipped" in record.message for record in caplog.records) == 10


def test_load_split_manifest_columns(tmp_path):
    split_dir = tmp_path / "train2014"
    _write(split_dir, _caption(7, 70), duration_s=1.25)
    _write(split_dir, _caption(3, 30))
    frame, _ = speechcoco.load_split(split_dir, progress=False)
    assert list(frame.columns) == list(speechcoco.MANIFEST_COLUMNS)
    assert list(frame["image_id"]) == [30, 70]
    assert list(frame["num_samples"]) == [16000, 20000]
    assert str(frame["sample_rate"].dtype) == "int32"
    assert str(frame["caption_id"].dtype) == "int64"
    assert frame.loc[0, "wav_path"] == str(split_dir / "wav" / "30_3_Phil_Middle_0-9.wav")
    assert [word["word"] for word in frame.loc[0, "words"]] == ["a", "circle", "um", "there"]


def test_load_split_image_filter(tmp_path):
    split_dir = tmp_path / "train2014"
    for caption_id, image_id in ((1, 10), (2, 11), (3, 12)):
        _write(split_dir, _caption(caption_id, image_id))
    frame, skips = speechcoco.load_split(split_dir, image_ids=[10, 12], progress=False)
    assert list(frame["image_id"]) == [10, 12]
    assert skips == {}


def test_load_split_duplicate_caption(tmp_path):
    split_dir = tmp_path / "train2014"
    first = _caption(1, 10)
    _write(split_dir, first)
    second = _caption(1, 10)
    second.speaker = "Judith"
    second.wav_filename = "10_1_Judith_Middle_0-9.wav"
    _write(split_dir, second)
    frame, skips = speechcoco.load_split(split_dir, progress=False)
    assert list(frame["speaker"]) == ["Judith"]  # the first file in name order
    assert skips == {"duplicate_caption": 1}


def test_load_split_missing_folder_raises(tmp_path):
    split_dir = tmp_path / "val2014"
    with pytest.raises(SpeechDataError) as raised:
        speechcoco.load_split(split_dir, progress=False)
    message = str(raised.value)
    assert message.startswith("SPEECH-COCO metadata of split val2014 not found")
    assert f"the folder {split_dir / 'json'} (one JSON file per caption)" in message
    assert f"the SQLite database {split_dir / 'val_2014.sqlite3'}" in message
    assert f"the WAV files in {split_dir / 'wav'}" in message
    (split_dir / "json").mkdir(parents=True)
    with pytest.raises(SpeechDataError, match="no SPEECH-COCO JSON files"):
        speechcoco.load_split(split_dir, progress=False)


# -- a split folder with a database in place of json/ -------------------------------


def test_database_name_per_split():
    assert speechcoco.database_name("train2014") == "train_2014.sqlite3"
    assert speechcoco.database_name("val2014") == "val_2014.sqlite3"
    assert speechcoco.database_name("val") == "val.sqlite3"
    assert speechcoco.database_name("2014") == "2014.sqlite3"


def _split_with_database(split_dir: Path, captions, database_name: str = "val_2014.sqlite3") -> Path:
    """Write the captions' WAVs under ``split_dir/wav`` and their database in ``split_dir``, without json/."""
    for caption in captions:
        _, wav_path = speechcoco.caption_paths(split_dir, caption.name)
        wav_path.parent.mkdir(parents=True, exist_ok=True)
        speechcoco.write_wav(wav_path, _waveform(caption.duration_s), SAMPLE_RATE)
    database = split_dir / database_name
    speechcoco.write_sqlite(database, captions)
    return database


def test_load_split_folder_reads_database(tmp_path):
    split_dir = tmp_path / "val2014"
    captions = [_caption(1, 10), _caption(2, 11, WHITE_EXCERPT, 2.5), _caption(3, 12)]
    _split_with_database(split_dir, captions)
    (split_dir / "wav" / f"{captions[2].name.stem}.wav").unlink()

    frame, skips = speechcoco.load_split(split_dir, image_ids=[10, 11, 12], progress=False)

    assert not (split_dir / "json").exists()
    assert skips == {"missing_wav": 1}
    assert list(frame["caption_id"]) == [1, 2]
    assert list(frame["num_samples"]) == [16000, 40000]
    assert frame.loc[0, "wav_path"] == str(split_dir / "wav" / "10_1_Phil_Middle_0-9.wav")
    assert frame.loc[1, "words"] == [{"word": "white", "start_ms": 1926.3068, "end_ms": 2179.3182}]
    filtered, _ = speechcoco.load_split(split_dir, image_ids=[11], progress=False)
    assert list(filtered["caption_id"]) == [2]


def test_load_split_prefers_json_folder(tmp_path):
    split_dir = tmp_path / "val2014"
    _write(split_dir, _caption(1, 10))
    speechcoco.write_sqlite(split_dir / "val_2014.sqlite3", [_caption(1, 10), _caption(2, 11)])
    frame, skips = speechcoco.load_split(split_dir, progress=False)
    assert list(frame["caption_id"]) == [1]
    assert skips == {}


def test_find_database_picks_split_name(tmp_path):
    split_dir = tmp_path / "train2014"
    split_dir.mkdir()
    assert speechcoco.find_database(split_dir) is None
    assert speechcoco.find_database(tmp_path / "absent") is None
    (split_dir / "other.db").write_bytes(b"")
    assert speechcoco.find_database(split_dir) == split_dir / "other.db"
    (split_dir / "train_translate.sqlite3").write_bytes(b"")
    with pytest.raises(SpeechDataError, match=r"several SQLite databases \(other\.db, train_translate\.sqlite3\)"):
        speechcoco.find_database(split_dir)
    (split_dir / "train_2014.sqlite3").write_bytes(b"")
    assert speechcoco.find_database(split_dir) == split_dir / "train_2014.sqlite3"
    (split_dir / "train2014.sqlite3").write_bytes(b"")
    with pytest.raises(SpeechDataError, match="not exactly one of them is named train_2014.sqlite3"):
        speechcoco.find_database(split_dir)


def test_load_split_database_without_wav_folder(tmp_path):
    split_dir = tmp_path / "val2014"
    database = _split_with_database(split_dir, [_caption(1, 10)])
    for path in (split_dir / "wav").iterdir():
        path.unlink()
    (split_dir / "wav").rmdir()
    with pytest.raises(SpeechDataError) as raised:
        speechcoco.load_split(split_dir, progress=False)
    assert str(raised.value).startswith(f"SPEECH-COCO WAV folder {split_dir / 'wav'} not found, but the metadata {database}")


def test_load_split_folder_bad_database(tmp_path):
    split_dir = tmp_path / "val2014"
    (split_dir / "wav").mkdir(parents=True)
    (split_dir / "val_2014.sqlite3").write_bytes(b"this is not SQLite" * 100)
    with pytest.raises(SpeechDataError, match=r"val_2014\.sqlite3 is not a readable SQLite database"):
        speechcoco.load_split(split_dir, progress=False)
