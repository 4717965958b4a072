"""Model variants: parameter counts from layer sizes, shapes, pooling, attention, T layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vgsalign.models import VARIANTS, build_model, count_parameters, describe
from vgsalign.models.cnn0 import pool_matchmap

WIDTH = 0.125  # small models keep the CPU cost of the shape tests low
KERNELS = (5, 11, 17, 17, 17)


def _conv(in_channels: int, out_channels: int, kernel_elements: int) -> int:
    return in_channels * out_channels * kernel_elements + out_channels


def _batch_norm(channels: int) -> int:
    # weight, bias, running mean, running variance
    return 4 * channels


def _speech_encoder(filters: tuple[int, ...]) -> int:
    total, channels = 0, 40
    for out_channels, kernel in zip(filters, KERNELS):
        total += _conv(channels, out_channels, kernel) + _batch_norm(out_channels)
        channels = out_channels
    return total


IMAGE_BRANCH = _batch_norm(512) + _conv(512, 512, 3 * 3) + _batch_norm(512)
PAPER_FILTERS = (128, 256, 256, 512, 512)
SMALL_FILTERS = (64, 128, 256, 256, 512)
EXPECTED_COUNTS = {
    "cnn0_sisa": _speech_encoder(PAPER_FILTERS) + IMAGE_BRANCH + 2 * (512 * 512 + 512),
    "cnnatt_v0": _speech_encoder(PAPER_FILTERS) + IMAGE_BRANCH + (196 * 196 + 196) + (64 * 64 + 64),
    "cnnatt_v1": _speech_encoder(PAPER_FILTERS) + IMAGE_BRANCH + (196 * 196 + 196) + (128 * 128 + 128),
    "cnnatt_v2": _speech_encoder(SMALL_FILTERS) + IMAGE_BRANCH + (196 * 196 + 196) + (64 * 64 + 64),
}


def _meta_model(variant: str, width: float = 1.0):
    with torch.device("meta"):
        return build_model(variant, width=width)


@pytest.mark.parametrize("variant", sorted(EXPECTED_COUNTS))
def test_parameter_count_width_one(variant):
    assert count_parameters(_meta_model(variant)) == EXPECTED_COUNTS[variant]


def test_parameter_counts_written_out():
    # The totals written out, so that an error in the layer arithmetic above shows up here.
    assert EXPECTED_COUNTS["cnn0_sisa"] == 11_082_368
    assert EXPECTED_COUNTS["cnnatt_v0"] == 10_599_828
    assert EXPECTED_COUNTS["cnnatt_v1"] == 10_612_180
    assert EXPECTED_COUNTS["cnnatt_v2"] == 6_415_060


def test_cnn0_variants_same_count():
    counts = {count_parameters(_meta_model(name)) for name in ("cnn0_sisa", "cnn0_misa", "cnn0_sima", "cnn0_mima")}
    assert counts == {EXPECTED_COUNTS["cnn0_sisa"]}


def test_count_excludes_num_batches_tracked():
    model = build_model("cnnatt_v0", width=WIDTH)
    every_tensor = sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers())
    tracked = sum(1 for name, _ in model.named_buffers() if name.endswith("num_batches_tracked"))
    assert tracked == 7  # five speech batch norms and two image batch norms
    assert count_parameters(model) == every_tensor - tracked


def test_width_scales_filters():
    model = build_model("cnnatt_v2", width=0.25)
    convolutions = [layer for layer in model.speech.layers if isinstance(layer, torch.nn.Conv1d)]
    assert [conv.out_channels for conv in convolutions] == [16, 32, 64, 64, 128]
    assert convolutions[0].in_channels == 40
    assert model.image.conv.in_channels == 512
    assert model.image.conv.out_channels == 128


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_output_shapes(variant):
    torch.manual_seed(0)
    model = build_model(variant, width=WIDTH).eval()
    frames = 128 if variant == "cnnatt_v1" else 64
    size = 64  # 512 * WIDTH
    mels = torch.randn(3, 40, 512)  # [B, 40, T]
    features = torch.rand(3, 512, 14, 14)  # [B, 512, H, W]
    with torch.no_grad():
        audio = model.encode_audio(mels)
        image = model.encode_image(features)
        similarity = model.similarity(audio, image)
        alignment = model.alignment(audio, image)
    assert model.t_frames == frames
    assert model.grid == (14, 14)
    assert model.variant == variant
    assert audio.shape == (3, frames, size)
    assert image.shape == (3, 196, size)
    assert similarity.shape == (3,)
    assert model.pool_audio(audio).shape == (3, size)
    assert model.pool_image(image).shape == (3, size)
    assert set(alignment) == set(model.alignment_kinds)
    for tensor in alignment.values():
        assert tensor.shape == (3, 14, 14, frames)


def test_alignment_kinds_per_family():
    assert build_model("cnn0_sima", width=WIDTH).alignment_kinds == ("raw",)
    assert build_model("cnnatt_v1", width=WIDTH).alignment_kinds == ("raw", "softmax_space", "softmax_time")


def test_pooling_hand_built():
    # Matchmap of one pair: 3 image positions (rows) by 2 frames (columns).
    matchmap = torch.tensor([[[1.0, 4.0], [3.0, 2.0], [0.0, 6.0]]])
    assert pool_matchmap(matchmap, "sisa").item() == pytest.approx(16 / 6)
    # Max over positions per frame: 3 and 6; mean over frames 4.5.
    assert pool_matchmap(matchmap, "misa").item() == pytest.approx(4.5)
    # Max over frames per position: 4, 3, 6; mean over positions 13/3.
    assert pool_matchmap(matchmap, "sima").item() == pytest.approx(13 / 3)
    assert pool_matchmap(matchmap, "mima").item() == pytest.approx(6.0)


def test_pooling_unknown_raises():
    with pytest.raises(ValueError, match="unknown CNN0 pooling 'mean'"):
        pool_matchmap(torch.zeros(1, 2, 2), "mean")


@pytest.mark.parametrize("variant,paper_pooling", [("cnn0_misa", "misa"), ("cnn0_sima", "sima"), ("cnn0_mima", "mima")])
def test_cnn0_pooling_rule(variant, paper_pooling):
    torch.manual_seed(1)
    audio = torch.nn.functional.normalize(torch.randn(2, 64, 64), dim=-1)  # [B, F, D]
    image = torch.nn.functional.normalize(torch.randn(2, 196, 64), dim=-1)  # [B, P, D]
    matchmap = torch.einsum("bpd,bfd->bpf", image, audio)
    paper = build_model(variant, width=WIDTH, cnn0_pooling="paper")
    released = build_model(variant, width=WIDTH, cnn0_pooling="released_code")
    torch.testing.assert_close(paper.similarity(audio, image), pool_matchmap(matchmap, paper_pooling))
    torch.testing.assert_close(released.similarity(audio, image), matchmap.mean(dim=(1, 2)))


def test_cnn0_vectors_unit_length():
    model = build_model("cnn0_sisa", width=WIDTH).eval()
    with torch.no_grad():
        audio = model.encode_audio(torch.randn(2, 40, 512))
        image = model.encode_image(torch.rand(2, 512, 14, 14))
    torch.testing.assert_close(audio.norm(dim=-1), torch.ones(2, 64))
    torch.testing.assert_close(image.norm(dim=-1), torch.ones(2, 196))


def _numpy_cnnatt_similarity(model, audio: np.ndarray, image: np.ndarray) -> float:
    """Independent float64 implementation of the CNNATT similarity for one pair."""

    def softmax(x, axis):
        e = np.exp(x - x.max(axis=axis, keepdims=True))
        return e / e.sum(axis=axis, keepdims=True)

    def sigmoid(x):
        return 1 / (1 + np.exp(-x))

    w_space = model.image_attention.weight.detach().double().numpy()
    b_space = model.image_attention.bias.detach().double().numpy()
    w_time = model.audio_attention.weight.detach().double().numpy()
    b_time = model.audio_attention.bias.detach().double().numpy()
    scores = audio @ image.T  # [F, P]
    caption = np.concatenate(
        [
            audio.mean(axis=0),
            (softmax(scores, axis=1) @ image).mean(axis=0),
            (sigmoid(scores @ w_space.T + b_space) @ image).mean(axis=0),
        ]
    )
    picture = np.concatenate(
        [
            image.mean(axis=0),
            (softmax(scores.T, axis=1) @ audio).mean(axis=0),
            (sigmoid(scores.T @ w_time.T + b_time) @ audio).mean(axis=0),
        ]
    )
    return float(caption @ picture / np.linalg.norm(caption) / np.linalg.norm(picture))


@pytest.mark.parametrize("variant", ["cnnatt_v0", "cnnatt_v1"])
def test_cnnatt_similarity_matches_numpy(variant):
    torch.manual_seed(2)
    model = build_model(variant, width=WIDTH)
    frames = model.t_frames
    audio = torch.randn(2, frames, 64) * 0.3  # [B, F, D]
    image = torch.randn(2, 196, 64) * 0.3  # [B, P, D]
    similarity = model.similarity(audio, image)
    for row in range(2):
        expected = _numpy_cnnatt_similarity(model, audio[row].double().numpy(), image[row].double().numpy())
        assert similarity[row].item() == pytest.approx(expected, abs=1e-5)


def test_alignment_layout_and_softmax():
    torch.manual_seed(3)
    model = build_model("cnnatt_v0", width=WIDTH).eval()
    features = torch.rand(1, 512, 14, 14)
    with torch.no_grad():
        conv = model.image.output_norm(model.image.conv(model.image.input_norm(features)))  # [1, D, 14, 14]
        image = model.encode_image(features)
        audio = model.encode_audio(torch.randn(1, 40, 512))
        alignment = model.alignment(audio, image)
    # Position p of I is grid cell (p // 14, p % 14).
    torch.testing.assert_close(image[0, 2 * 14 + 5], conv[0, :, 2, 5])
    # T[h, w, f] is the dot product of image cell (h, w) and audio frame f.
    expected = torch.dot(conv[0, :, 2, 5], audio[0, 7])
    torch.testing.assert_close(alignment["raw"][0, 2, 5, 7], expected)
    space_sums = alignment["softmax_space"].sum(dim=(1, 2))  # [1, F]
    time_sums = alignment["softmax_time"].sum(dim=3)  # [1, H, W]
    torch.testing.assert_close(space_sums, torch.ones_like(space_sums))
    torch.testing.assert_close(time_sums, torch.ones_like(time_sums))


def test_v1_keeps_128_frames():
    model = build_model("cnnatt_v1", width=WIDTH).eval()
    pools = [layer for layer in model.speech.layers if isinstance(layer, torch.nn.MaxPool1d)]
    assert len(pools) == 2
    assert model.audio_attention.in_features == 128


def test_build_model_rejects_unknown_variant():
    with pytest.raises(ValueError, match="unknown model variant 'cnnatt_v9'"):
        build_model("cnnatt_v9")


def test_build_model_rejects_bad_pooling_rule():
    with pytest.raises(ValueError, match="models.cnn0_pooling"):
        build_model("cnn0_sisa", width=WIDTH, cnn0_pooling="max")


def test_describe_table():
    text = describe()
    rows = text.splitlines()[2 : 2 + len(VARIANTS)]
    lines = {line.split()[0]: line.split() for line in rows}
    assert set(lines) == set(VARIANTS)
    assert "CNNATT v1" in text.splitlines()[-1]
    assert lines["cnnatt_v1"][1:] == ["10,612,180", "13,943,508", "-3,331,328", "128"]
    assert lines["cnn0_sisa"][1:] == ["11,082,368", "11,072,128", "+10,240", "64"]
    assert lines["cnn0_mima"][2] == "-"
