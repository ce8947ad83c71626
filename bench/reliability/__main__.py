"""`python -m bench.reliability [--fast] [--only NAME ...]`: the suite, into docs/reliability.md
(rows of scenarios not run now are kept from its rows file, docs/reliability-rows.json).

The full run (`make reliability`) takes about an hour and a half, of which the soak feeds for
an hour (`--soak-minutes` shortens it); `--fast` is what the test suite runs, in a few minutes.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from bench.reliability import document
from bench.reliability.suite import SCENARIOS, run_scenario, scenario
from bench.reliability.workload import FAST, FULL, Workload

#: libraries whose routine messages (reconnects, frames given up on) would drown the report
QUIET_LOGGERS = (
    "paho", "aiotedge.nodes.mqtt.session", "aiotedge.nodes.daemons.camera",
    "aiotedge.nodes.mqtt.broker",
)


def main(argv: list[str] | None = None) -> int:
    names = [s.name for s in SCENARIOS]
    parser = argparse.ArgumentParser(prog="python -m bench.reliability",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true",
                        help="small counts, the test CNN only, no 10 s partition")
    parser.add_argument("--only", nargs="+", choices=names, metavar="NAME",
                        help=f"run these scenarios only: {', '.join(names)}")
    parser.add_argument("--no-shared", action="store_true",
                        help="use the small test CNN even when ../shared/data is present")
    parser.add_argument("--write", type=Path, default=document.DOCUMENT,
                        help="where to write the report (default docs/reliability.md)")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    parser.add_argument("--soak-minutes", type=float, metavar="MIN",
                        help="feed the soak for this long (full run: 60 minutes)")
    parser.add_argument("--note", default="",
                        help="a sentence about this run for the report (what else ran beside)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)

    # SIGTERM unwinds like an exception, so every scenario stops what it started
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    mode = FAST if args.fast else FULL
    if args.soak_minutes:
        mode = replace(mode, soak_seconds=60 * args.soak_minutes,
                       soak_fps=mode.soak_fps or FULL.soak_fps,
                       long_timeout=max(mode.long_timeout, 60 * args.soak_minutes + 1200))
    artifacts = None if args.no_write else args.write.parent
    started = time.monotonic()
    chosen = [scenario(name) for name in args.only] if args.only else list(SCENARIOS)
    with tempfile.TemporaryDirectory(prefix="aiotedge-rel-data-") as scratch:
        workload = Workload.build(Path(scratch), shared=not args.no_shared and not args.fast)
        results = [(each, run_scenario(each, mode, workload, artifacts)) for each in chosen]
    seconds = time.monotonic() - started
    print(document.rows_table([row for _, row in results]))
    if not args.no_write:
        path = document.write(results, mode, workload, seconds, args.write, note=args.note)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
