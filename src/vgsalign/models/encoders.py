"""Speech encoder and image branch shared by every model variant.

The layers follow Khorrami and Räsänen (Interspeech 2021). Each speech
convolution is followed by ReLU, dropout and batch norm, in that order. The
image branch is one trainable linear 3 x 3 convolution between two batch norms,
on frozen VGG16 ``block5_conv3`` features.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

N_MELS = 40
VGG_CHANNELS = 512
GRID = (14, 14)
INPUT_FRAMES = 512

SPEECH_FILTERS = (128, 256, 256, 512, 512)
SPEECH_FILTERS_SMALL = (64, 128, 256, 256, 512)
SPEECH_KERNELS = (5, 11, 17, 17, 17)
# Max-pooling (size 3, stride 2) follows these layers (1-based): 512 frames -> 64.
SPEECH_POOL_AFTER = (2, 3, 4)
EMBEDDING_SIZE = 512


def scaled(channels: int, width: float) -> int:
    """Return ``channels * width`` rounded, at least 1 (width 1.0 is the paper's model)."""
    return max(1, int(round(channels * width)))


def output_frames(input_frames: int, pools: int) -> int:
    """Return the frame count after ``pools`` max-pools of size 3, stride 2, padding 1."""
    frames = input_frames
    for _ in range(pools):
        frames = (frames + 2 * 1 - 3) // 2 + 1
    return frames


class SpeechEncoder(nn.Module):
    """Five 1-D convolutions over time on log-mel frames, with max-pooling over time.

    Input ``[B, 40, T]`` (mel band, frame); output ``[B, F, D]`` with
    ``F = T / 2**len(pool_after)`` and ``D`` the last filter count.
    """

    def __init__(
        self,
        filters: Sequence[int],
        kernels: Sequence[int] = SPEECH_KERNELS,
        pool_after: Sequence[int] = SPEECH_POOL_AFTER,
        dropout: float = 0.3,
        in_channels: int = N_MELS,
    ) -> None:
        super().__init__()
        if len(filters) != len(kernels):
            raise ValueError(f"got {len(filters)} filter counts but {len(kernels)} kernel widths")
        layers: list[nn.Module] = []
        channels = in_channels
        for number, (out_channels, kernel) in enumerate(zip(filters, kernels), start=1):
            # Odd kernels with padding (k - 1) / 2 keep the frame count ("same" padding).
            layers.append(nn.Conv1d(channels, out_channels, kernel, padding=kernel // 2))
            layers.append(nn.ReLU())
            layers.append(nn.Dropout(dropout))
            layers.append(nn.BatchNorm1d(out_channels))
            if number in pool_after:
                layers.append(nn.MaxPool1d(3, stride=2, padding=1))
            channels = out_channels
        self.layers = nn.Sequential(*layers)
        self.out_channels = channels
        self.pools = len(pool_after)

    def forward(self, mels: torch.Tensor) -> torch.Tensor:
        features = self.layers(mels)  # [B, D, F]
        return features.transpose(1, 2)  # [B, F, D]


class ImageBranch(nn.Module):
    """Batch norm, a linear 3 x 3 convolution, dropout and batch norm on VGG16 features.

    Input ``[B, 512, H, W]`` (channel, row, column); output ``[B, H*W, D]`` with the
    grid flattened in row-major order, so position ``p`` is row ``p // W``, column ``p % W``.
    """

    def __init__(self, out_channels: int, dropout: float = 0.3, in_channels: int = VGG_CHANNELS) -> None:
        super().__init__()
        self.input_norm = nn.BatchNorm2d(in_channels)
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.output_norm = nn.BatchNorm2d(out_channels)
        self.out_channels = out_channels

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.input_norm(features)  # [B, 512, H, W]
        x = self.output_norm(self.dropout(self.conv(x)))  # [B, D, H, W]
        return x.flatten(2).transpose(1, 2)  # [B, H*W, D]


class VGSModel(nn.Module):
    """Base of every variant: a speech encoder, an image branch and a similarity head.

    Export and scoring use only this interface, so they never repeat the forward pass:
    ``encode_audio`` ``[B, 40, 512] -> A [B, F, D]``, ``encode_image``
    ``[B, 512, 14, 14] -> I [B, 196, D]``, ``similarity(A, I) -> [B]`` for paired rows,
    ``alignment(A, I)`` (T as ``[B, H, W, F]`` per kind) and the retrieval embeddings
    ``pool_audio(A)``, ``pool_image(I)``.
    """

    variant: str
    grid: tuple[int, int] = GRID
    # Keys of the dict that ``alignment`` returns.
    alignment_kinds: tuple[str, ...] = ("raw",)

    def __init__(self, variant: str, speech: SpeechEncoder, image: ImageBranch) -> None:
        super().__init__()
        if speech.out_channels != image.out_channels:
            raise ValueError(
                f"speech encoder gives {speech.out_channels} channels but the image branch "
                f"{image.out_channels}; T needs the same embedding size on both sides"
            )
        self.variant = variant
        self.speech = speech
        self.image = image
        self.embedding_size = speech.out_channels
        self.t_frames = output_frames(INPUT_FRAMES, speech.pools)

    def encode_audio(self, mels: torch.Tensor) -> torch.Tensor:
        """Encode log-mels ``[B, 40, 512]`` into frame vectors A ``[B, F, D]``."""
        return self.speech(mels)

    def encode_image(self, features: torch.Tensor) -> torch.Tensor:
        """Encode VGG16 features ``[B, 512, 14, 14]`` into position vectors I ``[B, 196, D]``."""
        return self.image(features)

    def similarity(self, audio: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """Return the training similarity of paired rows, ``[B]``."""
        raise NotImplementedError

    def alignment(self, audio: torch.Tensor, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return T per kind as ``[B, H, W, F]``; ``raw`` is always present."""
        return {"raw": self.raw_alignment(audio, image)}

    def raw_alignment(self, audio: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """Return T, the dot product of every image position with every audio frame."""
        scores = torch.bmm(image, audio.transpose(1, 2))  # [B, P, F]
        return scores.unflatten(1, self.grid)  # [B, H, W, F]

    def pool_audio(self, audio: torch.Tensor) -> torch.Tensor:
        """Return the retrieval embedding of a caption: A averaged over time, ``[B, D]``.

        Khorrami and Räsänen measure recall on A and I, before T, for every model.
        For CNNATT this is not the 3 D embedding that the training similarity uses.
        """
        return audio.mean(dim=1)

    def pool_image(self, image: torch.Tensor) -> torch.Tensor:
        """Return the retrieval embedding of an image: I averaged over positions, ``[B, D]``."""
        return image.mean(dim=1)

    def forward(self, mels: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        return self.similarity(self.encode_audio(mels), self.encode_image(features))
