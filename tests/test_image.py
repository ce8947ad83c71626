"""Stage 0 decoding and preprocessing: photos upright and in 8 bits, the manifest's rule exactly,
and refusal of what is not a photo."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from aiotedge.contracts.errors import ImageError, ModelError
from aiotedge.contracts.geometry import View
from aiotedge.contracts.manifest import Preprocessing
from aiotedge.contracts.tensors import TensorSpec
from aiotedge.media.image import (
    MAX_PIXELS,
    decode_image,
    default_preprocessing,
    eight_bit,
    list_images,
    model_size,
    preprocess,
)
from aiotedge.media.prepare import ModelInput, prepare, snapshot_jpeg
from aiotedge.media.sources.base import CapturedFrame
from aiotedge.tflite.runtime import Segment
from support.paths import SHARED_IMAGES, SHARED_MODEL

#: EXIF orientation -> how a camera stores the upright picture under that tag, from the EXIF
#: definition (where the stored first row and column belong in the upright picture); numpy
#: only, so that the tests do not repeat Pillow's own table.
STORED_AS = {
    2: np.fliplr,                             # first row on top, first column on the right
    3: lambda up: np.rot90(up, 2),            # bottom, right
    4: np.flipud,                             # bottom, left
    5: lambda up: up.swapaxes(0, 1),          # left, top
    6: lambda up: np.rot90(up, 1),            # right, top: shown turned 90 degrees clockwise
    7: lambda up: np.rot90(up, 2).swapaxes(0, 1),  # right, bottom
    8: lambda up: np.rot90(up, -1),           # left, bottom: shown turned counter-clockwise
}


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


def gradient(width: int = 48, height: int = 32) -> np.ndarray:
    """An RGB picture whose every flip and turn looks different."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 5, y * 7, (x + y) * 3], axis=-1).clip(0, 255).astype(np.uint8)


