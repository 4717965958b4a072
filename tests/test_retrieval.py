"""Retrieval recall: directions, several captions per image, ties, pools, chance levels."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vgsalign.training.retrieval import (
    chance_recall,
    pooled_recall,
    recall_from_embeddings,
    recall_from_similarity,
    retrieval_from_pairs,
    sample_pools,
)

# 15 captions (rows) of 3 images (columns), five captions per image:
# rows 0-4 describe image 0, rows 5-9 image 1, rows 10-14 image 2.
HAND_SIMILARITY = torch.tensor(
    [[0.9, 0.1, 0.0]] * 5
    + [[0.5, 0.4, 0.5]]  # caption 5: two other images score at least its own 0.4 (rank 2)
    + [[0.5, 0.4, 0.0]] * 4  # captions 6-9: image 0 scores above their own (rank 1)
    + [[0.0, 0.0, 0.3]] * 2  # captions 10-11: own image first
    + [[0.0, 0.0, 0.8]]  # caption 12: own image first, and image 2's best caption
    + [[0.0, 0.0, 0.3]]  # caption 13: own image first
    + [[0.6, 0.7, 0.3]]  # caption 14: two other images above its own (rank 2)
)
HAND_CAPTION_IMAGE = torch.tensor([0] * 5 + [1] * 5 + [2] * 5)


def test_hand_built_speech_to_image():
    recall = recall_from_similarity(HAND_SIMILARITY, HAND_CAPTION_IMAGE, ks=(1, 2, 3))
    # Rank 0: captions 0-4 and 10-13 (9 of 15). Rank 1: captions 6-9. Rank 2: captions 5 and 14.
    assert recall["r1_s2i"] == pytest.approx(9 / 15)
    assert recall["r2_s2i"] == pytest.approx(13 / 15)
    assert recall["r3_s2i"] == pytest.approx(1.0)


def test_hand_built_image_to_speech():
    recall = recall_from_similarity(HAND_SIMILARITY, HAND_CAPTION_IMAGE, ks=(1, 2))
    # Image 0: its captions score 0.9, the best other caption 0.6: rank 0.
    # Image 1: its best caption scores 0.4, caption 14 (of image 2) scores 0.7: rank 1.
    # Image 2: its best caption (12) scores 0.8, the best other caption 0.5: rank 0.
    # Taking only image 2's first caption (0.3) would give rank 1 instead.
    assert recall["r1_i2s"] == pytest.approx(2 / 3)
    assert recall["r2_i2s"] == pytest.approx(1.0)


def test_ties_count_against_query():
    constant = torch.ones(6, 3)
    recall = recall_from_similarity(constant, torch.tensor([0, 0, 1, 1, 2, 2]), ks=(1,))
    assert recall["r1_s2i"] == 0.0
    assert recall["r1_i2s"] == 0.0


def _brute_force(similarity: np.ndarray, caption_image: np.ndarray, k: int) -> tuple[float, float]:
    """Loop implementation of both directions for a similarity matrix [captions, images]."""
    captions, images = similarity.shape
    s2i_hits = 0
    for q in range(captions):
        own = similarity[q, caption_image[q]]
        better = sum(1 for g in range(images) if g != caption_image[q] and similarity[q, g] >= own)
        s2i_hits += better < k
    i2s_hits, with_captions = 0, 0
    for g in range(images):
        own_rows = [q for q in range(captions) if caption_image[q] == g]
        if not own_rows:
            continue
        with_captions += 1
        best = max(similarity[q, g] for q in own_rows)
        better = sum(1 for q in range(captions) if caption_image[q] != g and similarity[q, g] >= best)
        i2s_hits += better < k
    return s2i_hits / captions, i2s_hits / with_captions


def test_embeddings_match_brute_force():
    rng = np.random.default_rng(0)
    # 13 images: image 0 has 5 captions, images 1-10 one to three, images 11-12 none.
    caption_image = np.array([0] * 5 + [i for i in range(1, 11) for _ in range(1 + i % 3)])
    captions = rng.normal(size=(len(caption_image), 8)).astype(np.float32)
    images = rng.normal(size=(13, 8)).astype(np.float32)
    recall = recall_from_embeddings(
        torch.from_numpy(captions), torch.from_numpy(images), torch.from_numpy(caption_image), ks=(1, 5, 10), chunk=4
    )
    similarity = captions @ images.T
    for k in (1, 5, 10):
        s2i, i2s = _brute_force(similarity, caption_image, k)
        assert recall[f"r{k}_s2i"] == pytest.approx(s2i)
        assert recall[f"r{k}_i2s"] == pytest.approx(i2s)


def test_chance_levels():
    caption_image = np.array([0] * 5 + [1] * 2 + list(range(2, 20)))  # 20 images, 25 captions
    chance = chance_recall(caption_image, 10)
    assert chance["chance_r10_s2i"] == pytest.approx(10 / 20)
    per_image = []
    for own in [5, 2] + [1] * 18:
        per_image.append(1 - math.comb(25 - own, 10) / math.comb(25, 10))
    assert chance["chance_r10_i2s"] == pytest.approx(np.mean(per_image))


def test_sample_pools_seeded_without_replacement():
    pools = sample_pools(100, pools=4, pool_size=30, seed=7)
    assert len(pools) == 4
    for members in pools:
        assert len(members) == 30
        assert len(np.unique(members)) == 30
        assert members.max() < 100
    again = sample_pools(100, pools=4, pool_size=30, seed=7)
    assert all(np.array_equal(a, b) for a, b in zip(pools, again))
    assert not np.array_equal(pools[0], sample_pools(100, 4, 30, seed=8)[0])


def test_small_set_single_pool():
    pools = sample_pools(12, pools=100, pool_size=1000, seed=0)
    assert len(pools) == 1
    assert pools[0].tolist() == list(range(12))


def test_pooled_perfect_embeddings():
    images = torch.eye(40)  # one direction per image
    caption_image = torch.arange(40)
    pooled = pooled_recall(images.clone(), images, caption_image, pools=5, pool_size=20, seed=0)
    assert pooled["r10_s2i"] == 1.0
    assert pooled["r10_i2s"] == 1.0
    assert pooled["pool_size"] == 20
    assert pooled["pools"] == 5
    assert pooled["chance_r10"] == pytest.approx(0.5)
    assert pooled["chance_r10_s2i"] == pytest.approx(0.5)


def test_pooled_equals_full_when_small():
    rng = np.random.default_rng(1)
    caption_image = torch.from_numpy(np.repeat(np.arange(15), 2))  # 15 images, 2 captions each
    captions = torch.from_numpy(rng.normal(size=(30, 6)).astype(np.float32))
    images = torch.from_numpy(rng.normal(size=(15, 6)).astype(np.float32))
    pooled = pooled_recall(captions, images, caption_image, pools=10, pool_size=100, seed=0)
    full = recall_from_embeddings(captions, images, caption_image, ks=(10,))
    assert pooled["pools"] == 1
    assert pooled["pool_size"] == 30
    assert pooled["r10_s2i"] == pytest.approx(full["r10_s2i"])
    assert pooled["r10_i2s"] == pytest.approx(full["r10_i2s"])


def test_pairs_share_image_column():
    # Captions 0 and 2 share image 50; a per-pair image embedding is given for each caption.
    captions = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1]])
    pair_images = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    summary = retrieval_from_pairs(captions, pair_images, np.array([50, 60, 50]), pools=1, pool_size=10, seed=0)
    assert summary["full"]["images"] == 2
    assert summary["full"]["captions"] == 3
    assert summary["full"]["r1_s2i"] == 1.0
    assert summary["full"]["r1_i2s"] == 1.0
