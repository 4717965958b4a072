"""Benchmark training and print its figures.

Measures, on whatever machine runs it:

1. training throughput of every variant in caption-image pairs per second:
   one optimisation step (encode, triplet loss, backward, Adam) on batches
   already in memory, at paper width by default;
2. end-to-end training throughput through the data path: ``train_epoch`` on
   batches read from memory-mapped synthetic feature shards by the DataLoader;
3. memory while streaming every pair of a synthetic shard set several times
   larger than a limit on the process's private memory. After the imports the
   child process sets ``RLIMIT_DATA`` to its current data size plus
   ``--budget-mb``, so any private allocation that grows with the data set
   fails with MemoryError. Read-only memory maps do not count against
   ``RLIMIT_DATA``; their pages appear in the RSS as file-backed pages, which
   the kernel reclaims under memory pressure. The part reports both.

Each part runs in a fresh process so that peak memory figures do not mix.
The target of the full run (70 epochs of CNNATT v0 over 414k captions in
under an hour) needs about 8,000 pairs/s on one GPU. Run from the project root:

    .venv/bin/python benchmarks/bench_training.py
    .venv/bin/python benchmarks/bench_training.py --part throughput --variants cnnatt_v0 --device cuda --amp
    .venv/bin/python benchmarks/bench_training.py --part streaming --shard-gb 2 --budget-mb 512
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # tqdm reads it at import

import numpy as np
import torch

from vgsalign.config import load_params
from vgsalign.layout import RunPaths
from vgsalign.models import VARIANTS, build_model
from vgsalign.training.data import (
    EpochBatchSampler,
    PairBatches,
    open_feature_stores,
    read_manifest,
    select_split,
    write_synthetic_features,
)
from vgsalign.training.loss import batch_triplet_loss
from vgsalign.training.train import train_epoch

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# Bytes per caption-image pair in float16: log-mels [40, 512] and VGG16 maps [512, 14, 14].
AUDIO_BYTES = 40 * 512 * 2
IMAGE_BYTES = 512 * 14 * 14 * 2


def _memory_status() -> dict[str, float]:
    """Return VmData, VmRSS, RssAnon and RssFile of this process in MiB (Linux /proc)."""
    values = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmData", "VmRSS", "RssAnon", "RssFile"):
                values[key] = int(rest.split()[0]) / 1024
    return values


def _peak_rss_mb(scope: int = resource.RUSAGE_SELF) -> float:
    return resource.getrusage(scope).ru_maxrss / 1024  # KiB on Linux


@contextlib.contextmanager
def _run_folder(overrides: dict):
    """Yield (params, paths) of a throw-away run in a temporary working directory."""
    previous = Path.cwd()
    with tempfile.TemporaryDirectory(prefix="bench-training-") as folder:
        params = load_params([PROJECT_ROOT / "params.yaml"], overrides={"run": "bench", **overrides})
        os.chdir(folder)
        try:
            yield params, RunPaths(params)
        finally:
            os.chdir(previous)


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_throughput(args: argparse.Namespace) -> dict:
    """Time optimisation steps of each variant on random in-memory batches."""
    device = torch.device(args.device)
    results = {}
    for variant in args.variants:
        torch.manual_seed(0)
        model = build_model(variant, width=args.width).to(device).train()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
        impostors = torch.Generator().manual_seed(0)
        audio = torch.randn(args.batch_size, 40, 512, device=device)  # [B, 40, 512]
        image = torch.rand(args.batch_size, 512, 14, 14, device=device)  # [B, 512, 14, 14]
        image_ids = torch.arange(args.batch_size)
        autocast = (
            torch.autocast(device_type="cuda", dtype=torch.bfloat16)
            if args.amp and device.type == "cuda"
            else contextlib.nullcontext()
        )

        def step() -> None:
            with autocast:
                loss = batch_triplet_loss(
                    model, model.encode_audio(audio), model.encode_image(image), image_ids, impostors, 0.1
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        for _ in range(args.warmup):
            step()
        _synchronise(device)
        started = time.perf_counter()
        for _ in range(args.steps):
            step()
        _synchronise(device)
        seconds = time.perf_counter() - started
        results[variant] = args.steps * args.batch_size / seconds
        print(f"  {variant:<10} {results[variant]:9.1f} pairs/s", flush=True)
    return {"pairs_per_s": results}


def bench_loader(args: argparse.Namespace) -> dict:
    """Time train_epoch of one variant on batches read from synthetic shards."""
    device = torch.device(args.device)
    overrides = {"features": {"audio_shards": 2, "image_shards": 2}}
    with _run_folder(overrides) as (params, paths):
        write_synthetic_features(paths, args.loader_images, 1, {"train": 1.0}, seed=0)
        audio_store, image_store = open_feature_stores(paths)
        items = select_split(read_manifest(paths.manifest), audio_store, image_store, "train")
        dataset = PairBatches(items, audio_store, image_store)
        sampler = EpochBatchSampler(len(dataset), args.batch_size, 0, 1)
        loader = torch.utils.data.DataLoader(
            dataset, sampler=sampler, batch_size=None, num_workers=args.workers, pin_memory=device.type == "cuda"
        )
        model = build_model(args.variants[0], width=args.width).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
        trained = train_epoch(model, loader, optimizer, torch.Generator().manual_seed(0), 0.1, device, args.amp)
    pairs_per_s = trained["pairs"] / trained["seconds"]
    print(f"  {args.variants[0]} through shards, {args.workers} workers: {pairs_per_s:.1f} pairs/s", flush=True)
    return {"variant": args.variants[0], "workers": args.workers, "pairs_per_s": pairs_per_s}


def bench_streaming(args: argparse.Namespace) -> dict:
    """Read every pair of a synthetic shard set larger than the private-memory budget."""
    pair_bytes = AUDIO_BYTES + IMAGE_BYTES
    num_images = int(args.shard_gb * 2**30 / pair_bytes)
    overrides = {"features": {"audio_shards": 8, "image_shards": 8}}
    with _run_folder(overrides) as (params, paths):
        started = time.perf_counter()
        write_synthetic_features(paths, num_images, 1, {"train": 1.0}, seed=0)
        written = time.perf_counter() - started
        shard_bytes = sum(path.stat().st_size for path in Path(paths.root, "features").rglob("*.npy"))
        audio_store, image_store = open_feature_stores(paths)
        items = select_split(read_manifest(paths.manifest), audio_store, image_store, "train")
        dataset = PairBatches(items, audio_store, image_store)
        sampler = EpochBatchSampler(len(dataset), args.batch_size, 0, 1)

        before = _memory_status()
        limit = int((before["VmData"] + args.budget_mb) * 2**20)
        resource.setrlimit(resource.RLIMIT_DATA, (limit, resource.RLIM_INFINITY))
        loader = torch.utils.data.DataLoader(dataset, sampler=sampler, batch_size=None, num_workers=args.workers)
        peak = dict(before)
        pairs = 0
        checksum = 0.0
        # Private memory after each quarter of the stream: flat when it does not grow with the data read.
        quarters = []
        started = time.perf_counter()
        for number, batch in enumerate(loader, start=1):
            audio = batch["audio"].float()  # [B, 40, 512]
            image = batch["image"].float()  # [B, 512, 14, 14]
            checksum += float(audio[:, 0, 0].sum() + image[:, 0, 0, 0].sum())
            pairs += audio.shape[0]
            current = _memory_status()
            peak = {key: max(peak[key], current[key]) for key in peak}
            if number * 4 >= len(sampler) * (len(quarters) + 1):
                quarters.append(current["RssAnon"])
        seconds = time.perf_counter() - started
    result = {
        "shard_mib": shard_bytes / 2**20,
        "pairs": pairs,
        "write_seconds": written,
        "read_pairs_per_s": pairs / seconds,
        "read_mib_per_s": pairs * pair_bytes / 2**20 / seconds,
        "budget_mib": args.budget_mb,
        "rlimit_data_mib": limit / 2**20,
        "before": before,
        "peak": peak,
        "private_growth_mib": peak["RssAnon"] - before["RssAnon"],
        "private_mib_by_quarter": quarters,
        "peak_rss_mib": _peak_rss_mb(),
        "peak_rss_workers_mib": _peak_rss_mb(resource.RUSAGE_CHILDREN),
    }
    print(
        f"  streamed {pairs} pairs ({result['shard_mib']:.0f} MiB of shards) at {result['read_pairs_per_s']:.0f} pairs/s "
        f"({result['read_mib_per_s']:.0f} MiB/s), {args.workers} workers\n"
        f"  private memory (RssAnon): {before['RssAnon']:.0f} MiB before, {peak['RssAnon']:.0f} MiB peak "
        f"(+{result['private_growth_mib']:.0f} MiB; budget {args.budget_mb} MiB enforced by RLIMIT_DATA); "
        f"after each quarter of the stream: {', '.join(f'{value:.0f}' for value in quarters)} MiB\n"
        f"  file-backed pages (RssFile): {before['RssFile']:.0f} MiB before, {peak['RssFile']:.0f} MiB peak; "
        f"peak RSS {result['peak_rss_mib']:.0f} MiB, largest worker {result['peak_rss_workers_mib']:.0f} MiB (ru_maxrss)",
        flush=True,
    )
    return result


PARTS = {"throughput": bench_throughput, "loader": bench_loader, "streaming": bench_streaming}


def _parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["all", *PARTS], default="all", help="which measurement to run")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS), help="variants to time")
    parser.add_argument("--width", type=float, default=1.0, help="filter-count multiplier (1.0 = paper)")
    parser.add_argument("--batch-size", type=int, default=32, help="pairs per batch")
    parser.add_argument("--steps", type=int, default=3, help="timed optimisation steps per variant")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before timing")
    parser.add_argument("--device", default="cpu", help="torch device, for example cpu or cuda")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA only)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    parser.add_argument("--loader-images", type=int, default=128, help="synthetic pairs for the loader part")
    parser.add_argument("--shard-gb", type=float, default=2.0, help="size of the streamed shard set in GiB")
    parser.add_argument("--budget-mb", type=int, default=512, help="private-memory budget in MiB above the start")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}", flush=True)
    if args.part != "all":
        print(f"[{args.part}]", flush=True)
        figures = PARTS[args.part](args)
        if args.json is not None:
            args.json.write_text(json.dumps(figures, indent=2) + "\n")
        return

    # Each part in a fresh process, so peak memory figures do not mix.
    figures = {}
    forwarded = [arg for arg in (argv if argv is not None else sys.argv[1:])]
    for part in PARTS:
        with tempfile.NamedTemporaryFile(suffix=".json") as output:
            command = [sys.executable, __file__, *forwarded, "--part", part, "--json", output.name]
            subprocess.run(command, check=True)
            figures[part] = json.loads(Path(output.name).read_text())
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
