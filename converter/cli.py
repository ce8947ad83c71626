"""`aiotedge-convert`: import a Keras model, analyze its cut points, plan and split it, verify.

Exit status: 0 on success, 1 when `verify` finds a difference beyond tolerance, 2 on an error
(bad arguments, unreadable model, invalid cuts, ...), reported as one line on stderr.
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from aiotedge_converter import keras_import
from aiotedge_converter.cluster import Links, cluster_from_profiles
from aiotedge_converter.costs import cost_basis
from aiotedge_converter.deploy import toml_writer, write_deployment
from aiotedge_converter.errors import ConverterError
from aiotedge_converter.fleet import DEFAULT_TIMEOUT, deploy
from aiotedge_converter.heal import (
    BOUNCE_WINDOW,
    DEFAULT_JOIN_SETTLE,
    DEFAULT_LOSS_GRACE,
    DEFAULT_MIN_GAIN,
    HealOptions,
    heal,
)
from aiotedge_converter.keras_layers import cuts_for_layer_counts, layers_done, parse_layer_counts
from aiotedge_converter.metadata import ImportInfo, read_import_info
from aiotedge_converter.planner import Plan, check_cuts, evaluate_plan, plan_pipeline
from aiotedge_converter.replicate import Limits, plan_cluster
from aiotedge_converter.report import (
    LayerView,
    analyze_report,
    compare_report,
    human,
    layer_cut_notes,
    plan_report,
    plural,
    shape_text,
    strategies_report,
    table,
)
from aiotedge_converter.split import SplitOptions, read_labels, split_model
from aiotedge_converter.verify import ImageResult, verify

from aiotedge import __version__
from aiotedge.config.flags import add_section_flags, override_from_flags
from aiotedge.config.loader import NodeConfig
from aiotedge.config.sections import BrokerConfig, PipelineConfig
from aiotedge.contracts.errors import AiotedgeError
from aiotedge.contracts.manifest import KINDS, MANIFEST_NAME, RESIZES
from aiotedge.contracts.plan import PLAN_BOARDS, PLAN_NAME
from aiotedge.contracts.profile import INPUT_KINDS, Profile
from aiotedge.contracts.release import new_release_id
from aiotedge.nodes.daemons.lifecycle import stop_on_signals
from aiotedge.tflite.graph import Graph, load_graph
from aiotedge.tflite.kinds import model_kind

PROG = "aiotedge-convert"
EXIT_DIFFERENT = 1
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130
BALANCED = "balanced"
LAYERS_PREFIX = "layers:"
PLOT_HELP = "draw the plan (default: none)"
LABELS_HELP = "class names, one a line (default: none)"
KIND_HELP = ("what the outputs mean, for a model the recognition gets wrong (default: recognised "
             "from the outputs; see docs/models.md)")


def _parse_cuts(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated op indices: {text!r}") from exc


def _parse_paths(text: str) -> list[Path]:
    return [Path(part) for part in text.split(",") if part.strip()]


def _layer_view(graph: Graph, info: ImportInfo | None) -> LayerView | None:
    if info is None or not info.layers:
        return None
    return LayerView(info.layers, tuple(layers_done(graph, info.layers)))


# --- analyze ------------------------------------------------------------------------------


def cmd_analyze(args: argparse.Namespace) -> int:
    graph = load_graph(args.model)
    kind = model_kind(graph, args.kind)
    print(analyze_report(graph, _layer_view(graph, read_import_info(graph.model)), kind))
    return 0


# --- import -------------------------------------------------------------------------------


def cmd_import(args: argparse.Namespace) -> int:
    if (args.model is None) == (args.arch is None):
        raise ConverterError("give a MODEL file or --arch, not both")
    if args.model is not None and args.model.suffix.lower() == ".tflite":
        raise ConverterError(f"{args.model} is a .tflite model already: it needs no import; "
                             f"split it as it is: {PROG} split {args.model} --stages N --out DIR")
    if args.arch is not None:
        if args.input_size is None or args.classes is None:
            raise ConverterError("--arch needs --input-size S and --classes K")
        source: Path | keras_import.ArchSpec = keras_import.ArchSpec(
            args.arch, args.input_size, args.alpha, args.classes, args.weights
        )
    else:
        source = args.model
    options = keras_import.ImportOptions(
        quantize=args.quantize,
        calibration=args.calibration,
        calibration_count=args.calibration_count,
        mean=args.mean,
        std=args.std,
        io_dtype=args.io_dtype,
        progress=sys.stderr.isatty() or args.verbose,
    )
    info = keras_import.convert(source, args.out, options)
    graph = load_graph(args.out)
    tensor_in, tensor_out = graph.tensor(graph.input_index), graph.tensor(graph.output_index)
    layers = f", {len(info.layers)} Keras layers" if info.layers else ""
    calibration = (
        f", calibrated on {plural(info.calibration_images, 'image')}"
        if info.calibration_images
        else ""
    )
    print(
        f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB): {info.quantize} "
        f"from {info.source}{layers}{calibration}"
    )
    print(
        f"input {shape_text(tensor_in.shape)} {tensor_in.dtype} (real = (pixel - "
        f"{info.mean:g}) / {info.std:g}), output {shape_text(tensor_out.shape)} "
        f"{tensor_out.dtype}; {len(graph.ops)} operators, {len(graph.cut_points)} valid cut "
        f"points, {human(graph.total_macs)} MACs"
    )
    print(f"next: {PROG} split {args.out} --stages N --out DIR")
    return 0


# --- split --------------------------------------------------------------------------------


def _load_profiles(paths: Sequence[Path]) -> list[tuple[str, Profile]]:
    return [(path.name, Profile.load(path)) for path in paths]


def _stage_count(args: argparse.Namespace, counts: list[int] | None, profiles: int) -> int:
    """The number of stages, which every option that implies one must agree on."""
    if args.stages is not None and args.cuts is not None and args.stages != len(args.cuts) + 1:
        raise ConverterError(
            f"--stages {args.stages} needs {args.stages - 1} cuts, --cuts gives {len(args.cuts)}"
        )
    implied = {}
    if args.stages is not None:
        implied["--stages"] = args.stages
    if args.cuts is not None:
        implied["--cuts"] = len(args.cuts) + 1
    if counts is not None:
        implied["--strategy"] = len(counts)
    if profiles > 1:
        implied["--profile"] = profiles
    if len(set(implied.values())) > 1:
        said = ", ".join(f"{option} {count}" for option, count in implied.items())
        raise ConverterError(f"the options disagree on the number of stages: {said}")
    if not implied:
        raise ConverterError(
            "give --stages N, --cuts i,j,..., --strategy layers:a,b,... or one --profile per "
            "stage"
        )
    return next(iter(implied.values()))


def cmd_split(args: argparse.Namespace) -> int:
    graph = load_graph(args.model)
    kind = model_kind(graph, args.kind)
    labels = read_labels(args.labels, graph, kind) if args.labels else None
    info = read_import_info(graph.model)
    counts = None
    if args.strategy.startswith(LAYERS_PREFIX):
        counts = parse_layer_counts(args.strategy[len(LAYERS_PREFIX) :])
        if args.cuts is not None:
            raise ConverterError("--cuts and --strategy layers: both choose the cuts; give one")
    elif args.strategy != BALANCED:
        raise ConverterError(
            f"unknown --strategy {args.strategy!r} (balanced, or layers:a,b,... )"
        )
    profiles = _load_profiles(args.profile or [])
    stages = _stage_count(args, counts, len(profiles))
    basis = cost_basis(graph, stages, profiles, args.link_mbps)
    valid = [c.op_index for c in graph.cut_points]
    layers = _layer_view(graph, info)

    notes = ""
    if args.cuts is not None:
        chosen: str | None = "--cuts " + ",".join(map(str, args.cuts))
        cuts = list(check_cuts(args.cuts, valid))
    elif counts is not None:
        layer_cuts = cuts_for_layer_counts(graph, info.layers if info else (), counts)
        chosen = args.strategy
        cuts = [cut.op_index for cut in layer_cuts]
        assert layers is not None  # cuts_for_layer_counts refused a model without layers
        notes = layer_cut_notes(layer_cuts, layers)
    else:
        chosen = None
    balanced = plan_pipeline(basis.boards, valid)
    plan: Plan = evaluate_plan(basis.boards, cuts) if chosen else balanced
    plans = [(chosen, plan), (BALANCED, balanced)] if chosen else [(BALANCED, plan)]

    options = SplitOptions(
        labels=labels,
        kind=kind,
        mean=args.mean,
        std=args.std,
        resize=args.resize,
        copy_source=args.copy_source,
        num_threads=args.threads,
    )
    split_model(graph, plan, args.out, options)
    if notes:
        print(notes)
    print(plan_report(graph, plan, basis, layers))
    if chosen:
        print(f"\n{chosen} beside the balanced plan for the same {plural(stages, 'stage')}:")
        print(compare_report(graph, basis, plans))
    if args.plot:
        from aiotedge_converter.plot import plot_plans

        print(f"plot: {plot_plans(graph, basis, plans, args.plot)}")
    print(f"wrote {plural(len(plan.stages), 'segment')} and {Path(args.out) / MANIFEST_NAME}")
    return 0


# --- plan ---------------------------------------------------------------------------------


def cmd_plan(args: argparse.Namespace) -> int:
    graph = load_graph(args.model)
    if args.boards < 1:
        raise ConverterError(f"--boards must be at least 1, got {args.boards}")
    if args.out:
        toml_writer()  # refused before the planning, not after the segments are written
    kind = model_kind(graph, args.kind)
    labels = read_labels(args.labels, graph, kind) if args.labels else None
    links = Links(args.link_mbps, args.broker_link_mbps)
    cluster = cluster_from_profiles(graph, _load_profiles(args.profile or []), args.boards,
                                    links, args.stage0_input)
    strategies = plan_cluster(cluster, Limits(args.max_stages, args.max_latency_ms))
    print(strategies_report(cluster, strategies))
    if args.plot:
        from aiotedge_converter.plot import plot_cluster

        title = f"{graph.path.name if graph.path else 'model'} on {plural(args.boards, 'board')}"
        print(f"plot: {plot_cluster(cluster, strategies, title, args.plot)}")
    if args.out:
        options = SplitOptions(labels=labels, kind=kind, mean=args.mean, std=args.std,
                               resize=args.resize, num_threads=args.threads)
        configs = write_deployment(graph, strategies, cluster, args.out, options=options,
                                   pipeline=args.pipeline, broker=_broker(args.broker),
                                   discovery=args.homeassistant)
        print(f"wrote {plural(len(strategies.chosen[0].stages), 'segment')}, "
              f"{Path(args.out) / MANIFEST_NAME}, {Path(args.out) / PLAN_NAME} and "
              f"{plural(len(configs), 'board config')} in {Path(args.out) / PLAN_BOARDS}/")
    return 0


def _broker(address: str) -> BrokerConfig:
    try:
        return BrokerConfig.parse(address)
    except AiotedgeError as exc:
        raise ConverterError(f"--broker {address!r}: {exc}") from exc


def _add_plan_parser(sub: argparse._SubParsersAction) -> None:
    plan = sub.add_parser(
        "plan", help="choose stages, cuts and replicas for N boards; write what deploying needs",
        description="Maximises frames/s on the boards (exactly, by dynamic programming over "
        "cut points and board counts) from measured profiles; prints the plan beside the pure "
        "pipeline and pure replicas. See docs/converter.md, section 7.")
    plan.add_argument("model", type=Path, metavar="MODEL.tflite")
    plan.add_argument("--boards", type=int, required=True, metavar="N",
                      help="boards to plan for (required)")
    plan.add_argument("--profile", type=_parse_paths, required=True, metavar="P.json,...",
                      help="from `aiotedge profile`: one for N identical boards, or one per "
                      "board (required)")
    plan.add_argument("--link-mbps", type=float, metavar="M",
                      help="each board's link (default: not a limit)")
    plan.add_argument("--broker-link-mbps", type=float, metavar="M",
                      help="the broker's link (every message crosses it in and out; default: "
                      "not a limit)")
    plan.add_argument("--max-latency-ms", type=float, metavar="X",
                      help="bound a lone frame's predicted latency (default: no bound)")
    plan.add_argument("--max-stages", type=int, metavar="S",
                      help="at most S stages (default: up to one per board)")
    plan.add_argument("--stage0-input", choices=INPUT_KINDS, default="photo",
                      help="what stage 0 receives: the camera's photo, a JPEG or a tensor at "
                      "the model's size (preprocessed at the camera) (default: %(default)s)")
    plan.add_argument("--out", type=Path, metavar="DIR",
                      help="write the segments, manifest.json, plan.json and boards/*.toml "
                      "(default: only print the plan)")
    plan.add_argument("--plot", type=Path, metavar="PLAN.png", help=PLOT_HELP)
    plan.add_argument("--labels", type=Path, metavar="FILE", help=LABELS_HELP)
    _add_model_options(plan)
    plan.add_argument("--pipeline", default="greenhouse",
                      help="pipeline name in the board configs (default: %(default)s)")
    plan.add_argument("--broker", default="broker.lan:8883", metavar="HOST[:PORT]",
                      help="the broker in the board configs, with TLS (default: %(default)s)")
    plan.add_argument("--homeassistant", action=argparse.BooleanOptionalAction, default=True,
                      help="the last stage's boards announce the pipeline to Home Assistant "
                      "([homeassistant] discovery = true in their configs; default: yes)")
    plan.set_defaults(func=cmd_plan)


# --- deploy -------------------------------------------------------------------------------


def cmd_deploy(args: argparse.Namespace) -> int:
    model: Graph | Path = args.model
    labels = None
    if args.model.is_dir():  # a split or plan folder: its cuts, codecs and labels
        if args.labels or args.stages:
            raise ConverterError(f"{args.model} is a split or plan folder: its labels and "
                                 "stages are its own (no --labels, --stages)")
    else:
        model = load_graph(args.model)
        labels = read_labels(args.labels, model) if args.labels else None
    config = override_from_flags(NodeConfig.load(args.config), args)
    config.check_files()
    deployed = deploy(config, model, args.release or new_release_id(args.model), labels=labels,
                      kind=args.kind, stages=args.stages, nodes=args.nodes,
                      timeout=args.timeout)
    release = deployed.release
    print(f"release {release.release}: {release.model_file} in "
          f"{plural(len(release.chunks), 'chunk')} on {plural(len(release.nodes), 'node')}")
    for stage, nodes in enumerate(release.assignments):
        print(f"  stage {stage}: {', '.join(nodes)}")
    print(f"live (before: {deployed.previous or 'none'}, which drains)")
    return 0


def _add_deploy_parser(sub: argparse._SubParsersAction) -> None:
    deploy_cmd = sub.add_parser(
        "deploy", help="put a model on the `aiotedge node` daemons online, as a release",
        description="Plans for the nodes online (MACs over their speed profiles), publishes "
        "the model's chunks and the release over the broker, waits until every node serves "
        "its stage, then makes it the live release (the one before drains). See "
        "docs/fleet.md.")
    deploy_cmd.add_argument("model", type=Path, metavar="MODEL.tflite|DIR",
                            help="a model, or a folder of `split` or `plan --out` (its cuts, "
                            "replicas and labels kept)")
    deploy_cmd.add_argument("--labels", type=Path, metavar="FILE", help=LABELS_HELP)
    deploy_cmd.add_argument("--config", help="a config file with [broker] and [pipeline] "
                            "(the deployer's login); flags override it (default: none)")
    add_section_flags(deploy_cmd, BrokerConfig, ("host", "username", "password_file", "tls",
                                                 "ca_file", "cert_file", "key_file"))
    add_section_flags(deploy_cmd, PipelineConfig, ("name",))
    deploy_cmd.add_argument("--release", metavar="ID", help="the release id (default: the "
                            "model's name and the UTC time)")
    deploy_cmd.add_argument("--kind", default="classification", choices=KINDS,
                            help="what the model's output means (default: %(default)s)")
    deploy_cmd.add_argument("--stages", type=int, metavar="S",
                            help="at most S stages; the other nodes become replicas "
                            "(default: one stage per node)")
    deploy_cmd.add_argument("--nodes", type=int, default=1, metavar="N",
                            help="wait until N nodes are online, then plan for those online "
                            "(default: %(default)s)")
    deploy_cmd.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="S",
                            help="seconds to wait for every node (default: %(default)s)")
    deploy_cmd.set_defaults(func=cmd_deploy)


# --- heal ---------------------------------------------------------------------------------


def cmd_heal(args: argparse.Namespace) -> int:
    options = HealOptions(loss_grace=args.loss_grace, join_settle=args.join_settle,
                          min_gain=args.min_gain, timeout=args.timeout)
    config = override_from_flags(NodeConfig.load(args.config), args)
    config.check_files()
    logging.getLogger("aiotedge_converter").setLevel(logging.INFO)  # a daemon: its decisions
    heal(config, args.name, options, stop_on_signals())
    return 0


def _add_heal_parser(sub: argparse._SubParsersAction) -> None:
    heal_cmd = sub.add_parser(
        "heal", help="re-plan the live release when a node is lost or joins, until stopped",
        description="A self-healing coordinator: a node of the live release offline for "
        "--loss-grace seconds gets a release for the nodes left, switched to at once (cameras "
        "resend the frames it held); a new node online for --join-settle seconds gets a "
        "release using it, rolled out if the forecast gains --min-gain. The oldest "
        "coordinator present decides, the others stand by. Runs until SIGTERM or Ctrl-C. "
        "See docs/fleet.md.")
    heal_cmd.add_argument("--config", help="a config file with [broker] and [pipeline] "
                          "(the deployer's login); flags override it (default: none)")
    add_section_flags(heal_cmd, BrokerConfig, ("host", "username", "password_file", "tls",
                                               "ca_file", "cert_file", "key_file"))
    add_section_flags(heal_cmd, PipelineConfig, ("name",))
    heal_cmd.add_argument("--name", default=socket.gethostname(), metavar="ID",
                          help="this coordinator's name, one per coordinator (default: the "
                          "host name)")
    heal_cmd.add_argument("--loss-grace", type=float, default=DEFAULT_LOSS_GRACE,
                          metavar="SECONDS", help="a node of the live release offline this "
                          "long is lost (default: %(default)s)")
    heal_cmd.add_argument("--join-settle", type=float, default=DEFAULT_JOIN_SETTLE,
                          metavar="SECONDS", help="a new node online this long is put to "
                          "work; one seen going offline in the minute before waits "
                          f"{BOUNCE_WINDOW:.0f} s (default: %(default)s)")
    heal_cmd.add_argument("--min-gain", type=float, default=DEFAULT_MIN_GAIN,
                          metavar="FRACTION", help="a new node is put to work if the "
                          "forecast frames/s gain at least this (default: %(default)s)")
    heal_cmd.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                          help="seconds to wait for the nodes of a new release (default: "
                          "%(default)s)")
    heal_cmd.set_defaults(func=cmd_heal)


# --- verify -------------------------------------------------------------------------------


def _verify_row(result: ImageResult) -> list[str]:
    row = [
        result.image,
        "identical" if result.identical else f"max abs diff {result.max_abs_diff:g}",
        "ok" if result.ok else "DIFFERENT",
    ]
    if result.reference is not None:
        ref = result.reference
        row += [
            "agrees" if ref.agrees else f"reference top-1 {ref.top1}: {ref.label}",
            f"{ref.probability_diff:.4f}",
        ]
    return [*row, result.result]


def cmd_verify(args: argparse.Namespace) -> int:
    results = verify(args.dir, args.images, args.model, args.threads, args.reference)
    header = ["image", "chain vs whole", ""]
    if args.reference:
        header += ["vs reference", "max prob diff"]
    print(table([*header, "whole model"], [_verify_row(r) for r in results]))
    if args.reference:
        agree = sum(r.reference.agrees for r in results if r.reference)
        worst = max(r.reference.probability_diff for r in results if r.reference)
        print(
            f"top-1 agreement with {args.reference.name}: {agree}/{len(results)} "
            f"({100 * agree / len(results):.0f}%), max probability difference {worst:.4f}"
        )
    bad = sum(not r.ok for r in results)
    tolerance = results[0].tolerance
    if bad:
        print(f"{bad} of {len(results)} images differ beyond tolerance {tolerance:g}")
        return EXIT_DIFFERENT
    print(f"all {len(results)} images match (tolerance {tolerance:g})")
    return 0


# --- parser -------------------------------------------------------------------------------


def _add_import_parser(sub: argparse._SubParsersAction) -> None:
    imp = sub.add_parser(
        "import",
        help="convert a Keras model (.keras, .h5, SavedModel) or a built-in one to .tflite",
        description="Needs TensorFlow (the converter extra). The result is split like any "
        ".tflite; a Keras source's layer list is kept in it for --strategy layers:.",
    )
    imp.add_argument(
        "model", type=Path, nargs="?", metavar="MODEL", help=".keras, .h5 or SavedModel dir"
    )
    imp.add_argument("--out", type=Path, required=True, metavar="MODEL.tflite",
                     help="where to write it (required)")
    imp.add_argument("--quantize", choices=keras_import.QUANTIZATIONS, default="float32",
                     help="the weights' and activations' type (default: %(default)s)")
    imp.add_argument(
        "--calibration", type=Path, metavar="DIR",
        help="photos for int8 calibration (default: none)"
    )
    imp.add_argument(
        "--calibration-count",
        type=int,
        default=keras_import.DEFAULT_CALIBRATION_COUNT,
        metavar="N",
        help="use at most N calibration photos (default: %(default)s)",
    )
    imp.add_argument(
        "--mean", type=float, default=127.5,
        help="input = (pixel - mean) / std (default: %(default)s)"
    )
    imp.add_argument("--std", type=float, default=127.5, help="see --mean (default: %(default)s)")
    imp.add_argument(
        "--io-dtype",
        choices=keras_import.IO_DTYPES,
        default="uint8",
        help="input/output dtype of an int8 model (default: %(default)s)",
    )
    arch = imp.add_argument_group("built-in architecture (instead of MODEL)")
    arch.add_argument("--arch", choices=keras_import.ARCHITECTURES,
                      help="a built-in architecture (required without MODEL)")
    arch.add_argument("--input-size", type=int, metavar="S",
                      help="input S x S x 3 (required with --arch)")
    arch.add_argument("--alpha", type=float, default=1.0, metavar="A",
                      help="width (default: %(default)s)")
    arch.add_argument("--classes", type=int, metavar="K",
                      help="output classes (required with --arch)")
    arch.add_argument(
        "--weights", type=Path, metavar="FILE", help=".weights.h5 (default: random, seeded)"
    )
    imp.set_defaults(func=cmd_import)


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    """What the model's graph may not tell: its kind and how stage 0 makes its input."""
    parser.add_argument("--kind", choices=KINDS, help=KIND_HELP)
    parser.add_argument(
        "--mean", type=float,
        help="preprocessing mean (default: recorded by import, else from the input tensor: zero "
        "point if quantized, 0 for unquantized uint8, 127.5 for float; docs/manifest.md)")
    parser.add_argument(
        "--std", type=float,
        help="preprocessing std (default: recorded by import, else from the input tensor: "
        "1/scale if quantized, 1 for unquantized uint8, 127.5 for float)")
    parser.add_argument(
        "--resize", choices=RESIZES, default="antialiased",
        help="how stage 0 resizes a photo: antialiased (Pillow's bilinear) or sampled (2x2 "
        "bilinear, as TensorFlow and TFLite Support resize; docs/models.md) "
        "(default: %(default)s)")


