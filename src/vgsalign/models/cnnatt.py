"""CNNATT, the cross-modal attention model of Khorrami and Räsänen (Interspeech 2021).

The scores ``S = A I^T`` (``[B, F, P]``, frames by image positions) are the tensor
T. Two attention blocks read them:

- image attention for each frame: a softmax over the P positions and, in
  parallel, ``sigmoid(Linear(P, P)(S))``. Each weighting pools the image vectors
  per frame. The two pooled sequences and A are averaged over time and
  concatenated into the caption embedding (``3 D``).
- audio attention for each position: a softmax over the F frames and
  ``sigmoid(Linear(F, F)(S^T))``. Each pools the audio vectors per position.
  The two pooled sets and I are averaged over positions and concatenated
  into the image embedding (``3 D``).

Both embeddings are L2-normalised and the similarity is their dot product.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vgsalign.models.encoders import ImageBranch, SpeechEncoder, VGSModel


class CNNATT(VGSModel):
    """Speech encoder and image branch joined by softmax and sigmoid attention on T."""

    alignment_kinds = ("raw", "softmax_space", "softmax_time")

    def __init__(self, variant: str, speech: SpeechEncoder, image: ImageBranch) -> None:
        super().__init__(variant, speech, image)
        positions = self.grid[0] * self.grid[1]
        self.image_attention = nn.Linear(positions, positions)
        self.audio_attention = nn.Linear(self.t_frames, self.t_frames)

    def scores(self, audio: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """Return S = A I^T, ``[B, F, P]``."""
        return torch.bmm(audio, image.transpose(1, 2))

    def embeddings(self, audio: torch.Tensor, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the L2-normalised caption and image embeddings of paired rows, ``[B, 3 D]`` each."""
        scores = self.scores(audio, image)  # [B, F, P]

        # Image attention for each frame, pooling image positions.
        space_softmax = torch.softmax(scores, dim=2)  # [B, F, P]
        space_sigmoid = torch.sigmoid(self.image_attention(scores))  # [B, F, P]
        image_by_softmax = torch.bmm(space_softmax, image)  # [B, F, D]
        image_by_sigmoid = torch.bmm(space_sigmoid, image)  # [B, F, D]
        caption_embedding = torch.cat(
            [audio.mean(dim=1), image_by_softmax.mean(dim=1), image_by_sigmoid.mean(dim=1)], dim=1
        )  # [B, 3D]

        # Audio attention for each image position, pooling frames.
        scores_t = scores.transpose(1, 2)  # [B, P, F]
        time_softmax = torch.softmax(scores_t, dim=2)  # [B, P, F]
        time_sigmoid = torch.sigmoid(self.audio_attention(scores_t))  # [B, P, F]
        audio_by_softmax = torch.bmm(time_softmax, audio)  # [B, P, D]
        audio_by_sigmoid = torch.bmm(time_sigmoid, audio)  # [B, P, D]
        image_embedding = torch.cat(
            [image.mean(dim=1), audio_by_softmax.mean(dim=1), audio_by_sigmoid.mean(dim=1)], dim=1
        )  # [B, 3D]

        return F.normalize(caption_embedding, dim=1), F.normalize(image_embedding, dim=1)

    def similarity(self, audio: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        caption_embedding, image_embedding = self.embeddings(audio, image)
        return (caption_embedding * image_embedding).sum(dim=1)  # [B]

    def alignment(self, audio: torch.Tensor, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return T (``raw``) and T after the attention softmaxes, each ``[B, H, W, F]``.

        ``softmax_space`` sums to 1 over the image at each frame (the object task),
        ``softmax_time`` sums to 1 over frames at each position (the word task).
        """
        raw = self.raw_alignment(audio, image)  # [B, H, W, F]
        flat = raw.flatten(1, 2)  # [B, P, F]
        return {
            "raw": raw,
            "softmax_space": torch.softmax(flat, dim=1).unflatten(1, self.grid),
            "softmax_time": torch.softmax(flat, dim=2).unflatten(1, self.grid),
        }
