"""VGG16 image features: network cut, weights, preprocessing of odd images, bad files, the shard stage."""

from __future__ import annotations

import io
import os
import socket
import urllib.error

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision.models import vgg

from vgsalign.config import load_params
from vgsalign.features import image as image_features
from vgsalign.features.image import (
    FEATURE_SHAPE,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageFeatureError,
    ImageFiles,
    build_vgg16_block5,
    extract_batch,
    preprocess,
    resize,
    to_rgb,
)
from vgsalign.features.shards import FeatureStore
from vgsalign.io import read_parquet_metadata
from vgsalign.layout import RunPaths

torch.set_num_threads(1)
CPU = torch.device("cpu")


def _normalised(rgb) -> np.ndarray:
    """Expected input value of a pixel of colour ``rgb`` (0-255), computed by hand."""
    return (np.asarray(rgb, dtype=np.float64) / 255.0 - np.asarray(IMAGENET_MEAN)) / np.asarray(IMAGENET_STD)


@pytest.fixture(scope="module")
def random_vgg() -> nn.Sequential:
    return build_vgg16_block5("none", seed=0)


# -- network ---------------------------------------------------------------------


def test_vgg_cut_after_block5_conv3():
    layers = build_vgg16_block5("none")
    convolutions = [module for module in layers if isinstance(module, nn.Conv2d)]
    pools = [module for module in layers if isinstance(module, nn.MaxPool2d)]
    assert len(layers) == 30
    assert len(convolutions) == 13
    assert len(pools) == 4
    assert isinstance(layers[28], nn.Conv2d)
    assert (layers[28].in_channels, layers[28].out_channels) == (512, 512)
    assert isinstance(layers[29], nn.ReLU)
    assert not any(parameter.requires_grad for parameter in layers.parameters())
    assert not layers.training


def test_vgg_feature_shape_dtype(random_vgg):
    maps = extract_batch(random_vgg, preprocess(Image.new("RGB", (300, 200), (90, 140, 30))).unsqueeze(0), CPU)
    assert maps.shape == (1, *FEATURE_SHAPE)
    assert maps.dtype == torch.float32
    assert float(maps.min()) >= 0.0  # after the ReLU
    assert float(maps.max()) > 0.0


def test_vgg_random_weights_seeded():
    first = build_vgg16_block5("none", seed=3)[0].weight
    again = build_vgg16_block5("none", seed=3)[0].weight
    other = build_vgg16_block5("none", seed=4)[0].weight
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    # Kaiming normal, fan_out, ReLU gain: std = sqrt(2 / (64 * 3 * 3)).
    assert float(first.std()) == pytest.approx(np.sqrt(2 / 576), rel=0.05)


