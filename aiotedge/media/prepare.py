"""What a camera sends for a frame: the picture as it is, or already in the model's terms.

Stage 0 decodes and resizes every photo before its segment runs, which on a small board can
cost more than the segment itself. A camera that knows stage 0's preprocessing can do that work
instead and send the frame at the model's input size, as a JPEG (small on the network, a little
lossy), or as the input tensor itself (exactly what stage 0 would have computed).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from aiotedge.contracts.errors import ImageError
from aiotedge.contracts.geometry import View
from aiotedge.contracts.manifest import Preprocessing
from aiotedge.contracts.tensors import TensorSpec
from aiotedge.media.image import model_size, preprocess, upright_size
from aiotedge.media.sources.base import CapturedFrame

#: what `[camera] preprocess` may say
PREPROCESS_MODES = ("none", "jpeg", "tensor")
_JPEG_START = b"\xff\xd8"


@dataclass(frozen=True)
class ModelInput:
    """Stage 0's input: how a photo becomes it, and the tensor it must be."""

    preprocessing: Preprocessing
    spec: TensorSpec


class CropError(ImageError):
    """The camera's crop does not lie in a frame (docs/cameras.md: the camera stops when it
    does not fit its first frame, and skips a later frame of another size)."""


#: how Pillow turns a picture clockwise (its ROTATE_n turn counter-clockwise)
_CLOCKWISE = {90: Image.Transpose.ROTATE_270, 180: Image.Transpose.ROTATE_180,
              270: Image.Transpose.ROTATE_90}


@dataclass(frozen=True)
class Geometry:
    """What a camera does to each frame before it sends it (`[camera] crop, rotate, flip`):
    a `View` once a frame's size is known."""

    crop: tuple[int, int, int, int] | None = None
    rotate: int = 0
    flip: bool = False

    @property
    def identity(self) -> bool:
        return self.crop is None and not self.rotate and not self.flip

    def view(self, width: int, height: int) -> View:
        """The view of a frame of this size; CropError when the crop does not lie in it."""
        try:
            return View(width, height, self.crop, self.rotate, self.flip)
        except ValueError as exc:
            raise CropError(str(exc)) from None


def apply_view(picture: Image.Image, view: View) -> Image.Image:
    """The picture as the view says it is sent: cropped, turned clockwise, mirrored."""
    if view.crop is not None:
        x, y, w, h = view.crop
        picture = picture.crop((x, y, x + w, y + h))
    if view.rotate:
        picture = picture.transpose(_CLOCKWISE[view.rotate])
    if view.flip:
        picture = picture.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return picture


#: JPEG chroma subsampling: 4:2:0 (Pillow's default) halves the colour's resolution both ways
SUBSAMPLING_420 = 2
SUBSAMPLING_444 = 0


def encode_jpeg(image: Image.Image, quality: int, subsampling: int = SUBSAMPLING_420) -> bytes:
    out = io.BytesIO()
    image.convert("RGB").save(out, format="JPEG", quality=quality, subsampling=subsampling)
    return out.getvalue()


def encode_png(image: Image.Image) -> bytes:
    """Lossless, at zlib's fastest level: the pixels exactly, for a third of raw RGB's bytes."""
    out = io.BytesIO()
    image.convert("RGB").save(out, format="PNG", compress_level=1)
    return out.getvalue()


def prepare(frame: CapturedFrame, mode: str, model: ModelInput | None, quality: int,
            geometry: Geometry = Geometry()) -> tuple[bytes | np.ndarray, View]:
    """The frame's payload (image bytes, or the model's input tensor) and its view: where the
    payload's picture lies in the frame (`geometry` applied the same way on every path).

    "none" sends what the source has: a photo's bytes, an MJPEG camera's JPEG. A decoded frame
    (H.264 from a file or a camera) has no bytes of its own to pass on, and a lossy copy of it
    changes stage 0's predictions (JPEG q90 4:2:0: 5 of 40 frames of a test clip; q100 4:4:4
    still 5 of 100: docs/cameras.md): it goes as the input tensor once stage 0's preprocessing is
    known, as a PNG (lossless) until then, so stage 0 sees exactly the decoded pixels.
    "jpeg" sends the picture resized to the model's input, with colour at full resolution (at
    224 pixels, 4:2:0 subsampling changed more top-1 classes than the quality did); "tensor" the
    input tensor; either as "none" until the model is known. A crop, turn or mirror makes a
    picture of its own, which goes as a decoded frame does. Raises ImageError for a picture
    stage 0 could not use either, CropError for a crop outside the frame.
    """
    if frame.encoded is not None and geometry.identity and (mode == "none" or model is None):
        return frame.encoded, geometry.view(*upright_size(frame.encoded))
    picture = frame.picture()
    view = geometry.view(*picture.size)
    picture = apply_view(picture, view)
    if model is None:
        return encode_png(picture), view
    if mode in ("none", "tensor"):
        return preprocess(picture, model.preprocessing, model.spec), view
    return encode_jpeg(model_size(picture, model.preprocessing), quality, SUBSAMPLING_444), view


def snapshot_jpeg(frame: CapturedFrame, quality: int) -> bytes:
    """The frame as a JPEG for a dashboard: a JPEG source's bytes as they are."""
    if frame.encoded is not None and frame.encoded.startswith(_JPEG_START):
        return frame.encoded
    return encode_jpeg(frame.picture(), quality)
