"""Shared fixtures: the real data in ../shared, models the tests build, a real mosquitto."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

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
    from aiotedge.broker import BrokerError, LocalBroker

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
    from aiotedge.manifest import Manifest
    from converter.cli import main as convert

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
    from aiotedge.camera import read_photo
    from aiotedge.image import list_images

    return [(path.name, read_photo(path)) for path in list_images(generated_photos)]


def whole_model_top(manifest, photo: bytes, k: int = 5):
    """What the unsplit source model says about a photo, in the prediction's own terms."""
    from aiotedge.image import decode_image, preprocess
    from aiotedge.runtime import Segment
    from aiotedge.sink import top_k

    whole = Segment(manifest.directory / manifest.source.file)
    tensor = preprocess(decode_image(photo), manifest.preprocessing, whole.input_spec)
    return top_k(whole.run(tensor), whole.output_spec, manifest, k)


def wait_all_online(broker, nodes: list[str], timeout: float = 60.0) -> None:
    """Block until every node has said `online` (they do so again after reconnecting)."""
    online: set[str] = set()
    changed = threading.Condition()

    def record(message) -> None:
        with changed:
            node = message.topic.rsplit("/", 1)[-1]
            (online.add if message.payload == b"online" else online.discard)(node)
            changed.notify_all()

    from aiotedge.session import MqttSession

    watcher = MqttSession(broker.address, "availability-watcher")
    watcher.subscribe("aiotedge/local/availability/+", record)
    watcher.start()
    try:
        with changed:
            assert changed.wait_for(lambda: set(nodes) <= online, timeout), online
    finally:
        watcher.stop()
