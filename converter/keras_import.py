"""`aiotedge-convert import`: a Keras model (or SavedModel) to one .tflite, optionally quantized.

This is the only module that imports TensorFlow (the `converter` extra), and only inside its
functions, so the rest of the converter and every board work without it. The .tflite it
writes then goes through the same splitter as any other .tflite.

Known pitfalls this code avoids: `TFLiteConverter.from_concrete_functions` silently drops the
weights of a Keras 3 model (so `from_keras_model` is used; it gives a batch-1 input); and the
old `tflite-runtime` breaks when TensorFlow is imported first in the same process, so nothing
here runs an interpreter (verification happens in `verify`, without TensorFlow).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from aiotedge_converter.errors import ConverterError
from aiotedge_converter.metadata import ImportInfo, KerasLayer, embed_import_info

from aiotedge.contracts.errors import ImageError
from aiotedge.contracts.extras import import_extra
from aiotedge.contracts.manifest import Preprocessing
from aiotedge.contracts.tensors import TensorSpec
from aiotedge.media.image import decode_image, list_images, preprocess

log = logging.getLogger(__name__)

QUANTIZATIONS = ("float32", "float16", "dynamic", "int8")
IO_DTYPES = ("uint8", "int8", "float32")
ARCHITECTURES = ("mobilenet_v2",)
#: Calibration images used at most, unless asked otherwise (TF's guidance: ~100-500).
DEFAULT_CALIBRATION_COUNT = 200
SEED = 0


@dataclass(frozen=True)
class ImportOptions:
    quantize: str = "float32"
    calibration: Path | None = None
    calibration_count: int = DEFAULT_CALIBRATION_COUNT
    mean: float = 127.5
    std: float = 127.5
    #: input and output dtype of an int8 model (uint8: a photo's bytes go in as they are)
    io_dtype: str = "uint8"
    progress: bool = True


@dataclass(frozen=True)
class ArchSpec:
    """A built-in architecture: what `--arch` builds instead of reading a model file."""

    name: str
    input_size: int
    alpha: float = 1.0
    classes: int = 1000
    weights: Path | None = None

    def describe(self) -> str:
        weights = self.weights.name if self.weights else "random"
        return (
            f"{self.name}(input_size={self.input_size}, alpha={self.alpha:g}, "
            f"classes={self.classes}, weights={weights})"
        )


def _tensorflow() -> Any:
    """TensorFlow, or a MissingExtraError naming the extra to install."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return import_extra("tensorflow", extra="converter", feature="aiotedge-convert import")


def flatten_layers(model: Any) -> list[KerasLayer]:
    """The model's layers with nested models expanded in place, as the seed paper counted.

    A nested model's own InputLayer stands for the same tensor as the outer model's input,
    so consecutive InputLayers count once: MobileNetV2 without top (154 layers) plus
    pooling, dropout and dense is 157 layers however it was assembled.
    """
    import keras

    flat: list[KerasLayer] = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            inner = flatten_layers(layer)
            if flat and inner and flat[-1].kind == "InputLayer" == inner[0].kind:
                inner = inner[1:]
            flat.extend(inner)
        else:
            flat.append(KerasLayer(layer.name, type(layer).__name__))
    return flat


def build_architecture(spec: ArchSpec) -> Any:
    """The seed paper's model shape: MobileNetV2 features, pooling, dropout, softmax dense.

    Built flat (one functional model, 157 layers) with random seeded weights, or weights
    from a `.weights.h5` file saved from the same architecture; nothing is downloaded.
    """
    import keras
    from keras import layers

    if spec.name not in ARCHITECTURES:
        raise ConverterError(f"unknown --arch {spec.name!r} (known: {', '.join(ARCHITECTURES)})")
    if spec.input_size < 32 or spec.classes < 1 or spec.alpha <= 0:
        raise ConverterError("--input-size must be >= 32, --classes >= 1 and --alpha > 0")
    keras.utils.set_random_seed(SEED)
    base = keras.applications.MobileNetV2(
        input_shape=(spec.input_size, spec.input_size, 3),
        alpha=spec.alpha,
        include_top=False,
        weights=None,
    )
    x = layers.GlobalAveragePooling2D()(base.output)
    x = layers.Dropout(0.2)(x)
    outputs = layers.Dense(spec.classes, activation="softmax", name="predictions")(x)
    name = f"mobilenet_v2_{spec.alpha:g}_{spec.input_size}"
    model = keras.Model(base.input, outputs, name=name)
    if spec.weights is not None:
        try:
            model.load_weights(spec.weights)
        except (OSError, ValueError) as exc:
            raise ConverterError(f"{spec.weights}: cannot load weights: {exc}") from exc
    return model


def load_keras(path: Path) -> Any:
    """A .keras or legacy .h5 model, without its training configuration."""
    import keras

    try:
        return keras.models.load_model(path, compile=False)
    except (OSError, ValueError, TypeError) as exc:
        raise ConverterError(f"{path}: cannot load as a Keras model: {exc}") from exc


