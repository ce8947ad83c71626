"""One MQTT v5 connection per node, with availability, resubscription and TCP_NODELAY.

Follows the conventions IoT users know from Frigate and zigbee2mqtt: a retained
`.../availability/<node>` topic that says `online` once the node is ready and `offline` when it
stops, with a Last Will so the broker says `offline` for a node that died.
"""

from __future__ import annotations

import logging
import secrets
import select
import socket
import ssl
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import cast

import paho.mqtt.client as mqtt
from paho.mqtt import __version__ as paho_version
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from aiotedge.config.sections import BrokerConfig
from aiotedge.contracts.errors import BrokerError
from aiotedge.contracts.topics import OFFLINE, ONLINE
from aiotedge.nodes.mqtt.transport import (
    MessageHandler,
    PublishCallback,
    Received,
    RefusalHandler,
    Session,
)

log = logging.getLogger(__name__)

#: the MQTT client library under every session, as the transport measurement names it
CLIENT_LIBRARY = f"paho-mqtt {paho_version}"
#: seconds between attempts to reach the broker: the first RECONNECT_QUICK_TRIES at the
#: minimum, so a node is back within about a second of a broker restart; then doubling up to
#: the maximum, so a broker that stays away is not hammered
RECONNECT_MIN_DELAY = 1.0
RECONNECT_MAX_DELAY = 30.0
RECONNECT_QUICK_TRIES = 10
_EARLY_MIDS_KEPT = 1024


