"""The board side on arm64, as on a Raspberry Pi with 64-bit Raspberry Pi OS: a Debian 12 arm64
root run under qemu-user emulation, with aiotedge installed in it by install-board.sh as
docs/deploy-pi-cluster.md says (scripts/arm64-root.sh). `make test-arm64` builds the root and
runs this file; elsewhere it skips.

The root shares the host's network: its daemons talk to the test's mosquitto on the loopback.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tomli_w

from aiotedge.config.sections import CameraConfig
from aiotedge.contracts.events import Prediction
from aiotedge.contracts.manifest import Manifest
from aiotedge.contracts.topics import Topics
from aiotedge.contracts.wire import Frame, decode_activation, encode_frame
from aiotedge.media.image import decode_image, list_images, preprocess, read_photo
from aiotedge.media.prepare import ModelInput
from aiotedge.media.sources import Stills
from aiotedge.nodes.daemons.camera import Camera
from aiotedge.nodes.mqtt.broker import LocalBroker
from aiotedge.nodes.mqtt.session import MqttSession
from aiotedge.tflite.runtime import open_segment
from support.paths import REPO, SHARED_DATA, SHARED_LABELS, SHARED_MODEL
from support.watch import wait_all_online

ROOT = Path(os.environ.get("AIOTEDGE_ARM64_ROOT", "/nonexistent"))
SCRIPT = REPO / "scripts" / "arm64-root.sh"
#: where arm64-root.sh puts the board's things (docs/deploy-pi-cluster.md, section 5)
BOARD_CHECKOUT = "/home/pi/aiotedge"
BOARD_VENV = "/opt/aiotedge/venv"
MODELS = "/opt/aiotedge/models/greenhouse"
#: the tests' interpreter in the root, which sees the board's venv
TEST_PYTHON = "/opt/aiotedge-tests/venv/bin/python"
#: a test's configs, read-only in the root
CONFIGS = "/srv/aiotedge-test"
SHARED_IN_ROOT = "/srv/shared-data"
PIPELINE = "local"  # wait_all_online's
#: the mixed pipeline's figures, for docs/benchmarks.md (arm64-root.sh test prints them)
REPORT = os.environ.get("AIOTEDGE_ARM64_REPORT")

#: The board-side tests: they import nothing of the converter and build no model with
#: TensorFlow (which has no place on a board); those of them needing ../shared get it bound in.
BOARD_TESTS = [
    "tests/test_chain_watch.py",
    "tests/test_codec.py",
    "tests/test_config.py",
    "tests/test_gaps.py",
    "tests/test_homeassistant.py",
    "tests/test_image.py",
    "tests/test_node_reports.py",
    "tests/test_security.py",
    "tests/test_security_dynsec.py",
    "tests/test_session.py",
    "tests/test_stage_node.py",
    "tests/test_status.py",
    "tests/test_wire.py",
    "tests/test_wire_fuzz.py",
]
#: promtool (Prometheus's, a server's tool) checks the metric names: the same text on every
#: architecture, checked by the host's suite
NOT_ON_BOARD = ["tests/test_node_reports.py::test_stage_metrics_follow_prometheus_conventions",
                "tests/test_node_reports.py::test_camera_metrics_follow_prometheus_conventions"]

pytestmark = pytest.mark.skipif(
    not (ROOT / ".aiotedge-root-key").is_file()
    or not Path("/proc/sys/fs/binfmt_misc/qemu-aarch64").is_file(),
    reason="needs the arm64 root and qemu-user: run `make test-arm64` (scripts/arm64-root.sh "
    "builds the root, as root, and runs this file)",
)


def in_root(*argv: str, binds: dict[Path, str] | None = None) -> list[str]:
    """The command that runs `argv` in the arm64 root, host folders bound in read-only."""
    options = [option for host, inside in (binds or {}).items()
               for option in ("--bind", f"{host}:{inside}")]
    return [str(SCRIPT), "run", *options, *argv]


def test_the_root_is_arm64_and_runs_the_board_install():
    out = subprocess.run(
        in_root(TEST_PYTHON, "-P", "-c",
                "import platform, aiotedge; print(platform.machine(), aiotedge.__file__)"),
        capture_output=True, text=True, check=True, timeout=300,
    ).stdout.split()
    assert out[0] == "aarch64"
    assert out[1].startswith(f"{BOARD_VENV}/lib/python3.11/site-packages/aiotedge/")


@pytest.mark.timeout(1800)  # emulated: several times slower than on the host
def test_board_side_tests_pass_on_arm64():
    run_board_tests(NOT_ON_BOARD)


def run_board_tests(deselected: list[str]) -> None:
    """BOARD_TESTS in the root but `deselected`, with the tests' python."""
    # -P and --import-mode=append: the tests import the aiotedge install-board.sh installed,
    # not the copy of the repository they run from
    binds = {SHARED_DATA: SHARED_IN_ROOT} if SHARED_MODEL.is_file() else {}
    result = subprocess.run(
        in_root("env", "-C", BOARD_CHECKOUT, f"AIOTEDGE_SHARED_DATA={SHARED_IN_ROOT}",
                TEST_PYTHON, "-P", "-m", "pytest", "-q", "-p", "no:cacheprovider",
                "--import-mode=append", *BOARD_TESTS,
                *(f"--deselect={test}" for test in deselected), binds=binds),
        check=False, capture_output=True, text=True, timeout=1800,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]


