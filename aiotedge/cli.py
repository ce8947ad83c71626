"""`aiotedge` command line: stage, node, camera, watch, status, retire, profile, verify, run.

Only flags and config files are read here; each daemon's life is in its `run_*` function in
aiotedge.nodes.
"""

from __future__ import annotations

import argparse
import json
import logging
import socket
import sys
import tempfile
from pathlib import Path

from aiotedge import __version__
from aiotedge.config.flags import add_section_flags, flag_given, override_from_flags
from aiotedge.config.loader import NodeConfig
from aiotedge.config.sections import (
    BrokerConfig,
    CameraConfig,
    PipelineConfig,
    StageConfig,
    StatsConfig,
)
from aiotedge.contracts.errors import ConfigError
from aiotedge.contracts.manifest import Manifest
from aiotedge.media.image import read_photo
from aiotedge.media.sources import open_source
from aiotedge.nodes.daemons.camera import run_camera
from aiotedge.nodes.daemons.lifecycle import exit_status, stop_on_signals
from aiotedge.nodes.daemons.node import DEFAULT_NODE_CACHE, run_node
from aiotedge.nodes.daemons.profiling import (
    DEFAULT_PHOTO_SIZE,
    DEFAULT_ROUNDS,
    DEFAULT_RUNS,
    DEFAULT_WARMUP,
    measure_profile,
    profile_report,
)
from aiotedge.nodes.daemons.retire import retire
from aiotedge.nodes.daemons.stage import run_stage
from aiotedge.nodes.daemons.status import (
    format_status,
    nodes_json,
    read_fleet,
    read_pipeline,
    status_exit,
    watch_status,
)
from aiotedge.nodes.daemons.watcher import run_watch
from aiotedge.nodes.observe import systemd
from aiotedge.tflite.selfcheck import verify_board, verify_table

log = logging.getLogger("aiotedge")

#: the pipeline and camera names `aiotedge run` uses unless told otherwise
LOCAL_PIPELINE = "local"
LOCAL_CAMERA = "local"
#: the [camera] keys that say what to read, flags of `camera` and `run` alike
SOURCE_KEYS = ("source", "loop", "watch", "realtime")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    systemd.setup_logging(args.verbose)
    return exit_status(lambda: args.handler(args))


