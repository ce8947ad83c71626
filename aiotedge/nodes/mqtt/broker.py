"""A private mosquitto on a free loopback port, for `aiotedge run`, the demo and the tests."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time
from importlib import resources
from pathlib import Path

from aiotedge.config.sections import BrokerConfig
from aiotedge.contracts.errors import BrokerError

log = logging.getLogger(__name__)

INSTALL_HINT = "install it with: sudo apt-get install mosquitto"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def mosquitto_binary() -> str:
    for candidate in (shutil.which("mosquitto"), "/usr/sbin/mosquitto"):
        if candidate and Path(candidate).is_file():
            return candidate
    raise BrokerError(f"mosquitto is not installed; {INSTALL_HINT}")


def default_config() -> str:
    return resources.files("aiotedge").joinpath("mosquitto.conf").read_text()


class LocalBroker:
    """Starts mosquitto on 127.0.0.1; `stop()` kills it, `start()` brings it back on the same port.

    `extra_config` is appended to the shipped settings (e.g. an ACL or a password file).
    """

    def __init__(self, port: int | None = None, extra_config: str = "") -> None:
        self.port = port or free_port()
        self._workdir = Path(tempfile.mkdtemp(prefix="aiotedge-broker-"))
        self.config_path = self._workdir / "mosquitto.conf"
        self.log_path = self._workdir / "mosquitto.log"
        # Started as root, mosquitto would become the `mosquitto` user, who cannot write its
        # persistence file into this private folder: a private broker runs as whoever runs it.
        own_user = "user root\n" if os.geteuid() == 0 else ""
        self.config_path.write_text(
            f"{default_config()}\npersistence_location {self._workdir}/\n{own_user}"
            f"{extra_config}\nlistener {self.port} 127.0.0.1\n"
        )
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> BrokerConfig:
        return BrokerConfig("127.0.0.1", self.port)

    def start(self, timeout: float = 10.0) -> LocalBroker:
        log_file = open(self.log_path, "ab")  # noqa: SIM115 -- lives as long as the process
        self._process = subprocess.Popen(
            [mosquitto_binary(), "-c", str(self.config_path)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        log_file.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                output = self.log_path.read_text()
                raise BrokerError(f"mosquitto exited with {self._process.returncode}:\n{output}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
            except OSError:
                time.sleep(0.02)
                continue
            log.info("mosquitto listening on 127.0.0.1:%d", self.port)
            return self
        self.stop()
        raise BrokerError(f"mosquitto did not listen on port {self.port} within {timeout} s")

    def stop(self, kill: bool = False) -> None:
        if self._process is None:
            return
        if kill:
            self._process.kill()
        else:
            self._process.terminate()
        self._process.wait(timeout=10)
        self._process = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._workdir, ignore_errors=True)

    def __enter__(self) -> LocalBroker:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.close()