class MqttSession:
    """A paho client running its network loop in its own thread; the nodes' `Session`.

    It hands its handlers `Received` messages, made from paho's at the one place they arrive.

    `receive_maximum` caps how many unacknowledged QoS 1 messages the broker sends us at once,
    which with manual acks is what keeps a slow stage from being flooded. With
    `session_expiry` > 0 the broker keeps the subscriptions and the unacknowledged messages of
    this client id for that many seconds while it is away (MQTT v5 clean start off).
    A `one_shot` session is a command's, which says itself why the broker cannot be used
    (`first_attempt`): its connection attempts are logged at debug level only.
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
        one_shot: bool = False,
    ) -> None:
        self.broker = broker
        self.client_id = client_id
        self._progress_level = logging.DEBUG if one_shot else logging.INFO
        self._problem_level = logging.DEBUG if one_shot else logging.WARNING
        self._refusal_level = logging.DEBUG if one_shot else logging.ERROR
        self._availability_topic = availability_topic
        self._subscriptions: dict[str, SubscribeOptions] = {}
        self._stale_subscriptions: list[str] = []
        self._handlers: dict[str, list[MessageHandler]] = {}
        self._connected = threading.Event()
        #: retained messages (availability, info, discovery) said again after every reconnect
        self._announcements: dict[str, str] = {}
        self._client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=manual_ack,
        )
        #: failed attempts since the last connection (the next delay grows with them)
        self._failures = 0
        self._set_reconnect_delay()
        if broker.username:
            self._client.username_pw_set(broker.username, broker.password())
        if broker.tls:
            self._client.tls_set(
                ca_certs=broker.ca_file, certfile=broker.cert_file, keyfile=broker.key_file
            )
        self._client.on_socket_open = self._on_socket_open
        self._client.on_connect = self._on_connect
        self._client.on_connect_fail = self._on_connect_fail
        self._client.on_disconnect = self._on_disconnect
        self._client.on_publish = self._on_publish
        self._client.on_subscribe = self._on_subscribe
        self._subscribing: dict[int, str] = {}
        self._refusal_handlers: dict[str, RefusalHandler] = {}
        self._pending_lock = threading.Lock()
        self._acked = threading.Condition(self._pending_lock)
        #: our QoS 1 publish's mid -> what to do once the broker has it, and its topic
        self._pending: dict[int, tuple[PublishCallback, str]] = {}
        #: publishes the broker answered with a failure (e.g. 0x87 Not authorized by its ACL)
        self.refused = 0
        #: QoS 1 publishes nobody was subscribed to (0x10): gone, unless someone sends them again
        self.unrouted = 0
        #: why the last attempt to reach the broker failed (None while connected)
        self.connection_problem: str | None = None
        #: why the connection last failed or was lost, kept once connected again (for stats)
        self.last_problem: str | None = None
        #: connections made after the first one
        self.reconnects = 0
        self._ever_connected = False
        self._attempt_done = threading.Condition()
        self._attempts = 0
        #: whether a TCP connection is open (the current socket), and the broker answered on it
        self._socket_open = False
        self._answered = False
        #: mid -> (when, reason) for answers on_publish saw before the publisher recorded
        #: the mid (bounded: most are publishes nobody waits for; a publisher trusts only
        #: entries newer than its own publish, as mids are reused)
        self._published_early: OrderedDict[int, tuple[float, ReasonCode]] = OrderedDict()
        self._clean_start = session_expiry <= 0
        self._connect_properties = Properties(PacketTypes.CONNECT)
        if session_expiry > 0:
            self._connect_properties.SessionExpiryInterval = session_expiry
        if receive_maximum:
            self._connect_properties.ReceiveMaximum = receive_maximum
        #: says which process said `online`: each node's availability carries it
        self._instance = secrets.token_hex(4)
        #: whether this client id was online in another client when ours last connected
        #: (the broker then closed that one's connection in favour of ours)
        self._displaced_twin = False
        if availability_topic:
            self._client.will_set(availability_topic, OFFLINE, qos=1, retain=True)
            self._client.message_callback_add(
                availability_topic, lambda _client, _userdata, msg: self._on_own_availability(msg))

    @property
    def client(self) -> mqtt.Client:
        return self._client

    def subscribe(
        self, topic: str, handler: MessageHandler, qos: int = 1, share_group: str | None = None,
        *, on_refused: RefusalHandler | None = None, retained: bool = True,
    ) -> None:
        """Route messages on `topic` to `handler` (called on the network thread).

        Several handlers may share a topic; each sees every message. With `share_group`, the
        clients subscribed in that group share the messages (MQTT v5 `$share/<group>/<topic>`):
        each message goes to one of them. `on_refused` hears it if the broker refuses the
        subscription (its ACL, typically). `retained=False`: the broker sends no retained
        message when subscribing (MQTT v5 Retain Handling 2): a frame someone published
        retained would otherwise be taken again at every (re)connection.
        """
        subscription = f"$share/{share_group}/{topic}" if share_group else topic
        if on_refused is not None:
            self._refusal_handlers[subscription] = on_refused
        handlers = self._handlers.setdefault(topic, [])
        handlers.append(handler)
        if len(handlers) > 1:
            return
        self._client.message_callback_add(
            topic, lambda _client, _userdata, msg: _dispatch(handlers, msg)
        )
        options = SubscribeOptions(qos=qos, retainHandling=(
            SubscribeOptions.RETAIN_SEND_ON_SUBSCRIBE if retained
            else SubscribeOptions.RETAIN_DO_NOT_SEND))
        self._subscriptions[subscription] = options
        if self._connected.is_set():
            self._subscribe(subscription, options)

    def unsubscribe(self, topic: str) -> None:
        """Undo `subscribe(topic, ...)` (without share group): no handler, no subscription."""
        self._handlers.pop(topic, None)
        self._subscriptions.pop(topic, None)
        self._refusal_handlers.pop(topic, None)
        self._client.message_callback_remove(topic)
        if self._connected.is_set():
            self._client.unsubscribe(topic)

    def unsubscribe_on_connect(self, topic_filter: str) -> None:
        """Remove a subscription the broker may hold from an earlier run (no handler here)."""
        self._stale_subscriptions.append(topic_filter)
        if self._connected.is_set():
            self._client.unsubscribe(topic_filter)

    def publish(
        self, topic: str, payload: bytes | str, qos: int = 0, retain: bool = False
    ) -> mqtt.MQTTMessageInfo:
        return self._client.publish(topic, payload, qos=qos, retain=retain)

    def announce(self, topic: str, payload: str) -> None:
        """Publish a retained state now and again after every reconnect.

        A broker restarted without persistence forgets retained messages; saying them again
        on reconnect keeps `online`, node info and discovery true.
        """
        self._announcements[topic] = payload
        if self._connected.is_set():
            self._announce_now(topic, payload)

    def _announce_now(self, topic: str, payload: str) -> None:
        properties = None
        if topic == self._availability_topic:  # signed, so that a twin can tell it is not its own
            properties = Properties(PacketTypes.PUBLISH)
            properties.UserProperty = (_INSTANCE, self._instance)
        self._client.publish(topic, payload, qos=1, retain=True, properties=properties)

    def withdraw(self, topic: str) -> None:
        """Stop saying `topic` again after reconnects (what the broker holds stays)."""
        self._announcements.pop(topic, None)

    def ack(self, message: Received) -> None:
        if message.qos > 0:
            self._client.ack(message.packet_id, message.qos)

    def publish_confirmed(
        self, topic: str, payload: bytes | str, qos: int, on_confirmed: PublishCallback,
        retain: bool = False,
    ) -> None:
        """Publish; call `on_confirmed(refused)` once the broker has answered (at QoS 0: now).

        `refused` is true when the broker answered with a failure (its ACL, typically).
        `on_confirmed` runs on the network thread, or on this one if the answer was quick.
        """
        if qos == 0:
            self.publish(topic, payload, 0, retain)
            on_confirmed(False)
            return
        # Not under our lock: paho calls on_publish holding its own, which would deadlock.
        started = time.monotonic()
        info = self.publish(topic, payload, qos, retain)
        with self._pending_lock:
            early = self._published_early.pop(info.mid, None)
            if early is None or early[0] < started:
                self._pending[info.mid] = (on_confirmed, topic)
                return
        self._confirmed(topic, early[1], on_confirmed)

    def forward(self, topic: str, payload: bytes | str, qos: int, source: Received) -> None:
        """Publish a result, acknowledging the `source` message only once the broker holds it.

        A node that dies between the two leaves its input unacknowledged, so the broker
        delivers it again: nothing is lost, a downstream node may see a duplicate. Only the
        input's packet id is kept meanwhile, never its payload (a photo is 0.5 MB).
        """
        if source.qos == 0:
            self.publish(topic, payload, qos)
            return
        packet_id, input_qos = source.packet_id, source.qos
        self.publish_confirmed(topic, payload, qos,
                               lambda _refused: self._client.ack(packet_id, input_qos))

    def input_waiting(self) -> bool:
        """Whether bytes from the broker wait to be read: a message arrived meanwhile."""
        sock = self._client.socket()
        if sock is None:
            return False
        pending = getattr(sock, "pending", None)  # what TLS decrypted but nobody read yet
        if pending is not None and pending():
            return True
        try:
            readable, _, _ = select.select([sock], [], [], 0)
        except (OSError, ValueError, TypeError):  # closed meanwhile
            return False
        return bool(readable)

    @property
    def unacknowledged(self) -> int:
        with self._pending_lock:
            return len(self._pending)

    def wait_acknowledged(self, timeout: float | None, at_most: int = 0) -> bool:
        """Wait until at most `at_most` forwarded results await the broker's acknowledgement."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._acked:
            while len(self._pending) > at_most:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._acked.wait(remaining)
        return True

    def start(self) -> None:
        """Connect in the background; paho keeps retrying until the broker answers."""
        log.log(self._progress_level, "connecting to %s as %s", self.url, self.client_id)
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

    def first_attempt(self, timeout: float | None = None) -> str | None:
        """How the first connection attempt ended: None once connected, else the problem.

        For one-shot commands, which should say at once why the broker cannot be used rather
        than retry like a daemon. Raises BrokerError when no attempt ended in time.
        """
        with self._attempt_done:
            if not self._attempt_done.wait_for(lambda: self._attempts > 0, timeout):
                if self._socket_open and not self._answered:
                    raise BrokerError(f"cannot use the broker at {self.url}: "
                                      + self._no_connack(timeout))
                raise BrokerError(f"no answer from the broker at {self.broker} "
                                   f"within {timeout:.0f} s")
        return None if self._connected.is_set() else self.connection_problem

    def set_online(self) -> None:
        """Announce the node (retained); repeated after every reconnect from now on."""
        if self._availability_topic:
            self.announce(self._availability_topic, ONLINE)

    def stop(self, timeout: float = 5.0, end_session: bool = False) -> None:
        """Say `offline`, flush what is queued, disconnect.

        `end_session`: the broker drops the session now rather than when it expires (MQTT v5
        DISCONNECT with Session Expiry Interval 0), for a client that will not come back for
        what is published meanwhile: a camera's next run numbers its frames anew, so a session
        left behind would only queue predictions for nobody, up to the broker's limit.
        """
        if self._availability_topic and self._connected.is_set():
            info = self.publish(self._availability_topic, OFFLINE, qos=1, retain=True)
            try:
                info.wait_for_publish(timeout)
            except (RuntimeError, ValueError) as exc:
                log.warning("could not publish offline: %s", exc)
        properties = None
        if end_session:
            properties = Properties(PacketTypes.DISCONNECT)
            properties.SessionExpiryInterval = 0
        self._client.disconnect(properties=properties)
        self._client.loop_stop()

    @property
    def url(self) -> str:
        host = f"[{self.broker.host}]" if ":" in self.broker.host else self.broker.host
        return f"{'mqtts' if self.broker.tls else 'mqtt'}://{host}:{self.broker.port}"

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def _connection_failed(self, problem: str) -> None:
        """Log why the broker cannot be reached, once per change of reason, not every retry."""
        if problem != self.connection_problem:
            log.log(self._problem_level, "cannot connect to %s: %s", self.url, problem)
        self.connection_problem = self.last_problem = problem
        self._failures += 1
        self._set_reconnect_delay()
        self._attempt_ended()

    def _set_reconnect_delay(self) -> None:
        """paho doubles its delay from the first failure and waits it before the next attempt;
        setting both bounds to ours makes it wait exactly that."""
        delay = reconnect_delay(self._failures)
        self._client.reconnect_delay_set(min_delay=delay, max_delay=delay)  # type: ignore[arg-type]

    def _attempt_ended(self) -> None:
        with self._attempt_done:
            self._attempts += 1
            self._attempt_done.notify_all()

    def _no_connack(self, seconds: float) -> str:
        return (f"connected to {self.broker} but no MQTT answer (CONNACK) within {seconds:.0f} "
                "s: is it an MQTT broker, and the right port?")

    def _on_socket_open(self, _client, _userdata, sock: socket.socket) -> None:
        self._socket_open, self._answered = True, False
        _disable_nagle(sock)

    def _on_connect(self, client, _userdata, _flags, reason_code, _properties) -> None:
        self._answered = True
        if reason_code.is_failure:
            self._connection_failed(f"the broker refused the connection: {reason_code}"
                                    + _REFUSAL_HINTS.get(reason_code.value, ""))
            return
        self._displaced_twin = False
        if self.connection_problem and self.connection_problem == self._twin_problem():
            log.debug("connected to %s again (after: %s)", self.url, self.connection_problem)
        elif self.connection_problem:
            log.log(self._progress_level, "connected to %s (after: %s)", self.url,
                    self.connection_problem)
        else:
            log.log(self._progress_level, "connected to %s", self.url)
        self.connection_problem = None
        if self._ever_connected:
            self.reconnects += 1
        self._ever_connected = True
        self._failures = 0
        self._set_reconnect_delay()
        for topic in self._stale_subscriptions:
            client.unsubscribe(topic)
        for topic, options in self._subscriptions.items():
            self._subscribe(topic, options)
        if self._availability_topic and not self._hears_own_availability():
            self._subscribe(self._availability_topic, SubscribeOptions(qos=0))
        for topic, payload in self._announcements.items():
            self._announce_now(topic, payload)
        self._connected.set()
        self._attempt_ended()

    def _on_connect_fail(self, _client, _userdata) -> None:
        # paho calls this from inside its `except OSError` around the connection attempt
        self._connection_failed(describe_connection_error(sys.exc_info()[1], self.broker))

    def _subscribe(self, topic: str, options: SubscribeOptions) -> None:
        _, mid = self._client.subscribe(topic, options=options)
        self._subscribing[mid] = topic

    def _on_subscribe(self, _client, _userdata, mid, reason_codes, _properties) -> None:
        topic = self._subscribing.pop(mid, "?")
        refusals = [str(code) for code in reason_codes if code.is_failure]
        if refusals:
            log.log(self._refusal_level, "broker refused the subscription to %s: %s", topic,
                    ", ".join(refusals))
            if (on_refused := self._refusal_handlers.get(topic)) is not None:
                on_refused(", ".join(refusals))
        else:
            log.log(self._progress_level, "subscribed to %s", topic)

    def _on_publish(self, _client, _userdata, mid, reason_code, _properties) -> None:
        with self._pending_lock:
            pending = self._pending.get(mid)
            if pending is None:  # the broker answered before the publisher recorded the mid
                self._published_early[mid] = (time.monotonic(), reason_code)
                self._published_early.move_to_end(mid)
                if len(self._published_early) > _EARLY_MIDS_KEPT:
                    self._published_early.popitem(last=False)
                return
        self._confirmed(pending[1], reason_code, pending[0])
        # only now is it done: wait_acknowledged() must not return before the ack is out
        with self._pending_lock:
            del self._pending[mid]
            self._acked.notify_all()

    def _confirmed(
        self, topic: str, reason_code: ReasonCode, on_confirmed: PublishCallback
    ) -> None:
        """Count and log what the broker said of a tracked publish, then tell the publisher."""
        refused = reason_code.is_failure
        with self._pending_lock:
            if refused:
                self.refused += 1
            elif reason_code.value == _NO_MATCHING_SUBSCRIBERS:
                self.unrouted += 1
        if refused:
            # Publishing again would be refused again: the input is acknowledged all the same.
            log.log(self._refusal_level, "the broker refused the publish to %s: %s", topic,
                    reason_code)
        elif reason_code.value == _NO_MATCHING_SUBSCRIBERS and (
            self.unrouted == 1 or self.unrouted % 100 == 0
        ):
            log.warning("nobody subscribes to %s: %d publishes went nowhere so far",
                        topic, self.unrouted)
        on_confirmed(refused)

    def _on_disconnect(self, _client, _userdata, flags, reason_code, _properties) -> None:
        was_connected = self._connected.is_set()
        self._connected.clear()
        self._socket_open = False
        if reason_code.value == 0:
            return
        if was_connected and (reason_code.value == _SESSION_TAKEN_OVER or (
                self._displaced_twin and not flags.is_disconnect_packet_from_server)):
            self._lost_to_twin()
        elif was_connected:
            log.warning("lost the broker connection (%s); reconnecting", reason_code)
            self.last_problem = f"lost the connection: {reason_code}"
        elif not self._answered and reason_code.value == _KEEP_ALIVE_TIMEOUT:
            # paho gives up on a CONNACK after the keepalive: the other end holds the connection
            # open and says nothing (not an MQTT broker; or a TLS port, when tls is on)
            self._connection_failed(self._no_connack(self.broker.keepalive))
        elif not (self._answered or flags.is_disconnect_packet_from_server):
            # closed before any CONNACK: typically plain MQTT spoken to a TLS listener
            self._connection_failed(
                "the broker closed the connection without answering"
                + ("" if self.broker.tls
                   else " (a TLS port? then set tls = true, or mqtts:// in --broker)")
            )

    def _hears_own_availability(self) -> bool:
        """Whether a subscription of ours (`availability/+`, a stage's) brings our own
        availability: a second one would bring each message twice, to every handler."""
        return any(mqtt.topic_matches_sub(topic_filter, self._availability_topic or "")
                   for topic_filter in self._subscriptions)

    def _on_own_availability(self, message: mqtt.MQTTMessage) -> None:
        """Note whether another client with our id had said `online` (the retained message
        the broker sends as we subscribe: that client was online until our connection came)."""
        said_by = dict(getattr(message.properties, "UserProperty", None) or []).get(_INSTANCE)
        if message.payload == ONLINE.encode() and said_by != self._instance:
            self._displaced_twin = True

    def _twin_problem(self) -> str:
        node = (self._availability_topic or self.client_id).rsplit("/", 1)[-1]
        return (f"another client connected with this node's client id {self.client_id}: two "
                f"nodes share the name {node}? Give each its own ([stage] node, [camera] name); "
                f"meanwhile retrying every {RECONNECT_MAX_DELAY:.0f} s")

    def _lost_to_twin(self) -> None:
        """The broker gave our client id to another client: MQTT v5's DISCONNECT 0x8E
        "Session taken over", or (mosquitto 2.0 closes the connection without it) a close right
        after our connection had displaced an online client with our id.

        Said once, not at every turn. Retrying every second would let each of the two nodes hold
        the connection for a second at a time: neither does any work, and both flood the log.
        Giving up would leave the pipeline without this node once the other one is renamed or
        stopped. So we retry at the slowest pace: each holds the id for about that long in turn,
        and the pipeline keeps working meanwhile; the fix (a name of its own) brings this one
        back by itself.
        """
        problem, said = self._twin_problem(), self.last_problem
        self.connection_problem = self.last_problem = problem
        self._client.reconnect_delay_set(min_delay=RECONNECT_MAX_DELAY,  # type: ignore[arg-type]
                                         max_delay=RECONNECT_MAX_DELAY)  # type: ignore[arg-type]
        if problem != said:
            log.warning("%s", problem)


