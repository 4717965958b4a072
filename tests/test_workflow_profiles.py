"""Snakemake's linter and the SLURM profile, checked with dry runs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import copy_workflow, workflow_environment



@pytest.fixture(scope="module")
def workdir(project_root, tmp_path_factory):
    target = tmp_path_factory.mktemp("profiles")
    copy_workflow(project_root, target)
    (target / "gpu.yaml").write_text("train: {device: auto}\nfeatures: {device: auto}\n")
    return target


def _snakemake(workdir: Path, *arguments: str) -> subprocess.CompletedProcess:
    environment = workflow_environment()
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
        assert resources["runtime"] == "2880"


def test_slurm_feature_shards_are_separate_jobs(workdir):
    result = _snakemake(
        workdir, "-n", "--profile", "workflow/profiles/slurm", "--configfile", "config/demo/params.yaml", "gpu.yaml"
    )
    assert len(_job_resources(result.stdout, "extract_audio_features")) == 2
    image_jobs = _job_resources(result.stdout, "extract_image_features")
    assert len(image_jobs) == 2
    assert all(resources["gpu"] == "1" for resources in image_jobs)


class _Resources(dict):
    __getattr__ = dict.get


class _Job:
    """The part of a Snakemake job that the SLURM plugin's partition choice reads."""

    def __init__(self, rule: str, resources: dict[str, str]) -> None:
        self.name = rule
        self.threads = int(resources.get("_cores", 1))
        self.resources = _Resources({key: int(value) if value.isdigit() else value for key, value in resources.items()})


def _partitions_chosen(workdir: Path, *config_files: str) -> dict[str, set[str]]:
    """Dry-run the SLURM profile and choose each job's partition as the plugin does at submission."""
    from unittest import mock

    from snakemake_executor_plugin_slurm.partitions import get_best_partition, read_partition_file

    result = _snakemake(workdir, "-n", "--profile", "workflow/profiles/slurm", "--configfile", *config_files)
    assert result.returncode == 0, result.stderr[-3000:]
    partitions = read_partition_file(workdir / "workflow" / "profiles" / "slurm" / "partitions.yaml")
    chosen: dict[str, set[str]] = {}
    for rule in ("train_model", "export_tensors", "extract_image_features", "score_alignments"):
        for resources in _job_resources(result.stdout, rule):
            chosen.setdefault(rule, set()).add(get_best_partition(partitions, _Job(rule, resources), mock.Mock()))
    return chosen


def test_slurm_gpu_jobs_go_to_gpu_partition(workdir):
    chosen = _partitions_chosen(workdir, "config/demo/params.yaml", "gpu.yaml")
    assert chosen["train_model"] == {"gpu"}
    assert chosen["export_tensors"] == {"gpu"}
    assert chosen["extract_image_features"] == {"gpu"}
    assert chosen["score_alignments"] == {"cpu"}


def test_slurm_cpu_training_stays_on_cpu(workdir):
    # The demo trains with train.device: cpu, so its jobs request no GPU.
    chosen = _partitions_chosen(workdir, "config/demo/params.yaml")
    assert chosen["train_model"] == {"cpu"}
    assert chosen["export_tensors"] == {"cpu"}


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


def test_slurm_profile_uses_partition_file(project_root):
    import yaml

    profile = yaml.safe_load((project_root / "workflow" / "profiles" / "slurm" / "config.yaml").read_text())
    assert (project_root / profile["slurm-partition-config"]).is_file()
    # A fixed partition would override the choice by resources.
    assert "slurm_partition" not in profile.get("default-resources", {})
    for resources in profile.get("set-resources", {}).values():
        assert "slurm_partition" not in resources