# -- stage daemons on both architectures ------------------------------------------------------


@dataclass
class Demo:
    """The demo's 5-stage split of the real model, and every photo as (name, bytes)."""

    manifest: Manifest
    photos: list[tuple[str, bytes]]


@pytest.fixture(scope="module")
def demo(shared_data, split_into) -> Demo:
    manifest = split_into(SHARED_MODEL, 5, SHARED_LABELS)
    manifest.directory.chmod(0o755)  # readable by the root's `aiotedge` user once bound in
    return Demo(manifest, [(path.name, read_photo(path))
                           for path in list_images(shared_data / "images")])


def board_config(index: int, broker, manifest: str) -> dict:
    """The config install-board.sh installed (/etc/aiotedge/stage2.toml, from
    configs/cluster/), edited as a board owner does: this broker, this stage, one thread."""
    with open(ROOT / "etc/aiotedge/stage2.toml", "rb") as installed:
        config = tomllib.load(installed)
    config["broker"] = {"host": broker.address.host, "port": broker.address.port}
    config["pipeline"]["name"] = PIPELINE
    config["stage"].update(manifest=manifest, index=index, node=f"stage{index}", threads=1)
    return config


@contextmanager
def stage_daemons(broker, manifest: Manifest, arm64: set[int], configs: Path,
                  stages: list[int] | None = None) -> Iterator[None]:
    """`aiotedge stage` for each of `stages` (all by default): on the host (this venv), or in
    the arm64 root as its unit runs it (user aiotedge, the board's venv, the split under
    /opt/aiotedge/models)."""
    stages = list(range(len(manifest.stages))) if stages is None else stages
    configs.mkdir(mode=0o755)
    binds = {configs: CONFIGS, manifest.directory: MODELS}
    with ExitStack() as stack:
        daemons = {}
        for index in stages:
            on_arm64 = index in arm64
            config = board_config(index, broker, MODELS if on_arm64 else str(manifest.directory))
            path = configs / f"stage{index}.toml"
            path.write_text(tomli_w.dumps(config))
            path.chmod(0o644)
            argv = (in_root("runuser", "-u", "aiotedge", "--", f"{BOARD_VENV}/bin/aiotedge",
                            "stage", "--config", f"{CONFIGS}/{path.name}", binds=binds)
                    if on_arm64 else
                    [sys.executable, "-m", "aiotedge", "stage", "--config", str(path)])
            log = configs / f"stage{index}.log"
            with log.open("w") as output:
                daemon = subprocess.Popen(argv, stdout=output, stderr=subprocess.STDOUT,
                                          start_new_session=True)
            stack.callback(stop_daemon, daemon)
            daemons[log] = daemon
        wait_online(broker, [f"stage{k}" for k in stages], daemons)
        yield


def wait_online(broker, nodes: list[str], daemons: dict[Path, subprocess.Popen]) -> None:
    """Until every node is online; a daemon that exits meanwhile fails the test with its log
    (an emulated start takes seconds, so the wait is long)."""
    for _ in range(60):
        dead = [log for log, daemon in daemons.items() if daemon.poll() is not None]
        if dead:
            pytest.fail(f"{dead[0].stem} exited: {dead[0].read_text()[-3000:]}")
        try:
            return wait_all_online(broker, nodes, timeout=10)
        except AssertionError:
            continue
    pytest.fail(f"not all of {nodes} online within 10 minutes")


def stop_daemon(daemon: subprocess.Popen) -> None:
    """SIGTERM to its whole group (the root's wrapper, runuser, the daemon): it says offline."""
    if daemon.poll() is not None:
        return
    os.killpg(daemon.pid, signal.SIGTERM)
    try:
        daemon.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(daemon.pid, signal.SIGKILL)
        daemon.wait()


def predict(broker, demo: Demo) -> dict[str, Prediction]:
    """Every photo through the running stages once, as a camera sends them."""
    manifest, photos = demo.manifest, demo.photos
    topics = Topics(PIPELINE)
    predictions: dict[str, Prediction] = {}
    arrived = threading.Condition()

    def record(message) -> None:
        prediction = Prediction.parse(message.payload)
        with arrived:
            predictions[prediction.name] = prediction
            arrived.notify_all()

    listener = MqttSession(broker.address, "arm64-listener")
    listener.subscribe(topics.predictions, record, qos=1)
    listener.start()
    session = MqttSession(broker.address, "arm64-camera")
    session.start()
    try:
        assert listener.wait_connected(10) and session.wait_connected(10)
        camera = Camera(session, topics, CameraConfig(name="arm64", in_flight=len(photos)),
                        model=ModelInput(manifest.preprocessing, manifest.stage(0).input))
        camera.run(Stills(photos), len(photos))
        with arrived:
            assert arrived.wait_for(lambda: len(predictions) == len(photos), 600), predictions
    finally:
        session.stop()
        listener.stop()
    return predictions