class RetainedRefusedError(BrokerError):
    """The broker refused what reading the retained messages needs (its ACL, typically)."""

    def __init__(self, refusals: list[str], retained: dict[str, bytes], reading: bool) -> None:
        super().__init__("the broker refused " + "; ".join(refusals))
        #: whether a subscription was refused (else only the probe publish was)
        self.reading = reading
        #: what had arrived by then: the broker sends it before answering our later packets
        self.retained = retained


def wait_settled(session: Session, probe_topic: str, timeout: float = 10.0) -> None:
    """Return once the broker has sent what it held for the session's subscriptions when it
    connected (their retained messages): a message of our own published after them comes
    back after them. QoS 0 both ways, so it suits a session that acknowledges QoS 1 messages
    by hand (a stage's)."""
    back = threading.Event()
    session.subscribe(probe_topic, lambda _message: back.set(), qos=0)
    session.publish(probe_topic, b"", qos=0)
    if not back.wait(timeout):
        raise BrokerError(f"the broker at {session.url} did not answer within {timeout:.0f} s")


def topic_matches(topic_filter: str, topic: str) -> bool:
    """Whether a topic matches a filter (+ and # wildcards) as the broker decides it."""
    return mqtt.topic_matches_sub(topic_filter, topic)


def read_retained(
    session: MqttSession, filters: Sequence[str], probe_topic: str, timeout: float = 10.0,
    follow: MessageHandler | None = None,
) -> dict[str, bytes]:
    """Topic -> payload of the retained messages on `filters`, from a connected session.

    The broker sends the retained messages in answer to a subscription, before anything
    published after it: a probe message we send ourselves once subscribed marks their end.
    The session must be one nothing else blocks (its network thread delivers the messages).
    Raises RetainedRefusedError when the broker refuses a subscription or the probe: the probe
    would then never come (mosquitto answers a publish its ACL denies with PUBACK 0x87 "Not
    authorized", a denied subscription with SUBACK 0x87). With `follow`, that handler hears
    every message on `filters` too, from the retained ones on, for as long as the session lasts.
    """
    retained: dict[str, bytes] = {}
    refusals: list[str] = []
    reading = False
    done = threading.Event()
    user = f"user {session.broker.username}" if session.broker.username else "this client"

    def record(message: Received) -> None:
        if follow is not None:
            follow(message)
        if message.payload and not done.is_set():  # an empty retained message: deleted
            retained[message.topic] = message.payload

    def refused(what: str) -> None:
        refusals.append(what)
        done.set()

    def subscription_refused(topic_filter: str) -> Callable[[str], None]:
        def refused_reading(reason: str) -> None:
            nonlocal reading
            reading = True
            refused(f"{user} the subscription to {topic_filter} ({reason})")
        return refused_reading

    def published(denied: bool) -> None:
        if denied:
            refused(f"{user} the publish to {probe_topic} (Not authorized)")

    for topic_filter in filters:
        session.subscribe(topic_filter, record, qos=1,
                          on_refused=subscription_refused(topic_filter))
    session.subscribe(probe_topic, lambda _message: done.set(), qos=1,
                      on_refused=subscription_refused(probe_topic))
    session.publish_confirmed(probe_topic, b"", 1, published)
    if not done.wait(timeout):
        raise BrokerError(
            f"the broker at {session.broker} did not answer within {timeout:.0f} s"
        )
    if refusals:
        raise RetainedRefusedError(refusals, dict(retained), reading)
    return retained


