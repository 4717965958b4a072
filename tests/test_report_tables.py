"""Tables 1 and 2: values, differences from the published numbers, CSV/Markdown/LaTeX output."""

from __future__ import annotations

import io
import math

import pandas as pd
import pytest

from vgsalign.report import published, tables

TRAIN_METRICS = {
    "cnn0_sisa": {"variant": "cnn0_sisa", "parameters": 11_082_368, "t_frames": 64, "best_epoch": 7, "epochs_run": 9},
}
RETRIEVAL = {
    "cnn0_sisa": {
        "pooled": {"speech_to_image": 0.5, "image_to_speech": 0.45, "pools": 3, "pool_size": 200, "chance": 0.05},
        "full": {
            "speech_to_image": {"r1": 0.01, "r5": 0.04, "r10": 0.08},
            "image_to_speech": {"r1": 0.02, "r5": 0.06, "r10": 0.11},
        },
        "pairs": 600,
    },
}


def _block(total: float, pairs: int = 10) -> dict:
    """A summary block whose four metrics are total, total/10, total+0.01, total/5."""
    values = {"as_object": total, "as_word": total / 10, "gs_object": total + 0.01, "gs_word": total / 5}
    return {
        "total": values,
        "ci_low": {metric: value - 0.02 for metric, value in values.items()},
        "ci_high": {metric: value + 0.02 for metric, value in values.items()},
        "per_category": {},
        "categories_without_pairs": [],
        "pairs": pairs,
    }


SUMMARIES = {
    "cnnatt_v1": {
        "paper": {"raw": _block(0.30), "softmax": _block(0.50)},
        "released_code": {"raw": _block(0.31)},  # no softmax block: a gap the table must show
    },
    "cnn0_sisa": None,
}
BASELINE = {"paper": {"baseline": _block(0.16, pairs=40)}, "released_code": {"baseline": _block(0.15, pairs=40)}}


@pytest.fixture
def table1() -> pd.DataFrame:
    return tables.build_table1(["cnn0_sisa", "cnnatt_v1"], TRAIN_METRICS, {**RETRIEVAL, "cnnatt_v1": None})


@pytest.fixture
def table2() -> pd.DataFrame:
    return tables.build_table2(["cnn0_sisa", "cnnatt_v1"], ["paper", "released_code"], SUMMARIES, BASELINE)


def test_table1_values(table1):
    row = table1.set_index("variant").loc["cnn0_sisa"]
    assert row["status"] == "ok"
    assert row["parameters"] == 11_082_368
    assert row["parameters_paper"] == 11_072_128
    assert row["parameters_diff"] == 10_240
    assert row["parameters_architecture"] == 11_082_368
    assert row["r10_s2i"] == 0.5
    assert row["r10_s2i_diff"] == pytest.approx(0.5 - 0.489)
    assert row["r10_i2s_diff"] == pytest.approx(0.45 - 0.487)
    assert row["full_r5_i2s"] == 0.06
    assert row["chance"] == 0.05
    assert row["pool_size"] == 200
    assert row["best_epoch"] == 7


def test_table1_export_layout():
    """retrieval.json as the export stage writes it: flat keys per direction."""
    flat = {
        "pooled": {"r10_s2i": 0.52, "r10_i2s": 0.61, "pools": 100, "pool_size": 1000, "chance_r10": 0.01},
        "full": {"r1_s2i": 0.1, "r5_s2i": 0.2, "r10_s2i": 0.3, "r1_i2s": 0.15, "r5_i2s": 0.25, "r10_i2s": 0.35,
                 "chance_r10_s2i": 0.0002, "chance_r10_i2s": 0.0003},  # fmt: skip
        "pairs": 40504,
    }
    row = tables.build_table1(["cnnatt_v0"], {}, {"cnnatt_v0": flat}).iloc[0]
    assert row["r10_s2i"] == 0.52
    assert row["r10_i2s_diff"] == pytest.approx(0.61 - 0.559)
    assert row["chance"] == 0.01
    assert row["full_r5_i2s"] == 0.25
    assert row["full_r10_s2i"] == 0.3
    assert row["full_chance_r10_i2s"] == 0.0003
    assert row["test_pairs"] == 40504


