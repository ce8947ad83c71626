"""A segment proves on its board that it computes what the workstation computed: the split's
per-stage references, the stage daemon's self-check at start, and `aiotedge verify`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from itertools import pairwise

import numpy as np
import pytest

from aiotedge.cli import main
from aiotedge.contracts.errors import ManifestError
from aiotedge.contracts.events import NodeInfo
from aiotedge.contracts.manifest import Manifest, sha256_file
from aiotedge.contracts.topics import Topics
from aiotedge.tflite.flatbuffer import pack_model
from aiotedge.tflite.graph import load_model
from aiotedge.tflite.runtime import open_segment
from aiotedge.tflite.selfcheck import (
    TOLERANCE_STEPS,
    SelfCheckError,
    read_reference,
    require_reference,
    self_check,
    write_reference,
)
from support.watch import retained_now, wait_all_online


@pytest.fixture
def split_copy(split3, tmp_path) -> Manifest:
    """The 3-stage int8 split, in a folder of the test's own to spoil."""
    return Manifest.load(shutil.copytree(split3.directory, tmp_path / "split"))


def edit_manifest(manifest: Manifest, edit) -> Manifest:
    """manifest.json after `edit(data)`, as a careless hand would change it."""
    path = manifest.directory / "manifest.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    return Manifest.load(manifest.directory)


def reseal(manifest: Manifest, index: int, key: str, path) -> Manifest:
    """Give stage `index`'s file (its segment, or its reference) its new sha256 in the
    manifest: the sha256 check alone cannot catch it then."""
    def edit(data):
        stage = data["stages"][index]
        (stage if key == "sha256" else stage["reference"])["sha256"] = sha256_file(path)
    return edit_manifest(manifest, edit)


def shift_reference_output(manifest: Manifest, index: int, steps: int) -> Manifest:
    """Stage `index`'s reference output moved by `steps` quantization steps, resealed."""
    tensor_in, tensor_out = read_reference(manifest, index)
    info = np.iinfo(tensor_out.dtype)
    shifted = np.where(tensor_out.astype(int) + steps <= info.max, tensor_out.astype(int) + steps,
                       tensor_out.astype(int) - steps).astype(tensor_out.dtype)
    reference = write_reference(manifest.directory, index, tensor_in, shifted)
    return reseal(manifest, index, "reference", manifest.directory / reference.file)


def verify(manifest: Manifest, capsys) -> tuple[int, str, str]:
    code = main(["verify", "--manifest", str(manifest.directory)])
    out, err = capsys.readouterr()
    return code, out, err


def test_the_split_stores_each_stages_reference_and_the_chain_of_them(split3):
    for spec in split3.stages:
        assert spec.reference is not None
        assert spec.reference.file == f"stage{spec.index}.reference.npz"
        assert sha256_file(split3.directory / spec.reference.file) == spec.reference.sha256
    references = [read_reference(split3, spec.index) for spec in split3.stages]
    # each stage's reference input is the output the stage before computed here
    for (_, before_out), (after_in, _) in pairwise(references):
        assert np.array_equal(before_out, after_in)
    # and each output is what the workstation's interpreter computes from that input
    for spec, (tensor_in, tensor_out) in zip(split3.stages, references, strict=True):
        assert np.array_equal(open_segment(split3, spec.index).run(tensor_in), tensor_out)


def test_a_reference_is_the_same_bytes_each_time_it_is_written(tmp_path):
    tensor_in = np.arange(24, dtype=np.int8).reshape(1, 2, 3, 4)
    tensor_out = np.arange(10, dtype=np.uint8).reshape(1, 10)
    first = write_reference(tmp_path, 0, tensor_in, tensor_out)
    again = write_reference(tmp_path / ".." / tmp_path.name, 0, tensor_in, tensor_out)
    assert first == again
    with np.load(tmp_path / first.file) as stored:  # a plain .npz
        assert np.array_equal(stored["input"], tensor_in)
        assert np.array_equal(stored["output"], tensor_out)


