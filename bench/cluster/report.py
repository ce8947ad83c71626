"""The cluster bench's results: medians over rounds, ratios to one board, JSON, plots, the doc.

Every ratio is taken within a round (a layout's frames/s over one board's in the same round),
then the median over rounds is shown with the lowest and highest round.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from bench.benchdoc import table
from bench.cluster.layouts import ONE_BOARD
from bench.cluster.measure import BoardResult, RunResult


@dataclass(frozen=True)
class Spread:
    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Iterable[float]) -> Spread:
        values = list(values)
        return cls(statistics.median(values), min(values), max(values))

    def text(self, digits: int = 2, unit: str = "") -> str:
        """`1.60x (1.55 to 1.62)`: the median, then the lowest and highest round."""
        f = f"{{:.{digits}f}}"
        return (f"{f.format(self.median)}{unit} ({f.format(self.low)} to "
                f"{f.format(self.high)})")


@dataclass(frozen=True)
class Summary:
    """One layout over the rounds."""

    layout: str
    strategy: str
    boards: int
    describe: str
    fps: Spread
    ratio: Spread
    lone_ms: Spread
    lone_ratio: Spread
    #: per stage, medians over rounds of the lone frames' medians: camera or previous stage to
    #: this stage's network thread, and from there to its output
    lone_transfer_ms: list[float]
    lone_compute_ms: list[float]
    predicted_fps: float | None
    broker_kb_per_frame: Spread
    #: CPU ms per frame outside the quotas: mosquitto, the camera's process
    broker_cpu_ms: Spread
    camera_cpu_ms: Spread
    machine_busy: Spread
    per_board: list[dict[str, float | int | str]]

    def to_dict(self) -> dict:
        out = dict(self.__dict__)
        for key in ("fps", "ratio", "lone_ms", "lone_ratio", "broker_kb_per_frame",
                    "broker_cpu_ms", "camera_cpu_ms", "machine_busy"):
            out[key] = getattr(self, key).__dict__
        return out


def summarise(rounds: list[list[RunResult]]) -> list[Summary]:
    """Medians per layout; the one-board run of each round is the base of that round's ratios."""
    bases = [next(r for r in runs if r.strategy == ONE_BOARD) for runs in rounds]
    summaries = []
    for layout in dict.fromkeys(r.layout for runs in rounds for r in runs):
        pairs = [(next(r for r in runs if r.layout == layout), base)
                 for runs, base in zip(rounds, bases, strict=True)]
        first = pairs[0][0]
        summaries.append(Summary(
            layout=layout, strategy=first.strategy, boards=first.boards,
            describe=first.describe,
            fps=Spread.of(run.fps for run, _ in pairs),
            ratio=Spread.of(run.fps / base.fps for run, base in pairs),
            lone_ms=Spread.of(run.lone_latency_ms for run, _ in pairs),
            lone_ratio=Spread.of(run.lone_latency_ms / base.lone_latency_ms
                                 for run, base in pairs),
            lone_transfer_ms=_stage_medians([run.lone_transfer_ms for run, _ in pairs]),
            lone_compute_ms=_stage_medians([run.lone_compute_ms for run, _ in pairs]),
            predicted_fps=first.predicted_fps,
            broker_kb_per_frame=Spread.of(run.broker_bytes_per_frame / 1000 for run, _ in pairs),
            broker_cpu_ms=Spread.of(run.broker_cpu_ms_per_frame for run, _ in pairs),
            camera_cpu_ms=Spread.of(run.camera_cpu_ms_per_frame for run, _ in pairs),
            machine_busy=Spread.of(run.machine_busy for run, _ in pairs),
            per_board=_per_board([run.per_board for run, _ in pairs]),
        ))
    return summaries


def _stage_medians(rounds: list[list[float]]) -> list[float]:
    return [statistics.median(values) for values in zip(*rounds, strict=True)]


