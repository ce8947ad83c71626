"""The lossless codecs an activation's bytes may travel in (docs/wire.md#codec).

A codec is chosen by the planner only where a network link is the pipeline's bottleneck, and
named in each frame's tensor header, so a receiver never guesses. zstd at level 1: on the
shared MobileNetV2 it takes 15-25% off the activations at the usual cut points, where lz4
takes off almost nothing (docs/benchmarks.md, *Activation compression*).

Decoding is bounded by the stage's own input spec: a frame must say in its header that it
decompresses to exactly the bytes the stage expects, with a window no larger than that, before
anything is decompressed, so a small message cannot expand into a large allocation.
"""

from __future__ import annotations

import zstandard

from aiotedge.contracts.errors import WireError

ZSTD = "zstd"
#: the codecs this node speaks; a tensor naming another is refused
CODECS = (ZSTD,)
ZSTD_LEVEL = 1
#: zstd's smallest window; a frame of a few bytes still declares this much
_MIN_WINDOW = 1 << 10

_compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True)


def check_codec(codec: str) -> str:
    """`codec`, if this node speaks it; else a WireError naming the ones it does."""
    if codec not in CODECS:
        raise WireError(f"unknown codec {codec[:40]!r} (this node decodes {', '.join(CODECS)})")
    return codec


def compress(codec: str, data: bytes | memoryview) -> bytes:
    check_codec(codec)
    return _compressor.compress(data)


def decompress(codec: str, data: bytes, nbytes: int) -> bytes:
    """Exactly `nbytes` bytes from a frame that says it holds that many, or a WireError."""
    check_codec(codec)
    try:
        frame = zstandard.get_frame_parameters(data)
    except zstandard.ZstdError as exc:
        raise WireError(f"tensor data is not a zstd frame: {exc}") from None
    if frame.content_size != nbytes:
        size = "no size" if frame.content_size == zstandard.CONTENTSIZE_UNKNOWN else (
            f"{frame.content_size} bytes")
        raise WireError(
            f"zstd tensor data declares {size}, the stage input needs {nbytes} bytes"
        )
    window = max(_MIN_WINDOW, 1 << (max(nbytes, 1) - 1).bit_length())
    if frame.window_size > window:
        raise WireError(
            f"zstd tensor data asks for a {frame.window_size}-byte window, more than its "
            f"{nbytes} bytes need"
        )
    try:
        values = zstandard.ZstdDecompressor(max_window_size=window).decompress(
            data, max_output_size=nbytes, allow_extra_data=False
        )
    except zstandard.ZstdError as exc:
        raise WireError(f"tensor data does not decompress: {exc}") from None
    if len(values) != nbytes:  # the header's size is checked by zstd itself; never trusted
        raise WireError(f"zstd tensor data holds {len(values)} bytes, not {nbytes}")
    return values
