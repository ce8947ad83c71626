"""Small real test models, built without the shared data, so every test can always run.

TensorFlow builds them, but never inside the pytest process: the board runtime must be shown to
work without TensorFlow. `build_test_models` runs this file as a script in a subprocess, which
imports TensorFlow, builds a small residual CNN with random (seeded) weights and converts it to

* ``float``: float32 throughout;
* ``int8``: full-integer quantization (int8 weights and activations) with uint8 input and
  output, calibrated on random images, so the converter's raw-pixel default applies;
* ``two_inputs``: a tiny float model with two inputs, which the converter must refuse.

The CNN has a non-square input (HEIGHT x WIDTH) so a swapped width/height shows, and two
residual blocks so that some positions are not cut points.

The same Keras model is also saved as the sources `aiotedge-convert import` reads (``.keras``,
legacy ``.h5`` and a SavedModel directory), with Keras's own outputs for given inputs, so an
import can be checked against Keras without TensorFlow in the test process; and so is a
weights file for a small instance of the converter's built-in MobileNetV2 (``ARCH``).

    python support/models.py OUT_DIR                        # writes the MODEL_FILES
    python support/models.py --keras-sources OUT_DIR IN.npy # KERAS_FILES and Keras's outputs
    python support/models.py --keras-predict MODEL IN.npy OUT.npy
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

HEIGHT, WIDTH, CLASSES = 40, 32, 10
#: Class names for the test models' outputs (CIFAR-10's, for something readable).
LABELS = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
MODEL_FILES = {"float": "float.tflite", "int8": "int8.tflite", "two_inputs": "two_inputs.tflite"}
KERAS_FILES = {
    "keras": "model.keras",
    "h5": "model.h5",
    "saved_model": "saved_model",
    "arch_weights": "arch.weights.h5",
}
KERAS_OUTPUTS = "keras_outputs.npy"
#: The built-in architecture whose weights file the sources include (small, quick to convert).
ARCH = {"input_size": 32, "alpha": 0.35, "classes": 3}
BUILD_TIMEOUT_S = 300
SEED = 7


def run_with_tensorflow(args: list[str], what: str) -> subprocess.CompletedProcess[str]:
    """Run a command that imports TensorFlow in its own process; skip when TF is absent."""
    # here, not at the top: this file also runs as a script, where `support` is not importable
    from support.unavailable import unavailable

    if importlib.util.find_spec("tensorflow") is None:
        unavailable(
            f"TensorFlow is not installed, so {what} cannot run "
            "(pip install tensorflow-cpu, the converter extra)"
        )
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    done = subprocess.run(
        args, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, env=env, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return done


def build_test_models(out_dir: Path) -> dict[str, Path]:
    """Build (in a subprocess) the test models into out_dir; skip the test if TF is absent."""
    out_dir = Path(out_dir)
    run_with_tensorflow([sys.executable, __file__, str(out_dir)], "building the test models")
    return {key: out_dir / name for key, name in MODEL_FILES.items()}


def build_keras_sources(out_dir: Path, inputs: np.ndarray) -> dict[str, Path]:
    """The float test CNN as .keras, .h5 and SavedModel, plus Keras's outputs for `inputs`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    np.save(out_dir / "inputs.npy", inputs)
    run_with_tensorflow(
        [sys.executable, __file__, "--keras-sources", str(out_dir), str(out_dir / "inputs.npy")],
        "saving the Keras test sources",
    )
    paths = {key: out_dir / name for key, name in KERAS_FILES.items()}
    paths["outputs"] = out_dir / KERAS_OUTPUTS
    paths["arch_inputs"] = out_dir / "arch_inputs.npy"
    paths["arch_outputs"] = out_dir / "arch_outputs.npy"
    return paths


def keras_predict(model: Path, inputs: np.ndarray, scratch: Path) -> np.ndarray:
    """Keras's own outputs of a .keras/.h5 model for a batch of inputs (in a subprocess)."""
    np.save(scratch / "predict_in.npy", inputs)
    run_with_tensorflow(
        [
            sys.executable,
            __file__,
            "--keras-predict",
            str(model),
            str(scratch / "predict_in.npy"),
            str(scratch / "predict_out.npy"),
        ],
        f"Keras prediction with {model.name}",
    )
    return np.load(scratch / "predict_out.npy")


def write_labels(path: Path) -> Path:
    """The test models' labels file, one class name a line, as `split --labels` reads it."""
    path.write_text("\n".join(LABELS) + "\n")
    return path


