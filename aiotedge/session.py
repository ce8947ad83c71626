"""One MQTT v5 connection per node, with availability, resubscription and TCP_NODELAY.

Follows the conventions IoT users know from Frigate and zigbee2mqtt: a retained
`.../availability/<node>` topic that says `online` once the node is ready and `offline` when it
stops, with a Last Will so the broker says `offline` for a node that died.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from aiotedge.checks import (
    HOST,
    MQTT_STRING_BYTES,
    PATH,
    host_name,
    mqtt_text,
    require,
    require_range,
    usable_path,
)
from aiotedge.topics import OFFLINE, ONLINE

log = logging.getLogger(__name__)

MessageHandler = Callable[[mqtt.MQTTMessage], None]
_EARLY_MIDS_KEPT = 1024


class BrokerConfigError(ValueError):
    pass


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
                raise ValueError(f"key {key!r} is set without 'username'")
        if self.key_file is not None and self.cert_file is None:
            raise ValueError("key 'key_file' is set without 'cert_file'")
        for key in ("ca_file", "cert_file", "key_file"):
            if getattr(self, key) is not None and not self.tls:
                raise ValueError(
                    f"key {key!r} is set but 'tls' is false: set tls = true or remove {key}"
                )

    def password(self) -> str | None:
        """From password_file, else password_env; at most what MQTT carries (paho would die)."""
        if self.password_file:
            where = f"the broker password file {self.password_file}"
            try:
                value = Path(self.password_file).read_text().strip()
            except OSError as exc:
                raise BrokerConfigError(f"cannot read {where}: {exc.strerror}") from exc
            except UnicodeDecodeError as exc:
                raise BrokerConfigError(f"{where} is not UTF-8 text") from exc
        elif self.password_env:
            where = f"environment variable {self.password_env}"
            value = os.environ.get(self.password_env)
            if value is None:
                raise BrokerConfigError(f"{where} is not set")
        else:
            return None
        if len(value.encode(errors="surrogateescape")) > MQTT_STRING_BYTES:
            raise BrokerConfigError(f"the password in {where} is over {MQTT_STRING_BYTES} bytes")
        return value

    @classmethod
    def parse(cls, address: str) -> BrokerConfig:
        """From `HOST`, `HOST:PORT` or `[IPv6]:PORT`."""
        host, sep, port = address.rpartition(":")
        if not sep or not port.isdigit() or host.endswith(":"):
            return cls(host=address.strip("[]"))
        return cls(host=host.strip("[]"), port=int(port))

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


class MqttSession:
    """A paho client running its network loop in its own thread.

    `receive_maximum` caps how many unacknowledged QoS 1 messages the broker sends us at once,
    which with manual acks is what keeps a slow stage from being flooded. With
    `session_expiry` > 0 the broker keeps the subscriptions and the unacknowledged messages of
    this client id for that many seconds while it is away (MQTT v5 clean start off).
    """

    def __init__(
        self,
        broker: BrokerConfig,
        client_id: str,
        availability_topic: str | None = None,
        *,
        manual_ack: bool = False,
        receive_maximum: int | None = None,
        session_expiry: int = 0,
    ) -> None:
        self.broker = broker
        self.client_id = client_id
        self._availability_topic = availability_topic
        self._subscriptions: dict[str, int] = {}
        self._handlers: dict[str, list[MessageHandler]] = {}
        self._connected = threading.Event()
        self._online = False
        self._client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=manual_ack,
        )
        self._client.reconnect_delay_set(min_delay=1, max_delay=30)
        if broker.username:
            self._client.username_pw_set(broker.username, broker.password())
        if broker.tls:
            self._client.tls_set(
                ca_certs=broker.ca_file, certfile=broker.cert_file, keyfile=broker.key_file
            )
        self._client.on_socket_open = _disable_nagle
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_publish = self._on_publish
        self._client.on_subscribe = self._on_subscribe
        self._subscribing: dict[int, str] = {}
        self._pending_lock = threading.Lock()
        self._acked = threading.Condition(self._pending_lock)
        self._pending_acks: dict[int, tuple[mqtt.MQTTMessage, str]] = {}
        #: publishes the broker answered with a failure (e.g. 0x87 Not authorized by its ACL)
        self.refused = 0
        #: mid -> when on_publish saw it with no forward waiting for it (bounded: most are
        #: QoS 0 publishes nobody waits for; a forward trusts only entries newer than itself)
        self._published_early: OrderedDict[int, float] = OrderedDict()
        self._clean_start = session_expiry <= 0
        self._connect_properties = Properties(PacketTypes.CONNECT)
        if session_expiry > 0:
            self._connect_properties.SessionExpiryInterval = session_expiry
        if receive_maximum:
            self._connect_properties.ReceiveMaximum = receive_maximum
        if availability_topic:
            self._client.will_set(availability_topic, OFFLINE, qos=1, retain=True)

    @property
    def client(self) -> mqtt.Client:
        return self._client

    def subscribe(
        self, topic: str, handler: MessageHandler, qos: int = 1, share_group: str | None = None
    ) -> None:
        """Route messages on `topic` to `handler` (called on the network thread).

        Several handlers may share a topic; each sees every message. With `share_group`, the
        clients subscribed in that group share the messages (MQTT v5 `$share/<group>/<topic>`):
        each message goes to one of them.
        """
        handlers = self._handlers.setdefault(topic, [])
        handlers.append(handler)
        if len(handlers) > 1:
            return
        self._client.message_callback_add(
            topic, lambda _client, _userdata, msg: _dispatch(handlers, msg)
        )
        subscription = f"$share/{share_group}/{topic}" if share_group else topic
        self._subscriptions[subscription] = qos
        if self._connected.is_set():
            self._subscribe(subscription, qos)

    def publish(
        self, topic: str, payload: bytes | str, qos: int = 0, retain: bool = False
    ) -> mqtt.MQTTMessageInfo:
        return self._client.publish(topic, payload, qos=qos, retain=retain)

    def ack(self, message: mqtt.MQTTMessage) -> None:
        if message.qos > 0:
            self._client.ack(message.mid, message.qos)

    def forward(self, topic: str, payload: bytes | str, qos: int, source: mqtt.MQTTMessage) -> None:
        """Publish a result, acknowledging the `source` message only once the broker holds it.

        A node that dies between the two leaves its input unacknowledged, so the broker
        delivers it again: nothing is lost, a downstream node may see a duplicate.
        """
        if qos == 0 or source.qos == 0:
            self.publish(topic, payload, qos)
            self.ack(source)
            return
        # Not under our lock: paho calls on_publish holding its own, which would deadlock.
        started = time.monotonic()
        info = self.publish(topic, payload, qos)
        with self._pending_lock:
            seen_at = self._published_early.pop(info.mid, None)
            already_published = seen_at is not None and seen_at >= started
            if not already_published:
                self._pending_acks[info.mid] = (source, topic)
        if already_published:
            self.ack(source)

    @property
    def unacknowledged(self) -> int:
        with self._pending_lock:
            return len(self._pending_acks)

    def wait_acknowledged(self, timeout: float) -> bool:
        """Wait until the broker has acknowledged every forwarded result."""
        deadline = time.monotonic() + timeout
        with self._acked:
            while self._pending_acks:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._acked.wait(remaining)
        return True

    def start(self) -> None:
        """Connect in the background; paho keeps retrying until the broker answers."""
        log.info("connecting to mqtt://%s as %s", self.broker, self.client_id)
        self._client.connect_async(
            self.broker.host,
            self.broker.port,
            keepalive=self.broker.keepalive,
            clean_start=self._clean_start,
            properties=self._connect_properties,
        )
        self._client.loop_start()

    def wait_connected(self, timeout: float | None = None) -> bool:
        return self._connected.wait(timeout)

    def set_online(self) -> None:
        """Announce the node (retained); repeated after every reconnect from now on."""
        self._online = True
        if self._connected.is_set() and self._availability_topic:
            self.publish(self._availability_topic, ONLINE, qos=1, retain=True)

    def stop(self, timeout: float = 5.0) -> None:
        """Say `offline`, flush what is queued, disconnect."""
        if self._availability_topic and self._connected.is_set():
            info = self.publish(self._availability_topic, OFFLINE, qos=1, retain=True)
            try:
                info.wait_for_publish(timeout)
            except (RuntimeError, ValueError) as exc:
                log.warning("could not publish offline: %s", exc)
        self._client.disconnect()
        self._client.loop_stop()

    def _on_connect(self, client, _userdata, _flags, reason_code, _properties) -> None:
        if reason_code.is_failure:
            log.error("broker %s refused the connection: %s", self.broker, reason_code)
            return
        log.info("connected to mqtt://%s", self.broker)
        for topic, qos in self._subscriptions.items():
            self._subscribe(topic, qos)
        if self._online and self._availability_topic:
            client.publish(self._availability_topic, ONLINE, qos=1, retain=True)
        self._connected.set()

    def _subscribe(self, topic: str, qos: int) -> None:
        _, mid = self._client.subscribe(topic, qos)
        self._subscribing[mid] = topic

    def _on_subscribe(self, _client, _userdata, mid, reason_codes, _properties) -> None:
        topic = self._subscribing.pop(mid, "?")
        if any(code.is_failure for code in reason_codes):
            log.error("broker refused the subscription to %s: %s", topic, reason_codes)
        else:
            log.info("subscribed to %s", topic)

    def _on_publish(self, _client, _userdata, mid, reason_code, _properties) -> None:
        with self._pending_lock:
            pending = self._pending_acks.get(mid)
            if pending is None:  # the broker answered before forward() recorded the mid
                self._published_early[mid] = time.monotonic()
                self._published_early.move_to_end(mid)
                if len(self._published_early) > _EARLY_MIDS_KEPT:
                    self._published_early.popitem(last=False)
            if reason_code.is_failure:
                self.refused += 1
        if reason_code.is_failure:
            # Publishing again would be refused again: the input is acknowledged all the same.
            topic = pending[1] if pending else f"message {mid}"
            log.error("the broker refused the publish to %s: %s", topic, reason_code)
        if pending is not None:
            self.ack(pending[0])
            # only now is it done: wait_acknowledged() must not return before the ack is out
            with self._pending_lock:
                del self._pending_acks[mid]
                self._acked.notify_all()

    def _on_disconnect(self, _client, _userdata, _flags, reason_code, _properties) -> None:
        self._connected.clear()
        if reason_code.value != 0:
            log.warning("lost the broker connection (%s); reconnecting", reason_code)


def _dispatch(handlers: list[MessageHandler], message: mqtt.MQTTMessage) -> None:
    """An exception in a handler would end paho's network loop, and with it the node."""
    for handler in handlers:
        try:
            handler(message)
        except Exception:
            log.exception("handler for %s failed on a message", message.topic)


def _disable_nagle(_client, _userdata, sock: socket.socket) -> None:
    """paho leaves Nagle's algorithm on: small QoS 1 messages then wait ~40 ms for delayed ACKs."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):  # unix sockets, websockets wrappers
        log.debug("TCP_NODELAY not available on %r", sock)
