"""CNN0, the DAVEnet-like model: T is the dot product of image and audio vectors.

A dense layer and L2 normalisation per vector follow each branch. The training
similarity pools the matchmap ``M[b, p, t] = I[b, p] . A[b, t]`` over space
``p`` and time ``t``, using the definitions of Harwath et al. (DAVEnet, ECCV 2018):

- SISA: mean over space and time.
- MISA: mean over time of the max over space.
- SIMA: mean over space of the max over time.
- MIMA: max over space and time.

The authors' released code averages over both axes for every variant;
``pooling="released_code"`` reproduces that.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vgsalign.models.encoders import ImageBranch, SpeechEncoder, VGSModel

POOLINGS = ("sisa", "misa", "sima", "mima")


def pool_matchmap(matchmap: torch.Tensor, pooling: str) -> torch.Tensor:
    """Pool a matchmap ``[B, P, F]`` (position, frame) into one similarity per row, ``[B]``."""
    if pooling == "sisa":
        return matchmap.mean(dim=(1, 2))
    if pooling == "misa":
        return matchmap.amax(dim=1).mean(dim=1)
    if pooling == "sima":
        return matchmap.amax(dim=2).mean(dim=1)
    if pooling == "mima":
        return matchmap.amax(dim=(1, 2))
    raise ValueError(f"unknown CNN0 pooling {pooling!r}; expected one of {', '.join(POOLINGS)}")


class CNN0(VGSModel):
    """Speech encoder and image branch, each followed by Linear(D, D) and L2 normalisation."""

    def __init__(
        self,
        variant: str,
        speech: SpeechEncoder,
        image: ImageBranch,
        pooling: str,
        pooling_rule: str = "paper",
    ) -> None:
        super().__init__(variant, speech, image)
        if pooling not in POOLINGS:
            raise ValueError(f"unknown CNN0 pooling {pooling!r}; expected one of {', '.join(POOLINGS)}")
        if pooling_rule not in ("paper", "released_code"):
            raise ValueError(f"unknown models.cnn0_pooling {pooling_rule!r}; expected paper or released_code")
        self.pooling = pooling
        self.pooling_rule = pooling_rule
        size = self.embedding_size
        self.audio_dense = nn.Linear(size, size)
        self.image_dense = nn.Linear(size, size)

    @property
    def training_pooling(self) -> str:
        """Return the pooling used by ``similarity``: SISA for every variant under the released code's rule."""
        return self.pooling if self.pooling_rule == "paper" else "sisa"

    def encode_audio(self, mels: torch.Tensor) -> torch.Tensor:
        frames = self.speech(mels)  # [B, F, D]
        return F.normalize(self.audio_dense(frames), dim=-1)  # [B, F, D], unit vectors

    def encode_image(self, features: torch.Tensor) -> torch.Tensor:
        positions = self.image(features)  # [B, P, D]
        return F.normalize(self.image_dense(positions), dim=-1)  # [B, P, D], unit vectors

    def similarity(self, audio: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        matchmap = torch.bmm(image, audio.transpose(1, 2))  # [B, P, F]
        return pool_matchmap(matchmap, self.training_pooling)  # [B]
