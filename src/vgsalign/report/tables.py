"""Tables 1 and 2 of the report: our values beside the published ones.

Each table exists twice. The numeric frame (``build_table1``, ``build_table2``)
has one column per value, with NaN where a value is missing, and is written as
CSV. The display frame (``display_table1``, ``display_table2``) contains formatted
strings and is written as Markdown and as a LaTeX ``tabular`` with booktabs
rules. Differences are always ours minus the published value.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from vgsalign.report import published

logger = logging.getLogger(__name__)

MISSING = "n/a"
METRIC_LABELS = {"as_object": "AS_obj", "as_word": "AS_word", "gs_object": "GS_obj", "gs_word": "GS_word"}
DIRECTIONS = {"s2i": "speech_to_image", "i2s": "image_to_speech"}
DIRECTION_LABELS = {"s2i": "S→I", "i2s": "I→S"}


def _value(mapping: Mapping[str, Any] | None, *keys: str) -> float:
    """Return the number at ``mapping[k1][k2]...`` or NaN when any level is absent or null."""
    node: Any = mapping
    for key in keys:
        if not isinstance(node, Mapping) or node.get(key) is None:
            return math.nan
        node = node[key]
    try:
        return float(node)
    except (TypeError, ValueError):
        logger.warning("expected a number at %s, found %r; reporting it as missing", ".".join(keys), node)
        return math.nan


def _first_value(mapping: Mapping[str, Any] | None, *key_paths: tuple[str, ...]) -> float:
    """Return the number at the first of ``key_paths`` present in ``mapping``, or NaN."""
    for keys in key_paths:
        value = _value(mapping, *keys)
        if not math.isnan(value):
            return value
    return math.nan


def _difference(ours: float, paper: float) -> float:
    return ours - paper if not (math.isnan(ours) or math.isnan(paper)) else math.nan


# -- Table 1: model size and retrieval ---------------------------------------------


TABLE1_COLUMNS = [
    "variant", "model", "status",
    "parameters", "parameters_paper", "parameters_diff", "parameters_architecture",
    "t_frames", "t_frames_paper",
    "r10_s2i", "r10_s2i_paper", "r10_s2i_diff",
    "r10_i2s", "r10_i2s_paper", "r10_i2s_diff",
    "pools", "pool_size", "chance",
    "full_r1_s2i", "full_r5_s2i", "full_r10_s2i",
    "full_r1_i2s", "full_r5_i2s", "full_r10_i2s",
    "full_chance_r10_s2i", "full_chance_r10_i2s",
    "test_pairs", "best_epoch", "epochs_run",
]  # fmt: skip


def build_table1(
    variants: Sequence[str],
    train_metrics: Mapping[str, Mapping[str, Any] | None],
    retrieval: Mapping[str, Mapping[str, Any] | None],
) -> pd.DataFrame:
    """Build Table 1 with one row per variant, in the order of ``variants``.

    ``train_metrics`` and ``retrieval`` map a variant to the contents of its
    ``metrics.json`` and test ``retrieval.json`` (None when the file is missing).
    Recall@10 uses the pooled protocol; full-set R@1/5/10 have no published values.
    Two layouts of ``retrieval.json`` are read: flat keys as the export stage
    writes them (``pooled.r10_s2i``, ``pooled.chance_r10``, ``full.r1_s2i``) and
    nested ones (``pooled.speech_to_image``, ``pooled.chance``,
    ``full.speech_to_image.r1``).
    """
    rows = []
    for variant in variants:
        training = train_metrics.get(variant)
        test = retrieval.get(variant)
        paper = published.TABLE1.get(variant, {})
        missing = [name for name, data in (("training metrics", training), ("test retrieval", test)) if data is None]

        row: dict[str, Any] = {
            "variant": variant,
            "model": published.model_label(variant),
            "status": "ok" if not missing else "missing " + " and ".join(missing),
            "parameters": _value(training, "parameters"),
            "parameters_paper": float(paper.get("parameters", math.nan)),
            "parameters_architecture": float(published.ARCHITECTURE_PARAMETERS.get(variant, math.nan)),
            "t_frames": _value(training, "t_frames"),
            "t_frames_paper": float(paper.get("t_frames", math.nan)),
        }
        # The published counts are for the paper's layer sizes, so the difference uses
        # the count at models.width 1.0, whatever width this run trained.
        row["parameters_diff"] = _difference(row["parameters_architecture"], row["parameters_paper"])
        for short, direction in DIRECTIONS.items():
            ours = _first_value(test, ("pooled", f"r10_{short}"), ("pooled", direction))
            row[f"r10_{short}"] = ours
            row[f"r10_{short}_paper"] = float(paper.get(f"r10_{short}", math.nan))
            row[f"r10_{short}_diff"] = _difference(ours, row[f"r10_{short}_paper"])
        row["pools"] = _value(test, "pooled", "pools")
        row["pool_size"] = _value(test, "pooled", "pool_size")
        row["chance"] = _first_value(test, ("pooled", "chance_r10"), ("pooled", "chance"))
        for short, direction in DIRECTIONS.items():
            for rank in ("r1", "r5", "r10"):
                row[f"full_{rank}_{short}"] = _first_value(
                    test, ("full", f"{rank}_{short}"), ("full", direction, rank)
                )
            row[f"full_chance_r10_{short}"] = _first_value(
                test, ("full", f"chance_r10_{short}"), ("full", direction, "chance")
            )
        row["test_pairs"] = _value(test, "pairs")
        row["best_epoch"] = _value(training, "best_epoch")
        row["epochs_run"] = _value(training, "epochs_run")
        rows.append(row)
    return pd.DataFrame(rows, columns=TABLE1_COLUMNS)


def display_table1(table: pd.DataFrame) -> pd.DataFrame:
    """Format Table 1 for Markdown and LaTeX: scores with 3 decimals, signed differences."""
    rows = []
    for record in table.to_dict("records"):
        row = {
            "Model": record["model"],
            "Params": format_integer(record["parameters"]),
            "Params width 1": format_integer(record["parameters_architecture"]),
            "Params paper": format_integer(record["parameters_paper"]),
            "Params Δ": format_integer(record["parameters_diff"], signed=True),
            "T": format_integer(record["t_frames"]),
            "T paper": format_integer(record["t_frames_paper"]),
        }
        for short, label in DIRECTION_LABELS.items():
            row[f"R@10 {label}"] = format_score(record[f"r10_{short}"])
            row[f"{label} paper"] = format_score(record[f"r10_{short}_paper"])
            row[f"{label} Δ"] = format_score(record[f"r10_{short}_diff"], signed=True)
        for short, label in DIRECTION_LABELS.items():
            ranks = [record[f"full_{rank}_{short}"] for rank in ("r1", "r5", "r10")]
            row[f"Full R@1/5/10 {label}"] = " / ".join(format_score(value, digits=2) for value in ranks)
        row["Chance"] = format_score(record["chance"])
        rows.append(row)
    return pd.DataFrame(rows)


# -- Table 2: alignment and glancing scores ----------------------------------------


def table2_rows(variants: Sequence[str]) -> list[tuple[str, str]]:
    """Return the (row, kind) pairs of Table 2 in the published order.

    The baseline comes first, then every variant on raw T, then every CNNATT
    variant on the softmax-weighted T.
    """
    rows = [("baseline", "baseline")]
    rows += [(variant, "raw") for variant in variants]
    rows += [(variant, "softmax") for variant in variants if published.is_attention_variant(variant)]
    return rows


TABLE2_COLUMNS = ["convention", "row", "kind", "model", "status", "pairs"] + [
    f"{metric}{suffix}"
    for metric in published.METRICS
    for suffix in ("", "_ci_low", "_ci_high", "_paper", "_diff")
]


def build_table2(
    variants: Sequence[str],
    conventions: Sequence[str],
    summaries: Mapping[str, Mapping[str, Any] | None],
    baseline: Mapping[str, Any] | None,
) -> pd.DataFrame:
    """Build Table 2, stacked by scoring convention.

    ``summaries`` maps a variant to its score summary JSON and ``baseline`` is the
    baseline's summary (None when missing). Each summary has the layout
    ``{convention: {kind: {"total", "ci_low", "ci_high", "pairs", ...}}}``.
    The published values are repeated for every convention, although they were
    computed with the authors' released scoring code (``released_code``).
    """
    rows = []
    for convention in conventions:
        for row_name, kind in table2_rows(variants):
            summary = baseline if row_name == "baseline" else summaries.get(row_name)
            block = None if summary is None else summary.get(convention, {}).get(kind)
            if summary is None:
                status = "missing score summary"
            elif block is None:
                status = f"no {kind} scores for convention {convention}"
            else:
                status = "ok"

            paper = published.TABLE2.get((row_name, kind), {})
            row: dict[str, Any] = {
                "convention": convention,
                "row": row_name,
                "kind": kind,
                "model": published.model_label(row_name, kind),
                "status": status,
                "pairs": _value(block, "pairs"),
            }
            for metric in published.METRICS:
                row[metric] = _value(block, "total", metric)
                row[f"{metric}_ci_low"] = _value(block, "ci_low", metric)
                row[f"{metric}_ci_high"] = _value(block, "ci_high", metric)
                row[f"{metric}_paper"] = float(paper.get(metric, math.nan))
                row[f"{metric}_diff"] = _difference(row[metric], row[f"{metric}_paper"])
            rows.append(row)
    return pd.DataFrame(rows, columns=TABLE2_COLUMNS)


def display_table2(table: pd.DataFrame) -> pd.DataFrame:
    """Format Table 2: each score with its confidence interval, the published value, the difference."""
    rows = []
    for record in table.to_dict("records"):
        row = {"Convention": record["convention"], "Model": record["model"]}
        for metric, label in METRIC_LABELS.items():
            row[label] = format_interval(record[metric], record[f"{metric}_ci_low"], record[f"{metric}_ci_high"])
            row[f"{label} paper"] = format_score(record[f"{metric}_paper"])
            row[f"{label} Δ"] = format_score(record[f"{metric}_diff"], signed=True)
        rows.append(row)
    return pd.DataFrame(rows)


# -- number formatting ----------------------------------------------------------------


def _is_missing(value: Any) -> bool:
    return value is None or bool(pd.isna(value))


def format_score(value: Any, digits: int = 3, signed: bool = False) -> str:
    if _is_missing(value):
        return MISSING
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def format_integer(value: Any, signed: bool = False) -> str:
    if _is_missing(value):
        return MISSING
    return f"{int(round(value)):+,}" if signed else f"{int(round(value)):,}"


def format_interval(value: Any, low: Any, high: Any) -> str:
    """Format ``0.512 [0.498, 0.527]``; the interval is left out when either bound is missing."""
    if _is_missing(value):
        return MISSING
    if _is_missing(low) or _is_missing(high):
        return format_score(value)
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"


# -- Markdown and LaTeX ------------------------------------------------------------------


def to_markdown(display: pd.DataFrame, text_columns: int = 1) -> str:
    """Render a display frame as a GitHub-flavoured Markdown pipe table.

    The first ``text_columns`` columns are left-aligned and the rest right-aligned.
    """
    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|")

    headers = [cell(name) for name in display.columns]
    alignments = [":---" if index < text_columns else "---:" for index in range(len(headers))]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(alignments) + " |"]
    for values in display.itertuples(index=False):
        lines.append("| " + " | ".join(cell(value) for value in values) + " |")
    return "\n".join(lines) + "\n"


LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "→": r"$\rightarrow$",
    "Δ": r"$\Delta$",
    "±": r"$\pm$",
}


def latex_escape(text: Any) -> str:
    """Escape LaTeX's special characters and replace the non-ASCII symbols the tables use."""
    return "".join(LATEX_SPECIAL.get(character, character) for character in str(text))


