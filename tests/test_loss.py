"""Triplet loss and in-batch impostor sampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vgsalign.models import build_model
from vgsalign.training.loss import batch_triplet_loss, sample_impostors, triplet_loss


class DotModel:
    """Stand-in model whose similarity is the dot product of paired vectors ``[B, D]``."""

    @staticmethod
    def similarity(audio: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return (audio * image).sum(dim=1)


def test_triplet_loss_three_pairs():
    positive = torch.tensor([0.5, 0.2, 0.9])
    impostor_image = torch.tensor([0.45, 0.4, 0.1])
    impostor_caption = torch.tensor([0.3, 0.35, 0.95])
    # Image terms: max(0, 0.1 - 0.5 + 0.45) = 0.05, max(0, 0.1 - 0.2 + 0.4) = 0.3, max(0, 0.1 - 0.9 + 0.1) = 0.
    # Caption terms: max(0, 0.1 - 0.5 + 0.3) = 0, max(0, 0.1 - 0.2 + 0.35) = 0.25, max(0, 0.1 - 0.9 + 0.95) = 0.15.
    # Mean over the 3 anchors: (0.05 + 0.3 + 0 + 0 + 0.25 + 0.15) / 3 = 0.25.
    loss = triplet_loss(positive, impostor_image, impostor_caption, margin=0.1)
    assert loss.item() == pytest.approx(0.25)


def test_batch_loss_three_pairs_by_hand():
    audio = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # captions a0, a1, a2
    image = torch.tensor([[0.8, 0.0], [0.1, 0.6], [0.5, 0.2]])  # images v0, v1, v2
    image_ids = torch.tensor([10, 11, 12])
    # Reproduce the two draws the loss makes (impostor images, then impostor captions).
    replay = torch.Generator().manual_seed(5)
    impostor_images = sample_impostors(image_ids, replay).tolist()
    impostor_captions = sample_impostors(image_ids, replay).tolist()

    positive = [0.8, 0.6, 0.7]  # a_i . v_i
    similarity = [[float(np.dot(a, v)) for v in image.tolist()] for a in audio.tolist()]  # [caption][image]
    expected = 0.0
    for i in range(3):
        j, k = impostor_images[i], impostor_captions[i]
        expected += max(0.0, 0.1 - positive[i] + similarity[i][j])
        expected += max(0.0, 0.1 - positive[i] + similarity[k][i])
    expected /= 3

    loss = batch_triplet_loss(DotModel(), audio, image, image_ids, torch.Generator().manual_seed(5), margin=0.1)
    assert loss.item() == pytest.approx(expected)


def test_impostors_never_anchor():
    image_ids = torch.arange(6)
    for seed in range(50):
        impostors = sample_impostors(image_ids, torch.Generator().manual_seed(seed))
        assert (impostors != torch.arange(6)).all()


def test_impostors_avoid_same_image():
    # Rows 0-2 are captions of image 7, rows 3-4 of image 8.
    image_ids = torch.tensor([7, 7, 7, 8, 8])
    for seed in range(50):
        impostors = sample_impostors(image_ids, torch.Generator().manual_seed(seed))
        assert (image_ids[impostors] != image_ids).all()


def test_impostors_single_image_fallback():
    image_ids = torch.tensor([3, 3, 3])
    for seed in range(20):
        impostors = sample_impostors(image_ids, torch.Generator().manual_seed(seed))
        assert (impostors != torch.arange(3)).all()


def test_impostors_seeded():
    image_ids = torch.arange(10)
    first = sample_impostors(image_ids, torch.Generator().manual_seed(3))
    second = sample_impostors(image_ids, torch.Generator().manual_seed(3))
    other = sample_impostors(image_ids, torch.Generator().manual_seed(4))
    assert torch.equal(first, second)
    assert not torch.equal(first, other)


def test_impostors_uniform():
    image_ids = torch.arange(4)
    generator = torch.Generator().manual_seed(0)
    counts = np.zeros(4)
    for _ in range(3000):
        counts[sample_impostors(image_ids, generator)[0].item()] += 1
    assert counts[0] == 0
    # Each of the 3 allowed rows: expected 1000 draws, standard deviation about 26.
    assert np.all(np.abs(counts[1:] - 1000) < 130)


def test_impostors_batch_of_one_raises():
    with pytest.raises(ValueError, match="at least 2 pairs"):
        sample_impostors(torch.tensor([1]), torch.Generator())


def test_batch_loss_gradients_reach_both_branches():
    torch.manual_seed(0)
    model = build_model("cnnatt_v0", width=0.125)
    audio = model.encode_audio(torch.randn(4, 40, 512))
    image = model.encode_image(torch.rand(4, 512, 14, 14))
    loss = batch_triplet_loss(model, audio, image, torch.arange(4), torch.Generator().manual_seed(0), margin=0.1)
    loss.backward()
    assert torch.isfinite(loss)
    assert model.speech.layers[0].weight.grad.abs().sum() > 0
    assert model.image.conv.weight.grad.abs().sum() > 0
    assert model.image_attention.weight.grad.abs().sum() > 0
