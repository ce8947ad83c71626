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


def command_line(program: str | None = None) -> str:
    """How this run was started; `program` names it when sys.argv[0] would be a full path
    (`python -m package`)."""
    return " ".join(shlex.quote(a) for a in [program or f"python {sys.argv[0]}", *sys.argv[1:]])


def write_section(heading: str, body: str, program: str | None = None) -> None:
    """Replace (or append) `## heading` in docs/benchmarks.md with `body`; `program` names
    the command as `command_line` takes it."""
    text = BENCHMARKS.read_text() if BENCHMARKS.exists() else PREAMBLE
    section = (
        f"## {heading}\n\n`{command_line(program)}` on {machine()}\n\n{body.strip()}\n\n"
    )
    pattern = re.compile(rf"^## {re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _m: section, text)
    else:
        text = text.rstrip() + "\n\n" + section
    BENCHMARKS.write_text(text.rstrip() + "\n")


def table(header: tuple[str, ...], rows: list[tuple[object, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
