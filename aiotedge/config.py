"""Node configuration: one TOML file per node, read into typed dataclasses.

Every problem is reported with the file, the key and what is wrong, because the person reading
it is looking at `journalctl` on a board, not at a traceback. Command-line flags override the
file key by key. docs/config.md is the reference.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiotedge.session import BrokerConfig
from aiotedge.topics import DEFAULT_PREFIX


class ConfigError(ValueError):
    pass


def _require(**checks: bool) -> None:
    """Raise ValueError naming the first key whose check failed (`_build` adds the file)."""
    for description, ok in checks.items():
        if not ok:
            key, _, rule = description.partition("__")
            raise ValueError(f"key {key!r} must be {rule.replace('_', ' ')}")


def _topic_level(value: str) -> bool:
    """Usable as one MQTT topic level (node names, camera ids, share groups)."""
    return not any(c in value for c in "/+#\0")


@dataclass(frozen=True)
class PipelineConfig:
    name: str = "default"
    prefix: str = DEFAULT_PREFIX
    #: 1: nothing lost across crashes and restarts; 0: live streams, oldest frame dropped first
    qos: int = 1
    #: how long the broker keeps a QoS 1 node's frames while it is away (restarts, reboots)
    session_expiry: int = 3600

    def __post_init__(self) -> None:
        _require(
            name__one_topic_level_without_wildcards=bool(self.name) and _topic_level(self.name),
            qos__0_or_1=self.qos in (0, 1),
            session_expiry__0_or_more=self.session_expiry >= 0,
        )


@dataclass(frozen=True)
class StageConfig:
    manifest: str = ""
    index: int = 0
    node: str = ""
    threads: int | None = None
    queue_size: int = 4
    top_k: int = 5
    max_message_bytes: int = 8 * 1024 * 1024
    #: replicas of a stage with the same group share its frames (MQTT v5 shared subscription)
    share_group: str = ""

    def __post_init__(self) -> None:
        _require(
            index__0_or_more=self.index >= 0,
            node__a_topic_level_without_wildcards=_topic_level(self.node),
            threads__1_or_more=self.threads is None or self.threads >= 1,
            queue_size__1_or_more=self.queue_size >= 1,
            top_k__1_or_more=self.top_k >= 1,
            max_message_bytes__1_or_more=self.max_message_bytes >= 1,
            share_group__a_topic_level_without_wildcards=_topic_level(self.share_group),
        )


@dataclass(frozen=True)
class StatsConfig:
    #: seconds between retained messages on .../stats/<node>; 0 turns them off
    interval: float = 10.0
    #: serve Prometheus text format on this port (0: off)
    prometheus_port: int = 0
    prometheus_address: str = "127.0.0.1"

    def __post_init__(self) -> None:
        _require(
            interval__0_or_more=self.interval >= 0,
            prometheus_port__a_port_number_or_0=0 <= self.prometheus_port <= 65535,
        )


@dataclass(frozen=True)
class HomeAssistantConfig:
    #: announce the pipeline's prediction as a Home Assistant sensor (last stage only)
    discovery: bool = False
    prefix: str = "homeassistant"


@dataclass(frozen=True)
class CameraConfig:
    images: str = ""
    source: str = "cam0"
    fps: float = 0.0
    in_flight: int = 1
    loop: bool = False
    frames: int | None = None

    def __post_init__(self) -> None:
        _require(
            source__one_topic_level_without_wildcards=bool(self.source)
            and _topic_level(self.source),
            fps__0_or_more=self.fps >= 0,
            in_flight__1_or_more=self.in_flight >= 1,
            frames__1_or_more=self.frames is None or self.frames >= 1,
        )


@dataclass(frozen=True)
class NodeConfig:
    broker: BrokerConfig = field(default_factory=BrokerConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    stage: StageConfig = field(default_factory=StageConfig)
    camera: CameraConfig = field(default_factory=CameraConfig)
    stats: StatsConfig = field(default_factory=StatsConfig)
    homeassistant: HomeAssistantConfig = field(default_factory=HomeAssistantConfig)

    @classmethod
    def load(cls, path: Path | str | None) -> NodeConfig:
        if path is None:
            return cls()
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
        return _build(cls, data, str(path), "")

    def override(self, section: str, **values: Any) -> NodeConfig:
        """A copy with the given keys of one section replaced; None means 'not given'."""
        given = {key: value for key, value in values.items() if value is not None}
        if not given:
            return self
        current = getattr(self, section)
        checked = _build(type(current), {**dataclasses.asdict(current), **given}, "flags", section)
        return dataclasses.replace(self, **{section: checked})


def _build(cls: type, data: Any, source: str, prefix: str) -> Any:
    where = f"{source}: [{prefix}]" if prefix else f"{source}:"
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a table")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
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
            values[key] = _check_type(value, expected, f"{source}: key {name!r}")
    try:
        return cls(**values)
    except ValueError as exc:
        if isinstance(exc, ConfigError):
            raise
        section = f"[{prefix}] " if prefix else ""
        raise ConfigError(f"{source}: {section}{exc}") from None


def _check_type(value: Any, expected: Any, where: str) -> Any:
    allowed = typing.get_args(expected) if isinstance(expected, types.UnionType) else (expected,)
    for option in allowed:
        if option is type(None) and value is None:
            return value
        if option is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if option is int and isinstance(value, bool):
            continue
        if isinstance(option, type) and option is not type(None) and isinstance(value, option):
            return value
    names = " or ".join(getattr(a, "__name__", str(a)) for a in allowed if a is not type(None))
    raise ConfigError(f"{where} must be {names}, got {type(value).__name__} {value!r}")