def test_table1_missing_variant(table1):
    row = table1.set_index("variant").loc["cnnatt_v1"]
    assert row["status"] == "missing training metrics and test retrieval"
    assert math.isnan(row["r10_s2i"])
    assert math.isnan(row["r10_s2i_diff"])
    assert math.isnan(row["parameters"])
    # The published values stay in the table even when our run is missing.
    assert row["r10_s2i_paper"] == 0.547
    assert row["t_frames_paper"] == 128


def test_table1_variant_without_published_values():
    table = tables.build_table1(["cnn0_mima"], {"cnn0_mima": {"parameters": 5, "t_frames": 64}}, {})
    row = table.iloc[0]
    assert math.isnan(row["r10_s2i_paper"])
    assert math.isnan(row["parameters_diff"])
    assert row["model"] == "CNN0 MIMA"


def test_table2_row_order(table2):
    paper_rows = table2[table2["convention"] == "paper"]
    assert list(zip(paper_rows["row"], paper_rows["kind"])) == [
        ("baseline", "baseline"),
        ("cnn0_sisa", "raw"),
        ("cnnatt_v1", "raw"),
        ("cnnatt_v1", "softmax"),
    ]
    assert list(table2["convention"]) == ["paper"] * 4 + ["released_code"] * 4


def test_table2_values_and_diffs(table2):
    indexed = table2.set_index(["convention", "row", "kind"])
    softmax = indexed.loc[("paper", "cnnatt_v1", "softmax")]
    assert softmax["as_object"] == 0.50
    assert softmax["as_object_ci_low"] == pytest.approx(0.48)
    assert softmax["as_object_ci_high"] == pytest.approx(0.52)
    assert softmax["as_object_paper"] == 0.518
    assert softmax["as_object_diff"] == pytest.approx(0.50 - 0.518)
    assert softmax["gs_word"] == pytest.approx(0.10)
    assert softmax["gs_word_diff"] == pytest.approx(0.10 - 0.446)

    baseline = indexed.loc[("released_code", "baseline", "baseline")]
    assert baseline["as_word"] == pytest.approx(0.015)
    assert baseline["as_word_diff"] == pytest.approx(0.015 - 0.011)
    assert baseline["pairs"] == 40


def test_table2_gaps(table2):
    indexed = table2.set_index(["convention", "row", "kind"])
    missing_summary = indexed.loc[("paper", "cnn0_sisa", "raw")]
    assert missing_summary["status"] == "missing score summary"
    assert math.isnan(missing_summary["as_object"])
    assert missing_summary["as_object_paper"] == 0.200

    missing_kind = indexed.loc[("released_code", "cnnatt_v1", "softmax")]
    assert missing_kind["status"] == "no softmax scores for convention released_code"
    assert math.isnan(missing_kind["gs_object"])


def test_display_table2_format(table2):
    display = tables.display_table2(table2)
    first = display.iloc[0]
    assert first["Model"] == "random baseline"
    assert first["AS_obj"] == "0.160 [0.140, 0.180]"
    assert first["AS_obj paper"] == "0.158"
    assert first["AS_obj Δ"] == "+0.002"
    assert display.iloc[1]["AS_obj"] == tables.MISSING


def test_table1_parameter_difference_uses_width_one():
    narrow = {**TRAIN_METRICS, "cnn0_sisa": {**TRAIN_METRICS["cnn0_sisa"], "parameters": 437_328}}
    row = tables.build_table1(["cnn0_sisa"], narrow, RETRIEVAL).iloc[0]
    assert row["parameters"] == 437_328
    # 11,082,368 (width 1.0) - 11,072,128 (published), not the trained width's count.
    assert row["parameters_diff"] == 10_240


