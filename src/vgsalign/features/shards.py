"""Feature shards: one ``.npy`` array plus a Parquet index per shard, and a reader over many.

A shard is two files written by one job:

- ``<name>.npy``: one float16 or float32 array whose first axis is the item
  (``[N, 40, 512]`` for log-mel, ``[N, 512, 14, 14]`` for VGG16 maps).
- ``<name>.parquet``: the index, one row per item with ``row`` (position in the
  ``.npy``), the id columns and per-item metadata such as ``status``. Its
  Parquet metadata stores the parameters that made the shard, the array's shape
  and dtype and a SHA-256 of the ``.npy`` file.

Both files are written to temporary names and renamed, the ``.npy`` first and
the index last, so an index on disk means the shard is complete. A stage
calls :func:`verify_shard` before it trusts an existing shard and rebuilds the
shard when the checksum or the parameters do not match. A writer first deletes
the temporary files that a killed run of the same shard left behind.

Items that could not be computed (a missing or unreadable file) keep their row
and their index entry. Their ``status`` names the reason and their row in the
array is all zero, so readers select ``status == "ok"``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import mmap
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vgsalign.io import atomic_path, ensure_dir, read_parquet_metadata, write_parquet_atomic

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
STATUS_OK = "ok"
ID_COLUMNS = ("caption_id", "image_id")
_HASH_CHUNK_BYTES = 8 * 1024 * 1024
# ShardWriter drops written pages from its resident set after this many bytes.
_RELEASE_BYTES = 16 * 1024 * 1024


class ShardError(ValueError):
    """A shard or a set of shards that cannot be read as requested."""


# -- which items go into which shard -------------------------------------------


def parse_shard(shard: int | str) -> int:
    """Return the shard number of ``shard`` given as an int or a name such as ``"0003"``."""
    try:
        number = int(shard)
    except (TypeError, ValueError) as error:
        raise ShardError(f"invalid shard {shard!r}: expected a number such as 3 or '0003'") from error
    if number < 0:
        raise ShardError(f"invalid shard {shard!r}: shard numbers start at 0")
    return number


def shard_block(ids: Iterable[int], num_shards: int, shard: int | str) -> np.ndarray:
    """Return the ids of block ``shard`` when the sorted ``ids`` are cut into ``num_shards`` blocks.

    The blocks are contiguous runs of the sorted ids, sized as ``np.array_split``
    sizes them (lengths differ by at most one). When there are fewer ids than
    shards, the last blocks are empty.
    """
    number = parse_shard(shard)
    if num_shards < 1:
        raise ShardError(f"invalid number of shards {num_shards}: it must be at least 1")
    if number >= num_shards:
        raise ShardError(f"shard {number} does not exist: there are {num_shards} shards (0 to {num_shards - 1})")
    sorted_ids = np.sort(np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids, dtype=np.int64))
    if len(sorted_ids) and np.any(sorted_ids[1:] == sorted_ids[:-1]):
        raise ShardError("the ids to split into shards contain duplicates; each item must appear once")
    return np.array_split(sorted_ids, num_shards)[number]


def ids_digest(ids: Sequence[int] | np.ndarray) -> str:
    """Return a SHA-256 of an id list, stored with a shard so a changed manifest marks it stale."""
    return hashlib.sha256(np.asarray(ids, dtype="<i8").tobytes()).hexdigest()


class SkipLog:
    """Count skipped items by status and log a warning for the first ``max_logged`` of each status."""

    def __init__(self, log: logging.Logger, item: str, max_logged: int = 10) -> None:
        self.log = log
        self.item = item
        self.max_logged = max_logged
        self.counts: dict[str, int] = {}

    def add(self, item_id: Any, status: str, message: str) -> None:
        count = self.counts.get(status, 0) + 1
        self.counts[status] = count
        if count <= self.max_logged:
            self.log.warning("skipping %s %s (%s): %s", self.item, item_id, status, message)
        if count == self.max_logged:
            self.log.warning("further %s skips with status %s are counted but not logged", self.item, status)

    def sorted_counts(self) -> dict[str, int]:
        return dict(sorted(self.counts.items()))


# -- writing -------------------------------------------------------------------


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _normalise_params(params_used: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``params_used`` as it reads back from JSON (tuples become lists, numpy scalars numbers)."""

    def default(value: Any) -> Any:
        if hasattr(value, "item"):
            return value.item()
        if isinstance(value, Path):
            return str(value)
        raise TypeError(f"shard parameter of type {type(value).__name__} cannot be stored as JSON")

    return json.loads(json.dumps(dict(params_used), sort_keys=True, default=default))