EPILOG = ("Exit status: 0 ok; 1 nothing got through (camera), or a node is not online "
          "(status); 2 a mistake to fix (config, flags, broker unreachable or refusing the "
          "login), told in one line. Docs: README.md, docs/config.md.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aiotedge", description=__doc__.split("\n")[0],
                                     epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    stage = commands.add_parser("stage", help="serve one segment of a pipeline (a board daemon)")
    _add_node_flags(stage)
    add_section_flags(stage, StageConfig, ("manifest", "index", "node", "threads", "queue_size",
                                           "share_group", "max_message_bytes"))
    add_section_flags(stage, StatsConfig, ("interval",))
    stage.set_defaults(handler=_cmd_stage)

    node = commands.add_parser(
        "node", help="a board daemon without a fixed role: serves what the releases of "
                     "`aiotedge-convert deploy` give it (docs/fleet.md)")
    _add_node_flags(node)
    add_section_flags(node, StageConfig, ("node", "threads", "queue_size", "max_message_bytes"),
                      helps={"node": "the board's name (its broker user on a secure broker)"},
                      shown_defaults={"node": "the host name"})
    add_section_flags(node, StatsConfig, ("interval",))
    node.add_argument("--cache", type=Path, default=Path(DEFAULT_NODE_CACHE), metavar="DIR",
                      help="where the node keeps models, its segments and its speed profile "
                      "(default: %(default)s)")
    node.set_defaults(handler=_cmd_node)

    camera = commands.add_parser(
        "camera", help="publish a camera's frames into stage 0 (a device, a stream, a video, "
                       "a folder of photos; docs/cameras.md)")
    _add_node_flags(camera)
    add_section_flags(camera, CameraConfig, (*SOURCE_KEYS, "name", "fps", "in_flight", "frames",
                                             "size", "crop", "rotate", "flip", "preprocess",
                                             "manifest", "snapshot"))
    add_section_flags(camera, StatsConfig, ("interval",))
    camera.set_defaults(handler=_cmd_camera)

    watch = commands.add_parser("watch", help="print predictions as they arrive")
    _add_node_flags(watch)
    watch.add_argument("--count", type=int, help="exit after this many predictions "
                       "(default: run until stopped)")
    watch.add_argument("--json", action="store_true", help="print the raw JSON")
    watch.set_defaults(handler=_cmd_watch)

    status = commands.add_parser(
        "status", help="every node: online or gone, model, fps, latency, queue; the bottleneck",
        epilog="Exit status: 0 every stage online and on one manifest; 1 a stage missing, "
               "offline or on another manifest, or no node at all; 2 the broker cannot be "
               "used.")
    _add_node_flags(status)
    status.add_argument("--json", action="store_true", help="print the raw JSON per node")
    status.add_argument("--watch", action="store_true",
                        help="refresh in place until Ctrl-C, like top")
    status.add_argument("--interval", type=float, default=2.0,
                        help="seconds between refreshes with --watch (default: %(default)s)")
    status.set_defaults(handler=_cmd_status)

    retire = commands.add_parser(
        "retire", help="take a stopped node out for good: its broker session and retained "
                       "messages (the last stage: the pipeline's Home Assistant entities too)")
    _add_node_flags(retire)
    add_section_flags(retire, StageConfig, ("node",), helps={"node": "the node's name"},
                      shown_defaults={"node": "[stage] node, or stage<K>-<hostname> from "
                                              "[stage] index"})
    retire.set_defaults(handler=_cmd_retire)

    _add_profile_parser(commands)
    _add_verify_parser(commands)

    run = commands.add_parser(
        "run", help="run a whole pipeline on this machine (a private broker unless one is given)")
    _add_node_flags(run, shown_defaults={"host": "a private mosquitto on a free port",
                                         "name": LOCAL_PIPELINE})
    model = run.add_mutually_exclusive_group(required=True)
    model.add_argument("--manifest", help="manifest.json or the folder holding it "
                       "(required, or --plan)")
    model.add_argument("--plan", help="a folder written by aiotedge-convert plan: its "
                       "manifest, and as many processes per stage as it has boards "
                       "(required, or --manifest)")
    add_section_flags(run, CameraConfig, (*SOURCE_KEYS, "name", "frames"),
                      helps={"frames": "stop after this many predictions"},
                      shown_defaults={"name": LOCAL_CAMERA, "frames": "the source's end"})
    add_section_flags(run, StageConfig, ("threads",),
                      helps={"threads": "interpreter threads per stage"})
    add_section_flags(run, CameraConfig, ("fps",))
    run.add_argument("--json", action="store_true", help="print the raw JSON predictions")
    run.add_argument("--log-file", type=Path, metavar="FILE",
                     help="where the daemons' log goes; the terminal shows the predictions, "
                          "warnings and errors, and a summary (default: aiotedge-run-"
                          "<pipeline>.log in the temporary folder; with -v: the terminal)")
    run.set_defaults(handler=_cmd_run)
    return parser


def _add_verify_parser(commands: argparse._SubParsersAction) -> None:
    verify = commands.add_parser(
        "verify", help="run each stage this board has on its reference: does this board "
                       "compute what the workstation did?")
    verify.add_argument("--manifest", type=Path, required=True, metavar="DIR",
                        help="the split folder: manifest.json and this board's stage "
                             "files (required)")
    verify.add_argument("--threads", type=int,
                        help="interpreter threads (default: the runtime's choice)")
    verify.set_defaults(handler=_cmd_verify)


def _add_profile_parser(commands: argparse._SubParsersAction) -> None:
    profile = commands.add_parser(
        "profile", help="measure on this board what each piece of a model costs, for the planner"
    )
    profile.add_argument("model", type=Path, metavar="MODEL.tflite", help="the whole model")
    profile.add_argument("--out", type=Path, required=True, metavar="PROFILE.json",
                         help="where to write it (required)")
    profile.add_argument("--threads", type=int,
                         help="interpreter threads, as the stage will use (default: the "
                              "runtime's choice)")
    profile.add_argument("--runs", type=int, default=DEFAULT_RUNS,
                         help="timed runs per piece (default: %(default)s)")
    profile.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS,
                         help="rounds over all pieces; the quietest counts "
                              "(default: %(default)s)")
    profile.add_argument("--warmup", type=int, default=DEFAULT_WARMUP,
                         help="untimed runs first (default: %(default)s)")
    profile.add_argument("--photo", type=Path, metavar="PHOTO",
                         help="a photo from the camera: its size and content (default: a "
                              "synthetic one of --photo-size)")
    profile.add_argument("--photo-size", type=_size, default=DEFAULT_PHOTO_SIZE, metavar="WxH",
                         help="the camera's photo size (default: {}x{})".format(
                             *DEFAULT_PHOTO_SIZE))
    profile.add_argument("--no-mqtt", dest="mqtt", action="store_false",
                         help="do not measure MQTT publish/receive costs (they need a private "
                              "mosquitto; default: measured)")
    profile.set_defaults(handler=_cmd_profile)


def _add_node_flags(parser: argparse.ArgumentParser, *,
                    shown_defaults: dict[str, str] | None = None) -> None:
    """The flags every node takes: its config file, the broker, the pipeline, the login."""
    parser.add_argument("--config", help="node config file (TOML); flags override it "
                        "(default: none, the defaults of docs/config.md)")
    add_section_flags(parser, BrokerConfig, ("host",), shown_defaults=shown_defaults)
    add_section_flags(parser, PipelineConfig, ("name", "qos"), shown_defaults=shown_defaults)
    login = parser.add_argument_group("broker login and TLS (or [broker] in --config)")
    add_section_flags(login, BrokerConfig, ("username", "password_file", "tls", "ca_file",
                                            "cert_file", "key_file"))


