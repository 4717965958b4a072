"""Benchmark the feature stages and print their figures.

Measures, on whatever machine runs it:

1. image features: the bare VGG16 forward pass on preloaded tensors against the
   full stage (JPEG decoding in DataLoader workers overlapped with the forward
   pass, shard writing), in images/s; target: full >= 90 % of bare;
2. audio features: the full stage (WAV reading, log-mel, shard writing) in
   captions/s, for 16 kHz WAVs and for 22.05 kHz WAVs that need resampling;
   target: >= 200 captions/s on 2 cores;
3. peak resident memory of each stage at two shard sizes (should not grow
   with the number of items), each size in a fresh process.

Images are the real COCO JPEGs of ``<project root>/../shared/data/coco-tiny``
when present (read in place, cycled to the requested count), otherwise
synthetic 640 x 480 JPEGs. VGG16 uses random weights (same cost as ImageNet
weights, no download). Run from the project root:

    .venv/bin/python benchmarks/bench_features.py
    .venv/bin/python benchmarks/bench_features.py --images 64 --batch-size 16 --workers 2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # tqdm reads it at import

import numpy as np
import pandas as pd
import soundfile
import torch
from PIL import Image

from vgsalign.config import load_params
from vgsalign.devices import resolve_device
from vgsalign.features import audio, image
from vgsalign.layout import RunPaths

PROJECT_ROOT = Path(__file__).resolve().parents[1]
COCO_TINY = PROJECT_ROOT.parent / "shared" / "data" / "coco-tiny"


@contextlib.contextmanager
def _run_folder(overrides: dict):
    """Yield (params, paths, folder) for a throw-away run in a temporary folder (the working directory)."""
    previous = Path.cwd()
    with tempfile.TemporaryDirectory(prefix="bench-features-") as folder:
        params = load_params([PROJECT_ROOT / "params.yaml"], overrides={"run": "bench", **overrides})
        os.chdir(folder)
        try:
            yield params, RunPaths(params), Path(folder)
        finally:
            os.chdir(previous)


def _image_files(count: int, folder: Path) -> list[str]:
    """Return ``count`` JPEG paths: COCO images cycled, or synthetic textured 640 x 480 JPEGs."""
    coco = sorted(COCO_TINY.glob("*2017/*.jpg"))
    if coco:
        return [str(coco[item % len(coco)]) for item in range(count)]
    rng = np.random.default_rng(0)
    files = []
    for item in range(min(count, 64)):
        gradient = np.linspace(0, 255, 640)[None, :, None] * np.linspace(0.2, 1.0, 480)[:, None, None]
        pixels = np.clip(gradient + rng.normal(0, 25, size=(480, 640, 3)), 0, 255).astype(np.uint8)
        path = folder / f"synthetic-{item}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        files.append(str(path))
    return [files[item % len(files)] for item in range(count)]


def _write_wavs(count: int, rate: int, folder: Path) -> list[str]:
    """Write ``count`` WAVs of 2-6 s (tones plus noise, 16-bit) and return their paths."""
    rng = np.random.default_rng(1)
    paths = []
    for item in range(count):
        seconds = rng.uniform(2.0, 6.0)
        time_axis = np.arange(int(seconds * rate)) / rate
        signal = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 3000) * time_axis) + 0.02 * rng.normal(size=time_axis.size)
        path = folder / f"caption-{item}.wav"
        soundfile.write(path, signal.astype(np.float32), rate, subtype="PCM_16")
        paths.append(str(path))
    return paths


def bench_images(count: int, batch_size: int, workers: int, device: str, bare: bool = True) -> dict:
    """Time the bare forward pass on preloaded tensors (unless ``bare`` is false) and the full image stage."""
    overrides = {
        "features": {
            "image_shards": 1,
            "device": device,
            "image": {"weights": "none", "batch_size": batch_size, "num_workers": workers},
        }
    }
    with _run_folder(overrides) as (params, paths, folder):
        files = _image_files(count, folder)
        bare_rate = _bare_forward_rate(files, batch_size, device) if bare else float("nan")

        paths.images.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"image_id": np.arange(count), "file_path": files}).to_parquet(paths.images)
        started = time.perf_counter()
        image.run(params, paths, "0000")
        full = count / (time.perf_counter() - started)
    return {"images": count, "batch_size": batch_size, "workers": workers, "bare_images_per_s": bare_rate,
            "full_images_per_s": full, "full_over_bare": full / bare_rate}


def _bare_forward_rate(files: list[str], batch_size: int, device: str) -> float:
    """Return images/s of the VGG16 forward pass alone, on inputs decoded beforehand."""
    resolved = resolve_device(device, "--device")
    model = image.build_vgg16_block5("none").to(resolved)
    if resolved.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    inputs = torch.stack([image.load_image(path, "stretch") for path in files])  # [N, 3, 224, 224]
    image.extract_batch(model, inputs[:batch_size], resolved)  # warm-up
    started = time.perf_counter()
    for start in range(0, len(files), batch_size):
        image.extract_batch(model, inputs[start : start + batch_size], resolved)  # copies to the CPU: synchronous
    return len(files) / (time.perf_counter() - started)


def bench_audio(count: int, rate: int) -> dict:
    with _run_folder({"features": {"audio_shards": 1}}) as (params, paths, folder):
        wavs = _write_wavs(count, rate, folder)
        paths.manifest.parent.mkdir(parents=True, exist_ok=True)
        ids = np.arange(count)
        pd.DataFrame({"caption_id": ids, "image_id": ids, "wav_path": wavs}).to_parquet(paths.manifest)
        audio.caption_features(wavs[0], params["features"]["audio"], 512, "paper")  # warm-up (imports, filter bank)
        started = time.perf_counter()
        audio.run(params, paths, "0000")
        elapsed = time.perf_counter() - started
    return {"captions": count, "wav_rate": rate, "captions_per_s": count / elapsed}


def peak_rss_child(stage: str, count: int) -> None:
    """Run one stage on ``count`` items in this process and print its peak RSS in MiB as JSON."""
    if stage == "audio":
        bench_audio(count, 16000)
    else:
        bench_images(count, batch_size=8, workers=1, device="cpu", bare=False)
    print(json.dumps({"stage": stage, "items": count, "peak_rss_mib": _peak_rss_kib() / 1024}))


def _peak_rss_kib() -> int:
    """Return this process's peak RSS in KiB.

    VmHWM from /proc is preferred because ru_maxrss, read in a child started
    by this script, returned the parent's larger peak (observed on Linux).
    """
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def measure_peak_rss(stage: str, count: int) -> float:
    command = [sys.executable, __file__, "--rss-child", stage, str(count)]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])["peak_rss_mib"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=48, help="images per throughput measurement")
    parser.add_argument("--batch-size", type=int, default=16, help="image batch size")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader decode workers")
    parser.add_argument("--device", default="cpu", help="device for the image benchmark (cpu, cuda, auto)")
    parser.add_argument("--captions", type=int, default=600, help="captions per audio measurement")
    parser.add_argument("--rss-sizes", type=int, nargs=2, default=[500, 2000], metavar=("SMALL", "LARGE"),
                        help="audio shard sizes for the peak-memory comparison")
    parser.add_argument("--rss-image-sizes", type=int, nargs=2, default=[8, 32], metavar=("SMALL", "LARGE"),
                        help="image shard sizes for the peak-memory comparison")
    parser.add_argument("--skip", nargs="*", default=[], choices=["images", "audio", "rss"], help="sections to skip")
    parser.add_argument("--rss-child", nargs=2, metavar=("STAGE", "COUNT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)

    if args.rss_child:
        peak_rss_child(args.rss_child[0], int(args.rss_child[1]))
        return

    print(f"machine: {os.cpu_count()} CPUs visible, torch {torch.__version__}, {torch.get_num_threads()} intra-op threads")
    print(f"images: {'COCO slice ' + str(COCO_TINY) if COCO_TINY.is_dir() else 'synthetic 640 x 480 JPEGs'}")
    if "images" not in args.skip:
        result = bench_images(args.images, args.batch_size, args.workers, args.device)
        print(
            f"image features ({args.device}, {result['images']} images, batch {result['batch_size']}, "
            f"{result['workers']} workers): bare forward {result['bare_images_per_s']:.2f} images/s, "
            f"full stage {result['full_images_per_s']:.2f} images/s = {100 * result['full_over_bare']:.0f} % of bare "
            "(target >= 90 %)"
        )
    if "audio" not in args.skip:
        for rate in (16000, 22050):
            result = bench_audio(args.captions, rate)
            print(
                f"audio features ({result['captions']} captions of 2-6 s at {rate} Hz): "
                f"{result['captions_per_s']:.0f} captions/s, one process (target >= 200)"
            )
    if "rss" not in args.skip:
        small, large = args.rss_sizes
        print(f"audio peak RSS: {measure_peak_rss('audio', small):.0f} MiB at {small} captions, "
              f"{measure_peak_rss('audio', large):.0f} MiB at {large} captions")
        small, large = args.rss_image_sizes
        print(f"image peak RSS: {measure_peak_rss('image', small):.0f} MiB at {small} images, "
              f"{measure_peak_rss('image', large):.0f} MiB at {large} images")


if __name__ == "__main__":
    main()
