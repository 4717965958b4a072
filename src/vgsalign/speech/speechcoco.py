"""Read and write SPEECH-COCO: per-caption JSON metadata, SQLite databases and WAV files.

SPEECH-COCO (Havard et al. 2017) stores one WAV and one JSON file per caption,
both named ``<imageID>_<captionID>_<speaker>_<disfluency position>_<speed>``
with the speed written ``0-9``, ``1-0`` or ``1-1``, under
``<root>/<split>/{json,wav}/``. The JSON keys are ``duration`` (seconds),
``speaker``, ``synthesisedCaption``, ``timecode``, ``speed``, ``wavFilename``,
``captionID``, ``imgID`` and ``disfluency`` (a ``[position, filler]`` pair).
``timecode`` is a list of ``[time_ms, kind, value]`` with kinds WORD, SYL,
PHO, SEPR and SIL. The same records also come as one SQLite database per split
(table ``captions`` with ``timecode`` as JSON text, and table ``speakers``).
:func:`load_split` reads a split folder's ``json/`` folder when it has one, and
else the split's database in that folder (:func:`find_database`), with the WAV
files from ``wav/`` in both cases.

Word ends are not stored. The rule used here: a word ends at the first SYL,
SEPR or SIL entry after its last PHO entry and before the next WORD entry. Without
such an entry it ends at the next word's onset. The last word ends at the time
of the last SYL entry. A disfluency filler ("um", "uh") is a WORD entry like any
other, so it is returned as a word of its own.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sqlite3
from collections import Counter
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import soundfile
from tqdm import tqdm

from vgsalign.io import atomic_path, write_json_atomic

logger = logging.getLogger(__name__)

TIMECODE_KINDS = frozenset({"WORD", "SYL", "PHO", "SEPR", "SIL"})
BOUNDARY_KINDS = frozenset({"SYL", "SEPR", "SIL"})
DISFLUENCY_POSITIONS = ("None", "Beginning", "Middle", "End")
# Fillers that SPEECH-COCO inserts as disfluencies. They are words of the
# timecode, so a later stage must keep them out of the nouns.
DISFLUENCY_FILLERS = frozenset({"um", "uh"})
JSON_KEYS = (
    "duration", "speaker", "synthesisedCaption", "timecode", "speed",
    "wavFilename", "captionID", "imgID", "disfluency",
)  # fmt: skip
SQLITE_CAPTION_COLUMNS = (
    "captionID", "imageID", "wavFilename", "duration", "timecode",
    "disfluencyPos", "disfluencyVal", "speed", "text", "speaker",
)  # fmt: skip
MANIFEST_COLUMNS = (
    "caption_id", "image_id", "text", "wav_path", "speaker", "speed", "sample_rate", "num_samples", "words",
)  # fmt: skip
SQLITE_SUFFIXES = (".sqlite3", ".sqlite", ".db")
# Skipped captions of one reason are logged one by one up to this count, then only counted.
MAX_LOGGED_SKIPS = 10


class SpeechMetadataError(ValueError):
    """One caption's metadata or audio is unusable; ``reason`` is the short key it is counted under."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class SpeechDataError(ValueError):
    """A whole split cannot be read (missing folder, broken database). The message names the fix."""


@dataclass(frozen=True)
class Word:
    word: str
    start_ms: float
    end_ms: float


@dataclass(frozen=True)
class SpeechName:
    """The fields encoded in a SPEECH-COCO file name."""

    image_id: int
    caption_id: int
    speaker: str
    disfluency: str  # None, Beginning, Middle or End
    speed: float

    @property
    def stem(self) -> str:
        return format_name(self.image_id, self.caption_id, self.speaker, self.disfluency, self.speed)