def tagged(upright: np.ndarray, orientation: int, image_format: str) -> bytes:
    """The photo a camera writes: pixels as its sensor read them, EXIF saying how to turn them."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = io.BytesIO()
    stored = Image.fromarray(np.ascontiguousarray(STORED_AS[orientation](upright)))
    stored.save(out, format=image_format, exif=exif, quality=100, subsampling=0)
    return out.getvalue()


@pytest.mark.parametrize("orientation", sorted(STORED_AS))
def test_a_lossless_photo_is_turned_upright_exactly(orientation):
    decoded = decode_image(tagged(gradient(), orientation, "PNG"))
    np.testing.assert_array_equal(np.asarray(decoded.convert("RGB")), gradient())


@pytest.mark.parametrize("orientation", sorted(STORED_AS))
def test_a_jpeg_is_turned_upright(orientation):
    decoded = np.asarray(decode_image(tagged(gradient(), orientation, "JPEG")).convert("RGB"))
    assert decoded.shape == gradient().shape
    np.testing.assert_allclose(decoded, gradient(), atol=8)  # JPEG at quality 100: near


def test_a_turned_photo_too_large_upright_is_refused_before_decoding():
    exif = Image.Exif()
    exif[0x0112] = 6
    out = io.BytesIO()
    Image.new("L", (MAX_PIXELS // 4096 + 1, 4096)).save(out, format="PNG", exif=exif)
    with pytest.raises(ImageError, match="4097x4096 pixels is larger"):
        decode_image(out.getvalue())


def test_unreadable_exif_is_refused_with_a_reason():
    out = io.BytesIO()
    Image.fromarray(gradient()).save(out, format="PNG", exif=b"Exif\x00\x00XX not TIFF")
    with pytest.raises(ImageError, match="EXIF"):
        decode_image(out.getvalue())


@pytest.fixture(scope="module")
def mobilenet(shared_data) -> Segment:
    return Segment(SHARED_MODEL)


def top1(model: Segment, photo: bytes) -> int:
    prep = Preprocessing(224, 224, mean=127.5, std=127.5)  # as a manifest states it
    return int(np.argmax(model.run(preprocess(decode_image(photo), prep, model.input_spec))))


@pytest.mark.shared_data
@pytest.mark.parametrize("orientation", [3, 6, 8])  # the turns a camera held sideways records
def test_real_photos_taken_sideways_keep_their_class(mobilenet, orientation):
    photos = {path.name: path.read_bytes() for path in list_images(SHARED_IMAGES)}
    turned = {
        name: tagged(np.asarray(decode_image(photo).convert("RGB")), orientation, "PNG")
        for name, photo in photos.items()
    }
    classes = {name: top1(mobilenet, photo) for name, photo in photos.items()}
    assert {name: top1(mobilenet, photo) for name, photo in turned.items()} == classes


def png16(samples: np.ndarray) -> bytes:
    """A 16-bit PNG (grey, grey+alpha, RGB or RGBA by the last axis), written by hand: Pillow
    writes 16-bit grey only."""
    height, width, channels = samples.shape
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    rows = b"".join(b"\x00" + row.tobytes() for row in samples.astype(">u2").reshape(height, -1))
    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))


@pytest.mark.parametrize("channels", [1, 2, 3, 4], ids=["grey", "grey+alpha", "rgb", "rgba"])
def test_a_16_bit_png_decodes_like_its_8_bit_counterpart(channels):
    ramp = np.linspace(0, 65535, 256).round()
    wide = np.stack([np.tile(np.roll(ramp, 50 * c), (4, 1)) for c in range(channels)], axis=-1)
    narrow = np.rint(wide / 257).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(narrow[..., 0] if channels == 1 else narrow).save(out, format="PNG")
    from_16_bit = np.asarray(decode_image(png16(wide)).convert("RGB"), dtype=int)
    from_8_bit = np.asarray(decode_image(out.getvalue()).convert("RGB"), dtype=int)
    np.testing.assert_allclose(from_16_bit, from_8_bit, atol=1)


@pytest.mark.parametrize("bits", [10, 12, 14])
def test_a_16_bit_grey_png_of_a_narrower_sensor_decodes_like_its_8_bit_photo(bits):
    """12-bit data in a 16-bit PNG decoded near black (0 of 10 photos right)."""
    photo = np.tile(np.arange(256, dtype=np.uint16), (4, 1))
    photo[0, 0] = 255  # the brightest value is there, whatever the photo
    stored = (photo << (bits - 8)) | ((1 << (bits - 8)) - 1)  # the sensor's low bits set
    decoded = np.asarray(decode_image(png16(stored[..., None])).convert("L"))
    np.testing.assert_array_equal(decoded, photo)


def test_wide_grey_is_scaled_and_what_has_no_8_bit_form_is_refused():
    grey = Image.fromarray(np.array([[0, 256, 32768, 65535]], dtype=np.int32))
    assert grey.mode == "I"  # how older Pillow versions open a 16-bit grey PNG
    assert np.asarray(eight_bit(grey)).tolist() == [[0, 1, 128, 255]]
    with pytest.raises(ImageError, match=r"outside 0\.\.65535"):
        eight_bit(Image.fromarray(np.array([[-1, 70000]], dtype=np.int32)))
    with pytest.raises(ImageError, match="F pixels"):
        eight_bit(Image.fromarray(np.zeros((2, 2), dtype=np.float32)))


# -- the same work at the camera (media/prepare.py) ------------------------------------------------

CAMERA_MODEL = ModelInput(Preprocessing(24, 16, mean=127.5, std=127.5),
                          TensorSpec("in", (1, 16, 24, 3), "int8", scale=1 / 127.5,
                                     zero_point=0))


@pytest.mark.parametrize("orientation", [3, 6, 8])
@pytest.mark.parametrize("image_format", ["PNG", "JPEG"])
def test_a_camera_preprocesses_a_turned_photo_as_stage_zero_would(orientation, image_format):
    photo = tagged(gradient(), orientation, image_format)
    frame = CapturedFrame(1.0, "turned", encoded=photo)
    tensor, view = prepare(frame, "tensor", CAMERA_MODEL, 90)
    assert view == View(*decode_image(photo).size)  # the upright frame, whole
    np.testing.assert_array_equal(tensor, preprocess(
        decode_image(photo), CAMERA_MODEL.preprocessing, CAMERA_MODEL.spec))
    # EXIF counted: not the tensor of the pixels as the sensor stored them
    stored = Image.open(io.BytesIO(photo))
    assert not np.array_equal(
        tensor, preprocess(stored, CAMERA_MODEL.preprocessing, CAMERA_MODEL.spec))
    small = Image.open(io.BytesIO(prepare(frame, "jpeg", CAMERA_MODEL, 95)[0]))
    assert (small.format, small.size) == ("JPEG", (24, 16))
    upright = np.asarray(model_size(decode_image(photo), CAMERA_MODEL.preprocessing), dtype=int)
    np.testing.assert_allclose(np.asarray(small, dtype=int), upright, atol=24)


def test_a_camera_sends_a_photo_untouched_and_decoded_frames_exactly():
    photo = png()
    as_is, view = prepare(CapturedFrame(1.0, "p", encoded=photo), "none", CAMERA_MODEL, 90)
    assert as_is is photo and view == View(*Image.open(io.BytesIO(photo)).size)
    # until stage 0's preprocessing is known, frames go as they are
    assert prepare(CapturedFrame(1.0, "p", encoded=photo), "tensor", None, 90)[0] is photo
    # a decoded frame has no bytes of its own: its exact pixels, as a PNG until the model is
    # known, then as the tensor stage 0 would make of them
    decoded = CapturedFrame(1.0, "d", pixels=gradient)
    for mode in ("none", "jpeg", "tensor"):
        lossless = Image.open(io.BytesIO(prepare(decoded, mode, None, 90)[0]))
        assert lossless.format == "PNG"
        np.testing.assert_array_equal(np.asarray(lossless), gradient())
    np.testing.assert_array_equal(prepare(decoded, "none", CAMERA_MODEL, 90)[0], preprocess(
        Image.fromarray(gradient()), CAMERA_MODEL.preprocessing, CAMERA_MODEL.spec))
    assert Image.open(io.BytesIO(snapshot_jpeg(decoded, 90))).format == "JPEG"
    assert Image.open(io.BytesIO(snapshot_jpeg(CapturedFrame(1.0, "p", encoded=photo),
                                               90))).format == "JPEG"
    with pytest.raises(ImageError):
        prepare(CapturedFrame(1.0, "bad", encoded=b"plain text"), "jpeg", CAMERA_MODEL, 90)


def test_an_unquantized_uint8_input_gets_raw_pixels_not_the_float_range():
    """MoveNet takes uint8 pixels with no quantization: (pixel - 127.5) / 127.5 would make
    every pixel 0 or 1 (and 0 of 17 keypoints found on a photo of a person)."""
    spec = TensorSpec("pixels", (1, 2, 2, 3), "uint8")
    prep = default_preprocessing(spec, None, None)
    assert (prep.mean, prep.std) == (0.0, 1.0)
    photo = Image.fromarray(np.array([[[0, 100, 255], [7, 8, 9]]] * 2, dtype=np.uint8))
    np.testing.assert_array_equal(preprocess(photo, prep, spec)[0], np.asarray(photo))


def test_a_float_input_gets_the_range_minus_one_to_one():
    prep = default_preprocessing(TensorSpec("x", (1, 4, 4, 3), "float32"), None, None)
    assert (prep.mean, prep.std) == (127.5, 127.5)


def test_an_unquantized_int8_input_is_refused_with_the_flags_that_fix_it():
    spec = TensorSpec("x", (1, 4, 4, 3), "int8")
    with pytest.raises(ModelError, match=r"int8 with no quantization.*--mean M --std S"):
        default_preprocessing(spec, None, None)
    assert default_preprocessing(spec, 128.0, 1.0).mean == 128.0


def test_sampled_resizing_interpolates_the_2x2_pixels_nearest_each_centre():
    """As TFLite Support (libyuv) and tf.image.resize do; Pillow's own bilinear widens its
    filter when shrinking and mixes in the farther pixels."""
    row = np.array([[[0] * 3, [100] * 3, [200] * 3, [250] * 3]], dtype=np.uint8)
    photo = Image.fromarray(row)
    sampled = model_size(photo, Preprocessing(2, 1, resize="sampled"))
    assert np.asarray(sampled)[0, :, 0].tolist() == [50, 225]
    antialiased = model_size(photo, Preprocessing(2, 1))
    assert np.asarray(antialiased)[0, :, 0].tolist() != [50, 225]
