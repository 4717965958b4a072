"""Argument checks and one-line errors of the ``vgsalign`` tool commands (describe, score-tensors, check-params)."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest

from vgsalign.cli import main

SCORE_ARGS = ["score-tensors", "t.parquet", "--pairs", "p.parquet", "--masks", "m.parquet", "--out", "out"]


def usage_error(capsys, argv: list[str]) -> str:
    """Run ``vgsalign argv``, expect argparse's usage error (exit code 2) and return its last stderr line."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_repeated_convention_rejected(capsys):
    line = usage_error(capsys, [*SCORE_ARGS, "--conventions", "paper", "paper"])
    assert line == "vgsalign score-tensors: error: argument --conventions: 'paper' given twice (list each value once)"


def test_negative_seed_rejected(capsys):
    line = usage_error(capsys, [*SCORE_ARGS, "--seed", "-5"])
    assert line == "vgsalign score-tensors: error: argument --seed: invalid seed '-5': expected an integer of 0 or more"


def test_bootstrap_text_rejected(capsys):
    line = usage_error(capsys, [*SCORE_ARGS, "--bootstrap", "many"])
    assert line == (
        "vgsalign score-tensors: error: argument --bootstrap: invalid resample count 'many': "
        "expected an integer of 0 or more"
    )


@pytest.mark.parametrize("width", ["nan", "inf", "-inf", "abc", "0", "-1", "5", "1e30"])
def test_describe_invalid_width(capsys, width):
    line = usage_error(capsys, ["describe", f"--width={width}"])
    assert line == (
        f"vgsalign describe: error: argument --width: invalid width '{width}': expected a positive number of at most 4"
    )


def test_describe_largest_width(capsys):
    assert main(["describe", "--width", "4"]) == 0
    assert "width 4.0;" in capsys.readouterr().out


def test_score_tensors_out_help(capsys):
    with pytest.raises(SystemExit):
        main(["score-tensors", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    expected = "gets pairs.parquet (per-pair scores), summary.json (totals with bootstrap intervals) and confusion.parquet"
    assert expected in help_text


def test_empty_tensor_file_one_line(tmp_path):
    """A 0-byte tensor file whose name does not end in .parquet gets the corrupt-file message."""
    pair_columns = [
        "pair_id", "caption_id", "image_id", "word", "frame_start", "frame_end", "category_id", "category_name"
    ]  # fmt: skip
    mask_columns = ["image_id", "category_id", "category_name", "area_fraction", "mask_paper", "mask_released"]
    pd.DataFrame({column: [] for column in pair_columns}).to_parquet(tmp_path / "pairs.parquet")
    pd.DataFrame({column: [] for column in mask_columns}).to_parquet(tmp_path / "masks.parquet")
    (tmp_path / "tensors.bin").write_bytes(b"")
    result = subprocess.run(
        [sys.executable, "-m", "vgsalign", "score-tensors", "tensors.bin", "--pairs", "pairs.parquet",
         "--masks", "masks.parquet", "--out", "out"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "vgsalign: error: input file tensors.bin is corrupt or not a Parquet file (Parquet file size is 0 bytes). "
        "Replace it with a valid file (set VGSALIGN_TRACEBACK=1 for the traceback)"
    )


def test_check_params_run_configuration_alone(capsys, project_root, monkeypatch):
    monkeypatch.chdir(project_root)
    assert main(["check-params", "config/test/params.yaml"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0] == "vgsalign: error: invalid config/test/params.yaml:"
    assert lines[-1] == (
        "hint: config/test/params.yaml is not a complete parameter file (it lacks seed, frames, nouns, ...). "
        "A run configuration only overrides the root params.yaml, so give it after that file: "
        "vgsalign check-params params.yaml config/test/params.yaml"
    )


def test_check_params_complete_file_no_hint(capsys, project_root, monkeypatch, tmp_path):
    monkeypatch.chdir(project_root)
    assert main(["check-params", "params.yaml", "config/test/params.yaml"]) == 0
    assert "run: test-tiny" in capsys.readouterr().out

    overlay = tmp_path / "bad.yaml"
    overlay.write_text("seed: x\n")
    assert main(["check-params", "params.yaml", str(overlay)]) == 2
    assert "hint:" not in capsys.readouterr().err
