"""Shared fixtures: the real data in ../shared, models the tests build, a real mosquitto, and a
mosquitto running a shipped secure config with throwaway certificates and passwords."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from aiotedge.nodes.mqtt.broker import LocalBroker
    from tests.security import Probe

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("AIOTEDGE_SHARED_DATA", REPO.parent / "shared" / "data"))
SHARED_MODEL = SHARED_DATA / "models" / "mobilenet_v2_1.0_224_quant.tflite"
SHARED_LABELS = SHARED_DATA / "models" / "imagenet_labels.txt"
SHARED_IMAGES = SHARED_DATA / "images"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (real ImageNet model and photos); skips the test when it is absent."""
    if not SHARED_MODEL.is_file() or not SHARED_IMAGES.is_dir():
        pytest.skip(
            f"real model and photos not found at {SHARED_DATA} "
            "(set AIOTEDGE_SHARED_DATA to the folder holding models/ and images/)"
        )
    return SHARED_DATA


@pytest.fixture
def broker():
    """A real mosquitto on a free loopback port; tests may `stop(kill=True)` and `start()` it."""
    from aiotedge.contracts.errors import BrokerError
    from aiotedge.nodes.mqtt.broker import LocalBroker

    try:
        local = LocalBroker().start()
    except BrokerError as exc:
        pytest.fail(f"{exc} (`make test` installs it)")
    yield local
    local.close()


@pytest.fixture(scope="session")
def test_models(tmp_path_factory) -> dict[str, Path]:
    """Small float and int8 CNNs built with TensorFlow in a subprocess (skips without it)."""
    from tests.models import build_test_models

    return build_test_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def generated_photos(tmp_path_factory) -> Path:
    """A folder of generated JPEG/PNG/BMP photos, for tests that must run without ../shared."""
    from tests.models import write_test_images

    directory = tmp_path_factory.mktemp("photos")
    write_test_images(directory)
    return directory


@pytest.fixture(scope="session")
def test_labels(tmp_path_factory) -> Path:
    from tests.models import write_labels

    return write_labels(tmp_path_factory.mktemp("labels") / "labels.txt")


@pytest.fixture(scope="session")
def split_into(tmp_path_factory):
    """`split_into(model, stages, labels=None) -> Manifest`, split once per session."""
    from aiotedge_converter.cli import main as convert

    from aiotedge.contracts.manifest import Manifest

    splits: dict[tuple[Path, int, Path | None], Manifest] = {}

    def split(model: Path, stages: int, labels: Path | None = None) -> Manifest:
        key = (model, stages, labels)
        if key not in splits:
            out = tmp_path_factory.mktemp(f"{model.stem}-{stages}-stages")
            args = ["split", str(model), "--stages", str(stages), "--out", str(out)]
            assert convert([*args, "--labels", str(labels)] if labels else args) == 0
            splits[key] = Manifest.load(out)
        return splits[key]

    return split


@pytest.fixture(scope="session")
def split3(test_models, test_labels, split_into):
    """The test int8 CNN split into 3 stages, with labels: runs without ../shared."""
    return split_into(test_models["int8"], 3, test_labels)


@pytest.fixture(scope="session")
def generated_frames(generated_photos) -> list[tuple[str, bytes]]:
    """(name, bytes) of the generated photos, as a camera sends them."""
    from aiotedge.media.image import list_images, read_photo

    return [(path.name, read_photo(path)) for path in list_images(generated_photos)]


def whole_model_top(manifest, photo: bytes, k: int = 5):
    """What the unsplit source model says about a photo, in the prediction's own terms."""
    from aiotedge.contracts.events import top_k
    from aiotedge.media.image import decode_image, preprocess
    from aiotedge.tflite.runtime import Segment

    whole = Segment(manifest.directory / manifest.source.file)
    tensor = preprocess(decode_image(photo), manifest.preprocessing, whole.input_spec)
    return top_k(whole.run(tensor), whole.output_spec, manifest, k)


def retained_now(broker, topics) -> dict[str, bytes]:
    """Topic -> payload of what the broker retains now for a pipeline and Home Assistant."""
    from aiotedge.nodes.mqtt.session import MqttSession, read_retained

    session = MqttSession(broker.address, "reader")
    session.start()
    assert session.wait_connected(10)
    try:
        return read_retained(session, [f"{topics.base}/#", "homeassistant/#"],
                             topics.probe("reader"))
    finally:
        session.stop()


def wait_all_online(broker, nodes: list[str], timeout: float = 60.0) -> None:
    """Block until every node has said `online` (they do so again after reconnecting)."""
    online: set[str] = set()
    changed = threading.Condition()

    def record(message) -> None:
        with changed:
            node = message.topic.rsplit("/", 1)[-1]
            (online.add if message.payload == b"online" else online.discard)(node)
            changed.notify_all()

    from aiotedge.nodes.mqtt.session import MqttSession

    watcher = MqttSession(broker.address, "availability-watcher")
    watcher.subscribe("aiotedge/local/availability/+", record)
    watcher.start()
    try:
        with changed:
            assert changed.wait_for(lambda: set(nodes) <= online, timeout), online
    finally:
        watcher.stop()


# -- a broker running a shipped secure config (tests/security.py has the rest) -------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """A CA, the broker's certificate (for broker.lan, localhost and 127.0.0.1), a client's."""
    from tests.security import write_pki

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (sudo apt-get install openssl)")
    return write_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def broker_users() -> list[str]:
    """The broker users the security tests log in as: those of the shipped ACL."""
    from tests.security import acl_users

    return acl_users()


