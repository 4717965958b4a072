"""SpokenCOCO reader: ids from paths and uttids, alignment files, skipped captions."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile

from vgsalign.speech import spokencoco
from vgsalign.speech.speechcoco import MANIFEST_COLUMNS, SpeechDataError, SpeechMetadataError

RATE = 16000


def _wav(root: Path, relative: str, seconds: float) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), np.zeros(int(seconds * RATE), dtype=np.float32), RATE, subtype="PCM_16")


def _corpus(root: Path) -> Path:
    """Two images with three captions; every WAV exists and lasts 2 s (the third 1 s)."""
    data = {
        "data": [
            {
                "image": "val2014/COCO_val2014_000000325114.jpg",
                "captions": [
                    {"wav": "wavs/val/0/spk1-HIT1_325114_629297.wav", "text": "A URINAL IN A RESTROOM",
                     "speaker": "spk1", "uttid": "spk1-HIT1_325114_629297"},
                    {"wav": "wavs/val/0/spk2-HIT2_325114_631295.wav", "text": "A WHITE TOILET",
                     "speaker": "spk2", "uttid": "spk2-HIT2_325114_631295"},
                ],
            },
            {
                "image": "val2017/000000000139.jpg",
                "captions": [
                    {"wav": "wavs/val/1/spk1-HIT3_139_770000.wav", "text": "A LIVING ROOM",
                     "speaker": "spk1", "uttid": "spk1-HIT3_139_770000"},
                ],
            },
        ]
    }  # fmt: skip
    for image in data["data"]:
        for caption in image["captions"]:
            _wav(root, caption["wav"], 1.0 if "139" in caption["uttid"] else 2.0)
    json_path = root / "SpokenCOCO_val.json"
    json_path.write_text(json.dumps(data))
    return json_path


def test_image_id_from_both_name_styles():
    assert spokencoco.image_id_from_path("val2014/COCO_val2014_000000325114.jpg") == 325114
    assert spokencoco.image_id_from_path("val2017/000000000139.jpg") == 139
    with pytest.raises(ValueError):
        spokencoco.image_id_from_path("val2014/picture.jpg")


def test_uttid_ids():
    assert spokencoco.ids_from_uttid("m071506418gb9vo0w5xq3-3LUY3GC63Z0HXQ6AVLTL2WWBRXSWPZ_325114_629297") == (
        325114,
        629297,
    )
    with pytest.raises(ValueError):
        spokencoco.ids_from_uttid("spk1-HIT1")


def test_alignment_tokens_to_ms():
    words = spokencoco.parse_alignment_tokens(["0.10__A__0.25", "0.25__<sil>__0.30", "0.30__URINAL__0.92"])
    assert words == [
        {"word": "A", "start_ms": 100.0, "end_ms": 250.0},
        {"word": "URINAL", "start_ms": 300.0, "end_ms": 920.0},
    ]


@pytest.mark.parametrize("tokens", [["0.1__A"], ["x__A__0.2"], ["0.5__A__0.2"], ["0.5__A__0.6", "0.1__B__0.2"]])
def test_alignment_tokens_invalid(tokens):
    with pytest.raises(SpeechMetadataError) as caught:
        spokencoco.parse_alignment_tokens(tokens)
    assert caught.value.reason == "invalid_alignment"


def test_load_without_alignments(tmp_path, caplog):
    json_path = _corpus(tmp_path)
    with caplog.at_level(logging.INFO, logger="vgsalign.speech.spokencoco"):
        frame, skips = spokencoco.load_split(json_path, progress=False)
    assert skips == {}
    assert list(frame.columns) == list(MANIFEST_COLUMNS)
    assert list(frame["caption_id"]) == [770000, 629297, 631295]
    assert list(frame["image_id"]) == [139, 325114, 325114]
    assert list(frame["num_samples"]) == [16000, 32000, 32000]
    assert set(frame["speed"]) == {1.0}
    assert all(words == [] for words in frame["words"])
    assert frame.loc[1, "wav_path"] == str(tmp_path / "wavs/val/0/spk1-HIT1_325114_629297.wav")
    notes = [record for record in caplog.records if "alignment scoring needs" in record.message]
    assert len(notes) == 1


def test_load_json_alignments_by_uttid_and_wav(tmp_path):
    json_path = _corpus(tmp_path)
    alignments = tmp_path / "alignments.json"
    alignments.write_text(
        json.dumps(
            {
                "spk1-HIT1_325114_629297": ["0.0__A__0.2", "0.2__URINAL__0.8", "0.9__IN__1.0"],
                "wavs/val/0/spk2-HIT2_325114_631295.wav": "0.1__A__0.3 0.3__WHITE__0.7 0.7__TOILET__2.5",
            }
        )
    )
    frame, skips = spokencoco.load_split(json_path, alignments=alignments, progress=False)
    assert skips == {}
    by_caption = dict(zip(frame["caption_id"], frame["words"]))
    assert [w["word"] for w in by_caption[629297]] == ["A", "URINAL", "IN"]
    assert by_caption[629297][1] == {"word": "URINAL", "start_ms": 200.0, "end_ms": 800.0}
    # An end beyond the 2 s audio is clipped to it.
    assert by_caption[631295][2] == {"word": "TOILET", "start_ms": 700.0, "end_ms": 2000.0}
    assert by_caption[770000] == []
    assert frame.attrs["captions_without_alignment"] == 1


def test_load_text_alignments(tmp_path):
    json_path = _corpus(tmp_path)
    alignments = tmp_path / "alignments.txt"
    alignments.write_text("# uttid then tokens\n\nspk1-HIT3_139_770000 0.05__A__0.2 0.2__LIVING__0.5 0.5__ROOM__0.9\n")
    frame, _ = spokencoco.load_split(json_path, alignments=alignments, progress=False)
    words = frame.loc[frame["caption_id"] == 770000, "words"].iloc[0]
    assert words == [
        {"word": "A", "start_ms": 50.0, "end_ms": 200.0},
        {"word": "LIVING", "start_ms": 200.0, "end_ms": 500.0},
        {"word": "ROOM", "start_ms": 500.0, "end_ms": 900.0},
    ]


def test_load_skips_bad_captions(tmp_path):
    json_path = _corpus(tmp_path)
    data = json.loads(json_path.read_text())
    captions = data["data"][0]["captions"]
    captions.append({"text": "NO WAV GIVEN", "speaker": "spk3", "uttid": "spk3-HIT4_325114_700001"})
    captions.append({"wav": "wavs/val/9/absent.wav", "text": "WAV NOT ON DISK", "uttid": "spk3-HIT5_325114_700002"})
    captions.append({"wav": "wavs/val/0/odd.wav", "text": "NO IDS", "uttid": "spk3-odd"})
    captions.append({"wav": "wavs/val/0/other.wav", "text": "OTHER IMAGE", "uttid": "spk3-HIT6_999_700003"})
    data["data"].append({"image": "val2014/unnamed.jpg", "captions": [{"wav": "x.wav", "text": "LOST"}]})
    json_path.write_text(json.dumps(data))
    alignments = tmp_path / "alignments.json"
    alignments.write_text(json.dumps({"spk1-HIT3_139_770000": ["0.5__LATE__0.9", "1.5__AFTER__1.8"]}))

    frame, skips = spokencoco.load_split(json_path, alignments=alignments, progress=False)

    assert list(frame["caption_id"]) == [629297, 631295]
    assert skips == {
        "image_id_mismatch": 1,
        "invalid_image_path": 1,
        "invalid_uttid": 1,
        "missing_wav": 2,
        "word_after_audio_end": 1,
    }


def test_load_image_filter(tmp_path):
    frame, _ = spokencoco.load_split(_corpus(tmp_path), image_ids=[139], progress=False)
    assert list(frame["image_id"]) == [139]


def test_load_bad_files_raise(tmp_path):
    with pytest.raises(SpeechDataError, match="not found"):
        spokencoco.load_split(tmp_path / "SpokenCOCO_val.json", progress=False)
    (tmp_path / "SpokenCOCO_val.json").write_text(json.dumps({"images": []}))
    with pytest.raises(SpeechDataError, match="no 'data' list"):
        spokencoco.load_split(tmp_path / "SpokenCOCO_val.json", progress=False)
    json_path = _corpus(tmp_path)
    (tmp_path / "alignments.json").write_text("[1, 2]")
    with pytest.raises(SpeechDataError, match="must hold an object"):
        spokencoco.load_split(json_path, alignments=tmp_path / "alignments.json", progress=False)
    with pytest.raises(SpeechDataError, match="alignment file not found"):
        spokencoco.load_split(json_path, alignments=tmp_path / "absent.json", progress=False)
