"""What a user sees when the broker cannot be used: one-shot commands (`status`, `watch --count`,
`camera --frames`, `run` with a broker of its own) end at once with one line naming the cause
and exit status 2, never a traceback or a wait; a `--broker` that is none of the accepted forms
is refused the same way; daemons keep retrying, quickly at first."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from aiotedge.config.sections import BrokerConfig
from aiotedge.contracts.errors import BrokerError
from aiotedge.nodes.daemons.lifecycle import connect_once
from aiotedge.nodes.mqtt.broker import LocalBroker, free_port
from aiotedge.nodes.mqtt.session import (
    RECONNECT_MAX_DELAY,
    RECONNECT_MIN_DELAY,
    RECONNECT_QUICK_TRIES,
    MqttSession,
    reconnect_delay,
)
from tests.test_cli import assert_one_line_error


def aiotedge(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "aiotedge", *args], capture_output=True,
                          text=True, timeout=90, check=False)


#: bound for one awaited event; never a synchronisation
TIMEOUT = 15.0


@pytest.fixture
def one_shot_commands(generated_photos, split3) -> dict[str, list[str]]:
    return {
        "status": ["status"],
        "watch": ["watch", "--count", "1"],
        "camera": ["camera", "--images", str(generated_photos), "--frames", "1"],
        "run": ["run", "--manifest", str(split3.directory), "--images", str(generated_photos)],
    }


@pytest.mark.parametrize("command", ["status", "watch", "camera", "run"])
def test_a_one_shot_command_says_at_once_that_nothing_listens(one_shot_commands, command):
    port = free_port()  # nothing listens there
    result = aiotedge(*one_shot_commands[command], "--broker", f"127.0.0.1:{port}")
    assert_one_line_error(
        result, f"cannot use the broker at mqtt://127.0.0.1:{port}: connection refused: "
                f"nothing listens on 127.0.0.1:{port}")


def test_a_host_name_that_does_not_resolve_is_named():
    result = aiotedge("status", "--broker", "no-such-broker.invalid")
    assert_one_line_error(result, "cannot use the broker at mqtt://no-such-broker.invalid:1883: "
                                  "cannot resolve the host name 'no-such-broker.invalid'")


@pytest.fixture
def secure(secure_broker, pki, passwords):
    """A broker running the shipped secure.conf, and the flags that log in to it as the
    watcher (with `password` the watcher's password file, or another one)."""
    broker = secure_broker()

    def flags(*, tls_port: bool = True, scheme: str = "mqtts", ca: Path | None = None,
              password: Path | None = None) -> list[str]:
        port = broker.tls_port if tls_port else broker.port
        ca_flags = ["--ca-file", str(ca or pki / "ca.crt")] if scheme == "mqtts" else []
        return ["--broker", f"{scheme}://127.0.0.1:{port}", *ca_flags, "--username", "watcher",
                "--password-file", str(password or passwords["watcher"])]

    return broker, flags


def test_the_secure_broker_is_usable_with_the_login_flags(secure):
    _, flags = secure
    result = aiotedge("status", "--pipeline", "greenhouse", *flags())
    assert result.returncode == 1, result.stderr  # no node, but the broker answered
    assert result.stdout.splitlines()[-1] == "no node has reported on this pipeline"


def test_a_wrong_password_is_named(secure, tmp_path):
    broker, flags = secure
    wrong = tmp_path / "wrong.password"
    wrong.write_text("not-the-password\n")
    result = aiotedge("watch", "--count", "1", *flags(password=wrong))
    assert_one_line_error(
        result, f"cannot use the broker at mqtts://127.0.0.1:{broker.tls_port}: the broker "
                "refused the connection: Not authorized (check [broker] username and "
                "password_file, or --username and --password-file")


def test_tls_spoken_to_a_plain_port_is_named(secure):
    _, flags = secure
    result = aiotedge("status", *flags(tls_port=False))
    assert_one_line_error(result, "then set tls = false, or mqtt:// in --broker)")


def test_plain_mqtt_spoken_to_a_tls_port_is_named(secure):
    _, flags = secure
    result = aiotedge("status", *flags(scheme="mqtt"))
    assert_one_line_error(result, "the broker closed the connection without answering (a TLS "
                                  "port? then set tls = true, or mqtts:// in --broker)")


def test_a_ca_that_did_not_sign_the_brokers_certificate_is_named(secure, pki, tmp_path):
    _, flags = secure
    other_ca = tmp_path / "other-ca.crt"
    other_ca.write_text((pki / "client.crt").read_text())  # a certificate, not the broker's CA
    result = aiotedge("status", *flags(ca=other_ca))
    assert_one_line_error(result, "TLS certificate check failed: ")
    assert result.stderr.rstrip().endswith("(check [broker] ca_file, or --ca-file)")


@pytest.mark.parametrize(("address", "message"), [
    ("mqtt://127.0.0.1:abc", "flags: --broker 'mqtt://127.0.0.1:abc': port 'abc' must be a "
                             "number from 1 to 65535"),
    ("host:abc", "flags: --broker 'host:abc': port 'abc' must be a number"),
    ("http://broker.lan", "flags: --broker 'http://broker.lan': unknown scheme 'http://'"),
])
def test_a_broker_address_of_no_accepted_form_is_refused_before_connecting(address, message):
    assert_one_line_error(aiotedge("status", "--broker", address), message)


def test_the_reconnect_delay_stays_short_until_failures_repeat():
    """A broker restart takes a few seconds: a daemon retries every second for a while (and
    is back about a second after the broker), then backs off to the maximum."""
    quick = [reconnect_delay(n) for n in range(RECONNECT_QUICK_TRIES + 1)]
    assert quick == [RECONNECT_MIN_DELAY] * (RECONNECT_QUICK_TRIES + 1)
    later = [reconnect_delay(n) for n in range(RECONNECT_QUICK_TRIES, RECONNECT_QUICK_TRIES + 8)]
    assert later == sorted(later) and later[-1] == RECONNECT_MAX_DELAY
    assert reconnect_delay(10**6) == RECONNECT_MAX_DELAY


def test_status_of_a_pipeline_nobody_runs_says_so_rather_than_that_the_broker_is_silent(secure):
    """The shipped ACL grants the probe topic `status` publishes to only on its pipeline:
    mosquitto answers the publish with PUBACK 0x87, and nothing of that pipeline came."""
    _, flags = secure
    result = aiotedge("status", "--pipeline", "greenhuose", *flags())
    assert_one_line_error(
        result, "no node of pipeline 'greenhuose' has reported to this login (a typo in "
                "--pipeline?); and the broker refused user watcher the publish to "
                "aiotedge/greenhuose/probe/status-")
    assert result.stderr.rstrip().endswith(
        "(Not authorized), as an ACL does on a pipeline it does not name")


def test_status_where_this_login_may_read_but_not_probe_says_access_denied(tmp_path):
    """An ACL that lets a login read the pipeline but not write the probe topic `status`
    publishes to (mosquitto 2.0's acl_file grants every subscription; a denied publish gets
    PUBACK 0x87): the nodes are there, so the cause is the login's rights."""
    acl = tmp_path / "aiotedge.acl"
    acl.write_text("topic read aiotedge/#\ntopic write aiotedge/shelf/availability/+\n")
    with LocalBroker(extra_config=f"acl_file {acl}\n") as broker:
        writer = MqttSession(broker.address, "s0")
        writer.start()
        assert writer.wait_connected(10)
        writer.publish("aiotedge/shelf/availability/s0", "online", qos=1,
                       retain=True).wait_for_publish(10)
        writer.stop()
        result = aiotedge("status", "--broker", f"127.0.0.1:{broker.port}", "--pipeline",
                          "shelf")
    assert_one_line_error(result, "pipeline shelf: access denied: the broker refused this "
                                  "client the publish to aiotedge/shelf/probe/status-")
    assert result.stderr.rstrip().endswith(
        "(Not authorized) (the broker's ACL must let this login read aiotedge/shelf/# and "
        "write aiotedge/shelf/probe/<client id>)")


@pytest.fixture
def silent_server():
    """A TCP listener that accepts connections and never says a word (not an MQTT broker)."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        accepted: list[socket.socket] = []
        stop = threading.Event()

        def accept() -> None:
            server.settimeout(0.2)
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    accepted.append(server.accept()[0])

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        yield server.getsockname()[1]
        stop.set()
        thread.join()
        for connection in accepted:
            connection.close()


def test_a_daemon_says_that_a_silent_listener_gave_no_connack_and_does_not_blame_tls(
        silent_server):
    """paho gives up waiting for the CONNACK after the keepalive (a second here)."""
    broker = BrokerConfig("127.0.0.1", silent_server, keepalive=1)
    session = MqttSession(broker, "stage0-pi")
    session.start()
    try:
        assert session.first_attempt(TIMEOUT) == (
            f"connected to 127.0.0.1:{silent_server} but no MQTT answer (CONNACK) within 1 s: "
            "is it an MQTT broker, and the right port?")
    finally:
        session.stop()


def test_a_command_says_that_a_silent_listener_gave_no_connack(silent_server):
    session = MqttSession(BrokerConfig("127.0.0.1", silent_server), "status-1", one_shot=True)
    with pytest.raises(BrokerError) as raised:
        connect_once(session, timeout=1)
    assert str(raised.value) == (
        f"cannot use the broker at mqtt://127.0.0.1:{silent_server}: connected to "
        f"127.0.0.1:{silent_server} but no MQTT answer (CONNACK) within 1 s: is it an MQTT "
        "broker, and the right port?")
