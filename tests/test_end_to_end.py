"""The whole workflow on the tiny demo configuration, run by Snakemake with networking blocked.

The run's scores are checked against a recomputation in this file that
upsamples each exported T to 224 x 224 x 512 and applies the paper's
equations literally, independent of the scoring engine.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from pycocotools import mask as mask_utils

from conftest import copy_workflow, workflow_environment

RUN_FOLDER = "config/test"
RUN = "test-tiny"
VARIANTS = ["cnn0_sisa", "cnn0_misa", "cnn0_sima", "cnnatt_v0", "cnnatt_v1", "cnnatt_v2"]


def _network_blocker() -> list[str]:
    """Return a command prefix that runs a program without network access, or [] if none works."""
    unshare = shutil.which("unshare")
    if unshare and subprocess.run([unshare, "-rn", "true"], capture_output=True).returncode == 0:
        return [unshare, "-rn"]
    return []


def _run_workflow(project_root: Path, workdir: Path, prefix: list[str] | None = None, extra_config: str | None = None):
    copy_workflow(project_root, workdir)
    result = _snakemake(
        workdir, "--profile", "workflow/profiles/default", "--cores", "2", prefix=prefix, extra_config=extra_config
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-8000:]
    return workdir


def _snakemake(workdir: Path, *arguments: str, prefix: list[str] | None = None, extra_config: str | None = None):
    configfiles = [f"{RUN_FOLDER}/params.yaml"] + ([extra_config] if extra_config else [])
    command = [*(prefix or []), sys.executable, "-m", "snakemake", "--configfile", *configfiles]
    return subprocess.run(
        command + list(arguments),
        cwd=workdir,
        env=workflow_environment(),
        capture_output=True,
        text=True,
        timeout=1500,
    )


@pytest.fixture(scope="module")
def blocker():
    return _network_blocker()


@pytest.fixture(scope="module")
def tiny_run(project_root, tmp_path_factory, blocker):
    return _run_workflow(project_root, tmp_path_factory.mktemp("workflow"), prefix=blocker)


def _root(workdir: Path) -> Path:
    return workdir / "results" / RUN


def test_tables_and_figure_written(tiny_run):
    root = _root(tiny_run)
    for name in ["table1.md", "table1.csv", "table1.tex", "table2.md", "table2.csv", "table2.tex", "report.md"]:
        assert (root / name).stat().st_size > 0, name
    assert (root / "fig3.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_table1_lists_every_variant(tiny_run):
    table1 = (_root(tiny_run) / "table1.csv").read_text()
    for variant in VARIANTS:
        assert variant in table1, variant


def test_run_had_no_network(blocker):
    if not blocker:
        pytest.skip("unshare -rn is not available here, so the run could not be isolated from the network")
    assert blocker[-1] == "-rn"


# -- independent recomputation of the scores -------------------------------------


def _upsample(tensor: np.ndarray) -> np.ndarray:
    """Repeat each cell of an (H, W, F) tensor to 224 x 224 x 512 (nearest neighbour)."""
    height, width, frames = tensor.shape
    big = np.repeat(tensor, 224 // height, axis=0)
    big = np.repeat(big, 224 // width, axis=1)
    return np.repeat(big, 512 // frames, axis=2)


def _object_scores(tensor: np.ndarray, mask: np.ndarray, start: int, end: int) -> tuple[float, float]:
    """AS_object and GS_object of the paper's equations on the full-size tensor."""
    big = np.clip(_upsample(tensor.astype(np.float64)), 0, None)
    word = big[:, :, start:end]  # [224, 224, |Tc|]
    frame_totals = word.sum(axis=(0, 1))
    on_object = word[mask].sum(axis=0)
    shares = np.where(frame_totals > 0, on_object / np.where(frame_totals > 0, frame_totals, 1), mask.mean())
    as_object = float(shares.mean())
    attention = word.sum(axis=2)
    total = attention.sum()
    gs_object = float(attention[mask].sum() / total) if total > 0 else float(mask.mean())
    return as_object, gs_object


