"""The install profiles, each in a clean virtual environment of its own, from the project's
wheel, running what its user runs.

- board: `pip install .` (README, quickstart.md)
- service: the venv and pip commands of scripts/install-board.sh (`.[systemd,metrics]`)
- camera: `pip install .[video,watch]` (cameras.md)
- workstation: `pip install .[converter]`, TensorFlow (converter.md)

Each runs every `--help` of `aiotedge` and `aiotedge-convert`, and a stage started with the
quickstart's TOML under a NOTIFY_SOCKET of the test's (READY=1, a frame served, STOPPING=1,
exit 0: with systemd-python in `service`, without it in the others). The board also runs the
demo's converter commands, and every feature whose extra it lacks must stop in one line naming
the extra, exit 2; the camera reads a video; the workstation imports a Keras model.

Fast enough for the suite: the wheel is built once per session, each venv once, and pip's
cache serves the downloads after the first run (the workstation's TensorFlow is the largest).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from aiotedge.contracts.manifest import Manifest
from aiotedge.contracts.topics import Topics
from aiotedge.contracts.wire import Frame, decode_activation, encode_frame
from support.paths import REPO
from support.stages import AnsweringStage
from tests.test_systemd import (
    INSTALLED_BINARY,
    TIMEOUT,
    NotifySocket,
    daemon_env,
    dry_run_argv,
    exec_start,
    running,
    subscribe,
)

#: what a wheel is built from
SOURCES = ("aiotedge", "converter", "setup.cfg", "pyproject.toml", "README.md")
#: profile -> the extras `pip install` is given (`service`: install-board.sh decides)
EXTRAS = {"board": "", "camera": "video,watch", "workstation": "converter"}
PROFILES = ["board", "service", "camera", "workstation"]
#: upper bound for one pip or venv command (the first run downloads TensorFlow)
INSTALL_TIMEOUT = 900

#: `-m "not install_profiles"` leaves them out; a test's limit covers building its profile
pytestmark = [pytest.mark.install_profiles, pytest.mark.timeout(INSTALL_TIMEOUT)]
SERVICE_VENV = str(Path(INSTALLED_BINARY).parents[1])


@pytest.fixture(scope="session")
def wheel(tmp_path_factory) -> Path:
    """The project's wheel, built once from a copy of its sources (building in place would
    leave build/ and *.egg-info in the checkout)."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    source.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(REPO / name, source / name)
    pip("wheel", "--no-deps", "--wheel-dir", str(root), str(source))
    (built,) = root.glob("aiotedge-*.whl")
    return built


def pip(*args: str) -> None:
    """This interpreter's pip (`--python VENV` installs into a venv made without one)."""
    done = subprocess.run([sys.executable, "-m", "pip", *args, "--quiet", "--no-input"],
                          capture_output=True, text=True, timeout=INSTALL_TIMEOUT, check=False)
    assert done.returncode == 0, f"pip {' '.join(args)}:\n{done.stdout}{done.stderr}"


class Venv:
    """A virtual environment holding one install profile."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.python = path / "bin" / "python"

    def program(self, name: str) -> str:
        return str(self.path / "bin" / name)

    def run(self, argv: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
        """A command of this venv's, in a clean environment, from `cwd` (never the checkout,
        whose aiotedge/ a `python -c` would import instead of the installed one)."""
        return subprocess.run(argv, cwd=cwd, env=clean_env(), capture_output=True, text=True,
                              timeout=timeout, check=False)


def clean_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The test's environment (or `env`) without what would point Python elsewhere."""
    env = dict(os.environ if env is None else env)
    for key in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"):
        env.pop(key, None)
    return env


def service_commands(wheel: Path, venv: Path) -> list[list[str]]:
    """install-board.sh's commands that make its venv (`--source` the wheel), aimed at
    `venv` instead of /opt/aiotedge/venv."""
    commands = [[arg.replace(SERVICE_VENV, str(venv)) for arg in argv]
                for argv in dry_run_argv("--source", str(wheel), "--node", "stage1")
                if any(arg.startswith(SERVICE_VENV) for arg in argv)
                and ("venv" in argv or "pip" in argv)]
    assert [argv[1:3] for argv in commands] == [["-m", "venv"], ["-m", "pip"], ["-m", "pip"]], \
        commands
    return commands