def test_display_table1_format(table1):
    display = tables.display_table1(table1)
    first = display.iloc[0]
    assert first["Params"] == "11,082,368"
    assert first["Params width 1"] == "11,082,368"
    assert first["Params Δ"] == "+10,240"
    assert first["S→I Δ"] == "+0.011"
    assert first["I→S Δ"] == "-0.037"
    assert first["Full R@1/5/10 S→I"] == "0.01 / 0.04 / 0.08"


def test_csv_round_trip(table2):
    parsed = pd.read_csv(io.StringIO(table2.to_csv(index=False)))
    assert list(parsed.columns) == tables.TABLE2_COLUMNS
    pd.testing.assert_frame_equal(parsed, table2, check_dtype=False)


def test_markdown_table(table1):
    text = tables.to_markdown(tables.display_table1(table1))
    lines = text.strip().splitlines()
    assert len(lines) == 2 + 2  # header, alignment row, two variants
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert header[:4] == ["Model", "Params", "Params width 1", "Params paper"]
    alignment = [cell.strip() for cell in lines[1].strip("|").split("|")]
    assert alignment[0] == ":---"
    assert set(alignment[1:]) == {"---:"}
    first = [cell.strip() for cell in lines[2].strip("|").split("|")]
    assert first[0] == "CNN0 SISA"
    assert first[header.index("R@10 S→I")] == "0.500"


def test_markdown_escapes_pipe():
    text = tables.to_markdown(pd.DataFrame({"a": ["x|y"]}))
    assert "x\\|y" in text


def test_latex_booktabs(table2):
    display = tables.display_table2(table2)
    text = tables.to_latex(display, text_columns=2, group_by="Convention")
    lines = text.strip().splitlines()
    assert lines[0] == r"\begin{tabular}{ll" + "r" * 12 + "}"
    assert lines[1] == r"\toprule"
    assert lines[-2] == r"\bottomrule"
    assert lines[-1] == r"\end{tabular}"
    # One rule under the header and one where the convention changes.
    assert lines.count(r"\midrule") == 2
    assert r"AS\_obj $\Delta$" in lines[2]
    body = [line for line in lines if line.endswith(r"\\")]
    assert len(body) == 1 + len(display)
    assert all(line.count(" & ") == len(display.columns) - 1 for line in body)
    assert r"released\_code" in text


def test_latex_escape():
    assert tables.latex_escape("50% & a_b #1") == r"50\% \& a\_b \#1"
    assert tables.latex_escape("S→I Δ") == r"S$\rightarrow$I $\Delta$"


def test_formatters():
    assert tables.format_integer(-1234.0, signed=True) == "-1,234"
    assert tables.format_integer(math.nan) == tables.MISSING
    assert tables.format_score(0.0125) == "0.013"
    assert tables.format_score(0.5, signed=True) == "+0.500"
    assert tables.format_interval(0.5, math.nan, 0.6) == "0.500"


def test_table_metrics(table1, table2):
    metrics = tables.table_metrics(table1, table2)
    assert metrics["recall"] == {
        "cnn0_sisa": {"r10_s2i": 0.5, "r10_i2s": 0.45, "full_r10_s2i": 0.08, "full_r10_i2s": 0.11}
    }
    assert metrics["table2"]["paper"]["cnnatt_v1_softmax"]["as_object"] == 0.5
    assert metrics["table2"]["released_code"]["baseline"]["gs_object"] == pytest.approx(0.16)
    # Rows without values are left out, because JSON has no NaN.
    assert "cnn0_sisa_raw" not in metrics["table2"]["paper"]
    assert "cnnatt_v1_softmax" not in metrics["table2"]["released_code"]


def test_published_labels():
    assert published.model_label("cnnatt_v2", "softmax") == "CNNATT v2 softmax"
    assert published.model_label("cnn0_misa") == "CNN0 MISA"
    assert published.model_label("baseline", "baseline") == "random baseline"
    assert set(published.TABLE1) <= set(published.ARCHITECTURE_PARAMETERS)
