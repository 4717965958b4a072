"""File helpers shared by every stage: atomic writes, Parquet with metadata, logging.

Every output is written to a temporary name in the same folder and renamed into
place, so a killed job never leaves a partial file under the final name.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

METADATA_KEY = b"vgsalign"


class OutputPathError(ValueError):
    """An output location that cannot be written (for example, a file where a folder must be)."""


def check_folder_path(path: str | os.PathLike) -> Path:
    """Raise OutputPathError if a file stands where folder ``path`` or one of its parents must be."""
    path = Path(path)
    for candidate in (path, *path.parents):
        if candidate.exists() and not candidate.is_dir():
            raise OutputPathError(
                f"output folder {path} cannot be created because {candidate} exists and is not a "
                f"directory. Move or delete {candidate}, or choose another output location."
            )
    return path


def ensure_dir(path: str | os.PathLike) -> Path:
    """Create folder ``path`` (and parents); raise OutputPathError if a file is in the way."""
    path = check_folder_path(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` if the block succeeds.

    The temporary name (``.<name>.<random>.tmp<suffix>``) keeps the final suffix so
    libraries that append or check extensions behave. On an exception the temporary
    file is removed; temporaries left by a killed earlier write are removed first.
    """
    path = Path(path)
    ensure_dir(path.parent)
    suffix = path.suffix if suffix is None else suffix
    # A job killed while writing leaves its temporary file; the next write of the
    # same output removes it. Only one job writes a given output at a time.
    for stray in path.parent.glob(f".{glob.escape(path.name)}.*.tmp{glob.escape(suffix)}"):
        stray.unlink(missing_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(handle)
    temporary_path = Path(temporary)
    try:
        yield temporary_path
        # mkstemp creates the file readable by its owner only; give it the usual mode.
        os.chmod(temporary_path, 0o666 & ~_current_umask())
        os.replace(temporary_path, path)
    finally:
        if temporary_path.exists():
            temporary_path.unlink()


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(text)


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def write_parquet_atomic(
    path: str | os.PathLike,
    table: pd.DataFrame | pa.Table,
    metadata: Mapping[str, Any] | None = None,
    row_group_size: int | None = None,
) -> None:
    """Write a data frame or Arrow table to Parquet with our metadata, atomically."""
    if isinstance(table, pd.DataFrame):
        table = pa.Table.from_pandas(table, preserve_index=False)
    if metadata is not None:
        existing = dict(table.schema.metadata or {})
        existing[METADATA_KEY] = json.dumps(metadata, sort_keys=True, default=_json_default).encode()
        table = table.replace_schema_metadata(existing)
    with atomic_path(path) as temporary:
        pq.write_table(table, temporary, row_group_size=row_group_size)


def read_parquet_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Return the metadata that write_parquet_atomic stored in ``path`` (empty if none)."""
    schema = pq.read_schema(path)
    raw = (schema.metadata or {}).get(METADATA_KEY)
    return json.loads(raw) if raw else {}


class _ProgressAwareHandler(logging.StreamHandler):
    """Write log records to stderr above any open tqdm bar instead of through it."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # noqa: BLE001 - logging must never raise; report as the standard handler does
            self.handleError(record)


def setup_logging(log_file: str | os.PathLike | None = None, level: int = logging.INFO) -> None:
    """Log to stderr and, when given, to ``log_file`` (Snakemake's ``log:`` path)."""
    handlers: list[logging.Handler] = [_ProgressAwareHandler()]
    if log_file is not None:
        ensure_dir(Path(log_file).parent)
        handlers.append(logging.FileHandler(log_file, mode="a"))
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        handlers=handlers,
        force=True,
    )
    # gensim logs every Word2Vec epoch and lifecycle event at INFO, and fontTools
    # every font-subsetting step of each PDF that matplotlib writes.
    for name in ("gensim", "fontTools"):
        logging.getLogger(name).setLevel(max(level, logging.WARNING))
