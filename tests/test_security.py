"""The shipped broker security on a real mosquitto: configs/mosquitto/secure.conf (TLS, passwords,
no anonymous clients), the ACL configs/mosquitto/aiotedge.acl and the example node configs in
configs/cluster/, used as they are; only the paths of the certificates and the password file and
the listener's port are pointed at throwaway ones made here.
"""

from __future__ import annotations

import dataclasses
import queue
import re
import secrets
import shutil
import ssl
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from aiotedge.broker import BrokerError, LocalBroker, free_port
from aiotedge.config import ConfigError, NodeConfig
from aiotedge.homeassistant import discovery_message
from aiotedge.session import BrokerConfig, MqttSession
from aiotedge.status import collect_status
from aiotedge.topics import Topics
from tests.conftest import REPO

SECURE_CONF = REPO / "configs" / "mosquitto" / "secure.conf"
PLAIN_CONF = REPO / "configs" / "mosquitto" / "aiotedge.conf"
ACL = REPO / "configs" / "mosquitto" / "aiotedge.acl"
CLUSTER = REPO / "configs" / "cluster"
STAGES = 5
#: upper bound for one awaited event (a CONNACK, a PUBACK, a message); never a synchronisation
TIMEOUT = 15.0
NOT_AUTHORIZED = 0x87


def load_cluster() -> dict[str, NodeConfig]:
    """The nodes' configs: stage0 .. stage4 and camera (not watcher.toml, for tools)."""
    return {path.stem: NodeConfig.load(path) for path in sorted(CLUSTER.glob("*.toml"))
            if path.stem != "watcher"}


def is_camera(config: NodeConfig) -> bool:
    return bool(config.camera.images)


def node_name(config: NodeConfig) -> str:
    """The name a node's availability and stats topics carry."""
    return config.camera.source if is_camera(config) else config.stage.node


def acl_users() -> list[str]:
    return re.findall(r"^user\s+(\S+)\s*$", ACL.read_text(), flags=re.MULTILINE)


# -- throwaway certificates, passwords, and a broker running the shipped secure.conf ----------


def _openssl(directory: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)


def _issue(directory: Path, name: str, extensions: str) -> None:
    (directory / f"{name}.ext").write_text(extensions)
    _openssl(directory, "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.csr")
    _openssl(directory, "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.crt")


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """A CA, the broker's certificate (for broker.lan, localhost and 127.0.0.1), a client's."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (sudo apt-get install openssl)")
    directory = tmp_path_factory.mktemp("pki")
    _openssl(directory, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-days", "2", "-subj", "/CN=aiotedge test CA",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             "-keyout", "ca.key", "-out", "ca.crt")
    common = ("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
              "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n")
    _issue(directory, "broker", common + "extendedKeyUsage=serverAuth\n"
           "subjectAltName=DNS:broker.lan,DNS:localhost,IP:127.0.0.1\n")
    _issue(directory, "client", common + "extendedKeyUsage=clientAuth\n")
    return directory


@pytest.fixture(scope="module")
def passwords(tmp_path_factory) -> dict[str, Path]:
    """mosquitto's password file for every user of the ACL, and one password file per user."""
    tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    if not Path(tool).is_file():
        pytest.fail("mosquitto_passwd is not installed (sudo apt-get install mosquitto)")
    directory = tmp_path_factory.mktemp("passwords")
    broker_file = directory / "aiotedge.passwd"
    files = {"": broker_file}
    for number, user in enumerate(acl_users()):
        password = secrets.token_urlsafe(12)
        create = ["-c"] if number == 0 else []
        subprocess.run([tool, *create, "-b", str(broker_file), user, password], check=True)
        files[user] = directory / f"{user}.password"
        files[user].write_text(password + "\n")
    return files


