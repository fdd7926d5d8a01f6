"""Eval preprocessing equals timm's eval transform (torchvision Resize(int) + CenterCrop + Normalize)."""

import math

import numpy as np
import pytest
from PIL import Image

from edgeconvnext.data.preprocess import center_crop, eval_transform, preprocess_image, resize_shorter
from edgeconvnext.errors import DataError, UsageError
from edgeconvnext.models.registry import Preprocess


def _image(w, h, seed=0, mode="RGB"):
    rng = np.random.default_rng(seed)
    shape = (h, w, 3) if mode == "RGB" else (h, w)
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode)


def _reference(img, pp):
    # torchvision: Resize(floor(size / crop_pct)) scales the shorter side, the longer one is int(size * long / short)
    scale = math.floor(pp.img_size / pp.crop_pct)
    w, h = img.size
    if w <= h:
        new = (scale, int(scale * h / w))
    else:
        new = (int(scale * w / h), scale)
    r = img.resize(new, getattr(Image.Resampling, pp.interpolation.upper()))
    # CenterCrop: top = int(round((h - th) / 2)), left likewise
    top, left = int(round((r.size[1] - pp.img_size) / 2.0)), int(round((r.size[0] - pp.img_size) / 2.0))
    c = np.asarray(r, np.float32)[top : top + pp.img_size, left : left + pp.img_size] / 255.0
    c = (c - np.array(pp.mean, np.float32)) / np.array(pp.std, np.float32)
    return c.transpose(2, 0, 1)


@pytest.mark.parametrize(
    "size,crop,interp",
    [
        ((300, 200), 0.875, "bicubic"),
        ((200, 333), 0.95, "bilinear"),
        ((224, 224), 1.0, "bicubic"),
        ((28, 28), 1.0, "bicubic"),
    ],
)
def test_eval_transform_matches_timm_geometry(size, crop, interp):
    pp = Preprocess(img_size=32 if size == (28, 28) else 224, crop_pct=crop, interpolation=interp)
    img = _image(*size)
    out = eval_transform(img, pp)
    assert out.shape == (3, pp.img_size, pp.img_size) and out.dtype == np.float32
    np.testing.assert_allclose(out, _reference(img, pp), atol=1e-6)


def test_resize_shorter_side_and_crop_offsets():
    img = _image(300, 200)
    r = resize_shorter(img, 256)
    assert r.size == (384, 256)
    c = center_crop(r, 224)
    assert c.size == (224, 224)
    np.testing.assert_array_equal(np.asarray(c), np.asarray(r)[16:240, 80:304])


def test_grey_and_palette_images_become_rgb(tmp_path):
    p = tmp_path / "g.png"
    _image(40, 40, mode="L").save(p)
    out = preprocess_image(p, Preprocess(img_size=32, crop_pct=1.0))
    assert out.shape == (3, 32, 32)
    np.testing.assert_allclose(out[0] * 0.229 + 0.485, out[1] * 0.224 + 0.456, atol=1e-6)  # same grey value


def test_corrupt_image_is_a_data_error(tmp_path):
    p = tmp_path / "bad.jpg"
    p.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(DataError, match="bad.jpg"):
        preprocess_image(p, Preprocess())


def test_unknown_interpolation_is_refused():
    with pytest.raises(UsageError, match="interpolation"):
        eval_transform(_image(64, 64), Preprocess(img_size=32, interpolation="cubic-ish"))


def test_16bit_grey_png_is_scaled_not_clipped(tmp_path):
    # Pillow's convert("RGB") clips 16-bit values at 255: every ordinary 16-bit PNG became a white image.
    grey8 = np.random.default_rng(0).integers(20, 230, (40, 40), dtype=np.uint8)
    Image.fromarray(grey8, mode="L").save(tmp_path / "g8.png")
    Image.fromarray(grey8.astype(np.uint16) * 257).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as im:
        assert im.mode.startswith("I")  # really read as a 16-bit image
    pp = Preprocess(img_size=32, crop_pct=1.0)
    np.testing.assert_allclose(
        preprocess_image(tmp_path / "g16.png", pp), preprocess_image(tmp_path / "g8.png", pp), atol=1e-6
    )


def test_decompression_bomb_is_a_data_error(tmp_path, monkeypatch):
    # Pillow raises DecompressionBombError (not an OSError) past twice MAX_IMAGE_PIXELS: one file must be skippable
    p = tmp_path / "huge.png"
    _image(64, 64).save(p)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(DataError, match="huge.png"):
        preprocess_image(p, Preprocess(img_size=32))


def test_tiff_16bit_and_float(tmp_path):
    # TIFF (what torchvision's ImageFolder also reads): 16-bit scaled like PNG; float pixels have no known
    # scale, so such a file is an unreadable image (skipped and counted), not a silently black one
    from edgeconvnext.data.folders import list_images

    grey8 = np.random.default_rng(0).integers(20, 230, (40, 40), dtype=np.uint8)
    Image.fromarray(grey8, mode="L").save(tmp_path / "g8.png")
    Image.fromarray(grey8.astype(np.uint16) * 257).save(tmp_path / "g16.TIF")
    Image.fromarray(grey8.astype(np.float32) / 255).save(tmp_path / "f32.tiff")
    assert [p.name for p in list_images(tmp_path)] == ["f32.tiff", "g16.TIF", "g8.png"]
    pp = Preprocess(img_size=32, crop_pct=1.0)
    np.testing.assert_allclose(
        preprocess_image(tmp_path / "g16.TIF", pp), preprocess_image(tmp_path / "g8.png", pp), atol=1e-6
    )
    with pytest.raises(DataError, match="f32.tiff.*float pixels"):
        preprocess_image(tmp_path / "f32.tiff", pp)
