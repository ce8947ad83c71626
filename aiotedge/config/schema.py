"""Node configuration: one TOML file per node, read into typed dataclasses.

Every problem is reported with the file, the key and what is wrong, because the person reading
it is looking at `journalctl` on a board, not at a traceback. Command-line flags override the
file key by key. docs/config.md is the reference.
"""

from __future__ import annotations

import dataclasses
import math
import os
import socket
import ssl
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiotedge.config.checks import (
    HOST,
    MQTT_STRING_BYTES,
    PATH,
    TOPIC_LEVEL,
    TOPIC_PREFIX,
    KeyValueError,
    host_name,
    mqtt_text,
    require,
    require_range,
    topic_level,
    topic_prefix,
    usable_path,
)
from aiotedge.contracts.errors import ConfigError
from aiotedge.contracts.topics import DEFAULT_PREFIX, Topics
from aiotedge.contracts.wire import MAX_ATTEMPTS

#: the source of settings given on the command line (messages name flags, not keys)
FLAGS = "flags"


@dataclass(frozen=True)
class BrokerConfig:
    """Where the broker is and how to log in. The password is never written inline."""

    host: str = "127.0.0.1"
    port: int = 1883
    keepalive: int = 30
    username: str | None = None
    #: file holding the password (e.g. a systemd credential), or an environment variable's name
    password_file: str | None = None
    password_env: str | None = None
    tls: bool = False
    #: CA bundle to trust (system CAs when empty), client certificate and key for mutual TLS
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
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


def read_secret_file(filename: str, where: str) -> str:
    """A password kept in a file (a systemd credential, a mode 0640 file), without its newline."""
    try:
        return Path(filename).read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read {where}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{where} is not UTF-8 text") from exc


BROKER_ADDRESSES = "HOST, HOST:PORT, [IPv6]:PORT, mqtt://HOST:PORT or mqtts://HOST:PORT (TLS)"
#: scheme -> (tls, its usual port)
_SCHEMES = {"mqtt": (False, 1883), "mqtts": (True, 8883)}


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


#: the longest wait the node takes (stats interval, camera frame period): a day
_MAX_PERIOD = 86400
#: frames a camera keeps without a result at most. Each may wait in the broker's queue for
#: stage 0, which mosquitto caps at max_queued_messages beyond the in-flight window (1000 by
#: default and in configs/mosquitto/aiotedge.conf; all cameras share it), dropping the rest even
#: at QoS 1; and the camera keeps each in memory to send it again (a 224x224 float32 tensor is
#: 0.6 MB: 256 are 154 MB; a Raspberry Pi Zero 2 has 512 MB). Two frames per board keep a
#: pipeline busy (docs/deploy-pi-cluster.md): 256 are enough for 128 boards.
MAX_IN_FLIGHT = 256


@dataclass(frozen=True)
class PipelineConfig:
    name: str = "default"
    prefix: str = DEFAULT_PREFIX
    #: 1: nothing lost across crashes and restarts; 0: live streams, oldest frame dropped first
    qos: int = 1
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
    manifest: str = ""
    #: required (a flag or the file): no board should serve stage 0 because a key was forgotten
    index: int | None = None
    node: str = ""
    threads: int | None = None
    queue_size: int = 4
    top_k: int = 5
    max_message_bytes: int = 8 * 1024 * 1024
    #: replicas of a stage with the same group share its frames (MQTT v5 shared subscription)
    share_group: str = ""

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
        # no MQTT packet is larger (MQTT 5 §1.5.5, Remaining Length)
        require_range("max_message_bytes", self.max_message_bytes, 1, 268435455)
        if self.share_group:
            require("share_group", topic_level(self.share_group), TOPIC_LEVEL)


