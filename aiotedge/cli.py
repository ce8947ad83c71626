"""`aiotedge` command line: stage, camera, watch, status, profile, run.

Only flags and config files are read here; each daemon's life is in its `run_*` function in
aiotedge.nodes.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from aiotedge.config.schema import BrokerConfig, NodeConfig, PipelineConfig, StageConfig
from aiotedge.contracts.errors import ConfigError
from aiotedge.contracts.manifest import Manifest
from aiotedge.media.image import read_photo
from aiotedge.media.sources import open_source
from aiotedge.nodes import systemd
from aiotedge.nodes.camera import run_camera
from aiotedge.nodes.lifecycle import exit_status, stop_on_signals
from aiotedge.nodes.stage import run_stage
from aiotedge.nodes.status import collect_status, format_status
from aiotedge.nodes.watcher import run_watch
from aiotedge.tflite.profiling import (
    DEFAULT_PHOTO_SIZE,
    DEFAULT_ROUNDS,
    DEFAULT_RUNS,
    DEFAULT_WARMUP,
    measure_profile,
    profile_report,
)

log = logging.getLogger("aiotedge")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    systemd.setup_logging(args.verbose)
    return exit_status(lambda: args.handler(args))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aiotedge", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    stage = commands.add_parser("stage", help="serve one segment of a pipeline (a board daemon)")
    _add_node_flags(stage)
    stage.add_argument("--manifest", help="manifest.json or the folder holding it")
    stage.add_argument("--stage", dest="index", type=int, help="stage index (0 = first)")
    stage.add_argument("--node", help="node name (default: stage<K>-<hostname>)")
    stage.add_argument("--threads", type=int, help="interpreter threads")
    stage.add_argument("--queue-size", type=int, help="frames waiting for inference at most")
    stage.add_argument("--share-group", help="replicas with the same group share frames")
    stage.add_argument("--max-message-bytes", type=int,
                       help="refuse larger messages before decoding them")
    stage.add_argument("--stats-interval", type=float, help="seconds between stats messages")
    stage.set_defaults(handler=_cmd_stage)

    camera = commands.add_parser(
        "camera", help="publish frames from a camera, a stream, a video or photos into stage 0")
    _add_node_flags(camera)
    _add_source_flags(camera)
    camera.add_argument("--name", help="camera name carried by every frame (default cam0)")
    camera.add_argument("--fps", type=float, help="frame rate; 0 = as fast as results come back")
    camera.add_argument("--in-flight", type=int, help="frames awaiting their result at most")
    camera.add_argument("--frames", type=int, help="stop after this many frames")
    camera.add_argument("--size", help="WIDTHxHEIGHT asked of a device (V4L2, Pi camera)")
    camera.add_argument("--preprocess", choices=("none", "jpeg", "tensor"),
                        help="send frames at stage 0's input size (jpeg) or as its input tensor")
    camera.add_argument("--manifest", help="stage 0's preprocessing from this manifest "
                        "(default: from stage 0's retained info)")
    camera.add_argument("--snapshot", action="store_true", default=None,
                        help="publish the latest JPEG that got a prediction (retained)")
    camera.add_argument("--stats-interval", type=float, help="seconds between stats messages")
    camera.set_defaults(handler=_cmd_camera)

    watch = commands.add_parser("watch", help="print predictions as they arrive")
    _add_node_flags(watch)
    watch.add_argument("--count", type=int, help="exit after this many predictions")
    watch.add_argument("--json", action="store_true", help="print the raw JSON")
    watch.set_defaults(handler=_cmd_watch)

    status = commands.add_parser("status", help="availability and latest stats of every node")
    _add_node_flags(status)
    status.add_argument("--json", action="store_true", help="print the raw JSON per node")
    status.set_defaults(handler=_cmd_status)

    profile = commands.add_parser(
        "profile", help="measure on this board what each piece of a model costs, for the planner"
    )
    profile.add_argument("model", type=Path, metavar="MODEL.tflite", help="the whole model")
    profile.add_argument("--out", type=Path, required=True, metavar="PROFILE.json",
                         help="where to write it")
    profile.add_argument("--threads", type=int,
                         help="interpreter threads (as the stage will use)")
    profile.add_argument("--runs", type=int, default=DEFAULT_RUNS,
                         help=f"timed runs per piece ({DEFAULT_RUNS})")
    profile.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS,
                         help=f"rounds over all pieces; the quietest counts ({DEFAULT_ROUNDS})")
    profile.add_argument("--warmup", type=int, default=DEFAULT_WARMUP,
                         help=f"untimed runs first ({DEFAULT_WARMUP})")
    profile.add_argument("--photo", type=Path, metavar="PHOTO",
                         help="a photo from the camera: its size and content (default: a "
                              "synthetic one of --photo-size)")
    profile.add_argument("--photo-size", type=_size, default=DEFAULT_PHOTO_SIZE, metavar="WxH",
                         help="the camera's photo size ({}x{})".format(*DEFAULT_PHOTO_SIZE))
    profile.add_argument("--no-mqtt", dest="mqtt", action="store_false",
                         help="do not measure MQTT publish/receive costs (a private mosquitto)")
    profile.set_defaults(handler=_cmd_profile)

    run = commands.add_parser("run", help="run a whole pipeline on this machine")
    source = run.add_mutually_exclusive_group(required=True)
    source.add_argument("--manifest", help="manifest.json or the folder holding it")
    source.add_argument("--plan", help="a folder written by aiotedge-convert plan: its "
                        "manifest, and as many processes per stage as it has boards")
    _add_source_flags(run)
    run.add_argument("--broker", help="HOST[:PORT] of a broker (default: start a local mosquitto)")
    run.add_argument("--pipeline", default="local", help="pipeline name (topic level)")
    run.add_argument("--frames", type=int, help="stop after this many predictions")
    run.add_argument("--threads", type=int, help="interpreter threads per stage")
    run.add_argument("--json", action="store_true", help="print the raw JSON predictions")
    run.set_defaults(handler=_cmd_run)
    return parser


def _size(text: str) -> tuple[int, int]:
    width, _, height = text.lower().partition("x")
    if not (width.isdigit() and height.isdigit() and int(width) > 0 and int(height) > 0):
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, e.g. 640x480: {text!r}")
    return int(width), int(height)


def _add_node_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="node config file (TOML); flags override it")
    parser.add_argument("--broker", help="broker HOST[:PORT]")
    parser.add_argument("--pipeline", help="pipeline name (topic level)")
    parser.add_argument("--qos", type=int, choices=(0, 1), help="MQTT QoS for frames")


def _add_source_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--source", "--images", dest="source",
        help="a folder, an image or a video file, /dev/videoN, picamera2:N, rtsp://, http(s)://")
    parser.add_argument("--loop", action="store_true", default=None,
                        help="a folder or a video: start again at the end")
    parser.add_argument("--watch", action="store_true", default=None,
                        help="a folder: send each photo written into it from now on")
    parser.add_argument("--realtime", action="store_true", default=None,
                        help="a video: at its own frame rate, dropping what the pipeline "
                        "cannot take (else every frame, as fast as the pipeline takes them)")


def _source_keys(args: argparse.Namespace) -> dict[str, object]:
    return {"source": args.source, "loop": args.loop, "watch": args.watch,
            "realtime": args.realtime}


def _broker_flag(address: str) -> BrokerConfig:
    try:
        return BrokerConfig.parse(address)
    except ConfigError as exc:
        raise ConfigError(f"flags: --broker {address!r}: {exc}") from exc


def _node_config(args: argparse.Namespace, section: str, **flags: object) -> NodeConfig:
    """The node's config file with the flags given on top, its files checked."""
    config = NodeConfig.load(args.config)
    if args.broker:
        address = _broker_flag(args.broker)
        config = config.override("broker", host=address.host, port=address.port)
    config = config.override("pipeline", name=args.pipeline, qos=args.qos)
    config = config.override(section, **flags)
    config.check_files()
    return config


