"""The optional activation codec: named in the tensor header, never guessed, and bounded by the
stage's own input spec however the frame was made."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
import zstandard

from aiotedge.contracts.codec import ZSTD, compress
from aiotedge.contracts.errors import ManifestError, WireError
from aiotedge.contracts.manifest import Manifest, Preprocessing, SourceModel, StageSpec
from aiotedge.contracts.tensors import TensorSpec
from aiotedge.contracts.wire import Frame, decode_activation, encode_frame

SPEC = TensorSpec("act", (1, 14, 14, 64), "uint8", scale=0.2, zero_point=120)


def activation() -> np.ndarray:
    """Mostly the zero point, as real activations are: something to compress."""
    rng = np.random.default_rng(3)
    values = np.full(SPEC.shape, SPEC.zero_point, dtype=np.uint8)
    values[..., :8] = rng.integers(0, 256, (1, 14, 14, 8), dtype=np.uint8)
    return values


def frame(values: np.ndarray | None = None) -> Frame:
    return Frame("cam0-x-1", "cam0", 1, 1700000000.0,
                 tensor=activation() if values is None else values,
                 scale=SPEC.scale, zero_point=SPEC.zero_point)


def with_tensor(payload: bytes, **changes: object) -> bytes:
    message = msgpack.unpackb(payload, raw=False)
    message["tensor"].update(changes)
    return msgpack.packb(message, use_bin_type=True)


def test_a_compressed_activation_decodes_to_the_same_values_in_fewer_bytes():
    raw, packed = encode_frame(frame()), encode_frame(frame(), ZSTD)
    assert len(packed) < len(raw) / 2
    assert msgpack.unpackb(packed)["tensor"]["codec"] == "zstd"
    assert "codec" not in msgpack.unpackb(raw)["tensor"]
    np.testing.assert_array_equal(decode_activation(packed, SPEC).tensor, activation())


def test_compressed_bytes_without_a_codec_in_the_header_are_not_guessed():
    payload = with_tensor(encode_frame(frame(), ZSTD))
    message = msgpack.unpackb(payload, raw=False)
    del message["tensor"]["codec"]
    with pytest.raises(WireError, match=r"tensor data has \d+ bytes, the stage input needs 12544"):
        decode_activation(msgpack.packb(message, use_bin_type=True), SPEC)


@pytest.mark.parametrize("codec", ["lz4", "ZSTD", "gzip" * 100])
def test_an_unknown_codec_is_refused_with_a_reason(codec):
    payload = with_tensor(encode_frame(frame(), ZSTD), codec=codec)
    with pytest.raises(WireError, match=r"unknown codec .* \(this node decodes zstd\)") as caught:
        decode_activation(payload, SPEC)
    assert len(str(caught.value)) < 120


def test_a_codec_must_be_a_string():
    with pytest.raises(WireError, match="field 'codec' must be str, got int"):
        decode_activation(with_tensor(encode_frame(frame(), ZSTD), codec=1), SPEC)


def bomb_without_size(size: int) -> bytes:
    """`size` zero bytes streamed into one zstd frame that does not say how large it is."""
    stream = zstandard.ZstdCompressor(level=1).compressobj()
    chunk = bytes(1 << 20)
    return b"".join(stream.compress(chunk) for _ in range(size >> 20)) + stream.flush()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (lambda: compress(ZSTD, bytes(1 << 24)), "declares 16777216 bytes, the stage input "
                                                 "needs 12544"),
        (lambda: bomb_without_size(64 << 20), "declares no size"),
        (lambda: compress(ZSTD, bytes(100)), "declares 100 bytes"),
        (lambda: compress(ZSTD, activation().tobytes())[:-9] + bytes(9), "does not decompress"),
        (lambda: b"plain bytes", "not a zstd frame"),
        (lambda: compress(ZSTD, bytes(12544)) + compress(ZSTD, bytes(12544)), "not decompress"),
    ],
    ids=["declares-16MB", "no-size-64MB", "too-small", "broken", "not-zstd", "two-frames"],
)
def test_data_that_is_not_exactly_the_input_is_refused_before_it_is_expanded(data, reason):
    payload = with_tensor(encode_frame(frame(), ZSTD), data=data())
    with pytest.raises(WireError, match=reason):
        decode_activation(payload, SPEC)


def with_window(frame_data: bytes, exponent: int) -> bytes:
    """The same zstd frame with a header declaring a window of 2**(10 + exponent) bytes."""
    descriptor = frame_data[4]
    content_size_bytes = {0: 1 if descriptor & 0x20 else 0, 1: 2, 2: 4, 3: 8}[descriptor >> 6]
    header_end = 5 + (0 if descriptor & 0x20 else 1)  # a window byte unless single segment
    assert descriptor & 0x03 == 0  # no dictionary id
    size = frame_data[header_end : header_end + content_size_bytes]
    blocks = frame_data[header_end + content_size_bytes :]
    content_size = int.from_bytes(size, "little") + (256 if content_size_bytes == 2 else 0)
    # 2-byte content size (value - 256), no single segment: a window descriptor follows
    header = bytes([0x40 | (descriptor & 0x04), exponent << 3])
    return frame_data[:4] + header + (content_size - 256).to_bytes(2, "little") + blocks


def test_a_frame_asking_for_a_large_window_is_refused():
    data = compress(ZSTD, activation().tobytes())
    assert zstandard.get_frame_parameters(with_window(data, 4)).content_size == SPEC.nbytes
    decoded = zstandard.ZstdDecompressor().decompress(with_window(data, 4))
    assert decoded == activation().tobytes()  # the rewritten header is a valid frame
    with pytest.raises(WireError, match="asks for a 16777216-byte window"):
        decode_activation(with_tensor(encode_frame(frame(), ZSTD), data=with_window(data, 14)),
                          SPEC)


def stage(index: int, codec: str | None) -> StageSpec:
    return StageSpec(index, f"s{index}.tflite", "0" * 64, SPEC, SPEC, 1, index, index,
                     output_codec=codec)


def test_the_manifest_records_each_stage_output_codec_and_reads_raw_splits_as_before(tmp_path):
    source = SourceModel("m.tflite", "1" * 64, SPEC, SPEC, 2)
    manifest = Manifest(source, Preprocessing(14, 14), (stage(0, ZSTD), stage(1, None)))
    manifest.save(tmp_path)
    again = Manifest.load(tmp_path)
    assert [s.output_codec for s in again.stages] == ["zstd", None]
    assert "output_codec" not in again.to_dict()["stages"][1]
    with pytest.raises(ManifestError, match="unknown output_codec 'lz4'"):
        stage(0, "lz4")
    with pytest.raises(ManifestError, match=r"the last stage .* has no output_codec"):
        Manifest(source, Preprocessing(14, 14), (stage(0, None), stage(1, ZSTD)))
