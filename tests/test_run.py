"""`aiotedge run`: a stage that dies is started again, one that stops on a mistake ends the run
with its reason, each stage's lines come out under its node name (and without the runtime's
XNNPACK note), `--config` and `--fps` are taken, and no temporary folder is left behind."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys

import pytest

from aiotedge.contracts.errors import PipelineError
from aiotedge.contracts.manifest import Manifest
from aiotedge.nodes.local import LocalPipeline

FRAMES = 24


def test_a_stage_that_dies_is_started_again_and_no_frame_is_lost(
    broker, split3, generated_frames, caplog
):
    caplog.set_level(logging.INFO)
    seqs = []
    with LocalPipeline(split3, broker=broker.address, frame_timeout=5.0) as pipeline:
        for count, (_, prediction) in enumerate(
            pipeline.predict(generated_frames, frames=FRAMES, in_flight=3), start=1
        ):
            seqs.append(prediction.seq)
            if count == 5:  # a crash, not a stop: LocalPipeline is not told
                os.kill(pipeline.process("local-stage1").pid, signal.SIGKILL)
        assert pipeline.restarts == {"local-stage1": 1}
    assert sorted(seqs) == list(range(FRAMES))
    assert "local-stage1 exited with status -9; starting it again" in caplog.text
    ready = [r.getMessage() for r in caplog.records if r.name == "aiotedge.nodes.stage"
             and "stage 1 ready" in r.getMessage()]
    assert len(ready) == 2 and all(line.startswith("[local-stage1] ") for line in ready)


def test_a_stage_that_stops_on_a_mistake_ends_the_run_with_its_reason(
    broker, split3, tmp_path
):
    broken = tmp_path / "split"
    shutil.copytree(split3.directory, broken)
    segment = broken / split3.stages[1].file
    segment.write_bytes(segment.read_bytes()[:-16] + bytes(16))  # not the file it was
    with pytest.raises(PipelineError) as stopped, LocalPipeline(
            Manifest.load(broken), broker=broker.address, ready_timeout=60):
        pass
    message = str(stopped.value)
    assert message.startswith("local-stage1 stopped: ")
    assert "sha256" in message and "\n" not in message


def test_aiotedge_run_takes_a_config_and_fps_and_prefixes_its_stages_lines(
    split3, generated_photos, tmp_path
):
    config = tmp_path / "run.toml"
    config.write_text('[pipeline]\nname = "bench"\n[stage]\nthreads = 1\n')
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "aiotedge", "run", "--manifest", str(split3.directory),
         "--images", str(generated_photos), "--config", str(config), "--fps", "50",
         "--frames", "4"],
        capture_output=True, text=True, timeout=180, check=False,
        env={**os.environ, "TMPDIR": str(scratch)},
    )
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 4
    assert "[bench-stage0] stage 0 ready: aiotedge-frames/bench/stage/0 -> " in result.stderr
    assert "[bench-stage2] stage 2 ready" in result.stderr
    assert "XNNPACK" not in result.stderr  # LiteRT's note, once per stage process
    assert list(scratch.iterdir()) == []  # the private broker's folder is gone


def test_the_runtimes_note_goes_to_the_debug_log(split3):
    """Not lost: `-v` (debug logging) shows it, as a log line."""
    program = ("import logging, sys\n"
               "logging.basicConfig(level=logging.DEBUG, stream=sys.stdout)\n"
               "from aiotedge.contracts.manifest import Manifest\n"
               "from aiotedge.tflite.runtime import open_segment\n"
               f"open_segment(Manifest.load({str(split3.directory)!r}), 0)\n")
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                            timeout=60, check=True)
    assert result.stderr == ""
    assert ("DEBUG:aiotedge.tflite.runtime:runtime: Created TensorFlow Lite XNNPACK delegate "
            "for CPU.") in result.stdout
