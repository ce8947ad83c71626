"""The board side on 32-bit ARM, as on a Raspberry Pi with 32-bit Raspberry Pi OS: a Debian 12
armhf root run under qemu-user emulation, installed by install-board.sh's 32-bit path
(tflite-runtime from PyPI, NumPy, Pillow, msgpack and zstandard from Debian's python3-*
packages). `make test-armhf` builds the root (scripts/arm64-root.sh with
AIOTEDGE_ROOT_ARCH=armhf) and runs this file; elsewhere it skips.

The helpers are test_arm64's: they run whichever root arm64-root.sh was told to.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.test_arm64 import (
    BOARD_VENV,
    NOT_ON_BOARD,
    ROOT,
    TEST_PYTHON,
    board_verify,
    demo,  # noqa: F401  (a fixture)
    in_root,
    predict,
    run_board_tests,
    stage_daemons,
    write_report,
    x86_64_predictions,  # noqa: F401  (a fixture)
)

pytestmark = pytest.mark.skipif(
    os.environ.get("AIOTEDGE_ROOT_ARCH") != "armhf"
    or not (ROOT / ".aiotedge-root-key").is_file()
    or not Path("/proc/sys/fs/binfmt_misc/qemu-arm").is_file(),
    reason="needs the armhf root and qemu-user: run `make test-armhf` (scripts/arm64-root.sh "
    "with AIOTEDGE_ROOT_ARCH=armhf builds the root, as root, and runs this file)",
)


def test_the_root_is_32_bit_arm_with_tflite_runtime_and_debians_numpy():
    out = subprocess.run(
        in_root(f"{BOARD_VENV}/bin/python", "-c",
                "import platform, numpy, PIL, aiotedge\n"
                "from aiotedge.tflite.runtime import interpreter_class\n"
                "print(platform.machine(), interpreter_class().__module__, numpy.__file__, "
                "PIL.__file__, aiotedge.__file__)"),
        capture_output=True, text=True, check=True, timeout=300,
    ).stdout.split()
    assert out[0] == "armv7l"
    assert out[1].startswith("tflite_runtime.")
    assert all(path.startswith("/usr/lib/python3/dist-packages/") for path in out[2:4]), out
    assert out[4].startswith(f"{BOARD_VENV}/lib/python3.11/site-packages/aiotedge/")


@pytest.mark.timeout(600)
def test_aiotedge_verify_on_armhf_keeps_every_stage_within_its_tolerance(demo):  # noqa: F811
    table = board_verify(demo)
    write_report(f"\naiotedge verify on armhf (tflite-runtime; the references computed on "
                 f"x86_64 with ai-edge-litert):\n\n{table}\n")


@pytest.mark.timeout(1200)
def test_an_armhf_stage_in_a_pipeline_keeps_every_top1(
    broker, demo, x86_64_predictions, tmp_path  # noqa: F811
):
    """Stage 2 on armhf (its self-check passed, or it would not start), the others on x86_64."""
    with stage_daemons(broker, demo.manifest, {2}, tmp_path / "configs"):
        mixed = predict(broker, demo)
    assert set(mixed) == set(x86_64_predictions)
    moved = {}
    for name, reference in x86_64_predictions.items():
        assert mixed[name].top[0].index == reference.top[0].index, (name, mixed[name].top)
        moved[name] = round(abs(mixed[name].top[0].score - reference.top[0].score), 3)
    write_report(f"stage 2 on armhf: top-1 score moved by {moved}\n")


def test_the_tests_python_sees_the_board():
    """What the other tests rely on: the tests' venv in the root imports the board's install."""
    done = subprocess.run(in_root(TEST_PYTHON, "-P", "-c", "import aiotedge, numpy"),
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr



#: board-side tests that cannot run on armhf, besides test_arm64's NOT_ON_BOARD:
NOT_ON_ARMHF = [
    # it imports tests/test_cli.py, which imports the converter: its reading of .tflite files
    # takes ai-edge-litert's flatbuffer schema, which a 32-bit board does not have
    "tests/test_security_dynsec.py::"
    "test_aiotedge_status_as_a_login_that_may_not_read_the_stats_names_the_refusal",
    # hypothesis refuses to draw floats once the process flushes subnormal floats to zero,
    # which it does from the import of tflite-runtime's armhf build on (by an earlier test)
    "tests/test_wire_fuzz.py::test_any_payload_gives_a_frame_or_a_wire_error",
    "tests/test_wire_fuzz.py::test_a_mutated_frame_is_refused_or_forwarded_unchanged",
    "tests/test_wire_fuzz.py::test_a_valid_frame_round_trips",
]


@pytest.mark.timeout(1800)  # emulated: several times slower than on the host
def test_board_side_tests_pass_on_armhf():
    """Debian's NumPy 1.24, Pillow 9.4, msgpack and zstandard under tflite-runtime."""
    run_board_tests(NOT_ON_BOARD + NOT_ON_ARMHF)