def test_verify_on_a_good_split_says_identical_for_every_stage(split3, capsys):
    code, out, _ = verify(split3, capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["stage", "max", "diff", "tolerance", "ok"]
    assert [line.split()[0] for line in lines[1:]] == ["0", "1", "2"]
    assert all(line.endswith("identical") and f"{TOLERANCE_STEPS} steps" in line
               for line in lines[1:])


def test_verify_checks_only_the_stages_this_board_has(split_copy, capsys):
    for index in (0, 2):
        split_copy.segment_path(index).unlink()
    code, out, _ = verify(split_copy, capsys)
    assert code == 0
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert rows["0"].endswith("not on this board") and rows["2"].endswith("not on this board")
    assert rows["1"].endswith("identical")


def test_verify_without_any_segment_says_so_in_one_line(split_copy, capsys):
    for spec in split_copy.stages:
        split_copy.segment_path(spec.index).unlink()
    code, _, err = verify(split_copy, capsys)
    assert code == 2 and "none of the manifest's segment files is there" in err


def test_a_stage_beyond_its_tolerance_fails_verify_and_refuses_to_start(split_copy, capsys):
    spoiled = shift_reference_output(split_copy, 1, TOLERANCE_STEPS + 1)
    code, out, _ = verify(spoiled, capsys)
    assert code == 1
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert rows["1"].split()[1:] == [str(TOLERANCE_STEPS + 1), "steps",
                                     str(TOLERANCE_STEPS), "steps", "NO"]
    assert rows["0"].endswith("identical") and rows["2"].endswith("identical")
    with pytest.raises(SelfCheckError, match=(
            rf"stage 1 .* beyond its reference: max difference {TOLERANCE_STEPS + 1} steps "
            rf"\(beyond the tolerance of {TOLERANCE_STEPS}\)")):
        require_reference(spoiled, 1, open_segment(spoiled, 1))


def test_a_difference_within_the_tolerance_is_reported_not_refused(split_copy, caplog):
    shifted = shift_reference_output(split_copy, 2, TOLERANCE_STEPS)
    caplog.set_level("INFO", logger="aiotedge.tflite.selfcheck")
    check = require_reference(shifted, 2, open_segment(shifted, 2))
    assert check.ok and not check.identical and check.max_diff == TOLERANCE_STEPS
    assert (f"stage 2 self-check on its reference: max difference {TOLERANCE_STEPS} steps "
            f"(within the tolerance of {TOLERANCE_STEPS})") in caplog.text


def test_a_segment_whose_weights_changed_is_caught_by_its_reference(split_copy, capsys):
    path = split_copy.segment_path(1)
    model = load_model(path)
    weights = max((b for b in model.buffers if b.data is not None), key=lambda b: len(b.data))
    weights.data = (np.asarray(weights.data, dtype=np.uint8) ^ 0x55).astype(np.uint8)
    path.write_bytes(pack_model(model))
    spoiled = reseal(split_copy, 1, "sha256", path)
    check = self_check(spoiled, 1, open_segment(spoiled, 1))
    assert not check.ok
    code, out, _ = verify(spoiled, capsys)
    assert code == 1 and out.splitlines()[2].endswith("NO")


def test_a_corrupted_reference_is_refused_by_its_sha256(split_copy, capsys):
    path = split_copy.directory / split_copy.stage(0).reference.file
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    code, _, err = verify(split_copy, capsys)
    assert code == 2
    assert "stage0.reference.npz has sha256" in err and "the manifest expects" in err


def test_a_reference_that_is_no_npz_or_of_other_tensors_is_refused(split_copy):
    path = split_copy.directory / split_copy.stage(0).reference.file
    path.write_bytes(b"not a zip file")
    with pytest.raises(ManifestError, match=r"stage0\.reference\.npz: cannot read it"):
        read_reference(reseal(split_copy, 0, "reference", path), 0)
    tensor_in, tensor_out = read_reference(split_copy, 1)
    write_reference(split_copy.directory, 0, tensor_in, tensor_out)  # stage 1's, for stage 0
    with pytest.raises(ManifestError, match=r"its input is .*, stage 0 input is"):
        read_reference(reseal(split_copy, 0, "reference", path), 0)


def test_a_manifest_without_references_still_loads_and_runs_unchecked(split_copy, capsys,
                                                                        caplog):
    def drop_references(data):
        for stage in data["stages"]:
            del stage["reference"]
    older = edit_manifest(split_copy, drop_references)
    assert all(spec.reference is None for spec in older.stages)
    assert "reference" not in json.dumps(older.to_dict())
    caplog.set_level("INFO", logger="aiotedge.tflite.selfcheck")
    assert require_reference(older, 0, open_segment(older, 0)) is None
    assert "the manifest has no reference for it" in caplog.text
    code, out, _ = verify(older, capsys)
    assert code == 0
    assert all(line.endswith("no reference (an older split)") for line in out.splitlines()[1:])


def test_a_stage_beyond_its_tolerance_exits_with_one_line_before_connecting(split_copy,
                                                                            tmp_path):
    spoiled = shift_reference_output(split_copy, 0, 3 * TOLERANCE_STEPS)
    config = tmp_path / "stage0.toml"
    # a broker nobody listens on: the self-check comes first
    config.write_text(f'[broker]\nport = 9\n[stage]\nmanifest = "{spoiled.directory}"\n'
                      'index = 0\n')
    result = subprocess.run([sys.executable, "-m", "aiotedge", "stage", "--config", str(config)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert (f"stage 0 ({spoiled.segment_path(0)}) computes on this machine beyond its reference:"
            f" max difference {3 * TOLERANCE_STEPS} steps (beyond the tolerance of "
            f"{TOLERANCE_STEPS})") in lines[0]


def test_the_self_check_travels_in_the_stage_info(split3):
    info = NodeInfo.for_stage(split3, 1, "stage1", "")
    assert "self_check" not in info.as_dict()
    checked = NodeInfo(**{**info.__dict__, "self_check": "identical"})
    assert NodeInfo.parse(checked.to_json().encode()).self_check == "identical"
    assert NodeInfo.parse(info.to_json().encode()).self_check == ""


def test_a_running_stage_says_its_self_check_in_its_retained_info(split3, broker, tmp_path):
    config = tmp_path / "stage1.toml"
    config.write_text(f'[broker]\nhost = "{broker.address.host}"\nport = {broker.address.port}\n'
                      f'[pipeline]\nname = "local"\n'
                      f'[stage]\nmanifest = "{split3.directory}"\nindex = 1\nnode = "stage1"\n')
    daemon = subprocess.Popen([sys.executable, "-m", "aiotedge", "stage", "--config",
                               str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_all_online(broker, ["stage1"])
        info = NodeInfo.parse(retained_now(broker, Topics("local"))[Topics("local").info(
            "stage1")])
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
    assert info.self_check == "identical"