def _per_board(rounds: list[list[BoardResult]]) -> list[dict[str, float | int | str]]:
    """Each board's medians over the rounds."""
    boards = []
    for position, board in enumerate(rounds[0]):
        def median(read: Callable[[BoardResult], float], position: int = position) -> float:
            return statistics.median(read(runs[position]) for runs in rounds)

        boards.append({
            "node": board.node, "stage": board.stage,
            "frames": median(lambda b: b.frames),
            "cpu_ms_per_frame": median(lambda b: b.cpu_ms_per_frame),
            "busy": median(lambda b: b.busy),
            "throttled_share": median(lambda b: b.throttled_share),
            "kb_in_per_frame": median(lambda b: b.bytes_in_per_frame) / 1000,
            "kb_out_per_frame": median(lambda b: b.bytes_out_per_frame) / 1000,
            "rss_ready_mb": median(lambda b: b.rss_ready_mb),
            "rss_peak_mb": max(runs[position].rss_peak_mb for runs in rounds),
        })
    return boards


def write_json(path: Path, header: dict, rounds: list[list[RunResult]],
               summaries: list[Summary]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        **header,
        "rounds": [[run.to_dict() for run in runs] for runs in rounds],
        "summary": [summary.to_dict() for summary in summaries],
    }, indent=1) + "\n")


# -- plots -----------------------------------------------------------------------------------


def plot_throughput(path: Path, summaries: list[Summary]) -> None:
    """Frames/s against boards for each strategy, with one board times N (and 0.95 N)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = next(s for s in summaries if s.strategy == ONE_BOARD)
    most = max(s.boards for s in summaries)
    figure, axes = plt.subplots(figsize=(7, 4.5))
    boards = list(range(1, most + 1))
    axes.plot(boards, [n * base.fps.median for n in boards], "k--", lw=1, label="1 x N")
    axes.plot(boards, [0.95 * n * base.fps.median for n in boards], "k:", lw=1,
              label="0.95 x N (the goal)")
    for strategy in dict.fromkeys(s.strategy for s in summaries if s.strategy != ONE_BOARD):
        points = [base, *sorted((s for s in summaries if s.strategy == strategy),
                                key=lambda s: s.boards)]
        axes.errorbar([s.boards for s in points], [s.fps.median for s in points],
                      yerr=[[s.fps.median - s.fps.low for s in points],
                            [s.fps.high - s.fps.median for s in points]],
                      marker="o", capsize=3, label=strategy)
    axes.set_xlabel("boards")
    axes.set_ylabel("frames/s")
    axes.set_xticks(boards)
    axes.set_title("Emulated boards: throughput (median of rounds, lowest to highest)")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_cpu(path: Path, summaries: list[Summary]) -> None:
    """CPU ms per frame of each board, for one board and each strategy at its most boards."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [s for s in summaries if s.strategy == ONE_BOARD] + [
        max((s for s in summaries if s.strategy == strategy), key=lambda s: s.boards)
        for strategy in dict.fromkeys(s.strategy for s in summaries if s.strategy != ONE_BOARD)]
    figure, axes = plt.subplots(figsize=(8, 4.5))
    position, ticks, labels = 0.0, [], []
    whole = shown[0].per_board[0]["cpu_ms_per_frame"]
    for summary in shown:
        values = [float(board["cpu_ms_per_frame"]) for board in summary.per_board]
        xs = [position + i for i in range(len(values))]
        axes.bar(xs, values, width=0.8, label=summary.layout)
        ticks += xs
        labels += [f"s{board['stage']}" for board in summary.per_board]
        position += len(values) + 1
    axes.axhline(float(whole), color="k", ls="--", lw=1, label="whole model on one board")
    axes.set_xticks(ticks, labels, fontsize=8)
    axes.set_ylabel("CPU ms per frame (cgroup)")
    axes.set_title("CPU per frame of each board (s<k>: the stage it serves)")
    axes.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


# -- docs/benchmarks.md ----------------------------------------------------------------------


