"""Text of report.md: warnings, run parameters, tables, Fig. 3, figure list, skip counts and gaps."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vgsalign.config import ParamsError, lookup
from vgsalign.io import read_parquet_metadata
from vgsalign.layout import RunPaths
from vgsalign.report import figures, published, tables
from vgsalign.report.state import ReportState, _read_metadata, figure_convention, scores_kind


# -- skipped items and warnings -----------------------------------------------------------------------

# A nested mapping with more integer entries than this (such as pairs per category)
# is summarised as one line with its entry count and total.
MAX_LISTED_COUNTS = 12


def flatten_counts(data: Any, prefix: str = "", limit: int | None = MAX_LISTED_COUNTS) -> list[tuple[str, str]]:
    """List the non-zero integer entries of nested metadata as (dotted key, value text).

    Booleans are not counts and are left out. A mapping with more than ``limit``
    integers directly inside becomes one summary line, except a mapping named
    ``skipped`` or ``dropped``, whose reasons are always listed one by one.
    """
    if not isinstance(data, Mapping):
        return []
    direct = {
        key: value for key, value in data.items() if isinstance(value, int) and not isinstance(value, bool) and value
    }
    is_skip_group = prefix.rsplit(".", 1)[-1] in {"skipped", "dropped", "captions_dropped"}
    if limit is not None and not is_skip_group and len(direct) > limit:
        lines = [(prefix or "(top level)", f"{len(direct)} entries, total {sum(direct.values()):,}")]
    else:
        lines = [(f"{prefix}.{key}" if prefix else str(key), f"{value:,}") for key, value in direct.items()]
    for key, value in data.items():
        if isinstance(value, Mapping):
            lines += flatten_counts(value, f"{prefix}.{key}" if prefix else str(key), limit)
    return lines


# Top-level metadata entries that record settings (the frame window), not counts.
SETTINGS_ENTRIES = ("frames", "params")


def _counts_only(metadata: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in metadata.items() if key not in SETTINGS_ENTRIES}


def _feature_status_counts(index_paths: Sequence[Path]) -> list[tuple[str, str]]:
    """Count feature items by ``status`` over the shard indexes, plus the shards without a readable index.

    An index without a ``status`` column counts all its items as ``ok``.
    """
    statuses: Counter = Counter()
    shards_without_index = 0
    for index_path in index_paths:
        try:
            index = pd.read_parquet(index_path)
        except (OSError, ValueError):
            shards_without_index += 1
            continue
        statuses.update(index["status"].astype(str) if "status" in index else ["ok"] * len(index))
    lines = [(f"items with status {status}", f"{count:,}") for status, count in sorted(statuses.items())]
    if shards_without_index:
        lines.append(("shards with a missing or unreadable index", f"{shards_without_index:,}"))
    return lines


def _score_counts(summary: Mapping[str, Any]) -> dict[str, Any]:
    """Keep the pair counts and skip counts of a score summary, per convention and kind."""
    counts: dict[str, Any] = {}
    for convention, kinds in summary.items():
        if not isinstance(kinds, Mapping):
            continue
        for kind, block in kinds.items():
            if not isinstance(block, Mapping):
                continue
            counts[f"{convention}.{kind}"] = {
                "pairs": block.get("pairs"),
                "categories_without_pairs": len(block.get("categories_without_pairs") or []),
                "skipped": block.get("skipped") or {},
                "tensor_rows_without_pairs": block.get("tensor_rows_without_pairs"),
            }
    return counts


def collect_skip_counts(paths: RunPaths, state: ReportState) -> dict[str, list]:
    """Gather item counts and skip counts that the earlier stages stored, by source."""
    counts: dict[str, list[tuple[str, str]]] = {}
    for label, path in (("manifest", paths.manifest), ("images manifest", paths.images), ("nouns", paths.nouns)):
        metadata = _read_metadata(path, state)
        if metadata is not None:
            counts[label] = flatten_counts(_counts_only(metadata))
    # The manifest stage stores the same counts in both of its files; list them once.
    if counts.get("images manifest") == counts.get("manifest"):
        counts.pop("images manifest", None)
    if state.pairs_summary is not None:
        counts["pairs"] = flatten_counts(_counts_only(state.pairs_summary))
    counts["audio features"] = _feature_status_counts([paths.audio_index(shard) for shard in paths.audio_shard_names])
    counts["image features"] = _feature_status_counts([paths.image_index(shard) for shard in paths.image_shard_names])
    for variant, metrics in state.train_metrics.items():
        if metrics is not None and metrics.get("skipped"):
            counts[f"training of {variant}"] = flatten_counts(metrics["skipped"], "skipped", limit=None)
    for variant, retrieval in state.retrieval.items():
        if retrieval is not None and retrieval.get("skipped"):
            counts[f"export of {variant}"] = flatten_counts(retrieval["skipped"], "skipped", limit=None)
    for variant, summary in [*state.summaries.items(), ("baseline", state.baseline)]:
        if summary is not None:
            counts[f"scores of {variant}"] = flatten_counts(_score_counts(summary))
    overlay_skips = [(reason, f"{count:,}") for reason, count in sorted(state.overlay_skips.items()) if count]
    if overlay_skips:
        counts["alignment overlays"] = overlay_skips
    return counts


def _find_key(data: Any, key: str) -> Any:
    """Return the first value stored under ``key`` anywhere in nested mappings, or None."""
    if not isinstance(data, Mapping):
        return None
    if key in data:
        return data[key]
    for value in data.values():
        found = _find_key(value, key)
        if found is not None:
            return found
    return None


def image_weights(params: Mapping[str, Any], paths: RunPaths) -> str:
    """Return the VGG16 weights the image features were made with.

    The value comes from the first readable shard index's metadata, or from the
    parameters when no index records it.
    """
    for shard in paths.image_shard_names:
        try:
            weights = _find_key(read_parquet_metadata(paths.image_index(shard)), "weights")
        except (OSError, ValueError):
            continue
        if weights is not None:
            return str(weights)
    return str(params["features"]["image"]["weights"])


def vectors_source(params: Mapping[str, Any], pairs_summary: Mapping[str, Any] | None) -> str:
    """Return where the word vectors came from: ``self-trained`` or the configured file or name."""
    source = (pairs_summary or {}).get("vectors_source")
    if source:
        return str(source)
    return "self-trained" if params["pairs"]["vectors"] is None else str(params["pairs"]["vectors"])


def tagger_name(params: Mapping[str, Any], pairs_summary: Mapping[str, Any] | None) -> str:
    """Return the part-of-speech tagger the pairs stage recorded, or the configured choice."""
    return str((pairs_summary or {}).get("tagger") or params["nouns"]["tagger"])


def report_warnings(weights: str, vectors: str, state: ReportState) -> list[str]:
    """Return the warnings printed at the top of the report, most serious first."""
    warnings = []
    if weights != "imagenet":
        warnings.append(
            f"The image encoder was NOT pretrained (features.image.weights: {weights}). VGG16 had random "
            "weights, so retrieval and alignment scores cannot be compared with the paper's."
        )
    if vectors == "self-trained":
        warnings.append(
            "The word vectors were trained on this corpus's captions (pairs.vectors: null), not the "
            "pretrained GoogleNews word2vec, so the word-object pairs differ from the paper's."
        )
    summary = state.pairs_summary or {}
    if summary.get("pairs") == 0:
        untimed = (summary.get("captions_dropped") or {}).get("no_word_times", 0)
        reason = (
            f"{untimed} test captions have no word time stamps (SpokenCOCO needs data.speech.alignments)"
            if untimed
            else "no test caption had a noun paired with an object of its image"
        )
        warnings.append(
            f"There are no word-object pairs: {reason}. Table 2 and Fig. 3 are empty, and only "
            "retrieval (Table 1) was evaluated."
        )
    if state.missing or state.unreadable:
        warnings.append(
            f"{len(state.missing) + len(state.unreadable)} input files are missing or unreadable; the "
            "tables show n/a for their values (list at the end of this report)."
        )
    return warnings


# -- report.md ---------------------------------------------------------------------------------------

PARAMETER_KEYS = [
    "run", "seed", "data.source", "data.coco_root", "data.train_split", "data.test_split",
    "data.max_images", "data.speech.format", "data.speech.source", "frames.convention",
    "frames.window", "nouns.tagger", "pairs.vectors", "pairs.threshold", "features.image.weights",
    "features.image.resize", "models.variants", "models.width", "models.cnn0_pooling",
    "train.epochs", "train.batch_size", "train.lr", "train.select_by", "train.recall_pools",
    "train.recall_pool_size", "scoring.conventions", "scoring.bootstrap_resamples",
    "scoring.confidence", "report.fig3_variant",
]  # fmt: skip


def _link(target: Path, report: Path) -> str:
    return Path(os.path.relpath(target, report.parent)).as_posix()


def _chance_lines(table1: pd.DataFrame) -> list[str]:
    """One line per distinct chance level; variants tested on the same pairs share a line."""
    lines: dict[str, list[str]] = {}
    for record in table1.to_dict("records"):
        if pd.isna(record["chance"]):
            continue
        line = (
            f"pooled recall@10 {tables.format_score(record['chance'], digits=4)} "
            f"(pools: {tables.format_integer(record['pools'])}, pool size: {tables.format_integer(record['pool_size'])})"
        )
        if pd.notna(record["full_chance_r10_s2i"]):
            line += (
                f"; full-set recall@10 over {tables.format_integer(record['test_pairs'])} test pairs "
                f"{tables.format_score(record['full_chance_r10_s2i'], digits=4)} speech→image, "
                f"{tables.format_score(record['full_chance_r10_i2s'], digits=4)} image→speech"
            )
        lines.setdefault(line, []).append(record["model"])
    if not lines:
        return ["- No test retrieval results."]
    return [f"- {', '.join(models)}: {line}." for line, models in lines.items()]


def _pool_size_note(table1: pd.DataFrame) -> list[str]:
    """Warn when the recall pools differ from the paper's, which makes the R@10 Δ columns incomparable."""
    sizes = sorted({int(size) for size in table1["pool_size"].dropna()} - {published.PAPER_POOL_SIZE})
    if not sizes:
        return []
    listed = ", ".join(f"{size:,}" for size in sizes)
    return [
        f"> **Note:** these recalls use pools of {listed} test pairs, and the paper's use pools of "
        f"{published.PAPER_POOL_SIZE:,} (chance {10 / published.PAPER_POOL_SIZE:.3f}). Chance and difficulty depend on the pool "
        "size, so the R@10 Δ columns do not compare like with like. They do when the test split has at least "
        f"{published.PAPER_POOL_SIZE:,} pairs and `train.recall_pool_size` is {published.PAPER_POOL_SIZE:,}.",
        "",
    ]


