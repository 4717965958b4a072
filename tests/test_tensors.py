"""Tensor exchange format: round trips, streaming by row group, and the validation rules."""

from __future__ import annotations

import json
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import vgsalign.tensors as tensors_module
from vgsalign.tensors import (
    TensorFormatError,
    TensorValueError,
    TensorWriter,
    iter_tensor_batches,
    nonfinite_rows,
    read_tensor_info,
)

GRID = (3, 2)
FRAMES = 4


def random_tensors(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((count, *GRID, FRAMES))  # [B, H, W, F]


def write_file(path, dtype="float32", rows_per_group=4):
    raw = random_tensors(5)
    space = random_tensors(5, seed=1)
    with TensorWriter(path, "model", dtype, GRID, FRAMES, rows_per_group=rows_per_group, frames_convention="paper") as w:
        w.write([1, 2, 3, 4, 5], [10, 20, 30, 40, 50], "raw", raw)
        w.write([1, 2, 3, 4, 5], [10, 20, 30, 40, 50], "softmax_space", space)
    return raw, space


def plain_table(values: np.ndarray, kinds=None, shapes=None) -> pa.Table:
    """A tensor table written with plain pyarrow, as an external researcher would."""
    count = len(values)
    shapes = shapes or [(*GRID, FRAMES)] * count
    return pa.table(
        {
            "image_id": pa.array(np.arange(1, count + 1), pa.int64()),
            "caption_id": pa.array(np.arange(1, count + 1) * 10, pa.int64()),
            "variant": ["external"] * count,
            "kind": kinds or ["raw"] * count,
            "grid_h": pa.array([shape[0] for shape in shapes], pa.int32()),
            "grid_w": pa.array([shape[1] for shape in shapes], pa.int32()),
            "frames": pa.array([shape[2] for shape in shapes], pa.int32()),
            "tensor": pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), int(np.prod(values.shape[1:]))),
        }
    )


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_roundtrip_by_row_group(tmp_path, dtype):
    path = tmp_path / "t.parquet"
    raw, space = write_file(path, dtype)
    info = read_tensor_info(path)
    assert info.shape == (3, 2, 4)
    assert info.kinds == ("raw", "softmax_space")
    assert info.dtype == dtype
    assert info.num_rows == 10
    assert info.frames_convention == "paper"
    assert info.window == 512
    assert [pq.ParquetFile(path).metadata.row_group(i).num_rows for i in range(3)] == [4, 4, 2]

    groups = list(iter_tensor_batches(path))
    assert len(groups) == 3
    assert list(groups[0]) == ["raw"]
    assert sorted(groups[1]) == ["raw", "softmax_space"]
    raw_ids = np.concatenate([group["raw"].image_ids for group in groups if "raw" in group])
    assert raw_ids.tolist() == [1, 2, 3, 4, 5]
    read_raw = np.concatenate([group["raw"].tensors for group in groups if "raw" in group])
    expected = raw.astype(dtype)
    assert read_raw.dtype == np.dtype(dtype)
    assert np.array_equal(read_raw, expected)
    space_rows = np.concatenate([group["softmax_space"].rows for group in groups if "softmax_space" in group])
    assert space_rows.tolist() == [5, 6, 7, 8, 9]
    read_space = np.concatenate([group["softmax_space"].tensors for group in groups if "softmax_space" in group])
    assert np.array_equal(read_space, space.astype(dtype))


def test_kinds_filter(tmp_path):
    path = tmp_path / "t.parquet"
    write_file(path)
    kinds = {kind for group in iter_tensor_batches(path, kinds=["softmax_space"]) for kind in group}
    assert kinds == {"softmax_space"}


def test_writer_is_atomic(tmp_path):
    path = tmp_path / "t.parquet"
    with pytest.raises(RuntimeError, match="interrupted"):
        with TensorWriter(path, "model", "float32", GRID, FRAMES, rows_per_group=2) as writer:
            writer.write([1, 2, 3], [1, 2, 3], "raw", random_tensors(3))
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_writer_rejects_nan(tmp_path):
    values = random_tensors(3)
    values[1, 0, 1, 2] = np.nan
    with pytest.raises(TensorValueError, match="image_id 2, caption_id 20"):
        with TensorWriter(tmp_path / "t.parquet", "model", "float32", GRID, FRAMES) as writer:
            writer.write([1, 2, 3], [10, 20, 30], "raw", values)
    assert not (tmp_path / "t.parquet").exists()


