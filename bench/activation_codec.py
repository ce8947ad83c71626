"""How much the wire codec saves on real activations: every cut point of the shared
MobileNetV2 over the shared photos.

    python bench/activation_codec.py [--model M.tflite --images DIR]

For each valid cut point, the activation of each photo is encoded as a frame raw and in zstd
(level 1, the wire's codec) and, when the `lz4` package is installed, in lz4's block format
(the alternative considered); the table gives the message bytes, each codec's share of the raw
message (mean, and the range over the photos) and zstd's encode/decode time on this machine.
Writes the section "Activation compression" of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from aiotedge.contracts.codec import ZSTD
from aiotedge.contracts.wire import Frame, decode_activation, encode_frame
from aiotedge.media.image import (
    decode_image,
    default_preprocessing,
    list_images,
    preprocess,
)
from aiotedge.tflite.flatbuffer import pack_model
from aiotedge.tflite.graph import load_graph
from aiotedge.tflite.runtime import Segment
from aiotedge.tflite.segments import extract_segment
from bench.benchdoc import table, write_section
from support.paths import SHARED_IMAGES, SHARED_MODEL

try:
    import lz4.block as lz4_block
except ImportError:  # only the comparison needs it
    lz4_block = None


def best_ms(call, runs: int = 30) -> float:
    samples = []
    for _ in range(runs):
        start = time.perf_counter_ns()
        call()
        samples.append(time.perf_counter_ns() - start)
    return statistics.median(samples) / 1e6


def share(sizes: list[int], raws: list[int]) -> str:
    ratios = [s / r for s, r in zip(sizes, raws, strict=True)]
    return f"{100 * statistics.mean(ratios):.0f}% ({100 * min(ratios):.0f}-{100 * max(ratios):.0f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=SHARED_MODEL)
    parser.add_argument("--images", type=Path, default=SHARED_IMAGES)
    args = parser.parse_args()
    graph = load_graph(args.model)
    whole = Segment(args.model, num_threads=1)
    prep = default_preprocessing(whole.input_spec, None, None)
    photos = [preprocess(decode_image(p.read_bytes()), prep, whole.input_spec)
              for p in list_images(args.images)]
    rows, savings = [], []
    with tempfile.TemporaryDirectory() as scratch:
        for point in graph.cut_points:
            path = Path(scratch) / f"upto{point.op_index}.tflite"
            path.write_bytes(pack_model(extract_segment(graph, 0, point.op_index)))
            head = Segment(path, num_threads=1)
            spec = head.output_spec
            frames = [Frame("cam0-bench-1", "cam0", 1, time.time(), tensor=head.run(photo),
                            scale=spec.scale, zero_point=spec.zero_point) for photo in photos]
            raw = [len(encode_frame(f)) for f in frames]
            packed = [encode_frame(f, ZSTD) for f in frames]
            row = [str(point.op_index), "x".join(map(str, spec.shape[1:])), str(raw[0]),
                   share([len(p) for p in packed], raw)]
            if lz4_block is not None:
                row.append(share([len(lz4_block.compress(f.tensor.tobytes(), store_size=False))
                                  + r - f.tensor.nbytes for f, r in zip(frames, raw, strict=True)],
                                 raw))
            row.append(f"{best_ms(lambda f=frames[0]: encode_frame(f, ZSTD)):.3f} / "
                       f"{best_ms(lambda p=packed[0], s=spec: decode_activation(p, s)):.3f}")
            rows.append(row)
            savings.append(1 - statistics.mean(len(p) / r for p, r in
                                               zip(packed, raw, strict=True)))
    header = ["after op", "activation", "raw message bytes", "zstd: share of raw"]
    header += ["lz4: share of raw"] if lz4_block is not None else []
    header += ["zstd encode / decode ms"]
    text = table(tuple(header), [tuple(r) for r in rows])
    summary = (
        f"{args.model.name}, {len(photos)} photos of {args.images.name}/ "
        f"(each a real activation; share = compressed message / raw message, mean and range "
        f"over the photos). zstd saves {100 * min(savings):.0f}-{100 * max(savings):.0f}% "
        f"(median {100 * statistics.median(savings):.0f}%) of the message at the "
        f"{len(savings)} cut points"
        + ("; lz4 saves next to nothing except after ReLU6 layers full of zeros." if lz4_block
           else ".")
    )
    print(text)
    print(summary)
    write_section("Activation compression", summary + "\n\n" + text)


if __name__ == "__main__":
    main()
