"""Checks `make demo`'s output against the lines README.md shows for it.

The README's block under "What `make demo` does" lists one line per photo (photo, camera#frame,
label, score, latency) and the run's summary. Every photo's line must come out with the same
frame, label and score (the latency is the machine's), and the summary must count every photo
and no loss.

    python3 .ci/check_demo.py README.md demo.log
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

PREDICTION = re.compile(r"^(\S+)\s+(\S+#\d+) (.+) (\d\.\d{3}) [\d.]+ ms$")
SUMMARY = re.compile(r"^(\d+) frames in .* (\d+) lost(;|$)")


def readme_lines(readme: str) -> list[str]:
    """The lines of README.md's section on `make demo`."""
    return readme.split("## What `make demo` does", 1)[1].split("\n## ", 1)[0].splitlines()


def main(readme_path: str, output_path: str) -> int:
    expected = [match.groups() for line in readme_lines(Path(readme_path).read_text())
                if (match := PREDICTION.match(line))]
    lines = Path(output_path).read_text(errors="replace").splitlines()
    printed = {match.groups() for line in lines if (match := PREDICTION.match(line))}
    missing = [" ".join(fields) for fields in expected if fields not in printed]
    summaries = [match for line in lines if (match := SUMMARY.match(line))]
    problems = [f"README line not printed: {line}" for line in missing]
    if not summaries:
        problems.append("no summary line (N frames in ... N lost)")
    elif (int(summaries[-1][1]), int(summaries[-1][2])) != (len(expected), 0):
        problems.append(f"summary says {summaries[-1][0]!r}: expected {len(expected)} frames, "
                        "0 lost")
    for problem in problems:
        print(f"make demo: {problem}", file=sys.stderr)
    if not problems:
        print(f"make demo printed the README's {len(expected)} prediction lines and its summary")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