def test_writer_float16_overflow(tmp_path):
    values = random_tensors(2)
    values[0, 0, 0, 0] = 1e5  # above the float16 maximum of 65504
    with pytest.raises(TensorValueError, match="float32"):
        with TensorWriter(tmp_path / "t.parquet", "model", "float16", GRID, FRAMES) as writer:
            writer.write([1, 2], [10, 20], "raw", values)


def test_writer_rejects_wrong_shape(tmp_path):
    with pytest.raises(TensorFormatError, match=re.escape("(2, 3, 2, 4)")):
        with TensorWriter(tmp_path / "t.parquet", "model", "float32", GRID, FRAMES) as writer:
            writer.write([1, 2], [10, 20], "raw", np.zeros((2, 3, 2, 5)))


def test_writer_rejects_duplicate(tmp_path):
    with pytest.raises(TensorFormatError, match="duplicate tensor for image_id 1, caption_id 10, kind raw"):
        with TensorWriter(tmp_path / "t.parquet", "model", "float32", GRID, FRAMES) as writer:
            writer.write([1], [10], "raw", random_tensors(1))
            writer.write([1], [10], "raw", random_tensors(1))


def test_writer_rejects_unknown_kind(tmp_path):
    with pytest.raises(TensorFormatError, match="invalid tensor kind 'softmax'"):
        with TensorWriter(tmp_path / "t.parquet", "model", "float32", GRID, FRAMES) as writer:
            writer.write([1], [10], "softmax", random_tensors(1))


def test_writer_accepts_torch(tmp_path):
    torch = pytest.importorskip("torch")
    values = random_tensors(2)
    path = tmp_path / "t.parquet"
    with TensorWriter(path, "model", "float32", GRID, FRAMES) as writer:
        writer.write([1, 2], [10, 20], "raw", torch.from_numpy(values))
    (group,) = iter_tensor_batches(path)
    assert np.array_equal(group["raw"].tensors, values.astype(np.float32))


def test_plain_file_without_metadata(tmp_path):
    path = tmp_path / "external.parquet"
    values = random_tensors(3).astype(np.float32)
    pq.write_table(plain_table(values), path)
    info = read_tensor_info(path)
    assert info.window == 512
    assert info.frames_convention is None
    (group,) = iter_tensor_batches(path)
    assert np.array_equal(group["raw"].tensors, values)


def test_read_rejects_nan_naming_pair(tmp_path):
    values = random_tensors(3).astype(np.float32)
    values[2, 1, 1, 3] = np.inf
    path = tmp_path / "bad.parquet"
    pq.write_table(plain_table(values), path)
    with pytest.raises(TensorValueError, match="image_id 3, caption_id 30"):
        list(iter_tensor_batches(path))


def test_read_rejects_row_of_other_shape(tmp_path):
    values = random_tensors(3).astype(np.float32)
    shapes = [(3, 2, 4), (3, 2, 4), (2, 3, 4)]
    path = tmp_path / "bad.parquet"
    pq.write_table(plain_table(values, shapes=shapes), path)
    with pytest.raises(TensorFormatError, match=r"row 2 .*image_id 3.*\(2, 3, 4\).*\(3, 2, 4\)"):
        read_tensor_info(path)


def test_read_rejects_short_list(tmp_path):
    values = random_tensors(2).astype(np.float32)
    flat = [values[0].reshape(-1).tolist(), values[1].reshape(-1)[:-1].tolist()]
    table = plain_table(values).set_column(7, "tensor", pa.array(flat, pa.list_(pa.float32())))
    path = tmp_path / "bad.parquet"
    pq.write_table(table, path)
    with pytest.raises(TensorFormatError, match="row 1 .* 23 tensor values; expected 24"):
        list(iter_tensor_batches(path))


