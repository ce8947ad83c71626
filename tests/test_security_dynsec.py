"""The dynamic-security setup on a real mosquitto: configs/mosquitto/secure-dynsec.conf with the
file scripts/dynsec-json.py writes from mosquitto_passwd's file (the example cluster's users and
a replica of stage 2), used as they are; only the paths of the certificates and of that file
and the listener's port are pointed at throwaway ones made here. The checks are those
test_security.py runs on secure.conf and its ACL, plus what only the plugin can do: refuse a
subscription, so that no user can join a stage's share group and take its frames.
"""

from __future__ import annotations

import dataclasses
import json
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from aiotedge.config.loader import NodeConfig
from aiotedge.contracts.topics import Topics
from aiotedge.nodes.observe.homeassistant import discovery_filter
from support.paths import REPO
from support.security import DYNSEC_CONF, SECURE_CONF, acl_users, conf_settings, dynsec_conf
from tests.security import (
    FRAMES,
    NOT_AUTHORIZED,
    REPLICA,
    STAGES,
    check_client_id_takeover,
    check_cluster_logins,
    check_deliveries,
    check_frames_wait_for_a_restarting_stage,
    check_home_assistant,
    check_logins,
    check_one_connection_per_user,
    check_only_the_deployer_publishes_releases,
    check_publish_rights,
    check_status_tool,
    is_camera,
    load_cluster,
    theft,
)

SCRIPT = REPO / "scripts" / "dynsec-json.py"
TOPICS = Topics("greenhouse")
#: the cameras' snapshots and their events' snapshots
SNAPSHOTS = [TOPICS.snapshot("+"), TOPICS.camera_event_snapshots("+")]


def write_dynsec_file(passwords: dict[str, Path], out: Path,
                      *extra: str) -> subprocess.CompletedProcess:
    """scripts/dynsec-json.py for the example cluster, as a user runs it."""
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--pipeline", "greenhouse", "--stages", str(STAGES),
         "--password-file", str(passwords[""]), "--out", str(out),
         "--homeassistant", "homeassistant", "--deployer", "deployer", *extra],
        capture_output=True, text=True, check=False,
    )


@pytest.fixture(scope="module")
def broker_users() -> list[str]:
    """The users of the shipped ACL, and the replica's."""
    return [*acl_users(), REPLICA]


@pytest.fixture(scope="module")
def dynsec_file(passwords, tmp_path_factory) -> Path:
    """The plugin's file for the cluster and the replica, from the test password file."""
    out = tmp_path_factory.mktemp("dynsec") / "aiotedge-dynsec.json"
    result = write_dynsec_file(passwords, out, "--replica", f"{REPLICA}:2")
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def secure_config(pki, dynsec_file) -> Callable[..., str]:
    """Every broker of this module runs secure-dynsec.conf instead of secure.conf."""
    return lambda tls_port, require_certificate=False: dynsec_conf(
        pki, dynsec_file, tls_port, require_certificate)


def replica_config() -> NodeConfig:
    """stage2.toml with the replica's node name and user (its index stays 2)."""
    stage2 = load_cluster()["stage2"]
    return dataclasses.replace(
        stage2, stage=dataclasses.replace(stage2.stage, node=REPLICA),
        broker=dataclasses.replace(stage2.broker, username=REPLICA))


def user_configs() -> dict[str, NodeConfig | str]:
    """Broker user -> its node's config, or for a tool its name ("watcher", "homeassistant")."""
    users: dict[str, NodeConfig | str] = {
        config.broker.username: config for config in load_cluster().values()}
    return users | {REPLICA: replica_config(), "watcher": "watcher",
                    "homeassistant": "homeassistant"}


# -- the config and the file -------------------------------------------------------------------


def test_secure_dynsec_conf_is_secure_conf_with_the_plugin_for_passwords_and_acl():
    secure, dynsec = conf_settings(SECURE_CONF), conf_settings(DYNSEC_CONF)
    assert {key: values for key, values in secure.items()
            if key not in {"password_file", "acl_file"}} == {
        key: values for key, values in dynsec.items()
        if key not in {"plugin", "plugin_opt_config_file"}}
    assert dynsec["plugin"] == ["mosquitto_dynamic_security.so"]


