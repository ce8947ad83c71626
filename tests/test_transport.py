"""The nodes' seam to MQTT (aiotedge.nodes.mqtt.transport): the session and the unit tests' fake
sessions all have the shape the nodes use, as a type checker sees it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from support.paths import REPO

#: each assignment is a claim a type checker verifies: this one does for that
SHAPES = """
from aiotedge.nodes.mqtt.session import MqttSession
from aiotedge.nodes.mqtt.transport import Messaging, Session
from tests import test_availability, test_chain_watch, test_homeassistant, test_stage_node

def shapes(real: MqttSession) -> None:
    session: Session = real
    stage: Session = test_stage_node.FakeSession()
    chain_watch: Messaging = test_chain_watch.FakeSession()
    availability: Messaging = test_availability.FakeSession()
    home_assistant: Messaging = test_homeassistant.FakeSession()
"""


def test_the_session_and_the_fakes_have_the_shape_the_nodes_use():
    """A fake that drifted from the session would let a unit test pass on a call the real
    session does not take."""
    pytest.importorskip("mypy", reason="mypy is in the test extra")
    checked = subprocess.run(
        [sys.executable, "-m", "mypy", "--follow-imports=silent", "--ignore-missing-imports",
         "--cache-dir", "/dev/null", "-c", SHAPES],
        check=False, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert checked.returncode == 0, checked.stdout + checked.stderr
