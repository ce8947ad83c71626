"""The shipped broker security on a real mosquitto: configs/mosquitto/secure.conf (TLS, passwords,
no anonymous clients), the ACL configs/mosquitto/aiotedge.acl and the example node configs in
configs/cluster/, used as they are; only the paths of the certificates and the password file and
the listener's port are pointed at throwaway ones made here. test_security_dynsec.py runs the same
checks on secure-dynsec.conf; the frame theft test shows what only that one prevents.
"""

from __future__ import annotations

import dataclasses
import queue
import secrets
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from aiotedge.config.loader import NodeConfig
from aiotedge.config.sections import BrokerConfig
from aiotedge.contracts.errors import ConfigError
from aiotedge.nodes.mqtt.broker import LocalBroker, free_port
from aiotedge.nodes.mqtt.session import MqttSession
from aiotedge.nodes.mqtt.transport import Received
from support.security import (
    DYNSEC_CONF,
    PLAIN_CONF,
    SECURE_CONF,
    TIMEOUT,
    Probe,
    acl_users,
    conf_settings,
    issue,
    refused,
    secure_conf,
)
from tests.security import (
    CLUSTER,
    FRAMES,
    REPLICA,
    STAGES,
    check_client_id_takeover,
    check_cluster_logins,
    check_deliveries,
    check_frames_wait_for_a_restarting_stage,
    check_home_assistant,
    check_logins,
    check_one_connection_per_user,
    check_only_the_deployer_publishes_releases,
    check_publish_rights,
    check_status_tool,
    is_camera,
    load_cluster,
    node_name,
    theft,
    write_acl_with_replica,
)


@pytest.fixture(scope="module")
def broker_users() -> list[str]:
    """The users of the shipped ACL, and the replica's."""
    return [*acl_users(), REPLICA]


@pytest.fixture(scope="module")
def secure_config(pki, passwords, tmp_path_factory) -> Callable[..., str]:
    """secure.conf with the shipped ACL and the replica's user appended to it."""
    acl = write_acl_with_replica(tmp_path_factory.mktemp("acl") / "aiotedge.acl")
    return lambda tls_port, require_certificate=False: secure_conf(
        pki, passwords[""], tls_port, require_certificate, acl)


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
    assert sorted(acl_users()) == sorted([node_name(c) for c in configs.values()]
                                         + ["watcher", "homeassistant", "deployer"])


def test_a_password_cannot_be_written_inline(tmp_path):
    path = tmp_path / "node.toml"
    path.write_text('[broker]\nusername = "stage1"\npassword = "hunter2"\n')
    with pytest.raises(ConfigError, match=r"\[broker\] unknown key 'password'"):
        NodeConfig.load(path)


@pytest.mark.parametrize("conf", [SECURE_CONF, DYNSEC_CONF], ids=lambda path: path.name)
def test_secure_conf_restates_the_pipeline_settings_of_aiotedge_conf(conf):
    plain, secure = conf_settings(PLAIN_CONF), conf_settings(conf)
    # deliberate differences, explained in secure.conf: logins, and log_dest, which
    # Debian's own mosquitto.conf sets
    for key, values in plain.items():
        if key not in {"allow_anonymous", "log_dest"}:
            assert secure.get(key) == values, key
    assert secure["allow_anonymous"] == ["false"]


# -- logins -------------------------------------------------------------------------------------


def test_the_shipped_acl_loads_without_a_warning(secure_broker):
    """mosquitto warned twice at every start about ACL patterns without %u or %c (run as root,
    as here, it also warns about that: not the config's business)."""
    log = secure_broker().log_path.read_text()
    assert [line for line in log.splitlines()
            if "warning" in line.lower() and "acl" in line.lower()] == [], log


def test_anonymous_clients_and_wrong_passwords_are_refused(secure_broker, pki):
    check_logins(secure_broker(), pki)


