"""The TOML sections of a node's config, each key with its default, its checks and, when the
command line can set it, its flag.

A key's flag is declared next to its field (`metadata=flag(...)`), so that the CLI's flags, their
help and the messages that name a flag all come from one place (aiotedge.config.flags reads it).
docs/config.md is the reference.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiotedge.config.checks import (
    HOST,
    MQTT_STRING_BYTES,
    PATH,
    TOPIC_LEVEL,
    TOPIC_PREFIX,
    host_name,
    mqtt_text,
    require,
    require_range,
    topic_level,
    topic_prefix,
    usable_path,
)
from aiotedge.config.files import read_secret_file
from aiotedge.contracts.errors import ConfigError
from aiotedge.contracts.geometry import ROTATIONS
from aiotedge.contracts.topics import DEFAULT_PREFIX
from aiotedge.contracts.wire import MAX_ATTEMPTS


@dataclass(frozen=True)
class Flag:
    """How the command line sets a key: its flag, its help, and what argparse needs beyond
    what the key's type says (int, float, bool: a switch)."""

    names: tuple[str, ...]
    help: str
    #: what the help gives as the default where the key's default value (None, "", False)
    #: says nothing, e.g. "the runtime's choice"; else the default value is shown
    shown_default: str = ""
    #: the key has no usable default: the help says where to give it
    required: bool = False
    #: the flag's text sets several keys of the section (e.g. --broker: host, port, tls)
    parse: Callable[[str], dict[str, Any]] | None = None
    #: the other keys `parse` sets, so that messages about them name this flag
    sets: tuple[str, ...] = ()
    #: more add_argument() keywords: choices, metavar
    options: Mapping[str, Any] = field(default_factory=dict)


def flag(*names: str, help: str, shown_default: str = "", required: bool = False,
         parse: Callable[[str], dict[str, Any]] | None = None, sets: tuple[str, ...] = (),
         **options: Any) -> dict[str, Flag]:
    """A key's flag, as a dataclass field's metadata."""
    return {"flag": Flag(names, help, shown_default, required, parse, sets, options)}


def key_flag(section: type, key: str) -> Flag | None:
    """The flag that sets a key of a section: its own, or one whose text sets it too."""
    flags = {f.name: f.metadata.get("flag") for f in dataclasses.fields(section)}
    own = flags.get(key)
    return own or next((f for f in flags.values() if f is not None and key in f.sets), None)


BROKER_ADDRESSES = "HOST, HOST:PORT, [IPv6]:PORT, mqtt://HOST:PORT or mqtts://HOST:PORT (TLS)"
#: scheme -> (tls, its usual port)
_SCHEMES = {"mqtt": (False, 1883), "mqtts": (True, 8883)}
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = _SCHEMES["mqtt"][1]


def parse_address(address: str) -> dict[str, Any]:
    """The [broker] keys a broker address sets: `host`, and `port` and `tls` when it says them.

    Anything else is refused here, in one line: paho would take `host:abc` or
    `http://host` for a host name and try to resolve it for ever.
    """
    keys: dict[str, Any] = {}
    scheme, sep, rest = address.partition("://")
    if sep:
        if scheme.lower() not in _SCHEMES:
            raise ConfigError(f"unknown scheme {scheme + sep!r}: expected {BROKER_ADDRESSES}")
        keys["tls"], keys["port"] = _SCHEMES[scheme.lower()]
    else:
        rest = address
    if rest.startswith("["):  # [IPv6] or [IPv6]:PORT
        host, bracket, tail = rest[1:].partition("]")
        if not bracket or (tail and not tail.startswith(":")):
            raise ConfigError(f"expected {BROKER_ADDRESSES}")
        port = tail[1:] if tail else None
    elif rest.count(":") > 1:  # a bare IPv6 address: no port possible
        host, port = rest, None
    else:
        host, sep, port = rest.partition(":")
        port = port if sep else None
    if port is not None:
        if not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ConfigError(f"port {port!r} must be a number from 1 to 65535 "
                              f"(expected {BROKER_ADDRESSES})")
        keys["port"] = int(port)
    if not host_name(host) or (rest.startswith("[") and ":" not in host):
        raise ConfigError(f"{host!r} is not a host name or an IP address "
                          f"(expected {BROKER_ADDRESSES})")
    keys["host"] = host
    return keys


