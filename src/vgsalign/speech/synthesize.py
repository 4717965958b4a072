"""Stage ``synthesize_speech``: SPEECH-COCO-format speech for COCO captions, made with espeak-ng.

For every caption of ``captions_<split>.json`` the stage writes one WAV and one
JSON file under ``<speech dir>/<split>/{wav,json}/``, named and laid out as in
SPEECH-COCO, so the manifest reads synthesised and original speech alike.

Rules:

- Voice and speed of a caption are drawn from ``synthesis.voices`` and
  ``synthesis.speeds`` by a generator seeded with ``(seed, caption id)``, so the
  choice does not depend on the order, the number of workers or on resuming.
- ``data.max_images`` keeps the captions of the first N images in ascending
  image id among the images of the captions file (:func:`select_images`).
- The text is normalised for synthesis by stripping it and collapsing runs of
  whitespace (:func:`vgsalign.speech.tts.normalize_text`). The WORD entries are
  its whitespace tokens without leading and trailing punctuation.
- A caption whose JSON and WAV exist, parse, and match the expected text,
  voice, speed and sample rate is kept as it is (resuming). This holds only
  while ``<split>/synthesis.json`` records the same speaking rate, sample rate
  and espeak-ng package version; otherwise every caption is synthesised again.
  Files of captions that are no longer selected, and temporary files of an
  interrupted run, are deleted.
- A caption that cannot be synthesised (no word, an espeak-ng failure) is
  skipped, counted and logged. An unknown voice stops the stage before any
  caption is spoken.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import math
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from vgsalign.io import ensure_dir, write_json_atomic
from vgsalign.layout import RunPaths
from vgsalign.speech import tts
from vgsalign.speech.speechcoco import (
    SpeechCaption,
    SpeechMetadataError,
    SpeechName,
    caption_from_record,
    caption_paths,
    format_speed,
    parse_name,
    read_audio_info,
    read_json_record,
    words_from_timecode,
    write_caption,
)

logger = logging.getLogger(__name__)

# Below this many captions, starting more espeak-ng server processes costs more than it saves.
MIN_CAPTIONS_FOR_POOL = 32
# Maximum skipped captions logged one by one; the rest are only counted.
MAX_LOGGED_FAILURES = 10
# Settings of the synthesis that made a split's files, beside its json/ and wav/ folders.
SETTINGS_FILE = "synthesis.json"


class CaptionsFileError(ValueError):
    """A COCO captions file that is missing or malformed. The message names the file and the fix."""


@dataclass(frozen=True)
class CaptionTask:
    """One caption to synthesise and where its files go."""

    split_dir: str
    image_id: int
    caption_id: int
    text: str
    voice: str
    speed: float
    words_per_minute: int
    sample_rate: int
    # False when the files on disk may come from other synthesis settings.
    reuse: bool = True

    @property
    def name(self) -> SpeechName:
        return SpeechName(self.image_id, self.caption_id, self.voice, "None", self.speed)


def read_captions(path: str | os.PathLike) -> tuple[list[int], list[dict[str, Any]], int]:
    """Read a COCO captions file; return its image ids, its caption annotations and the invalid count.

    Image ids come from ``images`` (or, without that list, from the annotations).
    An annotation without an integer ``id`` and ``image_id`` or a string
    ``caption`` is dropped and counted. A missing file or one without
    ``annotations`` raises CaptionsFileError.
    """
    path = Path(path)
    if not path.is_file():
        raise CaptionsFileError(f"COCO captions file not found: {path}. Check data.coco_root and the split names.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CaptionsFileError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise CaptionsFileError(f"{path} has no 'annotations' list, so it is not a COCO captions file")
    captions, invalid = [], 0
    for annotation in data["annotations"]:
        valid = (
            isinstance(annotation, dict)
            and isinstance(annotation.get("id"), int)
            and isinstance(annotation.get("image_id"), int)
            and isinstance(annotation.get("caption"), str)
        )
        if valid:
            captions.append(annotation)
        else:
            invalid += 1
    images = data.get("images")
    if isinstance(images, list):
        image_ids = sorted({image["id"] for image in images if isinstance(image, dict) and isinstance(image.get("id"), int)})
    else:
        image_ids = sorted({caption["image_id"] for caption in captions})
    return image_ids, captions, invalid


def select_images(image_ids: Iterable[int], max_images: int | None) -> list[int]:
    """Return the image ids used: all of them, or the first ``max_images`` in ascending order."""
    ordered = sorted(set(image_ids))
    return ordered if max_images is None else ordered[:max_images]


def choose_voice(seed: int, caption_id: int, voices: Sequence[str], speeds: Sequence[float]) -> tuple[str, float]:
    """Draw a caption's voice and speed from a generator seeded with (seed, caption id)."""
    rng = np.random.default_rng([seed, caption_id])
    voice = voices[int(rng.integers(len(voices)))]
    speed = float(speeds[int(rng.integers(len(speeds)))])
    return voice, speed


