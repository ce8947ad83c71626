#!/usr/bin/env bash
# Install aiotedge on a board (Raspberry Pi OS / Debian: 64-bit, or 32-bit armv7l) as systemd
# services.
#
#   sudo scripts/install-board.sh [--camera] [--node NAME]... [--source PATH] [--no-apt]
#                                 [--dry-run]
#
# Run it from a checkout of aiotedge on the board (or give --source: a checkout or a wheel).
# It is safe to run again, e.g. to upgrade: it never overwrites a node config or a password.
#
#   - Debian packages: python3-venv, and what building systemd-python needs
#   - the TFLite runtime by the system's architecture (dpkg --print-architecture, or
#     $AIOTEDGE_DEB_ARCH): ai-edge-litert from PyPI on arm64 and amd64; on 32-bit ARM (armhf)
#     tflite-runtime, the one on PyPI with armv7l wheels, and NumPy, Pillow, msgpack,
#     zstandard and systemd's bindings from Debian's python3-* packages, which PyPI has no
#     armv7l wheels of (docs/deploy-pi-cluster.md)
#   - a system user and group `aiotedge` (no login, no home) that the daemons run as
#   - /opt/aiotedge/venv        aiotedge with its `systemd` (journald fields;
#                               sd_notify works without it) and `metrics`
#                               (Prometheus) extras
#   - --camera: a camera node. The `video` (PyAV: webcams, IP cameras, video files) and
#     `watch` (a watched folder) extras; on Raspberry Pi OS the Pi camera's Picamera2 (the apt
#     package python3-picamera2, which PyPI cannot replace), seen by the virtual environment
#     through --system-site-packages (docs/cameras.md)
#   - /opt/aiotedge/models/     split folders (manifest.json + stage*.tflite), read-only for it
#   - /etc/aiotedge/            node configs (NAME.toml) and broker passwords (NAME.password);
#                               root:aiotedge, mode 750
#   - /var/lib/aiotedge/images  photos for a camera node
#   - /etc/systemd/system/      aiotedge-stage@.service, aiotedge-camera@.service,
#                               aiotedge-node.service, aiotedge.target
#   - --node NAME: /etc/aiotedge/NAME.toml from configs/cluster/NAME.toml, unless it exists
#
# It does not start anything: write the config and the password, copy the split folder, then
#   sudo systemctl enable --now aiotedge-stage@NAME        (docs/deploy-pi-cluster.md)

set -euo pipefail

PREFIX=/opt/aiotedge
CONFIG_DIR=/etc/aiotedge
DATA_DIR=/var/lib/aiotedge
UNIT_DIR=/etc/systemd/system
SERVICE_USER=aiotedge
# The system's interpreter: the service user must be able to run it, and the units' ProtectHome=
# hides /home and /root (a pyenv or conda Python there would not start).
PYTHON="${PYTHON:-/usr/bin/python3}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SOURCE="$HERE"
APT=1
DRY_RUN=0
CAMERA=0
NODES=()
APT_PACKAGES=(python3 python3-venv python3-dev gcc pkg-config libsystemd-dev mosquitto-clients)
UNITS=(aiotedge-stage@.service aiotedge-camera@.service aiotedge-node.service aiotedge.target)

usage() {
    sed -n '2,/^$/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
    exit "${1:-0}"
}

while [ $# -gt 0 ]; do
    case "$1" in
        --node) NODES+=("${2:?--node needs a name, e.g. stage2}"); shift 2 ;;
        --camera) CAMERA=1; shift ;;
        --source) SOURCE="${2:?--source needs a path}"; shift 2 ;;
        --no-apt) APT=0; shift ;;
        --dry-run) DRY_RUN=1; shift ;;
        -h|--help) usage 0 ;;
        *) echo "unknown option: $1" >&2; usage 2 >&2 ;;
    esac
done

# Every change goes through `run`: --dry-run prints the commands instead.
run() {
    if [ "$DRY_RUN" = 1 ]; then
        printf '+'
        printf ' %q' "$@"
        printf '\n'
    else
        "$@"
    fi
}

fail() {
    echo "install-board.sh: $*" >&2
    exit 1
}

[ "$DRY_RUN" = 1 ] || [ "$(id -u)" = 0 ] || fail "run it as root: sudo $0 $*"
for unit in "${UNITS[@]}"; do
    [ -f "$HERE/systemd/$unit" ] || fail "$HERE/systemd/$unit is missing"
done
[ -e "$SOURCE" ] || fail "--source $SOURCE does not exist"
EXTRAS=systemd,metrics
VENV_OPTIONS=()
# The system's architecture, not the kernel's: a 32-bit Raspberry Pi OS on a Pi 4 runs a 64-bit
# kernel (uname -m says aarch64) under its 32-bit userland. 32-bit ARM (armhf): what PyPI has no
# armv7l wheel of comes from Debian, seen by the venv.
ARMHF=0
ARCH="${AIOTEDGE_DEB_ARCH:-$(dpkg --print-architecture 2>/dev/null || uname -m)}"
case "$ARCH" in
    arm64|amd64|aarch64|x86_64) ;;
    armhf)
        ARMHF=1
        VENV_OPTIONS=(--system-site-packages)
        APT_PACKAGES+=(python3-numpy python3-pil python3-msgpack python3-zstandard
                       python3-systemd)
        ;;
    *) echo "warning: $ARCH: no TFLite runtime has wheels for it (ai-edge-litert: 64-bit" \
            "only; tflite-runtime: also 32-bit armv7l); install a 64-bit OS if pip fails" \
            "below" >&2 ;;
