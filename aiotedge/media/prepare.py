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

from aiotedge.contracts.manifest import Preprocessing
from aiotedge.contracts.tensors import TensorSpec
from aiotedge.media.image import model_size, preprocess
from aiotedge.media.sources.base import CapturedFrame

#: what `[camera] preprocess` may say
PREPROCESS_MODES = ("none", "jpeg", "tensor")
_JPEG_START = b"\xff\xd8"


@dataclass(frozen=True)
class ModelInput:
    """Stage 0's input: how a photo becomes it, and the tensor it must be."""

    preprocessing: Preprocessing
    spec: TensorSpec


#: JPEG chroma subsampling: 4:2:0 (Pillow's default) halves the colour's resolution both ways
SUBSAMPLING_420 = 2
SUBSAMPLING_444 = 0


def encode_jpeg(image: Image.Image, quality: int, subsampling: int = SUBSAMPLING_420) -> bytes:
    out = io.BytesIO()
    image.convert("RGB").save(out, format="JPEG", quality=quality, subsampling=subsampling)
    return out.getvalue()


def prepare(frame: CapturedFrame, mode: str, model: ModelInput | None,
            quality: int) -> bytes | np.ndarray:
    """The frame's payload: image bytes, or the model's input tensor.

    "none" (or a model not known yet) sends what the source has (a decoded frame as a JPEG);
    "jpeg" the picture resized to the model's input, with colour at full resolution (at 224
    pixels, 4:2:0 subsampling changed more top-1 classes than the quality did: docs/cameras.md);
    "tensor" the input tensor. Raises ImageError for a picture stage 0 could not use either.
    """
    if mode == "none" or model is None:
        if frame.encoded is not None:
            return frame.encoded
        return encode_jpeg(frame.picture(), quality)
    picture = frame.picture()
    if mode == "tensor":
        return preprocess(picture, model.preprocessing, model.spec)
    return encode_jpeg(model_size(picture, model.preprocessing), quality, SUBSAMPLING_444)


def snapshot_jpeg(frame: CapturedFrame, quality: int) -> bytes:
    """The frame as a JPEG for a dashboard: a JPEG source's bytes as they are."""
    if frame.encoded is not None and frame.encoded.startswith(_JPEG_START):
        return frame.encoded
    return encode_jpeg(frame.picture(), quality)
