"""TFLite models on a board: the flatbuffer graph, cut points and MACs, segments cut out of a
model, the interpreter, and profiling. Flatbuffers and LiteRT only: never TensorFlow."""
