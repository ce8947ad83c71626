"""`aiotedge-convert`: analyze a model's cut points, split it into stages, verify a split.

Exit status: 0 on success, 1 when `verify` finds a difference beyond tolerance, 2 on an error
(bad arguments, unreadable model, invalid cuts, ...), reported as one line on stderr.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from aiotedge.manifest import MANIFEST_NAME, ManifestError
from converter.errors import ConverterError
from converter.graph import Graph, load_graph
from converter.planner import CostModel, Plan, check_cuts, plan_stages
from converter.split import SplitOptions, read_labels, split_model
from converter.verify import verify

PROG = "aiotedge-convert"
EXIT_DIFFERENT = 1
EXIT_ERROR = 2


def human(count: float) -> str:
    """1234567 -> '1.23M': MAC counts span k to G between test models and real ones."""
    for factor, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(count) >= factor:
            return f"{count / factor:.2f}{unit}"
    return f"{count:g}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns; the last column is not padded (it may hold long names)."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    lines = []
    for row in [header, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


def _shape(shape: Sequence[int]) -> str:
    return "x".join(str(d) for d in shape)


def analyze_report(graph: Graph) -> str:
    points = graph.cut_points
    header = (
        f"{graph.path.name if graph.path else 'model'}: {len(graph.ops)} operators, "
        f"{human(graph.total_macs)} MACs, {len(points)} valid cut points "
        "(cut after op; the tensor is all that crosses)"
    )
    rows = [
        (
            str(c.op_index),
            graph.ops[c.op_index].kind,
            _shape(c.tensor.shape),
            c.tensor.dtype,
            str(c.tensor.nbytes),
            f"{100 * c.share:.1f}%",
            c.tensor.name,
        )
        for c in points
    ]
    table = _table(("op", "kind", "shape", "dtype", "bytes", "MACs<=", "tensor"), rows)
    return header + "\n" + table


def plan_report(graph: Graph, plan: Plan) -> str:
    total = graph.total_macs
    rows = []
    for index, stage in enumerate(plan.stages):
        last = stage.last_op == len(graph.ops) - 1
        tensor = graph.tensor(graph.boundary_tensor(stage.last_op))
        rows.append(
            (
                str(index),
                f"{stage.first_op}..{stage.last_op}",
                human(stage.compute),
                f"{100 * stage.compute / total:.1f}%" if total else "-",
                f"{_shape(tensor.shape)} {tensor.dtype}",
                str(tensor.nbytes) + (" (result)" if last else ""),
            )
        )
    mean = sum(stage.cost for stage in plan.stages) / len(plan.stages)
    cuts = f"cuts after ops {','.join(map(str, plan.cuts))}" if plan.cuts else "no cut"
    return "\n".join(
        [
            f"{_count(len(plan.stages), 'stage')}, {cuts}",
            _table(("stage", "ops", "MACs", "share", "output", "bytes"), rows),
            f"bottleneck {human(plan.bottleneck)} MACs, mean {human(mean)} MACs, "
            f"balance (bottleneck/mean) {plan.balance:.3f}",
        ]
    )


def _parse_cuts(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated op indices: {text!r}") from exc


def cmd_analyze(args: argparse.Namespace) -> int:
    print(analyze_report(load_graph(args.model)))
    return 0


def cmd_split(args: argparse.Namespace) -> int:
    graph = load_graph(args.model)
    valid = [c.op_index for c in graph.cut_points]
    if args.cuts is not None:
        cuts = check_cuts(args.cuts, valid)
        if args.stages is not None and args.stages != len(cuts) + 1:
            raise ConverterError(
                f"--stages {args.stages} needs {args.stages - 1} cuts, --cuts gives {len(cuts)}"
            )
        plan = CostModel(graph.op_macs).plan(cuts)
    elif args.stages is not None:
        plan = plan_stages(graph.op_macs, valid, args.stages)
    else:
        raise ConverterError("give --stages N, --cuts i,j,... or both")
    options = SplitOptions(
        labels=read_labels(args.labels) if args.labels else None,
        mean=args.mean,
        std=args.std,
        copy_source=args.copy_source,
        num_threads=args.threads,
    )
    split_model(graph, plan, args.out, options)
    print(plan_report(graph, plan))
    print(f"wrote {_count(len(plan.stages), 'segment')} and {Path(args.out) / MANIFEST_NAME}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    results = verify(args.dir, args.images, args.model, args.threads)
    rows = [
        (
            r.image,
            "identical" if r.identical else f"max abs diff {r.max_abs_diff:g}",
            "ok" if r.ok else "DIFFERENT",
            f"top-1 {r.top1}: {r.label}",
        )
        for r in results
    ]
    print(_table(("image", "chain vs whole", "", "whole model"), rows))
    bad = sum(not r.ok for r in results)
    tolerance = results[0].tolerance
    if bad:
        print(f"{bad} of {len(results)} images differ beyond tolerance {tolerance:g}")
        return EXIT_DIFFERENT
    print(f"all {len(results)} images match (tolerance {tolerance:g})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Analyze a .tflite CNN's cut points, split it into stages, verify a split.",
        epilog="Exit status: 0 ok, 1 verify found a difference, 2 error. See docs/manifest.md.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    parser.add_argument("--threads", type=int, default=None, help="interpreter threads")
    sub = parser.add_subparsers(dest="command", required=True)

    analyze = sub.add_parser("analyze", help="print the valid cut points of a model")
    analyze.add_argument("model", type=Path, metavar="MODEL.tflite")
    analyze.set_defaults(func=cmd_analyze)

    split = sub.add_parser("split", help="split a model into stages and write manifest.json")
    split.add_argument("model", type=Path, metavar="MODEL.tflite")
    split.add_argument(
        "--stages", type=int, metavar="N", help="number of stages, cut to balance MACs"
    )
    split.add_argument("--out", type=Path, required=True, metavar="DIR")
    split.add_argument(
        "--cuts",
        type=_parse_cuts,
        metavar="i,j,...",
        help="cut after these ops instead of planning (see analyze)",
    )
    split.add_argument("--labels", type=Path, metavar="FILE", help="class names, one a line")
    split.add_argument(
        "--mean",
        type=float,
        help="preprocessing mean (default: zero point if quantized, else 127.5)",
    )
    split.add_argument(
        "--std", type=float, help="preprocessing std (default: 1/scale if quantized, else 127.5)"
    )
    split.add_argument(
        "--no-copy-source",
        dest="copy_source",
        action="store_false",
        help="do not copy MODEL.tflite into DIR (verify then needs --model)",
    )
    split.set_defaults(func=cmd_split)

    check = sub.add_parser("verify", help="run the chain of stages against the whole model")
    check.add_argument("dir", type=Path, metavar="DIR", help="directory holding manifest.json")
    check.add_argument("--images", type=Path, required=True, metavar="DIR")
    check.add_argument(
        "--model",
        type=Path,
        metavar="SOURCE.tflite",
        help="the source model when it is not next to the manifest",
    )
    check.set_defaults(func=cmd_verify)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args))
    except (ConverterError, ManifestError, ImportError) as exc:  # ImportError: no interpreter
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
