"""Workstation-side converter (`aiotedge-convert`): import a Keras model, plan and split a
.tflite CNN into segments, verify the split.

Installed as `aiotedge_converter` (the folder is converter/). It sits on top of aiotedge: it
reads graphs and writes segments with aiotedge.tflite, the same code `aiotedge profile` uses
on a board, and writes the manifest of aiotedge.contracts. Nothing in aiotedge imports it.
TensorFlow is loaded by `keras_import` alone, inside its functions, for
`aiotedge-convert import`.
"""