def _word_glance(tensor: np.ndarray, mask: np.ndarray, start: int, end: int) -> float:
    """GS_word of the paper's equations on the full-size tensor."""
    big = np.clip(_upsample(tensor.astype(np.float64)), 0, None)
    over_time = big[mask].sum(axis=0)  # [512]
    total = over_time.sum()
    return float(over_time[start:end].sum() / total) if total > 0 else (end - start) / 512


def _recompute_totals(root: Path, variant: str, object_kind: str, word_kind: str) -> dict[str, float]:
    pairs = pd.read_parquet(root / "pairs" / "pairs.parquet")
    masks = pd.read_parquet(root / "pairs" / "masks.parquet").set_index(["image_id", "category_id"])
    table = pq.read_table(root / "tensors" / f"{variant}.parquet").to_pandas()
    rows = []
    for pair in pairs.itertuples():
        selected = table[(table.image_id == pair.image_id) & (table.caption_id == pair.caption_id)]
        shapes = selected.iloc[0][["grid_h", "grid_w", "frames"]].astype(int).tolist()
        tensors = {row.kind: np.asarray(row.tensor, dtype=np.float64).reshape(shapes) for row in selected.itertuples()}
        rle = masks.loc[(pair.image_id, pair.category_id), "mask_paper"]
        mask = mask_utils.decode({"size": [224, 224], "counts": rle.encode()}).astype(bool)
        as_object, gs_object = _object_scores(tensors[object_kind], mask, pair.frame_start, pair.frame_end)
        gs_word = _word_glance(tensors[word_kind], mask, pair.frame_start, pair.frame_end)
        rows.append((pair.category_name, as_object, gs_object, gs_word))
    frame = pd.DataFrame(rows, columns=["category", "as_object", "gs_object", "gs_word"])
    return frame.groupby("category").mean().mean().to_dict()


@pytest.mark.parametrize(
    "variant, kind, object_kind, word_kind",
    [
        ("cnn0_sisa", "raw", "raw", "raw"),
        ("cnnatt_v1", "softmax", "softmax_space", "softmax_time"),
    ],
)
def test_scores_match_literal_equations(tiny_run, variant, kind, object_kind, word_kind):
    root = _root(tiny_run)
    expected = _recompute_totals(root, variant, object_kind, word_kind)
    summary = json.loads((root / "scores" / variant / "summary.json").read_text())
    totals = summary["paper"][kind]["total"]
    for metric, value in expected.items():
        assert totals[metric] == pytest.approx(value, abs=1e-4), metric


def test_table2_reports_the_summary(tiny_run):
    root = _root(tiny_run)
    summary = json.loads((root / "scores" / "cnnatt_v0" / "summary.json").read_text())
    value = summary["paper"]["softmax"]["total"]["as_object"]
    assert f"{value:.3f}" in (root / "table2.csv").read_text()


# -- the HTML report ------------------------------------------------------------------


