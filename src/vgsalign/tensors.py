"""Alignment tensor exchange format: write, read and validate Parquet files of T.

One file contains the test-set alignment tensors T of one model. Each row is one
(image, caption, kind) triple:

==============  =================================  ==========================================
column          Arrow type                         meaning
==============  =================================  ==========================================
``image_id``    int64                              COCO image id
``caption_id``  int64                              COCO caption id
``variant``     string                             model name (free text for external models)
``kind``        string                             ``raw``, ``softmax_space`` (normalised over
                                                   the image at each frame) or ``softmax_time``
                                                   (normalised over frames at each position)
``grid_h``      int32                              rows H of the spatial grid (14 for VGG16)
``grid_w``      int32                              columns W of the spatial grid
``frames``      int32                              time steps F of T (64 or 128 here)
``tensor``      fixed_size_list<float16|float32>   T in C order with shape (H, W, F)
==============  =================================  ==========================================

T covers the whole 224 x 224 image and the whole input window of ``window``
10 ms frames (512): the scorer upsamples it by nearest-neighbour repetition, so
cell (h, w, f) stands for 16 x 16 pixels and 8 frames when T is 14 x 14 x 64.
Every row of a file has the same H, W and F. A plain ``list`` column instead of
``fixed_size_list`` is accepted when every list has H * W * F values.

Other integer types are accepted for the id and shape columns, and float64
for the ids. The softmax scores read both softmax kinds, so a file with only
one of ``softmax_space`` and ``softmax_time`` is scored on its ``raw`` rows
alone, with a warning, and rejected when it has no ``raw`` rows.

File metadata (optional for external files) is a JSON object stored under the
schema metadata key ``vgsalign``: ``format_version`` (1), ``window`` (input
frames, default 512) and ``frames_convention`` (``paper`` or ``released_code``).
When the pairs file records its frames (``window`` and ``convention``), both
must match it, because the word frame intervals are counted in that window.

Values of T: scoring clips negative values to 0, as the alignment scores of
Khorrami & Räsänen (2021) do, so only the positive part of T counts. Export
similarities as they are, without shifting them below 0. A row with no
positive value scores as uniform attention, and the scorer logs one warning
that counts such rows.

Validation when reading: a NaN or infinite value raises TensorValueError that
names the image_id and caption_id; a row whose grid or length differs from the
file's shape, or an unknown kind, raises TensorFormatError naming the row.
An all-zero T is valid (the scores use a uniform distribution for it).

Writing a file with plain pyarrow, for a model outside this project::

    import json
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    H, W, F = 14, 14, 64
    T = np.random.default_rng(0).random((2, H, W, F), dtype=np.float32)  # [B, H, W, F]
    table = pa.table({
        "image_id": pa.array([139, 285], pa.int64()),
        "caption_id": pa.array([372, 1111], pa.int64()),
        "variant": ["my_model", "my_model"],
        "kind": ["raw", "raw"],
        "grid_h": pa.array([H, H], pa.int32()),
        "grid_w": pa.array([W, W], pa.int32()),
        "frames": pa.array([F, F], pa.int32()),
        "tensor": pa.FixedSizeListArray.from_arrays(pa.array(T.reshape(-1)), H * W * F),
    })
    metadata = {"format_version": 1, "window": 512, "frames_convention": "paper"}
    table = table.replace_schema_metadata({"vgsalign": json.dumps(metadata)})
    pq.write_table(table, "my_model.parquet", row_group_size=256)

Then ``vgsalign score-tensors my_model.parquet --pairs PAIRS --masks MASKS --out DIR``
scores it. Inside the project, :class:`TensorWriter` writes the same format.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vgsalign.io import METADATA_KEY, atomic_path

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
DEFAULT_WINDOW = 512
KINDS = ("raw", "softmax_space", "softmax_time")
DTYPES = ("float16", "float32")
ID_COLUMNS = ("image_id", "caption_id")
SHAPE_COLUMNS = ("grid_h", "grid_w", "frames")
COLUMNS = (*ID_COLUMNS, "variant", "kind", *SHAPE_COLUMNS, "tensor")


class TensorFormatError(ValueError):
    """A tensor file or row that does not follow the exchange format."""


class TensorValueError(ValueError):
    """A tensor that contains NaN or infinite values."""


def tensor_schema(grid: tuple[int, int], frames: int, dtype: str) -> pa.Schema:
    """Return the Arrow schema of a tensor file whose T has shape (H, W, F) = (*grid, frames)."""
    if dtype not in DTYPES:
        raise TensorFormatError(f"invalid tensor dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    height, width = grid
    element = pa.field("element", pa.from_numpy_dtype(np.dtype(dtype)), nullable=False)
    return pa.schema(
        [
            pa.field("image_id", pa.int64(), nullable=False),
            pa.field("caption_id", pa.int64(), nullable=False),
            pa.field("variant", pa.string(), nullable=False),
            pa.field("kind", pa.string(), nullable=False),
            pa.field("grid_h", pa.int32(), nullable=False),
            pa.field("grid_w", pa.int32(), nullable=False),
            pa.field("frames", pa.int32(), nullable=False),
            pa.field("tensor", pa.list_(element, height * width * frames), nullable=False),
        ]
    )


# IEEE 754 exponent bits: a value is NaN or infinite exactly when they are all set.
_EXPONENT_BITS = {
    np.dtype(np.float16): (np.uint16, 0x7C00),
    np.dtype(np.float32): (np.uint32, 0x7F800000),
    np.dtype(np.float64): (np.uint64, 0x7FF0000000000000),
}


def nonfinite_rows(tensors: np.ndarray) -> np.ndarray:
    """Return, for each of the B tensors in ``tensors`` [B, ...], whether it has a NaN or infinite value."""
    flat = np.ascontiguousarray(tensors).reshape(len(tensors), -1)  # [B, N]
    if flat.dtype in _EXPONENT_BITS:
        # Testing the exponent bits took a tenth of the time of np.isfinite on float16 (NumPy 2.4).
        unsigned, exponent = _EXPONENT_BITS[flat.dtype]
        return ((flat.view(unsigned) & unsigned(exponent)) == unsigned(exponent)).any(axis=1)
    return ~np.isfinite(flat).all(axis=1)


def find_nonfinite(
    image_ids: np.ndarray, caption_ids: np.ndarray, tensors: np.ndarray, kind: str | None = None
) -> None:
    """Raise TensorValueError naming the first pair whose tensor has a NaN or infinite value.

    ``tensors`` is [B, ...]; the error also gives how many of the B tensors are affected.
    """
    finite = ~nonfinite_rows(tensors)  # [B]
    if finite.all():
        return
    bad = np.flatnonzero(~finite)
    first = bad[0]
    where = f" (kind {kind})" if kind else ""
    raise TensorValueError(
        f"tensor of image_id {int(image_ids[first])}, caption_id {int(caption_ids[first])}{where} contains "
        f"NaN or infinite values ({len(bad)} of {len(finite)} tensors in this batch). Fix the model "
        f"output; with float16 export, values above 65504 overflow, so export as float32."
    )


class TensorWriter:
    """Context manager that writes alignment tensors in the exchange format, atomically.

    Rows are buffered and written in row groups of ``rows_per_group`` rows to a
    temporary file, which is renamed to ``path`` when the block ends without an
    exception (and removed otherwise). ``metadata`` adds keys to the file
    metadata; ``window`` and ``frames_convention`` may be given there or as
    arguments. Writing the same (image_id, caption_id, kind) twice raises
    TensorFormatError.

    Example::

        with TensorWriter(path, "cnnatt_v0", "float16", grid=(14, 14), frames=64) as writer:
            writer.write(image_ids, caption_ids, "raw", tensors)  # tensors [B, 14, 14, 64]
    """

    def __init__(
        self,
        path: str | os.PathLike,
        variant: str,
        dtype: str = "float16",
        grid: tuple[int, int] = (14, 14),
        frames: int = 64,
        metadata: Mapping[str, Any] | None = None,
        rows_per_group: int = 256,
        window: int | None = None,
        frames_convention: str | None = None,
    ) -> None:
        if rows_per_group < 1:
            raise ValueError(f"rows_per_group must be at least 1, got {rows_per_group}")
        self.path = Path(path)
        self.variant = variant
        self.dtype = np.dtype(dtype)
        self.grid = (int(grid[0]), int(grid[1]))
        self.frames = int(frames)
        self.rows_per_group = rows_per_group
        self.schema = tensor_schema(self.grid, self.frames, dtype)

        file_metadata = dict(metadata or {})
        file_metadata["format_version"] = FORMAT_VERSION
        file_metadata["window"] = int(window if window is not None else file_metadata.get("window", DEFAULT_WINDOW))
        if frames_convention is not None:
            file_metadata["frames_convention"] = frames_convention
        file_metadata.setdefault("frames_convention", None)
        file_metadata["variant"] = variant
        file_metadata["dtype"] = str(self.dtype)
        self.metadata = file_metadata
        self.schema = self.schema.with_metadata(
            {METADATA_KEY: json.dumps(file_metadata, sort_keys=True, default=str).encode()}
        )

        self.rows_written = 0
        self._buffer: list[pa.Table] = []
        self._buffered_rows = 0
        self._keys: set[tuple[int, int, str]] = set()
        self._stack: contextlib.ExitStack | None = None
        self._writer: pq.ParquetWriter | None = None

    def __enter__(self) -> TensorWriter:
        self._stack = contextlib.ExitStack()
        temporary = self._stack.enter_context(atomic_path(self.path))
        # Dictionary encoding of the float column costs a lot of read time for no gain.
        self._writer = pq.ParquetWriter(temporary, self.schema, use_dictionary=["variant", "kind"])
        return self

    def write(self, image_ids: Sequence[int], caption_ids: Sequence[int], kind: str, tensors: Any) -> None:
        """Add B tensors of one kind; ``tensors`` is a NumPy array or torch tensor [B, H, W, F]."""
        if self._writer is None:
            raise RuntimeError("TensorWriter.write called outside its 'with' block")
        if kind not in KINDS:
            raise TensorFormatError(f"invalid tensor kind {kind!r}: use one of {', '.join(KINDS)}")
        if hasattr(tensors, "detach"):
            tensors = tensors.detach().cpu().numpy()
        tensors = np.asarray(tensors)
        image_ids = np.asarray(image_ids, dtype=np.int64).reshape(-1)
        caption_ids = np.asarray(caption_ids, dtype=np.int64).reshape(-1)
        expected = (len(image_ids), *self.grid, self.frames)
        if len(caption_ids) != len(image_ids) or tensors.shape != expected:
            raise TensorFormatError(
                f"invalid batch for {self.path}: expected tensors of shape {expected} (B, H, W, F) for "
                f"{len(image_ids)} image ids and as many caption ids, got {tensors.shape} and "
                f"{len(caption_ids)} caption ids"
            )
        with np.errstate(over="ignore"):  # an overflow becomes inf, which the next line reports
            values = tensors.astype(self.dtype, copy=False)
        find_nonfinite(image_ids, caption_ids, values, kind)
        for image_id, caption_id in zip(image_ids.tolist(), caption_ids.tolist()):
            key = (image_id, caption_id, kind)
            if key in self._keys:
                raise TensorFormatError(
                    f"duplicate tensor for image_id {image_id}, caption_id {caption_id}, kind {kind} in "
                    f"{self.path}: write each pair once per kind"
                )
            self._keys.add(key)

        count = len(image_ids)
        flat = pa.array(np.ascontiguousarray(values).reshape(-1), type=self.schema.field("tensor").type.value_type)
        columns = {
            "image_id": pa.array(image_ids, pa.int64()),
            "caption_id": pa.array(caption_ids, pa.int64()),
            "variant": pa.array([self.variant] * count, pa.string()),
            "kind": pa.array([kind] * count, pa.string()),
            "grid_h": pa.array(np.full(count, self.grid[0], np.int32)),
            "grid_w": pa.array(np.full(count, self.grid[1], np.int32)),
            "frames": pa.array(np.full(count, self.frames, np.int32)),
            "tensor": pa.FixedSizeListArray.from_arrays(flat, type=self.schema.field("tensor").type),
        }
        self._buffer.append(pa.table(columns, schema=self.schema))
        self._buffered_rows += count
        while self._buffered_rows >= self.rows_per_group:
            self._flush(self.rows_per_group)

    def _flush(self, rows: int) -> None:
        """Write the first ``rows`` buffered rows as one row group."""
        assert self._writer is not None
        table = pa.concat_tables(self._buffer)
        self._writer.write_table(table.slice(0, rows), row_group_size=rows)
        rest = table.slice(rows)
        self._buffer = [rest] if rest.num_rows else []
        self._buffered_rows = rest.num_rows
        self.rows_written += rows

    def __exit__(self, exc_type, exc, traceback) -> bool:
        assert self._stack is not None and self._writer is not None
        try:
            if exc_type is None and self._buffered_rows:
                self._flush(self._buffered_rows)
            self._writer.close()
        finally:
            self._writer = None
            stack, self._stack = self._stack, None
            # The ExitStack renames the temporary file on success and removes it on an exception.
            stack.__exit__(exc_type, exc, traceback)
        if exc_type is None:
            logger.info("wrote %d tensors to %s", self.rows_written, self.path)
        return False


@dataclass(frozen=True)
class TensorFileInfo:
    """Shape, kinds and metadata of one tensor file."""

    path: Path
    grid: tuple[int, int]
    frames: int
    dtype: str
    kinds: tuple[str, ...]
    variants: tuple[str, ...]
    num_rows: int
    num_row_groups: int
    window: int
    frames_convention: str | None
    format_version: int | None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Shape (H, W, F) of every T in the file."""
        return (*self.grid, self.frames)


