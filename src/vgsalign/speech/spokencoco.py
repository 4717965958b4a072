"""Read SpokenCOCO (Hsu et al. 2021): COCO captions read aloud by people, 16 kHz WAVs.

``SpokenCOCO_{train,val}.json`` has the form::

    {"data": [{"image": "val2014/COCO_val2014_000000325114.jpg",
               "captions": [{"wav": "wavs/val/0/<uttid>.wav", "text": "A URINAL IN A ...",
                             "speaker": "<speaker id>", "uttid": "<speaker id>-<hit id>_325114_629297"}]}]}

WAV paths are relative to the folder that contains the JSON file (or to ``audio_root``).

Ids: the image id is the number at the end of the image file name (COCO 2014
``COCO_val2014_000000325114.jpg`` and 2017 ``000000325114.jpg`` names). The
caption id is the last number of ``uttid``, which ends in
``_<image id>_<COCO caption id>``. The image id in ``uttid`` must match the one
from the image path.

SpokenCOCO has no word time stamps. They come from an optional alignment file
in one of two formats, both keyed by ``uttid`` or by the caption's ``wav`` value
exactly as the SpokenCOCO JSON writes it:

- JSON (``.json``): an object mapping each key to a list of ``"start__word__end"``
  strings, or to one string of them separated by spaces;
- text (any other suffix): one caption per line, the key followed by its
  ``start__word__end`` tokens, separated by whitespace. Blank lines and lines
  starting with ``#`` are ignored.

Times are in seconds. Tokens for silence (``<sil>``, ``sil``, ``sp``, ``<eps>``)
are dropped.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from vgsalign.speech.speechcoco import (
    SkipCounter,
    SpeechDataError,
    SpeechMetadataError,
    manifest_frame,
    read_audio_info,
)

logger = logging.getLogger(__name__)

SILENCE_TOKENS = frozenset({"<sil>", "sil", "sp", "<eps>", ""})
_IMAGE_ID = re.compile(r"(\d+)\.(?:jpe?g|png)$", re.IGNORECASE)
_UTTID_IDS = re.compile(r"_(\d+)_(\d+)$")


def image_id_from_path(path: str) -> int:
    """Return the COCO image id at the end of an image file name, or raise ValueError."""
    match = _IMAGE_ID.search(Path(path).name)
    if match is None:
        raise ValueError(f"no COCO image id in image path {path!r}: expected a name such as 000000325114.jpg")
    return int(match.group(1))


def ids_from_uttid(uttid: str) -> tuple[int, int]:
    """Return (image id, caption id) from a SpokenCOCO uttid ending in ``_<image id>_<caption id>``."""
    # NOTE: this form was not checked against a full SpokenCOCO release here. Uttids of
    # another form are counted as invalid_uttid skips rather than given invented ids.
    match = _UTTID_IDS.search(uttid)
    if match is None:
        raise ValueError(f"uttid {uttid!r} does not end in _<image id>_<caption id>")
    return int(match.group(1)), int(match.group(2))


def parse_alignment_tokens(tokens: list[str] | str) -> list[dict[str, Any]]:
    """Parse ``start__word__end`` tokens (seconds) into word dicts with times in ms.

    Raises SpeechMetadataError ``invalid_alignment`` for a malformed token, a
    time that is not a finite number, an end before its start or a start before
    the previous word's start.
    """
    if isinstance(tokens, str):
        tokens = tokens.split()
    if not isinstance(tokens, list):
        raise SpeechMetadataError("invalid_alignment", f"alignment must be a list of tokens, not {tokens!r}")
    words = []
    previous_start = -math.inf
    for token in tokens:
        parts = str(token).split("__")
        if len(parts) < 3:
            raise SpeechMetadataError("invalid_alignment", f"alignment token {token!r} is not start__word__end")
        try:
            start, end = float(parts[0]) * 1000.0, float(parts[-1]) * 1000.0
        except ValueError as error:
            raise SpeechMetadataError("invalid_alignment", f"alignment token {token!r} has no numeric time") from error
        word = "__".join(parts[1:-1])
        if not (math.isfinite(start) and math.isfinite(end)) or end < start or start < previous_start:
            raise SpeechMetadataError(
                "invalid_alignment", f"alignment token {token!r} has invalid or unsorted times"
            )
        previous_start = start
        if word.lower() in SILENCE_TOKENS:
            continue
        words.append({"word": word, "start_ms": start, "end_ms": end})
    return words


def read_alignments(path: str | os.PathLike) -> dict[str, list[str]]:
    """Read an alignment file (JSON or text, see the module docstring) into key -> tokens.

    Raises SpeechDataError naming the file when it is missing or not in one of the two formats.
    """
    path = Path(path)
    if not path.is_file():
        raise SpeechDataError(f"alignment file not found: {path}. Fix data.speech.alignments or set it to null.")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise SpeechDataError(f"alignment file {path} is not valid JSON: {error}") from error
        if not isinstance(data, dict):
            raise SpeechDataError(
                f"alignment file {path} must hold an object mapping uttid or wav path to start__word__end tokens"
            )
        return {str(key): value.split() if isinstance(value, str) else value for key, value in data.items()}
    alignments: dict[str, list[str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        alignments[fields[0]] = fields[1:]
    return alignments


def _load_json(json_path: Path) -> list[Mapping[str, Any]]:
    if not json_path.is_file():
        raise SpeechDataError(f"SpokenCOCO file not found: {json_path}. Check data.speech.root.")
    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SpeechDataError(f"{json_path} is not valid JSON: {error}") from error
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise SpeechDataError(f"{json_path} has no 'data' list, so it is not a SpokenCOCO_<split>.json file")
    return data["data"]


def load_split(
    json_path: str | os.PathLike,
    audio_root: str | os.PathLike | None = None,
    alignments: str | os.PathLike | None = None,
    image_ids: Collection[int] | None = None,
    progress: bool = True,
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Read one SpokenCOCO split into manifest rows; return them and the skip counts by reason.

    Columns as :func:`vgsalign.speech.speechcoco.load_split`; ``speed`` is 1.0 and
    ``words`` comes from the alignment file (empty without one). WAV paths are
    resolved against ``audio_root`` (default: the JSON file's folder).

    Errors (SpeechDataError): a missing or malformed JSON or alignment file.
    Counted skips: ``invalid_image_path``, ``invalid_caption`` (not an object or
    without text), ``missing_wav`` (no ``wav`` value or the file is missing),
    ``unreadable_wav``, ``empty_wav`` (a WAV without samples), ``invalid_uttid``,
    ``image_id_mismatch``, ``invalid_alignment``, ``word_after_audio_end`` and
    ``duplicate_caption``.
    A caption without an alignment entry keeps empty ``words``; their number is
    in ``frame.attrs["captions_without_alignment"]``.
    """
    json_path = Path(json_path)
    audio_root = Path(audio_root) if audio_root is not None else json_path.parent
    entries = _load_json(json_path)
    aligned = read_alignments(alignments) if alignments is not None else None
    if aligned is None:
        logger.info(
            "no SpokenCOCO word alignments given: captions of %s have no word time stamps, so they serve "
            "retrieval training but alignment scoring needs an alignment file (data.speech.alignments)",
            json_path.name,
        )
    selected_ids = None if image_ids is None else {int(image_id) for image_id in image_ids}
    skips = SkipCounter()
    rows: list[dict[str, Any]] = []
    seen: set[int] = set()
    without_alignment = 0

    for entry in tqdm(entries, desc=f"read {json_path.name}", unit="image", disable=not progress):
        if not isinstance(entry, Mapping):
            skips.add("invalid_image_path", json_path.name, f"image entry is not an object: {entry!r}")
            continue
        captions = entry.get("captions") or []
        try:
            image_id = image_id_from_path(str(entry.get("image", "")))
        except ValueError as error:
            # Every caption of the image is lost, so each one is counted.
            for _ in range(max(len(captions), 1)):
                skips.add("invalid_image_path", json_path.name, str(error))
            continue
        if selected_ids is not None and image_id not in selected_ids:
            continue
        for caption in captions:
            try:
                row = _caption_row(caption, image_id, audio_root, aligned)
            except SpeechMetadataError as error:
                origin = caption.get("uttid") if isinstance(caption, Mapping) else None
                skips.add(error.reason, f"{json_path.name} image {image_id} caption {origin}", str(error))
                continue
            if row["caption_id"] in seen:
                skips.add("duplicate_caption", json_path.name, f"caption id {row['caption_id']} was already read")
                continue
            seen.add(row["caption_id"])
            has_alignment = row.pop("aligned")
            if aligned is not None and not has_alignment:
                without_alignment += 1
            rows.append(row)

    if aligned is not None and without_alignment:
        logger.warning("%d captions of %s have no entry in the alignment file", without_alignment, json_path.name)
    skip_counts = dict(sorted(skips.counts.items()))
    logger.info(
        "read %d SpokenCOCO captions from %s; skipped %d%s",
        len(rows), json_path, sum(skip_counts.values()), f" {skip_counts}" if skip_counts else "",
    )  # fmt: skip
    frame = manifest_frame(rows)
    frame.attrs["captions_without_alignment"] = without_alignment
    return frame, skip_counts


