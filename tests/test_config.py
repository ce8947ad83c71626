"""Node config files: typed values, and errors that name the file, the key and the problem."""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import subprocess
from pathlib import Path

import pytest

from aiotedge.cli import LOCAL_CAMERA, LOCAL_PIPELINE, build_parser
from aiotedge.config.flags import override_from_flags
from aiotedge.config.loader import NodeConfig
from aiotedge.config.sections import BrokerConfig, key_flag
from aiotedge.contracts.errors import ConfigError


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
        ("[stage]\nindex = " + "9" * 5000 + "\n", "not valid TOML: Exceeds the limit"),
        # floats: finite only (TOML has inf and nan)
        ("[camera]\nfps = inf\n", "key 'camera.fps' must be a finite number, got inf"),
        ("[camera]\nfps = nan\n", "key 'camera.fps' must be a finite number, got nan"),
        ("[camera]\nfps = 1" + "0" * 400 + "\n", "key 'camera.fps' must be a finite number"),
        ("[stats]\ninterval = -inf\n", "key 'stats.interval' must be a finite number, got -inf"),
        # [broker]
        ('[broker]\nhost = ""\n', "[broker] key 'host' must be a host name or an IP address"),
        ('[broker]\nhost = "broker lan"\n', "[broker] key 'host' must be a host name or an IP"),
        ('[broker]\nhost = "broker.lan:1883"\n', "[broker] key 'host' must be a host name or an"),
        ('[broker]\nhost = "[::1]"\n', "[broker] key 'host' must be a host name or an IP address"),
        ('[broker]\nhost = "' + "b" * 64 + '.lan"\n', "[broker] key 'host' must be a host name"),
        ("[broker]\nport = 0\n", "[broker] key 'port' must be 1 to 65535, got 0"),
        ("[broker]\nport = 70000\n", "[broker] key 'port' must be 1 to 65535, got 70000"),
        ("[broker]\nport = 9223372036854775807\n", "[broker] key 'port' must be 1 to 65535"),
        ("[broker]\nkeepalive = -1\n", "[broker] key 'keepalive' must be 0 to 65535, got -1"),
        ("[broker]\nkeepalive = 65536\n", "[broker] key 'keepalive' must be 0 to 65535, got 65536"),
        ('[broker]\nusername = ""\n', "[broker] key 'username' must be text of 1 to 65535 bytes"),
        ('[broker]\nusername = "a\\tb"\n', "[broker] key 'username' must be text of 1 to 65535"),
        ('[broker]\npassword_file = "/etc/pw"\n',
         "[broker] key 'password_file' is set without 'username'"),
        ('[broker]\nusername = "u"\npassword_env = ""\n',
         "[broker] key 'password_env' must be an environment variable name"),
        ('[broker]\nusername = "u"\npassword_file = ""\n',
         "[broker] key 'password_file' must be a path (not empty, no NUL character)"),
        ('[broker]\nca_file = "/etc/ca.crt"\n',
         "[broker] key 'ca_file' is set but 'tls' is false: set tls = true or remove ca_file"),
        ('[broker]\ntls = true\nkey_file = "/etc/node.key"\n',
         "[broker] key 'key_file' is set without 'cert_file'"),
        # [pipeline]
        ('[pipeline]\nname = "a#"\n', "[pipeline] key 'name' must be one topic level: no /, +"),
        ('[pipeline]\nname = "a\\u0007b"\n', "[pipeline] key 'name' must be one topic level"),
        ('[pipeline]\nname = "' + "n" * 257 + '"\n', "[pipeline] key 'name' must be one topic"),
        ('[pipeline]\nprefix = "home/+/ai"\n', "[pipeline] key 'prefix' must be topic levels"),
        ('[pipeline]\nprefix = ""\n', "[pipeline] key 'prefix' must be topic levels joined by /"),
        ('[pipeline]\nprefix = "aiotedge/"\n', "[pipeline] key 'prefix' must be topic levels"),
        ('[pipeline]\nprefix = "$SYS"\n', "[pipeline] key 'prefix' must be topic levels"),
        ("[pipeline]\nqos = 2\n", "[pipeline] key 'qos' must be 0 or 1, got 2"),
        ("[pipeline]\nsession_expiry = -1\n",
         "[pipeline] key 'session_expiry' must be 0 to 4294967295, got -1"),
        ("[pipeline]\nsession_expiry = 4294967296\n",
         "[pipeline] key 'session_expiry' must be 0 to 4294967295, got 4294967296"),
        # [stage]
        ('[stage]\nmanifest = "a\\u0000b"\n', "[stage] key 'manifest' must be a path"),
        ("[stage]\nindex = -1\n", "[stage] key 'index' must be 0 or more, got -1"),
        ('[stage]\nnode = "pi/3"\n', "[stage] key 'node' must be one topic level: no /, + or #"),
        ("[stage]\nthreads = 0\n", "[stage] key 'threads' must be 1 to 256, got 0"),
        ("[stage]\nthreads = 2147483648\n", "[stage] key 'threads' must be 1 to 256"),
        ("[stage]\nqueue_size = 0\n", "[stage] key 'queue_size' must be 1 to 65535, got 0"),
        ("[stage]\nqueue_size = 65536\n", "[stage] key 'queue_size' must be 1 to 65535, got 65536"),
        ("[stage]\ntop_k = 0\n", "[stage] key 'top_k' must be 1 or more, got 0"),
        ("[stage]\nmin_score = -0.5\n", "[stage] key 'min_score' must be 0.0 or more, got -0.5"),
        ('[stage]\nlabels = "cat"\n', "key 'stage.labels' must be a list of str, got str"),
        ('[stage]\nlabels = ["cat", 3]\n', "key 'stage.labels'[1] must be str, got int 3"),
        ("[stage]\nmax_message_bytes = 0\n", "key 'max_message_bytes' must be 1 to 268435455"),
        ("[stage]\nmax_message_bytes = 268435456\n",
         "[stage] key 'max_message_bytes' must be 1 to 268435455, got 268435456"),
        ('[stage]\nshare_group = "g+"\n', "[stage] key 'share_group' must be one topic level"),
        # [camera]
        ('[camera]\nname = ""\n', "[camera] key 'name' must be one topic level"),
        ('[camera]\nloop = true\nwatch = true\n', "keys 'loop' and 'watch' are both set"),
        ('[camera]\nsize = "640"\n', "key 'size' must be WIDTHxHEIGHT, e.g. 640x480"),
        ('[camera]\ntransport = "http"\n', "key 'transport' must be tcp or udp"),
        ('[camera]\npreprocess = "png"\n', "key 'preprocess' must be none, jpeg or tensor"),
        ('[camera]\njpeg_quality = 0\n', "key 'jpeg_quality' must be 1 to 100, got 0"),
        ('[camera]\nimages = "photos"\n', "unknown key 'images'"),
        ("[camera]\nfps = -1\n", "key 'fps' must be 0 or at least 1/86400 (one frame a day)"),
        ("[camera]\nfps = 1e-9\n", "[camera] key 'fps' must be 0 or at least 1/86400"),
        ("[camera]\nin_flight = 0\n", "[camera] key 'in_flight' must be 1 to 256, got 0"),
        ("[camera]\nin_flight = 2000\n", "[camera] key 'in_flight' must be 1 to 256, got 2000"),
        ("[camera]\nframes = 0\n", "[camera] key 'frames' must be 1 or more, got 0"),
        # [stats]
        ("[stats]\ninterval = -1\n", "[stats] key 'interval' must be 0 to 86400, got -1.0"),
        ("[stats]\ninterval = 1e10\n", "key 'interval' must be 0 to 86400, got 10000000000.0"),
        ("[stats]\nprometheus_port = -1\n", "[stats] key 'prometheus_port' must be 0 to 65535"),
        ("[stats]\nprometheus_port = 65536\n", "[stats] key 'prometheus_port' must be 0 to 65535"),
        ('[stats]\nprometheus_address = ""\n',
         "[stats] key 'prometheus_address' must be a host name or an IP address"),
        # [homeassistant]
        ('[homeassistant]\nprefix = "ha/#"\n', "[homeassistant] key 'prefix' must be topic levels"),
    ],
)
def test_mistakes_are_reported_with_file_and_key(tmp_path, text, message):
    with pytest.raises(ConfigError) as caught:
        NodeConfig.load(write(tmp_path, text))
    assert message in str(caught.value)
    assert str(caught.value).startswith(str(tmp_path / "node.toml"))
    assert "\n" not in str(caught.value)


