"""Photo decoding and preprocessing for stage 0 (and for the converter's verify)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

from aiotedge.manifest import Preprocessing, TensorSpec

#: Formats a camera may send. Pillow can open many more, but a daemon on the network should
#: only parse the few a camera produces.
IMAGE_FORMATS = ("JPEG", "PNG", "BMP")


class ImageError(ValueError):
    """The bytes are not a photo stage 0 accepts."""


def decode_image(data: bytes) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
        image.load()
    except UnidentifiedImageError:
        raise ImageError("not a JPEG, PNG or BMP image") from None
    except (OSError, SyntaxError, ValueError) as exc:  # a known format, but broken
        raise ImageError(f"broken image: {exc}") from None
    return image


def preprocess(image: Image.Image, prep: Preprocessing, spec: TensorSpec) -> np.ndarray:
    """The model input for a photo: RGB, bilinear resize, (pixel - mean) / std, quantize."""
    resized = image.convert("RGB").resize((prep.width, prep.height), Image.Resampling.BILINEAR)
    values = (np.asarray(resized, dtype=np.float32) - np.float32(prep.mean)) / np.float32(prep.std)
    dtype = np.dtype(spec.dtype)
    if dtype.kind in "iu":
        if spec.quantized:
            values = values / np.float32(spec.scale) + np.float32(spec.zero_point)
        info = np.iinfo(dtype)
        values = np.clip(np.rint(values), info.min, info.max)
    return values.astype(dtype).reshape(spec.shape)
