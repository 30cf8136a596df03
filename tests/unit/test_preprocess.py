"""service/preprocess.py against the torch/torchvision transform pipeline, on real photographs.

Reference: `torchvision.transforms.v2` on uint8 tensors (Resize with bilinear interpolation and
antialias=False, CenterCrop, Pad, ToDtype(scale=True), Normalize). OpenCV's INTER_LINEAR resizes
uint8 images with 11-bit fixed-point weights, torchvision in floating point then rounds, so the
two differ by at most one grey level (1/255 before normalisation) per element; that is the
tolerance used here and documented in docs/model-config.md. Coordinate mapping (ResizeInfo) is
checked exactly on constructed images whose scale factors are exact.
"""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
import skimage.data
import torch
from matplotlib import cbook
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

from service.config import PreprocessingConfig
from service.errors import InvalidArgument
from service.preprocess import (
    convert_color,
    decode_image,
    normalize,
    preprocess_batch,
    preprocess_encoded,
    preprocess_image,
    resize_image,
)
from service.postprocess.detect import to_original_pixels

torch.set_num_threads(1)

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
ONE_LEVEL = 1.0 / 255.0


def _grace_hopper() -> np.ndarray:
    with cbook.get_sample_data("grace_hopper.jpg") as handle:
        return np.asarray(Image.open(handle).convert("RGB"))


PHOTOS = {
    "astronaut": skimage.data.astronaut,  # 512 x 512
    "coffee": skimage.data.coffee,  # 400 x 600
    "chelsea": skimage.data.chelsea,  # 300 x 451
    "grace_hopper": _grace_hopper,  # 600 x 512
}


@pytest.fixture(scope="module", params=sorted(PHOTOS))
def photo(request) -> np.ndarray:
    """An RGB uint8 [H, W, 3] photograph."""
    return np.ascontiguousarray(PHOTOS[request.param]())


