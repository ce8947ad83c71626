"""A broker with users and the shipped ACL (configs/mosquitto/aiotedge.acl), as deployed; or
a shipped secure config whole (secure.conf with the ACL, secure-dynsec.conf with the file
scripts/dynsec-json.py writes) on a TLS listener of its own, with throwaway certificates.

The ACL names the pipeline "greenhouse"; the harness's pipeline gets its own name, so every
"greenhouse" is replaced by it, as docs/deploy-pi-cluster.md tells users to. Every user of the
ACL gets a random password.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from aiotedge.config.sections import BrokerConfig
from aiotedge.nodes.mqtt.broker import free_port
from support.paths import REPO
from support.security import acl_users, dynsec_conf, secure_conf, write_pki

ACL = REPO / "configs" / "mosquitto" / "aiotedge.acl"
SHIPPED_PIPELINE = "greenhouse"
DYNSEC_SCRIPT = REPO / "scripts" / "dynsec-json.py"
#: the shipped secure configs: setup name -> what it is
SECURE_SETUPS = {"acl": "secure.conf + ACL", "dynsec": "secure-dynsec.conf"}
#: the harness's own user under a shipped secure config: it reads what a subscriber of the
#: pipeline reads (a read-only tool's rights); `watcher` is then free to be the hostile user
OBSERVER = "observer"


class SecureSetupError(RuntimeError):
    pass


@dataclass(frozen=True)
class Credentials:
    """Mosquitto's password file and ACL, and one password file per user (for node configs)."""

    directory: Path
    #: a shipped secure config whole: its text, and its TLS listener's port (every node, the
    #: camera and the observer connect there, with the CA of `directory`/pki)
    config: str | None = None
    tls_port: int | None = None

    def password_file(self, user: str) -> Path:
        return self.directory / f"{user}.password"

    @property
    def broker_config(self) -> str:
        """What to add to the broker's config: no anonymous clients, passwords, the ACL (or
        the shipped secure config)."""
        if self.config is not None:
            return self.config
        return (f"allow_anonymous false\npassword_file {self.directory / 'passwd'}\n"
                f"acl_file {self.directory / 'aiotedge.acl'}\n")

    @property
    def ca_file(self) -> Path:
        return self.directory / "pki" / "ca.crt"

    @property
    def tls_address(self) -> str | None:
        """The TLS listener as a `--broker` address, where there is one."""
        return f"mqtts://127.0.0.1:{self.tls_port}" if self.tls_port else None

    def login(self, address: BrokerConfig, user: str) -> BrokerConfig:
        if self.tls_port:
            return BrokerConfig("127.0.0.1", self.tls_port, username=user, tls=True,
                                ca_file=str(self.ca_file),
                                password_file=str(self.password_file(user)))
        return BrokerConfig(address.host, address.port, username=user,
                            password_file=str(self.password_file(user)))

    def node_config(self, user: str, name: str) -> Path:
        """A node's TOML config logging in as `user` (flags give the rest)."""
        path = self.directory / f"{name}.toml"
        trust = f'tls = true\nca_file = "{self.ca_file}"\n' if self.tls_port else ""
        path.write_text(f'[broker]\nusername = "{user}"\n'
                        f'password_file = "{self.password_file(user)}"\n{trust}')
        return path


def credentials(directory: Path, pipeline: str, extra_users: tuple[str, ...] = ()) -> Credentials:
    """Passwords for every user of the shipped ACL (and `extra_users`), and the ACL for
    `pipeline`."""
    tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    if not Path(tool).is_file():
        raise SecureSetupError("mosquitto_passwd is not installed (it comes with mosquitto)")
    directory.mkdir(parents=True, exist_ok=True)
    for number, user in enumerate([*acl_users(), *extra_users]):
        password = secrets.token_urlsafe(12)
        create = ["-c"] if number == 0 else []
        subprocess.run([tool, *create, "-b", str(directory / "passwd"), user, password],
                       check=True, capture_output=True)
        (directory / f"{user}.password").write_text(password + "\n")
    (directory / "aiotedge.acl").write_text(ACL.read_text().replace(SHIPPED_PIPELINE, pipeline))
    return Credentials(directory)


def shipped_setup(directory: Path, pipeline: str, setup: str, stages: int) -> Credentials:
    """`setup` of SECURE_SETUPS as shipped, for `pipeline` of `stages` stages (those of the
    shipped ACL: its users stage0..stage4 must all have a part), on a TLS
    listener of its own; the harness's observer gets a read-only user of its own (OBSERVER)."""
    if shutil.which("openssl") is None:
        raise SecureSetupError("openssl is not installed (it makes the test certificates)")
    plain = credentials(directory, pipeline, extra_users=(OBSERVER,))
    (directory / "pki").mkdir()
    pki = write_pki(directory / "pki")
    tls_port = free_port()
    passwd = directory / "passwd"
    if setup == "acl":
        acl = directory / "aiotedge.acl"
        base = f"aiotedge/{pipeline}"
        acl.write_text(f"{acl.read_text()}\nuser {OBSERVER}\ntopic read aiotedge/#\n"
                       f"topic read aiotedge-frames/{pipeline}/#\ntopic read $SYS/#\n"
                       f"topic readwrite {base}/status-probe/#\n")
        config = secure_conf(pki, passwd, tls_port, acl=acl)
    else:
        out = directory / "aiotedge-dynsec.json"
        done = subprocess.run(
            [sys.executable, str(DYNSEC_SCRIPT), "--pipeline", pipeline, "--stages",
             str(stages), "--password-file", str(passwd), "--out", str(out),
             "--homeassistant", "homeassistant", "--watcher", "watcher", "--watcher", OBSERVER],
            capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SecureSetupError(f"dynsec-json.py: {done.stderr.strip()}")
        config = dynsec_conf(pki, out, tls_port)
    return Credentials(plain.directory, config=config, tls_port=tls_port)
