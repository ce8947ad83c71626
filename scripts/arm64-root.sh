#!/usr/bin/env bash
# A Debian 12 (bookworm) arm64 root, run under qemu-user emulation: the board side as it runs on
# a Raspberry Pi with 64-bit Raspberry Pi OS (bookworm), on an x86_64 machine. As root.
# With AIOTEDGE_ROOT_ARCH=armhf, the same for 32-bit Raspberry Pi OS: a Debian 12 armhf root
# (make test-armhf), where install-board.sh takes its 32-bit path (tflite-runtime, Debian's
# python3-* packages) and tests/test_armhf.py runs.
#
#   scripts/arm64-root.sh build      build the root unless the cached one is up to date
#   scripts/arm64-root.sh install    install this checkout in the root as a stage board, as
#                                    docs/deploy-pi-cluster.md section 5 says
#   scripts/arm64-root.sh run [--bind HOST_DIR:ROOT_DIR]... CMD...
#                                    run CMD in the root (its own mounts, the host's network;
#                                    the host's folders bound in read-only)
#   scripts/arm64-root.sh test PYTHON [PYTEST_ARGS]...
#                                    build, install, then tests/test_arm64.py with the host's
#                                    PYTHON (make test-arm64); says how long it all took
#
# The root is cached in $AIOTEDGE_ARM64_CACHE (default /var/cache/aiotedge): outside the
# checkout, so a fresh clone, `git clean` or `make clean` keeps it (the cold build takes
# minutes of emulated dpkg and pip), and no linter or test collector walks a Debian tree. It
# is rebuilt when this script's build or install-board.sh (whose Debian packages it holds)
# changes.
# Debian packages it needs on the host (debootstrap, qemu-user-static, binfmt-support, rsync) are
# installed with apt-get when missing.

set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${AIOTEDGE_ARM64_CACHE:-/var/cache/aiotedge}"
ARCH="${AIOTEDGE_ROOT_ARCH:-arm64}"
case "$ARCH" in
    arm64) QEMU=qemu-aarch64 ;;
    armhf) QEMU=qemu-arm ;;
    *) echo "arm64-root.sh: AIOTEDGE_ROOT_ARCH is arm64 or armhf, not $ARCH" >&2; exit 1 ;;
esac
ROOT="$CACHE/$ARCH-bookworm"
SUITE=bookworm
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
# A 64-bit Raspberry Pi OS Lite has these (install-board.sh's `systemctl enable` needs systemd);
# mosquitto, for the tests run in the root that start their own broker.
ROOT_PACKAGES=ca-certificates,systemd,mosquitto,openssl
# Where the board's user keeps the copy of the repository (docs/deploy-pi-cluster.md: ~/aiotedge)
BOARD_CHECKOUT=/home/pi/aiotedge
# The tests' own virtual environment in the root: it sees the board's venv (a .pth file), so the
# tests import the aiotedge install-board.sh installed, and the board's venv stays as a Pi's.
TEST_VENV=/opt/aiotedge-tests/venv
TEST_PACKAGES=(pytest pytest-timeout hypothesis jinja2)
BOARD_VENV=/opt/aiotedge/venv

fail() {
    echo "arm64-root.sh: $*" >&2
    exit 1
}

log() {
    echo "arm64-root: $*" >&2
}

# What the cached root is built from: the build's steps and settings, and install-board.sh
# (its Debian packages). When it changes, the root is rebuilt; other edits here keep it.
inputs_key() {
    {
        declare -f build copy_checkout ensure_emulation
        declare -p ARCH SUITE MIRROR ROOT_PACKAGES BOARD_CHECKOUT TEST_VENV TEST_PACKAGES \
            BOARD_VENV
        cat "$HERE/scripts/install-board.sh"
    } | sha256sum | cut -d' ' -f1
}

# qemu-user through binfmt_misc: the kernel runs arm64 binaries with the emulator. The F flag
# (Debian's default) opens the emulator when registering, so the root does not need a copy.
ensure_emulation() {
    [ "$(id -u)" = 0 ] || fail "run it as root (debootstrap, chroot and mounts need it)"
    "$HERE/scripts/apt-ensure.sh" debootstrap qemu-user-static binfmt-support rsync
    if [ ! -e /proc/sys/fs/binfmt_misc/status ]; then
        mount binfmt_misc -t binfmt_misc /proc/sys/fs/binfmt_misc \
            || fail "cannot mount binfmt_misc: this machine cannot run arm64 binaries"
    fi
    if [ ! -e "/proc/sys/fs/binfmt_misc/$QEMU" ]; then
        update-binfmts --enable "$QEMU" || fail "update-binfmts --enable $QEMU failed"
    fi
    grep -qx enabled "/proc/sys/fs/binfmt_misc/$QEMU" \
        || fail "binfmt_misc's $QEMU is disabled: update-binfmts --enable $QEMU"
}

