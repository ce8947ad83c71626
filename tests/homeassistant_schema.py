"""Home Assistant's documented MQTT discovery schema for a sensor, a binary sensor and an image,
as the tests check payloads against it: every key the payload uses must be documented, of the
documented type, and the required ones present. And what Home Assistant's MQTT sensor and binary
sensor make of a state message (`sensor_state`, `binary_sensor_state`), its availability list
(`available`).

From the MQTT sensor, binary sensor and image pages (home-assistant.io/integrations/sensor.mqtt,
binary_sensor.mqtt, image.mqtt, their "Configuration Variables") and the discovery section of
the MQTT page (home-assistant.io/integrations/mqtt: the `origin` block, the availability list).
`default_entity_id` replaced `object_id` in Home Assistant 2025.10 (`object_id` stops working in
2026.4): it is listed here, `object_id` is not.
"""

from __future__ import annotations

import json
import re
from typing import Any

#: documented type -> the JSON values it accepts
TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,), "template": (str,), "icon": (str,), "boolean": (bool,),
    "integer": (int,), "list": (list,), "map": (dict,),
}

SENSOR_KEYS = {
    "availability": "list", "availability_mode": "string", "availability_template": "template",
    "availability_topic": "string", "default_entity_id": "string", "device": "map",
    "device_class": "string", "enabled_by_default": "boolean", "encoding": "string",
    "entity_category": "string", "entity_picture": "string", "expire_after": "integer",
    "force_update": "boolean", "icon": "icon", "json_attributes_template": "template",
    "json_attributes_topic": "string", "last_reset_value_template": "template",
    "name": "string", "options": "list", "origin": "map", "payload_available": "string",
    "payload_not_available": "string", "suggested_display_precision": "integer",
    "qos": "integer", "state_class": "string", "state_topic": "string", "unique_id": "string",
    "unit_of_measurement": "string", "value_template": "template",
}
SENSOR_REQUIRED = {"state_topic"}
_COMMON = {key: SENSOR_KEYS[key] for key in (
    "availability", "availability_mode", "availability_template", "availability_topic",
    "default_entity_id", "device", "enabled_by_default", "entity_category", "entity_picture",
    "json_attributes_template", "json_attributes_topic", "name", "origin", "payload_available",
    "payload_not_available", "unique_id")}
BINARY_SENSOR_KEYS = {
    **_COMMON, "device_class": "string", "encoding": "string", "expire_after": "integer",
    "force_update": "boolean", "icon": "icon", "off_delay": "integer", "payload_off": "string",
    "payload_on": "string", "qos": "integer", "state_topic": "string",
    "value_template": "template",
}
IMAGE_KEYS = {
    **_COMMON, "content_type": "string", "image_encoding": "string", "image_topic": "string",
    "url_template": "template", "url_topic": "string",
}
#: component -> (its documented keys, the keys it requires)
COMPONENTS = {"sensor": (SENSOR_KEYS, SENSOR_REQUIRED),
              "binary_sensor": (BINARY_SENSOR_KEYS, {"state_topic"}),
              "image": (IMAGE_KEYS, set())}
AVAILABILITY_KEYS = {"topic": "string", "payload_available": "string",
                     "payload_not_available": "string", "value_template": "template"}
DEVICE_KEYS = {
    "configuration_url": "string", "connections": "list", "hw_version": "string",
    "identifiers": "list", "manufacturer": "string", "model": "string", "model_id": "string",
    "name": "string", "serial_number": "string", "suggested_area": "string",
    "sw_version": "string", "via_device": "string",
}
ORIGIN_KEYS = {"name": "string", "sw_version": "string", "support_url": "string"}
AVAILABILITY_MODES = {"all", "any", "latest"}
STATE_CLASSES = {"measurement", "measurement_angle", "total", "total_increasing"}
ENTITY_CATEGORIES = {"diagnostic"}  # the only one a sensor may have
#: a discovery topic: <prefix>/<component>/[<node_id>/]<object_id>/config
TOPIC = re.compile(r"^[^/#+]+/(sensor|binary_sensor|image)/(?:[a-zA-Z0-9_-]+/)?"
                   r"[a-zA-Z0-9_-]+/config$")


