"""What a user sees when a node's config is wrong: one line naming the file, the key, the fix."""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys

import pytest
from aiotedge_converter import cli as converter_cli
from aiotedge_converter.cli import build_parser as build_converter_parser
from aiotedge_converter.cli import main as convert

from aiotedge import __version__
from aiotedge.cli import build_parser


def run_node(command: str, config: str | bytes, tmp_path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "stage7.toml"
    if isinstance(config, bytes):
        path.write_bytes(config)
    else:
        path.write_text(config)
    return subprocess.run(
        [sys.executable, "-m", "aiotedge", command, "--config", str(path)],
        capture_output=True, text=True, timeout=60, check=False,
    )


def run_stage(config: str | bytes, tmp_path) -> subprocess.CompletedProcess[str]:
    return run_node("stage", config, tmp_path)


def assert_one_line_error(result: subprocess.CompletedProcess[str], message: str) -> None:
    """Exit status 2, and the message as the only line on stderr (no traceback)."""
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0]


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
        # values paho refuses only once connected, in its network thread
        ("[pipeline]\nsession_expiry = 4294967296\n",
         "stage7.toml: [pipeline] key 'session_expiry' must be 0 to 4294967295, got 4294967296"),
        ("[broker]\nkeepalive = 65536\n",
         "stage7.toml: [broker] key 'keepalive' must be 0 to 65535, got 65536"),
        ("[stage]\nqueue_size = 65536\n",
         "stage7.toml: [stage] key 'queue_size' must be 1 to 65535, got 65536"),
        ("[stage]\nthreads = 2147483648\n", "stage7.toml: [stage] key 'threads' must be 1 to 256"),
        ("[camera]\nfps = inf\n", "stage7.toml: key 'camera.fps' must be a finite number, got inf"),
        ('[broker]\nhost = ""\n', "stage7.toml: [broker] key 'host' must be a host name or an IP"),
        (b'[broker]\nhost = "br\xf6ker"\n',
         "stage7.toml: not UTF-8 text (byte 0xf6 at line 2, column 11)"),
    ],
)
def test_config_mistakes_stop_the_daemon_with_exit_2(tmp_path, text, message):
    assert_one_line_error(run_stage(text, tmp_path), message)


def test_a_missing_ca_file_is_named_with_its_key_before_connecting(
    tmp_path, test_models, split_into
):
    manifest = split_into(test_models["int8"], 3)
    result = run_stage(
        f'[broker]\ntls = true\nca_file = "{tmp_path}/ca.crt"\n'
        f'[stage]\nmanifest = "{manifest.directory}"\nindex = 0\n',
        tmp_path,
    )
    assert_one_line_error(
        result, f"stage7.toml: key 'broker.ca_file': {tmp_path}/ca.crt does not exist"
    )


def test_a_prometheus_port_in_use_is_named_before_connecting(tmp_path, test_models, split_into):
    manifest = split_into(test_models["int8"], 3)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_stage(
            f'[stage]\nmanifest = "{manifest.directory}"\nindex = 0\n'
            f'[stats]\nprometheus_port = {port}\n',
            tmp_path,
        )
    assert result.returncode == 2
    assert (
        f"stage7.toml: keys 'stats.prometheus_address' and 'stats.prometheus_port': "
        f"cannot listen on 127.0.0.1:{port}: Address already in use"
    ) in result.stderr
    assert "Traceback" not in result.stderr


def test_a_missing_source_is_named_with_its_key(tmp_path):
    result = run_node("camera", '[camera]\nsource = "/nowhere/photos"\n', tmp_path)
    assert_one_line_error(
        result, "stage7.toml: key 'camera.source': /nowhere/photos: No such file or directory; "
        "a source is a folder, an image or a video file, a device (/dev/video0), picamera2:N "
        "or a URL (rtsp://, rtsps://, http://, https://)"
    )


def test_an_unreadable_password_file_is_reported(tmp_path, test_models, split_into):
    manifest = split_into(test_models["int8"], 3)
    result = run_stage(
        f'[broker]\nusername = "stage0"\npassword_file = "{tmp_path}/absent.password"\n'
        f'[stage]\nmanifest = "{manifest.directory}"\nindex = 0\n',
        tmp_path,
    )
    assert_one_line_error(result, f"stage7.toml: key 'broker.password_file': {tmp_path}/"
                                  "absent.password does not exist")


def test_a_stage_without_an_index_names_the_flag_and_the_key(tmp_path, test_models, split_into):
    manifest = split_into(test_models["int8"], 3)
    result = run_stage(f'[stage]\nmanifest = "{manifest.directory}"\n', tmp_path)
    assert_one_line_error(result, "stage7.toml: no stage index given (--stage or key "
                                  "'stage.index')")


def test_a_bad_broker_flag_is_named():
    result = subprocess.run(
        [sys.executable, "-m", "aiotedge", "status", "--broker", "broker lan:1883"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert_one_line_error(
        result, "flags: --broker 'broker lan:1883': 'broker lan' is not a host name or an IP "
                "address (expected HOST, HOST:PORT, [IPv6]:PORT, mqtt://HOST:PORT or "
                "mqtts://HOST:PORT (TLS))"
    )


@pytest.mark.parametrize("build_parser", [build_parser, build_converter_parser],
                         ids=["aiotedge", "aiotedge-convert"])
def test_the_help_lists_every_command_and_every_flag_says_its_default(build_parser):
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    top = parser.format_help()
    for name, command in commands.choices.items():
        assert f"    {name} " in top, name
        for action in command._actions:
            if action.option_strings and action.nargs != 0 and action.dest != "help":
                text = action.help or ""
                assert "default" in text or "required" in text, (name, action.option_strings)


def test_version():
    result = subprocess.run([sys.executable, "-m", "aiotedge", "--version"], capture_output=True,
                            text=True, timeout=60, check=True)
    assert result.stdout.strip() == f"aiotedge {__version__}"


def test_the_converter_says_its_version_as_aiotedge_does(capsys):
    with pytest.raises(SystemExit) as done:
        convert(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"aiotedge-convert {__version__}"


def test_ctrl_c_ends_the_converter_with_130_and_no_traceback(monkeypatch, capsys):
    """As aiotedge does (nodes/lifecycle.exit_status): Ctrl-C in a long import or plan."""
    def interrupted(graph_file):
        raise KeyboardInterrupt

    monkeypatch.setattr(converter_cli, "load_graph", interrupted)
    assert convert(["analyze", "model.tflite"]) == 130
    assert capsys.readouterr().err == ""


def test_a_node_name_given_to_retire_is_checked_as_the_key_is():
    result = subprocess.run(
        [sys.executable, "-m", "aiotedge", "retire", "--node", "stage0/x", "--broker",
         "127.0.0.1:1"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert_one_line_error(result, "flags: --node must be one topic level")
