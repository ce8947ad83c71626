"""What one hop between stages costs, against the raw paho + mosquitto one-way time.

    python -m bench.hop [--stages 5] [--frames 100] [--rounds 3] [--write-docs]

Splits the model, starts a private mosquitto and one stage daemon per stage on loopback (each
run through bench/tracedstage.py, which notes when a frame's input reaches the segment), and
sends lone frames (one in flight). A hop k-1 -> k runs from stage k-1's output being ready (the
`done` of its trace entry) to stage k starting its segment on the decoded input: encode,
publish, broker, the network thread, the hand-off to the inference worker, decode. In the
same round, a paho publisher and a paho subscriber (MqttSession, each in its own process, as
the stages are) pass a QoS 1 message of the same size through the same broker at the same
pace: the raw one-way time. Medians over the frames of a round; the table shows the median
of the rounds' medians and their spread.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import statistics
import struct
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from aiotedge_converter.cli import main as convert

from aiotedge.config.sections import BrokerConfig
from aiotedge.contracts.events import Prediction
from aiotedge.contracts.manifest import Manifest
from aiotedge.contracts.wire import Frame, Hop, encode_frame
from aiotedge.media.image import list_images, read_photo
from aiotedge.nodes.mqtt.broker import LocalBroker
from aiotedge.nodes.mqtt.session import MqttSession
from bench.benchdoc import table, write_section
from bench.stagerun import StageRun
from support.daemons import StageLaunch
from support.paths import SHARED_IMAGES, SHARED_MODEL

log = logging.getLogger(__name__)
_PROCESSES = multiprocessing.get_context("spawn")
RAW_TOPIC = "bench/raw"


@dataclass
class HopRound:
    """One round's per-frame times, ms, for each hop k (stage k-1 -> k)."""

    hop: dict[int, list[float]]
    #: of which: stage k-1's output to stage k's network thread having the message
    transfer: dict[int, list[float]]
    #: lone-frame latency of the whole pipeline, capture to the last stage's output
    latency: list[float]


def done_times(prediction: Prediction) -> list[float]:
    """Unix time at which each stage's output was ready, from the prediction's timings."""
    at, done = prediction.captured_at, []
    for timing in prediction.stages:
        at += (timing.transfer_ms + timing.compute_ms) / 1000
        done.append(at)
    return done


def received_times(prediction: Prediction) -> list[float]:
    """Unix time at which each stage's network thread had the frame."""
    done = [prediction.captured_at, *done_times(prediction)]
    return [done[i] + t.transfer_ms / 1000 for i, t in enumerate(prediction.stages)]


def measure_hops(manifest: Manifest, photos: list[tuple[str, bytes]], broker: BrokerConfig,
                 warmup: int, frames: int) -> HopRound:
    stages = len(manifest.stages)
    with tempfile.TemporaryDirectory(prefix="aiotedge-hop-") as traces:
        def traced(node: str) -> list[str]:
            return [sys.executable, "-m", "bench.tracedstage", f"{traces}/{node}.json"]

        daemons = [StageLaunch(f"stage{k}", k) for k in range(stages)]
        with StageRun(manifest.directory, daemons, broker, command=traced,
                      stats_interval=0) as run:
            arrivals = run.feed(photos, warmup + frames, in_flight=1)
            run.stop_daemons()
            entries = {k: _read_trace(Path(traces) / f"stage{k}.json") for k in range(stages)}
    # a stage with a reference runs it once at start, before any frame (its self-check)
    entries = {k: calls[1:] if manifest.stage(k).reference is not None else calls
               for k, calls in entries.items()}
    predictions = sorted((a.prediction for a in arrivals), key=lambda p: p.seq)
    for k, calls in entries.items():
        if len(calls) != len(predictions):
            raise RuntimeError(f"stage {k} ran {len(calls)} times for {len(predictions)} frames")
    hop: dict[int, list[float]] = {k: [] for k in range(1, stages)}
    transfer: dict[int, list[float]] = {k: [] for k in range(1, stages)}
    for j, prediction in enumerate(predictions[warmup:], start=warmup):
        done, received = done_times(prediction), received_times(prediction)
        for k in range(1, stages):
            hop[k].append((entries[k][j] - done[k - 1]) * 1000)
            transfer[k].append((received[k] - done[k - 1]) * 1000)
    latency = [p.latency_ms for p in predictions[warmup:]]
    return HopRound(hop, transfer, latency)