# Run a command in a root: private mounts (gone when it exits), the host's network namespace.
# /proc and /dev but no /sys: with both the host's x86 /proc/cpuinfo and its /sys CPU list, the
# CPU detection of XNNPACK (TFLite's arm64 kernels) crashes the process when it loads a model
# (SIGSEGV in allocate_tensors); with /proc alone it falls back. A Pi has its own of both.
in_root() {
    local root="$1"
    shift
    local binds=()
    while [ "${1:-}" = --bind ]; do
        binds+=("$2")
        shift 2
    done
    # shellcheck disable=SC2016  # the inner script's own variables, expanded in there
    unshare --mount --propagation private -- bash -euo pipefail -c '
        root="$1"; shift; binds="$1"; shift
        mount -t proc proc "$root/proc"
        mount --rbind /dev "$root/dev"
        for bind in $binds; do
            host="${bind%%:*}"; inside="$root${bind#*:}"
            mkdir -p "$inside"
            mount --rbind "$host" "$inside"
            mount -o remount,bind,ro "$inside"
        done
        exec chroot "$root" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM=dumb \
            PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$@"
    ' in_root "$root" "${binds[*]}" "$@"
}

build() {
    ensure_emulation
    local key
    key="$(inputs_key)"
    if [ -f "$ROOT/.aiotedge-root-key" ] && [ "$(cat "$ROOT/.aiotedge-root-key")" = "$key" ]; then
        log "cached root $ROOT is up to date"
        return
    fi
    local new="$ROOT.new"
    rm -rf "$new"
    mkdir -p "$CACHE"
    log "building $new (debootstrap $SUITE $ARCH, emulated: several minutes)"
    debootstrap --arch="$ARCH" --variant=minbase --include="$ROOT_PACKAGES" \
        "$SUITE" "$new" "$MIRROR"
    # pip and apt in the root trust what the host trusts (a proxy's CA, for one)
    install -m 644 /etc/ssl/certs/ca-certificates.crt \
        "$new/usr/local/share/ca-certificates/host-ca-bundle.crt"
    in_root "$new" update-ca-certificates >/dev/null
    in_root "$new" useradd --create-home --shell /bin/bash pi
    # a board's own packages: install-board.sh's apt-get step, run in full once here
    copy_checkout "$new"
    in_root "$new" sh -c "cd /home/pi && aiotedge/scripts/install-board.sh"
    # it sees the system's packages too: on armhf, the board's NumPy and Pillow are Debian's
    in_root "$new" python3 -m venv --system-site-packages "$TEST_VENV"
    echo "$BOARD_VENV/lib/python3.11/site-packages" \
        > "$new$TEST_VENV/lib/python3.11/site-packages/aiotedge-board.pth"
    in_root "$new" "$TEST_VENV/bin/python" -m pip install --quiet "${TEST_PACKAGES[@]}"
    echo "$key" > "$new/.aiotedge-root-key"
    rm -rf "$ROOT"
    mv "$new" "$ROOT"
    log "built $ROOT"
}

# The board's copy of the repository, as docs/deploy-pi-cluster.md section 5 makes it.
copy_checkout() {
    local root="$1"
    mkdir -p "$root$BOARD_CHECKOUT"
    rsync -a --delete --exclude .venv --exclude .git "$HERE/" "$root$BOARD_CHECKOUT/"
}

# docs/deploy-pi-cluster.md, section 5 (and 9, an upgrade, on a warm root): install-board.sh
# from the board's copy of the repository. --no-apt: the cached build ran its apt-get step
# (an emulated `apt-get update` costs a minute and installs nothing new).
install_board() {
    [ -f "$ROOT/.aiotedge-root-key" ] || fail "no root at $ROOT: run $0 build"
    copy_checkout "$ROOT"
    in_root "$ROOT" sh -c "cd /home/pi && aiotedge/scripts/install-board.sh --no-apt --node stage2"
    in_root "$ROOT" "$BOARD_VENV/bin/aiotedge" --version
}

command="${1:-}"
shift || true
case "$command" in
    build) build ;;
    install) install_board ;;
    run)
        binds=()
        while [ "${1:-}" = --bind ]; do
            binds+=(--bind "${2:?--bind needs HOST_DIR:ROOT_DIR}")
            shift 2
        done
        [ $# -gt 0 ] || fail "run needs a command"
        in_root "$ROOT" "${binds[@]}" "$@"
        ;;
    test)
        python="${1:?test needs the host python that runs pytest}"
        shift
        start=$SECONDS
        mkdir -p "$CACHE"
        # one user of the root at a time (another checkout would install itself into it)
        exec 9>"$CACHE/$ARCH-bookworm.lock"
        flock 9
        build
        install_board
        report="$(mktemp)"
        status=0
        AIOTEDGE_ARM64_ROOT="$ROOT" AIOTEDGE_ARM64_REPORT="$report" \
            "$python" -m pytest "$HERE/tests/test_$ARCH.py" "$@" || status=$?
        cat "$report" >&2
        rm -f "$report"
        log "took $(( (SECONDS - start) / 60 )) min $(( (SECONDS - start) % 60 )) s"
        exit "$status"
        ;;
    -h|--help|"") sed -n '2,/^$/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" ;;
    *) fail "unknown command $command (--help)" ;;
esac