@dataclass(frozen=True)
class StatsConfig:
    #: seconds between retained messages on .../stats/<node>; 0 turns them off
    interval: float = 10.0
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
    source: str = ""
    #: the camera's name: carried by every frame, in frame ids, and in its topics
    name: str = "cam0"
    fps: float = 0.0
    #: frames without a result at most (the pacing window with fps = 0, a bound above it)
    in_flight: int = 8
    #: a folder or a video file starts again after its end
    loop: bool = False
    #: a folder: send each photo written into it from now on, once
    watch: bool = False
    #: a video file at its own frame rate, as a camera (else as fast as the pipeline takes it)
    realtime: bool = False
    #: what a device is asked for: WIDTHxHEIGHT, frames per second, pixel format (V4L2)
    size: str = ""
    capture_fps: float = 0.0
    pixel_format: str = ""
    #: network streams: RTSP transport, seconds to wait when opening or reading
    transport: str = "tcp"
    timeout: float = 5.0
    #: file holding the stream's password (the user is the URL's)
    source_password_file: str | None = None
    #: "none": frames as they are; "jpeg" / "tensor": in stage 0's input size / as its input
    preprocess: str = "none"
    jpeg_quality: int = 90
    #: stage 0's preprocessing from this manifest (else from stage 0's retained info)
    manifest: str = ""
    #: publish the latest JPEG that got a prediction (retained)
    snapshot: bool = False
    frames: int | None = None
    #: seconds a frame may wait for its result before it is sent again or given up
    frame_timeout: float = 30.0
    #: QoS 1: times a frame without a result is sent again
    resends: int = 1

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
        require("preprocess", self.preprocess in ("none", "jpeg", "tensor"),
                f"none, jpeg or tensor, got {self.preprocess!r}")
        require_range("jpeg_quality", self.jpeg_quality, 1, 100)
        if self.frames is not None:
            require_range("frames", self.frames, 1)
        require_range("frame_timeout", self.frame_timeout, 0.1, _MAX_PERIOD)
        require_range("resends", self.resends, 0, MAX_ATTEMPTS - 1)

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
class NodeConfig:
    broker: BrokerConfig = field(default_factory=BrokerConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    stage: StageConfig = field(default_factory=StageConfig)
    camera: CameraConfig = field(default_factory=CameraConfig)
    stats: StatsConfig = field(default_factory=StatsConfig)
    homeassistant: HomeAssistantConfig = field(default_factory=HomeAssistantConfig)
    #: where the settings came from, for messages: the file, or "flags"
    source: str = field(default=FLAGS, compare=False, metadata={"toml": False})
    #: the sections and `section.key`s the file set (flags are not counted)
    keys_given: frozenset[str] = field(default=frozenset(), compare=False,
                                       metadata={"toml": False})

    @property
    def topics(self) -> Topics:
        return Topics(self.pipeline.name, self.pipeline.prefix)

    @classmethod
    def load(cls, path: Path | str | None) -> NodeConfig:
        if path is None:
            return cls()
        path = Path(path)
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
        text = _utf8(raw, path)
        try:
            data = tomllib.loads(text)
        # TOMLDecodeError, or an integer over Python's 4300 digits (a plain ValueError)
        except ValueError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
        given = {*data, *(f"{section}.{key}" for section, table in data.items()
                          if isinstance(table, dict) for key in table)}
        return dataclasses.replace(_build(cls, data, str(path), ""), source=str(path),
                                   keys_given=frozenset(given))

    def given(self, section: str, key: str | None = None) -> bool:
        """Whether the file set this section, or this key of it (a default was not chosen)."""
        return (f"{section}.{key}" if key else section) in self.keys_given

    def check_files(self) -> None:
        """Open the files the broker settings name, before the node connects.

        A missing or unusable one is then named with its key: ssl's own errors name neither
        the file nor the key, or end in a traceback. Not part of load(): the example configs
        name files that exist only on the boards they are for.
        """
        broker = self.broker
        for key in ("password_file", "ca_file", "cert_file", "key_file"):
            filename = getattr(broker, key)
            if filename is not None:
                _check_readable(filename, f"{self.source}: key 'broker.{key}'")
        if broker.tls:
            _check_certificates(broker, self.source)

    def override(self, section: str, **values: Any) -> NodeConfig:
        """A copy with the given keys of one section replaced; None means 'not given'."""
        given = {key: value for key, value in values.items() if value is not None}
        if not given:
            return self
        current = getattr(self, section)
        checked = _build(type(current), {**dataclasses.asdict(current), **given}, FLAGS, section)
        return dataclasses.replace(self, **{section: checked})


#: keys whose flag is not `--<key with dashes>`
_FLAG_NAMES = {"stage.index": "--stage", "stats.interval": "--stats-interval",
               "pipeline.name": "--pipeline", "broker.host": "--broker",
               "broker.port": "--broker", "broker.tls": "--broker"}


def _key_name(source: str, section: str, key: str, dotted: bool = False) -> str:
    """How a message names a key: the flag that set it, or the key in its section."""
    name = f"{section}.{key}" if section else key
    if source == FLAGS:
        return _FLAG_NAMES.get(name, "--" + key.replace("_", "-"))
    return f"key {name!r}" if dotted or not section else f"[{section}] key {key!r}"


def _build(cls: type, data: Any, source: str, prefix: str) -> Any:
    where = f"{source}: [{prefix}]" if prefix else f"{source}:"
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a table")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls) if f.metadata.get("toml", True)}
    for key in data:
        if key not in known:
            raise ConfigError(f"{where} unknown key {key!r} (known: {', '.join(sorted(known))})")
    values = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else key
        expected = hints[key]
        if dataclasses.is_dataclass(expected):
            values[key] = _build(expected, value, source, name)
        else:
            values[key] = _check_type(
                value, expected, f"{source}: {_key_name(source, prefix, key, dotted=True)}")
    try:
        return cls(**values)
    except KeyValueError as exc:
        raise ConfigError(f"{source}: {_key_name(source, prefix, exc.key)} {exc.problem}") \
            from None
    except (ConfigError, ValueError) as exc:  # a section's own check of its values
        section = f"[{prefix}] " if prefix else ""
        raise ConfigError(f"{source}: {section}{exc}") from None


def _check_type(value: Any, expected: Any, where: str) -> Any:
    allowed = typing.get_args(expected) if isinstance(expected, types.UnionType) else (expected,)
    for option in allowed:
        if option is type(None) and value is None:
            return value
        if option is float and isinstance(value, int | float) and not isinstance(value, bool):
            return _finite(value, where)
        if option is int and isinstance(value, bool):
            continue
        if isinstance(option, type) and option is not type(None) and isinstance(value, option):
            return value
    names = " or ".join(getattr(a, "__name__", str(a)) for a in allowed if a is not type(None))
    raise ConfigError(f"{where} must be {names}, got {type(value).__name__} {value!r}")


def _finite(value: float, where: str) -> float:
    """TOML (and argparse) take inf and nan, and integers no float holds: no setting wants one."""
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise ConfigError(f"{where} must be a finite number, got {value}")
    return number


def _utf8(raw: bytes, path: Path) -> str:
    """TOML files are UTF-8; the error says where one is not (an editor's Latin-1, a binary)."""
    try:
        return raw.decode()
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ConfigError(
            f"{path}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at line {line}, column {column})"
        ) from None


def _check_readable(filename: str, where: str) -> None:
    """Opening is the test: permissions, ACLs and the service's sandbox all count."""
    try:
        with open(filename, "rb"):
            pass
    except FileNotFoundError:
        raise ConfigError(f"{where}: {filename} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {filename}: {exc.strerror}") from None


class _EncryptedKeyError(Exception):
    pass


def _refuse_passphrase() -> bytes:
    """Stands in for OpenSSL's passphrase prompt, which a daemon cannot answer."""
    raise _EncryptedKeyError


def _check_certificates(broker: BrokerConfig, source: str) -> None:
    """Load the CA, the client certificate and its key as paho's tls_set() will."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # a certificate (chain) file loads as CA certificates: the check that it holds one
    for key in ("ca_file", "cert_file"):
        filename = getattr(broker, key)
        if filename is not None:
            try:
                context.load_verify_locations(filename)
            except ssl.SSLError:
                raise ConfigError(
                    f"{source}: key 'broker.{key}': {filename} holds no PEM certificate"
                ) from None
    if broker.cert_file is None:
        return
    # without key_file the key is read from cert_file (ssl's rule, which paho follows)
    key = "key_file" if broker.key_file else "cert_file"
    filename = getattr(broker, key)
    where = f"{source}: key 'broker.{key}': {filename}"
    try:
        context.load_cert_chain(broker.cert_file, broker.key_file, password=_refuse_passphrase)
    except _EncryptedKeyError:
        raise ConfigError(
            f"{where} is encrypted; give the key without a passphrase, readable by the node only"
        ) from None
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise ConfigError(f"{where} is not the key of {broker.cert_file}") from None
        hint = "" if broker.key_file else " (set key_file)"
        raise ConfigError(f"{where} holds no PEM private key{hint}") from None
