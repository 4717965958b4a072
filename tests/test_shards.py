"""Feature shards: block split, round trip, stale and corrupt detection, FeatureStore reads."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest

from vgsalign.features import shards
from vgsalign.features.shards import (
    FeatureStore,
    ShardError,
    ShardWriter,
    file_sha256,
    shard_block,
    verify_shard,
    write_shard,
)
from vgsalign.io import read_parquet_metadata

PARAMS = {"n_mels": 40, "window": 512, "dtype": "float16", "convention": "paper"}


def _items(num_items: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(num_items, 3, 5)).astype(np.float16)


def _index(ids) -> pd.DataFrame:
    return pd.DataFrame({"caption_id": np.asarray(ids, dtype=np.int64), "num_frames": np.arange(len(ids), dtype=np.int64)})


def test_shard_block_contiguous_sorted():
    ids = [9, 2, 7, 4, 1, 8, 3]
    blocks = [shard_block(ids, 3, shard).tolist() for shard in range(3)]
    assert blocks == [[1, 2, 3], [4, 7], [8, 9]]


def test_shard_block_name_and_empty():
    assert shard_block([5, 6], 4, "0001").tolist() == [6]
    assert shard_block([5, 6], 4, "0003").tolist() == []


def test_shard_block_rejects_bad_input():
    with pytest.raises(ShardError, match="does not exist"):
        shard_block([1, 2], 2, 2)
    with pytest.raises(ShardError, match="duplicates"):
        shard_block([1, 1], 2, 0)
    with pytest.raises(ShardError, match="invalid shard"):
        shard_block([1, 2], 2, "first")


def test_round_trip_array_and_index(tmp_path):
    array = _items(4)
    npy, index_path = tmp_path / "shard-0000.npy", tmp_path / "shard-0000.parquet"
    write_shard(npy, index_path, array, _index([10, 11, 12, 13]), PARAMS, metadata={"skipped": {}})

    np.testing.assert_array_equal(np.load(npy), array)
    index = pd.read_parquet(index_path)
    assert index["row"].tolist() == [0, 1, 2, 3]
    assert index["caption_id"].tolist() == [10, 11, 12, 13]
    assert index["status"].tolist() == ["ok"] * 4
    stored = read_parquet_metadata(index_path)
    assert stored["sha256"] == file_sha256(npy)
    assert stored["params"] == PARAMS
    assert stored["shape"] == [4, 3, 5]
    assert stored["dtype"] == "float16"
    assert stored["status_counts"] == {"ok": 4}
    assert verify_shard(npy, index_path, PARAMS) is None


def test_round_trip_leaves_no_temporary(tmp_path):
    write_shard(tmp_path / "s.npy", tmp_path / "s.parquet", _items(2), _index([1, 2]), PARAMS)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["s.npy", "s.parquet"]


def test_write_rejects_row_mismatch(tmp_path):
    with pytest.raises(ShardError, match="3 rows but the array has 2"):
        write_shard(tmp_path / "s.npy", tmp_path / "s.parquet", _items(2), _index([1, 2, 3]), PARAMS)


def test_corrupt_byte_detected(tmp_path):
    npy, index_path = tmp_path / "s.npy", tmp_path / "s.parquet"
    write_shard(npy, index_path, _items(3), _index([1, 2, 3]), PARAMS)
    data = bytearray(npy.read_bytes())
    data[-7] ^= 0x01  # one bit of the last item
    npy.write_bytes(bytes(data))
    reason = verify_shard(npy, index_path, PARAMS)
    assert reason is not None
    assert "checksum" in reason


def test_truncated_array_detected(tmp_path):
    npy, index_path = tmp_path / "s.npy", tmp_path / "s.parquet"
    write_shard(npy, index_path, _items(3), _index([1, 2, 3]), PARAMS)
    npy.write_bytes(npy.read_bytes()[:-30])
    assert verify_shard(npy, index_path, PARAMS) is not None


def test_stale_params_detected(tmp_path):
    npy, index_path = tmp_path / "s.npy", tmp_path / "s.parquet"
    write_shard(npy, index_path, _items(3), _index([1, 2, 3]), PARAMS)
    reason = verify_shard(npy, index_path, {**PARAMS, "convention": "released_code"})
    assert reason == "stale: parameter 'convention' was 'paper', now 'released_code'"


def test_missing_files_detected(tmp_path):
    npy, index_path = tmp_path / "s.npy", tmp_path / "s.parquet"
    assert "missing" in verify_shard(npy, index_path, PARAMS)
    write_shard(npy, index_path, _items(1), _index([1]), PARAMS)
    npy.unlink()
    assert "missing" in verify_shard(npy, index_path, PARAMS)


def test_rewrite_removes_old_index_first(tmp_path):
    npy, index_path = tmp_path / "s.npy", tmp_path / "s.parquet"
    write_shard(npy, index_path, _items(2), _index([1, 2]), PARAMS)
    with pytest.raises(RuntimeError):
        with ShardWriter(npy, index_path, 2, (3, 5), "float16", PARAMS) as writer:
            writer.write(0, _items(1)[0])
            raise RuntimeError("killed mid-shard")
    # The old array stays, but without an index the shard counts as incomplete.
    assert not index_path.exists()
    assert "missing" in verify_shard(npy, index_path, PARAMS)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["s.npy"]


def test_writer_matches_write_shard(tmp_path):
    array = _items(5, seed=3)
    with ShardWriter(tmp_path / "a.npy", tmp_path / "a.parquet", 5, (3, 5), "float16", PARAMS) as writer:
        for row in [4, 0, 2]:
            writer.write(row, array[row])
        writer.write_rows(slice(1, 2), array[1:2])
        writer.finish(_index([1, 2, 3, 4, 5]).assign(status=["ok", "ok", "ok", "missing", "ok"]))
    stored = np.load(tmp_path / "a.npy")
    expected = array.copy()
    expected[3] = 0  # never written
    np.testing.assert_array_equal(stored, expected)
    assert verify_shard(tmp_path / "a.npy", tmp_path / "a.parquet", PARAMS) is None
    assert read_parquet_metadata(tmp_path / "a.parquet")["status_counts"] == {"missing": 1, "ok": 4}


def test_writer_released_pages_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(shards, "_RELEASE_BYTES", 64)  # drop pages after every item of 30 bytes x 3
    array = _items(40, seed=5)
    with ShardWriter(tmp_path / "a.npy", tmp_path / "a.parquet", 40, (3, 5), "float16", PARAMS) as writer:
        for row in range(40):
            writer.write(row, array[row])
        writer.write_rows([0, 1], array[:2])
        writer.finish(_index(range(40)))
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), array)
    assert verify_shard(tmp_path / "a.npy", tmp_path / "a.parquet", PARAMS) is None


def test_writer_rejects_wrong_item_shape(tmp_path):
    with ShardWriter(tmp_path / "a.npy", tmp_path / "a.parquet", 2, (3, 5), "float32", PARAMS) as writer:
        with pytest.raises(ShardError, match="shape"):
            writer.write(0, np.zeros((5, 3)))


def test_writer_empty_shard(tmp_path):
    with ShardWriter(tmp_path / "e.npy", tmp_path / "e.parquet", 0, (3, 5), "float16", PARAMS) as writer:
        writer.finish(_index([]))
    assert verify_shard(tmp_path / "e.npy", tmp_path / "e.parquet", PARAMS) is None
    assert np.load(tmp_path / "e.npy").shape == (0, 3, 5)


def _three_shards(tmp_path):
    arrays = [_items(3, seed=1), _items(0), _items(2, seed=2)]
    ids = [[30, 10, 20], [], [50, 40]]
    for number, (array, shard_ids) in enumerate(zip(arrays, ids)):
        write_shard(tmp_path / f"shard-{number:04d}.npy", tmp_path / f"shard-{number:04d}.parquet", array, _index(shard_ids), PARAMS)
    return np.concatenate(arrays), [i for block in ids for i in block]


def test_store_batch_equals_rows(tmp_path):
    expected, ids = _three_shards(tmp_path)
    store = FeatureStore.from_dir(tmp_path)
    assert len(store) == 5
    assert store.index["shard"].tolist() == [0, 0, 0, 2, 2]
    assert store.index["row"].tolist() == [0, 1, 2, 0, 1]
    assert store.item_shape == (3, 5)
    positions = [4, 0, 3, 2, 0]
    np.testing.assert_array_equal(store.get_batch(positions), expected[positions])
    for position in range(5):
        np.testing.assert_array_equal(store.get(position), expected[position])


def test_store_position_of_ids(tmp_path):
    expected, ids = _three_shards(tmp_path)
    store = FeatureStore.from_dir(tmp_path)
    assert store.id_column == "caption_id"
    positions = store.position_of([40, 30, 20])
    assert positions.tolist() == [4, 0, 2]
    np.testing.assert_array_equal(store.get_batch(positions), expected[[4, 0, 2]])
    with pytest.raises(KeyError, match="99"):
        store.position_of([10, 99])


def test_store_batch_casts_dtype(tmp_path):
    expected, _ = _three_shards(tmp_path)
    batch = FeatureStore.from_dir(tmp_path).get_batch([1], dtype=np.float32)
    assert batch.dtype == np.float32
    np.testing.assert_array_equal(batch[0], expected[1].astype(np.float32))


def test_store_pickles_without_arrays(tmp_path):
    expected, _ = _three_shards(tmp_path)
    store = FeatureStore.from_dir(tmp_path)
    store.get(0)
    payload = pickle.dumps(store)
    assert len(payload) < 20_000  # the index only, not the memory maps
    clone = pickle.loads(payload)
    np.testing.assert_array_equal(clone.get_batch([3, 1]), expected[[3, 1]])


def test_store_rejects_duplicate_ids(tmp_path):
    write_shard(tmp_path / "shard-0000.npy", tmp_path / "shard-0000.parquet", _items(1), _index([7]), PARAMS)
    write_shard(tmp_path / "shard-0001.npy", tmp_path / "shard-0001.parquet", _items(1), _index([7]), PARAMS)
    with pytest.raises(ShardError, match="caption_id 7"):
        FeatureStore.from_dir(tmp_path)


def test_store_empty_folder(tmp_path):
    with pytest.raises(ShardError, match="no shard index"):
        FeatureStore.from_dir(tmp_path)
