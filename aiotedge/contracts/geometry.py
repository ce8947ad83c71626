"""Where the picture a stage 0 received lies in the camera's own frame.

A camera may crop its frame to a region of interest, turn it a quarter, half or three quarters
(a camera mounted sideways) and mirror it before it sends it. A model's boxes and keypoints are
found in the picture that was sent, but the camera's owner draws and reasons in the frame the
camera saw: `View` carries what was done, hop to hop, so the last stage can map every result
back (docs/wire.md, `view`).
"""

from __future__ import annotations

from dataclasses import dataclass

#: clockwise quarter turns a camera may apply
ROTATIONS = (0, 90, 180, 270)


@dataclass(frozen=True)
class Box:
    """A rectangle, normalised (0..1 of the picture's width and height) or in pixels."""

    xmin: float
    ymin: float
    xmax: float
    ymax: float

    @property
    def width(self) -> float:
        return self.xmax - self.xmin

    @property
    def height(self) -> float:
        return self.ymax - self.ymin


@dataclass(frozen=True)
class View:
    """The sent picture is the source frame (`width` x `height` pixels) cut to `crop`
    (x, y, width, height in source pixels; None: the whole frame), then turned `rotate` degrees
    clockwise, then mirrored left to right when `flip`."""

    width: int
    height: int
    crop: tuple[int, int, int, int] | None = None
    rotate: int = 0
    flip: bool = False

    def __post_init__(self) -> None:
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"a frame of {self.width}x{self.height} pixels")
        if self.rotate not in ROTATIONS:
            raise ValueError(f"rotate must be one of {ROTATIONS}, not {self.rotate}")
        if self.crop is not None:
            x, y, w, h = self.crop
            if x < 0 or y < 0 or w <= 0 or h <= 0 or x + w > self.width or y + h > self.height:
                raise ValueError(f"crop {self.crop} does not lie in a frame of "
                                 f"{self.width}x{self.height} pixels")

    @property
    def region(self) -> tuple[int, int, int, int]:
        """The cropped region, the whole frame when nothing was cut."""
        return self.crop or (0, 0, self.width, self.height)

    @property
    def sent_size(self) -> tuple[int, int]:
        """Width and height of the picture that was sent."""
        _, _, w, h = self.region
        return (h, w) if self.rotate in (90, 270) else (w, h)

    def point_to_source(self, u: float, v: float) -> tuple[float, float]:
        """A normalised point of the sent picture, in source pixels."""
        if self.flip:
            u = 1.0 - u
        # undo the clockwise turn: (a, b) is the point in the cropped region, normalised
        a, b = {0: (u, v), 90: (v, 1.0 - u), 180: (1.0 - u, 1.0 - v), 270: (1.0 - v, u)}[
            self.rotate]
        x, y, w, h = self.region
        return x + a * w, y + b * h

    def box_to_source(self, box: Box) -> Box:
        """A normalised box of the sent picture, in source pixels (turns swap its corners)."""
        x1, y1 = self.point_to_source(box.xmin, box.ymin)
        x2, y2 = self.point_to_source(box.xmax, box.ymax)
        return Box(min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2))

    def to_wire(self) -> list[int]:
        x, y, w, h = self.region
        return [self.width, self.height, x, y, w, h, self.rotate, int(self.flip)]

    @classmethod
    def from_wire(cls, values: list[int]) -> View:
        """Raises ValueError on anything that is not a view."""
        if len(values) != 8 or not all(type(value) is int for value in values):
            raise ValueError("must be 8 ints [width, height, x, y, crop width, crop height, "
                             "rotate, flip]")
        width, height, x, y, w, h, rotate, flip = values
        if flip not in (0, 1):
            raise ValueError("flip must be 0 or 1")
        crop = None if (x, y, w, h) == (0, 0, width, height) else (x, y, w, h)
        return cls(width, height, crop, rotate, bool(flip))
