"""Reference scores: upsample T to every pixel and frame, then apply the equations literally.

This is the definition the fast engine (:mod:`vgsalign.scoring.engine`) is tested
against. It is slow (a 224 x 224 x 512 float64 tensor is 205 MB per pair) and
shares no code with the engine.
"""

from __future__ import annotations

import numpy as np
import torch

from vgsalign.scoring.engine import check_convention

RELEASED_DECIMALS = 3


def upsample_nearest(tensor: np.ndarray, size: tuple[int, int, int]) -> np.ndarray:
    """Upsample T [H, W, F] to ``size`` (image_h, image_w, window) by repeating cells.

    Uses ``np.repeat`` when each size is a multiple of the cell count, and
    PyTorch's nearest-neighbour interpolation otherwise.
    """
    tensor = np.asarray(tensor, dtype=np.float64)
    if all(out % cells == 0 for out, cells in zip(size, tensor.shape)):
        big = tensor
        for axis, (out, cells) in enumerate(zip(size, tensor.shape)):
            big = np.repeat(big, out // cells, axis=axis)
        return big
    source = torch.from_numpy(tensor)[None, None]  # [1, 1, H, W, F]
    big = torch.nn.functional.interpolate(source, size=size, mode="nearest")
    return big[0, 0].numpy()


def reference_scores(
    tensor: np.ndarray,
    mask: np.ndarray,
    frame_start: int,
    frame_end: int,
    convention: str,
    window: int = 512,
) -> dict[str, float]:
    """Return AS_object, AS_word, GS_object and GS_word of one pair.

    ``tensor`` is T [H, W, F] covering the whole image and window. ``mask`` is the
    object's pixel set S_c [image_h, image_w] (bool), and the word's frames T_c
    are ``frame_start <= t < frame_end``. A zero normaliser (a frame, pixel, A_c
    or a that sums to 0) is replaced by the uniform distribution.
    """
    check_convention(convention)
    mask = np.asarray(mask, dtype=bool)
    big = upsample_nearest(tensor, (*mask.shape, window))  # [image_h, image_w, window]
    big = np.maximum(big, 0.0)
    pixels = mask.shape[0] * mask.shape[1]
    word = np.zeros(window, dtype=bool)
    word[frame_start:frame_end] = True
    frames_in_word = int(word.sum())
    pixels_in_mask = int(mask.sum())

    # AS_object: T' = T / (sum over all pixels) at each frame, summed over S_c x T_c, divided by |T_c|.
    frame_sums = big.sum(axis=(0, 1))  # [window]
    word_big = big[:, :, word]  # [image_h, image_w, |T_c|]
    with np.errstate(divide="ignore", invalid="ignore"):
        normalised = np.where(frame_sums[word] > 0, word_big / frame_sums[word], 1.0 / pixels)
    as_object = normalised[mask].sum() / frames_in_word

    # AS_word: T'' = T / (sum over all frames) at each pixel, summed over S_c x T_c, divided by |S_c|.
    pixel_sums = big.sum(axis=2)  # [image_h, image_w]
    with np.errstate(divide="ignore", invalid="ignore"):
        normalised = np.where(pixel_sums[:, :, None] > 0, word_big / pixel_sums[:, :, None], 1.0 / window)
    divisor = pixels_in_mask if convention == "paper" else pixels
    as_word = normalised[mask].sum() / divisor

    # GS_object: A_c = sum of T over T_c, normalised over the image, summed over S_c.
    attention_map = word_big.sum(axis=2)  # [image_h, image_w]
    total = attention_map.sum()
    attention_map = attention_map / total if total > 0 else np.full(mask.shape, 1.0 / pixels)
    gs_object = attention_map[mask].sum()

    # GS_word: a = sum of T over S_c, normalised over the window, summed over T_c.
    object_curve = big[mask].sum(axis=0)  # [window]
    total = object_curve.sum()
    object_curve = object_curve / total if total > 0 else np.full(window, 1.0 / window)
    gs_word = object_curve[word].sum()

    scores = {
        "as_object": float(as_object),
        "as_word": float(as_word),
        "gs_object": float(gs_object),
        "gs_word": float(gs_word),
    }
    if convention == "released_code":
        scores = {name: round(value, RELEASED_DECIMALS) for name, value in scores.items()}
    return scores
