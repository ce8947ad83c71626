"""Node config files: typed values, and errors that name the file, the key and the problem."""

from __future__ import annotations

import pytest

from aiotedge.config import ConfigError, NodeConfig
from aiotedge.session import BrokerConfig


def write(tmp_path, text: str):
    path = tmp_path / "node.toml"
    path.write_text(text)
    return path


def test_a_full_stage_config_is_read_into_typed_sections(tmp_path):
    config = NodeConfig.load(write(tmp_path, """
[broker]
host = "broker.lan"
port = 8883
[pipeline]
name = "greenhouse"
qos = 0
[stage]
manifest = "/var/lib/aiotedge/model"
index = 3
threads = 2
"""))
    assert config.broker == BrokerConfig("broker.lan", 8883)
    assert (config.pipeline.name, config.pipeline.qos) == ("greenhouse", 0)
    assert (config.stage.index, config.stage.threads, config.stage.queue_size) == (3, 2, 4)


def test_flags_override_the_file_key_by_key(tmp_path):
    config = NodeConfig.load(write(tmp_path, '[stage]\nindex = 1\nthreads = 4\n'))
    config = config.override("stage", index=2, threads=None)
    assert (config.stage.index, config.stage.threads) == (2, 4)


def test_an_int_is_accepted_where_a_float_is_expected(tmp_path):
    assert NodeConfig.load(write(tmp_path, "[camera]\nfps = 5\n")).camera.fps == 5.0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[stage]\nindx = 1\n", "node.toml: [stage] unknown key 'indx'"),
        ("[stag]\nindex = 1\n", "node.toml: unknown key 'stag'"),
        ('[stage]\nindex = "one"\n', "key 'stage.index' must be int, got str 'one'"),
        ("[stage]\nindex = true\n", "key 'stage.index' must be int, got bool"),
        ("[broker]\nport = 1883.5\n", "key 'broker.port' must be int"),
        ("stage = 3\n", "[stage] must be a table"),
        ("[stage\n", "not valid TOML"),
        # values out of range
        ("[stage]\nqueue_size = 0\n", "[stage] key 'queue_size' must be 1 or more"),
        ("[pipeline]\nqos = 2\n", "[pipeline] key 'qos' must be 0 or 1"),
        ("[camera]\nin_flight = 0\n", "[camera] key 'in_flight' must be 1 or more"),
        ("[stage]\ntop_k = 0\n", "[stage] key 'top_k' must be 1 or more"),
        ('[stage]\nnode = "pi/3"\n', "key 'node' must be a topic level without wildcards"),
        ('[pipeline]\nname = "a#"\n', "key 'name' must be one topic level without wildcards"),
        ("[broker]\nport = 70000\n", "[broker] key 'port' must be a port number"),
        ("[stats]\nprometheus_port = -1\n", "key 'prometheus_port' must be a port number or 0"),
    ],
)
def test_mistakes_are_reported_with_file_and_key(tmp_path, text, message):
    with pytest.raises(ConfigError) as caught:
        NodeConfig.load(write(tmp_path, text))
    assert message in str(caught.value)
    assert str(caught.value).startswith(str(tmp_path / "node.toml"))


def test_a_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        NodeConfig.load(tmp_path / "absent.toml")


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("pi-broker", BrokerConfig("pi-broker", 1883)),
        ("10.0.0.5:1884", BrokerConfig("10.0.0.5", 1884)),
        ("[::1]:1885", BrokerConfig("::1", 1885)),
    ],
)
def test_broker_addresses(address, expected):
    assert BrokerConfig.parse(address) == expected

