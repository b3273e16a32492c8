#!/usr/bin/env bash
# The README's test command: installs what the tests need (redis-server, nginx, curl, python3 +
# websockets), then checks formatting and lints and runs every test of the workspace. Fails
# loudly; never skips a test because something is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

apt_install() {
    if [ "$(id -u)" -ne 0 ]; then
        die "missing $*: install with 'sudo apt-get install -y $*' and run again"
    fi
    command -v apt-get >/dev/null || die "missing $* and no apt-get to install it"
    log "installing $* (apt)"
    if [ -z "${RINGCAST_APT_UPDATED:-}" ]; then
        apt-get update -qq || die "apt-get update failed"
        export RINGCAST_APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null || die "apt-get install $* failed"
}

command -v redis-server >/dev/null && command -v redis-cli >/dev/null || apt_install redis-server
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || apt_install nginx  # loadtest/bench.sh --quick
command -v curl >/dev/null || apt_install curl
command -v python3 >/dev/null || apt_install python3 python3-websockets
if ! python3 -c 'import websockets' 2>/dev/null; then
    log "installing python websockets (pip)"
    python3 -m pip install --quiet 'websockets>=12' 2>/dev/null \
        || python3 -m pip install --quiet --break-system-packages 'websockets>=12' 2>/dev/null \
        || apt_install python3-websockets
    python3 -c 'import websockets' || die "python3 cannot import websockets after installing it"
fi

log "cargo fmt --check"
cargo fmt --all -- --check || die "code is not formatted: run 'cargo fmt --all'"
log "cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
log "cargo test"
cargo test --workspace --all-targets
cargo test --workspace --doc --quiet
