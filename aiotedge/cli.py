"""`aiotedge` command line: stage, camera, watch, run."""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import sys
import threading
from pathlib import Path

from aiotedge.camera import Camera, CameraOptions, list_images, read_photo
from aiotedge.config import ConfigError, NodeConfig
from aiotedge.manifest import Manifest, ManifestError
from aiotedge.session import BrokerConfig, MqttSession
from aiotedge.sink import Prediction
from aiotedge.stage import StageNode, StageOptions
from aiotedge.topics import Topics

log = logging.getLogger("aiotedge")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return args.handler(args)
    except (ConfigError, ManifestError, FileNotFoundError) as exc:
        log.error("%s", exc)
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
    stage.set_defaults(handler=_cmd_stage)

    camera = commands.add_parser("camera", help="publish photos from a folder into stage 0")
    _add_node_flags(camera)
    camera.add_argument("--images", help="folder of .jpg/.png/.bmp photos")
    camera.add_argument("--source", help="camera id carried by every frame (default cam0)")
    camera.add_argument("--fps", type=float, help="frame rate; 0 = as fast as results come back")
    camera.add_argument("--in-flight", type=int, help="with --fps 0: frames awaiting results")
    camera.add_argument("--loop", action="store_true", default=None, help="repeat the folder")
    camera.add_argument("--frames", type=int, help="stop after this many frames")
    camera.set_defaults(handler=_cmd_camera)

    watch = commands.add_parser("watch", help="print predictions as they arrive")
    _add_node_flags(watch)
    watch.add_argument("--count", type=int, help="exit after this many predictions")
    watch.add_argument("--json", action="store_true", help="print the raw JSON")
    watch.set_defaults(handler=_cmd_watch)

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
        address = BrokerConfig.parse(args.broker)
        config = config.override("broker", host=address.host, port=address.port)
    config = config.override("pipeline", name=args.pipeline, qos=args.qos)
    return config.override(section, **flags)


def _stop_on_signals() -> threading.Event:
    """SIGTERM (systemctl stop) and SIGINT (Ctrl-C) both mean: finish up and exit."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    return stop


def _topics(config: NodeConfig) -> Topics:
    return Topics(config.pipeline.name, config.pipeline.prefix)


def _cmd_stage(args: argparse.Namespace) -> int:
    config = _node_config(
        args, "stage", manifest=args.manifest, index=args.index, node=args.node,
        threads=args.threads, queue_size=args.queue_size,
    )
    stage = config.stage
    if not stage.manifest:
        raise ConfigError("no manifest given (--manifest or [stage] manifest)")
    manifest = Manifest.load(stage.manifest)
    options = StageOptions(
        index=stage.index,
        node=stage.node or f"stage{stage.index}-{socket.gethostname()}",
        qos=config.pipeline.qos,
        queue_size=stage.queue_size,
        num_threads=stage.threads,
        top_k=stage.top_k,
        max_message_bytes=stage.max_message_bytes,
    )
    stop = _stop_on_signals()
    node = StageNode(manifest, _topics(config), config.broker, options)
    node.start()
    while not node.session.wait_connected(timeout=5.0):
        if stop.is_set():
            node.stop()
            return 0
        log.info("waiting for the broker at %s", config.broker)
    node.announce_online()
    stop.wait()
    node.stop()
    return 0


def _cmd_camera(args: argparse.Namespace) -> int:
    config = _node_config(
        args, "camera", images=args.images, source=args.source, fps=args.fps,
        in_flight=args.in_flight, loop=args.loop, frames=args.frames,
    )
    cam = config.camera
    if not cam.images:
        raise ConfigError("no image folder given (--images or [camera] images)")
    photos = [(path.name, read_photo(path)) for path in list_images(Path(cam.images))]
    topics = _topics(config)
    session = MqttSession(config.broker, f"camera-{cam.source}", topics.availability(cam.source))
    camera = Camera(
        session,
        topics,
        CameraOptions(source=cam.source, fps=cam.fps, in_flight=cam.in_flight, loop=cam.loop,
                      qos=config.pipeline.qos),
    )
    stop = _stop_on_signals()
    session.start()
    session.wait_connected()
    session.set_online()
    sent = camera.run(photos, frames=cam.frames, stop=stop)
    log.info("published %d frames", sent)
    session.stop()
    return 0


def _cmd_watch(args: argparse.Namespace) -> int:
    config = _node_config(args, "pipeline")
    topics = _topics(config)
    session = MqttSession(config.broker, f"watch-{socket.gethostname()}-{id(args):x}")
    stop = _stop_on_signals()
    seen = 0

    def show(message) -> None:
        nonlocal seen
        text = message.payload.decode()
        print(text if args.json else Prediction.from_json(text).summary(), flush=True)
        seen += 1
        if args.count and seen >= args.count:
            stop.set()

    session.subscribe(topics.predictions, show, qos=1)
    session.start()
    stop.wait()
    session.stop()
    return 0


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