_NO_MATCHING_SUBSCRIBERS = 0x10
#: the reason paho gives when nothing came from the broker within the keepalive
_KEEP_ALIVE_TIMEOUT = 0x8D
#: MQTT v5 DISCONNECT reason: another client connected with our client id
_SESSION_TAKEN_OVER = 0x8E
#: the user property naming the process that said a node's availability
_INSTANCE = "aiotedge-instance"

#: OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH and X509_V_ERR_IP_ADDRESS_MISMATCH
_NAME_MISMATCH = (62, 64)
_LOGIN = "[broker] username and password_file, or --username and --password-file"
_PLAIN_PORT = "a plain MQTT port? then set tls = false, or mqtt:// in --broker"
#: CONNACK reason codes whose cause a user can fix in the node's config
_REFUSAL_HINTS = {
    0x86: f" (check {_LOGIN})",
    # mosquitto answers a wrong password with this one too
    0x87: f" (check {_LOGIN}; the broker may refuse this client)",
    0x85: " (another client id? check the node name)",
}


def reconnect_delay(failures: int) -> float:
    """Seconds to wait before the next attempt after `failures` failed ones in a row."""
    doublings = max(0, failures - RECONNECT_QUICK_TRIES)
    return min(RECONNECT_MAX_DELAY, RECONNECT_MIN_DELAY * 2 ** min(doublings, 16))


