"""Writing TFLite flatbuffers: the object API's packer, with the converter's buffer alignment."""

from __future__ import annotations

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as schema

#: Buffer data alignment the TFLite converter uses (`force_align: 16` in the schema); the
#: generated Python packer ignores it, so we apply it ourselves.
BUFFER_ALIGNMENT = 16


class AlignedBuffer(schema.BufferT):
    """A BufferT that packs its data 16-byte aligned, as the TFLite converter does."""

    def Pack(self, builder: flatbuffers.Builder) -> int:  # noqa: N802 (flatbuffers API name)
        if self.data is None or len(self.data) == 0:
            schema.BufferStart(builder)
            return schema.BufferEnd(builder)
        payload = np.asarray(self.data, dtype=np.uint8).ravel()
        # Pad so the vector's data, written next, starts on the alignment boundary.
        builder.Prep(BUFFER_ALIGNMENT, payload.size)
        data = builder.CreateNumpyVector(payload)
        schema.BufferStart(builder)
        schema.BufferAddData(builder, data)
        return schema.BufferEnd(builder)


def pack_model(model: schema.ModelT) -> bytes:
    builder = flatbuffers.Builder(1 << 20)
    root = model.Pack(builder)
    builder.Finish(root, file_identifier=b"TFL3")
    return bytes(builder.Output())