@dataclass(frozen=True)
class TensorBatch:
    """Tensors of one kind from one row group."""

    kind: str
    image_ids: np.ndarray  # [B] int64
    caption_ids: np.ndarray  # [B] int64
    rows: np.ndarray  # [B] row numbers in the file
    tensors: np.ndarray  # [B, H, W, F] float16 or float32, as stored


def _check_columns(path: Path, schema: pa.Schema) -> None:
    missing = [name for name in COLUMNS if name not in schema.names]
    if missing:
        raise TensorFormatError(
            f"tensor file {path} lacks the columns {', '.join(missing)}. The exchange format needs "
            f"{', '.join(COLUMNS)} (see the docstring of vgsalign.tensors for an example)."
        )
    tensor_type = schema.field("tensor").type
    if not (pa.types.is_fixed_size_list(tensor_type) or pa.types.is_list(tensor_type)):
        raise TensorFormatError(
            f"column 'tensor' of {path} has type {tensor_type}; it must be a list of float16 or float32"
        )
    value_type = tensor_type.value_type
    if not (pa.types.is_float16(value_type) or pa.types.is_float32(value_type)):
        raise TensorFormatError(
            f"column 'tensor' of {path} contains {value_type} values; write float16 or float32 values"
        )
    for name in ID_COLUMNS:
        id_type = schema.field(name).type
        if not (pa.types.is_integer(id_type) or pa.types.is_floating(id_type)):
            raise TensorFormatError(
                f"column '{name}' of {path} has type {id_type}; write the COCO ids as int64"
            )
    for name in SHAPE_COLUMNS:
        shape_type = schema.field(name).type
        if not pa.types.is_integer(shape_type):
            raise TensorFormatError(
                f"column '{name}' of {path} has type {shape_type}; write it as an integer column (int32)"
            )