def torch_pipeline(image_rgb: np.ndarray, *geometry) -> np.ndarray:
    """uint8 HWC RGB -> float32 CHW through torchvision: geometry, then scale to [0, 1], Normalize."""
    tensor = torch.from_numpy(image_rgb.copy()).permute(2, 0, 1)
    transform = T.Compose([*geometry, T.ToDtype(torch.float32, scale=True), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    return transform(tensor).numpy()


def bilinear(size) -> T.Resize:
    return T.Resize(size, interpolation=InterpolationMode.BILINEAR, antialias=False)


def assert_within_one_level(ours: np.ndarray, reference: np.ndarray, std=IMAGENET_STD) -> None:
    """Elementwise at most one grey level apart (after normalisation by std), and rarely that."""
    assert ours.shape == reference.shape and ours.dtype == np.float32
    levels = np.abs(ours - reference) * np.asarray(std, np.float32).reshape(-1, 1, 1) / ONE_LEVEL
    assert levels.max() <= 1.0 + 1e-3, levels.max()
    assert levels.mean() < 0.45, levels.mean()


def spec(**fields) -> PreprocessingConfig:
    base = dict(color_order="rgb", mean=IMAGENET_MEAN, std=IMAGENET_STD)
    return PreprocessingConfig(**{**base, **fields})


# ---- resize policies against torchvision -----------------------------------------------------


@pytest.mark.parametrize("size", [(224, 224), (64, 96), (300, 200)])
def test_stretch_matches_torchvision(photo, size):
    ours, info = preprocess_image(photo, spec(resize="stretch", size=size), source_order="rgb")
    assert_within_one_level(ours, torch_pipeline(photo, bilinear(size)))
    height, width = photo.shape[:2]
    assert info.scale_yx == (size[0] / height, size[1] / width) and info.offset_yx == (0.0, 0.0)


@pytest.mark.parametrize("size", [(224, 224), (160, 320)])
def test_letterbox_matches_torchvision(photo, size):
    ours, info = preprocess_image(photo, spec(resize="letterbox", size=size, pad_value=114), source_order="rgb")
    height, width = photo.shape[:2]
    ratio = min(size[0] / height, size[1] / width)
    new_h, new_w = round(height * ratio), round(width * ratio)
    top, left = (size[0] - new_h) // 2, (size[1] - new_w) // 2
    padding = [left, top, size[1] - new_w - left, size[0] - new_h - top]
    reference = torch_pipeline(photo, bilinear((new_h, new_w)), T.Pad(padding, fill=114))
    assert_within_one_level(ours, reference)
    assert info.offset_yx == (top, left) and info.input_hw == size


@pytest.mark.parametrize("shorter, crop", [(256, 224), (None, 224), (100, 96)])
def test_center_crop_matches_torchvision(photo, shorter, crop):
    ours, info = preprocess_image(
        photo, spec(resize="center_crop", size=(crop, crop), resize_shorter=shorter), source_order="rgb"
    )
    reference = torch_pipeline(photo, bilinear(shorter or crop), T.CenterCrop(crop))
    assert_within_one_level(ours, reference)
    assert info.input_hw == (crop, crop)


def test_nearest_matches_torchvision_exactly(photo):
    ours, _ = preprocess_image(
        photo, spec(resize="stretch", size=(97, 131), interpolation="nearest"), source_order="rgb"
    )
    reference = torch_pipeline(photo, T.Resize((97, 131), interpolation=InterpolationMode.NEAREST))
    np.testing.assert_allclose(ours, reference, atol=1e-6)


def test_antialiased_torchvision_is_not_what_serving_does(photo):
    """Why docs/model-config.md says to train with antialias=False: with it, pixels move by many levels."""
    ours, _ = preprocess_image(photo, spec(resize="stretch", size=(64, 96)), source_order="rgb")
    antialiased = torch_pipeline(photo, T.Resize((64, 96), interpolation=InterpolationMode.BILINEAR, antialias=True))
    levels = np.abs(ours - antialiased) * np.asarray(IMAGENET_STD, np.float32).reshape(-1, 1, 1) / ONE_LEVEL
    assert levels.max() > 10


def test_batch_equals_single_images(photo):
    config = spec(resize="letterbox", size=(64, 64))
    batch, infos = preprocess_batch([photo, photo[::2, ::3]], config, source_order="rgb")
    assert batch.shape == (2, 3, 64, 64)
    for tensor, info, image in zip(batch, infos, [photo, photo[::2, ::3]]):
        single, single_info = preprocess_image(np.ascontiguousarray(image), config, source_order="rgb")
        np.testing.assert_array_equal(tensor, single)
        assert info == single_info


# ---- exact coordinate mapping (ResizeInfo) ---------------------------------------------------


def block_image(height, width, box, channels=3) -> np.ndarray:
    """Black image with a white block covering x1 <= x < x2, y1 <= y < y2."""
    image = np.zeros((height, width, channels), np.uint8)
    x1, y1, x2, y2 = box
    image[y1:y2, x1:x2] = 255
    return image


def white_box(chw: np.ndarray) -> list[float]:
    """x1, y1, x2, y2 of the pixels at full white in a [C, H, W] tensor with scale 1/255, mean 0, std 1."""
    ys, xs = np.nonzero(chw[0] > 0.999)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def plain(**fields) -> PreprocessingConfig:
    return PreprocessingConfig(**{"color_order": "rgb", **fields})


def test_letterbox_inverse_mapping_is_exact():
    # 40 x 80 into 20 x 20: ratio 1/4, content 10 x 20, top padding 5. Blocks on a 4-pixel grid
    # stay sharp under bilinear 4:1 (each output pixel reads two source pixels of one block).
    original = [8.0, 4.0, 16.0, 12.0]
    image = block_image(40, 80, [int(v) for v in original])
    tensor, info = preprocess_image(image, plain(resize="letterbox", size=(20, 20)), source_order="rgb")
    assert info.scale_yx == (0.25, 0.25) and info.offset_yx == (5.0, 0.0)
    found = white_box(tensor)
    assert found == [2.0, 6.0, 4.0, 8.0]  # model = original * scale + offset
    np.testing.assert_array_equal(to_original_pixels(np.array([found], np.float32), info)[0], original)
    assert info.content_window() == (5, 0, 15, 20)


def test_center_crop_inverse_mapping_is_exact():
    # 40 x 80, shorter side -> 20 (scale 1/2) gives 20 x 40; a 20 x 20 crop starts at x = 10.
    original = [24.0, 8.0, 40.0, 24.0]
    image = block_image(40, 80, [int(v) for v in original])
    tensor, info = preprocess_image(image, plain(resize="center_crop", size=(20, 20)), source_order="rgb")
    assert info.scale_yx == (0.5, 0.5) and info.offset_yx == (0.0, -10.0)
    found = white_box(tensor)
    assert found == [2.0, 4.0, 10.0, 12.0]
    np.testing.assert_array_equal(to_original_pixels(np.array([found], np.float32), info)[0], original)


def test_stretch_and_padding_inverse_mapping_is_exact():
    original = [4.0, 8.0, 12.0, 16.0]
    image = block_image(32, 16, [int(v) for v in original])
    tensor, info = preprocess_image(image, plain(resize="stretch", size=(16, 8), padding=3), source_order="rgb")
    assert info.scale_yx == (0.5, 0.5) and info.offset_yx == (3.0, 3.0) and info.input_hw == (22, 14)
    found = white_box(tensor)
    assert found == [5.0, 7.0, 9.0, 11.0]
    np.testing.assert_array_equal(to_original_pixels(np.array([found], np.float32), info)[0], original)


def test_native_scale_resizes_then_pads_to_the_stride_with_an_exact_mapping():
    # 20 x 30 scaled 2x is 40 x 60, padded to 64 x 64 under stride 32; nearest keeps the block's edges exact.
    original = [6.0, 4.0, 14.0, 12.0]
    image = block_image(20, 30, [int(v) for v in original])
    config = plain(resize="native", native_scale=2.0, stride=32, interpolation="nearest")
    tensor, info = preprocess_image(image, config, source_order="rgb")
    assert tensor.shape == (3, 64, 64) and info.input_hw == (64, 64)
    assert info.scale_yx == (2.0, 2.0) and info.offset_yx == (0.0, 0.0) and info.content_window() == (0, 0, 40, 60)
    found = white_box(tensor)
    assert found == [12.0, 8.0, 28.0, 24.0]
    np.testing.assert_array_equal(to_original_pixels(np.array([found], np.float32), info)[0], original)
    assert (tensor[:, 40:, :] == 0).all() and (tensor[:, :, 60:] == 0).all()  # padding: pad_value 0


def test_native_scale_matches_torchvision(photo):
    ours, info = preprocess_image(photo, spec(resize="native", native_scale=1.5, stride=8), source_order="rgb")
    height, width = photo.shape[:2]
    size = (round(height * 1.5), round(width * 1.5))
    assert info.content_window() == (0, 0, *size)
    assert_within_one_level(ours[:, : size[0], : size[1]], torch_pipeline(photo, bilinear(size)))
    assert ours.shape[1] % 8 == 0 and ours.shape[2] % 8 == 0 and ours.shape[1] - size[0] < 8


def test_native_scale_lowers_the_pixel_limit_by_its_square():
    png = cv2.imencode(".png", np.zeros((30, 40, 3), np.uint8))[1].tobytes()
    assert decode_image(png, plain(resize="native"), max_pixels=4000).shape == (30, 40, 3)
    with pytest.raises(InvalidArgument, match="over the limit of 1000 pixels"):
        decode_image(png, plain(resize="native", native_scale=2.0), max_pixels=4000)


def test_inverse_mapping_clips_to_the_image():
    _, info = preprocess_image(
        block_image(40, 80, [0, 0, 1, 1]), plain(resize="letterbox", size=(20, 20)), source_order="rgb"
    )
    mapped = to_original_pixels(np.array([[-3.0, 0.0, 25.0, 20.0]], np.float32), info)[0]
    np.testing.assert_array_equal(mapped, [0.0, 0.0, 80.0, 40.0])


# ---- colour orders ---------------------------------------------------------------------------


def test_color_order_conversions(photo):
    bgr = np.ascontiguousarray(photo[:, :, ::-1])
    np.testing.assert_array_equal(convert_color(photo, "rgb", "bgr"), bgr)
    np.testing.assert_array_equal(convert_color(bgr, "bgr", "rgb"), photo)
    np.testing.assert_array_equal(convert_color(photo, "rgb", "rgb"), photo)
    gray_from_rgb = convert_color(photo, "rgb", "gray")
    np.testing.assert_array_equal(gray_from_rgb, convert_color(bgr, "bgr", "gray"))
    reference = T.Grayscale()(torch.from_numpy(photo.copy()).permute(2, 0, 1))[0].numpy()
    assert np.abs(gray_from_rgb.astype(int) - reference.astype(int)).max() <= 1  # ITU-R 601 weights both
    gray = gray_from_rgb
    for order in ("rgb", "bgr"):
        replicated = convert_color(gray, "gray", order)
        assert replicated.shape == gray.shape + (3,)
        assert all(np.array_equal(replicated[:, :, c], gray) for c in range(3))
    rgba = np.dstack([photo, np.full(photo.shape[:2], 7, np.uint8)])
    np.testing.assert_array_equal(convert_color(rgba, "rgb", "rgb"), photo)


def test_source_order_reaches_the_tensor():
    pixel = np.zeros((4, 4, 3), np.uint8)
    pixel[..., 0] = 200  # red in an RGB image
    rgb_model = plain(resize="stretch", size=(4, 4))
    bgr_model = plain(color_order="bgr", resize="stretch", size=(4, 4))
    as_rgb, _ = preprocess_image(pixel, rgb_model, source_order="rgb")
    as_bgr, _ = preprocess_image(pixel, bgr_model, source_order="rgb")
    assert np.allclose(as_rgb[0], 200 / 255) and np.allclose(as_rgb[1:], 0)
    assert np.allclose(as_bgr[2], 200 / 255) and np.allclose(as_bgr[:2], 0)
    gray_model = plain(color_order="gray", resize="stretch", size=(4, 4))
    gray, _ = preprocess_image(pixel, gray_model, source_order="rgb")
    assert gray.shape == (1, 4, 4) and np.allclose(gray, round(0.299 * 200) / 255, atol=ONE_LEVEL)


def test_per_channel_normalisation_matches_torchvision(photo):
    ours, _ = preprocess_image(photo, spec(resize="stretch", size=photo.shape[:2]), source_order="rgb")
    np.testing.assert_allclose(ours, torch_pipeline(photo), atol=1e-5)  # same size: no resampling at all


def test_mnist_style_padding_28_to_32():
    """LeNet-5 takes 32 x 32: a 28 x 28 digit is padded by 2 on every side, like transforms.Pad(2)."""
    rng = np.random.default_rng(0)
    digit = rng.integers(0, 256, (28, 28), dtype=np.uint8)
    config = PreprocessingConfig(
        color_order="gray", resize="stretch", size=(28, 28), padding=2, mean=(0.1307,), std=(0.3081,)
    )
    ours, info = preprocess_image(digit, config, source_order="rgb")
    assert ours.shape == (1, 32, 32) and config.input_hw == (32, 32)
    transform = T.Compose([T.Pad(2, fill=0), T.ToDtype(torch.float32, scale=True), T.Normalize((0.1307,), (0.3081,))])
    reference = transform(torch.from_numpy(digit)[None]).numpy()
    np.testing.assert_allclose(ours, reference, atol=1e-5)
    assert info.offset_yx == (2.0, 2.0) and info.scale_yx == (1.0, 1.0)
    np.testing.assert_allclose(ours[0, 0, :], -0.1307 / 0.3081, atol=1e-6)


# ---- decoding --------------------------------------------------------------------------------


def jpeg_with_orientation(upright: np.ndarray, orientation: int) -> bytes:
    stored = {3: np.rot90(upright, 2), 6: np.rot90(upright, 1), 8: np.rot90(upright, -1)}[orientation]
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(stored)).save(buffer, "JPEG", quality=95, exif=exif)
    return buffer.getvalue()


@pytest.mark.parametrize("orientation", [3, 6, 8])
@pytest.mark.parametrize("color_order", ["rgb", "gray"])
def test_decode_applies_exif_orientation(orientation, color_order):
    upright = np.zeros((48, 32, 3), np.uint8)
    upright[:12, :16] = (250, 40, 40)  # a red block in the top-left corner of the upright image
    decoded = decode_image(
        jpeg_with_orientation(upright, orientation), plain(color_order=color_order, resize="stretch", size=(8, 8))
    )
    assert decoded.shape[:2] == (48, 32)
    assert decoded.ndim == (2 if color_order == "gray" else 3)
    bright = decoded if decoded.ndim == 2 else decoded[:, :, 2]  # BGR: red is channel 2
    assert bright[:12, :16].mean() > bright[12:, :].mean() + 50
    assert bright[-12:, -16:].mean() < 30


def test_decode_formats_give_the_same_pixels(photo):
    bgr = np.ascontiguousarray(photo[:, :, ::-1])
    config = plain(resize="stretch", size=(8, 8))
    for extension in (".png", ".bmp", ".webp"):
        params = [cv2.IMWRITE_WEBP_QUALITY, 101] if extension == ".webp" else []  # 101: lossless WebP
        data = cv2.imencode(extension, bgr, params)[1].tobytes()
        np.testing.assert_array_equal(decode_image(data, config), bgr, err_msg=extension)
    jpeg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 98])[1].tobytes()
    assert np.abs(decode_image(jpeg, config).astype(int) - bgr).mean() < 2


