"""`aiotedge` command line: stage, camera, watch, run."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiotedge import service
from aiotedge.camera import Camera, CameraOptions, read_photo
from aiotedge.config import ConfigError, NodeConfig, StatsConfig
from aiotedge.dedup import RecentIds
from aiotedge.homeassistant import discovery_message
from aiotedge.image import list_images
from aiotedge.manifest import Manifest
from aiotedge.metrics import Counters, serve_prometheus
from aiotedge.nodeinfo import NodeInfo, chain_problems
from aiotedge.profile import add_profile_arguments, run_profile
from aiotedge.session import BrokerConfig, MqttSession, read_retained
from aiotedge.sink import Prediction
from aiotedge.stage import StageNode, StageOptions
from aiotedge.status import collect_status, format_status
from aiotedge.topics import ONLINE, Topics

log = logging.getLogger("aiotedge")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    service.setup_logging(args.verbose)
    try:
        return args.handler(args)
    # ConfigError, ManifestError, BrokerConfigError and bad names (a pipeline "a/b") are all
    # ValueErrors: one line for the journal, the traceback only with -v
    except (ValueError, FileNotFoundError) as exc:
        log.error("%s", exc)
        log.debug("details", exc_info=True)
        return 2
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aiotedge", description=__doc__)
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

    camera = commands.add_parser("camera", help="publish photos from a folder into stage 0")
    _add_node_flags(camera)
    camera.add_argument("--images", help="folder of .jpg/.png/.bmp photos")
    camera.add_argument("--source", help="camera id carried by every frame (default cam0)")
    camera.add_argument("--fps", type=float, help="frame rate; 0 = as fast as results come back")
    camera.add_argument("--in-flight", type=int, help="frames awaiting their result at most")
    camera.add_argument("--loop", action="store_true", default=None, help="repeat the folder")
    camera.add_argument("--frames", type=int, help="stop after this many frames")
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
    add_profile_arguments(profile)
    profile.set_defaults(handler=run_profile)

    run = commands.add_parser("run", help="run a whole pipeline on this machine")
    run.add_argument("--manifest", required=True, help="manifest.json or the folder holding it")
    run.add_argument("--images", required=True, help="folder of photos for the camera")
    run.add_argument("--broker", help="HOST[:PORT] of a broker (default: start a local mosquitto)")
    run.add_argument("--pipeline", default="local", help="pipeline name (topic level)")
    run.add_argument("--frames", type=int, help="stop after this many predictions")
    run.add_argument("--threads", type=int, help="interpreter threads per stage")
    run.add_argument("--json", action="store_true", help="print the raw JSON predictions")
    run.set_defaults(handler=_cmd_run)
    return parser


def _add_node_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="node config file (TOML); flags override it")
    parser.add_argument("--broker", help="broker HOST[:PORT]")
    parser.add_argument("--pipeline", help="pipeline name (topic level)")
    parser.add_argument("--qos", type=int, choices=(0, 1), help="MQTT QoS for frames")


def _node_config(args: argparse.Namespace, section: str, **flags: object) -> NodeConfig:
    config = NodeConfig.load(args.config)
    if args.broker:
        try:
            address = BrokerConfig.parse(args.broker)
        except ValueError as exc:
            raise ConfigError(f"flags: --broker {args.broker!r}: {exc}") from exc
        config = config.override("broker", host=address.host, port=address.port)
    config = config.override("pipeline", name=args.pipeline, qos=args.qos)
    config = config.override(section, **flags)
    config.check_files(args.config or "flags")
    return config


def _stop_on_signals() -> threading.Event:
    """SIGTERM (systemctl stop) and SIGINT (Ctrl-C) both mean: finish up and exit."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    return stop


def _wait_for_broker(session: MqttSession, stop: threading.Event) -> bool:
    """True once connected; False if told to stop first (the broker may be down for long)."""
    while not session.wait_connected(timeout=5.0):
        if stop.is_set():
            return False
        problem = session.connection_problem
        log.info("waiting for the broker at %s%s", session.broker,
                 f": {problem}" if problem else "")
    return True


