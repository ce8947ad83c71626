"""Shared fixtures: the real data in ../shared, models the tests build, a real mosquitto, and a
mosquitto running a shipped secure config with throwaway certificates and passwords.

Fixtures only: what they build with, and what tests and benchmarks share, is in support/."""

from __future__ import annotations

import secrets
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from aiotedge.nodes.mqtt.broker import LocalBroker
    from support.security import Probe


@pytest.fixture
def broker():
    """A real mosquitto on a free loopback port; tests may `stop(kill=True)` and `start()` it."""
    from aiotedge.contracts.errors import BrokerError
    from aiotedge.nodes.mqtt.broker import LocalBroker

    try:
        local = LocalBroker().start()
    except BrokerError as exc:
        pytest.fail(f"{exc} (`make test` installs it)")
    yield local
    local.close()


@pytest.fixture
def fleet(broker, tmp_path):
    """Three `aiotedge node` daemons (support/fleet.py's NODES) on the broker, announced."""
    from support.fleet import NODES, Fleet

    fleet = Fleet(broker, tmp_path)
    for node in NODES:
        fleet.start(node)
    fleet.wait(lambda r: set(NODES) <= set(r), "every node announced")
    yield fleet
    fleet.stop()


@pytest.fixture(scope="session")
def generated_frames(generated_photos) -> list[tuple[str, bytes]]:
    """(name, bytes) of the generated photos, as a camera sends them."""
    from aiotedge.media.image import list_images, read_photo

    return [(path.name, read_photo(path)) for path in list_images(generated_photos)]


# -- a broker running a shipped secure config (support/security.py has the rest) -------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """A CA, the broker's certificate (for broker.lan, localhost and 127.0.0.1), a client's."""
    from support.security import write_pki

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (sudo apt-get install openssl)")
    return write_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def broker_users() -> list[str]:
    """The broker users the security tests log in as: those of the shipped ACL."""
    from support.security import acl_users

    return acl_users()


@pytest.fixture(scope="module")
def passwords(broker_users, tmp_path_factory) -> dict[str, Path]:
    """A folder with mosquitto's password file (key "") and one USER.password file per user."""
    tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    if not Path(tool).is_file():
        pytest.fail("mosquitto_passwd is not installed (sudo apt-get install mosquitto)")
    directory = tmp_path_factory.mktemp("passwords")
    broker_file = directory / "aiotedge.passwd"
    files = {"": broker_file}
    for number, user in enumerate(broker_users):
        password = secrets.token_urlsafe(12)
        create = ["-c"] if number == 0 else []
        subprocess.run([tool, *create, "-b", str(broker_file), user, password], check=True)
        files[user] = directory / f"{user}.password"
        files[user].write_text(password + "\n")
    return files


@pytest.fixture(scope="module")
def secure_config(pki, passwords) -> Callable[..., str]:
    """`(tls_port, require_certificate=False) -> config text` of the broker `secure_broker`
    starts: secure.conf with its ACL (test_security_dynsec.py overrides it)."""
    from support.security import secure_conf

    return lambda tls_port, require_certificate=False: secure_conf(
        pki, passwords[""], tls_port, require_certificate)


@pytest.fixture
def secure_broker(secure_config) -> Iterator[Callable[..., LocalBroker]]:
    """Factory: a mosquitto running `secure_config`; `.tls_port` is its TLS listener.

    LocalBroker also adds a plain loopback listener, under the same users and rights.
    """
    from aiotedge.contracts.errors import BrokerError
    from aiotedge.nodes.mqtt.broker import LocalBroker, free_port

    started = []

    def start(require_certificate: bool = False) -> LocalBroker:
        tls_port = free_port()
        local = LocalBroker(extra_config=secure_config(tls_port, require_certificate))
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


@pytest.fixture
def probes(secure_broker, pki, passwords) -> Iterator[Callable[[str], Probe]]:
    """Factory: a Probe connected over TLS to one secure broker, logged in as a broker user."""
    from support.security import Probe, refused

    broker = secure_broker()
    opened = []

    def login(user: str) -> Probe:
        probe = Probe(broker.tls_port, pki, user, passwords[user].read_text().strip())
        opened.append(probe)
        code = probe.connect()
        assert not refused(code), f"{user}: {code}"
        return probe

    yield login
    for probe in opened:
        probe.close()
