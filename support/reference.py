"""What the unsplit model says: the reference a split pipeline's predictions and an imported
model's outputs are checked against."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from aiotedge.contracts.events import top_k
from aiotedge.contracts.manifest import Preprocessing
from aiotedge.contracts.tensors import TensorSpec
from aiotedge.media.image import decode_image, list_images, preprocess
from aiotedge.tflite.runtime import Segment


def whole_model_top(manifest, photo: bytes, k: int = 5):
    """What the unsplit source model says about a photo, in the prediction's own terms."""
    whole = Segment(manifest.directory / manifest.source.file)
    tensor = preprocess(decode_image(photo), manifest.preprocessing, whole.input_spec)
    return top_k(whole.run(tensor), whole.output_spec, manifest, k)


def photo_inputs(photos: Path, height: int, width: int) -> np.ndarray:
    """The photos as float inputs in [-1, 1], exactly as stage 0 preprocesses them."""
    prep = Preprocessing(width=width, height=height, mean=127.5, std=127.5)
    spec = TensorSpec("input", (1, height, width, 3), "float32")
    tensors = [preprocess(decode_image(p.read_bytes()), prep, spec) for p in list_images(photos)]
    return np.concatenate(tensors)