def _chain_fits(broker: BrokerConfig, topics: Topics, me: NodeInfo,
                stop: threading.Event) -> tuple[bool, NodeInfo | None] | None:
    """Whether this stage fits between the stages online now, and what it said about itself
    when it last ran (None: told to stop first)."""
    session = MqttSession(broker, f"{me.node}-check")
    session.start()
    try:
        if not _wait_for_broker(session, stop):
            return None
        retained = read_retained(session, [topics.all_info, topics.all_availability],
                                 topics.probe(session.client_id))
    finally:
        session.stop()
    online = {topic.rsplit("/", 1)[1] for topic, payload in retained.items()
              if topic.startswith(topics.availability("")) and payload.decode() == ONLINE}
    neighbours = [info for topic, payload in retained.items()
                  if topic.startswith(topics.info("")) and (info := NodeInfo.parse(payload))
                  and info.node in online]
    errors, warnings = chain_problems(me, neighbours)
    for warning in warnings:
        log.warning("%s", warning)
    for error in errors:
        log.error("not starting: %s", error)
    previous = NodeInfo.parse(retained.get(topics.info(me.node), b""))
    return not errors, previous


def _topics(config: NodeConfig) -> Topics:
    return Topics(config.pipeline.name, config.pipeline.prefix)


def _cmd_stage(args: argparse.Namespace) -> int:
    config = _node_config(
        args, "stage", manifest=args.manifest, index=args.index, node=args.node,
        threads=args.threads, queue_size=args.queue_size, share_group=args.share_group,
        max_message_bytes=args.max_message_bytes,
    ).override("stats", interval=args.stats_interval)
    stage = config.stage
    source = args.config or "flags"
    manifest = _load_manifest(config, source)
    options = StageOptions(
        index=stage.index,
        node=stage.node or f"stage{stage.index}-{socket.gethostname()}",
        qos=config.pipeline.qos,
        queue_size=stage.queue_size,
        num_threads=stage.threads,
        top_k=stage.top_k,
        max_message_bytes=stage.max_message_bytes,
        share_group=stage.share_group,
        session_expiry=config.pipeline.session_expiry,
        stats_interval=config.stats.interval,
    )
    stop = _stop_on_signals()
    topics = _topics(config)
    node = StageNode(manifest, topics, config.broker, options)
    if config.stats.prometheus_port:
        _serve_prometheus(config.stats, options.node, node.stats_snapshot, source)
    checked = _chain_fits(config.broker, topics, node.info, stop)
    if checked is None:
        return 0
    fits, previous = checked
    if not fits:
        return 2
    if previous is not None and previous.share_group != options.share_group:
        node.forget_subscription(previous.share_group)
    node.start()
    if not _wait_for_broker(node.session, stop):
        node.stop()
        return 0
    node.announce_online()
    if config.homeassistant.discovery and node.is_last:
        topic, payload = discovery_message(topics, manifest, options.node,
                                           config.homeassistant.prefix)
        node.session.publish(topic, payload, qos=1, retain=True)
    service.notify(f"READY=1\nSTATUS=stage {options.index} serving {node.input_topic}")
    stop.wait()
    service.notify("STOPPING=1")
    node.stop()
    return 0


def _serve_prometheus(
    stats: StatsConfig, node: str, snapshot: Callable[[], dict[str, Any]], source: str
) -> None:
    """Before connecting, so that a port in use stops the node with the keys to fix."""
    address, port = stats.prometheus_address, stats.prometheus_port
    try:
        serve_prometheus(node, snapshot, port, address)
    except OSError as exc:
        raise ConfigError(
            f"{source}: keys 'stats.prometheus_address' and 'stats.prometheus_port': "
            f"cannot listen on {address}:{port}: {exc.strerror}"
        ) from exc


def _load_manifest(config: NodeConfig, source: str) -> Manifest:
    """The manifest a stage config names, with errors that point at the config key."""
    path = config.stage.manifest
    if not path:
        raise ConfigError(f"{source}: no manifest given (--manifest or key 'stage.manifest')")
    if not Path(path).exists():
        raise ConfigError(f"{source}: key 'stage.manifest': {path} does not exist")
    manifest = Manifest.load(path)
    if not 0 <= config.stage.index < len(manifest.stages):
        raise ConfigError(
            f"{source}: key 'stage.index' is {config.stage.index}, but {path} has "
            f"{len(manifest.stages)} stages (0 to {len(manifest.stages) - 1})"
        )
    return manifest


