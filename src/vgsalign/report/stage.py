"""Stage ``make_report``: tables, figures, ``report.md`` and ``metrics.json`` of a run.

Every input except the parameters is optional, so the stage does not fail when a
variant was not trained or scored, or when a stage output is missing or
unreadable. Such a gap leaves ``n/a`` in the tables, a placeholder where a
declared figure would be, and a line in the report's list of missing inputs.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import pandas as pd
from tqdm import tqdm

from vgsalign.io import ensure_dir, write_json_atomic, write_text_atomic
from vgsalign.layout import RunPaths
from vgsalign.report import figures, published, tables
from vgsalign.report.markdown import (
    collect_skip_counts,
    compose_report,
    image_weights,
    report_warnings,
    vectors_source,
)
from vgsalign.report.overlays import draw_overlays
from vgsalign.report.state import (
    ReportFigure,
    ReportState,
    _check_columns,
    _read_csv,
    _read_json,
    _read_parquet,
    figure_convention,
    scores_kind,
)

logger = logging.getLogger(__name__)


# -- reading inputs ----------------------------------------------------------------------------


def load_summaries(params: Mapping[str, Any], paths: RunPaths, state: ReportState) -> None:
    """Read every variant's training metrics, test retrieval and score summary, the baseline's, the pairs'."""
    for variant in params["models"]["variants"]:
        state.train_metrics[variant] = _read_json(paths.train_metrics(variant), state)
        state.retrieval[variant] = _read_json(paths.retrieval(variant), state)
        state.summaries[variant] = _read_json(paths.score_summary(variant), state)
    state.baseline = _read_json(paths.baseline_summary, state)
    state.pairs_summary = _read_json(paths.pairs_summary, state)


# -- tables and metrics ----------------------------------------------------------------------------


COUNT_COLUMN_PREFIXES = ("parameters", "t_frames", "pools", "pool_size", "test_pairs", "best_epoch", "epochs_run", "pairs")


def _with_integer_counts(table: pd.DataFrame) -> pd.DataFrame:
    """Return ``table`` with its count columns as nullable integers.

    The CSV then reads 437328 rather than 437328.0; missing values stay empty.
    """
    converted = table.copy()
    for column in converted.columns:
        values = converted[column]
        is_count = column.startswith(COUNT_COLUMN_PREFIXES) and values.dtype.kind == "f"
        if is_count and (values.dropna() % 1 == 0).all():
            converted[column] = values.astype("Int64")
    return converted


def write_tables(paths: RunPaths, table1: pd.DataFrame, table2: pd.DataFrame) -> dict[int, str]:
    """Write both tables as CSV, Markdown and LaTeX; return the Markdown of each for report.md."""
    markdown = {}
    displays = {
        1: (table1, tables.display_table1(table1), 1, None),
        2: (table2, tables.display_table2(table2), 2, "Convention"),
    }
    for number, (numeric, display, text_columns, group_by) in displays.items():
        write_text_atomic(paths.table(number, "csv"), _with_integer_counts(numeric).to_csv(index=False))
        markdown[number] = tables.to_markdown(display, text_columns=text_columns)
        write_text_atomic(paths.table(number, "md"), markdown[number])
        write_text_atomic(paths.table(number, "tex"), tables.to_latex(display, text_columns, group_by=group_by))
        logger.info("wrote table %d (%d rows) to %s", number, len(numeric), paths.table(number, "md"))
    return markdown


# -- Fig. 3 ------------------------------------------------------------------------------------------


def _select_scores(scores: pd.DataFrame | None, convention: str, kind: str) -> pd.DataFrame | None:
    if scores is None:
        return None
    selected = scores[(scores["convention"] == convention) & (scores["kind"] == kind)]
    return selected if not selected.empty else None