def test_each_cluster_config_logs_in_over_tls_with_its_password_file(
    secure_broker, pki, passwords
):
    check_cluster_logins(secure_broker(), pki, passwords)


# -- client ids: bound to their user ------------------------------------------------------------


def test_no_user_can_take_a_stages_client_id(secure_broker, pki, passwords):
    check_client_id_takeover(secure_broker(), pki, passwords)


def test_a_users_second_connection_ends_its_first(secure_broker, pki, passwords):
    check_one_connection_per_user(secure_broker(), pki, passwords)


def test_frames_sent_while_a_stage_is_away_wait_for_it(secure_broker, pki, passwords):
    check_frames_wait_for_a_restarting_stage(secure_broker(), pki, passwords)


# -- the ACL: who may write and read what ---------------------------------------------------------


@pytest.mark.parametrize("node", ["stage0", "stage1", "stage2", "stage3", "stage4", "camera"])
def test_a_node_may_publish_only_to_its_own_topics(probes, node):
    # the ACL lets the watcher see aiotedge/# whatever it asks for
    check_publish_rights(probes, load_cluster()[node], watcher_filter="#")


def test_only_the_deployer_may_publish_releases(probes):
    check_only_the_deployer_publishes_releases(probes)


def test_a_node_receives_only_its_own_input_whatever_it_subscribes_to(probes):
    # every subscription is granted, but the ACL filters what is delivered
    check_deliveries(probes, lambda _name: ["aiotedge/#", "aiotedge-frames/#"])


@pytest.mark.parametrize("replicas", [
    pytest.param(2, id="replicated", marks=pytest.mark.xfail(
        strict=True, raises=AssertionError,
        reason="acl_file cannot refuse subscriptions: use secure-dynsec.conf")),
    pytest.param(1, id="plain"),
])
def test_a_user_without_read_rights_cannot_take_a_stages_frames(
    secure_broker, pki, passwords, replicas
):
    """acl_file grants the thief every subscription and denies it only the delivery: in a
    share group, the frames handed to it are lost; a plain subscriber gets its own copies."""
    taken = theft(secure_broker(), pki, passwords, replicas)
    assert taken.received == FRAMES
    assert taken.thief_granted == taken.thief_tried


def test_aiotedge_status_works_with_the_watcher_config(secure_broker, pki, passwords):
    check_status_tool(secure_broker(), pki, passwords)


def test_home_assistant_discovery_works_with_the_shipped_rights(secure_broker, pki, passwords):
    check_home_assistant(secure_broker(), pki, passwords)


# -- TLS ----------------------------------------------------------------------------------------


def test_mutual_tls_needs_a_client_certificate_signed_by_the_ca(secure_broker, pki, passwords):
    broker = secure_broker(require_certificate=True)
    password = passwords["stage1"].read_text().strip()
    without = Probe(broker.tls_port, pki, "stage1", password, client_cert=False)
    code = without.connect()
    without.close()
    assert refused(code), code

    stage2 = Probe(broker.tls_port, pki, "stage2", passwords["stage2"].read_text().strip(),
                   client_cert=True)
    assert not refused(stage2.connect())
    stage2.subscribe("aiotedge-frames/greenhouse/stage/2")
    settings = BrokerConfig(
        "127.0.0.1", broker.tls_port, username="stage1", password_file=str(passwords["stage1"]),
        tls=True, ca_file=str(pki / "ca.crt"), cert_file=str(pki / "client.crt"),
        key_file=str(pki / "client.key"),
    )
    session = MqttSession(settings, "stage1-mtls")
    session.start()
    try:
        assert session.wait_connected(TIMEOUT)
        session.publish("aiotedge-frames/greenhouse/stage/2", b"activation",
                        qos=1).wait_for_publish(TIMEOUT)
        assert stage2.messages.get(timeout=TIMEOUT) == ("aiotedge-frames/greenhouse/stage/2",
                                                        "activation")
    finally:
        session.stop()
        stage2.close()


