"""Exact alignment (AS) and glancing (GS) scores computed at the tensor's own resolution.

The scores are defined on T upsampled to the image's 224 x 224 pixels and the
input's 512 frames. The upsampling is nearest-neighbour: every pixel and frame
of the big tensor copies one cell of the model's T [H, W, F]. Every sum over
pixels or frames of the big tensor is therefore a weighted sum over cells. A
cell's weight is the number of pixels or frames that copy it, or, for sums
restricted to a mask S_c or a word T_c, the number of mask pixels or word frames
among them. With, per pair,

    n[c]  pixels copied from spatial cell c (256 for 14 x 14),
    r[k]  frames copied from time cell k (8 for 64 cells, 4 for 128),
    m[c]  pixels of S_c in cell c,     |S_c| = sum_c m[c],
    w[k]  frames of T_c in cell k,     |T_c| = sum_k w[k],
    N     pixels of the image,         L = frames of the window,

the four scores on the upsampled tensor reduce to (T clipped at 0):

    AS_object = 1/|T_c| sum_k w[k] (sum_c m[c] T[c,k]) / (sum_c n[c] T[c,k])
    AS_word   = 1/|S_c| sum_c m[c] (sum_k w[k] T[c,k]) / (sum_k r[k] T[c,k])
    GS_object = (sum_c m[c] A[c]) / (sum_c n[c] A[c]),   A[c] = sum_k w[k] T[c,k]
    GS_word   = (sum_k w[k] a[k]) / (sum_k r[k] a[k]),   a[k] = sum_c m[c] T[c,k]

A zero denominator means an all-zero frame (AS_object), pixel (AS_word), A_c
(GS_object) or a (GS_word); the uniform distribution replaces it, which gives
|S_c| / N for the object scores and |T_c| / L for the word scores.

Conventions: ``paper`` is the equations as written. ``released_code`` divides
AS_word by all N pixels instead of |S_c| and rounds every per-pair score to 3
decimals, as the authors' released scoring code does; its mask (bilinear
resize, threshold >= 0.01) is chosen by the caller.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

CONVENTIONS = ("paper", "released_code")
METRICS = ("as_object", "as_word", "gs_object", "gs_word")
OBJECT_METRICS = ("as_object", "gs_object")
WORD_METRICS = ("as_word", "gs_word")
# Column of pairs/masks.parquet that contains each convention's 224 x 224 mask.
MASK_COLUMNS = {"paper": "mask_paper", "released_code": "mask_released"}
IMAGE_SIZE = (224, 224)
WINDOW = 512
# The released code rounds each per-pair score to this many decimals.
RELEASED_DECIMALS = 3


def check_convention(convention: str) -> None:
    if convention not in CONVENTIONS:
        raise ValueError(f"invalid scoring convention {convention!r}: use one of {', '.join(CONVENTIONS)}")


def nearest_source_index(out_size: int, in_size: int) -> np.ndarray:
    """Return, for each of ``out_size`` output positions, the input cell it copies.

    Nearest-neighbour upsampling: output position i copies cell floor(i * in / out),
    PyTorch's ``interpolate(mode="nearest")`` rule, which is ``np.repeat`` when
    ``in_size`` divides ``out_size``.
    """
    if in_size < 1 or out_size < in_size:
        raise ValueError(f"cannot upsample {in_size} cells to {out_size} positions")
    return (np.arange(out_size, dtype=np.int64) * in_size) // out_size


@dataclass(frozen=True)
class Geometry:
    """Mapping of the cells of T [H, W, F] onto the image's pixels and the input's frames."""

    grid_h: int
    grid_w: int
    frames: int
    image_h: int = IMAGE_SIZE[0]
    image_w: int = IMAGE_SIZE[1]
    window: int = WINDOW

    @property
    def cells(self) -> int:
        return self.grid_h * self.grid_w

    @property
    def pixels(self) -> int:
        return self.image_h * self.image_w

    @cached_property
    def row_cell(self) -> np.ndarray:
        """Cell row of each pixel row [image_h]."""
        return nearest_source_index(self.image_h, self.grid_h)

    @cached_property
    def col_cell(self) -> np.ndarray:
        """Cell column of each pixel column [image_w]."""
        return nearest_source_index(self.image_w, self.grid_w)

    @cached_property
    def frame_cell(self) -> np.ndarray:
        """Time cell of each input frame [window]."""
        return nearest_source_index(self.window, self.frames)

    @cached_property
    def cell_pixels(self) -> np.ndarray:
        """Pixels copied from each spatial cell, n[c], flattened in C order [H * W]."""
        rows = np.bincount(self.row_cell, minlength=self.grid_h)
        cols = np.bincount(self.col_cell, minlength=self.grid_w)
        return np.outer(rows, cols).reshape(-1).astype(np.float64)

    @cached_property
    def cell_frames(self) -> np.ndarray:
        """Frames copied from each time cell, r[k] [F]."""
        return np.bincount(self.frame_cell, minlength=self.frames).astype(np.float64)

    @cached_property
    def frame_cell_starts(self) -> np.ndarray:
        """First input frame of each time cell [F]; the cells cover the window in order."""
        return np.searchsorted(self.frame_cell, np.arange(self.frames))


def word_frame_counts(frame_start: np.ndarray, frame_end: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Return w[p, k], the frames of word p's half-open interval [start, end) in time cell k: [P, F]."""
    start = np.asarray(frame_start, dtype=np.int64)[:, None]  # [P, 1]
    end = np.asarray(frame_end, dtype=np.int64)[:, None]
    cell_start = geometry.frame_cell_starts[None, :]  # [1, F]
    cell_end = cell_start + geometry.cell_frames[None, :].astype(np.int64)
    overlap = np.minimum(end, cell_end) - np.maximum(start, cell_start)
    return np.clip(overlap, 0, None).astype(np.float64)