def synthesize_caption(task: CaptionTask) -> tuple[SpeechCaption, np.ndarray]:
    """Synthesise one caption; return its SPEECH-COCO record and the waveform.

    The words are read back from the built timecode with the reader's rule, so
    they equal what a reader of the file returns.
    """
    text = tts.normalize_text(task.text)
    synthesis = tts.synthesize(text, task.voice, task.words_per_minute, task.speed, task.sample_rate)
    timecode = tts.build_timecode(synthesis)
    duration_s = synthesis.duration_s
    stem = task.name.stem
    caption = SpeechCaption(
        image_id=task.image_id,
        caption_id=task.caption_id,
        speaker=task.voice,
        speed=task.speed,
        duration_s=round(duration_s, 6),
        text=text,
        wav_filename=f"{stem}.wav",
        disfluency=("None", ""),
        words=words_from_timecode(timecode, duration_s * 1000.0),
        timecode=timecode,
    )
    return caption, synthesis.waveform


def is_complete(task: CaptionTask) -> bool:
    """Return whether the caption's JSON and WAV exist, parse and match the task (text, voice, speed, rate)."""
    json_path, wav_path = caption_paths(task.split_dir, task.name)
    if not (json_path.is_file() and wav_path.is_file()):
        return False
    try:
        sample_rate, num_samples = read_audio_info(wav_path)
        caption = caption_from_record(read_json_record(json_path), 1000.0 * num_samples / sample_rate)
    except SpeechMetadataError:
        return False
    return (
        sample_rate == task.sample_rate
        and caption.text == tts.normalize_text(task.text)
        and caption.speaker == task.voice
        and math.isclose(caption.speed, task.speed)
        and caption.caption_id == task.caption_id
        and len(caption.words) == len(tts.caption_words(task.text))
    )


def run_task(task: CaptionTask) -> tuple[int, str, str]:
    """Synthesise and write one caption unless complete; return (caption id, status, message).

    Status is ``reused``, ``synthesized`` or a skip reason, which the caller counts and logs.
    """
    if task.reuse and is_complete(task):
        return task.caption_id, "reused", ""
    if not tts.caption_words(task.text):
        return task.caption_id, "no_words", f"caption {task.caption_id} has no word: {task.text!r}"
    try:
        caption, waveform = synthesize_caption(task)
        write_caption(task.split_dir, caption, waveform, task.sample_rate)
    except (tts.SynthesisError, SpeechMetadataError) as error:
        return task.caption_id, "synthesis_failed", f"caption {task.caption_id}: {error}"
    return task.caption_id, "synthesized", ""


def available_workers() -> int:
    """Number of CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not available on macOS and Windows
        return os.cpu_count() or 1


def make_tasks(
    split_dir: Path,
    captions: Iterable[Mapping[str, Any]],
    image_ids: Iterable[int],
    params: Mapping[str, Any],
    reuse: bool = True,
) -> list[CaptionTask]:
    """Build the tasks of the captions of ``image_ids``, sorted by caption id."""
    synthesis = params["synthesis"]
    selected = set(image_ids)
    tasks = []
    for annotation in captions:
        if annotation["image_id"] not in selected:
            continue
        voice, speed = choose_voice(params["seed"], annotation["id"], synthesis["voices"], synthesis["speeds"])
        tasks.append(
            CaptionTask(
                split_dir=str(split_dir),
                image_id=annotation["image_id"],
                caption_id=annotation["id"],
                text=annotation["caption"],
                voice=voice,
                speed=speed,
                words_per_minute=synthesis["words_per_minute"],
                sample_rate=synthesis["sample_rate"],
                reuse=reuse,
            )
        )
    return sorted(tasks, key=lambda task: task.caption_id)


def synthesis_settings(params: Mapping[str, Any]) -> dict[str, Any]:
    """Return the settings that change every caption's audio but not its file name."""
    try:
        espeak_version = importlib.metadata.version("espeakng-loader")
    except importlib.metadata.PackageNotFoundError:
        espeak_version = None
    return {
        "words_per_minute": params["synthesis"]["words_per_minute"],
        "sample_rate": params["synthesis"]["sample_rate"],
        "espeakng_loader": espeak_version,
    }


