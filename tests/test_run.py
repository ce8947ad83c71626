"""`aiotedge run`: a stage that dies is started again, one that stops on a mistake ends the run
with its reason, each stage's lines come out under its node name (and without the runtime's
XNNPACK note), `--config` and `--fps` are taken, and no temporary folder is left behind."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from aiotedge.contracts.errors import PipelineError
from aiotedge.contracts.manifest import Manifest
from aiotedge.contracts.topics import Topics
from aiotedge.nodes.daemons.local import LOCAL_CAMERA, LocalPipeline
from aiotedge.nodes.mqtt.session import MqttSession, read_retained

FRAMES = 24
#: frames without a result are sent again after 5 s, not the default 30
QUICK_RESENDS = dataclasses.replace(LOCAL_CAMERA, frame_timeout=5.0)


def test_a_stage_that_dies_is_started_again_and_no_frame_is_lost(
    broker, split3, generated_frames, caplog
):
    caplog.set_level(logging.INFO)
    seqs = []
    with LocalPipeline(split3, broker=broker.address, camera=QUICK_RESENDS) as pipeline:
        for count, (_, prediction) in enumerate(
            pipeline.predict(generated_frames, frames=FRAMES, in_flight=3), start=1
        ):
            seqs.append(prediction.seq)
            if count == 5:  # a crash, not a stop: LocalPipeline is not told
                os.kill(pipeline.process("local-stage1").pid, signal.SIGKILL)
        assert pipeline.restarts == {"local-stage1": 1}
    assert sorted(seqs) == list(range(FRAMES))
    assert "local-stage1 exited with status -9; starting it again" in caplog.text
    ready = [r.getMessage() for r in caplog.records if r.name == "aiotedge.nodes.daemons.stage"
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


def run_command(*args: str, scratch: Path, verbose: bool = False
                ) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "aiotedge", *(["-v"] if verbose else []), "run", *args],
        capture_output=True, text=True, timeout=180, check=False,
        env={**os.environ, "TMPDIR": str(scratch)},
    )


SUMMARY = re.compile(r"^4 frames in [\d.]+ s \([\d.]+ frames/s\), latency p50 \d+ ms, "
                     r"p95 \d+ ms, 0 lost; the daemons' log: (\S+)$")


def test_aiotedge_run_prints_predictions_and_a_summary_and_logs_its_stages_to_a_file(
    split3, generated_photos, tmp_path
):
    """`make demo` printed about 120 INFO lines around its 10 predictions."""
    config = tmp_path / "run.toml"
    config.write_text('[pipeline]\nname = "bench"\n[stage]\nthreads = 1\n')
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    result = run_command("--manifest", str(split3.directory), "--images", str(generated_photos),
                         "--config", str(config), "--fps", "50", "--frames", "4",
                         scratch=scratch)
    assert result.returncode == 0, result.stderr
    *predictions, summary = result.stdout.splitlines()
    assert [line.split()[1] for line in predictions] == [f"local#{k}" for k in range(4)]
    found = SUMMARY.match(summary)
    assert found, summary
    assert result.stderr == ""
    log = Path(found.group(1))
    assert log.parent == scratch  # the private broker's folder is gone; the log stays
    assert list(scratch.iterdir()) == [log]
    lines = log.read_text()
    assert "[bench-stage0] stage 0 ready: aiotedge-frames/bench/stage/0 -> " in lines
    assert "[bench-stage2] stage 2 ready" in lines
    assert "XNNPACK" not in lines  # LiteRT's note, once per stage process


def test_aiotedge_run_with_v_shows_its_stages_lines_and_writes_no_log(
    split3, generated_photos, tmp_path
):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    result = run_command("--manifest", str(split3.directory), "--images", str(generated_photos),
                         "--frames", "2", scratch=scratch, verbose=True)
    assert result.returncode == 0, result.stderr
    assert "[local-stage1] stage 1 ready" in result.stderr
    assert list(scratch.iterdir()) == []


def test_aiotedge_run_camera_takes_its_config_section_and_publishes_its_stats(
    broker, split3, generated_photos, tmp_path
):
    """It ignored every [camera] key but fps, was always named `local`, published no stats."""
    config = tmp_path / "run.toml"
    config.write_text('[camera]\nname = "porch"\nin_flight = 1\npreprocess = "tensor"\n'
                      '[stats]\ninterval = 0.2\n')
    result = run_command("--manifest", str(split3.directory), "--images", str(generated_photos),
                         "--config", str(config), "--broker", str(broker.address),
                         "--frames", "3", "--json", scratch=tmp_path)
    assert result.returncode == 0, result.stderr
    predictions = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(p["source"], p["seq"]) for p in predictions] == [("porch", k) for k in range(3)]
    reader = MqttSession(broker.address, "reader")
    reader.start()
    try:
        assert reader.wait_connected(10)
        topics = Topics("local")
        retained = read_retained(reader, [topics.stats("porch")], topics.probe("reader"))
    finally:
        reader.stop()
    stats = json.loads(retained[topics.stats("porch")])
    assert stats["published"] == 3 and stats["answered"] == 3


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
