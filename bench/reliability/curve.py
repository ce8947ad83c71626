"""A long run's memory curve: every daemon's RSS over time, as JSON and as a PNG plot, and
whether it levels off (growth in the second half against growth in the first).

The soak writes it beside docs/reliability.md; `python -m bench.reliability.curve FILE.json`
draws the plot again from the JSON.
"""

from __future__ import annotations

import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

#: seconds of samples whose median is a curve's level at a point (smooths the GC's saw-tooth)
WINDOW_S = 300.0

Curve = dict[str, list[tuple[float, float]]]


@dataclass(frozen=True)
class Growth:
    """A node's RSS level (median over WINDOW_S) at the start, the middle and the end."""

    start: float
    middle: float
    end: float

    @property
    def first_half(self) -> float:
        return self.middle - self.start

    @property
    def second_half(self) -> float:
        return self.end - self.middle


def _level(points: list[tuple[float, float]], at: float) -> float:
    """The median RSS of the samples in the window starting at `at` (or ending at it, at the
    end of the curve)."""
    last = points[-1][0]
    begin = min(at, max(points[0][0], last - WINDOW_S))
    inside = [rss for t, rss in points if begin <= t <= begin + WINDOW_S]
    return statistics.median(inside)


def growth(points: list[tuple[float, float]]) -> Growth | None:
    """Start, middle and end levels; None for a curve shorter than three windows."""
    if not points or points[-1][0] - points[0][0] < 3 * WINDOW_S:
        return None
    first, last = points[0][0], points[-1][0]
    middle = (first + last) / 2 - WINDOW_S / 2
    return Growth(_level(points, first), _level(points, middle), _level(points, last))


def save(curve: Curve, path: Path, about: dict) -> None:
    """The curve as JSON: {"about": ..., "rss_mb": {node: [[seconds, MB], ...]}}."""
    path.write_text(json.dumps({"about": about, "rss_mb": curve}, indent=None) + "\n")


def plot(json_path: Path, png_path: Path) -> None:
    """Each node's RSS against minutes since the run started, one line each."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    data = json.loads(json_path.read_text())
    figure, axes = pyplot.subplots(figsize=(9, 4.5), dpi=100)
    for node, points in sorted(data["rss_mb"].items()):
        if points:
            axes.plot([t / 60 for t, _ in points], [mb for _, mb in points], label=node,
                      linewidth=1)
    about = data.get("about", {})
    axes.set_title(about.get("title", "RSS over time"))
    axes.set_xlabel("minutes")
    axes.set_ylabel("RSS (MB)")
    axes.grid(True, alpha=0.3)
    axes.legend(loc="center right")
    figure.tight_layout()
    figure.savefig(png_path)
    pyplot.close(figure)


if __name__ == "__main__":
    source = Path(sys.argv[1])
    plot(source, source.with_suffix(".png"))