def test_the_dynsec_file_is_private_has_every_user_and_is_replaced_whole(
    passwords, dynsec_file, tmp_path
):
    assert stat.S_IMODE(dynsec_file.stat().st_mode) == 0o600  # password hashes
    text = dynsec_file.read_text()
    assert sorted(client["username"] for client in json.loads(text)["clients"]) == sorted(
        [*acl_users(), REPLICA])
    # run again (after adding a user): the file is replaced, private again
    again = tmp_path / "again.json"
    again.write_text("old")
    again.chmod(0o644)
    assert write_dynsec_file(passwords, again, "--replica", f"{REPLICA}:2").returncode == 0
    assert stat.S_IMODE(again.stat().st_mode) == 0o600
    assert json.loads(again.read_text()) == json.loads(text)


def test_a_user_of_the_password_file_left_without_a_part_stops_the_script(passwords, tmp_path):
    out = tmp_path / "dynsec.json"
    result = write_dynsec_file(passwords, out)  # the replica's user, but no --replica
    assert result.returncode == 2
    assert f"{REPLICA} in {passwords['']} would have no rights" in result.stderr
    assert not out.exists()


# -- logins -------------------------------------------------------------------------------------


def test_anonymous_clients_and_wrong_passwords_are_refused(secure_broker, pki):
    check_logins(secure_broker(), pki)


def test_each_cluster_config_logs_in_over_tls_with_its_password_file(
    secure_broker, pki, passwords
):
    check_cluster_logins(secure_broker(), pki, passwords)


# -- client ids: bound to their user ------------------------------------------------------------


def test_no_user_can_take_a_stages_client_id(secure_broker, pki, passwords):
    check_client_id_takeover(secure_broker(), pki, passwords)


def test_a_users_second_connection_ends_its_first(secure_broker, pki, passwords):
    check_one_connection_per_user(secure_broker(), pki, passwords)


def test_frames_sent_while_a_stage_is_away_wait_for_it(secure_broker, pki, passwords):
    check_frames_wait_for_a_restarting_stage(secure_broker(), pki, passwords)


def test_aiotedge_status_works_with_the_watcher_config(secure_broker, pki, passwords):
    check_status_tool(secure_broker(), pki, passwords)


# -- who may write and read what ----------------------------------------------------------------


@pytest.mark.parametrize("node", ["stage0", "stage1", "stage2", "stage3", "stage4", "camera",
                                  REPLICA])
def test_a_node_may_publish_only_to_its_own_topics(probes, node):
    config = replica_config() if node == REPLICA else load_cluster()[node]
    check_publish_rights(probes, config, watcher_filter=f"{TOPICS.base}/#")


def needed_filters(config: NodeConfig | str) -> list[str]:
    """What a user subscribes to for its work (a stage without replicas: plainly)."""
    if config == "watcher":
        return [f"{TOPICS.base}/#", *SNAPSHOTS]
    if config == "homeassistant":
        return ["homeassistant/#", f"{TOPICS.base}/#", *SNAPSHOTS]
    assert isinstance(config, NodeConfig)
    common = [TOPICS.all_availability, TOPICS.all_info]
    if is_camera(config):  # with [events] labels: Home Assistant's status, `retire`
        name = config.camera.name
        return [*common, TOPICS.predictions, TOPICS.errors, "homeassistant/status",
                discovery_filter(TOPICS, camera=name), TOPICS.camera_counts(name),
                TOPICS.camera_event_snapshots(name)]
    own = [*common, TOPICS.pipeline_availability, TOPICS.stage_input(config.stage.index)]
    if config.stage.index == STAGES - 1:  # the Home Assistant bridge; `retire`
        own += [TOPICS.predictions, TOPICS.all_labels, "homeassistant/status",
                "homeassistant/sensor/aiotedge_greenhouse/#"]
    return own


def test_only_the_deployer_may_publish_releases(probes):
    check_only_the_deployer_publishes_releases(probes)


def test_a_node_receives_only_its_own_input(probes):
    configs = load_cluster()
    check_deliveries(probes, lambda name: needed_filters(configs.get(name, "watcher")))


def test_home_assistant_discovery_works_with_the_shipped_rights(secure_broker, pki, passwords):
    check_home_assistant(secure_broker(), pki, passwords)


def candidate_filters(own_probe: str) -> list[str]:
    """What users need, the share forms of every stage's input, and wider filters."""
    filters = {"#", "aiotedge/#", "$SYS/#", "homeassistant/#", "aiotedge/orchard/#",
               "homeassistant/sensor/other/#", TOPICS.all_stats, TOPICS.availability("stage1"),
               own_probe}
    for config in user_configs().values():
        filters |= set(needed_filters(config))
    for index in range(STAGES):
        stage_input = TOPICS.stage_input(index)
        filters |= {stage_input, f"$share/stage{index}/{stage_input}", f"$share/x/{stage_input}"}
    for group in ("x", "stage1"):
        filters |= {f"$share/{group}/#", f"$share/{group}/aiotedge/#",
                    f"$share/{group}/{TOPICS.base}/#"}
    return sorted(filters)


