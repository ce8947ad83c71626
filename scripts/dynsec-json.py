#!/usr/bin/env python3
"""Write the dynamic-security file of one aiotedge pipeline for mosquitto 2.0.

    sudo python3 scripts/dynsec-json.py --pipeline greenhouse --stages 5 \
        --password-file /etc/mosquitto/aiotedge.passwd --out aiotedge-dynsec.json \
        [--replica stage2b:2]... [--camera cam0]... [--watcher watcher]...
        [--homeassistant homeassistant] [--deployer deployer]

Why: mosquitto's acl_file never refuses a SUBSCRIBE, so any broker user can join a replicated
stage's share group `$share/<group>/aiotedge-frames/<pipeline>/stage/<k>` and take its round-robin
share of the frames, which the broker then drops (the ACL denies delivering them). The
dynamic-security plugin (configs/mosquitto/secure-dynsec.conf) refuses unauthorised
subscriptions with SUBACK 0x87; this script writes its file with the rights of aiotedge.acl.

Why offline, from mosquitto_passwd's file: users and passwords stay where secure.conf keeps them
(`mosquitto_passwd /etc/mosquitto/aiotedge.passwd USER`, which prompts for the password), so
switching configs or adding a replica's user works as it does there, and no password is typed,
passed or hashed here: mosquitto_passwd 2.0's `$7$` entries are what the plugin checks
(PBKDF2-HMAC-SHA512, 12-byte salt, 101 iterations unless `-I`), copied as they are. It needs no
running broker and creates no admin account: nobody can change rights over MQTT
(`mosquitto_ctrl dynsec init`'s admin may subscribe to `#`, share groups included). A change is:
run it again, restart mosquitto (the plugin reads its file only at start).

Every user of the password file must get a part here, and each gets the roles that make up its
rights (dynsec 2.0 has no %u or %c, so the rights naming a user are a role of their own):
  every user   writes availability/<user>, info/<user>, stats/<user>; reads availability/+ and
               info/+; reads and writes probe/+, as in aiotedge.acl (a client's id is its
               user name, use_username_as_clientid, which it is not told)
  stage k      subscribes to stage/<k> and `$share/<any group>/.../stage/<k>`, receives it;
               writes stage/<k+1>, errors; reads and writes the pipeline's availability
  last stage   also reads and writes predictions, label/+ and its Home Assistant discovery
               topics; reads homeassistant/status
  camera       writes stage/0, errors, events and its own snapshot (aiotedge-frames/<pipeline>/
               snapshot/<user>); subscribes to and receives predictions, errors and
               homeassistant/status; reads and writes its own counts (count/<user>/+), its
               events' snapshots (aiotedge-frames/<pipeline>/event-snapshot/<user>/+) and its
               Home Assistant device's discovery topics; receives fleet/live
  deployer     the only one to write releases, the model's chunks and the live pointer
               (fleet/#, aiotedge-frames/<pipeline>/chunk/+), and reads them back
  watcher      subscribes to and receives aiotedge/<pipeline>/# (no share group), the
               cameras' snapshots and their events' snapshots, and the broker's count of
               dropped messages ($SYS)
  homeassistant  subscribes to and receives homeassistant/#, aiotedge/<pipeline>/# and the
               cameras' snapshots and events' snapshots; writes homeassistant/status (its
               birth and Last Will), the pipeline's discovery topics and each camera's
               (.../+/config: deleting a device clears them)
Anything else is refused (defaultACLAccess false; unsubscribing stays allowed).

Standard library only: it runs on the broker host without aiotedge installed.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

#: what `aiotedge status` reads of the broker's own: the messages it dropped at its queue limits
BROKER_DROPPED = "$SYS/broker/publish/messages/dropped"
PREFIX = "aiotedge"
HOMEASSISTANT_PREFIX = "homeassistant"
#: mosquitto 2.0 (src/password_mosq.h): the salt and hash sizes both the plugin and
#: mosquitto_passwd use with PBKDF2-HMAC-SHA512, hash type 7 in the password file
SALT_BYTES = 12
HASH_BYTES = 64


class UsageError(Exception):
    """What to tell the user instead of writing the file."""


def read_password_file(path: Path) -> dict[str, dict[str, Any]]:
    """User -> its `password`, `salt` and `iterations` in the plugin's terms, from a password
    file of mosquitto_passwd 2.x (`user:$7$iterations$salt$hash`, base64)."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from exc
    entries = {}
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.startswith("#"):
            continue
        user, _, entry = line.partition(":")
        fields = entry.split("$")
        try:
            valid = (len(fields) == 5 and fields[:2] == ["", "7"] and int(fields[2]) > 0
                     and len(base64.b64decode(fields[3], validate=True)) == SALT_BYTES
                     and len(base64.b64decode(fields[4], validate=True)) == HASH_BYTES)
        except (ValueError, binascii.Error):
            valid = False
        if not valid:
            raise UsageError(f"{path}, line {number}: {user!r} has no mosquitto 2 password "
                             "hash ($7$...): set its password again with mosquitto_passwd 2.x")
        entries[user] = {"password": fields[4], "salt": fields[3], "iterations": int(fields[2])}
    return entries