def _read_settings(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def remove_stale_files(split_dir: Path, expected: set[str]) -> int:
    """Delete SPEECH-COCO files whose stem is not expected, and leftover temporary files; return the count."""
    removed = 0
    for folder, suffix in (("json", ".json"), ("wav", ".wav")):
        for path in (split_dir / folder).iterdir():
            is_temporary = path.name.startswith(".") and ".tmp" in path.name
            if is_temporary:
                path.unlink()
                removed += 1
                continue
            if path.suffix != suffix or path.stem in expected:
                continue
            try:
                parse_name(path)
            except ValueError:
                continue  # not a file of ours
            path.unlink()
            removed += 1
    return removed


def validate_synthesis_params(params: Mapping[str, Any]) -> None:
    """Raise before any work when a voice, speed or rate in ``synthesis`` cannot be used."""
    synthesis = params["synthesis"]
    for speed in synthesis["speeds"]:
        try:
            format_speed(speed)
        except ValueError as error:
            raise ValueError(f"invalid synthesis.speeds entry {speed}: {error}") from error
        tts.rate_for(synthesis["words_per_minute"], speed)
    for voice in synthesis["voices"]:
        tts.synthesize("test", voice, synthesis["words_per_minute"])


def synthesize_tasks(tasks: list[CaptionTask], workers: int, label: str) -> Counter[str]:
    """Run the tasks on ``workers`` threads; return the status counts and log the failures.

    Each thread drives its own espeak-ng server process (see
    :mod:`vgsalign.speech.tts`), so the threads synthesise in parallel.
    """
    statuses: Counter[str] = Counter()
    with tqdm(total=len(tasks), desc=f"synthesize {label}", unit="caption") as progress:
        if workers > 1 and len(tasks) >= MIN_CAPTIONS_FOR_POOL:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="synthesize") as pool:
                results: Iterable[tuple[int, str, str]] = pool.map(run_task, tasks)
                for result in results:
                    _count(result, statuses, progress)
        else:
            for task in tasks:
                _count(run_task(task), statuses, progress)
    return statuses


def _count(result: tuple[int, str, str], statuses: Counter[str], progress: tqdm) -> None:
    _, status, message = result
    statuses[status] += 1
    failed = status not in ("reused", "synthesized")
    if failed and statuses[status] <= MAX_LOGGED_FAILURES:
        logger.warning("skipped %s (%s)", message, status)
    progress.update(1)


def run(params: Mapping[str, Any], paths: RunPaths, workers: int | None = None) -> dict[str, dict[str, int]]:
    """Synthesise the speech of every selected caption of both COCO splits; return counts per split."""
    validate_synthesis_params(params)
    settings = synthesis_settings(params)
    workers = workers or available_workers()
    max_images = params["data"]["max_images"]
    summary = {}
    for split in paths.coco_splits:
        image_ids, captions, invalid = read_captions(paths.captions_file(split))
        selected = select_images(image_ids, max_images)
        split_dir = paths.speech_dir(split)
        ensure_dir(split_dir / "json")
        ensure_dir(split_dir / "wav")
        settings_path = split_dir / SETTINGS_FILE
        reuse = _read_settings(settings_path) == settings
        if not reuse:
            # Until this split is complete, no file of it counts as made with any settings.
            settings_path.unlink(missing_ok=True)
        tasks = make_tasks(split_dir, captions, selected, params, reuse)
        logger.info(
            "%s: %d captions of %d images to synthesise with %d worker(s)", split, len(tasks), len(selected), workers
        )
        statuses = synthesize_tasks(tasks, workers, split)
        removed = remove_stale_files(split_dir, {task.name.stem for task in tasks})
        if not reuse:
            write_json_atomic(settings_path, settings)
        counts = dict(sorted(statuses.items()))
        if invalid:
            counts["invalid_annotation"] = invalid
        counts["stale_files_removed"] = removed
        logger.info("%s: %s", split, ", ".join(f"{key} {value}" for key, value in counts.items()))
        summary[split] = counts
    return summary