def is_saved_model(path: Path) -> bool:
    return path.is_dir() and (path / "saved_model.pb").is_file()


def calibration_tensors(
    directory: Path, shape: Sequence[int | None], options: ImportOptions
) -> list[np.ndarray]:
    """The calibration photos as float inputs, normalised as the model was trained."""
    if shape[1] is None or shape[2] is None:
        raise ConverterError(f"int8 calibration needs a fixed input size, not {tuple(shape)}")
    height, width = int(shape[1]), int(shape[2])
    prep = Preprocessing(width=width, height=height, mean=options.mean, std=options.std)
    spec = TensorSpec("calibration", (1, height, width, 3), "float32")
    tensors = []
    for path in list_images(directory)[: options.calibration_count]:
        try:
            tensors.append(preprocess(decode_image(path.read_bytes()), prep, spec))
        except (OSError, ImageError) as exc:
            raise ConverterError(f"{path}: {exc}") from exc
    return tensors


def _representative(
    tensors: list[np.ndarray], progress: bool
) -> Callable[[], Iterator[list[np.ndarray]]]:
    def dataset() -> Iterator[list[np.ndarray]]:
        tqdm = import_extra("tqdm", extra="converter", feature="int8 calibration").tqdm
        for tensor in tqdm(tensors, desc="calibrating", unit="image", disable=not progress):
            yield [tensor]

    return dataset


def _configure(
    converter: Any, tf: Any, options: ImportOptions, calibration: list[np.ndarray]
) -> None:
    """Set the converter's optimisation for the requested quantization."""
    if options.quantize == "float32":
        return
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if options.quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif options.quantize == "int8":
        converter.representative_dataset = _representative(calibration, options.progress)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        io = {"uint8": tf.uint8, "int8": tf.int8, "float32": tf.float32}[options.io_dtype]
        converter.inference_input_type = io
        converter.inference_output_type = io


@dataclass
class _Source:
    """A TFLite converter for the source, with what the import record needs from it."""

    name: str
    converter: Any
    input_shape: tuple[int | None, ...]
    layers: list[KerasLayer]


def _open_source(tf: Any, source: Path | ArchSpec) -> _Source:
    if isinstance(source, ArchSpec):
        model, name = build_architecture(source), source.describe()
    elif is_saved_model(source):
        loaded = tf.saved_model.load(str(source))
        signature = loaded.signatures.get("serving_default")
        if signature is None:
            raise ConverterError(f"{source}: the SavedModel has no serving_default signature")
        specs = list(signature.structured_input_signature[1].values())
        if len(specs) != 1:
            raise ConverterError(f"{source}: only single-input models can be split")
        converter = tf.lite.TFLiteConverter.from_saved_model(str(source))
        return _Source(source.name, converter, tuple(specs[0].shape), [])
    else:
        model, name = load_keras(source), source.name
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ConverterError(f"{name}: only single-input single-output models can be split")
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    return _Source(name, converter, tuple(model.inputs[0].shape), flatten_layers(model))


def convert(source: Path | ArchSpec, out: Path, options: ImportOptions) -> ImportInfo:
    """Convert a Keras file, a SavedModel or a built-in architecture into `out` (.tflite)."""
    if options.quantize not in QUANTIZATIONS:
        raise ConverterError(f"unknown --quantize {options.quantize!r}")
    if options.quantize == "int8" and options.calibration is None:
        raise ConverterError("--quantize int8 needs --calibration DIR (a folder of photos)")
    if options.io_dtype not in IO_DTYPES:
        raise ConverterError(f"unknown --io-dtype {options.io_dtype!r}")
    if not isinstance(source, ArchSpec):
        source = Path(source)
        if not source.exists():
            raise ConverterError(f"{source}: no such model file or directory")
    tf = _tensorflow()
    opened = _open_source(tf, source)
    calibration: list[np.ndarray] = []
    if options.calibration is not None and options.quantize == "int8":
        shape = opened.input_shape
        if len(shape) != 4 or shape[3] != 3:
            raise ConverterError(
                f"{opened.name}: int8 calibration needs an NHWC RGB input, not {shape}"
            )
        calibration = calibration_tensors(options.calibration, shape, options)
        log.info("calibrating on %d images from %s", len(calibration), options.calibration)
    _configure(opened.converter, tf, options, calibration)
    chatter = io.StringIO()  # Keras prints the temporary SavedModel's signature to stdout
    try:
        with contextlib.redirect_stdout(chatter), warnings.catch_warnings():
            # int8 I/O is calibrated from the dataset: TF's "no input statistics" is moot.
            warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
            tflite = opened.converter.convert()
    except Exception as exc:  # the converter raises many types, all meaning "cannot convert"
        raise ConverterError(f"{opened.name}: TFLite conversion failed: {exc}") from exc
    finally:
        log.debug("TFLite converter said: %s", chatter.getvalue())
    info = ImportInfo(
        source=opened.name,
        quantize=options.quantize,
        mean=options.mean,
        std=options.std,
        layers=tuple(opened.layers),
        calibration_images=len(calibration),
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(embed_import_info(tflite, info))
    return info