@pytest.fixture(scope="module")
def passwords(broker_users, tmp_path_factory) -> dict[str, Path]:
    """A folder with mosquitto's password file (key "") and one USER.password file per user."""
    tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    if not Path(tool).is_file():
        pytest.fail("mosquitto_passwd is not installed (sudo apt-get install mosquitto)")
    directory = tmp_path_factory.mktemp("passwords")
    broker_file = directory / "aiotedge.passwd"
    files = {"": broker_file}
    for number, user in enumerate(broker_users):
        password = secrets.token_urlsafe(12)
        create = ["-c"] if number == 0 else []
        subprocess.run([tool, *create, "-b", str(broker_file), user, password], check=True)
        files[user] = directory / f"{user}.password"
        files[user].write_text(password + "\n")
    return files


@pytest.fixture(scope="module")
def secure_config(pki, passwords) -> Callable[..., str]:
    """`(tls_port, require_certificate=False) -> config text` of the broker `secure_broker`
    starts: secure.conf with its ACL (test_security_dynsec.py overrides it)."""
    from tests.security import secure_conf

    return lambda tls_port, require_certificate=False: secure_conf(
        pki, passwords[""], tls_port, require_certificate)


@pytest.fixture
def secure_broker(secure_config) -> Iterator[Callable[..., LocalBroker]]:
    """Factory: a mosquitto running `secure_config`; `.tls_port` is its TLS listener.

    LocalBroker also adds a plain loopback listener, under the same users and rights.
    """
    from aiotedge.contracts.errors import BrokerError
    from aiotedge.nodes.mqtt.broker import LocalBroker, free_port

    started = []

    def start(require_certificate: bool = False) -> LocalBroker:
        tls_port = free_port()
        local = LocalBroker(extra_config=secure_config(tls_port, require_certificate))
        try:
            local.start()
        except BrokerError as exc:
            pytest.fail(f"{exc} (`make test` installs mosquitto)")
        local.tls_port = tls_port
        started.append(local)
        return local

    yield start
    for local in started:
        local.close()


@pytest.fixture
def probes(secure_broker, pki, passwords) -> Iterator[Callable[[str], Probe]]:
    """Factory: a Probe connected over TLS to one secure broker, logged in as a broker user."""
    from tests.security import Probe, refused

    broker = secure_broker()
    opened = []

    def login(user: str) -> Probe:
        probe = Probe(broker.tls_port, pki, user, passwords[user].read_text().strip())
        opened.append(probe)
        code = probe.connect()
        assert not refused(code), f"{user}: {code}"
        return probe

    yield login
    for probe in opened:
        probe.close()


class AnsweringStage:
    """A stand-in for a whole pipeline: answers every frame sent to stage 0 with a prediction,
    for camera tests that are about what the camera sends (it waits for its frames' results).
    `frames` holds the payloads it took, in order; `answer` makes a frame's prediction (a
    fake last stage of another kind), else every frame is class 0 "answer"."""

    def __init__(self, broker, pipeline: str, answer=None) -> None:
        from aiotedge.contracts.topics import Topics
        from aiotedge.nodes.mqtt.session import MqttSession

        self.topics = Topics(pipeline)
        self.answer = answer
        self.frames: list[bytes] = []
        self._received = threading.Condition()
        self.session = MqttSession(broker.address, f"answering-{pipeline}")
        self.session.subscribe(self.topics.stage_input(0), self._answer)
        self.session.start()
        assert self.session.wait_connected(10)

    def _answer(self, message) -> None:
        from aiotedge.contracts.events import Prediction, Score
        from aiotedge.contracts.wire import decode_photo

        with self._received:
            self.frames.append(message.payload)
            self._received.notify_all()
        frame = decode_photo(message.payload)
        prediction = self.answer(frame) if self.answer else Prediction(
            frame.frame_id, frame.source, frame.seq, frame.captured_at,
            [Score(0, "answer", 1.0)], 1.0, [])
        self.session.publish(self.topics.predictions, prediction.to_json(), qos=1)

    def wait_frames(self, count: int, timeout: float = 60.0) -> list[bytes]:
        """The payloads taken so far, once there are at least `count`."""
        with self._received:
            if not self._received.wait_for(lambda: len(self.frames) >= count, timeout):
                pytest.fail(f"{len(self.frames)} frames within {timeout} s, not {count}")
            return list(self.frames)

    def stop(self) -> None:
        self.session.stop()


def photo_inputs(photos: Path, height: int, width: int):
    """The photos as float inputs in [-1, 1], exactly as stage 0 preprocesses them."""
    import numpy as np

    from aiotedge.contracts.manifest import Preprocessing
    from aiotedge.contracts.tensors import TensorSpec
    from aiotedge.media.image import decode_image, list_images, preprocess

    prep = Preprocessing(width=width, height=height, mean=127.5, std=127.5)
    spec = TensorSpec("input", (1, height, width, 3), "float32")
    tensors = [preprocess(decode_image(p.read_bytes()), prep, spec) for p in list_images(photos)]
    return np.concatenate(tensors)


def import_model(source: Path | None, out: Path, *args: str) -> str:
    """Run `aiotedge-convert import` in its own process; its stdout."""
    from tests.models import run_with_tensorflow

    command = [sys.executable, "-m", "aiotedge_converter", "import"]
    command += [str(source)] if source is not None else []
    done = run_with_tensorflow(
        [*command, "--out", str(out), *args], f"importing {source or args[:2]}"
    )
    return done.stdout
