"""Fixtures of both test folders, tests/ and bench/tests/: the small test models (built once a
session), generated photos, their labels, and their splits. What they build with is in
support/models.py; the rest of the fixtures are in tests/conftest.py."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def test_models(tmp_path_factory) -> dict[str, Path]:
    """Small float and int8 CNNs built with TensorFlow in a subprocess (skips without it)."""
    from support.models import build_test_models

    return build_test_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def generated_photos(tmp_path_factory) -> Path:
    """A folder of generated JPEG/PNG/BMP photos, for tests that must run without ../shared."""
    from support.models import write_test_images

    directory = tmp_path_factory.mktemp("photos")
    write_test_images(directory)
    return directory


@pytest.fixture(scope="session")
def test_labels(tmp_path_factory) -> Path:
    from support.models import write_labels

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