@dataclass(frozen=True)
class BrokerConfig:
    """Where the broker is and how to log in. The password is never written inline."""

    host: str = field(default=DEFAULT_HOST, metadata=flag(
        "--broker", help=BROKER_ADDRESSES, metavar="ADDRESS", parse=parse_address,
        sets=("port", "tls"), shown_default=f"{DEFAULT_HOST}:{DEFAULT_PORT}"))
    port: int = DEFAULT_PORT
    keepalive: int = 30
    username: str | None = field(default=None, metadata=flag("--username", help="broker user"))
    #: file holding the password (e.g. a systemd credential), or an environment variable's name
    password_file: str | None = field(default=None, metadata=flag(
        "--password-file",
        help="file holding the password, never the password itself on a command line"))
    password_env: str | None = None
    tls: bool = field(default=False, metadata=flag(
        "--tls", help="connect with TLS (also: --broker mqtts://...)"))
    #: CA bundle to trust (system CAs when empty), client certificate and key for mutual TLS
    ca_file: str | None = field(default=None, metadata=flag(
        "--ca-file", help="CA certificate(s) to check the broker against",
        shown_default="the system's"))
    cert_file: str | None = field(default=None, metadata=flag(
        "--cert-file", help="client certificate, for mutual TLS"))
    key_file: str | None = field(default=None, metadata=flag(
        "--key-file", help="the client certificate's key",
        shown_default="none, the certificate file's"))
    #: the broker refuses every subscription outside a user's rights (mosquitto with
    #: secure-dynsec.conf), so no other user can join a stage's share group; a stage with a
    #: share_group cannot tell by itself and warns at start unless this says so
    checks_subscriptions: bool = False

    def __post_init__(self) -> None:
        require("host", host_name(self.host), HOST)
        require_range("port", self.port, 1, 65535)
        # a two-byte field (MQTT 5 §3.1.2.10); paho refuses only negative values
        require_range("keepalive", self.keepalive, 0, 65535)
        if self.username is not None:
            require("username", mqtt_text(self.username),
                    f"text of 1 to {MQTT_STRING_BYTES} bytes without control characters")
        for key in ("password_file", "ca_file", "cert_file", "key_file"):
            value = getattr(self, key)
            if value is not None:
                require(key, usable_path(value), PATH)
        if self.password_env is not None:
            require("password_env", usable_path(self.password_env) and "=" not in self.password_env,
                    "an environment variable name")
        # Settings that would be ignored without a word: paho sends a password only with a
        # user name and uses a key only with its certificate; without tls the TLS files are
        # not read at all (and the password goes in clear).
        for key in ("password_file", "password_env"):
            if getattr(self, key) is not None and self.username is None:
                raise ConfigError(f"key {key!r} is set without 'username'")
        if self.key_file is not None and self.cert_file is None:
            raise ConfigError("key 'key_file' is set without 'cert_file'")
        for key in ("ca_file", "cert_file", "key_file"):
            if getattr(self, key) is not None and not self.tls:
                raise ConfigError(
                    f"key {key!r} is set but 'tls' is false: set tls = true or remove {key}"
                )

    def password(self) -> str | None:
        """From password_file, else password_env; at most what MQTT carries (paho would die)."""
        if self.password_file:
            where = f"the broker password file {self.password_file}"
            value = read_secret_file(self.password_file, where)
        elif self.password_env:
            where = f"environment variable {self.password_env}"
            value = os.environ.get(self.password_env)
            if value is None:
                raise ConfigError(f"{where} is not set")
        else:
            return None
        if len(value.encode(errors="surrogateescape")) > MQTT_STRING_BYTES:
            raise ConfigError(f"the password in {where} is over {MQTT_STRING_BYTES} bytes")
        return value

    @classmethod
    def parse(cls, address: str) -> BrokerConfig:
        """From an address `parse_address` accepts; the scheme's port when none is given."""
        return cls(**parse_address(address))

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