esac
if [ "$CAMERA" = 1 ]; then
    EXTRAS=systemd,metrics,video,watch
    [ "$ARMHF" = 0 ] || fail "--camera: a camera node needs a 64-bit OS (PyAV, the video extra," \
        "has no armv7l wheels); a 32-bit board runs stages"
    # Picamera2 needs libcamera's Python bindings, which only Raspberry Pi OS's apt has; the
    # venv sees the apt packages (its own still come first).
    VENV_OPTIONS=(--system-site-packages)
    if apt-cache show python3-picamera2 >/dev/null 2>&1; then
        APT_PACKAGES+=(python3-picamera2)
    else
        echo "note: python3-picamera2 is not in this system's apt sources (Raspberry Pi OS has" \
             "it): the Pi camera (picamera2:N) will not work here; webcams (/dev/videoN)," \
             "IP cameras, videos and folders do" >&2
    fi
fi

if [ "$APT" = 1 ]; then
    run apt-get update -qq
    run env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${APT_PACKAGES[@]}"
fi

case "$(realpath "$PYTHON" 2>/dev/null || echo "$PYTHON")" in
    /home/*|/root/*) fail "$PYTHON is under /home or /root, which the services cannot see" ;;
esac
if [ "$DRY_RUN" = 0 ] || [ -x "$PYTHON" ]; then
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || fail "aiotedge needs Python 3.11 or newer (Raspberry Pi OS bookworm or later)"
fi

# The user the daemons run as: a system account without a login shell or a home.
if ! getent passwd "$SERVICE_USER" >/dev/null; then
    run useradd --system --user-group --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin --comment "aiotedge pipeline daemons" "$SERVICE_USER"
fi

run install -d -m 755 -o root -g root "$PREFIX" "$PREFIX/models"
run install -d -m 750 -o root -g "$SERVICE_USER" "$CONFIG_DIR"
run install -d -m 755 -o root -g root "$DATA_DIR" "$DATA_DIR/images"

# The virtual environment, and aiotedge in it (reinstalled on every run: that is the upgrade).
if [ ! -x "$PREFIX/venv/bin/python" ]; then
    run "$PYTHON" -m venv "${VENV_OPTIONS[@]}" "$PREFIX/venv"
elif [ "$CAMERA" = 1 ]; then  # made for a stage before: let it see the system's packages
    run sed -i 's/^include-system-site-packages = .*/include-system-site-packages = true/' \
        "$PREFIX/venv/pyvenv.cfg"
fi
run "$PREFIX/venv/bin/python" -m pip install --quiet --upgrade pip
if [ "$ARMHF" = 1 ]; then
    # tflite-runtime 2.14 is built against NumPy 1.x: Debian 12's 1.24 (a NumPy 2 would not
    # load it). aiotedge's other needs: Debian's packages above, paho-mqtt and
    # prometheus-client (pure Python) from PyPI; aiotedge itself without resolving its
    # requirements again (they name the 64-bit wheels' versions).
    run "$PREFIX/venv/bin/python" -m pip install --quiet --upgrade "tflite-runtime>=2.14,<2.15" \
        "paho-mqtt>=2.1,<3" "prometheus-client>=0.17"
    run "$PREFIX/venv/bin/python" -m pip install --quiet --upgrade --no-deps "$SOURCE"
elif [ -d "$SOURCE" ]; then
    run "$PREFIX/venv/bin/python" -m pip install --quiet --upgrade "${SOURCE}[$EXTRAS]"
else
    run "$PREFIX/venv/bin/python" -m pip install --quiet --upgrade "aiotedge[$EXTRAS] @ file://$(realpath "$SOURCE")"
fi
if [ "$CAMERA" = 1 ]; then
    # Picamera2 imports simplejpeg; apt's is built for Debian's numpy 1.x, and the venv's
    # numpy 2 needs the one built for it (not verified on a Pi: docs/cameras.md).
    run "$PREFIX/venv/bin/python" -m pip install --quiet --upgrade simplejpeg
fi

for unit in "${UNITS[@]}"; do
    run install -m 644 -o root -g root "$HERE/systemd/$unit" "$UNIT_DIR/$unit"
done
# Without a running systemd (an image being prepared in a chroot), enable still links the units.
if [ -d /run/systemd/system ]; then
    run systemctl daemon-reload
fi
run systemctl enable aiotedge.target

for node in "${NODES[@]}"; do
    example="$HERE/configs/cluster/$node.toml"
    target="$CONFIG_DIR/$node.toml"
    if [ -e "$target" ]; then
        echo "keeping $target"
    elif [ -f "$example" ]; then
        run install -m 644 -o root -g root "$example" "$target"
    else
        echo "no example config $example: write $target yourself (docs/config.md)" >&2
    fi
done

cat <<DONE

aiotedge is installed in $PREFIX/venv. A board that takes its role from the releases of
\`aiotedge-convert deploy\` (docs/fleet.md):
  config:          $CONFIG_DIR/node.toml ([broker], [pipeline], [stage] node = its name)
  then:            sudo systemctl enable --now aiotedge-node
Or, a role pinned by hand, for each node NAME of this board:
  config:          $CONFIG_DIR/NAME.toml (examples: configs/cluster/, keys: docs/config.md)
  broker password: $CONFIG_DIR/NAME.password, mode 640, owner root:$SERVICE_USER
  split folder:    $PREFIX/models/<pipeline>/ (manifest.json + stage*.tflite)
  then:            sudo systemctl enable --now aiotedge-stage@NAME   (or aiotedge-camera@NAME)
                   journalctl -u aiotedge-stage@NAME -f
After an upgrade:  sudo systemctl restart aiotedge.target
DONE