def test_the_limits_themselves_are_accepted(tmp_path):
    config = NodeConfig.load(write(tmp_path, """
[broker]
host = "::1"
port = 65535
keepalive = 65535
[pipeline]
prefix = "home/ai"
session_expiry = 4294967295
[stage]
threads = 256
queue_size = 65535
max_message_bytes = 268435455
[camera]
fps = 1.1574074074074073e-05
in_flight = 256
[stats]
interval = 86400
prometheus_port = 65535
"""))
    assert (config.broker.keepalive, config.pipeline.session_expiry) == (65535, 4294967295)
    assert (config.stage.queue_size, config.stage.max_message_bytes) == (65535, 268435455)
    assert config.camera.fps == pytest.approx(1 / 86400)
    assert config.camera.in_flight == 256


@pytest.mark.parametrize(
    "host", ["broker.lan", "broker.lan.", "pi_4", "10.0.0.5", "fe80::1%eth0", "bröker.lan"]
)
def test_host_names_and_addresses_are_accepted(host):
    assert BrokerConfig(host).host == host


def test_flags_are_checked_like_keys_and_named_as_flags(tmp_path):
    config = NodeConfig.load(write(tmp_path, "[camera]\nfps = 2\n"))
    with pytest.raises(ConfigError, match=r"^flags: --fps must be a finite number, got inf$"):
        config.override("camera", fps=float("inf"))
    with pytest.raises(ConfigError, match=r"^flags: --fps must be 0 or at least 1/86400"):
        config.override("camera", fps=-1.0)
    with pytest.raises(ConfigError, match=r"^flags: --queue-size must be 1 to 65535, got 70000$"):
        config.override("stage", queue_size=70000)
    with pytest.raises(ConfigError, match=r"^flags: --stage must be 0 or more, got -1$"):
        config.override("stage", index=-1)
    with pytest.raises(ConfigError, match=r"^flags: --pipeline must be one topic level"):
        config.override("pipeline", name="a/b")