def test_a_forwarded_result_the_acl_refuses_is_logged_counted_and_its_input_acknowledged(
    secure_broker, pki, passwords, caplog
):
    """stage1 may not write to stage 3: the frame is not lost silently, nor redelivered forever."""
    broker = secure_broker()
    inputs: queue.Queue[Received] = queue.Queue()

    def stage1_session() -> MqttSession:
        session = MqttSession(
            BrokerConfig("127.0.0.1", broker.tls_port, username="stage1", tls=True,
                         password_file=str(passwords["stage1"]), ca_file=str(pki / "ca.crt")),
            "stage1-acl-test", manual_ack=True, session_expiry=60,
        )
        session.subscribe("aiotedge-frames/greenhouse/stage/1", inputs.put)
        session.start()
        assert session.wait_connected(TIMEOUT)
        return session

    stage1 = stage1_session()
    camera = Probe(broker.tls_port, pki, "stage0", passwords["stage0"].read_text().strip())
    assert not refused(camera.connect())
    assert not refused(camera.publish("aiotedge-frames/greenhouse/stage/1", "frame"))
    source = inputs.get(timeout=TIMEOUT)
    stage1.forward("aiotedge-frames/greenhouse/stage/3", b"result", qos=1, source=source)
    assert stage1.wait_acknowledged(TIMEOUT)
    stage1.stop()
    assert stage1.refused == 1
    assert "refused the publish to aiotedge-frames/greenhouse/stage/3" in caplog.text
    assert "Not authorized" in caplog.text
    # Back with the same session: an unacknowledged input would be delivered before the marker.
    stage1 = stage1_session()
    assert not refused(camera.publish("aiotedge-frames/greenhouse/stage/1", "marker"))
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
    issue(pki, "elsewhere", "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
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
    assert problems["tls to plain port"].endswith(
        "(a plain MQTT port? then set tls = false, or mqtt:// in --broker)")
    assert problems["plain to tls port"] == (
        "the broker closed the connection without answering (a TLS port? then set tls = true, "
        "or mqtts:// in --broker)")
    assert problems["other CA"].startswith("TLS certificate check failed: ")
    assert problems["other CA"].endswith("(check [broker] ca_file, or --ca-file)")
    assert problems["password"].startswith("the broker refused the connection: ")
    assert "check [broker] username and password_file" in problems["password"]

    misnamed = LocalBroker(extra_config=secure_conf(
        misnamed_pki, passwords[""], tls_port := free_port()).replace(
            str(pki / "broker."), str(pki / "elsewhere.")))
    with misnamed:
        problem = connection_problem(dataclasses.replace(stage1, port=tls_port))
    assert "Hostname mismatch" in problem or "IP address mismatch" in problem, problem
    assert problem.endswith("(connect with a name the broker's certificate has, or add this one "
                            "to its subjectAltName)")


def test_a_camera_whose_every_frame_the_acl_refuses_exits_1(
    secure_broker, pki, passwords, generated_photos, tmp_path
):
    broker = secure_broker()
    config = tmp_path / "camera.toml"
    config.write_text(  # stage1's login: the ACL does not let it publish into stage 0
        f'[broker]\nhost = "127.0.0.1"\nport = {broker.tls_port}\nusername = "stage1"\n'
        f'password_file = "{passwords["stage1"]}"\ntls = true\nca_file = "{pki / "ca.crt"}"\n'
        f'[pipeline]\nname = "greenhouse"\n'
        f'[camera]\nsource = "{generated_photos}"\nname = "stage1"\nfps = 50.0\n'
    )
    result = subprocess.run(
        [sys.executable, "-m", "aiotedge", "camera", "--config", str(config), "--frames", "3"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 1, result.stderr
    assert "published 3 frames: 0 answered, 0 rejected by the pipeline, 0 unanswered, " \
        "3 refused by the broker" in result.stderr
    assert "the broker refused every frame" in result.stderr