def build(profile: str, venv: Venv, wheel: Path) -> Venv:
    """`profile` installed into `venv` from `wheel`, as its user installs it."""
    if profile == "service":
        if shutil.which("pkg-config") is None or subprocess.run(
                ["pkg-config", "--exists", "libsystemd"], check=False).returncode:
            pytest.skip("building systemd-python needs libsystemd-dev and pkg-config "
                        "(install-board.sh installs them with apt-get)")
        for argv in service_commands(wheel, venv.path):
            done = subprocess.run(argv, capture_output=True, text=True, env=clean_env(),
                                  timeout=INSTALL_TIMEOUT, check=False)
            assert done.returncode == 0, f"{argv}:\n{done.stdout}{done.stderr}"
        return venv
    # without a pip of its own, and nothing byte-compiled ahead (TensorFlow's thousands of
    # modules): the profile's packages are what counts, and it is faster
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv.path)], check=True,
                   env=clean_env(), timeout=INSTALL_TIMEOUT)
    extras = f"[{EXTRAS[profile]}]" if EXTRAS[profile] else ""
    pip("--python", str(venv.python), "install", "--no-compile",
        f"aiotedge{extras} @ {wheel.as_uri()}")
    return venv


def wanted_profiles(session: pytest.Session) -> list[str]:
    """The profiles the selected tests of this file use: a `profile` parameter or a
    `<profile>_venv` fixture."""
    wanted = []
    for item in session.items:
        if getattr(item, "module", None) is not sys.modules[__name__]:
            continue
        callspec = getattr(item, "callspec", None)
        names = [callspec.params.get("profile")] if callspec else []
        names += [name.removesuffix("_venv") for name in item.fixturenames]
        wanted += [name for name in names if name in PROFILES and name not in wanted]
    return wanted


@pytest.fixture(scope="session")
def installed(wheel, tmp_path_factory, request):
    """`installed(profile) -> Venv`. At the first call every profile the session's tests use
    starts building, two at a time (pip waits on the disk and the network about as long as it
    computes), so that a test waits for its own profile only."""
    pool = ThreadPoolExecutor(max_workers=2)
    builds: dict[str, Future[Venv]] = {}

    def start(profile: str) -> None:
        venv = Venv(tmp_path_factory.mktemp(profile) / "venv")
        builds[profile] = pool.submit(build, profile, venv, wheel)

    def make(profile: str) -> Venv:
        if not builds:
            for name in wanted_profiles(request.session):
                start(name)
        if profile not in builds:
            start(profile)
        return builds[profile].result()

    yield make
    pool.shutdown(cancel_futures=True)


@pytest.fixture(params=PROFILES)
def profile(request, installed) -> tuple[str, Venv]:
    return request.param, installed(request.param)


@pytest.fixture
def board_venv(installed) -> Venv:
    return installed("board")


@pytest.fixture
def camera_venv(installed) -> Venv:
    return installed("camera")


@pytest.fixture
def workstation_venv(installed) -> Venv:
    return installed("workstation")


# -- every --help ---------------------------------------------------------------------------

HELPS = """
import argparse, contextlib, io, json, sys
import aiotedge
from aiotedge.cli import build_parser as board, main as board_main
from aiotedge_converter.cli import build_parser as workstation, main as workstation_main

def commands(parser):
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return list(action.choices)

found = {"package": aiotedge.__file__, "helps": {}}
for prog, parser, main in (("aiotedge", board, board_main),
                           ("aiotedge-convert", workstation, workstation_main)):
    for command in commands(parser()):
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            try:
                main([command, "--help"])
                status = "returned"
            except SystemExit as exit:
                status = exit.code
        found["helps"][f"{prog} {command}"] = [status, out.getvalue()]
print(json.dumps(found))
"""