class _ScriptCollector(HTMLParser):
    """Collects the text of every <script> element by its id."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: dict[str, str] = {}
        self._current: str | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "script":
            self._current = dict(attrs).get("id") or ""
            self.scripts.setdefault(self._current, "")

    def handle_endtag(self, tag):
        if tag == "script":
            self._current = None

    def handle_data(self, data):
        if self._current is not None:
            self.scripts[self._current] += data


def test_html_report_has_every_table_and_figure(tiny_run):
    root = _root(tiny_run)
    html_path = root / "report.html"
    result = _snakemake(tiny_run, "--report", str(html_path.relative_to(tiny_run)))
    assert result.returncode == 0, result.stderr[-4000:]

    parser = _ScriptCollector()
    parser.feed(html_path.read_text())
    text = parser.scripts["results"].strip()
    results = json.loads(text[text.index("{") : text.rindex("}") + 1])
    names = {Path(key).relative_to(f"results/{RUN}").as_posix() for key in results}
    expected = {"table1.csv", "table2.csv", "fig3.png", "figures/similarities.png", "report.md"}
    expected |= {f"figures/training/{variant}.png" for variant in VARIANTS}
    expected |= {"figures/fig3/paper.png", "figures/fig3/released_code.png"}
    assert expected <= names
    overlays = [name for name in names if name.startswith("figures/overlays/")]
    assert len(overlays) == len(VARIANTS)
    for key, entry in results.items():
        assert entry["caption"].strip(), f"{key} has no caption"
    # Self-contained: files are embedded as data URIs and no script or style is fetched.
    html = html_path.read_text()
    assert "data:image/png;" in html
    assert not re.findall(r'(?:src|href)="https?://', html)


def test_score_tensors_command_matches_pipeline(tiny_run, tmp_path):
    """`vgsalign score-tensors`, the command for other models' tensors, on an exported file."""
    root = _root(tiny_run)
    out = tmp_path / "external"
    result = subprocess.run(
        [sys.executable, "-m", "vgsalign", "score-tensors", str(root / "tensors" / "cnnatt_v0.parquet"),
         "--pairs", str(root / "pairs" / "pairs.parquet"), "--masks", str(root / "pairs" / "masks.parquet"),
         "--out", str(out), "--bootstrap", "20"],
        env=workflow_environment(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    external = json.loads((out / "summary.json").read_text())
    pipeline = json.loads((root / "scores" / "cnnatt_v0" / "summary.json").read_text())
    for convention in ("paper", "released_code"):
        for kind in ("raw", "softmax"):
            assert external[convention][kind]["total"] == pipeline[convention][kind]["total"]


# -- reruns ------------------------------------------------------------------------


def _dry_run_rules(workdir: Path, overlay: dict) -> set[str]:
    """Rules that `snakemake -n` would run after merging ``overlay`` into the run's parameters."""
    import yaml

    edited = workdir / "edited.yaml"
    edited.write_text(yaml.safe_dump(overlay))
    result = _snakemake(workdir, "-n", "--quiet", "rules", extra_config=str(edited))
    assert result.returncode == 0, result.stderr[-4000:]
    rules = set()
    for line in result.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and parts[0] not in {"job", "total"}:
            rules.add(parts[0])
    return rules


def test_nothing_to_do_after_run(tiny_run):
    assert _dry_run_rules(tiny_run, {}) == set()


def test_scoring_edit_reruns_scoring_only(tiny_run):
    rules = _dry_run_rules(tiny_run, {"scoring": {"bootstrap_resamples": 21}})
    assert rules == {"score_alignments", "score_baseline", "make_report", "all"}


def test_training_edit_keeps_features(tiny_run):
    rules = _dry_run_rules(tiny_run, {"train": {"lr": 0.002}})
    assert rules == {"train_model", "export_tensors", "score_alignments", "make_report", "all"}


def test_speed_edit_reruns_nothing(tiny_run):
    # Inference batch size, loader workers and the device change only how fast a
    # stage runs, so no feature shard is rebuilt and no model retrained.
    overlay = {
        "features": {"image": {"batch_size": 3, "num_workers": 1}},
        "train": {"num_workers": 1},
    }
    assert _dry_run_rules(tiny_run, overlay) == set()


def test_crossing_words_edit_keeps_audio_features(tiny_run):
    # Audio shards depend on frames.window and frames.convention only.
    rules = _dry_run_rules(tiny_run, {"frames": {"crossing_words": "drop"}})
    assert "extract_audio_features" not in rules
    assert {"extract_nouns", "pair_words_objects", "make_report"} <= rules


@pytest.mark.parametrize("mode", [["--cores", "1"], ["-n"]], ids=["run", "dry run"])
def test_mistyped_vectors_path_fails(tiny_run, mode):
    # The run's outputs exist, so without the check Snakemake would report
    # "Nothing to be done" and exit 0 with the old pairs.
    edited = tiny_run / "mistyped.yaml"
    edited.write_text("pairs: {vectors: /nonexistent/vectors.bin}\n")
    result = _snakemake(tiny_run, *mode, extra_config=str(edited))
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    assert "input data not found: /nonexistent/vectors.bin" in output
    assert "Nothing to be done" not in output


# -- determinism -----------------------------------------------------------------------

COMPARED = ["table1.csv", "table2.csv", "scores/cnnatt_v0/pairs.parquet", "tensors/cnnatt_v1.parquet"]


def test_same_seed_gives_identical_results(tiny_run, project_root, tmp_path_factory):
    again = _run_workflow(project_root, tmp_path_factory.mktemp("same_seed"))
    for name in COMPARED:
        assert (_root(again) / name).read_bytes() == (_root(tiny_run) / name).read_bytes(), name
    # Training curves match except for the wall-clock columns.
    timing = ["seconds", "peak_mem_mb", "pairs_per_s"]
    for variant in VARIANTS:
        first = pd.read_csv(_root(tiny_run) / "models" / variant / "history.csv").drop(columns=timing)
        second = pd.read_csv(_root(again) / "models" / variant / "history.csv").drop(columns=timing)
        pd.testing.assert_frame_equal(first, second, check_exact=True)


def test_other_seed_changes_results(tiny_run, project_root, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("other_seed")
    (workdir / "seed.yaml").write_text("seed: 1\n")
    other = _run_workflow(project_root, workdir, extra_config="seed.yaml")
    assert (_root(other) / "table2.csv").read_bytes() != (_root(tiny_run) / "table2.csv").read_bytes()



def _stage_processes(workdir: Path, stage_command: str) -> list[int]:
    """Process ids of running ``python -m vgsalign <stage_command>`` jobs whose folder is ``workdir``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            arguments = (entry / "cmdline").read_bytes().split(b"\0")
            folder = (entry / "cwd").resolve()
        except OSError:
            continue
        if b"vgsalign" in arguments and stage_command.encode() in arguments and folder == workdir.resolve():
            pids.append(int(entry.name))
    return pids


def _start_run(workdir: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "snakemake", "--configfile", f"{RUN_FOLDER}/params.yaml",
               "--profile", "workflow/profiles/default", "--cores", "2"]  # fmt: skip
    return subprocess.Popen(
        command, cwd=workdir, env=workflow_environment(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip


def _wait_for_training(workdir: Path, process: subprocess.Popen, variant: str | None = None) -> list[int]:
    """Wait until a training job runs (``variant``'s, after its first epoch, when given); return its ids."""
    training_log = workdir / "logs" / RUN / f"train_model-{variant}.log"
    deadline = time.monotonic() + 900
    while True:
        assert process.poll() is None, "the run ended before training started"
        assert time.monotonic() < deadline, "training did not start within 15 minutes"
        if variant is None or (training_log.exists() and "epoch 1/" in training_log.read_text()):
            pids = _stage_processes(workdir, "train")
            if pids:
                return pids
        time.sleep(0.2)


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs /proc to find the stage's process")
def test_killed_run_completes_on_rerun(tiny_run, project_root, tmp_path_factory):
    """kill -9 a training job, then the whole Snakemake process group; reruns finish with the same tables."""
    workdir = tmp_path_factory.mktemp("killed")
    copy_workflow(project_root, workdir)

    # A stage killed under a running Snakemake: Snakemake reports the failed job and stops.
    process = _start_run(workdir)
    for pid in _wait_for_training(workdir, process, "cnn0_sisa"):
        os.kill(pid, signal.SIGKILL)
    assert process.wait(timeout=600) != 0

    # Snakemake itself killed: its lock stays behind and `--unlock` releases it.
    process = _start_run(workdir)
    _wait_for_training(workdir, process)
    time.sleep(1.0)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    unlocked = _snakemake(workdir, "--unlock")
    assert unlocked.returncode == 0, unlocked.stderr[-3000:]

    result = _snakemake(workdir, "--profile", "workflow/profiles/default", "--cores", "2")
    assert result.returncode == 0, result.stderr[-6000:]
    for name in ["table1.csv", "table2.csv"]:
        assert (_root(workdir) / name).read_bytes() == (_root(tiny_run) / name).read_bytes(), name
    assert not list(_root(workdir).rglob(".*.tmp*")), "temporary files left behind"

# -- DVC -------------------------------------------------------------------------------


def _run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    environment = workflow_environment()
    environment.update(
        GIT_AUTHOR_NAME="test", GIT_AUTHOR_EMAIL="test@example.invalid",
        GIT_COMMITTER_NAME="test", GIT_COMMITTER_EMAIL="test@example.invalid",
    )  # fmt: skip
    result = subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def dvc_repo(tiny_run):
    """The Snakemake run's folder as a git + DVC repository whose lock records the run."""
    dvc = [sys.executable, "-m", "dvc"]
    _run(["git", "init", "-q"], tiny_run)
    (tiny_run / ".gitignore").write_text("/results/\n/logs/\n/.snakemake/\n*.yaml.bak\n")
    _run(["git", "add", "-A"], tiny_run)
    _run(["git", "commit", "-qm", "tiny run"], tiny_run)
    # DVC adopts the outputs Snakemake wrote, so the lock file matches them.
    _run([*dvc, "commit", "--force", "--quiet", f"{RUN_FOLDER}/dvc.yaml"], tiny_run)
    _run(["git", "add", "-A"], tiny_run)
    _run(["git", "commit", "-qm", "dvc lock"], tiny_run)
    return tiny_run


def test_dvc_sees_snakemake_outputs_as_current(dvc_repo):
    dvc = [sys.executable, "-m", "dvc"]
    status = _run([*dvc, "status", f"{RUN_FOLDER}/dvc.yaml"], dvc_repo)
    assert "up to date" in status.stdout


def test_dvc_exp_run_with_set_param(dvc_repo):
    dvc = [sys.executable, "-m", "dvc"]
    _run([*dvc, "exp", "run", "-S", "train.epochs=3"], dvc_repo / RUN_FOLDER)
    history = pd.read_csv(_root(dvc_repo) / "models" / "cnnatt_v0" / "history.csv")
    assert list(history["epoch"]) == [1, 2, 3]
    assert "epochs: 3" in (dvc_repo / RUN_FOLDER / "params.yaml").read_text()
    metrics = _run([*dvc, "metrics", "show", "--json"], dvc_repo / RUN_FOLDER)
    assert "as_object" in metrics.stdout


def test_dvc_plots_show(dvc_repo, tmp_path):
    dvc = [sys.executable, "-m", "dvc"]
    _run([*dvc, "plots", "show", "--out", str(tmp_path / "plots")], dvc_repo / RUN_FOLDER)
    page = (tmp_path / "plots" / "index.html").read_text()
    assert "history.csv" in page
    assert "fig3.csv" in page


def test_dvc_remote_push_and_pull_model(dvc_repo, tmp_path):
    dvc = [sys.executable, "-m", "dvc"]
    model = _root(dvc_repo) / "models" / "cnnatt_v0" / "best.pt"
    original = model.read_bytes()
    _run([*dvc, "remote", "add", "--local", "-d", "store", str(tmp_path / "remote")], dvc_repo)
    _run([*dvc, "push", f"{RUN_FOLDER}/dvc.yaml:train_model@cnnatt_v0"], dvc_repo)
    model.unlink()
    shutil.rmtree(dvc_repo / ".dvc" / "cache")
    _run([*dvc, "pull", f"{RUN_FOLDER}/dvc.yaml:train_model@cnnatt_v0"], dvc_repo)
    assert model.read_bytes() == original