@pytest.fixture(scope="module")
def x86_64_predictions(demo, tmp_path_factory) -> dict[str, Prediction]:
    """The all-x86_64 pipeline's predictions: what the others are compared with."""
    configs = tmp_path_factory.mktemp("x86_64") / "configs"
    with LocalBroker() as broker, stage_daemons(broker, demo.manifest, set(), configs):
        return predict(broker, demo)


@pytest.mark.timeout(1200)
def test_an_arm64_stage_daemon_computes_its_segment(broker, demo, tmp_path):
    """Stage 2 on arm64, as its unit runs it, given the host's stage-1 activations: its output
    against the host's, in quantization steps."""
    five_stages, photos = demo.manifest, demo.photos
    topics = Topics(PIPELINE)
    host = [open_segment(five_stages, k) for k in range(3)]
    spec = five_stages.stage(1).output
    outputs: queue.Queue[Frame] = queue.Queue()
    session = MqttSession(broker.address, "feeder")
    session.subscribe(topics.stage_input(3), lambda m: outputs.put(
        decode_activation(m.payload, five_stages.stage(2).output)), qos=1)
    session.start()
    assert session.wait_connected(10)
    expected = {}
    with ExitStack() as stack:
        stack.callback(session.stop)
        stack.enter_context(stage_daemons(broker, five_stages, {2}, tmp_path / "configs", [2]))
        for seq, (name, data) in enumerate(photos):
            first = five_stages.stage(0).input
            tensor = preprocess(decode_image(data), five_stages.preprocessing, first)
            activation = host[1].run(host[0].run(tensor))
            expected[name] = host[2].run(activation)
            session.publish(topics.stage_input(2), encode_frame(Frame(
                name, "feeder", seq, 1.0, name=name, tensor=activation, scale=spec.scale,
                zero_point=spec.zero_point)), qos=1)
        got = {frame.frame_id: frame.tensor for frame in
               (outputs.get(timeout=600) for _ in photos)}
    assert set(got) == set(expected)
    steps = {name: int(np.abs(got[name].astype(int) - expected[name].astype(int)).max())
             for name in expected}
    write_report("stage 2 alone on arm64 (its output, max |difference| in quantization "
                 f"steps per photo): {steps}\n")


@pytest.mark.timeout(600)
def test_aiotedge_verify_on_arm64_keeps_every_stage_within_its_tolerance(demo):
    """The board's `aiotedge verify` (its venv, no TensorFlow) on the split's references,
    computed on x86_64: every stage within the tolerance, as every stage's start requires."""
    table = board_verify(demo)
    write_report(f"\naiotedge verify on arm64 (the references computed on x86_64):\n\n"
                 f"{table}\n")


def board_verify(demo: Demo) -> str:
    """`aiotedge verify` of the demo split in the root, every stage checked within its
    tolerance; its table."""
    result = subprocess.run(
        in_root(f"{BOARD_VENV}/bin/aiotedge", "verify", "--manifest", MODELS,
                binds={demo.manifest.directory: MODELS}),
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    rows = result.stdout.splitlines()[1:]
    assert [row.split()[0] for row in rows] == [str(i) for i in range(len(demo.manifest.stages))]
    assert all(row.split()[-1] in ("identical", "yes") for row in rows), result.stdout
    return result.stdout


def write_report(text: str) -> None:
    if REPORT:
        with open(REPORT, "a") as report:
            report.write(text)


@pytest.mark.timeout(1200)
@pytest.mark.parametrize("arm64", [{1, 3}, {0, 2, 4}], ids=["arm64-1-3", "arm64-0-2-4"])
def test_a_mixed_architecture_pipeline_keeps_every_top1(
    broker, demo, x86_64_predictions, arm64, tmp_path
):
    with stage_daemons(broker, demo.manifest, arm64, tmp_path / "configs"):
        mixed = predict(broker, demo)
    assert set(mixed) == set(x86_64_predictions)
    rows = []
    for name, reference in sorted(x86_64_predictions.items()):
        got = mixed[name]
        assert got.top[0].index == reference.top[0].index, (name, got.top, reference.top)
        assert [timing.stage for timing in got.stages] == [0, 1, 2, 3, 4]
        differences = [abs(a.score - b.score)
                       for a, b in zip(got.top, reference.top, strict=True)]
        classes = [s.index for s in got.top], [s.index for s in reference.top]
        same = ("same" if classes[0] == classes[1] else
                "same, reordered" if set(classes[0]) == set(classes[1]) else "other")
        rows.append(f"| {name} | {reference.top[0].label.split(',')[0]} | "
                    f"{reference.top[0].score:.3f} | {got.top[0].score:.3f} | "
                    f"{max(differences):.3f} | {same} |")
    on = ", ".join(map(str, sorted(arm64)))
    write_report(f"\nstages {on} on arm64, the others on x86_64:\n\n"
                 "| photo | top-1 | x86_64 | mixed | max top-5 difference | top-5 classes |\n"
                 "| --- | --- | --- | --- | --- | --- |\n" + "\n".join(rows) + "\n")