def _cmd_camera(args: argparse.Namespace) -> int:
    config = _node_config(
        args, "camera", images=args.images, source=args.source, fps=args.fps,
        in_flight=args.in_flight, loop=args.loop, frames=args.frames,
    )
    cam = config.camera
    source = args.config or "flags"
    if not cam.images:
        raise ConfigError(f"{source}: no image folder given (--images or key 'camera.images')")
    try:
        images = list_images(cam.images)
    except FileNotFoundError as exc:
        raise ConfigError(f"{source}: key 'camera.images': {exc}") from exc
    photos = [(path.name, read_photo(path)) for path in images]
    topics = _topics(config)
    # a session the broker keeps while the camera reconnects: results published meanwhile wait
    session = MqttSession(config.broker, f"camera-{cam.source}", topics.availability(cam.source),
                          session_expiry=config.pipeline.session_expiry)
    camera = Camera(
        session,
        topics,
        CameraOptions(source=cam.source, fps=cam.fps, in_flight=cam.in_flight, loop=cam.loop,
                      frame_timeout=cam.frame_timeout, resends=cam.resends,
                      qos=config.pipeline.qos),
    )
    stop = _stop_on_signals()
    session.start()
    if not _wait_for_broker(session, stop):
        session.stop()
        return 0
    session.set_online()
    service.notify(f"READY=1\nSTATUS=camera {cam.source} publishing {len(photos)} photos")
    sent = camera.run(photos, frames=cam.frames, stop=stop)
    service.notify("STOPPING=1")
    session.stop()
    return _camera_outcome(camera.counters, sent, topics)


def _camera_outcome(counters: Counters, sent: int, topics: Topics) -> int:
    """Log what became of the frames; 1 when none could get through (a config to fix)."""
    answered, rejected, unanswered, refused = (counters.get(name) for name in (
        "answered", "rejected", "unanswered", "refused_by_broker"))
    log.info("published %d frames: %d answered, %d rejected by the pipeline, %d unanswered, "
             "%d refused by the broker", sent, answered, rejected, unanswered, refused)
    if sent and refused == sent:
        log.error("the broker refused every frame: is this camera's user allowed to publish "
                  "to %s (the broker's ACL)?", topics.stage_input(0))
        return 1
    if sent and rejected == sent:
        log.error("the pipeline rejected every frame (see %s for why)", topics.errors)
        return 1
    return 0


def _cmd_watch(args: argparse.Namespace) -> int:
    config = _node_config(args, "pipeline")
    topics = _topics(config)
    session = MqttSession(config.broker, f"watch-{socket.gethostname()}-{id(args):x}")
    stop = _stop_on_signals()
    recent = RecentIds()
    seen = 0

    def show(message) -> None:
        nonlocal seen
        prediction = Prediction.parse(message.payload)
        if prediction is None or recent.seen(prediction.frame_id):
            return
        print(message.payload.decode() if args.json else prediction.summary(), flush=True)
        seen += 1
        if args.count and seen >= args.count:
            stop.set()

    session.subscribe(topics.predictions, show, qos=1)
    session.start()
    stop.wait()
    session.stop()
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    config = _node_config(args, "pipeline")
    nodes = collect_status(config.broker, _topics(config))
    if args.json:
        print(json.dumps(nodes, indent=2, sort_keys=True))
    else:
        print(format_status(nodes))
    return 0 if nodes else 1


def _cmd_run(args: argparse.Namespace) -> int:
    from aiotedge.local import LocalPipeline

    manifest = Manifest.load(args.manifest)
    photos = [(path.name, read_photo(path)) for path in list_images(Path(args.images))]
    stop = _stop_on_signals()
    with LocalPipeline(
        manifest,
        pipeline=args.pipeline,
        broker=BrokerConfig.parse(args.broker) if args.broker else None,
        threads=args.threads,
    ) as pipeline:
        for name, prediction in pipeline.predict(photos, frames=args.frames, stop=stop):
            print(prediction.to_json() if args.json else f"{name:24} {prediction.summary()}",
                  flush=True)
    return 0