def test_vgg_imagenet_loads_features(monkeypatch):
    full = vgg.make_layers(vgg.cfgs["D"])  # 31 modules, the last one the final max-pool
    state = {f"features.{key}": torch.randn_like(value) for key, value in full.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(2, 2)
    monkeypatch.setattr(image_features, "_imagenet_state", lambda: state)
    layers = build_vgg16_block5("imagenet")
    assert torch.equal(layers[28].weight, state["features.28.weight"])
    assert torch.equal(layers[0].bias, state["features.0.bias"])


def test_vgg_imagenet_offline_message(monkeypatch, tmp_path):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", offline)
    with pytest.raises(ImageFeatureError) as caught:
        build_vgg16_block5("imagenet")
    message = str(caught.value)
    assert "offline" in message
    assert str(tmp_path / "hub" / "checkpoints" / "vgg16-397923af.pth") in message
    assert "weights: none" in message


def test_vgg_download_times_out(monkeypatch, tmp_path):
    # A loopback listener that accepts connections and never responds, used as the
    # HTTPS proxy: without a socket timeout the download would wait forever.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)
    try:
        monkeypatch.setattr(image_features, "DOWNLOAD_TIMEOUT_S", 0.5)
        monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
        for name in ("no_proxy", "NO_PROXY"):
            monkeypatch.delenv(name, raising=False)
        proxy = f"http://127.0.0.1:{silent.getsockname()[1]}"
        monkeypatch.setenv("https_proxy", proxy)
        monkeypatch.setenv("HTTPS_PROXY", proxy)
        with pytest.raises(ImageFeatureError, match="looks offline"):
            build_vgg16_block5("imagenet")
    finally:
        silent.close()
    assert socket.getdefaulttimeout() is None  # restored after the download


def test_vgg_rejects_unknown_weights():
    with pytest.raises(ValueError, match="features.image.weights"):
        build_vgg16_block5("keras")


# -- preprocessing ---------------------------------------------------------------


def test_preprocess_uniform_values():
    tensor = preprocess(Image.new("RGB", (64, 48), (10, 200, 30)))
    assert tensor.shape == (3, 224, 224)
    assert tensor.dtype == torch.float32
    np.testing.assert_allclose(tensor[:, 100, 100].numpy(), _normalised((10, 200, 30)), atol=1e-6)


def test_preprocess_grayscale():
    tensor = preprocess(Image.new("L", (40, 40), 128))
    np.testing.assert_allclose(tensor[:, 5, 5].numpy(), _normalised((128, 128, 128)), atol=1e-6)


def test_preprocess_grayscale_16_bit():
    image = Image.fromarray(np.full((20, 30), 65535, dtype=np.uint16))
    assert image.mode.startswith("I;16")
    assert to_rgb(image).getpixel((3, 3)) == (255, 255, 255)


def test_preprocess_cmyk():
    buffer = io.BytesIO()
    Image.new("CMYK", (50, 40), (0, 255, 255, 0)).save(buffer, format="JPEG", quality=100)
    rgb = to_rgb(Image.open(io.BytesIO(buffer.getvalue())))
    assert rgb.mode == "RGB"
    red, green, blue = rgb.getpixel((25, 20))
    assert red > 245
    assert green < 10
    assert blue < 10


def test_preprocess_rgba_composited():
    image = Image.new("RGBA", (20, 10), (255, 0, 0, 255))
    image.paste((0, 0, 255, 0), (10, 0, 20, 10))  # right half fully transparent
    rgb = to_rgb(image)
    assert rgb.getpixel((2, 5)) == (255, 0, 0)
    assert rgb.getpixel((15, 5)) == (124, 116, 104)  # the ImageNet mean colour
    # The mean colour normalises to about zero.
    np.testing.assert_allclose(_normalised((124, 116, 104)), 0.0, atol=0.01)


def test_preprocess_palette_transparency():
    image = Image.new("P", (10, 10), 0)
    image.putpalette([0, 255, 0] + [0, 0, 0] * 255)
    image.info["transparency"] = 0
    assert to_rgb(image).getpixel((5, 5)) == (124, 116, 104)


def test_preprocess_exif_rotation(tmp_path):
    stored = Image.new("RGB", (60, 30), (255, 0, 0))
    stored.paste((0, 0, 255), (30, 0, 60, 30))  # right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # display after rotating 90 degrees clockwise
    path = tmp_path / "rotated.jpg"
    stored.save(path, exif=exif.tobytes(), quality=95)
    rgb = to_rgb(Image.open(path))
    assert rgb.size == (30, 60)
    top, bottom = rgb.getpixel((15, 10)), rgb.getpixel((15, 50))
    assert top[0] > 200  # red on top
    assert top[2] < 60
    assert bottom[2] > 200  # blue below
    assert bottom[0] < 60


def test_resize_stretch_ignores_aspect():
    image = Image.new("RGB", (100, 50), (255, 0, 0))
    image.paste((0, 255, 0), (0, 25, 100, 50))  # bottom half green
    resized = resize(image, "stretch")
    assert resized.size == (224, 224)
    assert resized.getpixel((112, 50)) == (255, 0, 0)
    assert resized.getpixel((112, 170)) == (0, 255, 0)


def test_resize_center_crop_keeps_middle():
    image = Image.new("RGB", (448, 224), (255, 0, 0))
    image.paste((0, 255, 0), (112, 0, 336, 224))  # the middle 224 columns
    resized = resize(image, "center_crop")
    assert resized.size == (224, 224)
    pixels = np.asarray(resized)
    assert np.all(pixels[:, 2:-2] == (0, 255, 0))


def test_resize_center_crop_scales_short_side():
    image = Image.new("RGB", (300, 600), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 300, 100))  # top sixth white: rows 0-75 after scaling, cropped away
    pixels = np.asarray(resize(image, "center_crop"))
    assert pixels.shape == (224, 224, 3)
    assert pixels.max() == 0


# -- bad files -------------------------------------------------------------------


