"""The files a node's config names: read (passwords) or checked before the node connects
(TLS certificates and keys), each problem named with its key and file."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Protocol

from aiotedge.contracts.errors import ConfigError


class BrokerFiles(Protocol):
    """The [broker] keys that name files (sections.BrokerConfig has them); a protocol, so that
    the sections, which read passwords with this module, are not imported back."""

    @property
    def tls(self) -> bool: ...
    @property
    def password_file(self) -> str | None: ...
    @property
    def ca_file(self) -> str | None: ...
    @property
    def cert_file(self) -> str | None: ...
    @property
    def key_file(self) -> str | None: ...


def read_secret_file(filename: str, where: str) -> str:
    """A password kept in a file (a systemd credential, a mode 0640 file), without its newline."""
    try:
        return Path(filename).read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read {where}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{where} is not UTF-8 text") from exc


def check_broker_files(broker: BrokerFiles, source: str) -> None:
    """Open the files the [broker] keys name as paho will, each problem named with its key."""
    for key in ("password_file", "ca_file", "cert_file", "key_file"):
        filename = getattr(broker, key)
        if filename is not None:
            _check_readable(filename, f"{source}: key 'broker.{key}'")
    if broker.tls:
        _check_certificates(broker, source)


def _check_readable(filename: str, where: str) -> None:
    """Opening is the test: permissions, ACLs and the service's sandbox all count."""
    try:
        with open(filename, "rb"):
            pass
    except FileNotFoundError:
        raise ConfigError(f"{where}: {filename} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {filename}: {exc.strerror}") from None


class _EncryptedKeyError(Exception):
    pass


def _refuse_passphrase() -> bytes:
    """Stands in for OpenSSL's passphrase prompt, which a daemon cannot answer."""
    raise _EncryptedKeyError


def _check_certificates(broker: BrokerFiles, source: str) -> None:
    """Load the CA, the client certificate and its key as paho's tls_set() will."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # a certificate (chain) file loads as CA certificates: the check that it holds one
    for key in ("ca_file", "cert_file"):
        filename = getattr(broker, key)
        if filename is not None:
            try:
                context.load_verify_locations(filename)
            except ssl.SSLError:
                raise ConfigError(
                    f"{source}: key 'broker.{key}': {filename} holds no PEM certificate"
                ) from None
    if broker.cert_file is None:
        return
    # without key_file the key is read from cert_file (ssl's rule, which paho follows)
    key = "key_file" if broker.key_file else "cert_file"
    filename = getattr(broker, key)
    where = f"{source}: key 'broker.{key}': {filename}"
    try:
        context.load_cert_chain(broker.cert_file, broker.key_file, password=_refuse_passphrase)
    except _EncryptedKeyError:
        raise ConfigError(
            f"{where} is encrypted; give the key without a passphrase, readable by the node only"
        ) from None
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise ConfigError(f"{where} is not the key of {broker.cert_file}") from None
        hint = "" if broker.key_file else " (set key_file)"
        raise ConfigError(f"{where} holds no PEM private key{hint}") from None
