"""Shared fixtures: the project root and the real COCO slice beside the project."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
COCO_TINY = PROJECT_ROOT.parent / "shared" / "data" / "coco-tiny"

# Tests run on the CPU with two threads at most, so that results are
# reproducible and several test processes can share a small machine.
os.environ.setdefault("OMP_NUM_THREADS", "2")

# What a Snakemake or DVC run needs from the project, copied into a test's work folder.
WORKFLOW_FILES = ["Snakefile", "params.yaml", "environment.yml", "workflow", "config", ".dvc/config", ".dvcignore"]


def copy_workflow(project_root: Path, workdir: Path) -> None:
    """Copy WORKFLOW_FILES from ``project_root`` into ``workdir``, so a run there leaves the project untouched."""
    for name in WORKFLOW_FILES:
        source = project_root / name
        target = workdir / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            shutil.copy2(source, target)


def workflow_environment() -> dict[str, str]:
    """Return the environment with this interpreter's folder first on PATH, where the rules find ``python``."""
    return dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")


@pytest.fixture(scope="session")
def project_root() -> Path:
    return PROJECT_ROOT


@pytest.fixture(scope="session")
def coco_tiny() -> Path:
    """The real 90-image MSCOCO slice; tests that need it skip when it is absent."""
    if not (COCO_TINY / "annotations" / "instances_val2017.json").is_file():
        pytest.skip(f"real COCO slice not found at {COCO_TINY} (it lives outside the repository)")
    return COCO_TINY