def _byte_block_sums(values: np.ndarray, block: int) -> np.ndarray:
    """Sum blocks of ``block`` consecutive 0/1 bytes along the last axis of a C-contiguous uint8 array.

    The bytes are read as uint64 words. Adding the block's words adds their bytes
    lane by lane without carries (each lane stays <= block / 8), and multiplying
    by 0x0101...01 then adds a word's eight lanes into its top byte. Both steps
    stay below 256 for ``block`` <= 248; ``block`` must be a multiple of 8.
    """
    words_per_block = block // 8
    words = values.view(np.uint64)  # [..., n / 8]
    lanes = words[..., 0::words_per_block].copy()  # [..., n / block]
    for offset in range(1, words_per_block):
        lanes += words[..., offset::words_per_block]
    return (lanes * np.uint64(0x0101010101010101)) >> np.uint64(56)


def mask_cell_counts(masks: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Return m[i, c], the pixels of mask i in spatial cell c: [M, H * W] float64.

    ``masks`` is [M, image_h, image_w] with values 0 or 1 (bool or uint8). Masks
    laid out with contiguous rows or columns, whose cells are a multiple of 8
    pixels wide along that axis, take a fast path that sums 8 bytes at a time.
    """
    masks = np.asarray(masks)
    if masks.ndim != 3 or masks.shape[1:] != (geometry.image_h, geometry.image_w):
        raise ValueError(
            f"masks must have shape [M, {geometry.image_h}, {geometry.image_w}], got {masks.shape}"
        )
    if len(masks) == 0:
        return np.zeros((0, geometry.cells), dtype=np.float64)
    if masks.dtype == bool:
        masks = masks.view(np.uint8)
    row_starts = np.searchsorted(geometry.row_cell, np.arange(geometry.grid_h))
    col_starts = np.searchsorted(geometry.col_cell, np.arange(geometry.grid_w))
    row_block, rows_uneven = divmod(geometry.image_h, geometry.grid_h)
    col_block, cols_uneven = divmod(geometry.image_w, geometry.grid_w)
    by_column = masks.transpose(0, 2, 1)  # [M, Wi, Hi]

    fast_rows = not rows_uneven and row_block % 8 == 0 and row_block <= 248
    fast_cols = not cols_uneven and col_block % 8 == 0 and col_block <= 248
    if masks.dtype == np.uint8 and fast_rows and by_column.flags.c_contiguous:
        per_column = _byte_block_sums(by_column, row_block)  # [M, Wi, H]
        counts = np.add.reduceat(per_column, col_starts, axis=1).transpose(0, 2, 1)  # [M, H, W]
    elif masks.dtype == np.uint8 and fast_cols and masks.flags.c_contiguous:
        per_row = _byte_block_sums(masks, col_block)  # [M, Hi, W]
        counts = np.add.reduceat(per_row, row_starts, axis=1)  # [M, H, W]
    else:
        per_row = np.add.reduceat(masks, row_starts, axis=1, dtype=np.int64)  # [M, H, Wi]
        counts = np.add.reduceat(per_row, col_starts, axis=2)  # [M, H, W]
    return np.asarray(counts, dtype=np.float64).reshape(len(masks), geometry.cells)


def rle_run_lengths(counts: Sequence[bytes | str]) -> tuple[np.ndarray, np.ndarray]:
    """Decode COCO's compressed RLE strings into run lengths, vectorised over all strings.

    Returns (run lengths of every mask, concatenated [R], runs per mask [M]).
    Runs alternate between 0 and 1 pixels, starting with 0, in column-major
    order. The string format is that of pycocotools' ``rleToString``. Each run
    is a signed integer written in groups of 5 bits, one character (value + 48)
    per group. Bit 0x20 marks that another group follows, and bit 0x10 of the
    last group gives the sign. From the fourth run on, the stored value is the
    difference to the run two places earlier.
    """
    encoded = [c.encode() if isinstance(c, str) else bytes(c) for c in counts]
    if any(len(text) == 0 for text in encoded):
        raise ValueError("an RLE counts string is empty; every mask needs at least one run")
    if not encoded:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    chars = np.frombuffer(b"".join(encoded), dtype=np.uint8).astype(np.int64) - 48  # [bytes]
    if (chars < 0).any() or (chars > 63).any():
        raise ValueError("an RLE counts string contains characters outside the COCO RLE alphabet")
    group_ends = (chars & 0x20) == 0
    string_ends = np.cumsum([len(text) for text in encoded])
    if not group_ends[string_ends - 1].all():
        raise ValueError("an RLE counts string ends inside a number; the string is truncated")

    group_starts = np.flatnonzero(np.concatenate([[True], group_ends[:-1]]))  # [R]
    group_of_char = np.cumsum(np.concatenate([[0], group_ends[:-1]]))  # [bytes]
    position = np.arange(len(chars)) - group_starts[group_of_char]  # index of the char in its group
    values = np.add.reduceat((chars & 0x1F) << (5 * position), group_starts)  # [R]
    last_chars = chars[group_ends]
    negative = (last_chars & 0x10) != 0
    values[negative] -= np.int64(1) << (5 * (position[group_ends][negative] + 1))

    runs_per_mask = np.diff(np.concatenate([[0], np.cumsum(group_ends)[string_ends - 1]]))  # [M]
    first_run = np.cumsum(runs_per_mask) - runs_per_mask  # [M]
    mask_of_run = np.repeat(np.arange(len(encoded)), runs_per_mask)  # [R]
    run_index = np.arange(len(values)) - first_run[mask_of_run]
    # Undo the differences: run m >= 3 adds run m - 2, so runs 2, 4, 6, ... and
    # runs 1, 3, 5, ... of each mask are two chains of running sums (run 0 is in neither).
    lengths = values.copy()
    for chain in ((run_index % 2 == 0) & (run_index >= 2), run_index % 2 == 1):
        running = np.cumsum(np.where(chain, values, 0))
        # running[first_run] is the sum over earlier masks only, because run 0 is in neither chain.
        lengths[chain] = (running - running[first_run][mask_of_run])[chain]
    if (lengths < 0).any():
        raise ValueError("an RLE counts string decodes to a negative run length; the string is corrupt")
    return lengths, runs_per_mask


def rle_cell_counts(counts: Sequence[bytes | str], geometry: Geometry) -> np.ndarray:
    """Return m[i, c], the pixels of RLE mask i in spatial cell c: [M, H * W] float64.

    Works on the runs without decoding the masks to pixels. Raises ValueError when
    a mask's runs do not add up to image_h x image_w pixels.
    """
    lengths, runs_per_mask = rle_run_lengths(counts)
    masks = len(runs_per_mask)
    if masks == 0:
        return np.zeros((0, geometry.cells), dtype=np.float64)
    height, width = geometry.image_h, geometry.image_w
    last_run = np.cumsum(runs_per_mask) - 1  # [M]
    first_run = last_run + 1 - runs_per_mask
    totals = np.add.reduceat(lengths, first_run)  # [M]
    if (totals != height * width).any():
        bad = int(np.flatnonzero(totals != height * width)[0])
        raise ValueError(
            f"RLE mask {bad} covers {int(totals[bad])} pixels, not {height} x {width} = {height * width}; "
            f"masks must be stored at {height} x {width}"
        )

    # Each run covers the flat column-major range [start, end) of its mask; odd runs are 1 pixels.
    mask_of_run = np.repeat(np.arange(masks), runs_per_mask)  # [R]
    cumulative = np.cumsum(lengths)
    before_mask = np.repeat(cumulative[last_run] - totals, runs_per_mask)
    ends = cumulative - before_mask
    starts = ends - lengths
    run_index = np.arange(len(lengths)) - first_run[mask_of_run]
    ones = (run_index % 2 == 1) & (lengths > 0)
    starts, ends, mask_of_run = starts[ones], ends[ones], mask_of_run[ones]

    # Split every run into pieces that lie in one pixel column: rows [top, bottom) of column ``column``.
    first_column = starts // height
    pieces = (ends - 1) // height - first_column + 1
    piece_run = np.repeat(np.arange(len(starts)), pieces)  # [S]
    column = first_column[piece_run] + np.arange(len(piece_run)) - np.repeat(np.cumsum(pieces) - pieces, pieces)
    top = np.maximum(starts[piece_run] - column * height, 0)
    bottom = np.minimum(ends[piece_run] - column * height, height)

    # A piece fills part of its first and last cell row and all cell rows between them.
    # Partial counts are added directly. Full rows are marked in a difference array along
    # the cell rows, which a cumulative sum turns into counts of full rows per cell.
    row_starts = np.searchsorted(geometry.row_cell, np.arange(geometry.grid_h))  # [H]
    row_stops = np.append(row_starts[1:], height)
    first_row = geometry.row_cell[top]
    last_row = geometry.row_cell[bottom - 1]
    one_row = first_row == last_row
    base = (mask_of_run[piece_run] * geometry.grid_w + geometry.col_cell[column]) * (geometry.grid_h + 1)
    size = masks * geometry.grid_w * (geometry.grid_h + 1)
    partial = np.bincount(base + first_row, weights=np.where(one_row, bottom, row_stops[first_row]) - top, minlength=size)
    partial += np.bincount(base + last_row, weights=np.where(one_row, 0, bottom - row_starts[last_row]), minlength=size)
    spanning = (~one_row).astype(np.float64)
    full = np.bincount(base + first_row + 1, weights=spanning, minlength=size)
    full -= np.bincount(base + last_row, weights=spanning, minlength=size)

    shape = (masks, geometry.grid_w, geometry.grid_h + 1)
    full_rows = np.cumsum(full.reshape(shape), axis=2)[:, :, :-1] * (row_stops - row_starts)  # [M, W, H]
    cells = partial.reshape(shape)[:, :, :-1] + full_rows
    return cells.transpose(0, 2, 1).reshape(masks, geometry.cells)


_FLOAT16_CLIPPED = np.maximum(np.arange(2**16, dtype=np.uint16).view(np.float16).astype(np.float64), 0.0)


@dataclass(frozen=True)
class PreparedTensors:
    """A batch of T with negatives clipped and the per-frame and per-pixel totals of the big tensor."""

    values: np.ndarray  # [B, C, F] float64, C = H * W cells in C order
    frame_totals: np.ndarray  # [B, F] sum of T over all pixels at each time cell
    pixel_totals: np.ndarray  # [B, C] sum of T over all frames at each spatial cell


def prepare_tensors(tensors: np.ndarray, geometry: Geometry) -> PreparedTensors:
    """Clip T [B, H, W, F] at 0 in float64 and compute its totals over pixels and over frames."""
    tensors = np.asarray(tensors)
    expected = (geometry.grid_h, geometry.grid_w, geometry.frames)
    if tensors.ndim != 4 or tensors.shape[1:] != expected:
        raise ValueError(f"tensors must have shape [B, {', '.join(map(str, expected))}], got {tensors.shape}")
    cells = tensors.reshape(len(tensors), geometry.cells, geometry.frames)  # [B, C, F]
    if cells.dtype == np.float16:
        # Looking up all 65,536 float16 bit patterns in a table (clipped at 0) took half the time of
        # astype(float64) with NumPy 2.4 (benchmarks/bench_scoring.py machine).
        values = _FLOAT16_CLIPPED[np.ascontiguousarray(cells).view(np.uint16)]
    else:
        values = np.maximum(cells.astype(np.float64, copy=False), 0.0)
    frame_totals = np.matmul(geometry.cell_pixels, values)  # [C] @ [B, C, F] -> [B, F]
    pixel_totals = values @ geometry.cell_frames  # [B, C]
    return PreparedTensors(values=values, frame_totals=frame_totals, pixel_totals=pixel_totals)


def mask_attention(prepared: PreparedTensors, row_masks: np.ndarray) -> np.ndarray:
    """Return a[b, j, k] = sum_c m_j[c] T_b[c, k], the attention on K masks per tensor: [B, K, F].

    ``row_masks`` [B, K, C] contains K mask count vectors per tensor of the batch
    (zero rows for padding), so no tensor is copied per pair.
    """
    return np.matmul(row_masks, prepared.values)  # [B, K, C] @ [B, C, F]


def word_attention(prepared: PreparedTensors, tensor_index: np.ndarray, word_counts: np.ndarray) -> np.ndarray:
    """Return A[p, c] = sum_k w_p[k] T[c, k], the attention map during each word: [P, C].

    Only the time cells that a word covers are read, because each word covers a
    contiguous range of a few cells.
    """
    tensor_index = np.asarray(tensor_index, dtype=np.int64)
    covered = word_counts > 0  # [P, F]
    first = covered.argmax(axis=1)
    last = word_counts.shape[1] - 1 - covered[:, ::-1].argmax(axis=1)
    spans = np.where(covered.any(axis=1), last - first + 1, 0)  # [P]
    pair_of_cell = np.repeat(np.arange(len(spans)), spans)  # [S]
    cell = first[pair_of_cell] + np.arange(len(pair_of_cell)) - np.repeat(np.cumsum(spans) - spans, spans)
    columns = prepared.values[tensor_index[pair_of_cell], :, cell]  # [S, C]
    weighted = columns * word_counts[pair_of_cell, cell][:, None]
    attention = np.zeros((len(spans), prepared.values.shape[1]))
    covering = spans > 0
    if covering.any():
        # The cells of one pair are consecutive in ``weighted``, so reduceat sums them per pair.
        attention[covering] = np.add.reduceat(weighted, (np.cumsum(spans) - spans)[covering], axis=0)
    return attention


def scores_from_attention(
    object_attention: np.ndarray,
    word_attention_map: np.ndarray,
    frame_totals: np.ndarray,
    pixel_totals: np.ndarray,
    mask_counts: np.ndarray,
    word_counts: np.ndarray,
    geometry: Geometry,
    convention: str,
    metrics: Sequence[str] = METRICS,
) -> dict[str, np.ndarray]:
    """Compute the scores of P pairs from their attention sums (the closed forms in the module docstring).

    Inputs per pair: a [P, F] is the attention on the mask per time cell, and
    A [P, C] the attention per cell during the word. The tensor's totals over
    pixels [P, F] and over frames [P, C] come next, then m [P, C] and w [P, F].
    Returns {metric: [P]}.

    Raises ValueError for an empty word interval, and for an empty mask when
    the ``paper`` convention's AS_word (divided by |S_c|) is requested,
    because those scores are undefined. An empty mask is valid for the other scores.
    """
    check_convention(convention)
    unknown = set(metrics) - set(METRICS)
    if unknown:
        raise ValueError(f"unknown metrics {sorted(unknown)}: use {', '.join(METRICS)}")
    pixels_in_mask = mask_counts.sum(axis=1)  # |S_c| [P]
    frames_in_word = word_counts.sum(axis=1)  # |T_c| [P]
    if (frames_in_word <= 0).any():
        raise ValueError(f"{int((frames_in_word <= 0).sum())} pairs have an empty word interval; skip them first")
    if convention == "paper" and "as_word" in metrics and (pixels_in_mask <= 0).any():
        raise ValueError(f"{int((pixels_in_mask <= 0).sum())} pairs have an empty mask; skip them first")
    uniform_object = pixels_in_mask / geometry.pixels  # |S_c| / N  [P]
    uniform_word = frames_in_word / geometry.window  # |T_c| / L  [P]

    scores: dict[str, np.ndarray] = {}
    with np.errstate(divide="ignore", invalid="ignore"):
        if "as_object" in metrics:
            share = np.where(frame_totals > 0, object_attention / frame_totals, uniform_object[:, None])  # [P, F]
            scores["as_object"] = (word_counts * share).sum(axis=1) / frames_in_word
        if "as_word" in metrics:
            share = np.where(pixel_totals > 0, word_attention_map / pixel_totals, uniform_word[:, None])  # [P, C]
            divisor = pixels_in_mask if convention == "paper" else float(geometry.pixels)
            scores["as_word"] = (mask_counts * share).sum(axis=1) / divisor
        if "gs_object" in metrics:
            total = word_attention_map @ geometry.cell_pixels  # [P]
            inside = (mask_counts * word_attention_map).sum(axis=1)
            scores["gs_object"] = np.where(total > 0, inside / total, uniform_object)
        if "gs_word" in metrics:
            total = object_attention @ geometry.cell_frames  # [P]
            inside = (word_counts * object_attention).sum(axis=1)
            scores["gs_word"] = np.where(total > 0, inside / total, uniform_word)

    if convention == "released_code":
        scores = {metric: np.round(value, RELEASED_DECIMALS) for metric, value in scores.items()}
    return {metric: scores[metric] for metric in metrics}


def score_pairs(
    prepared: PreparedTensors,
    tensor_index: np.ndarray,
    mask_counts: np.ndarray,
    word_counts: np.ndarray,
    geometry: Geometry,
    convention: str,
    metrics: Sequence[str] = METRICS,
) -> dict[str, np.ndarray]:
    """Score P word-object pairs against their tensors; return {metric: [P] float64}.

    ``tensor_index`` [P] picks each pair's tensor from ``prepared``; ``mask_counts``
    [P, C] and ``word_counts`` [P, F] come from :func:`mask_cell_counts` (or
    :func:`rle_cell_counts`) and :func:`word_frame_counts`. Errors as in
    :func:`scores_from_attention`.
    """
    tensor_index = np.asarray(tensor_index, dtype=np.int64)
    mask_counts = np.asarray(mask_counts, dtype=np.float64)
    word_counts = np.asarray(word_counts, dtype=np.float64)
    identity = len(tensor_index) == len(prepared.values) and np.array_equal(tensor_index, np.arange(len(tensor_index)))
    values = prepared.values if identity else prepared.values[tensor_index]  # [P, C, F], no copy for pair p = tensor p
    object_attention = np.matmul(mask_counts[:, None, :], values)[:, 0, :]  # [P, F]
    return scores_from_attention(
        object_attention,
        word_attention(prepared, tensor_index, word_counts),
        prepared.frame_totals[tensor_index],
        prepared.pixel_totals[tensor_index],
        mask_counts,
        word_counts,
        geometry,
        convention,
        metrics,
    )


def score_tensors(
    tensors: np.ndarray,
    masks: np.ndarray,
    frame_start: np.ndarray,
    frame_end: np.ndarray,
    convention: str,
    image_size: tuple[int, int] = IMAGE_SIZE,
    window: int = WINDOW,
) -> dict[str, np.ndarray]:
    """Score P pairs given one tensor [P, H, W, F], one full-size mask [P, Hi, Wi] and one word per pair.

    A convenience wrapper around :func:`score_pairs` for small inputs and tests.
    """
    tensors = np.asarray(tensors)
    geometry = Geometry(*tensors.shape[1:], image_h=image_size[0], image_w=image_size[1], window=window)
    prepared = prepare_tensors(tensors, geometry)
    return score_pairs(
        prepared,
        np.arange(len(tensors)),
        mask_cell_counts(masks, geometry),
        word_frame_counts(frame_start, frame_end, geometry),
        geometry,
        convention,
    )
