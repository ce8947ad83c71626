"""The command line's side of the config: each key's flag comes from its declaration in
aiotedge.config.sections, so that the flag, its help (with the key's default) and the value it
overrides are written once."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Iterable, Mapping
from typing import Any

from aiotedge.config.loader import FLAGS, NodeConfig
from aiotedge.config.sections import Flag, key_flag
from aiotedge.contracts.errors import ConfigError

#: section class -> its name in NodeConfig (and in the TOML file)
SECTIONS: dict[type, str] = {
    hint: name for name, hint in typing.get_type_hints(NodeConfig).items()
    if dataclasses.is_dataclass(hint)
}


def add_section_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup,
                      section: type, keys: Iterable[str], *,
                      helps: Mapping[str, str] | None = None,
                      shown_defaults: Mapping[str, str] | None = None) -> None:
    """Add the flags of these keys of a section, in this order.

    A command whose flag means a little more than the key (`aiotedge run --frames` counts
    predictions) gives its own help or default in `helps` and `shown_defaults`.
    """
    name = SECTIONS[section]
    defaults = {f.name: f.default for f in dataclasses.fields(section)}
    hints = typing.get_type_hints(section)
    for key in keys:
        declared = _declared(section, key)
        text = (helps or {}).get(key, declared.help)
        if declared.required:
            text += f" (required here or as {name}.{key})"
        else:
            shown = (shown_defaults or {}).get(key) or declared.shown_default
            text += f" (default: {shown or _shown(defaults[key])})"
        options: dict[str, Any] = {"dest": _dest(section, key), "help": text}
        kind = _value_type(hints[key])
        if kind is bool:  # a switch: None when not given, so that the file's value stays
            options.update(action="store_true", default=None)
        else:
            if "choices" not in declared.options:  # argparse shows the choices instead
                options["metavar"] = declared.names[0].lstrip("-").replace("-", "_").upper()
            if kind is not str:
                options["type"] = kind
        parser.add_argument(*declared.names, **{**options, **declared.options})


def section_overrides(args: argparse.Namespace, section: type) -> dict[str, Any]:
    """The keys of a section the parsed flags set (the flags not given are left out)."""
    keys: dict[str, Any] = {}
    for field in dataclasses.fields(section):
        value = getattr(args, _dest(section, field.name), None)
        if value is None:
            continue
        declared = _declared(section, field.name)
        if declared.parse is None:
            keys[field.name] = value
            continue
        try:
            keys.update(declared.parse(value))
        except ConfigError as exc:
            raise ConfigError(f"{FLAGS}: {declared.names[0]} {value!r}: {exc}") from None
    return keys


def override_from_flags(config: NodeConfig, args: argparse.Namespace) -> NodeConfig:
    """The config with every key the parsed flags set replaced, checked as the file's keys."""
    for section, name in SECTIONS.items():
        config = config.override(name, **section_overrides(args, section))
    return config


def flag_given(args: argparse.Namespace, section: type, key: str) -> bool:
    """Whether the command line gave this key's flag."""
    return getattr(args, _dest(section, key), None) is not None


def _shown(value: object) -> str:
    """A key's default as a flag's help shows it."""
    if value is None or value == "":
        return "none"
    if value is False:
        return "off"
    return str(value)


def _declared(section: type, key: str) -> Flag:
    declared = key_flag(section, key)
    if declared is None:
        raise LookupError(f"{SECTIONS[section]}.{key} has no flag")
    return declared


def _dest(section: type, key: str) -> str:
    """Where argparse keeps a key's flag: the key's full name, which no plain flag has."""
    return f"{SECTIONS[section]}.{key}"


def _value_type(hint: Any) -> type:
    """int for `int | None`: what argparse converts the flag's text to."""
    options = [t for t in typing.get_args(hint) if t is not type(None)] or [hint]
    return options[0]
