"""A broker with users and the shipped ACL (configs/mosquitto/aiotedge.acl), as deployed.

The ACL names the pipeline "greenhouse"; the harness's pipeline gets its own name, so every
"greenhouse" is replaced by it, as docs/deploy-pi-cluster.md tells users to. Every user of the
ACL gets a random password.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from aiotedge.config.schema import BrokerConfig
from tests.conftest import REPO
from tests.security import acl_users

ACL = REPO / "configs" / "mosquitto" / "aiotedge.acl"
SHIPPED_PIPELINE = "greenhouse"


class SecureSetupError(RuntimeError):
    pass


@dataclass(frozen=True)
class Credentials:
    """Mosquitto's password file and ACL, and one password file per user (for node configs)."""

    directory: Path

    def password_file(self, user: str) -> Path:
        return self.directory / f"{user}.password"

    @property
    def broker_config(self) -> str:
        """What to add to the broker's config: no anonymous clients, passwords, the ACL."""
        return (f"allow_anonymous false\npassword_file {self.directory / 'passwd'}\n"
                f"acl_file {self.directory / 'aiotedge.acl'}\n")

    def login(self, address: BrokerConfig, user: str) -> BrokerConfig:
        return BrokerConfig(address.host, address.port, username=user,
                            password_file=str(self.password_file(user)))

    def node_config(self, user: str, name: str) -> Path:
        """A node's TOML config logging in as `user` (flags give the rest)."""
        path = self.directory / f"{name}.toml"
        path.write_text(f'[broker]\nusername = "{user}"\n'
                        f'password_file = "{self.password_file(user)}"\n')
        return path


def credentials(directory: Path, pipeline: str) -> Credentials:
    """Passwords for every user of the shipped ACL, and the ACL for `pipeline`."""
    tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    if not Path(tool).is_file():
        raise SecureSetupError("mosquitto_passwd is not installed (it comes with mosquitto)")
    directory.mkdir(parents=True, exist_ok=True)
    for number, user in enumerate(acl_users()):
        password = secrets.token_urlsafe(12)
        create = ["-c"] if number == 0 else []
        subprocess.run([tool, *create, "-b", str(directory / "passwd"), user, password],
                       check=True, capture_output=True)
        (directory / f"{user}.password").write_text(password + "\n")
    (directory / "aiotedge.acl").write_text(ACL.read_text().replace(SHIPPED_PIPELINE, pipeline))
    return Credentials(directory)