def describe_connection_error(error: BaseException | None, broker: BrokerConfig) -> str:
    """One line saying why a connection attempt failed, in terms of the node's config."""
    if isinstance(error, ssl.SSLCertVerificationError):
        if error.verify_code in _NAME_MISMATCH:
            return (f"TLS certificate check failed: {error.verify_message} (connect with a name "
                    "the broker's certificate has, or add this one to its subjectAltName)")
        return (f"TLS certificate check failed: {error.verify_message} "
                "(check [broker] ca_file, or --ca-file)")
    if isinstance(error, ssl.SSLError):
        hint = f" ({_PLAIN_PORT})" if "WRONG_VERSION" in str(error) else ""
        return f"TLS handshake failed: {error.reason or error}{hint}"
    if isinstance(error, ConnectionResetError) and broker.tls:
        return f"the broker reset the connection in the TLS handshake ({_PLAIN_PORT})"
    if isinstance(error, ConnectionRefusedError):
        return f"connection refused: nothing listens on {broker}"
    if isinstance(error, socket.gaierror):
        return f"cannot resolve the host name {broker.host!r}: {error.strerror}"
    if isinstance(error, TimeoutError):
        return f"no answer from {broker} (timed out)"
    if isinstance(error, OSError):
        return error.strerror or str(error) or type(error).__name__
    return "connection failed"


def _dispatch(handlers: list[MessageHandler], message: mqtt.MQTTMessage) -> None:
    """Hand paho's message to the handlers as our own: the payload is not copied.

    An exception in a handler would end paho's network loop, and with it the node.
    """
    # paho decodes a PUBLISH's payload as bytes (its type says bytearray too, for what it sends)
    received = Received(message.topic, cast(bytes, message.payload), message.qos,
                        message.retain, message.mid)
    for handler in handlers:
        try:
            handler(received)
        except Exception:
            log.exception("handler for %s failed on a message", received.topic)


def _disable_nagle(sock: socket.socket) -> None:
    """paho leaves Nagle's algorithm on: small QoS 1 messages then wait ~40 ms for delayed ACKs."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):  # unix sockets, websockets wrappers
        log.debug("TCP_NODELAY not available on %r", sock)
