"""Loading a TFLite interpreter and invoking one segment.

The board side never imports TensorFlow unless nothing lighter is installed: LiteRT
(`ai-edge-litert`) first, then the older `tflite-runtime`, then `tensorflow.lite`.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from aiotedge.contracts.errors import ManifestError, ModelError
from aiotedge.contracts.manifest import Manifest
from aiotedge.contracts.tensors import TensorSpec

log = logging.getLogger(__name__)

_INTERPRETER_MODULES = (
    ("ai_edge_litert.interpreter", "Interpreter"),
    ("tflite_runtime.interpreter", "Interpreter"),
    ("tensorflow.lite", "Interpreter"),
)


class NoInterpreterError(ModelError):
    """No TFLite interpreter package is installed."""


def interpreter_class() -> type:
    """The first TFLite `Interpreter` class that imports, in order of preference."""
    tried = []
    for module_name, attribute in _INTERPRETER_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            tried.append(f"{module_name} ({exc})")
            continue
        log.debug("TFLite interpreter from %s", module_name)
        return getattr(module, attribute)
    raise NoInterpreterError(
        "no TFLite interpreter found; install ai-edge-litert (tried: " + "; ".join(tried) + ")"
    )


@contextlib.contextmanager
def runtime_output_logged() -> Iterator[None]:
    """Pass what the C++ runtime writes to stderr meanwhile to the log instead.

    LiteRT writes `INFO: Created TensorFlow Lite XNNPACK delegate for CPU.` straight to file
    descriptor 2 in every process that builds an interpreter, and offers no way to quiet it:
    its minimum log severity is a C++ static with no Python binding or environment variable
    (TF_CPP_MIN_LOG_LEVEL governs TensorFlow's own logger, not this one). So fd 2 goes to a
    temporary file while an interpreter is built (the runtime prints then, once); its INFO lines
    are then logged at debug level (`-v` shows them), anything else as a warning. Build
    interpreters before starting threads that write to stderr: their lines would be taken too.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode(errors="replace").splitlines():
                if line.startswith("INFO: "):
                    log.debug("runtime: %s", line.removeprefix("INFO: "))
                elif line.strip():
                    log.warning("runtime: %s", line)


class Segment:
    """One single-input TFLite model, ready to invoke: one output, or several for a last
    segment (a detection model's boxes, classes, scores and count).

    Not thread-safe: a stage owns one Segment and calls it from its inference worker only.
    """

    def __init__(self, model_path: Path | str, num_threads: int | None = None) -> None:
        self.path = Path(model_path)
        interpreter = interpreter_class()
        try:
            with runtime_output_logged():
                self._interpreter: Any = interpreter(model_path=str(self.path),
                                                     num_threads=num_threads)
                self._interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:  # what the interpreter raises on a bad model
            raise ModelError(f"{self.path}: cannot load with the TFLite interpreter: {exc}") \
                from exc
        inputs = self._interpreter.get_input_details()
        outputs = self._interpreter.get_output_details()
        if len(inputs) != 1 or not outputs:
            raise ModelError(
                f"{self.path}: a segment has exactly one input and at least one output, "
                f"this model has {len(inputs)} and {len(outputs)}"
            )
        try:
            self.input_spec = TensorSpec.from_tflite_detail(inputs[0]).check_wire_dtype()
            self.output_specs = tuple(TensorSpec.from_tflite_detail(o) for o in outputs)
        except ManifestError as exc:
            raise ModelError(f"{self.path}: {exc}") from None
        self.output_spec = self.output_specs[0]
        self._input_index = inputs[0]["index"]
        self._output_indices = tuple(o["index"] for o in outputs)

    def run(self, tensor: np.ndarray) -> np.ndarray:
        """Invoke the segment; its (first) output, a copy, safe to keep after the next call."""
        return self.run_all(tensor)[0]

    def run_all(self, tensor: np.ndarray) -> tuple[np.ndarray, ...]:
        """Invoke the segment; every output, in the model's order (copies)."""
        self._interpreter.set_tensor(self._input_index, tensor)
        self._interpreter.invoke()
        return tuple(self._interpreter.get_tensor(i) for i in self._output_indices)


def open_segment(manifest: Manifest, index: int, num_threads: int | None = None) -> Segment:
    """Stage `index`'s segment, after every check that it is the one the manifest promises:
    the file's sha256, and the tensors it takes and gives."""
    spec = manifest.stage(index)
    segment = Segment(manifest.check_segment(index), num_threads)
    if len(segment.output_specs) != len(spec.outputs):
        raise ManifestError(f"stage {index} has {len(segment.output_specs)} outputs, the "
                            f"manifest promises {len(spec.outputs)}")
    for side, actual, promised in (
        ("input", segment.input_spec, spec.input),
        *(("output", mine, theirs) for mine, theirs in zip(segment.output_specs, spec.outputs,
                                                            strict=True)),
    ):
        if not actual.matches(promised):
            raise ManifestError(
                f"stage {index} {side} is {actual}, the manifest promises {promised}"
            )
    return segment
