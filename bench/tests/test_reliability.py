"""The reliability suite's fast scenarios (bench/reliability), asserted.

Each scenario runs real stage daemons against a real mosquitto and measures; here its outcome
must be that of a healthy pipeline: no frame lost beyond those a node dropped and counted on
purpose, no duplicate prediction, no crash, memory bounded relative to each daemon's start, no
problem found. docs/reliability.md has the same scenarios at full size.
"""

from __future__ import annotations

import pytest

from bench.reliability.suite import SCENARIOS, Scenario, run_scenario
from bench.reliability.workload import FAST, Workload, load_photos


@pytest.fixture(scope="module")
def workload(test_models, test_labels, split_into, generated_photos) -> Workload:
    """The small test CNNs and generated photos (no ../shared needed)."""
    photos = load_photos(generated_photos)
    int8 = split_into(test_models["int8"], 3, test_labels)
    return Workload(
        main=int8, photos=photos, int8=int8,
        int8_five=split_into(test_models["int8"], 5, test_labels),
        float32=split_into(test_models["float"], 3, test_labels),
        test_photos=photos,
    )


@pytest.mark.parametrize("scenario", [pytest.param(s, id=s.name) for s in SCENARIOS])
def test_reliability(scenario: Scenario, workload: Workload):
    row = run_scenario(scenario, FAST, workload)
    if row.skipped:
        pytest.skip(row.skipped)
    assert row.crashes == 0, row.findings
    assert row.lost == row.by_design, row.note
    assert row.duplicates == 0, row.note
    assert row.wrong == 0, row.findings
    assert row.findings == []