def acls(kinds: str, *topics: str) -> list[dict[str, Any]]:
    """Grants on `topics`: s = publishClientSend, r = publishClientReceive,
    l / p = subscribeLiteral / subscribePattern (a filter with + or #)."""
    names = {"s": "publishClientSend", "r": "publishClientReceive",
             "l": "subscribeLiteral", "p": "subscribePattern"}
    return [{"acltype": names[kind], "topic": topic, "allow": True}
            for topic in topics for kind in kinds]


def role(name: str, text: str, grants: list[dict[str, Any]]) -> dict[str, Any]:
    return {"rolename": name, "textname": text, "acls": grants}


def build(pipeline: str, stages: int, duties: dict[str, str],
          passwords: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The plugin's whole file: default access, roles, clients.

    `duties`: user -> what it does, `stage<k>`, `camera`, `watcher` or `homeassistant` (a role
    of that name).
    """
    base = f"{PREFIX}/{pipeline}"
    frames = f"{PREFIX}-frames/{pipeline}"

    def node_id(name: str) -> str:  # aiotedge/nodes/observe/homeassistant.py: node_id()
        return re.sub(r"[^a-z0-9_]", "_", name.lower())

    discovery = f"{HOMEASSISTANT_PREFIX}/sensor/aiotedge_{node_id(pipeline)}/#"
    cameras = [user for user, duty in duties.items() if duty == "camera"]

    def camera_discovery(camera: str) -> str:
        return f"{HOMEASSISTANT_PREFIX}/+/aiotedge_{node_id(pipeline)}_{node_id(camera)}/+/config"

    def stage_input(index: int) -> str:  # frames have a branch of their own (docs/topics.md)
        return f"{PREFIX}-frames/{pipeline}/stage/{index}"

    roles = [role(f"{pipeline}-node", "every user: who is online and what it runs; probes",
                  acls("rp", f"{base}/availability/+", f"{base}/info/+")
                  + acls("srp", f"{base}/probe/+"))]
    for index in range(stages):
        last = index == stages - 1
        if last:
            grants = (acls("srl", f"{base}/predictions", f"{base}/availability")
                      + acls("srp", f"{base}/label/+", discovery)
                      + acls("rl", f"{HOMEASSISTANT_PREFIX}/status"))
        else:
            grants = acls("s", stage_input(index + 1)) + acls("srl", f"{base}/availability")
        roles.append(role(f"{pipeline}-stage{index}", f"stage {index} and its replicas",
                          acls("rl", stage_input(index))
                          + acls("p", f"$share/+/{stage_input(index)}")
                          + acls("s", f"{base}/errors") + grants))
    roles.append(role(f"{pipeline}-camera", "cameras",
                      acls("s", stage_input(0), f"{base}/errors", f"{base}/events")
                      + acls("rl", f"{base}/predictions", f"{base}/errors",
                             f"{HOMEASSISTANT_PREFIX}/status", f"{base}/fleet/live")))
    roles.append(role(f"{pipeline}-deployer", "the deployer of releases (docs/fleet.md)",
                      acls("srp", f"{base}/fleet/#", f"{frames}/chunk/+")))
    snapshots = [f"{frames}/snapshot/+", f"{frames}/event-snapshot/+/+"]
    roles.append(role(f"{pipeline}-watcher", "read-only tools",
                      acls("rp", f"{base}/#", *snapshots, BROKER_DROPPED)))
    # deleting a device in Home Assistant clears its discovery messages
    discovery_configs = [discovery.removesuffix("#") + "+/config",
                         *map(camera_discovery, cameras)]
    roles.append(role(f"{pipeline}-homeassistant", "Home Assistant",
                      acls("rp", f"{HOMEASSISTANT_PREFIX}/#", f"{base}/#", *snapshots)
                      + acls("s", f"{HOMEASSISTANT_PREFIX}/status", *discovery_configs)))

    clients = []
    for user, duty in duties.items():
        own = f"{pipeline}-own-{user}"
        camera = duty == "camera"
        snapshot = [f"{frames}/snapshot/{user}"] if camera else []
        events = acls("srp", f"{base}/count/{user}/+", f"{frames}/event-snapshot/{user}/+",
                      camera_discovery(user)) if camera else []
        roles.append(role(own, f"{user}'s own topics", acls(
            "s", f"{base}/availability/{user}", f"{base}/info/{user}", f"{base}/stats/{user}",
            *snapshot) + events))
        clients.append({"username": user, "textname": f"aiotedge {pipeline}: {user}",
                        **passwords[user],
                        "roles": [{"rolename": name}
                                  for name in (f"{pipeline}-node", own, f"{pipeline}-{duty}")]})
    return {
        "defaultACLAccess": {"publishClientSend": False, "publishClientReceive": False,
                             "subscribe": False, "unsubscribe": True},
        "clients": clients,
        "groups": [],
        "roles": roles,
    }


def topic_level(text: str) -> str:
    """A pipeline or user name: one topic level, as the nodes' configs require."""
    if not text or any(c in text for c in "/+#\0") or text.startswith("$"):
        raise argparse.ArgumentTypeError(f"{text!r} must be one topic level (no / + # or $)")
    return text


def replica(text: str) -> tuple[str, int]:
    user, _, index = text.rpartition(":")
    if not index.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not USER:STAGE, e.g. stage2b:2")
    return topic_level(user), int(index)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Write mosquitto's dynamic-security file for one aiotedge pipeline "
                    "(configs/mosquitto/secure-dynsec.conf loads it).")
    parser.add_argument("--pipeline", required=True, type=topic_level, help="e.g. greenhouse")
    parser.add_argument("--stages", required=True, type=int, help="number of stages")
    parser.add_argument("--password-file", required=True, type=Path,
                        help="mosquitto_passwd's file with every user, e.g. "
                             "/etc/mosquitto/aiotedge.passwd")
    parser.add_argument("--out", required=True, type=Path,
                        help="the file to write (mode 600; replaced if it exists)")
    parser.add_argument("--replica", action="append", type=replica, default=[],
                        metavar="USER:STAGE",
                        help="another user serving a stage, besides stage0 .. stage<N-1>")
    parser.add_argument("--camera", action="append", type=topic_level,
                        help="a camera's user (default: cam0)")
    parser.add_argument("--watcher", action="append", type=topic_level,
                        help="a read-only tool's user (default: watcher)")
    parser.add_argument("--homeassistant", action="append", type=topic_level, default=[],
                        help="Home Assistant's user (none by default)")
    parser.add_argument("--deployer", action="append", type=topic_level, default=[],
                        help="the user of `aiotedge-convert deploy`, the only one who may "
                        "publish releases (none by default)")
    args = parser.parse_args(argv)
    if args.stages < 1:
        parser.error("--stages must be at least 1")
    for user, index in args.replica:
        if index >= args.stages:
            parser.error(f"--replica {user}:{index}: there are only stages 0 .. {args.stages - 1}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    users = [(f"stage{index}", f"stage{index}") for index in range(args.stages)]
    users += [(user, f"stage{index}") for user, index in args.replica]
    users += [(user, "camera") for user in args.camera or ["cam0"]]
    users += [(user, "watcher") for user in args.watcher or ["watcher"]]
    users += [(user, "homeassistant") for user in args.homeassistant]
    users += [(user, "deployer") for user in args.deployer]
    duties = dict(users)
    try:
        if len(duties) != len(users):
            raise UsageError(f"a user is named twice: {' '.join(user for user, _ in users)}")
        passwords = read_password_file(args.password_file)
        if missing := [user for user in duties if user not in passwords]:
            raise UsageError(f"no password for {', '.join(missing)} in {args.password_file}: "
                          f"sudo mosquitto_passwd {args.password_file} USER")
        if idle := [user for user in passwords if user not in duties]:
            raise UsageError(f"{', '.join(idle)} in {args.password_file} would have no rights: say "
                          "what it does (--replica, --camera, --watcher, --homeassistant, "
                          "--deployer) "
                          "or remove it "
                          "(mosquitto_passwd -D)")
    except UsageError as exc:
        print(exc, file=sys.stderr)
        return 2
    document = build(args.pipeline, args.stages, duties, passwords)
    # a new file (mode 600: it holds password hashes) put in place whole
    try:
        descriptor, temporary = tempfile.mkstemp(dir=args.out.parent, prefix=args.out.name)
    except OSError as exc:
        print(f"cannot write into {args.out.parent}: {exc.strerror}", file=sys.stderr)
        return 2
    with os.fdopen(descriptor, "w") as out:
        json.dump(document, out, indent=2)
        out.write("\n")
    os.replace(temporary, args.out)
    print(f"wrote {args.out}: {len(duties)} users of pipeline {args.pipeline}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