def markdown(summaries: list[Summary], notes: list[str], images: dict[str, str]) -> str:
    base = next(s for s in summaries if s.strategy == ONE_BOARD)
    strategies = list(dict.fromkeys(s.strategy for s in summaries if s.strategy != ONE_BOARD))
    most = max(s.boards for s in summaries)

    def cell(strategy: str, boards: int, value: Callable[[Summary], str]) -> str:
        if boards == 1:
            return value(base)
        found = [s for s in summaries if s.strategy == strategy and s.boards == boards]
        return value(found[0]) if found else ""

    def throughput(s: Summary) -> str:
        return f"{s.fps.median:.1f}: {s.ratio.text(unit='x')}"

    def latency(s: Summary) -> str:
        return f"{s.lone_ms.median:.1f} ({s.lone_ratio.median:.2f}x)"

    rows = [(n, *(cell(st, n, throughput) for st in strategies), f"{0.95 * n:.2f}x")
            for n in range(1, most + 1)]
    lone_rows = [(n, *(cell(st, n, latency) for st in strategies)) for n in range(1, most + 1)]
    predicted = [(s.layout, s.describe, f"{s.predicted_fps:.1f}", f"{s.fps.median:.1f}",
                  f"{(s.fps.median / s.predicted_fps - 1) * 100:+.0f}%")
                 for s in summaries if s.predicted_fps]
    board_rows = []
    shown = [base] + [max((s for s in summaries if s.strategy == st), key=lambda s: s.boards)
                      for st in strategies]
    for summary in shown:
        for board in summary.per_board:
            board_rows.append((
                summary.layout, board["node"], board["stage"],
                f"{board['cpu_ms_per_frame']:.1f}", f"{board['busy']:.2f}",
                f"{board['throttled_share']:.2f}",
                f"{board['kb_in_per_frame']:.0f} / {board['kb_out_per_frame']:.0f}",
                f"{board['rss_ready_mb']:.0f} / {board['rss_peak_mb']:.0f}",
            ))
    layout_rows = [(s.layout, s.describe, f"{s.broker_kb_per_frame.median:.0f}",
                    f"{s.broker_cpu_ms.median:.1f}", f"{s.camera_cpu_ms.median:.1f}",
                    f"{s.machine_busy.text(digits=2)}",
                    f"{max(float(b['rss_peak_mb']) for b in s.per_board):.0f}")
                   for s in summaries]
    parts = [
        *notes,
        "Frames/s (ratio to one board in the same round: median, lowest to highest round):",
        table(("boards", *strategies, "goal"), rows),
        f"![throughput]({images['throughput']})",
        "Lone frame (one in flight), capture to the last stage's output, ms (ratio to one "
        "board):",
        table(("boards", *strategies), lone_rows),
    ]
    most_stages = max(len(s.lone_compute_ms) for s in summaries)
    if most_stages > 1:
        def stages(s: Summary) -> list[str]:
            cells = [f"{transfer:.1f} / {compute:.1f}" for transfer, compute
                     in zip(s.lone_transfer_ms, s.lone_compute_ms, strict=True)]
            return cells + [""] * (most_stages - len(cells))

        where = [(s.layout, *stages(s),
                  f"{sum(s.lone_transfer_ms):.1f} / {sum(s.lone_compute_ms):.1f}")
                 for s in summaries if s.strategy in (ONE_BOARD, "pipeline")]
        parts += ["Where a lone frame's time goes (medians, ms): into each stage (from the "
                  "camera's capture or the previous stage's output to the stage's network "
                  "thread: encode, publish, the links, the broker, waking the board) / in it "
                  "(decode, the segment, the photo's decoding at stage 0):",
                  table(("layout", *(f"stage {k}" for k in range(most_stages)), "all"),
                        where)]
    if predicted:
        parts += ["The planner's prediction against the measurement:",
                  table(("layout", "plan", "predicted frames/s", "measured", "error"),
                        predicted)]
    parts += [
        "Each board during the throughput phase (medians over rounds): its daemon's CPU per "
        "frame (all threads), the share of the board's quota the daemon used (1.00: the board "
        "never waited), the share of CFS periods in which the board's quota ran out, KB per "
        "frame on its link (to / from the board, headers included) and the daemon's resident "
        "memory at ready / peak while frames flowed:",
        table(("layout", "board", "stage", "CPU ms/frame", "busy", "throttled",
               "link KB in / out", "RSS MB ready / peak"), board_rows),
        f"![CPU per frame]({images['cpu']})",
        "Every layout: what the broker read and wrote per frame (its link's load), the CPU "
        "spent outside the quotas per frame by mosquitto and by the camera's process, how busy "
        "the whole machine was (anyone's work, 1.00 = both cores) and the largest daemon's "
        "peak memory:",
        table(("layout", "what runs", "broker KB/frame", "broker CPU ms/frame",
               "camera CPU ms/frame", "machine busy", "largest RSS MB"), layout_rows),
    ]
    return "\n\n".join(parts)

