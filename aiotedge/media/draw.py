"""Boxes and keypoints drawn on a camera's frame, for the snapshot of an event: what a person
glancing at a dashboard needs to see why the event was made."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw

from aiotedge.contracts.geometry import Box

#: a colour no scene is made of, so the marks stand out (and tests can find them)
MARK_COLOUR = (255, 0, 255)


@dataclass(frozen=True)
class Mark:
    """What to draw for one object, in the picture's pixels: its box and caption, its points."""

    caption: str
    box: Box | None = None
    points: Sequence[tuple[float, float]] = ()


def draw_marks(picture: Image.Image, marks: Sequence[Mark]) -> Image.Image:
    """A copy of the picture in RGB with each mark drawn: lines a 200th of its longer side
    thick (at least 3 pixels), a caption above each box."""
    drawn = picture.convert("RGB")  # always a copy: the caller's picture stays as it was
    pen = ImageDraw.Draw(drawn)
    width = max(3, round(max(drawn.size) / 200))
    for mark in marks:
        for x, y in mark.points:
            pen.ellipse((x - 2 * width, y - 2 * width, x + 2 * width, y + 2 * width),
                        fill=MARK_COLOUR)
        if mark.box is None:
            continue
        box = mark.box
        pen.rectangle((box.xmin, box.ymin, box.xmax, box.ymax), outline=MARK_COLOUR, width=width)
        left, top, right, bottom = pen.textbbox((0, 0), mark.caption)
        above = max(0.0, box.ymin - (bottom - top) - 2 * width)
        pen.rectangle((box.xmin, above, box.xmin + right - left + 2 * width,
                       above + bottom - top + 2 * width), fill=MARK_COLOUR)
        pen.text((box.xmin + width, above + width - top), mark.caption, fill=(255, 255, 255))
    return drawn
