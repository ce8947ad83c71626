"""The one family of errors a user can do something about.

Every `AiotedgeError` carries a message written for the person at the terminal or reading
`journalctl`: what is wrong, where (file, key, flag, frame), and what to do. Both command lines
print it as one line and exit with status 2; any other exception is a bug and keeps its
traceback.
"""

from __future__ import annotations


class AiotedgeError(Exception):
    """A problem the user can fix, told in one line."""


class ConfigError(AiotedgeError):
    """A node's config file or flags cannot be used: names the file (or flag) and the key."""


class ManifestError(AiotedgeError):
    """The manifest or a segment file does not match what the manifest promises."""


class ModelError(AiotedgeError):
    """A model or segment file that cannot be read, cut or loaded as asked."""


class ProfileError(AiotedgeError):
    """A profile file is unreadable or does not belong to the model it is used with."""


class WireError(AiotedgeError):
    """A message that cannot be accepted; `frame_id` is set when it carried a valid one."""

    def __init__(self, reason: str, frame_id: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.frame_id = frame_id


class ImageError(AiotedgeError):
    """The bytes are not a photo stage 0 accepts."""


class BrokerError(AiotedgeError):
    """The broker cannot be reached or used: refused, unreachable, not installed."""


class PipelineError(AiotedgeError):
    """A pipeline on this machine (`aiotedge run`) could not start or stopped answering."""


class MissingExtraError(AiotedgeError):
    """A feature needs an optional extra (setup.cfg's extras_require) this install lacks."""

    def __init__(self, feature: str, extra: str, reason: str) -> None:
        super().__init__(f"{feature} needs the '{extra}' extra ({reason}): "
                         f"pip install 'aiotedge[{extra}]'")
        self.extra = extra


class ReleaseError(AiotedgeError):
    """A release (contracts/release.py) that cannot be used: malformed, a bad hash, or one
    this board cannot run; the message is the reason a node reports."""
