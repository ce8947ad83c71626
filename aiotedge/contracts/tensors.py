"""One description of a tensor, for the manifest, the wire, the graph reader and the runtime."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from aiotedge.contracts.errors import ManifestError

#: dtypes a tensor may have on the wire; a manifest naming another between two stages is
#: refused when read. A model's own outputs may have others (a segmentation model's int64
#: ArgMax): the last stage turns them into a prediction, they never travel.
WIRE_DTYPES = frozenset({"uint8", "int8", "int16", "int32", "float16", "float32"})
#: dtypes a model's final output may have besides (read by the last stage, never sent)
RESULT_DTYPES = WIRE_DTYPES | {"int64", "float64", "uint16", "uint32", "uint64", "bool"}


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape, dtype and (affine, per-tensor) quantization of one tensor."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    scale: float = 0.0
    zero_point: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))

    def __str__(self) -> str:
        text = f"{self.dtype}{list(self.shape)}"
        if self.quantized:
            text += f" (scale {self.scale:g}, zero point {self.zero_point})"
        return text

    @property
    def quantized(self) -> bool:
        return self.scale != 0.0

    def matches(self, other: TensorSpec) -> bool:
        """Same shape, dtype and quantization; names may differ (they are informative)."""
        return (self.shape, self.dtype, self.scale, self.zero_point) == (
            other.shape, other.dtype, other.scale, other.zero_point
        )

    @property
    def on_the_wire(self) -> bool:
        """Whether a message can carry a tensor of this dtype between stages."""
        return self.dtype in WIRE_DTYPES

    def check_wire_dtype(self) -> TensorSpec:
        """This spec, once its dtype is one a stage can send or receive."""
        if not self.on_the_wire:
            raise ManifestError(f"tensor {self.name!r}: unsupported dtype {self.dtype!r} "
                                f"(stages exchange {', '.join(sorted(WIRE_DTYPES))})")
        return self

    @property
    def nbytes(self) -> int:
        """Size of its values; 0 for a dtype of no fixed width (a TFLite string)."""
        try:
            itemsize = np.dtype(self.dtype).itemsize
        except TypeError:
            return 0
        return math.prod(self.shape) * itemsize

    def dequantize(self, values: np.ndarray) -> np.ndarray:
        """Real values of a tensor of this spec (identity for float tensors)."""
        if not self.quantized:
            return values.astype(np.float32)
        return (values.astype(np.float32) - self.zero_point) * np.float32(self.scale)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["shape"] = list(self.shape)
        return out

    def check_result_dtype(self) -> TensorSpec:
        """This spec, once its dtype is one the last stage can read a result from."""
        if self.dtype not in RESULT_DTYPES:
            raise ManifestError(f"tensor {self.name!r}: unsupported dtype {self.dtype!r} "
                                f"(a model may give {', '.join(sorted(RESULT_DTYPES))})")
        return self

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TensorSpec:
        """A spec read from a manifest or a node's info (whoever sends it checks it is one
        that travels: `check_wire_dtype`)."""
        return cls(
            name=str(data["name"]),
            shape=tuple(data["shape"]),
            dtype=str(data["dtype"]),
            scale=float(data.get("scale", 0.0)),
            zero_point=int(data.get("zero_point", 0)),
        ).check_result_dtype()

    @classmethod
    def from_tflite_detail(cls, detail: dict[str, Any]) -> TensorSpec:
        """From an entry of `Interpreter.get_input_details()` / `get_output_details()`."""
        scale, zero_point = detail.get("quantization", (0.0, 0))
        return cls(
            name=str(detail["name"]),
            shape=tuple(int(d) for d in detail["shape"]),
            dtype=np.dtype(detail["dtype"]).name,
            scale=float(scale),
            zero_point=int(zero_point),
        ).check_result_dtype()
