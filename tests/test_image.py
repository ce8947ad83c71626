"""Stage 0 preprocessing: the manifest's rule, exactly, and refusal of what is not a photo."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from aiotedge.image import ImageError, decode_image, preprocess
from aiotedge.manifest import Preprocessing, TensorSpec


def png(width: int = 40, height: int = 30) -> bytes:
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def bomb() -> bytes:
    """A 9000x9000 black PNG: tens of KB on the wire, 243 MB once decoded."""
    out = io.BytesIO()
    Image.new("RGB", (9000, 9000)).save(out, format="PNG")
    return out.getvalue()


def resized(data: bytes, size: int) -> np.ndarray:
    image = Image.open(io.BytesIO(data)).convert("RGB")
    return np.asarray(image.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32)


def test_uint8_input_with_matching_normalisation_gets_raw_pixels():
    spec = TensorSpec("in", (1, 16, 16, 3), "uint8", scale=1 / 128, zero_point=128)
    tensor = preprocess(decode_image(png()), Preprocessing(16, 16, mean=128, std=128), spec)
    assert tensor.dtype == np.uint8 and tensor.shape == (1, 16, 16, 3)
    np.testing.assert_array_equal(tensor[0], resized(png(), 16).astype(np.uint8))


def test_float_input_is_scaled_to_minus_one_one():
    spec = TensorSpec("in", (1, 8, 8, 3), "float32")
    tensor = preprocess(decode_image(png()), Preprocessing(8, 8, 127.5, 127.5), spec)
    np.testing.assert_allclose(tensor[0], resized(png(), 8) / 127.5 - 1, atol=1e-6)


def test_int8_input_is_quantized_and_clipped():
    spec = TensorSpec("in", (1, 8, 8, 3), "int8", scale=1 / 255, zero_point=-128)
    tensor = preprocess(decode_image(png()), Preprocessing(8, 8, mean=0, std=255), spec)
    expected = np.clip(np.rint(resized(png(), 8) - 128), -128, 127)
    np.testing.assert_array_equal(tensor[0], expected)


def test_grey_and_rgba_photos_become_rgb():
    out = io.BytesIO()
    Image.new("LA", (10, 10), (200, 255)).save(out, format="PNG")
    spec = TensorSpec("in", (1, 4, 4, 3), "uint8", 1 / 128, 128)
    tensor = preprocess(decode_image(out.getvalue()), Preprocessing(4, 4, 128, 128), spec)
    assert (tensor == 200).all()


@pytest.mark.parametrize(
    ("data", "reason"),
    [(b"GIF89a\x01\x00\x01\x00", "not a JPEG, PNG or BMP"), (b"plain text", "not a JPEG"),
     (png()[:200], "broken image"), (bomb(), "larger than 16777216 pixels")],
)
def test_what_is_not_a_photo_is_refused(data, reason):
    with pytest.raises(ImageError, match=reason):
        decode_image(data)