def to_latex(display: pd.DataFrame, text_columns: int = 1, group_by: str | None = None) -> str:
    """Render a display frame as a LaTeX ``tabular`` with booktabs rules.

    The output needs ``\\usepackage{booktabs}`` and no other package. With
    ``group_by``, a ``\\midrule`` separates rows where that column's value changes.
    """
    column_spec = "l" * text_columns + "r" * (len(display.columns) - text_columns)
    lines = [
        f"\\begin{{tabular}}{{{column_spec}}}",
        "\\toprule",
        " & ".join(latex_escape(name) for name in display.columns) + r" \\",
        "\\midrule",
    ]
    previous_group = None
    for position, record in enumerate(display.to_dict("records")):
        group = record[group_by] if group_by else None
        if group_by and position > 0 and group != previous_group:
            lines.append("\\midrule")
        previous_group = group
        lines.append(" & ".join(latex_escape(value) for value in record.values()) + r" \\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


# -- dvc metrics ----------------------------------------------------------------------------


def _finite_or_none(value: float) -> float | None:
    return None if _is_missing(value) else float(value)


def table_metrics(table1: pd.DataFrame, table2: pd.DataFrame) -> dict[str, Any]:
    """Collect the values that ``dvc metrics`` tracks: recall@10 per variant and Table 2 totals.

    The layout is ``{"recall": {variant: {...}}, "table2": {convention: {row: {metric: value}}}}``
    where a row is ``baseline``, ``<variant>_raw`` or ``<variant>_softmax``. Missing
    values are left out, because JSON has no NaN.
    """
    recall: dict[str, dict[str, float]] = {}
    for record in table1.to_dict("records"):
        values = {
            key: _finite_or_none(record[key])
            for key in ("r10_s2i", "r10_i2s", "full_r10_s2i", "full_r10_i2s")
        }
        values = {key: value for key, value in values.items() if value is not None}
        if values:
            recall[record["variant"]] = values

    totals: dict[str, dict[str, dict[str, float]]] = {}
    for record in table2.to_dict("records"):
        name = "baseline" if record["row"] == "baseline" else f"{record['row']}_{record['kind']}"
        values = {metric: _finite_or_none(record[metric]) for metric in published.METRICS}
        values = {metric: value for metric, value in values.items() if value is not None}
        if values:
            totals.setdefault(record["convention"], {})[name] = values
    return {"recall": recall, "table2": totals}
