"""A camera's crop, quarter turns and mirror, undone for the model's boxes and keypoints."""

from __future__ import annotations

import itertools

import msgpack
import numpy as np
import pytest
from PIL import Image

from aiotedge.contracts.errors import WireError
from aiotedge.contracts.geometry import Box, View
from aiotedge.contracts.wire import Frame, decode_photo, encode_frame
from aiotedge.media.prepare import apply_view


def marked_frame(width: int, height: int, at: tuple[int, int]) -> Image.Image:
    pixels = np.zeros((height, width), np.uint8)
    pixels[at[1], at[0]] = 255
    return Image.fromarray(pixels)


@pytest.mark.parametrize(("rotate", "flip", "crop"), list(itertools.product(
    (0, 90, 180, 270), (False, True), (None, (10, 20, 50, 30)))))
def test_a_pixel_found_in_the_sent_picture_maps_back_to_where_it_was_in_the_frame(
        rotate, flip, crop):
    """The camera's transform (Pillow's crop and transposes) and the mapping back are
    inverses, pixel for pixel."""
    view = View(80, 60, crop, rotate, flip)
    mark = (37, 41)
    sent = np.asarray(apply_view(marked_frame(80, 60, mark), view))
    assert sent.shape[::-1] == view.sent_size
    row, column = np.argwhere(sent == 255)[0]
    # the pixel's centre, normalised in the sent picture
    u, v = (column + 0.5) / sent.shape[1], (row + 0.5) / sent.shape[0]
    x, y = view.point_to_source(u, v)
    assert (x, y) == pytest.approx((mark[0] + 0.5, mark[1] + 0.5))


def test_a_box_keeps_its_corners_in_order_after_a_turn_and_a_mirror():
    view = View(200, 100, (100, 0, 100, 100), rotate=90, flip=True)
    box = view.box_to_source(Box(0.1, 0.2, 0.5, 0.6))
    assert box.xmin < box.xmax and box.ymin < box.ymax
    assert (box.width, box.height) == pytest.approx((40.0, 40.0))
    assert box.xmin >= 100 and box.xmax <= 200


def test_a_view_travels_with_the_frame_and_a_bad_one_is_refused():
    frame = Frame("cam-1-0", "cam", 0, 1.0e9, image=b"\xff\xd8 jpeg",
                  view=View(1920, 1080, (0, 0, 1080, 1080), rotate=270, flip=False))
    assert decode_photo(encode_frame(frame)).view == frame.view
    whole = Frame("cam-1-1", "cam", 1, 1.0e9, image=b"jpeg", view=View(640, 480))
    assert decode_photo(encode_frame(whole)).view == View(640, 480)
    for bad, reason in (([640, 480, 0, 0, 700, 480, 0, 0], "does not lie"),
                        ([640, 480, 0, 0, 640, 480, 45, 0], "rotate"),
                        ([640, 480, 0, 0, 640, 480, 0, 2], "flip"),
                        ([640, 480], "8 ints")):
        message = msgpack.unpackb(encode_frame(whole), raw=False)
        message["view"] = bad
        with pytest.raises(WireError, match=reason):
            decode_photo(msgpack.packb(message, use_bin_type=True))
