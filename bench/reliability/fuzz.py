"""The wire decoder's fuzzer against real daemons: the strategies of tests/wire_strategies.py.

Two of that module's strategies, frames made for a stage and what may arrive on any stage's
topic, are drawn AIOTEDGE_FUZZ_EXAMPLES times each per stage; every example goes into the
stage's input topic. The oracle is the decoder itself, run
here in-process: an example it refuses must give one error event and one `rejected` count;
one it accepts must not crash the daemon. An exception other than WireError or ImageError in
the decoder is a finding of its own (the daemon reports it as an internal error).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import zlib
from collections import Counter
from typing import Any

import msgpack

from aiotedge.contracts.errors import ImageError, WireError
from aiotedge.contracts.tensors import TensorSpec
from aiotedge.contracts.wire import Frame, decode_activation, decode_photo, encode_frame
from aiotedge.media.image import decode_image
from bench.reliability.context import Context
from bench.reliability.injector import Injector
from bench.reliability.results import Row, fill, tally

log = logging.getLogger(__name__)

MODULE = "tests.wire_strategies"
EXAMPLES_VARIABLE = "AIOTEDGE_FUZZ_EXAMPLES"
DEFAULT_EXAMPLES = {"fast": 100, "full": 2000}
#: the stages' limit on message size (refused before decoding)
MAX_MESSAGE_BYTES = 2_000_000


def strategies(module: Any, spec: TensorSpec | None) -> dict[str, Any]:
    """Name -> strategy of what to send a stage taking `spec`: frames made for it, and
    whatever may arrive on a stage's topic (noise, mutated and corrupted frames of any spec)."""
    return {
        "frames": module.frames(spec),
        "received_payloads": module.received_payloads().map(lambda case: case[1]),
    }


def draw(strategy: Any, count: int) -> list[Any]:
    """`count` examples, reproducibly (derandomized), without hypothesis's example database."""
    from hypothesis import HealthCheck, Phase, given, settings

    examples: list[Any] = []

    @settings(max_examples=count, database=None, derandomize=True, deadline=None,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(strategy)
    def collect(value: Any) -> None:
        examples.append(value)

    collect()
    return examples


def as_payload(example: Any) -> bytes | None:
    """Bytes to publish: payloads as they are, frames encoded, maps and lists packed."""
    if isinstance(example, bytes | bytearray):
        return bytes(example)
    if isinstance(example, Frame):
        try:
            return encode_frame(example)
        except (ValueError, TypeError):
            return None
    try:
        return msgpack.packb(example, use_bin_type=True)
    except (TypeError, ValueError, OverflowError):
        return None


def verdict(payload: bytes, spec: TensorSpec | None, seen: dict[str, int],
            answered: set[str] | None) -> str:
    """What a stage should do with it: 'accept', 'refuse', 'duplicate' (a frame id and attempt
    it has had, dropped before its image is looked at; at the last stage, `answered` given, a
    frame id it has answered) or 'internal: ...' (a finding). `seen` holds the frame ids and
    attempts the stage has had so far, with the content's CRC at stage 0 (`spec` None), where
    another content under an id and attempt taken is refused."""
    if len(payload) > MAX_MESSAGE_BYTES:
        return "refuse"
    try:
        frame = decode_photo(payload) if spec is None else decode_activation(payload, spec)
        key = f"{frame.frame_id}#{frame.attempt}"
        content = zlib.crc32(payload) if spec is None else 0
        if key in seen:
            return "duplicate" if seen[key] == content else "refuse"
        seen[key] = content
        if answered is not None and frame.frame_id in answered:
            return "duplicate"
        if frame.image is not None:
            decode_image(frame.image)
    except (WireError, ImageError):
        return "refuse"
    except Exception as exc:  # the oracle must survive what it is testing
        return f"internal: {type(exc).__name__}"
    if answered is not None:
        answered.add(frame.frame_id)
    return "accept"


def wire_fuzzer(ctx: Context) -> Row:
    """Examples of tests/wire_strategies.py's hypothesis strategies into every stage of the
    int8 test CNN, with good frames from a camera alongside. Refused examples must each give
    one error event and one `rejected` count; no daemon may die; good frames must come out."""
    row = Row("wire-decoder fuzzer", "", "fuzzed messages into every stage")
    if importlib.util.find_spec(MODULE) is None:
        row.skipped = "strategies not present (tests/wire_strategies.py)"
        return row
    if importlib.util.find_spec("hypothesis") is None:
        row.skipped = "hypothesis is not installed"
        return row
    module = importlib.import_module(MODULE)
    count = int(os.environ.get(EXAMPLES_VARIABLE, DEFAULT_EXAMPLES[ctx.mode.name]))
    manifest = ctx.workload.int8
    specs = [None, *(stage.input for stage in manifest.stages[1:])]
    plan: list[tuple[int, bytes, str]] = []
    names: set[str] = set()
    for stage, spec in enumerate(specs):
        seen: dict[str, int] = {}
        answered: set[str] | None = set() if stage == len(specs) - 1 else None
        for name, strategy in strategies(module, spec).items():
            names.add(name)
            for example in draw(strategy, count):
                payload = as_payload(example)
                if payload is not None:
                    plan.append((stage, payload, verdict(payload, spec, seen, answered)))
    if not plan:
        row.skipped = f"{MODULE} has no function returning a strategy of payloads"
        return row
    refused = Counter(stage for stage, _, v in plan if v not in ("accept", "duplicate"))
    internal = Counter(v for _, _, v in plan if v.startswith("internal"))
    row.inputs = (f"{len(plan):,} examples of {len(names)} strategies "
                  f"({', '.join(sorted(names))}), {count} each per stage")
    with ctx.run("fuzz", manifest,
                 stage_flags=("--max-message-bytes", str(MAX_MESSAGE_BYTES))) as run:
        run.start_stages()
        run.feed(ctx.workload.test_photos, max(10, len(plan) // 10))
        injector = Injector(run)
        for stage, payload, expected in plan:
            injector.publish(stage, payload, answered=expected != "duplicate")
        observer = run.observer
        assert observer is not None
        run.settle(until=lambda: len(observer.errors) >= sum(refused.values()))
        run.stop_all_stages()
        stats = run.status()
        fill(row, tally(run, run.sent_ids(),
                        ctx.workload.expected(manifest, ctx.workload.test_photos), stats))
        with observer.changed:
            events = Counter(e.get("stage") for e in observer.errors)
    rejected = {s.get("stage"): int(s.get("rejected", 0)) for s in stats.values()}
    for stage in range(len(specs)):
        if events[stage] != refused[stage] or rejected.get(stage) != refused[stage]:
            row.findings.append(f"stage {stage}: {refused[stage]} examples to refuse, "
                                f"{events[stage]} error events, {rejected.get(stage)} rejected")
    for name, count_ in internal.items():
        row.findings.append(f"decoder raised {name.removeprefix('internal: ')} {count_} times")
    return row