def secure_conf(pki: Path, broker_passwords: Path, tls_port: int,
                require_certificate: bool = False) -> str:
    """secure.conf with its paths pointed at the throwaway files; everything else as shipped."""
    text = SECURE_CONF.read_text()
    replacements = {
        "listener 8883": f"listener {tls_port} 127.0.0.1",
        "/etc/mosquitto/certs/broker.crt": str(pki / "broker.crt"),
        "/etc/mosquitto/certs/broker.key": str(pki / "broker.key"),
        "/etc/mosquitto/certs/ca.crt": str(pki / "ca.crt"),
        "/etc/mosquitto/aiotedge.passwd": str(broker_passwords),
        "/etc/mosquitto/aiotedge.acl": str(ACL),
    }
    if require_certificate:
        replacements["require_certificate false"] = "require_certificate true"
    for old, new in replacements.items():
        assert old in text, f"secure.conf no longer says {old!r}: update this test"
        text = text.replace(old, new)
    return text  # LocalBroker adds where persistence goes, as Debian's mosquitto.conf does


@pytest.fixture
def secure_broker(pki, passwords, tmp_path):
    """Factory: a mosquitto running secure.conf; `.tls_port` is its TLS listener.

    LocalBroker also adds a plain loopback listener, under the same users and ACL.
    """
    started = []

    def start(require_certificate: bool = False) -> LocalBroker:
        tls_port = free_port()
        local = LocalBroker(extra_config=secure_conf(
            pki, passwords[""], tls_port, require_certificate))
        try:
            local.start()
        except BrokerError as exc:
            pytest.fail(f"{exc} (`make test` installs mosquitto)")
        local.tls_port = tls_port
        started.append(local)
        return local

    yield start
    for local in started:
        local.close()


