"""Workstation-side converter: split a .tflite CNN into segments, one per board.

The boards never import this package; they read the segment files and `manifest.json` it writes.
"""

from converter.errors import ConverterError

__all__ = ["ConverterError"]
