"""Pictures: decoding a camera's photo and turning it into a model's input."""