@dataclass
class SpeechCaption:
    """One spoken caption: ids, voice, text and word time stamps."""

    image_id: int
    caption_id: int
    speaker: str
    speed: float
    duration_s: float
    text: str
    wav_filename: str
    disfluency: tuple[str, str]  # (position, filler); ("None", "") without a disfluency
    words: list[Word]
    timecode: list[list[Any]] = field(default_factory=list)

    @property
    def name(self) -> SpeechName:
        return SpeechName(self.image_id, self.caption_id, self.speaker, self.disfluency[0], self.speed)


# -- file names ---------------------------------------------------------------------


def format_speed(speed: float) -> str:
    """Write a speed factor as in SPEECH-COCO file names: 0.9 -> ``0-9``."""
    text = f"{speed:.1f}"
    if not math.isclose(float(text), speed, abs_tol=1e-9) or speed <= 0:
        raise ValueError(f"speed {speed} cannot be written in a SPEECH-COCO file name (one decimal, such as 0.9)")
    return text.replace(".", "-")


def parse_speed(text: str) -> float:
    """Read a speed written ``0-9`` / ``1-0`` / ``1-1`` back to a float."""
    whole, dash, tenth = text.partition("-")
    if not (dash and whole.isdigit() and tenth.isdigit() and len(tenth) == 1):
        raise ValueError(f"invalid speed {text!r} in a SPEECH-COCO file name: expected a form such as 0-9 or 1-1")
    return float(f"{whole}.{tenth}")


def format_name(image_id: int, caption_id: int, speaker: str, disfluency: str, speed: float) -> str:
    """Return the file stem ``<imageID>_<captionID>_<speaker>_<disfluency>_<speed>``."""
    if disfluency not in DISFLUENCY_POSITIONS:
        raise ValueError(f"invalid disfluency position {disfluency!r}: expected one of {DISFLUENCY_POSITIONS}")
    if not speaker or "/" in speaker or os.sep in speaker:
        raise ValueError(f"invalid speaker name {speaker!r} for a file name")
    return f"{int(image_id)}_{int(caption_id)}_{speaker}_{disfluency}_{format_speed(speed)}"


