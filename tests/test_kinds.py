"""Model kinds in the converter: recognised from the outputs or declared, written in the
manifest; multi-output and int64-ending models split and verify bit-identical at 2..5 stages
(tiny models built here, and the shared detection, pose and segmentation models)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from aiotedge_converter.cli import main as convert
from aiotedge_converter.verify import verify

from aiotedge.contracts.errors import ModelError
from aiotedge.contracts.manifest import Manifest
from aiotedge.tflite.graph import load_graph
from aiotedge.tflite.kinds import model_kind, recognise_kind
from aiotedge.tflite.runtime import Segment
from support.paths import SHARED_DATA
from tests.kind_models import (
    DETECTION_LABELS,
    PREFIX_OPS,
    argmax_segmentation_model,
    detection_model,
    pose_model,
)

TINY = {"detection": detection_model, "segmentation": argmax_segmentation_model,
        "pose": pose_model}
#: the shared models beyond classification: kind -> (model, labels, a photo for it)
SHARED = {
    "detection": ("detection/coco_ssd_mobilenet_v1_1.0_quant.tflite",
                  "detection/coco_labels.txt", "detection/cats_and_dogs.jpg"),
    "pose": ("pose/movenet_singlepose_lightning_int8.tflite", None, "pose/girl.jpg"),
    "segmentation": ("segmentation/deeplabv3_257.tflite", "segmentation/pascal_labels.txt",
                     "segmentation/segmentation_input.jpg"),
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("tiny-kinds")
    return {kind: build(folder / f"{kind}.tflite") for kind, build in TINY.items()}


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Two photos at the tiny models' size and larger (stage 0 resizes them), and the tiny
    detection model's labels beside them."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("kind-photos")
    (folder / "labels.txt").write_text("\n".join(DETECTION_LABELS) + "\n")
    rng = np.random.default_rng(3)
    for i, size in enumerate(((4, 4), (40, 24))):
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"photo{i}.png")
    return folder


def shared_kind(kind: str) -> tuple[Path, Path | None, Path]:
    model, labels, photo = SHARED[kind]
    if not (SHARED_DATA / model).is_file():
        pytest.skip(f"{SHARED_DATA / model} not found (set AIOTEDGE_SHARED_DATA)")
    return SHARED_DATA / model, SHARED_DATA / labels if labels else None, SHARED_DATA / photo


def split_and_verify(model: Path, out: Path, photos: Path, *args: str) -> Manifest:
    """Split, then verify: every output of the chain equal to the whole model's, bit for bit."""
    assert convert(["split", str(model), "--out", str(out), *args]) == 0
    manifest = Manifest.load(out)
    results = verify(out, photos)
    assert results and all(result.identical for result in results)
    return manifest


@pytest.mark.parametrize("kind", sorted(TINY))
def test_the_kind_is_recognised_from_the_outputs(tiny, kind):
    assert recognise_kind(load_graph(tiny[kind])) == kind


def test_a_classifier_stays_a_classification(test_models):
    assert recognise_kind(load_graph(test_models["int8"])) == "classification"


def test_a_declared_kind_the_outputs_cannot_have_is_refused_with_what_they_are(tiny, capsys):
    with pytest.raises(ModelError, match=r"a pose model has one float output \[1,1,K,3\]; "
                                         r"this one gives float32\[\], float32\[\]"):
        model_kind(load_graph(tiny["detection"]), "pose")
    assert convert(["analyze", str(tiny["pose"]), "--kind", "classification"]) == 0
    assert "(classification)" in capsys.readouterr().out


def test_a_declared_kind_overrides_the_recognition(tiny, tmp_path, photos):
    """A pose-shaped output read as a classifier's 48 scores, because the user says so."""
    manifest = split_and_verify(tiny["pose"], tmp_path, photos, "--stages", "2", "--kind",
                                "classification")
    assert manifest.kind == "classification"


@pytest.mark.parametrize("stages", range(2, PREFIX_OPS + 1))
@pytest.mark.parametrize("kind", sorted(TINY))
def test_tiny_models_of_every_kind_split_and_verify_bit_identical(tiny, kind, stages, tmp_path,
                                                                  photos):
    labels = photos / "labels.txt"
    manifest = split_and_verify(tiny[kind], tmp_path / "split", photos, "--stages", str(stages),
                                *(["--labels", str(labels)] if kind == "detection" else []))
    assert manifest.kind == kind
    assert len(manifest.stages) == stages
    last = manifest.stages[-1]
    assert len(last.outputs) == (4 if kind == "detection" else 1)
    assert [s.dtype for s in last.outputs] == [s.dtype for s in manifest.source.outputs]
    written = json.loads((tmp_path / "split" / "manifest.json").read_text())
    assert written["kind"] == kind
    assert ("extra_outputs" in written["stages"][-1]) == (kind == "detection")
    assert all("extra_outputs" not in stage for stage in written["stages"][:-1])