def subscribable(config: NodeConfig | str, candidates: list[str], own_probe: str) -> set[str]:
    """The watcher: anything of the pipeline, the cameras' snapshots and their events'
    snapshots, no share group; Home Assistant: that and its own topics. A node: who is online
    and what they run, its probe, its inputs; a stage's input in any share group too; a camera
    its own counts, events' snapshots and Home Assistant device."""
    if isinstance(config, str):
        return {f for f in candidates
                if f.startswith((f"{TOPICS.base}/", f"{TOPICS.frames_base}/event-snapshot/"))
                or f == TOPICS.snapshot("+")
                or (config == "homeassistant" and f.startswith("homeassistant/"))}
    granted = {TOPICS.all_availability, TOPICS.availability("stage1"), TOPICS.all_info,
               own_probe}
    if is_camera(config):
        return granted | set(needed_filters(config))
    stage_input = TOPICS.stage_input(config.stage.index)
    return granted | set(needed_filters(config)) | {
        f for f in candidates
        if f.startswith("$share/") and f.split("/", 2)[2] == stage_input}


def test_every_user_may_subscribe_to_exactly_what_it_needs(probes):
    granted, expected = {}, {}
    for user, config in user_configs().items():
        probe = probes(user)
        own_probe = TOPICS.probe(probe.client_id)
        candidates = candidate_filters(own_probe)
        codes = {f: probe.suback(f) for f in candidates}
        assert all(c.value == NOT_AUTHORIZED for c in codes.values() if c.is_failure), codes
        granted[user] = {f for f, code in codes.items() if not code.is_failure}
        expected[user] = subscribable(config, candidates, own_probe)
        assert set(needed_filters(config)) <= granted[user]
    assert granted == expected


# -- frame theft: what acl_file cannot refuse -----------------------------------------------------

STAGE1_INPUT = TOPICS.stage_input(1)
THEFT_FILTERS = [
    f"$share/stage1/{STAGE1_INPUT}",
    f"$share/stage2/{TOPICS.stage_input(2)}",
    f"$share/x/{TOPICS.stage_input(0)}",
    "$share/x/aiotedge/#",
    "$share/stage1/aiotedge/#",
    f"$share/x/{TOPICS.base}/#",
    "$share/x/#",
    "#",
]


@pytest.mark.parametrize("user", ["stage1", "cam0", "watcher"])
def test_no_user_can_join_the_share_group_of_a_stage_that_is_not_its_own(probes, user):
    probe = probes(user)
    codes = {topic_filter: probe.suback(topic_filter).value for topic_filter in THEFT_FILTERS}
    # stage 1 may join its own input's group (its replicas do)
    own = {f"$share/stage1/{STAGE1_INPUT}"} if user == "stage1" else set()
    assert {f for f, code in codes.items() if code != NOT_AUTHORIZED} == own, codes


@pytest.mark.parametrize("replicas", [2, 1], ids=["replicated", "plain"])
def test_a_user_without_read_rights_cannot_take_a_stages_frames(
    secure_broker, pki, passwords, replicas
):
    taken = theft(secure_broker(), pki, passwords, replicas)
    assert taken.received == FRAMES
    assert taken.thief_granted == []


def test_aiotedge_status_as_a_login_that_may_not_read_the_stats_names_the_refusal(
        secure_broker, pki, passwords):
    """The plugin refuses a subscription with SUBACK 0x87: status says which, rather than
    that the broker did not answer (a node's user reads availability and info, not stats)."""
    from tests.test_cli import assert_one_line_error

    broker = secure_broker()
    result = subprocess.run(
        [sys.executable, "-m", "aiotedge", "status", "--pipeline", "greenhouse", "--broker",
         f"mqtts://127.0.0.1:{broker.tls_port}", "--ca-file", str(pki / "ca.crt"),
         "--username", "cam0", "--password-file", str(passwords["cam0"])],
        capture_output=True, text=True, timeout=60, check=False)
    assert_one_line_error(result, "pipeline greenhouse: access denied: the broker refused user "
                                  "cam0 the subscription to aiotedge/greenhouse/stats/+ (Not "
                                  "authorized)")