def _add_split_parser(sub: argparse._SubParsersAction) -> None:
    split = sub.add_parser("split", help="plan the stages, write segments and manifest.json")
    split.add_argument("model", type=Path, metavar="MODEL.tflite")
    split.add_argument("--out", type=Path, required=True, metavar="DIR",
                       help="where the segments and manifest.json go (required)")
    split.add_argument("--stages", type=int, metavar="N",
                       help="number of stages (required unless --cuts, --strategy layers: or one "
                       "--profile per stage give it)")
    split.add_argument(
        "--strategy",
        default=BALANCED,
        metavar="S",
        help="balanced: minimise the slowest stage; layers:a,b,...: Keras layer counts per "
        "stage (an imported Keras model) (default: %(default)s)",
    )
    split.add_argument(
        "--cuts",
        type=_parse_cuts,
        metavar="i,j,...",
        help="cut after these ops instead of planning (see analyze; default: planned)",
    )
    split.add_argument(
        "--profile",
        type=_parse_paths,
        metavar="P0.json,...",
        help="measured costs from `aiotedge profile`: one for identical boards, or one per "
        "stage in pipeline order (default: the model's MACs)",
    )
    split.add_argument(
        "--link-mbps",
        type=float,
        metavar="M",
        help="network speed; a stage costs max(compute, output bytes * 8 / M) (needs "
        "--profile; default: not a limit)",
    )
    split.add_argument("--plot", type=Path, metavar="PLAN.png", help=PLOT_HELP)
    split.add_argument("--labels", type=Path, metavar="FILE", help=LABELS_HELP)
    _add_model_options(split)
    split.add_argument(
        "--no-copy-source",
        dest="copy_source",
        action="store_false",
        help="do not copy MODEL.tflite into DIR (verify then needs --model; default: copied)",
    )
    split.set_defaults(func=cmd_split)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Import a Keras CNN, analyze its cut points, split it into stages, "
        "verify a split.",
        epilog="Exit status: 0 ok; 1 verify found a difference beyond tolerance; 2 a mistake "
        "to fix (arguments, an unreadable model, invalid cuts), told in one line. Docs: "
        "docs/converter.md, docs/manifest.md.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    parser.add_argument("--threads", type=int, default=None,
                        help="interpreter threads (default: the runtime's choice)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    analyze = sub.add_parser("analyze", help="print the valid cut points of a model")
    analyze.add_argument("model", type=Path, metavar="MODEL.tflite")
    analyze.add_argument("--kind", choices=KINDS, help=KIND_HELP)
    analyze.set_defaults(func=cmd_analyze)

    _add_import_parser(sub)
    _add_split_parser(sub)
    _add_plan_parser(sub)
    _add_deploy_parser(sub)
    _add_heal_parser(sub)

    check = sub.add_parser(
        "verify", help="run the chain of stages against the whole model",
        epilog="Exit status: 0 every image matches; 1 an image differs beyond tolerance; 2 a "
               "mistake to fix, told in one line.")
    check.add_argument("dir", type=Path, metavar="DIR", help="directory holding manifest.json")
    check.add_argument("--images", type=Path, required=True, metavar="DIR",
                       help="photos to run through both (required)")
    check.add_argument(
        "--model",
        type=Path,
        metavar="SOURCE.tflite",
        help="the source model when it is not next to the manifest (default: the copy in "
        "DIR)",
    )
    check.add_argument(
        "--reference",
        type=Path,
        metavar="FLOAT.tflite",
        help="also compare with this model (e.g. the float32 import of a quantized split; "
        "default: none)",
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
    except AiotedgeError as exc:  # a user's mistake: one line; anything else is a bug
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:  # Ctrl-C: no traceback, the status a shell gives (as aiotedge)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