def parse_name(name: str | os.PathLike) -> SpeechName:
    """Parse a SPEECH-COCO file name (with or without folder and extension).

    The speaker is everything between the caption id and the disfluency
    position, so a speaker name that contains underscores still parses.
    """
    stem = Path(name).name
    for suffix in (".json", ".wav"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
    parts = stem.split("_")
    if len(parts) < 5 or not parts[0].isdigit() or not parts[1].isdigit():
        raise ValueError(
            f"invalid SPEECH-COCO file name {Path(name).name!r}: expected "
            "<imageID>_<captionID>_<speaker>_<disfluency>_<speed>, such as 298817_26763_Phil_None_0-9.json"
        )
    disfluency = parts[-2]
    if disfluency not in DISFLUENCY_POSITIONS:
        raise ValueError(
            f"invalid disfluency position {disfluency!r} in file name {Path(name).name!r}: "
            f"expected one of {', '.join(DISFLUENCY_POSITIONS)}"
        )
    return SpeechName(int(parts[0]), int(parts[1]), "_".join(parts[2:-2]), disfluency, parse_speed(parts[-1]))


# -- timecode -----------------------------------------------------------------------


def validate_timecode(timecode: Any) -> list[tuple[float, str, str]]:
    """Return the timecode as ``(ms, kind, value)`` tuples or raise SpeechMetadataError.

    Reasons: ``invalid_timecode`` (not a list of [number, kind, value] entries, or a
    time that is not finite), ``unknown_timecode_kind`` (a kind other than WORD, SYL,
    PHO, SEPR, SIL), ``unsorted_timecode`` (a time smaller than the one before).
    """
    if not isinstance(timecode, list):
        raise SpeechMetadataError("invalid_timecode", f"timecode is a {type(timecode).__name__}, not a list")
    entries = []
    previous = -math.inf
    for index, entry in enumerate(timecode):
        if not isinstance(entry, (list, tuple)) or len(entry) != 3:
            raise SpeechMetadataError("invalid_timecode", f"timecode entry {index} is not [time, kind, value]: {entry!r}")
        time, kind, value = entry
        if isinstance(time, bool) or not isinstance(time, (int, float)) or not math.isfinite(time):
            raise SpeechMetadataError("invalid_timecode", f"timecode entry {index} has an invalid time: {entry!r}")
        if kind not in TIMECODE_KINDS:
            raise SpeechMetadataError(
                "unknown_timecode_kind",
                f"timecode entry {index} has unknown kind {kind!r}. Known kinds: {', '.join(sorted(TIMECODE_KINDS))}",
            )
        if time < previous:
            raise SpeechMetadataError(
                "unsorted_timecode", f"timecode entry {index} at {time} ms comes after an entry at {previous} ms"
            )
        previous = time
        entries.append((float(time), kind, "" if value is None else str(value)))
    return entries


def words_from_timecode(timecode: Any, duration_ms: float | None = None) -> list[Word]:
    """Return the words of a SPEECH-COCO timecode with their start and end in ms.

    A word ends at the first SYL/SEPR/SIL entry after its last PHO entry and
    before the next WORD entry, or else at the next word's onset. The last word
    ends at the last SYL time (when that is after its onset), else at the first
    boundary after its last phone, else at ``duration_ms``. Ends beyond
    ``duration_ms`` are clipped to it. Besides the reasons of
    :func:`validate_timecode`, raises SpeechMetadataError with reason
    ``no_words`` (no WORD entry) or ``word_after_audio_end`` (a WORD at or after
    ``duration_ms``).
    """
    return _words_from_entries(validate_timecode(timecode), duration_ms)


def _words_from_entries(entries: list[tuple[float, str, str]], duration_ms: float | None) -> list[Word]:
    word_indices = [index for index, (_, kind, _) in enumerate(entries) if kind == "WORD"]
    if not word_indices:
        raise SpeechMetadataError("no_words", "timecode has no WORD entry")
    if duration_ms is not None:
        late = [entries[index] for index in word_indices if entries[index][0] >= duration_ms]
        if late:
            raise SpeechMetadataError(
                "word_after_audio_end",
                f"WORD {late[0][2]!r} starts at {late[0][0]} ms, at or after the end of the audio ({duration_ms:.1f} ms)",
            )
    syllable_times = [time for time, kind, _ in entries if kind == "SYL"]
    last_syllable = syllable_times[-1] if syllable_times else None

    words = []
    for position, index in enumerate(word_indices):
        start, _, text = entries[index]
        is_last = position == len(word_indices) - 1
        stop = len(entries) if is_last else word_indices[position + 1]
        phones = [j for j in range(index + 1, stop) if entries[j][1] == "PHO"]
        anchor = phones[-1] if phones else index
        boundary = next(
            (entries[j][0] for j in range(anchor + 1, stop) if entries[j][1] in BOUNDARY_KINDS and entries[j][0] > start),
            None,
        )
        if is_last and last_syllable is not None and last_syllable > start:
            end = last_syllable
        elif boundary is not None:
            end = boundary
        elif not is_last:
            end = entries[stop][0]
        elif duration_ms is not None:
            end = duration_ms
        else:
            end = max(entries[-1][0], start)
        if duration_ms is not None:
            end = min(end, duration_ms)
        words.append(Word(text, start, max(end, start)))
    return words


# -- records ------------------------------------------------------------------------


def _parse_disfluency(value: Any) -> tuple[str, str]:
    if value is None or value == "" or value == "None":
        return ("None", "")
    if isinstance(value, str):
        return (value, "")
    if isinstance(value, (list, tuple)) and len(value) == 2:
        position = "None" if value[0] in (None, "", "None") else str(value[0])
        filler = "" if value[1] in (None, "None") else str(value[1])
        return (position, filler)
    raise SpeechMetadataError("invalid_value", f"disfluency must be a [position, filler] pair, not {value!r}")


def caption_from_record(record: Mapping[str, Any], audio_duration_ms: float | None = None) -> SpeechCaption:
    """Build a SpeechCaption from one JSON record (the keys of a SPEECH-COCO JSON file).

    Word times are checked against ``audio_duration_ms`` (the WAV's length)
    when given, else against the record's ``duration``. Raises
    SpeechMetadataError: ``missing_key``, ``invalid_value`` or a timecode reason.
    """
    missing = [key for key in JSON_KEYS if key not in record]
    if missing:
        raise SpeechMetadataError("missing_key", f"missing key(s) {', '.join(missing)}")
    try:
        duration_s = float(record["duration"])
        speed = float(record["speed"])
        caption_id = int(record["captionID"])
        image_id = int(record["imgID"])
    except (TypeError, ValueError) as error:
        raise SpeechMetadataError("invalid_value", f"invalid number in metadata: {error}") from error
    timecode = record["timecode"]
    if isinstance(timecode, str):
        try:
            timecode = json.loads(timecode)
        except json.JSONDecodeError as error:
            raise SpeechMetadataError("invalid_timecode", f"timecode text is not JSON: {error}") from error
    duration_ms = audio_duration_ms if audio_duration_ms is not None else duration_s * 1000.0
    entries = validate_timecode(timecode)
    words = _words_from_entries(entries, duration_ms)
    return SpeechCaption(
        image_id=image_id,
        caption_id=caption_id,
        speaker=str(record["speaker"]),
        speed=speed,
        duration_s=duration_s,
        text=str(record["synthesisedCaption"]),
        wav_filename=Path(str(record["wavFilename"])).name,
        disfluency=_parse_disfluency(record["disfluency"]),
        words=words,
        timecode=[list(entry) for entry in entries],
    )


def caption_to_record(caption: SpeechCaption) -> dict[str, Any]:
    """Return the SPEECH-COCO JSON record of a caption (exactly the keys of JSON_KEYS)."""
    return {
        "duration": caption.duration_s,
        "speaker": caption.speaker,
        "synthesisedCaption": caption.text,
        "timecode": [list(entry) for entry in caption.timecode],
        "speed": caption.speed,
        "wavFilename": caption.wav_filename,
        "captionID": caption.caption_id,
        "imgID": caption.image_id,
        "disfluency": list(caption.disfluency),
    }


def read_json_record(path: str | os.PathLike) -> dict[str, Any]:
    """Load one JSON file as a dict; raise SpeechMetadataError ``invalid_json`` if it is not one."""
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SpeechMetadataError("invalid_json", f"cannot read JSON: {error}") from error
    if not isinstance(record, dict):
        raise SpeechMetadataError("invalid_json", f"JSON contains a {type(record).__name__}, not an object")
    return record


def read_caption_json(path: str | os.PathLike, audio_duration_ms: float | None = None) -> SpeechCaption:
    """Read one SPEECH-COCO JSON file. Raises SpeechMetadataError (see caption_from_record)."""
    return caption_from_record(read_json_record(path), audio_duration_ms)


# -- writing ------------------------------------------------------------------------


def write_wav(path: str | os.PathLike, waveform: np.ndarray, sample_rate: int) -> None:
    """Write a mono float waveform as 16-bit PCM WAV, atomically."""
    with atomic_path(path) as temporary:
        soundfile.write(temporary, np.asarray(waveform, dtype=np.float32), sample_rate, subtype="PCM_16", format="WAV")


def caption_paths(split_dir: str | os.PathLike, name: SpeechName) -> tuple[Path, Path]:
    """Return the (JSON, WAV) paths of a caption in the layout ``<split_dir>/{json,wav}/``."""
    split_dir = Path(split_dir)
    return split_dir / "json" / f"{name.stem}.json", split_dir / "wav" / f"{name.stem}.wav"


def write_caption(
    split_dir: str | os.PathLike, caption: SpeechCaption, waveform: np.ndarray, sample_rate: int
) -> tuple[Path, Path]:
    """Write a caption's WAV and then its JSON under ``split_dir``; return both paths.

    The WAV is written first, so an existing JSON file means that its WAV is complete.
    """
    json_path, wav_path = caption_paths(split_dir, caption.name)
    if caption.wav_filename != wav_path.name:
        raise ValueError(f"caption's wavFilename {caption.wav_filename!r} does not follow its name {wav_path.name!r}")
    write_wav(wav_path, waveform, sample_rate)
    write_json_atomic(json_path, caption_to_record(caption))
    return json_path, wav_path


def write_sqlite(
    path: str | os.PathLike,
    captions: Iterable[SpeechCaption],
    speakers: Iterable[tuple[str, str | None, str | None]] | None = None,
) -> None:
    """Write captions to a SPEECH-COCO SQLite database (tables ``captions`` and ``speakers``), atomically.

    ``speakers`` lists (name, gender, nationality); by default every caption
    speaker is listed with unknown gender and nationality.
    """
    captions = list(captions)
    if speakers is None:
        speakers = [(name, None, None) for name in sorted({caption.speaker for caption in captions})]
    rows = [
        (
            caption.caption_id, caption.image_id, caption.wav_filename, caption.duration_s,
            json.dumps(caption.timecode), caption.disfluency[0], caption.disfluency[1],
            caption.speed, caption.text, caption.speaker,
        )  # fmt: skip
        for caption in captions
    ]
    with atomic_path(path) as temporary:
        temporary.unlink()  # sqlite3 creates the file itself
        connection = sqlite3.connect(temporary)
        try:
            connection.execute(
                "CREATE TABLE captions (captionID INTEGER PRIMARY KEY, imageID INTEGER, wavFilename TEXT, "
                "duration FLOAT, timecode TEXT, disfluencyPos TEXT, disfluencyVal TEXT, speed FLOAT, "
                "text TEXT, speaker TEXT)"
            )
            connection.execute("CREATE TABLE speakers (name TEXT, gender TEXT, nationality TEXT)")
            connection.executemany("INSERT INTO captions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
            connection.executemany("INSERT INTO speakers VALUES (?, ?, ?)", list(speakers))
            connection.commit()
        finally:
            connection.close()


# -- SQLite reading -----------------------------------------------------------------


def iter_sqlite_records(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """Yield each row of a SPEECH-COCO database as a JSON-style record (the keys of JSON_KEYS).

    Raises SpeechDataError naming the file when it is missing, is not an SQLite
    database, or lacks the ``captions`` table or one of its columns. A missing
    ``speakers`` table is only logged, because the captions do not need it.
    """
    path = Path(path)
    if not path.is_file():
        raise SpeechDataError(f"SPEECH-COCO database not found: {path}. Check data.speech.root.")
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        try:
            tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.DatabaseError as error:
            raise SpeechDataError(
                f"{path} is not a readable SQLite database ({error}). Replace it with the SPEECH-COCO "
                "database of this split or point data.speech.root at the split's json/ and wav/ folders."
            ) from error
        if "captions" not in tables:
            raise SpeechDataError(
                f"{path} has no table 'captions' (tables: {', '.join(sorted(tables)) or 'none'}), so it is not a "
                "SPEECH-COCO database. Use the split's SPEECH-COCO .sqlite3 file or its json/ folder instead."
            )
        if "speakers" not in tables:
            logger.warning("%s has no table 'speakers'; speaker details are not needed and are ignored", path)
        columns = [row[1] for row in connection.execute("PRAGMA table_info(captions)")]
        missing = [column for column in SQLITE_CAPTION_COLUMNS if column not in columns]
        if missing:
            raise SpeechDataError(
                f"table 'captions' of {path} lacks column(s) {', '.join(missing)}; a SPEECH-COCO database has "
                f"{', '.join(SQLITE_CAPTION_COLUMNS)}. Use the original database file."
            )
        query = f"SELECT {', '.join(SQLITE_CAPTION_COLUMNS)} FROM captions ORDER BY captionID"
        for row in connection.execute(query):
            values = dict(zip(SQLITE_CAPTION_COLUMNS, row))
            yield {
                "duration": values["duration"],
                "speaker": values["speaker"],
                "synthesisedCaption": values["text"],
                "timecode": values["timecode"],
                "speed": values["speed"],
                "wavFilename": values["wavFilename"],
                "captionID": values["captionID"],
                "imgID": values["imageID"],
                "disfluency": [values["disfluencyPos"], values["disfluencyVal"]],
            }
    finally:
        connection.close()


def read_sqlite(path: str | os.PathLike) -> list[SpeechCaption]:
    """Read every caption of a SPEECH-COCO database; a bad row raises SpeechMetadataError."""
    captions = []
    for record in iter_sqlite_records(path):
        try:
            captions.append(caption_from_record(record))
        except SpeechMetadataError as error:
            raise SpeechMetadataError(error.reason, f"{path}, caption {record.get('captionID')}: {error}") from error
    return captions


# -- a whole split ------------------------------------------------------------------


def database_name(split: str) -> str:
    """Return the database name looked for in a split folder: ``train2014`` -> ``train_2014.sqlite3``.

    NOTE: the ``<name>_<year>.sqlite3`` form follows the SPEECH-COCO API's usage
    examples. The file names in the distributed archive were not checked, which
    is why :func:`find_database` also takes any single database file.
    """
    prefix = split.rstrip("0123456789")
    year = split[len(prefix) :]
    return f"{prefix}_{year}.sqlite3" if prefix and len(year) == 4 else f"{split}.sqlite3"


def find_database(split_dir: str | os.PathLike) -> Path | None:
    """Return the SQLite database of a SPEECH-COCO split folder, or None when it has none.

    A database is a file directly in ``split_dir`` with a suffix of
    SQLITE_SUFFIXES. When there are several, the one whose name without
    underscores and suffix is the folder name (``train_2014.sqlite3`` in
    ``train2014``) is used. Raises SpeechDataError when there are several and
    not exactly one of them has that name.
    """
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        return None
    candidates = sorted(path for path in split_dir.iterdir() if path.suffix in SQLITE_SUFFIXES and path.is_file())
    if len(candidates) <= 1:
        return candidates[0] if candidates else None
    named = [path for path in candidates if path.stem.replace("_", "") == split_dir.name]
    if len(named) == 1:
        return named[0]
    raise SpeechDataError(
        f"{split_dir} contains several SQLite databases ({', '.join(path.name for path in candidates)}), and not "
        f"exactly one of them is named {database_name(split_dir.name)} or {split_dir.name}.sqlite3. Give this "
        "split's SPEECH-COCO database that name or move the other databases out of the folder."
    )


def _split_source(split_dir: Path, wav_dir: Path | None) -> tuple[Path | None, Path]:
    """Return the database to read (None for the ``json/`` folder) and the WAV folder of a split folder."""
    wav_dir = wav_dir if wav_dir is not None else split_dir / "wav"
    json_dir = split_dir / "json"
    database = None if json_dir.is_dir() else find_database(split_dir)
    if not json_dir.is_dir() and database is None:
        raise SpeechDataError(
            f"SPEECH-COCO metadata of split {split_dir.name} not found: expected the folder {json_dir} "
            f"(one JSON file per caption) or the SQLite database {split_dir / database_name(split_dir.name)}, "
            f"with the WAV files in {wav_dir}. Check data.speech.root (or run speech synthesis with "
            "data.speech.source: synthesize)."
        )
    if database is None and next(json_dir.glob("*.json"), None) is None:
        raise SpeechDataError(f"no SPEECH-COCO JSON files in {json_dir}. Check data.speech.root.")
    if not wav_dir.is_dir():
        metadata = json_dir if database is None else database
        raise SpeechDataError(
            f"SPEECH-COCO WAV folder {wav_dir} not found, but the metadata {metadata} is there. "
            "Extract the split's WAV files into that folder."
        )
    if database is not None:
        logger.info("no folder %s, so reading the SPEECH-COCO database %s", json_dir, database)
    return database, wav_dir


class SkipCounter:
    """Counts skipped captions by reason and logs the first few of each reason."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def add(self, reason: str, source: object, message: str) -> None:
        self.counts[reason] += 1
        if self.counts[reason] <= MAX_LOGGED_SKIPS:
            logger.warning("skipped %s (%s): %s", source, reason, message)
        if self.counts[reason] == MAX_LOGGED_SKIPS:
            logger.warning("further captions skipped for %s are only counted", reason)


def _record_image_id(record: Mapping[str, Any]) -> int:
    try:
        return int(record["imgID"])
    except (TypeError, ValueError) as error:
        raise SpeechMetadataError("invalid_value", f"invalid imgID {record['imgID']!r}") from error


def read_audio_info(wav_path: Path) -> tuple[int, int]:
    """Return (sample rate, number of samples) from the WAV header, without decoding the audio."""
    if not wav_path.is_file():
        raise SpeechMetadataError("missing_wav", f"WAV file not found: {wav_path}")
    try:
        info = soundfile.info(str(wav_path))
    except (RuntimeError, soundfile.LibsndfileError) as error:
        raise SpeechMetadataError("unreadable_wav", f"cannot read the WAV header of {wav_path}: {error}") from error
    if info.frames == 0:
        # Counted apart: every word time would otherwise be reported as word_after_audio_end.
        raise SpeechMetadataError("empty_wav", f"WAV file {wav_path} has no samples")
    return int(info.samplerate), int(info.frames)


def _manifest_row(caption: SpeechCaption, wav_path: Path, sample_rate: int, num_samples: int) -> dict[str, Any]:
    return {
        "caption_id": caption.caption_id,
        "image_id": caption.image_id,
        "text": caption.text,
        "wav_path": str(wav_path),
        "speaker": caption.speaker,
        "speed": caption.speed,
        "sample_rate": sample_rate,
        "num_samples": num_samples,
        "words": [{"word": w.word, "start_ms": w.start_ms, "end_ms": w.end_ms} for w in caption.words],
    }


def manifest_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Build the manifest columns (see MANIFEST_COLUMNS) with their dtypes, sorted by image and caption id."""
    frame = pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))
    frame = frame.astype(
        {
            "caption_id": "int64",
            "image_id": "int64",
            "speed": "float64",
            "sample_rate": "int32",
            "num_samples": "int64",
        }
    )
    return frame.sort_values(["image_id", "caption_id"], kind="stable").reset_index(drop=True)


def load_split(
    source: str | os.PathLike,
    wav_dir: str | os.PathLike | None = None,
    image_ids: Collection[int] | None = None,
    progress: bool = True,
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Read one SPEECH-COCO split into manifest rows; return them and the skip counts by reason.

    ``source`` is a split folder or a split's SQLite database (then ``wav_dir``
    is required). A split folder contains ``wav/`` and either ``json/`` or the
    split's database (:func:`find_database`). When it contains both, ``json/``
    is read. ``wav_dir`` replaces the folder's ``wav/``. ``image_ids``, when
    given, keeps only those images. Columns: MANIFEST_COLUMNS; ``num_samples``
    and ``sample_rate`` come from the WAV header.

    Rules for bad input. Errors (SpeechDataError, naming the file and the fix):
    a split folder without ``json/`` and without a database, a split folder
    without its WAV folder, a ``json/`` folder without any JSON file, a database
    that is missing, unreadable or lacks the ``captions`` table or a column.
    Counted skips drop one caption, log a warning and count it under its reason.
    The reasons are ``invalid_file_name``, ``invalid_json``, ``missing_key``,
    ``invalid_value``, ``invalid_timecode``, ``no_words`` (no WORD entry),
    ``word_after_audio_end``, ``unsorted_timecode``, ``unknown_timecode_kind``,
    ``missing_wav`` (listed WAV not found), ``unreadable_wav`` (corrupt WAV
    header), ``empty_wav`` (a WAV without samples), ``file_name_mismatch``
    (JSON ids differ from its file name) and ``duplicate_caption`` (a caption
    id already read, where the first file in name order is kept).
    """
    source = Path(source)
    selected_ids = None if image_ids is None else {int(image_id) for image_id in image_ids}
    skips = SkipCounter()
    if source.is_file() or source.suffix in SQLITE_SUFFIXES:
        if wav_dir is None:
            raise SpeechDataError(f"reading the database {source} needs the folder of its WAV files (wav_dir)")
        found = _database_captions(source, Path(wav_dir), selected_ids, skips, progress)
    else:
        database, folder_wav_dir = _split_source(source, None if wav_dir is None else Path(wav_dir))
        if database is None:
            found = _folder_captions(source, folder_wav_dir, selected_ids, skips, progress)
        else:
            found = _database_captions(database, folder_wav_dir, selected_ids, skips, progress)

    rows: list[dict[str, Any]] = []
    seen: set[int] = set()
    for caption, wav_path, sample_rate, num_samples, origin in found:
        if caption.caption_id in seen:
            skips.add("duplicate_caption", origin, f"caption id {caption.caption_id} was already read")
            continue
        seen.add(caption.caption_id)
        rows.append(_manifest_row(caption, wav_path, sample_rate, num_samples))

    skip_counts = dict(sorted(skips.counts.items()))
    logger.info(
        "read %d captions from %s; skipped %d%s",
        len(rows), source, sum(skip_counts.values()), f" {skip_counts}" if skip_counts else "",
    )  # fmt: skip
    return manifest_frame(rows), skip_counts


# One caption found in a split: the caption, its WAV path, sample rate, sample count and origin for logs.
_Found = tuple[SpeechCaption, Path, int, int, object]


def _database_captions(
    database: Path, wav_dir: Path, selected_ids: set[int] | None, skips: SkipCounter, progress: bool
) -> Iterator[_Found]:
    records = iter_sqlite_records(database)
    for record in tqdm(records, desc=f"read {database.name}", unit="caption", disable=not progress):
        origin = f"{database.name} caption {record.get('captionID')}"
        try:
            if selected_ids is not None and _record_image_id(record) not in selected_ids:
                continue
            wav_path = wav_dir / Path(str(record["wavFilename"])).name
            sample_rate, num_samples = read_audio_info(wav_path)
            caption = caption_from_record(record, 1000.0 * num_samples / sample_rate)
        except SpeechMetadataError as error:
            skips.add(error.reason, origin, str(error))
            continue
        yield caption, wav_path, sample_rate, num_samples, origin


def _folder_captions(
    split_dir: Path, wav_dir: Path, selected_ids: set[int] | None, skips: SkipCounter, progress: bool
) -> Iterator[_Found]:
    json_dir = split_dir / "json"
    json_paths = sorted(json_dir.glob("*.json"))
    for json_path in tqdm(json_paths, desc=f"read {split_dir.name}", unit="caption", disable=not progress):
        try:
            name = parse_name(json_path)
        except ValueError as error:
            skips.add("invalid_file_name", json_path, str(error))
            continue
        if selected_ids is not None and name.image_id not in selected_ids:
            continue
        try:
            record = read_json_record(json_path)
            wav_path = wav_dir / Path(str(record.get("wavFilename") or f"{json_path.stem}.wav")).name
            sample_rate, num_samples = read_audio_info(wav_path)
            caption = caption_from_record(record, 1000.0 * num_samples / sample_rate)
            if (caption.image_id, caption.caption_id) != (name.image_id, name.caption_id):
                raise SpeechMetadataError(
                    "file_name_mismatch",
                    f"JSON has imgID {caption.image_id} and captionID {caption.caption_id}, the file name "
                    f"{name.image_id} and {name.caption_id}",
                )
        except SpeechMetadataError as error:
            skips.add(error.reason, json_path, str(error))
            continue
        yield caption, wav_path, sample_rate, num_samples, json_path