#: the longest wait the node takes (stats interval, camera frame period): a day
_MAX_PERIOD = 86400
#: frames a camera keeps without a result at most. Each may wait in the broker's queue for
#: stage 0, which mosquitto caps at max_queued_messages beyond the in-flight window (1000 by
#: default and in configs/mosquitto/aiotedge.conf; all cameras share it), dropping the rest even
#: at QoS 1; and the camera keeps each in memory to send it again (a 224x224 float32 tensor is
#: 0.6 MB: 256 are 154 MB; a Raspberry Pi Zero 2 has 512 MB). Two frames per board keep a
#: pipeline busy (docs/deploy-pi-cluster.md): 256 are enough for 128 boards.
MAX_IN_FLIGHT = 256
#: what a camera sends: frames as they are, or in stage 0's input size, or as its input
PREPROCESSING = ("none", "jpeg", "tensor")
CROP = "[x, y, width, height] in the frame's pixels (x, y: the top left corner)"


def crop_flag(text: str) -> list[int]:
    """`--crop X,Y,WIDTH,HEIGHT` as the `crop` key's list (then checked as the file's key)."""
    parts = [part.strip() for part in text.split(",")]
    if len(parts) != 4 or not all(part.isdigit() for part in parts):
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected X,Y,WIDTH,HEIGHT in pixels, e.g. 0,120,640,360")
    return [int(part) for part in parts]


@dataclass(frozen=True)
class PipelineConfig:
    name: str = field(default="default", metadata=flag(
        "--pipeline", help="pipeline name, a topic level"))
    prefix: str = DEFAULT_PREFIX
    #: 1: nothing lost across crashes and restarts; 0: live streams, oldest frame dropped first
    qos: int = field(default=1, metadata=flag(
        "--qos", help="MQTT QoS for frames", choices=(0, 1)))
    #: how long the broker keeps a QoS 1 node's frames while it is away (restarts, reboots)
    session_expiry: int = 3600

    def __post_init__(self) -> None:
        require("name", topic_level(self.name), TOPIC_LEVEL)
        require("prefix", topic_prefix(self.prefix), TOPIC_PREFIX)
        require("qos", self.qos in (0, 1), f"0 or 1, got {self.qos}")
        # a four-byte interval (MQTT 5 §3.1.2.11.2); 4294967295: never expires
        require_range("session_expiry", self.session_expiry, 0, 2**32 - 1)


@dataclass(frozen=True)
class StageConfig:
    manifest: str = field(default="", metadata=flag(
        "--manifest", help="manifest.json or the folder holding it", required=True))
    #: required (a flag or the file): no board should serve stage 0 because a key was forgotten
    index: int | None = field(default=None, metadata=flag(
        "--stage", help="stage index, 0 = first", required=True, metavar="INDEX"))
    node: str = field(default="", metadata=flag(
        "--node", help="node name", shown_default="stage<K>-<hostname>"))
    threads: int | None = field(default=None, metadata=flag(
        "--threads", help="interpreter threads", shown_default="the runtime's choice"))
    queue_size: int = field(default=4, metadata=flag(
        "--queue-size", help="frames waiting for inference at most"))
    top_k: int = 5
    #: the last stage: results with a lower score (for segmentation: share of the frame) are
    #: left out of predictions, for every kind; None: none is
    min_score: float | None = None
    #: the last stage: only these labels (or keypoint names) are kept; empty: every one
    labels: tuple[str, ...] = ()
    max_message_bytes: int = field(default=8 * 1024 * 1024, metadata=flag(
        "--max-message-bytes", help="refuse larger messages before decoding them"))
    #: replicas of a stage with the same group share its frames (MQTT v5 shared subscription)
    share_group: str = field(default="", metadata=flag(
        "--share-group", help="replicas with the same group share frames"))

    @property
    def node_name(self) -> str:
        """`node`, or `stage<index>-<hostname>`: the client id and the name in its topics."""
        return self.node or f"stage{self.index}-{socket.gethostname()}"

    def __post_init__(self) -> None:
        if self.manifest:
            require("manifest", usable_path(self.manifest), PATH)
        if self.index is not None:
            require_range("index", self.index, 0)
        if self.node:
            require("node", topic_level(self.node), TOPIC_LEVEL)
        if self.threads is not None:
            # more threads than cores only slow TFLite down; LiteRT fails from 2**31 on
            require_range("threads", self.threads, 1, 256)
        # the broker's Receive Maximum: two bytes, 0 is a protocol error (MQTT 5 §3.1.2.11.3)
        require_range("queue_size", self.queue_size, 1, 65535)
        require_range("top_k", self.top_k, 1)
        if self.min_score is not None:
            require_range("min_score", self.min_score, 0.0)
        # no MQTT packet is larger (MQTT 5 §1.5.5, Remaining Length)
        require_range("max_message_bytes", self.max_message_bytes, 1, 268435455)
        if self.share_group:
            require("share_group", topic_level(self.share_group), TOPIC_LEVEL)


