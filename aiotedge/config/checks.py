"""Value checks shared by the config sections (aiotedge/config/sections.py).

Each raises KeyValueError("key 'k' must be ..."); the loader adds the file and the section, or
names the flag that set the key.
The limits come from MQTT 5 and the libraries (docs/config.md lists them with their source).
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata

from aiotedge.contracts.errors import ConfigError

#: MQTT strings and binary data carry a two-byte length (MQTT 5 §1.5.4, §1.5.6); paho dies in
#: its network thread on a longer one
MQTT_STRING_BYTES = 65535
#: Names and prefixes that become topic levels and client ids. MQTT allows a whole topic
#: 65,535 bytes; a short limit per name keeps every topic built of several names far below it.
NAME_BYTES = 256

TOPIC_LEVEL = f"one topic level: no /, + or #, no control characters, 1 to {NAME_BYTES} bytes"
TOPIC_PREFIX = (
    "topic levels joined by /: no + or #, no empty level, not starting with $, "
    f"no control characters, 1 to {NAME_BYTES} bytes"
)
HOST = "a host name or an IP address"
PATH = "a path (not empty, no NUL character)"

_HOST_LABEL = re.compile(r"[A-Za-z0-9_-]{1,63}")


class KeyValueError(ConfigError):
    """A key's value is wrong: loading names the file and section, or the flag that set it."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"key {key!r} {problem}")
        self.key = key
        self.problem = problem


def require(key: str, ok: bool, rule: str) -> None:
    """Raise KeyValueError "key 'key' must be <rule>" unless ok (loading adds the file)."""
    if not ok:
        raise KeyValueError(key, f"must be {rule}")


def require_range(key: str, value: float, low: float, high: float | None = None) -> None:
    """low <= value (<= high), the message giving the value found."""
    rule = f"{low} or more" if high is None else f"{low} to {high}"
    require(key, low <= value and (high is None or value <= high), f"{rule}, got {value}")


def mqtt_text(value: str, max_bytes: int = MQTT_STRING_BYTES) -> bool:
    """Usable as an MQTT UTF-8 string: not empty, at most max_bytes, no control characters.

    MQTT forbids U+0000 and lets a broker refuse the other control characters (mosquitto
    disconnects the client, which then retries for ever); a lone surrogate is what a
    non-UTF-8 command-line argument becomes.
    """
    return (
        bool(value)
        and all(unicodedata.category(c) not in ("Cc", "Cs") for c in value)
        and len(value.encode()) <= max_bytes
    )


def topic_level(value: str) -> bool:
    """One MQTT topic level (a node name, a camera id, a share group)."""
    return mqtt_text(value, NAME_BYTES) and not any(c in value for c in "/+#")


def topic_prefix(value: str) -> bool:
    """The first level(s) of every topic; `$...` topics belong to the broker ($SYS, $share)."""
    return (
        mqtt_text(value, NAME_BYTES)
        and not value.startswith("$")
        and all(level and not any(c in level for c in "+#") for level in value.split("/"))
    )


def host_name(value: str) -> bool:
    """An IP address, or a DNS name (RFC 1123; `_` tolerated; non-ASCII names in IDNA form).

    Anything else paho would try to resolve for ever ("broker lan", "broker.lan:1883") or die
    on in its network thread (a label over 63 characters).
    """
    try:
        ipaddress.ip_address(value)
        return True
    except ValueError:
        pass
    try:
        name = value.encode("idna").decode("ascii")
    except UnicodeError:
        return False
    labels = name.removesuffix(".").split(".")
    return len(name) <= 253 and all(_HOST_LABEL.fullmatch(label) for label in labels)


def usable_path(value: str) -> bool:
    """Something open() accepts as a file name."""
    return bool(value) and "\0" not in value