def test_a_file_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "node.toml"
    path.write_bytes(b'[stage]\nnode = "caf\xe9"\n')
    with pytest.raises(ConfigError) as caught:
        NodeConfig.load(path)
    assert str(caught.value) == f"{path}: not UTF-8 text (byte 0xe9 at line 2, column 12)"


def test_a_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        NodeConfig.load(tmp_path / "absent.toml")


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("pi-broker", BrokerConfig("pi-broker", 1883)),
        ("10.0.0.5:1884", BrokerConfig("10.0.0.5", 1884)),
        ("[::1]:1885", BrokerConfig("::1", 1885)),
        ("[::1]", BrokerConfig("::1", 1883)),
        ("fe80::1", BrokerConfig("fe80::1", 1883)),
        ("mqtt://127.0.0.1:18830", BrokerConfig("127.0.0.1", 18830)),
        ("mqtt://broker.lan", BrokerConfig("broker.lan", 1883)),
        ("MQTTS://broker.lan", BrokerConfig("broker.lan", 8883, tls=True)),
        ("mqtts://broker.lan:8884", BrokerConfig("broker.lan", 8884, tls=True)),
        ("mqtts://[::1]:8883", BrokerConfig("::1", 8883, tls=True)),
    ],
)
def test_broker_addresses(address, expected):
    assert BrokerConfig.parse(address) == expected


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("host:abc", "port 'abc' must be a number from 1 to 65535"),
        ("host:", "port '' must be a number from 1 to 65535"),
        ("host:0", "port '0' must be a number from 1 to 65535"),
        ("host:65536", "port '65536' must be a number from 1 to 65535"),
        ("mqtt://host:abc", "port 'abc' must be a number"),
        ("http://host:1883", "unknown scheme 'http://'"),
        ("ws://host", "unknown scheme 'ws://'"),
        ("mqtt://host/path", "'host/path' is not a host name or an IP address"),
        ("broker lan", "'broker lan' is not a host name or an IP address"),
        ("[broker.lan]:1883", "'broker.lan' is not a host name or an IP address"),
        ("[::1:1883", "expected HOST, HOST:PORT, [IPv6]:PORT"),
        ("[::1]1883", "expected HOST, HOST:PORT, [IPv6]:PORT"),
        ("", "'' is not a host name"),
    ],
)
def test_a_broker_address_that_is_none_of_the_forms_is_refused_in_one_line(address, message):
    with pytest.raises(ConfigError) as caught:
        BrokerConfig.parse(address)
    assert message in str(caught.value)
    assert "mqtts://HOST:PORT (TLS)" in str(caught.value)
    assert "\n" not in str(caught.value)




