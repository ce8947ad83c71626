"""A broker set up as shipped for security: the shipped mosquitto configs pointed at throwaway
certificates and password files, the users of the shipped ACL, and a bare MQTT v5 probe that
reports every CONNACK, SUBACK, PUBACK and message. The broker security tests and the reliability
suite's secure rows both run on it."""

from __future__ import annotations

import queue
import re
import secrets
import ssl
import subprocess
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from support.paths import REPO

MOSQUITTO_CONFIGS = REPO / "configs" / "mosquitto"
SECURE_CONF = MOSQUITTO_CONFIGS / "secure.conf"
DYNSEC_CONF = MOSQUITTO_CONFIGS / "secure-dynsec.conf"
PLAIN_CONF = MOSQUITTO_CONFIGS / "aiotedge.conf"
ACL = MOSQUITTO_CONFIGS / "aiotedge.acl"
#: upper bound for one awaited event (a CONNACK, a PUBACK, a message); never a synchronisation
TIMEOUT = 15.0


def acl_users() -> list[str]:
    return re.findall(r"^user\s+(\S+)\s*$", ACL.read_text(), flags=re.MULTILINE)


def conf_settings(path: Path) -> dict[str, list[str]]:
    """A mosquitto config's settings: key -> its values, in order."""
    found: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.strip().partition(" ")
            found.setdefault(key, []).append(value.strip())
    return found


# -- throwaway certificates, and the shipped configs pointed at them ----------------------------


def openssl(directory: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)


def issue(directory: Path, name: str, extensions: str) -> None:
    """`name`.crt and .key, signed by the CA in `directory`."""
    (directory / f"{name}.ext").write_text(extensions)
    openssl(directory, "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.csr")
    openssl(directory, "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.crt")


def write_pki(directory: Path) -> Path:
    """A CA, the broker's certificate (for broker.lan, localhost and 127.0.0.1), a client's."""
    openssl(directory, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-days", "2", "-subj", "/CN=aiotedge test CA",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout", "ca.key", "-out", "ca.crt")
    common = ("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
              "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n")
    issue(directory, "broker", common + "extendedKeyUsage=serverAuth\n"
          "subjectAltName=DNS:broker.lan,DNS:localhost,IP:127.0.0.1\n")
    issue(directory, "client", common + "extendedKeyUsage=clientAuth\n")
    return directory


def shipped_conf(path: Path, pki: Path, tls_port: int, require_certificate: bool,
                 files: dict[str, str]) -> str:
    """A shipped config with its listener, certificates and `files` pointed at throwaway ones;
    everything else as shipped (LocalBroker adds where persistence goes, as Debian's
    mosquitto.conf does)."""
    text = path.read_text()
    replacements = {
        "listener 8883": f"listener {tls_port} 127.0.0.1",
        "/etc/mosquitto/certs/broker.crt": str(pki / "broker.crt"),
        "/etc/mosquitto/certs/broker.key": str(pki / "broker.key"),
        "/etc/mosquitto/certs/ca.crt": str(pki / "ca.crt"),
        **files,
    }
    if require_certificate:
        replacements["require_certificate false"] = "require_certificate true"
    for old, new in replacements.items():
        assert old in text, f"{path.name} no longer says {old!r}: update this test"
        text = text.replace(old, new)
    return text


def secure_conf(pki: Path, broker_passwords: Path, tls_port: int,
                require_certificate: bool = False, acl: Path = ACL) -> str:
    """secure.conf, with the shipped ACL (or `acl`) and a throwaway password file."""
    return shipped_conf(SECURE_CONF, pki, tls_port, require_certificate, {
        "/etc/mosquitto/aiotedge.passwd": str(broker_passwords),
        "/etc/mosquitto/aiotedge.acl": str(acl),
    })


def dynsec_conf(pki: Path, dynsec_file: Path, tls_port: int,
                require_certificate: bool = False) -> str:
    """secure-dynsec.conf, with a dynamic-security file written by scripts/dynsec-json.py."""
    return shipped_conf(DYNSEC_CONF, pki, tls_port, require_certificate, {
        "/etc/mosquitto/aiotedge-dynsec.json": str(dynsec_file),
    })


# -- a bare MQTT v5 client ----------------------------------------------------------------------


class Probe:
    """A bare MQTT v5 client that reports every CONNACK, SUBACK, PUBACK and message.

    TLS trusting the test CA, unless `pki` is None (then plain MQTT).
    """

    def __init__(self, port: int, pki: Path | None, user: str | None = None,
                 password: str | None = None, client_cert: bool = False, *,
                 client_id: str | None = None) -> None:
        self.events: queue.Queue[tuple] = queue.Queue()
        self.messages: queue.Queue[tuple[str, str]] = queue.Queue()
        self.port = port
        self.client_id = client_id or f"probe-{user}-{secrets.token_hex(3)}"
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5,
                                  client_id=self.client_id)
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

    def suback(self, topic: str) -> ReasonCode:
        """Subscribe at QoS 1: the SUBACK's reason code."""
        _, mid = self.client.subscribe(topic, qos=1)
        kind, acked, codes = self.events.get(timeout=TIMEOUT)
        assert (kind, acked) == ("suback", mid)
        return codes[0]

    def subscribe(self, topic: str) -> None:
        code = self.suback(topic)
        assert not code.is_failure, f"SUBACK {code} for {topic}"

    def publish(self, topic: str, payload: str, retain: bool = False) -> ReasonCode:
        """QoS 1: returns the PUBACK's reason code."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        kind, acked, code = self.events.get(timeout=TIMEOUT)
        assert (kind, acked) == ("puback", info.mid)
        return code

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def refused(code: ReasonCode | str) -> bool:
    return isinstance(code, str) or code.is_failure
