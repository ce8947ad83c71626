"""Documented commands are tests: every shell block of README.md and docs/*.md runs here.

Sybil finds the blocks (```sh, ```bash, ```console, ```shell fences, also inside list items) and
the markers. A block that cannot run on this machine carries, just before it, a comment a reader
of the markdown sees, with the reason as a quoted string (Sybil's skip directive):

    <!-- skip: next "needs a Raspberry Pi camera" -->

Every other block is one test: bash `set -e -o pipefail` runs it, so a documented command that
fails fails the suite. How a block meets the machine it runs on, all of it defined below:

* **Its folder** (``FILES``): each document gets one folder, shared by its blocks in document
  order (a later block uses what an earlier one wrote: split, then verify). The file names the
  docs use are links there to the real shared data (skipped without ../shared) or to the models
  the tests build, e.g. ``model.tflite`` is the small int8 test CNN. A name the document itself
  makes (``--out NAME``, ``mkdir NAME``) is left to it.
* **Its broker** (``broker_substitutions``): each document has its own mosquitto, started here;
  the host names the docs use (``broker.lan``, ``broker.lan:8883``, ``BROKER``) become its
  address in the commands, the one rewriting of a block's text.
* **Its programs**: PATH starts with this venv's bin, so ``aiotedge`` and ``aiotedge-convert``
  are the project's; ``pip install`` is a no-op (this venv is the install; the install profiles
  are tested apart).
* **Commands that run until stopped** (``LONG_RUNNING``: ``aiotedge stage``, ``aiotedge node``,
  ``aiotedge-convert heal``, ``aiotedge watch``,
  ``status --watch``, a looping or watching camera, ``mosquitto_sub`` without ``-C``) run in
  the background. A stage is a board: it runs until the end of the document (a later block
  watches the pipeline an earlier one started), and the block that starts it ends when
  ``aiotedge status`` for its pipeline exits 0 (tried at each availability message). The other
  commands run while the rest of the block runs; at its end each must have connected to the
  broker (its log counts the connections) and still run, then they are stopped with SIGTERM
  and must end with status 0 (or by the signal). A stage that ends too early fails the block.
* **What a document takes for granted** (``SERVED``): cameras.md and topics.md watch and feed
  "the pipeline" of the quickstart; here a split of the test CNN, started by the same stage
  commands before the document's first block.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sybil import Document, Example, Sybil
from sybil.parsers.markdown import CodeBlockParser, SkipParser

from support.paths import REPO

SHELL_LANGUAGES = ("sh", "bash", "console", "shell")
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
#: seconds a block may take (a split of MobileNetV2, its verification and a pipeline run)
BLOCK_TIMEOUT_S = 240

#: Commands that run until stopped, matched on a line without its comment.
LONG_RUNNING = re.compile(
    r"""^(?:\w+=\S+\s+)*(?:
        aiotedge\s+stage\b
      | aiotedge\s+node\b
      | aiotedge-convert\s+heal\b
      | aiotedge\s+watch\b(?!.*--count)
      | aiotedge\s+status\b.*--watch\b
      | aiotedge\s+camera\b.*--(?:loop|watch)\b
      | mosquitto_sub\b(?!.*\s-C\s)
    )""",
    re.X,
)
STAGE = re.compile(r"^aiotedge\s+stage\b")
#: the options of `aiotedge stage` with which `aiotedge status` looks at the same pipeline
CONNECTION_FLAGS = re.compile(r"--(?:broker|pipeline|config)\s+\S+")


def broker_substitutions(host: str, port: int) -> list[tuple[str, str]]:
    """(pattern, replacement): the docs' broker names to the document's own broker."""
    name = r"(?:broker\.lan|BROKER)(?::8883)?\b"
    return [
        (rf"(?<=--broker ){name}", f"{host}:{port}"),
        (rf"(?<=-h ){name}", f"{host} -p {port}"),
    ]


#: `fixture(name)` gives a pytest fixture's value (a skip, e.g. without ../shared, propagates)
Provide = Callable[[Callable[[str], Any]], Path]


def _photos(fixture: Callable[[str], Any]) -> Path:
    """The shared photos, or without them generated ones (enough for the small test models)."""
    try:
        return fixture("shared_data") / "images"
    except pytest.skip.Exception:
        return fixture("generated_photos")


#: The docs' file names (a folder ends in /) and what stands for them in a document's folder.
FILES: dict[str, Provide] = {
    "mobilenet_v2_1.0_224_quant.tflite":
        lambda fixture: fixture("shared_data") / "models/mobilenet_v2_1.0_224_quant.tflite",
    "imagenet_labels.txt": lambda fixture: fixture("shared_data") / "models/imagenet_labels.txt",
    "photos/": _photos,
    "model.tflite": lambda fixture: fixture("test_models")["int8"],
    "labels.txt": lambda fixture: fixture("test_labels"),
    "breeds.txt": lambda fixture: fixture("test_labels"),
    "dog_breed_mobilenetv2.h5": lambda fixture: fixture("keras_h5"),
    "clip.mp4": lambda fixture: fixture("camera_clip"),
    "split/": lambda fixture: fixture("split3").directory,
    "detection/": lambda fixture: fixture("shared_data") / "detection",
    "pose/": lambda fixture: fixture("shared_data") / "pose",
    "segmentation/": lambda fixture: fixture("shared_data") / "segmentation",
    "pki/": lambda fixture: fixture("pki"),
}  # fmt: skip

#: document -> (a FILES manifest, pipeline): the pipeline it takes as running on its broker.
SERVED = {
    "docs/cameras.md": ("split/", "default"),
    "docs/topics.md": ("split/", "greenhouse"),
}


PRELUDE = r"""
set -e -o pipefail
pip() { if [ "$1" = install ]; then echo "(pip $*: this venv is the install)"; return 0; fi
        command pip "$@"; }
