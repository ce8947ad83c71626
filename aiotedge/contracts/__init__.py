"""The lowest layer: what every side shares, data only (manifest, tensors, wire frames, events,
topics, profile format, errors). It imports nothing else of aiotedge."""
