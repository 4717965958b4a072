"""The whole workflow on real MSCOCO images, masks and captions (the coco-tiny slice).

The slice lives outside the repository; without it this test skips.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
import yaml
from pycocotools.coco import COCO

from conftest import copy_workflow, workflow_environment

RUN_FOLDER = "config/coco-tiny"
VARIANTS = ["cnn0_sisa", "cnn0_misa", "cnn0_sima", "cnnatt_v0", "cnnatt_v1", "cnnatt_v2"]


@pytest.fixture(scope="module")
def coco_run(project_root, coco_tiny, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("coco_tiny")
    copy_workflow(project_root, workdir)
    # The run configuration names the slice relative to the project; point at it directly.
    (workdir / "location.yaml").write_text(yaml.safe_dump({"data": {"coco_root": str(coco_tiny)}}))
    environment = workflow_environment()
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--profile", "workflow/profiles/default", "--cores", "2",
         "--configfile", f"{RUN_FOLDER}/params.yaml", "location.yaml"],
        cwd=workdir, env=environment, capture_output=True, text=True, timeout=2400,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-8000:]
    return workdir / "results" / "coco-tiny"


def test_tables_for_every_variant(coco_run):
    table1 = pd.read_csv(coco_run / "table1.csv")
    assert sorted(table1["variant"]) == sorted(VARIANTS)
    assert (table1["status"] == "ok").all()
    table2 = (coco_run / "table2.csv").read_text()
    assert "random baseline" in table2
    assert (coco_run / "fig3.png").stat().st_size > 0


def test_pairs_name_real_categories(coco_run, coco_tiny):
    coco = COCO(str(coco_tiny / "annotations" / "instances_val2017.json"))
    names = {category["id"]: category["name"] for category in coco.loadCats(coco.getCatIds())}
    pairs = pd.read_parquet(coco_run / "pairs" / "pairs.parquet")
    assert len(pairs) > 0
    for pair in pairs.itertuples():
        assert names[pair.category_id] == pair.category_name
        # The paired category has a non-crowd instance in the pair's image.
        annotations = coco.loadAnns(coco.getAnnIds(imgIds=[pair.image_id], catIds=[pair.category_id], iscrowd=False))
        assert annotations, (pair.image_id, pair.category_name)


def test_every_test_image_scored(coco_run, coco_tiny):
    captions = json.loads((coco_tiny / "annotations" / "captions_val2017.json").read_text())
    test_images = {image["id"] for image in captions["images"]}
    manifest = pd.read_parquet(coco_run / "manifest" / "captions.parquet")
    test = manifest[manifest["split"] == "test"]
    assert set(test["image_id"]) == test_images
    assert test.groupby("image_id").size().max() == 1  # one caption per test image
    scores = pd.read_parquet(coco_run / "scores" / "cnnatt_v0" / "pairs.parquet")
    assert set(scores["image_id"]) <= test_images
    assert scores["as_object"].between(0, 1).all()


def test_report_states_offline_substitutes(coco_run):
    report = (coco_run / "report.md").read_text()
    assert "NOT pretrained" in report
    assert "trained on this corpus's captions" in report