def read_tensor_info(path: str | os.PathLike) -> TensorFileInfo:
    """Read the shape, kinds and metadata of a tensor file and check that every row agrees.

    Raises TensorFormatError for missing columns, unknown kinds, or a row whose
    (grid_h, grid_w, frames) differs from the first row's, naming the row.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tensor file not found: {path}. Run the export stage or check the path.")
    parquet = pq.ParquetFile(path)
    schema = parquet.schema_arrow
    _check_columns(path, schema)

    raw_metadata = (schema.metadata or {}).get(METADATA_KEY)
    metadata: dict[str, Any] = json.loads(raw_metadata) if raw_metadata else {}
    if not raw_metadata:
        logger.warning(
            "tensor file %s has no '%s' metadata: assuming a %d-frame window and the frames convention "
            "of the pairs file",
            path,
            METADATA_KEY.decode(),
            DEFAULT_WINDOW,
        )

    table = parquet.read(columns=[*ID_COLUMNS, "kind", "variant", *SHAPE_COLUMNS])
    num_rows = table.num_rows
    kinds = table.column("kind").to_numpy(zero_copy_only=False).astype(str)
    unknown = ~np.isin(kinds, KINDS)
    if unknown.any():
        row = int(np.flatnonzero(unknown)[0])
        raise TensorFormatError(
            f"row {row} of {path} has unknown kind {str(kinds[row])!r} ({int(unknown.sum())} rows in all); "
            f"allowed kinds are {', '.join(KINDS)}"
        )

    if num_rows:
        shapes = np.stack([table.column(name).to_numpy() for name in SHAPE_COLUMNS], axis=1)  # [N, 3]
        expected = shapes[0]
        wrong = (shapes != expected).any(axis=1)
        if wrong.any():
            row = int(np.flatnonzero(wrong)[0])
            raise TensorFormatError(
                f"row {row} of {path} (image_id {table.column('image_id')[row].as_py()}, caption_id "
                f"{table.column('caption_id')[row].as_py()}) has shape {tuple(int(v) for v in shapes[row])}; "
                f"every row of a file must have the shape of the first row, {tuple(int(v) for v in expected)} "
                f"(grid_h, grid_w, frames)"
            )
        if (expected < 1).any():
            raise TensorFormatError(f"invalid tensor shape {tuple(int(v) for v in expected)} in {path}")
        grid = (int(expected[0]), int(expected[1]))
        frames = int(expected[2])
    else:
        grid, frames = (0, 0), 0

    tensor_type = schema.field("tensor").type
    if pa.types.is_fixed_size_list(tensor_type) and num_rows and tensor_type.list_size != grid[0] * grid[1] * frames:
        raise TensorFormatError(
            f"column 'tensor' of {path} contains {tensor_type.list_size} values per row, but the shape "
            f"columns give {grid[0]} x {grid[1]} x {frames} = {grid[0] * grid[1] * frames}"
        )

    window = int(metadata.get("window") or DEFAULT_WINDOW)
    if num_rows and window < frames:
        raise TensorFormatError(f"window {window} of {path} is shorter than the tensor's {frames} frames")
    return TensorFileInfo(
        path=path,
        grid=grid,
        frames=frames,
        dtype=np.dtype(tensor_type.value_type.to_pandas_dtype()).name,
        kinds=tuple(kind for kind in KINDS if kind in set(kinds.tolist())),
        variants=tuple(sorted(set(table.column("variant").to_pylist()))),
        num_rows=num_rows,
        num_row_groups=parquet.num_row_groups,
        window=window,
        frames_convention=metadata.get("frames_convention"),
        format_version=metadata.get("format_version"),
        metadata=metadata,
    )


def _tensor_values(column: pa.ChunkedArray, shape: tuple[int, int, int], rows: np.ndarray, path: Path) -> np.ndarray:
    """Return the tensors of one row group as [B, H, W, F], checking every row's length."""
    array = column.combine_chunks()
    size = shape[0] * shape[1] * shape[2]
    if pa.types.is_list(array.type):
        lengths = np.diff(array.offsets.to_numpy())
        wrong = lengths != size
        if wrong.any():
            index = int(np.flatnonzero(wrong)[0])
            raise TensorFormatError(
                f"row {int(rows[index])} of {path} has {int(lengths[index])} tensor values; expected "
                f"{size} for shape {shape} (grid_h, grid_w, frames)"
            )
        array = array.flatten()
    elif array.null_count:
        index = int(np.flatnonzero(array.is_null().to_numpy(zero_copy_only=False))[0])
        raise TensorFormatError(f"row {int(rows[index])} of {path} has no tensor (null)")
    else:
        array = array.flatten()
    if array.null_count:
        raise TensorFormatError(f"column 'tensor' of {path} contains null values; write every value of T")
    values = array.to_numpy(zero_copy_only=False)
    return values.reshape(-1, *shape)


