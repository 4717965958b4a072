"""Benchmark speech synthesis, the SPEECH-COCO reader and the demo corpus, and print their figures.

Measures, on whatever machine runs it:

1. espeak-ng synthesis of demo-like captions in one process (``tts.synthesize``,
   16 kHz output), in captions/s and as a real-time factor (seconds of audio
   made per second);
2. the ``synthesize_speech`` stage with 1 and with N worker processes, writing
   WAV + JSON, in captions/s (target: the demo's 1,040 captions in under a
   minute on 2 cores);
3. ``speechcoco.load_split`` over the files that stage wrote (JSON parsing and
   WAV headers), in captions/s (target: >= 1,000 captions/s, so that the
   414k SPEECH-COCO training captions read in minutes);
4. demo corpus generation (drawing, masks, JPEG and JSON writing), in images/s.

Run from the project root:

    .venv/bin/python benchmarks/bench_speech.py
    .venv/bin/python benchmarks/bench_speech.py --captions 200 --workers 2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # tqdm reads it at import

import numpy as np

from vgsalign import demo
from vgsalign.config import load_params
from vgsalign.layout import RunPaths
from vgsalign.speech import speechcoco, synthesize, tts

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def _working_folder() -> Iterator[Path]:
    previous = Path.cwd()
    with tempfile.TemporaryDirectory(prefix="bench-speech-") as folder:
        os.chdir(folder)
        try:
            yield Path(folder)
        finally:
            os.chdir(previous)


def _demo_captions(count: int) -> dict[int, tuple[int, str]]:
    """Captions written by the demo's own templates, ``count`` of them."""
    params = load_params([PROJECT_ROOT / "params.yaml"], {"data": {"source": "demo"}})
    captions: dict[int, tuple[int, str]] = {}
    index = 0
    while len(captions) < count:
        rng = np.random.default_rng([0, index])
        image = demo.draw_image(rng, params["demo"])
        for tokens in demo.make_captions(image, rng, 5, params["demo"]["synonym_rate"]):
            captions[len(captions) + 1] = (index + 1, demo.caption_text(tokens))
        index += 1
    return dict(list(captions.items())[:count])


def bench_tts(captions: dict[int, tuple[int, str]]) -> None:
    texts = [text for _, text in captions.values()]
    tts.synthesize("warm up", "en-us")
    started = time.perf_counter()
    audio_seconds = sum(tts.synthesize(text, "en-us", 175, 1.0, 16000).duration_s for text in texts)
    elapsed = time.perf_counter() - started
    print(
        f"tts.synthesize: {len(texts) / elapsed:.1f} captions/s, real-time factor {audio_seconds / elapsed:.0f}x "
        f"({len(texts)} captions, {audio_seconds:.0f} s of audio, one process)"
    )


def bench_stage(captions: dict[int, tuple[int, str]], workers: int) -> None:
    with _working_folder():
        overrides = {
            "run": "bench",
            "data": {"source": "coco", "coco_root": "coco", "train_split": "train", "test_split": "test",
                     "speech": {"source": "synthesize"}},
        }  # fmt: skip
        params = load_params([PROJECT_ROOT / "params.yaml"], overrides)
        paths = RunPaths(params)
        for split, subset in (("train", captions), ("test", dict(list(captions.items())[:1]))):
            path = paths.captions_file(split)
            path.parent.mkdir(parents=True, exist_ok=True)
            annotations = [{"id": cid, "image_id": image, "caption": text} for cid, (image, text) in subset.items()]
            path.write_text(json.dumps({"annotations": annotations}))

        started = time.perf_counter()
        synthesize.run(params, paths, workers=workers)
        elapsed = time.perf_counter() - started
        print(f"synthesize_speech stage, {workers} worker(s): {len(captions) / elapsed:.1f} captions/s "
              f"({len(captions) + 1} captions in {elapsed:.1f} s, including worker start-up)")  # fmt: skip

        started = time.perf_counter()
        frame, _ = speechcoco.load_split(paths.speech_dir("train"), progress=False)
        elapsed = time.perf_counter() - started
        print(f"speechcoco.load_split: {len(frame) / elapsed:.0f} captions/s ({len(frame)} captions)")


def bench_demo(images: int) -> None:
    with _working_folder():
        overrides = {"run": "bench", "data": {"source": "demo"}, "demo": {"train_images": images, "test_images": 1}}
        params = load_params([PROJECT_ROOT / "params.yaml"], overrides)
        started = time.perf_counter()
        demo.run(params, RunPaths(params))
        elapsed = time.perf_counter() - started
        print(f"make_demo_corpus: {(images + 1) / elapsed:.0f} images/s ({images + 1} images, default sizes)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--captions", type=int, default=120, help="captions to synthesise (default 120)")
    parser.add_argument("--workers", type=int, default=synthesize.available_workers(), help="worker processes")
    parser.add_argument("--images", type=int, default=200, help="demo images to generate (default 200)")
    args = parser.parse_args()

    captions = _demo_captions(args.captions)
    bench_tts(captions)
    bench_stage(captions, 1)
    if args.workers > 1:
        bench_stage(captions, args.workers)
    bench_demo(args.images)


if __name__ == "__main__":
    main()
