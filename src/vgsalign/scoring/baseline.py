"""Random baseline: T drawn uniformly from [0, 1], one tensor per image-caption pair, seeded.

Khorrami and Raesaenen (Interspeech 2021, section 4) assign uniform [0, 1]
values to T, which they define per pixel and 10 ms frame, so at the full
224 x 224 x 512 resolution. Here T is drawn at the model's resolution
(14 x 14 x 64 by default) and upsampled like a model's T. The expected score of
a pair is the same at either resolution:

- The cells of a uniform T are independent and identically distributed, so
  every cell has the same expected share of any normalised sum. With equal cell
  sizes (16 x 16 pixels, 8 frames) the expected share of a mask is its area
  fraction |S_c| / N. That holds per frame (AS_object) and for the word's
  summed attention map (GS_object).
- Likewise the expected share of a word is |T_c| / 512, per pixel (AS_word with
  the divisor |S_c|) and for the mask's summed attention curve (GS_word). The
  released code's AS_word, divided by all N pixels, has expectation
  (|S_c| / N) * (|T_c| / 512).
- Only the spread differs: a full-resolution T averages 26 million independent
  values, so its per-pair scores sit almost exactly on the expectation, while a
  14 x 14 x 64 T gives per-pair scores that scatter around it. Category means,
  totals and Fig. 3's fits are therefore unbiased at either resolution, but the
  per-pair scatter and the bootstrap intervals are wider here.

NOTE: on grids whose cells cover unequal pixel counts (224 not divisible by the
grid) the expectations above hold only approximately. The default grid divides
evenly. The released code's per-pair rounding to 3 decimals adds at most 0.0005 per pair.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from vgsalign.scoring.engine import Geometry
from vgsalign.tensors import TensorBatch

BASELINE_GRID = (14, 14)
BASELINE_FRAMES = 64
# Second word of the seed sequence, so the baseline's random stream differs from
# the bootstrap's for the same run seed.
BASELINE_STREAM = 1


def baseline_geometry() -> Geometry:
    return Geometry(BASELINE_GRID[0], BASELINE_GRID[1], BASELINE_FRAMES)


def random_tensor_batches(
    image_ids: np.ndarray,
    caption_ids: np.ndarray,
    geometry: Geometry,
    seed: int,
    batch_size: int = 256,
) -> Iterator[dict[str, TensorBatch]]:
    """Yield uniform [0, 1) tensors [B, H, W, F] for the given pairs, as the "raw" kind.

    The pairs are taken in the given order and the values depend only on
    ``seed``, that order and the geometry (not on ``batch_size``), because
    NumPy's generator fills consecutive draws from one stream.
    """
    image_ids = np.asarray(image_ids, dtype=np.int64)
    caption_ids = np.asarray(caption_ids, dtype=np.int64)
    rng = np.random.default_rng([seed, BASELINE_STREAM])
    shape = (geometry.grid_h, geometry.grid_w, geometry.frames)
    for first in range(0, len(image_ids), batch_size):
        last = min(first + batch_size, len(image_ids))
        tensors = rng.random((last - first, *shape), dtype=np.float32)  # [B, H, W, F]
        yield {
            "raw": TensorBatch(
                kind="raw",
                image_ids=image_ids[first:last],
                caption_ids=caption_ids[first:last],
                rows=np.arange(first, last),
                tensors=tensors,
            )
        }
