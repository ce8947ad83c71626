"""The converter's own error: a model, a requested split or a verification input that cannot
be used as asked. Part of aiotedge's one error family, so the CLI prints it as one line."""

from __future__ import annotations

from aiotedge.contracts.errors import AiotedgeError


class ConverterError(AiotedgeError):
    """The model, the requested split or a verification input cannot be used as asked."""
