"""Home Assistant MQTT discovery: the pipeline's latest prediction as a sensor."""

from __future__ import annotations

import json

from aiotedge.contracts.manifest import Manifest
from aiotedge.contracts.topics import OFFLINE, ONLINE, Topics


def discovery_message(
    topics: Topics, manifest: Manifest, node: str, prefix: str = "homeassistant"
) -> tuple[str, str]:
    """(config topic, retained payload) announcing a sensor whose state is the top-1 label."""
    object_id = f"aiotedge_{topics.pipeline}"
    config = {
        "name": "Prediction",
        "unique_id": f"{object_id}_prediction",
        "object_id": f"{object_id}_prediction",
        "icon": "mdi:eye",
        "state_topic": topics.predictions,
        "value_template": "{{ value_json.top[0].label }}",
        "json_attributes_topic": topics.predictions,
        "json_attributes_template": (
            "{{ {'score': value_json.top[0].score, 'source': value_json.source, "
            "'frame_id': value_json.frame_id, 'latency_ms': value_json.latency_ms} | tojson }}"
        ),
        "availability_topic": topics.availability(node),
        "payload_available": ONLINE,
        "payload_not_available": OFFLINE,
        "device": {
            "identifiers": [object_id],
            "name": f"aiotedge {topics.pipeline}",
            "manufacturer": "aiotedge",
            "model": manifest.source.file,
        },
    }
    return f"{prefix}/sensor/{object_id}/prediction/config", json.dumps(config)