def test_decode_16_bit_and_alpha():
    deep = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).astype(np.uint16)
    decoded = decode_image(
        cv2.imencode(".png", deep)[1].tobytes(), plain(color_order="gray", resize="stretch", size=(8, 8))
    )
    assert decoded.dtype == np.uint8 and decoded.shape == (8, 8)
    np.testing.assert_array_equal(decoded, (deep >> 8).astype(np.uint8))
    bgra = np.dstack([np.full((5, 6, 3), 77, np.uint8), np.zeros((5, 6), np.uint8)])
    decoded = decode_image(cv2.imencode(".png", bgra)[1].tobytes(), plain(resize="stretch", size=(8, 8)))
    assert decoded.shape == (5, 6, 3) and (decoded == 77).all()


def test_decode_refuses_bad_data():
    config = plain(resize="stretch", size=(8, 8))
    with pytest.raises(InvalidArgument, match="empty"):
        decode_image(b"", config)
    with pytest.raises(InvalidArgument, match="could not be decoded"):
        decode_image(b"hello, not an image", config)
    jpeg = cv2.imencode(".jpg", np.zeros((32, 32, 3), np.uint8))[1].tobytes()
    with pytest.raises(InvalidArgument, match="truncated"):
        decode_image(jpeg[: len(jpeg) // 2], config)
    png = cv2.imencode(".png", np.zeros((30, 40, 3), np.uint8))[1].tobytes()
    with pytest.raises(InvalidArgument, match="40x30 = 1200 pixels, over the limit of 1000"):
        decode_image(png, config, max_pixels=1000)


def test_preprocess_encoded_is_decode_then_preprocess(photo):
    config = spec(resize="letterbox", size=(96, 96))
    data = cv2.imencode(".png", np.ascontiguousarray(photo[:, :, ::-1]))[1].tobytes()
    tensor, info = preprocess_encoded(data, config)
    reference, reference_info = preprocess_image(photo, config, source_order="rgb")
    np.testing.assert_array_equal(tensor, reference)
    assert info == reference_info


def test_non_uint8_images_are_refused():
    with pytest.raises(InvalidArgument, match="uint8"):
        preprocess_image(np.zeros((4, 4, 3), np.float32), plain(resize="stretch", size=(4, 4)))


@pytest.mark.parametrize(
    "fields",
    [
        dict(resize="letterbox", size=(97, 131), pad_value=114),
        dict(resize="native", native_scale=0.37, stride=32),
        dict(resize="center_crop", size=(64, 64)),
    ],
)
def test_channel_swap_after_resize_is_the_same_tensor(photo, fields):
    """A BGR photo for an RGB model is resized first and reordered by normalize (no full-size swap
    copy): bit for bit what converting first gives, since the resize works per channel."""
    bgr = np.ascontiguousarray(photo[:, :, ::-1])
    config = spec(**fields)
    swapped_first, _ = resize_image(convert_color(bgr, "bgr", "rgb"), config)
    ours, _ = preprocess_image(bgr, config, source_order="bgr")
    np.testing.assert_array_equal(ours, normalize(swapped_first, config))
