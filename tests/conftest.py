"""Shared fixtures: the project root and the real COCO slice beside the project."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
COCO_TINY = PROJECT_ROOT.parent / "shared" / "data" / "coco-tiny"

# Tests run on the CPU with two threads at most, so that results are
# reproducible and several test processes can share a small machine.
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def project_root() -> Path:
    return PROJECT_ROOT


@pytest.fixture(scope="session")
def coco_tiny() -> Path:
    """The real 90-image MSCOCO slice; tests that need it skip when it is absent."""
    if not (COCO_TINY / "annotations" / "instances_val2017.json").is_file():
        pytest.skip(f"real COCO slice not found at {COCO_TINY} (it lives outside the repository)")
    return COCO_TINY
