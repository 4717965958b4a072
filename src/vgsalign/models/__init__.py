"""The CNN0 and CNNATT model variants, built by name.

``build_model(variant, width, dropout, cnn0_pooling)`` returns a
:class:`~vgsalign.models.encoders.VGSModel`; export and scoring rely only on its
interface. ``describe()`` prints our parameter counts beside the published ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vgsalign.models.cnn0 import CNN0
from vgsalign.models.cnnatt import CNNATT
from vgsalign.models.encoders import (
    EMBEDDING_SIZE,
    SPEECH_FILTERS,
    SPEECH_FILTERS_SMALL,
    SPEECH_POOL_AFTER,
    ImageBranch,
    SpeechEncoder,
    VGSModel,
    scaled,
)

__all__ = ["VARIANTS", "VGSModel", "build_model", "count_parameters", "describe"]


@dataclass(frozen=True)
class VariantSpec:
    """Architecture of one named variant, with the parameter count that Khorrami and
    Räsänen (Interspeech 2021) publish for it in Table 1."""

    family: str  # cnn0 | cnnatt
    filters: tuple[int, ...]
    pool_after: tuple[int, ...]
    pooling: str | None  # CNN0 matchmap pooling
    paper_parameters: int | None  # None for a variant the publication does not report


VARIANTS: dict[str, VariantSpec] = {
    "cnn0_sisa": VariantSpec("cnn0", SPEECH_FILTERS, SPEECH_POOL_AFTER, "sisa", 11_072_128),
    "cnn0_misa": VariantSpec("cnn0", SPEECH_FILTERS, SPEECH_POOL_AFTER, "misa", 11_072_128),
    "cnn0_sima": VariantSpec("cnn0", SPEECH_FILTERS, SPEECH_POOL_AFTER, "sima", 11_072_128),
    "cnn0_mima": VariantSpec("cnn0", SPEECH_FILTERS, SPEECH_POOL_AFTER, "mima", None),
    "cnnatt_v0": VariantSpec("cnnatt", SPEECH_FILTERS, SPEECH_POOL_AFTER, None, 10_587_540),
    # v1 drops the first max-pool, so T keeps 128 frames.
    "cnnatt_v1": VariantSpec("cnnatt", SPEECH_FILTERS, SPEECH_POOL_AFTER[1:], None, 13_943_508),
    "cnnatt_v2": VariantSpec("cnnatt", SPEECH_FILTERS_SMALL, SPEECH_POOL_AFTER, None, 6_401_748),
}


def build_model(
    variant: str, width: float = 1.0, dropout: float = 0.3, cnn0_pooling: str = "paper"
) -> VGSModel:
    """Build a freshly initialised model of ``variant``.

    ``width`` multiplies every filter count and the embedding size (1.0 is the
    paper's model); the inputs stay 40 mel bands and 512 VGG16 channels.
    ``cnn0_pooling`` is ``paper`` (DAVEnet's per-variant pooling) or
    ``released_code`` (mean over both axes for every CNN0 variant).
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown model variant {variant!r}; expected one of {', '.join(VARIANTS)}")
    if width <= 0:
        raise ValueError(f"invalid width {width}: it must be positive (1.0 is the paper's model)")
    spec = VARIANTS[variant]
    filters = [scaled(count, width) for count in spec.filters]
    # The last speech layer and the image convolution share the embedding size.
    filters[-1] = scaled(EMBEDDING_SIZE, width)
    speech = SpeechEncoder(filters, pool_after=spec.pool_after, dropout=dropout)
    image = ImageBranch(filters[-1], dropout=dropout)
    if spec.family == "cnn0":
        return CNN0(variant, speech, image, pooling=spec.pooling, pooling_rule=cnn0_pooling)
    return CNNATT(variant, speech, image)


def count_parameters(model: nn.Module) -> int:
    """Count every parameter and buffer except ``num_batches_tracked``.

    This includes biases and the batch-norm running means and variances, which
    Keras' ``model.summary()`` also counts (as non-trainable parameters).
    """
    parameters = sum(parameter.numel() for parameter in model.parameters())
    buffers = sum(
        buffer.numel()
        for name, buffer in model.named_buffers()
        if not name.endswith("num_batches_tracked")
    )
    return parameters + buffers


def describe(width: float = 1.0) -> str:
    """Return a text table of every variant: our parameter count, Table 1's count and T frames."""
    header = f"{'variant':<11} {'parameters':>12} {'paper (Table 1)':>16} {'difference':>11} {'T frames':>9}"
    lines = [header, "-" * len(header)]
    with torch.device("meta"):
        models = {name: build_model(name, width=width) for name in VARIANTS}
    for name, model in models.items():
        ours = count_parameters(model)
        paper = VARIANTS[name].paper_parameters
        paper_text = f"{paper:,}" if paper is not None else "-"
        # Table 1 counts are for the paper's width, so other widths get no difference.
        difference = f"{ours - paper:+,}" if paper is not None and width == 1.0 else "-"
        lines.append(f"{name:<11} {ours:>12,} {paper_text:>16} {difference:>11} {model.t_frames:>9}")
    lines.append(f"width {width}; counts include biases and batch-norm running statistics.")
    if width == 1.0:
        lines.append(
            "The paper's counts differ by about 0.1 %, except CNNATT v1: removing the first max-pool "
            "only enlarges the temporal attention layer (64 -> 128 units), and the paper does not say "
            "what the other 3.3 M parameters of its v1 are."
        )
    return "\n".join(lines)