def _fits_markdown(fits: pd.DataFrame) -> str:
    pivot = fits.pivot_table(index=["metric", "x"], columns="source", values="slope", aggfunc="first", dropna=False)
    display = pd.DataFrame(
        {
            "Score": [metric for metric, _ in pivot.index],
            "against": [figures.AXIS_LABELS[x] for _, x in pivot.index],
            "slope (model)": [tables.format_score(value) for value in pivot.get("model", pd.Series(np.nan, pivot.index))],
            "slope (baseline)": [
                tables.format_score(value) for value in pivot.get("baseline", pd.Series(np.nan, pivot.index))
            ],
        }
    )
    return tables.to_markdown(display, text_columns=2)


def compose_report(
    params: Mapping[str, Any],
    paths: RunPaths,
    state: ReportState,
    table_markdown: Mapping[int, str],
    table1: pd.DataFrame,
    fig3_fits: pd.DataFrame | None,
    warnings: Sequence[str],
    counts: Mapping[str, Sequence[tuple[str, str]]],
) -> str:
    """Assemble report.md: warnings, parameters, both tables, Fig. 3, other figures, counts, gaps."""
    report = paths.report
    lines = [f"# Results of run `{params['run']}`", ""]
    for warning in warnings:
        lines += [f"> **WARNING:** {warning}", ""]

    lines += ["## Run parameters", "", "| parameter | value |", "| :--- | :--- |"]
    for key in PARAMETER_KEYS:
        try:
            value = json.dumps(lookup(params, key))
        except ParamsError:
            value = "not set"
        lines.append(f"| `{key}` | `{value}` |")
    lines += [
        "",
        f"Word vectors used: `{vectors_source(params, state.pairs_summary)}`. "
        f"Part-of-speech tagger: `{tagger_name(params, state.pairs_summary)}`. "
        f"Image features: VGG16 weights `{image_weights(params, paths)}`.",
        "",
    ]

    lines += ["## Table 1: model size and retrieval", "", table_markdown[1]]
    lines += [
        "Recall@10 is the mean over pools of test pairs, as in the authors' code. "
        "\"paper\" columns are the published values and Δ is ours minus the paper's. "
        "Params counts the trained model and \"Params width 1\" the same variant with the paper's layer sizes "
        "(`models.width: 1.0`), which is the count that Params Δ compares with the published one. "
        f"Files: [CSV]({_link(paths.table(1, 'csv'), report)}), [LaTeX]({_link(paths.table(1, 'tex'), report)}).",
        "",
        *_pool_size_note(table1),
        "Chance levels:",
        "",
        *_chance_lines(table1),
        "",
    ]

    lines += ["## Table 2: alignment and glancing scores", "", table_markdown[2]]
    lines += [
        "Each score is the mean of the per-category means, with its bootstrap confidence interval "
        f"({params['scoring']['confidence']:.0%}, {params['scoring']['bootstrap_resamples']} resamples within "
        "categories). The published values were computed with the authors' released scoring code, so they are "
        "comparable with the `released_code` rows; they are repeated beside the `paper` rows for reference. "
        f"Files: [CSV]({_link(paths.table(2, 'csv'), report)}), [LaTeX]({_link(paths.table(2, 'tex'), report)}).",
        "",
    ]

    variant = params["report"]["fig3_variant"]
    lines += [
        "## Fig. 3: scores against object size and word duration",
        "",
        f"![Fig. 3]({_link(paths.fig3, report)})",
        "",
        f"{published.model_label(variant, scores_kind(variant))}, {figure_convention(params)} convention. "
        "Points are categories; solid lines are linear fits, faint wide lines the random baseline's fits. "
        f"Data: [CSV]({_link(paths.fig3_data, report)}).",
        "",
    ]
    if fig3_fits is not None:
        lines += ["Slopes of the linear fits:", "", _fits_markdown(fig3_fits)]

    groups = [
        ("fig3", "Fig. 3 in every scoring convention"),
        ("overlays", "Alignment overlays"),
        ("training", "Training curves"),
        ("confusion", "Confusion heat maps"),
        ("similarities", "Word-object similarities"),
    ]
    lines += ["## Figures", ""]
    for group, heading in groups:
        members = [item for item in state.figures if item.group == group]
        if not members:
            continue
        lines += [f"### {heading}", ""]
        for item in members:
            png, pdf = _link(item.png, report), _link(item.png.with_suffix(".pdf"), report)
            lines.append(f"- [{item.title}]({png}) ([PDF]({pdf}))")
        lines.append("")

    lines += ["## Items counted and skipped by the stages", "", "Counts of zero are not listed.", ""]
    for source, entries in counts.items():
        if not entries:
            continue
        lines += [f"### {source}", "", "| count | value |", "| :--- | ---: |"]
        lines += [f"| {name} | {value} |" for name, value in entries]
        lines.append("")

    if state.notes or state.missing or state.unreadable:
        lines += ["## Missing inputs and gaps", ""]
        lines += [f"- {note}" for note in state.notes]
        lines += [f"- missing: `{path}`" for path in state.missing]
        lines += [f"- unreadable: `{path}` ({error})" for path, error in state.unreadable.items()]
        lines.append("")
    return "\n".join(lines)