def write_test_images(directory: Path) -> list[Path]:
    """A few generated photos (JPEG, PNG, BMP; odd sizes and modes) to feed through stage 0."""
    from PIL import Image

    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    y, x = np.mgrid[0:60, 0:80]
    gradient = np.stack([x * 3, y * 4, (x + y) * 2], axis=-1).clip(0, 255).astype(np.uint8)
    noise = rng.integers(0, 256, size=(50, 50, 3), dtype=np.uint8)
    checker = (((x // 10 + y // 10) % 2) * 255).astype(np.uint8)
    images = {
        "gradient.png": Image.fromarray(gradient),
        "noise.jpg": Image.fromarray(noise),
        "checker.bmp": Image.fromarray(checker, mode="L"),
        "tall.png": Image.fromarray(np.ascontiguousarray(np.rot90(gradient))).convert("RGBA"),
    }
    paths = []
    for name, image in images.items():
        path = directory / name
        image.save(path)
        paths.append(path)
    return paths


def import_model(source: Path | None, out: Path, *args: str) -> str:
    """Run `aiotedge-convert import` in its own process; its stdout."""
    command = [sys.executable, "-m", "aiotedge_converter", "import"]
    command += [str(source)] if source is not None else []
    done = run_with_tensorflow(
        [*command, "--out", str(out), *args], f"importing {source or args[:2]}"
    )
    return done.stdout


# --- below: runs in the subprocess only, with TensorFlow --------------------------------------


def _keras_model():  # type: ignore[no-untyped-def]
    import keras
    from keras import layers

    def conv_bn(x, filters, kernel, strides=1, relu=True):  # type: ignore[no-untyped-def]
        x = layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        return layers.ReLU(6.0)(x) if relu else x

    keras.utils.set_random_seed(SEED)
    inputs = keras.Input((HEIGHT, WIDTH, 3))
    x = conv_bn(inputs, 16, 3, strides=2)
    y = layers.DepthwiseConv2D(3, padding="same")(x)
    y = layers.ReLU(6.0)(y)
    y = conv_bn(y, 16, 1, relu=False)
    x = layers.Add()([x, y])
    x = conv_bn(x, 32, 3, strides=2)
    y = conv_bn(x, 32, 3)
    y = conv_bn(y, 32, 1, relu=False)
    x = layers.Add()([x, y])
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(CLASSES, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    # Random BatchNorm statistics, so the folded weights are not all near identity.
    rng = np.random.default_rng(SEED)
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, gamma.shape).astype(np.float32),
                    rng.normal(0.0, 0.2, beta.shape).astype(np.float32),
                    rng.normal(0.0, 0.2, mean.shape).astype(np.float32),
                    rng.uniform(0.5, 1.5, var.shape).astype(np.float32),
                ]
            )
    return model


def _two_input_model():  # type: ignore[no-untyped-def]
    import keras
    from keras import layers

    first, second = keras.Input((8, 8, 3)), keras.Input((8, 8, 3))
    x = layers.Add()([first, second])
    return keras.Model([first, second], layers.Conv2D(4, 3)(x))


def _convert(model, quantize: bool) -> bytes:  # type: ignore[no-untyped-def]
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if quantize:
        rng = np.random.default_rng(SEED)

        def representative():  # type: ignore[no-untyped-def]
            # Images in [-1, 1], what (pixel - 127.5) / 127.5 gives.
            for _ in range(32):
                pixels = rng.integers(0, 256, size=(1, HEIGHT, WIDTH, 3))
                yield [((pixels - 127.5) / 127.5).astype(np.float32)]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.uint8
    return converter.convert()


def _main(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    model = _keras_model()
    for key, quantize in (("float", False), ("int8", True)):
        (out_dir / MODEL_FILES[key]).write_bytes(_convert(model, quantize))
    (out_dir / MODEL_FILES["two_inputs"]).write_bytes(_convert(_two_input_model(), False))


def _predict(model, inputs: np.ndarray) -> np.ndarray:  # type: ignore[no-untyped-def]
    """One input at a time (batch 1), as the TFLite model and the pipeline run."""
    return np.concatenate([np.asarray(model(x[None], training=False)) for x in inputs])


def _keras_sources(out_dir: Path, inputs: Path) -> None:
    from aiotedge_converter.keras_import import ArchSpec, build_architecture

    model = _keras_model()
    model.save(out_dir / KERAS_FILES["keras"])
    model.save(out_dir / KERAS_FILES["h5"])
    model.export(str(out_dir / KERAS_FILES["saved_model"]), verbose=False)
    np.save(out_dir / KERAS_OUTPUTS, _predict(model, np.load(inputs)))
    # The built-in architecture with weights unlike its seeded random ones, as a trained
    # model's weights file would be.
    arch = build_architecture(ArchSpec("mobilenet_v2", **ARCH))
    rng = np.random.default_rng(SEED)
    weights = arch.get_weights()
    arch.set_weights([w * rng.uniform(0.8, 1.2, w.shape).astype(w.dtype) for w in weights])
    arch.save_weights(out_dir / KERAS_FILES["arch_weights"])
    size = ARCH["input_size"]
    arch_inputs = rng.uniform(-1, 1, (3, size, size, 3)).astype(np.float32)
    np.save(out_dir / "arch_inputs.npy", arch_inputs)
    np.save(out_dir / "arch_outputs.npy", _predict(arch, arch_inputs))


def _keras_predict(model_path: Path, inputs: Path, out: Path) -> None:
    import keras

    model = keras.models.load_model(model_path, compile=False)
    np.save(out, _predict(model, np.load(inputs)))


if __name__ == "__main__":
    if sys.argv[1] == "--keras-sources":
        _keras_sources(Path(sys.argv[2]), Path(sys.argv[3]))
    elif sys.argv[1] == "--keras-predict":
        _keras_predict(Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))
    else:
        _main(Path(sys.argv[1]))