def _prepare_index(index: pd.DataFrame, num_items: int) -> pd.DataFrame:
    if len(index) != num_items:
        raise ShardError(f"the shard index has {len(index)} rows but the array has {num_items} items")
    index = index.reset_index(drop=True).copy()
    index["row"] = np.arange(num_items, dtype=np.int64)
    if "status" not in index.columns:
        index["status"] = STATUS_OK
    ordered = ["row", *[column for column in index.columns if column != "row"]]
    return index[ordered]


def _write_index(
    index_path: Path,
    index: pd.DataFrame,
    sha256: str,
    shape: tuple[int, ...],
    dtype: np.dtype,
    params_used: Mapping[str, Any],
    metadata: Mapping[str, Any] | None,
) -> None:
    stored = dict(metadata or {})
    stored.update(
        format_version=FORMAT_VERSION,
        sha256=sha256,
        shape=list(shape),
        dtype=np.dtype(dtype).name,
        params=_normalise_params(params_used),
        status_counts={str(k): int(v) for k, v in index["status"].value_counts().sort_index().items()},
    )
    write_parquet_atomic(index_path, index, metadata=stored)


def _invalidate(index_path: Path) -> None:
    """Remove an old index first, so a job killed mid-rewrite never leaves an old index over a new array."""
    with contextlib.suppress(FileNotFoundError):
        index_path.unlink()


def remove_stray_temporaries(*final_paths: Path) -> int:
    """Delete the temporary files that a killed writer of ``final_paths`` left beside them; return the count.

    The names are those of :func:`vgsalign.io.atomic_path` (``.<name>.<random>.tmp<suffix>``).
    Only one job writes a shard at a time, so a temporary file that exists when
    the shard's writer starts belongs to an interrupted run.
    """
    removed = 0
    for path in final_paths:
        for stray in Path(path).parent.glob(f".{Path(path).name}.*.tmp*"):
            stray.unlink(missing_ok=True)
            removed += 1
    if removed:
        logger.info("removed %d temporary file(s) of %s left by an interrupted run", removed, Path(final_paths[0]).name)
    return removed


def write_shard(
    npy_path: str | os.PathLike,
    index_path: str | os.PathLike,
    array: np.ndarray,
    index: pd.DataFrame,
    params_used: Mapping[str, Any],
    metadata: Mapping[str, Any] | None = None,
) -> None:
    """Write ``array`` (first axis = item) and its index as one shard, atomically, index last.

    ``index`` has one row per item in array order; a ``row`` column is added (or
    overwritten) and a ``status`` column defaults to ``"ok"``. ``params_used``
    and ``metadata`` go into the index's Parquet metadata with the SHA-256 of
    the ``.npy`` file.
    """
    npy_path, index_path = Path(npy_path), Path(index_path)
    array = np.asarray(array)
    if array.ndim < 1:
        raise ShardError("a shard array needs at least one axis (the item axis)")
    index = _prepare_index(index, array.shape[0])
    ensure_dir(index_path.parent)  # OutputPathError, not NotADirectoryError, when a file is in the way
    _invalidate(index_path)
    remove_stray_temporaries(npy_path, index_path)
    with atomic_path(npy_path) as temporary:
        np.save(temporary, array, allow_pickle=False)
        sha256 = file_sha256(temporary)
    _write_index(index_path, index, sha256, array.shape, array.dtype, params_used, metadata)


