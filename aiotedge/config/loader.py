"""A node's configuration: one TOML file per node, read into the typed sections of
aiotedge.config.sections, with the command line's values on top.

Every problem is reported with the file, the key and what is wrong, because the person reading
it is looking at `journalctl` on a board, not at a traceback. Command-line flags override the
file key by key; their messages name the flag. docs/config.md is the reference.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiotedge.config.checks import KeyValueError
from aiotedge.config.files import check_broker_files
from aiotedge.config.sections import (
    BrokerConfig,
    CameraConfig,
    EventsConfig,
    HomeAssistantConfig,
    PipelineConfig,
    StageConfig,
    StatsConfig,
    key_flag,
)
from aiotedge.contracts.errors import ConfigError
from aiotedge.contracts.release import ReleaseTopics
from aiotedge.contracts.topics import Topics

#: the source of settings given on the command line (messages name flags, not keys)
FLAGS = "flags"


@dataclass(frozen=True)
class NodeConfig:
    broker: BrokerConfig = field(default_factory=BrokerConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    stage: StageConfig = field(default_factory=StageConfig)
    camera: CameraConfig = field(default_factory=CameraConfig)
    stats: StatsConfig = field(default_factory=StatsConfig)
    homeassistant: HomeAssistantConfig = field(default_factory=HomeAssistantConfig)
    events: EventsConfig = field(default_factory=EventsConfig)
    #: where the settings came from, for messages: the file, or "flags"
    source: str = field(default=FLAGS, compare=False, metadata={"toml": False})
    #: the sections and `section.key`s the file set (flags are not counted)
    keys_given: frozenset[str] = field(default=frozenset(), compare=False,
                                       metadata={"toml": False})
    #: the release a node daemon runs this stage for (docs/fleet.md): its own chain of topics
    release: str = field(default="", metadata={"toml": False})

    @property
    def topics(self) -> Topics:
        if self.release:
            return ReleaseTopics(self.pipeline.name, self.pipeline.prefix, release=self.release)
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
        check_broker_files(self.broker, self.source)

    def override(self, section: str, **values: Any) -> NodeConfig:
        """A copy with the given keys of one section replaced; None means 'not given'."""
        given = {key: value for key, value in values.items() if value is not None}
        if not given:
            return self
        current = getattr(self, section)
        checked = _build(type(current), {**dataclasses.asdict(current), **given}, FLAGS, section)
        return dataclasses.replace(self, **{section: checked})


def _key_name(source: str, section: type, prefix: str, key: str, dotted: bool = False) -> str:
    """How a message names a key: the flag that set it, or the key in its section."""
    name = f"{prefix}.{key}" if prefix else key
    if source == FLAGS and (declared := key_flag(section, key)) is not None:
        return declared.names[0]
    return f"key {name!r}" if dotted or not prefix else f"[{prefix}] key {key!r}"


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
                value, expected, f"{source}: {_key_name(source, cls, prefix, key, dotted=True)}")
    try:
        return cls(**values)
    except KeyValueError as exc:
        raise ConfigError(f"{source}: {_key_name(source, cls, prefix, exc.key)} {exc.problem}") \
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
        origin = typing.get_origin(option)  # list[int], tuple[str, ...]: each item checked
        if origin in (list, tuple) and isinstance(value, list | tuple):
            item = typing.get_args(option)[0]
            return origin(_check_type(v, item, f"{where}[{i}]") for i, v in enumerate(value))
        if isinstance(option, type) and option is not type(None) and isinstance(value, option):
            return value
    names = " or ".join(_type_name(a) for a in allowed if a is not type(None))
    raise ConfigError(f"{where} must be {names}, got {type(value).__name__} {value!r}")


def _type_name(expected: Any) -> str:
    if typing.get_origin(expected) in (list, tuple):
        return f"a list of {_type_name(typing.get_args(expected)[0])}"
    return getattr(expected, "__name__", str(expected))


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
