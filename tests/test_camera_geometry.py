"""A camera's crop, turn and mirror (`[camera] crop, rotate, flip`): each way of sending a frame
applies the same transform, the one its `view` says, and a crop outside the frame is refused in
one line."""

from __future__ import annotations

import io
import itertools

import numpy as np
import pytest
from PIL import Image

from aiotedge.cli import main
from aiotedge.contracts.manifest import Preprocessing
from aiotedge.contracts.tensors import TensorSpec
from aiotedge.media.prepare import CropError, Geometry, ModelInput, prepare
from aiotedge.media.sources.base import CapturedFrame

WIDTH, HEIGHT = 64, 48
CROP = (8, 6, 40, 30)


def frame_pixels() -> np.ndarray:
    """Random colours: every pixel tells where it came from (almost surely one place only)."""
    return np.random.default_rng(19).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)


def png(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def exact_model(width: int, height: int) -> ModelInput:
    """A float model whose input is the picture's pixels unchanged, at the sent size."""
    return ModelInput(Preprocessing(width=width, height=height, mean=0.0, std=1.0),
                      TensorSpec("in", (1, height, width, 3), "float32"))


def as_view_says(sent: np.ndarray, pixels: np.ndarray, view) -> None:
    """Each pixel of the sent picture is the frame's pixel the view maps its centre to."""
    rows, columns = sent.shape[:2]
    assert (columns, rows) == view.sent_size
    expected = np.empty_like(sent)
    for row, column in itertools.product(range(rows), range(columns)):
        x, y = view.point_to_source((column + 0.5) / columns, (row + 0.5) / rows)
        expected[row, column] = pixels[int(y), int(x)]
    np.testing.assert_array_equal(sent, expected)


GEOMETRIES = [Geometry(crop, rotate, flip) for crop, rotate, flip in itertools.product(
    (None, CROP), (0, 90, 180, 270), (False, True))]


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=str)
@pytest.mark.parametrize("encoded", [False, True], ids=["decoded", "photo"])
def test_every_way_of_sending_a_frame_applies_the_transform_its_view_says(geometry, encoded):
    pixels = frame_pixels()
    frame = (CapturedFrame(1.0, "f", encoded=png(pixels)) if encoded
             else CapturedFrame(1.0, "f", pixels=lambda: pixels))
    # as it is (a decoded frame or a turned photo goes as an exact PNG)
    payload, view = prepare(frame, "none", None, 90, geometry)
    assert (view.width, view.height, view.rotate, view.flip) == (
        WIDTH, HEIGHT, geometry.rotate, geometry.flip)
    assert view.region == (geometry.crop or (0, 0, WIDTH, HEIGHT))
    if geometry.identity and encoded:
        assert payload == frame.encoded  # untouched: nothing to do
    as_view_says(np.asarray(Image.open(io.BytesIO(payload)).convert("RGB")), pixels, view)
    # as the input tensor of a model whose input is the sent picture's pixels
    model = exact_model(*view.sent_size)
    tensor, tensor_view = prepare(frame, "tensor", model, 90, geometry)
    assert tensor_view == view
    as_view_says(tensor[0].astype(np.uint8), pixels, view)
    # as a JPEG at the model's size: the same picture, give or take JPEG's losses
    jpeg, jpeg_view = prepare(frame, "jpeg", model, 100, geometry)
    assert jpeg_view == view
    small = np.asarray(Image.open(io.BytesIO(jpeg)), dtype=int)
    assert np.abs(small - tensor[0].astype(int)).mean() < 12


def test_a_crop_outside_the_frame_is_a_crop_error_naming_the_frames_size():
    frame = CapturedFrame(1.0, "f", pixels=frame_pixels)
    with pytest.raises(CropError, match=f"does not lie in a frame of {WIDTH}x{HEIGHT}"):
        prepare(frame, "none", None, 90, Geometry((30, 0, 40, 10)))


def test_a_camera_whose_crop_misses_its_first_frame_stops_with_one_line(broker, tmp_path, capfd):
    photo = tmp_path / "photo.png"
    photo.write_bytes(png(frame_pixels()))
    status = main(["camera", "--broker", str(broker.address), "--source", str(photo),
                   "--crop", "0,0,65,48", "--frames", "1"])
    assert status == 2
    errors = [line.split(": ", 1)[1] for line in capfd.readouterr().err.splitlines()
              if " ERROR " in line]
    assert errors == ["camera cam0: key 'camera.crop': crop (0, 0, 65, 48) does not lie in a "
                      f"frame of {WIDTH}x{HEIGHT} pixels"]