def test_every_help_runs(profile, tmp_path):
    name, venv = profile
    for program in ("aiotedge", "aiotedge-convert"):
        done = venv.run([venv.program(program), "--help"], tmp_path)
        assert done.returncode == 0 and done.stdout.startswith(f"usage: {program}"), \
            f"{name}: {done.stderr}"
    done = venv.run([str(venv.python), "-I", "-c", HELPS], tmp_path)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found["package"].startswith(str(venv.path)), found["package"]
    assert len(found["helps"]) >= 10 and "aiotedge-convert plan" in found["helps"]
    for command, (status, output) in found["helps"].items():
        assert status == 0 and output.startswith(f"usage: {command}"), \
            f"{name}: {command} --help: {status}\n{output}"


# -- the quickstart's stage, under a NOTIFY_SOCKET ------------------------------------------

QUICKSTART = REPO / "docs" / "quickstart.md"


def quickstart_config(path: Path, broker, manifest: Manifest) -> Path:
    """docs/quickstart.md's node.toml (stage 1 of pipeline greenhouse), for the test's broker
    and split."""
    text = QUICKSTART.read_text()
    toml = text.split("```toml\n", 1)[1].split("```", 1)[0]
    replacements = {
        'host = "broker.lan"': f'host = "127.0.0.1"\nport = {broker.port}',
        'manifest = "/opt/aiotedge/split"': f"manifest = {json.dumps(str(manifest.directory))}",
    }
    for old, new in replacements.items():
        assert old in toml, f"quickstart.md's TOML no longer says {old!r}: update this test"
        toml = toml.replace(old, new)
    path.write_text(toml)
    return path


def test_the_quickstart_stage_notifies_systemd_and_serves(profile, broker, split3, tmp_path):
    """As its systemd unit runs it; with systemd-python (`service`) or without (the others)."""
    name, venv = profile
    has_systemd_python = venv.run([str(venv.python), "-I", "-c", "import systemd.daemon"],
                                  tmp_path).returncode == 0
    assert has_systemd_python == (name == "service")
    config = quickstart_config(tmp_path / "node.toml", broker, split3)
    argv = exec_start("aiotedge-stage@.service", config, (venv.program("aiotedge"),))
    topics = Topics("greenhouse")
    notify = NotifySocket(tmp_path)
    log = tmp_path / "stage.log"
    output, activations = subscribe(broker, topics.stage_input(2))
    spec = split3.stages[1].input
    frame = Frame("quickstart-1", "test", 1, time.time(),
                  tensor=np.zeros(spec.shape, dtype=spec.dtype), scale=spec.scale,
                  zero_point=spec.zero_point)
    announced, states = subscribe(broker, topics.availability("+"))
    try:
        with running(argv, clean_env(daemon_env(notify)), log) as stage:
            notify.expect("READY=1", stage, log)
            # READY=1 follows the subscription's request, its retained `online` the broker's
            # taking it (one connection, in order): a frame sent before could find nobody
            assert states.get(timeout=TIMEOUT) == b"online"
            output.publish(topics.stage_input(1), encode_frame(frame), qos=1)
            result = decode_activation(activations.get(timeout=TIMEOUT), split3.stages[2].input)
            assert result.frame_id == "quickstart-1"
            stage.send_signal(signal.SIGTERM)
            notify.expect("STOPPING=1", stage, log)
            assert stage.wait(timeout=TIMEOUT) == 0, log.read_text()
    finally:
        output.stop()
        announced.stop()
        notify.close()


# -- the board: the demo's commands, and one line for each missing extra ----------------------


def test_the_demos_commands_run_on_a_boards_install(board_venv, test_models, test_labels,
                                                    generated_photos, tmp_path):
    """`make demo` installs the board package only: analyze, split, verify and run need no
    extra (README.md, "What make demo does")."""
    venv = board_venv
    convert = venv.program("aiotedge-convert")
    model, out = str(test_models["int8"]), str(tmp_path / "split")
    for argv in ([convert, "analyze", model],
                 [convert, "split", model, "--stages", "3", "--out", out, "--labels",
                  str(test_labels)],
                 [convert, "verify", out, "--images", str(generated_photos)],
                 [venv.program("aiotedge"), "run", "--manifest", out, "--source",
                  str(generated_photos)]):
        done = venv.run(argv, tmp_path)
        assert done.returncode == 0, f"{shlex.join(argv)}:\n{done.stdout}{done.stderr}"
    photos = sorted(path.name for path in generated_photos.iterdir())
    assert all(name in done.stdout for name in photos), done.stdout  # a prediction each