def _read_trace(path: Path) -> list[float]:
    return json.loads(path.read_text())


# -- the raw one-way time: a publisher and a subscriber process ------------------------------


def _subscriber(broker: BrokerConfig, expected: int, *, arrived, results) -> None:
    times: dict[int, float] = {}
    done = threading.Event()

    def on_message(message) -> None:
        now = time.time()
        (index,) = struct.unpack_from("<q", message.payload)
        if index >= 0:
            times[index] = now
        arrived.set()
        if len(times) >= expected:
            done.set()

    session = MqttSession(broker, f"raw-sub-{os.getpid()}")
    session.subscribe(RAW_TOPIC, on_message, qos=1)
    session.start()
    done.wait(300)
    session.stop()
    results.put(times)


def _publisher(broker: BrokerConfig, size: int, count: int, gap: float, *, arrived,
               results) -> None:
    session = MqttSession(broker, f"raw-pub-{os.getpid()}")
    session.start()
    session.wait_connected(10)
    body = bytearray(np.random.default_rng(size).bytes(size))
    # probes (index -1) until the subscriber answers: its subscription is then in place
    for _ in range(100):
        arrived.clear()
        session.publish(RAW_TOPIC, bytes(struct.pack("<q", -1) + body[8:]), qos=1)
        if arrived.wait(0.5):
            break
    sent: dict[int, float] = {}
    for index in range(count):
        struct.pack_into("<q", body, 0, index)
        payload = bytes(body)
        arrived.clear()
        sent[index] = time.time()
        session.publish(RAW_TOPIC, payload, qos=1)
        arrived.wait(5)
        if gap:
            time.sleep(gap)  # the pace of lone frames, not a synchronisation
    session.stop()
    results.put(sent)


def raw_one_way(broker: BrokerConfig, size: int, count: int, gap: float) -> list[float]:
    """Per-message ms from publish() in one process to on_message in another; the next message
    goes `gap` seconds after the previous one arrived (0: at once, back to back)."""
    arrived = _PROCESSES.Event()
    sub_results, pub_results = _PROCESSES.Queue(), _PROCESSES.Queue()
    subscriber = _PROCESSES.Process(target=_subscriber, args=(broker, count),
                                    kwargs={"arrived": arrived, "results": sub_results})
    subscriber.start()
    publisher = _PROCESSES.Process(target=_publisher, args=(broker, size, count, gap),
                                   kwargs={"arrived": arrived, "results": pub_results})
    publisher.start()
    sent = pub_results.get(timeout=600)
    received = sub_results.get(timeout=60)
    publisher.join()
    subscriber.join()
    return [(received[i] - sent[i]) * 1000 for i in sorted(sent) if i in received]


def hop_payload_bytes(manifest: Manifest, hop: int) -> int:
    """The size of the message stage hop-1 publishes for stage hop (its trace has hop hops)."""
    spec = manifest.stage(hop - 1).output
    frame = Frame("cam0-abcdef-123", "cam0", 123, time.time(),
                  tensor=np.zeros(spec.shape, spec.dtype), scale=spec.scale,
                  zero_point=spec.zero_point,
                  trace=[Hop(k, time.time(), time.time()) for k in range(hop)])
    return len(encode_frame(frame))


# -- report ----------------------------------------------------------------------------------


@dataclass
class Round:
    hops: HopRound
    #: hop -> per-message ms, next message as soon as the previous one arrived
    raw_back_to_back: dict[int, list[float]]
    #: hop -> per-message ms, messages as far apart as the lone frames
    raw_paced: dict[int, list[float]]
    load: float


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} ({min(values):.3f} to {max(values):.3f})"


