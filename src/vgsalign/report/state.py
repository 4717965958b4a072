"""Shared state of the ``make_report`` stage, and readers that record gaps in it instead of raising.

Each reader returns None for a missing or unreadable input and adds the file to
the report's list of missing or unreadable inputs. ``figure_convention`` and
``scores_kind`` choose the scoring convention and tensor kind that the figures show.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from vgsalign.io import read_parquet_metadata
from vgsalign.report import published

logger = logging.getLogger(__name__)


@dataclass
class ReportFigure:
    name: str
    png: Path
    title: str
    group: str


@dataclass
class ReportState:
    """Inputs read so far, and the figures, notes and skip counts for the report."""

    train_metrics: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    retrieval: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    summaries: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    baseline: dict[str, Any] | None = None
    pairs_summary: dict[str, Any] | None = None
    missing: list[str] = field(default_factory=list)
    unreadable: dict[str, str] = field(default_factory=dict)
    figures: list[ReportFigure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    overlay_skips: Counter = field(default_factory=Counter)

    def note_missing(self, path: Path) -> None:
        if str(path) not in self.missing:
            logger.warning("input not found: %s; the report lists it as missing", path)
            self.missing.append(str(path))

    def note_unreadable(self, path: Path, error: Exception) -> None:
        logger.warning("failed to read %s (%s); the report lists it as unreadable", path, error)
        self.unreadable[str(path)] = f"{type(error).__name__}: {error}"


# -- reading inputs ----------------------------------------------------------------------------


def _read_json(path: Path, state: ReportState) -> dict[str, Any] | None:
    if not path.is_file():
        state.note_missing(path)
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        state.note_unreadable(path, error)
        return None
    if not isinstance(data, dict):
        state.note_unreadable(path, ValueError(f"expected a JSON object, found {type(data).__name__}"))
        return None
    return data


def _check_columns(frame: pd.DataFrame, required: Sequence[str], path: Path, state: ReportState) -> pd.DataFrame | None:
    absent = [column for column in required if column not in frame.columns]
    if absent:
        state.note_unreadable(path, KeyError(f"columns {absent} not found"))
        return None
    return frame


def _read_parquet(
    path: Path, state: ReportState, columns: Sequence[str] | None = None, required: Sequence[str] = ()
) -> pd.DataFrame | None:
    """Read a Parquet table, or record it as missing or unreadable (also when a required column is absent)."""
    if not path.is_file():
        state.note_missing(path)
        return None
    try:
        frame = pd.read_parquet(path, columns=list(columns) if columns else None)
    except (OSError, ValueError, KeyError) as error:
        state.note_unreadable(path, error)
        return None
    return _check_columns(frame, required, path, state)


def _read_csv(path: Path, state: ReportState, required: Sequence[str] = ()) -> pd.DataFrame | None:
    if not path.is_file():
        state.note_missing(path)
        return None
    try:
        frame = pd.read_csv(path)
    except (OSError, ValueError) as error:
        state.note_unreadable(path, error)
        return None
    return _check_columns(frame, required, path, state)


def _read_metadata(path: Path, state: ReportState) -> dict[str, Any] | None:
    """Read the metadata a stage stored in a Parquet file, or record the file as missing or unreadable."""
    if not path.is_file():
        state.note_missing(path)
        return None
    try:
        return read_parquet_metadata(path)
    except (OSError, ValueError) as error:
        state.note_unreadable(path, error)
        return None


def figure_convention(params: Mapping[str, Any]) -> str:
    """Return the scoring convention of the figures.

    This is ``released_code`` when the run computes it, because Khorrami and Räsänen
    (Interspeech 2021) made their figures with their released scoring code.
    """
    conventions = params["scoring"]["conventions"]
    return published.TABLE2_CONVENTION if published.TABLE2_CONVENTION in conventions else conventions[0]


def scores_kind(variant: str) -> str:
    """Return the tensor kind the figures show: softmax T for CNNATT, raw T for CNN0."""
    return "softmax" if published.is_attention_variant(variant) else "raw"