def test_read_accepts_variable_lists(tmp_path):
    values = random_tensors(2).astype(np.float32)
    flat = [row.reshape(-1).tolist() for row in values]
    table = plain_table(values).set_column(7, "tensor", pa.array(flat, pa.list_(pa.float32())))
    path = tmp_path / "lists.parquet"
    pq.write_table(table, path)
    (group,) = iter_tensor_batches(path)
    assert np.array_equal(group["raw"].tensors, values)


def test_read_rejects_unknown_kind(tmp_path):
    path = tmp_path / "bad.parquet"
    pq.write_table(plain_table(random_tensors(2).astype(np.float32), kinds=["raw", "attention"]), path)
    with pytest.raises(TensorFormatError, match="row 1 .* unknown kind 'attention'"):
        read_tensor_info(path)


def test_read_rejects_missing_columns(tmp_path):
    path = tmp_path / "bad.parquet"
    pq.write_table(plain_table(random_tensors(2).astype(np.float32)).drop_columns(["frames"]), path)
    with pytest.raises(TensorFormatError, match="lacks the columns frames"):
        read_tensor_info(path)


def test_missing_file_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.parquet"):
        read_tensor_info(tmp_path / "missing.parquet")


def test_nonfinite_rows_all_dtypes():
    values = np.ones((4, 6))
    values[1, 2] = np.nan
    values[2, 0] = -np.inf
    values[3, 5] = np.inf
    for dtype in (np.float16, np.float32, np.float64):
        assert nonfinite_rows(values.astype(dtype)).tolist() == [False, True, True, True]
    assert nonfinite_rows(np.full((1, 3), 65504.0, dtype=np.float16)).tolist() == [False]


def test_docstring_example_runs(tmp_path, monkeypatch):
    # The module docstring is the README's example for external models; it must stay runnable.
    code = tensors_module.__doc__.split("plain pyarrow, for a model outside this project::")[1].split("Then ")[0]
    monkeypatch.chdir(tmp_path)
    exec(compile("\n".join(line[4:] for line in code.splitlines()), "docstring", "exec"), {})
    info = read_tensor_info(tmp_path / "my_model.parquet")
    assert info.shape == (14, 14, 64)
    assert info.frames_convention == "paper"
    metadata = json.loads(pq.read_schema(tmp_path / "my_model.parquet").metadata[b"vgsalign"])
    assert metadata["format_version"] == 1
    (group,) = iter_tensor_batches(tmp_path / "my_model.parquet")
    assert group["raw"].image_ids.tolist() == [139, 285]


TEXT_COLUMN_FIXES = {
    "image_id": "write the COCO ids as int64",
    "caption_id": "write the COCO ids as int64",
    "grid_h": "write it as an integer column (int32)",
    "grid_w": "write it as an integer column (int32)",
    "frames": "write it as an integer column (int32)",
}


@pytest.mark.parametrize("column", list(TEXT_COLUMN_FIXES))
def test_read_rejects_text_columns(tmp_path, column):
    table = plain_table(random_tensors(2).astype(np.float32))
    position = table.schema.get_field_index(column)
    table = table.set_column(position, column, table.column(column).cast(pa.string()))
    path = tmp_path / "text.parquet"
    pq.write_table(table, path)
    expected = f"column '{column}' of {path} has type string; {TEXT_COLUMN_FIXES[column]}"
    with pytest.raises(TensorFormatError, match=re.escape(expected)):
        read_tensor_info(path)


@pytest.mark.parametrize("id_type", [pa.int32(), pa.int64(), pa.float64()])
def test_read_accepts_numeric_ids(tmp_path, id_type):
    table = plain_table(random_tensors(2).astype(np.float32))
    for column in ("image_id", "caption_id"):
        position = table.schema.get_field_index(column)
        table = table.set_column(position, column, table.column(column).cast(id_type))
    path = tmp_path / "ids.parquet"
    pq.write_table(table, path)
    (group,) = iter_tensor_batches(path)
    assert group["raw"].image_ids.tolist() == [1, 2]
    assert group["raw"].caption_ids.tolist() == [10, 20]


