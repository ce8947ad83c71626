"""What the scenarios feed the pipeline: models split into stages, photos, expected answers.

The small CNNs of support/models.py (built with TensorFlow in a subprocess) and their generated
photos always exist; the real ImageNet MobileNetV2 and photos of ../shared are used for the
main pipeline of the full run when present. `fast` and `full` only change counts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from aiotedge_converter.cli import main as convert

from aiotedge.contracts.events import Score
from aiotedge.contracts.manifest import Manifest
from aiotedge.media.image import decode_image, list_images, preprocess, read_photo
from aiotedge.tflite.runtime import Segment
from support.models import build_test_models, write_labels, write_test_images
from support.paths import SHARED_IMAGES, SHARED_LABELS, SHARED_MODEL
from support.reference import whole_model_top

log = logging.getLogger(__name__)

Photos = list[tuple[str, bytes]]


@dataclass(frozen=True)
class Mode:
    name: str
    #: frames per fault scenario
    frames: int
    storm_messages: int
    #: times each heavy storm kind (bombs, huge fields, oversized) goes to each stage
    storm_heavy_repeats: int
    soak_frames: int
    #: > 0: the soak feeds for this many seconds (at soak_fps) instead of soak_frames
    soak_seconds: float
    #: the soak camera's rate in duration mode
    soak_fps: float
    #: stage restarts per signal (SIGKILL, SIGTERM)
    kills: int
    #: broker restarts per signal
    broker_restarts: int
    #: seconds the partitioned stage is cut off (0: the scenario is skipped)
    partition_seconds: float
    #: frames sent at 150 fps in the overload scenario
    overload_frames: int
    #: the broker's max_queued_messages there (None: the shipped 1000)
    overload_queue: int | None
    #: bytes of the field that error events quote in the oversized-event scenario
    huge_field_bytes: int
    #: hard timeout of one scenario, seconds; a long one's (the soak)
    timeout: float
    long_timeout: float
    #: seconds without a prediction or error event after which a run counts as settled
    quiet: float
    #: seconds the broker stays down in a restart
    broker_down: float


FAST = Mode(
    name="fast", frames=60, storm_messages=300, storm_heavy_repeats=1, soak_frames=400,
    soak_seconds=0, soak_fps=0,
    kills=2, broker_restarts=1, partition_seconds=0, overload_frames=300, overload_queue=50,
    huge_field_bytes=1_000_000, timeout=90, long_timeout=120, quiet=2.0,
    broker_down=1.0,
)
FULL = Mode(
    name="full", frames=400, storm_messages=10_000, storm_heavy_repeats=4, soak_frames=20_000,
    soak_seconds=3600, soak_fps=20,
    kills=3, broker_restarts=2, partition_seconds=10, overload_frames=4_000,
    overload_queue=None, huge_field_bytes=7_000_000, timeout=600, long_timeout=4800, quiet=8.0,
    broker_down=2.0,
)


@dataclass
class Workload:
    """Manifests and photos; `expected` caches each (manifest, photo)'s whole-model top-k."""

    #: the pipeline most scenarios run: 3 stages of MobileNetV2 (full run, with ../shared)
    #: or of the int8 test CNN
    main: Manifest
    photos: Photos
    #: 3 stages of the int8 test CNN, 5 stages of it (the shipped ACL has 5 stage users),
    #: 3 stages of the float test CNN (activations that can be NaN)
    int8: Manifest
    int8_five: Manifest
    float32: Manifest
    test_photos: Photos
    _expected: dict[tuple[Path, str], list[Score]] = field(default_factory=dict)

    def expected(self, manifest: Manifest, photos: Photos) -> dict[str, list[Score]]:
        out = {}
        for name, data in photos:
            key = (manifest.directory, name)
            if key not in self._expected:
                self._expected[key] = whole_model_top(manifest, data)
            out[name] = self._expected[key]
        return out

    @property
    def uses_shared(self) -> bool:
        return self.main is not self.int8

    @classmethod
    def build(cls, scratch: Path, shared: bool = True) -> Workload:
        """Build the test models (TensorFlow, in a subprocess) and split everything into
        `scratch`."""
        models = build_test_models(scratch / "models")
        labels = write_labels(scratch / "labels.txt")
        test_photos = load_photos(write_test_images(scratch / "photos")[0].parent)
        int8 = split(models["int8"], 3, labels, scratch / "int8-3")
        main, photos = int8, test_photos
        if shared and SHARED_MODEL.is_file() and SHARED_IMAGES.is_dir():
            main = split(SHARED_MODEL, 3, SHARED_LABELS, scratch / "mobilenet-3")
            photos = load_photos(SHARED_IMAGES)
        else:
            log.info("no real model at %s: the main pipeline is the int8 test CNN", SHARED_MODEL)
        return cls(
            main=main, photos=photos, int8=int8,
            int8_five=split(models["int8"], 5, labels, scratch / "int8-5"),
            float32=split(models["float"], 3, labels, scratch / "float-3"),
            test_photos=test_photos,
        )


def stage_inputs(manifest: Manifest, photo: bytes) -> list[np.ndarray]:
    """What each stage takes for this photo, computed in-process segment by segment.

    Index 0 is stage 0's preprocessed photo; a good frame for stage k carries index k.
    """
    tensor = preprocess(decode_image(photo), manifest.preprocessing, manifest.stages[0].input)
    inputs = [tensor]
    for index in range(len(manifest.stages) - 1):
        inputs.append(Segment(manifest.segment_path(index), num_threads=1).run(inputs[-1]))
    return inputs


def split(model: Path, stages: int, labels: Path | None, out: Path) -> Manifest:
    args = ["split", str(model), "--stages", str(stages), "--out", str(out)]
    if convert([*args, "--labels", str(labels)] if labels else args) != 0:
        raise RuntimeError(f"could not split {model} into {stages} stages")
    return Manifest.load(out)


def load_photos(folder: Path) -> Photos:
    return [(path.name, read_photo(path)) for path in list_images(folder)]