class Probe:
    """A bare MQTT v5 client that reports every CONNACK, SUBACK, PUBACK and message.

    TLS trusting the test CA, unless `pki` is None (then plain MQTT).
    """

    def __init__(self, port: int, pki: Path | None, user: str | None = None,
                 password: str | None = None, client_cert: bool = False) -> None:
        self.events: queue.Queue[tuple] = queue.Queue()
        self.messages: queue.Queue[tuple[str, str]] = queue.Queue()
        self.port = port
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5,
                                  client_id=f"probe-{user}-{secrets.token_hex(3)}")
        if user:
            self.client.username_pw_set(user, password)
        if pki is not None:
            self.client.tls_set(
                ca_certs=str(pki / "ca.crt"),
                certfile=str(pki / "client.crt") if client_cert else None,
                keyfile=str(pki / "client.key") if client_cert else None,
            )
        self.client.on_connect = lambda _c, _u, _f, rc, _p: self.events.put(("connack", rc))
        self.client.on_disconnect = lambda _c, _u, _f, rc, _p: self.events.put(("disconnect", rc))
        self.client.on_subscribe = (
            lambda _c, _u, mid, codes, _p: self.events.put(("suback", mid, codes))
        )
        self.client.on_publish = lambda _c, _u, mid, rc, _p: self.events.put(("puback", mid, rc))
        self.client.on_message = lambda _c, _u, m: self.messages.put((m.topic, m.payload.decode()))

    def connect(self) -> ReasonCode | str:
        """The CONNACK's reason code, or why there was none (TLS refused, connection closed)."""
        try:
            self.client.connect("127.0.0.1", self.port)
        except (ssl.SSLError, OSError) as exc:
            return f"refused: {exc!r}"
        self.client.loop_start()
        event = self.events.get(timeout=TIMEOUT)
        if event[0] == "disconnect":
            return f"closed before CONNACK: {event[1]}"
        assert event[0] == "connack", event
        return event[1]

    def subscribe(self, topic: str) -> None:
        _, mid = self.client.subscribe(topic, qos=1)
        kind, acked, codes = self.events.get(timeout=TIMEOUT)
        assert (kind, acked) == ("suback", mid)
        assert not codes[0].is_failure, f"SUBACK {codes[0]} for {topic}"

    def publish(self, topic: str, payload: str, retain: bool = False) -> ReasonCode:
        """QoS 1: returns the PUBACK's reason code."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        kind, acked, code = self.events.get(timeout=TIMEOUT)
        assert (kind, acked) == ("puback", info.mid)
        return code

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def probes(secure_broker, pki, passwords):
    """Factory: a Probe connected over TLS to one secure broker, logged in as a user of the ACL."""
    broker = secure_broker()
    opened = []

    def login(user: str) -> Probe:
        probe = Probe(broker.tls_port, pki, user, passwords[user].read_text().strip())
        opened.append(probe)
        code = probe.connect()
        assert isinstance(code, ReasonCode) and not code.is_failure, f"{user}: {code}"
        return probe

    yield login
    for probe in opened:
        probe.close()


def refused(code: ReasonCode | str) -> bool:
    return isinstance(code, str) or code.is_failure


# -- the example node configs -------------------------------------------------------------------


def test_the_cluster_configs_are_five_stages_and_a_camera_of_one_pipeline():
    configs = load_cluster()
    assert set(configs) == {f"stage{k}" for k in range(STAGES)} | {"camera"}
    watcher = NodeConfig.load(CLUSTER / "watcher.toml")
    assert watcher.broker.username == "watcher"
    for name, config in {**configs, "watcher": watcher}.items():
        assert config.pipeline.name == "greenhouse", name
        broker = config.broker
        assert (broker.host, broker.port, broker.tls) == ("broker.lan", 8883, True), name
        assert broker.ca_file and broker.password_file and not broker.password_env, name
        if name == "watcher":
            continue
        # the ACL is written per user; a node's own topics are named after the node
        assert broker.username == node_name(config), name
        if not is_camera(config):
            assert (name, config.stage.index) == (f"stage{config.stage.index}", config.stage.index)
    assert sorted(acl_users()) == sorted([node_name(c) for c in configs.values()] + ["watcher"])


def test_a_password_cannot_be_written_inline(tmp_path):
    path = tmp_path / "node.toml"
    path.write_text('[broker]\nusername = "stage1"\npassword = "hunter2"\n')
    with pytest.raises(ConfigError, match=r"\[broker\] unknown key 'password'"):
        NodeConfig.load(path)


def test_secure_conf_restates_the_pipeline_settings_of_aiotedge_conf():
    def settings(path: Path) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for line in path.read_text().splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                key, _, value = line.strip().partition(" ")
                found.setdefault(key, []).append(value.strip())
        return found

    plain, secure = settings(PLAIN_CONF), settings(SECURE_CONF)
    # deliberate differences, explained in secure.conf: logins, and log_dest, which
    # Debian's own mosquitto.conf sets
    for key, values in plain.items():
        if key not in {"allow_anonymous", "log_dest"}:
            assert secure.get(key) == values, key
    assert secure["allow_anonymous"] == ["false"]


# -- logins -------------------------------------------------------------------------------------


def test_anonymous_clients_and_wrong_passwords_are_refused(secure_broker, pki):
    broker = secure_broker()
    for port in (broker.tls_port, broker.port):  # the TLS listener, and the plain loopback one
        anonymous = Probe(port, pki if port == broker.tls_port else None)
        code = anonymous.connect()
        anonymous.close()
        assert refused(code), code
    wrong = Probe(broker.tls_port, pki, "stage1", "not-the-password")
    code = wrong.connect()
    wrong.close()
    assert refused(code), code
    if isinstance(code, ReasonCode):
        assert code.value in (0x86, NOT_AUTHORIZED)  # bad user name or password / not authorized


def test_each_cluster_config_logs_in_over_tls_with_its_password_file(
    secure_broker, pki, passwords
):
    broker = secure_broker()
    watcher = Probe(broker.tls_port, pki, "watcher", passwords["watcher"].read_text().strip())
    assert not refused(watcher.connect())
    watcher.subscribe("aiotedge/greenhouse/availability/+")
    sessions = []
    try:
        for name, config in load_cluster().items():
            topics = Topics(config.pipeline.name, config.pipeline.prefix)
            user = config.broker.username
            settings = dataclasses.replace(
                config.broker, host="127.0.0.1", port=broker.tls_port,
                ca_file=str(pki / "ca.crt"), password_file=str(passwords[user]),
            )
            session = MqttSession(settings, f"{name}-test", topics.availability(node_name(config)))
            sessions.append(session)
            session.start()
            assert session.wait_connected(TIMEOUT), f"{name} did not connect"
            session.set_online()
            assert watcher.messages.get(timeout=TIMEOUT) == (
                topics.availability(node_name(config)), "online"
            ), name
    finally:
        for session in sessions:
            session.stop()
        watcher.close()


# -- the ACL: who may write and read what ---------------------------------------------------------


def allowed_writes(config: NodeConfig) -> set[str]:
    """What the brief of each node says it publishes: nothing more."""
    topics = Topics(config.pipeline.name, config.pipeline.prefix)
    name = node_name(config)
    own = {topics.errors, topics.availability(name), topics.info(name), topics.stats(name)}
    if is_camera(config):
        return own | {topics.stage_input(0)}
    index = config.stage.index
    if index < STAGES - 1:
        return own | {topics.stage_input(index + 1)}
    own.add(topics.predictions)
    if config.homeassistant.discovery:
        manifest = SimpleNamespace(source=SimpleNamespace(file="model.tflite"))
        own.add(discovery_message(topics, manifest, name, config.homeassistant.prefix)[0])
    return own


def allowed_reads(config: NodeConfig, published: list[str]) -> set[str]:
    """Its own inputs, and who is online and what they run (every node, for its checks)."""
    topics = Topics(config.pipeline.name, config.pipeline.prefix)
    shared = {t for t in published if t.startswith((topics.availability(""), topics.info("")))}
    if is_camera(config):
        return shared | {topics.predictions, topics.errors}
    return shared | {topics.stage_input(config.stage.index)}


def candidate_topics(configs: dict[str, NodeConfig]) -> list[str]:
    """Every topic some node writes, and some nobody should."""
    topics = Topics("greenhouse")
    names = [node_name(c) for c in configs.values()] + ["watcher"]
    candidates = {topics.stage_input(k) for k in range(STAGES)}
    candidates |= {topics.predictions, topics.errors, topics.probe("someone-else"),
                   "aiotedge/orchard/stage/1", "aiotedge/orchard/predictions",
                   "homeassistant/sensor/other/config", "$SYS/broker/uptime"}
    for name in names:
        candidates |= {topics.availability(name), topics.info(name), topics.stats(name)}
    for config in configs.values():
        candidates |= allowed_writes(config)
    return sorted(candidates)


@pytest.mark.parametrize("node", ["stage0", "stage1", "stage2", "stage3", "stage4", "camera"])
def test_a_node_may_publish_only_to_its_own_topics(probes, node):
    configs = load_cluster()
    config = configs[node]
    allowed = allowed_writes(config)
    watcher = probes("watcher")
    watcher.subscribe("#")  # the ACL lets it see aiotedge/# whatever it asks for
    publisher = probes(config.broker.username)
    codes = {topic: publisher.publish(topic, f"from {node}") for topic in candidate_topics(configs)}
    granted = {topic for topic, code in codes.items() if not code.is_failure}
    assert granted == allowed
    for topic, code in codes.items():
        if topic not in allowed:
            assert code.value == NOT_AUTHORIZED, (topic, code)
    # The broker handles one client's messages in order: once the watcher has this marker, it
    # has every message of that node it was ever going to get.
    marker = Topics("greenhouse").availability(node_name(config))
    assert not publisher.publish(marker, "marker").is_failure
    seen = []
    while (message := next_message(watcher, "the watcher")) != (marker, "marker"):
        seen.append(message[0])
    assert set(seen) == {t for t in allowed if t.startswith("aiotedge/")}


def test_a_node_receives_only_its_own_input_whatever_it_subscribes_to(probes):
    configs = load_cluster()
    topics = Topics("greenhouse")
    published = [topics.stage_input(k) for k in range(STAGES)]
    published += [topics.predictions, topics.errors, topics.availability("stage1"),
                  topics.info("stage1"), topics.stats("stage1")]
    writers = {}
    for topic in published:  # the node whose job it is to publish it
        writers[topic] = next(c.broker.username for c in configs.values()
                              if topic in allowed_writes(c))
    readers = {name: probes(config.broker.username) for name, config in configs.items()}
    readers["watcher"] = probes("watcher")
    for reader in readers.values():
        reader.subscribe("aiotedge/#")  # granted, but the ACL filters what is delivered
    clients = {}
    for round_number in (1, 2):
        for topic in published:
            user = writers[topic]
            if user not in clients:
                clients[user] = probes(user)
            assert not clients[user].publish(topic, f"{round_number}").is_failure
    for name, reader in readers.items():
        expected = (set(published) if name == "watcher"
                    else allowed_reads(configs[name], published))
        first_round = []
        # messages reach a subscriber in the order the broker took them: round 1 is complete
        # when the first message of round 2 arrives
        while (message := next_message(reader, name))[1] == "1":
            first_round.append(message[0])
        assert sorted(first_round) == sorted(expected), name


def next_message(probe: Probe, name: str) -> tuple[str, str]:
    try:
        return probe.messages.get(timeout=TIMEOUT)
    except queue.Empty:
        pytest.fail(f"{name} received nothing more within {TIMEOUT} s")


def test_aiotedge_status_works_with_the_watcher_config(secure_broker, pki, passwords):
    broker = secure_broker()
    stage2 = Probe(broker.tls_port, pki, "stage2", passwords["stage2"].read_text().strip())
    assert not refused(stage2.connect())
    topics = Topics("greenhouse")
    assert not stage2.publish(topics.availability("stage2"), "online", retain=True).is_failure
    stage2.close()
    tools = NodeConfig.load(CLUSTER / "watcher.toml")  # as `aiotedge status --config` reads it
    watcher = dataclasses.replace(
        tools.broker, host="127.0.0.1", port=broker.tls_port, ca_file=str(pki / "ca.crt"),
        password_file=str(passwords[tools.broker.username]),
    )
    nodes = collect_status(watcher, Topics(tools.pipeline.name), timeout=TIMEOUT)
    assert nodes == {"stage2": {"availability": "online"}}


# -- TLS ----------------------------------------------------------------------------------------


def test_mutual_tls_needs_a_client_certificate_signed_by_the_ca(secure_broker, pki, passwords):
    broker = secure_broker(require_certificate=True)
    password = passwords["stage1"].read_text().strip()
    without = Probe(broker.tls_port, pki, "stage1", password, client_cert=False)
    code = without.connect()
    without.close()
    assert refused(code), code

    watcher = Probe(broker.tls_port, pki, "watcher", passwords["watcher"].read_text().strip(),
                    client_cert=True)
    assert not refused(watcher.connect())
    watcher.subscribe("aiotedge/greenhouse/stage/2")
    settings = BrokerConfig(
        "127.0.0.1", broker.tls_port, username="stage1", password_file=str(passwords["stage1"]),
        tls=True, ca_file=str(pki / "ca.crt"), cert_file=str(pki / "client.crt"),
        key_file=str(pki / "client.key"),
    )
    session = MqttSession(settings, "stage1-mtls")
    session.start()
    try:
        assert session.wait_connected(TIMEOUT)
        session.publish("aiotedge/greenhouse/stage/2", b"activation", qos=1).wait_for_publish(
            TIMEOUT
        )
        assert watcher.messages.get(timeout=TIMEOUT) == ("aiotedge/greenhouse/stage/2",
                                                         "activation")
    finally:
        session.stop()
        watcher.close()


def test_a_forwarded_result_the_acl_refuses_is_logged_counted_and_its_input_acknowledged(
    secure_broker, pki, passwords, caplog
):
    """stage1 may not write to stage 3: the frame is not lost silently, nor redelivered forever."""
    broker = secure_broker()
    inputs: queue.Queue[mqtt.MQTTMessage] = queue.Queue()

    def stage1_session() -> MqttSession:
        session = MqttSession(
            BrokerConfig("127.0.0.1", broker.tls_port, username="stage1", tls=True,
                         password_file=str(passwords["stage1"]), ca_file=str(pki / "ca.crt")),
            "stage1-acl-test", manual_ack=True, session_expiry=60,
        )
        session.subscribe("aiotedge/greenhouse/stage/1", inputs.put)
        session.start()
        assert session.wait_connected(TIMEOUT)
        return session

    stage1 = stage1_session()
    camera = Probe(broker.tls_port, pki, "stage0", passwords["stage0"].read_text().strip())
    assert not refused(camera.connect())
    assert not refused(camera.publish("aiotedge/greenhouse/stage/1", "frame"))
    source = inputs.get(timeout=TIMEOUT)
    stage1.forward("aiotedge/greenhouse/stage/3", b"result", qos=1, source=source)
    assert stage1.wait_acknowledged(TIMEOUT)
    stage1.stop()
    assert stage1.refused == 1
    assert "refused the publish to aiotedge/greenhouse/stage/3" in caplog.text
    assert "Not authorized" in caplog.text
    # Back with the same session: an unacknowledged input would be delivered before the marker.
    stage1 = stage1_session()
    assert not refused(camera.publish("aiotedge/greenhouse/stage/1", "marker"))
    assert inputs.get(timeout=TIMEOUT).payload == b"marker"
    stage1.stop()
    camera.close()


# -- why a connection fails, in the node's own log ----------------------------------------------


def connection_problem(settings: BrokerConfig) -> str | None:
    session = MqttSession(settings, f"diagnosed-{secrets.token_hex(3)}")
    session.start()
    try:
        return session.first_attempt(TIMEOUT)
    finally:
        session.stop()


@pytest.fixture
def misnamed_pki(pki) -> Path:
    """A broker certificate from the right CA for another name (elsewhere.lan only)."""
    _issue(pki, "elsewhere", "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
           "subjectAltName=DNS:elsewhere.lan\n")
    return pki


def test_each_connection_failure_is_named(secure_broker, pki, passwords, misnamed_pki, tmp_path):
    broker = secure_broker()
    stage1 = BrokerConfig("127.0.0.1", broker.tls_port, username="stage1", tls=True,
                          password_file=str(passwords["stage1"]), ca_file=str(pki / "ca.crt"))
    assert connection_problem(stage1) is None
    other_ca = tmp_path / "other-ca.crt"
    other_ca.write_text((pki / "client.crt").read_text())  # a certificate, but not the CA's
    wrong_password = tmp_path / "wrong.password"
    wrong_password.write_text("not-the-password\n")
    problems = {
        "tls to plain port": connection_problem(dataclasses.replace(stage1, port=broker.port)),
        "plain to tls port": connection_problem(
            dataclasses.replace(stage1, tls=False, ca_file=None)),
        "other CA": connection_problem(dataclasses.replace(stage1, ca_file=str(other_ca))),
        "password": connection_problem(
            dataclasses.replace(stage1, password_file=str(wrong_password))),
    }
    assert problems["tls to plain port"].endswith("(a plain MQTT port? then set tls = false)")
    assert problems["plain to tls port"] == (
        "the broker closed the connection without answering (a TLS port? then set tls = true)")
    assert problems["other CA"].startswith("TLS certificate check failed: ")
    assert problems["other CA"].endswith("(check [broker] ca_file)")
    assert problems["password"].startswith("the broker refused the connection: ")
    assert "check [broker] username and password_file" in problems["password"]

    misnamed = LocalBroker(extra_config=secure_conf(
        misnamed_pki, passwords[""], tls_port := free_port()).replace(
            str(pki / "broker."), str(pki / "elsewhere.")))
    with misnamed:
        problem = connection_problem(dataclasses.replace(stage1, port=tls_port))
    assert "Hostname mismatch" in problem or "IP address mismatch" in problem, problem


def test_a_camera_whose_every_frame_the_acl_refuses_exits_1(
    secure_broker, pki, passwords, generated_photos, tmp_path
):
    broker = secure_broker()
    config = tmp_path / "camera.toml"
    config.write_text(  # stage1's login: the ACL does not let it publish into stage 0
        f'[broker]\nhost = "127.0.0.1"\nport = {broker.tls_port}\nusername = "stage1"\n'
        f'password_file = "{passwords["stage1"]}"\ntls = true\nca_file = "{pki / "ca.crt"}"\n'
        f'[pipeline]\nname = "greenhouse"\n'
        f'[camera]\nimages = "{generated_photos}"\nsource = "stage1"\nfps = 50.0\n'
    )
    result = subprocess.run(
        [sys.executable, "-m", "aiotedge", "camera", "--config", str(config), "--frames", "3"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 1, result.stderr
    assert "published 3 frames: 0 answered, 0 rejected by the pipeline, 0 unanswered, " \
        "3 refused by the broker" in result.stderr
    assert "the broker refused every frame" in result.stderr
