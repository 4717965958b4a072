"""Snakemake's linter and the SLURM profile, checked with dry runs."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

COPIED = ["Snakefile", "params.yaml", "workflow", "config", "environment.yml"]


@pytest.fixture(scope="module")
def workdir(project_root, tmp_path_factory):
    target = tmp_path_factory.mktemp("profiles")
    for name in COPIED:
        source = project_root / name
        if source.is_dir():
            shutil.copytree(source, target / name)
        else:
            shutil.copy2(source, target / name)
    (target / "gpu.yaml").write_text("train: {device: auto}\nfeatures: {device: auto}\n")
    return target


def _snakemake(workdir: Path, *arguments: str) -> subprocess.CompletedProcess:
    environment = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    return subprocess.run(
        [sys.executable, "-m", "snakemake", *arguments],
        cwd=workdir,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _job_resources(output: str, rule: str) -> list[dict[str, str]]:
    """Resources of every job of ``rule`` in a dry run's output."""
    jobs = []
    for block in output.split("\nrule ")[1:]:
        if not block.startswith(f"{rule}:"):
            continue
        line = re.search(r"^\s+resources: (.*)$", block, re.MULTILINE).group(1)
        jobs.append(dict(item.split("=", 1) for item in line.split(", ")))
    return jobs


def test_lint_is_clean(workdir):
    result = _snakemake(workdir, "--lint", "--configfile", "config/demo/params.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Lints for" not in result.stdout + result.stderr
    assert "your workflow is in a good condition" in result.stdout + result.stderr


def test_slurm_training_jobs_request_gpu_and_memory(workdir):
    result = _snakemake(
        workdir, "-n", "--profile", "workflow/profiles/slurm", "--configfile", "config/demo/params.yaml", "gpu.yaml"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = _job_resources(result.stdout, "train_model")
    assert len(jobs) == 6
    for resources in jobs:
        assert resources["gpu"] == "1"
        assert resources["mem_mb"] == "16000"
        assert resources["slurm_partition"] == "gpu"
        assert resources["runtime"] == "2880"


def test_slurm_feature_shards_are_separate_jobs(workdir):
    result = _snakemake(
        workdir, "-n", "--profile", "workflow/profiles/slurm", "--configfile", "config/demo/params.yaml", "gpu.yaml"
    )
    assert len(_job_resources(result.stdout, "extract_audio_features")) == 2
    image_jobs = _job_resources(result.stdout, "extract_image_features")
    assert len(image_jobs) == 2
    assert all(resources["gpu"] == "1" for resources in image_jobs)


def test_cpu_runs_request_no_gpu(workdir):
    result = _snakemake(workdir, "-n", "--cores", "2", "--configfile", "config/demo/params.yaml")
    assert result.returncode == 0, result.stderr[-3000:]
    for resources in _job_resources(result.stdout, "train_model"):
        assert resources["gpu"] == "0"


def test_missing_data_stops_run_before_jobs(workdir):
    (workdir / "vectors.yaml").write_text("pairs: {vectors: /nonexistent/vectors.bin}\n")
    result = _snakemake(workdir, "--cores", "1", "--configfile", "config/demo/params.yaml", "vectors.yaml")
    assert result.returncode != 0
    assert "input data not found: /nonexistent/vectors.bin" in result.stdout + result.stderr
    assert not (workdir / "results" / "demo" / "corpus").exists()


def test_dry_run_writes_nothing(workdir):
    result = _snakemake(workdir, "-n", "--cores", "1", "--configfile", "config/test/params.yaml")
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (workdir / "results" / "test-tiny").exists()