def _jpeg(path, size=(64, 48), colour=(200, 50, 50)):
    Image.new("RGB", size, colour).save(path, quality=90)
    return path


def test_dataset_bad_files(tmp_path):
    good = _jpeg(tmp_path / "good.jpg")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(_jpeg(tmp_path / "whole.jpg", size=(300, 200)).read_bytes()[:600])
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"\x00" * 100)
    files = ImageFiles([str(good), str(truncated), str(garbage), str(tmp_path / "absent.jpg")], "stretch")
    statuses = [files[item][1] for item in range(4)]
    assert statuses == ["ok", "unreadable", "unreadable", "missing"]
    assert torch.all(files[1][0] == 0)
    assert "absent.jpg" in files[3][2]


def test_real_coco_image(coco_tiny, random_vgg):
    path = sorted((coco_tiny / "val2017").glob("*.jpg"))[0]
    maps = extract_batch(random_vgg, ImageFiles([str(path)], "stretch")[0][0].unsqueeze(0), CPU)
    assert maps.shape == (1, 512, 14, 14)
    assert bool(torch.isfinite(maps).all())


# -- stage -----------------------------------------------------------------------


@pytest.fixture()
def image_run(tmp_path, monkeypatch, project_root):
    """A run folder with 4 images: an RGB JPEG, a grayscale PNG, a truncated JPEG and a missing file."""
    monkeypatch.chdir(tmp_path)
    params = load_params(
        [project_root / "params.yaml"],
        overrides={
            "run": "unit",
            "features": {"image_shards": 2, "device": "cpu", "image": {"weights": "none", "batch_size": 2, "num_workers": 1}},
        },
    )
    folder = tmp_path / "images"
    folder.mkdir()
    _jpeg(folder / "1.jpg", size=(120, 80))
    Image.new("L", (50, 70), 90).save(folder / "2.png")
    (folder / "3.jpg").write_bytes(_jpeg(folder / "big.jpg", size=(300, 300)).read_bytes()[:500])
    rows = [{"image_id": image_id, "file_path": os.path.join("images", name)} for image_id, name in
            [(4, "4.jpg"), (2, "2.png"), (3, "3.jpg"), (1, "1.jpg")]]
    paths = RunPaths(params)
    paths.images.parent.mkdir(parents=True)
    pd.DataFrame(rows).to_parquet(paths.images)
    return params, paths


def test_stage_writes_image_shards(image_run, random_vgg):
    params, paths = image_run
    for shard in paths.image_shard_names:
        image_features.run(params, paths, shard)
    first = pd.read_parquet(paths.image_index("0000"))
    second = pd.read_parquet(paths.image_index("0001"))
    assert first["image_id"].tolist() == [1, 2]
    assert second["image_id"].tolist() == [3, 4]
    assert first["status"].tolist() == ["ok", "ok"]
    assert second["status"].tolist() == ["unreadable", "missing"]
    metadata = read_parquet_metadata(paths.image_index("0001"))
    assert metadata["skipped"] == {"missing": 1, "unreadable": 1}
    assert metadata["weights"] == "none"

    store = FeatureStore.from_dir(paths.image_shard("0000").parent)
    assert store.item_shape == FEATURE_SHAPE
    assert store.dtype == np.float16
    inputs = torch.stack([image_features.load_image(f"images/{name}", "stretch") for name in ["1.jpg", "2.png"]])
    expected = extract_batch(random_vgg, inputs, CPU).numpy().astype(np.float16)
    batch = store.get_batch(store.position_of([1, 2]))
    np.testing.assert_allclose(batch.astype(np.float32), expected.astype(np.float32), rtol=1e-3, atol=1e-3)
    assert np.all(store.get_batch(store.position_of([3, 4])) == 0)


def test_stage_rebuilds_stale_image_shard(image_run):
    params, paths = image_run
    image_features.run(params, paths, "0001")  # no valid image: no forward pass
    stamp = os.stat(paths.image_index("0001")).st_mtime_ns
    image_features.run(params, paths, "0001")
    assert os.stat(paths.image_index("0001")).st_mtime_ns == stamp
    cropped = {**params, "features": {**params["features"], "image": {**params["features"]["image"], "resize": "center_crop"}}}
    image_features.run(cropped, paths, "0001")
    stored = read_parquet_metadata(paths.image_index("0001"))["params"]
    assert stored["features.image.resize"] == "center_crop"
