"""The systemd units in systemd/, and the daemons' side of their contract.

`systemd-analyze verify` checks the unit files. The daemons are then run the way the units run
them (the unit's own ExecStart, with the install paths pointed at this checkout) with a
NOTIFY_SOCKET of the test's own: READY=1 once serving, WATCHDOG=1 every half WatchdogSec while
idle, STOPPING=1 on SIGTERM, exit 0, and `offline` on the availability topic. Last, a stage
serves a frame under the units' MemoryDenyWriteExecute= and SystemCallFilter=@system-service,
enforced here with the kernel's PR_SET_MDWE and a seccomp filter built from systemd's own list.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from aiotedge.contracts.manifest import Manifest
from aiotedge.contracts.topics import Topics
from aiotedge.contracts.wire import Frame, decode_activation, decode_photo, encode_frame
from aiotedge.nodes.mqtt.session import MqttSession
from support.paths import REPO, SHARED_IMAGES, SHARED_LABELS, SHARED_MODEL

UNITS = REPO / "systemd"
UNIT_FILES = ("aiotedge-stage@.service", "aiotedge-camera@.service", "aiotedge-node.service",
              "aiotedge.target")
INSTALLED_BINARY = "/opt/aiotedge/venv/bin/aiotedge"
#: upper bound for one awaited event; never a synchronisation
TIMEOUT = 30.0
#: WATCHDOG_USEC given to the daemons: pings every second
WATCHDOG_USEC = 2_000_000


# -- the unit files -----------------------------------------------------------------------------


def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    return path


def verify(directory: Path, units: list[str]) -> list[str]:
    """systemd-analyze verify on copies whose ExecStart runs an existing binary.

    verify only warns (exit 0) about unknown keys and values it cannot parse: every line it
    prints about our units counts as a problem.
    """
    result = subprocess.run(
        [systemd_analyze(), "verify", "--man=no", *(str(directory / u) for u in units)],
        capture_output=True, text=True, check=False,
    )
    problems = [line for line in (result.stdout + result.stderr).splitlines()
                if "aiotedge" in line]
    if result.returncode != 0:
        problems.append(f"systemd-analyze verify exited with {result.returncode}")
    return problems


def copy_units(directory: Path, extra_line: str = "") -> None:
    for name in UNIT_FILES:
        text = (UNITS / name).read_text()
        assert f"ExecStart={INSTALLED_BINARY} " in text or name.endswith(".target")
        text = text.replace(f"ExecStart={INSTALLED_BINARY} ", "ExecStart=/bin/true ")
        if extra_line and name.endswith(".service"):
            text = text.replace("[Service]\n", f"[Service]\n{extra_line}\n")
        (directory / name).write_text(text)


# instances as the docs enable them: the instance name is the node config's name
INSTANCES = ["aiotedge-stage@stage2.service", "aiotedge-camera@camera.service", "aiotedge.target"]


def test_the_units_pass_systemd_analyze_verify(tmp_path):
    copy_units(tmp_path)
    assert verify(tmp_path, INSTANCES) == []


def test_verify_would_catch_a_misspelt_key_or_a_bad_value(tmp_path):
    """The check above is worth something: the same check on broken copies reports them."""
    copy_units(tmp_path, "WatchdogSecs=30\nRestart=sometimes")
    problems = "\n".join(verify(tmp_path, INSTANCES))
    assert "Unknown key 'WatchdogSecs'" in problems
    assert "sometimes" in problems


def unit_settings(name: str) -> dict[str, str]:
    settings = {}
    for line in (UNITS / name).read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings[key] = value
    return settings


def test_the_stage_unit_is_a_notify_service_with_a_watchdog():
    stage = unit_settings("aiotedge-stage@.service")
    assert (stage["Type"], stage["NotifyAccess"], stage["WatchdogSec"]) == ("notify", "main", "30")
    assert (stage["Restart"], stage["User"]) == ("always", "aiotedge")
    assert stage["ExecStart"] == f"{INSTALLED_BINARY} stage --config /etc/aiotedge/%i.toml"
    camera = unit_settings("aiotedge-camera@.service")
    assert camera["ExecStart"] == f"{INSTALLED_BINARY} camera --config /etc/aiotedge/%i.toml"
    for unit in (stage, camera):
        assert (unit["PartOf"], unit["WantedBy"]) == ("aiotedge.target", "aiotedge.target")


def unit_values(name: str, key: str) -> list[str]:
    """Every value of a key given several times (DeviceAllow=)."""
    return [line.partition("=")[2] for line in (UNITS / name).read_text().splitlines()
            if line.startswith(f"{key}=")]


#: the sandboxing both daemons have; the camera differs only in which devices it may open
HARDENING = ("ProtectSystem", "ProtectHome", "PrivateTmp", "NoNewPrivileges",
             "CapabilityBoundingSet", "ProtectKernelTunables", "ProtectKernelModules",
             "ProtectKernelLogs", "ProtectControlGroups", "ProtectClock", "ProtectHostname",
             "ProtectProc", "RemoveIPC", "RestrictNamespaces", "RestrictRealtime",
             "RestrictSUIDSGID", "LockPersonality", "MemoryDenyWriteExecute",
             "SystemCallArchitectures", "SystemCallFilter", "SystemCallErrorNumber", "UMask")


def test_the_camera_unit_may_open_video_devices_and_keeps_the_rest_of_the_sandbox():
    camera = unit_settings("aiotedge-camera@.service")
    stage = unit_settings("aiotedge-stage@.service")
    assert "PrivateDevices" not in camera  # it hides /dev/video0 whatever DeviceAllow= says
    assert camera["DevicePolicy"] == "closed"  # the pseudo devices and these, nothing else
    assert unit_values("aiotedge-camera@.service", "DeviceAllow") == [
        "char-video4linux rw", "char-media rw", "char-dma_heap rw"]
    assert camera["SupplementaryGroups"] == "video"  # /dev/video* is root:video 0660
    assert {key: camera[key] for key in HARDENING} == {key: stage[key] for key in HARDENING}
    assert camera["RestrictAddressFamilies"] == \
        stage["RestrictAddressFamilies"] + " AF_NETLINK"  # libcamera's udev monitor


# -- scripts/install-board.sh ------------------------------------------------------------------

INSTALL = REPO / "scripts" / "install-board.sh"


def dry_run_output(*flags: str, arch: str | None = None) -> str:
    """All install-board.sh --dry-run --no-apt printed: its commands are the lines `+ ...`;
    `arch`: the Debian architecture it is told it runs on."""
    env = {**os.environ, "AIOTEDGE_DEB_ARCH": arch} if arch else None
    result = subprocess.run(["bash", str(INSTALL), "--dry-run", "--no-apt", *flags],
                            capture_output=True, text=True, check=False, env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout


def dry_run_argv(*flags: str) -> list[list[str]]:
    """The commands install-board.sh would run, each as its argv."""
    return [shlex.split(line[2:]) for line in dry_run_output(*flags).splitlines()
            if line.startswith("+ ")]


def dry_run(*flags: str) -> tuple[list[str], str]:
    """The commands install-board.sh would run (unquoted), and all it printed."""
    return [" ".join(argv) for argv in dry_run_argv(*flags)], dry_run_output(*flags)


def test_install_board_installs_every_unit_where_the_units_expect_things():
    commands, output = dry_run("--node", "stage2")
    assert sorted(p.name for p in UNITS.iterdir()) == sorted(UNIT_FILES)
    for name in UNIT_FILES:
        assert f"install -m 644 -o root -g root {UNITS / name} /etc/systemd/system/{name}" \
            in commands
    assert "systemctl enable aiotedge.target" in commands
    # ExecStart's binary is the venv's entry point, with the systemd extra (journald fields)
    venv = str(Path(INSTALLED_BINARY).parents[1])
    assert any(c.startswith(f"{venv}/bin/python -m pip install") and c.endswith("[systemd,metrics]")
               for c in commands), commands
    # the model folder the stage unit names, and the config folder readable by the service
    assert "install -d -m 755 -o root -g root /opt/aiotedge /opt/aiotedge/models" in commands
    assert "/opt/aiotedge/models" in unit_settings("aiotedge-stage@.service")["ReadOnlyPaths"]
    assert "install -d -m 750 -o root -g aiotedge /etc/aiotedge" in commands
    assert (f"install -m 644 -o root -g root {REPO}/configs/cluster/stage2.toml "
            "/etc/aiotedge/stage2.toml") in commands or "keeping /etc/aiotedge/stage2.toml" \
        in output


def test_install_board_makes_a_camera_node_that_sees_the_systems_picamera2():
    venv = str(Path(INSTALLED_BINARY).parents[1])
    camera, _ = dry_run("--camera", "--node", "camera")
    assert f"/usr/bin/python3 -m venv --system-site-packages {venv}" in camera
    assert any(c.startswith(f"{venv}/bin/python -m pip install")
               and c.endswith("[systemd,metrics,video,watch]") for c in camera), camera
    assert f"{venv}/bin/python -m pip install --quiet --upgrade simplejpeg" in camera
    stage, _ = dry_run("--node", "stage2")  # a stage board installs no camera library
    assert f"/usr/bin/python3 -m venv {venv}" in stage
    assert not any("video" in c or "simplejpeg" in c for c in stage), stage


def test_install_board_on_32_bit_arm_takes_tflite_runtime_and_debians_packages():
    """armhf (32-bit Raspberry Pi OS): no ai-edge-litert, NumPy or Pillow wheels on PyPI."""
    venv = str(Path(INSTALLED_BINARY).parents[1])
    commands = [" ".join(argv) for argv in
                (shlex.split(line[2:]) for line in
                 dry_run_output("--node", "stage2", arch="armhf").splitlines()
                 if line.startswith("+ "))]
    assert f"/usr/bin/python3 -m venv --system-site-packages {venv}" in commands
    assert (f"{venv}/bin/python -m pip install --quiet --upgrade tflite-runtime>=2.14,<2.15 "
            "paho-mqtt>=2.1,<3 prometheus-client>=0.17") in commands
    assert f"{venv}/bin/python -m pip install --quiet --upgrade --no-deps {REPO}" in commands
    assert not any("ai-edge-litert" in c or "[systemd,metrics]" in c for c in commands)
    camera = subprocess.run(["bash", str(INSTALL), "--dry-run", "--no-apt", "--camera"],
                            capture_output=True, text=True, check=False,
                            env={**os.environ, "AIOTEDGE_DEB_ARCH": "armhf"})
    assert camera.returncode == 1
    assert "--camera: a camera node needs a 64-bit OS" in camera.stderr


def test_a_venv_with_system_site_packages_imports_apt_packages(tmp_path):
    """How the camera node sees python3-picamera2: shown with another apt package, python3-gi
    (Picamera2 is Raspberry Pi OS's only)."""
    system = "/usr/bin/python3"
    if subprocess.run([system, "-c", "import gi"], capture_output=True,
                      check=False).returncode != 0:
        pytest.skip("python3-gi is not installed (Debian package python3-gi)")
    imports = {}
    for name, flags in (("plain", []), ("camera", ["--system-site-packages"])):
        subprocess.run([system, "-m", "venv", "--without-pip", *flags, str(tmp_path / name)],
                       check=True)
        imports[name] = subprocess.run([str(tmp_path / name / "bin" / "python"), "-c",
                                        "import gi"], capture_output=True, check=False)
    assert imports["plain"].returncode != 0
    assert imports["camera"].returncode == 0, imports["camera"].stderr


def test_install_board_passes_shellcheck():
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (sudo apt-get install shellcheck)")
    result = subprocess.run([shellcheck, str(INSTALL)], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stdout


# -- the daemons, run as the units run them ---------------------------------------------------


def exec_start(unit: str, config: Path,
               program: tuple[str, ...] = (sys.executable, "-m", "aiotedge")) -> list[str]:
    """The unit's ExecStart for instance `config`, run by `program` (this checkout's)."""
    argv = shlex.split(unit_settings(unit)["ExecStart"])
    assert argv[0] == INSTALLED_BINARY
    return [*program,
            *(str(config) if arg == "/etc/aiotedge/%i.toml" else arg for arg in argv[1:])]


def toml_string(value: object) -> str:
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


@pytest.fixture(scope="module")
def two_stages(shared_data, split_into) -> Manifest:
    return split_into(SHARED_MODEL, 2, SHARED_LABELS)


def node_config(path: Path, broker, section: str) -> Path:
    """A node's config file for the test's broker and pipeline, with `section` added."""
    path.write_text(f"""
[broker]
host = "127.0.0.1"
port = {broker.port}
[pipeline]
name = "systemd-test"
{section}
""")
    return path


def stage_config(path: Path, broker, manifest: Manifest, index: int, node: str) -> Path:
    return node_config(path, broker, f"""[stage]
manifest = {toml_string(manifest.directory)}
index = {index}
node = "{node}"
threads = 1
[stats]
interval = 0""")


def camera_config(path: Path, broker, source: Path, name: str, more: str) -> Path:
    return node_config(path, broker, f"""[camera]
source = {toml_string(source)}
name = "{name}"
{more}""")


class NotifySocket:
    """What systemd listens on for a Type=notify service: an AF_UNIX datagram socket."""

    def __init__(self, directory: Path) -> None:
        path = directory / "notify"
        if len(str(path)) > 100:  # sun_path holds 108 bytes
            path = Path(tempfile.mkdtemp(prefix="aiotedge-notify-")) / "notify"
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(1.0)
        self.received: list[str] = []

    def expect(self, state: str, process: subprocess.Popen, log: Path) -> None:
        """Wait for a datagram holding the line `state` (e.g. READY=1)."""
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            try:
                datagram = self.sock.recv(4096).decode()
            except TimeoutError:
                if process.poll() is not None:
                    pytest.fail(f"the daemon exited with {process.returncode} before {state}:\n"
                                f"{log.read_text()}")
                continue
            self.received.append(datagram)
            if state in datagram.splitlines():
                return
        pytest.fail(f"no {state} within {TIMEOUT} s; got {self.received}:\n{log.read_text()}")

    def close(self) -> None:
        self.sock.close()
        self.path.unlink(missing_ok=True)


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_without_systemd_python_notify_sends_the_datagram_itself(tmp_path, monkeypatch,
                                                                 abstract):
    """A board's plain `pip install .` has no systemd-python: the states still reach
    $NOTIFY_SOCKET, a path or (a leading '@') a name in the abstract namespace."""
    from aiotedge.nodes.observe import systemd

    monkeypatch.setattr(systemd, "_sd_daemon", None)
    if abstract:
        name = f"aiotedge-test-{os.getpid()}-{time.monotonic_ns()}"
        receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        receiver.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    else:
        notify = NotifySocket(tmp_path)
        receiver = notify.sock
        monkeypatch.setenv("NOTIFY_SOCKET", str(notify.path))
    receiver.settimeout(TIMEOUT)
    try:
        for state in ("READY=1", "STATUS=serving stage 1", "WATCHDOG=1", "STOPPING=1"):
            systemd.notify(state)
            assert receiver.recv(4096).decode() == state
    finally:
        receiver.close()


def daemon_env(notify: NotifySocket | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in {"INVOCATION_ID", "JOURNAL_STREAM", "WATCHDOG_PID", "WATCHDOG_USEC",
                        "NOTIFY_SOCKET"}}
    if notify is not None:
        env["NOTIFY_SOCKET"] = str(notify.path)
        env["WATCHDOG_USEC"] = str(WATCHDOG_USEC)
    return env


@contextlib.contextmanager
def running(argv: list[str], env: dict[str, str], log: Path):
    with open(log, "wb") as output:
        process = subprocess.Popen(argv, env=env, stdout=output, stderr=subprocess.STDOUT,
                                   cwd=REPO)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def subscribe(broker, topic: str) -> tuple[MqttSession, queue.Queue[str]]:
    received: queue.Queue[str] = queue.Queue()
    session = MqttSession(broker.address, f"test-{os.getpid()}-{time.monotonic_ns()}")
    session.subscribe(topic, lambda message: received.put(message.payload), qos=1)
    session.start()
    assert session.wait_connected(TIMEOUT)
    return session, received


def test_the_stage_daemon_notifies_ready_watchdog_and_stopping(broker, two_stages, tmp_path):
    config = stage_config(tmp_path / "stage1.toml", broker, two_stages, 1, "stage1-notify")
    notify = NotifySocket(tmp_path)
    log = tmp_path / "daemon.log"
    availability = Topics("systemd-test").availability("stage1-notify")
    with running(exec_start("aiotedge-stage@.service", config), daemon_env(notify), log) as daemon:
        notify.expect("READY=1", daemon, log)
        # ready means connected and announced: the retained availability says so
        watcher, states = subscribe(broker, availability)
        try:
            assert states.get(timeout=TIMEOUT) == b"online"
            # idle, and still pinging the watchdog (WatchdogSec/2 = 1 s here)
            notify.received.clear()
            notify.expect("WATCHDOG=1", daemon, log)
            notify.expect("WATCHDOG=1", daemon, log)
            daemon.send_signal(signal.SIGTERM)
            notify.expect("STOPPING=1", daemon, log)
            assert daemon.wait(timeout=TIMEOUT) == 0, log.read_text()
            assert states.get(timeout=TIMEOUT) == b"offline"
        finally:
            watcher.stop()
            notify.close()


def test_the_camera_daemon_notifies_ready_and_stopping(broker, tmp_path):
    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (64, 48), (30, 160, 60)).save(photos / "leaf.jpg")
    config = camera_config(tmp_path / "camera.toml", broker, photos, "cam-notify",
                           "fps = 20.0\nloop = true")
    frames = Topics("systemd-test").stage_input(0)
    watcher, published = subscribe(broker, frames)
    notify = NotifySocket(tmp_path)
    log = tmp_path / "camera.log"
    try:
        with running(exec_start("aiotedge-camera@.service", config), daemon_env(notify),
                     log) as camera:
            notify.expect("READY=1", camera, log)
            assert decode_photo(published.get(timeout=TIMEOUT)).source == "cam-notify"
            camera.send_signal(signal.SIGTERM)
            notify.expect("STOPPING=1", camera, log)
            assert camera.wait(timeout=TIMEOUT) == 0, log.read_text()
    finally:
        watcher.stop()
        notify.close()


# -- the units' sandbox: W^X memory and the @system-service system calls ------------------------

#: Run by a Python that has libseccomp's bindings (Debian: python3-seccomp); then exec's the
#: daemon. argv: mdwe(0/1) filter(0/1) program args...
SANDBOX = r"""
import ctypes, errno, os, subprocess, sys

if sys.argv[1] == "1":
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
        sys.exit(f"PR_SET_MDWE: errno {ctypes.get_errno()}")

if sys.argv[2] == "1":
    import seccomp

    listing = subprocess.run(["systemd-analyze", "syscall-filter"], capture_output=True,
                             text=True, check=True).stdout
    groups, group = {}, None
    for line in listing.splitlines():
        item = line.strip()
        if not item or item.startswith("#"):
            continue
        if line[0] != " ":
            group = groups.setdefault(item, [])
        else:
            group.append(item)

    def expand(name):
        calls = set()
        for item in groups[name]:
            calls |= expand(item) if item.startswith("@") else {item}
        return calls

    # SystemCallFilter=@system-service (@default is always allowed); anything else kills, which
    # is stricter than the units' SystemCallErrorNumber=EPERM.
    rules = seccomp.SyscallFilter(defaction=seccomp.KILL_PROCESS)
    for call in sorted(expand("@system-service") | expand("@default")):
        if call == "socket":
            continue
        try:
            rules.add_rule(seccomp.ALLOW, call)
        except (RuntimeError, ValueError, OSError):
            pass  # not a system call of this architecture
    # RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX: other families fail with EAFNOSUPPORT
    allowed = {1, 2, 10}  # AF_UNIX, AF_INET, AF_INET6
    for family in range(0, 64):
        action = seccomp.ALLOW if family in allowed else seccomp.ERRNO(errno.EAFNOSUPPORT)
        rules.add_rule(action, "socket", seccomp.Arg(0, seccomp.EQ, family))
    rules.load()

os.execv(sys.argv[3], sys.argv[3:])
"""


def mdwe_supported() -> bool:
    """PR_SET_MDWE exists since Linux 6.3; try it in a throwaway process."""
    probe = ("import ctypes, sys; "
             "sys.exit(0 if ctypes.CDLL(None).prctl(65, 1, 0, 0, 0) == 0 else 1)")
    return subprocess.run([sys.executable, "-c", probe], check=False).returncode == 0


def seccomp_python() -> str | None:
    """An interpreter with libseccomp's Python bindings, if this machine has one."""
    if shutil.which("systemd-analyze") is None:
        return None
    for candidate in (sys.executable, "/usr/bin/python3"):
        if Path(candidate).is_file() and subprocess.run(
            [candidate, "-c", "import seccomp"], capture_output=True, check=False
        ).returncode == 0:
            return candidate
    return None


def test_the_sandbox_is_enforced():
    """What the stage passes below is worth something: the sandbox refuses what it should."""
    checks = 0
    if mdwe_supported():
        writable_code = ("import mmap; "
                         "mmap.mmap(-1, 4096, prot=mmap.PROT_READ|mmap.PROT_WRITE|mmap.PROT_EXEC)")
        result = subprocess.run([sys.executable, "-c", SANDBOX, "1", "0",
                                 sys.executable, "-c", writable_code],
                                capture_output=True, text=True, check=False)
        assert "PermissionError" in result.stderr
        checks += 1
    filter_python = seccomp_python()
    if filter_python is not None:
        swapon = "import ctypes; ctypes.CDLL(None).swapon(b'/nonexistent', 0)"  # @swap
        result = subprocess.run([filter_python, "-c", SANDBOX, "0", "1",
                                 sys.executable, "-c", swapon], check=False)
        assert result.returncode == -signal.SIGSYS
        checks += 1
    if not checks:
        pytest.skip("neither PR_SET_MDWE (Linux >= 6.3) nor libseccomp's Python bindings "
                    "(sudo apt-get install python3-seccomp) are available")


def sandboxed(argv: list[str]) -> list[str]:
    """`argv` run under W^X and the units' system call filter, as much of it as this machine
    can enforce; skips the test when it can enforce neither."""
    mdwe = mdwe_supported()
    filter_python = seccomp_python()
    if not mdwe and filter_python is None:
        pytest.skip("neither PR_SET_MDWE (Linux >= 6.3) nor libseccomp's Python bindings "
                    "(sudo apt-get install python3-seccomp) are available")
    return [filter_python or sys.executable, "-c", SANDBOX,
            "1" if mdwe else "0", "1" if filter_python else "0", *argv]


def test_a_stage_serves_frames_inside_the_units_sandbox(broker, two_stages, tmp_path):
    config = stage_config(tmp_path / "stage0.toml", broker, two_stages, 0, "stage0-sandbox")
    sandbox = sandboxed(exec_start("aiotedge-stage@.service", config))
    topics = Topics("systemd-test")
    availability, states = subscribe(broker, topics.availability("stage0-sandbox"))
    output, activations = subscribe(broker, topics.stage_input(1))
    notify = NotifySocket(tmp_path)  # the notify and watchdog code paths run inside it too
    log = tmp_path / "sandboxed.log"
    photo = next(p for p in sorted(SHARED_IMAGES.iterdir()) if p.suffix == ".jpg").read_bytes()
    try:
        with running(sandbox, daemon_env(notify), log) as daemon:
            try:
                assert states.get(timeout=TIMEOUT) == b"online"
            except queue.Empty:
                pytest.fail(f"the sandboxed stage did not come up:\n{log.read_text()}")
            frame = Frame("sandbox-1", "test", 1, time.time(), image=photo)
            availability.publish(topics.stage_input(0), encode_frame(frame), qos=1)
            try:
                payload = activations.get(timeout=TIMEOUT)
            except queue.Empty:
                pytest.fail(f"no activation from the sandboxed stage:\n{log.read_text()}")
            result = decode_activation(payload, two_stages.stages[1].input)
            assert result.frame_id == "sandbox-1"
            assert result.tensor.shape == tuple(two_stages.stages[1].input.shape)
            daemon.send_signal(signal.SIGTERM)
            # a system call outside the filter would have been SIGSYS (-31), W^X a crash
            assert daemon.wait(timeout=TIMEOUT) == 0, log.read_text()
    finally:
        availability.stop()
        output.stop()
        notify.close()


def test_a_camera_reads_a_video_inside_the_units_sandbox(broker, tmp_path):
    """PyAV (FFmpeg's decoders) under W^X and the system call filter, as the camera unit runs."""
    from support.media import moving_pattern
    from support.stages import AnsweringStage

    video = moving_pattern(tmp_path / "clip.mp4", seconds=1, size="160x120", fps=10)
    config = camera_config(tmp_path / "camera.toml", broker, video, "cam-sandbox", "frames = 5")
    sandbox = sandboxed(exec_start("aiotedge-camera@.service", config))
    pipeline = AnsweringStage(broker, "systemd-test")
    log = tmp_path / "sandboxed-camera.log"
    try:
        with running(sandbox, daemon_env(None), log) as camera:
            # a system call outside the filter would have been SIGSYS (-31), W^X a crash
            assert camera.wait(timeout=TIMEOUT) == 0, log.read_text()
        frames = [decode_photo(payload) for payload in pipeline.wait_frames(5)]
    finally:
        pipeline.stop()
    assert [f.name for f in frames] == [f"clip.mp4#t={n / 10:.3f}" for n in range(5)]