def iter_tensor_batches(
    path: str | os.PathLike,
    kinds: Iterable[str] | None = None,
    validate: bool = True,
    info: TensorFileInfo | None = None,
) -> Iterator[dict[str, TensorBatch]]:
    """Yield one dict {kind: TensorBatch} per row group, so memory stays flat in the file size.

    ``kinds`` limits the kinds read (default: all). With ``validate`` a NaN or
    infinite value raises TensorValueError naming the image_id and caption_id.
    Shape errors raise TensorFormatError naming the row.
    """
    path = Path(path)
    info = info if info is not None else read_tensor_info(path)
    selected_kinds = set(KINDS if kinds is None else kinds)
    unknown = selected_kinds - set(KINDS)
    if unknown:
        raise TensorFormatError(f"invalid tensor kinds {sorted(unknown)}: use {', '.join(KINDS)}")

    parquet = pq.ParquetFile(path)
    first_row = 0
    for group in range(parquet.num_row_groups):
        table = parquet.read_row_group(group, columns=[*ID_COLUMNS, "kind", "tensor"])
        rows = np.arange(first_row, first_row + table.num_rows)
        first_row += table.num_rows
        if table.num_rows == 0:
            continue
        group_kinds = table.column("kind").to_numpy(zero_copy_only=False).astype(str)
        image_ids = table.column("image_id").to_numpy()
        caption_ids = table.column("caption_id").to_numpy()
        tensors = _tensor_values(table.column("tensor"), info.shape, rows, path)  # [B, H, W, F]

        batches: dict[str, TensorBatch] = {}
        for kind in KINDS:
            if kind not in selected_kinds:
                continue
            selected = np.flatnonzero(group_kinds == kind)
            if len(selected) == 0:
                continue
            batch = TensorBatch(
                kind=kind,
                image_ids=image_ids[selected],
                caption_ids=caption_ids[selected],
                rows=rows[selected],
                tensors=tensors[selected],
            )
            if validate:
                find_nonfinite(batch.image_ids, batch.caption_ids, batch.tensors, kind)
            batches[kind] = batch
        if batches:
            yield batches