def test_a_password_longer_than_mqtt_carries_is_refused(tmp_path):
    secret = tmp_path / "node.password"
    secret.write_text("x" * 65536 + "\n")
    broker = BrokerConfig(username="u", password_file=str(secret))
    with pytest.raises(ConfigError) as caught:
        broker.password()
    assert str(caught.value) == (
        f"the password in the broker password file {secret} is over 65535 bytes"
    )


def test_a_password_file_that_is_not_utf8_is_named(tmp_path):
    secret = tmp_path / "node.password"
    secret.write_bytes(b"caf\xe9\n")
    broker = BrokerConfig(username="u", password_file=str(secret))
    with pytest.raises(ConfigError) as caught:
        broker.password()
    assert str(caught.value) == f"the broker password file {secret} is not UTF-8 text"

# -- files the broker settings name, checked when a node starts ------------------------------


def _openssl(directory: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pem(tmp_path_factory) -> Path:
    """Two self-signed certificates with their keys, a passphrase-protected key, some junk."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (sudo apt-get install openssl)")
    directory = tmp_path_factory.mktemp("pem")
    for name in ("a", "b"):
        _openssl(directory, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                 "-nodes", "-days", "2", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
                 "-out", f"{name}.crt")
    _openssl(directory, "pkey", "-in", "a.key", "-aes256", "-passout", "pass:secret",
             "-out", "encrypted.key")
    (directory / "a.pem").write_text((directory / "a.crt").read_text()
                                     + (directory / "a.key").read_text())
    (directory / "junk.txt").write_text("not a certificate\n")
    return directory


def check_files(tmp_path, broker_keys: str) -> None:
    config = NodeConfig.load(write(tmp_path, "[broker]\ntls = true\n" + broker_keys))
    dataclasses.replace(config, source="node.toml").check_files()


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ('ca_file = "{d}/absent.crt"',
         "node.toml: key 'broker.ca_file': {d}/absent.crt does not exist"),
        ('ca_file = "{d}"', "node.toml: key 'broker.ca_file': cannot read {d}: Is a directory"),
        ('cert_file = "{d}/absent.crt"\nkey_file = "{d}/a.key"',
         "node.toml: key 'broker.cert_file': {d}/absent.crt does not exist"),
        ('cert_file = "{d}/a.crt"\nkey_file = "{d}/absent.key"',
         "node.toml: key 'broker.key_file': {d}/absent.key does not exist"),
        ('username = "u"\npassword_file = "{d}/absent.password"',
         "node.toml: key 'broker.password_file': {d}/absent.password does not exist"),
        ('ca_file = "{d}/junk.txt"',
         "node.toml: key 'broker.ca_file': {d}/junk.txt holds no PEM certificate"),
        ('cert_file = "{d}/a.key"\nkey_file = "{d}/a.key"',
         "node.toml: key 'broker.cert_file': {d}/a.key holds no PEM certificate"),
        ('cert_file = "{d}/a.crt"',
         "node.toml: key 'broker.cert_file': {d}/a.crt holds no PEM private key (set key_file)"),
        ('cert_file = "{d}/a.crt"\nkey_file = "{d}/junk.txt"',
         "node.toml: key 'broker.key_file': {d}/junk.txt holds no PEM private key"),
        ('cert_file = "{d}/a.crt"\nkey_file = "{d}/b.key"',
         "node.toml: key 'broker.key_file': {d}/b.key is not the key of {d}/a.crt"),
        ('cert_file = "{d}/a.crt"\nkey_file = "{d}/encrypted.key"',
         "node.toml: key 'broker.key_file': {d}/encrypted.key is encrypted"),
    ],
)
def test_missing_or_unusable_broker_files_are_named_with_their_key(tmp_path, pem, keys, message):
    with pytest.raises(ConfigError) as caught:
        check_files(tmp_path, keys.format(d=pem))
    assert str(caught.value).startswith(message.format(d=pem))
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "keys",
    ['ca_file = "{d}/a.crt"', 'cert_file = "{d}/a.pem"',
     'ca_file = "{d}/b.crt"\ncert_file = "{d}/a.crt"\nkey_file = "{d}/a.key"'],
)
def test_usable_broker_files_pass(tmp_path, pem, keys):
    check_files(tmp_path, keys.format(d=pem))


def test_load_does_not_need_the_files_of_the_board_a_config_is_for(tmp_path):
    config = NodeConfig.load(write(tmp_path, '[broker]\ntls = true\nca_file = "/nowhere/ca.crt"\n'))
    assert config.broker.ca_file == "/nowhere/ca.crt"


# -- the command line's flags, derived from the keys' declarations ----------------------------

#: the flags that set no config key: a command's own options
PLAIN_FLAGS = {
    "every command": {"-h", "--help", "--config"},
    "watch": {"--count", "--json"},
    "status": {"--json", "--watch", "--interval"},
    "profile": {"--out", "--threads", "--runs", "--rounds", "--warmup", "--photo",
                "--photo-size", "--no-mqtt"},
    "run": {"--manifest", "--plan", "--json", "--log-file"},
    "node": {"--cache"},
    "verify": {"--manifest", "--threads"},
}


def commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def declared_flags(command: argparse.ArgumentParser):
    """(action, section class, key, declaration) of each flag that sets a config key."""
    sections = {name: type(value) for name, value in vars(NodeConfig()).items()
                if dataclasses.is_dataclass(value)}
    for action in command._actions:
        section, dot, key = action.dest.partition(".")
        if action.option_strings and dot:
            yield action, sections[section], key, key_flag(sections[section], key)


def test_every_flag_sets_its_declared_key_or_is_a_commands_own():
    for name, command in commands().items():
        plain = PLAIN_FLAGS["every command"] | PLAIN_FLAGS.get(name, set())
        declared = {id(action) for action, *_ in declared_flags(command)}
        for action in command._actions:
            if action.option_strings and id(action) not in declared:
                assert set(action.option_strings) <= plain, (name, action.option_strings)
        for action, _, key, flag in declared_flags(command):
            assert flag is not None, (name, action.dest)
            assert action.option_strings == list(flag.names), (name, key)


def sample(action: argparse.Action) -> tuple[list[str], object]:
    """Command-line words that give this flag, and the value its key then has."""
    if action.nargs == 0:
        return [action.option_strings[0]], True
    if action.choices:
        value = next(iter(action.choices))
    elif action.dest == "camera.crop":
        return [action.option_strings[0], "0,8,64,48"], [0, 8, 64, 48]
    else:
        value = {int: 2, float: 2.5}.get(action.type, "640x480" if "size" in action.dest
                                           else "x")
    return [action.option_strings[0], str(value)], value


@pytest.mark.parametrize("left_out", ["camera.loop", "camera.watch"])  # one or the other
def test_every_flag_given_overrides_its_key(left_out):
    for name, command in commands().items():
        words, expected = [name], {}
        if name in ("profile", "verify"):  # no config key
            continue
        if name == "run":
            words += ["--manifest", "m"]
        for action, *_ in declared_flags(command):
            if action.dest != left_out:
                given, expected[action.dest] = sample(action)
                words += given
        args = build_parser().parse_args(words)
        config = override_from_flags(NodeConfig(), args)
        for dest, value in expected.items():
            section, _, key = dest.partition(".")
            assert getattr(getattr(config, section), key) == value, (name, dest)


def test_the_help_shows_the_keys_defaults():
    """Each flag's help gives the key's default; in words only where the value says nothing
    (none, off) or a command has its own default (aiotedge run's private broker)."""
    said_in_words = {("run", "broker.host"): "a private mosquitto on a free port",
                     ("run", "pipeline.name"): LOCAL_PIPELINE,
                     ("run", "camera.name"): LOCAL_CAMERA}
    for name, command in commands().items():
        for action, section, key, flag in declared_flags(command):
            default = next(f.default for f in dataclasses.fields(section) if f.name == key)
            if flag.required:
                assert action.help.endswith(
                    f"(required here or as {action.dest})"), (name, action.dest)
                continue
            if (name, action.dest) in said_in_words:
                shown = said_in_words[name, action.dest]
            elif flag.parse is not None:  # --broker: the address of the section's defaults
                shown = str(section())
            elif flag.shown_default:
                assert default is None or default is False or default == "", (name, action.dest)
                continue
            else:
                shown = ("none" if default is None or default == "" else
                         "off" if default is False else str(default))
            assert action.help.endswith(f"(default: {shown})"), (name, action.dest, action.help)


def test_the_last_stage_s_filter_reads_from_the_file(tmp_path):
    path = tmp_path / "stage.toml"
    path.write_text('[stage]\nmin_score = 0.5\nlabels = ["cat", "dog"]\n')
    stage = NodeConfig.load(path).stage
    assert (stage.min_score, stage.labels) == (0.5, ("cat", "dog"))
    assert (NodeConfig.load(None).stage.min_score, NodeConfig.load(None).stage.labels) == (None, ())