def report(manifest: Manifest, rounds: list[Round], frames: int) -> str:
    rows = []
    worst = {"back to back": 0.0, "paced": 0.0}
    for k in sorted(rounds[0].hops.hop):
        hop = [statistics.median(r.hops.hop[k]) for r in rounds]
        transfer = [statistics.median(r.hops.transfer[k]) for r in rounds]
        tight = [statistics.median(r.raw_back_to_back[k]) for r in rounds]
        paced = [statistics.median(r.raw_paced[k]) for r in rounds]
        ratio_tight = [h / w for h, w in zip(hop, tight, strict=True)]
        ratio_paced = [h / w for h, w in zip(hop, paced, strict=True)]
        worst["back to back"] = max(worst["back to back"], *ratio_tight)
        worst["paced"] = max(worst["paced"], *ratio_paced)
        rows.append((f"{k - 1} → {k}", hop_payload_bytes(manifest, k), spread(hop),
                     spread(transfer), spread(tight), spread(paced),
                     f"{statistics.median(ratio_tight):.2f}x",
                     f"{statistics.median(ratio_paced):.2f}x"))
    latency = [statistics.median(r.hops.latency) for r in rounds]
    loads = ", ".join(f"{r.load:.1f}" for r in rounds)
    return "\n\n".join([
        f"{len(manifest.stages)} stages of `{manifest.source.file}`, one daemon each "
        f"(1 interpreter thread) on loopback; {frames} lone frames (one in flight) per "
        f"round, {len(rounds)} rounds (load average {loads} on {os.cpu_count()} cores). "
        "Milliseconds: median of the rounds' medians (lowest to highest round).",
        table(("hop", "message bytes", "hop: output → next input set",
               "of which output → next network thread", "raw one-way, back to back",
               "raw one-way, at the lone frames' pace", "hop / raw back to back",
               "hop / raw paced"), rows),
        f"Worst round over all hops: hop / raw back to back **{worst['back to back']:.2f}x**, "
        f"hop / raw at the same pace {worst['paced']:.2f}x. Lone-frame latency of the whole "
        f"pipeline: {spread(latency)} ms.",
        "A hop runs from stage k-1's output being ready to stage k calling its segment with "
        "the decoded input: encode, publish, the broker, stage k's network thread and the "
        "decode (a frame that finds its stage idle is computed on the network thread: no "
        "hand-off to the inference worker). The raw one-way time is a paho publisher and a "
        "paho subscriber (MqttSession, QoS 1, each in its own process) passing a message of "
        "the same size through the same broker in the same round: back to back (the next "
        "message as soon as the previous arrived), and as far apart as the lone frames, "
        "whose processes have gone idle in between as the stages' have.",
    ])


def _medians(values: dict[int, list[float]]) -> dict[int, float]:
    return {k: round(statistics.median(v), 3) for k, v in values.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=SHARED_MODEL)
    parser.add_argument("--images", type=Path, default=SHARED_IMAGES)
    parser.add_argument("--stages", type=int, default=5)
    parser.add_argument("--frames", type=int, default=100, help="lone frames per round")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--write-docs", action="store_true",
                        help="write the figures into docs/benchmarks.md")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory(prefix="aiotedge-hop-split-") as out:
        if convert(["split", str(args.model), "--stages", str(args.stages), "--out", out]):
            raise SystemExit("split failed")
        manifest = Manifest.load(out)
        photos = [(p.name, read_photo(p)) for p in list_images(args.images)]
        rounds = []
        with LocalBroker() as broker:
            for number in range(args.rounds):
                hops = measure_hops(manifest, photos, broker.address, args.warmup, args.frames)
                gap = statistics.median(hops.latency) / 1000
                sizes = {k: hop_payload_bytes(manifest, k) for k in hops.hop}
                tight = {k: raw_one_way(broker.address, size, args.frames, 0.0)
                         for k, size in sizes.items()}
                paced = {k: raw_one_way(broker.address, size, args.frames, gap)
                         for k, size in sizes.items()}
                rounds.append(Round(hops, tight, paced, os.getloadavg()[0]))
                log.warning("round %d: hop %s ms, raw back to back %s ms, raw paced %s ms",
                            number + 1, _medians(hops.hop), _medians(tight), _medians(paced))
        body = report(manifest, rounds, args.frames)
    print(body)
    if args.write_docs:
        write_section("Stage hop vs raw broker one-way", body)


if __name__ == "__main__":
    main()
