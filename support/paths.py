"""Where the repository is and where the real model and photos are (../shared/data, or the
folder AIOTEDGE_SHARED_DATA names)."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("AIOTEDGE_SHARED_DATA", REPO.parent / "shared" / "data"))
SHARED_MODEL = SHARED_DATA / "models" / "mobilenet_v2_1.0_224_quant.tflite"
SHARED_LABELS = SHARED_DATA / "models" / "imagenet_labels.txt"
SHARED_IMAGES = SHARED_DATA / "images"
