"""Cross-modal retrieval recall: full-set R@k and the authors' pooled recall@10.

Rows are captions and columns are images throughout. ``caption_image[q]`` is the
column of caption ``q``'s image, so an image may have several captions.

- speech to image (``s2i``): each caption ranks every image; a hit at k is its
  own image among the top k.
- image to speech (``i2s``): each image ranks every caption; a hit at k is any
  of the image's captions among the top k.

Ties count against the query: a candidate that scores the same as the correct
item ranks above it, so a constant similarity gets recall 0, never 1.
Similarities are dot products of the retrieval embeddings
(``VGSModel.pool_audio`` and ``pool_image``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

DEFAULT_KS = (1, 5, 10)


def speech_to_image_ranks(similarity: torch.Tensor, caption_image: torch.Tensor) -> torch.Tensor:
    """Return, for each caption row of ``similarity`` ``[Q, G]``, how many other images score at least as high.

    A rank of 0 means the caption's image is first. Returns ``[Q]`` int64.
    """
    rows = torch.arange(similarity.shape[0], device=similarity.device)
    correct = similarity[rows, caption_image]  # [Q]
    return (similarity >= correct[:, None]).sum(dim=1) - 1


def image_to_speech_ranks(
    similarity_t: torch.Tensor, image_columns: torch.Tensor, caption_image: torch.Tensor
) -> torch.Tensor:
    """Return, for each image row of ``similarity_t`` ``[G', Q]``, the rank of its best caption.

    ``image_columns`` ``[G']`` are the rows' image columns and ``caption_image`` ``[Q]``
    the image column of every caption. The rank counts the other images' captions
    that score at least as high as the image's best-scoring caption. An image
    without captions gets rank ``Q``, so it never counts as a hit.
    """
    is_own = caption_image[None, :] == image_columns[:, None]  # [G', Q]
    best_own = similarity_t.masked_fill(~is_own, float("-inf")).amax(dim=1)  # [G']
    ranks = ((similarity_t >= best_own[:, None]) & ~is_own).sum(dim=1)  # [G']
    has_caption = is_own.any(dim=1)
    return torch.where(has_caption, ranks, torch.full_like(ranks, similarity_t.shape[1]))


def recall_from_similarity(
    similarity: torch.Tensor, caption_image: torch.Tensor, ks: Sequence[int] = DEFAULT_KS
) -> dict[str, float]:
    """Return ``r{k}_s2i`` and ``r{k}_i2s`` for a full similarity matrix ``[Q, G]``.

    Images without any caption are left out of the image-to-speech mean.
    """
    caption_image = caption_image.to(similarity.device)
    s2i = speech_to_image_ranks(similarity, caption_image)
    columns = torch.unique(caption_image)
    i2s = image_to_speech_ranks(similarity.T[columns], columns, caption_image)
    return _recalls(s2i, i2s, ks)


def recall_from_embeddings(
    caption_embeddings: torch.Tensor,
    image_embeddings: torch.Tensor,
    caption_image: torch.Tensor,
    ks: Sequence[int] = DEFAULT_KS,
    chunk: int = 2048,
) -> dict[str, float]:
    """Return full-set ``r{k}_s2i`` and ``r{k}_i2s`` from embeddings ``[Q, D]`` and ``[G, D]``.

    The similarity matrix is computed ``chunk`` rows at a time, so memory stays at
    ``chunk * max(Q, G)`` floats. Images without any caption are left out.
    """
    caption_image = caption_image.to(caption_embeddings.device)
    s2i_parts = []
    for start in range(0, caption_embeddings.shape[0], chunk):
        rows = slice(start, start + chunk)
        similarity = caption_embeddings[rows] @ image_embeddings.T  # [c, G]
        s2i_parts.append(speech_to_image_ranks(similarity, caption_image[rows]))
    columns = torch.unique(caption_image)
    i2s_parts = []
    for start in range(0, columns.shape[0], chunk):
        block = columns[start : start + chunk]
        similarity_t = image_embeddings[block] @ caption_embeddings.T  # [g, Q]
        i2s_parts.append(image_to_speech_ranks(similarity_t, block, caption_image))
    return _recalls(torch.cat(s2i_parts), torch.cat(i2s_parts), ks)


def _recalls(s2i_ranks: torch.Tensor, i2s_ranks: torch.Tensor, ks: Sequence[int]) -> dict[str, float]:
    result = {}
    for direction, ranks in (("s2i", s2i_ranks), ("i2s", i2s_ranks)):
        for k in ks:
            result[f"r{k}_{direction}"] = float((ranks < k).double().mean())
    return result


def chance_recall(caption_image: np.ndarray, k: int) -> dict[str, float]:
    """Return the expected recall@k of random scores for one retrieval set.

    Speech to image: k / images. Image to speech: for an image with m of the C
    captions, 1 - C(C - m, k) / C(C, k), averaged over images.
    """
    caption_image = np.asarray(caption_image)
    images, counts = np.unique(caption_image, return_counts=True)
    captions = caption_image.shape[0]
    s2i = min(1.0, k / images.shape[0])
    i2s = float(np.mean([_hit_probability(captions, int(m), k) for m in counts]))
    return {f"chance_r{k}_s2i": s2i, f"chance_r{k}_i2s": i2s}


def _hit_probability(total: int, own: int, k: int) -> float:
    """Return the probability that k random draws out of ``total`` include one of ``own`` items."""
    if k >= total:
        return 1.0
    # C(total - own, k) / C(total, k) as a product, to stay in floating point.
    miss = 1.0
    for i in range(k):
        miss *= max(0, total - own - i) / (total - i)
    return 1.0 - miss


def sample_pools(pairs: int, pools: int, pool_size: int, seed: int) -> list[np.ndarray]:
    """Draw ``pools`` sets of ``pool_size`` pair indices without replacement (seeded).

    With ``pairs <= pool_size`` one pool contains every pair, since every draw
    would be that same set.
    """
    if pairs <= pool_size:
        return [np.arange(pairs)]
    rng = np.random.default_rng(seed)
    return [np.sort(rng.choice(pairs, size=pool_size, replace=False)) for _ in range(pools)]


def pooled_recall(
    caption_embeddings: torch.Tensor,
    image_embeddings: torch.Tensor,
    caption_image: torch.Tensor,
    pools: int,
    pool_size: int,
    seed: int,
    k: int = 10,
) -> dict[str, float]:
    """Return recall@k averaged over seeded pools of pairs, the authors' protocol.

    Each pool is a set of (caption, image) pairs. Inside a pool the captions
    retrieve among the pool's distinct images and the other way round, with the
    any-caption rule of :func:`recall_from_similarity`. Returns ``r{k}_s2i``,
    ``r{k}_i2s``, the pool size and count used, the nominal chance level
    ``chance_r{k}`` (k / pool size) and the exact chance levels of both directions,
    ``chance_r{k}_s2i`` and ``chance_r{k}_i2s``. The nominal level is exact only when
    every image of a pool has one caption. With several captions per image a pool
    has fewer distinct images, so the exact levels are higher.
    """
    caption_image_np = caption_image.cpu().numpy()
    chosen_pools = sample_pools(caption_embeddings.shape[0], pools, pool_size, seed)
    totals: dict[str, float] = {}
    for members in chosen_pools:
        columns, local_image = np.unique(caption_image_np[members], return_inverse=True)
        similarity = caption_embeddings[members] @ image_embeddings[columns].T  # [n, g]
        local = torch.as_tensor(local_image, device=similarity.device)
        scores = recall_from_similarity(similarity, local, ks=(k,))
        scores.update(chance_recall(local_image, k))
        for key, value in scores.items():
            totals[key] = totals.get(key, 0.0) + value
    result = {key: value / len(chosen_pools) for key, value in totals.items()}
    used_size = int(chosen_pools[0].shape[0])
    result["pool_size"] = used_size
    result["pools"] = len(chosen_pools)
    result[f"chance_r{k}"] = min(1.0, k / used_size) if used_size else math.nan
    return result


def retrieval_summary(
    caption_embeddings: torch.Tensor,
    image_embeddings: torch.Tensor,
    caption_image: torch.Tensor,
    pools: int,
    pool_size: int,
    seed: int,
    ks: Sequence[int] = DEFAULT_KS,
) -> dict[str, dict[str, float]]:
    """Return the pooled recall@10 (``pooled``) and the full-set R@k with chance levels (``full``).

    ``caption_embeddings`` ``[Q, D]``, ``image_embeddings`` ``[G, D]`` and
    ``caption_image`` ``[Q]`` (column of each caption's image) describe one split.
    """
    pooled = pooled_recall(caption_embeddings, image_embeddings, caption_image, pools, pool_size, seed, k=10)
    full = recall_from_embeddings(caption_embeddings, image_embeddings, caption_image, ks=ks)
    full.update(chance_recall(caption_image.cpu().numpy(), 10))
    full["captions"] = int(caption_embeddings.shape[0])
    full["images"] = int(torch.unique(caption_image).shape[0])
    return {"pooled": pooled, "full": full}


def retrieval_from_pairs(
    caption_embeddings: torch.Tensor,
    pair_image_embeddings: torch.Tensor,
    image_ids: np.ndarray,
    pools: int,
    pool_size: int,
    seed: int,
) -> dict[str, dict[str, float]]:
    """Return :func:`retrieval_summary` for per-pair embeddings ``[Q, D]`` and ``[Q, D]``.

    Pairs that share an image id share one image column; the first pair's image
    embedding serves, which is exact for a model in eval mode.
    """
    _, first, caption_image = np.unique(np.asarray(image_ids), return_index=True, return_inverse=True)
    image_embeddings = pair_image_embeddings[torch.from_numpy(first)]  # [G, D]
    return retrieval_summary(
        caption_embeddings, image_embeddings, torch.from_numpy(caption_image.reshape(-1)), pools, pool_size, seed
    )