class ShardWriter:
    """Fill a shard item by item through a memory-mapped temporary ``.npy``, so memory stays flat.

    Use as a context manager::

        with ShardWriter(npy, idx, num_items, (40, 512), "float16", params_used) as writer:
            for row, item in enumerate(items):
                writer.write(row, compute(item))
            writer.finish(index, metadata)

    Rows never written stay all zero. Leaving the block without ``finish`` (or by
    an exception) deletes the temporary file and writes no index. Every 16 MiB
    written, the pages are flushed and dropped from the process's resident set
    (``madvise(MADV_DONTNEED)``), so peak RSS does not grow with the shard size.
    """

    def __init__(
        self,
        npy_path: str | os.PathLike,
        index_path: str | os.PathLike,
        num_items: int,
        item_shape: Sequence[int],
        dtype: str | np.dtype,
        params_used: Mapping[str, Any],
    ) -> None:
        self.npy_path = Path(npy_path)
        self.index_path = Path(index_path)
        self.shape = (int(num_items), *map(int, item_shape))
        self.dtype = np.dtype(dtype)
        self.params_used = params_used
        self._stack = contextlib.ExitStack()
        self._array: np.memmap | None = None
        self._temporary: Path | None = None
        self._finished = False
        self._unreleased_bytes = 0

    def __enter__(self) -> ShardWriter:
        ensure_dir(self.index_path.parent)  # OutputPathError, not NotADirectoryError, when a file is in the way
        _invalidate(self.index_path)
        remove_stray_temporaries(self.npy_path, self.index_path)
        self._temporary = self._stack.enter_context(atomic_path(self.npy_path))
        self._array = np.lib.format.open_memmap(self._temporary, mode="w+", dtype=self.dtype, shape=self.shape)
        return self

    def write(self, row: int, item: np.ndarray) -> None:
        """Store ``item`` (cast to the shard dtype) at ``row``."""
        if self._array is None:
            raise ShardError("ShardWriter.write called outside its with block")
        item = np.asarray(item)
        if item.shape != self.shape[1:]:
            raise ShardError(f"item for row {row} has shape {item.shape}, expected {self.shape[1:]}")
        self._array[row] = item
        self._count_written(item.nbytes)

    def write_rows(self, rows: Sequence[int] | slice, items: np.ndarray) -> None:
        """Store a batch of items ``[B, ...]`` at ``rows``."""
        if self._array is None:
            raise ShardError("ShardWriter.write_rows called outside its with block")
        self._array[rows] = items
        self._count_written(np.asarray(items).nbytes)

    def _count_written(self, nbytes: int) -> None:
        self._unreleased_bytes += nbytes
        if self._unreleased_bytes < _RELEASE_BYTES:
            return
        self._unreleased_bytes = 0
        self._array.flush()
        # A shared file mapping keeps the data in the page cache and the file after MADV_DONTNEED.
        buffer = self._array.base
        if isinstance(buffer, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED"):
            buffer.madvise(mmap.MADV_DONTNEED)

    def finish(self, index: pd.DataFrame, metadata: Mapping[str, Any] | None = None) -> None:
        """Flush the array, rename it into place and write the index (the completion marker)."""
        if self._array is None or self._temporary is None:
            raise ShardError("ShardWriter.finish called outside its with block")
        prepared = _prepare_index(index, self.shape[0])
        self._array.flush()
        self._array = None  # closes the memory map before the rename
        sha256 = file_sha256(self._temporary)
        self._stack.close()  # renames the temporary file to npy_path
        _write_index(self.index_path, prepared, sha256, self.shape, self.dtype, self.params_used, metadata)
        self._finished = True

    def __exit__(self, exc_type, exc, traceback) -> None:
        self._array = None
        if self._finished:
            return
        # Not finished: make atomic_path see a failure so it deletes the temporary file.
        with contextlib.suppress(_AbortShard):
            self._stack.__exit__(_AbortShard, _AbortShard(), None)


class _AbortShard(Exception):
    pass


# -- checking ------------------------------------------------------------------


def _describe_param_change(stored: Any, expected: Any, prefix: str = "") -> str:
    if isinstance(stored, dict) and isinstance(expected, dict):
        for key in sorted(set(stored) | set(expected)):
            if stored.get(key, "<absent>") != expected.get(key, "<absent>"):
                return _describe_param_change(stored.get(key, "<absent>"), expected.get(key, "<absent>"), f"{prefix}{key}.")
    return f"parameter '{prefix.rstrip('.')}' was {stored!r}, now {expected!r}"


def verify_shard(
    npy_path: str | os.PathLike,
    index_path: str | os.PathLike,
    params_used: Mapping[str, Any] | None,
    check_checksum: bool = True,
) -> str | None:
    """Return ``None`` if the shard is complete and current, else the reason it must be rebuilt.

    Checks, in order:

    1. both files exist, and the index is readable and has shard metadata;
    2. the stored parameters equal ``params_used`` (skipped when it is None);
    3. the ``.npy`` header matches the stored shape and dtype;
    4. the file's SHA-256 equals the stored one (skipped when ``check_checksum`` is false).
    """
    npy_path, index_path = Path(npy_path), Path(index_path)
    if not index_path.is_file():
        return f"index {index_path} is missing"
    if not npy_path.is_file():
        return f"array {npy_path} is missing"
    try:
        stored = read_parquet_metadata(index_path)
    except (OSError, ValueError) as error:
        return f"index {index_path} is unreadable ({error})"
    if stored.get("format_version") != FORMAT_VERSION or "sha256" not in stored:
        return f"index {index_path} has no shard metadata of format version {FORMAT_VERSION}"
    if params_used is not None:
        expected = _normalise_params(params_used)
        if stored.get("params") != expected:
            return "stale: " + _describe_param_change(stored.get("params"), expected)
    try:
        header = np.load(npy_path, mmap_mode="r")
    except (OSError, ValueError) as error:
        return f"array {npy_path} is unreadable ({error})"
    if list(header.shape) != stored.get("shape") or header.dtype.name != stored.get("dtype"):
        return (
            f"array {npy_path} has shape {list(header.shape)} and dtype {header.dtype.name}, "
            f"the index records {stored.get('shape')} and {stored.get('dtype')}"
        )
    del header
    if check_checksum and file_sha256(npy_path) != stored["sha256"]:
        return f"checksum of {npy_path} does not match its index (corrupt or overwritten)"
    return None


# -- reading -------------------------------------------------------------------


class FeatureStore:
    """Read items of many shards by position or id, through memory maps.

    ``index`` is the concatenated shard index: one row per item, in shard
    order, with ``shard`` (position in the list of shards) and ``row`` columns
    beside the id and status columns. A *position* is a row number of
    ``index``. Arrays open lazily, and pickling drops them, so a store passed
    to DataLoader workers reopens its memory maps in each worker.
    """

    def __init__(
        self,
        npy_paths: Sequence[str | os.PathLike],
        index_paths: Sequence[str | os.PathLike],
        id_column: str | None = None,
    ) -> None:
        if len(npy_paths) != len(index_paths):
            raise ShardError(f"{len(npy_paths)} array files but {len(index_paths)} index files; pass one of each per shard")
        if not npy_paths:
            raise ShardError("no shards given; run the feature extraction stage first")
        self.npy_paths = [Path(path) for path in npy_paths]
        self.index_paths = [Path(path) for path in index_paths]
        self.index = self._read_indexes()
        self.id_column = id_column or next((c for c in ID_COLUMNS if c in self.index.columns), None)
        if self.id_column is None or self.id_column not in self.index.columns:
            raise ShardError(f"the shard indexes have no id column {id_column or ID_COLUMNS}; pass id_column")
        duplicated = self.index[self.id_column].duplicated()
        if duplicated.any():
            first = self.index.loc[duplicated, self.id_column].iloc[0]
            raise ShardError(f"{self.id_column} {first} appears in more than one shard row; rebuild the shards")
        self._lookup = pd.Index(self.index[self.id_column].to_numpy())
        self._arrays: list[np.ndarray | None] = [None] * len(self.npy_paths)
        self.item_shape, self.dtype = self._check_arrays()

    @classmethod
    def from_dir(cls, folder: str | os.PathLike, id_column: str | None = None) -> FeatureStore:
        """Open every ``shard-*.parquet`` in ``folder`` with its ``.npy`` (in name order)."""
        index_paths = sorted(Path(folder).glob("shard-*.parquet"))
        if not index_paths:
            raise ShardError(f"no shard index (shard-*.parquet) found in {folder}; run the feature extraction stage first")
        return cls([path.with_suffix(".npy") for path in index_paths], index_paths, id_column=id_column)

    def _read_indexes(self) -> pd.DataFrame:
        frames = []
        for number, path in enumerate(self.index_paths):
            if not path.is_file():
                raise ShardError(f"shard index {path} not found; run the feature extraction stage for it")
            frame = pd.read_parquet(path)
            if "row" not in frame.columns:
                raise ShardError(f"shard index {path} has no 'row' column; rebuild the shard")
            frame.insert(0, "shard", np.int64(number))
            frames.append(frame)
        return pd.concat(frames, ignore_index=True)

    def _check_arrays(self) -> tuple[tuple[int, ...], np.dtype]:
        shapes = set()
        dtypes = set()
        for number in range(len(self.npy_paths)):
            array = self._array(number)
            rows = int((self.index["shard"] == number).sum())
            if array.shape[0] != rows:
                raise ShardError(f"{self.npy_paths[number]} has {array.shape[0]} items but its index has {rows} rows; rebuild the shard")
            shapes.add(array.shape[1:])
            dtypes.add(array.dtype)
        if len(shapes) != 1 or len(dtypes) != 1:
            raise ShardError(f"shards disagree on item shape {sorted(shapes)} or dtype {sorted(map(str, dtypes))}; rebuild them with the same parameters")
        return shapes.pop(), dtypes.pop()

    def _array(self, number: int) -> np.ndarray:
        array = self._arrays[number]
        if array is None:
            path = self.npy_paths[number]
            if not path.is_file():
                raise ShardError(f"shard array {path} not found; run the feature extraction stage for it")
            array = np.load(path, mmap_mode="r")
            self._arrays[number] = array
        return array

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_arrays"] = [None] * len(self.npy_paths)
        return state

    def __len__(self) -> int:
        return len(self.index)

    def position_of(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Return the positions of ``ids`` (values of ``id_column``); raise KeyError for unknown ids."""
        positions = self._lookup.get_indexer(np.asarray(ids, dtype=np.int64))
        missing = positions < 0
        if missing.any():
            unknown = np.asarray(ids)[missing]
            raise KeyError(f"{int(missing.sum())} {self.id_column} values are not in the feature shards, e.g. {unknown[:5].tolist()}")
        return positions.astype(np.int64)

    def get(self, position: int) -> np.ndarray:
        """Return the item at ``position`` as an in-memory array (one row read from disk)."""
        if not 0 <= position < len(self.index):
            raise IndexError(f"position {position} is outside the store of {len(self.index)} items")
        shard = int(self.index["shard"].iat[position])
        row = int(self.index["row"].iat[position])
        return np.array(self._array(shard)[row])

    def get_batch(self, positions: Sequence[int] | np.ndarray, dtype: str | np.dtype | None = None) -> np.ndarray:
        """Return the items at ``positions`` stacked as ``[B, ...]``, reading only those rows."""
        positions = np.asarray(positions, dtype=np.int64)
        if positions.size and (positions.min() < 0 or positions.max() >= len(self.index)):
            raise IndexError(f"positions outside the store of {len(self.index)} items")
        batch = np.empty((len(positions), *self.item_shape), dtype=dtype or self.dtype)  # [B, ...]
        shards = self.index["shard"].to_numpy()[positions]
        rows = self.index["row"].to_numpy()[positions]
        for shard in np.unique(shards):
            selected = np.flatnonzero(shards == shard)
            # Reading rows in ascending order keeps the memory-mapped access sequential.
            order = np.argsort(rows[selected], kind="stable")
            batch[selected[order]] = self._array(int(shard))[rows[selected][order]]
        return batch

    def metadata(self, shard: int) -> dict[str, Any]:
        """Return the Parquet metadata of shard number ``shard`` (parameters, checksum, counts)."""
        return read_parquet_metadata(self.index_paths[shard])