def draw_fig3(params: Mapping[str, Any], paths: RunPaths, state: ReportState) -> pd.DataFrame | None:
    """Draw Fig. 3 for ``report.fig3_variant`` in every scoring convention; return the main fits.

    ``paths.fig3`` shows the figure convention (see ``figure_convention``) and
    ``figures/fig3/<convention>`` every convention. The category means behind the
    main figure go to ``fig3.csv`` for ``dvc plots``.
    """
    variant = params["report"]["fig3_variant"]
    kind = scores_kind(variant)
    main_convention = figure_convention(params)
    columns = ["convention", "kind", "category_name", *figures.CATEGORY_COLUMNS]
    scores = _read_parquet(paths.scores(variant), state, columns=columns)
    baseline_scores = _read_parquet(paths.baseline_scores, state, columns=columns)

    main_fits = None
    for convention in params["scoring"]["conventions"]:
        model = _select_scores(scores, convention, kind)
        baseline = _select_scores(baseline_scores, convention, "baseline")
        label = f"{published.model_label(variant, kind)}, {convention} convention"
        targets = [paths.figure(f"fig3/{convention}")]
        if convention == main_convention:
            targets.insert(0, paths.fig3)
        if model is None:
            message = f"No {kind} scores of {variant} for the {convention} convention."
            state.notes.append(f"Fig. 3 ({convention}): {message}")
            figure = figures.placeholder_figure(message)
            for target in targets:
                figures.save_figure(figure, target)
            if convention == main_convention:
                # Written with its header only, because dvc plots expects the file to exist.
                empty = pd.DataFrame(columns=["category_name", "pairs", *figures.CATEGORY_COLUMNS, "source"])
                write_text_atomic(paths.fig3_data, empty.to_csv(index=False))
            continue

        model_means = figures.category_means(model)
        baseline_means = figures.category_means(baseline) if baseline is not None else None
        if baseline is None:
            state.notes.append(f"Fig. 3 ({convention}): no baseline scores, so the baseline fits are not drawn.")
        figure = figures.plot_fig3(model_means, baseline_means, title=label)
        for target in targets:
            figures.save_figure(figure, target)
        state.figures.append(ReportFigure(f"fig3_{convention}", targets[-1], f"Fig. 3, {label}", "fig3"))

        if convention == main_convention:
            main_fits = figures.fig3_fits(model_means, baseline_means)
            data = [model_means.assign(source="model")]
            if baseline_means is not None:
                data.append(baseline_means.assign(source="baseline"))
            write_text_atomic(paths.fig3_data, pd.concat(data).to_csv(index=False))
    return main_fits


# -- training curves, confusions, similarities ------------------------------------------------------


HISTORY_COLUMNS = ["epoch", "train_loss", "val_loss", "val_r10_s2i", "val_r10_i2s"]


def draw_training_curves(params: Mapping[str, Any], paths: RunPaths, state: ReportState) -> None:
    for variant in params["models"]["variants"]:
        history = _read_csv(paths.history(variant), state, required=HISTORY_COLUMNS)
        if history is None or history.empty:
            state.notes.append(f"Training curves: no history for {variant}.")
            continue
        metrics = state.train_metrics.get(variant) or {}
        best_epoch = metrics.get("best_epoch")
        figure = figures.plot_training_curves(
            history, title=f"Training of {published.model_label(variant)}", best_epoch=best_epoch
        )
        png, _ = figures.save_figure(figure, paths.figure(f"training/{variant}"))
        state.figures.append(ReportFigure(f"training_{variant}", png, published.model_label(variant), "training"))


def _select_confusion(confusion: pd.DataFrame, convention: str, kind: str) -> pd.DataFrame:
    """Keep one convention and kind when the confusion table has such columns."""
    if "convention" in confusion and convention in set(confusion["convention"]):
        confusion = confusion[confusion["convention"] == convention]
    if "kind" in confusion and kind in set(confusion["kind"]):
        confusion = confusion[confusion["kind"] == kind]
    return confusion


