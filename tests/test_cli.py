"""What a user sees when a node's config is wrong: one line naming the file, the key, the fix."""

from __future__ import annotations

import subprocess
import sys

import pytest


def run_stage(config_text: str, tmp_path) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "stage7.toml"
    config.write_text(config_text)
    return subprocess.run(
        [sys.executable, "-m", "aiotedge", "stage", "--config", str(config)],
        capture_output=True, text=True, timeout=60, check=False,
    )


def test_a_missing_manifest_is_named_with_its_key(tmp_path):
    result = run_stage('[stage]\nmanifest = "/nowhere/split"\n', tmp_path)
    assert result.returncode == 2
    assert "stage7.toml: key 'stage.manifest': /nowhere/split does not exist" in result.stderr


def test_a_stage_index_beyond_the_split_is_named_with_its_key(tmp_path, test_models, split_into):
    manifest = split_into(test_models["int8"], 3)
    result = run_stage(f'[stage]\nmanifest = "{manifest.directory}"\nindex = 3\n', tmp_path)
    assert result.returncode == 2
    assert "key 'stage.index' is 3, but" in result.stderr
    assert "has 3 stages (0 to 2)" in result.stderr


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[stage]\nqueue = 4\n", "[stage] unknown key 'queue'"),
        ("[broker]\npassword = \"hunter2\"\n", "[broker] unknown key 'password'"),
        ("[pipeline]\nqos = \"1\"\n", "key 'pipeline.qos' must be int, got str"),
    ],
)
def test_config_mistakes_stop_the_daemon_with_exit_2(tmp_path, text, message):
    result = run_stage(text, tmp_path)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_an_unreadable_password_file_is_reported(tmp_path, test_models, split_into):
    manifest = split_into(test_models["int8"], 3)
    result = run_stage(
        f'[broker]\nusername = "stage0"\npassword_file = "{tmp_path}/absent.password"\n'
        f'[stage]\nmanifest = "{manifest.directory}"\n',
        tmp_path,
    )
    assert result.returncode == 2
    assert "cannot read the broker password file" in result.stderr
