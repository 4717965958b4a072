"""Turn the errors a stage raises about its inputs into one-line messages for the command line.

The stages raise their own exception classes for bad input, with a message that
names the file or value and the fix. A missing or corrupt input file surfaces as
FileNotFoundError or as a pyarrow error that does not name the file, so the
stage's declared inputs are checked to find it and the rule that rebuilds it.
Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pyarrow
import pyarrow.parquet as pq

from vgsalign.layout import RunPaths
from vgsalign.workflow import producer_of


def _rebuild_hint(path: str, paths: RunPaths | None) -> str:
    producer = producer_of(path, paths) if paths is not None else None
    if producer is None:
        return "Replace it with a valid file"
    return f"Rebuild it with `snakemake -R {producer}` and the same options"


def corrupt_parquet_inputs(inputs: Sequence[str], parquet_inputs: Sequence[str] = ()) -> list[tuple[str, str]]:
    """Return (path, reason) for each existing Parquet input whose footer cannot be read.

    The inputs named ``.parquet`` are checked, and those of ``parquet_inputs``
    whatever their name.
    """
    corrupt = []
    for path in dict.fromkeys([*inputs, *parquet_inputs]):
        if not (path.endswith(".parquet") or path in parquet_inputs) or not Path(path).is_file():
            continue
        try:
            pq.read_metadata(path)
        except (OSError, pyarrow.ArrowException) as error:
            corrupt.append((path, str(error).split(". ")[0]))
    return corrupt


def input_error_message(
    error: BaseException, inputs: Sequence[str], paths: RunPaths | None, parquet_inputs: Sequence[str] = ()
) -> str | None:
    """Return a one-line message for an error about the inputs, or None when ``error`` is a bug.

    ``parquet_inputs`` are inputs that must be Parquet files even when their name does not end in ``.parquet``.
    """
    if isinstance(error, pyarrow.ArrowException):
        corrupt = corrupt_parquet_inputs(inputs, parquet_inputs)
        if not corrupt:
            return None
        path, reason = corrupt[0]
        return f"input file {path} is corrupt or not a Parquet file ({reason}). {_rebuild_hint(path, paths)}"
    if isinstance(error, FileNotFoundError):
        message = str(error)
        if "not found" in message:
            return message
        missing = str(error.filename or message)
        hint = _rebuild_hint(missing, paths) if producer_of(missing, paths) else "Check the paths in the parameters"
        return f"input file not found: {missing}. {hint}"
    if type(error).__module__.startswith("vgsalign"):
        return str(error)
    return None
