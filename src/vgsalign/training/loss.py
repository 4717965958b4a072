"""Triplet loss over (matching pair, impostor image, impostor caption) within a batch.

For anchor pair ``i`` with similarity ``s(a_i, v_i)``, one impostor image ``v_j``
and one impostor caption ``a_k`` are drawn from the same batch, and

    loss_i = max(0, M - s(a_i, v_i) + s(a_i, v_j)) + max(0, M - s(a_i, v_i) + s(a_k, v_i))

with margin ``M``; the batch loss is the mean over anchors. The batch is encoded
once and only the similarity head runs on the re-paired rows.
"""

from __future__ import annotations

import torch

from vgsalign.models.encoders import VGSModel


def sample_impostors(groups: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Draw one impostor index per row, uniformly among rows of another group.

    ``groups`` ``[B]`` gives each row's image id, so that a caption of the same
    image is never its impostor. When every row of the batch shows the same
    image, any other row may be drawn. The impostor is never the row itself. Returns ``[B]`` int64.
    """
    size = groups.shape[0]
    if size < 2:
        raise ValueError(f"a batch of {size} pair cannot give impostors; use batches of at least 2 pairs")
    groups = groups.cpu()
    other_group = groups[None, :] != groups[:, None]  # [B, B]
    other_row = ~torch.eye(size, dtype=torch.bool)  # [B, B]
    has_other_group = other_group.any(dim=1, keepdim=True)  # [B, 1]
    allowed = torch.where(has_other_group, other_group, other_row)  # [B, B]
    # The argmax of uniform noise over the allowed entries is a uniform draw among them.
    noise = torch.rand(size, size, generator=generator)  # [B, B]
    noise = noise.masked_fill(~allowed, -1.0)
    return noise.argmax(dim=1)


def triplet_loss(
    positive: torch.Tensor, impostor_image: torch.Tensor, impostor_caption: torch.Tensor, margin: float
) -> torch.Tensor:
    """Return the mean triplet hinge loss from three similarity vectors ``[B]``."""
    image_term = torch.relu(margin - positive + impostor_image)  # [B]
    caption_term = torch.relu(margin - positive + impostor_caption)  # [B]
    return (image_term + caption_term).mean()


def batch_triplet_loss(
    model: VGSModel,
    audio: torch.Tensor,
    image: torch.Tensor,
    image_ids: torch.Tensor,
    generator: torch.Generator,
    margin: float,
) -> torch.Tensor:
    """Return the triplet loss of an encoded batch (A ``[B, F, D]``, I ``[B, P, D]``).

    Impostor images and impostor captions are drawn independently with ``generator``.
    """
    impostor_images = sample_impostors(image_ids, generator).to(audio.device)  # [B]
    impostor_captions = sample_impostors(image_ids, generator).to(audio.device)  # [B]
    positive = model.similarity(audio, image)  # [B]
    against_image = model.similarity(audio, image[impostor_images])  # [B]
    against_caption = model.similarity(audio[impostor_captions], image)  # [B]
    return triplet_loss(positive, against_image, against_caption, margin)
