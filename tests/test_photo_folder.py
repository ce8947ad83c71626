"""A photo folder holding more than photos: what cannot be used is skipped with a warning naming
it and why; the camera still publishes the rest and fails with one line only when none is left."""

from __future__ import annotations

import errno
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from aiotedge.contracts.errors import ImageError
from aiotedge.contracts.wire import decode_photo
from aiotedge.media.image import list_images
from support.models import write_test_images
from support.stages import AnsweringStage

#: what write_test_images writes, in the order a folder lists it
PHOTOS = ["checker.bmp", "gradient.png", "noise.jpg", "tall.png"]
#: entries named like photos that are not, and why each is skipped
NOT_PHOTOS = {
    "a.jpg": os.strerror(errno.ELOOP),
    "b.jpg": os.strerror(errno.ELOOP),
    "dir.jpg": "not a regular file",
    "gone.png": os.strerror(errno.ENOENT),
    "notes.jpg": "not a JPEG, PNG or BMP image",
}


def mixed_folder(folder: Path) -> Path:
    write_test_images(folder)
    (folder / "a.jpg").symlink_to("b.jpg")
    (folder / "b.jpg").symlink_to("a.jpg")
    (folder / "dir.jpg").mkdir()
    (folder / "gone.png").symlink_to("deleted.png")
    (folder / "notes.jpg").write_text("a note, not a photo\n")
    (folder / "README.txt").write_text("not named like a photo: ignored\n")
    return folder


def warnings_in(records: list[logging.LogRecord]) -> list[str]:
    return sorted(r.getMessage() for r in records if r.levelno == logging.WARNING)


def test_only_usable_photos_are_listed_and_each_other_entry_is_named_in_a_warning(
    tmp_path, caplog
):
    folder = mixed_folder(tmp_path)
    os.mkfifo(folder / "pipe.bmp")  # reading it would wait for a writer forever
    with caplog.at_level(logging.WARNING):
        assert [path.name for path in list_images(folder)] == PHOTOS
    expected = {**NOT_PHOTOS, "pipe.bmp": "not a regular file"}
    assert warnings_in(caplog.records) == sorted(
        f"skipped {folder / name}: {reason}" for name, reason in expected.items()
    )


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_an_unreadable_photo_is_skipped(tmp_path, caplog):
    write_test_images(tmp_path)
    (tmp_path / "noise.jpg").chmod(0)
    with caplog.at_level(logging.WARNING):
        assert [path.name for path in list_images(tmp_path)] == PHOTOS[:2] + PHOTOS[3:]
    assert warnings_in(caplog.records) == [
        f"skipped {tmp_path / 'noise.jpg'}: {os.strerror(errno.EACCES)}"
    ]


def test_a_folder_without_a_usable_photo_is_an_error_naming_it(tmp_path):
    (tmp_path / "dir.jpg").mkdir()
    with pytest.raises(ImageError, match="no usable"):
        list_images(tmp_path)


def run_camera(folder: Path, broker, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aiotedge", "camera", "--images", str(folder),
         "--broker", str(broker.address), "--pipeline", "photos", "--fps", "100", *flags],
        capture_output=True, text=True, timeout=60, check=False,
    )


def test_the_camera_publishes_the_good_photos_and_warns_about_each_other_entry(
    broker, tmp_path
):
    folder = mixed_folder(tmp_path)
    pipeline = AnsweringStage(broker, "photos")
    camera = run_camera(folder, broker, "--frames", "6", "--loop")
    payloads = pipeline.frames  # the camera waited for the result of each
    pipeline.stop()

    assert camera.returncode == 0, camera.stderr
    assert "Traceback" not in camera.stderr
    photos = [(folder / name).read_bytes() for name in PHOTOS]
    assert [decode_photo(payload).image for payload in payloads] == photos + photos[:2]
    warnings = [line for line in camera.stderr.splitlines() if " WARNING " in line]
    assert len(warnings) == len(NOT_PHOTOS)
    for name, reason in NOT_PHOTOS.items():
        assert sum(f"skipped {folder / name}: {reason}" in line for line in warnings) == 1


def test_a_camera_without_a_usable_photo_exits_2_with_one_error_line(broker, tmp_path):
    (tmp_path / "dir.jpg").mkdir()
    (tmp_path / "notes.jpg").write_text("a note, not a photo\n")
    camera = run_camera(tmp_path, broker)
    assert camera.returncode == 2, camera.stderr
    assert "Traceback" not in camera.stderr
    errors = [line for line in camera.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1
    assert errors[0].endswith(f"{tmp_path}: no usable photo (.jpg, .jpeg, .png, .bmp)")