DOCS_PIDS=(); DOCS_COMMANDS=(); DOCS_BOARDS=(); DOCS_LOG_START=$(wc -l <"$DOCS_BROKER_LOG")
if [ -f "$DOCS_LOGS/boards" ]; then mapfile -t DOCS_BOARDS <"$DOCS_LOGS/boards"; fi
docs_background() {  # a command that runs until the end of the block, its output in a log
    "$@" >"$DOCS_LOGS/$$-${#DOCS_PIDS[@]}.log" 2>&1 &
    DOCS_PIDS+=($!); DOCS_COMMANDS+=("$*")
}
docs_board() {  # a stage, as on a board of its own: it runs until the end of the document
    setsid "$@" >"$DOCS_LOGS/board-$$-${#DOCS_BOARDS[@]}.log" 2>&1 </dev/null &
    DOCS_BOARDS+=($!); echo $! >>"$DOCS_LOGS/boards"
}
docs_kill_background() {
    [ ${#DOCS_PIDS[@]} = 0 ] || kill -TERM "${DOCS_PIDS[@]}" 2>/dev/null || true
}
trap docs_kill_background EXIT
docs_show_logs() {
    local log; for log in "$DOCS_LOGS"/*$$-*.log "$DOCS_LOGS"/board-*.log; do
        echo "--- $(basename "$log")" >&2; tail -n 30 "$log" >&2
    done
}
docs_all_running() {
    local i; for i in "${!DOCS_PIDS[@]}"; do
        if ! kill -0 "${DOCS_PIDS[$i]}" 2>/dev/null; then
            echo "ended before it was stopped: ${DOCS_COMMANDS[$i]}" >&2; return 1
        fi
    done
    for i in "${DOCS_BOARDS[@]}"; do
        if ! kill -0 "$i" 2>/dev/null; then
            echo "a stage of this document ended (pid $i)" >&2; return 1
        fi
    done
}
docs_wait_healthy() {  # until `aiotedge status "$@"` exits 0, tried at each availability message
    local fd got subscriber healthy=1 deadline=$((SECONDS + DOCS_TIMEOUT))
    exec {fd}< <(exec mosquitto_sub -h "$DOCS_BROKER_HOST" -p "$DOCS_BROKER_PORT" \
        -t 'aiotedge/+/availability/#')
    subscriber=$!
    while [ $SECONDS -lt $deadline ] && docs_all_running; do
        # a second without a message only looks again whether a background command ended
        got=0; read -r -t 1 -u "$fd" _ || got=$?
        if [ $got -gt 128 ]; then continue; elif [ $got != 0 ]; then break; fi
        if aiotedge status "$@" >/dev/null 2>&1; then healthy=0; break; fi
    done
    kill "$subscriber" 2>/dev/null || true
    exec {fd}<&-
    if [ $healthy != 0 ]; then
        echo "not healthy: aiotedge status $*" >&2
        aiotedge status "$@" >&2 || true
        docs_show_logs; return 1
    fi
}
docs_wait_connected() {  # as many new broker clients as background commands (its log says)
    local fd got line tailer seen=0 deadline=$((SECONDS + DOCS_TIMEOUT))
    exec {fd}< <(exec tail -n +$((DOCS_LOG_START + 1)) -F "$DOCS_BROKER_LOG" 2>/dev/null)
    tailer=$!
    while [ $seen -lt ${#DOCS_PIDS[@]} ] && [ $SECONDS -lt $deadline ] && docs_all_running; do
        got=0; read -r -t 1 -u "$fd" line || got=$?
        if [ $got -gt 128 ]; then continue; elif [ $got != 0 ]; then break; fi
        if [[ $line == *"New client connected"* ]]; then seen=$((seen + 1)); fi
    done
    kill "$tailer" 2>/dev/null || true
    exec {fd}<&-
    if [ $seen -lt ${#DOCS_PIDS[@]} ]; then
        echo "$seen broker connections, not ${#DOCS_PIDS[@]}: ${DOCS_COMMANDS[*]}" >&2
        docs_show_logs; return 1
    fi
}
docs_stop_background() {  # each connected and still running; ends at SIGTERM (0, or by it)
    local i status
    docs_wait_connected
    docs_all_running || { docs_show_logs; return 1; }
    docs_kill_background
    for i in "${!DOCS_PIDS[@]}"; do
        status=0; wait "${DOCS_PIDS[$i]}" || status=$?
        if [ $status != 0 ] && [ $status != 143 ]; then
            echo "exit status $status at SIGTERM: ${DOCS_COMMANDS[$i]}" >&2; docs_show_logs
            return 1
        fi
    done
    DOCS_PIDS=()
}
"""


def shell_script(block: str, substitutions: list[tuple[str, str]]) -> str:
    """The block as bash runs it: broker names replaced, long-running commands in the
    background, then the end-of-block check of what they started."""
    for pattern, replacement in substitutions:
        block = re.sub(pattern, replacement, block)
    lines, health_checks = [], []
    for line in block.splitlines():
        command = re.sub(r"\s+#\s.*$", "", line).strip()
        if not LONG_RUNNING.match(command):
            lines.append(line)
            continue
        if not STAGE.match(command):
            lines.append(f"docs_background env {command}")
        else:
            lines.append(f"docs_board env {command}")
            check = "docs_wait_healthy " + " ".join(CONNECTION_FLAGS.findall(command))
            if check not in health_checks:
                health_checks.append(check)
    return "\n".join([PRELUDE, *lines, *health_checks, "docs_stop_background", ""])


@dataclass
class DocumentState:
    """One document's folder, broker and served pipeline, and which of its examples ran."""

    folder: Path
    broker: Any  # aiotedge.nodes.mqtt.broker.LocalBroker
    evaluated: set[int] = field(default_factory=set)
    closed: bool = False

    def environment(self) -> dict[str, str]:
        return dict(
            os.environ,
            PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            DOCS_BROKER_HOST=self.broker.address.host,
            DOCS_BROKER_PORT=str(self.broker.port),
            DOCS_BROKER_LOG=str(self.broker.log_path),
            DOCS_TIMEOUT=str(BLOCK_TIMEOUT_S // 2),
            DOCS_LOGS=str(self.folder.parent / "logs"),
        )

    def bash(self, script: str) -> subprocess.CompletedProcess[str]:
        """Run a script in the document's folder; its whole process group ends with it."""
        process = subprocess.Popen(
            ["bash", "-c", script], cwd=self.folder, env=self.environment(), text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
        )  # fmt: skip
        try:
            out, err = process.communicate(timeout=BLOCK_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            out, err = process.communicate()
            err += f"\n(timed out after {BLOCK_TIMEOUT_S} s)"
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        return subprocess.CompletedProcess(script, process.returncode, out, err)

    def run_block(self, block: str) -> subprocess.CompletedProcess[str]:
        """Run a shell block as the document's reader would, on this document's broker."""
        host, port = self.broker.address.host, self.broker.port
        return self.bash(shell_script(block, broker_substitutions(host, port)))

    def serve(self, manifest: str, pipeline: str) -> None:
        """Stages of `manifest` serving `pipeline`, started as a block of stage commands."""
        from aiotedge.contracts.manifest import Manifest

        stages = len(Manifest.load(self.folder / manifest).stages)
        done = self.run_block("\n".join(
            f"aiotedge stage --broker broker.lan --pipeline {pipeline} --manifest {manifest} "
            f"--stage {index}" for index in range(stages)
        ))  # fmt: skip
        assert done.returncode == 0, done.stderr

    def close(self) -> None:
        """Stop the stages the document's blocks started (SIGTERM: as systemd stops them)."""
        if self.closed:
            return
        self.closed = True
        boards = self.folder.parent / "logs" / "boards"
        exits = []  # a stage is not this process's child: its pidfd says when it has ended
        for pid in boards.read_text().split() if boards.exists() else []:
            with contextlib.suppress(ProcessLookupError, FileNotFoundError):
                pidfd = os.pidfd_open(int(pid))
                if b"aiotedge" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.close(pidfd)  # it ended, and its number is another process's now
                    continue
                signal.pidfd_send_signal(pidfd, signal.SIGTERM)
                exits.append(pidfd)
        for pidfd in exits:
            select.select([pidfd], [], [], 30)
            os.close(pidfd)
        self.broker.close()


def evaluate_shell_block(example: Example) -> None:
    """Sybil's evaluator of a shell block: it passes when bash exits 0."""
    done = example.namespace["state"].run_block(example.parsed)
    if done.returncode != 0:
        raise AssertionError(
            f"exit status {done.returncode}\n--- stdout\n{done.stdout[-4000:]}"
            f"\n--- stderr\n{done.stderr[-6000:]}"
        )


DOCS = Sybil(
    [
        SkipParser(),
        *(CodeBlockParser(language, evaluate_shell_block) for language in SHELL_LANGUAGES),
    ]
)
PARSED: dict[Path, Document] = {path: DOCS.parse(path) for path in DOCUMENTS}


def _relative(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def _is_block(example: Example) -> bool:
    """A shell block, not a skip directive (evaluated before the block it is about)."""
    return isinstance(example.parsed, str)


def _shell_blocks() -> Iterator[Any]:
    for path, document in PARSED.items():
        for position, example in enumerate(document):
            if _is_block(example):
                yield pytest.param(path, position, id=f"{_relative(path)}:{example.line}")


def _uses(text: str, name: str) -> bool:
    return re.search(rf"(?<![\w./-]){re.escape(name)}", text) is not None


def _makes(text: str, name: str) -> bool:
    """Whether a document makes `name` itself (`--out NAME`, `mkdir NAME`)."""
    made = rf"(?:--out|mkdir)\s+{re.escape(name.rstrip('/'))}/?(?![\w/.])"
    return re.search(made, text) is not None


def _new_state(path: Path, request: pytest.FixtureRequest) -> DocumentState:
    """A folder with the docs' file names the document uses, but not those it makes."""
    from aiotedge.nodes.mqtt.broker import LocalBroker

    root = request.getfixturevalue("tmp_path_factory").mktemp(path.stem)
    folder = root / "home"
    folder.mkdir()
    (root / "logs").mkdir()
    blocks = "\n".join(example.parsed for example in PARSED[path] if _is_block(example))
    served = SERVED.get(_relative(path))
    for name, provide in FILES.items():
        used = _uses(blocks, name) and not _makes(blocks, name)
        if used or (served and served[0] == name):
            (folder / name.rstrip("/")).symlink_to(provide(request.getfixturevalue))
    state = DocumentState(folder, LocalBroker().start())
    PARSED[path].namespace["state"] = state
    if served:
        state.serve(*served)
    return state


@pytest.fixture(scope="session")
def keras_h5(tmp_path_factory) -> Path:
    """The float test CNN saved by Keras as legacy .h5 (dog_breed_mobilenetv2.h5's stand-in)."""
    import numpy as np

    from support.models import HEIGHT, WIDTH, build_keras_sources

    inputs = np.zeros((1, HEIGHT, WIDTH, 3), np.float32)
    return build_keras_sources(tmp_path_factory.mktemp("keras"), inputs)["h5"]


@pytest.fixture(scope="session")
def camera_clip(tmp_path_factory) -> Path:
    """A 1 s 640x480 H.264 clip at 10 frames/s, as a camera records it."""
    from support.media import moving_pattern

    return moving_pattern(tmp_path_factory.mktemp("clip") / "clip.mp4", seconds=1, fps=10)


@pytest.fixture(scope="session")
def document_states() -> Iterator[dict[Path, DocumentState | BaseException]]:
    """Each document's state (or why it cannot have one), made when its first block runs."""
    states: dict[Path, DocumentState | BaseException] = {}
    yield states
    for state in states.values():
        if isinstance(state, DocumentState):
            state.close()


@pytest.mark.parametrize(("path", "position"), list(_shell_blocks()))
def test_documented_commands(path: Path, position: int, request, document_states) -> None:
    """The block runs (or is skipped by its marker), after the document's earlier blocks."""
    if path not in document_states:
        try:
            document_states[path] = _new_state(path, request)
        except (Exception, pytest.skip.Exception) as exc:  # e.g. no ../shared: every block
            document_states[path] = exc
    state = document_states[path]
    if isinstance(state, BaseException):
        raise state
    examples = list(PARSED[path])
    for earlier in sorted(set(range(position)) - state.evaluated):
        state.evaluated.add(earlier)
        with contextlib.suppress(Exception, pytest.skip.Exception, pytest.fail.Exception):
            examples[earlier].evaluate()  # a block's failure is its own test's
    state.evaluated.add(position)
    try:
        examples[position].evaluate()
    finally:
        if state.evaluated >= set(range(len(examples))):
            state.close()  # the document's last block: its stages and broker go