def _size(text: str) -> tuple[int, int]:
    width, _, height = text.lower().partition("x")
    if not (width.isdigit() and height.isdigit() and int(width) > 0 and int(height) > 0):
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, e.g. 640x480: {text!r}")
    return int(width), int(height)


def _node_config(args: argparse.Namespace,
                 defaults: dict[str, dict[str, object]] | None = None) -> NodeConfig:
    """The node's config file with the flags given on top, its files checked.

    `defaults`: a command's own defaults of some keys, where the file does not set them.
    """
    config = NodeConfig.load(args.config)
    for section, keys in (defaults or {}).items():
        config = config.override(section, **{
            key: value for key, value in keys.items() if not config.given(section, key)})
    config = override_from_flags(config, args)
    config.check_files()
    return config


def _cmd_stage(args: argparse.Namespace) -> int:
    return run_stage(_node_config(args))


def _cmd_node(args: argparse.Namespace) -> int:
    config = _node_config(args)
    if not config.stage.node:
        config = config.override("stage", node=socket.gethostname())
    try:
        args.cache.mkdir(parents=True, exist_ok=True)
        (args.cache / ".writable").touch()
    except OSError as exc:
        raise ConfigError(f"--cache {args.cache}: cannot write there: "
                          f"{exc.strerror or exc}") from None
    return run_node(config, args.cache)


def _cmd_camera(args: argparse.Namespace) -> int:
    return run_camera(_node_config(args))


def _cmd_watch(args: argparse.Namespace) -> int:
    return run_watch(_node_config(args), lambda line: print(line, flush=True),
                     count=args.count, as_json=args.json)


def _cmd_status(args: argparse.Namespace) -> int:
    config = _node_config(args)
    fleet = read_fleet(config.broker, config.topics)  # node daemons: the live release's stages
    if args.watch:  # the release live when it started
        return watch_status(config.broker, fleet.topics(config.topics), args.interval)
    view = read_pipeline(config.broker, fleet.topics(config.topics))
    if args.json:
        print(json.dumps(nodes_json(view), indent=2, sort_keys=True))
    else:
        print("\n".join([format_status(view, config.pipeline.name), *fleet.lines()]))
    return status_exit(view)


def _cmd_retire(args: argparse.Namespace) -> int:
    config = _node_config(args)
    if not (config.stage.node or config.stage.index is not None):
        raise ConfigError(f"{config.source}: which node? (--node, or key 'stage.node' or "
                          "'stage.index')")
    retired = retire(config, config.stage.node_name)
    print(f"retired {retired.node}: its session and {len(retired.cleared)} retained messages")
    if retired.pipeline:
        print(f"and pipeline {config.pipeline.name} with it (its last stage): its availability, "
              "labels and Home Assistant entities")
    return 0


def _cmd_profile(args: argparse.Namespace) -> int:
    """Measure, write PROFILE.json and print the table."""
    from aiotedge.nodes.daemons.transport_cost import measure_mqtt

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


def _cmd_verify(args: argparse.Namespace) -> int:
    """0 when every stage here is within its tolerance, 1 when one is not."""
    manifest = Manifest.load(args.manifest)
    checks = verify_board(manifest, args.threads)
    print(verify_table(manifest, checks))
    return 0 if all(check is None or check.ok for check in checks.values()) else 1


def _cmd_run(args: argparse.Namespace) -> int:
    from aiotedge.nodes.daemons.local import LocalPipeline, RunSummary, log_to_file, plan_replicas

    config = _node_config(args, {"pipeline": {"name": LOCAL_PIPELINE},
                                 "camera": {"name": LOCAL_CAMERA}})
    external = flag_given(args, BrokerConfig, "host") or config.given("broker")
    manifest = Manifest.load(args.manifest or args.plan)
    source = open_source(config.camera, "--source")
    log_file = None
    if not args.verbose:
        log_file = args.log_file or Path(tempfile.gettempdir()) / (
            f"aiotedge-run-{config.pipeline.name}.log")
        log_to_file(log_file)
    stop = stop_on_signals()
    with LocalPipeline(
        manifest,
        pipeline=config.pipeline,
        broker=config.broker if external else None,
        stage=config.stage,
        stats=config.stats,
        camera=config.camera,
        verbose=args.verbose,
        replicas=plan_replicas(args.plan) if args.plan else None,
    ) as pipeline:
        summary = RunSummary()
        in_flight = config.camera.in_flight if config.given("camera", "in_flight") else None
        for name, prediction in pipeline.predict(source, frames=config.camera.frames, stop=stop,
                                                 in_flight=in_flight):
            summary.add(prediction)
            print(prediction.to_json() if args.json else f"{name:24} {prediction.summary()}",
                  flush=True)
        counters = pipeline.camera.counters.snapshot()
    print(summary.line(counters) + (f"; the daemons' log: {log_file}" if log_file else ""),
          file=sys.stderr if args.json else sys.stdout, flush=True)
    return 0
