"""The optional extras (setup.cfg's extras_require): a feature imports its library through
`import_extra` when it is used, so a plain `pip install .` runs everything else and a feature
whose extra is missing says in one line which one to install."""

from __future__ import annotations

import importlib
from types import ModuleType

from aiotedge.contracts.errors import MissingExtraError


def import_extra(module: str, *, extra: str, feature: str) -> ModuleType:
    """`module`, or a MissingExtraError naming `feature`, `extra` and the pip command."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        reason = " ".join(str(exc).split())  # one line, whatever the library's message
        raise MissingExtraError(feature, extra, reason) from None
