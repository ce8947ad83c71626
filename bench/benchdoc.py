"""Writing a benchmark's results into docs/benchmarks.md, one section per script.

Each script owns the section under its heading and replaces it whole, so re-running one
benchmark leaves the others' figures as they were.
"""

from __future__ import annotations

import platform
import re
import shlex
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
PREAMBLE = (
    "# Benchmarks\n\n"
    "Figures measured by the scripts in `bench/`; each section says the command that produced\n"
    "it and on what machine. Re-running a script replaces its own section only.\n"
)


def machine() -> str:
    import os

    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def command_line() -> str:
    """How this run was started: `python -m MODULE ARGS` for a module (whose sys.argv[0] is
    the file's full path), else `python SCRIPT ARGS`."""
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    program = (f"python -m {spec.name.removesuffix('.__main__')}" if spec is not None
               else f"python {sys.argv[0]}")
    return " ".join([program, *map(shlex.quote, sys.argv[1:])])


def write_section(heading: str, body: str, document: Path = BENCHMARKS) -> None:
    """Replace (or append) `## heading` in docs/benchmarks.md (or `document`) with `body`,
    after the command that made it and the machine."""
    text = document.read_text() if document.exists() else PREAMBLE
    section = (
        f"## {heading}\n\n`{command_line()}` on {machine()}\n\n{body.strip()}\n\n"
    )
    pattern = re.compile(rf"^## {re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _m: section, text)
    else:
        text = text.rstrip() + "\n\n" + section
    document.write_text(text.rstrip() + "\n")


def sections(text: str) -> dict[str, str]:
    """Each `## heading` of a document and its section (heading line included)."""
    pattern = re.compile(r"^## ([^\n]+)\n.*?(?=^## |\Z)", re.S | re.M)
    return {match.group(1): match.group(0) for match in pattern.finditer(text)}


def keep_others(old: str, new: str) -> str:
    """`new`, a document a script renders whole, followed by the sections of `old` that
    other scripts wrote into it (`write_section`), which `new` has no heading for."""
    ours = sections(new)
    kept = [section.strip() for heading, section in sections(old).items()
            if heading not in ours]
    return "\n\n".join([new.rstrip(), *kept]) + "\n"


def table(header: tuple[str, ...], rows: list[tuple[object, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