@dataclass(frozen=True)
class StatsConfig:
    #: seconds between retained messages on .../stats/<node>; 0 turns them off
    interval: float = field(default=10.0, metadata=flag(
        "--stats-interval", help="seconds between stats messages"))
    #: serve Prometheus text format on this port (0: off)
    prometheus_port: int = 0
    prometheus_address: str = "127.0.0.1"

    def __post_init__(self) -> None:
        require_range("interval", self.interval, 0, _MAX_PERIOD)
        require_range("prometheus_port", self.prometheus_port, 0, 65535)
        require("prometheus_address", host_name(self.prometheus_address), HOST)


@dataclass(frozen=True)
class HomeAssistantConfig:
    #: announce the pipeline's prediction as a Home Assistant sensor (last stage only)
    discovery: bool = False
    prefix: str = "homeassistant"

    def __post_init__(self) -> None:
        require("prefix", topic_prefix(self.prefix), TOPIC_PREFIX)


@dataclass(frozen=True)
class CameraConfig:
    #: what to read: a folder, an image or a video file, /dev/videoN, picamera2:N, a stream URL
    source: str = field(default="", metadata=flag(
        "--source", "--images", required=True,
        help="a folder, an image or a video file, /dev/videoN, picamera2:N, rtsp://, "
             "http(s)://"))
    #: the camera's name: carried by every frame, in frame ids, and in its topics
    name: str = field(default="cam0", metadata=flag(
        "--name", help="camera name carried by every frame"))
    fps: float = field(default=0.0, metadata=flag(
        "--fps", help="frame rate; 0 = the next frame as soon as a result is back"))
    #: frames without a result at most (the pacing window with fps = 0, a bound above it)
    in_flight: int = field(default=8, metadata=flag(
        "--in-flight", help="frames awaiting their result at most"))
    #: a folder or a video file starts again after its end
    loop: bool = field(default=False, metadata=flag(
        "--loop", help="a folder or a video: start again at the end", shown_default="once"))
    #: a folder: send each photo written into it from now on, once
    watch: bool = field(default=False, metadata=flag(
        "--watch", help="a folder: send each photo written into it from now on"))
    #: a video file at its own frame rate, as a camera (else as fast as the pipeline takes it)
    realtime: bool = field(default=False, metadata=flag(
        "--realtime",
        help="a video: at its own frame rate, dropping what the pipeline cannot take",
        shown_default="every frame, as fast as the pipeline takes them"))
    #: what a device is asked for: WIDTHxHEIGHT, frames per second, pixel format (V4L2)
    size: str = field(default="", metadata=flag(
        "--size", help="WIDTHxHEIGHT asked of a device, V4L2 or Pi camera",
        shown_default="the device's"))
    capture_fps: float = 0.0
    pixel_format: str = ""
    #: network streams: RTSP transport, seconds to wait when opening or reading
    transport: str = "tcp"
    timeout: float = 5.0
    #: file holding the stream's password (the user is the URL's)
    source_password_file: str | None = None
    #: "none": frames as they are; "jpeg" / "tensor": in stage 0's input size / as its input
    preprocess: str = field(default="none", metadata=flag(
        "--preprocess", choices=PREPROCESSING,
        help="send frames at stage 0's input size (jpeg) or as its input tensor"))
    jpeg_quality: int = 90
    #: stage 0's preprocessing from this manifest (else from stage 0's retained info)
    manifest: str = field(default="", metadata=flag(
        "--manifest", help="stage 0's preprocessing from this manifest",
        shown_default="from stage 0's retained info"))
    #: publish the latest JPEG that got a prediction (retained)
    snapshot: bool = field(default=False, metadata=flag(
        "--snapshot", help="publish the latest JPEG that got a prediction, retained"))
    frames: int | None = field(default=None, metadata=flag(
        "--frames", help="stop after this many frames",
        shown_default="the source's end, or for ever"))
    #: seconds a frame may wait for its result before it is sent again or given up
    frame_timeout: float = 30.0
    #: QoS 1: times a frame without a result is sent again
    resends: int = 1
    #: the region of interest sent, turned clockwise, then mirrored left to right (a camera
    #: mounted sideways or upside down); boxes are mapped back into the frame's pixels
    crop: list[int] | None = field(default=None, metadata=flag(
        "--crop", help="send only this region of the frame (pixels)", type=crop_flag,
        metavar="X,Y,WIDTH,HEIGHT", shown_default="the whole frame"))
    rotate: int = field(default=0, metadata=flag(
        "--rotate", help="turn the frame clockwise by this many degrees (after the crop)",
        choices=ROTATIONS))
    flip: bool = field(default=False, metadata=flag(
        "--flip", help="mirror the frame left to right (after the turn)"))

    def __post_init__(self) -> None:
        for key in ("source", "manifest", "source_password_file"):
            if getattr(self, key):
                require(key, usable_path(getattr(self, key)), PATH)
        require("name", topic_level(self.name), TOPIC_LEVEL)
        require("fps", self.fps == 0 or self.fps >= 1 / _MAX_PERIOD,
                f"0 or at least 1/{_MAX_PERIOD} (one frame a day), got {self.fps}")
        require_range("in_flight", self.in_flight, 1, MAX_IN_FLIGHT)
        if self.loop and self.watch:
            raise ConfigError("keys 'loop' and 'watch' are both set: a folder is either "
                              "sent round and round or watched for new photos")
        if self.size:
            require("size", self.picture_size is not None,
                    f"WIDTHxHEIGHT, e.g. 640x480, got {self.size!r}")
        require_range("capture_fps", self.capture_fps, 0, 1000)
        if self.pixel_format:
            require("pixel_format", self.pixel_format.isalnum(),
                    f"a V4L2 pixel format such as mjpeg or yuyv422, got {self.pixel_format!r}")
        require("transport", self.transport in ("tcp", "udp"),
                f"tcp or udp, got {self.transport!r}")
        require_range("timeout", self.timeout, 0.1, 300)
        require("preprocess", self.preprocess in PREPROCESSING,
                f"none, jpeg or tensor, got {self.preprocess!r}")
        require_range("jpeg_quality", self.jpeg_quality, 1, 100)
        if self.frames is not None:
            require_range("frames", self.frames, 1)
        require_range("frame_timeout", self.frame_timeout, 0.1, _MAX_PERIOD)
        require_range("resends", self.resends, 0, MAX_ATTEMPTS - 1)
        if self.crop is not None:
            x_y_ok = len(self.crop) == 4 and min(self.crop[:2]) >= 0
            require("crop", x_y_ok and min(self.crop[2:]) > 0, f"{CROP}, got {self.crop}")
        require("rotate", self.rotate in ROTATIONS,
                f"one of {', '.join(map(str, ROTATIONS))}, got {self.rotate}")

    @property
    def picture_size(self) -> tuple[int, int] | None:
        """`size` as (width, height), None when it is not WIDTHxHEIGHT."""
        width, x, height = self.size.lower().partition("x")
        if x and width.isdigit() and height.isdigit() and int(width) > 0 and int(height) > 0:
            return int(width), int(height)
        return None

    def source_password(self) -> str | None:
        if self.source_password_file is None:
            return None
        return read_secret_file(self.source_password_file,
                                f"the stream password file {self.source_password_file}")


@dataclass(frozen=True)
class EventsConfig:
    """What a camera reports about the objects its frames show (docs/cameras.md, Events): an
    object of a tracked label appears, is still there, is gone; and how many there are."""

    #: labels to follow (a label's first name: `person`, `cat`); none: no events
    labels: list[str] = field(default_factory=list)
    #: an object counts from this score on
    min_score: float = 0.5
    #: ... and when its box covers this share of the picture the model saw (0..1)
    min_area: float = 0.0
    #: seconds between two "still there" events of a label at most once
    cooldown: float = 30.0
    #: frames in a row without the label after which it is gone
    gone_after: int = 5

    def __post_init__(self) -> None:
        for label in self.labels:
            require("labels", isinstance(label, str) and topic_level(label),
                    f"a list of labels, each {TOPIC_LEVEL}, got {label!r}")
        require_range("min_score", self.min_score, 0, 1)
        require_range("min_area", self.min_area, 0, 1)
        require_range("cooldown", self.cooldown, 0, _MAX_PERIOD)
        require_range("gone_after", self.gone_after, 1, 1_000_000)
