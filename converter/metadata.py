"""What `import` learned from the source model, kept inside the .tflite it writes.

A .tflite file forgets the Keras model it came from: its layer list (which `--strategy layers:`
needs) and the input normalisation the model was trained with (which stage 0 and int8
calibration need). `import` stores both as a JSON model-metadata entry named
`aiotedge_import`, so the one file is all `split` needs; segments drop it (see split.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ai_edge_litert import schema_py_generated as schema
from aiotedge_converter.errors import ConverterError

from aiotedge.tflite.flatbuffer import AlignedBuffer, pack_model
from aiotedge.tflite.graph import decode_name

METADATA_NAME = "aiotedge_import"
METADATA_VERSION = 1


@dataclass(frozen=True)
class KerasLayer:
    """One layer of the flattened Keras model (nested models expanded in place)."""

    name: str
    kind: str


@dataclass(frozen=True)
class ImportInfo:
    """The source of an imported model, how it was quantized and what its input expects."""

    source: str
    quantize: str
    #: real input = (pixel - mean) / std, the normalisation the model was trained with
    mean: float
    std: float
    #: flattened Keras layers in model order; empty when the source was a SavedModel
    layers: tuple[KerasLayer, ...] = field(default=())
    calibration_images: int = 0

    def to_json(self) -> bytes:
        data: dict[str, Any] = {
            "version": METADATA_VERSION,
            "source": self.source,
            "quantize": self.quantize,
            "mean": self.mean,
            "std": self.std,
            "calibration_images": self.calibration_images,
            "layers": [[layer.name, layer.kind] for layer in self.layers],
        }
        return json.dumps(data, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> ImportInfo:
        try:
            data = json.loads(bytes(raw).decode("utf-8"))
            if data.get("version") != METADATA_VERSION:
                raise ValueError(f"version {data.get('version')!r}")
            return cls(
                source=str(data["source"]),
                quantize=str(data["quantize"]),
                mean=float(data["mean"]),
                std=float(data["std"]),
                layers=tuple(KerasLayer(str(n), str(k)) for n, k in data["layers"]),
                calibration_images=int(data.get("calibration_images", 0)),
            )
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            raise ConverterError(f"unreadable {METADATA_NAME} metadata: {exc}") from exc


def read_import_info(model: schema.ModelT) -> ImportInfo | None:
    """The import record of a model, or None for a .tflite that `import` did not write."""
    for entry in model.metadata or []:
        if decode_name(entry.name) == METADATA_NAME:
            buffer = model.buffers[entry.buffer]
            return ImportInfo.from_json(bytes(buffer.data if buffer.data is not None else b""))
    return None


def embed_import_info(tflite: bytes, info: ImportInfo) -> bytes:
    """The same model with `info` stored as (or replacing) its aiotedge_import metadata."""
    model = schema.ModelT.InitFromPackedBuf(tflite, 0)
    model.buffers = [AlignedBuffer(data=buffer.data) for buffer in model.buffers or []]
    model.metadata = [m for m in model.metadata or [] if decode_name(m.name) != METADATA_NAME]
    entry = schema.MetadataT()
    entry.name = METADATA_NAME
    entry.buffer = len(model.buffers)
    model.buffers.append(AlignedBuffer(data=np.frombuffer(info.to_json(), dtype=np.uint8)))
    model.metadata.append(entry)
    return pack_model(model)