def _caption_row(
    caption: Any, image_id: int, audio_root: Path, aligned: dict[str, list[str]] | None
) -> dict[str, Any]:
    """Build one manifest row (plus an ``aligned`` flag) or raise SpeechMetadataError."""
    if not isinstance(caption, Mapping) or not isinstance(caption.get("text"), str):
        raise SpeechMetadataError("invalid_caption", f"caption is not an object with a text: {caption!r}")
    wav = caption.get("wav")
    if not wav:
        raise SpeechMetadataError("missing_wav", "caption has no wav path")
    uttid = str(caption.get("uttid") or Path(str(wav)).stem)
    try:
        uttid_image, caption_id = ids_from_uttid(uttid)
    except ValueError as error:
        raise SpeechMetadataError("invalid_uttid", str(error)) from error
    if uttid_image != image_id:
        raise SpeechMetadataError(
            "image_id_mismatch", f"uttid {uttid!r} names image {uttid_image}, the image path {image_id}"
        )
    wav_path = audio_root / str(wav)
    sample_rate, num_samples = read_audio_info(wav_path)

    words: list[dict[str, Any]] = []
    tokens = None
    if aligned is not None:
        tokens = aligned.get(uttid, aligned.get(str(wav)))
    if tokens is not None:
        words = parse_alignment_tokens(tokens)
        duration_ms = 1000.0 * num_samples / sample_rate
        late = [word for word in words if word["start_ms"] >= duration_ms]
        if late:
            raise SpeechMetadataError(
                "word_after_audio_end",
                f"aligned word {late[0]['word']!r} starts at {late[0]['start_ms']:.1f} ms, after the audio "
                f"({duration_ms:.1f} ms)",
            )
        for word in words:
            word["end_ms"] = min(word["end_ms"], duration_ms)
    return {
        "caption_id": caption_id,
        "image_id": image_id,
        "text": caption["text"],
        "wav_path": str(wav_path),
        "speaker": str(caption.get("speaker", "")),
        "speed": 1.0,
        "sample_rate": sample_rate,
        "num_samples": num_samples,
        "words": words,
        "aligned": tokens is not None,
    }