def problems(topic: str, config: dict[str, Any]) -> list[str]:
    """What Home Assistant's documentation says is wrong with a discovery message of a sensor,
    a binary sensor or an image (which the topic says)."""
    matched = TOPIC.match(topic)
    if not matched:
        return [f"topic {topic!r} is not a sensor, binary_sensor or image discovery topic"]
    component = matched.group(1)
    documented, required = COMPONENTS[component]
    found = _typed(config, documented, "")
    found += [f"{key!r} is required" for key in required - config.keys()]
    if component == "image" and ("image_topic" in config) == ("url_topic" in config):
        found.append("an image needs 'image_topic' or 'url_topic', not both")
    if "availability" in config and "availability_topic" in config:
        found.append("'availability' and 'availability_topic' exclude each other")
    for index, item in enumerate(config.get("availability", [])):
        found += _typed(item, AVAILABILITY_KEYS, f"availability[{index}].")
        if "topic" not in item:
            found.append(f"availability[{index}] has no 'topic'")
    if config.get("availability_mode", "latest") not in AVAILABILITY_MODES:
        found.append(f"availability_mode {config['availability_mode']!r} is not one of "
                     f"{sorted(AVAILABILITY_MODES)}")
    if "device" in config:
        found += _typed(config["device"], DEVICE_KEYS, "device.")
        if not (config["device"].get("identifiers") or config["device"].get("connections")):
            found.append("a device needs 'identifiers' or 'connections'")
        if "unique_id" not in config:
            found.append("'device' works only with 'unique_id'")
    if "origin" in config:
        found += _typed(config["origin"], ORIGIN_KEYS, "origin.")
        if "name" not in config["origin"]:
            found.append("origin needs 'name'")
    entity_id = re.compile(rf"^{component}\.[a-z0-9_]+$")
    if "default_entity_id" in config and not entity_id.match(config["default_entity_id"]):
        found.append(f"default_entity_id {config['default_entity_id']!r} is not "
                     f"{component}.<slug>")
    if config.get("state_class", "measurement") not in STATE_CLASSES:
        found.append(f"state_class {config['state_class']!r} is unknown")
    if config.get("entity_category", "diagnostic") not in ENTITY_CATEGORIES:
        found.append(f"entity_category {config['entity_category']!r}: a sensor's must be "
                     "diagnostic")
    return found


def _typed(data: dict[str, Any], documented: dict[str, str], where: str) -> list[str]:
    found = []
    for key, value in data.items():
        if key not in documented:
            found.append(f"{where}{key!r} is not a documented key")
        elif not isinstance(value, TYPES[documented[key]]) or (
                documented[key] == "integer" and isinstance(value, bool)):
            found.append(f"{where}{key!r} must be a {documented[key]}, got {value!r}")
    return found


# -- what Home Assistant does with the messages -------------------------------------------------

#: what a rendered value template says for "unknown" (Home Assistant's mqtt const PAYLOAD_NONE)
PAYLOAD_NONE = "None"
#: a state message the sensor ignores (its template rendered nothing)
IGNORED = object()


def render(template: str, payload: bytes) -> str:
    """A value template as Home Assistant renders it (its `async_render_with_possible_json_value`):
    Jinja2's immutable sandbox, `value` the payload as text, `value_json` the payload parsed as
    JSON (null is None), the result taken as text and stripped."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    compiled = ImmutableSandboxedEnvironment().from_string(template)
    return compiled.render(value=payload.decode(), value_json=json.loads(payload)).strip()


#: device classes whose state is not a number (Home Assistant's NON_NUMERIC_DEVICE_CLASSES)
NON_NUMERIC_DEVICE_CLASSES = {"date", "enum", "timestamp"}


def numeric(config: dict[str, Any]) -> bool:
    """Whether Home Assistant expects a number of the sensor (its `_numeric_state_expected`):
    a unit, a state class, a display precision or a device class, unless a non-numeric one."""
    if config.get("device_class") in NON_NUMERIC_DEVICE_CLASSES:
        return False
    return any(key in config for key in ("unit_of_measurement", "state_class",
                                         "suggested_display_precision", "device_class"))


def sensor_state(config: dict[str, Any], payload: bytes) -> Any:
    """The state Home Assistant's MQTT sensor takes from a message on its state topic.

    The value template rendered: empty, the message is ignored (IGNORED); `None`, the state is
    unknown (None); else, for a numeric sensor, a number, and any other text is refused with
    the ValueError Home Assistant raises (`... has the non-numeric value: 'null'`).
    """
    value = render(config.get("value_template", "{{ value }}"), payload)
    if not value:
        return IGNORED
    if value == PAYLOAD_NONE:
        return None
    if not numeric(config):
        return value
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"Sensor {config.get('default_entity_id')} has a unit or state class, "
                         f"thus indicating it has a numeric value; however, it has the "
                         f"non-numeric value: {value!r}") from None


def binary_sensor_state(config: dict[str, Any], payload: bytes) -> Any:
    """The state Home Assistant's MQTT binary sensor takes from a message: True for
    `payload_on`, False for `payload_off` (ON and OFF unless said), else the message is
    ignored with a warning (IGNORED)."""
    value = render(config.get("value_template", "{{ value }}"), payload)
    return {config.get("payload_on", "ON"): True, config.get("payload_off", "OFF"): False}.get(
        value, IGNORED)


def available(config: dict[str, Any], retained: dict[str, bytes]) -> bool:
    """Whether Home Assistant shows the entity available, from what the broker holds on its
    availability topics (no message yet on a topic: not available). Modes `all` and `any`
    (`latest` needs the order of the messages)."""
    mode = config.get("availability_mode", "latest")
    assert mode in ("all", "any"), mode
    said = [retained.get(item["topic"], b"").decode() == item.get("payload_available", "online")
            for item in config["availability"]]
    return all(said) if mode == "all" else any(said)