def draw_confusions(params: Mapping[str, Any], paths: RunPaths, state: ReportState) -> None:
    convention = figure_convention(params)
    for variant in params["models"]["variants"]:
        confusion = _read_parquet(paths.confusion(variant), state, required=["target", "compared", "metric", "value"])
        if confusion is None or confusion.empty:
            state.notes.append(f"Confusion heat map: no confusion table for {variant}.")
            continue
        confusion = _select_confusion(confusion, convention, scores_kind(variant))
        for metric in sorted(set(confusion["metric"])):
            matrix = figures.confusion_matrix(confusion, metric)
            label = f"{published.model_label(variant, scores_kind(variant))}: mean {metric}"
            figure = figures.plot_confusion(matrix, title=label, value_label=f"mean {metric}")
            name = f"{variant}_{metric}"
            png, _ = figures.save_figure(figure, paths.figure(f"confusion/{name}"))
            state.figures.append(ReportFigure(name, png, label, "confusion"))


def draw_similarity_histogram(params: Mapping[str, Any], paths: RunPaths, state: ReportState) -> None:
    similarities = _read_parquet(paths.similarities, state)
    if similarities is not None and "is_best" in similarities:
        # The pairs stage names the flag is_best; the histogram reads best.
        similarities = similarities.rename(columns={"is_best": "best"})
    if similarities is not None:
        similarities = _check_columns(similarities, ["similarity", "best"], paths.similarities, state)
    if similarities is None or similarities.empty:
        message = "No noun-label similarities."
        state.notes.append(f"Similarity histogram: {message}")
        # The workflow declares the figure as an output, so a placeholder replaces it.
        figures.save_figure(figures.placeholder_figure(message), paths.figure("similarities"))
        return
    figure = figures.plot_similarity_histogram(similarities, threshold=float(params["pairs"]["threshold"]))
    png, _ = figures.save_figure(figure, paths.figure("similarities"))
    state.figures.append(ReportFigure("similarities", png, "Word-object similarities", "similarities"))


# -- entry point ---------------------------------------------------------------------------------------


def run(params: Mapping[str, Any], paths: RunPaths) -> None:
    """Write Tables 1-2, Fig. 3, the other figures, report.md and metrics.json of a run."""
    logger.info("making the report of run %s under %s", params["run"], paths.root)
    state = ReportState()
    load_summaries(params, paths, state)

    variants = params["models"]["variants"]
    table1 = tables.build_table1(variants, state.train_metrics, state.retrieval)
    table2 = tables.build_table2(variants, params["scoring"]["conventions"], state.summaries, state.baseline)
    table_markdown = write_tables(paths, table1, table2)
    write_json_atomic(paths.metrics, tables.table_metrics(table1, table2))

    logger.info("drawing Fig. 3")
    fig3_fits = draw_fig3(params, paths, state)
    steps = [
        ("training curves", draw_training_curves),
        ("confusion heat maps", draw_confusions),
        ("similarity histogram", draw_similarity_histogram),
        ("alignment overlays", draw_overlays),
    ]
    for label, step in tqdm(steps, desc="report figures", unit="step"):
        logger.info("drawing %s", label)
        step(params, paths, state)
    # The workflow declares these folders as outputs, so they exist even when a step drew nothing.
    for group in ("fig3", "overlays", "training", "confusion"):
        ensure_dir(paths.figure_group(group))

    weights, vectors = image_weights(params, paths), vectors_source(params, state.pairs_summary)
    counts = collect_skip_counts(paths, state)
    warnings = report_warnings(weights, vectors, state)
    for warning in warnings:
        logger.warning(warning)
    text = compose_report(params, paths, state, table_markdown, table1, fig3_fits, warnings, counts)
    write_text_atomic(paths.report, text)
    logger.info(
        "wrote %s with %d figures; %d inputs missing, %d unreadable",
        paths.report, len(state.figures), len(state.missing), len(state.unreadable),
    )  # fmt: skip