def one_line_naming(done: subprocess.CompletedProcess, extra: str) -> None:
    """Exit 2 and a single line on stderr that ends with the pip command for `extra`."""
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].endswith(f"pip install 'aiotedge[{extra}]'"), lines[0]


def node_toml(path: Path, broker, body: str) -> Path:
    path.write_text(f'[broker]\nhost = "127.0.0.1"\nport = {broker.port}\n'
                    f'[pipeline]\nname = "extras"\n{body}')
    return path


def test_a_feature_whose_extra_is_missing_says_which_to_install(board_venv, broker, split3,
                                                                test_models, tmp_path):
    venv = board_venv
    board, convert = venv.program("aiotedge"), venv.program("aiotedge-convert")
    manifest = json.dumps(str(split3.directory))
    metrics = node_toml(tmp_path / "metrics.toml", broker,
                        f"[stage]\nmanifest = {manifest}\nindex = 0\n"
                        "[stats]\nprometheus_port = 9\n")
    photos = tmp_path / "photos"
    photos.mkdir()
    keras = tmp_path / "model.keras"
    keras.write_bytes(b"a Keras file")
    profile = tmp_path / "profile.json"
    profile.write_text("{}")
    cases = {
        "metrics": [board, "stage", "--config", str(metrics)],
        "status": [board, "status", "--broker", f"127.0.0.1:{broker.port}", "--watch"],
        "video": [board, "camera", "--broker", f"127.0.0.1:{broker.port}", "--source",
                  str(tmp_path / "clip.mp4")],
        "watch": [board, "camera", "--config", str(node_toml(
            tmp_path / "watch.toml", broker,
            f"[camera]\nsource = {json.dumps(str(photos))}\nwatch = true\n"))],
        "converter": [convert, "plan", str(test_models["int8"]), "--boards", "2", "--profile",
                      str(profile), "--out", str(tmp_path / "plan")],
    }
    (tmp_path / "clip.mp4").write_bytes(b"not decoded: PyAV is missing")
    for extra, argv in cases.items():
        one_line_naming(venv.run(argv, tmp_path), extra)
    one_line_naming(venv.run([convert, "import", str(keras), "--out", str(tmp_path / "m.tflite")],
                             tmp_path), "converter")


# -- the camera node and the workstation ----------------------------------------------------


def test_a_camera_node_reads_a_video(camera_venv, broker, tmp_path):
    from support.media import moving_pattern

    venv = camera_venv
    video = moving_pattern(tmp_path / "clip.mp4", seconds=1, size="160x120", fps=10)
    pipeline = AnsweringStage(broker, "cameras")
    try:
        done = venv.run([venv.program("aiotedge"), "camera", "--broker",
                         f"127.0.0.1:{broker.port}", "--pipeline", "cameras", "--source",
                         str(video), "--frames", "3"], tmp_path)
        assert done.returncode == 0, done.stderr
        assert len(pipeline.wait_frames(3)) >= 3
    finally:
        pipeline.stop()


def test_a_workstation_imports_plans_and_splits_a_keras_model(workstation_venv, tmp_path):
    venv = workstation_venv
    convert = venv.program("aiotedge-convert")
    model = tmp_path / "model.tflite"
    done = venv.run([convert, "import", "--arch", "mobilenet_v2", "--input-size", "32",
                     "--alpha", "0.35", "--classes", "3", "--out", str(model)], tmp_path,
                    timeout=300)
    assert done.returncode == 0, done.stderr
    profile = tmp_path / "profile.json"
    for argv in ([venv.program("aiotedge"), "profile", str(model), "--out", str(profile),
                  "--no-mqtt", "--runs", "1", "--rounds", "1", "--warmup", "0"],
                 [convert, "plan", str(model), "--boards", "3", "--profile", str(profile),
                  "--out", str(tmp_path / "plan")]):
        done = venv.run(argv, tmp_path, timeout=300)
        assert done.returncode == 0, f"{shlex.join(argv)}:\n{done.stdout}{done.stderr}"
    assert sorted(p.name for p in (tmp_path / "plan" / "boards").glob("*.toml"))
