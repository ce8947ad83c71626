"""Workstation-side converter: import a Keras model, plan and split a .tflite CNN into segments.

Boards read the segment files and `manifest.json` it writes. The one part a board imports is
the graph reader and segment writer, for `aiotedge profile`; they need only the flatbuffer
schema that ships with the interpreter. TensorFlow is loaded by `keras_import` alone, inside
its functions, for `aiotedge-convert import`.
"""

from converter.errors import ConverterError

__all__ = ["ConverterError"]
