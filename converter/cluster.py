"""What a frame costs on a cluster of boards over MQTT, and what a plan of stages delivers.

The model is a chain of *pieces* (the operators between neighbouring cut points); a stage runs
consecutive pieces. Besides its segment, a stage spends CPU on every frame taking its input
in (receiving the message, decoding it; stage 0 also decodes and preprocesses a photo) and
handing its output on (encoding, compressing if its output has a codec, publishing); the
profiles of `aiotedge profile` (version 2) measure all of it on each kind of board.

Links. Every message crosses the broker's link twice, in and out; Ethernet is full duplex, so
each direction of the broker's link carries every message of a frame once: the camera's
frame, each activation, the prediction. A board's link carries its input in and its output
out. Network transfers overlap computing (another thread, DMA), so a replica of a stage needs
max(CPU, link) per frame it serves.

Replicas. r boards serving one stage share its frames through a shared subscription, which
mosquitto hands out round robin: each replica gets every r-th frame whatever its speed, so the
stage delivers r / (the slowest replica's time) frames a second. That needs enough frames in
flight to keep every replica busy: the camera's window (`in_flight`) should be two frames per
board (one computing, one on its way). A pipeline then delivers what its slowest stage, or
the broker's link, allows. A lone frame takes the sum of its stages' CPU times (the slowest
replica's, as one may get it) plus, per message, its transfer over two links and the
broker's forwarding.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from aiotedge_converter.costs import check_profile
from aiotedge_converter.errors import ConverterError

from aiotedge.contracts.codec import CODECS
from aiotedge.contracts.profile import INPUT_KINDS, PREDICTION_BYTES, CodecCost, Piece, Profile
from aiotedge.tflite.graph import Graph

Codec = str | None


@dataclass(frozen=True)
class Links:
    """Link speeds in Mbit/s; None: not a limit."""

    board_mbps: float | None = None
    broker_mbps: float | None = None

    def __post_init__(self) -> None:
        for flag, value in (("--link-mbps", self.board_mbps),
                            ("--broker-link-mbps", self.broker_mbps)):
            if value is not None and value <= 0:
                raise ConverterError(f"{flag} must be positive, got {value:g}")

    def board_ms(self, message_bytes: int) -> float:
        return _transfer_ms(message_bytes, self.board_mbps)

    def broker_ms(self, message_bytes: int) -> float:
        return _transfer_ms(message_bytes, self.broker_mbps)

    def hop_ms(self, message_bytes: int) -> float:
        """A message's two legs, sender to broker and broker to receiver (store and forward),
        each at the slower of its two ends."""
        speeds = [s for s in (self.board_mbps, self.broker_mbps) if s is not None]
        return 2 * _transfer_ms(message_bytes, min(speeds)) if speeds else 0.0


def _transfer_ms(message_bytes: int, mbps: float | None) -> float:
    return message_bytes * 8 / (mbps * 1000.0) if mbps else 0.0


@dataclass(frozen=True)
class BoardKind:
    """Stage costs on one kind of board, ms. Per piece: `invoke`, `set_input` (a stage
    starting with it copies its input in) and `get_output` (one ending with it copies its
    output out). Per boundary 0..P (0: stage 0's input, P: the prediction) and codec: `take`
    (receive and decode the message) and `send` (encode and publish it)."""

    name: str
    invoke: tuple[float, ...]
    set_input: tuple[float, ...]
    get_output: tuple[float, ...]
    take: dict[Codec, tuple[float, ...]]
    send: dict[Codec, tuple[float, ...]]
    #: the interpreter threads it was measured with (its stage daemon should use as many)
    threads: int | None = None


@dataclass(frozen=True)
class Chain:
    """The model as the planner sees it: pieces (operator ranges) and, per boundary 0..P and
    codec, the bytes of the message crossing it and the broker's wall time forwarding it
    beyond what the two ends spend (`forward_ms`). `edge_ms`: what the camera spends
    publishing and a sink receiving, which only a lone frame's latency counts."""

    first_ops: tuple[int, ...]
    last_ops: tuple[int, ...]
    message_bytes: dict[Codec, tuple[int, ...]]
    forward_ms: dict[Codec, tuple[float, ...]] = field(default_factory=dict)
    edge_ms: float = 0.0
    #: how stage 0 receives its frames (a profile's INPUT_KINDS), for the report
    stage0_input: str = "tensor"

    @property
    def pieces(self) -> int:
        return len(self.first_ops)

    @property
    def codecs(self) -> tuple[Codec, ...]:
        return tuple(self.message_bytes)


@dataclass(frozen=True)
class StageCost:
    """One replica of a stage on one kind of board, per frame it serves."""

    compute_ms: float
    take_ms: float
    send_ms: float
    link_ms: float
    in_bytes: int
    out_bytes: int

    @property
    def cpu_ms(self) -> float:
        return self.compute_ms + self.take_ms + self.send_ms

    @property
    def time_ms(self) -> float:
        return max(self.cpu_ms, self.link_ms)


@dataclass(frozen=True)
class Cluster:
    """Boards (`counts[k]` of `kinds[k]`), links, and the model's chain."""

    chain: Chain
    kinds: tuple[BoardKind, ...]
    counts: tuple[int, ...]
    links: Links = Links()

    @property
    def boards(self) -> int:
        return sum(self.counts)

    def stage_cost(self, kind: int, first: int, last: int, codec_in: Codec,
                   codec_out: Codec) -> StageCost:
        """Pieces first..last on a board of `kinds[kind]`, input and output in those codecs."""
        board, chain = self.kinds[kind], self.chain
        compute = sum(board.invoke[first:last + 1]) + board.set_input[first] + \
            board.get_output[last]
        in_bytes = chain.message_bytes[codec_in][first]
        out_bytes = chain.message_bytes[codec_out][last + 1]
        return StageCost(
            compute_ms=compute,
            take_ms=board.take[codec_in][first],
            send_ms=board.send[codec_out][last + 1],
            link_ms=self.links.board_ms(max(in_bytes, out_bytes)),
            in_bytes=in_bytes,
            out_bytes=out_bytes,
        )

    def hop_latency_ms(self, boundary: int, codec: Codec) -> float:
        """Wall time of a message between its two ends' CPU work: links and the broker."""
        chain = self.chain
        forward = chain.forward_ms.get(codec, ())
        return self.links.hop_ms(chain.message_bytes[codec][boundary]) + (
            forward[boundary] if forward else 0.0)

    def broker_limit(self, frame_bytes: int) -> float:
        """Frames/s the broker's link carries when a frame's messages total `frame_bytes`."""
        ms = self.links.broker_ms(frame_bytes)
        return 1000.0 / ms if ms else float("inf")


@dataclass(frozen=True)
class PlannedStage:
    """Pieces first..last, served by `replicas[k]` boards of kind k, output in `codec`."""

    first: int
    last: int
    replicas: tuple[int, ...]
    codec: Codec = None

    @property
    def boards(self) -> int:
        return sum(self.replicas)


@dataclass(frozen=True)
class ClusterPlan:
    stages: tuple[PlannedStage, ...]

    @property
    def boards(self) -> int:
        return sum(stage.boards for stage in self.stages)

    def codec_in(self, index: int) -> Codec:
        return self.stages[index - 1].codec if index else None


@dataclass(frozen=True)
class Forecast:
    """What a plan delivers: frames/s, a lone frame's latency, and where the limit is."""

    frames_per_s: float
    latency_ms: float
    #: frames/s each stage allows (replicas / slowest replica's time)
    stage_limits: tuple[float, ...]
    broker_limit: float
    #: per stage, per kind of board serving it, what one replica spends per frame
    stage_costs: tuple[dict[int, StageCost], ...]
    frame_bytes: int

    @property
    def bottleneck(self) -> str:
        """'stage K' (its CPU), 'stage K link' or 'broker link'."""
        if self.broker_limit <= min(self.stage_limits):
            return "broker link"
        index = self.stage_limits.index(min(self.stage_limits))
        slowest = max(self.stage_costs[index].values(), key=lambda c: c.time_ms)
        return f"stage {index}" + (" link" if slowest.link_ms > slowest.cpu_ms else "")

    @property
    def link_bound(self) -> bool:
        return self.bottleneck.endswith("link")


def predict(plan: ClusterPlan, cluster: Cluster) -> Forecast:
    """Frames/s and lone-frame latency of `plan` on `cluster` (module docstring)."""
    chain = cluster.chain
    limits, costs = [], []
    latency = chain.edge_ms + cluster.hop_latency_ms(0, None)
    frame_bytes = chain.message_bytes[None][0] + chain.message_bytes[None][chain.pieces]
    for index, stage in enumerate(plan.stages):
        per_kind = {
            kind: cluster.stage_cost(kind, stage.first, stage.last, plan.codec_in(index),
                                     stage.codec)
            for kind, count in enumerate(stage.replicas) if count
        }
        costs.append(per_kind)
        limits.append(stage_limit(stage.boards, per_kind.values()))
        latency += max(cost.cpu_ms for cost in per_kind.values())
        latency += cluster.hop_latency_ms(stage.last + 1, stage.codec)
        if stage.last + 1 < chain.pieces:
            frame_bytes += chain.message_bytes[stage.codec][stage.last + 1]
    broker = cluster.broker_limit(frame_bytes)
    return Forecast(min(*limits, broker), latency, tuple(limits), broker, tuple(costs),
                    frame_bytes)


def stage_limit(replicas: int, costs: Iterable[StageCost]) -> float:
    """Frames/s of a stage: its replicas take turns, so the slowest one sets the pace."""
    slowest = max(cost.time_ms for cost in costs)
    return 1000.0 * replicas / slowest if slowest > 0 else float("inf")


# -- from profiles --------------------------------------------------------------------------


def cluster_from_profiles(
    graph: Graph,
    profiles: Sequence[tuple[str, Profile]],
    boards: int,
    links: Links,
    stage0_input: str = "photo",
) -> Cluster:
    """One profile for `boards` identical boards, or one profile per board (identical
    profiles make one kind of board)."""
    if not profiles:
        raise ConverterError("plan needs measured costs: --profile (from `aiotedge profile`)")
    if len(profiles) not in (1, boards):
        raise ConverterError(f"{len(profiles)} profiles for {boards} boards: give one profile "
                             "for identical boards, or one per board")
    for name, profile in profiles:
        check_profile(graph, profile, name)
    if stage0_input not in INPUT_KINDS:
        raise ConverterError(f"--stage0-input must be one of {', '.join(INPUT_KINDS)}")
    kinds: dict[str, tuple[Profile, int]] = {}
    for name, profile in profiles:
        known = kinds.get(name)
        kinds[name] = (profile, (known[1] if known else 0) + 1)
    if len(profiles) == 1:
        kinds = {name: (profile, boards) for name, profile in profiles}
    measured = [p for p, _ in kinds.values() if p.hop_costs]
    if measured and len(measured) < len(kinds):
        raise ConverterError("mix of version 1 and 2 profiles: measure every board with "
                             "this aiotedge (`aiotedge profile`)")
    reference = measured[0] if measured else next(iter(kinds.values()))[0]
    chain = _chain(graph, reference, stage0_input)
    return Cluster(
        chain,
        tuple(_board_kind(name, profile, chain) for name, (profile, _) in kinds.items()),
        tuple(count for _, count in kinds.values()),
        links,
    )


def _chain(graph: Graph, profile: Profile, stage0_input: str) -> Chain:
    pieces = profile.pieces
    if not profile.hop_costs:
        sizes = (graph.tensor(graph.input_index).nbytes,
                 *(p.output_bytes for p in pieces[:-1]), PREDICTION_BYTES)
        return Chain(tuple(p.first_op for p in pieces), tuple(p.last_op for p in pieces),
                     {None: sizes})
    source = profile.input_cost(stage0_input)
    if source is None:
        raise ConverterError(f"the profile has no cost for stage 0 taking a {stage0_input} "
                             "(a model whose input is not an image takes tensors only)")
    message_bytes: dict[Codec, tuple[int, ...]] = {}
    forward: dict[Codec, tuple[float, ...]] = {}
    for codec in (None, *CODECS):
        sizes = (source.message_bytes,
                 *(_sent(p, codec).message_bytes for p in pieces[:-1]), PREDICTION_BYTES)
        message_bytes[codec] = sizes
        forward[codec] = tuple(_forward_ms(profile, size) for size in sizes)
    edge = 0.0
    if profile.transport is not None:
        edge = profile.transport.at(source.message_bytes).publish_ms + \
            profile.transport.at(PREDICTION_BYTES).receive_ms
    return Chain(tuple(p.first_op for p in pieces), tuple(p.last_op for p in pieces),
                 message_bytes, forward, edge, stage0_input)


def _sent(piece: Piece, codec: Codec) -> CodecCost:
    cost = piece.send(codec)
    if cost is None:
        raise ConverterError(f"the profile has no cost for sending the output of ops "
                             f"{piece.first_op}..{piece.last_op} in {codec or 'raw bytes'}")
    return cost


def _forward_ms(profile: Profile, message_bytes: int) -> float:
    """The broker's share of a message's one-way time (what neither end spends)."""
    if profile.transport is None:
        return 0.0
    cost = profile.transport.at(message_bytes)
    return max(0.0, cost.one_way_ms - cost.publish_ms - cost.receive_ms)


def _board_kind(name: str, profile: Profile, chain: Chain) -> BoardKind:
    pieces = profile.pieces
    count = len(pieces)
    take: dict[Codec, tuple[float, ...]] = {}
    send: dict[Codec, tuple[float, ...]] = {}
    for codec, sizes in chain.message_bytes.items():
        receive = publish = [0.0] * (count + 1)
        if profile.transport is not None:
            receive = [profile.transport.at(size).receive_ms for size in sizes]
            publish = [profile.transport.at(size).publish_ms for size in sizes]
        decode, encode = [0.0] * (count + 1), [0.0] * (count + 1)
        if profile.hop_costs:
            source = profile.input_cost(chain.stage0_input)
            assert source is not None  # _chain checked it
            decode[0] = source.decode_ms
            for boundary, piece in enumerate(pieces[:-1], start=1):
                sent = _sent(piece, codec)
                decode[boundary], encode[boundary] = sent.decode_ms, sent.encode_ms
        take[codec] = tuple(r + d for r, d in zip(receive, decode, strict=True))
        send[codec] = tuple(p + e for p, e in zip(publish, encode, strict=True))
    return BoardKind(
        name=name,
        invoke=tuple(p.invoke_ms for p in pieces),
        set_input=tuple(p.set_input_ms for p in pieces),
        get_output=tuple(p.get_output_ms for p in pieces),
        take=take,
        send=send,
        threads=profile.threads,
    )