def _cmd_stage(args: argparse.Namespace) -> int:
    config = _node_config(
        args, "stage", manifest=args.manifest, index=args.index, node=args.node,
        threads=args.threads, queue_size=args.queue_size, share_group=args.share_group,
        max_message_bytes=args.max_message_bytes,
    ).override("stats", interval=args.stats_interval)
    return run_stage(config)


def _cmd_camera(args: argparse.Namespace) -> int:
    return run_camera(_node_config(
        args, "camera", **_source_keys(args), name=args.name, fps=args.fps,
        in_flight=args.in_flight, frames=args.frames, size=args.size,
        preprocess=args.preprocess, manifest=args.manifest, snapshot=args.snapshot,
    ).override("stats", interval=args.stats_interval))


def _cmd_watch(args: argparse.Namespace) -> int:
    return run_watch(_node_config(args, "pipeline"), lambda line: print(line, flush=True),
                     count=args.count, as_json=args.json)


def _cmd_status(args: argparse.Namespace) -> int:
    config = _node_config(args, "pipeline")
    nodes = collect_status(config.broker, config.topics)
    if args.json:
        print(json.dumps(nodes, indent=2, sort_keys=True))
    else:
        print(format_status(nodes))
    return 0 if nodes else 1


def _cmd_profile(args: argparse.Namespace) -> int:
    """Measure, write PROFILE.json and print the table."""
    from aiotedge.nodes.transport_cost import measure_mqtt

    photo = read_photo(args.photo) if args.photo else None
    profile = measure_profile(
        args.model, threads=args.threads, runs=args.runs, warmup=args.warmup,
        rounds=args.rounds,
        on_round=lambda done, total: log.info("round %d of %d done", done, total),
        photo=photo, photo_name=args.photo.name if args.photo else "",
        photo_size=args.photo_size, transport=measure_mqtt if args.mqtt else None,
    )
    profile.save(args.out)
    print(profile_report(profile))
    print(f"wrote {args.out}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from aiotedge.nodes.local import LocalPipeline, plan_replicas

    manifest = Manifest.load(args.manifest or args.plan)
    camera = NodeConfig().override("camera", **_source_keys(args)).camera
    source = open_source(camera, "--source")
    stop = stop_on_signals()
    with LocalPipeline(
        manifest,
        pipeline=PipelineConfig(name=args.pipeline),
        broker=_broker_flag(args.broker) if args.broker else None,
        stage=StageConfig(threads=args.threads),
        replicas=plan_replicas(args.plan) if args.plan else None,
    ) as pipeline:
        for name, prediction in pipeline.predict(source, frames=args.frames, stop=stop):
            print(prediction.to_json() if args.json else f"{name:24} {prediction.summary()}",
                  flush=True)
    return 0