def test_the_post_processing_op_stays_in_the_last_segment(tiny, tmp_path, photos):
    manifest = split_and_verify(tiny["detection"], tmp_path, photos, "--stages", "5")
    whole = load_graph(tiny["detection"])
    post = next(op.index for op in whole.ops if op.kind.startswith("CUSTOM:"))
    assert manifest.stages[-1].first_op <= post <= manifest.stages[-1].last_op
    assert Segment(manifest.segment_path(4)).output_specs[3].name.endswith(":3")


def test_an_int64_class_mask_is_the_last_stage_s_output_only(tiny, tmp_path, photos):
    manifest = split_and_verify(tiny["segmentation"], tmp_path, photos, "--stages", "3")
    assert manifest.stages[-1].output.dtype == "int64"
    assert all(stage.output.dtype == "float32" for stage in manifest.stages[:-1])


def test_a_detection_label_map_s_background_line_is_dropped(tiny, tmp_path, photos):
    labels = tmp_path / "labelmap.txt"
    labels.write_text("???\n" + "\n".join(DETECTION_LABELS) + "\n")
    manifest = split_and_verify(tiny["detection"], tmp_path / "split", photos, "--stages", "2",
                                "--labels", str(labels))
    assert manifest.labels == DETECTION_LABELS


def test_labels_for_a_pose_model_are_refused(tiny, tmp_path, capsys):
    labels = tmp_path / "labels.txt"
    labels.write_text("nose\n")
    assert convert(["split", str(tiny["pose"]), "--stages", "2", "--out", str(tmp_path / "s"),
                    "--labels", str(labels)]) == 2
    assert "a pose model's results have no labels" in capsys.readouterr().err


@pytest.mark.parametrize("stages", range(2, 6))
@pytest.mark.parametrize("kind", sorted(SHARED))
def test_shared_models_of_every_kind_split_and_verify_bit_identical(kind, stages, tmp_path):
    model, labels, photo = shared_kind(kind)
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / photo.name).symlink_to(photo)
    manifest = split_and_verify(model, tmp_path / "split", tmp_path / "photos", "--stages",
                                str(stages), *(["--labels", str(labels)] if labels else []))
    assert manifest.kind == kind
    assert len(manifest.stages) == stages


def test_profile_and_plan_work_on_a_detection_model(tiny, tmp_path, photos):
    """The post-processing op is measured with the last piece: plan's stages include it."""
    from tests.test_profile import profile_command

    profile = tmp_path / "profile.json"
    assert profile_command(str(tiny["detection"]), "--out", str(profile), "--threads", "1",
                           "--runs", "2", "--warmup", "1", "--rounds", "1", "--no-mqtt") == 0
    assert convert(["plan", str(tiny["detection"]), "--boards", "2", "--profile", str(profile),
                    "--max-stages", "2", "--labels", str(photos / "labels.txt"),
                    "--out", str(tmp_path / "plan")]) == 0
    manifest = Manifest.load(tmp_path / "plan")
    assert manifest.kind == "detection"
    assert len(manifest.stages[-1].outputs) == 4
    assert manifest.labels == DETECTION_LABELS


def test_a_manifest_refuses_an_int64_between_stages_and_extra_outputs_before_the_last(tiny,
                                                                                     tmp_path,
                                                                                     photos):
    from dataclasses import replace

    from aiotedge.contracts.errors import ManifestError

    manifest = split_and_verify(tiny["detection"], tmp_path, photos, "--stages", "2")
    first, last = manifest.stages
    wide = replace(first.output, dtype="int64")
    with pytest.raises(ManifestError, match="unsupported dtype 'int64'"):
        replace(manifest, stages=(replace(first, output=wide), replace(last, input=wide)))
    with pytest.raises(ManifestError, match="stage 0 has several outputs: only the last"):
        replace(manifest, stages=(replace(first, extra_outputs=last.extra_outputs), last))


def test_plan_takes_the_model_options_split_takes(tiny, tmp_path, photos):
    from tests.test_profile import profile_command

    profile = tmp_path / "profile.json"
    assert profile_command(str(tiny["pose"]), "--out", str(profile), "--threads", "1",
                           "--runs", "2", "--warmup", "1", "--rounds", "1", "--no-mqtt") == 0
    assert convert(["plan", str(tiny["pose"]), "--boards", "1", "--profile", str(profile),
                    "--kind", "classification", "--mean", "0", "--std", "255", "--resize",
                    "sampled", "--out", str(tmp_path / "plan")]) == 0
    manifest = Manifest.load(tmp_path / "plan")
    assert manifest.kind == "classification"
    assert (manifest.preprocessing.mean, manifest.preprocessing.std) == (0.0, 255.0)
    assert manifest.preprocessing.resize == "sampled"


def test_a_classifier_s_manifest_written_before_kinds_keeps_its_fingerprint(split3):
    """Boards are upgraded one at a time: a manifest of the format before kinds and resizers
    (no `kind`, no `resize`) must read back to the same dict, hence the same fingerprint, or an
    upgraded stage would refuse its neighbours as another split."""
    written = json.loads((split3.directory / "manifest.json").read_text())
    assert "kind" not in written and "resize" not in written["preprocessing"]
    again = Manifest.from_dict(written, split3.directory)
    assert again.kind == "classification"
    assert again.to_dict() == written
